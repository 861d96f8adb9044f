//! Lock files: `<path>.lock`, held with `flock` for a daemon's life, mark a socket or a
//! database as in use. The holder's pid is written into the file so that a refusal can name it.

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

/// Takes the exclusive lock beside `target` without waiting. The lock file is created `0600`,
/// never through a symlink, and must belong to this user.
pub fn take(target: &Path) -> Result<Flock<File>, LockError> {
    let lock_path = PathBuf::from(format!("{}.lock", target.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
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
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.write_all(format!("{}\n", std::process::id()).as_bytes());
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Err(LockError::Held {
                lock: lock_path,
                holder: text.trim().parse::<u32>().ok(),
            })
        }
    }
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
        assert!(take(&target).is_ok());
    }

    #[test]
    fn a_symlinked_lock_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sock");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("sock.lock")).unwrap();
        assert!(matches!(take(&target), Err(LockError::Unusable(_))));
    }
}
