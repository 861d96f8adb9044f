//! What systemd hands a service, and what the service tells it back: the socket it passes
//! (socket activation, `LISTEN_FDS`), readiness and status (`NOTIFY_SOCKET`), the watchdog
//! (`WATCHDOG_USEC`), and whether stderr goes to the journal (`JOURNAL_STREAM`).
//!
//! A leaf: std, libc, nix and log only. Every variable is read once, at start, by
//! [`Handoff::take`], which also removes the ones meant for this process alone, so agents and
//! commands the daemon starts do not inherit them (a child that saw `NOTIFY_SOCKET` could
//! speak for the daemon; one that saw `LISTEN_FDS` could take descriptors it does not have).
//! Nothing here is required: outside systemd every part is simply absent.
//!
//! The parsers are pure functions of the variables' text (and our pid), tested below; the
//! wire format is documented in `sd_listen_fds(3)`, `sd_notify(3)` and `sd_watchdog_enabled(3)`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More passed descriptors than this is a misconfiguration, not something to iterate over.
const MAX_LISTEN_FDS: usize = 64;
/// How often the status line is recomputed (and sent when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// A variable systemd set that cannot be used. The daemon refuses to start on one: a unit that
/// passes a socket we cannot use is a broken unit, and guessing would hide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdError(pub String);

impl fmt::Display for SystemdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SystemdError {}

fn bad(msg: impl Into<String>) -> SystemdError {
    SystemdError(msg.into())
}

/// Parses `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`: the names of the descriptors passed
/// to us (one per descriptor, starting at fd 3; a descriptor without a name gets `unknown`, as
/// systemd itself says), or `None` when nothing was passed to this process.
///
/// Variables meant for another process (`LISTEN_PID` is not ours, e.g. inherited from a parent
/// that was socket-activated) are not ours to use: `None`, as `sd_listen_fds(3)` does.
pub fn parse_listen_fds(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    my_pid: u32,
) -> Result<Option<Vec<String>>, SystemdError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| bad(format!("LISTEN_PID={pid:?} is not a process id")))?;
    if pid != my_pid {
        return Ok(None);
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| bad(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_LISTEN_FDS {
        return Err(bad(format!(
            "LISTEN_FDS={n}: more than {MAX_LISTEN_FDS} descriptors passed"
        )));
    }
    let names: Vec<String> = match names {
        None | Some("") => vec!["unknown".to_string(); n],
        Some(text) => text.split(':').map(str::to_string).collect(),
    };
    if names.len() != n {
        return Err(bad(format!(
            "LISTEN_FDNAMES names {} descriptors but LISTEN_FDS={n}",
            names.len()
        )));
    }
    Ok(Some(names))
}

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A datagram socket in the file system.
    Path(PathBuf),
    /// A socket in the abstract namespace (`@name`; the bytes after the `@`).
    Abstract(Vec<u8>),
}

/// Parses `NOTIFY_SOCKET`: an absolute path, or `@` and an abstract name. (systemd ≥ 253 may
/// also pass `vsock:` addresses, for virtual machines; a login node's daemon never gets one.)
pub fn parse_notify_socket(text: &str) -> Result<NotifyAddr, SystemdError> {
    if let Some(name) = text.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad("NOTIFY_SOCKET=@ names no socket"));
        }
        return Ok(NotifyAddr::Abstract(name.as_bytes().to_vec()));
    }
    if text.starts_with('/') {
        return Ok(NotifyAddr::Path(PathBuf::from(text)));
    }
    Err(bad(format!(
        "NOTIFY_SOCKET={text:?} is neither an absolute path nor an @abstract name"
    )))
}

/// Parses `WATCHDOG_USEC` and `WATCHDOG_PID` into the interval at which to ping: half the
/// timeout, as `sd_watchdog_enabled(3)` recommends, so one late turn is not yet a restart.
/// `None` when the watchdog is off or meant for another process.
pub fn parse_watchdog(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Result<Option<Duration>, SystemdError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| bad(format!("WATCHDOG_PID={pid:?} is not a process id")))?;
        if pid != my_pid {
            return Ok(None);
        }
    }
    let usec: u64 = usec
        .trim()
        .parse()
        .map_err(|_| bad(format!("WATCHDOG_USEC={usec:?} is not a number")))?;
    if usec == 0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_micros(usec) / 2))
}

/// Parses `JOURNAL_STREAM` (`DEVICE:INODE`, both decimal) into the pair to compare with
/// stderr's `fstat`.
pub fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// True when stderr is the journal's stream: `JOURNAL_STREAM` is set *and* names stderr's
/// device and inode. (The variable alone is not enough: a service's child whose stderr was
/// redirected elsewhere inherits it; `systemd.exec(5)` says to compare.)
pub fn under_journald() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    match nix::sys::stat::fstat(io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// A socket systemd passed and that we serve on.
#[derive(Debug)]
pub struct ActivatedSocket {
    pub listener: UnixListener,
    /// Its path in the file system (for logs, the ready line and agents' `CLOVE_SOCKET`).
    pub path: PathBuf,
    /// The name systemd gave it (`FileDescriptorName=`, default: the socket unit's name).
    pub name: String,
}

/// Checks that `fd` is a listening Unix stream socket with a path.
pub fn check_unix_listener(fd: BorrowedFd<'_>) -> Result<PathBuf, SystemdError> {
    use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};
    let raw = fd.as_raw_fd();
    let kind = getsockopt(&fd, sockopt::SockType)
        .map_err(|e| bad(format!("fd {raw} is not a socket ({e})")))?;
    if kind != SockType::Stream {
        return Err(bad(format!(
            "fd {raw} is a {kind:?} socket, not a stream socket (ListenStream=)"
        )));
    }
    let addr = getsockname::<UnixAddr>(raw)
        .map_err(|e| bad(format!("fd {raw} is not a Unix socket ({e})")))?;
    let Some(path) = addr.path() else {
        return Err(bad(format!(
            "fd {raw} is a Unix socket without a path (abstract or unnamed); clove needs a path"
        )));
    };
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => Ok(path.to_path_buf()),
        Ok(false) => Err(bad(format!(
            "fd {raw} ({}) is not listening (Accept=yes is not supported)",
            path.display()
        ))),
        Err(e) => Err(bad(format!("fd {raw}: cannot ask SO_ACCEPTCONN ({e})"))),
    }
}

/// Takes the descriptor systemd passed at `fd`: marks it close-on-exec (agents must not
/// inherit the listening socket), checks it, and makes it non-blocking for the event loop.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process (true for a passed descriptor
/// taken once, at start).
unsafe fn take_fd(fd: RawFd, name: &str) -> Result<ActivatedSocket, SystemdError> {
    // SAFETY: F_GETFD on any integer is harmless; it tells whether the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(format!(
            "LISTEN_FDS promised fd {fd} ({name}) but it is not open"
        )));
    }
    // SAFETY: open (checked above) and, per this function's contract, not owned elsewhere.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| bad(format!("fd {fd} ({name}): cannot set close-on-exec ({e})")))?;
    let path = check_unix_listener(owned.as_fd()).map_err(|e| bad(format!("{name}: {e}")))?;
    let listener = UnixListener::from(owned);
    listener.set_nonblocking(true).map_err(|e| {
        bad(format!(
            "fd {fd} ({name}): cannot make it non-blocking ({e})"
        ))
    })?;
    Ok(ActivatedSocket {
        listener,
        path,
        name: name.to_string(),
    })
}

/// Sends `sd_notify(3)` messages to systemd. Cheap to clone; sending never blocks for long
/// (a datagram to a local socket) and never fails the caller: the first lost notification is
/// logged as a warning, later ones at debug level (the watchdog would repeat it every turn).
#[derive(Clone, Debug)]
pub struct Notifier {
    inner: Arc<NotifierInner>,
}

#[derive(Debug)]
struct NotifierInner {
    sock: UnixDatagram,
    addr: SocketAddr,
    warned: AtomicBool,
}

impl Notifier {
    /// A notifier for `addr` (what `NOTIFY_SOCKET` named).
    pub fn new(addr: &NotifyAddr) -> io::Result<Notifier> {
        let addr = match addr {
            NotifyAddr::Path(p) => SocketAddr::from_pathname(p)?,
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
        };
        Ok(Notifier {
            inner: Arc::new(NotifierInner {
                sock: UnixDatagram::unbound()?,
                addr,
                warned: AtomicBool::new(false),
            }),
        })
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let n = self
            .inner
            .sock
            .send_to_addr(message.as_bytes(), &self.inner.addr)?;
        if n != message.len() {
            return Err(io::Error::other("notification cut short"));
        }
        Ok(())
    }

    fn send_logged(&self, message: &str) {
        if let Err(e) = self.send(message) {
            if self.inner.warned.swap(true, Ordering::Relaxed) {
                log::debug!("cannot notify systemd ({message:?}): {e}");
            } else {
                log::warn!(
                    "cannot notify systemd ({message:?}): {e}; further failures at debug level"
                );
            }
        }
    }

    /// `READY=1` with a status line: start-up is complete and every listener answers.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=`: what `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send_logged(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=stopping");
    }

    /// `WATCHDOG=1`: the event loop is turning.
    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }
}

/// A status line must stay one line: a newline would start another assignment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Everything systemd handed this process, taken once at start.
#[derive(Debug, Default)]
pub struct Handoff {
    /// The socket to serve on instead of binding one (socket activation).
    pub socket: Option<ActivatedSocket>,
    /// Where readiness, status and watchdog pings go (`Type=notify`).
    pub notifier: Option<Notifier>,
    /// How often to ping the watchdog (half of `WatchdogSec=`); only with a notifier.
    pub watchdog: Option<Duration>,
}

/// The variables [`Handoff::take`] reads and then removes.
const OUR_VARIABLES: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

impl Handoff {
    /// Reads what systemd passed, takes the passed socket, and removes the variables so that
    /// no child inherits them.
    ///
    /// Call it once, first thing, while the process has one thread: it changes the
    /// environment, which is only sound with no other thread reading it.
    pub fn take() -> Result<Handoff, SystemdError> {
        let var = |k: &str| std::env::var(k).ok();
        let my_pid = std::process::id();
        let listen = parse_listen_fds(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            my_pid,
        );
        let notify = var("NOTIFY_SOCKET");
        let watchdog = parse_watchdog(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            my_pid,
        );
        for k in OUR_VARIABLES {
            // SAFETY: the caller promises a single-threaded process (see above).
            unsafe { std::env::remove_var(k) };
        }
        let mut handoff = Handoff::default();
        if let Some(names) = listen? {
            handoff.socket = Some(take_socket(&names)?);
        }
        if let Some(text) = notify {
            let addr = parse_notify_socket(&text)?;
            let notifier =
                Notifier::new(&addr).map_err(|e| bad(format!("NOTIFY_SOCKET={text:?}: {e}")))?;
            handoff.notifier = Some(notifier);
            handoff.watchdog = watchdog?;
        } else if watchdog?.is_some() {
            log::warn!("WATCHDOG_USEC is set but NOTIFY_SOCKET is not; no watchdog pings");
        }
        Ok(handoff)
    }
}

/// Takes the passed descriptors (fd 3 on): the first listening Unix stream socket is served;
/// any other is closed with a warning (clove has one Unix listener; TCP listeners are not
/// socket-activated).
fn take_socket(names: &[String]) -> Result<ActivatedSocket, SystemdError> {
    let mut chosen: Option<ActivatedSocket> = None;
    let mut problems = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        // SAFETY: systemd passed fds 3..3+n to us, and this is the only place that takes them,
        // once.
        match unsafe { take_fd(fd, name) } {
            Ok(s) if chosen.is_none() => chosen = Some(s),
            Ok(s) => log::warn!(
                "systemd passed a second socket, {} ({}); only one is served, closing it",
                s.path.display(),
                s.name
            ),
            Err(e) => problems.push(e.0),
        }
    }
    match chosen {
        Some(s) => {
            for p in problems {
                log::warn!("ignoring a descriptor systemd passed: {p}");
            }
            Ok(s)
        }
        None => Err(bad(format!(
            "systemd passed no usable socket: {}",
            problems.join("; ")
        ))),
    }
}

/// The reactor's systemd timer: `WATCHDOG=1` every half watchdog interval and `STATUS=` when
/// the status line changes. The reactor consults [`Heartbeat::deadline`] for its poll timeout
/// and calls [`Heartbeat::tick`] on every turn, so pings stop when the event loop stops
/// turning, which is what lets systemd restart a wedged daemon.
pub struct Heartbeat {
    notifier: Notifier,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    status: Box<dyn FnMut() -> String + Send>,
    last_status: String,
    next_status: Instant,
}

impl Heartbeat {
    /// `status` renders the current status line; `initial` is the one already sent (with
    /// READY=1). The first watchdog ping goes out on the first turn.
    pub fn new(
        notifier: Notifier,
        watchdog: Option<Duration>,
        initial: String,
        status: Box<dyn FnMut() -> String + Send>,
    ) -> Heartbeat {
        let now = Instant::now();
        Heartbeat {
            notifier,
            watchdog,
            next_watchdog: now,
            status,
            last_status: initial,
            next_status: now + STATUS_EVERY,
        }
    }

    /// When the reactor must turn next at the latest.
    pub fn deadline(&self) -> Instant {
        match self.watchdog {
            Some(_) => self.next_watchdog.min(self.next_status),
            None => self.next_status,
        }
    }

    /// Sends what is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        if let Some(every) = self.watchdog
            && now >= self.next_watchdog
        {
            self.notifier.watchdog();
            self.next_watchdog = now + every;
        }
        if now >= self.next_status {
            let status = (self.status)();
            if status != self.last_status {
                self.notifier.status(&status);
                self.last_status = status;
            }
            self.next_status = now + STATUS_EVERY;
        }
    }
}

impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeat")
            .field("watchdog", &self.watchdog)
            .field("last_status", &self.last_status)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn listen_fds_for_us() {
        assert_eq!(
            parse_listen_fds(Some("42"), Some("1"), None, 42),
            Ok(Some(vec!["unknown".to_string()]))
        );
        assert_eq!(
            parse_listen_fds(Some("42"), Some("2"), Some("clove.socket:extra"), 42),
            Ok(Some(vec!["clove.socket".to_string(), "extra".to_string()]))
        );
    }

    #[test]
    fn listen_fds_absent_zero_or_for_another_process() {
        assert_eq!(parse_listen_fds(None, None, None, 42), Ok(None));
        assert_eq!(parse_listen_fds(None, Some("1"), None, 42), Ok(None));
        assert_eq!(parse_listen_fds(Some("42"), None, None, 42), Ok(None));
        assert_eq!(parse_listen_fds(Some("43"), Some("1"), None, 42), Ok(None));
        assert_eq!(parse_listen_fds(Some("42"), Some("0"), None, 42), Ok(None));
    }

    #[test]
    fn listen_fds_malformed() {
        for (pid, fds, names) in [
            ("x", "1", None),
            ("42", "one", None),
            ("42", "-1", None),
            ("42", "100000", None),
            ("42", "1", Some("a:b")),
            ("42", "2", Some("a")),
        ] {
            let r = parse_listen_fds(Some(pid), Some(fds), names, 42);
            assert!(r.is_err(), "{pid} {fds} {names:?}: {r:?}");
        }
    }

    #[test]
    fn notify_socket_forms() {
        assert_eq!(
            parse_notify_socket("/run/systemd/notify"),
            Ok(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket("@/org/freedesktop/systemd1/notify/42"),
            Ok(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        for text in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(parse_notify_socket(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout() {
        assert_eq!(
            parse_watchdog(Some("400000"), None, 7),
            Ok(Some(Duration::from_millis(200)))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(parse_watchdog(None, Some("7"), 7), Ok(None));
        assert_eq!(parse_watchdog(Some("0"), None, 7), Ok(None));
        assert_eq!(parse_watchdog(Some("400000"), Some("8"), 7), Ok(None));
        assert!(parse_watchdog(Some("soon"), None, 7).is_err());
        assert!(parse_watchdog(Some("400000"), Some("me"), 7).is_err());
    }

    #[test]
    fn journal_stream_pairs() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        for text in ["", "8", "8:", ":1", "a:b", "8:1:2"] {
            assert_eq!(parse_journal_stream(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_listening_unix_stream_socket_is_accepted_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(check_unix_listener(listener.as_fd()), Ok(path.clone()));

        let connected = UnixStream::connect(&path).unwrap();
        let e = check_unix_listener(connected.as_fd()).unwrap_err();
        assert!(e.0.contains("without a path"), "{e}");
        let dgram = UnixDatagram::bind(dir.path().join("d.sock")).unwrap();
        let e = check_unix_listener(dgram.as_fd()).unwrap_err();
        assert!(e.0.contains("not a stream socket"), "{e}");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = check_unix_listener(tcp.as_fd()).unwrap_err();
        assert!(e.0.contains("not a Unix socket"), "{e}");
        let file = std::fs::File::open(dir.path()).unwrap();
        let e = check_unix_listener(file.as_fd()).unwrap_err();
        assert!(e.0.contains("not a socket"), "{e}");
    }

    fn receive(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(&parse_notify_socket(path.to_str().unwrap()).unwrap()).unwrap();
        n.ready("listening on /x\nsecond line");
        assert_eq!(
            receive(&systemd),
            "READY=1\nSTATUS=listening on /x second line"
        );
        n.watchdog();
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        n.stopping();
        assert_eq!(receive(&systemd), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("clove-test-notify-{}", std::process::id());
        let systemd =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        systemd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(&parse_notify_socket(&format!("@{name}")).unwrap()).unwrap();
        n.status("3 agents");
        assert_eq!(receive(&systemd), "STATUS=3 agents");
    }

    #[test]
    fn heartbeat_pings_when_due_and_reports_changed_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd.set_nonblocking(true).unwrap();
        let n = Notifier::new(&NotifyAddr::Path(path)).unwrap();
        let mut agents = 0;
        let mut hb = Heartbeat::new(
            n,
            Some(Duration::from_millis(200)),
            "0 agents".into(),
            Box::new(move || {
                agents += 1;
                format!("{} agents", agents / 2)
            }),
        );
        let start = Instant::now();
        assert!(hb.deadline() <= start, "the first ping is due at once");
        hb.tick(start);
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        assert_eq!(hb.deadline(), start + Duration::from_millis(200));
        hb.tick(start + Duration::from_millis(100));
        assert!(systemd.recv(&mut [0; 64]).is_err(), "nothing due yet");
        // Past the watchdog and the status interval: a ping, and the status only if changed
        // (the closure says "0 agents" on its first call: same as sent with READY).
        hb.tick(start + STATUS_EVERY);
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        assert!(systemd.recv(&mut [0; 64]).is_err(), "unchanged status");
        hb.tick(start + STATUS_EVERY * 2);
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        assert_eq!(receive(&systemd), "STATUS=1 agents");
    }

    #[test]
    fn without_a_watchdog_only_the_status_timer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(&NotifyAddr::Path(dir.path().join("nobody"))).unwrap();
        let hb = Heartbeat::new(n, None, String::new(), Box::new(String::new));
        assert!(hb.deadline() > Instant::now() + STATUS_EVERY / 2);
    }
}
