//! The state store: keys and values of the STORE/FETCH/DELETE/KEYS ops, with scopes and TTL.
//!
//! This module is the only owner of state data; handlers call its methods and never see how
//! entries are kept. Values are kept as raw JSON text (`Box<RawValue>`), so what a client stores
//! is returned byte for byte and never re-encoded.
//!
//! Namespaces: `global` and `session` keys share one namespace (a key is in one of the two
//! scopes); every agent has its own namespace for `agent` keys, so no global key can reach
//! them. Expiry uses absolute wall-clock milliseconds: expired entries are removed by
//! [`StateStore::expire`] (driven by the reactor's timer) and never returned by reads in the
//! meantime.

use crate::config::Config;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The three scopes of the state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Agent,
    Session,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "global" => Some(Scope::Global),
            "agent" => Some(Scope::Agent),
            "session" => Some(Scope::Session),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Agent => "agent",
            Scope::Session => "session",
        }
    }
}

/// Which namespace a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// `global` and `session` keys.
    Shared,
    /// One agent's private keys.
    Agent(u32),
}

#[derive(Debug)]
struct Entry {
    value: Box<RawValue>,
    scope: Scope,
    /// Absolute expiry in Unix milliseconds.
    expires_ms: Option<u64>,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// A key that expired, for STATE_CHANGED events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub ns: Namespace,
    pub key: String,
    pub scope: Scope,
}

/// What a read found.
#[derive(Debug, Clone)]
pub struct Found {
    pub value: Box<RawValue>,
    pub scope: Scope,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes; the maximum is {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {len} bytes; the maximum is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("state store is full: {max} keys")]
    TooManyKeys { max: usize },
    #[error("state store is full: storing this would exceed {max} bytes")]
    TooManyBytes { max: usize },
}

#[derive(Default)]
struct Inner {
    shared: HashMap<String, Entry>,
    agents: HashMap<u32, HashMap<String, Entry>>,
    /// (expiry, namespace, key); entries are checked against the live entry when popped.
    expiries: BinaryHeap<Reverse<(u64, Namespace, String)>>,
    keys: usize,
    bytes: usize,
}

impl Inner {
    fn map(&self, ns: Namespace) -> Option<&HashMap<String, Entry>> {
        match ns {
            Namespace::Shared => Some(&self.shared),
            Namespace::Agent(id) => self.agents.get(&id),
        }
    }

    fn map_mut(&mut self, ns: Namespace) -> &mut HashMap<String, Entry> {
        match ns {
            Namespace::Shared => &mut self.shared,
            Namespace::Agent(id) => self.agents.entry(id).or_default(),
        }
    }

    fn remove(&mut self, ns: Namespace, key: &str) -> Option<Entry> {
        let removed = match ns {
            Namespace::Shared => self.shared.remove(key),
            Namespace::Agent(id) => {
                let m = self.agents.get_mut(&id)?;
                let r = m.remove(key);
                if m.is_empty() {
                    self.agents.remove(&id);
                }
                r
            }
        };
        if let Some(e) = &removed {
            self.keys -= 1;
            self.bytes -= key.len() + e.value.get().len();
        }
        removed
    }
}

/// Limits applied to writes.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max_keys: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_total_bytes: usize,
}

/// The state store.
pub struct StateStore {
    inner: Mutex<Inner>,
    limits: StoreLimits,
}

impl StateStore {
    pub fn new(config: &Config) -> StateStore {
        StateStore::with_limits(StoreLimits {
            max_keys: config.state_max_keys,
            max_key_bytes: config.state_max_key_bytes,
            max_value_bytes: config.state_max_value_bytes,
            max_total_bytes: config.state_max_total_bytes,
        })
    }

    pub fn with_limits(limits: StoreLimits) -> StateStore {
        StateStore {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    /// Stores a value. `ns` is [`Namespace::Agent`] for scope `agent`, else Shared.
    pub fn put(
        &self,
        ns: Namespace,
        key: &str,
        value: &RawValue,
        scope: Scope,
        expires_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let l = &self.limits;
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if key.len() > l.max_key_bytes {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: l.max_key_bytes,
            });
        }
        let vlen = value.get().len();
        if vlen > l.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len: vlen,
                max: l.max_value_bytes,
            });
        }
        let mut inner = self.inner.lock();
        let old = inner
            .map(ns)
            .and_then(|m| m.get(key))
            .map(|e| key.len() + e.value.get().len());
        let keys_after = inner.keys + usize::from(old.is_none());
        if keys_after > l.max_keys {
            return Err(StoreError::TooManyKeys { max: l.max_keys });
        }
        let bytes_after = inner.bytes - old.unwrap_or(0) + key.len() + vlen;
        if bytes_after > l.max_total_bytes {
            return Err(StoreError::TooManyBytes {
                max: l.max_total_bytes,
            });
        }
        inner.keys = keys_after;
        inner.bytes = bytes_after;
        if let Some(at) = expires_ms {
            inner.expiries.push(Reverse((at, ns, key.to_string())));
        }
        let entry = Entry {
            value: value.to_owned(),
            scope,
            expires_ms,
        };
        let map = inner.map_mut(ns);
        match map.get_mut(key) {
            Some(slot) => *slot = entry,
            None => {
                map.insert(key.to_string(), entry);
            }
        }
        // Heap entries are only checked when popped; keep stale ones from piling up when the
        // same keys are rewritten with TTLs over and over.
        if inner.expiries.len() > 2 * inner.keys + 1024 {
            Self::rebuild_expiries(&mut inner);
        }
        Ok(())
    }

    /// Reads a key from one namespace.
    pub fn get(&self, ns: Namespace, key: &str, now_ms: u64) -> Option<Found> {
        let inner = self.inner.lock();
        let e = inner.map(ns)?.get(key)?;
        e.live(now_ms).then(|| Found {
            value: e.value.clone(),
            scope: e.scope,
        })
    }

    /// Reads a key with a closure, without copying the value.
    pub fn with<R>(
        &self,
        ns: Namespace,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(Option<(&RawValue, Scope)>) -> R,
    ) -> R {
        let inner = self.inner.lock();
        match inner.map(ns).and_then(|m| m.get(key)) {
            Some(e) if e.live(now_ms) => f(Some((&e.value, e.scope))),
            _ => f(None),
        }
    }

    /// Deletes a key; returns its scope if it existed (and had not expired).
    pub fn delete(&self, ns: Namespace, key: &str, now_ms: u64) -> Option<Scope> {
        let mut inner = self.inner.lock();
        let e = inner.remove(ns, key)?;
        e.live(now_ms).then_some(e.scope)
    }

    /// Live keys of a namespace that start with `prefix`, sorted.
    pub fn keys(&self, ns: Namespace, prefix: &str, now_ms: u64, limit: usize) -> Vec<String> {
        let inner = self.inner.lock();
        let mut out: Vec<String> = inner
            .map(ns)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        out.sort_unstable();
        out.truncate(limit);
        out
    }

    /// Removes every entry whose expiry is at or before `now_ms`.
    pub fn expire(&self, now_ms: u64) -> Vec<Expired> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while let Some(Reverse((at, _, _))) = inner.expiries.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((at, ns, key))) = inner.expiries.pop() else {
                break;
            };
            let current = inner
                .map(ns)
                .and_then(|m| m.get(&key))
                .and_then(|e| e.expires_ms);
            if current == Some(at)
                && let Some(e) = inner.remove(ns, &key)
            {
                out.push(Expired {
                    ns,
                    key,
                    scope: e.scope,
                });
            }
        }
        out
    }

    /// The earliest pending expiry (possibly of an entry since rewritten; harmless).
    pub fn next_expiry(&self) -> Option<u64> {
        self.inner
            .lock()
            .expiries
            .peek()
            .map(|Reverse((at, _, _))| *at)
    }

    /// Number of live-or-not-yet-reclaimed entries and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.keys, inner.bytes)
    }

    /// Drops an agent's whole namespace (when the agent is removed for good).
    pub fn drop_namespace(&self, agent: u32) {
        let mut inner = self.inner.lock();
        if let Some(m) = inner.agents.remove(&agent) {
            for (k, e) in m {
                inner.keys -= 1;
                inner.bytes -= k.len() + e.value.get().len();
            }
        }
    }

    fn rebuild_expiries(inner: &mut Inner) {
        let mut heap = BinaryHeap::new();
        for (k, e) in &inner.shared {
            if let Some(at) = e.expires_ms {
                heap.push(Reverse((at, Namespace::Shared, k.clone())));
            }
        }
        for (id, m) in &inner.agents {
            for (k, e) in m {
                if let Some(at) = e.expires_ms {
                    heap.push(Reverse((at, Namespace::Agent(*id), k.clone())));
                }
            }
        }
        inner.expiries = heap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StateStore {
        StateStore::with_limits(StoreLimits {
            max_keys: 3,
            max_key_bytes: 8,
            max_value_bytes: 16,
            max_total_bytes: 30,
        })
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn namespaces_are_separate() {
        let s = store();
        s.put(Namespace::Shared, "k", &raw("1"), Scope::Global, None)
            .unwrap();
        s.put(Namespace::Agent(7), "k", &raw("2"), Scope::Agent, None)
            .unwrap();
        assert_eq!(s.get(Namespace::Shared, "k", 0).unwrap().value.get(), "1");
        assert_eq!(s.get(Namespace::Agent(7), "k", 0).unwrap().value.get(), "2");
        assert!(s.get(Namespace::Agent(8), "k", 0).is_none());
        assert_eq!(s.delete(Namespace::Shared, "k", 0), Some(Scope::Global));
        assert!(s.get(Namespace::Agent(7), "k", 0).is_some());
    }

    #[test]
    fn limits() {
        let s = store();
        assert_eq!(
            s.put(Namespace::Shared, "", &raw("1"), Scope::Global, None),
            Err(StoreError::EmptyKey)
        );
        assert!(matches!(
            s.put(
                Namespace::Shared,
                "123456789",
                &raw("1"),
                Scope::Global,
                None
            ),
            Err(StoreError::KeyTooLong { .. })
        ));
        assert!(matches!(
            s.put(
                Namespace::Shared,
                "a",
                &raw("\"0123456789abcdef\""),
                Scope::Global,
                None
            ),
            Err(StoreError::ValueTooLarge { .. })
        ));
        for k in ["a", "b", "c"] {
            s.put(Namespace::Shared, k, &raw("1"), Scope::Global, None)
                .unwrap();
        }
        assert_eq!(
            s.put(Namespace::Shared, "d", &raw("1"), Scope::Global, None),
            Err(StoreError::TooManyKeys { max: 3 })
        );
        // Overwriting an existing key does not count as a new key.
        s.put(Namespace::Shared, "a", &raw("2"), Scope::Global, None)
            .unwrap();
        assert!(matches!(
            s.put(
                Namespace::Shared,
                "a",
                &raw("\"0123456789abcd\""),
                Scope::Global,
                None
            ),
            Ok(())
        ));
        assert!(matches!(
            s.put(
                Namespace::Shared,
                "b",
                &raw("\"0123456789abcd\""),
                Scope::Global,
                None
            ),
            Err(StoreError::TooManyBytes { .. })
        ));
    }

    #[test]
    fn expiry_reclaims() {
        let s = store();
        s.put(Namespace::Shared, "a", &raw("1"), Scope::Global, Some(100))
            .unwrap();
        s.put(Namespace::Agent(1), "b", &raw("1"), Scope::Agent, Some(200))
            .unwrap();
        assert_eq!(s.next_expiry(), Some(100));
        assert!(s.get(Namespace::Shared, "a", 99).is_some());
        assert!(
            s.get(Namespace::Shared, "a", 100).is_none(),
            "hidden at expiry"
        );
        let gone = s.expire(150);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, "a");
        assert_eq!(s.usage().0, 1, "reclaimed, not just hidden");
        // A key rewritten without TTL does not expire from its old heap entry.
        s.put(Namespace::Agent(1), "b", &raw("2"), Scope::Agent, None)
            .unwrap();
        assert!(s.expire(1000).is_empty());
        assert_eq!(s.usage().0, 1);
    }
}
