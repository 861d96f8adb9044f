//! STORE, FETCH, DELETE and KEYS: the handlers in front of [`crate::store::StateStore`].
//!
//! A caller's own `agent`-scoped keys are found by their plain names and shadow shared keys of
//! the same name for that caller only. Every change publishes STATE_CHANGED; changes to private
//! keys are announced only to their owner, so key names do not leak.

use super::request::{Outcome, error, outcome, parse_borrowed, to_bytes};
use super::{Call, CallerId, Kernel, now_ms};
use crate::store::{Expired, Namespace, Scope};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

/// The longest TTL accepted (ten years), so that expiry arithmetic cannot overflow.
const MAX_TTL_SECS: f64 = 10.0 * 365.0 * 86400.0;

#[derive(Deserialize)]
struct StoreReq<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(default)]
    scope: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    ttl: Option<f64>,
}

#[derive(Deserialize)]
struct KeyReq<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct KeysReq {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    limit: Option<usize>,
}

fn ns_for(scope: Scope, caller: CallerId) -> Namespace {
    match scope {
        Scope::Agent => Namespace::Agent(caller),
        Scope::Global | Scope::Session => Namespace::Shared,
    }
}

pub fn store(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: StoreReq = match parse_borrowed(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let scope = match req.scope.as_deref() {
        None => Scope::Global,
        Some(s) => match Scope::parse(s) {
            Some(sc) => sc,
            None => {
                return Outcome::Reply(error(format!(
                    "invalid scope {s:?}: use \"global\", \"agent\" or \"session\""
                )));
            }
        },
    };
    let now = now_ms();
    let expires = match req.ttl {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TTL_SECS => {
            Some(now + (t * 1000.0).ceil() as u64)
        }
        Some(t) => {
            return Outcome::Reply(error(format!(
                "invalid ttl {t}: must be a number of seconds greater than 0 (at most {MAX_TTL_SECS})"
            )));
        }
    };
    let key = req.key.as_ref();
    let ns = ns_for(scope, call.caller);
    if let Err(e) = k.store.put(ns, key, req.value, scope, expires) {
        return Outcome::Reply(error(format!("cannot store {key:?}: {e}")));
    }
    // A shared key moving between global and session keeps one copy; an agent key is private.
    announce(k, call.caller, key, "store", scope, ns);
    #[derive(Serialize)]
    struct Reply<'a> {
        success: bool,
        key: &'a str,
        scope: &'static str,
    }
    Outcome::Reply(to_bytes(&Reply {
        success: true,
        key,
        scope: scope.as_str(),
    }))
}

pub fn fetch(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: KeyReq = match parse_borrowed(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let now = now_ms();
    #[derive(Serialize)]
    struct Reply<'a> {
        success: bool,
        exists: bool,
        value: Option<&'a RawValue>,
        scope: Option<&'static str>,
    }
    let encode = |found: Option<(&RawValue, Scope)>| {
        to_bytes(&Reply {
            success: true,
            exists: found.is_some(),
            value: found.map(|f| f.0),
            scope: found.map(|f| f.1.as_str()),
        })
    };
    let own = k
        .store
        .with(Namespace::Agent(call.caller), &req.key, now, |f| {
            f.map(|x| encode(Some(x)))
        });
    Outcome::Reply(match own {
        Some(bytes) => bytes,
        None => k.store.with(Namespace::Shared, &req.key, now, encode),
    })
}

pub fn delete(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: KeyReq = match parse_borrowed(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let now = now_ms();
    let key = req.key.as_ref();
    let own = Namespace::Agent(call.caller);
    let deleted = match k.store.delete(own, key, now) {
        Some(scope) => Some((scope, own)),
        None => k
            .store
            .delete(Namespace::Shared, key, now)
            .map(|s| (s, Namespace::Shared)),
    };
    if let Some((scope, ns)) = deleted {
        announce(k, call.caller, key, "delete", scope, ns);
    }
    outcome(Ok(to_bytes(
        &json!({"success": true, "deleted": deleted.is_some(), "key": key}),
    )))
}

pub fn keys(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: KeysReq = match super::request::parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let limit = req.limit.unwrap_or(10_000).min(100_000);
    let now = now_ms();
    let mut keys = k
        .store
        .keys(Namespace::Agent(call.caller), &req.prefix, now, limit + 1);
    keys.extend(k.store.keys(Namespace::Shared, &req.prefix, now, limit + 1));
    keys.sort_unstable();
    keys.dedup();
    let truncated = keys.len() > limit;
    keys.truncate(limit);
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "count": keys.len(),
        "keys": keys,
        "truncated": truncated,
    })))
}

/// STATE_CHANGED for a change made by `caller`.
fn announce(k: &Kernel, caller: CallerId, key: &str, action: &str, scope: Scope, ns: Namespace) {
    let only = match ns {
        Namespace::Agent(owner) => Some(owner),
        Namespace::Shared => None,
    };
    let mut bus = k.events.lock();
    if !bus.has_subscribers("STATE_CHANGED") {
        return;
    }
    bus.publish(
        "STATE_CHANGED",
        json!({"key": key, "action": action, "scope": scope.as_str(), "agent_id": caller}),
        caller,
        only,
    );
}

/// STATE_CHANGED for a key reclaimed by TTL.
pub fn announce_expiry(k: &Kernel, e: &Expired) {
    let owner = match e.ns {
        Namespace::Agent(id) => id,
        Namespace::Shared => 0,
    };
    announce(k, owner, &e.key, "expire", e.scope, e.ns);
}
