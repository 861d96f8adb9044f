//! The `[store]` section of the config file: where the state database lives, how hard each
//! commit is synced, and the bound of the write queue. (How many audit entries are kept, on
//! disk as in memory, is `audit.max_entries`.)

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// File name of the state database inside the state directory.
pub const DEFAULT_FILE: &str = "store.db";

/// `[store]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// The database file; relative paths are taken inside the state directory.
    pub path: Option<PathBuf>,
    /// `"full"` (fsync every commit: survives power loss) or `"normal"` (survives a crash of the
    /// daemon, not of the machine).
    pub sync: Option<String>,
    /// Writes waiting for the writer thread; beyond it a write is refused with a clear error.
    pub max_pending_writes: Option<usize>,
}

/// How hard each commit is pushed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// SQLite `synchronous = FULL`: the write-ahead log is fsynced at every commit.
    Full,
    /// SQLite `synchronous = NORMAL`: commits reach the OS at once but are fsynced only at
    /// checkpoints; a crash of the daemon loses nothing, a power cut may lose the last commits.
    Normal,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Normal => "normal",
        }
    }
}

/// The validated `[store]` section.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    pub max_pending_writes: usize,
}

impl StoreConfig {
    /// Validates the section, pushing one message per problem onto `errors`.
    pub fn from_raw(raw: &RawStore, state_dir: &Path, errors: &mut Vec<String>) -> StoreConfig {
        let path = match &raw.path {
            None => state_dir.join(DEFAULT_FILE),
            Some(p) if p.as_os_str().is_empty() => {
                errors.push("store.path: must not be empty".into());
                state_dir.join(DEFAULT_FILE)
            }
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => state_dir.join(p),
        };
        let sync = match raw.sync.as_deref() {
            None | Some("full") => SyncMode::Full,
            Some("normal") => SyncMode::Normal,
            Some(other) => {
                errors.push(format!(
                    "store.sync: {other:?} is not a sync mode; use \"full\" (survives power loss) or \"normal\" (survives a crash of the daemon)"
                ));
                SyncMode::Full
            }
        };
        let mut bounded = |name: &str, v: Option<usize>, default: usize, max: usize| match v {
            None => default,
            Some(n) if (1..=max).contains(&n) => n,
            Some(n) => {
                errors.push(format!("{name}: {n} must be between 1 and {max}"));
                default
            }
        };
        let max_pending_writes = bounded(
            "store.max_pending_writes",
            raw.max_pending_writes,
            16_384,
            1 << 20,
        );
        StoreConfig {
            path,
            sync,
            max_pending_writes,
        }
    }

    /// Defaults for a database at `path` (tests and tools).
    pub fn at(path: &Path) -> StoreConfig {
        let mut errors = Vec::new();
        let mut c = StoreConfig::from_raw(&RawStore::default(), Path::new("/"), &mut errors);
        c.path = path.to_path_buf();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let mut errors = Vec::new();
        let c = StoreConfig::from_raw(&RawStore::default(), Path::new("/s"), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(c.path, Path::new("/s/store.db"));
        assert_eq!(c.sync, SyncMode::Full);
        let raw = RawStore {
            path: Some("db/x.db".into()),
            sync: Some("fast".into()),
            max_pending_writes: Some(0),
        };
        let c = StoreConfig::from_raw(&raw, Path::new("/s"), &mut errors);
        assert_eq!(c.path, Path::new("/s/db/x.db"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("store.sync"), "{errors:?}");
        assert!(errors[1].contains("store.max_pending_writes"), "{errors:?}");
    }
}
