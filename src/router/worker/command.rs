//! `worker_mode = "command"`: each prompt runs `worker_command` (an argv, never a shell) in
//! the agent directory with the prompt on its stdin. Every stdout line is streamed as an
//! `assistant_delta`; the whole output becomes the `assistant` answer; a non-zero exit adds an
//! `agent_error` with the end of stderr. With `approval = true` the worker first asks for an
//! approval (`exec_approval_required`) and runs the command only if it is approved.

use super::{Decision, Turn, TurnCtx};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The answer kept per turn; the rest is streamed but not repeated in `assistant`.
const MAX_ANSWER: usize = 16 << 20;
/// One `assistant_delta` carries at most this much (a longer line is split).
const MAX_DELTA: usize = 1 << 20;
/// The end of stderr quoted in an error.
const STDERR_TAIL: usize = 4096;

/// Runs one turn; returns the full answer.
pub fn turn(ctx: &TurnCtx, t: &Turn) -> String {
    let inj = t.injection_id.as_str();
    let argv = &ctx.settings.command;
    if argv.is_empty() {
        ctx.outbox.event(
            inj,
            "agent_error",
            json!({"message": "worker_command is empty"}),
        );
        return String::new();
    }
    if ctx.settings.approval && !approved(ctx, inj) {
        return "not run: the command was not approved".to_string();
    }
    match run(ctx, t) {
        Ok(full) => full,
        Err(e) => {
            ctx.outbox.event(inj, "agent_error", json!({"message": e}));
            String::new()
        }
    }
}

/// Asks for an approval and waits for the answer (at most the command timeout).
fn approved(ctx: &TurnCtx, inj: &str) -> bool {
    let call_id = format!("call-{inj}");
    ctx.outbox.event(
        inj,
        "exec_approval_required",
        json!({"approval_id": call_id, "call_id": call_id, "command": ctx.settings.command,
               "reason": "worker_mode \"command\" runs this command for the prompt",
               "cwd": ctx.cwd, "available_decisions": ["approved", "denied"]}),
    );
    let deadline = Instant::now() + Duration::from_secs(ctx.settings.command_timeout_secs.max(1));
    loop {
        let Ok(d): Result<Decision, _> = ctx.decisions.recv_deadline(deadline) else {
            ctx.outbox.event(
                inj,
                "agent_error",
                json!({"message": "no answer to the approval request in time"}),
            );
            return false;
        };
        if d.call_id != call_id {
            continue;
        }
        ctx.outbox.event(
            inj,
            "exec_approval_resolved",
            json!({"call_id": call_id, "approved": d.approved, "decision": d.decision}),
        );
        return d.approved;
    }
}

fn run(ctx: &TurnCtx, t: &Turn) -> Result<String, String> {
    let inj = t.injection_id.as_str();
    let argv = &ctx.settings.command;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&ctx.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let pid = child.id() as i32;
    // Feeding stdin, draining stderr and the time limit each get a thread, so a command that
    // ignores its input or fills stderr cannot stall the turn.
    if let Some(mut stdin) = child.stdin.take() {
        let prompt = t.prompt.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(prompt.as_bytes());
        });
    }
    let stderr = child.stderr.take().map(stderr_tail);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let limit = Duration::from_secs(ctx.settings.command_timeout_secs.max(1));
    let timer = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) on the command's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut full = String::new();
    if let Some(out) = child.stdout.take() {
        stream(ctx, inj, out, &mut full);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = done_tx.send(());
    let timed_out = timer.join().unwrap_or(false);
    let tail = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if timed_out {
        let msg = format!(
            "the command ran longer than {}s and was killed",
            limit.as_secs()
        );
        ctx.outbox
            .event(inj, "agent_error", json!({"message": msg}));
        return Ok(full);
    }
    if !status.success() {
        let how = match status.code() {
            Some(c) => format!("exited with code {c}"),
            None => "was killed by a signal".to_string(),
        };
        let err = String::from_utf8_lossy(&tail[tail.len().saturating_sub(STDERR_TAIL)..])
            .trim()
            .to_string();
        let msg = if err.is_empty() {
            format!("the command {how}")
        } else {
            format!("the command {how}: {err}")
        };
        ctx.outbox.event(
            inj,
            "agent_error",
            json!({"message": msg, "exit_code": status.code()}),
        );
    }
    Ok(full)
}

/// A thread keeping the last bytes of stderr.
fn stderr_tail(mut e: std::process::ChildStderr) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = e.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        tail
    })
}

/// Streams stdout line by line as deltas, keeping the answer (bounded).
fn stream(ctx: &TurnCtx, inj: &str, out: impl Read, full: &mut String) {
    let mut r = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r
            .by_ref()
            .take(MAX_DELTA as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).into_owned();
                if full.len() + text.len() <= MAX_ANSWER {
                    full.push_str(&text);
                }
                ctx.outbox
                    .event(inj, "assistant_delta", json!({"content": text}));
            }
        }
    }
}
