//! The audit log: a bounded, ordered record of lifecycle, security and (when enabled) per-call
//! events, and the GET_AUDIT_LOG / SET_AUDIT_CONFIG handlers.
//!
//! The log is kept behind a small API ([`AuditLog::append`], [`AuditLog::query`],
//! [`AuditLog::config`] / [`AuditLog::set_config`]). Entries have ids that only grow; paging
//! with `since_id` returns the entries after that id, oldest first. When the log is full the
//! oldest entry is dropped (and counted).
//!
//! Durability: queries are served from memory (fast, never waiting), and every entry is
//! mirrored to the state store through an [`AuditSink`] without waiting (committed with the
//! writer's next batch). Ids come from the store's audit counter, which continues across
//! restarts; at start the newest `max_entries` entries are loaded back ([`AuditLog::load`]).
//! An entry appended just before a crash (not yet committed) is lost; its id is not reused.
//!
//! Who may read it: a caller with the manage right sees every entry; others see only entries
//! about themselves. Changing the configuration needs the manage right.

use super::{CallerId, Kernel};
use crate::store::{AuditRecord, AuditSink};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest `max_entries`.
pub const MAX_ENTRIES_LIMIT: usize = 1_000_000;
/// Most entries one GET_AUDIT_LOG returns.
pub const MAX_PAGE: usize = 1000;

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub max_entries: Option<usize>,
    pub log_syscalls: Option<bool>,
    pub log_security: Option<bool>,
    pub log_lifecycle: Option<bool>,
    pub log_ipc: Option<bool>,
    pub log_state: Option<bool>,
    pub log_resource: Option<bool>,
    pub log_network: Option<bool>,
}

/// What is recorded, and how much is kept. Also the SET_AUDIT_CONFIG request and reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditConfig {
    pub max_entries: usize,
    pub log_syscalls: bool,
    pub log_security: bool,
    pub log_lifecycle: bool,
    pub log_ipc: bool,
    pub log_state: bool,
    pub log_resource: bool,
    pub log_network: bool,
}

impl AuditConfig {
    pub fn from_raw(raw: &RawAudit, errors: &mut Vec<String>) -> AuditConfig {
        let max_entries = match raw.max_entries {
            None => 10_000,
            Some(n) if (1..=MAX_ENTRIES_LIMIT).contains(&n) => n,
            Some(n) => {
                errors.push(format!(
                    "audit.max_entries: {n} must be between 1 and {MAX_ENTRIES_LIMIT}"
                ));
                10_000
            }
        };
        AuditConfig {
            max_entries,
            log_syscalls: raw.log_syscalls.unwrap_or(false),
            log_security: raw.log_security.unwrap_or(true),
            log_lifecycle: raw.log_lifecycle.unwrap_or(true),
            log_ipc: raw.log_ipc.unwrap_or(false),
            log_state: raw.log_state.unwrap_or(false),
            log_resource: raw.log_resource.unwrap_or(true),
            log_network: raw.log_network.unwrap_or(false),
        }
    }

    fn enabled(&self, c: Category) -> bool {
        match c {
            Category::Security => self.log_security,
            Category::Lifecycle => self.log_lifecycle,
            Category::Syscall => self.log_syscalls,
            Category::Ipc => self.log_ipc,
            Category::State => self.log_state,
            Category::Resource => self.log_resource,
            Category::Network => self.log_network,
        }
    }

    /// Bit mask of the per-call categories that are on (see [`Audit::call_mask`]).
    fn call_mask(&self) -> u8 {
        let mut m = 0;
        for c in [
            Category::Syscall,
            Category::Ipc,
            Category::State,
            Category::Network,
        ] {
            if self.enabled(c) {
                m |= c.bit();
            }
        }
        m
    }
}

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Category {
    /// Denied calls, permission changes, audit config changes.
    Security,
    /// Agents spawned, exited, restarted, escalated, killed, paused, resumed.
    #[serde(rename = "AGENT_LIFECYCLE")]
    Lifecycle,
    /// Every call (when `log_syscalls` is on) not covered by a narrower category.
    Syscall,
    /// SEND, RECV, BROADCAST, REGISTER (when `log_ipc` is on).
    Ipc,
    /// STORE, FETCH, DELETE, KEYS (when `log_state` is on).
    State,
    /// Resource warnings and limit kills.
    Resource,
    /// HTTP (when `log_network` is on).
    Network,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Security => "SECURITY",
            Category::Lifecycle => "AGENT_LIFECYCLE",
            Category::Syscall => "SYSCALL",
            Category::Ipc => "IPC",
            Category::State => "STATE",
            Category::Resource => "RESOURCE",
            Category::Network => "NETWORK",
        }
    }

    /// Parses a category name (any case; `lifecycle` is accepted for `AGENT_LIFECYCLE`).
    pub fn parse(text: &str) -> Option<Category> {
        Some(match text.to_ascii_uppercase().as_str() {
            "SECURITY" => Category::Security,
            "AGENT_LIFECYCLE" | "LIFECYCLE" => Category::Lifecycle,
            "SYSCALL" | "SYSCALLS" => Category::Syscall,
            "IPC" => Category::Ipc,
            "STATE" => Category::State,
            "RESOURCE" => Category::Resource,
            "NETWORK" => Category::Network,
            _ => return None,
        })
    }

    fn bit(self) -> u8 {
        match self {
            Category::Security => 1,
            Category::Lifecycle => 2,
            Category::Syscall => 4,
            Category::Ipc => 8,
            Category::State => 16,
            Category::Resource => 32,
            Category::Network => 64,
        }
    }

    /// The per-call category of an op.
    pub fn of_op(op: u8) -> Category {
        use crate::proto::op::*;
        match op {
            SEND | RECV | BROADCAST | REGISTER => Category::Ipc,
            STORE | FETCH | DELETE | KEYS => Category::State,
            HTTP => Category::Network,
            _ => Category::Syscall,
        }
    }
}

/// One audit record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: u64,
    pub wall: SystemTime,
    pub category: Category,
    pub event_type: String,
    pub agent_id: CallerId,
    pub agent_name: Option<String>,
    pub success: bool,
    pub details: Value,
}

impl AuditEntry {
    /// The entry as the store keeps it.
    pub fn to_record(&self) -> AuditRecord {
        AuditRecord {
            id: i64::try_from(self.id).unwrap_or(i64::MAX),
            ts_ms: self
                .wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            category: self.category.as_str().to_string(),
            event_type: self.event_type.clone(),
            agent_id: self.agent_id,
            agent_name: self.agent_name.clone(),
            success: self.success,
            details: self.details.clone(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "timestamp": crate::clock::iso8601(self.wall),
            "category": self.category.as_str(),
            "event_type": self.event_type,
            "agent_id": self.agent_id,
            "agent_name": self.agent_name,
            "success": self.success,
            "details": self.details,
        })
    }
}

/// A GET_AUDIT_LOG filter.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub category: Option<Category>,
    pub agent_id: Option<CallerId>,
    /// Only entries with a larger id, oldest first. Without it, the newest `limit` entries.
    pub since_id: Option<u64>,
    pub limit: usize,
}

/// The bounded log.
pub struct AuditLog {
    config: AuditConfig,
    entries: VecDeque<AuditEntry>,
    /// Where entries are mirrored, and where ids come from.
    sink: AuditSink,
    /// Entries dropped because the log was full.
    pub dropped: u64,
}

impl AuditLog {
    /// A log kept in memory only.
    pub fn new(config: AuditConfig) -> AuditLog {
        AuditLog::with_sink(config, AuditSink::memory())
    }

    /// A log mirrored to the state store.
    pub fn with_sink(config: AuditConfig, sink: AuditSink) -> AuditLog {
        sink.set_max(config.max_entries);
        AuditLog {
            config,
            entries: VecDeque::new(),
            sink,
            dropped: 0,
        }
    }

    /// Puts entries read back from the store (oldest first) in front of the log.
    pub fn load(&mut self, records: Vec<AuditRecord>) {
        let mut loaded = VecDeque::with_capacity(records.len());
        for r in records {
            let Some(category) = Category::parse(&r.category) else {
                log::warn!(
                    "audit entry {} has an unknown category {:?}; not loaded",
                    r.id,
                    r.category
                );
                continue;
            };
            let Ok(id) = u64::try_from(r.id) else {
                continue;
            };
            loaded.push_back(AuditEntry {
                id,
                wall: UNIX_EPOCH + Duration::from_millis(r.ts_ms),
                category,
                event_type: r.event_type,
                agent_id: r.agent_id,
                agent_name: r.agent_name,
                success: r.success,
                details: r.details,
            });
        }
        loaded.extend(self.entries.drain(..));
        self.entries = loaded;
        while self.entries.len() > self.config.max_entries {
            self.entries.pop_front();
        }
    }

    /// Records an entry if its category is enabled; returns its id.
    pub fn append(
        &mut self,
        category: Category,
        event_type: &str,
        agent_id: CallerId,
        agent_name: Option<String>,
        success: bool,
        details: Value,
    ) -> Option<u64> {
        if !self.config.enabled(category) {
            return None;
        }
        let id = self.sink.next_id();
        while self.entries.len() >= self.config.max_entries {
            self.entries.pop_front();
            self.dropped += 1;
        }
        let entry = AuditEntry {
            id,
            wall: SystemTime::now(),
            category,
            event_type: event_type.to_string(),
            agent_id,
            agent_name,
            success,
            details,
        };
        self.sink.append(entry.to_record());
        self.entries.push_back(entry);
        Some(id)
    }

    /// The last id handed out (0 before the first entry ever).
    pub fn last_id(&self) -> u64 {
        self.sink.last_id()
    }

    /// Entries matching `q`, oldest first.
    pub fn query(&self, q: &AuditQuery) -> Vec<&AuditEntry> {
        let matches = |e: &&AuditEntry| {
            q.category.is_none_or(|c| e.category == c) && q.agent_id.is_none_or(|a| e.agent_id == a)
        };
        match q.since_id {
            Some(since) => {
                let start = self.entries.partition_point(|e| e.id <= since);
                self.entries
                    .range(start..)
                    .filter(matches)
                    .take(q.limit)
                    .collect()
            }
            None => {
                let mut newest: Vec<&AuditEntry> = self
                    .entries
                    .iter()
                    .rev()
                    .filter(matches)
                    .take(q.limit)
                    .collect();
                newest.reverse();
                newest
            }
        }
    }

    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// Replaces the configuration; a smaller `max_entries` drops the oldest entries now (and
    /// from the store with its next commit of an entry).
    pub fn set_config(&mut self, config: AuditConfig) {
        while self.entries.len() > config.max_entries {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.sink.set_max(config.max_entries);
        self.config = config;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The kernel's audit log plus a lock-free flag for the per-call fast path.
pub struct Audit {
    log: Mutex<AuditLog>,
    call_mask: AtomicU8,
}

impl Audit {
    /// An audit log kept in memory only.
    pub fn new(config: AuditConfig) -> Audit {
        Audit::with_sink(config, AuditSink::memory())
    }

    /// An audit log mirrored to the state store through `sink`.
    pub fn with_sink(config: AuditConfig, sink: AuditSink) -> Audit {
        Audit {
            call_mask: AtomicU8::new(config.call_mask()),
            log: Mutex::new(AuditLog::with_sink(config, sink)),
        }
    }

    /// Runs `f` on the log under its lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut AuditLog) -> R) -> R {
        f(&mut self.log.lock())
    }

    /// Replaces the configuration.
    pub fn set_config(&self, config: AuditConfig) {
        self.call_mask.store(config.call_mask(), Ordering::Relaxed);
        self.log.lock().set_config(config);
    }

    /// Records one answered call when per-call logging covers its op. `reply` is the reply
    /// payload, from which success is read.
    pub fn record_call(&self, caller: CallerId, op: u8, reply: &[u8]) {
        if op == crate::proto::op::GET_AUDIT_LOG || !self.logs_calls_of(op) {
            return;
        }
        let failed = reply.starts_with(b"{\"success\":false");
        let mut details = json!({"op": crate::proto::op::name(op)});
        if failed
            && let Ok(v) = serde_json::from_slice::<Value>(reply)
            && let Some(e) = v.get("error")
        {
            details["error"] = e.clone();
        }
        self.with(|log| {
            log.append(
                Category::of_op(op),
                &crate::proto::op::name(op),
                caller,
                None,
                !failed,
                details,
            )
        });
    }

    /// True when calls of `op` are recorded.
    pub fn logs_calls_of(&self, op: u8) -> bool {
        let mask = self.call_mask.load(Ordering::Relaxed);
        mask != 0 && mask & Category::of_op(op).bit() != 0
    }
}

impl Kernel {
    /// Records an audit entry about `agent_id` (its registered name is looked up here).
    pub fn audit(
        &self,
        category: Category,
        event_type: &str,
        agent_id: CallerId,
        success: bool,
        details: Value,
    ) {
        let name = self.ipc.lock().name_of(agent_id).map(str::to_string);
        self.audit
            .with(|log| log.append(category, event_type, agent_id, name, success, details));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(max: usize) -> AuditLog {
        AuditLog::new(AuditConfig::from_raw(
            &RawAudit {
                max_entries: Some(max),
                ..Default::default()
            },
            &mut vec![],
        ))
    }

    #[test]
    fn paging_returns_the_next_entries_in_order() {
        let mut l = log(100);
        for i in 0..10 {
            l.append(Category::Lifecycle, "X", i, None, true, json!(i));
        }
        let q = |since, limit| AuditQuery {
            since_id: since,
            limit,
            ..Default::default()
        };
        let ids = |v: Vec<&AuditEntry>| v.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(l.query(&q(Some(0), 3))), vec![1, 2, 3]);
        assert_eq!(ids(l.query(&q(Some(3), 3))), vec![4, 5, 6]);
        assert_eq!(ids(l.query(&q(Some(9), 3))), vec![10]);
        assert_eq!(ids(l.query(&q(Some(10), 3))), Vec::<u64>::new());
        assert_eq!(ids(l.query(&q(None, 3))), vec![8, 9, 10]);
    }

    #[test]
    fn stored_entries_load_in_front_and_round_trip() {
        let mut l = log(3);
        let e = |id: i64, cat: &str| AuditRecord {
            id,
            ts_ms: 1_700_000_000_123,
            category: cat.into(),
            event_type: format!("e{id}"),
            agent_id: 4,
            agent_name: Some("w".into()),
            success: false,
            details: json!({"id": id}),
        };
        l.load(vec![
            e(10, "SECURITY"),
            e(11, "NOPE"),
            e(12, "AGENT_LIFECYCLE"),
            e(13, "RESOURCE"),
            e(14, "SECURITY"),
        ]);
        assert_eq!(l.len(), 3, "bounded by max_entries");
        let all = l.query(&AuditQuery {
            since_id: Some(0),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [12, 13, 14]);
        let back = all[2].to_record();
        assert_eq!(back, e(14, "SECURITY"));
        assert_eq!(all[0].category, Category::Lifecycle);
    }

    #[test]
    fn bounded_and_filtered() {
        let mut l = log(5);
        for i in 0..8 {
            let c = if i % 2 == 0 {
                Category::Security
            } else {
                Category::Lifecycle
            };
            l.append(c, "X", i, None, true, Value::Null);
        }
        assert_eq!(l.len(), 5);
        assert_eq!(l.dropped, 3);
        let sec = l.query(&AuditQuery {
            category: Some(Category::Security),
            since_id: Some(0),
            limit: 10,
            ..Default::default()
        });
        assert!(sec.iter().all(|e| e.category == Category::Security));
        assert_eq!(sec.len(), 2);
        // Per-call categories are off by default: nothing recorded.
        assert_eq!(
            l.append(Category::Syscall, "NOOP", 1, None, true, Value::Null),
            None
        );
    }
}
