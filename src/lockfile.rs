//! Lock files: `<path>.lock`, held with `flock` for a daemon's life, mark a socket or a
//! database as in use. The holder's pid is written into the file so that a refusal can name it.
//!
//! The file is removed when its [`Lock`] is dropped (a clean stop leaves no `*.lock` behind).
//! Removing a lock file while others may be opening it is safe only because taking a lock
//! checks, once locked, that the path still names the file it locked, and tries again if not:
//! otherwise a process that opened the old file just before the removal could lock it while a
//! third one creates and locks a new file at the path, and both would "hold" the lock.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// The lock file could not be opened or is not ours; the text says why.
    Unusable(String),
    /// Another process holds it (its pid, when it wrote one).
    Held { lock: PathBuf, holder: Option<u32> },
}

/// A held lock. Dropping it removes the lock file (if it is still ours) and releases it.
#[derive(Debug)]
pub struct Lock {
    flock: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still locked, and only if the path is still our file; the flock is
        // released right after, when `flock` is dropped.
        if same_file(&self.flock, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` names the open file `f` (same device and inode).
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Takes the exclusive lock beside `target` without waiting. The lock file is created `0600`,
/// never through a symlink, and must belong to this user.
pub fn take(target: &Path) -> Result<Lock, LockError> {
    let lock_path = PathBuf::from(format!("{}.lock", target.display()));
    // A lock file removed by its holder between our open and our lock is retried: the next
    // open makes or finds the file that is there now.
    for _ in 0..16 {
        let file = open(&lock_path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                if !same_file(&lock, &lock_path) {
                    continue;
                }
                let _ = lock.set_len(0);
                let _ = lock.write_all(format!("{}\n", std::process::id()).as_bytes());
                return Ok(Lock {
                    flock: lock,
                    path: lock_path,
                });
            }
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    lock: lock_path,
                    holder: text.trim().parse::<u32>().ok(),
                });
            }
        }
    }
    Err(LockError::Unusable(format!(
        "lock file {} keeps being replaced while it is taken",
        lock_path.display()
    )))
}

/// Opens (or creates) the lock file, checking that it is ours.
fn open(lock_path: &Path) -> Result<File, LockError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(lock_path)
        .map_err(|e| {
            LockError::Unusable(format!(
                "cannot open lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    let meta = file
        .metadata()
        .map_err(|e| LockError::Unusable(format!("cannot stat {}: {e}", lock_path.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(LockError::Unusable(format!(
            "lock file {} belongs to uid {}, not to this user",
            lock_path.display(),
            meta.uid()
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let held = take(&target).unwrap();
        match take(&target) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        // Released and removed: the next taker makes a new file.
        assert!(!dir.path().join("db.lock").exists());
        let again = take(&target).unwrap();
        assert!(again.path().exists());
    }

    #[test]
    fn a_lock_file_replaced_under_its_holder_is_not_removed_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sock");
        let held = take(&target).unwrap();
        std::fs::remove_file(held.path()).unwrap();
        std::fs::write(dir.path().join("sock.lock"), b"someone else").unwrap();
        drop(held);
        assert_eq!(
            std::fs::read(dir.path().join("sock.lock")).unwrap(),
            b"someone else"
        );
    }

    #[test]
    fn a_symlinked_lock_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sock");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("sock.lock")).unwrap();
        assert!(matches!(take(&target), Err(LockError::Unusable(_))));
    }
}
