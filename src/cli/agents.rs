//! The agent commands: `clove agents` (a table), `clove spawn`, `clove kill` and
//! `clove logs [-f]`.

use super::exit::{Failure, Outcome};
use super::{Ctx, print_json, say, table};
use clap::{Args, ValueEnum};
use clove::client::Client;
use clove::proto::op as ops;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// When an agent is started again after it exits.
#[derive(Clone, Copy, ValueEnum)]
pub enum Restart {
    /// Never (the default).
    Never,
    /// After a non-zero exit or a death by signal, never after a clean exit.
    OnFailure,
    /// After any exit.
    Always,
}

impl Restart {
    fn as_str(self) -> &'static str {
        match self {
            Restart::Never => "never",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }
}

/// `clove spawn`'s arguments.
#[derive(Args)]
pub struct SpawnArgs {
    /// The agent's name (unique among live agents; its log is NAME.log).
    pub name: String,
    /// The script the interpreter runs (a relative path is taken from here).
    pub script: PathBuf,
    /// Arguments passed to the script after the socket path (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
    /// Restart policy.
    #[arg(long, value_enum, default_value = "never")]
    pub restart: Restart,
    /// Restarts allowed within --restart-window before the agent is given up (FAILED).
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// Seconds in which --max-restarts may happen.
    #[arg(long, value_name = "SECONDS")]
    pub restart_window: Option<f64>,
    /// Interpreter (default: the daemon's agents.default_interpreter, python3).
    #[arg(long, value_name = "PROGRAM")]
    pub interpreter: Option<String>,
    /// Run without the sandbox (no namespaces).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Give the agent the host's network (sandboxed agents have none by default).
    #[arg(long)]
    pub network: bool,
    /// Memory limit: bytes or 512M, 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Most processes the agent may have at once.
    #[arg(long, value_name = "N")]
    pub max_pids: Option<u64>,
    /// CPU time in microseconds per 100 ms period (50000 = half a core).
    #[arg(long, value_name = "MICROSECONDS")]
    pub cpu_quota: Option<u64>,
    /// Permission level (at most your own): standard, sandboxed, readonly, minimal, ...
    #[arg(long)]
    pub level: Option<String>,
    /// Start it again (under the same id) whenever the daemon starts, until `clove kill`
    /// forgets it.
    #[arg(long)]
    pub persist: bool,
}

/// `clove kill`'s argument.
#[derive(Args)]
pub struct KillArgs {
    /// Agent name or id.
    pub name: String,
}

/// `clove logs`'s arguments.
#[derive(Args)]
pub struct LogsArgs {
    /// Agent name or id.
    pub name: String,
    /// Keep printing what the agent writes, until it is gone for good (EXITED or FAILED).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// `clove agents`.
pub fn agents(ctx: &Ctx) -> Outcome {
    let mut c = ctx.connect()?;
    let list = list(ctx, &mut c)?;
    if ctx.json {
        print_json(&Value::Array(list));
    } else {
        print!("{}", agents_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// LIST as parsed JSON.
pub fn list(ctx: &Ctx, c: &mut Client) -> Result<Vec<Value>, Failure> {
    match ctx.call(c, ops::LIST, &json!({}))? {
        Value::Array(v) => Ok(v),
        other => Err(Failure::Refused(format!(
            "unexpected LIST reply: {}",
            other["error"].as_str().unwrap_or(&other.to_string())
        ))),
    }
}

/// A LIST field as table text (`-` when absent).
fn cell(a: &Value, key: &str) -> String {
    match &a[key] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// What the last column says: why a FAILED agent failed, how an exited one ended.
fn note(a: &Value) -> String {
    if let Some(f) = a["failure"].as_str() {
        return f.to_string();
    }
    match (&a["signal"], &a["exit_code"], a["exit_reason"].as_str()) {
        (Value::Number(sig), _, Some(r)) => format!("{r} (signal {sig})"),
        (_, Value::Number(c), Some(r)) => format!("{r} (exit code {c})"),
        _ => String::new(),
    }
}

/// Formats LIST's array as a table.
pub fn agents_table(list: &[Value]) -> String {
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "STATE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "POLICY",
            "PERSIST",
            "LAST EXIT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for a in list {
        let uptime = if a["running"].as_bool() == Some(true) {
            super::since_ms(a["uptime_ms"].as_u64().unwrap_or(0))
        } else {
            "-".into()
        };
        let persist = if a["persist"] == true { "yes" } else { "-" };
        rows.push(vec![
            cell(a, "id"),
            cell(a, "name"),
            cell(a, "state"),
            cell(a, "pid"),
            uptime,
            cell(a, "restarts"),
            cell(a, "restart_policy"),
            persist.into(),
            note(a),
        ]);
    }
    let mut out = table(&rows);
    if list.is_empty() {
        out.push_str("(no agents)\n");
    }
    out
}

/// `clove spawn`.
pub fn spawn(ctx: &Ctx, a: SpawnArgs) -> Outcome {
    let script = std::path::absolute(&a.script)
        .map_err(|e| Failure::Usage(format!("bad script path {}: {e}", a.script.display())))?;
    let mut req = json!({
        "name": a.name,
        "script": script,
        "args": a.args,
        "restart_policy": a.restart.as_str(),
        "sandboxed": !a.no_sandbox,
        "network": a.network || a.no_sandbox,
        "persist": a.persist,
    });
    let mut limits = serde_json::Map::new();
    for (k, v) in [
        ("memory", a.memory.map(Value::from)),
        ("max_pids", a.max_pids.map(Value::from)),
        ("cpu_quota", a.cpu_quota.map(Value::from)),
    ] {
        if let Some(v) = v {
            limits.insert(k.into(), v);
        }
    }
    req["limits"] = limits.into();
    for (k, v) in [
        ("max_restarts", a.max_restarts.map(Value::from)),
        ("restart_window", a.restart_window.map(Value::from)),
        ("python", a.interpreter.map(Value::from)),
        ("level", a.level.map(Value::from)),
    ] {
        if let Some(v) = v {
            req[k] = v;
        }
    }
    let v = ctx.ok_once(ops::SPAWN, &req)?;
    if ctx.json {
        print_json(&v);
    } else {
        say!(
            "spawned {} (id {}, pid {}); log: {}",
            v["name"].as_str().unwrap_or("?"),
            v["id"],
            v["pid"],
            v["log_path"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `{"id": N}` for a number, else `{"name": ...}`.
fn target(name: &str) -> Value {
    match name.parse::<u32>() {
        Ok(id) => json!({"id": id}),
        Err(_) => json!({"name": name}),
    }
}

/// `clove kill`.
pub fn kill(ctx: &Ctx, a: KillArgs) -> Outcome {
    let v = ctx.ok_once(ops::KILL, &target(&a.name))?;
    if ctx.json {
        print_json(&v);
    } else if v["killed"] == false {
        say!("agent {} was not running; forgotten", v["agent_id"]);
    } else {
        say!(
            "killed agent {} (exit code {})",
            v["agent_id"],
            v["exit_code"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The LIST entry of the agent called (or numbered) `name`: the live one, else the newest.
fn find(list: &[Value], name: &str) -> Option<Value> {
    list.iter()
        .filter(|a| {
            a["name"] == json!(name) || a["id"].as_u64().is_some_and(|id| id.to_string() == name)
        })
        .max_by_key(|a| (a["running"].as_bool() == Some(true), a["id"].as_u64()))
        .cloned()
}

/// Stopped for good: nothing will write to its log any more (until a daemon start brings a
/// persistent one back).
fn gone_for_good(a: &Value) -> bool {
    matches!(a["state"].as_str(), Some("EXITED" | "FAILED"))
}

/// `clove logs`: prints the log file; with -f follows it until the agent is gone for good.
pub fn logs(ctx: &Ctx, a: LogsArgs) -> Outcome {
    let mut c = ctx.connect()?;
    let agent = find(&list(ctx, &mut c)?, &a.name)
        .ok_or_else(|| Failure::Refused(format!("no agent named {:?}", a.name)))?;
    let path = agent["log_path"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| Failure::Refused(format!("agent {:?} has no log", a.name)))?;
    let mut follower = Follower::open(&path)?;
    if !follower.copy()? || !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Woken by inotify on the log's directory: each change to the file (the supervisor's own
    // exit and "stopped for good" lines included) is printed, then LIST says whether the
    // agent is gone for good. No timer: a quiet agent costs nothing.
    let mut last = agent;
    while !gone_for_good(&last) {
        follower.wait()?;
        if !follower.copy()? {
            return Ok(ExitCode::SUCCESS);
        }
        let id = last["id"].to_string();
        match list(ctx, &mut c).map(|l| find(&l, &id)) {
            Ok(Some(now)) => last = now,
            Ok(None) => break,
            Err(Failure::Unreachable(_)) => {
                follower.copy()?;
                eprintln!("clove: the daemon went away; stopped following");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e),
        }
    }
    follower.copy()?;
    eprintln!(
        "clove: agent {} is {}{}",
        last["name"].as_str().unwrap_or(&a.name),
        last["state"].as_str().unwrap_or("gone"),
        match note(&last) {
            n if n.is_empty() => String::new(),
            n => format!(": {n}"),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// An open log file, followed across rotations.
struct Follower {
    path: PathBuf,
    file: std::fs::File,
    ino: u64,
    inotify: Option<nix::sys::inotify::Inotify>,
}

impl Follower {
    fn open(path: &Path) -> Result<Follower, Failure> {
        let file = std::fs::File::open(path)
            .map_err(|e| Failure::Refused(format!("cannot open {}: {e}", path.display())))?;
        let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
        Ok(Follower {
            path: path.to_path_buf(),
            file,
            ino,
            inotify: None,
        })
    }

    /// Prints what was appended; a rotation replaces the file: finish the old one, then
    /// switch. `Ok(false)` when stdout is closed (`clove logs -f x | head`): stop there.
    fn copy(&mut self) -> Result<bool, Failure> {
        let mut open = copy_all(&mut self.file)?;
        if let Ok(m) = std::fs::metadata(&self.path)
            && m.ino() != self.ino
            && let Ok(f) = std::fs::File::open(&self.path)
        {
            self.file = f;
            self.ino = m.ino();
            open = open && copy_all(&mut self.file)?;
        }
        Ok(open)
    }

    /// Waits until the log's directory sees a change to this log.
    fn wait(&mut self) -> Result<(), Failure> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let io = |e: nix::Error| Failure::Refused(format!("inotify: {e}"));
        if self.inotify.is_none() {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let ino = Inotify::init(InitFlags::IN_CLOEXEC).map_err(io)?;
            ino.add_watch(
                dir,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
            )
            .map_err(|e| Failure::Refused(format!("cannot watch {}: {e}", dir.display())))?;
            self.inotify = Some(ino);
        }
        let name = self.path.file_name().map(|n| n.to_os_string());
        let Some(ino) = &self.inotify else {
            return Ok(());
        };
        loop {
            let events = ino.read_events().map_err(io)?;
            if events.iter().any(|e| e.name == name) {
                return Ok(());
            }
        }
    }
}

/// Copies the rest of `f` to stdout; `Ok(false)` when stdout is closed.
fn copy_all(f: &mut std::fs::File) -> Result<bool, Failure> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Failure::Refused(format!("cannot read the log: {e}")))?;
    let mut out = std::io::stdout().lock();
    Ok(out.write_all(&buf).and_then(|()| out.flush()).is_ok())
}
