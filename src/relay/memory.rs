//! Shared memory: `set_shared_memory`, `get_shared_memory`, `list_shared_memory`,
//! `delete_shared_memory`. The values ARE the kernel's state store: the `default` tenant's
//! keys are the Clove `global` scope (a key set here is FETCHed by a Clove agent, a key a
//! Clove agent STOREs is read here, and changes are announced as STATE_CHANGED), and every
//! other tenant has a named namespace of its own that no Clove op reaches. TTLs are the
//! store's expiry: an expired key is reclaimed by the store and never listed.
//!
//! The relay keeps, beside each key it set, who set it and when ([`MemoryMeta`], documents in
//! `relay.memory`): only that owner or a master may overwrite or delete it. A key without
//! such a record (set by a Clove agent) may be changed only by masters. The record is handed
//! to the store's writer before the key, so it is committed with the key or before it; the
//! acknowledgement waits for the key's commit.

use super::State;
use super::config::DEFAULT_TENANT;
use super::events::{Ctx, error_reply};
use super::resources::{self, MEMORY, mgmt, need_agent};
use crate::store::{Namespace, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The seed's default TTL, in seconds.
const DEFAULT_TTL_SECS: f64 = 3600.0;
/// The longest TTL (ten years, as for Clove's STORE), so expiry arithmetic cannot overflow.
const MAX_TTL_SECS: f64 = 10.0 * 365.0 * 86400.0;
/// Keys one `list_shared_memory` answer carries at most.
const MAX_LISTED: usize = 10_000;
/// A record whose key is absent this long (set by a change that failed, or a key deleted by
/// a Clove agent) is dropped by the periodic sweep; younger ones may belong to a change still
/// being committed.
const SWEEP_GRACE_MS: u64 = 60_000;

/// Who set a shared key through the relay, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryMeta {
    pub key: String,
    pub owner: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    pub ttl_secs: f64,
}

/// A change to a shared key, carried out after the lock is released: the record first, then
/// the key; the output goes out once the key is committed.
pub struct KvChange {
    pub tenant: String,
    pub ns: Namespace,
    pub key: String,
    /// `Some`: store this value; `None`: delete the key.
    pub value: Option<(Box<RawValue>, Option<u64>)>,
    pub docs: Vec<crate::store::DocWrite>,
    pub outs: Vec<(Vec<u64>, String)>,
    /// (session, ack id) answered with an error if the change fails.
    pub on_error: Option<(u64, u64)>,
    /// The record before the change, put back if the change fails.
    pub previous: Option<MemoryMeta>,
}

/// The store namespace of a tenant's shared memory.
pub fn namespace(st: &State, tenant: &str) -> Option<Namespace> {
    let k = st.kernel.as_ref()?;
    Some(if tenant == DEFAULT_TENANT {
        Namespace::Shared
    } else {
        k.store.named_namespace(&format!("relay:{tenant}"))
    })
}

fn no_store() -> Value {
    error_reply(
        "INTERNAL_ERROR",
        "shared memory needs the daemon's state store",
    )
}

/// The error code of a store refusal.
pub fn store_code(e: &StoreError) -> &'static str {
    match e {
        StoreError::EmptyKey | StoreError::KeyTooLong { .. } => "INVALID_INPUT",
        StoreError::ValueTooLarge { .. }
        | StoreError::TooManyKeys { .. }
        | StoreError::TooManyBytes { .. } => "SIZE_LIMIT",
        _ => "INTERNAL_ERROR",
    }
}

fn ttl(arg: &Value) -> Result<f64, Value> {
    match arg.get("ttl") {
        None | Some(Value::Null) => Ok(DEFAULT_TTL_SECS),
        Some(v) => match v.as_f64() {
            Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TTL_SECS => Ok(t),
            _ => Err(error_reply(
                "INVALID_INPUT",
                &format!("ttl is a number of seconds, more than 0 and at most {MAX_TTL_SECS}"),
            )),
        },
    }
}

pub fn set_shared_memory(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    match plan_set(st, ctx, arg) {
        Ok(()) => {
            ctx.deferred = true;
            Value::Null
        }
        Err(e) => e,
    }
}

fn plan_set(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Result<(), Value> {
    let me = need_agent(ctx)?;
    let key = resources::text(arg, &["key"])
        .ok_or_else(|| error_reply("INVALID_INPUT", "set_shared_memory needs `key` and `value`"))?
        .to_owned();
    let value = arg
        .get("value")
        .ok_or_else(|| error_reply("INVALID_INPUT", "set_shared_memory needs `value`"))?;
    let ttl = ttl(arg)?;
    let (Some(ns), Some(k)) = (namespace(st, &ctx.tenant), st.kernel.clone()) else {
        return Err(no_store());
    };
    let raw = RawValue::from_string(value.to_string())
        .map_err(|e| error_reply("INVALID_INPUT", &format!("value: {e}")))?;
    k.store
        .precheck_put(&key, &raw)
        .map_err(|e| error_reply(store_code(&e), &format!("cannot set {key:?}: {e}")))?;
    let now = crate::clock::now_ms();
    let exists = k.store.get(ns, &key, now).is_some();
    let previous = st.tenant(&ctx.tenant).res.memory.get(&key).cloned();
    let record = previous
        .clone()
        .filter(|m| exists || m.updated_ms + SWEEP_GRACE_MS > now);
    check_set(st, ctx, &key, exists, record.as_ref(), now)?;
    let expires_ms = Some(now + (ttl * 1000.0).ceil() as u64);
    let meta = MemoryMeta {
        key: key.clone(),
        // An overwrite by a master keeps the key's owner.
        owner: record.as_ref().map_or(me, |m| m.owner.clone()),
        created_ms: record.as_ref().map_or(now, |m| m.created_ms),
        updated_ms: now,
        expires_ms,
        ttl_secs: ttl,
    };
    let data = json!({"key": key, "value": value, "owner": meta.owner, "timestamp": now,
                      "ttl": ttl, "expiresAt": expires_ms, "createdAt": meta.created_ms});
    if let Some(id) = ctx.ack {
        let reply = json!({"success": true, "ok": true, "message": "Memory set successfully",
                           "data": data});
        ctx.outs
            .push((vec![ctx.key], super::socket::ack_text(id, reply)));
    }
    let members: Vec<u64> = st.tenant(&ctx.tenant).members.iter().copied().collect();
    ctx.emit(members, "shared_memory_update", data);
    let update = json!({"key": key, "ttl": ttl, "owner": meta.owner});
    mgmt(st, ctx, "memory_updated", update);
    let docs = vec![resources::doc(MEMORY, &ctx.tenant, &key, &meta)];
    st.tenant(&ctx.tenant).res.memory.insert(key.clone(), meta);
    st.fx.kv.push(KvChange {
        tenant: ctx.tenant.clone(),
        ns,
        key,
        value: Some((raw, expires_ms)),
        docs,
        outs: std::mem::take(&mut ctx.outs),
        on_error: ctx.ack.map(|id| (ctx.key, id)),
        previous,
    });
    Ok(())
}

/// May the caller set `key`: a new key (within the tenant's bound), or one it owns; masters
/// may overwrite any, including keys set by Clove agents.
fn check_set(
    st: &mut State,
    ctx: &Ctx,
    key: &str,
    exists: bool,
    record: Option<&MemoryMeta>,
    now: u64,
) -> Result<(), Value> {
    match record {
        Some(m) if !resources::can_change(ctx, &m.owner) => {
            Err(resources::not_owner("shared key", key))
        }
        Some(_) => Ok(()),
        None if exists && ctx.role != super::auth::Role::Master => Err(error_reply(
            "ACCESS_DENIED",
            &format!("access denied: {key} was set by a Clove agent; only masters change it"),
        )),
        None => {
            let live = st
                .tenant(&ctx.tenant)
                .res
                .memory
                .values()
                .filter(|m| m.expires_ms.is_none_or(|e| e > now))
                .count();
            resources::check_count(st, "shared keys", live)
        }
    }
}

pub fn get_shared_memory(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(key) = resources::text(arg, &["key"]) else {
        return error_reply("INVALID_INPUT", "get_shared_memory needs `key`");
    };
    let (Some(ns), Some(k)) = (namespace(st, &ctx.tenant), st.kernel.clone()) else {
        return no_store();
    };
    let now = crate::clock::now_ms();
    let meta = st.tenant(&ctx.tenant).res.memory.get(key).cloned();
    let Some(found) = k.store.get(ns, key, now) else {
        return match meta.and_then(|m| m.expires_ms).filter(|e| *e <= now) {
            Some(_) => error_reply("EXPIRED", &format!("key {key} expired")),
            None => error_reply("NOT_FOUND", &format!("key {key} not found")),
        };
    };
    let value: Value = serde_json::from_str(found.value.get()).unwrap_or(Value::Null);
    let (owner, created, updated) = meta.map_or(("clove".to_owned(), None, None), |m| {
        (m.owner, Some(m.created_ms), Some(m.updated_ms))
    });
    json!({"success": true, "ok": true, "data": {
        "key": key, "value": value, "owner": owner, "createdAt": created,
        "expiresAt": found.expires_ms, "timestamp": updated,
    }})
}

pub fn list_shared_memory(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let (Some(ns), Some(k)) = (namespace(st, &ctx.tenant), st.kernel.clone()) else {
        return no_store();
    };
    let now = crate::clock::now_ms();
    let keys = k.store.keys(ns, "", now, MAX_LISTED + 1);
    let truncated = keys.len() > MAX_LISTED;
    let t = st.tenant(&ctx.tenant);
    let data: Vec<Value> = keys
        .iter()
        .take(MAX_LISTED)
        .filter_map(|key| {
            // Expired between the listing and this read: not listed.
            let found = k.store.get(ns, key, now)?;
            let meta = t.res.memory.get(key);
            Some(json!({"key": key, "createdAt": meta.map(|m| m.created_ms),
                        "expiresAt": found.expires_ms,
                        "owner": meta.map_or("clove", |m| m.owner.as_str())}))
        })
        .collect();
    let names: Vec<&Value> = data.iter().map(|d| &d["key"]).collect();
    json!({"success": true, "ok": true, "data": data, "keys": names, "truncated": truncated})
}

pub fn delete_shared_memory(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(key) = resources::text(arg, &["key"]).map(str::to_owned) else {
        return error_reply("INVALID_INPUT", "delete_shared_memory needs `key`");
    };
    let (Some(ns), Some(k)) = (namespace(st, &ctx.tenant), st.kernel.clone()) else {
        return no_store();
    };
    let now = crate::clock::now_ms();
    if k.store.get(ns, &key, now).is_none() {
        return error_reply("NOT_FOUND", &format!("key {key} not found"));
    }
    let previous = st.tenant(&ctx.tenant).res.memory.get(&key).cloned();
    let allowed = match &previous {
        Some(m) => resources::can_change(ctx, &m.owner),
        None => ctx.role == super::auth::Role::Master,
    };
    if !allowed {
        return resources::not_owner("shared key", &key);
    }
    if let Err(e) = k.store.precheck() {
        return error_reply(store_code(&e), &format!("cannot delete {key:?}: {e}"));
    }
    let by = ctx.who();
    let data = json!({"key": key, "deletedBy": by});
    if let Some(id) = ctx.ack {
        let reply = json!({"success": true, "ok": true,
                           "message": "Memory deleted successfully", "data": data});
        ctx.outs
            .push((vec![ctx.key], super::socket::ack_text(id, reply)));
    }
    let members: Vec<u64> = st.tenant(&ctx.tenant).members.iter().copied().collect();
    ctx.emit(members, "shared_memory_deleted", data.clone());
    mgmt(st, ctx, "memory_deleted", data);
    st.tenant(&ctx.tenant).res.memory.remove(&key);
    st.fx.kv.push(KvChange {
        tenant: ctx.tenant.clone(),
        ns,
        key: key.clone(),
        value: None,
        docs: vec![resources::doc_delete(MEMORY, &ctx.tenant, &key)],
        outs: std::mem::take(&mut ctx.outs),
        on_error: ctx.ack.map(|id| (ctx.key, id)),
        previous,
    });
    ctx.deferred = true;
    Value::Null
}

impl State {
    /// A shared-memory change failed: its record is put back as it was.
    pub fn memory_failed(&mut self, tenant: &str, key: &str, previous: Option<MemoryMeta>) {
        let t = self.tenant(tenant);
        let write = match previous {
            Some(m) => {
                let w = resources::doc(MEMORY, tenant, key, &m);
                t.res.memory.insert(key.to_owned(), m);
                w
            }
            None => {
                t.res.memory.remove(key);
                resources::doc_delete(MEMORY, tenant, key)
            }
        };
        self.push_commit(vec![write], Vec::new(), None);
    }

    /// Drops the records of keys that are gone (expired, or deleted by a Clove agent), so
    /// they do not pile up; run by the relay's periodic timer.
    pub fn sweep_memory(&mut self) {
        let Some(k) = self.kernel.clone() else {
            return;
        };
        let now = crate::clock::now_ms();
        let names: Vec<String> = self.tenants.keys().cloned().collect();
        let mut writes = Vec::new();
        for name in names {
            let Some(ns) = namespace(self, &name) else {
                return;
            };
            let t = self.tenant(&name);
            let gone: Vec<String> = t
                .res
                .memory
                .values()
                .filter(|m| {
                    let expired = m.expires_ms.is_some_and(|e| e <= now);
                    let stale = m.updated_ms + SWEEP_GRACE_MS <= now;
                    (expired || stale) && k.store.get(ns, &m.key, now).is_none()
                })
                .map(|m| m.key.clone())
                .collect();
            for key in gone {
                t.res.memory.remove(&key);
                writes.push(resources::doc_delete(MEMORY, &name, &key));
            }
        }
        self.push_commit(writes, Vec::new(), None);
    }
}
