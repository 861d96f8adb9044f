//! Small process helpers shared by everything that starts processes (the supervisor, EXEC's
//! command runner, the router's local provider, the CLI): exit checks that leave the zombie
//! in place, pidfds, and signals to a process group.

use std::os::fd::{FromRawFd, OwnedFd};

/// True when our child `pid` has exited; the zombie is left in place (`WNOWAIT`), so the pid
/// stays ours until it is reaped.
pub fn has_exited(pid: i32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-buffer for waitid(2).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on one specific child with a valid siginfo pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after a successful waitid.
    r == 0 && unsafe { info.si_pid() } == pid
}

/// `pidfd_open(2)`: a file descriptor that becomes readable when the process exits.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `sig` to the process group `pgid`; a group that is gone is fine. A process we start
/// makes its group (with its session) first thing; until then the group does not exist and
/// the process, which has not forked yet, is signalled alone.
pub fn signal_group(pgid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on the process group (or the process) we started.
    unsafe {
        if libc::kill(-pgid, sig) != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            libc::kill(pgid, sig);
        }
    }
}

/// SIGKILL to a whole process group (see [`signal_group`]).
pub fn kill_group(pgid: i32) {
    signal_group(pgid, libc::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_seen_to_exit_through_its_pidfd_and_waitid() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let fd = pidfd_open(pid).expect("pidfd");
        assert!(!has_exited(pid));
        kill_group(pid);
        let mut fds = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one valid pollfd.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) }, 1);
        assert!(has_exited(pid), "WNOWAIT leaves the zombie, and sees it");
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
    }
}
