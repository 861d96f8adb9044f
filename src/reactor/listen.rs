//! Listeners: a bound socket, the protocol its connections speak, and how a peer is identified
//! and admitted.
//!
//! The reactor accepts on every listener the same way; what differs is told by the assembly
//! when it adds a listener: how to make the connection's [`Proto`], how to word a refusal on
//! that wire, whether a connection is a kernel caller (the Clove socket) or only holds an id,
//! and how much unsolicited output (events) a connection may have waiting.
//!
//! Peers are identified before anything is read: a Unix peer by `SO_PEERCRED`; a loopback TCP
//! peer by asking the kernel who owns its socket ([`crate::sockdiag`]), because on a login node
//! every user shares the loopback interface. A TCP peer from another host has no uid to check;
//! a listener accepts those only when told to (its protocol then needs a token).

use crate::frontend::{Outbox, Proto};
use crate::kernel::Peer;
use std::io;
use std::net::SocketAddr;

/// Makes the protocol state of a new connection, given its way back for replies made on
/// other threads.
pub type ProtoFactory = Box<dyn Fn(Box<dyn Outbox>) -> Proto + Send>;

/// The bytes a refused connection is sent before it is closed (on that listener's wire).
pub type Refusal = fn(&str) -> Vec<u8>;

/// How a listener's connections relate to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Every connection is a kernel caller (identity, permissions, mailbox): the Clove socket.
    Caller,
    /// Like `Caller`, but only a live agent's processes are let in: the agents' socket of a
    /// root daemon, through which its sandboxed agents (running as another user) connect.
    AgentsOnly,
    /// A connection only gets an id from the kernel's counter; its protocol does its own
    /// authentication (the router's and the relay's clients).
    IdOnly,
}

/// A bound, listening socket.
pub enum ListenSocket {
    Unix(mio::net::UnixListener),
    Tcp(mio::net::TcpListener),
}

/// A listener as the assembly describes it.
pub struct Listener {
    /// For logs and status: `clove`, `router`, `relay`.
    pub name: &'static str,
    pub socket: ListenSocket,
    pub admission: Admission,
    pub make: ProtoFactory,
    pub refuse: Refusal,
    /// Unsolicited output a connection may have waiting; beyond it the connection is dropped
    /// (a client that does not read its events must not hold memory or slow the others).
    pub max_pending_push: usize,
    /// Accept TCP peers that are not on this host (their uid cannot be checked).
    pub allow_remote: bool,
    /// Speak TLS on every accepted TCP connection (the relay's `wss://`).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Listener {
    /// The address a TCP listener is bound to (for the ready line and tests).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            ListenSocket::Tcp(l) => l.local_addr().ok(),
            ListenSocket::Unix(_) => None,
        }
    }
}

/// Who is on the other end of an accepted connection.
pub enum PeerOf {
    /// Identified: its uid (and pid for Unix peers; 0 when unknown).
    Known(Peer),
    /// A TCP peer on another host: no uid to check.
    Remote(SocketAddr),
}

/// Peer credentials of a Unix socket connection.
pub fn unix_peer(stream: &mio::net::UnixStream) -> io::Result<Peer> {
    use std::os::fd::AsFd;
    let cred =
        nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
            .map_err(io::Error::from)?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// The owner of a TCP peer, from the kernel when the peer's socket is on this host (in this
/// network namespace); a non-loopback peer the kernel does not know is remote. A loopback peer
/// the kernel cannot place (it closed already) is an error: never a guess.
pub fn tcp_peer(stream: &mio::net::TcpStream) -> io::Result<PeerOf> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    match crate::sockdiag::tcp_peer_uid(local, peer) {
        Ok(uid) => Ok(PeerOf::Known(Peer {
            pid: 0,
            uid,
            gid: u32::MAX,
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !peer.ip().is_loopback() => {
            Ok(PeerOf::Remote(peer))
        }
        Err(e) => Err(e),
    }
}
