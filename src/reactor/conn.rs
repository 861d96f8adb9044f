//! One client connection: its socket, buffers and flow-control state.
//!
//! The reactor owns every `Conn`. A connection never closes itself: its handlers report what
//! should happen and the reactor acts. Readiness (what the OS said) is kept apart from
//! interest (what the connection can take right now): a connection stops being read while a
//! request of its own is at a worker, while its unsent replies exceed the configured limit
//! (its own, or its part of the daemon-wide budget), or while it is closing.

use super::listen::Admission;
use crate::frontend::{ConnIo, Proto};
use std::io::{self, Read, Write};
use std::time::Instant;

/// The result of one socket operation, normalised once at the boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum Io {
    /// `n` bytes moved (`n > 0`).
    Progress(usize),
    /// The socket has nothing more for now.
    WouldBlock,
    /// The peer closed its side (read returned 0).
    Closed,
    /// A real error; the connection should be dropped.
    Failed(io::ErrorKind),
}

/// Reads once, retrying `Interrupted`.
pub fn read_once<R: Read>(r: &mut R, buf: &mut [u8]) -> Io {
    loop {
        match r.read(buf) {
            Ok(0) => return Io::Closed,
            Ok(n) => return Io::Progress(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::WouldBlock,
            Err(e) => return Io::Failed(e.kind()),
        }
    }
}

/// Writes once, retrying `Interrupted`.
pub fn write_once<W: Write>(w: &mut W, buf: &[u8]) -> Io {
    loop {
        match w.write(buf) {
            Ok(0) => return Io::Failed(io::ErrorKind::WriteZero),
            Ok(n) => return Io::Progress(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::WouldBlock,
            Err(e) => return Io::Failed(e.kind()),
        }
    }
}

/// The socket of a connection.
pub enum Stream {
    Unix(mio::net::UnixStream),
    Tcp(mio::net::TcpStream),
    /// TCP with TLS (a listener with a certificate).
    Tls(Box<super::tls::TlsStream>),
}

impl Stream {
    pub fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &mut s.tcp,
        }
    }

    /// Output is waiting below the connection's buffer (TLS records the socket did not take).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Tls(s) => s.wants_write(),
            _ => false,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

/// A live connection.
pub struct Conn {
    pub stream: Stream,
    pub io: ConnIo,
    pub proto: Proto,
    /// Whether the connection is a kernel caller (disconnected from the kernel at close).
    pub admission: Admission,
    /// Unsolicited output allowed to wait before the connection is dropped.
    pub max_pending_push: usize,
    /// Bytes received but not yet consumed by the protocol (partial or waiting frames).
    pub inbuf: Vec<u8>,
    /// The socket may have more to read (no WouldBlock or short read seen since last event).
    pub readable: bool,
    /// The peer shut down its writing side.
    pub read_closed: bool,
    /// epoll reported the peer's shutdown (`EPOLLRDHUP`): a short read then does not mean the
    /// socket is drained, the end-of-file is still to be read (it comes with no edge of its own).
    pub hup_seen: bool,
    /// The socket may accept more writes.
    pub writable: bool,
    /// WRITABLE interest is registered. It is only while replies are waiting: a socket that is
    /// always registered for writability wakes the reactor every time the peer reads, which
    /// doubles the wake-ups of a request/response client.
    pub want_write: bool,
    /// Set while the connection is in the reactor's ready queue.
    pub queued: bool,
    /// Set while the connection waits for room in the worker queue.
    pub waiting_pool: bool,
    /// Set while the connection waits for room in the daemon-wide reply budget.
    pub waiting_budget: bool,
    /// Its reply bytes (`ConnIo::held_out`) as last added to the reactor's daemon-wide total.
    pub counted: usize,
    /// It speaks as a supervised agent: closed after `agent_idle_timeout` with nothing going on.
    pub agent: bool,
    /// When the connection last read something (or was created).
    pub last_read: Instant,
    /// When the connection last made write progress (or was created).
    pub last_write: Instant,
    /// When the connection got paused for unsent replies; `None` when not paused.
    pub paused_since: Option<Instant>,
}
