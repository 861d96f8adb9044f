//! The event dispatch table and the core events: presence (`agent_hello`, `report`,
//! `latency_ping`, `agent_connect`, `agent_disconnect`), tasks (`dispatch`, `command_ack`,
//! `task_result`, `approve_task`), chat, rooms, and the optional shell relay.
//!
//! A handler gets the state, the calling socket's [`Ctx`] (tenant, agent, role) and the
//! event's first argument, and returns the acknowledgement value (sent only when the client
//! asked for one). What it changes durably goes into `ctx.writes`, what it sends into
//! `ctx.outs`; both are carried out together after the store commits, so an ack or a
//! broadcast never announces a change a crash could take back. To add events (the resource
//! events of the next issue), add rows to [`EVENTS`].

use super::auth::{Role, uuid_v4, valid_name};
use super::socket::{ack_text, event_text};
use super::tenant::{ChatMsg, Task};
use super::{State, configs, credentials, files, memory, orchestrate, skills};
use crate::proto::socketio::Message;
use crate::store::DocWrite;
use serde_json::{Value, json};
use std::time::Instant;

/// The calling socket and what its event produces.
pub struct Ctx {
    /// The event's name.
    pub event: String,
    pub key: u64,
    pub tenant: String,
    /// The agent the socket speaks for (`None`: an observer such as a dashboard).
    pub agent: Option<String>,
    pub role: Role,
    pub verified: bool,
    /// Binary attachments of the event (placeholders in the arguments name them).
    pub attachments: Vec<Vec<u8>>,
    /// The ack id the client asked for, if any.
    pub ack: Option<u64>,
    /// The handler answers later (after a write to disk or to the state store): no ack now.
    pub deferred: bool,
    /// A large text field moved out of the arguments instead of copied ([`LARGE_FIELDS`]).
    pub large: Option<String>,
    pub writes: Vec<DocWrite>,
    pub outs: Vec<(Vec<u64>, String)>,
    /// I/O jobs queued once the writes are committed.
    pub after: Vec<super::io::Job>,
}

/// Events whose argument carries a field that may be megabytes of text, moved into
/// [`Ctx::large`]: `upload_file`'s base64 `data`.
pub const LARGE_FIELDS: &[(&str, &str)] = &[("upload_file", "data")];

impl Ctx {
    /// A context for work that finishes later, off the event (an upload written on the I/O
    /// thread): output for the session `key` of `agent` in `tenant`.
    pub fn detached(tenant: &str, key: u64, ack: Option<u64>, agent: Option<String>) -> Ctx {
        Ctx {
            event: String::new(),
            key,
            tenant: tenant.to_owned(),
            agent,
            role: Role::Worker,
            verified: false,
            attachments: Vec::new(),
            ack,
            deferred: false,
            large: None,
            writes: Vec::new(),
            outs: Vec::new(),
            after: Vec::new(),
        }
    }

    /// The name the socket acts under: its agent id, else `observer`.
    pub fn who(&self) -> String {
        self.agent.clone().unwrap_or_else(|| "observer".to_owned())
    }

    /// Sends `event` to sessions `keys` after the commit.
    pub fn emit(&mut self, keys: Vec<u64>, event: &str, data: Value) {
        if !keys.is_empty() {
            self.outs.push((keys, event_text(event, data)));
        }
    }
}

/// A handler: returns the ack value.
pub type Handler = fn(&mut State, &mut Ctx, &Value) -> Value;

/// Every event the relay knows, by name.
pub const EVENTS: &[(&str, Handler)] = &[
    ("agent_connect", agent_connect),
    ("agent_disconnect", agent_disconnect),
    ("agent_hello", agent_hello),
    ("approve_task", approve_task),
    ("cancel_orchestration", orchestrate::cancel_orchestration),
    ("chat", chat),
    ("chat_history", chat_history),
    ("clone_agent_config", configs::clone_agent_config),
    ("command_ack", command_ack),
    ("create_orchestration", orchestrate::create_orchestration),
    ("delete_agent_config", configs::delete_agent_config),
    ("delete_credentials", credentials::delete_credentials),
    ("delete_file", files::delete_file),
    ("delete_shared_memory", memory::delete_shared_memory),
    ("delete_skill", skills::delete_skill),
    ("dispatch", dispatch),
    ("download_file", files::download_file),
    ("get_agent_config", configs::get_agent_config),
    ("get_credentials", credentials::get_credentials),
    ("get_orchestration", orchestrate::get_orchestration),
    ("get_shared_memory", memory::get_shared_memory),
    ("get_skill", skills::get_skill),
    ("join_room", join_room),
    ("latency_ping", latency_ping),
    ("leave_room", leave_room),
    ("list_agent_configs", configs::list_agent_configs),
    ("list_credentials", credentials::list_credentials),
    ("list_files", files::list_files),
    ("list_orchestrations", orchestrate::list_orchestrations),
    ("list_shared_memory", memory::list_shared_memory),
    ("list_skills", skills::list_skills),
    ("register_skill", skills::register_skill),
    ("report", report),
    ("report_task_result", orchestrate::report_task_result),
    ("revert_agent_config", configs::revert_agent_config),
    (
        "revoke_credentials_access",
        credentials::revoke_credentials_access,
    ),
    ("revoke_file_access", files::revoke_file_access),
    ("revoke_skill_access", skills::revoke_skill_access),
    ("save_agent_config", configs::save_agent_config),
    ("set_shared_memory", memory::set_shared_memory),
    ("share_credentials", credentials::share_credentials),
    ("share_file", files::share_file),
    ("share_skill", skills::share_skill),
    ("shell_exit", shell_to_master),
    ("shell_input", shell_to_agent),
    ("shell_output", shell_to_master),
    ("shell_resize", shell_to_agent),
    ("shell_start", shell_to_agent),
    ("shell_stop", shell_to_agent),
    ("start_orchestration", orchestrate::start_orchestration),
    ("store_credentials", credentials::store_credentials),
    ("task_result", task_result),
    ("update_agent_config", configs::update_agent_config),
    ("update_skill_experience", skills::update_skill_experience),
    ("upload_file", files::upload_file),
];

/// The handler of `name`.
pub fn handler(name: &str) -> Option<Handler> {
    EVENTS
        .binary_search_by_key(&name, |(n, _)| n)
        .ok()
        .map(|i| EVENTS[i].1)
}

/// The error shape of every reply: `{success: false, error, code}` (plus ClawNet's `ok`).
pub fn error_reply(code: &str, error: &str) -> Value {
    json!({"success": false, "ok": false, "error": error, "code": code})
}

fn ok() -> Value {
    json!({"success": true, "ok": true})
}

fn str_field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| v.get(*n).and_then(Value::as_str))
}

impl State {
    /// An EVENT from session `key`: dispatched by name; unknown names get an
    /// `INVALID_INPUT` ack when the client asked for one.
    pub fn on_event(&mut self, key: u64, mut msg: Message) {
        let Some(sock) = self.sessions.get(&key).and_then(|s| s.socket.clone()) else {
            // Events before the handshake are not served (socket.io drops them too).
            return;
        };
        self.counters.events += 1;
        let ack = msg.packet.id;
        let (name, mut arg) = take_event(&mut msg.packet);
        let large = LARGE_FIELDS
            .iter()
            .find(|(event, _)| *event == name)
            .and_then(|(_, field)| match arg.as_object_mut()?.remove(*field)? {
                Value::String(s) => Some(s),
                other => {
                    // Not text: put back for the handler to judge.
                    arg[*field] = other;
                    None
                }
            });
        let mut ctx = Ctx {
            event: name.clone(),
            key,
            tenant: sock.id.tenant.clone(),
            agent: sock.id.agent_id.clone(),
            role: sock.id.role,
            verified: sock.id.verified,
            attachments: msg.attachments,
            ack,
            deferred: false,
            large,
            writes: Vec::new(),
            outs: Vec::new(),
            after: Vec::new(),
        };
        let reply = match handler(&name) {
            Some(h) => h(self, &mut ctx, &arg),
            None => {
                self.counters.unknown_events += 1;
                error_reply("INVALID_INPUT", &format!("unknown event {name:?}"))
            }
        };
        if let Some(id) = ack.filter(|_| !ctx.deferred) {
            ctx.outs.push((vec![key], ack_text(id, reply)));
        }
        let on_error = ack.filter(|_| !ctx.deferred).map(|id| (key, id));
        self.push_commit_then(ctx.writes, ctx.outs, on_error, ctx.after);
    }
}

/// An event's name and first argument, taken out of the packet (not copied: an upload's
/// argument is megabytes).
fn take_event(p: &mut crate::proto::socketio::Packet) -> (String, Value) {
    if p.event().is_none() {
        return (String::new(), Value::Null);
    }
    let Some(Value::Array(items)) = p.data.take() else {
        return (String::new(), Value::Null);
    };
    let mut items = items.into_iter();
    let name = match items.next() {
        Some(Value::String(n)) => n,
        _ => String::new(),
    };
    (name, items.next().unwrap_or(Value::Null))
}

fn latency_ping(_: &mut State, _: &mut Ctx, _: &Value) -> Value {
    json!({"ok": true, "success": true, "server_ts": crate::clock::now_ms()})
}

fn agent_hello(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(agent) = ctx.agent.clone() else {
        return error_reply(
            "INVALID_INPUT",
            "agent_hello needs a socket with an agent id",
        );
    };
    let t = st.tenant(&ctx.tenant);
    if let Some(a) = t.agents.get_mut(&agent) {
        a.capabilities = arg.get("capabilities").cloned().unwrap_or(Value::Null);
        a.last_seen = crate::clock::now_ms();
        ctx.writes.push(super::tenant::agent_doc(&t.name, a));
    }
    ok()
}

fn report(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(agent) = ctx.agent.clone() else {
        return ok();
    };
    let t = st.tenant(&ctx.tenant);
    let mut changed = false;
    if let Some(a) = t.agents.get_mut(&agent) {
        a.last_seen = crate::clock::now_ms();
        let specs = arg.get("specs").or_else(|| {
            (arg.get("type").and_then(Value::as_str) == Some("status"))
                .then(|| arg.get("data"))
                .flatten()
        });
        if let Some(specs) = specs
            && a.specs != *specs
        {
            a.specs = specs.clone();
            changed = true;
        }
    }
    // Reports come every few seconds: memory only (the agent is saved when it leaves), and
    // the fleet update that shows a change is coalesced.
    if changed {
        let tenant = ctx.tenant.clone();
        st.schedule_fleet(&tenant);
    }
    ok()
}

/// The seed's `agent_connect {agentId, metadata}`: the socket becomes (or stays) that agent.
fn agent_connect(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(claimed) = str_field(arg, &["agentId", "agent_id"]) else {
        return error_reply("INVALID_INPUT", "agent_connect needs agentId");
    };
    match &ctx.agent {
        Some(a) if a == claimed => return ok(),
        Some(_) => return error_reply("ACCESS_DENIED", "this socket speaks for another agent"),
        None => {}
    }
    let bound = st
        .sessions
        .get(&ctx.key)
        .and_then(|s| s.socket.as_ref())
        .is_some_and(|s| s.id.verified);
    if bound || !valid_name(claimed) {
        return error_reply("ACCESS_DENIED", "this token cannot take an agent id");
    }
    let key = ctx.key;
    let Some(mut sock) = st.sessions.get_mut(&key).and_then(|s| s.socket.take()) else {
        return error_reply("INTERNAL_ERROR", "no socket");
    };
    // Leave as an observer, come back as the agent: one path for presence.
    st.socket_gone(key, sock.clone(), "agent_connect");
    sock.id.agent_id = Some(claimed.to_owned());
    let meta = json!({"metadata": arg.get("metadata"), "specs": arg.get("metadata")});
    st.readmit(key, sock, Some(&meta));
    ctx.agent = Some(claimed.to_owned());
    ok()
}

/// The seed's `agent_disconnect`: the agent goes offline; the socket stays as an observer.
fn agent_disconnect(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let key = ctx.key;
    if ctx.agent.is_none() {
        return ok();
    }
    let Some(mut sock) = st.sessions.get_mut(&key).and_then(|s| s.socket.take()) else {
        return ok();
    };
    st.socket_gone(key, sock.clone(), "agent_disconnect");
    // The socket stays, as an observer (a bound token still binds its next connection).
    sock.id.agent_id = None;
    st.readmit_observer(key, sock);
    ctx.agent = None;
    ok()
}

fn dispatch(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let (Some(to), Some(cmd)) = (
        str_field(arg, &["to", "target"]),
        str_field(arg, &["cmd", "command"]),
    ) else {
        return error_reply(
            "INVALID_INPUT",
            "dispatch needs `to` (an agent id or \"all\") and `cmd`",
        );
    };
    if cmd.is_empty() || !valid_name(to) {
        return error_reply(
            "INVALID_INPUT",
            "dispatch needs a non-empty `cmd` and a valid `to`",
        );
    }
    let sender = ctx.who();
    let targets = dispatch_targets(st, ctx, to, &sender);
    st.counters.dispatches += 1;
    let lower = cmd.to_lowercase();
    let listed = |list: &[String]| {
        list.iter()
            .find(|d| lower.contains(&d.to_lowercase()))
            .cloned()
    };
    let denied = listed(&st.cfg.command_denylist);
    let risky = listed(&st.cfg.command_risky).is_some();
    let mut made = Vec::new();
    for target in targets {
        match new_task(st, ctx, &sender, &target, cmd, denied.as_deref(), risky) {
            Ok(task) => made.push(task),
            Err(reply) => return reply,
        }
    }
    st.fx.audits.push((
        "RELAY_DISPATCH",
        denied.is_none(),
        json!({"tenant": ctx.tenant, "from": sender, "to": to, "cmd": cmd,
               "tasks": made.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), "denied": denied}),
    ));
    broadcast_tasks(st, ctx);
    if ctx.role == Role::Master {
        mirror_to_masters(st, ctx, &sender, to, &format!("CMD: {cmd}"));
    }
    let record = json!({"type": "dispatch", "from": sender, "to": to, "cmd": cmd});
    st.traffic(&ctx.tenant.clone(), record);
    dispatch_reply(&made, denied.as_deref())
}

/// Who a dispatch goes to: one agent, or every worker of the tenant but the sender.
fn dispatch_targets(st: &mut State, ctx: &Ctx, to: &str, sender: &str) -> Vec<String> {
    if to != "all" {
        return vec![to.to_owned()];
    }
    let t = st.tenant(&ctx.tenant);
    let mut v: Vec<String> = t
        .agents
        .values()
        .filter(|a| a.role == Role::Worker && a.id != sender)
        .map(|a| a.id.clone())
        .collect();
    v.sort();
    v
}

/// The dispatch's ack: the tasks made and the first one's id and status (ClawNet's shape),
/// or the deny-list refusal.
fn dispatch_reply(made: &[Task], denied: Option<&str>) -> Value {
    let tasks: Vec<Value> = made
        .iter()
        .map(|t| json!({"id": t.id, "to": t.to, "status": t.status}))
        .collect();
    let first = made.first();
    let id = first.map(|t| t.id.clone());
    if let Some(d) = denied {
        let mut r = error_reply(
            "ACCESS_DENIED",
            &format!("command refused: it matches the deny list entry {d:?}"),
        );
        r["status"] = json!("REJECTED");
        r["tasks"] = json!(tasks);
        r["task_id"] = json!(id);
        return r;
    }
    let status = first.map_or("NO_TARGETS", |t| t.status.as_str());
    json!({"success": true, "ok": true, "task_id": id, "id": id, "status": status, "tasks": tasks})
}

/// Makes one task of a dispatch and starts it (or holds it for approval, or rejects it).
fn new_task(
    st: &mut State,
    ctx: &mut Ctx,
    sender: &str,
    target: &str,
    cmd: &str,
    denied: Option<&str>,
    risky: bool,
) -> Result<Task, Value> {
    let now = crate::clock::now_ms();
    let online = st
        .tenant(&ctx.tenant)
        .agents
        .get(target)
        .and_then(|a| a.session)
        .is_some();
    let status = match (denied, risky, online) {
        (Some(_), _, _) => "REJECTED",
        (None, true, _) => "AWAITING_APPROVAL",
        (None, false, true) => "SENT",
        (None, false, false) => "QUEUED",
    };
    let max_queued = st.cfg.max_queued_commands;
    let t = st.tenant(&ctx.tenant);
    if status == "QUEUED"
        && t.tasks
            .values()
            .filter(|x| x.to == target && x.status == "QUEUED")
            .count()
            >= max_queued
    {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!(
                "{target} has {max_queued} commands waiting already (relay.max_queued_commands)"
            ),
        ));
    }
    let task = Task {
        id: uuid_v4(),
        from: sender.to_owned(),
        to: target.to_owned(),
        cmd: cmd.to_owned(),
        status: status.to_owned(),
        trace_id: uuid_v4(),
        created_ms: now,
        updated_ms: now,
        retries: 0,
        output: Value::Null,
        reason: denied.map(|d| format!("matches deny list entry {d:?}")),
        by_master: ctx.role == Role::Master,
    };
    let max = st.cfg.max_tasks;
    let t = st.tenant(&ctx.tenant);
    if !t.add_task(task.clone(), max, &mut ctx.writes) {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!("{max} tasks are still open in this tenant (relay.max_tasks)"),
        ));
    }
    if status == "SENT" {
        let tenant = ctx.tenant.clone();
        send_command(st, &tenant, &task.id, &mut ctx.outs);
    }
    st.fx
        .events
        .push(json!({"event": "dispatch", "tenant": ctx.tenant, "data": task.to_json()}));
    Ok(task)
}

/// Sends task `id`'s command to its agent (which must be online) and arms the ack timer.
pub fn send_command(st: &mut State, tenant: &str, id: &str, outs: &mut Vec<(Vec<u64>, String)>) {
    let timeout = st.cfg.ack_timeout;
    let t = st.tenant(tenant);
    let Some(task) = t.tasks.get_mut(id) else {
        return;
    };
    let Some(session) = t.agents.get(&task.to).and_then(|a| a.session) else {
        return;
    };
    task.status = "SENT".into();
    task.updated_ms = crate::clock::now_ms();
    let cmd = json!({"id": task.id, "cmd": task.cmd, "trace_id": task.trace_id, "from": task.from});
    outs.push((vec![session], event_text("command", cmd)));
    let attempt = task.retries;
    st.counters.commands_sent += 1;
    let _ = st.timers.add(
        Instant::now() + timeout,
        super::Timer::AckRetry(tenant.to_owned(), id.to_owned(), attempt),
    );
}

impl State {
    /// Sends an agent that just connected the commands queued for it, oldest first.
    pub fn deliver_queued(&mut self, tenant: &str, agent: &str) {
        let t = self.tenant(tenant);
        let ids: Vec<String> = t
            .task_order
            .iter()
            .filter(|id| {
                t.tasks
                    .get(*id)
                    .is_some_and(|x| x.to == agent && x.status == "QUEUED")
            })
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut outs = Vec::new();
        let mut writes = Vec::new();
        for id in &ids {
            send_command(self, tenant, id, &mut outs);
            let t = self.tenant(tenant);
            if let Some(task) = t.tasks.get(id) {
                writes.push(t.task_doc(task));
            }
        }
        self.push_commit(writes, outs, None);
    }

    /// A command's ack timer fired: send it again, or give up (`UNACKED`).
    pub fn ack_retry(&mut self, tenant: &str, id: &str, attempt: u32) {
        let max = self.cfg.ack_max_retries;
        let t = self.tenant(tenant);
        let Some(task) = t.tasks.get_mut(id) else {
            return;
        };
        if task.status != "SENT" || task.retries != attempt {
            return;
        }
        let online = t.agents.get(&task.to).and_then(|a| a.session).is_some();
        let mut outs = Vec::new();
        if task.retries >= max {
            task.status = "UNACKED".into();
            task.updated_ms = crate::clock::now_ms();
            self.counters.commands_unacked += 1;
        } else if online {
            task.retries += 1;
            self.counters.command_retries += 1;
            send_command(self, tenant, id, &mut outs);
        } else {
            // Its agent left: the command waits for it like any queued one.
            task.status = "QUEUED".into();
        }
        let t = self.tenant(tenant);
        let writes = t
            .tasks
            .get(id)
            .map(|x| vec![t.task_doc(x)])
            .unwrap_or_default();
        let members: Vec<u64> = t.members.iter().copied().collect();
        outs.push((members, event_text("task_update", t.recent_tasks(50))));
        self.push_commit(writes, outs, None);
    }
}

fn broadcast_tasks(st: &mut State, ctx: &mut Ctx) {
    let t = st.tenant(&ctx.tenant);
    let members: Vec<u64> = t.members.iter().copied().collect();
    let tasks = t.recent_tasks(50);
    ctx.emit(members, "task_update", tasks);
}

fn mirror_to_masters(st: &mut State, ctx: &mut Ctx, from: &str, to: &str, text: &str) {
    let masters = st.sessions_with_role(&ctx.tenant, Role::Master);
    let msg = json!({"from": from, "to": to, "msg": text, "message": text,
                     "ts": crate::clock::now_ms(), "localId": null});
    ctx.emit(masters, "chat_update", msg);
}

/// Finds a task of the caller's tenant that was sent to the caller.
fn own_task<'a>(st: &'a mut State, ctx: &Ctx, arg: &Value) -> Result<&'a mut Task, Value> {
    let Some(id) = str_field(arg, &["id", "task_id", "taskId"]) else {
        return Err(error_reply("INVALID_INPUT", "needs the task `id`"));
    };
    let me = ctx.who();
    let t = st.tenant(&ctx.tenant);
    match t.tasks.get_mut(id) {
        None => Err(error_reply("NOT_FOUND", &format!("no task {id}"))),
        Some(task) if task.to != me => Err(error_reply(
            "ACCESS_DENIED",
            "this task was sent to another agent",
        )),
        Some(task) => Ok(task),
    }
}

fn command_ack(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let task = match own_task(st, ctx, arg) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if task.status == "SENT" || task.status == "QUEUED" || task.status == "UNACKED" {
        task.status = "ACKED".into();
        task.updated_ms = crate::clock::now_ms();
        let id = task.id.clone();
        let t = st.tenant(&ctx.tenant);
        ctx.writes.push(t.task_doc(&t.tasks[&id]));
        broadcast_tasks(st, ctx);
    }
    ok()
}

fn task_result(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let max_out = st.cfg.max_task_output;
    let task = match own_task(st, ctx, arg) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let status = str_field(arg, &["status"])
        .unwrap_or("COMPLETED")
        .to_uppercase();
    if status.len() > 32 {
        return error_reply("INVALID_INPUT", "status is at most 32 characters");
    }
    let output = arg.get("output").cloned().unwrap_or(Value::Null);
    let text = match &output {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    task.output = if text.len() > max_out {
        let mut cut = max_out;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        json!(format!(
            "{}… [truncated: {} bytes in all]",
            &text[..cut],
            text.len()
        ))
    } else {
        output
    };
    task.status = status;
    task.updated_ms = crate::clock::now_ms();
    let (id, from, by_master, cmd) = (
        task.id.clone(),
        task.from.clone(),
        task.by_master,
        task.cmd.clone(),
    );
    let t = st.tenant(&ctx.tenant);
    let task = &t.tasks[&id];
    ctx.writes.push(t.task_doc(task));
    let data = task.to_json();
    st.fx
        .events
        .push(json!({"event": "task_result", "tenant": ctx.tenant, "data": data}));
    broadcast_tasks(st, ctx);
    if by_master {
        mirror_to_masters(
            st,
            ctx,
            &ctx.who(),
            &from,
            &format!("RESULT: {cmd}: {text:.200}"),
        );
    }
    st.traffic(
        &ctx.tenant.clone(),
        json!({"type": "result", "from": ctx.who(), "task_id": id}),
    );
    ok()
}

fn approve_task(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    if ctx.role != Role::Master {
        return error_reply("ACCESS_DENIED", "only masters approve tasks");
    }
    let Some(id) = str_field(arg, &["id", "task_id", "taskId"]) else {
        return error_reply("INVALID_INPUT", "approve_task needs the task `id`");
    };
    let tenant = ctx.tenant.clone();
    let t = st.tenant(&tenant);
    let Some(task) = t.tasks.get_mut(id) else {
        return error_reply("NOT_FOUND", &format!("no task {id}"));
    };
    if task.status != "AWAITING_APPROVAL" {
        return error_reply(
            "INVALID_INPUT",
            &format!("task {id} is {}, not awaiting approval", task.status),
        );
    }
    let online = t.agents.get(&task.to).and_then(|a| a.session).is_some();
    task.status = "QUEUED".into();
    task.updated_ms = crate::clock::now_ms();
    if online {
        send_command(st, &tenant, id, &mut ctx.outs);
    }
    let t = st.tenant(&tenant);
    let task = &t.tasks[id];
    let status = task.status.clone();
    ctx.writes.push(t.task_doc(task));
    st.fx.audits.push((
        "RELAY_TASK_APPROVED",
        true,
        json!({"tenant": tenant, "task": id, "by": ctx.who()}),
    ));
    broadcast_tasks(st, ctx);
    json!({"success": true, "ok": true, "id": id, "status": status})
}

fn chat(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let to = str_field(arg, &["to"]).unwrap_or("all");
    let Some(msg) = str_field(arg, &["msg", "message"]).filter(|m| !m.is_empty()) else {
        return error_reply("INVALID_INPUT", "chat needs `msg` (or `message`)");
    };
    let local_id = str_field(arg, &["localId"]).map(str::to_owned);
    if local_id.as_ref().is_some_and(|l| l.len() > 128) || !valid_name(to) {
        return error_reply("INVALID_INPUT", "invalid `to` or `localId`");
    }
    let from = ctx.who();
    let t = st.tenant(&ctx.tenant);
    if let Some(l) = &local_id
        && t.chat
            .iter()
            .any(|m| m.from == from && m.local_id.as_ref() == Some(l))
    {
        return json!({"success": true, "ok": true, "deduped": true});
    }
    let recipients: Vec<u64> = if to == "all" {
        t.members.iter().copied().collect()
    } else if let Some(room) = to.strip_prefix('#') {
        let Some(members) = t.rooms.get(room) else {
            return error_reply("NOT_FOUND", &format!("no room {room}"));
        };
        if !members.contains(&from) && ctx.role != Role::Master {
            return error_reply("ACCESS_DENIED", "join the room before writing to it");
        }
        members
            .iter()
            .filter_map(|a| t.agents.get(a)?.session)
            .collect()
    } else {
        let mut v: Vec<u64> = t
            .agents
            .get(to)
            .and_then(|a| a.session)
            .into_iter()
            .collect();
        if !v.contains(&ctx.key) {
            v.push(ctx.key);
        }
        v
    };
    t.chat_seq += 1;
    let m = ChatMsg {
        seq: t.chat_seq,
        from: from.clone(),
        to: to.to_owned(),
        msg: msg.to_owned(),
        ts: crate::clock::now_ms(),
        local_id,
    };
    let data = m.to_json();
    let max = st.cfg.max_chat;
    st.tenant(&ctx.tenant).add_chat(m, max, &mut ctx.writes);
    st.counters.chats += 1;
    ctx.emit(recipients, "chat_update", data.clone());
    st.traffic(
        &ctx.tenant.clone(),
        json!({"type": "chat", "from": from, "to": to}),
    );
    st.fx
        .events
        .push(json!({"event": "chat", "tenant": ctx.tenant, "data": data}));
    ok()
}

/// `chat_history {limit?}`: the kept messages the caller may see (to everyone, to or from
/// it, or to a room it is in), oldest first. Not in ClawNet; dashboards use it after a
/// reconnect.
fn chat_history(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let limit = arg
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 1000) as usize;
    let me = ctx.who();
    let t = st.tenant(&ctx.tenant);
    let rooms = t
        .agents
        .get(&me)
        .map(|a| a.rooms.clone())
        .unwrap_or_default();
    let visible: Vec<Value> = t
        .chat
        .iter()
        .filter(|m| {
            m.to == "all"
                || m.to == me
                || m.from == me
                || m.to.strip_prefix('#').is_some_and(|r| rooms.contains(r))
                || ctx.role == Role::Master
        })
        .map(|m| m.to_json())
        .collect();
    let skip = visible.len().saturating_sub(limit);
    json!({"success": true, "ok": true, "messages": visible[skip..]})
}

/// Room names clients may use: not reserved, no separators that could name a tenant.
fn room_name(arg: &Value) -> Result<String, Value> {
    let Some(room) = str_field(arg, &["room", "name"]) else {
        return Err(error_reply("INVALID_INPUT", "needs `room`"));
    };
    let room = room.strip_prefix('#').unwrap_or(room);
    let reserved = ["all", "masters", "wardens", "workers", "tenant", "admin"];
    if room.is_empty()
        || room.len() > 64
        || !room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(error_reply(
            "INVALID_INPUT",
            "a room name is 1-64 letters, digits, '-', '_' or '.'",
        ));
    }
    if reserved.contains(&room.to_ascii_lowercase().as_str()) || room.starts_with('_') {
        return Err(error_reply(
            "ACCESS_DENIED",
            &format!("room {room} is reserved"),
        ));
    }
    Ok(room.to_owned())
}

fn join_room(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(agent) = ctx.agent.clone() else {
        return error_reply("INVALID_INPUT", "join_room needs a socket with an agent id");
    };
    let room = match room_name(arg) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let max = st.cfg.max_rooms_per_agent;
    let t = st.tenant(&ctx.tenant);
    let Some(a) = t.agents.get_mut(&agent) else {
        return error_reply("INTERNAL_ERROR", "agent not present");
    };
    if !a.rooms.contains(&room) && a.rooms.len() >= max {
        return error_reply(
            "SIZE_LIMIT",
            &format!("an agent is in at most {max} rooms (relay.max_rooms_per_agent)"),
        );
    }
    a.rooms.insert(room.clone());
    t.rooms
        .entry(room.clone())
        .or_default()
        .insert(agent.clone());
    room_update(st, ctx, "join", &agent, &room, None)
}

fn leave_room(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let Some(agent) = ctx.agent.clone() else {
        return error_reply(
            "INVALID_INPUT",
            "leave_room needs a socket with an agent id",
        );
    };
    let room = match room_name(arg) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let t = st.tenant(&ctx.tenant);
    if let Some(a) = t.agents.get_mut(&agent) {
        a.rooms.remove(&room);
    }
    let me = t.agents.get(&agent).and_then(|a| a.session);
    st.remove_from_room(&ctx.tenant, &agent, &room);
    room_update(st, ctx, "leave", &agent, &room, me)
}

/// Tells the room (and `also`, one who just left) who is in it; the ack carries the same.
fn room_update(
    st: &mut State,
    ctx: &mut Ctx,
    action: &str,
    agent: &str,
    room: &str,
    also: Option<u64>,
) -> Value {
    let t = st.tenant(&ctx.tenant);
    let members: Vec<String> = t
        .rooms
        .get(room)
        .map(|m| m.iter().cloned().collect())
        .unwrap_or_default();
    let mut keys: Vec<u64> = members
        .iter()
        .filter_map(|a| t.agents.get(a)?.session)
        .collect();
    keys.extend(also);
    let update = json!({"action": action, "agent_id": agent, "room": room, "members": members});
    ctx.emit(keys, "room_update", update);
    json!({"success": true, "ok": true, "room": room, "members": members})
}

impl State {
    fn remove_from_room(&mut self, tenant: &str, agent: &str, room: &str) {
        let t = self.tenant(tenant);
        if let Some(m) = t.rooms.get_mut(room) {
            m.remove(agent);
            if m.is_empty() {
                t.rooms.remove(room);
            }
        }
    }

    /// An agent's socket left: it leaves `room`, and the room hears of it.
    pub fn leave_room(&mut self, tenant: &str, agent: &str, room: &str) {
        self.remove_from_room(tenant, agent, room);
        let t = self.tenant(tenant);
        let members: Vec<String> = t
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        let keys: Vec<u64> = members
            .iter()
            .filter_map(|a| t.agents.get(a)?.session)
            .collect();
        let update =
            json!({"action": "leave", "agent_id": agent, "room": room, "members": members});
        self.send_many(
            &keys,
            &crate::proto::engineio::Packet::message(event_text("room_update", update)),
        );
    }
}

/// Largest shell event forwarded (terminal data is small; a flood is refused).
const MAX_SHELL_EVENT: usize = 64 * 1024;

fn shell_check(st: &State, arg: &Value) -> Result<(), Value> {
    if !st.cfg.shell_enabled {
        return Err(error_reply(
            "ACCESS_DENIED",
            "the shell relay is off (relay.shell_enabled)",
        ));
    }
    if crate::kernel::events::json_len(arg) > MAX_SHELL_EVENT {
        return Err(error_reply(
            "SIZE_LIMIT",
            "shell events carry at most 64 KiB",
        ));
    }
    Ok(())
}

/// `shell_start`, `shell_input`, `shell_resize`, `shell_stop`: a master to an online agent.
fn shell_to_agent(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    shell_forward(st, ctx, arg, true)
}

/// `shell_output`, `shell_exit`: an agent back to the master that started the shell.
fn shell_to_master(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    shell_forward(st, ctx, arg, false)
}

fn shell_forward(st: &mut State, ctx: &mut Ctx, arg: &Value, to_agent: bool) -> Value {
    if let Err(e) = shell_check(st, arg) {
        return e;
    }
    if to_agent && ctx.role != Role::Master {
        return error_reply("ACCESS_DENIED", "only masters open shells");
    }
    let Some(to) = str_field(arg, &["to", "agentId", "agent_id", "target"]) else {
        return error_reply("INVALID_INPUT", "needs `to`");
    };
    let t = st.tenant(&ctx.tenant);
    let target = t
        .agents
        .get(to)
        .filter(|a| !to_agent || a.role != Role::Master);
    let Some(session) = target.and_then(|a| a.session) else {
        return error_reply("NOT_FOUND", &format!("{to} is not online"));
    };
    if !to_agent && target.is_some_and(|a| a.role != Role::Master) {
        return error_reply("ACCESS_DENIED", "shell output goes to a master");
    }
    let mut data = arg.clone();
    data["from"] = json!(ctx.who());
    let event = ctx.event.clone();
    ctx.emit(vec![session], &event, data);
    ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_so_lookups_find_every_event() {
        for pair in EVENTS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (name, _) in EVENTS {
            assert!(handler(name).is_some());
        }
        assert!(handler("nope").is_none());
    }

    #[test]
    fn reserved_and_malformed_rooms_are_refused() {
        assert_eq!(room_name(&json!({"room": "#ops"})).unwrap(), "ops");
        assert_eq!(
            room_name(&json!({"room": "masters"})).unwrap_err()["code"],
            "ACCESS_DENIED"
        );
        assert_eq!(
            room_name(&json!({"room": "a:b"})).unwrap_err()["code"],
            "INVALID_INPUT"
        );
        assert_eq!(room_name(&json!({})).unwrap_err()["code"], "INVALID_INPUT");
    }
}
