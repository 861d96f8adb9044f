//! SPAWN, KILL, LIST, PAUSE, RESUME and the METRICS_* ops.
//!
//! The handlers check the request and the caller's rights on the reactor thread (no file
//! system, no waiting), then hand the work to the supervisor thread, which answers through
//! the request's responder: the connection waits for its own reply, nobody else does. LIST
//! reads the shared agent table. Metrics read /proc and cgroup files, so they run on workers.

use super::Ops;
use crate::kernel::perms::{Permissions, PermsPatch};
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use crate::kernel::{Call, CallerId, Kernel, Responder};
use crate::supervisor::cgroup::Limits;
use crate::supervisor::policy::RestartPolicy;
use crate::supervisor::spawn::{RestartFields, Size, SpawnRequest};
use crate::supervisor::{Command, Handle};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
struct RawLimits {
    memory: Option<Size>,
    max_pids: Option<u64>,
    cpu_quota: Option<u64>,
    cpu_period: Option<u64>,
    cpu_shares: Option<u64>,
}

#[derive(Deserialize)]
struct SpawnReq {
    name: String,
    script: String,
    /// The interpreter (the SDK's name for it).
    python: Option<String>,
    interpreter: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    sandboxed: Option<bool>,
    network: Option<bool>,
    limits: Option<RawLimits>,
    restart_policy: Option<String>,
    max_restarts: Option<u32>,
    restart_window: Option<f64>,
    level: Option<String>,
    permissions: Option<Value>,
    #[serde(default)]
    persist: bool,
}

/// Refuses a call for lack of a right: SYSCALL_BLOCKED, an audit entry, an error reply.
fn deny(k: &Kernel, call: &Call, msg: String) -> Outcome {
    crate::kernel::access::blocked(k, call, &msg);
    Outcome::Reply(error(msg))
}

fn supervisor(o: &Ops) -> Result<&Handle, Outcome> {
    o.agents
        .handle()
        .ok_or_else(|| Outcome::Reply(error("agent supervision is not running in this daemon")))
}

/// Hands a command to the supervisor; the reply comes from there.
fn submit(h: &Handle, cmd: Command) -> Outcome {
    match h.send(cmd) {
        Ok(()) => Outcome::Deferred,
        Err(cmd) => {
            let r = match cmd {
                Command::Spawn { responder, .. }
                | Command::Kill { responder, .. }
                | Command::Pause { responder, .. }
                | Command::Resume { responder, .. }
                | Command::Resave { responder, .. } => Some(responder),
                Command::Shutdown { .. } | Command::Start { .. } => None,
            };
            if let Some(r) = r {
                r.error(format!("{}; try again", busy(h)));
            }
            Outcome::Deferred
        }
    }
}

/// The error for a full supervisor command queue.
pub(crate) fn busy(h: &Handle) -> String {
    format!(
        "the supervisor is busy: its queue of {} commands is full (agents.command_queue)",
        h.capacity()
    )
}

/// The permissions a spawned agent starts with: `permissions.agent_level`, or lower when the
/// SPAWN asks for a lower `level` and/or `permissions`. Never more than that level (an agent
/// is raised afterwards with SET_PERMS, which needs the manage right), and never beyond the
/// spawner's own rights.
fn agent_perms(
    k: &Kernel,
    spawner: &Permissions,
    level: Option<&str>,
    patch: Option<Value>,
) -> Result<Permissions, String> {
    let unknown = |name: &str| {
        format!(
            "unknown level {name:?} (known: {})",
            crate::kernel::perms::LEVELS.join(", ")
        )
    };
    let ceiling_name = &k.config.agent_level;
    let ceiling = k
        .config
        .level(ceiling_name)
        .ok_or_else(|| unknown(ceiling_name))?;
    let base = match level {
        None => ceiling.clone(),
        Some(name) => k.config.level(name).cloned().ok_or_else(|| unknown(name))?,
    };
    let patched = patch.is_some();
    let p = match patch {
        None => base,
        Some(v) => {
            let patch: PermsPatch = serde_json::from_value(v)
                .map_err(|e| format!("invalid request: field `permissions`: {e}"))?;
            patch.check_rules(
                k.config.max_permission_rules,
                k.config.max_permission_rule_bytes,
            )?;
            base.patched(&patch)
        }
    };
    p.validate()?;
    if !p.within(ceiling) {
        return Err(format!(
            "SPAWN can only start an agent at permissions.agent_level ({ceiling_name}) or lower, \
             and the requested {} goes beyond it; spawn it at {ceiling_name} or lower, then \
             raise it with SET_PERMS (needs the manage right)",
            if patched {
                format!("level {} with `permissions`", p.level)
            } else {
                format!("level {}", p.level)
            }
        ));
    }
    if !p.within(spawner) {
        return Err(format!(
            "permission denied: a spawned agent cannot get permissions beyond your own (asked for level {})",
            p.level
        ));
    }
    Ok(p)
}

/// SPAWN: starts a supervised agent.
pub fn spawn(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: SpawnReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let h = match supervisor(o) {
        Ok(h) => h,
        Err(o) => return o,
    };
    let me = k.perms(call.caller);
    if !me.can_spawn || !me.can_manage {
        return deny(
            k,
            call,
            "permission denied: SPAWN needs the spawn and manage rights".into(),
        );
    }
    if let Err(e) = crate::kernel::ipc::valid_name(&req.name, k.config.max_name_bytes) {
        return Outcome::Reply(error(e));
    }
    if let Err(e) = crate::supervisor::spawn::check_args(&req.args, &o.agents.config) {
        return Outcome::Reply(error(e));
    }
    let permissions = match agent_perms(k, &me, req.level.as_deref(), req.permissions) {
        Ok(p) => p,
        Err(e) if e.starts_with("permission denied") => return deny(k, call, e),
        Err(e) => return Outcome::Reply(error(e)),
    };
    let policy = match req.restart_policy.as_deref() {
        None => RestartPolicy::Never,
        Some(p) => match RestartPolicy::parse(p) {
            Ok(p) => p,
            Err(e) => return Outcome::Reply(error(e)),
        },
    };
    let raw = req.limits.unwrap_or_default();
    let memory = match raw.memory.as_ref().map(Size::bytes).transpose() {
        Ok(m) => m,
        Err(e) => return Outcome::Reply(error(format!("invalid limits.memory: {e}"))),
    };
    let limits = Limits {
        memory,
        max_pids: raw.max_pids,
        cpu_quota: raw.cpu_quota,
        cpu_period: raw.cpu_period,
        cpu_shares: raw.cpu_shares,
    };
    if let Err(e) = limits.validate() {
        return Outcome::Reply(error(e));
    }
    let sandboxed = req.sandboxed.unwrap_or(true);
    let spawn_req = SpawnRequest {
        name: req.name,
        script: req.script,
        interpreter: req.interpreter.or(req.python),
        args: req.args,
        cwd: req.cwd,
        caller_pid: call.peer.pid,
        parent_id: call.caller,
        sandboxed,
        // Sandboxed agents get no network unless asked; unsandboxed ones share the host's.
        network: req.network.unwrap_or(!sandboxed),
        limits,
        restart: RestartFields {
            policy,
            max_restarts: req.max_restarts.unwrap_or(5),
            window_secs: req.restart_window.unwrap_or(300.0),
        },
        permissions,
        persist: req.persist,
    };
    let id = k.allocate_id();
    submit(
        h,
        Command::Spawn {
            req: Box::new(spawn_req),
            id,
            responder: k.responder(call),
        },
    )
}

#[derive(Deserialize, Default)]
struct TargetReq {
    id: Option<Value>,
    agent_id: Option<Value>,
    name: Option<String>,
}

/// The agent a `{id}` / `{agent_id}` / `{name}` request names.
fn target(o: &Ops, payload: &[u8]) -> Result<CallerId, String> {
    let req: TargetReq = parse(payload)?;
    let id = req.id.or(req.agent_id);
    match (id, req.name) {
        (Some(Value::Number(n)), _) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("invalid agent id {n}")),
        (Some(Value::String(s)), _) | (None, Some(s)) => {
            if let Ok(n) = s.parse::<u32>() {
                return Ok(n);
            }
            o.agents
                .table
                .lock()
                .find_name(&s)
                .map(|a| a.id)
                .ok_or_else(|| format!("no agent named {s:?}"))
        }
        (Some(other), _) => Err(format!(
            "invalid request: field `id` must be an agent id, got {other}"
        )),
        (None, None) => Err("missing agent: give `id` or `name`".into()),
    }
}

/// The target of KILL, PAUSE or RESUME. The right is checked before the target is looked up,
/// so a caller without it learns nothing about which agents exist: it gets the same denial
/// for a real name, an unknown name or a malformed request.
fn managed_op(o: &Ops, call: &Call, payload: &[u8], what: &str) -> Result<CallerId, Outcome> {
    let k = &*o.kernel;
    if !k.perms(call.caller).can_manage {
        return Err(deny(
            k,
            call,
            format!("permission denied: {what} needs the manage right"),
        ));
    }
    let id = target(o, payload).map_err(|e| Outcome::Reply(error(e)))?;
    if o.agents.table.lock().get(id).is_none() {
        return Err(Outcome::Reply(error(format!("no agent has id {id}"))));
    }
    Ok(id)
}

/// KILL `{id}` or `{name}`: SIGTERM, SIGKILL after the grace; replies when the agent is gone.
pub fn kill(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let h = match supervisor(o) {
        Ok(h) => h,
        Err(o) => return o,
    };
    match managed_op(o, call, payload, "KILL") {
        Ok(id) => submit(
            h,
            Command::Kill {
                id,
                by: call.caller,
                responder: k.responder(call),
            },
        ),
        Err(o) => o,
    }
}

/// PAUSE `{id}` or `{name}`.
pub fn pause(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let h = match supervisor(o) {
        Ok(h) => h,
        Err(o) => return o,
    };
    match managed_op(o, call, payload, "PAUSE") {
        Ok(id) => submit(
            h,
            Command::Pause {
                id,
                responder: k.responder(call),
            },
        ),
        Err(o) => o,
    }
}

/// RESUME `{id}` or `{name}`.
pub fn resume(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let h = match supervisor(o) {
        Ok(h) => h,
        Err(o) => return o,
    };
    match managed_op(o, call, payload, "RESUME") {
        Ok(id) => submit(
            h,
            Command::Resume {
                id,
                responder: k.responder(call),
            },
        ),
        Err(o) => o,
    }
}

/// LIST: a bare JSON array of every agent the daemon knows.
pub fn list(o: &Ops, _call: &Call, _payload: &[u8]) -> Outcome {
    let _k = &*o.kernel;
    let t = o.agents.table.lock();
    let v: Vec<Value> = t.agents.values().map(|a| a.list_entry()).collect();
    drop(t);
    Outcome::Reply(to_bytes(&v))
}

/// METRICS_SYSTEM.
pub fn metrics_system(o: &Ops, _call: &Call, _payload: Vec<u8>, r: Responder) {
    let _k = &*o.kernel;
    // The services' counters (the router's clients, events, queue, followed files) beside
    // the machine's figures.
    let services: serde_json::Map<String, serde_json::Value> = o
        .services
        .iter()
        .map(|p| (p.name.to_string(), (p.report)()))
        .collect();
    r.reply(&to_bytes(&json!({"success": true,
        "metrics": crate::supervisor::metrics::system(&o.agents.samples),
        "services": services})));
}

/// METRICS_AGENT `{agent_id?}` (default: the caller itself).
pub fn metrics_agent(o: &Ops, call: &Call, payload: Vec<u8>, r: Responder) {
    let _k = &*o.kernel;
    #[derive(Deserialize, Default)]
    struct Req {
        agent_id: Option<CallerId>,
        id: Option<CallerId>,
        name: Option<String>,
    }
    let req: Req = match parse(&payload) {
        Ok(r) => r,
        Err(e) => return r.error(e),
    };
    let agent = {
        let t = o.agents.table.lock();
        match (req.agent_id.or(req.id), &req.name) {
            (Some(id), _) => t.get(id).cloned(),
            (None, Some(n)) => t.find_name(n).cloned(),
            (None, None) => t.get(call.caller).cloned(),
        }
    };
    match agent {
        Some(a) => r.reply(&to_bytes(
            &json!({"success": true, "metrics": crate::supervisor::metrics::agent(&o.agents.samples, &a)}),
        )),
        None => r.error(match (req.agent_id.or(req.id), req.name) {
            (Some(id), _) => format!("no agent has id {id}"),
            (None, Some(n)) => format!("no agent named {n:?}"),
            (None, None) => "you are not a supervised agent: give `agent_id`".to_string(),
        }),
    }
}

/// METRICS_ALL_AGENTS.
pub fn metrics_all_agents(o: &Ops, _call: &Call, _payload: Vec<u8>, r: Responder) {
    let _k = &*o.kernel;
    let agents: Vec<_> = o.agents.table.lock().agents.values().cloned().collect();
    let list: Vec<Value> = agents
        .iter()
        .map(|a| crate::supervisor::metrics::agent(&o.agents.samples, a))
        .collect();
    r.reply(&to_bytes(
        &json!({"success": true, "count": list.len(), "agents": list}),
    ));
}

/// METRICS_CGROUP `{cgroup_path?, agent_id?, name?}`: the daemon's agent cgroup parent by
/// default, an agent's cgroup, or a path below the daemon's cgroup directory.
pub fn metrics_cgroup(o: &Ops, _call: &Call, payload: Vec<u8>, r: Responder) {
    let _k = &*o.kernel;
    #[derive(Deserialize, Default)]
    struct Req {
        cgroup_path: Option<String>,
        agent_id: Option<CallerId>,
        name: Option<String>,
    }
    let req: Req = match parse(&payload) {
        Ok(r) => r,
        Err(e) => return r.error(e),
    };
    let parents = o
        .agents
        .cgroups
        .get()
        .map(|c| c.parent_dirs())
        .unwrap_or_default();
    let dirs = if req.agent_id.is_some() || req.name.is_some() {
        // The table lock is released before any reply: a reply may wait for room in the
        // completion queue, and the reactor takes this lock.
        let found = {
            let t = o.agents.table.lock();
            let a = match (req.agent_id, &req.name) {
                (Some(id), _) => t.get(id),
                (None, Some(n)) => t.find_name(n),
                _ => None,
            };
            a.map(|a| {
                a.cgroup
                    .as_ref()
                    .map(|c| c.dirs.clone())
                    .unwrap_or_default()
            })
        };
        match found {
            Some(dirs) => dirs,
            None => return r.error("no such agent"),
        }
    } else if let Some(p) = req.cgroup_path.as_deref().filter(|p| !p.is_empty()) {
        // Relative to the daemon's agent cgroup directory; no way out of it.
        let rel = p.trim_start_matches('/');
        if rel.split('/').any(|c| c == ".." || c == ".") {
            return r.error(format!(
                "invalid cgroup_path {p:?}: give a path below the daemon's cgroup, without '..'"
            ));
        }
        let dirs: Vec<_> = parents
            .iter()
            .map(|(c, d)| (c.clone(), d.join(rel)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        if dirs.is_empty() {
            return r.error(format!("no cgroup {p:?} below the daemon's cgroup"));
        }
        dirs
    } else {
        parents
    };
    let mut metrics = crate::supervisor::metrics::cgroup_dir(&dirs);
    if dirs.is_empty()
        && let Some(c) = o.agents.cgroups.get()
        && let crate::supervisor::cgroup::Backend::Off(reason) = &c.backend
    {
        metrics["reason"] = reason.clone().into();
    }
    r.reply(&to_bytes(&json!({"success": true, "metrics": metrics})));
}
