//! The router's core thread: owns swarms, nodes, the inter-swarm queue and approvals; turns
//! client commands, provider outcomes and outbox records into state changes and events.
//!
//! Every message is handled in one *step*: the handler changes memory, collects the documents
//! to write and the events to publish; at the end of the step the documents are handed to the
//! store's writer (one group commit) and the events wait in a sequencer until that commit is
//! done. Steps publish in the order they ran, so a client never sees a result before an
//! earlier one, and never sees a result whose effects a crash could still take back.

use super::config::RouterConfig;
use super::follow::{FileBatch, FileSpec, FollowCmd, Follower};
use super::provider::{BackendMsg, JobRef, JobState, Provider, Ticket};
use super::state::{Approval, NodeState, QueueItem, Status, Swarm};
use super::wire::Event;
use super::{ClientCommand, CoreMsg, Emitter, Stats};
use crate::kernel::Kernel;
use crate::kernel::audit::Category;
use crate::store::{DocRecord, DocWrite};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) const SWARMS: &str = "router.swarms";
pub(super) const NODES: &str = "router.nodes";
pub(super) const OFFSETS: &str = "router.offsets";
pub(super) const QUEUE: &str = "router.queue";
pub(super) const APPROVALS: &str = "router.approvals";

/// Steps whose events wait for a commit; beyond it the core takes no new client commands
/// until the store catches up (the front-end then answers `router busy`).
const MAX_WAITING_STEPS: usize = 1024;
/// Pending approvals kept at most (the oldest is dropped beyond it, and logged).
pub(super) const MAX_APPROVALS: usize = 4096;
/// Longest wait between asking an unanswering provider again.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Everything the core is built from.
pub struct CoreParts {
    pub config: Arc<RouterConfig>,
    pub kernel: Arc<Kernel>,
    pub providers: Vec<Box<dyn Provider>>,
    pub follower: Follower,
    pub emitter: Emitter,
    pub stats: Arc<Stats>,
    pub self_tx: Sender<CoreMsg>,
}

/// What an outstanding provider operation was for.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    Launch {
        swarm_id: String,
    },
    Inject {
        swarm_id: String,
        node: u32,
        injection_id: String,
        request_id: Value,
    },
    Control {
        key: String,
        request_id: Value,
    },
}

/// Events of a terminated swarm waiting for the last records of its files.
pub(super) struct Closing {
    pub remaining: HashSet<u32>,
    pub events: Vec<Event>,
}

struct Step {
    commit: Option<u64>,
    events: Vec<Event>,
}

/// When to ask a provider about a swarm again.
pub(super) struct Retry {
    pub at: Instant,
    pub delay: Duration,
}

type Finished = Arc<Mutex<Vec<(u64, Result<(), String>)>>>;

pub struct Core {
    pub(super) cfg: Arc<RouterConfig>,
    pub(super) kernel: Arc<Kernel>,
    pub(super) providers: Vec<Box<dyn Provider>>,
    /// The router's own follower (index 0) and those of providers whose outboxes are on
    /// another host.
    pub(super) followers: Vec<Follower>,
    /// Which follower reads each provider's outboxes.
    provider_follower: Vec<usize>,
    /// Follow and unfollow commands a follower's full queue did not take yet (sent again
    /// after every step, in order; at most a few per swarm).
    follow_backlog: VecDeque<(usize, FollowCmd)>,
    emitter: Emitter,
    pub(super) stats: Arc<Stats>,
    self_tx: Sender<CoreMsg>,
    pub(super) swarms: BTreeMap<String, Swarm>,
    /// `(provider index, job id)` → swarm id.
    pub(super) by_job: HashMap<(usize, String), String>,
    /// `<swarm>/<node>` → (inode, offset) last committed.
    pub(super) offsets: HashMap<String, (u64, u64)>,
    /// Files being followed, per swarm.
    pub(super) followed: HashMap<String, HashSet<u32>>,
    pub(super) closing: HashMap<String, Closing>,
    pub(super) queue: Vec<QueueItem>,
    pub(super) approvals: BTreeMap<String, Approval>,
    pub(super) approvals_version: u64,
    pub(super) tickets: HashMap<Ticket, Pending>,
    next_ticket: Ticket,
    pub(super) retry: HashMap<String, Retry>,
    out: Vec<Event>,
    writes: Vec<DocWrite>,
    steps: VecDeque<Step>,
    next_commit: u64,
    finished: Finished,
}

impl Core {
    pub fn new(p: CoreParts) -> Core {
        let mut followers = vec![p.follower];
        let provider_follower = p
            .providers
            .iter()
            .map(|pr| match pr.follower() {
                Some(f) => {
                    followers.push(f);
                    followers.len() - 1
                }
                None => 0,
            })
            .collect();
        Core {
            cfg: p.config,
            kernel: p.kernel,
            providers: p.providers,
            followers,
            provider_follower,
            follow_backlog: VecDeque::new(),
            emitter: p.emitter,
            stats: p.stats,
            self_tx: p.self_tx,
            swarms: BTreeMap::new(),
            by_job: HashMap::new(),
            offsets: HashMap::new(),
            followed: HashMap::new(),
            closing: HashMap::new(),
            queue: Vec::new(),
            approvals: BTreeMap::new(),
            approvals_version: 0,
            tickets: HashMap::new(),
            next_ticket: 1,
            retry: HashMap::new(),
            out: Vec::new(),
            writes: Vec::new(),
            steps: VecDeque::new(),
            next_commit: 1,
            finished: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The thread's loop: restore, then one step per message.
    pub fn run(mut self, rx: Receiver<CoreMsg>, cmds: Receiver<ClientCommand>) {
        self.restore();
        self.end_step();
        loop {
            let timeout = self.next_timer();
            let msg = if self.steps.len() >= MAX_WAITING_STEPS {
                // The store is behind: only what frees it (commit notices) and provider
                // outcomes are taken; clients are told `router busy` meanwhile.
                match rx.recv_timeout(timeout) {
                    Ok(m) => Some(Ok(m)),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(_) => return,
                }
            } else {
                crossbeam_channel::select_biased! {
                    recv(rx) -> m => match m { Ok(m) => Some(Ok(m)), Err(_) => return },
                    recv(cmds) -> c => match c { Ok(c) => Some(Err(c)), Err(_) => return },
                    default(timeout) => None,
                }
            };
            match msg {
                Some(Ok(CoreMsg::Stop)) => {
                    self.drain_finished();
                    return;
                }
                Some(Ok(m)) => self.internal(m),
                Some(Err(c)) => self.command(c),
                None => {}
            }
            self.timers();
            self.end_step();
            self.flush_follow_backlog();
            self.gauges();
        }
    }

    fn internal(&mut self, m: CoreMsg) {
        match m {
            CoreMsg::Backend(p, msg) => self.backend(p, msg),
            CoreMsg::Records(batches) => {
                for b in batches {
                    self.records(b);
                }
                self.dispatch();
            }
            CoreMsg::Committed | CoreMsg::Stop => {}
        }
    }

    // ---- the follower --------------------------------------------------------------------

    /// The follower that reads a swarm's outboxes.
    fn follower_of(&self, swarm_id: &str) -> usize {
        self.swarms
            .get(swarm_id)
            .and_then(|s| self.provider_index(&s.provider_id))
            .and_then(|p| self.provider_follower.get(p).copied())
            .unwrap_or(0)
    }

    /// Hands a command about a swarm's files to its follower, in order behind any that wait.
    pub(super) fn tell_follower(&mut self, swarm_id: &str, cmd: FollowCmd) {
        let f = self.follower_of(swarm_id);
        if !self.follow_backlog.is_empty() {
            // Polling hints are not worth a place in the backlog (it stays bounded by swarms).
            if !matches!(cmd, FollowCmd::Busy { .. }) {
                self.follow_backlog.push_back((f, cmd));
            }
            return;
        }
        if let Err(cmd) = self.followers[f].try_send(cmd) {
            match cmd {
                // A polling hint that finds no room is simply dropped.
                FollowCmd::Busy { .. } => {}
                cmd => self.follow_backlog.push_back((f, cmd)),
            }
        }
    }

    fn flush_follow_backlog(&mut self) {
        while let Some((f, cmd)) = self.follow_backlog.pop_front() {
            if let Err(cmd) = self.followers[f].try_send(cmd) {
                self.follow_backlog.push_front((f, cmd));
                return;
            }
        }
    }

    // ---- steps, commits and publishing -------------------------------------------------

    pub(super) fn emit(&mut self, name: &str, data: Value) {
        self.out.push(Event::new(name, data));
    }

    pub(super) fn emit_event(&mut self, ev: Event) {
        self.out.push(ev);
    }

    pub(super) fn reject(&mut self, request_id: &Value, reason: impl Into<String>) {
        self.stats.commands_rejected.fetch_add(1, Ordering::Relaxed);
        self.out.push(Event::rejected(request_id, reason));
    }

    pub(super) fn put(&mut self, collection: &str, id: &str, body: &impl Serialize) {
        match serde_json::to_string(body) {
            Ok(body) => self.writes.push(DocWrite::Put(DocRecord {
                collection: collection.into(),
                id: id.into(),
                body,
            })),
            Err(e) => log::error!("router: cannot encode {collection}/{id}: {e}"),
        }
    }

    pub(super) fn delete(&mut self, collection: &str, id: &str) {
        self.writes.push(DocWrite::Delete {
            collection: collection.into(),
            id: id.into(),
        });
    }

    pub(super) fn save_swarm(&mut self, swarm_id: &str) {
        if let Some(s) = self.swarms.get(swarm_id) {
            let s = s.clone();
            self.put(SWARMS, swarm_id, &s);
        }
    }

    pub(super) fn save_nodes(&mut self, swarm_id: &str) {
        if let Some(s) = self.swarms.get(swarm_id) {
            let nodes = s.nodes.clone();
            self.put(NODES, swarm_id, &nodes);
        }
    }

    /// Ends a step: its writes go to the store as one commit, its events wait for it.
    fn end_step(&mut self) {
        let events = std::mem::take(&mut self.out);
        let writes = std::mem::take(&mut self.writes);
        let commit = (!writes.is_empty()).then(|| self.submit(writes));
        if commit.is_some() || !events.is_empty() {
            self.steps.push_back(Step { commit, events });
        }
        self.drain_finished();
    }

    fn submit(&mut self, writes: Vec<DocWrite>) -> u64 {
        let id = self.next_commit;
        self.next_commit += 1;
        let finished = self.finished.clone();
        let tx = self.self_tx.clone();
        self.kernel.store.submit_docs(
            writes,
            Box::new(move |r| {
                finished
                    .lock()
                    .push((id, r.map(|_| ()).map_err(|e| e.to_string())));
                // When the channel is full the core is awake anyway and looks at the list
                // after every message; this store thread must never wait for the core.
                let _ = tx.try_send(CoreMsg::Committed);
            }),
        );
        id
    }

    /// Marks finished commits and publishes every step at the front whose commit is done.
    fn drain_finished(&mut self) {
        let done = std::mem::take(&mut *self.finished.lock());
        for (id, r) in done {
            if let Err(e) = r {
                // The state in memory stands and is saved again with the next change; the
                // events still go out (holding them would stop the router).
                log::error!("router: cannot save its state: {e}");
                self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
            }
            for s in self.steps.iter_mut().filter(|s| s.commit == Some(id)) {
                s.commit = None;
            }
        }
        let mut ready = Vec::new();
        while self.steps.front().is_some_and(|s| s.commit.is_none()) {
            if let Some(s) = self.steps.pop_front() {
                ready.extend(s.events);
            }
        }
        if !ready.is_empty() {
            self.emitter.emit(ready);
        }
    }

    fn gauges(&self) {
        let st = &self.stats;
        st.live_swarms.store(
            self.swarms.values().filter(|s| s.status.is_live()).count() as u64,
            Ordering::Relaxed,
        );
        st.queue_depth
            .store(self.queue.len() as u64, Ordering::Relaxed);
        st.inflight_injections
            .store(self.inflight() as u64, Ordering::Relaxed);
        st.approvals_pending
            .store(self.approvals.len() as u64, Ordering::Relaxed);
    }

    /// Injections handed out whose turn has not completed, all swarms together.
    pub(super) fn inflight(&self) -> usize {
        self.swarms
            .values()
            .filter(|s| s.status.is_live())
            .flat_map(|s| &s.nodes)
            .map(|n| n.outstanding.len())
            .sum()
    }

    pub(super) fn ticket(&mut self, p: Pending) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(t, p);
        t
    }

    pub(super) fn audit(&self, category: Category, kind: &str, success: bool, details: Value) {
        self.kernel
            .audit
            .with(|log| log.append(category, kind, 0, None, success, details));
    }

    // ---- helpers about swarms ----------------------------------------------------------

    pub(super) fn provider_index(&self, id: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.config().id == id)
    }

    pub(super) fn job_ref(s: &Swarm) -> JobRef {
        JobRef {
            swarm_id: s.swarm_id.clone(),
            job_id: s.job_id.clone(),
            node_count: s.node_count,
            backend_state: s.backend_state.clone(),
        }
    }

    fn swarm_of_job(&self, provider: usize, job: &str) -> Option<String> {
        self.by_job.get(&(provider, job.to_string())).cloned()
    }

    /// Starts following every node's outbox of a swarm from its committed offsets.
    pub(super) fn follow(&mut self, swarm_id: &str, pidx: usize) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        let job = Self::job_ref(s);
        let mut nodes = HashSet::new();
        for node in 0..s.node_count {
            let files = self.providers[pidx].mailbox(&job, node);
            let (inode, offset) = self
                .offsets
                .get(&format!("{swarm_id}/{node}"))
                .copied()
                .unwrap_or((0, 0));
            self.tell_follower(
                swarm_id,
                FollowCmd::Follow(FileSpec {
                    swarm_id: swarm_id.into(),
                    job_id: job.job_id.clone(),
                    node_id: node,
                    outbox: files.outbox,
                    archive: files.archive,
                    inode,
                    offset,
                }),
            );
            nodes.insert(node);
        }
        self.followed.insert(swarm_id.to_string(), nodes);
    }

    /// Sets a swarm's status (if the table allows) and reports it with `swarm_status`.
    pub(super) fn change_status(&mut self, swarm_id: &str, to: Status, request_id: &Value) -> bool {
        let Some(s) = self.swarms.get_mut(swarm_id) else {
            return false;
        };
        if !s.set_status(to) {
            return false;
        }
        let ev = status_event(s, request_id);
        self.save_swarm(swarm_id);
        self.emit_event(ev);
        true
    }

    // ---- provider outcomes -------------------------------------------------------------

    fn backend(&mut self, p: usize, msg: BackendMsg) {
        match msg {
            BackendMsg::LaunchProgress {
                ticket,
                stage,
                message,
            } => {
                if let Some(Pending::Launch { swarm_id }) = self.tickets.get(&ticket).cloned() {
                    self.launch_progress(&swarm_id, stage, &message);
                }
            }
            BackendMsg::Launched { ticket, result } => {
                if let Some(Pending::Launch { swarm_id }) = self.tickets.remove(&ticket) {
                    self.launched(p, &swarm_id, result);
                }
            }
            BackendMsg::Submitted { ticket, job_id } => {
                if let Some(Pending::Launch { swarm_id }) = self.tickets.get(&ticket).cloned() {
                    self.submitted(p, &swarm_id, job_id);
                }
            }
            BackendMsg::Delivered { ticket, result } => self.delivered(ticket, result),
            BackendMsg::Status { job_id, result } => {
                if let Some(id) = self.swarm_of_job(p, &job_id) {
                    self.status_answer(&id, result);
                }
            }
            BackendMsg::Active { .. } => {}
            BackendMsg::TerminateProgress {
                job_id,
                stage,
                message,
            } => {
                if let Some(id) = self.swarm_of_job(p, &job_id) {
                    self.terminate_progress(&id, stage, &message);
                }
            }
            BackendMsg::Terminated { job_id, result } => {
                if let Some(id) = self.swarm_of_job(p, &job_id) {
                    match result {
                        Ok(()) => self.terminated(&id),
                        Err(e) => {
                            self.terminate_progress(&id, "error", &e);
                            self.schedule_retry(&id);
                        }
                    }
                }
            }
            BackendMsg::NodeExited {
                job_id,
                node_id,
                code,
            } => {
                if let Some(id) = self.swarm_of_job(p, &job_id) {
                    self.node_exited(&id, node_id, code);
                }
            }
            BackendMsg::StateChanged {
                job_id,
                backend_state,
            } => {
                if let Some(id) = self.swarm_of_job(p, &job_id)
                    && let Some(s) = self.swarms.get_mut(&id)
                {
                    s.backend_state = backend_state;
                    self.save_swarm(&id);
                }
            }
        }
    }

    fn delivered(&mut self, ticket: Ticket, result: Result<(), String>) {
        match (self.tickets.remove(&ticket), result) {
            (
                Some(Pending::Inject {
                    swarm_id,
                    node,
                    injection_id,
                    request_id,
                }),
                Ok(()),
            ) => {
                self.emit(
                    "inject_delivered",
                    json!({"request_id": request_id, "swarm_id": swarm_id,
                           "injection_id": injection_id, "node_id": node}),
                );
            }
            (
                Some(Pending::Inject {
                    swarm_id,
                    node,
                    injection_id,
                    request_id,
                }),
                Err(e),
            ) => {
                if let Some(n) = self
                    .swarms
                    .get_mut(&swarm_id)
                    .and_then(|s| s.nodes.get_mut(node as usize))
                {
                    n.remove(&injection_id);
                    self.save_nodes(&swarm_id);
                }
                self.emit(
                    "inject_failed",
                    json!({"request_id": request_id, "swarm_id": swarm_id,
                           "injection_id": injection_id, "node_id": node, "error": e}),
                );
                self.dispatch();
            }
            (Some(Pending::Control { .. }), Ok(())) => {}
            (Some(Pending::Control { key, request_id }), Err(e)) => {
                if let Some(a) = self.approvals.get_mut(&key) {
                    a.status = "pending".into();
                    let a = a.clone();
                    self.put(APPROVALS, &key, &a);
                }
                self.reject(
                    &request_id,
                    format!("cannot deliver the decision to the worker: {e}"),
                );
            }
            _ => {}
        }
    }

    fn status_answer(
        &mut self,
        swarm_id: &str,
        result: Result<(JobState, Option<String>), String>,
    ) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        if s.status == Status::Terminated || s.status == Status::Terminating {
            return;
        }
        if let Ok((_, Some(state))) = &result
            && let Some(s) = self.swarms.get_mut(swarm_id)
            && s.backend_state.get("slurm_state").and_then(Value::as_str) != Some(state)
        {
            if !s.backend_state.is_object() {
                s.backend_state = json!({});
            }
            s.backend_state["slurm_state"] = json!(state);
            self.save_swarm(swarm_id);
        }
        match result {
            Ok((JobState::Running, _)) => {
                self.retry.remove(swarm_id);
                if let Some(s) = self.swarms.get_mut(swarm_id) {
                    s.unknown_reason = None;
                }
                self.change_status(swarm_id, Status::Running, &Value::Null);
            }
            Ok((JobState::Pending, _)) => {
                self.retry.remove(swarm_id);
                self.change_status(swarm_id, Status::Pending, &Value::Null);
            }
            Ok((JobState::Ended, _)) => {
                self.retry.remove(swarm_id);
                log::info!("router: swarm {swarm_id} ended while nobody watched");
                self.ended_on_its_own(swarm_id);
            }
            Err(e) => {
                log::warn!("router: swarm {swarm_id}: its provider cannot tell its state: {e}");
                if let Some(s) = self.swarms.get_mut(swarm_id) {
                    s.unknown_reason = Some(e);
                }
                self.change_status(swarm_id, Status::Unknown, &Value::Null);
                self.schedule_retry(swarm_id);
            }
        }
    }

    pub(super) fn schedule_retry(&mut self, swarm_id: &str) {
        let delay = self
            .retry
            .get(swarm_id)
            .map(|r| (r.delay * 2).min(RETRY_MAX))
            .unwrap_or(Duration::from_secs(1));
        self.retry.insert(
            swarm_id.to_string(),
            Retry {
                at: Instant::now() + delay,
                delay,
            },
        );
    }

    fn next_timer(&self) -> Duration {
        if !self.follow_backlog.is_empty() {
            return Duration::from_millis(5);
        }
        let now = Instant::now();
        self.retry
            .values()
            .map(|r| r.at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    }

    /// Asks providers again about swarms whose state they could not tell, and resumes
    /// terminations they could not start.
    fn timers(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .retry
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            let Some(s) = self.swarms.get(&id) else {
                self.retry.remove(&id);
                continue;
            };
            let Some(p) = self.provider_index(&s.provider_id) else {
                continue;
            };
            let job = Self::job_ref(s);
            let res = match (s.status, &s.terminate) {
                (Status::Terminating, Some(t)) => self.providers[p].terminate(&job, t.force),
                _ => self.providers[p].status(&job),
            };
            if let Some(r) = self.retry.get_mut(&id) {
                // The answer (or its failure) reschedules; until then look again later.
                r.at = now + r.delay.max(Duration::from_secs(1));
            }
            if let Err(e) = res {
                log::warn!("router: swarm {id}: {e}");
            }
        }
    }

    // ---- worker records ----------------------------------------------------------------

    fn records(&mut self, b: FileBatch) {
        let key = format!("{}/{}", b.swarm_id, b.node_id);
        if b.finished {
            self.offsets.remove(&key);
            self.delete(OFFSETS, &key);
        } else if self.offsets.get(&key) != Some(&(b.inode, b.offset)) {
            self.offsets.insert(key.clone(), (b.inode, b.offset));
            self.put(
                OFFSETS,
                &key,
                &json!({"inode": b.inode, "offset": b.offset}),
            );
        }
        let known = self.swarms.contains_key(&b.swarm_id);
        let mut nodes_changed = false;
        for mut ev in b.events {
            if !known {
                continue;
            }
            nodes_changed |= self.apply_record(&b.swarm_id, b.node_id, &mut ev);
            self.emit_event(ev);
        }
        if nodes_changed {
            self.save_nodes(&b.swarm_id);
        }
        if b.finished {
            self.file_finished(&b.swarm_id, b.node_id);
        }
    }

    /// Node state and approvals from one worker event; true when the node changed.
    fn apply_record(&mut self, swarm_id: &str, node: u32, ev: &mut Event) -> bool {
        match ev.name.as_str() {
            "exec_approval_required" => {
                self.approval_required(swarm_id, node, &ev.data);
                false
            }
            "exec_approval_resolved" => {
                self.approval_resolved(swarm_id, node, &mut ev.data);
                false
            }
            name => self
                .swarms
                .get_mut(swarm_id)
                .and_then(|s| s.nodes.get_mut(node as usize))
                .is_some_and(|n| n.apply(name, &ev.data)),
        }
    }

    fn approval_required(&mut self, swarm_id: &str, node: u32, data: &Value) {
        let Some(job_id) = self.swarms.get(swarm_id).map(|s| s.job_id.clone()) else {
            return;
        };
        let call_id = match &data["call_id"] {
            Value::String(c) => c.clone(),
            Value::Null => return,
            v => v.to_string(),
        };
        let key = Approval::key(&job_id, node, &call_id);
        if self.approvals.len() >= MAX_APPROVALS
            && !self.approvals.contains_key(&key)
            && let Some(oldest) = self
                .approvals
                .iter()
                .min_by_key(|(_, a)| a.created_at.clone())
                .map(|(k, _)| k.clone())
        {
            log::warn!("router: more than {MAX_APPROVALS} pending approvals; dropping {oldest}");
            self.approvals.remove(&oldest);
            self.delete(APPROVALS, &oldest);
        }
        let a = Approval {
            swarm_id: swarm_id.into(),
            job_id,
            node_id: node,
            injection_id: data["injection_id"].clone(),
            call_id,
            approval_id: data["approval_id"].clone(),
            request: data.clone(),
            created_at: crate::clock::iso8601(std::time::SystemTime::now()),
            status: "pending".into(),
            approved: None,
            decision: None,
            submit_request_id: Value::Null,
        };
        self.put(APPROVALS, &key, &a);
        self.approvals.insert(key, a);
        self.approvals_version += 1;
    }

    /// The worker acknowledged an answer: the approval is resolved. The event gets the
    /// request that answered it, and the decision, when the worker did not repeat them.
    fn approval_resolved(&mut self, swarm_id: &str, node: u32, data: &mut Value) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        let call_id = match &data["call_id"] {
            Value::String(c) => c.clone(),
            v => v.to_string(),
        };
        let key = Approval::key(&s.job_id, node, &call_id);
        let Some(a) = self.approvals.remove(&key) else {
            return;
        };
        self.delete(APPROVALS, &key);
        self.approvals_version += 1;
        self.audit(
            Category::Security,
            "SWARM_APPROVAL_RESOLVED",
            true,
            json!({"swarm_id": swarm_id, "job_id": a.job_id, "node_id": node,
                   "call_id": call_id, "decision": a.decision}),
        );
        if let Some(m) = data.as_object_mut() {
            m.insert("request_id".into(), a.submit_request_id.clone());
            m.entry("approved").or_insert(json!(a.approved));
            m.entry("decision").or_insert(json!(a.decision));
        }
    }

    fn file_finished(&mut self, swarm_id: &str, node: u32) {
        if let Some(f) = self.followed.get_mut(swarm_id) {
            f.remove(&node);
            if f.is_empty() {
                self.followed.remove(swarm_id);
            }
        }
        if let Some(c) = self.closing.get_mut(swarm_id) {
            c.remaining.remove(&node);
            if c.remaining.is_empty()
                && let Some(c) = self.closing.remove(swarm_id)
            {
                self.out.extend(c.events);
            }
        }
    }

    // ---- ends of swarms ----------------------------------------------------------------

    fn node_exited(&mut self, swarm_id: &str, node: u32, code: Option<i32>) {
        let Some(s) = self.swarms.get_mut(swarm_id) else {
            return;
        };
        let job_id = s.job_id.clone();
        let all_gone = {
            if let Some(n) = s.nodes.get_mut(node as usize) {
                n.exited = true;
                n.outstanding.clear();
                n.active = false;
            }
            s.nodes.iter().all(|n| n.exited)
        };
        self.save_nodes(swarm_id);
        let how = code.map(|c| format!(" with code {c}")).unwrap_or_default();
        self.emit(
            "agent_error",
            json!({"swarm_id": swarm_id, "job_id": job_id, "node_id": node, "injection_id": null,
                   "message": format!("the worker of node {node} exited{how}")}),
        );
        if all_gone {
            self.ended_on_its_own(swarm_id);
        }
        self.dispatch();
    }

    /// Every node of a swarm ended without a termination: it is terminated.
    fn ended_on_its_own(&mut self, swarm_id: &str) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        if !s.status.is_live() || s.status == Status::Terminating {
            return;
        }
        let ev = {
            let mut s2 = s.clone();
            s2.status = Status::Terminated;
            status_event(&s2, &Value::Null)
        };
        let done = Event::new(
            "swarm_terminated",
            json!({"request_id": null, "swarm_id": swarm_id}),
        );
        self.close_swarm(swarm_id, vec![ev, done]);
    }

    /// The provider finished a termination.
    fn terminated(&mut self, swarm_id: &str) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        let rids = s
            .terminate
            .as_ref()
            .map(|t| t.request_ids.clone())
            .unwrap_or_default();
        let rids = if rids.is_empty() {
            vec![Value::Null]
        } else {
            rids
        };
        let events = rids
            .iter()
            .map(|r| {
                Event::new(
                    "swarm_terminated",
                    json!({"request_id": r, "swarm_id": swarm_id}),
                )
            })
            .collect();
        self.audit(
            Category::Lifecycle,
            "SWARM_TERMINATED",
            true,
            json!({"swarm_id": swarm_id, "job_id": s.job_id}),
        );
        self.close_swarm(swarm_id, events);
    }

    /// Marks a swarm terminated, reads what is left of its outboxes, then publishes `events`.
    pub(super) fn close_swarm(&mut self, swarm_id: &str, events: Vec<Event>) {
        self.retry.remove(swarm_id);
        let Some(s) = self.swarms.get_mut(swarm_id) else {
            return;
        };
        s.status = Status::Terminated;
        s.terminate = None;
        s.ended_ms = Some(crate::clock::now_ms());
        for n in &mut s.nodes {
            n.exited = true;
            n.outstanding.clear();
            n.active = false;
        }
        let job_id = s.job_id.clone();
        self.save_swarm(swarm_id);
        self.save_nodes(swarm_id);
        self.drop_queue_for(swarm_id, "target swarm terminated");
        let before = self.approvals.len();
        let gone: Vec<String> = self
            .approvals
            .iter()
            .filter(|(_, a)| a.swarm_id == swarm_id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.approvals.remove(&k);
            self.delete(APPROVALS, &k);
        }
        if self.approvals.len() != before {
            self.approvals_version += 1;
        }
        match self.followed.get(swarm_id) {
            Some(nodes) if !nodes.is_empty() => {
                self.closing.insert(
                    swarm_id.to_string(),
                    Closing {
                        remaining: nodes.clone(),
                        events,
                    },
                );
                self.tell_follower(swarm_id, FollowCmd::Unfollow { job_id });
            }
            _ => self.out.extend(events),
        }
        self.prune_terminated();
    }

    /// Forgets the oldest terminated swarms beyond `router.keep_terminated`.
    fn prune_terminated(&mut self) {
        let mut ended: Vec<(u64, String)> = self
            .swarms
            .values()
            .filter(|s| s.status == Status::Terminated && !self.closing.contains_key(&s.swarm_id))
            .map(|s| (s.ended_ms.unwrap_or(0), s.swarm_id.clone()))
            .collect();
        if ended.len() <= self.cfg.keep_terminated {
            return;
        }
        ended.sort();
        let excess = ended.len() - self.cfg.keep_terminated;
        for (_, id) in ended.into_iter().take(excess) {
            if let Some(s) = self.swarms.remove(&id)
                && let Some(p) = self.provider_index(&s.provider_id)
            {
                self.by_job.remove(&(p, s.job_id.clone()));
            }
            self.delete(SWARMS, &id);
            self.delete(NODES, &id);
            let stale: Vec<String> = self
                .offsets
                .keys()
                .filter(|k| k.starts_with(&format!("{id}/")))
                .cloned()
                .collect();
            for k in stale {
                self.offsets.remove(&k);
                self.delete(OFFSETS, &k);
            }
        }
    }

    /// Drops every queue item aimed at a swarm (`inter_swarm_dropped`, then `queue_updated`).
    pub(super) fn drop_queue_for(&mut self, swarm_id: &str, reason: &str) {
        let (gone, keep): (Vec<QueueItem>, Vec<QueueItem>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|q| q.target_swarm_id == swarm_id);
        self.queue = keep;
        if gone.is_empty() {
            return;
        }
        for q in gone {
            self.delete(QUEUE, &q.queue_id);
            self.emit(
                "inter_swarm_dropped",
                json!({"request_id": q.request_id, "queue_id": q.queue_id,
                       "source_swarm_id": q.source_swarm_id, "target_swarm_id": q.target_swarm_id,
                       "reason": reason}),
            );
        }
        self.emit_queue_updated();
    }

    pub(super) fn emit_queue_updated(&mut self) {
        let items: Vec<Value> = self.queue.iter().map(QueueItem::listing).collect();
        self.emit("queue_updated", json!({"items": items}));
    }
}

/// `swarm_status` for a swarm.
pub(super) fn status_event(s: &Swarm, request_id: &Value) -> Event {
    Event::new(
        "swarm_status",
        json!({"request_id": request_id, "swarm_id": s.swarm_id, "job_id": s.job_id,
               "node_count": s.node_count, "status": s.status.as_str(),
               "provider_id": s.provider_id,
               "nodes": s.nodes.iter().enumerate().map(|(i, n)| json!({
                   "node_id": i, "busy": n.busy(), "exited": n.exited,
               })).collect::<Vec<_>>(),
               "unknown_reason": s.unknown_reason,
               "slurm_state": s.backend_state.get("slurm_state")}),
    )
}

/// The `NodeState`s of a new swarm.
pub(super) fn fresh_nodes(n: u32) -> Vec<NodeState> {
    vec![NodeState::default(); n as usize]
}
