//! GET_PERMS, SET_PERMS and LLM_REPORT: reading and changing permission sets, and charging
//! LLM usage against quotas.
//!
//! The rules (ARCHITECTURE.md, "Security model"): a caller may move itself only to a set within
//! its current one; changing another caller needs the manage right, and a manager can give
//! another caller only a set within its own.

use super::perms::{Permissions, PermsPatch};
use super::{Call, CallerId, Kernel};
use serde_json::{Value, json};
use std::sync::Arc;

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
        json!({"op": crate::proto::op::name(call.op), "reason": reason}),
    );
    k.emit(
        "SYSCALL_BLOCKED",
        json!({"agent_id": call.caller, "op": crate::proto::op::name(call.op), "reason": reason}),
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
