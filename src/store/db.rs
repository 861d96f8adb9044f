//! The state database file: taking its lock, verifying it before anything is written, the
//! schema and its forward migrations, and reading it back at start.
//!
//! Opening refuses rather than repairs. A file that is locked by another daemon, is not an
//! SQLite file, is not a clove store, fails SQLite's consistency check, or carries a schema
//! version newer than this build knows is left exactly as it was (verification runs with
//! `query_only` and without the checkpoint SQLite would otherwise run on close), and the error
//! says what was found and what to do. A missing file is created under a temporary name and
//! renamed into place once its schema is committed, so an empty or half-written file at the
//! real path is never one of ours and is reported as damaged instead of being reset.

use super::config::SyncMode;
use super::records::{AgentName, AgentSpecRecord, AuditQuery, AuditRecord, DocRecord};
use rusqlite::{Connection, OpenFlags, OptionalExtension, config::DbConfig, params};
use serde_json::value::RawValue;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The schema this build writes. Bump it with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = 2;
/// `PRAGMA application_id` of a clove store ("Clov"), so another program's SQLite file is
/// recognised as not ours.
pub const APPLICATION_ID: i32 = 0x436c_6f76;

/// One forward step of the schema: running `sql` on a database at `version - 1` brings it to
/// `version`.
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

/// Every migration, in order. Version 0 is "no schema yet" (a file being created).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: SCHEMA_V1,
    },
    Migration {
        version: 2,
        sql: SCHEMA_V2,
    },
];

const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('next_id', 1);
-- State keys of scope global (ns = 0) and agent (ns = the agent's id). Values are the JSON
-- text exactly as the client sent it; expires_ms is an absolute Unix time in milliseconds.
CREATE TABLE kv (
    ns INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_ms INTEGER,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX kv_expiry ON kv (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE agent_names (
    name TEXT PRIMARY KEY,
    agent_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE agent_specs (
    agent_id INTEGER PRIMARY KEY,
    name TEXT,
    spec TEXT NOT NULL,
    saved_ms INTEGER NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    category TEXT NOT NULL,
    event_type TEXT NOT NULL,
    agent_id INTEGER NOT NULL,
    agent_name TEXT,
    success INTEGER NOT NULL,
    details TEXT NOT NULL
);
";

/// Version 2: documents of the services (the router's swarms and offsets, the relay's tasks
/// and tokens, ...), JSON text in named collections; the store does not interpret them.
const SCHEMA_V2: &str = "
CREATE TABLE docs (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
";

/// Why the database could not be opened. Every variant leaves the file untouched.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the state store {path} is in use by another clove daemon{holder}; stop that daemon first, or give this one another --state-dir or store.path"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "the state store {path} is damaged or not a clove state store: {detail}. Nothing was changed: move the file aside to start with an empty store, or restore a copy with `clove state import`"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the state store {path} has schema version {found}, but this clove only knows versions up to {supported}; it was written by a newer clove. Nothing was changed: run the newer clove, or export the state with it and import that here"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("there is no state store at {path}")]
    Missing { path: PathBuf },
    #[error("cannot use the state store {path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

/// An open, verified, current-schema state database, held exclusively.
pub struct Database {
    pub(crate) conn: Connection,
    path: PathBuf,
    _lock: crate::lockfile::Lock,
}

/// Sizes of what a store holds, for `clove state check` and import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub keys: u64,
    pub agent_names: u64,
    pub agent_specs: u64,
    pub audit_entries: u64,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

impl Database {
    /// Locks, verifies and (if needed) migrates the database at `path`; creates it when it does
    /// not exist and `create` is set.
    pub fn open(path: &Path, sync: SyncMode, create: bool) -> Result<Database, OpenError> {
        Self::open_with(path, sync, create, MIGRATIONS)
    }

    /// [`Database::open`] with an explicit migration list (tests of the migration machinery).
    pub fn open_with(
        path: &Path,
        sync: SyncMode,
        create: bool,
        migrations: &[Migration],
    ) -> Result<Database, OpenError> {
        let io = |detail: String| OpenError::Io {
            path: path.to_path_buf(),
            detail,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| io(format!("cannot create {}: {e}", parent.display())))?;
        }
        let lock = take_lock(path)?;
        let exists = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => true,
            Ok(_) => return Err(io("it exists but is not a regular file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(e.to_string())),
        };
        if !exists {
            if !create {
                return Err(OpenError::Missing {
                    path: path.to_path_buf(),
                });
            }
            create_fresh(path, migrations)?;
            log::info!("created state store {}", path.display());
        }
        let latest = migrations.last().map_or(0, |m| m.version);
        // Reading a database in WAL mode creates an empty log file; a refused file is left
        // exactly as it was found, so such a log is removed again.
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let had_wal = wal.exists();
        let (conn, version) = open_verified(path, latest).inspect_err(|_| {
            if !had_wal && std::fs::metadata(&wal).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&wal);
            }
        })?;
        let fail = |e: rusqlite::Error| classify(path, e);
        if version < latest {
            log::info!(
                "migrating state store {} from schema {version} to {latest}",
                path.display()
            );
            migrate(&conn, version, migrations).map_err(fail)?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(io(format!(
                "cannot switch to write-ahead logging (journal mode is {mode})"
            )));
        }
        let level = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", level)
            .map_err(fail)?;
        let got = synchronous(&conn).map_err(fail)?;
        if got != level {
            return Err(io(format!(
                "cannot set synchronous = {level} (SQLite reports {got})"
            )));
        }
        // From here on the file is ours to write: let SQLite checkpoint on close again.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
            .map_err(fail)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Database {
            conn,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA synchronous` as SQLite reports it on this connection: `"OFF"`, `"NORMAL"`,
    /// `"FULL"` or `"EXTRA"`.
    pub fn synchronous(&self) -> Result<&'static str, rusqlite::Error> {
        synchronous(&self.conn)
    }

    fn fail(&self, e: rusqlite::Error) -> OpenError {
        classify(&self.path, e)
    }

    /// Deletes keys whose expiry is at or before `now_ms`; returns how many.
    pub fn purge_expired(&self, now_ms: u64) -> Result<usize, rusqlite::Error> {
        self.conn
            .prepare_cached("DELETE FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?1")?
            .execute([now_ms as i64])
    }

    /// The earliest expiry of any stored key (expired or not), or `None` when no key has one.
    /// Uses the partial index on `expires_ms`.
    pub fn next_expiry(&self) -> Result<Option<u64>, rusqlite::Error> {
        let at: Option<i64> = self
            .conn
            .prepare_cached("SELECT min(expires_ms) FROM kv WHERE expires_ms IS NOT NULL")?
            .query_row([], |r| r.get(0))?;
        Ok(at.map(|a| a.max(0) as u64))
    }

    /// Calls `f` for every stored key: namespace, key, value, expiry.
    pub fn for_each_key(
        &self,
        mut f: impl FnMut(super::Namespace, String, Box<RawValue>, Option<u64>),
    ) -> Result<(), OpenError> {
        let mut stmt = self
            .conn
            .prepare("SELECT ns, key, value, expires_ms FROM kv")
            .map_err(|e| self.fail(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.fail(e))?;
        while let Some(row) = rows.next().map_err(|e| self.fail(e))? {
            let ns: i64 = row.get(0).map_err(|e| self.fail(e))?;
            let key: String = row.get(1).map_err(|e| self.fail(e))?;
            let value: String = row.get(2).map_err(|e| self.fail(e))?;
            let expires: Option<i64> = row.get(3).map_err(|e| self.fail(e))?;
            let corrupt = |detail: String| OpenError::Corrupt {
                path: self.path.clone(),
                detail,
            };
            let ns = super::Namespace::from_db(ns)
                .ok_or_else(|| corrupt(format!("key {key:?} has an invalid namespace {ns}")))?;
            if key.is_empty() {
                return Err(corrupt("a key is empty".into()));
            }
            let value = RawValue::from_string(value)
                .map_err(|e| corrupt(format!("the value of key {key:?} is not JSON: {e}")))?;
            f(ns, key, value, expires.map(|e| e.max(0) as u64));
        }
        Ok(())
    }

    /// The named namespaces recorded in `meta` (see `StateStore::named_namespace`): name and
    /// number.
    pub fn named_namespaces(&self) -> Result<Vec<(String, u32)>, OpenError> {
        let prefix = super::registry_key("");
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM meta WHERE substr(key, 1, ?1) = ?2")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![prefix.len() as i64, prefix], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, n) = row.map_err(|e| self.fail(e))?;
            let n = u32::try_from(n).ok().filter(|n| *n > 0);
            let (Some(name), Some(n)) = (key.strip_prefix(&prefix), n) else {
                return Err(OpenError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("invalid namespace record {key:?}"),
                });
            };
            out.push((name.to_owned(), n));
        }
        Ok(out)
    }

    pub fn agent_names(&self) -> Result<Vec<AgentName>, OpenError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, agent_id FROM agent_names ORDER BY name")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AgentName {
                    name: r.get(0)?,
                    agent_id: r.get(1)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Every document, by collection then id.
    pub fn docs(&self) -> Result<Vec<DocRecord>, OpenError> {
        let mut stmt = self
            .conn
            .prepare("SELECT collection, id, body FROM docs ORDER BY collection, id")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DocRecord {
                    collection: r.get(0)?,
                    id: r.get(1)?,
                    body: r.get(2)?,
                })
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    pub fn agent_specs(&self) -> Result<Vec<AgentSpecRecord>, OpenError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent_id, name, spec, saved_ms FROM agent_specs ORDER BY agent_id")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (agent_id, name, spec, saved_ms) = row.map_err(|e| self.fail(e))?;
            let spec = serde_json::from_str(&spec).map_err(|e| OpenError::Corrupt {
                path: self.path.clone(),
                detail: format!("the saved spec of agent {agent_id} is not JSON: {e}"),
            })?;
            out.push(AgentSpecRecord {
                agent_id,
                name,
                spec,
                saved_ms: saved_ms.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Audit entries matching `q`, oldest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, rusqlite::Error> {
        let order = if q.since_id.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT id, ts_ms, category, event_type, agent_id, agent_name, success, details
             FROM audit WHERE (?1 IS NULL OR category = ?1) AND (?2 IS NULL OR agent_id = ?2)
             AND id > ?3 ORDER BY id {order} LIMIT ?4"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![
                q.category,
                q.agent_id,
                q.since_id.unwrap_or(0),
                q.limit.min(i64::MAX as usize) as i64
            ],
            |r| {
                let details: String = r.get(7)?;
                Ok(AuditRecord {
                    id: r.get(0)?,
                    ts_ms: r.get::<_, i64>(1)?.max(0) as u64,
                    category: r.get(2)?,
                    event_type: r.get(3)?,
                    agent_id: r.get(4)?,
                    agent_name: r.get(5)?,
                    success: r.get(6)?,
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                })
            },
        )?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        if q.since_id.is_none() {
            out.reverse();
        }
        Ok(out)
    }

    /// The first id the daemon may hand out: above every id that owns durable data, and above
    /// the high-water mark recorded at each commit.
    pub fn first_free_id(&self) -> Result<u32, OpenError> {
        let max: i64 = self
            .conn
            .query_row(
                "SELECT max(
                    (SELECT coalesce(max(value), 1) FROM meta WHERE key = 'next_id'),
                    (SELECT coalesce(max(ns), 0) + 1 FROM kv),
                    (SELECT coalesce(max(agent_id), 0) + 1 FROM agent_names),
                    (SELECT coalesce(max(agent_id), 0) + 1 FROM agent_specs))",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.fail(e))?;
        u32::try_from(max).map_err(|_| OpenError::Corrupt {
            path: self.path.clone(),
            detail: format!("the id counter {max} is out of range"),
        })
    }

    /// The first audit id that may be handed out (above every stored entry and the reservation
    /// recorded by the last run), and how many entries are stored.
    pub fn audit_next(&self) -> Result<(u64, u64), OpenError> {
        let (next, rows): (i64, i64) = self
            .conn
            .query_row(
                "SELECT max(
                    (SELECT coalesce(max(value), 1) FROM meta WHERE key = 'audit_next'),
                    (SELECT coalesce(max(id), 0) + 1 FROM audit)),
                    (SELECT count(*) FROM audit)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.fail(e))?;
        Ok((next.max(1) as u64, rows.max(0) as u64))
    }

    /// Records the next audit id this daemon may hand out (see `AUDIT_ID_RESERVE`).
    pub fn record_audit_next(&self, next: u64) -> Result<(), rusqlite::Error> {
        record_audit_next(&self.conn, next)
    }

    /// How many records of each kind the store holds (expired keys included until purged).
    pub fn counts(&self) -> Result<Counts, OpenError> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM kv), (SELECT count(*) FROM agent_names),
                        (SELECT count(*) FROM agent_specs), (SELECT count(*) FROM audit)",
                [],
                |r| {
                    Ok(Counts {
                        keys: r.get::<_, i64>(0)?.max(0) as u64,
                        agent_names: r.get::<_, i64>(1)?.max(0) as u64,
                        agent_specs: r.get::<_, i64>(2)?.max(0) as u64,
                        audit_entries: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .map_err(|e| self.fail(e))
    }

    /// SQLite's full `integrity_check`: an empty list means the file is sound.
    pub fn integrity_problems(&self) -> Result<Vec<String>, OpenError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check(20)")
            .map_err(|e| self.fail(e))?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.fail(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(e))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }
}

/// Maps an SQLite error met while opening or reading into the refusal it means.
pub fn classify(path: &Path, e: rusqlite::Error) -> OpenError {
    use rusqlite::ErrorCode as C;
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(C::NotADatabase | C::DatabaseCorrupt) => OpenError::Corrupt {
            path,
            detail: e.to_string(),
        },
        Some(C::DatabaseBusy | C::DatabaseLocked) => OpenError::Locked {
            path,
            holder: " (another program holds an SQLite lock on it)".into(),
        },
        _ => OpenError::Io {
            path,
            detail: e.to_string(),
        },
    }
}

/// The advisory lock beside the database (`<file>.lock`), held for as long as the database is
/// open.
fn take_lock(path: &Path) -> Result<crate::lockfile::Lock, OpenError> {
    crate::lockfile::take(path).map_err(|e| match e {
        crate::lockfile::LockError::Unusable(detail) => OpenError::Io {
            path: path.to_path_buf(),
            detail,
        },
        crate::lockfile::LockError::Held { holder, .. } => OpenError::Locked {
            path: path.to_path_buf(),
            holder: holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        },
    })
}

/// Checks the 100-byte SQLite header ourselves first, for clear messages about files that are
/// empty, foreign or cut short.
fn check_header(path: &Path) -> Result<(), OpenError> {
    let corrupt = |detail: String| OpenError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut f = File::open(path).map_err(|e| OpenError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut h = [0u8; 100];
    let mut got = 0;
    while got < h.len() {
        match f.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(OpenError::Io {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                });
            }
        }
    }
    if len == 0 {
        return Err(corrupt("the file is empty (truncated?)".into()));
    }
    if got < h.len() || &h[..16] != b"SQLite format 3\0" {
        return Err(corrupt("it is not an SQLite database file".into()));
    }
    let page = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        n => u64::from(n),
    };
    if page < 512 || !page.is_power_of_two() {
        return Err(corrupt(format!("invalid page size {page} in the header")));
    }
    if len % page != 0 {
        return Err(corrupt(format!(
            "the file is {len} bytes, not a whole number of {page}-byte pages (truncated?)"
        )));
    }
    let change = &h[24..28];
    let valid_for = &h[92..96];
    let pages = u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]]));
    if change == valid_for && pages > 0 && pages * page > len {
        return Err(corrupt(format!(
            "the file is {len} bytes but its header says {} (truncated)",
            pages * page
        )));
    }
    Ok(())
}

/// Opens an existing file and verifies it without writing anything; returns its version.
fn open_verified(path: &Path, latest: i64) -> Result<(Connection, i64), OpenError> {
    check_header(path)?;
    let fail = |e: rusqlite::Error| classify(path, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    // Until verification passes, closing must not checkpoint a write-ahead log left by a crash
    // into a file we are about to refuse.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(fail)?;
    conn.busy_timeout(std::time::Duration::ZERO).map_err(fail)?;
    // One process owns the file: no shared-memory index, and other programs are kept out.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(fail)?;
    conn.pragma_update(None, "query_only", true).map_err(fail)?;
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(fail)?;
    if app != APPLICATION_ID {
        return Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "it is an SQLite database, but not a clove state store (application_id {app:#x})"
            ),
        });
    }
    let version: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| match e.sqlite_error_code() {
            None => OpenError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("its schema version cannot be read: {e}"),
            },
            Some(_) => fail(e),
        })?;
    let Some(version) = version else {
        return Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: "it records no schema version".into(),
        });
    };
    if version > latest {
        return Err(OpenError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: latest,
        });
    }
    let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(fail)?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(fail)?
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    drop(stmt);
    if problems.iter().any(|p| p != "ok") {
        return Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("SQLite's check failed: {}", problems.join("; ")),
        });
    }
    conn.pragma_update(None, "query_only", false)
        .map_err(fail)?;
    Ok((conn, version))
}

/// Reads `PRAGMA synchronous` back and names it.
fn synchronous(conn: &Connection) -> Result<&'static str, rusqlite::Error> {
    let n: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    Ok(match n {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "unknown",
    })
}

/// Upserts `meta.audit_next`.
pub(crate) fn record_audit_next(conn: &Connection, next: u64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('audit_next', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([next.min(i64::MAX as u64) as i64])?;
    Ok(())
}

/// Applies every migration above `from`, each in its own transaction with its version.
pub fn migrate(
    conn: &Connection,
    from: i64,
    migrations: &[Migration],
) -> Result<(), rusqlite::Error> {
    for m in migrations.iter().filter(|m| m.version > from) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [m.version],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Creates a new store at `path`: built under `<path>.new`, then renamed into place.
fn create_fresh(path: &Path, migrations: &[Migration]) -> Result<(), OpenError> {
    let tmp = PathBuf::from(format!("{}.new", path.display()));
    let io = |detail: String| OpenError::Io {
        path: path.to_path_buf(),
        detail,
    };
    for leftover in [
        tmp.clone(),
        PathBuf::from(format!("{}-journal", tmp.display())),
    ] {
        match std::fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot remove {}: {e}", leftover.display()))),
        }
    }
    {
        let conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| io(format!("cannot create {}: {e}", tmp.display())))?;
        let setup = || -> Result<(), rusqlite::Error> {
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
            migrate(&conn, 0, migrations)
        };
        setup().map_err(|e| io(format!("cannot initialise {}: {e}", tmp.display())))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(format!("cannot set mode of {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| io(format!("cannot rename into place: {e}")))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(format!("cannot sync {}: {e}", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("clove-db")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn create_reopen_and_lock() {
        let d = dir();
        let p = d.path().join("s.db");
        let db = Database::open(&p, SyncMode::Full, true).unwrap();
        assert!(db.counts().unwrap().is_empty());
        assert_eq!(db.first_free_id().unwrap(), 1);
        match Database::open(&p, SyncMode::Full, true) {
            Err(OpenError::Locked { holder, .. }) => {
                assert!(holder.contains(&std::process::id().to_string()), "{holder}")
            }
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got a database"),
        }
        assert_eq!(db.synchronous().unwrap(), "FULL");
        drop(db);
        let db = Database::open(&p, SyncMode::Normal, false).unwrap();
        assert_eq!(db.synchronous().unwrap(), "NORMAL");
        drop(db);
        assert!(matches!(
            Database::open(&d.path().join("none.db"), SyncMode::Full, false),
            Err(OpenError::Missing { .. })
        ));
    }

    #[test]
    fn refuses_foreign_and_empty_files() {
        let d = dir();
        let p = d.path().join("s.db");
        std::fs::write(&p, b"").unwrap();
        let e = Database::open(&p, SyncMode::Full, true).err().unwrap();
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        let e = Database::open(&p, SyncMode::Full, true).err().unwrap();
        assert!(e.to_string().contains("not an SQLite database"), "{e}");
        std::fs::remove_file(&p).unwrap();
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
                .unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let e = Database::open(&p, SyncMode::Full, true).err().unwrap();
        assert!(e.to_string().contains("not a clove state store"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn forward_migrations_and_newer_versions() {
        let d = dir();
        let p = d.path().join("s.db");
        // A file of the first schema is brought up to this build's.
        drop(Database::open_with(&p, SyncMode::Full, true, &MIGRATIONS[..1]).unwrap());
        let db = Database::open(&p, SyncMode::Full, false).unwrap();
        assert!(
            db.docs().unwrap().is_empty(),
            "version 2 adds the docs table"
        );
        drop(db);
        let next = SCHEMA_VERSION + 1;
        let mut newer: Vec<Migration> = MIGRATIONS
            .iter()
            .map(|m| Migration {
                version: m.version,
                sql: m.sql,
            })
            .collect();
        newer.push(Migration {
            version: next,
            sql: "ALTER TABLE agent_specs ADD COLUMN note TEXT;",
        });
        let db = Database::open_with(&p, SyncMode::Full, false, &newer).unwrap();
        let v: i64 = db
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, next);
        db.conn
            .execute(
                "INSERT INTO agent_specs (agent_id, spec, saved_ms, note) VALUES (1, '{}', 0, 'x')",
                [],
            )
            .unwrap();
        drop(db);
        // This build must refuse the newer file, and leave it as it was.
        let before = std::fs::read(&p).unwrap();
        match Database::open(&p, SyncMode::Full, false) {
            Err(OpenError::TooNew {
                found, supported, ..
            }) => assert_eq!((found, supported), (next, SCHEMA_VERSION)),
            Err(e) => panic!("expected TooNew, got {e}"),
            Ok(_) => panic!("expected TooNew, got a database"),
        }
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
