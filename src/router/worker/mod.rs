//! `clove worker`: the node worker the local provider runs, one per node, speaking the mailbox
//! contract (ROUTER-COMPAT.md, "The node mailbox").
//!
//! It reads its inbox (`<ws>/mailbox/inbox/<job>_<NN>.jsonl`) as it grows, complete lines only,
//! waking on inotify and polling as well (another host may append on a shared filesystem), and
//! appends records to its outbox, each with one `write` on a file opened for appending. Modes
//! (`worker_mode`, from the settings file the provider writes):
//! * `mock`: Codeswarm's mock worker, byte for byte ([`mock`]);
//! * `command`: runs `worker_command` (argv, never a shell) per prompt ([`command`]);
//! * `llm`: an OpenAI-compatible streaming chat client with one conversation per node
//!   ([`llm`]).
//!
//! `command` and `llm` turns run one at a time on a second thread while the first keeps
//! reading the inbox, so control lines (approval answers) and `shutdown` are seen during a
//! long turn; later prompts queue. A heartbeat file (`<ws>/mailbox/heartbeat/<job>_<NN>.json`)
//! says the worker's pid, start time and state. The worker exits on a `shutdown` line, or
//! when its workspace disappears (nobody can reach it any more).

pub mod command;
pub mod llm;
pub mod mock;
pub mod pyjson;
pub mod task;

use super::mailbox::{self, Workspace};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Prompts waiting for a turn; beyond it a prompt is answered with an error at once.
const MAX_QUEUED_TURNS: usize = 1024;
/// Longest inbox line the worker reads.
const MAX_INBOX_LINE: usize = 64 << 20;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The settings file the provider writes (`CLOVE_WORKER_SETTINGS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub mode: String,
    pub mock_delay_ms: u64,
    pub command: Vec<String>,
    pub command_timeout_secs: u64,
    /// `command` mode asks for approval before each run.
    pub approval: bool,
    pub llm: Option<llm::LlmSettings>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            mode: "mock".into(),
            mock_delay_ms: 0,
            command: Vec::new(),
            command_timeout_secs: 3600,
            approval: false,
            llm: None,
        }
    }
}

/// Which node this worker is.
#[derive(Debug, Clone)]
pub struct NodeId {
    pub job_id: String,
    pub node_id: u32,
}

/// The outbox: records appended whole, from either thread.
pub struct Outbox {
    file: Mutex<std::fs::File>,
    pub node: NodeId,
}

#[derive(Serialize)]
struct WorkerEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    job_id: &'a str,
    node_id: u32,
    injection_id: &'a str,
    event: &'a str,
    payload: &'a Value,
}

#[derive(Serialize)]
struct Plain<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    job_id: &'a str,
    node_id: u32,
}

impl Outbox {
    fn open(path: &Path, node: NodeId) -> std::io::Result<Outbox> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(Outbox {
            file: Mutex::new(file),
            node,
        })
    }

    pub fn append(&self, bytes: &[u8]) {
        if let Err(e) = self.file.lock().write_all(bytes) {
            eprintln!("clove worker: cannot write the outbox: {e}");
        }
    }

    /// A `worker_event` record.
    pub fn event(&self, injection_id: &str, event: &str, payload: Value) {
        self.append(&pyjson::line(&WorkerEvent {
            kind: "worker_event",
            job_id: &self.node.job_id,
            node_id: self.node.node_id,
            injection_id,
            event,
            payload: &payload,
        }));
    }

    fn plain(&self, kind: &'static str) {
        self.append(&pyjson::line(&Plain {
            kind,
            job_id: &self.node.job_id,
            node_id: self.node.node_id,
        }));
    }
}

/// A prompt for the turn thread.
pub struct Turn {
    pub injection_id: String,
    pub prompt: String,
}

/// An approval answer from a control line.
#[derive(Debug, Clone)]
pub struct Decision {
    pub call_id: String,
    pub approved: bool,
    pub decision: String,
}

/// What the turn thread shares with the reading loop.
pub struct TurnCtx {
    pub outbox: Arc<Outbox>,
    pub settings: Settings,
    pub decisions: Receiver<Decision>,
    pub busy: Arc<AtomicBool>,
    pub turns: Arc<AtomicU64>,
    pub cwd: PathBuf,
}

/// Runs `clove worker` until a `shutdown` line; the error is printed by the CLI.
pub fn run(settings_path: Option<PathBuf>) -> Result<(), String> {
    let env = |k: &str| {
        std::env::var(k)
            .map_err(|_| format!("{k} is not set (clove worker is started by a router provider)"))
    };
    let job_id = env("CODESWARM_JOB_ID")?;
    let node_id: u32 = env("CODESWARM_NODE_ID")?
        .parse()
        .map_err(|_| "CODESWARM_NODE_ID is not a number")?;
    let ws = Workspace::new(env("CODESWARM_BASE_DIR")?);
    if !mailbox::valid_job_id(&job_id) {
        return Err(format!("CODESWARM_JOB_ID {job_id:?} is not a valid job id"));
    }
    let settings = match settings_path
        .or_else(|| std::env::var_os("CLOVE_WORKER_SETTINGS").map(PathBuf::from))
    {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Settings::default(),
    };
    ws.create()
        .map_err(|e| format!("cannot create the mailbox under {}: {e}", ws.root.display()))?;
    let node = NodeId {
        job_id: job_id.clone(),
        node_id,
    };
    let outbox_path = ws.outbox(&job_id, node_id);
    let outbox = Arc::new(
        Outbox::open(&outbox_path, node.clone())
            .map_err(|e| format!("cannot open {}: {e}", outbox_path.display()))?,
    );
    let cwd = std::env::current_dir().unwrap_or_else(|_| ws.agent_dir(&job_id, node_id));
    let mut w = Worker::new(ws, node, outbox, settings, cwd)?;
    w.outbox.plain("start");
    w.heartbeat("idle");
    let result = w.serve();
    w.outbox.plain("complete");
    w.heartbeat("stopped");
    result
}

struct Worker {
    ws: Workspace,
    node: NodeId,
    outbox: Arc<Outbox>,
    settings: Settings,
    inbox: PathBuf,
    offset: u64,
    turns_tx: Option<Sender<Turn>>,
    decisions_tx: Sender<Decision>,
    busy: Arc<AtomicBool>,
    turns: Arc<AtomicU64>,
    start_time: u64,
}

impl Worker {
    fn new(
        ws: Workspace,
        node: NodeId,
        outbox: Arc<Outbox>,
        settings: Settings,
        cwd: PathBuf,
    ) -> Result<Worker, String> {
        let (decisions_tx, decisions_rx) = crossbeam_channel::bounded(64);
        let busy = Arc::new(AtomicBool::new(false));
        let turns = Arc::new(AtomicU64::new(0));
        let turns_tx = if settings.mode == "mock" {
            None
        } else {
            let (tx, rx) = crossbeam_channel::bounded(MAX_QUEUED_TURNS);
            let ctx = TurnCtx {
                outbox: outbox.clone(),
                settings: settings.clone(),
                decisions: decisions_rx,
                busy: busy.clone(),
                turns: turns.clone(),
                cwd,
            };
            std::thread::Builder::new()
                .name("turns".into())
                .spawn(move || turn_loop(ctx, rx))
                .map_err(|e| format!("cannot start the turn thread: {e}"))?;
            Some(tx)
        };
        let inbox = ws.inbox(&node.job_id, node.node_id);
        let start_time =
            super::provider::local::proc_start_time(std::process::id() as i32).unwrap_or(0);
        Ok(Worker {
            ws,
            node,
            outbox,
            settings,
            inbox,
            offset: 0,
            turns_tx,
            decisions_tx,
            busy,
            turns,
            start_time,
        })
    }

    /// Reads the inbox until `shutdown` (or the workspace is gone).
    fn serve(&mut self) -> Result<(), String> {
        let mut poll = Poll::new().map_err(|e| e.to_string())?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
        if let Some(i) = &inotify {
            let flags = AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO;
            let fd = i.as_fd().as_raw_fd();
            if i.add_watch(&self.ws.inbox_dir(), flags).is_ok() {
                let _ = poll
                    .registry()
                    .register(&mut SourceFd(&fd), Token(0), Interest::READABLE);
            }
        }
        let mut events = Events::with_capacity(8);
        // Polling interval: quick after activity, backing off while nothing comes.
        let (fast, slow) = (Duration::from_millis(20), Duration::from_millis(500));
        let mut interval = fast;
        let mut next_beat = Instant::now() + HEARTBEAT_EVERY;
        loop {
            match self.read_inbox() {
                Ok(Flow::Shutdown) => return Ok(()),
                Ok(Flow::Got) => interval = fast,
                Ok(Flow::Nothing) => interval = (interval * 2).min(slow),
                Err(e) => eprintln!("clove worker: {e}"),
            }
            if Instant::now() >= next_beat {
                if !self.ws.inbox_dir().is_dir() {
                    return Err("the workspace is gone; stopping".into());
                }
                let state = if self.busy.load(Ordering::Relaxed) {
                    "busy"
                } else {
                    "idle"
                };
                self.heartbeat(state);
                next_beat = Instant::now() + HEARTBEAT_EVERY;
            }
            let _ = poll.poll(
                &mut events,
                Some(interval.min(next_beat.saturating_duration_since(Instant::now()))),
            );
            if let Some(i) = &inotify {
                while matches!(i.read_events(), Ok(ref e) if !e.is_empty()) {}
            }
        }
    }

    fn read_inbox(&mut self) -> Result<Flow, String> {
        let file = match std::fs::File::open(&self.inbox) {
            Ok(f) => f,
            Err(_) => return Ok(Flow::Nothing),
        };
        let (lines, after) = mailbox::read_lines(&file, self.offset, MAX_INBOX_LINE)
            .map_err(|e| format!("cannot read {}: {e}", self.inbox.display()))?;
        let got = after != self.offset;
        self.offset = after;
        for line in lines {
            let Ok(line) = line else {
                self.error("", "an inbox line is not UTF-8 or too long; skipped");
                continue;
            };
            if self.handle(&line) {
                return Ok(Flow::Shutdown);
            }
        }
        Ok(if got { Flow::Got } else { Flow::Nothing })
    }

    fn error(&self, injection_id: &str, msg: &str) {
        #[derive(Serialize)]
        struct Err<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            job_id: &'a str,
            node_id: u32,
            injection_id: &'a str,
            error: &'a str,
        }
        self.outbox.append(&pyjson::line(&Err {
            kind: "worker_error",
            job_id: &self.node.job_id,
            node_id: self.node.node_id,
            injection_id,
            error: msg,
        }));
    }

    /// One inbox line; true for `shutdown`.
    fn handle(&mut self, line: &str) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.error("", "an inbox line is not JSON; skipped");
            return false;
        };
        match v["type"].as_str() {
            Some("shutdown") => return true,
            Some("user") => {
                let inj = v["injection_id"].as_str().unwrap_or("").to_string();
                let prompt = v["content"].as_str().unwrap_or("").to_string();
                self.user(inj, prompt);
            }
            Some("control") => {
                let p = &v["payload"];
                if let Some(call_id) = p["call_id"].as_str() {
                    let approved = p["approved"].as_bool().unwrap_or(false);
                    let d = Decision {
                        call_id: call_id.into(),
                        approved,
                        decision: p["decision"]
                            .as_str()
                            .unwrap_or(if approved { "approved" } else { "denied" })
                            .into(),
                    };
                    if self.decisions_tx.try_send(d).is_err() {
                        self.error("", "too many approval answers waiting; one was dropped");
                    }
                }
            }
            _ => self.error("", "unknown inbox line type; skipped"),
        }
        false
    }

    fn user(&mut self, inj: String, prompt: String) {
        match &self.turns_tx {
            None => {
                if self.settings.mock_delay_ms > 0 {
                    std::thread::sleep(Duration::from_millis(self.settings.mock_delay_ms));
                }
                self.outbox.append(&mock::answer(
                    &self.node.job_id,
                    self.node.node_id,
                    &inj,
                    &prompt,
                ));
                self.turns.fetch_add(1, Ordering::Relaxed);
            }
            Some(tx) => {
                match tx.try_send(Turn {
                    injection_id: inj.clone(),
                    prompt,
                }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        self.error(&inj, &format!("{MAX_QUEUED_TURNS} prompts are already waiting; this one was dropped"));
                        self.outbox.event(&inj, "turn_complete", json!({}));
                    }
                }
            }
        }
    }

    /// Rewrites the heartbeat file (atomically: a reader never sees half of it).
    fn heartbeat(&self, state: &str) {
        let path = self.ws.heartbeat(&self.node.job_id, self.node.node_id);
        let body = json!({"pid": std::process::id(), "start_time": self.start_time,
            "job_id": self.node.job_id, "node_id": self.node.node_id, "state": state,
            "mode": self.settings.mode, "turns": self.turns.load(Ordering::Relaxed),
            "updated_ms": crate::clock::now_ms()});
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, body.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

enum Flow {
    Got,
    Nothing,
    Shutdown,
}

/// Runs turns one at a time; the thread status goes active when work starts and idle when
/// nothing more waits.
fn turn_loop(ctx: TurnCtx, rx: Receiver<Turn>) {
    let mut active = false;
    while let Ok(t) = rx.recv() {
        ctx.busy.store(true, Ordering::Relaxed);
        if !active {
            ctx.outbox.event(
                &t.injection_id,
                "thread_status",
                json!({"status": {"type": "active"}}),
            );
            active = true;
        }
        ctx.outbox.event(&t.injection_id, "turn_started", json!({}));
        let full = match ctx.settings.mode.as_str() {
            "command" => command::turn(&ctx, &t),
            "llm" => llm::turn(&ctx, &t),
            other => {
                let msg = format!("unknown worker_mode {other:?}");
                ctx.outbox
                    .event(&t.injection_id, "agent_error", json!({"message": msg}));
                String::new()
            }
        };
        // Every turn has its answer (empty when it failed): clients wait for it per node.
        ctx.outbox.event(
            &t.injection_id,
            "assistant",
            json!({"content": full, "final_answer": true}),
        );
        ctx.outbox.event(
            &t.injection_id,
            "task_complete",
            json!({"last_agent_message": full}),
        );
        ctx.outbox
            .event(&t.injection_id, "turn_complete", json!({}));
        ctx.turns.fetch_add(1, Ordering::Relaxed);
        if rx.is_empty() {
            ctx.outbox.event(
                &t.injection_id,
                "thread_status",
                json!({"status": {"type": "idle"}}),
            );
            active = false;
            ctx.busy.store(false, Ordering::Relaxed);
        }
    }
}
