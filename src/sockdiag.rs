//! Who owns the other end of a loopback TCP connection: one `NETLINK_SOCK_DIAG` query for the
//! peer's socket, by its exact address pair.
//!
//! On a login node the loopback interface is shared by every user, so a TCP listener on
//! 127.0.0.1 is as public as a world-writable Unix socket. The kernel knows which user created
//! each socket; asking it (the same interface `ss -e` uses) gives a TCP connection the
//! `SO_PEERCRED` check a Unix socket has. Only the peer's socket is looked up, by its full
//! four-tuple, so the answer cannot be about some other connection.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_NOCOOKIE`: match any socket cookie.
const NO_COOKIE: u32 = !0;
/// `TCP_TIME_WAIT` from `include/net/tcp_states.h`.
const TCP_TIME_WAIT: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    hdr: NlMsgHdr,
    req: ReqV2,
}

/// The uid that owns the TCP socket at `peer` connected to `local` (both as seen from our
/// side of the connection). Fails when the kernel has no such socket (the peer closed) or the
/// query is refused; callers must then refuse the connection.
pub fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
    let (family, src, dst) = match (peer.ip(), local.ip()) {
        (IpAddr::V4(p), IpAddr::V4(l)) => (libc::AF_INET, v4(p.octets()), v4(l.octets())),
        (IpAddr::V6(p), IpAddr::V6(l)) => (libc::AF_INET6, p.octets(), l.octets()),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "addresses of different families",
            ));
        }
    };
    let request = Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        req: ReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            states: !0,
            // The peer's socket: its local end is the peer address, its remote end is ours.
            id: SockId {
                sport: peer.port().to_be_bytes(),
                dport: local.port().to_be_bytes(),
                src,
                dst,
                interface: 0,
                cookie: [NO_COOKIE, NO_COOKIE],
            },
            ..ReqV2::default()
        },
    };
    let sock = open_netlink()?;
    send(&sock, &request)?;
    receive(&sock)
}

fn v4(octets: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&octets);
    a
}

fn open_netlink() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // The answer comes at once; a kernel that never answers must not wedge the caller.
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn send(sock: &OwnedFd, request: &Request) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_nl is valid; the family is set below (pid 0: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto with a pointer to a plain repr(C) struct and its exact size, and a valid
    // netlink address.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            (request as *const Request).cast(),
            size_of::<Request>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receive(sock: &OwnedFd) -> io::Result<u32> {
    let mut buf = [0u8; 8192];
    // SAFETY: recv into a buffer we own, with its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

/// The uid from the first message of a reply: an `inet_diag_msg`, or an error message.
fn parse_reply(bytes: &[u8]) -> io::Result<u32> {
    let hdr: NlMsgHdr = read_struct(bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"))?;
    let body = &bytes[size_of::<NlMsgHdr>().min(bytes.len())..];
    match hdr.kind as i32 {
        libc::NLMSG_ERROR => {
            let code: i32 = read_struct(body).unwrap_or(-libc::EPROTO);
            Err(io::Error::from_raw_os_error(code.saturating_neg()))
        }
        k if k == SOCK_DIAG_BY_FAMILY as i32 => {
            let m: DiagMsg = read_struct(body).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply")
            })?;
            // A TIME_WAIT entry is no longer a socket of anyone's and reports uid 0: never let
            // that pass for root.
            if m.state == TCP_TIME_WAIT {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the peer's socket is closed (TIME_WAIT)",
                ));
            }
            Ok(m.uid)
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink message type {other}"),
        )),
    }
}

/// Copies a plain repr(C) struct out of the front of `bytes`, if it is long enough.
fn read_struct<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: T is a plain-old-data repr(C) type (integers and byte arrays only, every bit
    // pattern valid) and `bytes` holds at least size_of::<T>() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut v as *mut T).cast::<u8>(),
            size_of::<T>(),
        );
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_owner_of_a_loopback_peer_in_both_families() {
        let me = nix::unistd::geteuid().as_raw();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = TcpListener::bind(bind) else {
                continue; // no IPv6 loopback on this machine
            };
            let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, peer) = l.accept().unwrap();
            assert_eq!(
                tcp_peer_uid(s.local_addr().unwrap(), peer).unwrap(),
                me,
                "{bind}"
            );
        }
    }

    #[test]
    fn reports_another_users_socket_as_theirs() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            return; // only root can start a client as another user
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import socket,time; s=socket.create_connection(('127.0.0.1',{port})); \
                     time.sleep(5)"
                ),
            ])
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let (s, peer) = l.accept().unwrap();
        let uid = tcp_peer_uid(s.local_addr().unwrap(), peer);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(uid.unwrap(), 65534);
    }

    #[test]
    fn a_peer_that_is_gone_is_an_error_not_a_guess() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let local = s.local_addr().unwrap();
        // The client closes first, then we do: its socket ends in TIME_WAIT, which reports
        // uid 0; that must not come back as an owner.
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(tcp_peer_uid(local, peer).is_err());
        let e = tcp_peer_uid(local, "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }

    #[test]
    fn replies_are_parsed_defensively() {
        assert!(parse_reply(&[]).is_err());
        assert!(parse_reply(&[0u8; 10]).is_err());
        let mut err = vec![0u8; size_of::<NlMsgHdr>() + 4];
        err[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            parse_reply(&err).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
    }
}
