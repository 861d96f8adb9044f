//! The Codeswarm router (`codeswarm.router.v1` over TCP): swarms of agents launched through
//! providers, their output streamed to every client, restart-safe.
//!
//! ```text
//!  reactor (front-end, frontend/router.rs) ──try_send──▶ core thread ◀── follower thread
//!          ▲ Outbox::push (one encoded line per event, to every client)   (outboxes → events)
//!          └──────────────────────────────── core ──▶ provider threads (local: processes)
//!                                              │  ▲
//!                                              ▼  │ commit done
//!                                         store writer (group commit)
//! ```
//!
//! * The front-end parses lines on the reactor thread and hands commands to the core over a
//!   bounded channel (`router.command_queue`); when it is full the client is told
//!   `router busy`, and the reactor never waits.
//! * The core ([`core`]) owns swarms, nodes, the inter-swarm queue and approvals. Every change
//!   is written to the daemon's store, and the events that report it are published only after
//!   that commit (in order, through one sequencer), so an acknowledged swarm, queue item or
//!   approval survives `kill -9`.
//! * Events are encoded once and pushed to every client's connection; a client over its
//!   allowance (`router.client_queue_bytes`) is dropped by the reactor, whole lines only. Each
//!   event is also published on the kernel bus as `SWARM_EVENT {event, data}`.
//! * Providers ([`provider`]) and the follower ([`follow`]) run on their own threads.
//! * The node worker (`clove worker`, [`worker`]) is what the local provider runs per node.

pub mod cli;
mod commands;
pub mod config;
pub mod core;
pub mod follow;
pub mod mailbox;
pub mod provider;
pub mod remote_follow;
mod restore;
pub mod state;
pub mod translate;
pub mod wire;
pub mod worker;

use crate::kernel::Kernel;
use config::RouterConfig;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use provider::{BackendMsg, Replies, WorkerSandbox, local::LlmDefaults};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use wire::Event;

/// Counters for HELLO's `services.router`, METRICS_SYSTEM and logs.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients: AtomicU64,
    pub clients_dropped: AtomicU64,
    pub events_published: AtomicU64,
    pub events_sent: AtomicU64,
    pub events_dropped: AtomicU64,
    /// Events published while no client was connected, kept for the next one.
    pub events_held: AtomicU64,
    pub commands: AtomicU64,
    pub commands_rejected: AtomicU64,
    pub busy_refusals: AtomicU64,
    pub records_forwarded: AtomicU64,
    pub records_malformed: AtomicU64,
    pub records_unknown: AtomicU64,
    pub records_foreign: AtomicU64,
    pub followed_files: AtomicU64,
    pub queue_depth: AtomicU64,
    pub live_swarms: AtomicU64,
    pub inflight_injections: AtomicU64,
    pub approvals_pending: AtomicU64,
    pub store_failures: AtomicU64,
}

/// A command from a client, checked for its envelope (the payload is checked by the core).
#[derive(Debug)]
pub struct ClientCommand {
    pub name: String,
    pub request_id: Value,
    pub payload: Map<String, Value>,
}

/// Messages to the core from its own helpers.
pub enum CoreMsg {
    Backend(usize, BackendMsg),
    Records(Vec<follow::FileBatch>),
    /// A commit finished (its outcome is in the core's list of finished commits).
    Committed,
    Stop,
}

/// Where a client's events go: its connection's output, supplied by the front-end (the
/// router knows no reactor types). A push must not block for long; a client over its
/// allowance is dropped by whoever owns the connection.
pub trait ClientSink: Send + Sync {
    fn push(&self, line: Vec<u8>);
}

/// One connected client.
struct Client {
    id: u64,
    outbox: Box<dyn ClientSink>,
    /// Receives events (false until a token is given, where one is required).
    authorized: AtomicBool,
}

/// Connected clients, as an immutable list swapped on change: publishing takes the current
/// list without holding a lock while it pushes (a push may wait for the reactor, which may
/// itself be registering a client).
#[derive(Default)]
struct Clients {
    list: RwLock<Arc<Vec<Arc<Client>>>>,
    next: AtomicU64,
    /// Events published while no client could receive them, for the next client.
    held: Mutex<Held>,
}

/// Event lines published while no (authorized) client was connected.
///
/// Why: when the daemon starts again after a crash, the follower reads at once what the
/// workers wrote while it was down and the durable offsets move past those records, before any
/// client can have reconnected. Broadcast to nobody, they would be lost to every client. So
/// while no client listens, batches wait here (up to `cap` bytes, the oldest dropped first)
/// and the first client to connect receives them before anything newer.
#[derive(Default)]
struct Held {
    batches: std::collections::VecDeque<(Vec<u8>, u64)>,
    bytes: usize,
    /// Half a client's allowance (`router.client_queue_bytes`): the first client must be
    /// able to take the whole backlog and still keep up with new events.
    cap: usize,
}

impl Held {
    /// Keeps a batch; returns how many event lines were dropped to make room.
    fn keep(&mut self, batch: Vec<u8>, lines: u64) -> u64 {
        self.bytes += batch.len();
        self.batches.push_back((batch, lines));
        let mut dropped = 0;
        while self.bytes > self.cap && self.batches.len() > 1 {
            if let Some((b, n)) = self.batches.pop_front() {
                self.bytes -= b.len();
                dropped += n;
            }
        }
        dropped
    }

    /// Hands every held batch to a client that just became able to receive events.
    fn deliver(&mut self, to: &dyn ClientSink) -> u64 {
        self.bytes = 0;
        let mut lines = 0;
        for (b, n) in self.batches.drain(..) {
            to.push(b);
            lines += n;
        }
        lines
    }
}

impl Clients {
    fn snapshot(&self) -> Arc<Vec<Arc<Client>>> {
        self.list.read().clone()
    }

    fn add(&self, c: Client) {
        let mut l = self.list.write();
        let mut v: Vec<Arc<Client>> = l.as_ref().clone();
        v.push(Arc::new(c));
        *l = Arc::new(v);
    }

    fn remove(&self, id: u64) {
        let mut l = self.list.write();
        let v: Vec<Arc<Client>> = l.iter().filter(|c| c.id != id).cloned().collect();
        *l = Arc::new(v);
    }
}

/// Most bytes of event lines pushed to a client at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Publishes events: to every client, and to the kernel's event bus.
pub struct Emitter {
    clients: Arc<Clients>,
    kernel: Arc<Kernel>,
    stats: Arc<Stats>,
}

impl Emitter {
    /// Publishes events in order. Lines are sent to clients in batches (up to
    /// [`BATCH_BYTES`] each, whole lines only): one push per client per batch instead of one
    /// per event, which is what makes fan-out to many clients cheap.
    pub fn emit(&self, events: Vec<Event>) {
        let now = std::time::SystemTime::now();
        let mut batch = Vec::new();
        let mut lines = 0;
        for ev in events {
            batch.extend_from_slice(&wire::encode_event(&ev, now));
            lines += 1;
            // On the bus too (before clients hear of it: an agent that learns of an event
            // from a TCP client finds it there).
            self.kernel
                .emit("SWARM_EVENT", json!({"event": ev.name, "data": ev.data}), 0);
            if batch.len() >= BATCH_BYTES {
                self.send(std::mem::take(&mut batch), std::mem::take(&mut lines));
            }
        }
        if !batch.is_empty() {
            self.send(batch, lines);
        }
    }

    fn send(&self, batch: Vec<u8>, lines: u64) {
        self.stats
            .events_published
            .fetch_add(lines, Ordering::Relaxed);
        let clients = {
            // Decided under the lock that connecting clients take too, so a client either
            // is in the list here or receives this batch from the held ones (never neither,
            // never out of order). Pushing happens after it is released.
            let mut held = self.clients.held.lock();
            let clients = self.clients.snapshot();
            if !clients.iter().any(|c| c.authorized.load(Ordering::Acquire)) {
                let dropped = held.keep(batch, lines);
                self.stats.events_held.fetch_add(lines, Ordering::Relaxed);
                self.stats
                    .events_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                return;
            }
            clients
        };
        let mut sent = 0;
        for c in clients
            .iter()
            .filter(|c| c.authorized.load(Ordering::Acquire))
        {
            c.outbox.push(batch.clone());
            sent += lines;
        }
        self.stats.events_sent.fetch_add(sent, Ordering::Relaxed);
    }
}

struct Shared {
    commands: Sender<ClientCommand>,
    core: Sender<CoreMsg>,
    clients: Arc<Clients>,
    stats: Arc<Stats>,
    config: Arc<RouterConfig>,
    addr: SocketAddr,
}

/// What the front-end holds: the way to the core and the client list.
#[derive(Clone)]
pub struct RouterHandle {
    shared: Arc<Shared>,
}

/// Why a command was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl RouterHandle {
    /// Registers a new connection; `None` when `router.max_clients` are connected.
    pub fn connect(&self, outbox: Box<dyn ClientSink>) -> Option<u64> {
        let s = &self.shared;
        if s.stats.clients.load(Ordering::Relaxed) as usize >= s.config.max_clients {
            return None;
        }
        let id = s.clients.next.fetch_add(1, Ordering::Relaxed) + 1;
        let authorized = s.config.token.is_none();
        let mut held = s.clients.held.lock();
        if authorized {
            let n = held.deliver(outbox.as_ref());
            s.stats.events_sent.fetch_add(n, Ordering::Relaxed);
        }
        s.clients.add(Client {
            id,
            outbox,
            authorized: AtomicBool::new(authorized),
        });
        drop(held);
        s.stats.clients.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }

    /// The connection closed; `unsent` event lines were still waiting for it.
    pub fn disconnect(&self, id: u64, unsent: u64) {
        let s = &self.shared;
        s.clients.remove(id);
        s.stats.clients.fetch_sub(1, Ordering::Relaxed);
        if unsent > 0 {
            s.stats.clients_dropped.fetch_add(1, Ordering::Relaxed);
            s.stats.events_dropped.fetch_add(unsent, Ordering::Relaxed);
        }
    }

    /// Whether clients must send a token first.
    pub fn token_required(&self) -> bool {
        self.shared.config.token.is_some()
    }

    /// Checks a token (in constant time) and lets the client receive events.
    pub fn authenticate(&self, id: u64, token: &str) -> bool {
        let ok = match &self.shared.config.token {
            Some(t) => constant_time_eq(t.expose().as_bytes(), token.as_bytes()),
            None => true,
        };
        if ok {
            let s = &self.shared;
            let mut held = s.clients.held.lock();
            for c in s.clients.snapshot().iter().filter(|c| c.id == id) {
                let n = held.deliver(c.outbox.as_ref());
                s.stats.events_sent.fetch_add(n, Ordering::Relaxed);
                c.authorized.store(true, Ordering::Release);
            }
        }
        ok
    }

    /// Hands a command to the core without waiting.
    pub fn submit(&self, cmd: ClientCommand) -> Result<(), Busy> {
        let s = &self.shared;
        s.stats.commands.fetch_add(1, Ordering::Relaxed);
        match s.commands.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                s.stats.busy_refusals.fetch_add(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }

    /// Counts a command the front-end answered with `command_rejected` itself.
    pub fn count_rejected(&self) {
        self.shared
            .stats
            .commands_rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The longest line a client may send (`router.max_line_bytes`).
    pub fn max_line_bytes(&self) -> usize {
        self.shared.config.max_line_bytes
    }

    /// The router's figures for HELLO's `services.router` and METRICS_SYSTEM.
    pub fn report(&self) -> Value {
        let s = &self.shared;
        let st = &s.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "listen": s.addr.to_string(),
            "clients": n(&st.clients),
            "clients_dropped": n(&st.clients_dropped),
            "events_published": n(&st.events_published),
            "events_sent": n(&st.events_sent),
            "events_dropped": n(&st.events_dropped),
            "events_held": n(&st.events_held),
            "commands": n(&st.commands),
            "commands_rejected": n(&st.commands_rejected),
            "busy_refusals": n(&st.busy_refusals),
            "command_queue": {"queued": s.commands.len(), "capacity": s.config.command_queue,
                              "key": "router.command_queue"},
            "queue_depth": n(&st.queue_depth),
            "live_swarms": n(&st.live_swarms),
            "inflight_injections": n(&st.inflight_injections),
            "approvals_pending": n(&st.approvals_pending),
            "followed_files": n(&st.followed_files),
            "records": {"forwarded": n(&st.records_forwarded), "malformed": n(&st.records_malformed),
                        "unknown": n(&st.records_unknown), "foreign_job": n(&st.records_foreign)},
            "store_failures": n(&st.store_failures),
        })
    }
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// What the assembly hands the router.
pub struct RouterDeps {
    pub kernel: Arc<Kernel>,
    pub sandbox: Arc<dyn WorkerSandbox>,
    pub llm: LlmDefaults,
    /// The `clove` binary (for `clove worker`).
    pub exe: PathBuf,
    /// The address the listener is bound to.
    pub addr: SocketAddr,
}

/// The running router: its handle and its core thread.
pub struct RouterService {
    handle: RouterHandle,
    core: Option<std::thread::JoinHandle<()>>,
}

struct CoreReplies(Sender<CoreMsg>);

impl Replies for CoreReplies {
    fn send(&self, provider: usize, msg: BackendMsg) {
        let _ = self.0.send(CoreMsg::Backend(provider, msg));
    }
}

impl RouterService {
    /// Starts the providers, the follower and the core (which reloads and reconciles what
    /// the store holds before it takes commands).
    pub fn start(config: RouterConfig, deps: RouterDeps) -> std::io::Result<RouterService> {
        let config = Arc::new(config);
        let stats = Arc::new(Stats::default());
        let clients = Arc::new(Clients::default());
        clients.held.lock().cap = config.client_queue_bytes / 2;
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(config.command_queue);
        // Providers' outcomes, follower batches and commit notices; senders wait when full.
        let (core_tx, core_rx) = crossbeam_channel::bounded(4096);
        let replies: Arc<dyn Replies> = Arc::new(CoreReplies(core_tx.clone()));
        let follow_cfg = || follow::FollowConfig {
            poll_busy: config.poll_busy,
            poll_idle_max: config.poll_idle_max,
            max_record_bytes: config.max_record_bytes,
        };
        let mut providers: Vec<Box<dyn provider::Provider>> = Vec::new();
        for (index, p) in config.providers.iter().enumerate() {
            providers.push(match p.backend {
                config::Backend::Local => Box::new(provider::local::LocalProvider::start(
                    p.clone(),
                    provider::local::LocalDeps {
                        index,
                        replies: replies.clone(),
                        sandbox: deps.sandbox.clone(),
                        exe: deps.exe.clone(),
                        llm: deps.llm.clone(),
                        grace: config.terminate_grace,
                    },
                )?),
                config::Backend::Slurm => Box::new(provider::slurm::SlurmProvider::start(
                    p.clone(),
                    provider::slurm::SlurmDeps {
                        index,
                        replies: replies.clone(),
                        exe: deps.exe.clone(),
                        llm: deps.llm.clone(),
                        grace: config.terminate_grace,
                        poll: config.slurm_poll,
                        launch_timeout: config.launch_timeout,
                        command_timeout: config.slurm_command_timeout,
                        control_dir: config.state_dir.join("ssh"),
                        follow: follow_cfg(),
                        core: core_tx.clone(),
                    },
                )?),
            });
        }
        let follower = follow::start(follow_cfg(), core_tx.clone(), stats.clone())?;
        let emitter = Emitter {
            clients: clients.clone(),
            kernel: deps.kernel.clone(),
            stats: stats.clone(),
        };
        let core = core::Core::new(core::CoreParts {
            config: config.clone(),
            kernel: deps.kernel.clone(),
            providers,
            follower,
            emitter,
            stats: stats.clone(),
            self_tx: core_tx.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("clove-router".into())
            .spawn(move || core.run(core_rx, cmd_rx))?;
        Ok(RouterService {
            handle: RouterHandle {
                shared: Arc::new(Shared {
                    commands: cmd_tx,
                    core: core_tx,
                    clients,
                    stats,
                    config,
                    addr: deps.addr,
                }),
            },
            core: Some(thread),
        })
    }

    pub fn handle(&self) -> RouterHandle {
        self.handle.clone()
    }

    /// Stops the core after what it is doing (worker processes keep running: they are
    /// adopted by the next daemon).
    pub fn stop(&mut self) {
        let _ = self.handle.shared.core.send(CoreMsg::Stop);
        if let Some(t) = self.core.take() {
            let _ = t.join();
        }
    }
}

/// A random (v4) UUID, from the kernel's random source.
pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_and_differ() {
        let (a, b) = (uuid(), uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    struct Sink(parking_lot::Mutex<Vec<Vec<u8>>>);

    impl ClientSink for Sink {
        fn push(&self, line: Vec<u8>) {
            self.0.lock().push(line);
        }
    }

    #[test]
    fn held_events_are_bounded_and_delivered_in_order() {
        let mut h = Held {
            cap: 10,
            ..Held::default()
        };
        assert_eq!(h.keep(b"aaaa\n".to_vec(), 1), 0);
        assert_eq!(h.keep(b"bbbb\n".to_vec(), 1), 0);
        assert_eq!(h.keep(b"cc\n".to_vec(), 1), 1, "the oldest goes first");
        assert_eq!(h.keep(b"a batch over the cap alone\n".to_vec(), 2), 2);
        let sink = Sink(parking_lot::Mutex::new(Vec::new()));
        assert_eq!(h.deliver(&sink), 2);
        assert_eq!(
            *sink.0.lock(),
            vec![b"a batch over the cap alone\n".to_vec()]
        );
        assert_eq!((h.bytes, h.batches.len()), (0, 0));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
