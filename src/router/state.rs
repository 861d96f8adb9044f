//! The router's durable model: swarms and their status table, nodes and when they are busy,
//! inter-swarm queue items and which nodes they may go to, pending approvals. Pure data and
//! rules (no I/O, no clock), unit-tested without threads.

use super::wire::Selector;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A swarm's status as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Launch in progress.
    Pending,
    Running,
    Terminating,
    Terminated,
    /// Its provider cannot say (it is asked again with backoff; the swarm is never forgotten).
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Terminating => "terminating",
            Status::Terminated => "terminated",
            Status::Unknown => "unknown",
        }
    }

    /// The one table of allowed changes. A terminating swarm never becomes running again
    /// (the old router flipped it back); a terminated one stays terminated.
    pub fn may_become(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (a, b) if a == b => true,
            (Pending, Running | Terminating | Terminated | Unknown) => true,
            (Running, Terminating | Terminated | Unknown) => true,
            (Unknown, Pending | Running | Terminating | Terminated) => true,
            (Terminating, Terminated) => true,
            _ => false,
        }
    }

    pub fn is_live(self) -> bool {
        self != Status::Terminated
    }
}

/// One node's runtime state (kept durably: a restart does not reset it to idle).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The worker's last `thread_status` said `active` (or a turn started).
    #[serde(default)]
    pub active: bool,
    /// Injections handed to the node whose turn has not completed, oldest first.
    #[serde(default)]
    pub outstanding: Vec<String>,
    /// The worker process has ended.
    #[serde(default)]
    pub exited: bool,
}

/// Most injection ids remembered per node (beyond it the oldest is forgotten).
const MAX_OUTSTANDING: usize = 4096;

impl NodeState {
    pub fn busy(&self) -> bool {
        !self.exited && (self.active || !self.outstanding.is_empty())
    }

    pub fn available(&self) -> bool {
        !self.exited && !self.busy()
    }

    pub fn add(&mut self, injection_id: &str) {
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.remove(0);
        }
        self.outstanding.push(injection_id.to_string());
    }

    pub fn remove(&mut self, injection_id: &str) -> bool {
        let before = self.outstanding.len();
        self.outstanding.retain(|i| i != injection_id);
        before != self.outstanding.len()
    }

    /// Applies a worker event; returns true when the node's busy state may have changed.
    pub fn apply(&mut self, event: &str, data: &Value) -> bool {
        let inj = data["injection_id"].as_str();
        match event {
            "thread_status" => {
                let active = data["status"]["type"] == "active";
                std::mem::replace(&mut self.active, active) != active
            }
            "turn_started" => !std::mem::replace(&mut self.active, true),
            "turn_complete" | "task_complete" => match inj {
                Some(i) => self.remove(i),
                // A completion that names no injection ends the oldest one (once per turn).
                None if event == "turn_complete" => {
                    !self.outstanding.is_empty() && {
                        self.outstanding.remove(0);
                        true
                    }
                }
                None => false,
            },
            _ => false,
        }
    }
}

/// A termination asked for and not yet finished (durable: it resumes after a restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Termination {
    pub force: bool,
    /// Every `swarm_terminate` waiting for this end gets its own `swarm_terminated`.
    pub request_ids: Vec<Value>,
}

/// A swarm as the router keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swarm {
    pub swarm_id: String,
    pub job_id: String,
    pub provider_id: String,
    pub provider_backend: String,
    pub node_count: u32,
    pub status: Status,
    pub system_prompt: String,
    pub provider_params: Map<String, Value>,
    pub agent_runtime: String,
    pub created_at: String,
    pub created_ms: u64,
    #[serde(default)]
    pub ended_ms: Option<u64>,
    #[serde(default)]
    pub launch_request_id: Value,
    #[serde(default)]
    pub backend_state: Value,
    #[serde(default)]
    pub terminate: Option<Termination>,
    /// Why the status is `unknown`.
    #[serde(default)]
    pub unknown_reason: Option<String>,
    /// Kept in its own document (it changes with every turn); not in this one.
    #[serde(skip)]
    pub nodes: Vec<NodeState>,
}

/// Keys of launch parameters whose values are never listed.
fn is_secret_key(k: &str) -> bool {
    let l = k.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "api_key",
        "apikey",
        "credential",
        "key_file",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Parameters with secret values replaced (for `swarm_list`, `providers_list`).
pub fn redacted(params: &Map<String, Value>) -> Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) {
                json!("<redacted>")
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

impl Swarm {
    /// Moves to `to` if the status table allows it; returns whether it changed.
    pub fn set_status(&mut self, to: Status) -> bool {
        if self.status != to && self.status.may_become(to) {
            self.status = to;
            return true;
        }
        false
    }

    /// The entry of `swarm_list`.
    pub fn listing(&self) -> Value {
        json!({
            "job_id": self.job_id,
            "node_count": self.node_count,
            "status": self.status.as_str(),
            "system_prompt": self.system_prompt,
            "provider": self.provider_id,
            "provider_backend": self.provider_backend,
            "provider_id": self.provider_id,
            "agent_runtime": self.agent_runtime,
            "provider_params": redacted(&self.provider_params),
            "created_at": self.created_at,
            "nodes_busy": self.nodes.iter().filter(|n| n.busy()).count(),
        })
    }
}

/// How an inter-swarm item chooses nodes, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorDoc {
    pub kind: String,
    #[serde(default)]
    pub nodes: Vec<u32>,
}

impl From<&Selector> for SelectorDoc {
    fn from(s: &Selector) -> SelectorDoc {
        SelectorDoc {
            kind: s.name().to_string(),
            nodes: match s {
                Selector::Nodes(n) => n.clone(),
                _ => Vec::new(),
            },
        }
    }
}

/// An `enqueue_inject` waiting for its target's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub queue_id: String,
    pub request_id: Value,
    pub source_swarm_id: String,
    pub target_swarm_id: String,
    pub selector: SelectorDoc,
    pub content: String,
    pub created_at: String,
    pub created_ms: u64,
    #[serde(default)]
    pub blocked: Option<String>,
}

/// Content shown in queue listings (events go to every client: keep them small).
const PREVIEW_CHARS: usize = 1000;

impl QueueItem {
    pub fn listing(&self) -> Value {
        let truncated = self.content.chars().count() > PREVIEW_CHARS;
        let content: String = self.content.chars().take(PREVIEW_CHARS).collect();
        json!({
            "queue_id": self.queue_id,
            "request_id": self.request_id,
            "source_swarm_id": self.source_swarm_id,
            "target_swarm_id": self.target_swarm_id,
            "selector": self.selector.kind,
            "nodes": self.selector.nodes,
            "content": content,
            "content_truncated": truncated,
            "created_at": self.created_at,
            "status": if self.blocked.is_some() { "blocked" } else { "queued" },
            "blocked_reason": self.blocked,
        })
    }

    /// The nodes this item can go to now, or `None` to wait. `idle`: the first available
    /// node; `all` and `nodes`: every chosen node, once all of them are available.
    pub fn pick(&self, nodes: &[NodeState]) -> Option<Vec<u32>> {
        match self.selector.kind.as_str() {
            "idle" => nodes
                .iter()
                .position(NodeState::available)
                .map(|i| vec![i as u32]),
            "all" => {
                let live: Vec<u32> = (0..nodes.len() as u32)
                    .filter(|&i| !nodes[i as usize].exited)
                    .collect();
                (!live.is_empty() && live.iter().all(|&i| nodes[i as usize].available()))
                    .then_some(live)
            }
            _ => {
                let ok = !self.selector.nodes.is_empty()
                    && self
                        .selector
                        .nodes
                        .iter()
                        .all(|&i| nodes.get(i as usize).is_some_and(NodeState::available));
                ok.then(|| self.selector.nodes.clone())
            }
        }
    }
}

/// An approval a worker asked for, until the worker acknowledges the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub swarm_id: String,
    pub job_id: String,
    pub node_id: u32,
    pub injection_id: Value,
    pub call_id: String,
    pub approval_id: Value,
    /// The request as the worker gave it (command, reason, cwd, available decisions, ...).
    pub request: Value,
    pub created_at: String,
    /// `pending` or `submitted`.
    pub status: String,
    #[serde(default)]
    pub approved: Option<bool>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub submit_request_id: Value,
}

impl Approval {
    /// `<job>:<node>:<call>`: the document id and the key approvals are found by.
    pub fn key(job: &str, node: u32, call: &str) -> String {
        format!("{job}:{node}:{call}")
    }

    pub fn listing(&self) -> Value {
        let mut v = self.request.clone();
        if let Some(m) = v.as_object_mut() {
            for (k, x) in [
                ("swarm_id", json!(self.swarm_id)),
                ("job_id", json!(self.job_id)),
                ("node_id", json!(self.node_id)),
                ("injection_id", self.injection_id.clone()),
                ("call_id", json!(self.call_id)),
                ("approval_id", self.approval_id.clone()),
                ("created_at", json!(self.created_at)),
                ("status", json!(self.status)),
                ("approved", json!(self.approved)),
                ("decision", json!(self.decision)),
            ] {
                m.insert(k.into(), x);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        use Status::*;
        let all = [Pending, Running, Terminating, Terminated, Unknown];
        let allowed: Vec<(Status, Status)> = all
            .iter()
            .flat_map(|&a| all.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a != b && a.may_become(b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Running),
                (Pending, Terminating),
                (Pending, Terminated),
                (Pending, Unknown),
                (Running, Terminating),
                (Running, Terminated),
                (Running, Unknown),
                (Terminating, Terminated),
                (Unknown, Pending),
                (Unknown, Running),
                (Unknown, Terminating),
                (Unknown, Terminated),
            ]
        );
    }

    #[test]
    fn nodes_are_busy_until_their_turns_complete() {
        let mut n = NodeState::default();
        assert!(n.available());
        n.add("a");
        n.add("b");
        assert!(n.busy());
        assert!(n.apply("thread_status", &json!({"status": {"type": "active"}})));
        assert!(n.apply("task_complete", &json!({"injection_id": "a"})));
        assert!(
            !n.apply("turn_complete", &json!({"injection_id": "a"})),
            "the same turn ends once"
        );
        assert_eq!(n.outstanding, ["b"]);
        assert!(n.apply("turn_complete", &json!({"injection_id": null})));
        n.apply("thread_status", &json!({"status": {"type": "idle"}}));
        assert!(n.available());
        n.exited = true;
        assert!(!n.available() && !n.busy());
    }

    fn item(kind: &str, nodes: Vec<u32>) -> QueueItem {
        QueueItem {
            queue_id: "q".into(),
            request_id: Value::Null,
            source_swarm_id: "a".into(),
            target_swarm_id: "b".into(),
            selector: SelectorDoc {
                kind: kind.into(),
                nodes,
            },
            content: "x".into(),
            created_at: String::new(),
            created_ms: 0,
            blocked: None,
        }
    }

    #[test]
    fn selectors_pick_available_nodes() {
        let mut nodes = vec![NodeState::default(); 3];
        nodes[0].add("x");
        assert_eq!(item("idle", vec![]).pick(&nodes), Some(vec![1]));
        assert_eq!(item("all", vec![]).pick(&nodes), None);
        assert_eq!(item("nodes", vec![1, 2]).pick(&nodes), Some(vec![1, 2]));
        assert_eq!(item("nodes", vec![0, 2]).pick(&nodes), None);
        nodes[0].exited = true;
        assert_eq!(item("all", vec![]).pick(&nodes), Some(vec![1, 2]));
        nodes[1].add("y");
        nodes[2].add("z");
        assert_eq!(item("idle", vec![]).pick(&nodes), None);
    }

    #[test]
    fn secrets_are_redacted_from_listings() {
        let p = json!({"llm_api_key_env": "K", "token": "t", "worker_mode": "mock"});
        let r = redacted(p.as_object().unwrap());
        assert_eq!(r["worker_mode"], "mock");
        assert_eq!(r["token"], "<redacted>");
        assert_eq!(r["llm_api_key_env"], "<redacted>");
    }
}
