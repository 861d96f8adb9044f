//! Human views of the metrics ops (`clove metrics`) and of the audit log (`clove audit [-f]`).

use super::exit::{Failure, Outcome};
use super::{Ctx, bytes, print_json, say, table};
use clap::Args;
use clove::client::Client;
use clove::proto::op as ops;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;

/// `clove audit`'s arguments.
#[derive(Args)]
pub struct AuditArgs {
    /// Keep printing new entries as they are logged (checked every --interval seconds).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Entries shown at first (the newest).
    #[arg(short = 'n', long, default_value_t = 50, value_name = "N")]
    pub lines: u32,
    /// Only this category: SECURITY, AGENT_LIFECYCLE, RESOURCE, SYSCALL, IPC, STATE, NETWORK.
    #[arg(long)]
    pub category: Option<String>,
    /// Only entries about this agent id.
    #[arg(long, value_name = "ID")]
    pub agent: Option<u32>,
    /// Seconds between checks for new entries with --follow.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub interval: f64,
}

/// `clove metrics`: the machine, then one line per agent.
pub fn metrics(ctx: &Ctx) -> Outcome {
    let mut c = ctx.connect()?;
    let system = ctx.ok(&mut c, ops::METRICS_SYSTEM, &json!({}))?;
    let agents = ctx.ok(&mut c, ops::METRICS_ALL_AGENTS, &json!({}))?;
    if ctx.json {
        print_json(&json!({"system": system["metrics"], "agents": agents["agents"]}));
        return Ok(ExitCode::SUCCESS);
    }
    let m = &system["metrics"];
    let load: Vec<String> = m["cpu"]["load_avg"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| format!("{:.2}", l.as_f64().unwrap_or(0.0)))
        .collect();
    say!(
        "cpu     {:.1}% of {} cores, load {}",
        m["cpu"]["percent"].as_f64().unwrap_or(0.0),
        m["cpu"]["count"],
        load.join(" ")
    );
    say!(
        "memory  {} used of {} ({:.1}%), {} available",
        bytes(m["memory"]["used"].as_u64().unwrap_or(0)),
        bytes(m["memory"]["total"].as_u64().unwrap_or(0)),
        m["memory"]["percent"].as_f64().unwrap_or(0.0),
        bytes(m["memory"]["available"].as_u64().unwrap_or(0))
    );
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "STATE",
            "PID",
            "CPU%",
            "RSS",
            "CGROUP MEM",
            "LIMIT",
            "PIDS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for a in agents["agents"].as_array().into_iter().flatten() {
        let cg = &a["cgroup"];
        let limit = cg["mem_limit"].as_u64().map_or("-".into(), bytes);
        rows.push(vec![
            a["agent_id"].to_string(),
            a["name"].as_str().unwrap_or("?").into(),
            a["state"].as_str().unwrap_or("?").into(),
            a["process"]["pid"]
                .as_i64()
                .map_or("-".into(), |p| p.to_string()),
            format!(
                "{:.1}",
                a["process"]["cpu"]["percent"].as_f64().unwrap_or(0.0)
            ),
            bytes(a["process"]["memory"]["rss"].as_u64().unwrap_or(0)),
            if cg["valid"] == true {
                bytes(cg["mem_current"].as_u64().unwrap_or(0))
            } else {
                "-".into()
            },
            limit,
            cg["pids_current"]
                .as_u64()
                .map_or("-".into(), |p| p.to_string()),
        ]);
    }
    say!();
    print!("{}", table(&rows));
    if rows.len() == 1 {
        say!("(no agents)");
    }
    Ok(ExitCode::SUCCESS)
}

/// One audit entry as a line: `#ID TIME CATEGORY EVENT agent NAME(ID) ok|FAILED details`.
fn audit_line(e: &Value) -> String {
    let who = match (&e["agent_name"], &e["agent_id"]) {
        (Value::String(n), id) => format!("{n}({id})"),
        (_, Value::Null) => "-".into(),
        (_, id) => id.to_string(),
    };
    format!(
        "#{} {} {:<15} {:<24} {:<14} {:<6} {}",
        e["id"],
        e["timestamp"].as_str().unwrap_or("?"),
        e["category"].as_str().unwrap_or("?"),
        e["event_type"].as_str().unwrap_or("?"),
        who,
        if e["success"] == false {
            "FAILED"
        } else {
            "ok"
        },
        e["details"]
    )
}

/// One GET_AUDIT_LOG page.
fn page(
    ctx: &Ctx,
    c: &mut Client,
    a: &AuditArgs,
    since: Option<u64>,
) -> Result<Vec<Value>, Failure> {
    let mut req = json!({"limit": a.lines.clamp(1, 1000)});
    if let Some(s) = since {
        req["since_id"] = s.into();
        req["limit"] = 1000.into();
    }
    if let Some(cat) = &a.category {
        req["category"] = cat.to_ascii_uppercase().into();
    }
    if let Some(id) = a.agent {
        req["agent_id"] = id.into();
    }
    let v = ctx.ok(c, ops::GET_AUDIT_LOG, &req)?;
    Ok(v["entries"].as_array().cloned().unwrap_or_default())
}

/// `clove audit [-f]`: the newest entries, oldest first; with -f, new ones as they come.
/// The audit log is not pushed to clients, so following asks for entries after the last one
/// seen every --interval seconds (like `tail -f` without inotify).
pub fn audit(ctx: &Ctx, a: AuditArgs) -> Outcome {
    let mut c = ctx.connect()?;
    let mut last = None;
    let mut first = true;
    loop {
        let entries = page(ctx, &mut c, &a, last)?;
        if first && entries.is_empty() && !a.follow && !ctx.json {
            say!("(no audit entries)");
        }
        if first && ctx.json && !a.follow {
            print_json(&Value::Array(entries));
            return Ok(ExitCode::SUCCESS);
        }
        for e in &entries {
            if ctx.json {
                say!("{e}");
            } else {
                say!("{}", audit_line(e));
            }
            last = e["id"].as_u64().or(last);
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if first && last.is_none() {
            last = Some(0);
        }
        first = false;
        std::thread::sleep(Duration::from_secs_f64(a.interval.clamp(0.05, 3600.0)));
    }
}
