//! The durable records besides state keys: supervised agents' registered names, the specs of
//! agents spawned with `"persist": true`, audit log entries, and services' documents.
//!
//! These are plain data; [`super::StateStore`] saves them through the writer thread and hands
//! back what was on disk at start ([`Recovered`]).

use serde::{Deserialize, Serialize};

/// A registered name that belongs to a supervised agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentName {
    pub name: String,
    pub agent_id: u32,
}

/// The spec of an agent spawned with `"persist": true`, to be started again at daemon start.
/// `spec` is the supervisor's own JSON (the SPAWN request as accepted); the store does not
/// interpret it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpecRecord {
    pub agent_id: u32,
    #[serde(default)]
    pub name: Option<String>,
    pub spec: serde_json::Value,
    /// When it was last saved, Unix milliseconds.
    pub saved_ms: u64,
}

/// One audit log entry (the GET_AUDIT_LOG shape, with the timestamp in Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store when the entry is committed; ignored on append.
    #[serde(default)]
    pub id: i64,
    pub ts_ms: u64,
    pub category: String,
    pub event_type: String,
    pub agent_id: u32,
    #[serde(default)]
    pub agent_name: Option<String>,
    pub success: bool,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// Which audit entries to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub category: Option<String>,
    pub agent_id: Option<u32>,
    /// Entries with a larger id, oldest first. Without it: the newest `limit` entries, oldest
    /// first.
    pub since_id: Option<i64>,
    pub limit: usize,
}

/// A service's document: JSON text under an id in a named collection (`router.swarms`, ...).
/// The store keeps it as it is given and does not interpret it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocRecord {
    pub collection: String,
    pub id: String,
    pub body: String,
}

/// One change to a collection; a batch of them commits together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocWrite {
    /// Saves (or replaces) a document.
    Put(DocRecord),
    /// Removes a document (nothing happens when there is none).
    Delete { collection: String, id: String },
}

/// What the database held when the daemon started, besides state keys (which go straight into
/// memory): for the supervisor to restore.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub agent_names: Vec<AgentName>,
    pub agent_specs: Vec<AgentSpecRecord>,
    /// Expired keys deleted at start because their TTL passed while the daemon was down.
    pub expired_at_start: usize,
    /// Every service document, for each service to take its collections
    /// ([`super::StateStore::take_docs`]).
    pub docs: Vec<DocRecord>,
}
