//! Per-agent log files: an agent's stdout and stderr, appended to `<state>/agents/NAME.log`,
//! rotated to `NAME.log.1 ... NAME.log.N` when the file reaches its size cap.
//!
//! The cap is checked before each write, so a file exceeds it by at most one read's worth of
//! output (64 KiB). With `keep = 0` the file is truncated instead of rotated.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One agent's log.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
    keep: u32,
}

impl LogFile {
    /// Opens (appending) the log at `path`.
    pub fn open(path: PathBuf, max: u64, keep: u32) -> LogFile {
        let mut l = LogFile {
            path,
            file: None,
            size: 0,
            max,
            keep,
        };
        l.reopen();
        l
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
        {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                log::warn!("cannot open agent log {}: {e}", self.path.display());
                self.file = None;
            }
        }
    }

    /// The path of rotated file number `n`.
    pub fn rotated(path: &Path, n: u32) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) {
        self.file = None;
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(Self::rotated(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(
                    Self::rotated(&self.path, n),
                    Self::rotated(&self.path, n + 1),
                );
            }
            let _ = std::fs::rename(&self.path, Self::rotated(&self.path, 1));
        }
        self.reopen();
    }

    /// Appends agent output.
    pub fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.size > 0 && self.size + data.len() as u64 > self.max {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(data) {
                Ok(()) => self.size += data.len() as u64,
                Err(e) => log::warn!("cannot write agent log {}: {e}", self.path.display()),
            }
        }
    }

    /// Appends a line from the supervisor (start and exit markers).
    pub fn note(&mut self, text: &str) {
        let line = format!(
            "--- clove {}: {text}\n",
            crate::clock::iso8601(std::time::SystemTime::now())
        );
        self.write(line.as_bytes());
    }
}

/// The hidden subcommand that keeps copying a left-running agent's output after the daemon
/// exits (`agents.on_shutdown = "leave"`): `clove __logcopy PATH MAX_BYTES KEEP`, reading
/// the agent's output pipe on stdin until end-of-file.
pub const COPY_SUBCOMMAND: &str = "__logcopy";

/// Entry point of `clove __logcopy`. Never returns.
pub fn copy_main(args: &[String]) -> ! {
    use std::io::Read;
    let (Some(path), Some(max), Some(keep)) = (
        args.first(),
        args.get(1).and_then(|m| m.parse().ok()),
        args.get(2).and_then(|k| k.parse().ok()),
    ) else {
        eprintln!("usage: clove {COPY_SUBCOMMAND} PATH MAX_BYTES KEEP < pipe");
        std::process::exit(2);
    };
    let mut log = LogFile::open(PathBuf::from(path), max, keep);
    log.note("the daemon exited and left this agent running; output continues here");
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => std::process::exit(0),
            Ok(n) => log.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => std::process::exit(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut l = LogFile::open(p.clone(), 10, 2);
        for i in 0..5u8 {
            l.write(&[b'0' + i; 6]);
        }
        // Each 6-byte write after the first overflows 10 bytes, so each one rotates.
        assert_eq!(std::fs::read(&p).unwrap(), b"444444");
        assert_eq!(std::fs::read(LogFile::rotated(&p, 1)).unwrap(), b"333333");
        assert_eq!(std::fs::read(LogFile::rotated(&p, 2)).unwrap(), b"222222");
        assert!(!LogFile::rotated(&p, 3).exists());
    }

    #[test]
    fn keep_zero_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.log");
        let mut l = LogFile::open(p.clone(), 8, 0);
        l.write(b"12345");
        l.write(b"67890");
        assert_eq!(std::fs::read(&p).unwrap(), b"67890");
        assert!(!LogFile::rotated(&p, 1).exists());
    }
}
