//! The node mailbox shared by the router and its workers (ROUTER-COMPAT.md): where a node's
//! inbox, outbox, archive, heartbeat and agent directory are under a workspace, and the lines
//! the router appends to an inbox.
//!
//! Inbox lines are JSON the router encodes itself (never text pasted from a request), one
//! `write` each on a file opened with `O_APPEND`, so a worker that reads only complete lines
//! never sees half of one.

use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A workspace: `<ws>/mailbox/{inbox,outbox,archive,heartbeat}` and `<ws>/runs/<job>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub root: PathBuf,
}

/// `<job>_<NN>`: the node's file stem (node id zero-padded to two digits).
pub fn stem(job: &str, node: u32) -> String {
    format!("{job}_{node:02}")
}

/// Job ids become file names: only `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn valid_job_id(job: &str) -> bool {
    !job.is_empty()
        && job.len() <= 128
        && !job.starts_with('.')
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Workspace {
        Workspace { root: root.into() }
    }

    fn mailbox(&self, dir: &str) -> PathBuf {
        self.root.join("mailbox").join(dir)
    }

    pub fn inbox_dir(&self) -> PathBuf {
        self.mailbox("inbox")
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.mailbox("outbox")
    }

    pub fn inbox(&self, job: &str, node: u32) -> PathBuf {
        self.mailbox("inbox")
            .join(format!("{}.jsonl", stem(job, node)))
    }

    pub fn outbox(&self, job: &str, node: u32) -> PathBuf {
        self.mailbox("outbox")
            .join(format!("{}.jsonl", stem(job, node)))
    }

    /// Where a worker may move its outbox when it exits.
    pub fn archive(&self, job: &str, node: u32) -> PathBuf {
        self.mailbox("archive")
            .join(format!("{}.jsonl", stem(job, node)))
    }

    pub fn heartbeat(&self, job: &str, node: u32) -> PathBuf {
        self.mailbox("heartbeat")
            .join(format!("{}.json", stem(job, node)))
    }

    pub fn run_dir(&self, job: &str) -> PathBuf {
        self.root.join("runs").join(job)
    }

    /// The worker's working directory (AGENTS.md, `.agents/skills/`, its conversation).
    pub fn agent_dir(&self, job: &str, node: u32) -> PathBuf {
        self.run_dir(job).join(format!("agent_{node:02}"))
    }

    /// Creates the mailbox directories (private to the user).
    pub fn create(&self) -> std::io::Result<()> {
        for d in ["inbox", "outbox", "archive", "heartbeat"] {
            create_private_dir(&self.mailbox(d))?;
        }
        create_private_dir(&self.root.join("runs"))
    }
}

/// `mkdir -p` with mode 0700 for what it creates.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `{"type": "user", "content", "injection_id"}`.
pub fn user_line(content: &str, injection_id: &str) -> Vec<u8> {
    line(&json!({"type": "user", "content": content, "injection_id": injection_id}))
}

/// `{"type": "control", "payload"}`.
pub fn control_line(payload: &Value) -> Vec<u8> {
    line(&json!({"type": "control", "payload": payload}))
}

/// `{"type": "shutdown"}`.
pub fn shutdown_line() -> Vec<u8> {
    line(&json!({"type": "shutdown"}))
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = crate::proto::jsonl::encode_line(&mut out, v);
    out
}

/// Appends one complete line in one `write` (the file is created 0600 if missing).
pub fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(line)
}

/// Reads complete lines of a file from byte `offset`: returns them and the offset after the
/// last complete one (a partial last line is left for later). A line longer than `max` comes
/// back as `Err(len)` (so does one that is not UTF-8); one that is still growing past `max`
/// without a `\n` stops the read where it starts, for the caller to skip. At most 4096 lines
/// or 4 MiB are taken per call, so one call's memory stays bounded.
pub fn read_lines(
    file: &std::fs::File,
    offset: u64,
    max: usize,
) -> std::io::Result<(Vec<Result<String, usize>>, u64)> {
    use std::os::unix::fs::FileExt;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut lines = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    // Offset after the last complete line, and where the next read starts.
    let (mut done, mut next) = (offset, offset);
    // Enough to hold one line of the largest allowed size, so such a line always completes.
    let budget = (4u64 << 20).max(max as u64 + chunk.len() as u64);
    while lines.len() < 4096 && next - offset < budget {
        let n = file.read_at(&mut chunk, next)?;
        if n == 0 {
            break;
        }
        let mut start = 0;
        for (i, _) in chunk[..n].iter().enumerate().filter(|(_, b)| **b == b'\n') {
            if pending.len() + (i - start) <= max + 1 {
                pending.extend_from_slice(&chunk[start..i]);
            } else {
                pending.resize(max + 2, 0);
            }
            let line = pending.strip_suffix(b"\r").unwrap_or(&pending);
            if line.len() > max {
                lines.push(Err(line.len()));
            } else if !line.is_empty() {
                lines.push(String::from_utf8(line.to_vec()).map_err(|e| e.as_bytes().len()));
            }
            pending.clear();
            start = i + 1;
            done = next + start as u64;
        }
        pending.extend_from_slice(&chunk[start..n]);
        next += n as u64;
        if pending.len() > max + 1 {
            break;
        }
    }
    Ok((lines, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_contract() {
        let ws = Workspace::new("/w");
        assert_eq!(
            ws.inbox("123", 4),
            Path::new("/w/mailbox/inbox/123_04.jsonl")
        );
        assert_eq!(
            ws.outbox("123", 12),
            Path::new("/w/mailbox/outbox/123_12.jsonl")
        );
        assert_eq!(ws.agent_dir("123", 0), Path::new("/w/runs/123/agent_00"));
        assert!(valid_job_id("local-1a2b"));
        assert!(!valid_job_id("../x"));
        assert!(!valid_job_id(".hidden"));
        assert!(!valid_job_id(""));
    }

    #[test]
    fn only_complete_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\"").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let (lines, off) = read_lines(&f, 0, 1 << 20).unwrap();
        assert_eq!(
            lines,
            vec![Ok("{\"a\":1}".to_string()), Ok("{\"b\":2}".to_string())]
        );
        assert_eq!(off, 18);
        let (lines, off2) = read_lines(&f, off, 1 << 20).unwrap();
        assert!(lines.is_empty());
        assert_eq!(off2, off);
        std::fs::write(&p, vec![b'x'; 200]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let (lines, off) = read_lines(&f, 0, 64).unwrap();
        assert_eq!(
            (lines, off),
            (vec![], 0),
            "a growing overlong line is left to the caller"
        );
        let mut long = vec![b'y'; 100];
        long.extend_from_slice(b"\n{}\n");
        std::fs::write(&p, &long).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let (lines, off) = read_lines(&f, 0, 64).unwrap();
        assert_eq!((lines, off), (vec![Err(66), Ok("{}".to_string())], 104));
        assert_eq!(
            user_line("a\nb", "i")
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            1
        );
    }
}
