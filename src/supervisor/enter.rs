//! Running a command inside a running agent's confinement: the helper behind EXEC on behalf of
//! an agent (our own binary, run as `clove __enter`). Its spec (an [`EnterSpec`] as JSON) comes
//! on its standard input, which the daemon writes and closes (on the command line it would make
//! `ps` unreadable and a long command could pass the kernel's limit of 128 KiB for one
//! argument); the command itself then gets /dev/null as its standard input, as any EXEC does.
//!
//! What an agent starts must never hold more than the agent itself: a command it runs through
//! EXEC must not reach the network, the pid space or the cgroups the agent cannot, nor keep a
//! capability the agent gave up. So the helper, single-threaded and freshly exec'd:
//! 1. starts a session of its own (the daemon attributes the command's processes to the agent
//!    by this session, and kills the command's process group, led by the helper, on timeout);
//! 2. joins the agent's cgroups and, for a sandboxed agent with its own pid namespace, its
//!    user (if any), mount, uts, net, cgroup and pid namespaces, taken from the agent's
//!    launcher after checking that the launcher's pid namespace is the one recorded for the
//!    agent (so a recycled pid is never entered);
//! 3. forks (a pid namespace applies to children only); the child applies the agent's
//!    fallback rlimits, gives up every privilege as the agent did (its user, no capabilities,
//!    an empty bounding set, no-new-privileges) and execs `shell -c COMMAND` with the output
//!    pipes the command runner reads; the helper waits for it and ends the same way.
//!
//! Without a pid namespace (an unsandboxed agent, or a sandbox that could not be made) there
//! is nothing to join but the cgroups, and the helper does step 3 itself without forking.

use super::caps::{self, Creds};
use super::launch;
use crate::kernel::identity::NsId;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The hidden subcommand that runs the helper.
pub const SUBCOMMAND: &str = "__enter";
/// Exit code of a helper that could not enter the agent's confinement.
pub const EXIT_SETUP: i32 = 126;
/// Exit code of a helper that could not exec the shell.
pub const EXIT_EXEC: i32 = 127;

/// How to run a process inside one running agent's confinement; kept in the agent table by
/// the supervisor while the agent's process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The agent's supervised process (its launcher), whose namespaces are the agent's.
    pub launcher: i32,
    /// The agent's pid namespace (the launcher's `pid_for_children`), when it has its own.
    pub pid_ns: Option<NsId>,
    /// `cgroup.procs` files of the agent's cgroups.
    pub cgroup_procs: Vec<PathBuf>,
    /// The agent's fallback limits (those cgroups could not take).
    pub rlimit_as: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    /// Drop every privilege before exec, as the (sandboxed) agent did.
    pub sandboxed: bool,
    /// The user the agent runs as, when it is not the daemon's.
    pub creds: Option<Creds>,
    /// Whether an empty bounding set can and must be had (see [`caps::drop_all`]).
    pub need_bounding: bool,
}

/// Everything the helper needs, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnterSpec {
    pub confinement: Confinement,
    pub shell: PathBuf,
    /// The EXEC request's shell text (the one place a shell string is allowed).
    pub command: String,
    pub cwd: PathBuf,
}

/// Writes why the command could not be started to stderr (the EXEC reply's `stderr`) and
/// exits.
fn fail(code: i32, msg: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "clove: cannot run the command in the agent's sandbox: {msg}"
    );
    // SAFETY: _exit(2) ends the process without running destructors; always safe.
    unsafe { libc::_exit(code) }
}

/// Reads the spec from standard input to its end, then makes /dev/null the standard input.
fn take_spec() -> Result<String, String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|e| format!("cannot read the spec from standard input: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    // SAFETY: dup2 onto fd 0; `null` is closed when dropped, fd 0 stays.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(format!(
            "cannot reopen standard input: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(text)
}

/// Entry point of `clove __enter` (the spec on standard input). Never returns.
pub fn main() -> ! {
    // SAFETY: setsid(2) has no preconditions; it fails only for a group leader.
    if unsafe { libc::setsid() } < 0 {
        let e = std::io::Error::last_os_error();
        fail(EXIT_SETUP, &format!("cannot start a session: {e}"));
    }
    let spec_json = match take_spec() {
        Ok(t) => t,
        Err(e) => fail(EXIT_SETUP, &e),
    };
    let spec: EnterSpec = match serde_json::from_str(&spec_json) {
        Ok(s) => s,
        Err(e) => fail(EXIT_SETUP, &format!("bad spec: {e}")),
    };
    let c = &spec.confinement;
    // Opened while the host's /proc is still ours (joining the mount namespace changes it).
    let namespaces = match c.pid_ns {
        Some(expected) => match open_namespaces(c.launcher, expected) {
            Ok(ns) => Some(ns),
            Err(e) => fail(EXIT_SETUP, &e),
        },
        None => None,
    };
    // Joining a cgroup needs the host's view of the cgroup files (and, for a root daemon,
    // root): before any namespace is entered.
    if let Err(e) = launch::join_cgroups(&c.cgroup_procs) {
        fail(EXIT_SETUP, &e);
    }
    let Some(namespaces) = namespaces else {
        run(&spec)
    };
    if let Err(e) = enter(&namespaces) {
        fail(EXIT_SETUP, &e);
    }
    // Entering a mount namespace moved us to its root.
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        fail(
            EXIT_SETUP,
            &format!("cannot change to {}: {e}", spec.cwd.display()),
        );
    }
    drop(namespaces);
    // SAFETY: the helper is single-threaded, so the child may do anything.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(EXIT_SETUP, &format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => run(&spec),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // The helper only waits; it keeps nothing the command gave up.
            launch::ignore_stop_signals();
            let _ = caps::drop_all(None, false);
            launch::mirror(launch::wait_for(child.as_raw()))
        }
    }
}

/// The agent's namespaces, in the order they are entered: the user namespace first (it
/// grants the capabilities that entering the others needs when the daemon is not root).
struct Namespaces(Vec<(OwnedFd, libc::c_int, &'static str)>);

/// Opens the namespaces of the agent's launcher, checking first that its pid namespace is
/// the recorded one. Namespaces that are already ours (a `network: true` agent's net, a root
/// daemon's user namespace) are left out.
fn open_namespaces(launcher: i32, expected: NsId) -> Result<Namespaces, String> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let dir = std::fs::File::open(format!("/proc/{launcher}"))
        .map_err(|e| format!("the agent's process {launcher} is gone: {e}"))?;
    let open = |name: &str| {
        openat(
            &dir,
            format!("ns/{name}").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open the agent's {name} namespace: {e}"))
    };
    let pid = open("pid_for_children")?;
    if NsId::of_fd(&pid) != Some(expected) {
        return Err(format!(
            "process {launcher} is no longer the agent's (its pid namespace differs)"
        ));
    }
    let mut ns = Vec::new();
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("mnt", libc::CLONE_NEWNS),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
    ] {
        let fd = open(name)?;
        if NsId::of_fd(&fd) != NsId::of_path(&format!("/proc/self/ns/{name}")) {
            ns.push((fd, flag, name));
        }
    }
    ns.push((pid, libc::CLONE_NEWPID, "pid"));
    Ok(Namespaces(ns))
}

/// `setns(2)` into each namespace.
fn enter(ns: &Namespaces) -> Result<(), String> {
    for (fd, flag, name) in &ns.0 {
        // SAFETY: setns(2) on a namespace descriptor we opened; we are single-threaded.
        if unsafe { libc::setns(fd.as_raw_fd(), *flag) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot enter the agent's {name} namespace: {e}"));
        }
    }
    Ok(())
}

/// Applies the agent's rlimits, drops what the agent dropped, and execs `shell -c command`.
fn run(spec: &EnterSpec) -> ! {
    let c = &spec.confinement;
    if let Err(e) = launch::set_rlimits(c.rlimit_as, c.rlimit_nproc) {
        fail(EXIT_SETUP, &e);
    }
    if c.sandboxed
        && let Err(e) = caps::drop_all(c.creds, c.need_bounding)
    {
        fail(EXIT_SETUP, &format!("cannot drop privileges: {e}"));
    }
    launch::restore_signals();
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&spec.shell)
        .arg("-c")
        .arg(&spec.command)
        .exec();
    fail(
        EXIT_EXEC,
        &format!("cannot run {}: {err}", spec.shell.display()),
    )
}
