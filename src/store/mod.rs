//! The state store: keys and values of the STORE/FETCH/DELETE/KEYS ops, with scopes and TTL,
//! kept in memory for reads and, for the durable ones, in an SQLite database written by one
//! writer thread with group commit. Also the other durable records of the daemon (supervised
//! agents' names and persistent specs, the audit log), see [`records`].
//!
//! This module is the only owner of state data; handlers call its methods and never see how
//! entries are kept. Values are kept as raw JSON text (`Box<RawValue>`), so what a client stores
//! is returned byte for byte and never re-encoded.
//!
//! Namespaces: `global` and `session` keys share one namespace (a key is in one of the two
//! scopes); every agent has its own namespace for `agent` keys, so no global key can reach
//! them. Expiry uses absolute wall-clock milliseconds: expired entries are removed by
//! [`StateStore::expire`] (driven by the reactor's timer) and never returned by reads in the
//! meantime; on disk they are purged by the writer and, at the latest, at the next start.
//!
//! # Writes, commits and what readers see
//! Every change goes to the writer thread ([`StateStore::submit_put`],
//! [`StateStore::submit_delete`]) over a bounded queue. The writer takes everything queued,
//! checks each change against the limits in queue order, runs the durable ones in ONE SQLite
//! transaction, commits, then applies all of them to memory in the same order, and only then
//! calls each change's completion (which sends the client's reply). So memory is updated **at
//! commit**: a reader never sees a value that a crash could still take back, and a client that
//! got its reply reads its own write. Non-durable changes (scope `session`, and `agent` keys of
//! plain clients, whose owner cannot outlive a restart anyway) take the same path so that the
//! order of changes to one key is the order they were accepted in; a batch with nothing
//! durable in it skips the transaction.

pub mod config;
pub mod db;
pub mod dump;
pub mod records;
mod writer;

pub use config::{RawStore, StoreConfig, SyncMode};
pub use db::OpenError;
pub use records::{
    AgentName, AgentSpecRecord, AuditQuery, AuditRecord, DocRecord, DocWrite, Recovered,
};

use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Audit entries kept when nobody says otherwise (the default of `audit.max_entries`).
pub const DEFAULT_AUDIT_MAX: usize = 10_000;

/// How far ahead of the last audit id handed out the database records a reservation. Ids
/// are handed out in memory before their entries are committed; after a crash the next run
/// starts above the reservation, so an id a client may have seen is never given to another
/// entry. The writer renews the reservation when half of it is used, and records the exact
/// next id at a clean stop (so only a crash makes ids jump).
pub(crate) const AUDIT_ID_RESERVE: u64 = 1 << 16;

/// The three scopes of the state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Agent,
    Session,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "global" => Some(Scope::Global),
            "agent" => Some(Scope::Agent),
            "session" => Some(Scope::Session),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Agent => "agent",
            Scope::Session => "session",
        }
    }
}

/// Which namespace a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// `global` and `session` keys.
    Shared,
    /// One agent's private keys.
    Agent(u32),
    /// A namespace a service asked for by an opaque name ([`StateStore::named_namespace`]):
    /// no Clove op reaches it. The number is the store's; the name is the service's.
    Named(u32),
}

impl Namespace {
    /// The namespace's number on disk: 0 for shared keys, the agent's id (never 0) for an
    /// agent's, and the negated number (never 0) for a named namespace, so the three never
    /// meet and the agent id counter (`max(ns) + 1`) is not moved by named ones.
    pub fn to_db(self) -> i64 {
        match self {
            Namespace::Shared => 0,
            Namespace::Agent(id) => i64::from(id),
            Namespace::Named(n) => -i64::from(n),
        }
    }

    /// The namespace of a number on disk; `None` for one no build writes.
    pub fn from_db(ns: i64) -> Option<Namespace> {
        match ns {
            0 => Some(Namespace::Shared),
            id if id > 0 => u32::try_from(id).ok().map(Namespace::Agent),
            n => n
                .checked_neg()
                .and_then(|n| u32::try_from(n).ok())
                .map(Namespace::Named),
        }
    }
}

/// The names of named namespaces and their numbers; kept on disk in `meta` (as
/// `namespace:<name>`), written in the same transaction as the first key of each.
#[derive(Debug, Default)]
struct Registry {
    by_name: HashMap<String, u32>,
    names: HashMap<u32, String>,
    next: u32,
}

impl Registry {
    /// The names recorded on disk; numbers continue above the largest.
    fn load(db: &db::Database) -> Result<Registry, OpenError> {
        let mut r = Registry {
            next: 1,
            ..Default::default()
        };
        for (name, n) in db.named_namespaces()? {
            r.next = r.next.max(n.saturating_add(1));
            r.by_name.insert(name.clone(), n);
            r.names.insert(n, name);
        }
        Ok(r)
    }
}

/// The `meta` key that records a named namespace's number.
pub(crate) fn registry_key(name: &str) -> String {
    format!("namespace:{name}")
}

#[derive(Debug)]
struct Entry {
    value: Box<RawValue>,
    scope: Scope,
    /// Absolute expiry in Unix milliseconds.
    expires_ms: Option<u64>,
    /// Kept in the database (and so restored at start).
    durable: bool,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// A key that expired, for STATE_CHANGED events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub ns: Namespace,
    pub key: String,
    pub scope: Scope,
}

/// What a read found.
#[derive(Debug, Clone)]
pub struct Found {
    pub value: Box<RawValue>,
    pub scope: Scope,
    /// Absolute expiry in Unix milliseconds.
    pub expires_ms: Option<u64>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes; the maximum is {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {len} bytes; the maximum is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("state store is full: {max} keys")]
    TooManyKeys { max: usize },
    #[error("state store is full: storing this would exceed {max} bytes")]
    TooManyBytes { max: usize },
    #[error(
        "the state store is busy: {max} writes are already waiting to be committed (store.max_pending_writes); try again"
    )]
    Busy { max: usize },
    #[error("cannot write to the state database: {0}; nothing was changed")]
    Write(String),
    #[error(
        "the state database failed ({0}); writes are refused until the daemon is restarted, which recovers from the file"
    )]
    Failed(String),
    #[error("the state store is shutting down")]
    Closed,
}

/// What a committed change did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A key was stored.
    Stored,
    /// A delete ran: the namespace and scope of the live key it removed, if any.
    Deleted(Option<(Namespace, Scope)>),
    /// A record was saved or removed.
    Done,
    /// Audit entries read.
    Audit(Vec<AuditRecord>),
}

/// Called once with the outcome of a change, on the writer thread, after its commit.
pub type Done = Box<dyn FnOnce(Result<Applied, StoreError>) + Send>;

/// A key to store.
#[derive(Debug)]
pub struct Put {
    pub ns: Namespace,
    pub key: String,
    pub value: Box<RawValue>,
    pub scope: Scope,
    pub expires_ms: Option<u64>,
    /// Kept in the database: scope `global`, and `agent` keys of supervised agents.
    pub durable: bool,
}

/// One change for the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Put),
    /// Deletes `key` from `first`, or when it holds no live key there, from `then`.
    Delete {
        key: String,
        first: Namespace,
        then: Option<Namespace>,
    },
    DropNamespace(u32),
    /// Everything kept about an agent: its keys, names and persistent spec.
    ForgetAgent(u32),
    SaveSpec(AgentSpecRecord),
    DeleteSpec(u32),
    /// Records the name of an agent, replacing any other name it had (a caller holds one name).
    SaveName(AgentName),
    ReleaseName(String),
    Audit(AuditRecord),
    QueryAudit(AuditQuery),
    /// Changes to services' documents, in one transaction.
    Docs(Vec<DocWrite>),
}

/// What the limit check decided for one change, before it is written.
#[derive(Debug)]
pub(crate) enum Planned {
    Put(KvWrite),
    Delete {
        /// Entries removed, with whether each has a row in the database.
        removed: Vec<(Namespace, bool)>,
        found: Option<(Namespace, Scope)>,
    },
    /// A namespace dropped; `durable` when any of its entries has a row in the database.
    Drop {
        durable: bool,
    },
    Other,
}

/// What a put does to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvWrite {
    Upsert,
    /// A non-durable value replaces a durable one: the row goes.
    DeleteRow,
    Nothing,
}

/// Sizes and flags of one entry, as seen by the limit check.
#[derive(Debug, Clone, Copy)]
struct Meta {
    size: usize,
    scope: Scope,
    expires_ms: Option<u64>,
    durable: bool,
}

/// The state after the changes planned so far in one batch (on top of memory).
struct View {
    touched: HashMap<(Namespace, String), Option<Meta>>,
    keys: usize,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    shared: HashMap<String, Entry>,
    agents: HashMap<u32, HashMap<String, Entry>>,
    named: HashMap<u32, HashMap<String, Entry>>,
    registry: Registry,
    /// (expiry, namespace, key); entries are checked against the live entry when popped.
    expiries: BinaryHeap<Reverse<(u64, Namespace, String)>>,
    keys: usize,
    bytes: usize,
}

impl Inner {
    /// The name of named namespace number `n` (the writer records it with its keys).
    fn namespace_name(&self, n: u32) -> Option<String> {
        self.registry.names.get(&n).cloned()
    }

    fn map(&self, ns: Namespace) -> Option<&HashMap<String, Entry>> {
        match ns {
            Namespace::Shared => Some(&self.shared),
            Namespace::Agent(id) => self.agents.get(&id),
            Namespace::Named(n) => self.named.get(&n),
        }
    }

    fn map_mut(&mut self, ns: Namespace) -> &mut HashMap<String, Entry> {
        match ns {
            Namespace::Shared => &mut self.shared,
            Namespace::Agent(id) => self.agents.entry(id).or_default(),
            Namespace::Named(n) => self.named.entry(n).or_default(),
        }
    }

    fn remove(&mut self, ns: Namespace, key: &str) -> Option<Entry> {
        let removed = match ns {
            Namespace::Shared => self.shared.remove(key),
            Namespace::Agent(id) | Namespace::Named(id) => {
                let maps = match ns {
                    Namespace::Agent(_) => &mut self.agents,
                    _ => &mut self.named,
                };
                let m = maps.get_mut(&id)?;
                let r = m.remove(key);
                if m.is_empty() {
                    maps.remove(&id);
                }
                r
            }
        };
        if let Some(e) = &removed {
            self.keys -= 1;
            self.bytes -= key.len() + e.value.get().len();
        }
        removed
    }

    /// Inserts or replaces an entry, keeping the totals (limits were checked by `plan`).
    fn insert(&mut self, p: Put) {
        let Put {
            ns,
            key,
            value,
            scope,
            expires_ms,
            durable,
        } = p;
        let vlen = value.get().len();
        if let Some(at) = expires_ms {
            self.expiries.push(Reverse((at, ns, key.clone())));
        }
        let klen = key.len();
        let entry = Entry {
            value,
            scope,
            expires_ms,
            durable,
        };
        match self.map_mut(ns).insert(key, entry) {
            // Same key: only the value's size changes.
            Some(old) => self.bytes = self.bytes - old.value.get().len() + vlen,
            None => {
                self.keys += 1;
                self.bytes += klen + vlen;
            }
        }
        // Heap entries are only checked when popped; keep stale ones from piling up when the
        // same keys are rewritten with TTLs over and over.
        if self.expiries.len() > 2 * self.keys + 1024 {
            self.rebuild_expiries();
        }
    }

    fn meta(&self, ns: Namespace, key: &str) -> Option<Meta> {
        self.map(ns).and_then(|m| m.get(key)).map(|e| Meta {
            size: key.len() + e.value.get().len(),
            scope: e.scope,
            expires_ms: e.expires_ms,
            durable: e.durable,
        })
    }

    fn view(&self) -> View {
        View {
            touched: HashMap::new(),
            keys: self.keys,
            bytes: self.bytes,
        }
    }

    fn projected(&self, view: &View, ns: Namespace, key: &str) -> Option<Meta> {
        // A batch rarely touches one key twice; look the key up without allocating first.
        if !view.touched.is_empty()
            && let Some(m) = view.touched.get(&(ns, key.to_string()))
        {
            return *m;
        }
        self.meta(ns, key)
    }

    /// Checks one change against the limits and the state after the earlier changes of its
    /// batch, and records its effect in `view`.
    fn plan(
        &self,
        op: &Op,
        view: &mut View,
        limits: &StoreLimits,
        now_ms: u64,
    ) -> Result<Planned, StoreError> {
        match op {
            Op::Put(p) => {
                limits.check(&p.key, &p.value)?;
                let old = self.projected(view, p.ns, &p.key);
                let size = p.key.len() + p.value.get().len();
                let keys_after = view.keys + usize::from(old.is_none());
                if keys_after > limits.max_keys {
                    return Err(StoreError::TooManyKeys {
                        max: limits.max_keys,
                    });
                }
                let bytes_after = view.bytes.saturating_sub(old.map_or(0, |m| m.size)) + size;
                if bytes_after > limits.max_total_bytes {
                    return Err(StoreError::TooManyBytes {
                        max: limits.max_total_bytes,
                    });
                }
                view.keys = keys_after;
                view.bytes = bytes_after;
                view.touched.insert(
                    (p.ns, p.key.clone()),
                    Some(Meta {
                        size,
                        scope: p.scope,
                        expires_ms: p.expires_ms,
                        durable: p.durable,
                    }),
                );
                let sql = if p.durable {
                    KvWrite::Upsert
                } else if old.is_some_and(|m| m.durable) {
                    KvWrite::DeleteRow
                } else {
                    KvWrite::Nothing
                };
                Ok(Planned::Put(sql))
            }
            Op::Delete { key, first, then } => {
                let mut removed = Vec::new();
                let mut found = None;
                for ns in std::iter::once(*first).chain(*then) {
                    let Some(m) = self.projected(view, ns, key) else {
                        continue;
                    };
                    view.keys = view.keys.saturating_sub(1);
                    view.bytes = view.bytes.saturating_sub(m.size);
                    view.touched.insert((ns, key.clone()), None);
                    removed.push((ns, m.durable));
                    if m.expires_ms.is_none_or(|e| e > now_ms) {
                        found = Some((ns, m.scope));
                        break;
                    }
                }
                Ok(Planned::Delete { removed, found })
            }
            Op::DropNamespace(id) | Op::ForgetAgent(id) => {
                let ns = Namespace::Agent(*id);
                let keys: Vec<String> = self
                    .map(ns)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let pending: Vec<String> = view
                    .touched
                    .iter()
                    .filter(|((n, _), m)| *n == ns && m.is_some())
                    .map(|((_, k), _)| k.clone())
                    .collect();
                let mut durable = false;
                for key in keys.into_iter().chain(pending) {
                    if let Some(m) = self.projected(view, ns, &key) {
                        durable |= m.durable;
                        view.keys = view.keys.saturating_sub(1);
                        view.bytes = view.bytes.saturating_sub(m.size);
                        view.touched.insert((ns, key), None);
                    }
                }
                Ok(Planned::Drop { durable })
            }
            _ => Ok(Planned::Other),
        }
    }

    /// Applies a committed change to memory.
    fn apply(&mut self, op: Op, planned: &Planned) -> Applied {
        match (op, planned) {
            (Op::Put(p), _) => {
                self.insert(p);
                Applied::Stored
            }
            (Op::Delete { key, .. }, Planned::Delete { removed, found }) => {
                for (ns, _) in removed {
                    self.remove(*ns, &key);
                }
                Applied::Deleted(*found)
            }
            (Op::DropNamespace(id) | Op::ForgetAgent(id), _) => {
                self.drop_namespace(id);
                Applied::Done
            }
            _ => Applied::Done,
        }
    }

    fn drop_namespace(&mut self, agent: u32) {
        if let Some(m) = self.agents.remove(&agent) {
            for (k, e) in m {
                self.keys -= 1;
                self.bytes -= k.len() + e.value.get().len();
            }
        }
    }

    fn rebuild_expiries(&mut self) {
        let mut heap = BinaryHeap::new();
        for (k, e) in &self.shared {
            if let Some(at) = e.expires_ms {
                heap.push(Reverse((at, Namespace::Shared, k.clone())));
            }
        }
        let private = self.agents.iter().map(|(id, m)| (Namespace::Agent(*id), m));
        let named = self.named.iter().map(|(n, m)| (Namespace::Named(*n), m));
        for (ns, m) in private.chain(named) {
            for (k, e) in m {
                if let Some(at) = e.expires_ms {
                    heap.push(Reverse((at, ns, k.clone())));
                }
            }
        }
        self.expiries = heap;
    }
}

/// Limits applied to writes.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max_keys: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_total_bytes: usize,
}

impl StoreLimits {
    /// The checks that need no state: key and value sizes.
    pub fn check(&self, key: &str, value: &RawValue) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        let vlen = value.get().len();
        if vlen > self.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len: vlen,
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// The state store.
pub struct StateStore {
    inner: Arc<Mutex<Inner>>,
    limits: StoreLimits,
    /// `None`: memory only (nothing survives a restart); changes apply at once.
    writer: Option<Arc<writer::Handle>>,
    /// The connection/agent id counter, shared with the kernel; its high-water mark is
    /// recorded with every commit, so an id that owns durable data is never handed out again.
    ids: Arc<AtomicU32>,
    audit_max: Arc<AtomicUsize>,
    /// The next audit entry id (see [`AUDIT_ID_RESERVE`]).
    audit_ids: Arc<AtomicU64>,
    audit_unsaved: Arc<AtomicU64>,
    recovered: Mutex<Recovered>,
}

/// Where the audit log mirrors its entries: the store's writer thread (an entry is committed
/// with the next batch; nobody waits for it) and the audit id counter that continues across
/// restarts. Cheap to clone; the kernel's audit log holds one.
#[derive(Clone)]
pub struct AuditSink {
    writer: Option<Arc<writer::Handle>>,
    ids: Arc<AtomicU64>,
    max: Arc<AtomicUsize>,
    unsaved: Arc<AtomicU64>,
}

impl AuditSink {
    /// A sink that keeps nothing, with ids from 1 (a log without a durable store).
    pub fn memory() -> AuditSink {
        AuditSink {
            writer: None,
            ids: Arc::new(AtomicU64::new(1)),
            max: Arc::new(AtomicUsize::new(DEFAULT_AUDIT_MAX)),
            unsaved: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands out the next entry id (never 0).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed).max(1)
    }

    /// The last id handed out (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.ids.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Queues an entry for the database without waiting (its id is taken from the counter when
    /// it has none). When the writer's queue is full the entry stays in memory only; such
    /// losses are counted ([`AuditSink::unsaved`]) and logged sparingly.
    pub fn append(&self, mut rec: AuditRecord) {
        let Some(w) = &self.writer else {
            return;
        };
        if rec.id <= 0 {
            rec.id = i64::try_from(self.next_id()).unwrap_or(i64::MAX);
        }
        let unsaved = self.unsaved.clone();
        w.submit(
            Op::Audit(rec),
            Box::new(move |r| {
                if let Err(e) = r {
                    let n = unsaved.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::warn!("{n} audit entries kept in memory only so far: {e}");
                    }
                }
            }),
        );
    }

    /// Changes how many entries the database keeps.
    pub fn set_max(&self, n: usize) {
        self.max.store(n.max(1), Ordering::Relaxed);
    }

    /// Entries that could not be queued or committed.
    pub fn unsaved(&self) -> u64 {
        self.unsaved.load(Ordering::Relaxed)
    }
}

impl StateStore {
    /// A memory-only store.
    pub fn with_limits(limits: StoreLimits) -> StateStore {
        StateStore {
            inner: Arc::new(Mutex::new(Inner::default())),
            limits,
            writer: None,
            ids: Arc::new(AtomicU32::new(1)),
            audit_max: Arc::new(AtomicUsize::new(DEFAULT_AUDIT_MAX)),
            audit_ids: Arc::new(AtomicU64::new(1)),
            audit_unsaved: Arc::new(AtomicU64::new(0)),
            recovered: Mutex::new(Recovered::default()),
        }
    }

    /// Opens (or creates) the durable store of `cfg`, loads it into memory and starts the
    /// writer thread; keeps the newest `audit_max` audit entries. Refuses, leaving the file
    /// untouched, when it is locked, damaged or newer.
    pub fn open(
        cfg: &StoreConfig,
        limits: StoreLimits,
        audit_max: usize,
    ) -> Result<StateStore, OpenError> {
        let s = Self::open_at(cfg, limits)?;
        s.set_audit_max(audit_max);
        Ok(s)
    }

    /// [`StateStore::open`] with explicit settings.
    pub fn open_at(cfg: &StoreConfig, limits: StoreLimits) -> Result<StateStore, OpenError> {
        let db = db::Database::open(&cfg.path, cfg.sync, true)?;
        let now = crate::clock::now_ms();
        let expired_at_start = db
            .purge_expired(now)
            .map_err(|e| db::classify(&cfg.path, e))?;
        let mut inner = Inner {
            registry: Registry::load(&db)?,
            ..Default::default()
        };
        db.for_each_key(|ns, key, value, expires_ms| {
            let scope = match ns {
                Namespace::Shared | Namespace::Named(_) => Scope::Global,
                Namespace::Agent(_) => Scope::Agent,
            };
            if let Namespace::Named(n) = ns {
                inner.registry.next = inner.registry.next.max(n.saturating_add(1));
            }
            inner.insert(Put {
                ns,
                key,
                value,
                scope,
                expires_ms,
                durable: true,
            });
        })?;
        if inner.keys > limits.max_keys || inner.bytes > limits.max_total_bytes {
            log::warn!(
                "the state store holds {} keys / {} bytes, over the configured limits ({} / {}); new keys are refused until it shrinks",
                inner.keys,
                inner.bytes,
                limits.max_keys,
                limits.max_total_bytes
            );
        }
        let recovered = Recovered {
            agent_names: db.agent_names()?,
            agent_specs: db.agent_specs()?,
            expired_at_start,
            docs: db.docs()?,
        };
        let first_id = db.first_free_id()?;
        let (audit_next, audit_rows) = db.audit_next()?;
        // Reserve the ids this run may hand out before handing out any.
        let audit_reserved = audit_next.saturating_add(AUDIT_ID_RESERVE);
        db.record_audit_next(audit_reserved)
            .map_err(|e| db::classify(&cfg.path, e))?;
        log::info!(
            "state store {} (sync={}): {} keys loaded, {} expired keys removed, {} agent names, {} persistent agents",
            cfg.path.display(),
            cfg.sync.as_str(),
            inner.keys,
            expired_at_start,
            recovered.agent_names.len(),
            recovered.agent_specs.len()
        );
        // What SQLite itself says about the writer's connection, for HELLO (not just what the
        // config asked for).
        let synchronous = db.synchronous().map_err(|e| db::classify(&cfg.path, e))?;
        let inner = Arc::new(Mutex::new(inner));
        let ids = Arc::new(AtomicU32::new(first_id));
        let audit_max = Arc::new(AtomicUsize::new(DEFAULT_AUDIT_MAX));
        let audit_ids = Arc::new(AtomicU64::new(audit_next));
        let writer = writer::Handle::start(
            db,
            cfg,
            limits,
            inner.clone(),
            ids.clone(),
            writer::AuditState {
                max: audit_max.clone(),
                ids: audit_ids.clone(),
                recorded: audit_reserved,
                rows: audit_rows,
            },
            synchronous,
        )
        .map_err(|e| OpenError::Io {
            path: cfg.path.clone(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
        Ok(StateStore {
            inner,
            limits,
            writer: Some(Arc::new(writer)),
            ids,
            audit_max,
            audit_ids,
            audit_unsaved: Arc::new(AtomicU64::new(0)),
            recovered: Mutex::new(recovered),
        })
    }

    /// True when changes are kept in a database.
    pub fn is_durable(&self) -> bool {
        self.writer.is_some()
    }

    /// The connection/agent id counter (the kernel allocates ids from it).
    pub fn id_counter(&self) -> Arc<AtomicU32> {
        self.ids.clone()
    }

    /// What the database held at start besides keys (agent names and persistent specs); the
    /// second call returns an empty set. Services' documents stay for their owners
    /// ([`StateStore::take_docs`]): the supervisor takes this while services start, and must
    /// not carry their documents away.
    pub fn take_recovered(&self) -> Recovered {
        let mut r = self.recovered.lock();
        Recovered {
            agent_names: std::mem::take(&mut r.agent_names),
            agent_specs: std::mem::take(&mut r.agent_specs),
            expired_at_start: std::mem::take(&mut r.expired_at_start),
            docs: Vec::new(),
        }
    }

    /// Hands a change to the writer; `done` runs after it is committed (or refused). Never
    /// blocks: with no room in the queue, `done` gets [`StoreError::Busy`] at once.
    pub(crate) fn submit(&self, op: Op, done: Done) {
        let Some(w) = &self.writer else {
            let now = crate::clock::now_ms();
            let mut inner = self.inner.lock();
            let mut view = inner.view();
            let result = match inner.plan(&op, &mut view, &self.limits, now) {
                Ok(planned) => Ok(inner.apply(op, &planned)),
                Err(e) => Err(e),
            };
            drop(inner);
            done(result);
            return;
        };
        w.submit(op, done);
    }

    /// The refusals that need no planning: the writer's queue is full, or it is closed. Handlers
    /// on the reactor thread call this first so that they can answer such refusals directly
    /// (a completion from the reactor thread to itself could wait on its own full queue).
    pub fn precheck(&self) -> Result<(), StoreError> {
        match &self.writer {
            Some(w) => w.precheck(),
            None => Ok(()),
        }
    }

    /// [`StateStore::precheck`] plus the key and value size limits of a put.
    pub fn precheck_put(&self, key: &str, value: &RawValue) -> Result<(), StoreError> {
        self.limits.check(key, value)?;
        self.precheck()
    }

    /// Stores a value once it is committed; see [`Put`]. Size limits are checked at once.
    pub fn submit_put(&self, put: Put, done: Done) {
        if let Err(e) = self.limits.check(&put.key, &put.value) {
            done(Err(e));
            return;
        }
        self.submit(Op::Put(put), done);
    }

    /// Deletes `key` from `first`, or if it has no live key there, from `then`.
    pub fn submit_delete(
        &self,
        key: String,
        first: Namespace,
        then: Option<Namespace>,
        done: Done,
    ) {
        self.submit(Op::Delete { key, first, then }, done);
    }

    /// Submits and waits for the commit. Never call this on the reactor thread.
    fn wait(&self, op: Op) -> Result<Applied, StoreError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Stores a value and waits until it is committed (for threads that may block).
    pub fn put_wait(&self, put: Put) -> Result<(), StoreError> {
        self.limits.check(&put.key, &put.value)?;
        self.wait(Op::Put(put)).map(|_| ())
    }

    /// Deletes and waits; returns what was removed.
    pub fn delete_wait(
        &self,
        key: &str,
        first: Namespace,
        then: Option<Namespace>,
    ) -> Result<Option<(Namespace, Scope)>, StoreError> {
        match self.wait(Op::Delete {
            key: key.to_string(),
            first,
            then,
        })? {
            Applied::Deleted(found) => Ok(found),
            _ => Ok(None),
        }
    }

    /// Drops an agent's whole namespace (when the agent is removed for good). Does not wait.
    pub fn drop_namespace(&self, agent: u32) {
        self.submit(
            Op::DropNamespace(agent),
            Box::new(move |r| {
                if let Err(e) = r {
                    log::error!("cannot drop the state of agent {agent}: {e}");
                }
            }),
        );
    }

    /// Saves (or replaces) the spec of a `persist: true` agent without waiting; `done` runs
    /// after the commit.
    pub fn submit_agent_spec(&self, rec: AgentSpecRecord, done: Done) {
        self.submit(Op::SaveSpec(rec), done);
    }

    /// Records `name` as the (only) name of supervised agent `agent_id`, without waiting.
    pub fn submit_agent_name(&self, name: &str, agent_id: u32, done: Done) {
        self.submit(
            Op::SaveName(AgentName {
                name: name.to_string(),
                agent_id,
            }),
            done,
        );
    }

    /// Forgets everything kept about an agent (its `agent` keys, its names, its persistent
    /// spec), in memory and on disk, in one transaction; does not wait.
    pub fn submit_forget_agent(&self, agent_id: u32, done: Done) {
        self.submit(Op::ForgetAgent(agent_id), done);
    }

    /// Saves and removes services' documents in one transaction without waiting; `done` runs
    /// after the commit. (A memory-only store keeps nothing and answers at once.)
    pub fn submit_docs(&self, writes: Vec<DocWrite>, done: Done) {
        self.submit(Op::Docs(writes), done);
    }

    /// [`StateStore::submit_docs`], waiting for the commit (for threads that may block).
    pub fn docs_wait(&self, writes: Vec<DocWrite>) -> Result<(), StoreError> {
        self.wait(Op::Docs(writes)).map(|_| ())
    }

    /// The documents of `collection` that were on disk at start, as `(id, body)`, taken once
    /// (a second call gets nothing).
    pub fn take_docs(&self, collection: &str) -> Vec<(String, String)> {
        let mut r = self.recovered.lock();
        let (mine, rest): (Vec<DocRecord>, Vec<DocRecord>) = std::mem::take(&mut r.docs)
            .into_iter()
            .partition(|d| d.collection == collection);
        r.docs = rest;
        mine.into_iter().map(|d| (d.id, d.body)).collect()
    }

    /// The namespace a service names `name` (an opaque key: the relay's tenants use
    /// `relay:<tenant>`), made on first use. Its number is recorded on disk with the first
    /// key stored in it, in the same transaction, so a key on disk always has its name.
    pub fn named_namespace(&self, name: &str) -> Namespace {
        let mut inner = self.inner.lock();
        let r = &mut inner.registry;
        if let Some(n) = r.by_name.get(name) {
            return Namespace::Named(*n);
        }
        let n = r.next.max(1);
        r.next = n.saturating_add(1);
        r.by_name.insert(name.to_owned(), n);
        r.names.insert(n, name.to_owned());
        Namespace::Named(n)
    }

    /// Agents that own `agent`-scoped keys.
    pub fn agent_namespaces(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.inner.lock().agents.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The audit log's way into the store.
    pub fn audit_sink(&self) -> AuditSink {
        AuditSink {
            writer: self.writer.clone(),
            ids: self.audit_ids.clone(),
            max: self.audit_max.clone(),
            unsaved: self.audit_unsaved.clone(),
        }
    }

    /// The newest `limit` audit entries on disk, oldest first (for the log at start; waits).
    pub fn load_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        if self.writer.is_none() {
            return Ok(Vec::new());
        }
        self.query_audit(AuditQuery {
            limit,
            ..Default::default()
        })
    }

    /// Saves (or replaces) the spec of a `persist: true` agent; waits for the commit.
    pub fn save_agent_spec(&self, rec: AgentSpecRecord) -> Result<(), StoreError> {
        self.wait(Op::SaveSpec(rec)).map(|_| ())
    }

    /// Forgets a persistent agent's spec; waits for the commit.
    pub fn delete_agent_spec(&self, agent_id: u32) -> Result<(), StoreError> {
        self.wait(Op::DeleteSpec(agent_id)).map(|_| ())
    }

    /// Records that `name` is the name of supervised agent `agent_id` (replacing any other
    /// name of that agent); waits for the commit.
    pub fn save_agent_name(&self, name: &str, agent_id: u32) -> Result<(), StoreError> {
        self.wait(Op::SaveName(AgentName {
            name: name.to_string(),
            agent_id,
        }))
        .map(|_| ())
    }

    /// Releases a supervised agent's name; waits for the commit.
    pub fn release_agent_name(&self, name: &str) -> Result<(), StoreError> {
        self.wait(Op::ReleaseName(name.to_string())).map(|_| ())
    }

    /// Appends an audit entry without waiting (it is committed with the next batch); an entry
    /// without an id gets the next one. The log keeps the newest `audit.max_entries` entries.
    pub fn append_audit(&self, rec: AuditRecord) {
        self.audit_sink().append(rec);
    }

    /// Reads audit entries (served by the writer thread, so it sees every earlier append).
    pub fn query_audit(&self, q: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        match self.wait(Op::QueryAudit(q))? {
            Applied::Audit(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// Changes how many audit entries are kept (SET_AUDIT_CONFIG max_entries).
    pub fn set_audit_max(&self, n: usize) {
        self.audit_max.store(n.max(1), Ordering::Relaxed);
    }

    /// Reads a key from one namespace.
    pub fn get(&self, ns: Namespace, key: &str, now_ms: u64) -> Option<Found> {
        let inner = self.inner.lock();
        let e = inner.map(ns)?.get(key)?;
        e.live(now_ms).then(|| Found {
            value: e.value.clone(),
            scope: e.scope,
            expires_ms: e.expires_ms,
        })
    }

    /// Reads a key with a closure, without copying the value.
    pub fn with<R>(
        &self,
        ns: Namespace,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(Option<(&RawValue, Scope)>) -> R,
    ) -> R {
        let inner = self.inner.lock();
        match inner.map(ns).and_then(|m| m.get(key)) {
            Some(e) if e.live(now_ms) => f(Some((&e.value, e.scope))),
            _ => f(None),
        }
    }

    /// Live keys of a namespace that start with `prefix`, sorted.
    pub fn keys(&self, ns: Namespace, prefix: &str, now_ms: u64, limit: usize) -> Vec<String> {
        let inner = self.inner.lock();
        let mut out: Vec<String> = inner
            .map(ns)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        out.sort_unstable();
        out.truncate(limit);
        out
    }

    /// Removes every entry whose expiry is at or before `now_ms` from memory. (On disk, the
    /// writer purges expired rows on its own; they are dead by their expiry either way.)
    pub fn expire(&self, now_ms: u64) -> Vec<Expired> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while let Some(Reverse((at, _, _))) = inner.expiries.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((at, ns, key))) = inner.expiries.pop() else {
                break;
            };
            let current = inner
                .map(ns)
                .and_then(|m| m.get(&key))
                .and_then(|e| e.expires_ms);
            if current == Some(at)
                && let Some(e) = inner.remove(ns, &key)
            {
                out.push(Expired {
                    ns,
                    key,
                    scope: e.scope,
                });
            }
        }
        out
    }

    /// The earliest pending expiry (possibly of an entry since rewritten; harmless).
    pub fn next_expiry(&self) -> Option<u64> {
        self.inner
            .lock()
            .expiries
            .peek()
            .map(|Reverse((at, _, _))| *at)
    }

    /// Number of live-or-not-yet-reclaimed entries and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.keys, inner.bytes)
    }

    /// Commit counters for users (HELLO's `store` object).
    pub fn stats_json(&self) -> serde_json::Value {
        let (keys, bytes) = self.usage();
        let mut v = match &self.writer {
            Some(w) => w.stats_json(),
            None => serde_json::json!({"durable": false}),
        };
        v["keys"] = keys.into();
        v["bytes"] = bytes.into();
        v["audit_unsaved"] = self.audit_unsaved.load(Ordering::Relaxed).into();
        v
    }

    /// Commits what is queued and stops the writer thread (at daemon exit).
    pub fn close(&self) {
        if let Some(w) = &self.writer {
            w.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StoreLimits {
        StoreLimits {
            max_keys: 3,
            max_key_bytes: 8,
            max_value_bytes: 16,
            max_total_bytes: 30,
        }
    }

    fn store() -> StateStore {
        StateStore::with_limits(limits())
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn put(
        s: &StateStore,
        ns: Namespace,
        key: &str,
        v: &str,
        scope: Scope,
        exp: Option<u64>,
    ) -> Result<(), StoreError> {
        s.put_wait(Put {
            ns,
            key: key.into(),
            value: raw(v),
            scope,
            expires_ms: exp,
            durable: scope == Scope::Global || matches!(ns, Namespace::Agent(_)),
        })
    }

    #[test]
    fn namespaces_are_separate() {
        let s = store();
        put(&s, Namespace::Shared, "k", "1", Scope::Global, None).unwrap();
        put(&s, Namespace::Agent(7), "k", "2", Scope::Agent, None).unwrap();
        assert_eq!(s.get(Namespace::Shared, "k", 0).unwrap().value.get(), "1");
        assert_eq!(s.get(Namespace::Agent(7), "k", 0).unwrap().value.get(), "2");
        assert!(s.get(Namespace::Agent(8), "k", 0).is_none());
        assert_eq!(
            s.delete_wait("k", Namespace::Agent(8), Some(Namespace::Shared)),
            Ok(Some((Namespace::Shared, Scope::Global)))
        );
        assert!(s.get(Namespace::Agent(7), "k", 0).is_some());
    }

    #[test]
    fn limits_enforced() {
        let s = store();
        let sh = Namespace::Shared;
        assert_eq!(
            put(&s, sh, "", "1", Scope::Global, None),
            Err(StoreError::EmptyKey)
        );
        assert!(matches!(
            put(&s, sh, "123456789", "1", Scope::Global, None),
            Err(StoreError::KeyTooLong { .. })
        ));
        assert!(matches!(
            put(&s, sh, "a", "\"0123456789abcdef\"", Scope::Global, None),
            Err(StoreError::ValueTooLarge { .. })
        ));
        for k in ["a", "b", "c"] {
            put(&s, sh, k, "1", Scope::Global, None).unwrap();
        }
        assert_eq!(
            put(&s, sh, "d", "1", Scope::Global, None),
            Err(StoreError::TooManyKeys { max: 3 })
        );
        // Overwriting an existing key does not count as a new key.
        put(&s, sh, "a", "2", Scope::Global, None).unwrap();
        put(&s, sh, "a", "\"0123456789abcd\"", Scope::Global, None).unwrap();
        assert!(matches!(
            put(&s, sh, "b", "\"0123456789abcd\"", Scope::Global, None),
            Err(StoreError::TooManyBytes { .. })
        ));
        assert_eq!(s.usage(), (3, 1 + 16 + 2 + 2));
    }

    #[test]
    fn limits_within_one_batch() {
        // Several changes planned together see each other's effect.
        let s = store();
        let inner = s.inner.lock();
        let mut view = inner.view();
        let op = |k: &str| {
            Op::Put(Put {
                ns: Namespace::Shared,
                key: k.into(),
                value: raw("1"),
                scope: Scope::Global,
                expires_ms: None,
                durable: true,
            })
        };
        for k in ["a", "b", "c"] {
            assert!(inner.plan(&op(k), &mut view, &s.limits, 0).is_ok());
        }
        assert!(matches!(
            inner.plan(&op("d"), &mut view, &s.limits, 0),
            Err(StoreError::TooManyKeys { .. })
        ));
        assert!(inner.plan(&op("a"), &mut view, &s.limits, 0).is_ok());
        let del = Op::Delete {
            key: "a".into(),
            first: Namespace::Shared,
            then: None,
        };
        match inner.plan(&del, &mut view, &s.limits, 0).unwrap() {
            Planned::Delete { removed, found } => {
                assert_eq!(removed, vec![(Namespace::Shared, true)]);
                assert_eq!(found, Some((Namespace::Shared, Scope::Global)));
            }
            other => panic!("{other:?}"),
        }
        assert!(inner.plan(&op("d"), &mut view, &s.limits, 0).is_ok());
    }

    #[test]
    fn session_over_durable_deletes_the_row() {
        let s = store();
        let inner = s.inner.lock();
        let mut view = inner.view();
        let op = |scope: Scope| {
            Op::Put(Put {
                ns: Namespace::Shared,
                key: "k".into(),
                value: raw("1"),
                scope,
                expires_ms: None,
                durable: scope == Scope::Global,
            })
        };
        let p = |r: Result<Planned, StoreError>| match r.unwrap() {
            Planned::Put(w) => w,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            p(inner.plan(&op(Scope::Session), &mut view, &s.limits, 0)),
            KvWrite::Nothing
        );
        assert_eq!(
            p(inner.plan(&op(Scope::Global), &mut view, &s.limits, 0)),
            KvWrite::Upsert
        );
        assert_eq!(
            p(inner.plan(&op(Scope::Session), &mut view, &s.limits, 0)),
            KvWrite::DeleteRow
        );
    }

    #[test]
    fn expiry_reclaims() {
        let s = store();
        put(&s, Namespace::Shared, "a", "1", Scope::Global, Some(100)).unwrap();
        put(&s, Namespace::Agent(1), "b", "1", Scope::Agent, Some(200)).unwrap();
        assert_eq!(s.next_expiry(), Some(100));
        assert!(s.get(Namespace::Shared, "a", 99).is_some());
        assert!(
            s.get(Namespace::Shared, "a", 100).is_none(),
            "hidden at expiry"
        );
        let gone = s.expire(150);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, "a");
        assert_eq!(s.usage().0, 1, "reclaimed, not just hidden");
        // A key rewritten without TTL does not expire from its old heap entry.
        put(&s, Namespace::Agent(1), "b", "2", Scope::Agent, None).unwrap();
        assert!(s.expire(1000).is_empty());
        assert_eq!(s.usage().0, 1);
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("clove-store")
            .tempdir_in("/tmp")
            .unwrap()
    }

    fn big_limits() -> StoreLimits {
        StoreLimits {
            max_keys: 1000,
            max_key_bytes: 64,
            max_value_bytes: 1024,
            max_total_bytes: 1 << 20,
        }
    }

    #[test]
    fn durable_keys_survive_reopen_and_others_do_not() {
        let d = tmp();
        let cfg = StoreConfig::at(&d.path().join("s.db"));
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        assert!(s.is_durable());
        let now = crate::clock::now_ms();
        let sh = Namespace::Shared;
        put(&s, sh, "g", r#"{"a": 1}"#, Scope::Global, None).unwrap();
        put(&s, sh, "sess", "1", Scope::Session, None).unwrap();
        put(&s, sh, "soon", "1", Scope::Global, Some(now + 1)).unwrap();
        put(&s, sh, "later", "1", Scope::Global, Some(now + 3_600_000)).unwrap();
        put(&s, Namespace::Agent(9), "mine", "2", Scope::Agent, None).unwrap();
        s.put_wait(Put {
            ns: Namespace::Agent(10),
            key: "client".into(),
            value: raw("3"),
            scope: Scope::Agent,
            expires_ms: None,
            durable: false,
        })
        .unwrap();
        // A global key turned into a session key is no longer durable, and back.
        put(&s, sh, "flip", "1", Scope::Global, None).unwrap();
        put(&s, sh, "flip", "2", Scope::Session, None).unwrap();
        put(&s, sh, "flop", "1", Scope::Session, None).unwrap();
        put(&s, sh, "flop", "2", Scope::Global, None).unwrap();
        put(&s, sh, "gone", "1", Scope::Global, None).unwrap();
        assert_eq!(
            s.delete_wait("gone", Namespace::Agent(9), Some(sh)),
            Ok(Some((sh, Scope::Global)))
        );
        assert_eq!(
            s.delete_wait("gone", Namespace::Agent(9), Some(sh)),
            Ok(None)
        );
        s.close();
        // "soon" is deleted from the file by the writer once it expired, or else at the next
        // start: exactly once either way.
        let purged_running = s.stats_json()["expired_rows_purged"].as_u64().unwrap();
        assert_eq!(
            put(&s, sh, "late", "1", Scope::Global, None),
            Err(StoreError::Closed)
        );
        drop(s);
        // Wait (without sleeping blindly) until "soon" has expired on the wall clock.
        while crate::clock::now_ms() <= now + 1 {
            std::thread::yield_now();
        }
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let t = crate::clock::now_ms();
        assert_eq!(s.get(sh, "g", t).unwrap().value.get(), r#"{"a": 1}"#);
        assert_eq!(s.get(sh, "g", t).unwrap().scope, Scope::Global);
        assert!(s.get(sh, "sess", t).is_none());
        assert!(s.get(sh, "soon", t).is_none());
        assert!(s.get(sh, "later", t).is_some());
        assert_eq!(s.next_expiry(), Some(now + 3_600_000));
        let mine = s.get(Namespace::Agent(9), "mine", t).unwrap();
        assert_eq!((mine.value.get(), mine.scope), ("2", Scope::Agent));
        assert!(s.get(Namespace::Agent(10), "client", t).is_none());
        assert!(s.get(sh, "flip", t).is_none());
        assert_eq!(s.get(sh, "flop", t).unwrap().value.get(), "2");
        assert!(s.get(sh, "gone", t).is_none());
        assert_eq!(
            s.take_recovered().expired_at_start as u64 + purged_running,
            1
        );
        // Ids continue above every agent that owns durable data.
        assert!(s.id_counter().load(Ordering::Relaxed) >= 10);
    }

    #[test]
    fn named_namespaces_are_separate_durable_and_keep_their_numbers() {
        let d = tmp();
        let cfg = StoreConfig::at(&d.path().join("s.db"));
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let a = s.named_namespace("relay:acme");
        let b = s.named_namespace("relay:lab");
        assert_eq!(s.named_namespace("relay:acme"), a, "one number per name");
        assert_ne!(a, b);
        put(&s, a, "k", "1", Scope::Global, None).unwrap();
        put(&s, b, "k", "2", Scope::Global, None).unwrap();
        put(&s, Namespace::Shared, "k", "3", Scope::Global, None).unwrap();
        put(&s, Namespace::Agent(1), "k", "4", Scope::Agent, None).unwrap();
        let t = crate::clock::now_ms();
        assert_eq!(s.get(a, "k", t).unwrap().value.get(), "1");
        assert_eq!(s.keys(a, "", t, 10), ["k"]);
        // A name never stored into leaves no trace on disk.
        let unused = s.named_namespace("relay:unused");
        s.close();
        drop(s);
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let t = crate::clock::now_ms();
        // The numbers come back with their names, and new names get new numbers.
        assert_eq!(s.named_namespace("relay:lab"), b);
        assert_eq!(s.named_namespace("relay:acme"), a);
        let c = s.named_namespace("relay:new");
        assert!(![a, b].contains(&c));
        assert_eq!(s.get(a, "k", t).unwrap().value.get(), "1");
        assert_eq!(s.get(b, "k", t).unwrap().value.get(), "2");
        assert_eq!(s.get(Namespace::Shared, "k", t).unwrap().value.get(), "3");
        assert_eq!(s.get(Namespace::Agent(1), "k", t).unwrap().value.get(), "4");
        assert!(s.get(unused, "k", t).is_none());
        // A delete in one named namespace leaves the others alone.
        assert_eq!(s.delete_wait("k", a, None), Ok(Some((a, Scope::Global))));
        assert!(s.get(b, "k", t).is_some());
        // Agent ids are not moved by named namespaces' numbers.
        assert_eq!(s.agent_namespaces(), [1]);
    }

    #[test]
    fn agent_records_and_audit() {
        let d = tmp();
        let cfg = StoreConfig::at(&d.path().join("s.db"));
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        s.set_audit_max(5);
        let spec = |id: u32| AgentSpecRecord {
            agent_id: id,
            name: Some(format!("a{id}")),
            spec: serde_json::json!({"script": format!("a{id}.py"), "persist": true}),
            saved_ms: 1,
        };
        s.save_agent_spec(spec(3)).unwrap();
        s.save_agent_spec(spec(4)).unwrap();
        s.save_agent_spec(spec(5)).unwrap();
        s.delete_agent_spec(4).unwrap();
        s.save_agent_name("a3", 3).unwrap();
        s.save_agent_name("a5", 5).unwrap();
        s.release_agent_name("a5").unwrap();
        for i in 0..12u32 {
            s.append_audit(AuditRecord {
                id: 0,
                ts_ms: 1000 + u64::from(i),
                category: if i % 2 == 0 { "lifecycle" } else { "state" }.into(),
                event_type: format!("e{i}"),
                agent_id: i,
                agent_name: None,
                success: true,
                details: serde_json::json!({"i": i}),
            });
        }
        let all = s
            .query_audit(AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let kinds: Vec<&str> = all.iter().map(|a| a.event_type.as_str()).collect();
        assert_eq!(
            kinds,
            ["e7", "e8", "e9", "e10", "e11"],
            "bounded, oldest pruned"
        );
        let newest_two = s
            .query_audit(AuditQuery {
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(newest_two.len(), 2);
        assert_eq!(newest_two[1].event_type, "e11");
        let since = s
            .query_audit(AuditQuery {
                since_id: Some(all[2].id),
                category: Some("lifecycle".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let kinds: Vec<&str> = since.iter().map(|a| a.event_type.as_str()).collect();
        assert_eq!(kinds, ["e10"]);
        s.close();
        drop(s);
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let r = s.take_recovered();
        assert_eq!(
            r.agent_specs.iter().map(|a| a.agent_id).collect::<Vec<_>>(),
            [3, 5]
        );
        assert_eq!(r.agent_specs[0].spec["script"], "a3.py");
        assert_eq!(
            r.agent_names,
            vec![AgentName {
                name: "a3".into(),
                agent_id: 3
            }]
        );
        assert!(s.take_recovered().agent_specs.is_empty(), "taken once");
        assert_eq!(
            s.query_audit(AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .len(),
            5
        );
        assert!(s.id_counter().load(Ordering::Relaxed) > 5);
    }

    #[test]
    fn one_name_per_agent_and_forgetting_an_agent() {
        let d = tmp();
        let cfg = StoreConfig::at(&d.path().join("s.db"));
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        s.save_agent_name("first", 7).unwrap();
        s.save_agent_name("second", 7).unwrap();
        s.save_agent_name("other", 8).unwrap();
        put(&s, Namespace::Agent(7), "k", "1", Scope::Agent, None).unwrap();
        put(&s, Namespace::Agent(8), "k", "2", Scope::Agent, None).unwrap();
        s.save_agent_spec(AgentSpecRecord {
            agent_id: 7,
            name: Some("second".into()),
            spec: serde_json::json!({}),
            saved_ms: 1,
        })
        .unwrap();
        s.save_agent_spec(AgentSpecRecord {
            agent_id: 8,
            name: Some("other".into()),
            spec: serde_json::json!({}),
            saved_ms: 1,
        })
        .unwrap();
        assert_eq!(s.agent_namespaces(), [7, 8]);
        s.close();
        drop(s);
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let r = s.take_recovered();
        let names: Vec<(String, u32)> = r
            .agent_names
            .iter()
            .map(|n| (n.name.clone(), n.agent_id))
            .collect();
        assert_eq!(
            names,
            [("other".to_string(), 8), ("second".to_string(), 7)],
            "registering another name replaces the agent's old one"
        );
        let (tx, rx) = crossbeam_channel::bounded(1);
        s.submit_forget_agent(
            7,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        assert_eq!(rx.recv().unwrap(), Ok(Applied::Done));
        assert!(s.get(Namespace::Agent(7), "k", 0).is_none());
        assert_eq!(s.agent_namespaces(), [8]);
        s.close();
        drop(s);
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let r = s.take_recovered();
        assert_eq!(
            r.agent_specs.iter().map(|a| a.agent_id).collect::<Vec<_>>(),
            [8]
        );
        assert_eq!(r.agent_names.len(), 1);
        assert!(s.get(Namespace::Agent(7), "k", 0).is_none());
        assert_eq!(s.get(Namespace::Agent(8), "k", 0).unwrap().value.get(), "2");
    }

    #[test]
    fn audit_ids_continue_after_a_clean_stop_and_are_pruned_by_count() {
        let d = tmp();
        let cfg = StoreConfig::at(&d.path().join("s.db"));
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        s.set_audit_max(3);
        let sink = s.audit_sink();
        let entry = |id: u64| AuditRecord {
            id: id as i64,
            ts_ms: 5,
            category: "SECURITY".into(),
            event_type: format!("e{id}"),
            agent_id: 1,
            agent_name: None,
            success: false,
            details: serde_json::json!(null),
        };
        for _ in 0..5 {
            let id = sink.next_id();
            sink.append(entry(id));
        }
        // An id handed out whose entry was never written is not given out again either.
        assert_eq!(sink.next_id(), 6);
        assert_eq!(sink.last_id(), 6);
        let got = s.load_audit(100).unwrap();
        assert_eq!(
            got.iter().map(|a| a.id).collect::<Vec<_>>(),
            [3, 4, 5],
            "newest kept"
        );
        s.close();
        drop(s);
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let sink = s.audit_sink();
        assert_eq!(sink.next_id(), 7, "a clean stop continues without a gap");
        assert_eq!(s.load_audit(2).unwrap().len(), 2);
        assert_eq!(sink.unsaved(), 0);
    }

    #[test]
    fn a_full_queue_refuses_writes() {
        let d = tmp();
        let mut cfg = StoreConfig::at(&d.path().join("s.db"));
        cfg.max_pending_writes = 1;
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        {
            // While memory is locked the writer cannot plan, so the queue stays full.
            let _held = s.inner.lock();
            for i in 0..3 {
                let tx = tx.clone();
                s.submit_put(
                    Put {
                        ns: Namespace::Shared,
                        key: format!("k{i}"),
                        value: raw("1"),
                        scope: Scope::Global,
                        expires_ms: None,
                        durable: true,
                    },
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
            }
        }
        let results: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert!(
            results.contains(&Err(StoreError::Busy { max: 1 })),
            "{results:?}"
        );
        assert!(results.contains(&Ok(Applied::Stored)), "{results:?}");
        assert_eq!(
            s.stats_json()["busy_refusals"].as_u64(),
            Some(results.iter().filter(|r| r.is_err()).count() as u64)
        );
    }

    #[test]
    fn documents_commit_in_batches_and_come_back_by_collection() {
        let d = tmp();
        let cfg = StoreConfig::at(&d.path().join("s.db"));
        let doc = |c: &str, id: &str, body: &str| {
            DocWrite::Put(DocRecord {
                collection: c.into(),
                id: id.into(),
                body: body.into(),
            })
        };
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        s.docs_wait(vec![
            doc("router.swarms", "a", r#"{"n":1}"#),
            doc("router.swarms", "b", r#"{"n":2}"#),
            doc("relay.tasks", "t1", "{}"),
        ])
        .unwrap();
        s.docs_wait(vec![
            doc("router.swarms", "a", r#"{"n":3}"#),
            DocWrite::Delete {
                collection: "router.swarms".into(),
                id: "b".into(),
            },
            DocWrite::Delete {
                collection: "router.swarms".into(),
                id: "never-there".into(),
            },
        ])
        .unwrap();
        s.close();
        drop(s);
        let s = StateStore::open_at(&cfg, big_limits()).unwrap();
        // The supervisor's take leaves the services' documents alone.
        assert!(s.take_recovered().docs.is_empty());
        assert_eq!(
            s.take_docs("router.swarms"),
            vec![("a".to_string(), r#"{"n":3}"#.to_string())]
        );
        assert!(s.take_docs("router.swarms").is_empty(), "taken once");
        assert_eq!(s.take_docs("relay.tasks").len(), 1);
        // A memory-only store accepts writes and keeps nothing.
        let m = StateStore::with_limits(limits());
        m.docs_wait(vec![doc("x", "y", "{}")]).unwrap();
        assert!(m.take_docs("x").is_empty());
    }
}
