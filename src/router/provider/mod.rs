//! Providers: where a swarm's nodes run. One interface for every backend (the `local` one
//! here, and `slurm`, directly or through ssh), so the router's core never knows which it
//! talks to.
//!
//! Every operation that may be slow (start processes, submit a job, ask a scheduler, kill) is
//! asynchronous: a call only hands the work to the backend's own thread and returns at once
//! (`Err` only when that thread cannot take it now), and the outcome comes back to the core as
//! a [`BackendMsg`] through the [`Replies`] handle, tagged with the caller's [`Ticket`]. So the
//! router's thread never waits on a process, a scheduler or the network.
//!
//! What a backend needs to remember about a job across restarts (pids and start times,
//! cgroups, a scheduler's job id) it returns as `backend_state` JSON; the core stores it with
//! the swarm and hands it back in [`JobRef`] after a restart ([`Provider::adopt`]).

pub mod local;
pub mod slurm;

use super::config::{ProviderConfig, WorkerLimits};
use super::mailbox::Workspace;
use super::wire::SkillFile;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Names one asynchronous operation so its outcome can be matched to it.
pub type Ticket = u64;

/// A job as the core knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRef {
    pub swarm_id: String,
    pub job_id: String,
    pub node_count: u32,
    /// What the backend returned at launch (and updates since).
    pub backend_state: Value,
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub swarm_id: String,
    /// The job id the core reserved (backends whose scheduler assigns ids ignore it).
    pub job_hint: String,
    pub node_count: u32,
    /// The provider's defaults with the launch's `provider_params` over them.
    pub params: Map<String, Value>,
    pub agents_md: Option<String>,
    pub skills: Vec<SkillFile>,
}

/// A launched job.
#[derive(Debug, Clone, PartialEq)]
pub struct Launched {
    pub job_id: String,
    pub backend_state: Value,
    /// What the nodes run (`clove-mock`, `clove-command`, `clove-llm`, `program`).
    pub agent_runtime: String,
}

/// A job's state as its backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Submitted, not running yet (a scheduler's queue).
    Pending,
    Running,
    /// Every node has ended.
    Ended,
}

/// Outcomes and news from a backend's thread, for the core.
#[derive(Debug, Clone)]
pub enum BackendMsg {
    LaunchProgress {
        ticket: Ticket,
        stage: &'static str,
        message: String,
    },
    Launched {
        ticket: Ticket,
        result: Result<Launched, String>,
    },
    /// A scheduler took the job before it runs: its id, to be kept (a restart while it
    /// waits must still be able to cancel it).
    Submitted {
        ticket: Ticket,
        job_id: String,
    },
    /// An inbox line (injection or control) was delivered, or not.
    Delivered {
        ticket: Ticket,
        result: Result<(), String>,
    },
    Status {
        job_id: String,
        /// `Err`: the backend could not tell (the core keeps the swarm as `unknown`).
        result: Result<(JobState, Option<String>), String>,
    },
    Active {
        result: Result<Vec<String>, String>,
    },
    TerminateProgress {
        job_id: String,
        stage: &'static str,
        message: String,
    },
    Terminated {
        job_id: String,
        result: Result<(), String>,
    },
    /// A node ended on its own (not through a termination).
    NodeExited {
        job_id: String,
        node_id: u32,
        code: Option<i32>,
    },
    /// The backend changed what it remembers about a job (a restarted node, ...).
    StateChanged {
        job_id: String,
        backend_state: Value,
    },
}

/// The way back to the core: a backend's outcomes, tagged with its provider index.
pub trait Replies: Send + Sync {
    /// May wait for room (back-pressure on the backend's thread, never on the core's).
    fn send(&self, provider: usize, msg: BackendMsg);
}

/// Where a node's mailbox files are, as the router's follower reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxFiles {
    pub outbox: PathBuf,
    pub archive: PathBuf,
}

/// Applies resource limits to a worker process: the daemon's cgroup (or rlimit) machinery,
/// handed in by the assembly so the router needs no supervisor internals.
pub trait WorkerSandbox: Send + Sync {
    /// Prepares a confinement named `leaf` (a cgroup per worker, when cgroups work).
    fn confine(&self, leaf: &str, limits: &WorkerLimits) -> Result<Confinement, String>;
}

/// How to confine one worker, prepared before it is started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// `cgroup.procs` files the child writes itself into before exec.
    pub procs_files: Vec<PathBuf>,
    /// The cgroup directories, removed when the worker is gone.
    pub dirs: Vec<PathBuf>,
    pub rlimit_as: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    /// What was applied and how (`{"memory": "cgroup", ...}`), for the swarm's record.
    pub report: Map<String, Value>,
}

/// What the core asks of a backend; each backend carries it out on its own thread and
/// answers through its [`Replies`].
pub enum Cmd {
    Launch(Ticket, Box<LaunchSpec>),
    /// A line for a node's inbox (`user` or `control`): job id, node, the line.
    Deliver(Ticket, String, u32, Vec<u8>),
    Status(JobRef),
    ListActive,
    /// The job, and whether to skip the grace period.
    Terminate(JobRef, bool),
    Adopt(JobRef),
}

/// Operations one backend's thread may have waiting.
pub const CMD_QUEUE: usize = 4096;

/// The bounded queue from the core to one backend's thread: when it is full the operation is
/// refused as busy at once, and the core never waits.
pub struct CmdQueue {
    provider: String,
    tx: Sender<Cmd>,
}

impl CmdQueue {
    /// A queue for provider `id`, and the end its backend's thread reads.
    pub fn new(id: &str) -> (CmdQueue, Receiver<Cmd>) {
        let (tx, rx) = crossbeam_channel::bounded(CMD_QUEUE);
        let q = CmdQueue {
            provider: id.to_string(),
            tx,
        };
        (q, rx)
    }

    pub fn send(&self, cmd: Cmd) -> Result<(), String> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(format!(
                "provider {} is busy ({CMD_QUEUE} operations waiting); try again",
                self.provider
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(format!("provider {} has stopped", self.provider))
            }
        }
    }
}

/// A provider as the core uses it. The operations go to the backend's thread through its
/// [`CmdQueue`]; what is answered at once is the queue's refusal, if any.
pub trait Provider: Send {
    fn config(&self) -> &ProviderConfig;
    /// The queue to the backend's thread.
    fn queue(&self) -> &CmdQueue;
    /// Why launches are refused (a backend that cannot work here), if so.
    fn disabled_reason(&self) -> Option<String> {
        None
    }
    /// Checks merged launch parameters before anything starts (pure, quick).
    fn check_params(&self, params: &Map<String, Value>) -> Result<(), String>;
    fn launch(&self, ticket: Ticket, spec: LaunchSpec) -> Result<(), String> {
        self.queue().send(Cmd::Launch(ticket, Box::new(spec)))
    }
    /// Appends a `user` line to a node's inbox.
    fn inject(&self, ticket: Ticket, job: &JobRef, node: u32, line: Vec<u8>) -> Result<(), String> {
        self.queue()
            .send(Cmd::Deliver(ticket, job.job_id.clone(), node, line))
    }
    /// Appends a `control` line to a node's inbox.
    fn control(
        &self,
        ticket: Ticket,
        job: &JobRef,
        node: u32,
        line: Vec<u8>,
    ) -> Result<(), String> {
        self.queue()
            .send(Cmd::Deliver(ticket, job.job_id.clone(), node, line))
    }
    fn status(&self, job: &JobRef) -> Result<(), String> {
        self.queue().send(Cmd::Status(job.clone()))
    }
    /// Which jobs of this provider are alive (answered as [`BackendMsg::Active`]).
    fn list_active(&self) -> Result<(), String> {
        self.queue().send(Cmd::ListActive)
    }
    fn terminate(&self, job: &JobRef, force: bool) -> Result<(), String> {
        self.queue().send(Cmd::Terminate(job.clone(), force))
    }
    /// Where a node's outbox is (synchronous: a path computation).
    fn mailbox(&self, job: &JobRef, node: u32) -> MailboxFiles;
    /// Takes over a job a previous daemon started (at start, before anything else of it).
    fn adopt(&self, job: &JobRef) -> Result<(), String> {
        self.queue().send(Cmd::Adopt(job.clone()))
    }
    /// The follower of this provider's outboxes when they are not on this host (`None`: the
    /// router's own follower reads them here).
    fn follower(&self) -> Option<crate::router::follow::Follower> {
        None
    }
}

/// The workspace of a provider.
pub fn workspace(p: &ProviderConfig) -> Workspace {
    Workspace::new(&p.workspace_root)
}
