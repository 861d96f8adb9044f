//! One tenant's state: its agents (presence), rooms, tasks with their queued commands, and
//! chat history; and how each is kept in the store (`relay.agents`, `relay.tasks`,
//! `relay.chat`, `relay.tokens`, `relay.revoked`: JSON documents, one per record).
//!
//! Nothing here crosses a tenant: every list, room and broadcast is found through the tenant
//! the socket was admitted to. Everything is bounded: agents (`relay.max_agents`, offline ones
//! are forgotten oldest first), tasks (`relay.max_tasks`, finished ones dropped oldest first),
//! chat (`relay.max_chat`, oldest dropped), rooms per agent.

use super::State;
use super::auth::{Role, TokenRecord};
use crate::store::{DocRecord, DocWrite, StateStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, VecDeque};

pub const AGENTS: &str = "relay.agents";
pub const TASKS: &str = "relay.tasks";
pub const CHAT: &str = "relay.chat";
pub const TOKENS: &str = "relay.tokens";
pub const REVOKED: &str = "relay.revoked";

/// Task statuses whose command is still under way (never dropped to make room).
pub const OPEN_STATUSES: [&str; 4] = ["QUEUED", "SENT", "AWAITING_APPROVAL", "ACKED"];

/// An agent of the tenant, online or not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub role: Role,
    #[serde(default)]
    pub specs: Value,
    #[serde(default)]
    pub capabilities: Value,
    pub last_seen: u64,
    pub verified: bool,
    /// The live session speaking for the agent (presence follows sockets).
    #[serde(skip)]
    pub session: Option<u64>,
    #[serde(skip)]
    pub rooms: BTreeSet<String>,
}

impl Agent {
    pub fn online(&self) -> bool {
        self.session.is_some()
    }

    /// The fleet entry.
    pub fn fleet_entry(&self) -> Value {
        json!({
            "id": self.id, "role": self.role.as_str(),
            "status": if self.online() { "online" } else { "offline" },
            "specs": self.specs, "last_seen": self.last_seen, "verified": self.verified,
        })
    }
}

/// A command dispatched to an agent, and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub from: String,
    pub to: String,
    pub cmd: String,
    /// `QUEUED`, `SENT`, `ACKED`, `UNACKED`, `AWAITING_APPROVAL`, `REJECTED`, or the status a
    /// `task_result` reported (upper case).
    pub status: String,
    pub trace_id: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub reason: Option<String>,
    /// The dispatcher was a master (its results are mirrored to masters as chat).
    #[serde(default)]
    pub by_master: bool,
}

impl Task {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "from": self.from, "to": self.to, "cmd": self.cmd,
            "status": self.status, "trace_id": self.trace_id, "created_at": self.created_ms,
            "updated_at": self.updated_ms, "retries": self.retries, "output": self.output,
            "reason": self.reason,
        })
    }

    pub fn is_open(&self) -> bool {
        OPEN_STATUSES.contains(&self.status.as_str())
    }
}

/// One chat message as kept and sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMsg {
    pub seq: u64,
    pub from: String,
    pub to: String,
    pub msg: String,
    pub ts: u64,
    #[serde(default, rename = "localId")]
    pub local_id: Option<String>,
}

impl ChatMsg {
    pub fn to_json(&self) -> Value {
        json!({"from": self.from, "to": self.to, "msg": self.msg, "message": self.msg,
               "ts": self.ts, "localId": self.local_id})
    }
}

/// One tenant.
#[derive(Default)]
pub struct Tenant {
    pub name: String,
    pub agents: HashMap<String, Agent>,
    /// Sessions with a socket admitted to this tenant (agents and observers).
    pub members: BTreeSet<u64>,
    /// Room name -> agent ids in it (live sockets only).
    pub rooms: HashMap<String, BTreeSet<String>>,
    pub tasks: HashMap<String, Task>,
    /// Task ids, oldest first.
    pub task_order: VecDeque<String>,
    pub chat: VecDeque<ChatMsg>,
    pub chat_seq: u64,
    /// A fleet update is scheduled.
    pub fleet_pending: bool,
    /// Shared keys' records, credentials, files, skills, configs, orchestrations.
    pub res: super::resources::Resources,
}

impl Tenant {
    pub fn new(name: &str) -> Tenant {
        Tenant {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// The fleet as ClawNet sends it: every agent, online first, then by id.
    pub fn fleet(&self) -> Value {
        let mut agents: Vec<&Agent> = self.agents.values().collect();
        agents.sort_by(|a, b| b.online().cmp(&a.online()).then(a.id.cmp(&b.id)));
        Value::Array(agents.iter().map(|a| a.fleet_entry()).collect())
    }

    /// The most recent tasks (newest last), for `task_update`.
    pub fn recent_tasks(&self, n: usize) -> Value {
        let skip = self.task_order.len().saturating_sub(n);
        Value::Array(
            self.task_order
                .iter()
                .skip(skip)
                .filter_map(|id| self.tasks.get(id))
                .map(Task::to_json)
                .collect(),
        )
    }

    pub fn doc_id(&self, id: &str) -> String {
        format!("{}\u{1f}{id}", self.name)
    }

    pub fn task_doc(&self, t: &Task) -> DocWrite {
        let mut body = serde_json::to_value(t).unwrap_or(Value::Null);
        body["tenant"] = json!(self.name);
        put(TASKS, self.doc_id(&t.id), &body)
    }

    pub fn chat_doc(&self, m: &ChatMsg) -> DocWrite {
        let mut body = serde_json::to_value(m).unwrap_or(Value::Null);
        body["tenant"] = json!(self.name);
        put(CHAT, self.doc_id(&format!("{:020}", m.seq)), &body)
    }

    /// Adds a task, dropping the oldest finished ones beyond `max`; `false` (nothing added)
    /// when every kept task is still open (the caller refuses the dispatch).
    pub fn add_task(&mut self, t: Task, max: usize, writes: &mut Vec<DocWrite>) -> bool {
        while self.tasks.len() >= max {
            let Some(pos) = self
                .task_order
                .iter()
                .position(|id| self.tasks.get(id).is_none_or(|t| !t.is_open()))
            else {
                return false;
            };
            if let Some(id) = self.task_order.remove(pos) {
                self.tasks.remove(&id);
                writes.push(delete(TASKS, self.doc_id(&id)));
            }
        }
        writes.push(self.task_doc(&t));
        self.task_order.push_back(t.id.clone());
        self.tasks.insert(t.id.clone(), t);
        true
    }

    /// Adds a chat message, dropping the oldest beyond `max`.
    pub fn add_chat(&mut self, m: ChatMsg, max: usize, writes: &mut Vec<DocWrite>) {
        while self.chat.len() >= max {
            if let Some(old) = self.chat.pop_front() {
                writes.push(delete(CHAT, self.doc_id(&format!("{:020}", old.seq))));
            }
        }
        writes.push(self.chat_doc(&m));
        self.chat.push_back(m);
    }

    /// Makes room for one more agent by forgetting the offline one seen longest ago.
    pub fn make_room_for_agent(&mut self, max: usize, writes: &mut Vec<DocWrite>) -> bool {
        while self.agents.len() >= max {
            let Some(oldest) = self
                .agents
                .values()
                .filter(|a| !a.online())
                .min_by_key(|a| a.last_seen)
                .map(|a| a.id.clone())
            else {
                return false;
            };
            self.agents.remove(&oldest);
            writes.push(delete(AGENTS, self.doc_id(&oldest)));
        }
        true
    }
}

/// The document of agent `a` of tenant `tenant`.
pub fn agent_doc(tenant: &str, a: &Agent) -> DocWrite {
    let mut body = serde_json::to_value(a).unwrap_or(Value::Null);
    body["tenant"] = json!(tenant);
    put(AGENTS, format!("{tenant}\u{1f}{}", a.id), &body)
}

impl State {
    /// Sessions of tenant `tenant` whose socket has `role`.
    pub fn sessions_with_role(&self, tenant: &str, role: Role) -> Vec<u64> {
        let Some(t) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        t.members
            .iter()
            .copied()
            .filter(|k| {
                self.sessions
                    .get(k)
                    .and_then(|s| s.socket.as_ref())
                    .is_some_and(|s| s.id.role == role)
            })
            .collect()
    }
}

pub fn put(collection: &str, id: String, body: &Value) -> DocWrite {
    DocWrite::Put(DocRecord {
        collection: collection.to_owned(),
        id,
        body: body.to_string(),
    })
}

pub fn delete(collection: &str, id: String) -> DocWrite {
    DocWrite::Delete {
        collection: collection.to_owned(),
        id,
    }
}

/// Reads the relay's documents back at start: tokens, revocations, agents (all offline),
/// tasks (open ones resume: queued commands wait for their agent, sent ones are sent again
/// when it connects) and chat history, each trimmed to its bound.
pub fn load(st: &mut State, store: &StateStore) {
    load_auth(st, store);
    for (_, body) in store.take_docs(AGENTS) {
        if let Some((t, v)) = tenant_of(&body)
            && let Ok(a) = serde_json::from_value::<Agent>(v)
        {
            st.tenant(&t).agents.insert(a.id.clone(), a);
        }
    }
    load_tasks(st, store);
    load_chat(st, store);
    super::resources::load(st, store);
    let (agents, tasks, chats) = st.tenants.values().fold((0, 0, 0), |a, t| {
        (
            a.0 + t.agents.len(),
            a.1 + t.tasks.len(),
            a.2 + t.chat.len(),
        )
    });
    if agents + tasks + chats + st.auth.tokens.len() > 0 {
        log::info!(
            "relay: loaded {} tokens, {agents} agents, {tasks} tasks, {chats} chat messages",
            st.auth.tokens.len()
        );
    }
}

/// A document's tenant and body.
fn tenant_of(body: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some((v.get("tenant")?.as_str()?.to_owned(), v))
}

fn load_auth(st: &mut State, store: &StateStore) {
    for (_, body) in store.take_docs(TOKENS) {
        if let Ok(t) = serde_json::from_str::<TokenRecord>(&body) {
            st.auth.tokens.insert(t.id.clone(), t);
        }
    }
    for (jti, body) in store.take_docs(REVOKED) {
        let exp = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["exp"].as_u64());
        if let Some(exp) = exp {
            st.auth.revoked.insert(jti, exp);
        }
    }
}

/// Tasks in the order they were made. A command that was sent but not acknowledged before
/// the restart may not have reached its agent: it is queued again, and sent when the agent
/// connects (a command is at-least-once; its id lets the agent tell a repeat).
fn load_tasks(st: &mut State, store: &StateStore) {
    let mut tasks: Vec<(String, Task)> = store
        .take_docs(TASKS)
        .into_iter()
        .filter_map(|(_, body)| {
            let (t, v) = tenant_of(&body)?;
            Some((t, serde_json::from_value::<Task>(v).ok()?))
        })
        .collect();
    tasks.sort_by_key(|(_, t)| t.created_ms);
    for (tenant, mut task) in tasks {
        if task.status == "SENT" {
            task.status = "QUEUED".into();
        }
        let tn = st.tenant(&tenant);
        tn.task_order.push_back(task.id.clone());
        tn.tasks.insert(task.id.clone(), task);
    }
}

fn load_chat(st: &mut State, store: &StateStore) {
    let mut chat: Vec<(String, ChatMsg)> = store
        .take_docs(CHAT)
        .into_iter()
        .filter_map(|(_, body)| {
            let (t, v) = tenant_of(&body)?;
            Some((t, serde_json::from_value::<ChatMsg>(v).ok()?))
        })
        .collect();
    chat.sort_by_key(|(_, m)| m.seq);
    for (tenant, m) in chat {
        let tn = st.tenant(&tenant);
        tn.chat_seq = tn.chat_seq.max(m.seq);
        tn.chat.push_back(m);
    }
}
