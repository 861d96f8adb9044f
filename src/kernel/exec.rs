//! EXEC: run a shell command for a caller, with a timeout that kills the whole process group
//! and a cap on captured output.
//!
//! The command text is the one place a shell string is allowed (it is what EXEC means); every
//! other field is passed without a shell: `cwd` becomes `Command::current_dir`. The child runs
//! in its own process group so a timeout can kill everything it started. A worker checks the
//! request and starts the command; the [`super::commands`] thread then watches it to the end,
//! so a long command holds no worker.

use super::asyncq::Reservation;
use super::commands::{CommandRunner, Finished, Launch, Ticket};
use super::identity::ExecOwner;
use super::request::{parse, to_bytes};
use super::{Call, CallerKind, Kernel, Responder};
use serde::Deserialize;
use serde_json::json;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// EXEC `{command, cwd?, timeout?, async?}` (on a worker): checks the request, starts the
/// command and hands it to the command runner, which answers when it ends. The worker is free
/// again at once, however long the command runs. Everything that can refuse the request is
/// checked before an async EXEC is accepted, so refusals come back as the EXEC's own reply.
pub fn exec(k: &Kernel, call: &Call, payload: Vec<u8>, responder: Responder) {
    let reservation = match Reservation::new(k, call, &payload) {
        Ok(r) => r,
        Err(e) => return responder.error(e),
    };
    let (runner, started) = match start(k, call, &payload) {
        Ok(s) => s,
        Err(e) => {
            reservation.cancel(k);
            return responder.error(e);
        }
    };
    let reply = reservation.start(responder);
    let timeout = started.timeout;
    runner.run(
        k,
        Launch {
            child: started.child,
            timeout,
            max_output: k.config.exec_max_output_bytes,
            ticket: started.ticket,
            done: Box::new(move |k: &Kernel, f: Finished| {
                k.exec_finished(f.pid);
                reply.deliver(k, &to_bytes(&f.reply(timeout)));
            }),
        },
    );
}

/// A command that has started and holds its place in the runner.
struct Started {
    child: std::process::Child,
    timeout: Duration,
    ticket: Ticket,
}

/// Checks the request, takes a place in the runner and starts the command.
fn start<'k>(
    k: &'k Kernel,
    call: &Call,
    payload: &[u8],
) -> Result<(&'k CommandRunner, Started), String> {
    let checked = check(k, call, payload)?;
    let Some(runner) = k.commands.get() else {
        return Err("the command runner is not running".into());
    };
    let ticket = runner.admit(call.caller)?;
    let owner = ExecOwner {
        caller: call.caller,
        kind: k
            .caller(call.caller)
            .map(|c| c.kind)
            .unwrap_or(CallerKind::Client),
        perms: checked.perms,
    };
    let child = spawn(k, &checked.command, &checked.cwd)?;
    k.exec_started(child.id() as i32, owner);
    Ok((
        runner,
        Started {
            child,
            timeout: checked.timeout,
            ticket,
        },
    ))
}

/// A checked EXEC request.
struct Checked {
    command: String,
    cwd: PathBuf,
    timeout: Duration,
    perms: std::sync::Arc<super::perms::Permissions>,
}

fn check(k: &Kernel, call: &Call, payload: &[u8]) -> Result<Checked, String> {
    let req: ExecReq = parse(payload)?;
    if req.command.trim().is_empty() {
        return Err("invalid request: field `command` is empty".into());
    }
    if req.command.contains('\0') {
        return Err("invalid request: field `command` contains a NUL byte".into());
    }
    let perms = k.perms(call.caller);
    if !perms.can_exec {
        let e = "permission denied: this caller may not run commands (can_exec is false)";
        super::access::blocked(k, call, e);
        return Err(e.into());
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
    // Programs are resolved from the directory the command will run in.
    if let Err(e) = perms.may_exec(&req.command, &cwd) {
        super::access::blocked(k, call, &e);
        return Err(e);
    }
    Ok(Checked {
        command: req.command,
        cwd,
        timeout,
        perms,
    })
}

/// Starts `shell -c command` in its own process group, stdin from /dev/null, output piped.
fn spawn(k: &Kernel, command: &str, cwd: &std::path::Path) -> Result<std::process::Child, String> {
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
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.exec_shell.display()))
}

impl Finished {
    /// The EXEC reply for a finished command.
    fn reply(&self, timeout: Duration) -> serde_json::Value {
        let mut reply = json!({
            "success": self.exit_code == Some(0) && !self.timed_out,
            "stdout": String::from_utf8_lossy(&self.stdout),
            "stderr": String::from_utf8_lossy(&self.stderr),
            "exit_code": self.exit_code.unwrap_or(-1),
            "duration_ms": self.duration.as_millis() as u64,
        });
        if let Some(sig) = self.signal {
            reply["signal"] = sig.into();
        }
        if self.truncated {
            reply["truncated"] = true.into();
        }
        if self.timed_out {
            reply["exit_code"] = (-1).into();
            reply["error"] = format!("timeout after {}s", fmt_secs(timeout)).into();
        }
        if let Some(e) = &self.error {
            reply["success"] = false.into();
            reply["error"] = e.clone().into();
        }
        reply
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
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
