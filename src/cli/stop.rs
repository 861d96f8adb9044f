//! `clove stop`: asks the daemon to shut down cleanly (SIGTERM), and waits until it has.

use super::exit::{Failure, Outcome};
use super::{Ctx, print_json, say};
use clap::Args;
use serde_json::json;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `clove stop`'s arguments.
#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait for the daemon to exit (it stops its agents first).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub timeout: f64,
}

/// `clove stop`. The daemon is the process at the other end of the socket, as the kernel
/// reports it (`SO_PEERCRED`), not as a reply says; only its owner (or root) may stop it,
/// which `kill(2)` checks again.
pub fn stop(ctx: &Ctx, a: StopArgs) -> Outcome {
    let mut c = ctx.connect()?;
    let peer = nix::sys::socket::getsockopt(c.stream(), nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| Failure::Unreachable(format!("cannot tell who serves the socket: {e}")))?;
    let (pid, uid) = (peer.pid(), peer.uid());
    let me = nix::unistd::geteuid();
    if uid != me.as_raw() && !me.is_root() {
        return Err(Failure::Refused(format!(
            "the daemon on {} (pid {pid}) belongs to uid {uid}; only its owner can stop it",
            ctx.socket.display()
        )));
    }
    // Opened before the signal, so the wait cannot miss the exit or hit a reused pid.
    let exit_fd = clove::process::pidfd_open(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|e| Failure::Refused(format!("cannot signal the daemon (pid {pid}): {e}")))?;
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(a.timeout.clamp(0.0, 86_400.0));
    let exited = match exit_fd {
        Some(fd) => wait_readable(&fd, deadline),
        // Without pidfds (Linux < 5.3): the daemon closes every connection as it exits.
        None => {
            let _ = c.set_timeout(Some(deadline.max(Duration::from_millis(1))));
            let mut byte = [0u8; 1];
            matches!(std::io::Read::read(c.stream(), &mut byte), Ok(0))
        }
    };
    if !exited {
        return Err(Failure::Refused(format!(
            "the daemon (pid {pid}) was asked to stop but has not exited after {:.0}s",
            a.timeout
        )));
    }
    if ctx.json {
        print_json(&json!({"stopped": true, "pid": pid,
            "seconds": started.elapsed().as_secs_f64()}));
    } else {
        say!(
            "stopped the daemon on {} (pid {pid}) in {:.1}s",
            ctx.socket.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until `fd` is readable or `timeout` has passed; true when readable.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return true;
        }
        let interrupted =
            n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted || left.is_zero() {
            return false;
        }
    }
}
