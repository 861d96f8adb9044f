//! Helpers shared by the agent test modules: agent scripts, the real Python interpreter, LIST,
//! and process liveness and trees read from /proc.

use crate::harness::{Client, op};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agent_scripts")
        .join(name)
        .display()
        .to_string()
}

/// The real Python interpreter (not a version-manager shim, which is slow to start), one that
/// any user can run: a root daemon runs sandboxed agents as `nobody`, and an interpreter under
/// root's home directory is closed to them.
pub fn python() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the agent tests (scripts/install-test-deps.sh)");
        let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::iter::once(real.as_str())
            .chain(["/usr/bin/python3", "/usr/local/bin/python3"])
            .find(|p| runnable_by_anyone(std::path::Path::new(p)))
            .unwrap_or(&real)
            .to_string()
    })
}

/// True when every directory on the way to `path` is searchable and the file executable by
/// users other than its owner.
pub fn runnable_by_anyone(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let other_x = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    };
    path.ancestors().all(other_x)
}

pub fn list(c: &mut Client) -> Vec<Value> {
    let f = c.call_raw(op::LIST, b"");
    match serde_json::from_slice(&f.payload).unwrap() {
        Value::Array(v) => v,
        other => panic!("LIST must be a bare array, got {other}"),
    }
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Every process in the tree below `pid` (including it).
pub fn tree(pid: i64) -> Vec<i64> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i64>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// Removes the (emptied) agent cgroups a daemon created, `clove-<pid>` under any hierarchy.
/// For tests whose daemon cannot do it itself (it was killed and its agents were left).
pub fn remove_cgroups_of(daemon_pid: i64) {
    fn walk(dir: &std::path::Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_str() == Some(name) {
                found.push(path);
            } else if depth > 0 {
                walk(&path, name, depth - 1, found);
            }
        }
    }
    fn remove_tree(dir: &std::path::Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let mut found = Vec::new();
    walk(
        std::path::Path::new("/sys/fs/cgroup"),
        &format!("clove-{daemon_pid}"),
        4,
        &mut found,
    );
    for dir in found {
        remove_tree(&dir);
    }
}

/// Runs `start` (which executes a binary the test has just copied) again while it fails with
/// ETXTBSY: another test thread may fork while the copy's write descriptor is still open, and
/// that child holds it until its own exec. Bounded: about two seconds.
pub fn retry_text_busy<T>(what: &str, mut start: impl FnMut() -> std::io::Result<T>) -> T {
    for _ in 0..100 {
        match start() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(v) => return v,
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: the copied binary stayed busy (ETXTBSY) for 2 s");
}
