//! `clove call OP [JSON]` (one request, the reply printed) and `clove ping`.

use super::exit::{Failure, Outcome, refused};
use super::{Ctx, say};
use clap::Args;
use clove::proto::op as ops;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

/// `clove call`'s arguments.
#[derive(Args)]
pub struct CallArgs {
    /// The op: a name in any case (store, GET_PERMS, get-perms) or a number (0x30, 48).
    pub op: String,
    /// The request, a JSON object (default `{}`); NOOP takes any text, which is echoed.
    #[arg(value_name = "JSON")]
    pub request: Option<String>,
    /// Print the reply payload exactly as received (no pretty-printing).
    #[arg(long)]
    pub raw: bool,
}

/// What each op takes, for `clove call --help` (the README has the full table).
const REQUESTS: &[(u8, &str)] = &[
    (ops::NOOP, "any bytes, echoed"),
    (
        ops::THINK,
        "{prompt, model?, system_instruction?, image?, temperature?, max_tokens?, tools?, async?}",
    ),
    (ops::EXEC, "{command, cwd?, timeout?, async?}"),
    (ops::READ, "{path}"),
    (
        ops::WRITE,
        "{path, content, mode?: write|append, encoding?}",
    ),
    (
        ops::SPAWN,
        "{name, script, python?, args?, restart_policy?, limits?, persist?, ...}",
    ),
    (ops::KILL, "{id} or {name}"),
    (ops::LIST, "{} (a bare array back)"),
    (ops::PAUSE, "{id} or {name}"),
    (ops::RESUME, "{id} or {name}"),
    (ops::SEND, "{to | to_name, message}"),
    (ops::RECV, "{max?}"),
    (ops::BROADCAST, "{message, include_self?}"),
    (ops::REGISTER, "{name}"),
    (
        ops::STORE,
        "{key, value, scope?: global|agent|session, ttl?}",
    ),
    (ops::FETCH, "{key}"),
    (ops::DELETE, "{key}"),
    (ops::KEYS, "{prefix?}"),
    (ops::GET_PERMS, "{}"),
    (ops::SET_PERMS, "{agent_id?, level? | permissions?}"),
    (
        ops::HTTP,
        "{url, method?, headers?, body?, timeout?, async?}",
    ),
    (ops::SUBSCRIBE, "{event_types}"),
    (ops::UNSUBSCRIBE, "{event_types} or {all: true}"),
    (ops::POLL_EVENTS, "{max?}"),
    (ops::EMIT, "{event_type, data}"),
    (
        ops::GET_AUDIT_LOG,
        "{category?, agent_id?, since_id?, limit?}",
    ),
    (
        ops::SET_AUDIT_CONFIG,
        "{max_entries?, log_syscalls?, log_security?, ...}",
    ),
    (ops::ASYNC_POLL, "{max?}"),
    (
        ops::SERVICE_ADMIN,
        "{service, action, ...} (a service's administration, e.g. the relay's tokens; manage right)",
    ),
    (ops::METRICS_SYSTEM, "{}"),
    (ops::METRICS_AGENT, "{agent_id?}"),
    (ops::METRICS_ALL_AGENTS, "{}"),
    (ops::METRICS_CGROUP, "{cgroup_path? | agent_id?}"),
    (ops::LLM_REPORT, "{tokens, success?}"),
    (ops::HELLO, "{}"),
    (ops::EXIT, "{} (closes the connection)"),
];

/// The op list shown after `clove call --help`.
pub fn ops_help() -> String {
    let mut s = String::from("Ops (name, code, request):\n");
    for (code, name) in ops::NAMES {
        let req = REQUESTS
            .iter()
            .find(|(c, _)| c == code)
            .map_or("", |(_, r)| r);
        s.push_str(&format!(
            "  {:<20}0x{code:02X}  {req}\n",
            name.to_ascii_lowercase()
        ));
    }
    s.push_str(
        "\nThe reply is printed as JSON on stdout; warnings about unknown request fields go to \
         stderr. Exit codes: 0 the reply says success, 1 it says \"success\": false, 2 no \
         daemon answers, 64 bad JSON or an unknown op.",
    );
    s
}

/// `clove call`.
pub fn call(ctx: &Ctx, a: CallArgs) -> Outcome {
    let code = ops::parse(&a.op).ok_or_else(|| {
        let names = ops::NAMES.iter().map(|(_, n)| n.to_ascii_lowercase());
        let wanted = a.op.to_ascii_lowercase().replace('-', "_");
        let all: Vec<String> = names.collect();
        let hint = clove::spelling::did_you_mean(&wanted, all.iter().map(String::as_str))
            .map(|m| format!(" (did you mean {m}?)"))
            .unwrap_or_default();
        Failure::Usage(format!(
            "unknown op {:?}{hint}; `clove call --help` lists the ops",
            a.op
        ))
    })?;
    let payload = a.request.unwrap_or_else(|| "{}".into());
    if code != ops::NOOP {
        serde_json::from_str::<Value>(&payload)
            .map_err(|e| Failure::Usage(format!("the request is not valid JSON: {e}")))?;
    }
    let mut c = ctx.connect()?;
    let reply = ctx.request(&mut c, code, payload.as_bytes())?;
    let parsed = serde_json::from_slice::<Value>(&reply.payload);
    let mut out = std::io::stdout().lock();
    match (&parsed, a.raw) {
        (Ok(v), false) => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(v).unwrap_or_default()
            );
        }
        _ => {
            let _ = out.write_all(&reply.payload);
            let _ = writeln!(out);
        }
    }
    let failed = parsed
        .ok()
        .and_then(|v| v.get("success").and_then(Value::as_bool))
        == Some(false);
    Ok(if failed { refused() } else { ExitCode::SUCCESS })
}

/// `clove ping`: HELLO, timed.
pub fn ping(ctx: &Ctx) -> Outcome {
    let mut c = ctx.connect()?;
    let t = Instant::now();
    let reply = ctx.request(&mut c, ops::HELLO, b"{}")?;
    let elapsed = t.elapsed();
    let v = reply
        .json()
        .map_err(|e| Failure::Refused(format!("unexpected reply: {e}")))?;
    if v["success"] == false {
        return Err(Failure::Refused(format!(
            "{} refused: {}",
            ctx.socket.display(),
            v["error"].as_str().unwrap_or("no reason given")
        )));
    }
    if ctx.json {
        let mut v = v;
        v["latency_us"] = (elapsed.as_secs_f64() * 1e6).into();
        super::print_json(&v);
    } else {
        say!(
            "pong from clove {} at {} in {:.0}us (your agent id {})",
            v["kernel_version"].as_str().unwrap_or("?"),
            ctx.socket.display(),
            elapsed.as_secs_f64() * 1e6,
            reply.agent_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_a_request_line() {
        for (code, name) in ops::NAMES {
            assert!(
                REQUESTS.iter().any(|(c, _)| c == code),
                "{name} is missing from REQUESTS"
            );
        }
    }
}
