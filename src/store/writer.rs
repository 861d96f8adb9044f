//! The writer thread: the only user of the database connection. It takes every queued change,
//! checks them against the limits in order, commits the durable ones in ONE transaction (group
//! commit), applies all of them to memory in the same order, and only then calls each change's
//! completion.
//!
//! A statement that fails rolls the whole batch back and every change in it is refused
//! ("nothing was changed"); so does a COMMIT that fails because the disk is full, which SQLite
//! rolls back. Any other failed COMMIT is different: SQLite cannot always say whether the data
//! reached the disk, so memory and file may disagree; the store then refuses all further writes
//! until a restart, which reloads the truth from the file.

use super::config::{StoreConfig, SyncMode};
use super::db::Database;
use super::{
    AUDIT_ID_RESERVE, Applied, AuditRecord, DocWrite, Done, Inner, KvWrite, Op, Planned,
    StoreError, StoreLimits,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use rusqlite::params;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Expired rows are purged from the file (memory is purged by the reactor's timer) when the
/// earliest expiry in the file has passed, at most once per this many milliseconds (so that
/// keys expiring one after the other are purged together).
const PURGE_EVERY_MS: u64 = 1000;

/// The longest the writer sleeps while rows with an expiry exist, before it looks at the clock
/// again: expiries are wall-clock times, and a clock that jumps forward would otherwise leave
/// expired rows in the file for as long as the jump.
const MAX_SLEEP_MS: u64 = 60_000;

/// Upper bounds of the batch-size histogram buckets (the last one is open).
const BUCKETS: [(u64, &str); 8] = [
    (1, "1"),
    (3, "2-3"),
    (7, "4-7"),
    (15, "8-15"),
    (31, "16-31"),
    (63, "32-63"),
    (127, "64-127"),
    (u64::MAX, "128+"),
];

/// The audit log's bookkeeping on the writer's side.
pub(crate) struct AuditState {
    /// Entries to keep (`audit.max_entries`).
    pub max: Arc<AtomicUsize>,
    /// The next id the audit log hands out (shared with it).
    pub ids: Arc<AtomicU64>,
    /// The `meta.audit_next` value on disk.
    pub recorded: u64,
    /// Rows in the audit table (kept up to date by the writer, so that pruning runs only when
    /// there is something to prune).
    pub rows: u64,
}

pub(crate) struct Request {
    op: Op,
    done: Done,
}

enum Msg {
    /// Boxed so that the bounded queue's slots are small: a channel allocates and touches all
    /// of its slots up front, and `max_pending_writes` of them must not cost megabytes of RSS.
    Change(Box<Request>),
    /// Commit what is queued, then exit.
    Stop,
}

#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    changes: AtomicU64,
    largest: AtomicU64,
    hist: [AtomicU64; BUCKETS.len()],
    commit_us: AtomicU64,
    busy: AtomicU64,
    purged: AtomicU64,
    failed: AtomicBool,
}

/// The store's side of the writer: the queue and the thread.
pub(crate) struct Handle {
    tx: Sender<Msg>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
    max_pending: usize,
    sync: SyncMode,
    /// `PRAGMA synchronous` read back from the writer's connection at start.
    synchronous: &'static str,
    path: PathBuf,
}

impl Handle {
    pub(crate) fn start(
        db: Database,
        cfg: &StoreConfig,
        limits: StoreLimits,
        inner: Arc<Mutex<Inner>>,
        ids: Arc<AtomicU32>,
        audit: AuditState,
        synchronous: &'static str,
    ) -> std::io::Result<Handle> {
        let (tx, rx) = crossbeam_channel::bounded(cfg.max_pending_writes);
        let stats = Arc::new(Stats::default());
        let recorded_id = ids.load(Ordering::Relaxed);
        // The earliest expiry in the file, so that rows written by an earlier run are purged on
        // time. If it cannot be read, purge at once (which reads it again).
        let next_expiry = db.next_expiry().unwrap_or_else(|e| {
            log::warn!("state store: cannot read the next expiry ({e}); purging now");
            Some(0)
        });
        let mut writer = Writer {
            db,
            rx,
            limits,
            inner,
            ids,
            recorded_id,
            audit,
            closing: false,
            stats: stats.clone(),
            max_batch: cfg.max_pending_writes,
            broken: None,
            next_expiry,
            last_purge: None,
        };
        let thread = std::thread::Builder::new()
            .name("clove-store".into())
            .spawn(move || writer.run())?;
        Ok(Handle {
            tx,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            stats,
            max_pending: cfg.max_pending_writes,
            sync: cfg.sync,
            synchronous,
            path: cfg.path.clone(),
        })
    }

    /// Whether a change would be accepted right now.
    pub(crate) fn precheck(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if self.tx.is_full() {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Busy {
                max: self.max_pending,
            });
        }
        Ok(())
    }

    /// Queues a change without blocking.
    pub(crate) fn submit(&self, op: Op, done: Done) {
        if self.closed.load(Ordering::Acquire) {
            done(Err(StoreError::Closed));
            return;
        }
        match self
            .tx
            .try_send(Msg::Change(Box::new(Request { op, done })))
        {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Change(r))) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                (r.done)(Err(StoreError::Busy {
                    max: self.max_pending,
                }));
            }
            Err(TrySendError::Disconnected(Msg::Change(r))) => (r.done)(Err(StoreError::Closed)),
            Err(_) => {}
        }
    }

    /// Commits everything queued and joins the thread.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().take()
            && t.join().is_err()
        {
            log::error!("the state store writer panicked");
        }
        log::info!("state store closed: {}", self.summary());
    }

    fn summary(&self) -> String {
        let s = &self.stats;
        let commits = s.commits.load(Ordering::Relaxed);
        let changes = s.changes.load(Ordering::Relaxed);
        format!(
            "{commits} commits of {changes} changes (average batch {:.1}, largest {})",
            changes as f64 / commits.max(1) as f64,
            s.largest.load(Ordering::Relaxed)
        )
    }

    pub(crate) fn stats_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let commits = s.commits.load(Ordering::Relaxed);
        let changes = s.changes.load(Ordering::Relaxed);
        // Ordered smallest first: [["1", commits], ["2-3", commits], ...].
        let hist: Vec<serde_json::Value> = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, (_, name))| serde_json::json!([name, s.hist[i].load(Ordering::Relaxed)]))
            .collect();
        serde_json::json!({
            "durable": true,
            "path": self.path.display().to_string(),
            "sync": self.sync.as_str(),
            "synchronous": self.synchronous,
            "commits": commits,
            "changes_committed": changes,
            "avg_batch": (changes as f64 / commits.max(1) as f64 * 100.0).round() / 100.0,
            "max_batch": s.largest.load(Ordering::Relaxed),
            "batch_sizes": hist,
            "avg_commit_us": s.commit_us.load(Ordering::Relaxed) / commits.max(1),
            "pending": self.tx.len(),
            "busy_refusals": s.busy.load(Ordering::Relaxed),
            "expired_rows_purged": s.purged.load(Ordering::Relaxed),
            "failed": s.failed.load(Ordering::Relaxed),
        })
    }
}

struct Writer {
    db: Database,
    rx: Receiver<Msg>,
    limits: StoreLimits,
    inner: Arc<Mutex<Inner>>,
    ids: Arc<AtomicU32>,
    /// The id high-water mark last committed to `meta`.
    recorded_id: u32,
    audit: AuditState,
    /// The final commit at exit: records the exact next audit id.
    closing: bool,
    stats: Arc<Stats>,
    max_batch: usize,
    /// Set when a COMMIT failed: the file and memory may disagree.
    broken: Option<String>,
    /// The earliest expiry of a row in the file: never later than the real one (a row deleted
    /// or rewritten since may have had it, which costs one purge that finds nothing). `None`:
    /// no row has an expiry, and the writer sleeps until a change arrives.
    next_expiry: Option<u64>,
    /// When the last purge ran (wall-clock ms).
    last_purge: Option<u64>,
}

/// Why a batch was not written.
enum Failure {
    /// A statement failed; the transaction was rolled back.
    Statement(String),
    /// COMMIT (or the rollback) failed: the outcome on disk is unknown.
    Commit(String),
}

impl Writer {
    fn run(&mut self) {
        let mut stopping = false;
        loop {
            let first = if stopping {
                match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else if let Some(at) = self.purge_at() {
                let now = crate::clock::now_ms();
                if now >= at {
                    self.commit(Vec::new());
                    // A purge that failed is retried no sooner than the next purge would be.
                    if self.purge_at().is_some_and(|again| again <= now) {
                        self.last_purge = Some(now);
                    }
                    continue;
                }
                let wait = (at - now).min(MAX_SLEEP_MS);
                match self.rx.recv_timeout(Duration::from_millis(wait)) {
                    Ok(m) => m,
                    // Look at the clock again: the purge may be due.
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            let mut batch = Vec::new();
            match first {
                Msg::Change(r) => batch.push(*r),
                Msg::Stop => stopping = true,
            }
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Msg::Change(r)) => batch.push(*r),
                    Ok(Msg::Stop) => stopping = true,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        // Record the id high-water mark of this run even if nothing durable was written, and
        // the exact next audit id (a clean stop continues the audit ids without a jump).
        if self.broken.is_none() {
            self.closing = true;
            self.commit_records(&[], &[], crate::clock::now_ms(), false)
                .map(|_| ())
                .unwrap_or_else(|_| log::warn!("cannot record the id counters at exit"));
        }
    }

    /// When expired rows should next be purged from the file, if any row has an expiry.
    fn purge_at(&self) -> Option<u64> {
        let at = self.next_expiry?;
        Some(match self.last_purge {
            Some(last) => at.max(last.saturating_add(PURGE_EVERY_MS)),
            None => at,
        })
    }

    /// Plans, writes, applies and acknowledges one batch (an empty batch only purges).
    fn commit(&mut self, batch: Vec<Request>) {
        let now = crate::clock::now_ms();
        let plans: Vec<Result<Planned, StoreError>> = {
            let inner = self.inner.lock();
            let mut view = inner.view();
            batch
                .iter()
                .map(|r| inner.plan(&r.op, &mut view, &self.limits, now))
                .collect()
        };
        let needs_db = batch
            .iter()
            .zip(&plans)
            .any(|(r, p)| p.as_ref().is_ok_and(|p| touches_db(&r.op, p)));
        let purge = self.purge_at().is_some_and(|at| now >= at);
        let mut refused: Option<StoreError> = self.broken.clone().map(StoreError::Failed);
        let mut queries: Vec<Option<Vec<AuditRecord>>> = Vec::new();
        if refused.is_none() && (needs_db || purge) {
            let started = Instant::now();
            match self.commit_records(&batch, &plans, now, purge) {
                Ok(q) => {
                    queries = q;
                    if needs_db {
                        let s = &self.stats;
                        s.commits.fetch_add(1, Ordering::Relaxed);
                        s.changes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        s.largest.fetch_max(batch.len() as u64, Ordering::Relaxed);
                        let b = BUCKETS
                            .iter()
                            .position(|(max, _)| batch.len() as u64 <= *max)
                            .unwrap_or(BUCKETS.len() - 1);
                        s.hist[b].fetch_add(1, Ordering::Relaxed);
                        s.commit_us
                            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
                Err(Failure::Statement(e)) => {
                    log::error!(
                        "state store: a batch of {} was rolled back: {e}",
                        batch.len()
                    );
                    refused = Some(StoreError::Write(e));
                }
                Err(Failure::Commit(e)) => {
                    log::error!("state store: commit failed ({e}); refusing writes until restart");
                    self.stats.failed.store(true, Ordering::Relaxed);
                    self.broken = Some(e.clone());
                    refused = Some(StoreError::Failed(e));
                }
            }
        }
        let mut acks: Vec<(Done, Result<Applied, StoreError>)> = Vec::with_capacity(batch.len());
        {
            let mut inner = self.inner.lock();
            let mut queries = queries.into_iter();
            for (req, plan) in batch.into_iter().zip(plans) {
                let query = queries.next().flatten();
                let result = match (plan, &refused) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(e)) => Err(e.clone()),
                    (Ok(p), None) => Ok(match query {
                        Some(found) => Applied::Audit(found),
                        None => inner.apply(req.op, &p),
                    }),
                };
                acks.push((req.done, result));
            }
        }
        for (done, result) in acks {
            done(result);
        }
    }

    /// Runs a batch's statements in one transaction and commits it. Returns the results of
    /// audit queries, by position in the batch.
    fn commit_records(
        &mut self,
        batch: &[Request],
        plans: &[Result<Planned, StoreError>],
        now: u64,
        purge: bool,
    ) -> Result<Vec<Option<Vec<AuditRecord>>>, Failure> {
        let conn = &self.db.conn;
        let stmt_err = |e: rusqlite::Error| Failure::Statement(e.to_string());
        let tx = conn.unchecked_transaction().map_err(stmt_err)?;
        let mut queries = Vec::with_capacity(batch.len());
        let mut audits = 0u64;
        let mut rows = self.audit.rows;
        // The earliest expiry this batch writes.
        let mut ttl_written: Option<u64> = None;
        for (req, plan) in batch.iter().zip(plans) {
            let mut query = None;
            let Ok(plan) = plan else {
                queries.push(None);
                continue;
            };
            let r: Result<(), rusqlite::Error> = (|| {
                match (&req.op, plan) {
                    (Op::Put(p), Planned::Put(KvWrite::Upsert)) => {
                        tx.prepare_cached(
                            "INSERT INTO kv (ns, key, value, expires_ms) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (ns, key) DO UPDATE
                             SET value = excluded.value, expires_ms = excluded.expires_ms",
                        )?
                        .execute(params![
                            p.ns.to_db(),
                            p.key,
                            p.value.get(),
                            p.expires_ms.map(|e| e.min(i64::MAX as u64) as i64)
                        ])?;
                        if let Some(at) = p.expires_ms {
                            ttl_written = Some(ttl_written.map_or(at, |t| t.min(at)));
                        }
                        if let super::Namespace::Named(n) = p.ns {
                            register_namespace(&tx, &self.inner, n)?;
                        }
                    }
                    (Op::Put(p), Planned::Put(KvWrite::DeleteRow)) => {
                        delete_row(&tx, p.ns.to_db(), &p.key)?;
                    }
                    (Op::Delete { key, .. }, Planned::Delete { removed, .. }) => {
                        for (ns, durable) in removed {
                            if *durable {
                                delete_row(&tx, ns.to_db(), key)?;
                            }
                        }
                    }
                    (Op::DropNamespace(id), _) => {
                        tx.prepare_cached("DELETE FROM kv WHERE ns = ?1")?
                            .execute([i64::from(*id)])?;
                    }
                    (Op::ForgetAgent(id), _) => {
                        tx.prepare_cached("DELETE FROM kv WHERE ns = ?1")?
                            .execute([i64::from(*id)])?;
                        tx.prepare_cached("DELETE FROM agent_names WHERE agent_id = ?1")?
                            .execute([id])?;
                        tx.prepare_cached("DELETE FROM agent_specs WHERE agent_id = ?1")?
                            .execute([id])?;
                    }
                    (Op::SaveSpec(rec), _) => {
                        tx.prepare_cached(
                            "INSERT INTO agent_specs (agent_id, name, spec, saved_ms)
                             VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (agent_id) DO UPDATE SET name = excluded.name,
                             spec = excluded.spec, saved_ms = excluded.saved_ms",
                        )?
                        .execute(params![
                            rec.agent_id,
                            rec.name,
                            rec.spec.to_string(),
                            rec.saved_ms.min(i64::MAX as u64) as i64
                        ])?;
                    }
                    (Op::DeleteSpec(id), _) => {
                        tx.prepare_cached("DELETE FROM agent_specs WHERE agent_id = ?1")?
                            .execute([id])?;
                    }
                    (Op::SaveName(n), _) => {
                        // A caller holds one name: registering another releases the old one.
                        tx.prepare_cached(
                            "DELETE FROM agent_names WHERE agent_id = ?1 AND name <> ?2",
                        )?
                        .execute(params![n.agent_id, n.name])?;
                        tx.prepare_cached(
                            "INSERT INTO agent_names (name, agent_id) VALUES (?1, ?2)
                             ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id",
                        )?
                        .execute(params![n.name, n.agent_id])?;
                    }
                    (Op::ReleaseName(name), _) => {
                        tx.prepare_cached("DELETE FROM agent_names WHERE name = ?1")?
                            .execute([name])?;
                    }
                    (Op::Audit(a), _) => {
                        // The id comes from the audit log in memory. OR IGNORE: an entry must
                        // never make the batch (and other clients' writes) fail.
                        let n = tx
                            .prepare_cached(
                                "INSERT OR IGNORE INTO audit (id, ts_ms, category, event_type,
                                 agent_id, agent_name, success, details)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                            )?
                            .execute(params![
                                (a.id > 0).then_some(a.id),
                                a.ts_ms.min(i64::MAX as u64) as i64,
                                a.category,
                                a.event_type,
                                a.agent_id,
                                a.agent_name,
                                a.success,
                                a.details.to_string()
                            ])?;
                        audits += n as u64;
                    }
                    (Op::Docs(writes), _) => write_docs(&tx, writes, now)?,
                    (Op::QueryAudit(q), _) => {
                        if audits > 0 {
                            rows = prune_audit(&tx, rows + audits, self.audit_max())?;
                            audits = 0;
                        }
                        query = Some(self.db.audit(q)?);
                    }
                    _ => {}
                }
                Ok(())
            })();
            r.map_err(stmt_err)?;
            queries.push(query);
        }
        // The id high-water mark goes into the same transaction: every id that owns data in it
        // is below the value written.
        let id = self.ids.load(Ordering::Relaxed);
        // Keep the audit id reservation ahead of the ids handed out (exact at a clean stop).
        let audit_next = self.audit.ids.load(Ordering::Relaxed);
        let audit_record = if self.closing {
            Some(audit_next)
        } else if audit_next.saturating_add(AUDIT_ID_RESERVE / 2) > self.audit.recorded {
            Some(audit_next.saturating_add(AUDIT_ID_RESERVE))
        } else {
            None
        };
        let max = self.audit_max();
        let mut tail = || -> Result<(usize, Option<u64>), rusqlite::Error> {
            if audits > 0 {
                rows = prune_audit(&tx, rows + audits, max)?;
            }
            if let Some(next) = audit_record {
                super::db::record_audit_next(&tx, next)?;
            }
            // After a purge, the earliest expiry left (this batch's rows included).
            let (purged, expiry_left) = if purge {
                (self.db.purge_expired(now)?, self.db.next_expiry()?)
            } else {
                (0, None)
            };
            if id > self.recorded_id {
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'next_id'")?
                    .execute([id])?;
            }
            Ok((purged, expiry_left))
        };
        let (purged, expiry_left) = tail().map_err(stmt_err)?;
        if let Err(e) = tx.commit() {
            // The failed transaction is dropped here, which rolls it back if it is still open.
            // A full disk stops the log write before the commit record is complete, so once
            // the rollback has happened the file is known to be unchanged: refuse this batch
            // and carry on (writes work again when space is freed). Any other failure (an I/O
            // error while syncing, say) leaves the outcome unknown: stop trusting memory.
            let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
            if full && conn.is_autocommit() {
                return Err(Failure::Statement(e.to_string()));
            }
            return Err(Failure::Commit(e.to_string()));
        }
        self.recorded_id = self.recorded_id.max(id);
        self.audit.rows = rows;
        if let Some(next) = audit_record {
            self.audit.recorded = next;
        }
        if purge {
            self.last_purge = Some(now);
            self.next_expiry = expiry_left;
            self.stats
                .purged
                .fetch_add(purged as u64, Ordering::Relaxed);
            if purged > 0 {
                log::debug!("state store: purged {purged} expired rows");
            }
        }
        if let Some(at) = ttl_written {
            self.next_expiry = Some(self.next_expiry.map_or(at, |t| t.min(at)));
        }
        Ok(queries)
    }
}

impl Writer {
    fn audit_max(&self) -> usize {
        self.audit.max.load(Ordering::Relaxed).max(1)
    }
}

/// Records the name of named namespace `n` (once; later calls change nothing), in the
/// transaction that writes a key into it: a key on disk always has its name.
fn register_namespace(
    tx: &rusqlite::Transaction<'_>,
    inner: &Mutex<Inner>,
    n: u32,
) -> Result<(), rusqlite::Error> {
    let Some(name) = inner.lock().namespace_name(n) else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
    )?
    .execute(params![super::registry_key(&name), i64::from(n)])?;
    Ok(())
}

fn delete_row(tx: &rusqlite::Transaction, ns: i64, key: &str) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")?
        .execute(params![ns, key])?;
    Ok(())
}

/// Keeps the newest `keep` audit entries of `rows`; returns the rows left. Ids are not dense
/// (they jump after a crash), so entries are counted, not subtracted. To keep this cheap the
/// table may hold a sixteenth more than `keep` before it is pruned.
fn prune_audit(tx: &rusqlite::Transaction, rows: u64, keep: usize) -> Result<u64, rusqlite::Error> {
    let keep = keep as u64;
    if rows <= keep + keep / 16 {
        return Ok(rows);
    }
    let removed = tx
        .prepare_cached(
            "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        )?
        .execute([keep.min(i64::MAX as u64) as i64])?;
    Ok(rows.saturating_sub(removed as u64))
}

/// True when a planned change needs the database (a write, or an audit query).
fn touches_db(op: &Op, plan: &Planned) -> bool {
    match (op, plan) {
        (Op::Put(_), Planned::Put(w)) => *w != KvWrite::Nothing,
        (Op::Delete { .. }, Planned::Delete { removed, .. }) => removed.iter().any(|(_, d)| *d),
        (Op::Put(_) | Op::Delete { .. }, _) => false,
        // A plain client's private keys live in memory only: dropping them when it
        // disconnects must not cost a commit (and an fsync) per connection.
        (Op::DropNamespace(_), Planned::Drop { durable }) => *durable,
        _ => true,
    }
}
/// Applies one batch of document changes inside the commit's transaction.
fn write_docs(
    tx: &rusqlite::Transaction<'_>,
    writes: &[DocWrite],
    now_ms: u64,
) -> rusqlite::Result<()> {
    for w in writes {
        match w {
            DocWrite::Put(d) => {
                tx.prepare_cached(
                    "INSERT INTO docs (collection, id, body, updated_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body,
                     updated_ms = excluded.updated_ms",
                )?
                .execute(params![
                    d.collection,
                    d.id,
                    d.body,
                    now_ms.min(i64::MAX as u64) as i64
                ])?;
            }
            DocWrite::Delete { collection, id } => {
                tx.prepare_cached("DELETE FROM docs WHERE collection = ?1 AND id = ?2")?
                    .execute(params![collection, id])?;
            }
        }
    }
    Ok(())
}
