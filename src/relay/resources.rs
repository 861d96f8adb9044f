//! What the resource events (shared memory, credentials, files, skills, configs,
//! orchestrations) share: a tenant's resources, who may read and change one, the arguments
//! every event takes (ids, target agents, the seed's names and ClawNet's aliases), the reply
//! and emit helpers, and reading the resources back from the store at start.
//!
//! Access, for every resource: its owner, the agents it is shared with, and the tenant's
//! masters may read it; only the owner and the tenant's masters may change, share, revoke or
//! delete it (`ACCESS_DENIED` for anyone else). Masters administer their tenant: the seed's
//! dashboard shares an agent's file with another agent. Ids are random UUIDs, and every
//! lookup goes through the caller's tenant, so an id of another tenant is simply not found.

use super::State;
use super::auth::{Role, valid_name};
use super::events::{Ctx, error_reply};
use super::files::FileMeta;
use super::memory::MemoryMeta;
use super::orchestration::Plan;
use super::tenant::{delete, put};
use super::{configs::AgentConfig, credentials::Credential, skills::Skill};
use crate::store::{DocWrite, StateStore};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};

pub const MEMORY: &str = "relay.memory";
pub const CREDENTIALS: &str = "relay.credentials";
pub const FILES: &str = "relay.files";
pub const SKILLS: &str = "relay.skills";
pub const CONFIGS: &str = "relay.configs";
pub const ORCHESTRATIONS: &str = "relay.orchestrations";

/// Agents one share or revoke may name at once.
pub const MAX_TARGETS: usize = 256;

/// One tenant's resources (in memory; every change is also a document in the store).
#[derive(Default)]
pub struct Resources {
    /// Owner and times of the shared keys set through the relay (the values are in the
    /// kernel's state store).
    pub memory: HashMap<String, MemoryMeta>,
    pub credentials: HashMap<String, Credential>,
    pub files: HashMap<String, FileMeta>,
    /// Bytes of the tenant's stored files.
    pub file_bytes: u64,
    /// Bytes of uploads being written (counted against the quota until they are done).
    pub reserved_bytes: u64,
    pub skills: HashMap<String, Skill>,
    pub configs: HashMap<String, AgentConfig>,
    pub plans: HashMap<String, Plan>,
    /// (plan, task index, agent) sent in this run (memory only: after a restart, running
    /// tasks go out again as their agents connect).
    pub delivered: HashSet<(String, usize, String)>,
}

/// Who may see a resource: its owner and the agents it is shared with.
pub trait Shared {
    fn owner(&self) -> &str;
    fn shared_with(&self) -> &BTreeSet<String>;
    fn shared_with_mut(&mut self) -> &mut BTreeSet<String>;
}

/// Implements [`Shared`] for resource types with `owner: String` and
/// `shared_with: BTreeSet<String>` fields.
macro_rules! shared_by_fields {
    ($($t:ty),+) => {$(
        impl $crate::relay::resources::Shared for $t {
            fn owner(&self) -> &str {
                &self.owner
            }
            fn shared_with(&self) -> &std::collections::BTreeSet<String> {
                &self.shared_with
            }
            fn shared_with_mut(&mut self) -> &mut std::collections::BTreeSet<String> {
                &mut self.shared_with
            }
        }
    )+};
}
pub(crate) use shared_by_fields;

/// Shares `r` with `agents` (or revokes their access): the agents whose access changed (the
/// owner always has it and is never listed).
pub fn apply_access(r: &mut dyn Shared, agents: &[String], share: bool) -> Vec<String> {
    let owner = r.owner().to_owned();
    let set = r.shared_with_mut();
    agents
        .iter()
        .filter(|a| **a != owner)
        .filter(|a| {
            if share {
                set.insert((*a).clone())
            } else {
                set.remove(*a)
            }
        })
        .cloned()
        .collect()
}

/// May the caller read `r`: its owner, an agent it is shared with, or a master.
pub fn can_read(ctx: &Ctx, r: &dyn Shared) -> bool {
    ctx.role == Role::Master
        || ctx
            .agent
            .as_deref()
            .is_some_and(|a| a == r.owner() || r.shared_with().contains(a))
}

/// May the caller change, share, revoke or delete `r`: its owner or a master.
pub fn can_change(ctx: &Ctx, owner: &str) -> bool {
    ctx.role == Role::Master || ctx.agent.as_deref() == Some(owner)
}

/// The refusal for a caller who may not read a resource.
pub fn denied(what: &str, id: &str) -> Value {
    error_reply(
        "ACCESS_DENIED",
        &format!("access denied: {what} {id} is neither yours nor shared with you"),
    )
}

/// The refusal for a caller who may read but not change a resource.
pub fn not_owner(what: &str, id: &str) -> Value {
    error_reply(
        "ACCESS_DENIED",
        &format!("access denied: only the owner of {what} {id} or a master may change it"),
    )
}

pub fn not_found(what: &str, id: &str) -> Value {
    error_reply("NOT_FOUND", &format!("{what} {id} not found"))
}

/// A success reply with a message.
pub fn message(text: &str) -> Value {
    json!({"success": true, "ok": true, "message": text})
}

/// The agent id the caller acts as; resources are owned by agents, so an observer socket
/// (no agent id) cannot make one.
pub fn need_agent(ctx: &Ctx) -> Result<String, Value> {
    ctx.agent.clone().ok_or_else(|| {
        error_reply(
            "INVALID_INPUT",
            &format!("{} needs a socket with an agent id", ctx.event),
        )
    })
}

/// The first of `names` that is a string.
pub fn text<'a>(arg: &'a Value, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| arg.get(*n).and_then(Value::as_str))
}

/// A required id or name field (the first of `names` present), 1-128 characters.
pub fn required(arg: &Value, names: &[&str]) -> Result<String, Value> {
    match text(arg, names) {
        Some(s) if valid_name(s) => Ok(s.to_owned()),
        Some(_) => Err(error_reply(
            "INVALID_INPUT",
            &format!("`{}` must be 1-128 characters", names[0]),
        )),
        None => Err(error_reply(
            "INVALID_INPUT",
            &format!("needs `{}`", names.join("` or `")),
        )),
    }
}

/// The agents a share or revoke names: the seed's `targetAgentId`, or ClawNet's `agents` (one
/// id or a list).
pub fn targets(arg: &Value) -> Result<Vec<String>, Value> {
    let list: Vec<&Value> = match (arg.get("targetAgentId"), arg.get("agents")) {
        (Some(t), _) => vec![t],
        (None, Some(Value::Array(a))) => a.iter().collect(),
        (None, Some(t)) => vec![t],
        (None, None) => {
            return Err(error_reply(
                "INVALID_INPUT",
                "needs `targetAgentId` (or `agents`: an id or a list)",
            ));
        }
    };
    agent_list(&list)
}

/// ClawNet's `shareWith` at creation: an id or a list; absent means nobody.
pub fn share_with(arg: &Value) -> Result<BTreeSet<String>, Value> {
    match arg.get("shareWith") {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::Array(a)) => Ok(agent_list(&a.iter().collect::<Vec<_>>())?
            .into_iter()
            .collect()),
        Some(t) => Ok(agent_list(&[t])?.into_iter().collect()),
    }
}

fn agent_list(list: &[&Value]) -> Result<Vec<String>, Value> {
    if list.is_empty() || list.len() > MAX_TARGETS {
        return Err(error_reply(
            "INVALID_INPUT",
            &format!("name 1 to {MAX_TARGETS} agents"),
        ));
    }
    list.iter()
        .map(|v| match v.as_str() {
            Some(s) if valid_name(s) => Ok(s.to_owned()),
            _ => Err(error_reply(
                "INVALID_INPUT",
                "an agent id is a string of 1-128 characters",
            )),
        })
        .collect()
}

/// The JSON size of a resource's content, refused over `relay.max_resource_bytes`.
pub fn check_size(st: &State, what: &str, v: &Value) -> Result<(), Value> {
    let max = st.cfg.resources.max_resource_bytes;
    let len = crate::kernel::events::json_len(v);
    if len > max {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!("{what} is {len} bytes of JSON; at most {max} (relay.max_resource_bytes)"),
        ));
    }
    Ok(())
}

/// Refuses a new resource when the tenant has `relay.max_resources` of that kind.
pub fn check_count(st: &State, what: &str, count: usize) -> Result<(), Value> {
    let max = st.cfg.resources.max_resources;
    if count >= max {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!("this tenant has {max} {what} already (relay.max_resources)"),
        ));
    }
    Ok(())
}

impl State {
    /// Live sessions of the given agents of the caller's tenant.
    pub fn agent_sessions<'a>(
        &mut self,
        tenant: &str,
        agents: impl IntoIterator<Item = &'a str>,
    ) -> Vec<u64> {
        let t = self.tenant(tenant);
        let mut keys: Vec<u64> = agents
            .into_iter()
            .filter_map(|a| t.agents.get(a)?.session)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// Sends `event` to the owner of a resource, the agents it is shared with, and the caller.
pub fn emit_to_sharers(st: &mut State, ctx: &mut Ctx, r: &dyn Shared, event: &str, data: Value) {
    let agents = std::iter::once(r.owner()).chain(r.shared_with().iter().map(String::as_str));
    let mut keys = st.agent_sessions(&ctx.tenant, agents);
    if !keys.contains(&ctx.key) {
        keys.push(ctx.key);
    }
    ctx.emit(keys, event, data);
}

/// Sends `event` to the given agents (those online).
pub fn emit_to(st: &mut State, ctx: &mut Ctx, agents: &[String], event: &str, data: Value) {
    let keys = st.agent_sessions(&ctx.tenant, agents.iter().map(String::as_str));
    ctx.emit(keys, event, data);
}

/// `management_data_update {type, data}` to the tenant's masters (the seed's dashboard feed).
pub fn mgmt(st: &mut State, ctx: &mut Ctx, kind: &str, data: Value) {
    let masters = st.sessions_with_role(&ctx.tenant, Role::Master);
    ctx.emit(
        masters,
        "management_data_update",
        json!({"type": kind, "data": data}),
    );
}

/// The document of one resource of `tenant` in `collection`.
pub fn doc<T: Serialize>(collection: &str, tenant: &str, id: &str, r: &T) -> DocWrite {
    let mut body = serde_json::to_value(r).unwrap_or(Value::Null);
    body["tenant"] = json!(tenant);
    put(collection, doc_id(tenant, id), &body)
}

pub fn doc_delete(collection: &str, tenant: &str, id: &str) -> DocWrite {
    delete(collection, doc_id(tenant, id))
}

fn doc_id(tenant: &str, id: &str) -> String {
    format!("{tenant}\u{1f}{id}")
}

/// The documents of `collection` at start: (tenant, record), unreadable ones skipped (and
/// logged: a newer build's record, or a damaged one, must not stop the relay).
pub fn take<T: DeserializeOwned>(store: &StateStore, collection: &str) -> Vec<(String, T)> {
    let mut out = Vec::new();
    for (id, body) in store.take_docs(collection) {
        let parsed = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
            let tenant = v.get("tenant")?.as_str()?.to_owned();
            Some((tenant, serde_json::from_value::<T>(v).ok()?))
        });
        match parsed {
            Some(p) => out.push(p),
            None => log::warn!("relay: skipped an unreadable {collection} document {id:?}"),
        }
    }
    out
}

/// Reads every tenant's resources back at start.
pub fn load(st: &mut State, store: &StateStore) {
    for (t, m) in take::<MemoryMeta>(store, MEMORY) {
        st.tenant(&t).res.memory.insert(m.key.clone(), m);
    }
    for (t, c) in take::<Credential>(store, CREDENTIALS) {
        st.tenant(&t).res.credentials.insert(c.id.clone(), c);
    }
    for (t, f) in take::<FileMeta>(store, FILES) {
        let r = &mut st.tenant(&t).res;
        r.file_bytes += f.size;
        r.files.insert(f.id.clone(), f);
    }
    for (t, s) in take::<Skill>(store, SKILLS) {
        st.tenant(&t).res.skills.insert(s.id.clone(), s);
    }
    for (t, c) in take::<AgentConfig>(store, CONFIGS) {
        st.tenant(&t).res.configs.insert(c.id.clone(), c);
    }
    super::orchestrate::load(st, store);
    let (mut mem, mut creds, mut files, mut skills, mut configs, mut plans) = (0, 0, 0, 0, 0, 0);
    for t in st.tenants.values() {
        mem += t.res.memory.len();
        creds += t.res.credentials.len();
        files += t.res.files.len();
        skills += t.res.skills.len();
        configs += t.res.configs.len();
        plans += t.res.plans.len();
    }
    if mem + creds + files + skills + configs + plans > 0 {
        log::info!(
            "relay: loaded {mem} shared keys, {creds} credentials, {files} files, {skills} \
             skills, {configs} configs, {plans} orchestrations"
        );
    }
}
