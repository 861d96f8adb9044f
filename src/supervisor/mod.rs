//! The supervisor: the one thread that starts agents, reaps them, restarts them per policy,
//! pauses, resumes and kills them, and keeps their cgroups and log files.
//!
//! Ownership: the supervisor thread alone owns the agents' processes. Other threads talk to
//! it with [`Command`]s over a bounded channel plus a [`mio::Waker`]; it answers through the
//! requests' [`Responder`]s, so an op handler never waits for it. The public view of every
//! agent (LIST, metrics, identity binding) is the [`Table`] in [`Agents`], written only by the
//! supervisor under a short lock.
//!
//! Reaping: the thread sleeps in its own `mio::Poll` and is woken by SIGCHLD (signal-hook's
//! self-pipe), never by a timer. On each wake it calls `waitpid(pid, WNOHANG)` for the pids it
//! spawned, never `waitpid(-1)` (EXEC workers reap their own children). Because the daemon is
//! a child subreaper, orphaned descendants of agents are re-parented to the daemon's *main
//! thread*, which never forks; so the zombies listed in the main thread's `children` file are
//! exactly those orphans, and reaping them cannot steal another thread's child.
//!
//! Timers (SIGKILL after the kill grace, restart backoff, spawn timeout) are deadlines that
//! bound the poll timeout.

pub mod caps;
pub mod cgroup;
pub mod config;
pub mod enter;
pub mod launch;
pub mod logfile;
pub mod metrics;
pub mod persist;
pub mod policy;
pub mod spawn;

use crate::kernel::audit::Category;
use crate::kernel::identity::NsId;
use crate::kernel::perms::Permissions;
use crate::kernel::{CallerId, Kernel, Responder, request};
use crate::process::{has_exited, signal_group};
use cgroup::{AgentCgroup, Cgroups, Limits};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use launch::{NsReport, Report};
use logfile::LogFile;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use policy::{Decision, ExitFacts, RestartConfig, RestartPolicy, RestartTracker, Status};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Bytes read from an agent's output pipe per turn, so one chatty agent cannot starve others.
const LOG_CHUNK: usize = 64 * 1024;
/// Longest report line a launcher may send.
const MAX_REPORT: usize = 64 * 1024;

const WAKER: Token = Token(0);
const SIGCHLD: Token = Token(1);
const FIRST_PIPE: usize = 16;

/// What SPAWN asked for, resolved and checked. Serializable, so a durable store can keep the
/// specs of agents spawned with `persist: true` and start them again at daemon start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: String,
    pub script: PathBuf,
    pub interpreter: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub sandboxed: bool,
    pub network: bool,
    pub limits: Limits,
    pub restart_policy: RestartPolicy,
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    pub persist: bool,
    /// Permissions the agent starts with.
    pub permissions: Permissions,
    /// The caller that spawned it.
    pub parent_id: CallerId,
}

/// How an incarnation ended.
#[derive(Debug, Clone, Serialize)]
pub struct ExitInfo {
    /// The exit code, or `-signal` when a signal ended it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// "exited", "signaled", "killed" (KILL), "shutdown", "oom", "spawn_failed".
    pub reason: &'static str,
    pub killed_by: Option<CallerId>,
}

/// The public view of one agent.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub id: CallerId,
    pub spec: Arc<AgentSpec>,
    pub status: Status,
    /// The supervised process (the launcher when sandboxed).
    pub pid: Option<i32>,
    /// The interpreter's pid, when known.
    pub main_pid: Option<i32>,
    pub started_at: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    pub isolation: Value,
    pub cgroup: Option<AgentCgroup>,
    pub log_path: PathBuf,
    /// Its spec is saved in the state store (spawned with `persist: true` and not KILLed): it
    /// starts again when the daemon starts, and stays in LIST while stopped.
    pub persisted: bool,
    /// How to run a command inside it (EXEC on its behalf), while its process runs.
    pub confinement: Option<enter::Confinement>,
    /// Why it is FAILED: it could not start, or the restart policy gave up on it.
    pub failure: Option<String>,
}

impl AgentInfo {
    /// The LIST entry.
    pub fn list_entry(&self) -> Value {
        let uptime = match (self.status.has_process(), self.started_at) {
            (true, Some(t)) => t.elapsed().as_millis() as u64,
            _ => 0,
        };
        let mut v = json!({
            "id": self.id,
            "agent_id": self.id,
            "name": self.spec.name,
            "pid": self.main_pid.or(self.pid),
            "supervisor_pid": self.pid,
            "state": self.status.as_str(),
            "status": self.status.as_str().to_ascii_lowercase(),
            "running": self.status.has_process(),
            "uptime_ms": uptime,
            "restarts": self.restarts,
            "restart_policy": self.spec.restart_policy.as_str(),
            "sandboxed": self.spec.sandboxed,
            "network": self.spec.network,
            "script": self.spec.script,
            "parent_id": self.spec.parent_id,
            "log_path": self.log_path,
            "persist": self.persisted,
        });
        if self.status == Status::Failed
            && let Some(f) = &self.failure
        {
            v["failure"] = f.as_str().into();
        }
        if let Some(e) = &self.last_exit {
            v["exit_code"] = e.exit_code.into();
            v["signal"] = e.signal.into();
            v["exit_reason"] = e.reason.into();
        }
        v
    }
}

/// Every agent the daemon knows, by id; with the pids of running ones.
#[derive(Default)]
pub struct Table {
    pub agents: BTreeMap<CallerId, AgentInfo>,
}

impl Table {
    pub fn get(&self, id: CallerId) -> Option<&AgentInfo> {
        self.agents.get(&id)
    }

    /// The live (not stopped for good) agent called `name`, else the newest stopped one.
    pub fn find_name(&self, name: &str) -> Option<&AgentInfo> {
        let mut found: Option<&AgentInfo> = None;
        for a in self.agents.values().filter(|a| a.spec.name == name) {
            if !a.status.is_final() {
                return Some(a);
            }
            found = Some(a);
        }
        found
    }

    pub fn live_count(&self) -> usize {
        self.agents
            .values()
            .filter(|a| !a.status.is_final())
            .count()
    }
}

/// Commands for the supervisor thread.
pub enum Command {
    Spawn {
        req: Box<spawn::SpawnRequest>,
        id: CallerId,
        responder: Responder,
    },
    /// Start a persistent agent again from its saved spec, under its saved id (at daemon
    /// start, see [`persist::restore`]). `stale` is the cgroup a dead daemon left for it, to
    /// be removed once empty.
    Start {
        spec: Box<AgentSpec>,
        id: CallerId,
        stale: Option<AgentCgroup>,
    },
    /// Save a persistent agent's record again (its permissions changed), then send `reply`.
    Resave {
        id: CallerId,
        responder: Responder,
        reply: Vec<u8>,
    },
    Kill {
        id: CallerId,
        by: CallerId,
        responder: Responder,
    },
    Pause {
        id: CallerId,
        responder: Responder,
    },
    Resume {
        id: CallerId,
        responder: Responder,
    },
    /// Stop (or leave) every agent and end the thread; `done` is dropped when finished.
    Shutdown {
        stop: bool,
        done: Sender<()>,
    },
}

/// The way to reach the supervisor thread.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Queues a command without blocking; gives it back when the queue is full.
    pub fn send(&self, cmd: Command) -> Result<(), Command> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                let _ = self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(c)) | Err(TrySendError::Disconnected(c)) => Err(c),
        }
    }

    /// Room in the command queue (`agents.command_queue`).
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }

    /// Commands waiting for the supervisor thread.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Queues a command, waiting for room (never on the reactor thread: at start only).
    pub fn send_blocking(&self, cmd: Command) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Supervised agents as the rest of the daemon sees them: the table, the way to the
/// supervisor thread, the cgroup facts, the latest metrics samples and the supervisor's
/// settings. Built by the assembly and shared with the services that need agents.
pub struct Agents {
    pub table: Mutex<Table>,
    handle: OnceLock<Handle>,
    /// Facts about cgroups, fixed at start.
    pub cgroups: OnceLock<Cgroups>,
    /// CPU samples taken by the metrics sampler thread.
    pub samples: metrics::Samples,
    pub config: config::AgentsConfig,
    pub sandbox: config::SandboxConfig,
}

impl Agents {
    pub fn new(config: config::AgentsConfig, sandbox: config::SandboxConfig) -> Agents {
        Agents {
            table: Mutex::new(Table::default()),
            handle: OnceLock::new(),
            cgroups: OnceLock::new(),
            samples: metrics::Samples::default(),
            config,
            sandbox,
        }
    }

    pub fn handle(&self) -> Option<&Handle> {
        self.handle.get()
    }
}

/// Where the supervisor keeps logs and what it tells agents.
pub struct Paths {
    /// The daemon's state directory (agent logs go to `agents/` inside it).
    pub state_dir: PathBuf,
    /// The Clove socket agents are given.
    pub socket: PathBuf,
    /// The agents' socket of a root daemon, which each sandboxed agent's launcher mounts
    /// over `socket` inside the agent's mount namespace (see `daemon::bind_agent_socket`).
    pub agent_socket: Option<PathBuf>,
}

/// Starts the supervisor thread.
pub fn start(
    kernel: Arc<Kernel>,
    agents: Arc<Agents>,
    paths: Paths,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::bounded(agents.config.command_queue);
    let (sig_r, sig_w) = std::os::unix::net::UnixStream::pair()?;
    sig_r.set_nonblocking(true)?;
    sig_w.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(libc::SIGCHLD, sig_w)?;
    let mut sig_r = mio::net::UnixStream::from_std(sig_r);
    poll.registry()
        .register(&mut sig_r, SIGCHLD, Interest::READABLE)?;
    let sandbox = &agents.sandbox;
    let cgroups = Cgroups::detect(sandbox.cgroups, sandbox.cgroup_v2_root.as_deref());
    log_cgroups(&cgroups);
    let _ = agents.cgroups.set(cgroups.clone());
    let _ = agents.handle.set(Handle {
        tx,
        waker: waker.clone(),
    });
    let log_dir = paths.state_dir.join("agents");
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        log::warn!("cannot create {}: {e}", log_dir.display());
    }
    let socket = std::fs::canonicalize(&paths.socket).unwrap_or(paths.socket);
    let agent_socket = paths.agent_socket;
    let mut sup = Supervisor {
        kernel,
        agents,
        poll,
        rx,
        sig_r,
        cgroups,
        log_dir,
        socket,
        agent_socket,
        runtimes: HashMap::new(),
        pipes: HashMap::new(),
        next_token: FIRST_PIPE,
        busy_logs: Vec::new(),
        cgroup_gc: Vec::new(),
        shutdown: None,
        started: Instant::now(),
        waker,
        after_commit: Vec::new(),
    };
    std::thread::Builder::new()
        .name("clove-supervisor".into())
        .spawn(move || sup.run())
}

fn log_cgroups(cgroups: &Cgroups) {
    match &cgroups.backend {
        cgroup::Backend::Off(reason) => log::warn!("agent limits will use rlimits: {reason}"),
        b => log::info!(
            "agent cgroups: {} ({})",
            cgroups.version().unwrap_or("?"),
            match b {
                cgroup::Backend::V1(d) => d
                    .iter()
                    .map(|(c, p)| format!("{c}={}", p.display()))
                    .collect::<Vec<_>>()
                    .join(" "),
                cgroup::Backend::V2 { dir, .. } => dir.display().to_string(),
                cgroup::Backend::Off(_) => String::new(),
            }
        ),
    }
}

/// Which pipe a token belongs to.
#[derive(Clone, Copy)]
enum PipeKind {
    Log,
    Report,
}

struct Pipe {
    agent: CallerId,
    kind: PipeKind,
    fd: OwnedFd,
    /// Report bytes not yet ending in a newline.
    partial: Vec<u8>,
}

/// A start in progress: waiting for the launcher's report.
struct Starting {
    responder: Option<Responder>,
    deadline: Instant,
    isolation: Option<NsReport>,
    error: Option<String>,
}

/// A stop in progress.
struct Stopping {
    by: Option<CallerId>,
    shutdown: bool,
    sigkill_at: Option<Instant>,
    responders: Vec<Responder>,
    /// A KILL forgot the (persistent) agent: the replies also wait for that commit.
    forgotten: Option<persist::Ack>,
}

/// The supervisor's private state of one agent.
struct Runtime {
    id: CallerId,
    spec: Arc<AgentSpec>,
    restart: RestartConfig,
    tracker: RestartTracker,
    child: Option<Child>,
    starting: Option<Starting>,
    stopping: Option<Stopping>,
    restart_at: Option<Instant>,
    log: LogFile,
    cgroup: Option<AgentCgroup>,
    /// Requested limits the cgroup did not take (applied as rlimits).
    rlimit_as: Option<u64>,
    rlimit_nproc: Option<u64>,
    /// The isolation block of the SPAWN reply (cgroup part fixed at creation).
    limits_report: Value,
    degraded: Vec<String>,
    oom_before: u64,
    frozen_by_cgroup: bool,
    /// When the previous incarnation was reaped (for the respawn latency of a restart).
    exited_at: Option<Instant>,
    /// Started again from its saved spec at daemon start.
    restored: bool,
}

struct Supervisor {
    kernel: Arc<Kernel>,
    agents: Arc<Agents>,
    poll: Poll,
    rx: Receiver<Command>,
    sig_r: mio::net::UnixStream,
    cgroups: Cgroups,
    log_dir: PathBuf,
    socket: PathBuf,
    /// See [`Paths::agent_socket`].
    agent_socket: Option<PathBuf>,
    runtimes: HashMap<CallerId, Runtime>,
    pipes: HashMap<Token, Pipe>,
    next_token: usize,
    /// Log pipes with more output waiting (edge-triggered readiness: read them next turn).
    busy_logs: Vec<Token>,
    /// Cgroups of stopped agents that could not be removed yet (processes still exiting).
    cgroup_gc: Vec<AgentCgroup>,
    shutdown: Option<(bool, Sender<()>)>,
    started: Instant,
    /// Wakes our own poll (store completions use it).
    waker: Arc<Waker>,
    /// Replies waiting for a durable write to commit.
    after_commit: Vec<AfterCommit>,
}

/// A reply held until the state store has committed a write.
struct AfterCommit {
    ack: persist::Ack,
    then: Then,
}

enum Then {
    /// The SPAWN reply of a persistent agent, sent once its spec is saved. If it cannot be
    /// saved the agent is stopped and SPAWN fails.
    Spawned {
        id: CallerId,
        responder: Responder,
        reply: Vec<u8>,
    },
    /// Replies (KILL of a persistent agent, SET_PERMS on one) sent once the change is durable.
    Reply {
        id: CallerId,
        responders: Vec<Responder>,
        reply: Vec<u8>,
        /// What the error says happened when the write failed ("agent 7 <failure> (...)").
        failure: &'static str,
    },
}

impl Supervisor {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("supervisor poll failed: {e}");
                break;
            }
            let mut sigchld = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    SIGCHLD => sigchld = true,
                    t => self.pipe_ready(t),
                }
            }
            self.drain_commands();
            if sigchld {
                self.drain_sigchld();
            }
            // Always look for exits: a report EOF or a command may have raced with SIGCHLD.
            self.reap();
            self.run_timers();
            self.flush_after_commit();
            for t in std::mem::take(&mut self.busy_logs) {
                self.pipe_ready(t);
            }
            if let Some((stop, _)) = &self.shutdown {
                let live = self.runtimes.values().any(|r| r.child.is_some());
                if !*stop || !live {
                    break;
                }
            }
        }
        self.finish();
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.busy_logs.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for r in self.runtimes.values() {
            if let Some(t) = r.restart_at {
                consider(t);
            }
            if let Some(s) = &r.starting {
                consider(s.deadline);
            }
            if let Some(t) = r.stopping.as_ref().and_then(|s| s.sigkill_at) {
                consider(t);
            }
        }
        next.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Spawn { req, id, responder } => self.spawn(*req, id, responder),
                Command::Start { spec, id, stale } => {
                    if let Some(cg) = stale {
                        self.cgroup_gc.push(cg);
                    }
                    self.start_spec(*spec, id, None, true);
                }
                Command::Resave {
                    id,
                    responder,
                    reply,
                } => self.resave(id, responder, reply),
                Command::Kill { id, by, responder } => self.kill(id, by, responder),
                Command::Pause { id, responder } => self.pause(id, true, responder),
                Command::Resume { id, responder } => self.pause(id, false, responder),
                Command::Shutdown { stop, done } => self.begin_shutdown(stop, done),
            }
        }
    }

    fn drain_sigchld(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            match self.sig_r.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.reap_orphans();
        self.collect_cgroups();
    }

    /// Reaps zombies re-parented to the daemon (children of its main thread).
    fn reap_orphans(&mut self) {
        let me = std::process::id();
        let Ok(text) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
            return;
        };
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if self
                .runtimes
                .values()
                .any(|r| r.child.as_ref().is_some_and(|c| c.id() as i32 == pid))
            {
                continue;
            }
            let mut status = 0;
            // SAFETY: waitpid on a specific pid that is our (re-parented) child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                log::debug!("reaped orphaned agent descendant pid={pid}");
            }
        }
    }

    fn collect_cgroups(&mut self) {
        self.cgroup_gc.retain(|cg| !cg.remove());
    }

    fn new_token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn register_pipe(&mut self, agent: CallerId, kind: PipeKind, fd: OwnedFd) {
        if let Err(e) = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        ) {
            log::warn!("agent={agent}: cannot make pipe non-blocking: {e}");
        }
        let token = self.new_token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        {
            log::warn!("agent={agent}: cannot watch pipe: {e}");
            return;
        }
        self.pipes.insert(
            token,
            Pipe {
                agent,
                kind,
                fd,
                partial: Vec::new(),
            },
        );
        // Output may already be waiting.
        self.busy_logs.push(token);
    }

    fn close_pipe(&mut self, token: Token) -> Option<Pipe> {
        let p = self.pipes.remove(&token)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&p.fd.as_raw_fd()));
        Some(p)
    }

    /// Reads what a pipe has. Log output goes to the agent's log file; report lines update the
    /// start in progress; end-of-file on the report pipe means the interpreter was exec'd.
    fn pipe_ready(&mut self, token: Token) {
        let mut buf = vec![0u8; LOG_CHUNK];
        let Some(pipe) = self.pipes.get_mut(&token) else {
            return;
        };
        let (agent, kind) = (pipe.agent, pipe.kind);
        let mut eof = false;
        let mut got = 0usize;
        loop {
            match nix::unistd::read(&pipe.fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    got += n;
                    match kind {
                        PipeKind::Log => {
                            if let Some(r) = self.runtimes.get_mut(&agent) {
                                r.log.write(&buf[..n]);
                            }
                            if got >= LOG_CHUNK {
                                // Fair share used: come back after the others.
                                self.busy_logs.push(token);
                                return;
                            }
                        }
                        PipeKind::Report => {
                            pipe.partial.extend_from_slice(&buf[..n]);
                            if pipe.partial.len() > MAX_REPORT {
                                pipe.partial.truncate(MAX_REPORT);
                            }
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if let PipeKind::Report = kind {
            let data = std::mem::take(&mut pipe.partial);
            let (lines, rest) = match data.iter().rposition(|b| *b == b'\n') {
                Some(i) => (data[..=i].to_vec(), data[i + 1..].to_vec()),
                None => (Vec::new(), data),
            };
            pipe.partial = rest;
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                self.report_line(agent, line);
            }
            if eof {
                self.close_pipe(token);
                self.exec_done(agent);
            }
        } else if eof {
            self.close_pipe(token);
        }
    }

    fn report_line(&mut self, agent: CallerId, line: &[u8]) {
        let Some(s) = self
            .runtimes
            .get_mut(&agent)
            .and_then(|r| r.starting.as_mut())
        else {
            return;
        };
        match serde_json::from_slice::<Report>(line) {
            Ok(Report::Isolation(ns)) => s.isolation = Some(ns),
            Ok(Report::Error(e)) => s.error = Some(e),
            Err(e) => {
                s.error = Some(format!(
                    "launcher sent an unreadable report ({e}): {}",
                    String::from_utf8_lossy(line)
                ))
            }
        }
    }

    // ---- spawning ---------------------------------------------------------------------

    fn spawn(&mut self, req: spawn::SpawnRequest, id: CallerId, responder: Responder) {
        let agent_user = self.agents.sandbox.agent_creds;
        match spawn::resolve(
            req,
            &self.agents.config,
            self.kernel.config.max_name_bytes,
            agent_user,
        ) {
            Ok(spec) => self.start_spec(spec, id, Some(responder), false),
            Err(e) => responder.error(e),
        }
    }

    /// Starts a new agent from a checked spec. Without a responder (a persistent agent
    /// `restored` at daemon start), problems are logged, and a restored agent that cannot be
    /// started stays in LIST as FAILED (so that KILL can forget it).
    fn start_spec(
        &mut self,
        spec: AgentSpec,
        id: CallerId,
        responder: Option<Responder>,
        restored: bool,
    ) {
        let k = self.kernel.clone();
        let agents = self.agents.clone();
        let log_path = self.log_dir.join(format!("{}.log", spec.name));
        let fail = |responder: Option<Responder>, msg: String| match responder {
            Some(r) => r.error(msg),
            None => {
                log::error!("cannot start agent {} (id {id}): {msg}", spec.name);
                if restored {
                    keep_unstartable(&k, &agents, id, &spec, &log_path, &msg);
                }
            }
        };
        if self.shutdown.is_some() {
            return fail(responder, "the daemon is shutting down".into());
        }
        {
            let t = agents.table.lock();
            if let Some(a) = t.find_name(&spec.name)
                && !a.status.is_final()
            {
                let msg = format!(
                    "an agent named {:?} is already {} (id {})",
                    spec.name,
                    a.status.as_str(),
                    a.id
                );
                drop(t);
                return fail(responder, msg);
            }
            if t.live_count() >= agents.config.max_agents {
                drop(t);
                return fail(
                    responder,
                    format!(
                        "too many agents: the daemon runs at most {} (agents.max_agents)",
                        agents.config.max_agents
                    ),
                );
            }
            // Persistent agents stay known while stopped; bound them like live ones.
            let max = agents.config.max_agents;
            if spec.persist && !restored && t.agents.values().filter(|a| a.persisted).count() >= max
            {
                drop(t);
                return fail(
                    responder,
                    format!(
                        "too many persistent agents: at most {max} (agents.max_agents); KILL one to forget it"
                    ),
                );
            }
        }
        let require = agents.sandbox.require;
        // Cgroup first: its outcome decides what rlimits must cover.
        let limits = spec.limits;
        let mut degraded = Vec::new();
        let leaf = format!("{}-{id}", spec.name);
        let cg = match self.cgroups.create(&leaf, &limits) {
            Ok(cg) => Some(cg),
            Err(e) => {
                if require && !limits.is_empty() {
                    return fail(
                        responder,
                        format!(
                            "sandbox requirement not met: cannot apply limits with cgroups: {e}"
                        ),
                    );
                }
                if !limits.is_empty() {
                    degraded.push(format!("no cgroup: {e}"));
                }
                None
            }
        };
        let applied: Vec<String> = cg.as_ref().map(|c| c.applied.clone()).unwrap_or_default();
        let is_applied = |n: &str| applied.iter().any(|a| a == n);
        let mut lim = serde_json::Map::new();
        let (mut rlimit_as, mut rlimit_nproc) = (None, None);
        let mut unapplied = Vec::new();
        for (name, value) in [
            ("memory", limits.memory),
            ("max_pids", limits.max_pids),
            ("cpu_quota", limits.cpu_quota),
            ("cpu_shares", limits.cpu_shares),
        ] {
            let Some(v) = value else { continue };
            let via = if is_applied(name) {
                "cgroup"
            } else if name == "memory" {
                rlimit_as = Some(v);
                "rlimit"
            } else if name == "max_pids" {
                rlimit_nproc = Some(v);
                "rlimit"
            } else {
                unapplied.push(name);
                "not applied"
            };
            lim.insert(name.into(), json!({"value": v, "via": via}));
        }
        if require && (rlimit_as.is_some() || rlimit_nproc.is_some() || !unapplied.is_empty()) {
            if let Some(cg) = &cg {
                cg.remove();
            }
            return fail(
                responder,
                "sandbox requirement not met: some limits cannot be applied through cgroups on this machine"
                    .into(),
            );
        }
        if rlimit_as.is_some() {
            degraded.push("memory limited by RLIMIT_AS (address space), not a cgroup".into());
        }
        if rlimit_nproc.is_some() {
            degraded.push(
                "max_pids limited by RLIMIT_NPROC, which counts all processes of the user".into(),
            );
        }
        if !unapplied.is_empty() {
            degraded.push(format!("not applied: {}", unapplied.join(", ")));
        }
        if !spec.sandboxed && !spec.network {
            if require {
                if let Some(cg) = &cg {
                    cg.remove();
                }
                return fail(
                    responder,
                    "sandbox requirement not met: network: false needs sandboxed: true".into(),
                );
            }
            degraded.push("network: false has no effect without the sandbox".into());
        }
        let limits_report = json!({
            "cgroup": cg.as_ref().map(|c| json!({
                "version": format!("v{}", c.version),
                "controllers": c.dirs.iter().map(|(n, _)| n.clone()).filter(|n| !n.is_empty()).collect::<Vec<_>>(),
                "paths": c.dirs.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
            })),
            "limits": lim,
        });
        // The agent's identity: a caller record and its name. A restored agent keeps the name
        // it had (attached at start); a new one gets its spawn name, recorded durably.
        let has_name = restored && k.ipc.lock().name_of(id).is_some();
        if !has_name {
            let registered = k.ipc.lock().register(id, &spec.name);
            match registered {
                Ok(()) => k.store.submit_agent_name(
                    &spec.name,
                    id,
                    persist::logged(format!("agent={id}: cannot save its name")),
                ),
                Err(e) if restored => log::warn!("agent={id}: starts without a name: {e}"),
                Err(e) => {
                    if let Some(cg) = &cg {
                        cg.remove();
                    }
                    return fail(responder, e);
                }
            }
        }
        k.add_agent(id, spec.permissions.clone());
        let spec = Arc::new(spec);
        let cfg = &agents.config;
        let restart = RestartConfig {
            policy: spec.restart_policy,
            max_restarts: spec.max_restarts,
            window_ms: spec.restart_window_ms,
            backoff_initial_ms: cfg.backoff_initial.as_millis() as u64,
            backoff_cap_ms: cfg.backoff_cap.as_millis() as u64,
        };
        {
            let mut t = agents.table.lock();
            // A stopped agent of the same name is replaced (and forgotten, if persistent).
            let old: Vec<CallerId> = t
                .agents
                .values()
                .filter(|a| a.spec.name == spec.name && a.id != id)
                .map(|a| a.id)
                .collect();
            for o in old {
                if t.agents.remove(&o).is_some_and(|a| a.persisted) {
                    log::info!("agent={o}: replaced by agent {id} of the same name; forgotten");
                    k.store.submit_forget_agent(
                        o,
                        persist::logged(format!("agent={o}: cannot forget it")),
                    );
                }
            }
            t.agents.insert(
                id,
                AgentInfo {
                    id,
                    spec: spec.clone(),
                    status: Status::Starting,
                    pid: None,
                    main_pid: None,
                    started_at: None,
                    restarts: 0,
                    last_exit: None,
                    isolation: Value::Null,
                    cgroup: cg.clone(),
                    log_path: log_path.clone(),
                    persisted: restored,
                    confinement: None,
                    failure: None,
                },
            );
        }
        let rt = Runtime {
            id,
            spec,
            restart,
            tracker: RestartTracker::new(),
            child: None,
            starting: None,
            stopping: None,
            restart_at: None,
            log: LogFile::open(log_path, cfg.log_max_bytes, cfg.log_files),
            oom_before: cg.as_ref().map_or(0, |c| c.oom_kills()),
            cgroup: cg,
            rlimit_as,
            rlimit_nproc,
            limits_report,
            degraded,
            frozen_by_cgroup: false,
            exited_at: None,
            restored,
        };
        self.runtimes.insert(id, rt);
        self.start_incarnation(id, responder);
    }

    /// Starts (or restarts) an agent's process. The reply to SPAWN waits for the launcher.
    fn start_incarnation(&mut self, id: CallerId, responder: Option<Responder>) {
        let require = self.agents.sandbox.require;
        let timeout = self.agents.config.spawn_timeout;
        let creds = match self.runtimes.get(&id) {
            Some(rt) => self.agent_creds(&rt.spec),
            None => return,
        };
        let Some(rt) = self.runtimes.get_mut(&id) else {
            return;
        };
        rt.restart_at = None;
        rt.frozen_by_cgroup = false;
        let started = spawn::start(&spawn::Incarnation {
            spec: &rt.spec,
            id,
            socket: &self.socket,
            agent_socket: self.agent_socket.as_deref().filter(|_| creds.is_some()),
            cgroup: rt.cgroup.as_ref(),
            require,
            rlimit_as: rt.rlimit_as,
            rlimit_nproc: rt.rlimit_nproc,
            die_with_daemon: self.agents.config.on_shutdown == config::OnShutdown::Stop,
            creds,
        });
        match started {
            Ok(s) => {
                let pid = s.child.id() as i32;
                rt.log.note(&format!(
                    "starting {} {} (launcher pid {pid}, restart {})",
                    rt.spec.interpreter.display(),
                    rt.spec.script.display(),
                    rt.tracker.total
                ));
                rt.child = Some(s.child);
                rt.starting = Some(Starting {
                    responder,
                    deadline: Instant::now() + timeout,
                    isolation: None,
                    error: None,
                });
                {
                    let mut t = self.agents.table.lock();
                    // The launcher leads the agent's session (it calls setsid first thing).
                    self.kernel.agent_process_started(pid, id);
                    if let Some(a) = t.agents.get_mut(&id) {
                        set_status(a, Status::Starting);
                        a.pid = Some(pid);
                        a.main_pid = None;
                        a.confinement = None;
                    }
                }
                // Recorded: the launcher may go on.
                if let Err(e) = spawn::release(&s.control, &s.spec) {
                    log::warn!("agent={id}: cannot send the launcher its spec: {e}");
                }
                self.register_pipe(id, PipeKind::Log, s.log);
                self.register_pipe(id, PipeKind::Report, OwnedFd::from(s.control));
                // A persistent agent's record carries the stamp of its running process, so a
                // daemon started after a crash can find (and stop) this copy.
                if self.is_persisted(id)
                    && let Some(rec) = self.record_of(id)
                {
                    self.kernel.store.submit_agent_spec(
                        rec,
                        persist::logged(format!("agent={id}: cannot save its record")),
                    );
                }
            }
            Err(e) => {
                log::warn!("agent={id}: {e}");
                rt.log.note(&format!("cannot start: {e}"));
                if let Some(r) = responder {
                    r.error(&e);
                    self.set_failure(id, format!("could not start: {e}"));
                    self.forget_agent(id, Status::Failed, None);
                } else {
                    // A restart that cannot even fork counts as a failed run.
                    let facts = ExitFacts {
                        code: Some(launch::EXIT_SETUP),
                        signal: None,
                        requested: false,
                    };
                    self.after_exit(
                        id,
                        facts,
                        ExitInfo {
                            exit_code: launch::EXIT_SETUP,
                            signal: None,
                            reason: "spawn_failed",
                            killed_by: None,
                        },
                    );
                }
            }
        }
    }

    /// The report pipe closed: the interpreter runs (or the launcher gave up).
    fn exec_done(&mut self, id: CallerId) {
        let creds = self.agents.sandbox.agent_creds;
        let Some(rt) = self.runtimes.get_mut(&id) else {
            return;
        };
        let Some(st) = rt.starting.take() else {
            return;
        };
        if let Some(err) = st.error {
            // The launcher exits now; the reap reports the failure. Keep the error for it.
            rt.starting = Some(Starting {
                error: Some(err),
                ..st
            });
            return;
        }
        let Some(pid) = rt.child.as_ref().map(|c| c.id() as i32) else {
            // Already reaped: keep the start for the exit handling, which answers SPAWN.
            rt.starting = Some(st);
            return;
        };
        let ns = st.isolation.unwrap_or_default();
        let forked = ns.namespaces.iter().any(|n| n == "pid");
        let main_pid = if forked {
            first_child(pid).and_then(first_child)
        } else {
            Some(pid)
        };
        let isolation = isolation_report(rt, &ns, creds);
        let restarts = rt.tracker.total;
        let spec = rt.spec.clone();
        // A KILL (or shutdown) that arrived while it was starting keeps it STOPPING.
        let stopping = rt.stopping.is_some();
        let respawn = rt.exited_at.take().map(|t| t.elapsed());
        let restored = rt.restored && restarts == 0;
        let pid_ns = if forked {
            self.register_pid_ns(id, pid)
        } else {
            None
        };
        let confinement = self.confinement(id, pid, pid_ns, &ns);
        {
            let mut t = self.agents.table.lock();
            if let Some(a) = t.agents.get_mut(&id) {
                a.main_pid = main_pid;
                a.isolation = isolation.clone();
                a.started_at = Some(Instant::now());
                a.restarts = restarts;
                a.confinement = confinement;
                if !stopping {
                    set_status(a, Status::Running);
                }
            }
        }
        let shown_pid = main_pid.unwrap_or(pid);
        let mut data = json!({
            "agent_id": id,
            "name": spec.name,
            "pid": shown_pid,
            "parent_id": spec.parent_id,
            "restart_count": restarts,
        });
        if let Some(d) = respawn {
            // From reaping the previous process to this one's interpreter running (backoff
            // included).
            data["respawn_ms"] = (d.as_secs_f64() * 1000.0).into();
        }
        if restored {
            // The first start of a persistent agent brought back by a daemon start.
            data["restored"] = true.into();
        }
        let launcher = if shown_pid == pid {
            String::new()
        } else {
            format!(" (launcher pid {pid})")
        };
        log::info!(
            "agent={id} name={}: spawned, pid {shown_pid}{launcher}, restart {restarts}",
            spec.name
        );
        if let Some(rt) = self.runtimes.get_mut(&id) {
            // The pid `clove spawn` and `clove agents` show.
            rt.log.note(&format!("running: pid {shown_pid}{launcher}"));
        }
        self.event("AGENT_SPAWNED", id, data, Category::Lifecycle);
        if let Some(r) = st.responder {
            let reply = request::to_bytes(&json!({
                "success": true,
                "id": id,
                "agent_id": id,
                "name": spec.name,
                "pid": shown_pid,
                "supervisor_pid": pid,
                "status": if stopping { "stopping" } else { "running" },
                "restart_policy": spec.restart_policy.as_str(),
                "max_restarts": spec.max_restarts,
                "restart_window": spec.restart_window_ms as f64 / 1000.0,
                "persist": spec.persist,
                "level": spec.permissions.level,
                "isolation": isolation,
                "log_path": self.runtimes.get(&id).map(|r| r.log.path().to_path_buf()),
            }));
            self.answer_spawn(id, spec.persist, r, reply);
        }
    }

    /// Sends the SPAWN reply; for a persistent agent, once its spec is saved (an acknowledged
    /// persistent agent comes back after any restart).
    fn answer_spawn(&mut self, id: CallerId, persist: bool, r: Responder, reply: Vec<u8>) {
        if !persist || self.is_persisted(id) {
            return r.reply(&reply);
        }
        let Some(rec) = self.record_of(id) else {
            self.stop_agent(id, None, false);
            return r.error("cannot save the spec of a persistent agent; it is being stopped");
        };
        self.set_persisted(id, true);
        self.save_record_then(
            rec,
            Then::Spawned {
                id,
                responder: r,
                reply,
            },
        );
    }

    /// The user a sandboxed agent runs as when it is not the daemon's (root daemon).
    fn agent_creds(&self, spec: &AgentSpec) -> Option<caps::Creds> {
        if spec.sandboxed {
            self.agents.sandbox.agent_creds
        } else {
            None
        }
    }

    /// Gives the kernel the pid namespace the launcher made for the agent: every process in
    /// it speaks as the agent (no process can leave its pid namespace). Taken from the
    /// launcher's `pid_for_children`: the launcher is our unreaped child, so its pid cannot
    /// name another process here.
    fn register_pid_ns(&self, id: CallerId, launcher: i32) -> Option<NsId> {
        let path = format!("/proc/{launcher}/ns/pid_for_children");
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("agent={id}: cannot open {path}: {e}");
                return None;
            }
        };
        if NsId::of_fd(&file) == NsId::of_path("/proc/self/ns/pid") {
            // The launcher made no pid namespace after all.
            return None;
        }
        self.kernel.agent_pid_ns_started(OwnedFd::from(file), id)
    }

    /// How EXEC runs a command on the agent's behalf: inside its namespaces (when it has a
    /// pid namespace), cgroups and rlimits, with the privileges it gave up given up too.
    fn confinement(
        &self,
        id: CallerId,
        launcher: i32,
        pid_ns: Option<NsId>,
        ns: &NsReport,
    ) -> Option<enter::Confinement> {
        let rt = self.runtimes.get(&id)?;
        let in_userns = ns.namespaces.iter().any(|n| n == "user");
        let root = nix::unistd::geteuid().is_root();
        Some(enter::Confinement {
            launcher,
            pid_ns,
            cgroup_procs: rt
                .cgroup
                .as_ref()
                .map(|c| c.procs_files())
                .unwrap_or_default(),
            rlimit_as: rt.rlimit_as,
            rlimit_nproc: rt.rlimit_nproc,
            sandboxed: rt.spec.sandboxed,
            creds: self.agent_creds(&rt.spec),
            need_bounding: rt.spec.sandboxed && (root || in_userns),
        })
    }

    // ---- exits ------------------------------------------------------------------------

    /// `waitpid(pid, WNOHANG)` for every agent process.
    fn reap(&mut self) {
        let ids: Vec<CallerId> = self
            .runtimes
            .values()
            .filter(|r| r.child.is_some())
            .map(|r| r.id)
            .collect();
        for id in ids {
            let Some(rt) = self.runtimes.get_mut(&id) else {
                continue;
            };
            let Some(child) = rt.child.as_mut() else {
                continue;
            };
            let pid = child.id() as i32;
            if !has_exited(pid) {
                continue;
            }
            // The launcher is a zombie now, so its pid (and process group and session id)
            // cannot be reused: forget it as the agent's session leader and pid namespace,
            // and kill what it left behind, before reaping it.
            self.kernel.agent_process_gone(id);
            if let Some(a) = self.agents.table.lock().agents.get_mut(&id) {
                a.confinement = None;
            }
            signal_group(pid, libc::SIGKILL);
            if let Some(cg) = &rt.cgroup {
                cg.kill_all();
            }
            let status = match child.try_wait() {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                Err(e) => {
                    log::error!("agent={id}: cannot wait for pid {}: {e}", child.id());
                    continue;
                }
            };
            // Whatever the launcher reported before exiting is read while its process is
            // still known: an interpreter that was exec'd and exited at once has started (its
            // SPAWN succeeds), and its exit is then handled like any other.
            let report_tokens: Vec<Token> = self
                .pipes
                .iter()
                .filter(|(_, p)| p.agent == id && matches!(p.kind, PipeKind::Report))
                .map(|(t, _)| *t)
                .collect();
            for t in report_tokens {
                self.pipe_ready(t);
                self.close_pipe(t);
            }
            if let Some(rt) = self.runtimes.get_mut(&id) {
                rt.child = None;
            }
            self.exited(id, pid, status);
        }
    }

    fn exited(&mut self, id: CallerId, pid: i32, status: std::process::ExitStatus) {
        // The pid people were shown (SPAWN, LIST, the log's "running: pid N"): the
        // interpreter's, when the launcher is a sandbox's.
        let shown = self
            .agents
            .table
            .lock()
            .get(id)
            .and_then(|a| a.main_pid)
            .unwrap_or(pid);
        let Some(rt) = self.runtimes.get_mut(&id) else {
            return;
        };
        let oom_now = rt.cgroup.as_ref().map_or(0, |c| c.oom_kills());
        let oom = oom_now > rt.oom_before;
        rt.oom_before = oom_now;
        let signal = status.signal();
        let code = status.code();
        let exit_code = code.unwrap_or_else(|| -signal.unwrap_or(0));
        let stopping = rt.stopping.take();
        let starting = rt.starting.take();
        let reason = match (&stopping, oom, signal) {
            (Some(s), _, _) if s.shutdown => "shutdown",
            (Some(_), _, _) => "killed",
            (None, true, _) => "oom",
            (None, false, Some(_)) => "signaled",
            _ if starting.as_ref().is_some_and(|s| s.error.is_some()) => "spawn_failed",
            _ => "exited",
        };
        let info = ExitInfo {
            exit_code,
            signal,
            reason,
            killed_by: stopping.as_ref().and_then(|s| s.by),
        };
        rt.exited_at = Some(Instant::now());
        rt.log.note(&format!(
            "pid {shown} exited: {reason}, exit code {exit_code}{}",
            signal.map(|s| format!(", signal {s}")).unwrap_or_default()
        ));
        log_exit(id, &rt.spec.name, shown, &info);
        self.kernel.agent_process_gone(id);
        // A first start that failed answers SPAWN with the launcher's error and is forgotten.
        if let Some(st) = starting
            && let Some(r) = st.responder
        {
            let why = st.error.unwrap_or_else(|| {
                format!("the agent exited while starting (exit code {exit_code})")
            });
            r.error(&why);
            self.set_failure(id, format!("could not start: {why}"));
            self.forget_agent(id, Status::Failed, Some(info));
            return;
        }
        let mut data = json!({
            "agent_id": id,
            "name": self.runtimes.get(&id).map(|r| r.spec.name.clone()),
            "exit_code": exit_code,
            "reason": reason,
        });
        if let Some(s) = signal {
            data["signal"] = s.into();
            data["signal_name"] = signal_name(s).into();
        }
        if let Some(by) = info.killed_by {
            data["killed_by"] = by.into();
        }
        if oom {
            data["oom_killed"] = true.into();
        }
        self.event("AGENT_EXITED", id, data.clone(), Category::Lifecycle);
        if oom {
            self.event(
                "RESOURCE_WARNING",
                id,
                json!({"agent_id": id, "kind": "oom_kill", "name": data["name"]}),
                Category::Resource,
            );
        }
        let facts = ExitFacts {
            code,
            signal,
            requested: stopping.is_some(),
        };
        let (responders, forgotten) = stopping
            .map(|s| (s.responders, s.forgotten))
            .unwrap_or_default();
        self.after_exit(id, facts, info);
        let reply = request::to_bytes(&json!({
            "success": true, "killed": true, "agent_id": id, "exit_code": exit_code,
        }));
        self.reply_after(forgotten, id, responders, reply);
    }

    /// Applies the restart policy after an exit.
    fn after_exit(&mut self, id: CallerId, facts: ExitFacts, info: ExitInfo) {
        let now_ms = self.now_ms();
        let shutting_down = self.shutdown.is_some();
        let Some(rt) = self.runtimes.get_mut(&id) else {
            return;
        };
        let facts = ExitFacts {
            requested: facts.requested || shutting_down,
            ..facts
        };
        let decision = rt.tracker.decide(&rt.restart, &facts, now_ms);
        let name = rt.spec.name.clone();
        let exit_code = info.exit_code;
        match decision {
            Decision::Stop => self.forget_agent(id, Status::Exited, Some(info)),
            Decision::Escalate { restart_count } => {
                let why = format!(
                    "gave up after {restart_count} restarts within {}s (max_restarts {}); \
                     last exit: {}",
                    rt.restart.window_ms as f64 / 1000.0,
                    rt.restart.max_restarts,
                    exit_text(&info)
                );
                log::warn!("agent={id} name={name}: FAILED: {why}");
                self.set_failure(id, why);
                self.event(
                    "AGENT_ESCALATED",
                    id,
                    json!({"agent_id": id, "agent_name": name, "name": name,
                        "restart_count": restart_count, "exit_code": exit_code}),
                    Category::Lifecycle,
                );
                self.forget_agent(id, Status::Failed, Some(info));
            }
            Decision::Restart {
                delay_ms,
                restart_count,
                ..
            } => {
                log::info!(
                    "agent={id} name={name}: restarting in {delay_ms} ms (restart {restart_count} \
                     of at most {} within {}s)",
                    rt.restart.max_restarts,
                    rt.restart.window_ms as f64 / 1000.0
                );
                rt.restart_at = Some(Instant::now() + Duration::from_millis(delay_ms));
                {
                    let mut t = self.agents.table.lock();
                    if let Some(a) = t.agents.get_mut(&id) {
                        set_status(a, Status::Restarting);
                        a.last_exit = Some(info);
                        a.restarts = restart_count;
                        a.main_pid = None;
                        a.pid = None;
                        a.confinement = None;
                    }
                }
                self.event(
                    "AGENT_RESTARTING",
                    id,
                    json!({"agent_id": id, "agent_name": name, "name": name,
                        "restart_count": restart_count, "exit_code": exit_code,
                        "delay_ms": delay_ms}),
                    Category::Lifecycle,
                );
            }
        }
    }

    /// The agent is stopped for good: its name, mailbox and caller record go, its cgroup is
    /// removed, and LIST keeps it (bounded by `agents.keep_exited`).
    fn forget_agent(&mut self, id: CallerId, status: Status, info: Option<ExitInfo>) {
        // What the store keeps of it (names, keys) goes too, unless it is persistent (it comes
        // back at the next start) or the daemon is stopping (the next start releases what does
        // not come back).
        if self.shutdown.is_none() && !self.is_persisted(id) {
            self.kernel
                .store
                .submit_forget_agent(id, persist::logged(format!("agent={id}: cannot forget it")));
        }
        // What the agent wrote last goes into its log before the closing note.
        let logs: Vec<Token> = self
            .pipes
            .iter()
            .filter(|(_, p)| p.agent == id && matches!(p.kind, PipeKind::Log))
            .map(|(t, _)| *t)
            .collect();
        for t in logs {
            self.pipe_ready(t);
        }
        let mut log = None;
        if let Some(rt) = self.runtimes.remove(&id) {
            log = Some(rt.log);
            if let Some(cg) = rt.cgroup {
                cg.kill_all();
                if !cg.remove() {
                    self.cgroup_gc.push(cg);
                }
            }
        }
        let tokens: Vec<Token> = self
            .pipes
            .iter()
            .filter(|(_, p)| p.agent == id && matches!(p.kind, PipeKind::Report))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.close_pipe(t);
        }
        self.kernel.remove_agent(id);
        let keep = self.agents.config.keep_exited;
        let mut t = self.agents.table.lock();
        self.kernel.agent_process_gone(id);
        if let Some(a) = t.agents.get_mut(&id) {
            set_status(a, status);
            a.pid = None;
            a.main_pid = None;
            a.confinement = None;
            if info.is_some() {
                a.last_exit = info;
            }
        }
        let stopped: Vec<CallerId> = t
            .agents
            .values()
            .filter(|a| a.status.is_final() && !a.persisted)
            .map(|a| a.id)
            .collect();
        if stopped.len() > keep {
            for old in &stopped[..stopped.len() - keep] {
                t.agents.remove(old);
            }
        }
        drop(t);
        // Written once LIST says so: `clove logs -f`, woken by this line, then sees the end.
        if let Some(mut log) = log {
            log.note(&format!("stopped for good: {}", status.as_str()));
        }
    }

    /// Records why an agent is (about to be) FAILED, for LIST and `clove agents`.
    fn set_failure(&self, id: CallerId, why: String) {
        if let Some(a) = self.agents.table.lock().agents.get_mut(&id) {
            a.failure = Some(why);
        }
    }

    // ---- timers -----------------------------------------------------------------------

    fn run_timers(&mut self) {
        let now = Instant::now();
        let mut restarts = Vec::new();
        let mut timeouts = Vec::new();
        for r in self.runtimes.values_mut() {
            if r.restart_at.is_some_and(|t| t <= now) {
                r.restart_at = None;
                restarts.push(r.id);
            }
            if r.starting.as_ref().is_some_and(|s| s.deadline <= now) {
                timeouts.push(r.id);
            }
            if let Some(s) = r.stopping.as_mut()
                && s.sigkill_at.is_some_and(|t| t <= now)
            {
                s.sigkill_at = None;
                if let Some(c) = &r.child {
                    log::info!("agent={}: grace over, sending SIGKILL", r.id);
                    signal_group(c.id() as i32, libc::SIGKILL);
                }
                if let Some(cg) = &r.cgroup {
                    cg.kill_all();
                }
            }
        }
        for id in restarts {
            self.start_incarnation(id, None);
        }
        for id in timeouts {
            if let Some(r) = self.runtimes.get_mut(&id)
                && let Some(s) = r.starting.as_mut()
            {
                s.error = Some(format!(
                    "the agent did not start within {:?} (agents.spawn_timeout_ms)",
                    self.agents.config.spawn_timeout
                ));
                s.deadline = now + Duration::from_secs(3600);
                if let Some(c) = &r.child {
                    signal_group(c.id() as i32, libc::SIGKILL);
                }
            }
        }
    }

    // ---- kill, pause, resume ----------------------------------------------------------

    fn kill(&mut self, id: CallerId, by: CallerId, responder: Responder) {
        let status = self.agents.table.lock().get(id).map(|a| a.status);
        // KILL forgets a persistent agent. Its record goes first, so that it does not come
        // back even if the daemon dies before the agent has exited; the reply waits for that.
        let forgotten = (status.is_some() && self.is_persisted(id)).then(|| {
            self.set_persisted(id, false);
            let ack = persist::Ack::default();
            self.kernel
                .store
                .submit_forget_agent(id, ack.completion(self.waker.clone()));
            ack
        });
        match status {
            None => responder.error(format!("no agent has id {id}")),
            Some(s) if s.is_final() => match forgotten {
                Some(ack) => self.after_commit.push(AfterCommit {
                    ack,
                    then: Then::Reply {
                        id,
                        responders: vec![responder],
                        reply: request::to_bytes(&json!({"success": true, "killed": false,
                            "forgotten": true, "agent_id": id, "state": s.as_str()})),
                        failure: "is stopped, but could not be forgotten",
                    },
                }),
                None => responder.error(format!("agent {id} is not running ({})", s.as_str())),
            },
            Some(Status::Restarting) => {
                // No process runs: its exit was reported (AGENT_EXITED, AGENT_RESTARTING) when
                // it happened, so no second AGENT_EXITED. The restart is called off; the audit
                // log records who did it, the reply says so, and LIST keeps the real last exit.
                let name = self.runtimes.get(&id).map(|r| r.spec.name.clone());
                self.kernel.audit.with(|log| {
                    log.append(
                        Category::Lifecycle,
                        "AGENT_RESTART_CANCELLED",
                        id,
                        name.clone(),
                        true,
                        json!({"agent_id": id, "name": name, "killed_by": by}),
                    )
                });
                self.forget_agent(id, Status::Exited, None);
                let reply = request::to_bytes(&json!({"success": true, "killed": true,
                    "restart_cancelled": true, "agent_id": id, "state": "EXITED"}));
                self.reply_after(forgotten, id, vec![responder], reply);
            }
            Some(_) => {
                self.stop_agent(id, Some(by), false);
                match self.runtimes.get_mut(&id).and_then(|r| r.stopping.as_mut()) {
                    Some(s) => {
                        s.responders.push(responder);
                        if forgotten.is_some() {
                            s.forgotten = forgotten;
                        }
                    }
                    None => {
                        let reply = request::to_bytes(
                            &json!({"success": true, "killed": true, "agent_id": id}),
                        );
                        self.reply_after(forgotten, id, vec![responder], reply);
                    }
                }
            }
        }
    }

    // ---- persistence ------------------------------------------------------------------

    fn is_persisted(&self, id: CallerId) -> bool {
        self.agents
            .table
            .lock()
            .get(id)
            .is_some_and(|a| a.persisted)
    }

    fn set_persisted(&self, id: CallerId, persisted: bool) {
        if let Some(a) = self.agents.table.lock().agents.get_mut(&id) {
            a.persisted = persisted;
        }
    }

    /// Saves an agent's record and holds `then` until the store has committed it.
    fn save_record_then(&mut self, rec: crate::store::AgentSpecRecord, then: Then) {
        let ack = persist::Ack::default();
        self.kernel
            .store
            .submit_agent_spec(rec, ack.completion(self.waker.clone()));
        self.after_commit.push(AfterCommit { ack, then });
    }

    /// The record to save for a running agent: its spec with its current permissions (a
    /// lowered agent stays lowered after a restart) and the stamp of its process.
    fn record_of(&self, id: CallerId) -> Option<crate::store::AgentSpecRecord> {
        let rt = self.runtimes.get(&id)?;
        let mut spec = (*rt.spec).clone();
        spec.permissions = (*self.kernel.caller(id)?.perms).clone();
        let process = rt
            .child
            .as_ref()
            .and_then(|c| persist::ProcessStamp::of(c.id() as i32, rt.cgroup.as_ref()));
        persist::SavedAgent { spec, process }.to_record(id)
    }

    /// SET_PERMS changed a persistent agent: save its record again before replying.
    fn resave(&mut self, id: CallerId, responder: Responder, reply: Vec<u8>) {
        let rec = if self.is_persisted(id) {
            self.record_of(id)
        } else {
            None
        };
        let Some(rec) = rec else {
            return responder.reply(&reply);
        };
        self.save_record_then(
            rec,
            Then::Reply {
                id,
                responders: vec![responder],
                reply,
                failure: "has its new permissions now, but they could not be saved",
            },
        );
    }

    /// Sends `reply` to `responders` now, or once `ack` is committed.
    fn reply_after(
        &mut self,
        ack: Option<persist::Ack>,
        id: CallerId,
        responders: Vec<Responder>,
        reply: Vec<u8>,
    ) {
        match ack {
            None => {
                for r in responders {
                    r.reply(&reply);
                }
            }
            Some(ack) => self.after_commit.push(AfterCommit {
                ack,
                then: Then::Reply {
                    id,
                    responders,
                    reply,
                    failure: "was stopped, but could not be forgotten",
                },
            }),
        }
    }

    /// Sends the replies whose durable writes are committed (or failed).
    fn flush_after_commit(&mut self) {
        if self.after_commit.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.after_commit)
            .into_iter()
            .partition(|p| p.ack.result().is_some());
        self.after_commit = waiting;
        for p in ready {
            let result = p.ack.result().unwrap_or(Ok(()));
            match (p.then, result) {
                (
                    Then::Spawned {
                        responder, reply, ..
                    },
                    Ok(()),
                ) => responder.reply(&reply),
                (Then::Spawned { id, responder, .. }, Err(e)) => {
                    self.set_persisted(id, false);
                    self.stop_agent(id, None, false);
                    responder.error(format!(
                        "agent {id} started, but its spec could not be saved ({e}), so it would not survive a restart; it is being stopped"
                    ));
                }
                (
                    Then::Reply {
                        responders, reply, ..
                    },
                    Ok(()),
                ) => {
                    for r in responders {
                        r.reply(&reply);
                    }
                }
                (
                    Then::Reply {
                        id,
                        responders,
                        failure,
                        ..
                    },
                    Err(e),
                ) => {
                    for r in responders {
                        r.error(format!(
                            "agent {id} {failure} ({e}); after a daemon restart it may be as before"
                        ));
                    }
                }
            }
        }
    }

    /// SIGTERM to the agent's process group (thawing it if paused); SIGKILL after the grace.
    fn stop_agent(&mut self, id: CallerId, by: Option<CallerId>, shutdown: bool) {
        let grace = self.agents.config.kill_grace;
        let Some(rt) = self.runtimes.get_mut(&id) else {
            return;
        };
        let Some(pid) = rt.child.as_ref().map(|c| c.id() as i32) else {
            return;
        };
        if rt.stopping.is_some() {
            return;
        }
        if grace.is_zero() {
            signal_group(pid, libc::SIGKILL);
            if let Some(cg) = &rt.cgroup {
                cg.kill_all();
            }
        } else {
            signal_group(pid, libc::SIGTERM);
        }
        // A paused agent must run to handle SIGTERM (and a v1-frozen one to die at all).
        if rt.frozen_by_cgroup
            && let Some(cg) = &rt.cgroup
        {
            let _ = cg.freeze(false);
        }
        signal_group(pid, libc::SIGCONT);
        rt.frozen_by_cgroup = false;
        rt.stopping = Some(Stopping {
            by,
            shutdown,
            sigkill_at: (!grace.is_zero()).then(|| Instant::now() + grace),
            responders: Vec::new(),
            forgotten: None,
        });
        let mut t = self.agents.table.lock();
        if let Some(a) = t.agents.get_mut(&id) {
            set_status(a, Status::Stopping);
        }
    }

    fn pause(&mut self, id: CallerId, pause: bool, responder: Responder) {
        let status = self.agents.table.lock().get(id).map(|a| a.status);
        let word = if pause { "paused" } else { "resumed" };
        let ok = |r: Responder| {
            r.reply(&request::to_bytes(
                &json!({"success": true, word: true, "agent_id": id}),
            ))
        };
        match (status, pause) {
            (None, _) => return responder.error(format!("no agent has id {id}")),
            (Some(Status::Paused), true) | (Some(Status::Running), false) => return ok(responder),
            (Some(Status::Running), true) | (Some(Status::Paused), false) => {}
            (Some(s), _) => {
                return responder.error(format!(
                    "agent {id} is {}; only a RUNNING agent can be paused and a PAUSED one resumed",
                    s.as_str()
                ));
            }
        }
        let Some(rt) = self.runtimes.get_mut(&id) else {
            return responder.error(format!("no agent has id {id}"));
        };
        let Some(pid) = rt.child.as_ref().map(|c| c.id() as i32) else {
            return responder.error(format!("agent {id} has no process"));
        };
        let mut how = "signal";
        match (&rt.cgroup, pause) {
            (Some(cg), true) if cg.can_freeze() => match cg.freeze(true) {
                Ok(()) => {
                    rt.frozen_by_cgroup = true;
                    how = "freezer";
                }
                Err(e) => {
                    log::warn!("agent={id}: freezer failed ({e}); using SIGSTOP");
                    signal_group(pid, libc::SIGSTOP);
                }
            },
            (_, true) => signal_group(pid, libc::SIGSTOP),
            (_, false) => {
                if rt.frozen_by_cgroup
                    && let Some(cg) = &rt.cgroup
                    && let Err(e) = cg.freeze(false)
                {
                    return responder.error(format!("cannot thaw agent {id}: {e}"));
                }
                rt.frozen_by_cgroup = false;
                signal_group(pid, libc::SIGCONT);
            }
        }
        let name = rt.spec.name.clone();
        {
            let mut t = self.agents.table.lock();
            if let Some(a) = t.agents.get_mut(&id) {
                set_status(
                    a,
                    if pause {
                        Status::Paused
                    } else {
                        Status::Running
                    },
                );
            }
        }
        let kind = if pause {
            "AGENT_PAUSED"
        } else {
            "AGENT_RESUMED"
        };
        self.event(
            kind,
            id,
            json!({"agent_id": id, "name": name, "method": how}),
            Category::Lifecycle,
        );
        ok(responder);
    }

    // ---- shutdown ---------------------------------------------------------------------

    fn begin_shutdown(&mut self, stop: bool, done: Sender<()>) {
        self.shutdown = Some((stop, done));
        if !stop {
            return;
        }
        let ids: Vec<CallerId> = self.runtimes.keys().copied().collect();
        for id in ids {
            let has_child = self.runtimes.get(&id).is_some_and(|r| r.child.is_some());
            if has_child {
                self.stop_agent(id, None, true);
            } else {
                self.forget_agent(id, Status::Exited, None);
            }
        }
    }

    fn finish(&mut self) {
        self.flush_after_commit();
        for p in std::mem::take(&mut self.after_commit) {
            let responders = match p.then {
                Then::Spawned { responder, .. } => vec![responder],
                Then::Reply { responders, .. } => responders,
            };
            for r in responders {
                r.error("the daemon stopped before the change was confirmed as saved");
            }
        }
        let stop = self.shutdown.as_ref().is_none_or(|(s, _)| *s);
        if stop {
            // Every process is gone; what remains are pending answers and cgroups.
            let ids: Vec<CallerId> = self.runtimes.keys().copied().collect();
            for id in ids {
                self.forget_agent(id, Status::Exited, None);
            }
            self.reap_orphans();
            self.collect_cgroups();
            self.cgroups.cleanup();
        } else {
            self.hand_over_logs();
        }
        log::info!("supervisor stopped");
    }

    /// Agents left running keep an output pipe whose reader is us: hand each one to a small
    /// `clove __logcopy` process, so their writes neither fail nor get lost after we exit.
    fn hand_over_logs(&mut self) {
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let (max, keep) = (
            self.agents.config.log_max_bytes,
            self.agents.config.log_files,
        );
        let tokens: Vec<Token> = self
            .pipes
            .iter()
            .filter(|(_, p)| matches!(p.kind, PipeKind::Log))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            let Some(pipe) = self.close_pipe(t) else {
                continue;
            };
            let Some(rt) = self.runtimes.get(&pipe.agent) else {
                continue;
            };
            if let Err(e) = nix::fcntl::fcntl(
                &pipe.fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            ) {
                log::warn!("agent={}: {e}", pipe.agent);
            }
            let started = std::process::Command::new(&exe)
                .arg(logfile::COPY_SUBCOMMAND)
                .arg(rt.log.path())
                .arg(max.to_string())
                .arg(keep.to_string())
                .stdin(std::process::Stdio::from(pipe.fd))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn();
            match started {
                // Not waited for: it outlives us and is re-parented to init.
                Ok(child) => drop(child),
                Err(e) => log::warn!("agent={}: cannot keep its log: {e}", rt.id),
            }
        }
    }

    // ---- events -----------------------------------------------------------------------

    fn event(&self, kind: &str, id: CallerId, data: Value, category: Category) {
        let success = !matches!(kind, "AGENT_ESCALATED" | "RESOURCE_WARNING");
        // The agent's name is in the data (its registered name may already be released).
        let name = data["name"].as_str().map(str::to_string);
        self.kernel
            .audit
            .with(|log| log.append(category, kind, id, name, success, data.clone()));
        self.kernel.emit(kind, data, id);
    }
}

/// SPAWN's `isolation` block: what the launcher reported, the limits, and what a sandboxed
/// agent gave up (`creds`: the user it runs as when not the daemon's).
fn isolation_report(rt: &Runtime, ns: &NsReport, creds: Option<caps::Creds>) -> Value {
    let mut degraded = rt.degraded.clone();
    if let Some(d) = &ns.degraded {
        degraded.insert(0, d.clone());
    }
    let mut isolation = rt.limits_report.clone();
    isolation["sandboxed"] = rt.spec.sandboxed.into();
    isolation["namespaces"] = json!(ns.namespaces);
    isolation["proc_mounted"] = ns.proc_mounted.into();
    isolation["network"] = if !rt.spec.network && ns.namespaces.iter().any(|n| n == "net") {
        "none"
    } else {
        "host"
    }
    .into();
    if rt.spec.sandboxed {
        // Every sandboxed agent gives up all capabilities (see caps::drop_all).
        isolation["capabilities"] = "none".into();
        isolation["uid"] = creds
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |c| c.uid)
            .into();
    }
    isolation["applied"] = degraded.is_empty().into();
    isolation["degraded_reason"] = if degraded.is_empty() {
        Value::Null
    } else {
        degraded.join("; ").into()
    };
    isolation
}

/// A restored persistent agent that cannot be started stays in LIST as FAILED, so that it is
/// seen and KILL can forget it.
fn keep_unstartable(
    k: &Kernel,
    agents: &Agents,
    id: CallerId,
    spec: &AgentSpec,
    log_path: &std::path::Path,
    why: &str,
) {
    k.ipc.lock().release_name(id);
    agents.table.lock().agents.insert(
        id,
        AgentInfo {
            id,
            spec: Arc::new(spec.clone()),
            status: Status::Failed,
            pid: None,
            main_pid: None,
            started_at: None,
            restarts: 0,
            last_exit: Some(ExitInfo {
                exit_code: launch::EXIT_SETUP,
                signal: None,
                reason: "spawn_failed",
                killed_by: None,
            }),
            isolation: Value::Null,
            cgroup: None,
            log_path: log_path.to_path_buf(),
            persisted: true,
            confinement: None,
            failure: Some(format!("could not start: {why}")),
        },
    );
}

/// How an incarnation ended, for people: `exit code 3`, `signal 9 (SIGKILL)`.
fn exit_text(info: &ExitInfo) -> String {
    match info.signal {
        Some(sig) => format!("signal {sig} ({})", signal_name(sig)),
        None => format!("exit code {}", info.exit_code),
    }
}

/// The daemon's log line for an agent's process ending.
fn log_exit(id: CallerId, name: &str, pid: i32, info: &ExitInfo) {
    let how = exit_text(info);
    match (info.reason, info.killed_by) {
        ("killed", Some(by)) => {
            log::info!("agent={id} name={name}: pid {pid} killed by caller {by} ({how})")
        }
        ("killed", None) => log::info!("agent={id} name={name}: pid {pid} killed ({how})"),
        ("shutdown", _) => log::info!("agent={id} name={name}: pid {pid} stopped ({how})"),
        ("oom", _) => log::warn!("agent={id} name={name}: pid {pid} killed by the OOM killer"),
        (reason, _) => log::info!("agent={id} name={name}: pid {pid} exited: {reason}, {how}"),
    }
}

/// Changes a status through the transition table (a disallowed change is logged and skipped:
/// it would be a supervisor bug, not something input can cause).
fn set_status(a: &mut AgentInfo, next: Status) {
    if a.status == next {
        return;
    }
    if a.status.can_become(next) {
        a.status = next;
    } else {
        log::error!(
            "agent={}: refused status change {} -> {}",
            a.id,
            a.status.as_str(),
            next.as_str()
        );
    }
}

/// The first child of a process (its children file), used to find the interpreter under
/// the launcher and init.
fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// "SIGKILL" for 9.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

/// Asks the supervisor to stop (or leave) every agent and waits until it has.
pub fn shutdown(agents: &Agents, thread: std::thread::JoinHandle<()>, stop: bool) {
    let Some(h) = agents.handle() else {
        return;
    };
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let cmd = Command::Shutdown {
        stop,
        done: done_tx,
    };
    // A blocking send is fine here (the main thread, at exit); it fails only when the
    // supervisor thread is already gone.
    if h.tx.send(cmd).is_ok() {
        let _ = h.waker.wake();
        // The supervisor drops `done` when it finishes; the join is what really waits.
        let _ = done_rx.recv();
    }
    let _ = thread.join();
}
