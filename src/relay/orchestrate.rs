//! The orchestration events: `create_orchestration`, `start_orchestration`,
//! `report_task_result`, `get_orchestration`, `list_orchestrations`, `cancel_orchestration`;
//! and what carries out the state machine's actions ([`super::orchestration`]): a task goes
//! to its agent as the seed's `exec_task` and ClawNet's `orchestration_task` (now, or when the
//! agent connects), deadlines become relay timers, the end is announced to everyone the plan
//! concerns. Plans are documents in `relay.orchestrations`, saved after every change; after a
//! restart a running plan resumes: its deadlines are armed again, and its tasks go out again
//! to their agents as they connect (a task is at-least-once; `orchestrationId` and
//! `taskIndex` tell a repeat).

use super::auth::{Role, valid_name};
use super::events::{Ctx, error_reply};
use super::orchestration::{Action, Mode, Plan, PlanStatus, Refused, Task};
use super::resources::{self, ORCHESTRATIONS, doc, mgmt, need_agent, text};
use super::socket::event_text;
use super::{State, Timer};
use crate::store::StateStore;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn plan_id(arg: &Value) -> Result<String, Value> {
    resources::required(arg, &["orchestrationId", "orchId", "id"])
}

/// May the caller see the plan: a master, its owner, or an agent it concerns.
fn can_see(ctx: &Ctx, p: &Plan) -> bool {
    ctx.role == Role::Master
        || ctx
            .agent
            .as_ref()
            .is_some_and(|a| p.participants().contains(a))
}

fn find(st: &mut State, ctx: &Ctx, arg: &Value, change: bool) -> Result<Plan, Value> {
    let id = plan_id(arg)?;
    let Some(p) = st.tenant(&ctx.tenant).res.plans.get(&id) else {
        return Err(resources::not_found("orchestration", &id));
    };
    if !can_see(ctx, p) {
        return Err(resources::denied("orchestration", &id));
    }
    if change && !resources::can_change(ctx, &p.owner) {
        return Err(resources::not_owner("orchestration", &id));
    }
    Ok(p.clone())
}

/// Parses `create_orchestration`'s plan: seed names, with ClawNet's `target` and `parallel`.
fn parse_plan(arg: &Value, owner: String) -> Result<Plan, Value> {
    let bad = |m: &str| error_reply("INVALID_INPUT", m);
    let name = resources::required(arg, &["name"])?;
    let agents = match arg.get("agents") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= resources::MAX_TARGETS => a
            .iter()
            .map(|v| v.as_str().filter(|s| valid_name(s)).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("`agents` is a list of agent ids"))?,
        Some(_) => return Err(bad("`agents` is a list of at most 256 agent ids")),
    };
    let mode = match (
        text(arg, &["mode"]),
        arg.get("parallel").and_then(Value::as_bool),
    ) {
        (Some("sequential"), _) | (None, Some(false) | None) => Mode::Sequential,
        (Some("parallel"), _) | (None, Some(true)) => Mode::Parallel,
        _ => return Err(bad("`mode` is \"sequential\" or \"parallel\"")),
    };
    let Some(list) = arg.get("tasks").and_then(Value::as_array) else {
        return Err(bad("create_orchestration needs `tasks`: a list"));
    };
    let mut tasks = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let command = text(t, &["command", "cmd"])
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad(&format!("task {i} needs a `command`")))?;
        let target = match text(t, &["targetAgentId", "target", "agentId"]) {
            Some(a) if valid_name(a) => Some(a.to_owned()),
            Some(_) => return Err(bad(&format!("task {i}: invalid targetAgentId"))),
            None => None,
        };
        let description = text(t, &["description"]).unwrap_or("").to_owned();
        tasks.push(Task::new(description, command.to_owned(), target));
    }
    let p = Plan {
        id: super::auth::uuid_v4(),
        name,
        owner,
        agents,
        mode,
        status: PlanStatus::Pending,
        tasks,
        created_ms: crate::clock::now_ms(),
        started_ms: None,
        finished_ms: None,
    };
    p.check().map_err(|e| bad(&e))?;
    Ok(p)
}

/// The seed's shape of a plan.
pub fn plan_json(p: &Plan) -> Value {
    let tasks: Vec<Value> = p
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"taskIndex": i, "description": t.description, "command": t.command,
                   "targetAgentId": t.target, "status": t.status.as_str(), "result": t.result(),
                   "startedAt": t.started_ms, "completedAt": t.completed_ms,
                   "recipients": t.recipients, "reported": t.reports.keys().collect::<Vec<_>>()})
        })
        .collect();
    json!({"orchestrationId": p.id, "orchId": p.id, "name": p.name, "agents": p.agents,
           "tasks": tasks, "mode": p.mode, "status": p.status.as_str(),
           "createdAt": p.created_ms, "startedAt": p.started_ms,
           "completedAt": p.finished_ms, "owner": p.owner})
}

fn summary(p: &Plan) -> Value {
    json!({"orchestrationId": p.id, "orchId": p.id, "name": p.name,
           "status": p.status.as_str(), "mode": p.mode, "taskCount": p.tasks.len(),
           "completedCount": p.completed_count(), "createdAt": p.created_ms, "owner": p.owner})
}

pub fn create_orchestration(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    plan_create(st, ctx, arg).unwrap_or_else(|e| e)
}

fn plan_create(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Result<Value, Value> {
    let me = need_agent(ctx)?;
    resources::check_size(st, "the orchestration", arg)?;
    let p = parse_plan(arg, me)?;
    make_room(st, ctx)?;
    ctx.writes.push(doc(ORCHESTRATIONS, &ctx.tenant, &p.id, &p));
    let note = summary(&p);
    let who = p.participants();
    resources::emit_to(st, ctx, &who, "orchestration_created", note.clone());
    mgmt(st, ctx, "orchestration_created", note.clone());
    let reply = json!({"success": true, "ok": true, "orchestrationId": p.id, "orchId": p.id,
                       "id": p.id, "message": "Orchestration created successfully",
                       "data": note});
    st.tenant(&ctx.tenant).res.plans.insert(p.id.clone(), p);
    Ok(reply)
}

/// Room for one more plan: the oldest ended one goes when the tenant is at its bound.
fn make_room(st: &mut State, ctx: &mut Ctx) -> Result<(), Value> {
    let max = st.cfg.resources.max_resources;
    let t = st.tenant(&ctx.tenant);
    if t.res.plans.len() < max {
        return Ok(());
    }
    let oldest = t
        .res
        .plans
        .values()
        .filter(|p| p.status.is_final())
        .min_by_key(|p| p.created_ms)
        .map(|p| p.id.clone());
    let Some(id) = oldest else {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!("this tenant has {max} orchestrations under way (relay.max_resources)"),
        ));
    };
    t.res.plans.remove(&id);
    t.res.delivered.retain(|(p, _, _)| *p != id);
    ctx.writes
        .push(resources::doc_delete(ORCHESTRATIONS, &ctx.tenant, &id));
    Ok(())
}

fn refusal(e: &Refused) -> Value {
    let code = match e {
        Refused::AlreadyReported(..) => "ALREADY_EXISTS",
        Refused::NotRecipient(..) => "ACCESS_DENIED",
        Refused::NoTask(_) => "NOT_FOUND",
        _ => "INVALID_INPUT",
    };
    error_reply(code, &e.to_string())
}

pub fn start_orchestration(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let p = match find(st, ctx, arg, true) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let timeout = st.cfg.resources.task_timeout.as_millis() as u64;
    let now = crate::clock::now_ms();
    let t = st.tenant(&ctx.tenant);
    let Some(plan) = t.res.plans.get_mut(&p.id) else {
        return resources::not_found("orchestration", &p.id);
    };
    let actions = match plan.start(now, timeout) {
        Ok(a) => a,
        Err(e) => return refusal(&e),
    };
    let who = plan.participants();
    let note = summary(plan);
    resources::emit_to(st, ctx, &who, "orchestration_started", note.clone());
    mgmt(st, ctx, "orchestration_updated", note);
    let tenant = ctx.tenant.clone();
    st.carry_out(&tenant, &p.id, actions, &mut ctx.writes, &mut ctx.outs);
    resources::message("Orchestration started successfully")
}

/// A report's status: `completed` or `failed` (and ClawNet's synonyms).
fn report_ok(arg: &Value) -> Result<bool, Value> {
    let s = text(arg, &["status"])
        .unwrap_or("completed")
        .to_ascii_lowercase();
    match s.as_str() {
        "completed" | "complete" | "success" | "succeeded" | "done" | "ok" => Ok(true),
        "failed" | "failure" | "error" => Ok(false),
        _ => Err(error_reply(
            "INVALID_INPUT",
            "`status` is \"completed\" or \"failed\"",
        )),
    }
}

pub fn report_task_result(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    plan_report(st, ctx, arg).unwrap_or_else(|e| e)
}

fn plan_report(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Result<Value, Value> {
    let me = need_agent(ctx)?;
    let id = plan_id(arg)?;
    let index = arg
        .get("taskIndex")
        .and_then(Value::as_u64)
        .ok_or_else(|| error_reply("INVALID_INPUT", "report_task_result needs `taskIndex`"))?;
    let ok = report_ok(arg)?;
    let result = truncated(
        arg.get("result").or_else(|| arg.get("output")).cloned(),
        st.cfg.max_task_output,
    );
    let timeout = st.cfg.resources.task_timeout.as_millis() as u64;
    let now = crate::clock::now_ms();
    let t = st.tenant(&ctx.tenant);
    let Some(plan) = t.res.plans.get_mut(&id) else {
        return Err(resources::not_found("orchestration", &id));
    };
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    let actions = plan
        .report(&me, index, ok, result, now, timeout)
        .map_err(|e| refusal(&e))?;
    let status = plan.tasks[index].status.as_str();
    let tenant = ctx.tenant.clone();
    st.carry_out(&tenant, &id, actions, &mut ctx.writes, &mut ctx.outs);
    Ok(
        json!({"success": true, "ok": true, "message": "Task result recorded",
              "orchestrationId": id, "taskIndex": index, "taskStatus": status}),
    )
}

/// A result cut to `max` bytes of text.
fn truncated(v: Option<Value>, max: usize) -> Value {
    let v = v.unwrap_or(Value::Null);
    let text = match &v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() <= max {
        return v;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    json!(format!(
        "{}… [truncated: {} bytes in all]",
        &text[..cut],
        text.len()
    ))
}

pub fn get_orchestration(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    match find(st, ctx, arg, false) {
        Ok(p) => {
            let data = plan_json(&p);
            json!({"success": true, "ok": true, "data": data, "orchestration": data})
        }
        Err(e) => e,
    }
}

pub fn list_orchestrations(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let t = st.tenant(&ctx.tenant);
    let mut list: Vec<&Plan> = t.res.plans.values().filter(|p| can_see(ctx, p)).collect();
    list.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    let v: Vec<Value> = list.iter().map(|p| summary(p)).collect();
    json!({"success": true, "ok": true, "data": v, "orchestrations": v})
}

pub fn cancel_orchestration(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let p = match find(st, ctx, arg, true) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let t = st.tenant(&ctx.tenant);
    let Some(plan) = t.res.plans.get_mut(&p.id) else {
        return resources::not_found("orchestration", &p.id);
    };
    if let Err(e) = plan.cancel(crate::clock::now_ms()) {
        return refusal(&e);
    }
    let plan = plan.clone();
    t.res.delivered.retain(|(id, _, _)| *id != plan.id);
    ctx.writes
        .push(doc(ORCHESTRATIONS, &ctx.tenant, &plan.id, &plan));
    let note = json!({"orchestrationId": plan.id, "orchId": plan.id, "name": plan.name,
                      "status": "cancelled", "by": ctx.who()});
    resources::emit_to(
        st,
        ctx,
        &plan.participants(),
        "orchestration_cancelled",
        note,
    );
    mgmt(st, ctx, "orchestration_updated", summary(&plan));
    resources::message("Orchestration cancelled successfully")
}

impl State {
    /// Carries out a plan's actions: tasks to online agents, deadlines armed, the end
    /// announced; the plan's document goes with the writes.
    pub fn carry_out(
        &mut self,
        tenant: &str,
        id: &str,
        actions: Vec<Action>,
        writes: &mut Vec<crate::store::DocWrite>,
        outs: &mut Vec<(Vec<u64>, String)>,
    ) {
        let now_ms = crate::clock::now_ms();
        for a in actions {
            match a {
                Action::Send { index, agent } => {
                    self.send_plan_task(tenant, id, index, &agent, outs)
                }
                Action::Deadline { index, at_ms } => {
                    let at = Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms));
                    let _ = self.timers.add(
                        at,
                        Timer::Orchestration(tenant.to_owned(), id.to_owned(), index),
                    );
                }
                Action::TaskDone { .. } => {}
                Action::Finished => self.announce_end(tenant, id, outs),
            }
        }
        if let Some(p) = self.tenant(tenant).res.plans.get(id) {
            writes.push(doc(ORCHESTRATIONS, tenant, id, p));
        }
    }

    /// Sends task `index` of plan `id` to `agent` if it is online (else it gets it when it
    /// connects).
    fn send_plan_task(
        &mut self,
        tenant: &str,
        id: &str,
        index: usize,
        agent: &str,
        outs: &mut Vec<(Vec<u64>, String)>,
    ) {
        let t = self.tenant(tenant);
        let (Some(session), Some(p)) = (
            t.agents.get(agent).and_then(|a| a.session),
            t.res.plans.get(id),
        ) else {
            return;
        };
        let Some(task) = p.tasks.get(index) else {
            return;
        };
        let exec = json!({"orchestrationId": id, "orchId": id, "taskIndex": index,
                          "description": task.description, "command": task.command,
                          "agentId": agent, "name": p.name});
        let legacy = json!({"orchId": id, "orchestrationId": id, "taskIndex": index,
                            "task": {"description": task.description, "command": task.command,
                                     "targetAgentId": task.target}});
        outs.push((vec![session], event_text("exec_task", exec)));
        outs.push((vec![session], event_text("orchestration_task", legacy)));
        t.res
            .delivered
            .insert((id.to_owned(), index, agent.to_owned()));
        self.counters.orchestration_tasks_sent += 1;
    }

    fn announce_end(&mut self, tenant: &str, id: &str, outs: &mut Vec<(Vec<u64>, String)>) {
        let Some(p) = self.tenant(tenant).res.plans.get(id).cloned() else {
            return;
        };
        let results: Vec<Value> = p
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"taskIndex": i, "status": t.status.as_str(), "result": t.result(),
                                 "targetAgentId": t.target})
            })
            .collect();
        let note = json!({"orchId": id, "orchestrationId": id, "name": p.name,
                          "status": p.status.as_str(), "results": results});
        let keys = self.agent_sessions(tenant, p.participants().iter().map(String::as_str));
        outs.push((keys, event_text("orchestration_completed", note)));
        let masters = self.sessions_with_role(tenant, Role::Master);
        let update = json!({"type": "orchestration_updated", "data": summary(&p)});
        outs.push((masters, event_text("management_data_update", update)));
        self.tenant(tenant)
            .res
            .delivered
            .retain(|(p, _, _)| p != id);
    }

    /// A plan task's deadline came.
    pub fn plan_deadline(&mut self, tenant: &str, id: &str, index: usize) {
        let timeout = self.cfg.resources.task_timeout.as_millis() as u64;
        let now = crate::clock::now_ms();
        let Some(p) = self.tenant(tenant).res.plans.get_mut(id) else {
            return;
        };
        let actions = p.timeout(index, now, timeout);
        if actions.is_empty() {
            return;
        }
        let (mut writes, mut outs) = (Vec::new(), Vec::new());
        self.carry_out(tenant, id, actions, &mut writes, &mut outs);
        self.push_commit(writes, outs, None);
    }

    /// An agent connected: the running tasks it is owed and has not been sent in this run.
    pub fn deliver_plan_tasks(&mut self, tenant: &str, agent: &str) {
        let t = self.tenant(tenant);
        let owed: Vec<(String, usize)> = t
            .res
            .plans
            .values()
            .flat_map(|p| p.outstanding(agent).into_iter().map(|i| (p.id.clone(), i)))
            .filter(|(id, i)| {
                !t.res
                    .delivered
                    .contains(&(id.clone(), *i, agent.to_owned()))
            })
            .collect();
        if owed.is_empty() {
            return;
        }
        let mut outs = Vec::new();
        for (id, i) in owed {
            self.send_plan_task(tenant, &id, i, agent, &mut outs);
        }
        self.push_commit(Vec::new(), outs, None);
    }
}

/// Reads the plans back at start and arms the deadlines of the running ones (a deadline that
/// passed while the daemon was down fires at once).
pub fn load(st: &mut State, store: &StateStore) {
    let now_ms = crate::clock::now_ms();
    for (tenant, p) in resources::take::<Plan>(store, ORCHESTRATIONS) {
        for a in p.deadlines() {
            if let Action::Deadline { index, at_ms } = a {
                let at = Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms));
                let _ = st.timers.add(
                    at,
                    Timer::Orchestration(tenant.clone(), p.id.clone(), index),
                );
            }
        }
        st.tenant(&tenant).res.plans.insert(p.id.clone(), p);
    }
}
