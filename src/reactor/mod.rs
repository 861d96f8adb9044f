//! The reactor: one thread, one `mio::Poll`, every client socket.
//!
//! It accepts connections (checking peer credentials and the connection caps, which the kernel
//! applies when it attributes a connection, see [`crate::kernel::conns`]), reads into a
//! shared scratch buffer, hands input to each connection's protocol front-end, writes replies,
//! and applies flow control:
//!
//! * a connection with a request at a worker is not read until the reply comes back;
//! * a connection whose unsent replies exceed `max_pending_reply_bytes` is not read either, and
//!   is dropped when it makes no write progress for `slow_client_timeout`;
//! * the reply bytes of all connections together are bounded by `pending_reply_total_bytes`
//!   (see [`OutputBudget`]): past three quarters of it, connections with unsent replies are
//!   paused like the above; at the whole of it, every connection waits, and paused ones that
//!   make no progress are dropped after at most a second instead of `slow_client_timeout`,
//!   so clients that do not read cannot hold the budget and shut the others out;
//! * at most `max_pipelined` requests are taken from one connection per turn, then others get
//!   theirs (the connection is re-queued);
//! * a full worker queue pauses the connection, never buffers without bound.
//!
//! Worker results arrive as [`Completion`]s over a bounded channel, followed by a
//! [`mio::Waker`] wake-up. Completions carry a [`ConnId`] whose generation must match, so a late
//! reply for a closed connection is dropped, never delivered to a reused slot.

pub mod config;
pub mod conn;
pub mod listen;
pub mod tls;

use crate::frontend::warnings::Warnings;
use crate::frontend::{ConnIo, ConnLabel, Env, Outbox, OutputBudget, Stop};
use crate::kernel::conns::Holder;
use crate::kernel::{Admitted, Kernel, Peer};
use crate::ops::Ops;
use crate::pool::WorkerPool;
use crate::proto::clove;
use config::ServerConfig;
use conn::{Conn, Io, Stream, read_once, write_once};
use crossbeam_channel::{Receiver, Sender};
use listen::{Admission, ListenSocket, Listener, PeerOf};
use mio::{Events, Interest, Poll, Token, Waker};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Wakes the reactor when completions are queued or shutdown is requested.
pub const WAKER: Token = Token(0);
/// Listener tokens: token = FIRST_LISTENER + index in the order listeners were added.
const FIRST_LISTENER: usize = 1;
/// Connections accepted per turn of the loop at most, refused ones included (each costs
/// reading /proc to attribute it, and a write when refused): 64 take a few milliseconds, so
/// the clients already connected are served at least that often during a storm of new ones.
const ACCEPTS_PER_TURN: usize = 64;
/// Connection tokens start here: token = FIRST_CONN + slot.
const FIRST_CONN: usize = 16;
/// Most listeners one reactor serves.
pub const MAX_LISTENERS: usize = FIRST_CONN - FIRST_LISTENER;

/// Bytes read from a socket at a time.
const SCRATCH: usize = 256 * 1024;
/// Pending output beyond this is written out while input is still being read, and a buffer
/// whose written front passes it is compacted.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;
/// Buffers larger than this are released once empty, so idle connections stay small: a relay
/// client is sent a fleet snapshot of tens of KiB once, and ten thousand of them must not each
/// keep that much.
const KEEP_IDLE_OUT: usize = 4096;
/// How often paused connections are checked while any exist.
const SLOW_CHECK: Duration = Duration::from_millis(100);
/// How long a paused connection may read nothing while others wait for room in the daemon-wide
/// reply budget (`server.pending_reply_total_bytes`), if `slow_client_timeout_ms` is longer.
const PRESSED_SLOW_CLIENT: Duration = Duration::from_secs(1);
/// Retry interval while connections wait for room in the worker queue or accept is throttled.
const RETRY: Duration = Duration::from_millis(5);

/// A connection's address in the reactor: slot plus generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

impl ConnId {
    fn label(self) -> ConnLabel {
        ConnLabel {
            slot: self.slot,
            generation: self.generation,
        }
    }
}

/// What a completion means for the connection's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionKind {
    /// The reply to the connection's outstanding request: it may take the next one.
    Reply,
    /// An unsolicited message (events streamed by a service).
    Push,
    /// An unsolicited message, after which the connection is closed once it is written.
    PushClose,
}

/// Bytes for a connection, produced off the reactor thread.
#[derive(Debug)]
pub struct Completion {
    pub conn: ConnId,
    pub bytes: Vec<u8>,
    pub kind: CompletionKind,
}

impl Completion {
    pub fn reply(conn: ConnId, bytes: Vec<u8>) -> Completion {
        Completion {
            conn,
            bytes,
            kind: CompletionKind::Reply,
        }
    }
}

/// One connection's [`Outbox`]: completions addressed to it, through the sink.
struct ConnOutbox {
    sink: Sink,
    conn: ConnId,
}

impl Outbox for ConnOutbox {
    fn reply(&self, bytes: Vec<u8>) {
        self.sink.send(Completion::reply(self.conn, bytes));
    }

    fn push(&self, bytes: Vec<u8>) {
        self.sink.send(Completion {
            conn: self.conn,
            bytes,
            kind: CompletionKind::Push,
        });
    }

    fn push_close(&self, bytes: Vec<u8>) {
        self.sink.send(Completion {
            conn: self.conn,
            bytes,
            kind: CompletionKind::PushClose,
        });
    }
}

/// The sending side of the completion queue: a bounded channel plus the reactor's waker.
///
/// The channel (`server.completion_queue`) is back-pressure: a worker, the store's writer or
/// the supervisor whose completion finds it full waits until the reactor has taken some. Two
/// senders must never wait: the reactor itself (an inline handler that answers through a
/// [`crate::kernel::Responder`], or drops one) would wait for its own reading, so its
/// completions go to a reactor-local list instead (see [`Sink::send`]); and after the reactor
/// stops, the receiver is dropped, so late completions are discarded instead of waited on.
#[derive(Clone)]
pub struct Sink {
    tx: Sender<Completion>,
    waker: Arc<Waker>,
}

thread_local! {
    /// Completions sent on the reactor thread while it runs (`Some` only there). Each is the
    /// one reply a busy connection waits for, so the list never holds more entries than
    /// there are connections; the reactor empties it every turn.
    static REACTOR_LOCAL: RefCell<Option<Vec<Completion>>> = const { RefCell::new(None) };
}

/// Completions the reactor sent itself are waiting for its next turn.
fn local_completions_waiting() -> bool {
    REACTOR_LOCAL
        .try_with(|local| local.borrow().as_ref().is_some_and(|l| !l.is_empty()))
        .unwrap_or(false)
}

impl Sink {
    pub fn new(tx: Sender<Completion>, waker: Arc<Waker>) -> Sink {
        Sink { tx, waker }
    }

    /// Queues a completion and wakes the reactor. Waits while the queue is full (the reactor
    /// drains it every turn), except on the reactor thread, which never waits for itself.
    /// After shutdown the completion is dropped.
    pub fn send(&self, c: Completion) {
        let mut c = Some(c);
        let _ = REACTOR_LOCAL.try_with(|local| {
            if let Some(list) = local.borrow_mut().as_mut() {
                list.extend(c.take());
            }
        });
        // `None`: kept for the reactor's next turn, which comes at once: the reactor looks at
        // its own list before it sleeps (see `Reactor::next_timeout`), so no wake-up (a
        // syscall per reply) is needed.
        if let Some(c) = c
            && self.tx.send(c).is_ok()
        {
            self.wake();
        }
    }

    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake reactor: {e}");
        }
    }

    /// Room in the completion queue (`server.completion_queue`).
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }

    /// Completions waiting for the reactor.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// Counters for `clove status` and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub accepted: u64,
    pub refused_uid: u64,
    pub refused_full: u64,
    /// Refused by a cap on whom a connection counts against (`crate::kernel::conns`).
    pub refused_caps: u64,
    /// Connections of agents closed for being idle.
    pub closed_idle: u64,
    pub dropped_slow: u64,
    /// Peers on another host refused by a listener that allows none.
    pub refused_remote: u64,
    /// Connections dropped for holding more pushed output than their allowance.
    pub dropped_push: u64,
    pub requests: u64,
}

/// The event loop.
pub struct Reactor {
    poll: Poll,
    config: ServerConfig,
    kernel: Arc<Kernel>,
    ops: Arc<Ops>,
    sink: Sink,
    pool: WorkerPool,
    completions: Receiver<Completion>,
    listeners: Vec<Listener>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    ready: VecDeque<ConnId>,
    pool_waiters: Vec<ConnId>,
    /// Connections with nothing to write that wait for room in the daemon-wide reply budget.
    budget_waiters: Vec<ConnId>,
    paused: usize,
    /// Reply bytes all connections hold (the sum of their `Conn::counted`): what
    /// `server.pending_reply_total_bytes` bounds.
    pending_total: usize,
    /// Where connections with unsent replies stop: see [`OutputBudget`].
    soft_total: usize,
    /// `pending_total` for HELLO, updated every turn.
    pending_gauge: Arc<AtomicUsize>,
    scratch: Vec<u8>,
    shutdown: Arc<AtomicBool>,
    accept_retry: Option<Instant>,
    next_slow_check: Option<Instant>,
    /// Live connections of agents (closed when idle), and when to look for idle ones next.
    agent_conns: usize,
    next_idle_check: Option<Instant>,
    my_uid: u32,
    /// The rate limit for warnings about single connections.
    warnings: Warnings,
    /// Listeners that may have connections waiting: their last accept did not see
    /// `WouldBlock` (edge-triggered, so no new event will say so). A bit per listener.
    accept_pending: u32,
    /// systemd's watchdog and status timer, when running under systemd (`Type=notify`).
    heartbeat: Option<crate::systemd::Heartbeat>,
    pub stats: Stats,
}

impl Reactor {
    /// Builds a reactor around an existing poll (whose waker the kernel's sink uses).
    /// `pending_gauge` is kept up to date with the reply bytes held for all connections.
    pub fn new(
        poll: Poll,
        config: ServerConfig,
        ops: Arc<Ops>,
        pool: WorkerPool,
        completions: (Sink, Receiver<Completion>),
        shutdown: Arc<AtomicBool>,
        pending_gauge: Arc<AtomicUsize>,
    ) -> Reactor {
        let (sink, completions) = completions;
        Reactor {
            soft_total: config.pending_reply_total_bytes / 4 * 3,
            poll,
            config,
            kernel: ops.kernel.clone(),
            ops,
            sink,
            pool,
            completions,
            listeners: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            ready: VecDeque::new(),
            pool_waiters: Vec::new(),
            budget_waiters: Vec::new(),
            paused: 0,
            pending_total: 0,
            pending_gauge,
            scratch: vec![0; SCRATCH],
            shutdown,
            accept_retry: None,
            next_slow_check: None,
            agent_conns: 0,
            next_idle_check: None,
            my_uid: nix::unistd::geteuid().as_raw(),
            warnings: Warnings::new(),
            accept_pending: 0,
            heartbeat: None,
            stats: Stats::default(),
        }
    }

    /// Sends systemd watchdog pings and status from this loop, so they stop when it stops.
    pub fn set_heartbeat(&mut self, heartbeat: crate::systemd::Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    /// Starts accepting on a bound listener.
    pub fn add_listener(&mut self, mut listener: Listener) -> io::Result<()> {
        if self.listeners.len() >= MAX_LISTENERS {
            return Err(io::Error::other(format!(
                "at most {MAX_LISTENERS} listeners"
            )));
        }
        let token = Token(FIRST_LISTENER + self.listeners.len());
        let registry = self.poll.registry();
        match &mut listener.socket {
            ListenSocket::Unix(l) => registry.register(l, token, Interest::READABLE)?,
            ListenSocket::Tcp(l) => registry.register(l, token, Interest::READABLE)?,
        }
        self.listeners.push(listener);
        Ok(())
    }

    /// Runs until shutdown is requested. Connections are closed on the way out, and the
    /// completion queue with them: completions sent after that are dropped, never waited on.
    pub fn run(&mut self) -> io::Result<()> {
        REACTOR_LOCAL.with(|local| *local.borrow_mut() = Some(Vec::new()));
        let result = self.run_loop();
        self.close_all();
        REACTOR_LOCAL.with(|local| *local.borrow_mut() = None);
        // Senders still waiting for room get an error (and drop their completion) at once.
        self.completions = crossbeam_channel::never();
        result
    }

    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shutdown.load(Ordering::Acquire) {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if (FIRST_LISTENER..FIRST_CONN).contains(&t) => {
                        self.accept_pending |= 1 << (t - FIRST_LISTENER)
                    }
                    Token(t) if t >= FIRST_CONN => {
                        let slot = (t - FIRST_CONN) as u32;
                        let Some(s) = self.slots.get_mut(slot as usize) else {
                            continue;
                        };
                        let id = ConnId {
                            slot,
                            generation: s.generation,
                        };
                        if let Some(c) = s.conn.as_mut() {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                c.readable = true;
                            }
                            if ev.is_read_closed() {
                                c.hup_seen = true;
                            }
                            if ev.is_writable() || ev.is_error() {
                                c.writable = true;
                            }
                            self.service(id);
                        }
                    }
                    Token(_) => {}
                }
            }
            // New connections after the established ones have had their events, and only a
            // bounded number per turn.
            if self.accept_pending != 0 {
                self.accept_waiting();
            }
            self.drain_completions();
            self.run_ready();
            self.run_timers();
            // After the timers: dropping slow clients is what frees the budget when it is spent.
            self.wake_budget_waiters();
            self.pending_gauge
                .store(self.pending_total, Ordering::Relaxed);
        }
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || self.accept_pending != 0 || local_completions_waiting() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut consider = |t: Instant| {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        };
        if !self.pool_waiters.is_empty() {
            consider(now + RETRY);
        }
        if let Some(t) = self.accept_retry {
            consider(t);
        }
        if let Some(t) = self.next_slow_check {
            consider(t);
        }
        if let Some(t) = self.next_idle_check {
            consider(t);
        }
        if let Some(t) = self.warnings.next_tick() {
            consider(t);
        }
        if let Some(h) = &self.heartbeat {
            consider(h.deadline());
        }
        if let Some(at_ms) = self.kernel.store.next_expiry() {
            let now_ms = crate::clock::now_ms();
            consider(now + Duration::from_millis(at_ms.saturating_sub(now_ms)));
        }
        deadline.map(|d| d.saturating_duration_since(now))
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        if let Some(at) = self.kernel.store.next_expiry()
            && at <= crate::clock::now_ms()
        {
            self.kernel.tick(crate::clock::now_ms());
        }
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept_retry = None;
            self.accept_pending = (1u32 << self.listeners.len()) - 1;
            self.accept_waiting();
        }
        if !self.pool_waiters.is_empty() {
            for id in std::mem::take(&mut self.pool_waiters) {
                if let Some(c) = self.conn_mut(id) {
                    c.waiting_pool = false;
                }
                self.schedule(id);
            }
            self.run_ready();
        }
        if self.next_slow_check.is_some_and(|t| t <= now) {
            self.check_slow_clients(now);
        }
        if self.next_idle_check.is_some_and(|t| t <= now) {
            self.close_idle_agent_connections(now);
        }
        self.warnings.tick(now);
        if let Some(h) = self.heartbeat.as_mut() {
            h.tick(now);
        }
    }

    fn check_slow_clients(&mut self, now: Instant) {
        // While the daemon-wide reply budget is spent and connections wait for room, the
        // connections holding it that read nothing go sooner: each waiting one waits for them.
        let limit = if self.budget_waiters.is_empty() {
            self.config.slow_client_timeout
        } else {
            self.config.slow_client_timeout.min(PRESSED_SLOW_CLIENT)
        };
        let mut victims = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(c) = &s.conn
                && c.paused_since.is_some()
                && now.duration_since(c.last_write) >= limit
            {
                victims.push(ConnId {
                    slot: i as u32,
                    generation: s.generation,
                });
            }
        }
        for id in victims {
            self.warnings.warn(
                module_path!(),
                format_args!(
                    "conn={id}: client has not read its replies for {limit:?}; dropping it"
                ),
            );
            self.stats.dropped_slow += 1;
            self.close(id);
        }
        self.next_slow_check = (self.paused > 0).then(|| now + SLOW_CHECK);
    }

    /// Closes connections of agents that have had nothing going on (no request at a worker,
    /// no reply to write, nothing read) for `agent_idle_timeout`: an agent runs untrusted code,
    /// and idle connections it leaves open would hold slots. Plain clients' are kept.
    fn close_idle_agent_connections(&mut self, now: Instant) {
        let limit = self.config.agent_idle_timeout;
        let mut idle = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(c) = &s.conn
                && c.agent
                && !c.io.busy
                && c.io.pending_out() == 0
                && now.duration_since(c.last_read.max(c.last_write)) >= limit
            {
                idle.push((
                    ConnId {
                        slot: i as u32,
                        generation: s.generation,
                    },
                    c.io.caller,
                ));
            }
        }
        for (id, caller) in idle {
            // Routine, and as frequent as an agent makes connections: not worth an info line.
            log::debug!(
                "conn={id} caller={caller}: agent connection idle for {limit:?} \
                 (server.agent_idle_timeout_secs); closing it"
            );
            self.stats.closed_idle += 1;
            self.close(id);
        }
        self.next_idle_check = (self.agent_conns > 0).then(|| now + idle_check_every(limit));
    }

    /// Accepts up to [`ACCEPTS_PER_TURN`] connections in all, from the listeners that have
    /// some waiting. With more waiting, their bits stay set in `accept_pending` and the next
    /// turn (which polls without waiting) takes the next ones, after the established
    /// connections have been served: a storm of new connections cannot keep the loop
    /// accepting while the clients already connected wait.
    fn accept_waiting(&mut self) {
        let mut budget = ACCEPTS_PER_TURN;
        for index in 0..self.listeners.len() {
            if self.accept_pending & (1 << index) != 0 && budget > 0 {
                self.accept_pending &= !(1 << index);
                self.accept(index, &mut budget);
            }
        }
    }

    /// Accepts from one listener until it has no more or `budget` is spent.
    fn accept(&mut self, index: usize, budget: &mut usize) {
        loop {
            if *budget == 0 {
                self.accept_pending |= 1 << index;
                return;
            }
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let accepted = match &listener.socket {
                ListenSocket::Unix(l) => l.accept().map(|(s, _)| {
                    let peer = listen::unix_peer(&s).map(PeerOf::Known);
                    (Stream::Unix(s), peer)
                }),
                ListenSocket::Tcp(l) => l.accept().map(|(s, _)| {
                    // No Nagle: the reactor already writes a turn's output at once (one event line, one
                    // reply), and Nagle
                    // would hold a small write back until the peer acknowledges the one before,
                    // which a peer with nothing to say delays by 40 ms (delayed ACK). Over TLS
                    // that hits every request that ends the handshake: the session tickets go
                    // out while reading it, and the reply waited for their ACK.
                    if let Err(e) = s.set_nodelay(true) {
                        log::debug!("{}: cannot set TCP_NODELAY: {e}", listener.name);
                    }
                    let peer = listen::tcp_peer(&s);
                    (Stream::Tcp(s), peer)
                }),
            };
            let accepted = match (accepted, &listener.tls) {
                (Ok((Stream::Tcp(s), peer)), Some(config)) => {
                    match tls::TlsStream::new(s, config.clone()) {
                        Ok(t) => Ok((Stream::Tls(Box::new(t)), peer)),
                        Err(e) => {
                            log::error!("{}: cannot start TLS: {e}", listener.name);
                            *budget = budget.saturating_sub(1);
                            continue;
                        }
                    }
                }
                (other, _) => other,
            };
            match accepted {
                Ok((stream, peer)) => {
                    *budget -= 1;
                    match peer {
                        Ok(peer) => self.admit(index, stream, peer),
                        Err(e) => self.warnings.warn(
                            module_path!(),
                            format_args!(
                                "{}: cannot tell who connected ({e}); refusing the connection",
                                self.listeners[index].name
                            ),
                        ),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE/ENFILE and friends: pending connections stay in the backlog;
                    // with edge-triggered readiness nobody will tell us again, so retry soon.
                    log::error!("accept failed: {e}; retrying shortly");
                    self.accept_retry = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    /// Checks a new connection (who it is, the connection caps) and attributes it to a
    /// caller, or refuses it on its listener's wire.
    fn admit(&mut self, index: usize, mut stream: Stream, peer: PeerOf) {
        let name = self.listeners[index].name;
        let peer = match peer {
            PeerOf::Known(p) => p,
            PeerOf::Remote(_) if self.listeners[index].allow_remote => Peer {
                pid: 0,
                uid: u32::MAX,
                gid: u32::MAX,
            },
            PeerOf::Remote(addr) => {
                self.stats.refused_remote += 1;
                self.warnings.warn(
                    module_path!(),
                    format_args!("{name}: refused connection from {addr}: not on this host"),
                );
                return self.refuse(
                    index,
                    &mut stream,
                    "permission denied: connect from this host",
                );
            }
        };
        let admission = self.listeners[index].admission;
        let remote = peer.uid == u32::MAX;
        let user =
            remote || peer.uid == self.my_uid || self.config.allowed_uids.contains(&peer.uid);
        // The user sandboxed agents run as (under a root daemon) gets in only as a live agent's
        // process; so does anyone on the agents' socket.
        let agent_user = self.kernel.config.agent_uid == Some(peer.uid);
        let may_try = match admission {
            Admission::Caller => user || agent_user,
            Admission::AgentsOnly => peer.uid == self.my_uid || agent_user,
            Admission::IdOnly => user,
        };
        if !may_try {
            return self.refuse_uid(index, &mut stream, peer);
        }
        // Before attributing it, which reads /proc: a full daemon refuses cheaply.
        if self.live >= self.config.max_connections {
            self.stats.refused_full += 1;
            self.warnings.warn(
                module_path!(),
                format_args!(
                    "{name}: refused connection from pid {}: {} connections open \
                     (server.max_connections)",
                    peer.pid, self.live
                ),
            );
            let msg = format!(
                "too many connections: the daemon holds its maximum of {} \
                 (server.max_connections)",
                self.config.max_connections
            );
            return self.refuse(index, &mut stream, &msg);
        }
        match self.attribute(admission, user, peer) {
            Ok(Some(admitted)) => self.install(index, stream, peer, admitted),
            // Only a live agent's process could have come in this way.
            Ok(None) => self.refuse_uid(index, &mut stream, peer),
            Err(why) => {
                self.stats.refused_caps += 1;
                self.warnings.warn(
                    module_path!(),
                    format_args!("{name}: refused connection from pid {}: {why}", peer.pid),
                );
                self.refuse(index, &mut stream, &why);
            }
        }
    }

    /// Who a connection admitted so far speaks as, within the connection caps; `None` when
    /// only a live agent's process may come in this way and it is none.
    fn attribute(
        &mut self,
        admission: Admission,
        user: bool,
        peer: Peer,
    ) -> Result<Option<Admitted>, String> {
        let limits = self.config.conn_limits();
        match admission {
            Admission::IdOnly => Ok(Some(Admitted {
                caller: self.kernel.allocate_id(),
                holder: Holder::Owner,
            })),
            Admission::Caller if user => self
                .kernel
                .connect(peer, self.live, &limits)
                .map(Some)
                .map_err(|e| e.to_string()),
            Admission::Caller | Admission::AgentsOnly => self
                .kernel
                .connect_agent_only(peer, self.live, &limits)
                .map_err(|e| e.to_string()),
        }
    }

    /// Refuses a peer whose user may not use this listener (or not this way).
    fn refuse_uid(&mut self, index: usize, stream: &mut Stream, peer: Peer) {
        self.stats.refused_uid += 1;
        self.warnings.warn(
            module_path!(),
            format_args!(
                "{}: refused connection from uid {} (pid {}): not an allowed user",
                self.listeners[index].name, peer.uid, peer.pid
            ),
        );
        self.refuse(
            index,
            stream,
            "permission denied: your user may not use this daemon",
        );
    }

    /// Best-effort refusal, in the listener's wire format, to a connection we will not keep.
    fn refuse(&self, index: usize, stream: &mut Stream, msg: &str) {
        use std::io::Write;
        let _ = stream.write(&(self.listeners[index].refuse)(msg));
    }

    /// Gives an admitted connection a slot and registers it with the poll.
    fn install(&mut self, index: usize, mut stream: Stream, peer: Peer, admitted: Admitted) {
        let addr = match &stream {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Tls(s) => s.tcp.peer_addr().ok(),
            Stream::Unix(_) => None,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[slot as usize].generation;
        let id = ConnId { slot, generation };
        let admission = self.listeners[index].admission;
        if let Err(e) = self.poll.registry().register(
            stream.source(),
            Token(FIRST_CONN + slot as usize),
            Interest::READABLE,
        ) {
            log::error!("cannot register connection: {e}");
            self.free.push(slot);
            if admission != Admission::IdOnly {
                self.kernel.disconnect(admitted.caller);
            }
            return;
        }
        let caller = admitted.caller;
        let listener = &self.listeners[index];
        log::debug!(
            "conn={id} caller={caller} pid={} uid={} connected to {}",
            peer.pid,
            peer.uid,
            listener.name
        );
        let outbox = Box::new(ConnOutbox {
            sink: self.sink.clone(),
            conn: id,
        });
        let mut proto = (listener.make)(outbox);
        let max_pending_push = listener.max_pending_push;
        let agent = matches!(admitted.holder, Holder::Agent(_));
        let now = Instant::now();
        let mut io = ConnIo {
            label: id.label(),
            caller,
            peer,
            addr,
            out: Vec::new(),
            out_pos: 0,
            busy: false,
            close_after_flush: false,
        };
        // A front-end may refuse the connection here (the router's client limit).
        proto.opened(&mut io);
        self.slots[slot as usize].conn = Some(Conn {
            stream,
            io,
            proto,
            admission,
            max_pending_push,
            inbuf: Vec::new(),
            readable: true,
            read_closed: false,
            hup_seen: false,
            writable: true,
            want_write: false,
            queued: false,
            waiting_pool: false,
            waiting_budget: false,
            counted: 0,
            agent,
            last_read: now,
            last_write: now,
            paused_since: None,
        });
        self.live += 1;
        self.stats.accepted += 1;
        if agent {
            self.agent_conns += 1;
            if self.next_idle_check.is_none() {
                self.next_idle_check = Some(now + idle_check_every(self.config.agent_idle_timeout));
            }
        }
        // Data may already be waiting; the edge for it may have fired before registration.
        self.schedule(id);
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.conn.as_mut()
    }

    fn schedule(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id)
            && !c.queued
        {
            c.queued = true;
            self.ready.push_back(id);
        }
    }

    fn run_ready(&mut self) {
        let n = self.ready.len();
        for _ in 0..n {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(c) = self.conn_mut(id) {
                c.queued = false;
                self.service(id);
            }
        }
    }

    fn drain_completions(&mut self) {
        let local = REACTOR_LOCAL.with(|local| local.borrow_mut().as_mut().map(std::mem::take));
        for c in local.unwrap_or_default() {
            self.deliver(c);
        }
        while let Ok(c) = self.completions.try_recv() {
            self.deliver(c);
        }
    }

    /// Appends a completion's bytes to its connection's output (if it is still open). Pushed
    /// output beyond the connection's allowance drops the connection instead: whole messages
    /// only, and a client that does not read costs nobody else.
    fn deliver(&mut self, c: Completion) {
        let Some(conn) = self.conn_mut(c.conn) else {
            return;
        };
        if c.kind != CompletionKind::Reply
            && conn.io.pending_out() + c.bytes.len() > conn.max_pending_push
        {
            let held = conn.io.pending_out() + c.bytes.len();
            let limit = conn.max_pending_push;
            self.warnings.warn(
                module_path!(),
                format_args!(
                    "conn={}: {held} bytes of events waiting, over its allowance of {limit}; \
                     dropping it",
                    c.conn
                ),
            );
            self.stats.dropped_push += 1;
            self.close(c.conn);
            return;
        }
        if conn.io.pending_out() == 0 {
            conn.io.out.clear();
            conn.io.out_pos = 0;
        }
        if conn.io.out.is_empty() {
            conn.io.out = c.bytes;
        } else {
            clove::reserve_output(&mut conn.io.out, c.bytes.len());
            conn.io.out.extend_from_slice(&c.bytes);
        }
        match c.kind {
            CompletionKind::Reply => conn.io.busy = false,
            CompletionKind::PushClose => conn.io.close_after_flush = true,
            CompletionKind::Push => {}
        }
        let (before, held) = (conn.counted, conn.io.held_out());
        conn.counted = held;
        self.pending_total = self.pending_total - before + held;
        self.schedule(c.conn);
    }

    /// Does everything a connection can do right now: flush, read, handle requests, flush;
    /// then settles its interest and flow-control state.
    fn service(&mut self, id: ConnId) {
        let Some(conn) = self
            .slots
            .get_mut(id.slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let env = Env {
            ops: &self.ops,
            pool: &self.pool,
            warnings: &self.warnings,
            output: OutputBudget {
                own_max: self.config.max_pending_reply_bytes,
                others: self.pending_total - conn.counted,
                soft: self.soft_total,
                hard: self.config.pending_reply_total_bytes,
            },
        };
        let mut budget = self.config.max_pipelined;
        let (stop, mut failed) = pump(id, conn, &env, &mut self.scratch, &mut budget);
        self.stats.requests += (self.config.max_pipelined - budget) as u64;
        if !failed {
            failed = flush(conn).is_err() || set_interest(&self.poll, id, conn).is_err();
        }
        let held = conn.io.held_out();
        self.pending_total = self.pending_total - conn.counted + held;
        conn.counted = held;
        if failed {
            self.close(id);
        } else {
            self.settle(id, stop);
        }
    }

    /// After a connection was serviced: pauses or resumes it for its unsent replies, closes it
    /// when it is done, or queues it to be serviced again.
    fn settle(&mut self, id: ConnId, mut stop: Stop) {
        let Some(conn) = self
            .slots
            .get_mut(id.slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let now = Instant::now();
        let pending = conn.io.pending_out();
        let output = OutputBudget {
            own_max: self.config.max_pending_reply_bytes,
            others: self.pending_total - conn.counted,
            soft: self.soft_total,
            hard: self.config.pending_reply_total_bytes,
        };
        let was_paused = conn.paused_since.is_some();
        // Paused: it has replies to write and may not take more requests until it does. The
        // slow-client timer watches these.
        let paused_now = pending > 0 && output.full(pending, conn.counted);
        if paused_now && !was_paused {
            conn.paused_since = Some(now);
            self.paused += 1;
            if self.next_slow_check.is_none() {
                self.next_slow_check = Some(now + SLOW_CHECK);
            }
        } else if !paused_now && was_paused {
            conn.paused_since = None;
            self.paused -= 1;
            // It was not reading while paused; it may have input waiting.
            stop = Stop::Budget;
        }
        let done = pending == 0
            && !conn.stream.wants_write()
            && !conn.io.busy
            && (conn.io.close_after_flush || (conn.read_closed && stop == Stop::NeedInput));
        if done {
            self.close(id);
            return;
        }
        match stop {
            Stop::Budget => self.schedule(id),
            Stop::PoolFull => {
                if !conn.waiting_pool {
                    conn.waiting_pool = true;
                    self.pool_waiters.push(id);
                }
            }
            // Everything it had is written, but the daemon-wide budget is spent: it waits for
            // room without a socket event to wake it, see `wake_budget_waiters`.
            Stop::OutputFull if pending == 0 && output.full(0, 0) => {
                if !conn.waiting_budget {
                    conn.waiting_budget = true;
                    self.budget_waiters.push(id);
                }
            }
            Stop::OutputFull if pending == 0 => self.schedule(id),
            Stop::NeedInput | Stop::Paused | Stop::OutputFull => {}
        }
    }

    /// Connections that stopped for the daemon-wide reply budget with nothing of their own
    /// to write go on once the budget has room again (in the order they stopped).
    fn wake_budget_waiters(&mut self) {
        if self.budget_waiters.is_empty()
            || self.pending_total >= self.config.pending_reply_total_bytes
        {
            return;
        }
        for id in std::mem::take(&mut self.budget_waiters) {
            if let Some(c) = self.conn_mut(id) {
                c.waiting_budget = false;
            }
            self.schedule(id);
        }
        self.run_ready();
    }

    fn close(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        if conn.paused_since.is_some() {
            self.paused -= 1;
        }
        self.pending_total -= conn.counted;
        if conn.agent {
            self.agent_conns -= 1;
        }
        let _ = self.poll.registry().deregister(conn.stream.source());
        conn.proto.closed(&mut conn.io);
        if conn.admission != Admission::IdOnly {
            self.kernel.disconnect(conn.io.caller);
        }
        self.free.push(id.slot);
        self.live -= 1;
        log::debug!("conn={id} caller={} closed", conn.io.caller);
    }

    fn close_all(&mut self) {
        for i in 0..self.slots.len() {
            let id = ConnId {
                slot: i as u32,
                generation: self.slots[i].generation,
            };
            self.close(id);
        }
        self.pool.close();
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.live
    }
}

/// How often agents' connections are checked for idleness: a quarter of the timeout, so one
/// is closed at most a quarter late, but at least every 10 ms and at most every 10 s.
fn idle_check_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(10))
}

/// Flushes, then reads and hands input to the connection's protocol until it stops: for want
/// of input, for its flow control or at the end of its request budget. Returns why it
/// stopped, and whether the socket failed.
fn pump(
    id: ConnId,
    conn: &mut Conn,
    env: &Env,
    scratch: &mut [u8],
    budget: &mut usize,
) -> (Stop, bool) {
    if flush(conn).is_err() {
        return (Stop::NeedInput, true);
    }
    loop {
        if !conn.inbuf.is_empty() {
            let (used, s) = conn.proto.process(&conn.inbuf, &mut conn.io, env, budget);
            conn.inbuf.drain(..used);
            if conn.inbuf.is_empty() && conn.inbuf.capacity() > KEEP_IDLE_OUT {
                conn.inbuf = Vec::new();
            }
            if s != Stop::NeedInput {
                return (s, false);
            }
        }
        if conn.io.busy || conn.io.close_after_flush {
            return (Stop::Paused, false);
        }
        if env.output.full(conn.io.pending_out(), conn.io.held_out()) {
            return (Stop::OutputFull, false);
        }
        if *budget == 0 {
            return (Stop::Budget, false);
        }
        if conn.read_closed || !conn.readable {
            return (Stop::NeedInput, false);
        }
        match read_once(&mut conn.stream, scratch) {
            Io::Progress(n) => {
                conn.last_read = Instant::now();
                // A short read means the socket is drained (epoll(7)); skip the extra read
                // that would only return EAGAIN. Not after a shutdown was reported: the data
                // and the end-of-file may have come in one edge, and the end-of-file must
                // still be read.
                if n < scratch.len() && !conn.hup_seen {
                    conn.readable = false;
                }
                if conn.inbuf.is_empty() {
                    let (used, s) = conn.proto.process(&scratch[..n], &mut conn.io, env, budget);
                    conn.inbuf.extend_from_slice(&scratch[used..n]);
                    if s != Stop::NeedInput {
                        return (s, false);
                    }
                } else {
                    conn.inbuf.extend_from_slice(&scratch[..n]);
                }
                if conn.io.pending_out() >= KEEP_OUT_CAPACITY && flush(conn).is_err() {
                    return (Stop::NeedInput, true);
                }
            }
            Io::WouldBlock => {
                conn.readable = false;
                return (Stop::NeedInput, false);
            }
            Io::Closed => {
                conn.read_closed = true;
                return (Stop::NeedInput, false);
            }
            Io::Failed(kind) => {
                log::debug!("conn={id}: read failed: {kind:?}");
                return (Stop::NeedInput, true);
            }
        }
    }
}

/// Registers WRITABLE interest only while replies wait to be written (see `Conn::want_write`).
fn set_interest(poll: &Poll, id: ConnId, conn: &mut Conn) -> io::Result<()> {
    let want_write = conn.io.pending_out() > 0 || conn.stream.wants_write();
    if want_write == conn.want_write {
        return Ok(());
    }
    let interest = if want_write {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    poll.registry().reregister(
        conn.stream.source(),
        Token(FIRST_CONN + id.slot as usize),
        interest,
    )?;
    conn.want_write = want_write;
    Ok(())
}

/// Writes as much pending output as the socket takes.
fn flush(conn: &mut Conn) -> Result<(), ()> {
    while conn.io.pending_out() > 0 && conn.writable {
        let io = &mut conn.io;
        let want = io.out.len() - io.out_pos;
        match write_once(&mut conn.stream, &io.out[io.out_pos..]) {
            Io::Progress(n) => {
                io.out_pos += n;
                conn.last_write = Instant::now();
                if n < want {
                    conn.writable = false;
                }
            }
            Io::WouldBlock => conn.writable = false,
            Io::Closed | Io::Failed(_) => return Err(()),
        }
    }
    // A TLS stream may hold encrypted bytes of its own after taking ours.
    if conn.writable && conn.stream.wants_write() {
        use std::io::Write;
        match conn.stream.flush() {
            Ok(()) => conn.last_write = Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.writable = false,
            Err(_) => return Err(()),
        }
    }
    let io = &mut conn.io;
    if io.pending_out() == 0 {
        io.out_pos = 0;
        if io.out.capacity() > KEEP_IDLE_OUT {
            io.out = Vec::new();
        } else {
            io.out.clear();
        }
    } else if io.out_pos >= KEEP_OUT_CAPACITY && io.out_pos * 2 >= io.out.len() {
        io.out.drain(..io.out_pos);
        io.out_pos = 0;
    }
    Ok(())
}

/// A refusal on the Clove wire: one error frame.
pub fn clove_refusal(msg: &str) -> Vec<u8> {
    clove::encode(0, 0, &crate::kernel::request::error(msg))
}
