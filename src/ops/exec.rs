//! EXEC: run a shell command for a caller, with a timeout that kills the whole process group
//! and a cap on captured output.
//!
//! The command text is the one place a shell string is allowed (it is what EXEC means); every
//! other field is passed without a shell: `cwd` becomes `Command::current_dir`. The command
//! runs in a session (and so a process group) of its own: a timeout kills the group, and the
//! kernel attributes whatever connects from the session to the caller (see
//! [`crate::kernel::identity`]). A command an agent runs goes through the
//! [`crate::supervisor::enter`] helper, which runs it inside the agent's namespaces, cgroups
//! and rlimits, with no more privilege than the agent: nothing an agent starts can hold more
//! than the agent. A worker checks the request and starts the command; the
//! [`super::commands`] thread then watches it to the end, so a long command holds no worker.

use super::Ops;
use super::commands::{CommandRunner, Finished, Launch, Ticket};
use super::config::ExecConfig;
use crate::kernel::asyncq::Reservation;
use crate::kernel::identity::ExecOwner;
use crate::kernel::request::{parse, to_bytes};
use crate::kernel::{Call, CallerId, CallerKind, Kernel, Responder};
use crate::secrets::is_secret_env;
use crate::supervisor::enter::{self, Confinement, EnterSpec};
use serde::Deserialize;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Deserialize)]
struct ExecReq {
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
    /// `async` and `request_id` are read by the async reservation
    /// (`kernel::asyncq::Reservation`); named here so that they are known fields.
    /// (Not `IgnoredAny`: a field read into that counts as unknown.)
    #[serde(rename = "async", default)]
    _is_async: Option<serde_json::Value>,
    #[serde(rename = "request_id", default)]
    _request_id: Option<serde_json::Value>,
}

/// EXEC `{command, cwd?, timeout?, async?}` (on a worker): checks the request, starts the
/// command and hands it to the command runner, which answers when it ends. The worker is free
/// again at once, however long the command runs. Everything that can refuse the request is
/// checked before an async EXEC is accepted, so refusals come back as the EXEC's own reply.
pub fn exec(o: &Ops, call: &Call, payload: Vec<u8>, responder: Responder) {
    let k = &*o.kernel;
    let reservation = match Reservation::new(k, call, &payload) {
        Ok(r) => r,
        Err(e) => return responder.error(e),
    };
    let (runner, started) = match start(o, call, &payload) {
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
            max_output: o.config.exec.max_output_bytes,
            ticket: started.ticket,
            // The runner has already unregistered the command (before reaping it).
            done: Box::new(move |k: &Kernel, f: Finished| {
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
fn start<'o>(
    o: &'o Ops,
    call: &Call,
    payload: &[u8],
) -> Result<(&'o CommandRunner, Started), String> {
    let k = &*o.kernel;
    let checked = check(k, &o.config.exec, call, payload)?;
    let kind = k
        .caller(call.caller)
        .map(|c| c.kind)
        .unwrap_or(CallerKind::Client);
    // An agent's command runs where the agent runs, or not at all.
    let confinement = match kind {
        CallerKind::Agent => Some(agent_confinement(o, call.caller)?),
        CallerKind::Client => None,
    };
    let runner = &o.commands;
    let ticket = runner.admit(call.caller)?;
    let owner = ExecOwner {
        caller: call.caller,
        kind,
        perms: checked.perms,
    };
    let cfg = &o.config.exec;
    let child = match confinement {
        None => spawn(cfg, &checked.command, &checked.cwd)?,
        Some(c) => spawn_inside(cfg, c, checked.command, &checked.cwd)?,
    };
    // Its first process leads the command's session; the runner unregisters it before it
    // reaps it, so the session id cannot name another process meanwhile.
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
    perms: std::sync::Arc<crate::kernel::perms::Permissions>,
}

fn check(k: &Kernel, cfg: &ExecConfig, call: &Call, payload: &[u8]) -> Result<Checked, String> {
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
        crate::kernel::access::blocked(k, call, e);
        return Err(e.into());
    }
    let mut cap = cfg.max_timeout;
    if perms.max_exec_time_ms != 0 {
        cap = cap.min(Duration::from_millis(perms.max_exec_time_ms));
    }
    let timeout = match req.timeout {
        None => cfg.default_timeout.min(cap),
        Some(t) if t.is_finite() && t > 0.0 => {
            let t = Duration::from_secs_f64(t.min(1e9));
            if t > cap {
                return Err(format!(
                    "field `timeout`: {}s exceeds this caller's maximum of {}s",
                    t.as_secs_f64(),
                    cap.as_secs_f64()
                ));
            }
            t
        }
        Some(t) => {
            return Err(format!(
                "invalid request: field `timeout`: {t} must be a number of seconds greater than 0"
            ));
        }
    };
    let cwd = match &req.cwd {
        Some(dir) => {
            let p = super::fs::resolve_existing(call, dir)
                .map_err(|e| format!("invalid working directory `cwd`: {e}"))?;
            if !p.is_dir() {
                return Err(format!(
                    "invalid working directory `cwd`: {} is not a directory",
                    p.display()
                ));
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
        crate::kernel::access::blocked(k, call, &e);
        return Err(e);
    }
    Ok(Checked {
        command: req.command,
        cwd,
        timeout,
        perms,
    })
}

/// How to run a command inside agent `agent`'s confinement, as the supervisor recorded it
/// when the agent's process started.
fn agent_confinement(o: &Ops, agent: CallerId) -> Result<Confinement, String> {
    o.agents
        .table
        .lock()
        .get(agent)
        .and_then(|a| a.confinement.clone())
        .ok_or_else(|| {
            format!(
                "agent {agent} has no running process to run the command in (it is starting, \
                 restarting or stopped); try again when it runs"
            )
        })
}

/// Stdin from /dev/null, output piped, no secrets in the environment.
fn prepare(cmd: &mut Command, cwd: &std::path::Path) {
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_secret_env) {
            cmd.env_remove(&name);
        }
    }
}

/// Starts a client's `shell -c command` in a session of its own.
fn spawn(
    cfg: &ExecConfig,
    command: &str,
    cwd: &std::path::Path,
) -> Result<std::process::Child, String> {
    let mut cmd = Command::new(&cfg.shell);
    cmd.arg("-c").arg(command);
    prepare(&mut cmd, cwd);
    // SAFETY: setsid(2) is async-signal-safe, and it is all that runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.shell.display()))
}

/// Starts an agent's `shell -c command` through the `clove __enter` helper, which makes its
/// own session, enters the agent's confinement and execs the shell there.
fn spawn_inside(
    cfg: &ExecConfig,
    confinement: Confinement,
    command: String,
    cwd: &std::path::Path,
) -> Result<std::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let spec = EnterSpec {
        confinement,
        shell: cfg.shell.clone(),
        command,
        cwd: cwd.to_path_buf(),
    };
    let spec = serde_json::to_vec(&spec).map_err(|e| format!("cannot encode: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(enter::SUBCOMMAND);
    prepare(&mut cmd, cwd);
    // The spec goes on the helper's standard input (see `supervisor::enter`), not argv.
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the command in the agent's sandbox: {e}"))?;
    // On a worker thread, which may wait: the helper reads it all first thing. The pipe is
    // closed when `pipe` is dropped, which ends the helper's read.
    let written = match child.stdin.take() {
        Some(mut pipe) => std::io::Write::write_all(&mut pipe, &spec),
        None => Err(std::io::Error::other("no pipe to the helper")),
    };
    if let Err(e) = written {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "cannot hand the command to the agent's sandbox: {e}"
        ));
    }
    Ok(child)
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
