//! Client-side helpers for the agent commands of the CLI: `clove agents` (a table),
//! `clove spawn`, `clove kill` and `clove logs [-f]`.

use crate::client::Client;
use crate::proto::op as ops;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Formats LIST's array as a table.
pub fn agents_table(list: &[Value]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "NAME".into(),
        "STATE".into(),
        "PID".into(),
        "UPTIME".into(),
        "RESTARTS".into(),
        "POLICY".into(),
        "EXIT".into(),
    ]];
    for a in list {
        let s = |k: &str| match &a[k] {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let uptime = a["uptime_ms"].as_u64().unwrap_or(0);
        let exit = match (&a["signal"], &a["exit_code"]) {
            (Value::Number(sig), _) => format!("signal {sig}"),
            (_, Value::Number(c)) => c.to_string(),
            _ => "-".into(),
        };
        rows.push([
            s("id"),
            s("name"),
            s("state"),
            s("pid"),
            if a["running"].as_bool() == Some(true) {
                humantime::format_duration(std::time::Duration::from_secs(uptime / 1000))
                    .to_string()
            } else {
                "-".into()
            },
            s("restarts"),
            s("restart_policy"),
            exit,
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if list.is_empty() {
        out.push_str("(no agents)\n");
    }
    out
}

/// LIST as parsed JSON.
pub fn list(c: &mut Client) -> Result<Vec<Value>, String> {
    let reply = c
        .call(ops::LIST, b"")
        .map_err(|e| format!("request failed: {e}"))?;
    match reply.json().map_err(|e| e.to_string())? {
        Value::Array(v) => Ok(v),
        other => Err(format!(
            "unexpected LIST reply: {}",
            other["error"].as_str().unwrap_or(&other.to_string())
        )),
    }
}

/// The log file of the agent called (or numbered) `name`.
pub fn log_path(c: &mut Client, name: &str) -> Result<PathBuf, String> {
    let agents = list(c)?;
    let found = agents
        .iter()
        .filter(|a| {
            a["name"] == json!(name) || a["id"].as_u64().is_some_and(|id| id.to_string() == name)
        })
        .max_by_key(|a| a["running"].as_bool() == Some(true));
    found
        .and_then(|a| a["log_path"].as_str())
        .map(PathBuf::from)
        .ok_or_else(|| format!("no agent named {name:?}"))
}

/// Prints a log file; with `follow`, keeps printing what is appended (following rotation)
/// until interrupted. Waiting uses inotify, not a timer.
pub fn print_log(path: &Path, follow: bool) -> Result<(), String> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let mut out = std::io::stdout();
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
    copy_all(&mut file, &mut out)?;
    if !follow {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    loop {
        inotify.read_events().map_err(|e| format!("inotify: {e}"))?;
        // A rotation replaces the file: finish the old one, then switch.
        copy_all(&mut file, &mut out)?;
        if let Ok(m) = std::fs::metadata(path)
            && m.ino() != ino
            && let Ok(f) = std::fs::File::open(path)
        {
            file = f;
            ino = m.ino();
            copy_all(&mut file, &mut out)?;
        }
    }
}

fn copy_all(f: &mut std::fs::File, out: &mut impl Write) -> Result<(), String> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read log: {e}"))?;
    out.write_all(&buf).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}
