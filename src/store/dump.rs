//! `clove state check | export | import`: inspecting and moving the durable state of a stopped
//! daemon as a JSON document.
//!
//! These work on the database file directly, under the same lock a running daemon holds, so
//! they refuse (and change nothing) while a daemon uses the store. Any command that opens the
//! file brings an older schema up to date first, exactly as `clove serve` would.

use super::db::{Counts, Database, OpenError, SCHEMA_VERSION};
use super::records::{AgentName, AgentSpecRecord, AuditRecord};
use super::{StoreConfig, StoreLimits};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashSet;

/// The `format` field of every dump.
pub const FORMAT: &str = "clove-state";

/// The whole durable state, as exported.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dump {
    pub format: String,
    pub schema_version: i64,
    #[serde(default)]
    pub exported_at: Option<String>,
    #[serde(default)]
    pub keys: Vec<DumpKey>,
    #[serde(default)]
    pub agent_names: Vec<AgentName>,
    #[serde(default)]
    pub agent_specs: Vec<AgentSpecRecord>,
    #[serde(default)]
    pub audit: Vec<AuditRecord>,
}

/// One state key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpKey {
    /// `global` or `agent`.
    pub scope: String,
    /// The owning agent, for scope `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<u32>,
    pub key: String,
    pub value: Box<RawValue>,
    /// Absolute expiry, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// What `clove state check` found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub path: String,
    pub schema_version: i64,
    pub counts: Counts,
    /// Keys whose TTL has passed (they are removed when the daemon starts).
    pub expired_keys: u64,
    /// SQLite's integrity_check messages; empty when the file is sound.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(f, "state store {}", self.path)?;
        writeln!(f, "  schema version {}", self.schema_version)?;
        writeln!(
            f,
            "  {} keys ({} expired), {} agent names, {} persistent agents, {} audit entries",
            c.keys, self.expired_keys, c.agent_names, c.agent_specs, c.audit_entries
        )?;
        if self.problems.is_empty() {
            write!(f, "  integrity: ok")
        } else {
            write!(
                f,
                "  integrity: FAILED\n    {}",
                self.problems.join("\n    ")
            )
        }
    }
}

/// Verifies the store: SQLite's full integrity check plus every value being JSON.
pub fn check(cfg: &StoreConfig) -> Result<CheckReport, OpenError> {
    let db = Database::open(&cfg.path, cfg.sync, false)?;
    let now = crate::clock::now_ms();
    let mut problems = db.integrity_problems()?;
    let mut expired = 0u64;
    if problems.is_empty() {
        // Loading every key also parses every value, as the daemon will at start.
        if let Err(e) = db.for_each_key(|_, _, _, exp| {
            if exp.is_some_and(|e| e <= now) {
                expired += 1;
            }
        }) {
            problems.push(e.to_string());
        }
        if let Err(e) = db.agent_specs() {
            problems.push(e.to_string());
        }
    }
    Ok(CheckReport {
        path: cfg.path.display().to_string(),
        schema_version: SCHEMA_VERSION,
        counts: db.counts()?,
        expired_keys: expired,
        problems,
    })
}

/// Reads the whole durable state (keys already expired are left out). Like services'
/// documents, the keys of services' named namespaces (the relay's other tenants) are not part
/// of a dump: they mean nothing without the service's documents.
pub fn export(cfg: &StoreConfig) -> Result<Dump, OpenError> {
    let db = Database::open(&cfg.path, cfg.sync, false)?;
    let now = crate::clock::now_ms();
    let mut keys = Vec::new();
    db.for_each_key(|ns, key, value, expires_ms| {
        if expires_ms.is_some_and(|e| e <= now) {
            return;
        }
        let (scope, agent_id) = match ns {
            super::Namespace::Shared => ("global", None),
            super::Namespace::Agent(id) => ("agent", Some(id)),
            super::Namespace::Named(_) => return,
        };
        keys.push(DumpKey {
            scope: scope.into(),
            agent_id,
            key,
            value,
            expires_ms,
        });
    })?;
    keys.sort_by(|a, b| (a.agent_id, &a.key).cmp(&(b.agent_id, &b.key)));
    let audit = db
        .audit(&super::AuditQuery {
            since_id: Some(0),
            limit: usize::MAX,
            ..Default::default()
        })
        .map_err(|e| super::db::classify(&cfg.path, e))?;
    Ok(Dump {
        format: FORMAT.into(),
        schema_version: SCHEMA_VERSION,
        exported_at: Some(crate::clock::iso8601(std::time::SystemTime::now())),
        keys,
        agent_names: db.agent_names()?,
        agent_specs: db.agent_specs()?,
        audit,
    })
}

/// Parses and validates a dump against the limits; returns every problem at once.
pub fn parse(text: &str, limits: &StoreLimits) -> Result<Dump, String> {
    let dump: Dump =
        serde_json::from_str(text).map_err(|e| format!("not a clove state dump: {e}"))?;
    let mut errors = Vec::new();
    if dump.format != FORMAT {
        errors.push(format!("format is {:?}, expected {FORMAT:?}", dump.format));
    }
    if dump.schema_version > SCHEMA_VERSION {
        errors.push(format!(
            "it was exported from schema version {}, newer than this clove's {SCHEMA_VERSION}",
            dump.schema_version
        ));
    }
    let mut seen = HashSet::new();
    let mut bytes = 0usize;
    for (i, k) in dump.keys.iter().enumerate() {
        let at = format!("keys[{i}] ({:?})", k.key);
        match (k.scope.as_str(), k.agent_id) {
            ("global", None) => {}
            ("agent", Some(id)) if id > 0 => {}
            ("global", Some(_)) => errors.push(format!("{at}: a global key has no agent_id")),
            ("agent", _) => errors.push(format!("{at}: an agent key needs an agent_id above 0")),
            (s, _) => errors.push(format!(
                "{at}: scope {s:?} is not durable (use \"global\" or \"agent\")"
            )),
        }
        if let Err(e) = limits.check(&k.key, &k.value) {
            errors.push(format!("{at}: {e}"));
        }
        if !seen.insert((k.agent_id, k.key.as_str())) {
            errors.push(format!("{at}: appears twice"));
        }
        bytes += k.key.len() + k.value.get().len();
    }
    if dump.keys.len() > limits.max_keys {
        errors.push(format!(
            "{} keys, more than limits.state_max_keys ({})",
            dump.keys.len(),
            limits.max_keys
        ));
    }
    if bytes > limits.max_total_bytes {
        errors.push(format!(
            "{bytes} bytes of keys and values, more than limits.state_max_total_bytes ({})",
            limits.max_total_bytes
        ));
    }
    let mut names = HashSet::new();
    for n in &dump.agent_names {
        if n.name.is_empty() || n.agent_id == 0 {
            errors.push(format!("agent name {:?}: empty name or agent_id 0", n.name));
        }
        if !names.insert(n.name.as_str()) {
            errors.push(format!("agent name {:?} appears twice", n.name));
        }
    }
    let mut specs = HashSet::new();
    for s in &dump.agent_specs {
        if s.agent_id == 0 || !specs.insert(s.agent_id) {
            errors.push(format!(
                "agent spec {}: agent_id is 0 or appears twice",
                s.agent_id
            ));
        }
    }
    if errors.is_empty() {
        Ok(dump)
    } else {
        Err(format!(
            "the dump cannot be imported:\n  {}",
            errors.join("\n  ")
        ))
    }
}

/// Replaces the durable state with `dump`, in one transaction. Unless `replace` is set, refuses
/// to overwrite a store that holds anything. Creates the store if there is none.
pub fn import(cfg: &StoreConfig, dump: &Dump, replace: bool) -> Result<Counts, String> {
    let db = Database::open(&cfg.path, cfg.sync, true).map_err(|e| e.to_string())?;
    let before = db.counts().map_err(|e| e.to_string())?;
    if !before.is_empty() && !replace {
        return Err(format!(
            "the state store {} is not empty ({} keys, {} agent names, {} persistent agents, {} audit entries); pass --replace to overwrite it (export it first to keep a copy)",
            cfg.path.display(),
            before.keys,
            before.agent_names,
            before.agent_specs,
            before.audit_entries
        ));
    }
    let fail = |e: rusqlite::Error| format!("import failed, nothing was changed: {e}");
    let tx = db.conn.unchecked_transaction().map_err(fail)?;
    tx.execute_batch(
        "DELETE FROM kv; DELETE FROM agent_names; DELETE FROM agent_specs; DELETE FROM audit;",
    )
    .map_err(fail)?;
    {
        let mut ins = tx
            .prepare("INSERT INTO kv (ns, key, value, expires_ms) VALUES (?1, ?2, ?3, ?4)")
            .map_err(fail)?;
        for k in &dump.keys {
            ins.execute(params![
                k.agent_id.unwrap_or(0),
                k.key,
                k.value.get(),
                k.expires_ms.map(|e| e.min(i64::MAX as u64) as i64)
            ])
            .map_err(fail)?;
        }
        let mut ins = tx
            .prepare("INSERT INTO agent_names (name, agent_id) VALUES (?1, ?2)")
            .map_err(fail)?;
        for n in &dump.agent_names {
            ins.execute(params![n.name, n.agent_id]).map_err(fail)?;
        }
        let mut ins = tx
            .prepare(
                "INSERT INTO agent_specs (agent_id, name, spec, saved_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(fail)?;
        for s in &dump.agent_specs {
            ins.execute(params![
                s.agent_id,
                s.name,
                s.spec.to_string(),
                s.saved_ms.min(i64::MAX as u64) as i64
            ])
            .map_err(fail)?;
        }
        let mut ins = tx
            .prepare(
                "INSERT INTO audit (id, ts_ms, category, event_type, agent_id, agent_name,
                 success, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(fail)?;
        for a in &dump.audit {
            ins.execute(params![
                (a.id > 0).then_some(a.id),
                a.ts_ms.min(i64::MAX as u64) as i64,
                a.category,
                a.event_type,
                a.agent_id,
                a.agent_name,
                a.success,
                a.details.to_string()
            ])
            .map_err(fail)?;
        }
    }
    tx.commit().map_err(fail)?;
    db.counts().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StoreLimits {
        StoreLimits {
            max_keys: 10,
            max_key_bytes: 16,
            max_value_bytes: 64,
            max_total_bytes: 1000,
        }
    }

    #[test]
    fn parse_reports_every_problem() {
        let text = r#"{"format":"clove-state","schema_version":1,"keys":[
            {"scope":"global","key":"a","value":1},
            {"scope":"session","key":"b","value":1},
            {"scope":"agent","key":"c","value":1},
            {"scope":"global","key":"a","value":2},
            {"scope":"global","key":"","value":2}
        ]}"#;
        let e = parse(text, &limits()).unwrap_err();
        assert!(e.contains("not durable"), "{e}");
        assert!(e.contains("needs an agent_id"), "{e}");
        assert!(e.contains("appears twice"), "{e}");
        assert!(e.contains("must not be empty"), "{e}");
        let e = parse(r#"{"format":"x","schema_version":9}"#, &limits()).unwrap_err();
        assert!(e.contains("format") && e.contains("newer"), "{e}");
        assert!(parse("[]", &limits()).is_err());
    }

    #[test]
    fn export_import_round_trip() {
        let d = tempfile::Builder::new()
            .prefix("clove-dump")
            .tempdir_in("/tmp")
            .unwrap();
        let cfg = StoreConfig::at(&d.path().join("a.db"));
        let text = r#"{"format":"clove-state","schema_version":1,"keys":[
            {"scope":"global","key":"a","value":{"x": [1, 2]}},
            {"scope":"agent","agent_id":7,"key":"p","value":"s","expires_ms":99999999999999}],
            "agent_names":[{"name":"w","agent_id":7}],
            "agent_specs":[{"agent_id":7,"name":"w","spec":{"script":"w.py"},"saved_ms":5}],
            "audit":[{"id":3,"ts_ms":1,"category":"lifecycle","event_type":"spawn","agent_id":7,"success":true,"details":{}}]}"#;
        let dump = parse(text, &limits()).unwrap();
        let counts = import(&cfg, &dump, false).unwrap();
        assert_eq!(
            counts,
            Counts {
                keys: 2,
                agent_names: 1,
                agent_specs: 1,
                audit_entries: 1
            }
        );
        let e = import(&cfg, &dump, false).unwrap_err();
        assert!(e.contains("--replace"), "{e}");
        let out = export(&cfg).unwrap();
        assert_eq!(out.keys.len(), 2);
        assert_eq!(out.keys[0].value.get(), r#"{"x": [1, 2]}"#);
        assert_eq!(out.keys[1].agent_id, Some(7));
        assert_eq!(out.audit[0].id, 3);
        assert_eq!(out.agent_specs[0].spec["script"], "w.py");
        let report = check(&cfg).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.counts.keys, 2);
    }
}
