//! The `local` backend: each node's worker is a process of this host, in its own session (so
//! it outlives a daemon restart and is adopted again by pid and start time), confined by the
//! daemon's cgroup/rlimit machinery when limits are given.
//!
//! One thread (`clove-router-local`) owns every worker process it starts: it writes workspaces,
//! starts workers, appends inbox lines, notices exits (`waitpid` on its own children's pids
//! only, never `waitpid(-1)`; workers of an earlier daemon are watched through /proc) and runs
//! terminations as a timed state machine (shutdown line, SIGTERM, SIGKILL), so a slow stop of
//! one swarm never holds another's injections.
//!
//! Reaping: the workers are children of this thread, which lives as long as the daemon, so
//! they never appear among the main thread's children, where the supervisor reaps orphans
//! (`/proc/self/task/<main>/children`); and this thread waits only for its own pids. Workers
//! of an earlier daemon were re-parented elsewhere when it died and are only watched.

use super::{
    BackendMsg, Cmd, CmdQueue, Confinement, JobRef, JobState, LaunchSpec, Launched, MailboxFiles,
    Provider, Replies, Ticket, WorkerSandbox,
};
use crate::router::config::{ProviderConfig, WorkerLimits, argv, parse_limits};
use crate::router::mailbox::{self, Workspace};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Work waiting for the backend's thread; beyond it a call is refused as busy.
/// Most skill files one launch may write, and their size each.
const MAX_SKILLS: usize = 256;
const MAX_SKILL_BYTES: usize = 1 << 20;

/// The daemon's default model for `worker_mode = "llm"` (from `[llm]` / `OPENAI_*`), handed
/// in by the assembly. Its key is passed only to workers that talk to this same `base_url`.
#[derive(Clone, Default)]
pub struct LlmDefaults {
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
}

impl std::fmt::Debug for LlmDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmDefaults")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the local backend is given by the router.
pub struct LocalDeps {
    pub index: usize,
    pub replies: Arc<dyn Replies>,
    pub sandbox: Arc<dyn WorkerSandbox>,
    /// The `clove` binary, run as `clove worker` for each node.
    pub exe: PathBuf,
    pub llm: LlmDefaults,
    pub grace: Duration,
}

/// The provider handle the core holds; the work happens on the backend's thread.
pub struct LocalProvider {
    config: ProviderConfig,
    queue: CmdQueue,
    ws: Workspace,
}

impl LocalProvider {
    /// Starts the backend's thread.
    pub fn start(config: ProviderConfig, deps: LocalDeps) -> std::io::Result<LocalProvider> {
        let (queue, rx) = CmdQueue::new(&config.id);
        let ws = super::workspace(&config);
        let mut backend = Backend {
            config: config.clone(),
            ws: ws.clone(),
            deps,
            jobs: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("clove-router-local".into())
            .spawn(move || backend.run(rx))?;
        Ok(LocalProvider { config, queue, ws })
    }
}

impl Provider for LocalProvider {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn queue(&self) -> &CmdQueue {
        &self.queue
    }

    fn check_params(&self, params: &Map<String, Value>) -> Result<(), String> {
        WorkerPlan::from_params(&self.config, params, &LlmDefaults::default(), true).map(|_| ())
    }

    fn mailbox(&self, job: &JobRef, node: u32) -> MailboxFiles {
        MailboxFiles {
            outbox: self.ws.outbox(&job.job_id, node),
            archive: self.ws.archive(&job.job_id, node),
        }
    }
}

/// What each node of a launch runs, from the merged parameters.
#[derive(Debug, Clone)]
pub(crate) struct WorkerPlan {
    pub(crate) program: Option<Vec<String>>,
    pub(crate) settings: Value,
    pub(crate) runtime: String,
    limits: WorkerLimits,
    /// An API key for the worker's environment (never its command line or settings file).
    api_key: Option<String>,
}

impl WorkerPlan {
    /// `checking`: validate only (no environment reads for keys).
    pub(crate) fn from_params(
        cfg: &ProviderConfig,
        p: &Map<String, Value>,
        llm: &LlmDefaults,
        checking: bool,
    ) -> Result<WorkerPlan, String> {
        let program = match p.get("worker_program") {
            Some(v) if !v.is_null() => Some(argv(v).map_err(|e| format!("worker_program {e}"))?),
            _ => cfg.worker_program.clone(),
        };
        let limits = match p.get("limits") {
            Some(v) if !v.is_null() => parse_limits(v).map_err(|e| format!("limits: {e}"))?,
            _ => cfg.limits,
        };
        let mode = match p.get("worker_mode") {
            None | Some(Value::Null) => "mock",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err("worker_mode must be \"mock\", \"command\" or \"llm\"".into()),
        };
        let num = |k: &str, max: u64| -> Result<Option<u64>, String> {
            match p.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n <= max)
                    .map(Some)
                    .ok_or_else(|| format!("{k} must be a whole number from 0 to {max}")),
            }
        };
        let mut settings = json!({
            "mode": mode,
            "mock_delay_ms": num("mock_delay_ms", 60_000)?.unwrap_or(0),
            "command_timeout_secs": num("command_timeout_secs", 86_400)?.unwrap_or(3600),
            "approval": matches!(p.get("approval"), Some(Value::Bool(true))),
        });
        let mut api_key = None;
        match mode {
            "mock" => {}
            "command" => {
                let cmd = p
                    .get("worker_command")
                    .ok_or("worker_mode \"command\" needs worker_command (an argv list)")?;
                settings["command"] = json!(argv(cmd).map_err(|e| format!("worker_command {e}"))?);
            }
            "llm" => api_key = llm_settings(p, llm, checking, &mut settings)?,
            other if program.is_some() => settings["mode"] = json!(other),
            other => {
                return Err(format!(
                    "worker_mode must be \"mock\", \"command\" or \"llm\", not {other:?}"
                ));
            }
        }
        let runtime = match &program {
            Some(a) => format!(
                "program:{}",
                Path::new(&a[0])
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            None => format!("clove-{mode}"),
        };
        Ok(WorkerPlan {
            program,
            settings,
            runtime,
            limits,
            api_key,
        })
    }
}

/// The `llm` mode's settings: the launch's `llm_*` parameters, else the daemon's default model.
fn llm_settings(
    p: &Map<String, Value>,
    llm: &LlmDefaults,
    checking: bool,
    settings: &mut Value,
) -> Result<Option<String>, String> {
    let s = |k: &str| -> Result<Option<String>, String> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(_) => Err(format!("{k} must be a string")),
        }
    };
    let own_url = s("llm_base_url")?;
    let base_url = match (&own_url, &llm.base_url) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) if checking => String::new(),
        (None, None) => {
            return Err(
                "worker_mode \"llm\" needs llm_base_url (or a model in the daemon's [llm] \
                        section, or OPENAI_BASE_URL / OPENAI_API_KEY when it started)"
                    .into(),
            );
        }
    };
    if !(base_url.is_empty() || base_url.starts_with("http://") || base_url.starts_with("https://"))
    {
        return Err(format!(
            "llm_base_url {base_url:?} must start with http:// or https://"
        ));
    }
    let model = s("llm_model")?
        .or_else(|| llm.model.clone())
        .unwrap_or_else(|| "gpt-4o-mini".into());
    settings["llm"] = json!({
        "base_url": base_url.trim_end_matches('/'),
        "model": model,
        "max_tokens": p.get("llm_max_tokens").and_then(Value::as_u64),
        "temperature": p.get("llm_temperature").and_then(Value::as_f64),
        "api_key_file": s("llm_api_key_file")?,
    });
    // The key: a variable the launch names (read from the daemon's environment), else the
    // daemon's own key, but only when the worker talks to the daemon's own backend.
    let key = match s("llm_api_key_env")? {
        Some(var) if checking => Some(var),
        Some(var) => Some(
            std::env::var(&var)
                .map_err(|_| format!("llm_api_key_env: the daemon's environment has no {var}"))?,
        ),
        None if own_url.is_none() => llm.api_key.clone(),
        None => None,
    };
    Ok(key)
}

/// One worker process.
#[derive(Debug)]
struct Node {
    pid: i32,
    start_time: u64,
    /// Ours to reap (started by this daemon); `None` for a worker of an earlier daemon.
    child: Option<Child>,
    alive: bool,
    cgroup: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Shutdown,
    Term,
    Kill,
}

#[derive(Debug)]
struct Job {
    nodes: Vec<Node>,
    stopping: Option<(Phase, Instant)>,
}

struct Backend {
    config: ProviderConfig,
    ws: Workspace,
    deps: LocalDeps,
    jobs: HashMap<String, Job>,
}

impl Backend {
    fn run(&mut self, rx: Receiver<Cmd>) {
        loop {
            let wait = self.tick_interval();
            let cmd = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d),
            };
            match cmd {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.tick();
        }
    }

    fn reply(&self, msg: BackendMsg) {
        self.deps.replies.send(self.deps.index, msg);
    }

    /// How often to look at processes: often while a termination runs or our own children
    /// live (an exit should be noticed quickly), rarely for adopted ones, never without jobs.
    fn tick_interval(&self) -> Option<Duration> {
        if self.jobs.values().any(|j| j.stopping.is_some()) {
            return Some(Duration::from_millis(50));
        }
        if self
            .jobs
            .values()
            .flat_map(|j| &j.nodes)
            .any(|n| n.alive && n.child.is_some())
        {
            return Some(Duration::from_millis(200));
        }
        if self.jobs.values().flat_map(|j| &j.nodes).any(|n| n.alive) {
            return Some(Duration::from_secs(1));
        }
        None
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Launch(ticket, spec) => {
                let result = self.launch(ticket, &spec);
                self.reply(BackendMsg::Launched { ticket, result });
            }
            Cmd::Deliver(ticket, job, node, line) => {
                let result = self.deliver(&job, node, &line);
                self.reply(BackendMsg::Delivered { ticket, result });
            }
            Cmd::Status(job) => {
                self.tick();
                let state = match self.jobs.get(&job.job_id) {
                    Some(j) if j.nodes.iter().any(|n| n.alive) => JobState::Running,
                    _ => JobState::Ended,
                };
                self.reply(BackendMsg::Status {
                    job_id: job.job_id,
                    result: Ok((state, None)),
                });
            }
            Cmd::ListActive => {
                self.tick();
                let active = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.nodes.iter().any(|n| n.alive))
                    .map(|(id, _)| id.clone())
                    .collect();
                self.reply(BackendMsg::Active { result: Ok(active) });
            }
            Cmd::Terminate(job, force) => self.begin_terminate(&job, force),
            Cmd::Adopt(job) => self.adopt(&job),
        }
    }

    fn deliver(&mut self, job: &str, node: u32, line: &[u8]) -> Result<(), String> {
        self.tick();
        let n = self
            .jobs
            .get(job)
            .and_then(|j| j.nodes.get(node as usize))
            .ok_or_else(|| format!("node {node} of job {job} is not known to this provider"))?;
        if !n.alive {
            return Err(format!(
                "node {node} is not running (its worker has exited)"
            ));
        }
        let path = self.ws.inbox(job, node);
        mailbox::append_line(&path, line)
            .map_err(|e| format!("cannot append to {}: {e}", path.display()))
    }

    fn launch(&mut self, ticket: Ticket, spec: &LaunchSpec) -> Result<Launched, String> {
        let job = spec.job_hint.clone();
        if !mailbox::valid_job_id(&job) || self.jobs.contains_key(&job) {
            return Err(format!("cannot use job id {job:?}"));
        }
        let plan = WorkerPlan::from_params(&self.config, &spec.params, &self.deps.llm, false)?;
        self.reply(BackendMsg::LaunchProgress {
            ticket,
            stage: "starting",
            message: format!("preparing {} agent directories", spec.node_count),
        });
        let settings_path = self.prepare_workspace(spec, &plan)?;
        let mut nodes = Vec::with_capacity(spec.node_count as usize);
        for node in 0..spec.node_count {
            match self.start_node(&job, node, &plan, &settings_path) {
                Ok(n) => nodes.push(n),
                Err(e) => {
                    // Leave nothing half-started behind.
                    for mut n in nodes {
                        stop_now(&mut n);
                    }
                    return Err(format!("cannot start the worker of node {node}: {e}"));
                }
            }
        }
        self.reply(BackendMsg::LaunchProgress {
            ticket,
            stage: "ready",
            message: format!("{} workers running", nodes.len()),
        });
        let backend_state = state_json(&nodes);
        self.jobs.insert(
            job.clone(),
            Job {
                nodes,
                stopping: None,
            },
        );
        Ok(Launched {
            job_id: job,
            backend_state,
            agent_runtime: plan.runtime,
        })
    }

    /// Mailbox, agent directories (AGENTS.md, skills), the worker settings file.
    fn prepare_workspace(&self, spec: &LaunchSpec, plan: &WorkerPlan) -> Result<PathBuf, String> {
        let err =
            |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
        self.ws
            .create()
            .map_err(|e| err("create", &self.ws.root, e))?;
        let run = self.ws.run_dir(&spec.job_hint);
        mailbox::create_private_dir(&run).map_err(|e| err("create", &run, e))?;
        if spec.skills.len() > MAX_SKILLS {
            return Err(format!("too many skill files: at most {MAX_SKILLS}"));
        }
        for node in 0..spec.node_count {
            let dir = self.ws.agent_dir(&spec.job_hint, node);
            mailbox::create_private_dir(&dir).map_err(|e| err("create", &dir, e))?;
            if let Some(md) = &spec.agents_md {
                write_private(&dir.join("AGENTS.md"), md.as_bytes())
                    .map_err(|e| err("write", &dir, e))?;
            }
            for s in &spec.skills {
                let rel = safe_relative(&s.path)?;
                if s.content.len() > MAX_SKILL_BYTES {
                    return Err(format!(
                        "skill file {} is larger than {MAX_SKILL_BYTES} bytes",
                        s.path
                    ));
                }
                let path = dir.join(".agents").join("skills").join(rel);
                if let Some(parent) = path.parent() {
                    mailbox::create_private_dir(parent).map_err(|e| err("create", parent, e))?;
                }
                write_private(&path, s.content.as_bytes()).map_err(|e| err("write", &path, e))?;
            }
            let inbox = self.ws.inbox(&spec.job_hint, node);
            mailbox::append_line(&inbox, b"").map_err(|e| err("create", &inbox, e))?;
        }
        let settings = run.join("worker.json");
        let text = serde_json::to_vec_pretty(&plan.settings).map_err(|e| e.to_string())?;
        write_private(&settings, &text).map_err(|e| err("write", &settings, e))?;
        Ok(settings)
    }

    fn start_node(
        &self,
        job: &str,
        node: u32,
        plan: &WorkerPlan,
        settings: &Path,
    ) -> Result<Node, String> {
        let confinement = if plan.limits.is_empty() {
            None
        } else {
            let leaf = format!("swarm-{job}-{node:02}");
            Some(self.deps.sandbox.confine(&leaf, &plan.limits)?)
        };
        let argv: Vec<String> = match &plan.program {
            Some(a) => a.clone(),
            None => vec![
                self.deps.exe.to_string_lossy().into_owned(),
                "worker".into(),
            ],
        };
        let log_path = self.ws.run_dir(job).join(format!("agent_{node:02}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.ws.agent_dir(job, node))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, _) in std::env::vars_os() {
            if crate::secrets::is_secret_env(&k.to_string_lossy()) {
                cmd.env_remove(k);
            }
        }
        cmd.env("CODESWARM_JOB_ID", job)
            .env("CODESWARM_NODE_ID", node.to_string())
            .env("CODESWARM_BASE_DIR", &self.ws.root)
            .env("CLOVE_WORKER_SETTINGS", settings);
        if let Some(k) = &plan.api_key {
            cmd.env("CLOVE_WORKER_API_KEY", k);
        }
        let child = spawn_detached(&mut cmd, confinement.as_ref())?;
        let pid = child.id() as i32;
        Ok(Node {
            pid,
            start_time: proc_start_time(pid).unwrap_or(0),
            child: Some(child),
            alive: true,
            cgroup: confinement.map(|c| c.dirs).unwrap_or_default(),
        })
    }

    /// Notices exits and moves terminations along.
    fn tick(&mut self) {
        let mut exited = Vec::new();
        for (id, job) in &mut self.jobs {
            for (i, n) in job.nodes.iter_mut().enumerate() {
                if n.alive
                    && let Some(code) = check_exit(n)
                {
                    n.alive = false;
                    remove_dirs(&n.cgroup);
                    if job.stopping.is_none() {
                        exited.push((id.clone(), i as u32, code));
                    }
                }
            }
        }
        for (job_id, node_id, code) in exited {
            log::info!("router: job {job_id} node {node_id} exited on its own ({code:?})");
            self.reply(BackendMsg::NodeExited {
                job_id,
                node_id,
                code,
            });
        }
        self.advance_terminations();
    }

    fn begin_terminate(&mut self, job: &JobRef, force: bool) {
        if !self.jobs.contains_key(&job.job_id) {
            // Never started here, or adopted dead: nothing runs.
            self.adopt(job);
        }
        let Some(j) = self.jobs.get_mut(&job.job_id) else {
            return self.reply(BackendMsg::Terminated {
                job_id: job.job_id.clone(),
                result: Ok(()),
            });
        };
        let (phase, message) = if force {
            (Phase::Term, "force: sending SIGTERM to every worker")
        } else {
            (Phase::Shutdown, "asking every worker to shut down")
        };
        if j.stopping.is_some() {
            return; // already on its way; its end is reported once
        }
        for (i, n) in j.nodes.iter_mut().enumerate() {
            if !n.alive {
                continue;
            }
            if force {
                signal_group(n, libc::SIGTERM);
            } else {
                let _ = mailbox::append_line(
                    &self.ws.inbox(&job.job_id, i as u32),
                    &mailbox::shutdown_line(),
                );
            }
        }
        j.stopping = Some((phase, Instant::now() + self.deps.grace));
        self.reply(BackendMsg::TerminateProgress {
            job_id: job.job_id.clone(),
            stage: if force { "signalled" } else { "stopping" },
            message: message.into(),
        });
    }

    fn advance_terminations(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        let mut progress = Vec::new();
        let grace = self.deps.grace.max(Duration::from_millis(500));
        for (id, job) in &mut self.jobs {
            let Some((phase, deadline)) = job.stopping else {
                continue;
            };
            if job.nodes.iter().all(|n| !n.alive) {
                done.push(id.clone());
                continue;
            }
            if now < deadline {
                continue;
            }
            let (next, sig, stage, msg) = match phase {
                Phase::Shutdown => (
                    Phase::Term,
                    libc::SIGTERM,
                    "signalled",
                    "workers did not stop in time: SIGTERM",
                ),
                Phase::Term | Phase::Kill => (
                    Phase::Kill,
                    libc::SIGKILL,
                    "killed",
                    "workers did not stop: SIGKILL",
                ),
            };
            for n in job.nodes.iter_mut().filter(|n| n.alive) {
                signal_group(n, sig);
            }
            job.stopping = Some((next, now + grace));
            progress.push((id.clone(), stage, msg));
        }
        for (job_id, stage, msg) in progress {
            self.reply(BackendMsg::TerminateProgress {
                job_id,
                stage,
                message: msg.into(),
            });
        }
        for job_id in done {
            if let Some(job) = self.jobs.remove(&job_id) {
                for n in &job.nodes {
                    remove_dirs(&n.cgroup);
                }
            }
            self.reply(BackendMsg::Terminated {
                job_id,
                result: Ok(()),
            });
        }
    }

    /// Takes over the workers an earlier daemon started, by pid and start time.
    fn adopt(&mut self, job: &JobRef) {
        if self.jobs.contains_key(&job.job_id) {
            return;
        }
        let mut nodes = Vec::new();
        let recorded: Vec<Value> = match job.backend_state["nodes"].as_array() {
            Some(a) if !a.is_empty() => a.clone(),
            // A launch cut short before it was recorded: its workers say who they are in
            // their heartbeat files.
            _ => (0..job.node_count)
                .map(|n| self.heartbeat(&job.job_id, n))
                .collect(),
        };
        for n in &recorded {
            let pid = n["pid"].as_i64().unwrap_or(0) as i32;
            let start_time = n["start_time"].as_u64().unwrap_or(0);
            let alive = pid > 0 && proc_start_time(pid) == Some(start_time);
            let cgroup = n["cgroup"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(PathBuf::from))
                .collect();
            nodes.push(Node {
                pid,
                start_time,
                child: None,
                alive,
                cgroup,
            });
        }
        let alive = nodes.iter().filter(|n| n.alive).count();
        log::info!(
            "router: adopted job {} ({alive} of {} workers alive)",
            job.job_id,
            nodes.len()
        );
        self.jobs.insert(
            job.job_id.clone(),
            Job {
                nodes,
                stopping: None,
            },
        );
    }
}

impl Backend {
    /// What a node's heartbeat file says (`{}` when there is none).
    fn heartbeat(&self, job: &str, node: u32) -> Value {
        std::fs::read_to_string(self.ws.heartbeat(job, node))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|v| v["job_id"] == job)
            .unwrap_or_else(|| json!({}))
    }
}

fn state_json(nodes: &[Node]) -> Value {
    json!({"nodes": nodes.iter().map(|n| json!({
        "pid": n.pid, "start_time": n.start_time, "cgroup": n.cgroup,
    })).collect::<Vec<_>>()})
}

/// Has this node's process ended? `Some(exit code)` when it has (`None` inside: unknown).
fn check_exit(n: &mut Node) -> Option<Option<i32>> {
    match &mut n.child {
        Some(c) => match c.try_wait() {
            Ok(Some(st)) => Some(st.code().or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                st.signal().map(|s| -s)
            })),
            Ok(None) => None,
            Err(_) => Some(None),
        },
        None => (proc_start_time(n.pid) != Some(n.start_time) || is_zombie(n.pid)).then_some(None),
    }
}

/// Signals the worker's process group (it leads its own session), only if the pid is still
/// the process we started (same start time), so a recycled pid is never hit.
fn signal_group(n: &mut Node, sig: i32) {
    if n.pid <= 0 || proc_start_time(n.pid) != Some(n.start_time) {
        return;
    }
    // SAFETY: kill(2) on a process group we created (the worker called setsid).
    unsafe {
        libc::kill(-n.pid, sig);
    }
}

/// A launch that fails part way: kill what started, at once.
fn stop_now(n: &mut Node) {
    signal_group(n, libc::SIGKILL);
    if let Some(c) = &mut n.child {
        let _ = c.wait();
    }
    remove_dirs(&n.cgroup);
}

fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// A skill file's path: relative, plain components only (no `..`, no absolute path).
fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty()
        || p.len() > 1024
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "skill file path {p:?} must be relative, without \"..\""
        ));
    }
    Ok(path.to_path_buf())
}

/// Starts a worker in its own session, joined to its cgroups and under its rlimits before it
/// runs any code of its own. Everything the child does between fork and exec is prepared
/// here and is async-signal-safe (setsid, open, write, close, setrlimit).
fn spawn_detached(cmd: &mut Command, conf: Option<&Confinement>) -> Result<Child, String> {
    let procs: Vec<CString> = conf
        .map(|c| &c.procs_files)
        .into_iter()
        .flatten()
        .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    let (rl_as, rl_nproc) = conf
        .map(|c| (c.rlimit_as, c.rlimit_nproc))
        .unwrap_or((None, None));
    // SAFETY: the closure only makes async-signal-safe system calls on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            for (res, v) in [(libc::RLIMIT_AS, rl_as), (libc::RLIMIT_NPROC, rl_nproc)] {
                if let Some(v) = v {
                    let lim = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    if libc::setrlimit(res, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| e.to_string())
}

/// The start time of a process (clock ticks since boot, field 22 of /proc/PID/stat).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| t.rfind(')').map(|i| t[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_read() {
        let me = std::process::id() as i32;
        let a = proc_start_time(me).unwrap();
        assert!(a > 0);
        assert_eq!(proc_start_time(me), Some(a));
        assert_eq!(proc_start_time(-5), None);
    }

    #[test]
    fn skill_paths_stay_inside() {
        assert!(safe_relative("a/b.md").is_ok());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/x").is_err());
        assert!(safe_relative("a/../../x").is_err());
    }

    fn cfg() -> ProviderConfig {
        ProviderConfig {
            id: "local".into(),
            label: "l".into(),
            backend: crate::router::config::Backend::Local,
            workspace_root: "/tmp/x".into(),
            defaults: Map::new(),
            launch_fields: vec![],
            worker_program: None,
            limits: WorkerLimits::default(),
            slurm: None,
        }
    }

    #[test]
    fn plans_check_their_parameters() {
        let p = |v: Value| v.as_object().unwrap().clone();
        let llm = LlmDefaults {
            base_url: Some("http://daemon-default/v1".into()),
            model: Some("m".into()),
            api_key: Some("k".into()),
        };
        let plan = WorkerPlan::from_params(&cfg(), &p(json!({})), &llm, false).unwrap();
        assert_eq!(plan.runtime, "clove-mock");
        assert!(
            WorkerPlan::from_params(&cfg(), &p(json!({"worker_mode": "command"})), &llm, false)
                .is_err()
        );
        assert!(
            WorkerPlan::from_params(
                &cfg(),
                &p(json!({"worker_mode": "command",
            "worker_command": "sh -c x"})),
                &llm,
                false
            )
            .is_err()
        );
        assert!(
            WorkerPlan::from_params(&cfg(), &p(json!({"worker_mode": "warp"})), &llm, false)
                .is_err()
        );
        // The daemon's key goes only to the daemon's own backend.
        let plan = WorkerPlan::from_params(&cfg(), &p(json!({"worker_mode": "llm"})), &llm, false)
            .unwrap();
        assert_eq!(plan.api_key.as_deref(), Some("k"));
        let plan = WorkerPlan::from_params(
            &cfg(),
            &p(json!({"worker_mode": "llm",
            "llm_base_url": "http://elsewhere/v1"})),
            &llm,
            false,
        )
        .unwrap();
        assert_eq!(plan.api_key, None);
        assert!(!plan.settings.to_string().contains("\"k\""));
        let plan = WorkerPlan::from_params(
            &cfg(),
            &p(json!({"worker_program": ["python3", "/w/mock.py"]})),
            &llm,
            false,
        )
        .unwrap();
        assert_eq!(plan.runtime, "program:python3");
    }
}
