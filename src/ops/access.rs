//! GET_PERMS, SET_PERMS and LLM_REPORT: reading and changing permission sets, and reporting
//! LLM usage (the rules themselves are in [`crate::kernel::access`]).

use super::Ops;
use crate::kernel::access::{blocked, change, charge};
use crate::kernel::perms::Permissions;
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use crate::kernel::{Call, CallerId};
use serde::Deserialize;
use serde_json::{Value, json};

/// GET_PERMS: the caller's (or, with `agent_id`, another caller's) permissions and usage.
pub fn get_perms(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    #[derive(Deserialize, Default)]
    struct Req {
        agent_id: Option<CallerId>,
    }
    let req: Req = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let target = req.agent_id.unwrap_or(call.caller);
    if target != call.caller && !k.perms(call.caller).can_manage {
        return Outcome::Reply(error(
            "permission denied: reading another agent's permissions needs the manage right",
        ));
    }
    let Some(c) = k.caller(target) else {
        return Outcome::Reply(error(format!("no agent has id {target}")));
    };
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "agent_id": target,
        "level": c.perms.level,
        "permissions": view(&c.perms, c.tokens_used, c.calls_made),
    })))
}

/// The permission set with live usage counters filled in.
pub fn view(p: &Permissions, tokens_used: u64, calls_made: u64) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Some(llm) = v.get_mut("llm").and_then(Value::as_object_mut) {
        llm.insert("tokens_used".into(), tokens_used.into());
        llm.insert("calls_made".into(), calls_made.into());
    }
    v
}

#[derive(Deserialize, Default)]
struct SetReq {
    agent_id: Option<CallerId>,
    level: Option<String>,
    permissions: Option<Value>,
}

/// SET_PERMS `{agent_id?, level? | permissions?}`.
pub fn set_perms(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: SetReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let target = req.agent_id.unwrap_or(call.caller);
    let result = change(
        k,
        call.caller,
        target,
        req.level.as_deref(),
        req.permissions,
    );
    match result {
        Ok(p) => {
            let reply = to_bytes(&json!({
                "success": true,
                "agent_id": target,
                "level": p.level,
            }));
            // A persistent agent keeps its permissions across restarts: its saved record is
            // updated (by the supervisor, the one writer of those records) before the reply.
            let persisted = o
                .agents
                .table
                .lock()
                .get(target)
                .is_some_and(|a| a.persisted);
            match o.agents.handle() {
                Some(h) if persisted => {
                    let cmd = crate::supervisor::Command::Resave {
                        id: target,
                        responder: k.responder(call),
                        reply,
                    };
                    if let Err(crate::supervisor::Command::Resave { responder, .. }) = h.send(cmd) {
                        responder.error(format!(
                            "agent {target} has its new permissions now, but they could not be saved ({}); try again",
                            super::agents::busy(h)
                        ));
                    }
                    Outcome::Deferred
                }
                _ => Outcome::Reply(reply),
            }
        }
        Err(e) => {
            if e.starts_with("permission denied") {
                blocked(k, call, &e);
            }
            Outcome::Reply(error(e))
        }
    }
}

/// LLM_REPORT `{tokens, success?}`: a client that called a model itself reports its usage.
pub fn llm_report(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    #[derive(Deserialize)]
    struct Req {
        tokens: u64,
        #[serde(default)]
        #[allow(dead_code)]
        success: Option<bool>,
    }
    let req: Req = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    match charge(k, call.caller, req.tokens) {
        Some(c) => {
            let mut reply = json!({
                "success": true,
                "tokens": req.tokens,
                "tokens_used": c.tokens_used,
                "calls_made": c.calls_made,
                "quota_exceeded": c.exceeded,
            });
            if c.exceeded {
                reply["error"] = "LLM quota exceeded: further THINK calls will be refused".into();
            }
            Outcome::Reply(to_bytes(&reply))
        }
        None => Outcome::Reply(error(format!("no agent has id {}", call.caller))),
    }
}
