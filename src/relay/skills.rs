//! Skills: `register_skill`, `get_skill`, `list_skills`, `update_skill_experience`,
//! `share_skill`, `revoke_skill_access`, `delete_skill` (documents in `relay.skills`). A skill
//! is a name, a description, optional data (ClawNet's `data`) and an experience counter that
//! its readers increase as they use it (never below 0).

use super::State;
use super::events::{Ctx, error_reply};
use super::resources::{
    self, SKILLS, can_change, can_read, doc, emit_to, emit_to_sharers, mgmt, need_agent, required,
    text,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// One skill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skill {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub data: Value,
    pub owner: String,
    #[serde(default)]
    pub shared_with: BTreeSet<String>,
    pub experience: u64,
    /// Bumped on every change.
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

super::resources::shared_by_fields!(Skill);

impl Skill {
    pub fn to_json(&self) -> Value {
        json!({"skillId": self.id, "id": self.id, "name": self.name,
               "description": self.description, "data": self.data,
               "experience": self.experience, "version": self.version,
               "createdAt": self.created_ms, "updatedAt": self.updated_ms,
               "owner": self.owner, "sharedWith": self.shared_with})
    }
}

fn find(st: &mut State, ctx: &Ctx, arg: &Value, change: bool) -> Result<Skill, Value> {
    let id = required(arg, &["skillId", "id"])?;
    let Some(s) = st.tenant(&ctx.tenant).res.skills.get(&id) else {
        return Err(resources::not_found("skill", &id));
    };
    if !can_read(ctx, s) {
        return Err(resources::denied("skill", &id));
    }
    if change && !can_change(ctx, &s.owner) {
        return Err(resources::not_owner("skill", &id));
    }
    Ok(s.clone())
}

/// An integer field, or `default` when absent.
fn integer(arg: &Value, names: &[&str], default: i64) -> Result<i64, Value> {
    match names.iter().find_map(|n| arg.get(*n)) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| {
            error_reply(
                "INVALID_INPUT",
                &format!("`{}` must be an integer", names[0]),
            )
        }),
    }
}

pub fn register_skill(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    plan_register(st, ctx, arg).unwrap_or_else(|e| e)
}

fn plan_register(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Result<Value, Value> {
    let me = need_agent(ctx)?;
    let name = required(arg, &["name"])?;
    let description = text(arg, &["description"]).unwrap_or("").to_owned();
    let data = arg.get("data").cloned().unwrap_or(Value::Null);
    resources::check_size(st, "the skill", &json!([description, data]))?;
    let experience = integer(arg, &["experience"], 0)?.max(0) as u64;
    let share = resources::share_with(arg)?;
    let t = st.tenant(&ctx.tenant);
    if t.res
        .skills
        .values()
        .any(|s| s.owner == me && s.name == name)
    {
        return Err(error_reply(
            "ALREADY_EXISTS",
            &format!("you have a skill named {name:?} already"),
        ));
    }
    let n = t.res.skills.len();
    resources::check_count(st, "skills", n)?;
    let now = crate::clock::now_ms();
    let s = Skill {
        id: super::auth::uuid_v4(),
        name,
        description,
        data,
        shared_with: share.into_iter().filter(|a| *a != me).collect(),
        owner: me,
        experience,
        version: 1,
        created_ms: now,
        updated_ms: now,
    };
    ctx.writes.push(doc(SKILLS, &ctx.tenant, &s.id, &s));
    emit_to_sharers(st, ctx, &s, "skill_registered", s.to_json());
    mgmt(st, ctx, "skill_registered", s.to_json());
    let reply = json!({"success": true, "ok": true, "skillId": s.id, "id": s.id,
                       "message": "Skill registered successfully", "data": s.to_json()});
    st.tenant(&ctx.tenant).res.skills.insert(s.id.clone(), s);
    Ok(reply)
}

pub fn get_skill(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    match find(st, ctx, arg, false) {
        Ok(s) => json!({"success": true, "ok": true, "data": s.to_json(), "skillId": s.id,
                        "name": s.name, "owner": s.owner, "experience": s.experience,
                        "timestamp": s.updated_ms, "version": s.version}),
        Err(e) => e,
    }
}

pub fn list_skills(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let t = st.tenant(&ctx.tenant);
    let mut list: Vec<&Skill> = t
        .res
        .skills
        .values()
        .filter(|s| can_read(ctx, *s))
        .collect();
    list.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    let v: Vec<Value> = list.iter().map(|s| s.to_json()).collect();
    json!({"success": true, "ok": true, "data": v, "skills": v})
}

/// `update_skill_experience {skillId, increment?}`: whoever may read the skill reports using
/// it; the counter never goes below 0.
pub fn update_skill_experience(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let s = match find(st, ctx, arg, false) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let by = match integer(arg, &["increment", "experience"], 1) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let t = st.tenant(&ctx.tenant);
    let Some(s) = t.res.skills.get_mut(&s.id) else {
        return resources::not_found("skill", &s.id);
    };
    s.experience = s.experience.saturating_add_signed(by);
    s.version += 1;
    s.updated_ms = crate::clock::now_ms();
    let s = s.clone();
    ctx.writes.push(doc(SKILLS, &ctx.tenant, &s.id, &s));
    json!({"success": true, "ok": true, "message": "Experience updated successfully",
           "newExperience": s.experience, "skillId": s.id})
}

pub fn share_skill(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    skill_access(st, ctx, arg, true).unwrap_or_else(|e| e)
}

pub fn revoke_skill_access(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    skill_access(st, ctx, arg, false).unwrap_or_else(|e| e)
}

fn skill_access(st: &mut State, ctx: &mut Ctx, arg: &Value, share: bool) -> Result<Value, Value> {
    let s = find(st, ctx, arg, true)?;
    let agents = resources::targets(arg)?;
    let t = st.tenant(&ctx.tenant);
    let Some(s) = t.res.skills.get_mut(&s.id) else {
        return Err(resources::not_found("skill", &s.id));
    };
    let changed = resources::apply_access(s, &agents, share);
    s.version += 1;
    let s = s.clone();
    ctx.writes.push(doc(SKILLS, &ctx.tenant, &s.id, &s));
    let (event, msg) = if share {
        ("skill_shared", "Skill shared successfully")
    } else {
        ("skill_access_revoked", "Access revoked successfully")
    };
    let mut note = s.to_json();
    note["by"] = json!(ctx.who());
    emit_to(st, ctx, &changed, event, note);
    Ok(
        json!({"success": true, "ok": true, "message": msg, "skillId": s.id,
              "data": {"skillId": s.id, "agents": changed, "sharedWith": s.shared_with}}),
    )
}

pub fn delete_skill(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let s = match find(st, ctx, arg, true) {
        Ok(s) => s,
        Err(e) => return e,
    };
    st.tenant(&ctx.tenant).res.skills.remove(&s.id);
    ctx.writes
        .push(resources::doc_delete(SKILLS, &ctx.tenant, &s.id));
    let note = json!({"skillId": s.id, "name": s.name, "owner": s.owner, "by": ctx.who()});
    emit_to_sharers(st, ctx, &s, "skill_deleted", note);
    resources::message("Skill deleted successfully")
}
