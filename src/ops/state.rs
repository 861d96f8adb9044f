//! STORE, FETCH, DELETE and KEYS: the handlers in front of [`crate::store::StateStore`].
//!
//! A caller's own `agent`-scoped keys are found by their plain names and shadow shared keys of
//! the same name for that caller only. Every change publishes STATE_CHANGED; changes to private
//! keys are announced only to their owner, so key names do not leak.
//!
//! STORE and DELETE answer only after the change is committed to the state database (see
//! [`crate::store`]): the handler hands a completion holding the client's responder to the
//! store's writer thread and returns [`Outcome::Deferred`]; the connection waits, so replies stay
//! in order. FETCH and KEYS read memory and never wait for the writer.

use super::Ops;
use crate::clock::now_ms;
use crate::kernel::request::{Outcome, error, parse_borrowed, to_bytes};
use crate::kernel::state::announce;
use crate::kernel::{Call, CallerId, CallerKind};
use crate::store::{Applied, Namespace, Put, Scope};
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

pub fn store(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
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
    // What can be reached again after a restart is kept on disk: global keys, and the private
    // keys of supervised agents. A plain client's id dies with its connection, so its `agent`
    // keys stay in memory like `session` ones.
    let durable = match scope {
        Scope::Global => true,
        Scope::Session => false,
        Scope::Agent => k.with_caller(call.caller, |c| c.kind) == Some(CallerKind::Agent),
    };
    if let Err(e) = k.store.precheck_put(key, req.value) {
        return Outcome::Reply(error(format!("cannot store {key:?}: {e}")));
    }
    let responder = k.responder(call);
    let events = k.events.clone();
    let caller = call.caller;
    let owned_key = key.to_string();
    k.store.submit_put(
        Put {
            ns,
            key: owned_key.clone(),
            value: req.value.to_owned(),
            scope,
            expires_ms: expires,
            durable,
        },
        Box::new(move |result| match result {
            Ok(_) => {
                // A shared key moving between global and session keeps one copy; an agent key
                // is private.
                announce(&events, caller, &owned_key, "store", scope, ns);
                #[derive(Serialize)]
                struct Reply<'a> {
                    success: bool,
                    key: &'a str,
                    scope: &'static str,
                }
                responder.reply(&to_bytes(&Reply {
                    success: true,
                    key: &owned_key,
                    scope: scope.as_str(),
                }));
            }
            Err(e) => responder.error(format!("cannot store {owned_key:?}: {e}")),
        }),
    );
    // The reply is sent once the write is committed; the connection waits for it.
    Outcome::Deferred
}

pub fn fetch(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
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

pub fn delete(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: KeyReq = match parse_borrowed(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let key = req.key.to_string();
    if let Err(e) = k.store.precheck() {
        return Outcome::Reply(error(format!("cannot delete {key:?}: {e}")));
    }
    let responder = k.responder(call);
    let events = k.events.clone();
    let caller = call.caller;
    k.store.submit_delete(
        key.clone(),
        Namespace::Agent(caller),
        Some(Namespace::Shared),
        Box::new(move |result| match result {
            Ok(applied) => {
                let deleted = match applied {
                    Applied::Deleted(found) => found,
                    _ => None,
                };
                if let Some((ns, scope)) = deleted {
                    announce(&events, caller, &key, "delete", scope, ns);
                }
                responder.reply(&to_bytes(
                    &json!({"success": true, "deleted": deleted.is_some(), "key": key}),
                ));
            }
            Err(e) => responder.error(format!("cannot delete {key:?}: {e}")),
        }),
    );
    Outcome::Deferred
}

pub fn keys(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: KeysReq = match crate::kernel::request::parse(payload) {
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
