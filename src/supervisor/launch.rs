//! The agent launcher: a small single-threaded program (our own binary, run as
//! `clove __launch`) that builds an agent's sandbox and execs its interpreter.
//!
//! Why a separate process: a new pid namespace only applies to the *children* of the process
//! that unshares, and namespace, mount and fork work is unsafe in the daemon's multi-threaded
//! process. The launcher is freshly exec'd, so it is single-threaded and may fork freely.
//!
//! The launcher first starts a session of its own (`setsid`): connections are attributed to
//! agents by session (see `crate::kernel::identity`), and no process can join a session it
//! was not born in.
//!
//! Sandboxed, the tree is `daemon → launcher → init (pid 1 in the new pid namespace) →
//! interpreter`:
//! * the launcher unshares the pid, mount, uts, cgroup and (with `network: false`) net
//!   namespaces, plus a user namespace when not root, then forks `init`; it ignores SIGTERM
//!   and friends, waits for `init`, and finally ends the way the interpreter ended (same exit
//!   code, or killed by the same signal), so the supervisor sees the agent's real exit;
//! * `init` makes mount propagation private before mounting anything, mounts a fresh /proc,
//!   sets the hostname, brings up loopback in a new net namespace, reports what was applied,
//!   forks the interpreter and reaps every process of the namespace until the interpreter
//!   ends (when `init` exits, the kernel kills whatever is left in the namespace);
//! * the interpreter child joins the agent's cgroups, applies fallback rlimits, gives up every
//!   privilege (see [`super::caps::drop_all`]: a root daemon's agent becomes
//!   `sandbox.agent_user`; every agent ends with no capabilities, an empty bounding set and
//!   no-new-privileges, so it can neither mount nor write a cgroup file it does not own),
//!   restores default signal handling and execs `<interpreter> <script> <socket> [args...]`.
//!
//! Unsandboxed (or when namespaces are unavailable and not required) the launcher does the
//! last step itself and execs directly, so the agent *is* the supervised process.
//!
//! The launcher talks to the supervisor through a control socket (its stdin when started,
//! moved to a close-on-exec fd). First it waits for its spec, which the supervisor sends only
//! once it has recorded the launcher's pid (so nothing the agent starts can connect before the
//! daemon knows whose it is), and which keeps the spec off the command line. Then it reports:
//! one JSON line `{"isolation": {...}}` when the sandbox is ready, `{"error": "..."}` when it
//! is not; end-of-file without an error means the interpreter was exec'd.

use super::caps::{self, Creds};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

/// The hidden subcommand that runs the launcher.
pub const SUBCOMMAND: &str = "__launch";
/// Exit code of a launcher that could not set up the sandbox or join the cgroup.
pub const EXIT_SETUP: i32 = 126;
/// Exit code of a launcher that could not exec the interpreter.
pub const EXIT_EXEC: i32 = 127;

/// Everything the launcher needs, sent as JSON over its control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Absolute path of the interpreter.
    pub program: PathBuf,
    /// Its argv: `[name, script, socket, args...]`.
    pub argv: Vec<String>,
    pub sandboxed: bool,
    pub network: bool,
    pub hostname: String,
    /// Refuse (instead of degrading) when the namespaces cannot be made.
    pub require: bool,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// Fallback limits when cgroups could not take them.
    pub rlimit_as: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    /// The daemon's pid when the agent must die with it (`agents.on_shutdown = "stop"`).
    pub die_with: Option<i32>,
    /// The user a sandboxed agent becomes (a root daemon's `sandbox.agent_user`); `None`
    /// keeps the daemon's user (inside a user namespace when the daemon is not root).
    #[serde(default)]
    pub creds: Option<Creds>,
    /// (agents' socket, Clove socket): the first is mounted over the second in the agent's
    /// mount namespace, so that an agent running as `creds` can connect where the Clove
    /// socket is (the real one is the daemon user's alone).
    #[serde(default)]
    pub agent_socket: Option<(PathBuf, PathBuf)>,
}

/// What the sandbox ended up with, as reported to the supervisor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NsReport {
    pub namespaces: Vec<String>,
    pub proc_mounted: bool,
    pub loopback_up: bool,
    pub degraded: Option<String>,
}

/// A line from the launcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    Isolation(NsReport),
    Error(String),
}

struct Reporter(Option<std::fs::File>);

impl Reporter {
    fn send(&mut self, r: &Report) {
        if let Some(f) = self.0.as_mut()
            && let Ok(mut line) = serde_json::to_vec(r)
        {
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
    }

    fn fail(&mut self, code: i32, msg: String) -> ! {
        self.send(&Report::Error(msg.clone()));
        let _ = writeln!(std::io::stderr(), "clove launcher: {msg}");
        // SAFETY: _exit(2) ends the process without running destructors; always safe.
        unsafe { libc::_exit(code) }
    }

    fn close(&mut self) {
        self.0 = None;
    }
}

/// Most bytes of launch spec accepted (the arguments an agent may be given are bounded far
/// below this by `agents.max_args_bytes`).
const MAX_SPEC: u64 = 4 << 20;

/// The control socket, which the supervisor passes as our stdin: taken to a close-on-exec fd
/// (its end-of-file tells the supervisor that the interpreter was exec'd), and stdin becomes
/// /dev/null. Passing it as stdin rather than at a fixed fd lets the supervisor start us with
/// plain posix_spawn (no code between fork and exec, no copy of the daemon's page tables).
fn take_control() -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstat on fd 0 only inspects it.
    let socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd that we own from here on.
    let control = socket
        .then(|| unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) })
        .filter(|fd| *fd >= 0)
        // SAFETY: the fd was just made by F_DUPFD_CLOEXEC and nothing else owns it.
        .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0; `null` is closed when dropped, fd 0 stays.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    control
}

/// Waits for the spec on the control socket: the supervisor sends it once it has recorded our
/// pid (so whatever we start is known as the agent's before it can connect), then half-closes.
fn read_spec(control: Option<&std::fs::File>) -> Result<String, String> {
    use std::io::Read;
    let Some(mut c) = control else {
        return Err("no control socket on stdin (run by the daemon only)".into());
    };
    let mut text = String::new();
    (&mut c)
        .take(MAX_SPEC)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the launch spec: {e}"))?;
    Ok(text)
}

/// Entry point of `clove __launch` (its spec comes on the control socket). Never returns.
pub fn main() -> ! {
    let mut rep = Reporter(take_control());
    // A session of our own, first: the daemon attributes connections by session, and a
    // process can never join another session, only leave its own. (Our pid becomes the
    // session and process group id, which the supervisor signals.)
    // SAFETY: setsid(2) has no preconditions; it fails only for a group leader.
    if unsafe { libc::setsid() } < 0 {
        let e = std::io::Error::last_os_error();
        rep.fail(EXIT_SETUP, format!("cannot start a session: {e}"));
    }
    let spec_json = match read_spec(rep.0.as_ref()) {
        Ok(text) => text,
        Err(e) => rep.fail(EXIT_SETUP, e),
    };
    let spec: LaunchSpec = match serde_json::from_str(&spec_json) {
        Ok(s) => s,
        Err(e) => rep.fail(EXIT_SETUP, format!("bad launch spec: {e}")),
    };
    if let Some(daemon) = spec.die_with {
        // SAFETY: prctl and getppid with integer arguments.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                let e = std::io::Error::last_os_error();
                rep.fail(
                    EXIT_SETUP,
                    format!("cannot tie the agent to the daemon: {e}"),
                );
            }
            // The daemon may have died before the prctl: then nobody will send the signal.
            if libc::getppid() != daemon {
                rep.fail(EXIT_SETUP, "the daemon exited during spawn".into());
            }
        }
    }
    let root = nix::unistd::geteuid().is_root();
    if !spec.sandboxed {
        rep.send(&Report::Isolation(NsReport::default()));
        exec_agent(&spec, &mut rep, false);
    }
    let (flags, names) = namespaces(&spec, root);
    // SAFETY: unshare(2) with namespace flags; we are single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        let err = std::io::Error::last_os_error();
        let msg = format!("cannot create {} namespaces: {err}", names.join("+"));
        if spec.require {
            rep.fail(EXIT_SETUP, format!("sandbox requirement not met: {msg}"));
        }
        rep.send(&Report::Isolation(NsReport {
            degraded: Some(msg),
            ..Default::default()
        }));
        exec_agent(&spec, &mut rep, root);
    }
    if !root && let Err(e) = map_ids() {
        rep.fail(
            EXIT_SETUP,
            format!("cannot map ids in the user namespace: {e}"),
        );
    }
    fork_init(&spec, names, &mut rep)
}

/// The namespaces to unshare, and their names for the report. The cgroup namespace makes the
/// agent's view of cgroups start at the daemon's own cgroup; the mount namespace is owned by
/// the daemon's user namespace (root) or the new one, so the agent, without capabilities, can
/// mount nothing in it.
fn namespaces(spec: &LaunchSpec, root: bool) -> (libc::c_int, Vec<&'static str>) {
    let mut flags =
        libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;
    let mut names = vec!["pid", "mount", "uts", "cgroup"];
    if !spec.network {
        flags |= libc::CLONE_NEWNET;
        names.push("net");
    }
    if !root {
        flags |= libc::CLONE_NEWUSER;
        names.push("user");
    }
    (flags, names)
}

/// Forks `init` (pid 1 of the new pid namespace), waits for it and ends the way the agent
/// ended, as `init` reports it through a pipe.
fn fork_init(spec: &LaunchSpec, names: Vec<&str>, rep: &mut Reporter) -> ! {
    let mut status_pipe = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        rep.fail(
            EXIT_SETUP,
            format!("pipe: {}", std::io::Error::last_os_error()),
        );
    }
    // SAFETY: we are single-threaded, so the child may do anything.
    match unsafe { nix::unistd::fork() } {
        Err(e) => rep.fail(EXIT_SETUP, format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(status_pipe[0]) };
            init(spec, names, rep, status_pipe[1])
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            rep.close();
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(status_pipe[1]) };
            ignore_stop_signals();
            let status = wait_for(child.as_raw());
            let mut buf = [0u8; 5];
            // SAFETY: reading into a local buffer from our pipe end.
            let n = unsafe { libc::read(status_pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
            let reported = (n == 5).then(|| {
                let v = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
                if buf[0] == 1 {
                    Ended::Signal(v)
                } else {
                    Ended::Code(v)
                }
            });
            mirror(reported.unwrap_or(status))
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ended {
    Code(i32),
    Signal(i32),
}

fn decode(status: libc::c_int) -> Ended {
    if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(libc::WEXITSTATUS(status))
    }
}

/// Waits for one child, retrying interruptions.
pub(super) fn wait_for(pid: libc::pid_t) -> Ended {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return decode(status);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Ended::Code(EXIT_SETUP);
        }
    }
}

/// Ends this process the way the agent ended.
pub(super) fn mirror(e: Ended) -> ! {
    match e {
        Ended::Code(c) => std::process::exit(c),
        Ended::Signal(sig) => {
            // SAFETY: restoring the default action and re-raising the signal on ourselves;
            // no core file (the agent's own, if any, was already written).
            unsafe {
                let zero = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &zero);
                libc::signal(sig, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::kill(libc::getpid(), sig);
                libc::_exit(128 + sig)
            }
        }
    }
}

/// Signals a whole process group receives on KILL/PAUSE: the launcher and init must outlive
/// the agent's own handling of them.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

pub(super) fn ignore_stop_signals() {
    for s in FORWARDED {
        // SAFETY: setting a disposition to SIG_IGN.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
}

fn map_ids() -> std::io::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// pid 1 of the agent's namespace.
fn init(spec: &LaunchSpec, names: Vec<&str>, rep: &mut Reporter, status_fd: libc::c_int) -> ! {
    // Die with the launcher. (Its death before this call cannot be detected from inside the
    // namespace, where the parent's pid reads 0; the supervisor's SIGKILL to the process
    // group covers that window.)
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut report = NsReport {
        namespaces: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut problems = Vec::new();
    mount_inside(spec, &mut report, &mut problems);
    let host = spec.hostname.as_bytes();
    // SAFETY: the pointer and length describe `host`.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } != 0 {
        problems.push(format!(
            "cannot set hostname: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !spec.network {
        match loopback_up() {
            Ok(()) => report.loopback_up = true,
            Err(e) => problems.push(format!("cannot bring up loopback: {e}")),
        }
    }
    if !problems.is_empty() {
        let msg = problems.join("; ");
        if spec.require && !report.proc_mounted {
            rep.fail(EXIT_SETUP, format!("sandbox requirement not met: {msg}"));
        }
        report.degraded = Some(msg);
    }
    rep.send(&Report::Isolation(report));
    ignore_stop_signals();
    // SAFETY: init is single-threaded (a fork of the single-threaded launcher).
    let agent = match unsafe { nix::unistd::fork() } {
        Err(e) => rep.fail(EXIT_SETUP, format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: closing init's status pipe end in the agent.
            unsafe { libc::close(status_fd) };
            // Root, or inside its own user namespace: either way it holds CAP_SETPCAP and
            // must give up its bounding set.
            exec_agent(spec, rep, true)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
    };
    rep.close();
    // Reap everything in the namespace until the agent itself ends.
    let ended = loop {
        let mut status = 0;
        // SAFETY: waitpid for any child with a valid status pointer; init owns the namespace.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == agent {
            break decode(status);
        }
        if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => break Ended::Code(EXIT_SETUP),
            }
        }
    };
    let (kind, v) = match ended {
        Ended::Code(c) => (0u8, c),
        Ended::Signal(s) => (1u8, s),
    };
    let mut buf = [kind, 0, 0, 0, 0];
    buf[1..].copy_from_slice(&v.to_le_bytes());
    // SAFETY: writing a local buffer to our pipe end, then exiting.
    unsafe {
        libc::write(status_fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(match ended {
            Ended::Code(c) => c,
            Ended::Signal(s) => 128 + s,
        })
    }
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    let ptr = |o: &Option<CString>| o.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount(2) allows.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The mounts of the agent's mount namespace: private propagation first (nothing mounted here
/// may leak back to the host), then a fresh /proc, then the agents' socket over the Clove
/// socket's path (a root daemon's agents, see `LaunchSpec::agent_socket`).
fn mount_inside(spec: &LaunchSpec, report: &mut NsReport, problems: &mut Vec<String>) {
    if let Err(e) = mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE) {
        problems.push(format!("cannot make mounts private: {e}"));
        return;
    }
    match mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    ) {
        Ok(()) => report.proc_mounted = true,
        Err(e) => problems.push(format!("cannot mount /proc: {e}")),
    }
    if let Some((agents, clove)) = &spec.agent_socket
        && let Err(e) = bind_file(agents, clove)
    {
        problems.push(format!(
            "cannot give the agent the daemon's socket ({} over {}): {e}",
            agents.display(),
            clove.display()
        ));
    }
}

/// Bind-mounts the file `source` over the file `target` (in our own mount namespace, whose
/// propagation is private by now).
fn bind_file(source: &std::path::Path, target: &std::path::Path) -> std::io::Result<()> {
    let text = |p: &std::path::Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| std::io::Error::other("path is not UTF-8"))
    };
    mount(Some(&text(source)?), &text(target)?, None, libc::MS_BIND)
}

/// `ip link set lo up` by ioctl.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // struct ifreq: 16 bytes of name, then a union whose first member here is `short flags`.
    let mut ifr = [0u8; 40];
    ifr[..2].copy_from_slice(b"lo");
    // SAFETY: `ifr` is a buffer at least as large as struct ifreq.
    let r = unsafe {
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, ifr.as_mut_ptr());
        if r == 0 {
            let mut flags = i16::from_ne_bytes([ifr[16], ifr[17]]);
            flags |= (libc::IFF_UP | libc::IFF_RUNNING) as i16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, ifr.as_mut_ptr());
        }
        r
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if r == 0 { Ok(()) } else { Err(err) }
}

/// Joins `cgroup_procs` ("0" written to `cgroup.procs` means the writing process itself).
pub(super) fn join_cgroups(cgroup_procs: &[PathBuf]) -> Result<(), String> {
    for procs in cgroup_procs {
        std::fs::write(procs, "0")
            .map_err(|e| format!("cannot join cgroup {}: {e}", procs.display()))?;
    }
    Ok(())
}

/// Applies the fallback rlimits (limits cgroups could not take).
pub(super) fn set_rlimits(rlimit_as: Option<u64>, rlimit_nproc: Option<u64>) -> Result<(), String> {
    let set = |res, v: Option<u64>| -> Result<(), String> {
        if let Some(v) = v {
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            // SAFETY: setrlimit with a valid struct.
            if unsafe { libc::setrlimit(res, &lim) } != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    };
    set(libc::RLIMIT_AS, rlimit_as).and_then(|()| set(libc::RLIMIT_NPROC, rlimit_nproc))
}

/// Default dispositions for the signals the launcher ignores, and an empty mask, as a
/// program expects to start with.
pub(super) fn restore_signals() {
    // SAFETY: restoring default dispositions and an empty mask before exec.
    unsafe {
        for s in FORWARDED {
            libc::signal(s, libc::SIG_DFL);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Joins the cgroups, applies fallback rlimits, drops every privilege of a sandboxed agent
/// (see [`caps::drop_all`]; `need_bounding` when it holds CAP_SETPCAP), restores default
/// signal handling and execs the interpreter. Only returns by exiting.
fn exec_agent(spec: &LaunchSpec, rep: &mut Reporter, need_bounding: bool) -> ! {
    if let Err(e) = join_cgroups(&spec.cgroup_procs)
        .and_then(|()| set_rlimits(spec.rlimit_as, spec.rlimit_nproc))
    {
        rep.fail(EXIT_SETUP, e);
    }
    // After the cgroups (joining them takes root) and before anything of the agent's runs.
    if spec.sandboxed
        && let Err(e) = caps::drop_all(spec.creds, need_bounding)
    {
        rep.fail(EXIT_SETUP, format!("cannot drop privileges: {e}"));
    }
    restore_signals();
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&spec.program);
    if let Some((first, rest)) = spec.argv.split_first() {
        cmd.arg0(first).args(rest);
    }
    let err = cmd.exec();
    rep.fail(
        EXIT_EXEC,
        format!("cannot run {}: {err}", spec.program.display()),
    )
}
