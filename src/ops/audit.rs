//! GET_AUDIT_LOG and SET_AUDIT_CONFIG (the log itself is [`crate::kernel::audit`]).
//!
//! Who may read it: a caller with the manage right sees every entry; others see only entries
//! about themselves. Changing the configuration needs the manage right.

use super::Ops;
use crate::kernel::audit::{AuditQuery, Category, MAX_ENTRIES_LIMIT, MAX_PAGE};
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use crate::kernel::{Call, CallerId};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct GetReq {
    category: Option<String>,
    agent_id: Option<CallerId>,
    since_id: Option<u64>,
    limit: Option<usize>,
}

/// GET_AUDIT_LOG `{category?, agent_id?, since_id?, limit?=100}`.
pub fn get_audit_log(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: GetReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let category = match req.category.as_deref() {
        None | Some("") => None,
        Some(c) => match Category::parse(c) {
            Some(c) => Some(c),
            None => {
                return Outcome::Reply(error(format!(
                    "unknown audit category {c:?} (known: SECURITY, AGENT_LIFECYCLE, SYSCALL, IPC, STATE, RESOURCE, NETWORK)"
                )));
            }
        },
    };
    let mut agent_id = req.agent_id;
    if !k.perms(call.caller).can_manage {
        // Without the manage right a caller reads only what concerns itself.
        if agent_id.is_some_and(|a| a != call.caller) {
            let msg =
                "permission denied: reading another agent's audit entries needs the manage right";
            crate::kernel::access::blocked(k, call, msg);
            return Outcome::Reply(error(msg));
        }
        agent_id = Some(call.caller);
    }
    let q = AuditQuery {
        category,
        agent_id,
        since_id: req.since_id,
        limit: req.limit.unwrap_or(100).clamp(1, MAX_PAGE),
    };
    let (entries, last_id, dropped) = k.audit.with(|log| {
        let entries: Vec<Value> = log.query(&q).iter().map(|e| e.to_json()).collect();
        (entries, log.last_id(), log.dropped)
    });
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "count": entries.len(),
        "entries": entries,
        "last_id": last_id,
        "dropped": dropped,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SetReq {
    max_entries: Option<usize>,
    log_syscalls: Option<bool>,
    log_security: Option<bool>,
    log_lifecycle: Option<bool>,
    log_ipc: Option<bool>,
    log_state: Option<bool>,
    log_resource: Option<bool>,
    log_network: Option<bool>,
}

/// SET_AUDIT_CONFIG: changes what is recorded (needs the manage right).
pub fn set_audit_config(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: SetReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    if !k.perms(call.caller).can_manage {
        let msg = "permission denied: changing the audit configuration needs the manage right";
        crate::kernel::access::blocked(k, call, msg);
        return Outcome::Reply(error(msg));
    }
    let mut c = k.audit.with(|log| log.config().clone());
    if let Some(n) = req.max_entries {
        if !(1..=MAX_ENTRIES_LIMIT).contains(&n) {
            return Outcome::Reply(error(format!(
                "invalid max_entries {n}: must be between 1 and {MAX_ENTRIES_LIMIT}"
            )));
        }
        c.max_entries = n;
    }
    let flags = [
        (req.log_syscalls, &mut c.log_syscalls),
        (req.log_security, &mut c.log_security),
        (req.log_lifecycle, &mut c.log_lifecycle),
        (req.log_ipc, &mut c.log_ipc),
        (req.log_state, &mut c.log_state),
        (req.log_resource, &mut c.log_resource),
        (req.log_network, &mut c.log_network),
    ];
    for (v, slot) in flags {
        if let Some(v) = v {
            *slot = v;
        }
    }
    // Recorded before a possible `log_security = false` takes effect, so that turning the
    // security log off is itself on record.
    k.audit(
        Category::Security,
        "AUDIT_CONFIG_CHANGED",
        call.caller,
        true,
        serde_json::to_value(&c).unwrap_or(Value::Null),
    );
    k.audit.set_config(c.clone());
    Outcome::Reply(to_bytes(&json!({"success": true, "config": c})))
}
