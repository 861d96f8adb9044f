//! The `slurm` backend: one batch job per swarm, on this host's Slurm or through ssh to a login
//! host ([`shell`]).
//!
//! One thread (`clove-router-slurm`) does all the slow work: it writes a launch's files,
//! submits (`sbatch --parsable`), appends inbox lines, and polls Slurm: one `squeue` for every
//! job it tracks, every `router.slurm_poll_secs` (each second while a launch waits or a
//! termination runs). A job squeue does not list is confirmed with `sacct`, else `scontrol show
//! job` ([`query`]); a check that fails leaves the state unknown, asked again at the next poll.
//! Launch: `submitting`, `submitted`, `pending` (with Slurm's reason), `ready`, then
//! `swarm_launched`; past `router.launch_timeout_secs` the job is cancelled and the launch
//! refused. Termination: `shutdown` lines, up to `router.terminate_grace_ms` for the workers
//! to stop, `scancel`, verify, `scancel --signal=KILL`, with progress at each stage.
//!
//! Every command runs with a deadline (`router.slurm_command_timeout_secs`) as a child of this
//! thread, which reaps only its own children.

pub mod config;
pub mod exec;
pub mod query;
pub mod script;
pub mod shell;

use super::local::{LlmDefaults, WorkerPlan};
use super::{
    BackendMsg, Cmd, CmdQueue, JobRef, JobState, LaunchSpec, Launched, MailboxFiles, Provider,
    Replies, Ticket,
};
use crate::router::config::{ProviderConfig, SlurmConfig};
use crate::router::follow::Follower;
use crate::router::mailbox::{self, Workspace};
use crate::router::worker::task::{self as task, TaskSpec};
use config::Scheduling;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Map, Value, json};
use shell::{Shell, Ssh};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Work waiting for the backend's thread; beyond it a call is refused as busy.
/// Polls while a launch waits or a termination runs.
const FAST_POLL: Duration = Duration::from_secs(1);
/// `pending` progress at most this often.
const PENDING_EVERY: Duration = Duration::from_secs(3);
/// How long a task stays after its worker stopped, waiting for the termination's scancel.
const LINGER_EXTRA_SECS: u64 = 120;

/// What the Slurm backend is given by the router.
pub struct SlurmDeps {
    pub index: usize,
    pub replies: Arc<dyn Replies>,
    /// This executable (the default `worker_path`).
    pub exe: PathBuf,
    pub llm: LlmDefaults,
    pub grace: Duration,
    pub poll: Duration,
    pub launch_timeout: Duration,
    pub command_timeout: Duration,
    /// Where the ssh control socket's directory goes (under the state dir).
    pub control_dir: PathBuf,
    /// Follower settings and the core's channel, for the remote follower (ssh mode).
    pub follow: crate::router::follow::FollowConfig,
    pub core: Sender<crate::router::CoreMsg>,
}

/// The provider handle the core holds.
pub struct SlurmProvider {
    config: ProviderConfig,
    queue: CmdQueue,
    ws: Workspace,
    follower: Option<Follower>,
    /// Why launches are refused, when Slurm's commands cannot be found here.
    disabled: Option<String>,
}

/// Whether a program is found on PATH (checked once, at start).
fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

impl SlurmProvider {
    /// Starts the backend's thread (and, with a login host, the remote follower's).
    pub fn start(config: ProviderConfig, deps: SlurmDeps) -> std::io::Result<SlurmProvider> {
        let slurm = config.slurm.clone().unwrap_or_default();
        let ssh = match &slurm.login_host {
            None => None,
            Some(host) => Some(Ssh {
                host: host.clone(),
                command: slurm.ssh_command.clone(),
                options: slurm.ssh_options.clone(),
                control_dir: shell::control_dir(&deps.control_dir)
                    .map_err(std::io::Error::other)?,
                multiplex: slurm.ssh_multiplex,
            }),
        };
        let shell = Shell {
            ssh,
            timeout: deps.command_timeout,
        };
        let worker_path = slurm
            .worker_path
            .clone()
            .unwrap_or_else(|| deps.exe.to_string_lossy().into_owned());
        let ws = super::workspace(&config);
        let disabled = (shell.ssh.is_none() && !on_path("sbatch")).then(|| {
            "sbatch is not on this host's PATH: install Slurm's client commands, or set \
             login_host to run them on a login host over ssh"
                .to_string()
        });
        let follower = match &shell.ssh {
            None => None,
            Some(s) => Some(crate::router::remote_follow::start(
                crate::router::remote_follow::RemoteSpec {
                    shell: shell.clone(),
                    argv: follow_argv(&worker_path, &ws, &deps.follow),
                    core: deps.core.clone(),
                    label: s.host.clone(),
                },
            )?),
        };
        let (queue, rx) = CmdQueue::new(&config.id);
        let mut backend = Backend {
            config: config.clone(),
            slurm,
            ws: ws.clone(),
            deps,
            shell,
            worker_path,
            jobs: HashMap::new(),
            next_poll: Instant::now(),
        };
        std::thread::Builder::new()
            .name("clove-router-slurm".into())
            .spawn(move || backend.run(rx))?;
        Ok(SlurmProvider {
            config,
            queue,
            ws,
            follower,
            disabled,
        })
    }
}

fn follow_argv(
    worker_path: &str,
    ws: &Workspace,
    f: &crate::router::follow::FollowConfig,
) -> Vec<String> {
    vec![
        worker_path.to_string(),
        "worker".into(),
        "follow".into(),
        ws.root.to_string_lossy().into_owned(),
        format!("--poll-busy-ms={}", f.poll_busy.as_millis()),
        format!("--poll-idle-max-ms={}", f.poll_idle_max.as_millis()),
        format!("--max-record-bytes={}", f.max_record_bytes),
    ]
}

impl Provider for SlurmProvider {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn queue(&self) -> &CmdQueue {
        &self.queue
    }

    fn disabled_reason(&self) -> Option<String> {
        self.disabled.clone()
    }

    fn check_params(&self, params: &Map<String, Value>) -> Result<(), String> {
        let slurm = self.config.slurm.clone().unwrap_or_default();
        Scheduling::of(&slurm, params)?;
        WorkerPlan::from_params(&self.config, params, &LlmDefaults::default(), true).map(|_| ())
    }

    fn mailbox(&self, job: &JobRef, node: u32) -> MailboxFiles {
        MailboxFiles {
            outbox: self.ws.outbox(&job.job_id, node),
            archive: self.ws.archive(&job.job_id, node),
        }
    }

    fn follower(&self) -> Option<Follower> {
        self.follower.clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `shutdown` lines sent; waiting for the workers to stop.
    Shutdown,
    /// `scancel` sent; waiting for the job to leave the queue.
    Cancelled,
    /// `scancel --signal=KILL` sent.
    Killed,
}

#[derive(Debug)]
enum Phase {
    Launching {
        ticket: Ticket,
        deadline: Instant,
        last_pending: Option<Instant>,
        runtime: String,
        sched: Scheduling,
    },
    Live,
    Stopping {
        stage: Stop,
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Job {
    node_count: u32,
    phase: Phase,
    /// The Slurm state last reported to the core ("unknown" after a failed check).
    reported: Option<String>,
}

struct Backend {
    config: ProviderConfig,
    slurm: SlurmConfig,
    ws: Workspace,
    deps: SlurmDeps,
    shell: Shell,
    worker_path: String,
    jobs: HashMap<String, Job>,
    next_poll: Instant,
}

mod backend;
