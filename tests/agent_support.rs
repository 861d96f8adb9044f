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

/// The real Python interpreter (not a version-manager shim, which is slow to start).
pub fn python() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the agent tests (scripts/install-test-deps.sh)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
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
