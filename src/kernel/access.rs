//! GET_PERMS, SET_PERMS and LLM_REPORT: reading and changing permission sets, and charging
//! LLM usage against quotas.
//!
//! The rules (ARCHITECTURE.md, "Security model"): a caller may move itself only to a set within
//! its current one; changing another caller needs the manage right, and a manager can give
//! another caller only a set within its own.

use super::perms::{Permissions, PermsPatch};
use super::request::{Outcome, error, parse, to_bytes};
use super::{Call, CallerId, Kernel};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// GET_PERMS: the caller's (or, with `agent_id`, another caller's) permissions and usage.
pub fn get_perms(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
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
pub fn set_perms(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
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
            let persisted = k
                .agents
                .table
                .lock()
                .get(target)
                .is_some_and(|a| a.persisted);
            match k.agents.handle() {
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

/// Applies a permission change requested by `actor` for `target`; returns the new set.
pub fn change(
    k: &Kernel,
    actor: CallerId,
    target: CallerId,
    level: Option<&str>,
    patch: Option<Value>,
) -> Result<Arc<Permissions>, String> {
    let actor_perms = k.perms(actor);
    let current = k
        .caller(target)
        .ok_or_else(|| format!("no agent has id {target}"))?
        .perms;
    let base = match level {
        Some(name) => k.config.level(name).cloned().ok_or_else(|| {
            format!(
                "unknown level {name:?} (known: {})",
                super::perms::LEVELS.join(", ")
            )
        })?,
        None if patch.is_none() => {
            return Err("nothing to change: give `level` or `permissions`".into());
        }
        None => (*current).clone(),
    };
    let new = match patch {
        Some(v) => {
            let patch: PermsPatch = serde_json::from_value(v)
                .map_err(|e| format!("invalid request: field `permissions`: {e}"))?;
            patch.check_rules(
                k.config.max_permission_rules,
                k.config.max_permission_rule_bytes,
            )?;
            base.patched(&patch)
        }
        None => base,
    };
    new.validate()?;
    if target == actor {
        if !new.within(&current) {
            return Err(
                "permission denied: a caller can lower its own permissions but never raise them"
                    .into(),
            );
        }
    } else {
        if !actor_perms.can_manage {
            return Err(format!(
                "permission denied: changing agent {target}'s permissions needs the manage right"
            ));
        }
        if !new.within(&actor_perms) {
            return Err(format!(
                "permission denied: cannot give agent {target} permissions beyond your own"
            ));
        }
    }
    let new = Arc::new(new);
    k.with_caller(target, |c| c.perms = new.clone())
        .ok_or_else(|| format!("no agent has id {target}"))?;
    k.audit(
        super::audit::Category::Security,
        "PERMISSIONS_CHANGED",
        target,
        true,
        json!({"changed_by": actor, "agent_id": target, "level": new.level}),
    );
    log::info!(
        "perms: agent {actor} set agent {target} to level {}",
        new.level
    );
    Ok(new)
}

/// Publishes SYSCALL_BLOCKED for a denied call and records it in the audit log.
pub fn blocked(k: &Kernel, call: &Call, reason: &str) {
    k.audit(
        super::audit::Category::Security,
        "SYSCALL_BLOCKED",
        call.caller,
        false,
        json!({"op": super::ops::name(call.op), "reason": reason}),
    );
    k.emit(
        "SYSCALL_BLOCKED",
        json!({"agent_id": call.caller, "op": super::ops::name(call.op), "reason": reason}),
        call.caller,
    );
}

/// Result of charging LLM usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub tokens_used: u64,
    pub calls_made: u64,
    pub exceeded: bool,
}

/// Checks the caller's LLM quota before a call: `Err` when it is already used up.
pub fn check_quota(k: &Kernel, caller: CallerId) -> Result<(), String> {
    let c = k
        .caller(caller)
        .ok_or_else(|| format!("no agent has id {caller}"))?;
    let q = &c.perms.llm;
    if q.max_calls != 0 && c.calls_made >= q.max_calls {
        return Err(format!(
            "LLM quota exceeded: {} of {} calls used",
            c.calls_made, q.max_calls
        ));
    }
    if q.max_tokens != 0 && c.tokens_used >= q.max_tokens {
        return Err(format!(
            "LLM quota exceeded: {} of {} tokens used",
            c.tokens_used, q.max_tokens
        ));
    }
    Ok(())
}

/// Charges one call of `tokens` to the caller.
pub fn charge(k: &Kernel, caller: CallerId, tokens: u64) -> Option<Charge> {
    k.with_caller(caller, |c| {
        c.tokens_used = c.tokens_used.saturating_add(tokens);
        c.calls_made = c.calls_made.saturating_add(1);
        let q = &c.perms.llm;
        Charge {
            tokens_used: c.tokens_used,
            calls_made: c.calls_made,
            exceeded: (q.max_tokens != 0 && c.tokens_used > q.max_tokens)
                || (q.max_calls != 0 && c.calls_made > q.max_calls),
        }
    })
}

/// LLM_REPORT `{tokens, success?}`: a client that called a model itself reports its usage.
pub fn llm_report(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
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
