//! Agent configs with version history: `save_agent_config`, `get_agent_config`,
//! `list_agent_configs`, `update_agent_config`, `clone_agent_config`, `revert_agent_config`,
//! `delete_agent_config` (documents in `relay.configs`). Every update is a new version; the
//! newest `relay.config_history` versions are kept; a revert is a new version with an old
//! version's data; a clone starts a new config at version 1 with the current data. A config
//! is its owner's: the owner and the tenant's masters read and change it.

use super::State;
use super::events::{Ctx, error_reply};
use super::resources::{self, CONFIGS, can_change, doc, mgmt, need_agent, required};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;

/// One version of a config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    pub data: Value,
    pub created_ms: u64,
    pub by: String,
}

/// A config and its kept versions (oldest first; the last is current).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub created_ms: u64,
    pub versions: VecDeque<Version>,
}

impl AgentConfig {
    fn current(&self) -> Option<&Version> {
        self.versions.back()
    }

    fn current_version(&self) -> u64 {
        self.current().map_or(0, |v| v.version)
    }

    /// Adds a version with `data`, dropping the oldest beyond `keep`.
    fn push(&mut self, data: Value, by: &str, now: u64, keep: usize) -> u64 {
        let version = self.current_version() + 1;
        self.versions.push_back(Version {
            version,
            data,
            created_ms: now,
            by: by.to_owned(),
        });
        while self.versions.len() > keep.max(1) {
            self.versions.pop_front();
        }
        version
    }

    fn summary(&self) -> Value {
        json!({"configId": self.id, "id": self.id, "name": self.name,
               "currentVersion": self.current_version(), "versionCount": self.versions.len(),
               "createdAt": self.created_ms, "owner": self.owner})
    }

    fn history(&self) -> Vec<Value> {
        self.versions
            .iter()
            .map(|v| {
                json!({"version": v.version, "data": v.data, "timestamp": v.created_ms,
                            "updatedBy": v.by})
            })
            .collect()
    }
}

fn find(st: &mut State, ctx: &Ctx, arg: &Value) -> Result<AgentConfig, Value> {
    let id = required(arg, &["configId", "id"])?;
    let Some(c) = st.tenant(&ctx.tenant).res.configs.get(&id) else {
        return Err(resources::not_found("config", &id));
    };
    if !can_change(ctx, &c.owner) {
        return Err(resources::denied("config", &id));
    }
    Ok(c.clone())
}

fn data_arg(st: &State, arg: &Value) -> Result<Value, Value> {
    let Some(data) = arg.get("data").filter(|d| !d.is_null()) else {
        return Err(error_reply(
            "INVALID_INPUT",
            "needs `data` (the configuration)",
        ));
    };
    resources::check_size(st, "the config", data)?;
    Ok(data.clone())
}

/// A config named `name` of the caller's already.
fn name_taken(st: &mut State, ctx: &Ctx, owner: &str, name: &str) -> Result<(), Value> {
    let t = st.tenant(&ctx.tenant);
    if t.res
        .configs
        .values()
        .any(|c| c.owner == owner && c.name == name)
    {
        return Err(error_reply(
            "ALREADY_EXISTS",
            &format!("a config named {name:?} exists already; update it instead"),
        ));
    }
    let n = t.res.configs.len();
    resources::check_count(st, "configs", n)
}

/// Makes a config at version 1 and records it.
fn create(st: &mut State, ctx: &mut Ctx, owner: String, name: String, data: Value) -> AgentConfig {
    let now = crate::clock::now_ms();
    let mut c = AgentConfig {
        id: super::auth::uuid_v4(),
        name,
        owner,
        created_ms: now,
        versions: VecDeque::new(),
    };
    c.push(data, &ctx.who(), now, st.cfg.resources.config_history);
    ctx.writes.push(doc(CONFIGS, &ctx.tenant, &c.id, &c));
    st.tenant(&ctx.tenant)
        .res
        .configs
        .insert(c.id.clone(), c.clone());
    c
}

/// The config's owner and the tenant's masters hear of its changes.
fn tell(st: &mut State, ctx: &mut Ctx, c: &AgentConfig, event: &str, mut data: Value) {
    data["by"] = json!(ctx.who());
    let mut keys = st.agent_sessions(&ctx.tenant, [c.owner.as_str()]);
    if !keys.contains(&ctx.key) {
        keys.push(ctx.key);
    }
    ctx.emit(keys, event, data.clone());
    mgmt(st, ctx, event, data);
}

pub fn save_agent_config(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let r = (|| {
        let me = need_agent(ctx)?;
        let name = required(arg, &["name"])?;
        let data = data_arg(st, arg)?;
        name_taken(st, ctx, &me, &name)?;
        Ok(create(st, ctx, me, name, data))
    })();
    match r {
        Ok(c) => {
            tell(st, ctx, &c, "config_saved", c.summary());
            json!({"success": true, "ok": true, "configId": c.id, "id": c.id, "version": 1,
                   "message": "Configuration saved successfully"})
        }
        Err(e) => e,
    }
}

pub fn get_agent_config(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let c = match find(st, ctx, arg) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (data, at) = c.current().map_or((Value::Null, c.created_ms), |v| {
        (v.data.clone(), v.created_ms)
    });
    json!({"success": true, "ok": true,
        "data": {"configId": c.id, "name": c.name, "data": data,
                 "currentVersion": c.current_version(), "createdAt": c.created_ms,
                 "owner": c.owner},
        "configId": c.id, "name": c.name, "owner": c.owner, "version": c.current_version(),
        "timestamp": at, "history": c.history()})
}

pub fn list_agent_configs(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let t = st.tenant(&ctx.tenant);
    let mut list: Vec<&AgentConfig> = t
        .res
        .configs
        .values()
        .filter(|c| can_change(ctx, &c.owner))
        .collect();
    list.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    let v: Vec<Value> = list.iter().map(|c| c.summary()).collect();
    json!({"success": true, "ok": true, "data": v, "configs": v})
}

/// Adds a version to config `id` (an update or a revert); the new version's number.
fn add_version(st: &mut State, ctx: &mut Ctx, id: &str, data: Value) -> Option<AgentConfig> {
    let keep = st.cfg.resources.config_history;
    let who = ctx.who();
    let t = st.tenant(&ctx.tenant);
    let c = t.res.configs.get_mut(id)?;
    c.push(data, &who, crate::clock::now_ms(), keep);
    let c = c.clone();
    ctx.writes.push(doc(CONFIGS, &ctx.tenant, &c.id, &c));
    Some(c)
}

pub fn update_agent_config(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let r = find(st, ctx, arg).and_then(|c| Ok((c, data_arg(st, arg)?)));
    let (c, data) = match r {
        Ok(x) => x,
        Err(e) => return e,
    };
    let Some(c) = add_version(st, ctx, &c.id, data) else {
        return resources::not_found("config", &c.id);
    };
    tell(st, ctx, &c, "config_updated", c.summary());
    json!({"success": true, "ok": true, "message": "Configuration updated successfully",
           "newVersion": c.current_version(), "version": c.current_version()})
}

pub fn revert_agent_config(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let c = match find(st, ctx, arg) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let Some(to) = ["toVersion", "version"]
        .iter()
        .find_map(|k| arg.get(*k).and_then(Value::as_u64))
    else {
        return error_reply("INVALID_INPUT", "revert_agent_config needs `toVersion`");
    };
    let Some(old) = c.versions.iter().find(|v| v.version == to) else {
        return error_reply(
            "NOT_FOUND",
            &format!(
                "config {} has no version {to} (kept: {})",
                c.id,
                c.versions
                    .iter()
                    .map(|v| v.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    };
    let Some(c) = add_version(st, ctx, &c.id, old.data.clone()) else {
        return resources::not_found("config", &c.id);
    };
    let mut note = c.summary();
    note["revertedTo"] = json!(to);
    tell(st, ctx, &c, "config_updated", note);
    json!({"success": true, "ok": true, "message": "Reverted successfully",
           "currentVersion": c.current_version(), "version": c.current_version(),
           "revertedTo": to})
}

pub fn clone_agent_config(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let r = (|| {
        let c = find(st, ctx, arg)?;
        let me = need_agent(ctx)?;
        let name = required(arg, &["newName", "name"])?;
        name_taken(st, ctx, &me, &name)?;
        let data = c.current().map_or(Value::Null, |v| v.data.clone());
        Ok((c.id, create(st, ctx, me, name, data)))
    })();
    match r {
        Ok((from, c)) => {
            let mut note = c.summary();
            note["clonedFrom"] = json!(from);
            tell(st, ctx, &c, "config_saved", note);
            json!({"success": true, "ok": true, "newConfigId": c.id, "configId": c.id,
                   "clonedFrom": from, "message": "Configuration cloned successfully"})
        }
        Err(e) => e,
    }
}

pub fn delete_agent_config(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let c = match find(st, ctx, arg) {
        Ok(c) => c,
        Err(e) => return e,
    };
    st.tenant(&ctx.tenant).res.configs.remove(&c.id);
    ctx.writes
        .push(resources::doc_delete(CONFIGS, &ctx.tenant, &c.id));
    tell(
        st,
        ctx,
        &c,
        "config_deleted",
        json!({"configId": c.id, "name": c.name}),
    );
    resources::message("Configuration deleted successfully")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_and_only_the_newest_are_kept() {
        let mut c = AgentConfig {
            id: "c".into(),
            name: "n".into(),
            owner: "o".into(),
            created_ms: 0,
            versions: VecDeque::new(),
        };
        for i in 0..5 {
            assert_eq!(c.push(json!(i), "o", i, 3), i + 1);
        }
        assert_eq!(c.current_version(), 5);
        let kept: Vec<u64> = c.versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(c.summary()["versionCount"], 3);
        assert_eq!(c.current().unwrap().data, json!(4));
    }
}
