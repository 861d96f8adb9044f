//! The kernel: the shared state behind every front-end and service.
//!
//! [`Kernel`] owns the caller registry (who is connected, with which permissions, and who a
//! connecting process is), the state store facade, mailboxes, the event bus, the audit log and
//! async results, each behind its own short-held lock. It names no service, front-end or
//! reactor type: a call carries a [`Deliver`] handed in by its front-end, and anything that
//! answers later does so through a [`Responder`] built on it.

pub mod access;
pub mod asyncq;
pub mod audit;
pub mod config;
pub mod conns;
pub mod events;
pub mod identity;
pub mod ipc;
pub mod perms;
pub mod request;
pub mod state;

use crate::store::StateStore;
use config::KernelConfig;
use conns::{ConnCounts, ConnLimits, Holder, Refused};
use parking_lot::Mutex;
use perms::Permissions;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// A caller's identity: a connection's id for plain clients, an agent's id for spawned agents.
/// Both come from one counter, so they never collide.
pub type CallerId = u32;

/// Who is on the other end of a Unix socket, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// What kind of caller an id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// One of the user's own processes, connected directly.
    Client,
    /// A process the daemon spawned and supervises.
    Agent,
}

/// A known caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub kind: CallerKind,
    pub perms: Arc<Permissions>,
    /// LLM usage charged so far (kept apart from the permission set so that SET_PERMS cannot
    /// reset it).
    pub tokens_used: u64,
    pub calls_made: u64,
    /// Live connections bound to this caller.
    pub conns: usize,
    pub peer: Peer,
    /// Whom its connections count against (see [`conns`]).
    pub holder: Holder,
}

/// A connection the kernel accepted: the caller it speaks as and whom it counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub caller: CallerId,
    pub holder: Holder,
}

/// The way back to a caller's connection, supplied by its front-end with every call: the
/// front-end encodes the reply for its wire and hands it to whatever owns the connection.
/// Callable from any thread.
pub trait Deliver: Send + Sync {
    /// Sends the reply payload to `op`, made for `caller`.
    fn deliver(&self, caller: CallerId, op: u8, payload: &[u8]);
}

/// A shared way back to one connection.
pub type ReplyPath = Arc<dyn Deliver>;

/// One request in flight: who sent it, for which op, and the way back to its connection.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub caller: CallerId,
    pub op: u8,
    pub peer: Peer,
    pub back: &'a ReplyPath,
}

/// An owned copy of a call, for work that outlives its handler (a job on another thread).
#[derive(Clone)]
pub struct CallRecord {
    pub caller: CallerId,
    pub op: u8,
    pub peer: Peer,
    pub back: ReplyPath,
}

impl CallRecord {
    pub fn of(call: &Call) -> CallRecord {
        CallRecord {
            caller: call.caller,
            op: call.op,
            peer: call.peer,
            back: call.back.clone(),
        }
    }

    /// The call again, borrowing this record's way back.
    pub fn call(&self) -> Call<'_> {
        Call {
            caller: self.caller,
            op: self.op,
            peer: self.peer,
            back: &self.back,
        }
    }
}

/// The shared state of the daemon.
pub struct Kernel {
    pub config: KernelConfig,
    /// Shared with the state store, which records its high-water mark with every commit.
    next_id: Arc<AtomicU32>,
    callers: Mutex<HashMap<CallerId, Caller>>,
    pub store: StateStore,
    /// Shared (`Arc`) so that a REGISTER whose durable write fails can be undone from the
    /// store's writer thread.
    pub ipc: Arc<Mutex<ipc::Ipc>>,
    /// Shared (`Arc`) so that state-store completions can publish STATE_CHANGED after commit.
    pub events: Arc<Mutex<events::EventBus>>,
    pub asyncq: Mutex<asyncq::AsyncResults>,
    /// Registered session leaders: agents' launchers (kept by the supervisor) and running EXEC
    /// commands (kept by the command runner), each the leader of a session of its own. A
    /// process in such a session, or below such a leader, speaks for its owner (see
    /// [`identity`]); EXEC sessions are also killed at shutdown.
    leaders: Mutex<HashMap<i32, identity::Leader>>,
    /// Pid namespaces of sandboxed agents, each with a descriptor that keeps the namespace
    /// (and so its inode number) alive while it is registered.
    agent_pid_ns: Mutex<HashMap<identity::NsId, (CallerId, OwnedFd)>>,
    /// Connections per other user and of the daemon's descendants (agents count in their
    /// records).
    conn_counts: Mutex<ConnCounts>,
    /// The daemon's own uid: its owner's processes may use the reserved connection slots.
    owner_uid: u32,
    pub started: Instant,
    pub audit: Arc<audit::Audit>,
}

impl Kernel {
    /// A kernel whose state store lives in memory only.
    pub fn new(config: KernelConfig, limits: crate::store::StoreLimits) -> Kernel {
        Kernel::with_store(config, StateStore::with_limits(limits))
    }

    /// A kernel around an opened (durable) state store; ids continue from the store's counter,
    /// and the audit log is mirrored to the store (its newest entries are loaded back here,
    /// which waits for the store's writer: call this before the reactor runs).
    pub fn with_store(config: KernelConfig, store: StateStore) -> Kernel {
        let audit = Arc::new(audit::Audit::with_sink(
            config.audit.clone(),
            store.audit_sink(),
        ));
        match store.load_audit(config.audit.max_entries) {
            Ok(entries) if !entries.is_empty() => {
                log::info!("audit log: {} entries loaded", entries.len());
                audit.with(|log| log.load(entries));
            }
            Ok(_) => {}
            Err(e) => log::warn!("cannot load the audit log: {e}"),
        }
        Kernel {
            next_id: store.id_counter(),
            store,
            ipc: Arc::new(Mutex::new(ipc::Ipc::with_limits(
                config.mailbox_len,
                config.mailbox_max_bytes,
                config.mailboxes_total_bytes,
                config.max_name_bytes,
            ))),
            events: Arc::new(Mutex::new(events::EventBus::with_limits(
                config.event_queue_len,
                config.event_queue_bytes,
                config.max_subscriptions,
            ))),
            asyncq: Mutex::new(asyncq::AsyncResults::new(config.async_max_outstanding)),
            config,
            callers: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
            agent_pid_ns: Mutex::new(HashMap::new()),
            conn_counts: Mutex::new(ConnCounts::default()),
            owner_uid: nix::unistd::geteuid().as_raw(),
            started: Instant::now(),
            audit,
        }
    }

    /// A fresh id from the shared connection/agent counter (never 0: the SDK uses 0 for "not
    /// known yet").
    pub fn allocate_id(&self) -> CallerId {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Registers a new connection, `live` being the number open before it: finds the caller
    /// it speaks as (see [`identity`]): a supervised agent's process speaks as the agent;
    /// anything else gets a new client id whose permissions depend on where the process comes
    /// from. Then whom it counts against (see [`conns`]): it is refused when that holder has
    /// its maximum, or when only the owner's reserved slots are left and it is not the owner's.
    pub fn connect(
        &self,
        peer: Peer,
        live: usize,
        limits: &ConnLimits,
    ) -> Result<Admitted, Refused> {
        // `None`: the permissions of a process the daemon started that belongs to no live
        // agent or command, found (and logged) only once the connection is admitted.
        let (holder, perms) = match identity::classify(self, peer.pid) {
            identity::Origin::Agent(agent) => {
                if let Some(admitted) = self.bind_agent(agent, live, limits)? {
                    log::debug!("pid {} connected as agent {agent}", peer.pid);
                    return Ok(admitted);
                }
                // The agent is gone (its record removed): its leftovers are nobody's.
                (Holder::Descendant, None)
            }
            identity::Origin::ExecOf(perms) => (Holder::Descendant, Some(perms)),
            identity::Origin::Unattributed => (Holder::Descendant, None),
            identity::Origin::Outside => {
                let holder = if peer.uid == self.owner_uid {
                    Holder::Owner
                } else {
                    Holder::OtherUser(peer.uid)
                };
                let perms = Arc::new(self.config.level_or_minimal(&self.config.client_level));
                (holder, Some(perms))
            }
        };
        conns::check_reserve(holder, live, limits)?;
        self.conn_counts.lock().take(holder, limits)?;
        let perms = perms.unwrap_or_else(|| self.unattributed_perms(peer.pid));
        let id = self.allocate_id();
        self.callers.lock().insert(
            id,
            Caller {
                kind: CallerKind::Client,
                perms,
                tokens_used: 0,
                calls_made: 0,
                conns: 1,
                peer,
                holder,
            },
        );
        Ok(Admitted { caller: id, holder })
    }

    /// Registers a connection that only a live agent's process may open: one that came in
    /// through the agents' socket, or from the uid sandboxed agents run as
    /// (`sandbox.agent_user`, when the daemon is root). Anything else (another daemon's
    /// agents, a system service of that user, a leftover of an agent) gets `Ok(None)` and is
    /// refused.
    pub fn connect_agent_only(
        &self,
        peer: Peer,
        live: usize,
        limits: &ConnLimits,
    ) -> Result<Option<Admitted>, Refused> {
        match identity::classify(self, peer.pid) {
            identity::Origin::Agent(agent) => self.bind_agent(agent, live, limits),
            _ => Ok(None),
        }
    }

    /// Binds a connection to the live agent `agent`, within its cap and the reserve;
    /// `None` when there is no such agent.
    fn bind_agent(
        &self,
        agent: CallerId,
        live: usize,
        limits: &ConnLimits,
    ) -> Result<Option<Admitted>, Refused> {
        let mut callers = self.callers.lock();
        let Some(c) = callers
            .get_mut(&agent)
            .filter(|c| c.kind == CallerKind::Agent)
        else {
            return Ok(None);
        };
        if c.conns >= limits.per_caller {
            return Err(Refused::PerCaller {
                agent,
                max: limits.per_caller,
            });
        }
        conns::check_reserve(c.holder, live, limits)?;
        c.conns += 1;
        Ok(Some(Admitted {
            caller: agent,
            holder: c.holder,
        }))
    }

    /// The permissions of a process the daemon started that belongs to no live agent or
    /// command: `permissions.unattributed_level` (`minimal` unless configured), never the
    /// agent level (it may have left a lowered agent or command) and never the user's own.
    fn unattributed_perms(&self, pid: i32) -> Arc<Permissions> {
        log::info!(
            "pid {pid} was started under the daemon but belongs to no live agent or command: \
             it gets permissions.unattributed_level ({})",
            self.config.unattributed_level
        );
        Arc::new(
            self.config
                .level_or_minimal(&self.config.unattributed_level),
        )
    }

    /// A connection closed. Plain clients go away with their connection: their name is
    /// released, their mailbox, subscriptions and async results are dropped.
    pub fn disconnect(&self, caller: CallerId) {
        let gone = {
            let mut callers = self.callers.lock();
            match callers.get_mut(&caller) {
                Some(c) => {
                    c.conns = c.conns.saturating_sub(1);
                    if c.conns == 0 && c.kind == CallerKind::Client {
                        callers.remove(&caller).map(|c| c.holder)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(holder) = gone {
            self.conn_counts.lock().give_back(holder);
            self.ipc.lock().forget(caller);
            self.events.lock().forget(caller);
            self.asyncq.lock().forget(caller);
            self.store.drop_namespace(caller);
        }
    }

    /// Registers a spawned agent as a caller (no connection yet). Its record outlives its
    /// connections and restarts, until [`Kernel::remove_agent`].
    pub fn add_agent(&self, id: CallerId, perms: Permissions) {
        self.callers.lock().insert(
            id,
            Caller {
                kind: CallerKind::Agent,
                perms: Arc::new(perms),
                tokens_used: 0,
                calls_made: 0,
                conns: 0,
                peer: Peer {
                    pid: 0,
                    uid: nix::unistd::geteuid().as_raw(),
                    gid: nix::unistd::getegid().as_raw(),
                },
                holder: Holder::Agent(id),
            },
        );
    }

    /// An agent stopped for good: its record, name, mailbox, subscriptions and async results
    /// go. (Connections its leftover processes may still hold are treated as unknown callers.)
    pub fn remove_agent(&self, id: CallerId) {
        let removed = {
            let mut callers = self.callers.lock();
            match callers.get(&id) {
                Some(c) if c.kind == CallerKind::Agent => callers.remove(&id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.ipc.lock().forget(id);
            self.events.lock().forget(id);
            self.asyncq.lock().forget(id);
        }
    }

    /// A copy of a caller's record.
    pub fn caller(&self, id: CallerId) -> Option<Caller> {
        self.callers.lock().get(&id).cloned()
    }

    /// True when `id` belongs to a known caller.
    pub fn is_caller(&self, id: CallerId) -> bool {
        self.callers.lock().contains_key(&id)
    }

    /// The caller's permissions (a cheap `Arc` clone).
    pub fn perms(&self, id: CallerId) -> Arc<Permissions> {
        self.callers
            .lock()
            .get(&id)
            .map(|c| c.perms.clone())
            .unwrap_or_else(|| Arc::new(self.config.level_or_minimal("minimal")))
    }

    /// Runs `f` on a caller's record under the registry lock.
    pub fn with_caller<R>(&self, id: CallerId, f: impl FnOnce(&mut Caller) -> R) -> Option<R> {
        self.callers.lock().get_mut(&id).map(f)
    }

    /// Number of known callers.
    pub fn caller_count(&self) -> usize {
        self.callers.lock().len()
    }

    /// Publishes a kernel event to its subscribers.
    pub fn emit(&self, kind: &str, data: serde_json::Value, source: CallerId) {
        self.events.lock().publish(kind, data, source, None);
    }

    /// A responder for `call`, for handlers that answer later or from another thread.
    pub fn responder(&self, call: &Call) -> Responder {
        Responder {
            back: call.back.clone(),
            op: call.op,
            caller: call.caller,
            sent: false,
            audit: self
                .audit
                .logs_calls_of(call.op)
                .then(|| self.audit.clone()),
        }
    }

    /// Removes expired state and returns when to call again.
    pub fn tick(&self, now_ms: u64) -> Option<u64> {
        for expired in self.store.expire(now_ms) {
            state::announce_expiry(self, &expired);
        }
        self.store.next_expiry()
    }

    /// Records the supervised process (launcher) `pid` of agent `id`: the leader of the
    /// agent's session. The supervisor unregisters it ([`Kernel::agent_process_gone`]) before
    /// it reaps that process, so the pid (and session id) cannot be reused meanwhile.
    pub fn agent_process_started(&self, pid: i32, id: CallerId) {
        self.leaders.lock().insert(pid, identity::Leader::Agent(id));
    }

    /// Records the pid namespace of sandboxed agent `id`, given as an open namespace file
    /// (kept open here so the namespace's inode cannot be reused while registered). Returns
    /// the namespace's identity.
    pub fn agent_pid_ns_started(&self, ns: OwnedFd, id: CallerId) -> Option<identity::NsId> {
        let ns_id = identity::NsId::of_fd(&ns)?;
        self.agent_pid_ns.lock().insert(ns_id, (id, ns));
        Some(ns_id)
    }

    /// Forgets agent `id`'s supervised process and pid namespace (its process is about to be
    /// reaped, or is gone).
    pub fn agent_process_gone(&self, id: CallerId) {
        self.leaders
            .lock()
            .retain(|_, l| !matches!(l, identity::Leader::Agent(a) if *a == id));
        self.agent_pid_ns.lock().retain(|_, (a, _)| *a != id);
    }

    /// The agent whose pid namespace is `ns`.
    pub fn agent_with_pid_ns(&self, ns: identity::NsId) -> Option<CallerId> {
        self.agent_pid_ns.lock().get(&ns).map(|(id, _)| *id)
    }

    /// The owner of the session led by the registered leader `pid`.
    pub(crate) fn leader(&self, pid: i32) -> Option<identity::Leader> {
        self.leaders.lock().get(&pid).cloned()
    }

    /// Records a running EXEC command, whose first process `pid` leads a session of its own,
    /// and who started it. The command runner unregisters it ([`Kernel::exec_finished`])
    /// before it reaps that process.
    pub(crate) fn exec_started(&self, pid: i32, owner: identity::ExecOwner) {
        self.leaders
            .lock()
            .insert(pid, identity::Leader::Exec(owner));
    }

    /// The command led by `pid` has finished (its leader is about to be reaped).
    pub(crate) fn exec_finished(&self, pid: i32) {
        let mut leaders = self.leaders.lock();
        if matches!(leaders.get(&pid), Some(identity::Leader::Exec(_))) {
            leaders.remove(&pid);
        }
    }

    /// Stops everything the kernel started: running EXEC commands' process groups are killed.
    pub fn shutdown(&self) {
        let commands: Vec<i32> = self
            .leaders
            .lock()
            .iter()
            .filter(|(_, l)| matches!(l, identity::Leader::Exec(_)))
            .map(|(pid, _)| *pid)
            .collect();
        for pgid in commands {
            // kill(2) on a process group the command runner created; ESRCH is harmless.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Sends one reply for one request from any thread. If dropped without replying (a panic in
/// the handler, say), it sends an error reply, so a client never waits forever.
pub struct Responder {
    back: ReplyPath,
    op: u8,
    caller: CallerId,
    sent: bool,
    /// Set when per-call audit logging covers this op.
    audit: Option<Arc<audit::Audit>>,
}

impl Responder {
    /// Sends the reply payload.
    pub fn reply(mut self, payload: &[u8]) {
        self.send(payload);
    }

    /// Sends an error reply.
    pub fn error(self, msg: impl AsRef<str>) {
        self.reply(&request::error(msg));
    }

    fn send(&mut self, payload: &[u8]) {
        self.sent = true;
        if let Some(a) = &self.audit {
            a.record_call(self.caller, self.op, payload);
        }
        self.back.deliver(self.caller, self.op, payload);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.sent {
            let msg = request::error(format!(
                "internal error: op {} failed without a reply",
                crate::proto::op::name(self.op)
            ));
            self.send(&msg);
        }
    }
}
