//! The reactor: one thread, one `mio::Poll`, every client socket.
//!
//! It accepts connections (checking peer credentials and the connection limit), reads into a
//! shared scratch buffer, hands input to each connection's protocol front-end, writes replies,
//! and applies flow control:
//!
//! * a connection with a request at a worker is not read until the reply comes back;
//! * a connection whose unsent replies exceed `max_pending_reply_bytes` is not read either, and
//!   is dropped when it makes no write progress for `slow_client_timeout`;
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

use crate::frontend::{ConnIo, ConnLabel, Env, Outbox, Stop};
use crate::kernel::{Kernel, Peer};
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Wakes the reactor when completions are queued or shutdown is requested.
pub const WAKER: Token = Token(0);
/// Listener tokens: token = FIRST_LISTENER + index in the order listeners were added.
const FIRST_LISTENER: usize = 1;
/// Connection tokens start here: token = FIRST_CONN + slot.
const FIRST_CONN: usize = 16;
/// Most listeners one reactor serves.
pub const MAX_LISTENERS: usize = FIRST_CONN - FIRST_LISTENER;

/// Bytes read from a socket at a time.
const SCRATCH: usize = 256 * 1024;
/// Output buffers larger than this are released once empty, so idle connections stay small.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;
/// How often paused connections are checked while any exist.
const SLOW_CHECK: Duration = Duration::from_millis(100);
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
        match c {
            // Kept for the reactor's next turn; the wake makes sure that turn comes.
            None => self.wake(),
            Some(c) => {
                if self.tx.send(c).is_ok() {
                    self.wake();
                }
            }
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
    pub refused_remote: u64,
    pub dropped_push: u64,
    pub refused_full: u64,
    pub dropped_slow: u64,
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
    paused: usize,
    scratch: Vec<u8>,
    shutdown: Arc<AtomicBool>,
    accept_retry: Option<Instant>,
    next_slow_check: Option<Instant>,
    my_uid: u32,
    pub stats: Stats,
}

impl Reactor {
    /// Builds a reactor around an existing poll (whose waker the kernel's sink uses).
    pub fn new(
        poll: Poll,
        config: ServerConfig,
        ops: Arc<Ops>,
        pool: WorkerPool,
        completions: (Sink, Receiver<Completion>),
        shutdown: Arc<AtomicBool>,
    ) -> Reactor {
        let (sink, completions) = completions;
        Reactor {
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
            paused: 0,
            scratch: vec![0; SCRATCH],
            shutdown,
            accept_retry: None,
            next_slow_check: None,
            my_uid: nix::unistd::geteuid().as_raw(),
            stats: Stats::default(),
        }
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
                        self.accept(t - FIRST_LISTENER)
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
            self.drain_completions();
            self.run_ready();
            self.run_timers();
        }
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
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
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
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
    }

    fn check_slow_clients(&mut self, now: Instant) {
        let limit = self.config.slow_client_timeout;
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
            log::warn!(
                "conn={id}: client has not read its replies for {:?}; dropping it",
                limit
            );
            self.stats.dropped_slow += 1;
            self.close(id);
        }
        self.next_slow_check = (self.paused > 0).then(|| now + SLOW_CHECK);
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let accepted = match &listener.socket {
                ListenSocket::Unix(l) => l.accept().map(|(s, _)| {
                    let peer = listen::unix_peer(&s).map(PeerOf::Known);
                    (Stream::Unix(s), peer)
                }),
                ListenSocket::Tcp(l) => l.accept().map(|(s, _)| {
                    // Small messages (one event line) must leave at once: with Nagle's
                    // algorithm a line waits for the ACK of the previous one, which the
                    // client delays by up to 40 ms.
                    let _ = s.set_nodelay(true);
                    let peer = listen::tcp_peer(&s);
                    (Stream::Tcp(s), peer)
                }),
            };
            match accepted {
                Ok((stream, Ok(peer))) => self.admit(index, stream, peer),
                Ok((_, Err(e))) => {
                    log::warn!(
                        "{}: cannot tell who connected ({e}); refusing the connection",
                        self.listeners[index].name
                    );
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

    /// Checks who connected and whether there is room, then makes the connection.
    fn admit(&mut self, index: usize, mut stream: Stream, peer: PeerOf) {
        let name = self.listeners[index].name;
        let refuse = self.listeners[index].refuse;
        let peer = match peer {
            PeerOf::Known(p) => p,
            PeerOf::Remote(_) if self.listeners[index].allow_remote => Peer {
                pid: 0,
                uid: u32::MAX,
                gid: u32::MAX,
            },
            PeerOf::Remote(addr) => {
                self.stats.refused_remote += 1;
                log::warn!("{name}: refused connection from {addr}: not on this host");
                send_refusal(
                    &mut stream,
                    refuse,
                    "permission denied: connect from this host",
                );
                return;
            }
        };
        let remote = peer.uid == u32::MAX;
        if !remote && peer.uid != self.my_uid && !self.config.allowed_uids.contains(&peer.uid) {
            self.stats.refused_uid += 1;
            log::warn!(
                "{name}: refused connection from uid {} (pid {}): not an allowed user",
                peer.uid,
                peer.pid
            );
            send_refusal(
                &mut stream,
                refuse,
                "permission denied: your user may not use this daemon",
            );
            return;
        }
        if self.live >= self.config.max_connections {
            self.stats.refused_full += 1;
            log::warn!(
                "{name}: refused connection from pid {}: {} connections open (server.max_connections)",
                peer.pid,
                self.live
            );
            send_refusal(
                &mut stream,
                refuse,
                &format!(
                    "too many connections: the daemon holds its maximum of {}",
                    self.config.max_connections
                ),
            );
            return;
        }
        self.open(index, stream, peer);
    }

    /// Registers an admitted connection and gives it a slot.
    fn open(&mut self, index: usize, mut stream: Stream, peer: Peer) {
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
        if let Err(e) = self.poll.registry().register(
            stream.source(),
            Token(FIRST_CONN + slot as usize),
            Interest::READABLE,
        ) {
            log::error!("cannot register connection: {e}");
            self.free.push(slot);
            return;
        }
        let listener = &self.listeners[index];
        let caller = match listener.admission {
            Admission::Caller => self.kernel.connect(peer),
            Admission::IdOnly => self.kernel.allocate_id(),
        };
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
        let (admission, max_pending_push) = (listener.admission, listener.max_pending_push);
        let mut io = ConnIo {
            label: id.label(),
            caller,
            peer,
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
            last_write: Instant::now(),
            paused_since: None,
        });
        self.live += 1;
        self.stats.accepted += 1;
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
        if c.kind == CompletionKind::Push
            && conn.io.pending_out() + c.bytes.len() > conn.max_pending_push
        {
            let limit = conn.max_pending_push;
            log::warn!(
                "conn={}: {} bytes of events waiting, over its allowance of {limit}; dropping it",
                c.conn,
                conn.io.pending_out() + c.bytes.len()
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
            conn.io.out.extend_from_slice(&c.bytes);
        }
        if c.kind == CompletionKind::Reply {
            conn.io.busy = false;
        }
        self.schedule(c.conn);
    }

    /// Does everything a connection can do right now: flush, read, handle requests, flush.
    fn service(&mut self, id: ConnId) {
        let max_pending_out = self.config.max_pending_reply_bytes;
        let mut budget = self.config.max_pipelined;
        let slot = &mut self.slots[id.slot as usize];
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        let env = Env {
            ops: &self.ops,
            pool: &self.pool,
            max_pending_out,
        };
        let handled_before = budget;
        let mut failed = flush(conn).is_err();
        let mut stop = Stop::NeedInput;
        while !failed {
            if !conn.inbuf.is_empty() {
                let (used, s) = conn
                    .proto
                    .process(&conn.inbuf, &mut conn.io, &env, &mut budget);
                conn.inbuf.drain(..used);
                stop = s;
                if s != Stop::NeedInput {
                    break;
                }
            }
            if conn.io.busy || conn.io.close_after_flush {
                stop = Stop::Paused;
                break;
            }
            if conn.io.pending_out() >= max_pending_out {
                stop = Stop::OutputFull;
                break;
            }
            if budget == 0 {
                stop = Stop::Budget;
                break;
            }
            if conn.read_closed || !conn.readable {
                break;
            }
            match read_once(&mut conn.stream, &mut self.scratch) {
                Io::Progress(n) => {
                    // A short read means the socket is drained (epoll(7)); skip the extra
                    // read that would only return EAGAIN. Not after a shutdown was reported:
                    // the data and the end-of-file may have come in one edge, and the
                    // end-of-file must still be read.
                    if n < self.scratch.len() && !conn.hup_seen {
                        conn.readable = false;
                    }
                    if conn.inbuf.is_empty() {
                        let (used, s) =
                            conn.proto
                                .process(&self.scratch[..n], &mut conn.io, &env, &mut budget);
                        conn.inbuf.extend_from_slice(&self.scratch[used..n]);
                        stop = s;
                        if s != Stop::NeedInput {
                            break;
                        }
                    } else {
                        conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    }
                    if conn.io.pending_out() >= KEEP_OUT_CAPACITY {
                        failed = flush(conn).is_err();
                    }
                }
                Io::WouldBlock => {
                    conn.readable = false;
                    break;
                }
                Io::Closed => {
                    conn.read_closed = true;
                    break;
                }
                Io::Failed(kind) => {
                    log::debug!("conn={id}: read failed: {kind:?}");
                    failed = true;
                }
            }
        }
        self.stats.requests += (handled_before - budget) as u64;
        if !failed {
            failed = flush(conn).is_err();
        }
        let want_write = conn.io.pending_out() > 0;
        if !failed && want_write != conn.want_write {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            failed = self
                .poll
                .registry()
                .reregister(
                    conn.stream.source(),
                    Token(FIRST_CONN + id.slot as usize),
                    interest,
                )
                .is_err();
            conn.want_write = want_write;
        }
        if failed {
            self.close(id);
            return;
        }
        let now = Instant::now();
        let pending = conn.io.pending_out();
        let was_paused = conn.paused_since.is_some();
        let paused_now = pending >= max_pending_out;
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
            Stop::NeedInput | Stop::Paused | Stop::OutputFull => {}
        }
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
        let _ = self.poll.registry().deregister(conn.stream.source());
        conn.proto.closed(&mut conn.io);
        if conn.admission == Admission::Caller {
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
    let io = &mut conn.io;
    if io.pending_out() == 0 {
        io.out_pos = 0;
        if io.out.capacity() > KEEP_OUT_CAPACITY {
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

/// Best-effort refusal to a connection we will not keep, in its listener's wire format.
fn send_refusal(stream: &mut Stream, refuse: listen::Refusal, msg: &str) {
    use std::io::Write;
    let _ = stream.write(&refuse(msg));
}

/// A refusal on the Clove wire: one error frame.
pub fn clove_refusal(msg: &str) -> Vec<u8> {
    clove::encode(0, 0, &crate::kernel::request::error(msg))
}
