//! `clove status`: one screen about the daemon, from HELLO and LIST.

use super::exit::{Failure, Outcome};
use super::{Ctx, bytes, print_json, since_ms};
use clove::proto::op as ops;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Everything `clove status` shows, as its `--json` prints it.
fn gather(ctx: &Ctx) -> Result<Value, Failure> {
    let mut c = ctx.connect()?;
    let hello = ctx.ok(&mut c, ops::HELLO, &json!({}))?;
    let list = super::agents::list(ctx, &mut c)?;
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for a in &list {
        *by_state
            .entry(a["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let failed: Vec<Value> = list
        .iter()
        .filter(|a| a["state"] == "FAILED")
        .map(|a| json!({"id": a["id"], "name": a["name"], "failure": a["failure"]}))
        .collect();
    let persistent = list.iter().filter(|a| a["persist"] == true).count();
    let mut services = hello["services"].as_object().cloned().unwrap_or_default();
    let daemon = services.remove("daemon").unwrap_or(Value::Null);
    let mut store = hello["store"].clone();
    // The file's size on disk (with its write-ahead log), read here, not by the daemon's
    // event loop. Only meaningful where the client sees the daemon's files.
    if let Some(path) = store["path"].as_str() {
        let size = |p: String| std::fs::metadata(p).map(|m| m.len()).ok();
        if let Some(db) = size(path.to_string()) {
            let wal = size(format!("{path}-wal")).unwrap_or(0);
            store["file_bytes"] = (db + wal).into();
        }
    }
    Ok(json!({
        "socket": ctx.socket,
        "version": hello["kernel_version"],
        "pid": daemon["pid"],
        "started_at": daemon["started_at"],
        "uptime_ms": daemon["uptime_ms"],
        "state_dir": daemon["state_dir"],
        "listeners": daemon["listeners"],
        "agents": {"total": list.len(), "by_state": by_state, "persistent": persistent,
            "failed": failed},
        "queues": hello["queues"],
        "store": store,
        "services": services,
        "recent_problems": daemon["recent_problems"],
    }))
}

/// `clove status`.
pub fn status(ctx: &Ctx) -> Outcome {
    let s = gather(ctx)?;
    if ctx.json {
        print_json(&s);
    } else {
        print!("{}", render(&s));
    }
    Ok(ExitCode::SUCCESS)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        v => v.to_string(),
    }
}

/// The human view of [`gather`]'s object.
fn render(s: &Value) -> String {
    let mut out = format!(
        "clove {} (pid {}), up {}, since {}\n",
        text(&s["version"]),
        text(&s["pid"]),
        since_ms(s["uptime_ms"].as_u64().unwrap_or(0)),
        text(&s["started_at"])
    );
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<10} {value}\n"));
    };
    for l in s["listeners"].as_array().into_iter().flatten() {
        line(
            "listening",
            format!("{} ({})", text(&l["address"]), text(&l["name"])),
        );
    }
    line("state", text(&s["state_dir"]));
    let st = &s["store"];
    line(
        "store",
        format!(
            "{}: {} keys, {} of values{}; sync {}, {} pending, {} commits",
            text(&st["path"]),
            text(&st["keys"]),
            bytes(st["bytes"].as_u64().unwrap_or(0)),
            st["file_bytes"]
                .as_u64()
                .map(|b| format!(", {} on disk", bytes(b)))
                .unwrap_or_default(),
            text(&st["sync"]),
            text(&st["pending"]),
            text(&st["commits"]),
        ),
    );
    let a = &s["agents"];
    let states: Vec<String> = a["by_state"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{n} {k}")).collect())
        .unwrap_or_default();
    line(
        "agents",
        if states.is_empty() {
            "none".into()
        } else {
            format!(
                "{} ({} persistent)",
                states.join(", "),
                text(&a["persistent"])
            )
        },
    );
    for f in a["failed"].as_array().into_iter().flatten() {
        line(
            "  FAILED",
            format!("{}: {}", text(&f["name"]), text(&f["failure"])),
        );
    }
    line("queues", queues(&s["queues"]));
    if let Some(services) = s["services"].as_object() {
        for (name, v) in services {
            line("service", format!("{name}: {}", figures(v)));
        }
    }
    out.push_str("recent problems (warnings and errors in the daemon's log, newest last):\n");
    let problems = s["recent_problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        out.push_str("  none\n");
    }
    for p in problems {
        out.push_str(&format!(
            "  {} {:<5} {}\n",
            text(&p["time"]),
            text(&p["level"]),
            text(&p["message"])
        ));
    }
    out
}

/// A service's figures as `key=value` pairs (nested objects flattened as `a.b=`), so one
/// line per service stays readable.
fn figures(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::String(s) => out.push(format!("{prefix}={s}")),
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out.join(" ")
}

/// `completion 0/4096, exec 0/64, ...`.
fn queues(q: &Value) -> String {
    let empty = Map::new();
    q.as_object()
        .unwrap_or(&empty)
        .iter()
        .map(|(name, v)| {
            let used = v
                .get("queued")
                .or_else(|| v.get("running"))
                .or_else(|| v.get("bytes"));
            format!(
                "{name} {}/{}",
                used.map(text).unwrap_or_default(),
                text(&v["capacity"])
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
