//! EXEC: run a shell command for a caller, with a timeout that kills the whole process group
//! and a cap on captured output.
//!
//! The command text is the one place a shell string is allowed (it is what EXEC means); every
//! other field is passed without a shell: `cwd` becomes `Command::current_dir`. The child runs
//! in its own process group so a timeout can kill everything it started. Waiting uses a pidfd
//! in the same `poll(2)` as the output pipes, so there is no sleeping or polling on a timer.

use super::asyncq::sync_or_async;
use super::request::{bytes, parse, to_bytes};
use super::{Call, Kernel, Responder};
use serde::Deserialize;
use serde_json::json;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long to keep reading output after the shell exits, for its background children.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);

/// Environment variables never passed to commands: the daemon may hold API keys and tokens
/// that the processes it runs for agents must not see.
pub fn is_secret_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["API_KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"]
        .iter()
        .any(|w| upper.contains(w))
}

#[derive(Deserialize)]
struct ExecReq {
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
}

/// EXEC `{command, cwd?, timeout?, async?}`.
pub fn exec(k: &Kernel, call: &Call, payload: Vec<u8>, responder: Responder) {
    sync_or_async(k, call, &payload, responder, || {
        bytes(run(k, call, &payload))
    });
}

fn run(k: &Kernel, call: &Call, payload: &[u8]) -> Result<Vec<u8>, String> {
    let req: ExecReq = parse(payload)?;
    if req.command.trim().is_empty() {
        return Err("invalid request: field `command` is empty".into());
    }
    if req.command.contains('\0') {
        return Err("invalid request: field `command` contains a NUL byte".into());
    }
    let perms = k.perms(call.caller);
    if let Err(e) = perms.may_exec(&req.command) {
        super::access::blocked(k, call, &e);
        return Err(e);
    }
    let cfg = &k.config;
    let mut cap = cfg.exec_max_timeout;
    if perms.max_exec_time_ms != 0 {
        cap = cap.min(Duration::from_millis(perms.max_exec_time_ms));
    }
    let timeout = match req.timeout {
        None => cfg.exec_default_timeout.min(cap),
        Some(t) if t.is_finite() && t > 0.0 => {
            let t = Duration::from_secs_f64(t.min(1e9));
            if t > cap {
                return Err(format!(
                    "timeout of {}s exceeds this caller's maximum of {}s",
                    t.as_secs_f64(),
                    cap.as_secs_f64()
                ));
            }
            t
        }
        Some(t) => {
            return Err(format!(
                "invalid timeout {t}: must be a number of seconds greater than 0"
            ));
        }
    };
    let cwd = match &req.cwd {
        Some(dir) => {
            let p = super::fs::resolve_existing(call, dir)?;
            if !p.is_dir() {
                return Err(format!("cwd {} is not a directory", p.display()));
            }
            p
        }
        None => super::fs::caller_cwd(call)
            .filter(|p| p.is_dir())
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    let output = run_command(k, &req.command, &cwd, timeout)?;
    let mut reply = json!({
        "success": output.exit_code == Some(0) && !output.timed_out,
        "stdout": String::from_utf8_lossy(&output.stdout),
        "stderr": String::from_utf8_lossy(&output.stderr),
        "exit_code": output.exit_code.unwrap_or(-1),
        "duration_ms": output.duration.as_millis() as u64,
    });
    if let Some(sig) = output.signal {
        reply["signal"] = sig.into();
    }
    if output.truncated {
        reply["truncated"] = true.into();
    }
    if output.timed_out {
        reply["exit_code"] = (-1).into();
        reply["error"] = format!("timeout after {}s", fmt_secs(timeout)).into();
    }
    Ok(to_bytes(&reply))
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// What a finished command produced.
#[derive(Debug)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code, or `-signal` when killed by a signal; `None` if it never exited normally.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration: Duration,
}

/// Runs `shell -c command` in its own process group and collects its output.
pub fn run_command(
    k: &Kernel,
    command: &str,
    cwd: &std::path::Path,
    timeout: Duration,
) -> Result<CommandOutput, String> {
    let cfg = &k.config;
    let mut cmd = Command::new(&cfg.exec_shell);
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_secret_env) {
            cmd.env_remove(&name);
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.exec_shell.display()))?;
    let pid = child.id() as i32;
    k.track_exec_group(pid, true);
    let result = collect(&mut child, pid, timeout, cfg.exec_max_output_bytes);
    // Reap the shell. After a timeout the group was SIGKILLed, so this returns promptly.
    let status = child.wait();
    k.track_exec_group(pid, false);
    let (stdout, stderr, truncated, timed_out) = result?;
    let status = status.map_err(|e| format!("cannot wait for command: {e}"))?;
    Ok(CommandOutput {
        stdout,
        stderr,
        exit_code: status.code().or_else(|| status.signal().map(|s| -s)),
        signal: status.signal(),
        truncated,
        timed_out,
        duration: started.elapsed(),
    })
}

type Collected = (Vec<u8>, Vec<u8>, bool, bool);

/// Reads stdout and stderr until both close (or shortly after the shell exits), the deadline
/// passes, or an error occurs. Output beyond `cap` bytes per stream is read and discarded, so
/// the command is never blocked on a full pipe.
fn collect(
    child: &mut std::process::Child,
    pid: i32,
    timeout: Duration,
    cap: usize,
) -> Result<Collected, String> {
    let deadline = Instant::now() + timeout;
    let mut pipes: [Option<Box<dyn ReadFd>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
    ];
    let mut bufs = [Vec::new(), Vec::new()];
    let mut truncated = false;
    let pidfd = pidfd_open(pid);
    let mut exited_at: Option<Instant> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if pipes.iter().all(Option::is_none) && (exited_at.is_some() || pidfd.is_none()) {
            break;
        }
        if now >= deadline {
            kill_group(pid);
            return Ok((bufs[0].split_off(0), bufs[1].split_off(0), truncated, true));
        }
        let mut wait_until = deadline;
        if let Some(t) = exited_at {
            let drain_end = t + DRAIN_AFTER_EXIT;
            if now >= drain_end {
                break;
            }
            wait_until = wait_until.min(drain_end);
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut which: Vec<usize> = Vec::with_capacity(3);
        for (i, p) in pipes.iter().enumerate() {
            if let Some(p) = p {
                fds.push(libc::pollfd {
                    fd: p.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if let (Some(fd), None) = (&pidfd, exited_at) {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            which.push(2);
        }
        let ms = wait_until
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            kill_group(pid);
            return Err(format!("poll failed while running command: {err}"));
        }
        for (pfd, &i) in fds.iter().zip(&which) {
            if pfd.revents == 0 {
                continue;
            }
            if i == 2 {
                exited_at = Some(Instant::now());
                continue;
            }
            let Some(pipe) = pipes[i].as_mut() else {
                continue;
            };
            match pipe.read_some(&mut chunk) {
                Ok(0) => pipes[i] = None,
                Ok(n) => {
                    let room = cap.saturating_sub(bufs[i].len());
                    if n > room {
                        truncated = true;
                    }
                    bufs[i].extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => pipes[i] = None,
            }
        }
    }
    Ok((bufs[0].split_off(0), bufs[1].split_off(0), truncated, false))
}

/// A pipe we can poll and read.
trait ReadFd: Send {
    fn raw(&self) -> i32;
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl<T: Read + AsFd + Send> ReadFd for T {
    fn raw(&self) -> i32 {
        self.as_fd().as_raw_fd()
    }
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }
}

/// `pidfd_open(2)`: a file descriptor that becomes readable when the process exits.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        None
    } else {
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// SIGKILL to a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_env_names() {
        assert!(is_secret_env("OPENAI_API_KEY"));
        assert!(is_secret_env("GITHUB_TOKEN"));
        assert!(!is_secret_env("PATH"));
        assert!(!is_secret_env("HOME"));
    }
}
