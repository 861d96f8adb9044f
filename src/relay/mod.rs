//! The ClawNet relay: Socket.IO clients (remote agents and dashboards) with identity,
//! presence, tasks, chat and rooms, per tenant, durable in the daemon's store.
//!
//! Layout:
//! - [`engine`]: Engine.IO sessions and transports, timers; output resolved into pushes.
//! - [`socket`]: the Socket.IO handshake (tokens, [`auth`]) and what a socket's arrival and
//!   departure change (presence, rooms).
//! - [`events`]: the event dispatch table and the core events; the next events (resources)
//!   are added to the same table.
//! - [`tenant`]: one tenant's agents, rooms, tasks and chat, and their documents in the store.
//! - [`resources`]: what the resource events share (access, arguments, replies); the events
//!   are in [`memory`] (shared memory: the kernel's state store), [`credentials`] (encrypted,
//!   with key rotation), [`files`], [`skills`], [`configs`] and [`orchestrate`] (driving the
//!   sans-I/O state machine of [`orchestration`]).
//! - [`api`]: the HTTP routes besides Engine.IO.
//!
//! Threads: all state is in one [`State`] behind one mutex. The front-end calls in on the
//! reactor thread (every packet is bounded in-memory work); the `clove-relay` thread runs the
//! timers (pings, handshake deadlines, command retries, coalesced fleet updates, orchestration
//! deadlines); the `clove-relay-io` thread ([`io`]) does the relay's disk work (file contents,
//! key rotation). Whoever
//! holds the lock only *collects* output ([`Effects`]); it is pushed to connections, and
//! changes are handed to the store, after the lock is released. An event whose effects must
//! be durable (tasks, chat) has its acknowledgement and broadcasts held back until the store
//! has committed: an ack means committed.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod configs;
pub mod credentials;
pub mod engine;
pub mod events;
pub mod files;
pub mod io;
pub mod memory;
pub mod orchestrate;
pub mod orchestration;
pub mod resources;
pub mod skills;
pub mod socket;
pub mod tenant;

use crate::kernel::Kernel;
use crate::proto::engineio::{ErrorCode, Packet};
use crate::proto::http::Persist;
use crate::store::DocWrite;
use auth::{Auth, Identity};
use config::RelayConfig;
use crossbeam_channel::{Receiver, Sender};
use engine::{Output, Session};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant::Tenant;

pub use engine::{ConnKey, Link, PollGet};

/// A connected Socket.IO socket: who it is.
#[derive(Debug, Clone)]
pub struct Socket {
    pub id: Identity,
    /// The Socket.IO sid sent in the CONNECT answer.
    pub sio_sid: String,
}

/// Something the relay thread must do at a given time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Ping session (key, ping generation).
    Ping(u64, u64),
    /// The pong for that ping is due.
    Pong(u64, u64),
    /// The Socket.IO handshake of a session is due.
    Connect(u64),
    /// A command not acknowledged yet: (tenant, task id, attempt).
    AckRetry(String, String, u32),
    /// Send the tenant's coalesced fleet update.
    Fleet(String),
    /// An orchestration task's deadline: (tenant, plan id, task index).
    Orchestration(String, String, usize),
    /// Forget expired revocations and rate-limit entries.
    Prune,
}

/// Due times, in order; stale entries are recognised when they fire and ignored.
#[derive(Default)]
pub struct Timers {
    queue: BTreeMap<(Instant, u64), Timer>,
    seq: u64,
    /// The earliest deadline was moved earlier: the relay thread must wake.
    pub moved_earlier: bool,
}

/// A timer's place in the queue, to cancel it.
pub type TimerKey = (Instant, u64);

impl Timers {
    pub fn add(&mut self, at: Instant, t: Timer) -> TimerKey {
        if self
            .queue
            .keys()
            .next()
            .is_none_or(|(first, _)| at < *first)
        {
            self.moved_earlier = true;
        }
        self.seq += 1;
        self.queue.insert((at, self.seq), t);
        (at, self.seq)
    }

    /// Removes a timer that has not fired yet (nothing happens when it has).
    pub fn cancel(&mut self, key: TimerKey) {
        self.queue.remove(&key);
    }

    fn next(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (&k, _) = self.queue.iter().next().filter(|((at, _), _)| *at <= now)?;
        self.queue.remove(&k)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Output and changes collected under the lock, carried out after it is released.
#[derive(Default)]
pub struct Effects {
    pub sends: Vec<Output>,
    /// Store batches, each with the Socket.IO output held back until it commits.
    pub commits: Vec<Commit>,
    /// Kernel events (`RELAY_EVENT`) to publish.
    pub events: Vec<Value>,
    /// Audit entries: (event type, success, details).
    pub audits: Vec<(&'static str, bool, Value)>,
    /// Changes to shared memory (the kernel's state store).
    pub kv: Vec<memory::KvChange>,
}

/// A batch of document changes and what to send once it is committed.
pub struct Commit {
    pub writes: Vec<DocWrite>,
    /// (session keys, Socket.IO packet text) to send after the commit.
    pub outs: Vec<(Vec<u64>, String)>,
    /// Sent instead when the commit fails: (session key, ack id) to answer with an error.
    pub on_error: Option<(u64, u64)>,
    /// I/O jobs queued once it is committed.
    pub after: Vec<io::Job>,
}

/// Counters for HELLO's `services.relay`, `clove status` and `GET /api/metrics`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub refused_sessions: u64,
    pub upgrades: u64,
    pub handshakes: u64,
    pub auth_failures: u64,
    pub rate_limited: u64,
    pub events: u64,
    pub unknown_events: u64,
    pub protocol_errors: u64,
    pub ping_timeouts: u64,
    pub dropped_slow: u64,
    pub replaced_sockets: u64,
    pub dispatches: u64,
    pub commands_sent: u64,
    pub command_retries: u64,
    pub commands_unacked: u64,
    pub chats: u64,
    pub store_errors: u64,
    pub uploads: u64,
    pub downloads: u64,
    pub downloads_refused: u64,
    pub orchestration_tasks_sent: u64,
}

/// Everything the relay keeps, behind one lock.
pub struct State {
    pub cfg: Arc<RelayConfig>,
    pub auth: Auth,
    pub sessions: HashMap<u64, Session>,
    pub by_sid: HashMap<String, u64>,
    pub next_key: u64,
    pub tenants: HashMap<String, Tenant>,
    pub timers: Timers,
    pub fx: Effects,
    pub counters: Counters,
    /// The kernel, whose state store holds shared memory (`None` in tests of the state alone).
    pub kernel: Option<Arc<Kernel>>,
    /// The credentials' master keys (`None` until opened at start).
    pub keyring: Option<credentials::Keyring>,
    /// The way to the I/O thread (`None`: file events are refused).
    pub io: Option<io::IoQueue>,
    /// Bytes of uploads queued or being written, all tenants together.
    pub uploads_in_flight: u64,
}

impl State {
    /// Empty state: no sessions, tenants or timers.
    pub fn new(cfg: Arc<RelayConfig>, auth: Auth) -> State {
        State {
            cfg,
            auth,
            sessions: HashMap::new(),
            by_sid: HashMap::new(),
            next_key: 0,
            tenants: HashMap::new(),
            timers: Timers::default(),
            fx: Effects::default(),
            counters: Counters::default(),
            kernel: None,
            keyring: None,
            io: None,
            uploads_in_flight: 0,
        }
    }

    /// Fires every timer due at `now` (the relay thread's work, for tests without it).
    pub fn fire_due(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_due(now) {
            self.fire(t);
        }
    }

    /// The tenant named `name`, made on first use.
    pub fn tenant(&mut self, name: &str) -> &mut Tenant {
        self.tenants
            .entry(name.to_owned())
            .or_insert_with(|| Tenant::new(name))
    }

    /// Takes what was collected.
    fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }
}

/// The relay service: its state and the way to the store, the kernel and its timer thread.
pub struct Relay {
    pub cfg: Arc<RelayConfig>,
    state: Mutex<State>,
    kernel: Arc<Kernel>,
    wake: Sender<()>,
    wake_rx: Receiver<()>,
    /// Live connections to the relay listener (for the probe; kept by the front-end).
    pub connections: std::sync::atomic::AtomicUsize,
    stopping: std::sync::atomic::AtomicBool,
    /// The I/O thread's queue, until the thread is started.
    io_rx: Mutex<Option<Receiver<io::Job>>>,
    pub(crate) io_queue: io::IoQueue,
    /// The reactor's unsent reply bytes and the daemon-wide bound on them
    /// (`server.pending_reply_total_bytes`): a download that would pass it is refused.
    reply_budget: Mutex<Option<(Arc<std::sync::atomic::AtomicUsize>, usize)>>,
}

impl Relay {
    /// Builds the relay: its keys, its tokens and its durable state from the store (a first
    /// start with no way in writes a master token file). Call before the reactor runs.
    pub fn new(cfg: RelayConfig, kernel: Arc<Kernel>) -> Result<Arc<Relay>, String> {
        let cfg = Arc::new(cfg);
        let key = auth::load_or_create_key(&cfg.state_dir).map_err(|e| {
            format!(
                "relay: cannot read or create the JWT key in {}: {e}",
                cfg.state_dir.display()
            )
        })?;
        let auth = Auth::new(
            cfg.secrets.clone(),
            &key,
            cfg.jwt_ttl,
            cfg.auth_failures_per_minute,
        );
        let mut state = State::new(cfg.clone(), auth);
        state.kernel = Some(kernel.clone());
        tenant::load(&mut state, &kernel.store);
        credentials::open_keyring(&mut state, &kernel.store)?;
        files::sweep_orphans(&state);
        let (io_queue, io_rx) = io::IoQueue::new();
        state.io = Some(io_queue.clone());
        let _ = state
            .timers
            .add(Instant::now() + Duration::from_secs(60), Timer::Prune);
        socket::ensure_master_token(&mut state, &kernel.store)?;
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        Ok(Arc::new(Relay {
            cfg,
            state: Mutex::new(state),
            kernel,
            wake,
            wake_rx,
            connections: std::sync::atomic::AtomicUsize::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            io_rx: Mutex::new(Some(io_rx)),
            io_queue,
            reply_budget: Mutex::new(None),
        }))
    }

    /// Tells the relay the reactor's gauge of unsent reply bytes and its bound, so that a
    /// download does not push the daemon past it.
    pub fn set_reply_budget(&self, pending: Arc<std::sync::atomic::AtomicUsize>, max: usize) {
        *self.reply_budget.lock() = Some((pending, max));
    }

    /// Would `bytes` more of replies pass the daemon-wide bound?
    pub fn reply_budget_full(&self, bytes: usize) -> bool {
        self.reply_budget
            .lock()
            .as_ref()
            .is_some_and(|(pending, max)| {
                pending.load(std::sync::atomic::Ordering::Relaxed) + bytes > *max
            })
    }

    /// Runs `f` on the state, then carries out its effects (after releasing the lock).
    pub fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, fx, wake) = {
            let mut st = self.state.lock();
            let r = f(&mut st);
            let wake = std::mem::take(&mut st.timers.moved_earlier);
            (r, st.take_effects(), wake)
        };
        if wake {
            let _ = self.wake.try_send(());
        }
        self.apply(fx);
        r
    }

    fn apply(self: &Arc<Self>, fx: Effects) {
        for s in fx.sends {
            if s.respond {
                s.link.respond(s.bytes, s.close);
            } else if s.close {
                s.link.push_close(s.bytes);
            } else {
                s.link.push(s.bytes);
            }
        }
        for data in fx.events {
            self.kernel.emit("RELAY_EVENT", data, 0);
        }
        for (event, ok, details) in fx.audits {
            self.kernel.audit(
                crate::kernel::audit::Category::Security,
                event,
                0,
                ok,
                details,
            );
        }
        for c in fx.commits {
            self.commit(c);
        }
        for c in fx.kv {
            self.commit_kv(c);
        }
    }

    /// Hands a shared-memory change to the state store: the record first, then the key; the
    /// output goes out once the key is committed (STATE_CHANGED too, for the Clove side).
    fn commit_kv(self: &Arc<Self>, c: memory::KvChange) {
        let store = &self.kernel.store;
        if !c.docs.is_empty() {
            store.submit_docs(
                c.docs,
                Box::new(|r| {
                    if let Err(e) = r {
                        log::error!("relay: cannot save a shared key's owner: {e}");
                    }
                }),
            );
        }
        let me = self.clone();
        let memory::KvChange {
            tenant,
            ns,
            key,
            value,
            outs,
            on_error,
            previous,
            ..
        } = c;
        let action = if value.is_some() { "store" } else { "delete" };
        let done_key = key.clone();
        let done: crate::store::Done = Box::new(move |r| match r {
            Ok(_) => {
                crate::kernel::state::announce(
                    &me.kernel.events,
                    0,
                    &done_key,
                    action,
                    crate::store::Scope::Global,
                    ns,
                );
                me.with(|st| {
                    for (keys, text) in &outs {
                        st.send_many(keys, &Packet::message(text.clone()));
                    }
                });
            }
            Err(e) => me.with(|st| {
                st.memory_failed(&tenant, &done_key, previous);
                if let Some((k, ack)) = on_error {
                    let msg = format!("cannot {action} {done_key:?}: {e}");
                    st.emit_ack(k, ack, events::error_reply(memory::store_code(&e), &msg));
                }
            }),
        });
        match value {
            Some((value, expires_ms)) => store.submit_put(
                crate::store::Put {
                    ns,
                    key,
                    value,
                    scope: crate::store::Scope::Global,
                    expires_ms,
                    durable: true,
                },
                done,
            ),
            None => store.submit_delete(key, ns, None, done),
        }
    }

    /// Hands a batch to the store; its held-back output goes out once it is committed.
    fn commit(self: &Arc<Self>, c: Commit) {
        let me = self.clone();
        let Commit {
            writes,
            outs,
            on_error,
            after,
        } = c;
        self.kernel.store.submit_docs(
            writes,
            Box::new(move |r| {
                me.with(|st| match r {
                    Ok(_) => {
                        for (key, text) in &outs {
                            st.send_many(key, &Packet::message(text.clone()));
                        }
                        st.queue_jobs(after);
                    }
                    Err(e) => {
                        st.counters.store_errors += 1;
                        log::error!("relay: cannot save a change: {e}");
                        if let Some((key, ack)) = on_error {
                            let reply =
                                events::error_reply("INTERNAL_ERROR", &format!("not saved: {e}"));
                            st.emit_ack(key, ack, reply);
                        }
                    }
                })
            }),
        );
    }

    /// Starts the thread that runs the relay's timers, and the I/O thread (which the timer
    /// thread stops and joins when it ends).
    pub fn start_timers(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rx = self.io_rx.lock().take();
        let io = match rx {
            Some(rx) => Some(io::start(self.clone(), rx)?),
            None => None,
        };
        let me = self.clone();
        let queue = self.io_queue.clone();
        std::thread::Builder::new()
            .name("clove-relay".into())
            .spawn(move || {
                me.timer_loop();
                if let Some(t) = io {
                    queue.stop();
                    let _ = t.join();
                }
            })
    }

    fn timer_loop(self: Arc<Self>) {
        loop {
            let next = self.with(|st| {
                let now = Instant::now();
                let mut fired = 0;
                // A bounded batch per turn, so the lock is never held for long.
                while fired < 4096 {
                    let Some(t) = st.timers.pop_due(now) else {
                        break;
                    };
                    st.fire(t);
                    fired += 1;
                }
                st.timers.next()
            });
            let wait = next.map(|at| at.saturating_duration_since(Instant::now()));
            let r = match wait {
                Some(d) => self.wake_rx.recv_timeout(d),
                None => self
                    .wake_rx
                    .recv()
                    .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
            };
            if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = r {
                return;
            }
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
        }
    }

    /// Stops the timer thread (at shutdown).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.wake.try_send(());
    }

    /// A polling handshake; the body of its response.
    pub fn open_polling(
        self: &Arc<Self>,
        source: &str,
        persist: Persist,
    ) -> Result<Vec<u8>, ErrorCode> {
        self.with(|st| st.open_polling(source, persist))
    }

    /// A WebSocket handshake without a session: a new one, whose open packet goes to `link`.
    pub fn open_websocket(
        self: &Arc<Self>,
        source: &str,
        conn: ConnKey,
        link: Arc<dyn Link>,
    ) -> Result<String, ErrorCode> {
        self.with(|st| st.open_websocket(source, conn, link))
    }

    /// A polling GET of session `sid`.
    pub fn poll_get(
        self: &Arc<Self>,
        sid: &str,
        conn: ConnKey,
        link: Arc<dyn Link>,
        persist: Persist,
    ) -> PollGet {
        self.with(|st| st.poll_get(sid, conn, link, persist))
    }

    /// A polling POST of session `sid`: `Err((status, body))` when refused.
    pub fn poll_post(self: &Arc<Self>, sid: &str, body: &[u8]) -> Result<(), (u16, String)> {
        self.with(|st| st.poll_post(sid, body))
    }

    /// A WebSocket connection that names session `sid`: an upgrade probe.
    pub fn ws_probe(
        self: &Arc<Self>,
        sid: &str,
        conn: ConnKey,
        link: Arc<dyn Link>,
    ) -> Result<(), ErrorCode> {
        self.with(|st| st.ws_probe(sid, conn, link))
    }

    /// Engine.IO packets that arrived on WebSocket connection `conn` for session `sid`.
    pub fn ws_packets(self: &Arc<Self>, sid: &str, conn: ConnKey, packets: Vec<Packet>) {
        self.with(|st| {
            for p in packets {
                st.ws_packet(sid, conn, p);
            }
        })
    }

    /// Connection `conn` closed (it held a GET of `sid`, or carried its WebSocket).
    pub fn conn_closed(self: &Arc<Self>, sid: &str, conn: ConnKey) {
        self.with(|st| st.conn_closed(sid, conn))
    }

    /// An API request: `Some` answer now, or `None` when it comes later through `link`
    /// (after a commit).
    pub fn api(
        self: &Arc<Self>,
        req: &api::ApiRequest,
        link: Arc<dyn Link>,
        persist: Persist,
    ) -> Option<(u16, Value)> {
        match self.with(|st| st.api(req)) {
            api::ApiReply::Now(status, v) => Some((status, v)),
            api::ApiReply::AfterCommit(writes, status, v) => {
                self.kernel.store.submit_docs(
                    writes,
                    Box::new(move |r| {
                        let (status, v) = match r {
                            Ok(_) => (status, v),
                            Err(e) => (500, json!({"error": format!("not saved: {e}")})),
                        };
                        let bytes = engine::http_response(
                            status,
                            "application/json",
                            v.to_string().as_bytes(),
                            persist,
                        );
                        link.respond(bytes, persist == Persist::Close);
                    }),
                );
                None
            }
        }
    }

    /// Figures for HELLO's `services.relay` (reads memory only).
    pub fn report(&self) -> Value {
        let st = self.state.lock();
        let sockets = st.sessions.values().filter(|s| s.socket.is_some()).count();
        let mut v = serde_json::to_value(&st.counters).unwrap_or(Value::Null);
        v["listen"] = json!(self.cfg.listen.map(|a| a.to_string()));
        v["sessions"] = json!(st.sessions.len());
        v["sockets"] = json!(sockets);
        v["tenants"] = json!(st.tenants.len());
        v["timers"] = json!(st.timers.len());
        v["connections"] = json!(self.connections.load(std::sync::atomic::Ordering::Relaxed));
        v
    }
}

impl State {
    fn fire(&mut self, t: Timer) {
        match t {
            Timer::Ping(key, g) => self.ping_due(key, g),
            Timer::Pong(key, g) => self.pong_due(key, g),
            Timer::Connect(key) => self.connect_due(key),
            Timer::AckRetry(tenant, task, attempt) => self.ack_retry(&tenant, &task, attempt),
            Timer::Fleet(tenant) => self.flush_fleet(&tenant),
            Timer::Orchestration(tenant, id, index) => self.plan_deadline(&tenant, &id, index),
            Timer::Prune => {
                self.auth.prune(crate::clock::now_ms());
                self.sweep_memory();
                let _ = self
                    .timers
                    .add(Instant::now() + Duration::from_secs(60), Timer::Prune);
            }
        }
    }
}
