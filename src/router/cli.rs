//! `clove swarm ...`: a client of the router over TCP, as Codeswarm's own CLI is (the same
//! commands and events), with human output (progress lines, tables) or `--json` for scripts.
//!
//! The router sends every event to every client, so each command correlates by its own
//! `request_id` and, for `inject` and `attach`, by swarm and injection ids.

use super::wire::PROTOCOL;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Options shared by every `clove swarm` command.
#[derive(Args, Debug, Clone)]
pub struct SwarmArgs {
    #[command(subcommand)]
    pub action: SwarmAction,
    /// Router address (default: $CODESWARM_ROUTER_HOST:$CODESWARM_ROUTER_PORT, else
    /// 127.0.0.1:8765).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub router: Option<String>,
    /// Seconds to wait for the router's answers.
    #[arg(long, global = true, default_value_t = 120.0)]
    pub timeout: f64,
    /// A file holding the router's token (for a router that requires one; also
    /// $CLOVE_ROUTER_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SwarmAction {
    /// List the router's providers (also a health check).
    Providers,
    /// Launch a swarm: `clove swarm launch --nodes 2 --system-prompt "You review code"`.
    Launch {
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        /// Provider id (default: the router's first).
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, value_name = "TEXT")]
        system_prompt: Option<String>,
        /// A launch parameter, KEY=VALUE (VALUE parsed as JSON when it is JSON):
        /// `--param worker_mode=command --param 'worker_command=["python3","bot.py"]'`.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// List swarms as a table.
    List,
    /// Show one swarm's status.
    Status { swarm_id: String },
    /// Send a prompt and print each node's answer: `clove swarm inject ID "Summarise X"`.
    Inject {
        swarm_id: String,
        /// The prompt (`-` reads standard input).
        prompt: String,
        /// `all`, a node number, or a comma-separated list.
        #[arg(long, default_value = "all")]
        nodes: String,
    },
    /// Print every event of a swarm as it happens (until it is terminated or Ctrl-C).
    Attach { swarm_id: String },
    /// Terminate a swarm and wait until it is gone.
    Terminate {
        swarm_id: String,
        /// Signal the workers at once instead of asking them to stop.
        #[arg(long)]
        force: bool,
    },
}

/// A connection to the router.
pub struct RouterClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

/// The router address a client uses when none is given.
pub fn default_address() -> String {
    let host = std::env::var("CODESWARM_ROUTER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = std::env::var("CODESWARM_ROUTER_PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "8765".into());
    format!("{host}:{port}")
}

impl RouterClient {
    pub fn connect(addr: &str, token: Option<&str>) -> Result<RouterClient, String> {
        let s = TcpStream::connect(addr)
            .map_err(|e| format!("cannot connect to the router at {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        let reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut c = RouterClient {
            writer: s,
            reader,
            line: Vec::new(),
        };
        if let Some(t) = token {
            c.write(&json!({"command": "auth", "payload": {"token": t}}))?;
        }
        Ok(c)
    }

    fn write(&mut self, v: &Value) -> Result<(), String> {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| format!("cannot send to the router: {e}"))
    }

    /// Sends a command; returns its request id.
    pub fn send(&mut self, command: &str, payload: Value) -> Result<String, String> {
        let rid = super::uuid();
        self.write(
            &json!({"protocol": PROTOCOL, "type": "command", "command": command,
                           "request_id": rid, "payload": payload}),
        )?;
        Ok(rid)
    }

    /// The next event, or `None` at the deadline.
    pub fn next(&mut self, deadline: Option<Instant>) -> Result<Option<Value>, String> {
        loop {
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(left)
                }
                None => None,
            };
            let _ = self.reader.get_ref().set_read_timeout(wait);
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return Err("the router closed the connection".into()),
                Ok(_) if self.line.ends_with(b"\n") => {
                    let v = serde_json::from_slice::<Value>(&self.line);
                    self.line.clear();
                    if let Ok(v) = v
                        && v["type"] == "event"
                    {
                        return Ok(Some(v));
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("cannot read from the router: {e}")),
            }
        }
    }
}

fn rid_of(ev: &Value) -> Option<&str> {
    ev["data"]["request_id"].as_str()
}

/// What a command ended with: the router refused it (already printed), or it could not be
/// carried out (the message says why).
enum Fail {
    Refused,
    Error(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Error(e)
    }
}

impl From<&str> for Fail {
    fn from(e: &str) -> Fail {
        Fail::Error(e.to_string())
    }
}

/// Runs one `clove swarm` command; returns the process exit code: 0 done, 1 the router
/// refused the command or a node failed; an `Err` (exit 2) when it cannot talk to the router.
/// Runs one `clove swarm` command; `json` (the global `--json`): print the router's events as
/// JSON lines instead of text.
pub fn run(args: SwarmArgs, json: bool) -> Result<u8, String> {
    match run_action(args, json) {
        Ok(code) => Ok(code),
        Err(Fail::Refused) => Ok(1),
        Err(Fail::Error(e)) => Err(e),
    }
}

/// Connects as the options say (address, token).
fn connect(args: &SwarmArgs) -> Result<RouterClient, Fail> {
    let addr = args.router.clone().unwrap_or_else(default_address);
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CLOVE_ROUTER_TOKEN").ok(),
    };
    Ok(RouterClient::connect(&addr, token.as_deref())?)
}

fn run_action(args: SwarmArgs, json: bool) -> Result<u8, Fail> {
    let mut c = connect(&args)?;
    let out = Out { json };
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout.max(0.1));
    match args.action {
        SwarmAction::Providers => {
            let ev = ask(&mut c, "providers_list", json!({}), deadline, &out)?;
            out.providers(&ev["data"]["providers"]);
            Ok(0)
        }
        SwarmAction::Launch {
            nodes,
            provider,
            system_prompt,
            params,
        } => {
            let payload = launch_payload(nodes, provider, system_prompt, &params)?;
            let rid = c.send("swarm_launch", payload)?;
            progress_until(&mut c, &rid, deadline, &out, "swarm_launched")
        }
        SwarmAction::List => {
            let ev = ask(&mut c, "swarm_list", json!({}), deadline, &out)?;
            out.swarms(&ev["data"]["swarms"]);
            Ok(0)
        }
        SwarmAction::Status { swarm_id } => {
            let payload = json!({"swarm_id": swarm_id});
            let ev = ask(&mut c, "swarm_status", payload, deadline, &out)?;
            if !out.json {
                let d = &ev["data"];
                say(&format!(
                    "swarm {} (job {}): {}, {} nodes",
                    swarm_id,
                    text(&d["job_id"]),
                    text(&d["status"]),
                    d["node_count"]
                ));
            }
            Ok(0)
        }
        SwarmAction::Inject {
            swarm_id,
            prompt,
            nodes,
        } => inject(&mut c, &out, deadline, &swarm_id, &prompt, &nodes),
        SwarmAction::Attach { swarm_id } => attach(&mut c, &out, &swarm_id),
        SwarmAction::Terminate { swarm_id, force } => {
            let payload = json!({"swarm_id": swarm_id, "terminate_params": {"force": force}});
            let rid = c.send("swarm_terminate", payload)?;
            progress_until(&mut c, &rid, deadline, &out, "swarm_terminated")
        }
    }
}

/// Prints a command's progress events until its `last` event (or its refusal).
fn progress_until(
    c: &mut RouterClient,
    rid: &str,
    deadline: Instant,
    out: &Out,
    last: &str,
) -> Result<u8, Fail> {
    loop {
        let ev = c
            .next(Some(deadline))?
            .ok_or_else(|| format!("timed out waiting for {last}"))?;
        if rid_of(&ev) != Some(rid) {
            continue;
        }
        out.event(&ev);
        match ev["event"].as_str() {
            Some("command_rejected") => return Err(Fail::Refused),
            Some(name) if name == last => return Ok(0),
            _ => {}
        }
    }
}

/// Sends a command and waits for its one answer (any event with its request id that is not
/// progress); a rejection becomes the error.
fn ask(
    c: &mut RouterClient,
    command: &str,
    payload: Value,
    deadline: Instant,
    out: &Out,
) -> Result<Value, Fail> {
    let rid = c.send(command, payload)?;
    loop {
        let ev = c
            .next(Some(deadline))?
            .ok_or_else(|| format!("timed out waiting for the router's answer to {command}"))?;
        if rid_of(&ev) != Some(rid.as_str()) {
            continue;
        }
        if ev["event"] == "command_rejected" {
            out.event(&ev);
            return Err(Fail::Refused);
        }
        if out.json {
            out.event(&ev);
        }
        return Ok(ev);
    }
}

/// `swarm_launch`'s payload from the command line.
fn launch_payload(
    nodes: u32,
    provider: Option<String>,
    system_prompt: Option<String>,
    params: &[String],
) -> Result<Value, Fail> {
    let mut pp = Map::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--param {p:?} is not KEY=VALUE"))?;
        pp.insert(
            k.to_string(),
            serde_json::from_str(v).unwrap_or_else(|_| json!(v)),
        );
    }
    let mut payload = json!({"nodes": nodes, "provider_params": pp});
    if let Some(p) = provider {
        payload["provider"] = json!(p);
    }
    if let Some(s) = system_prompt {
        payload["system_prompt"] = json!(s);
    }
    Ok(payload)
}

/// `inject`'s payload from the command line (`-` reads the prompt from stdin).
fn inject_payload(swarm: &str, prompt: &str, nodes: &str) -> Result<Value, Fail> {
    let prompt = if prompt == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| e.to_string())?;
        s
    } else {
        prompt.to_string()
    };
    let nodes_v = if nodes == "all" {
        json!("all")
    } else {
        let list: Result<Vec<u32>, _> = nodes.split(',').map(|n| n.trim().parse::<u32>()).collect();
        json!(list.map_err(|_| format!("--nodes {nodes:?}: `all`, a number or a list like 0,2"))?)
    };
    Ok(json!({"swarm_id": swarm, "nodes": nodes_v, "content": prompt}))
}

/// One node's side of an injection, as `clove swarm inject` waits for it.
#[derive(Default)]
struct NodeWait {
    node: u64,
    answer: Option<String>,
    delivered: bool,
    turn_done: bool,
}

/// The injections of one `inject` command, by injection id.
#[derive(Default)]
struct InjectWait {
    nodes: std::collections::BTreeMap<String, NodeWait>,
    failed: bool,
}

impl InjectWait {
    /// Takes one event; `Err` when the command was refused.
    fn take(&mut self, ev: &Value, rid: &str, out: &Out) -> Result<(), Fail> {
        let d = &ev["data"];
        let name = ev["event"].as_str().unwrap_or("");
        let inj = d["injection_id"].as_str().unwrap_or("").to_string();
        if rid_of(ev) == Some(rid) {
            match name {
                "command_rejected" => {
                    out.event(ev);
                    return Err(Fail::Refused);
                }
                "inject_ack" => {
                    let node = d["node_id"].as_u64().unwrap_or(0);
                    self.nodes.insert(
                        inj,
                        NodeWait {
                            node,
                            ..Default::default()
                        },
                    );
                }
                "inject_delivered" => {
                    if let Some(m) = self.nodes.get_mut(&inj) {
                        m.delivered = true;
                    }
                }
                "inject_failed" => {
                    self.failed = true;
                    self.nodes.remove(&inj);
                    if !out.json {
                        eprintln!("clove: node {}: {}", d["node_id"], text(&d["error"]));
                    }
                }
                _ => {}
            }
            out.event_json(ev);
        } else if let Some(m) = self.nodes.get_mut(&inj) {
            out.event_json(ev);
            match name {
                "assistant" => m.answer = Some(text(&d["content"])),
                "agent_error" => {
                    self.failed = true;
                    if !out.json {
                        eprintln!("clove: node {}: {}", m.node, text(&d["message"]));
                    }
                }
                "turn_complete" => m.turn_done = true,
                _ => {}
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        if self.nodes.is_empty() {
            return self.failed;
        }
        self.nodes.values().all(|m| m.delivered && m.turn_done)
    }
}

/// Per node: waits for `inject_delivered` (or `inject_failed`), the `assistant` answer and
/// `turn_complete`, then prints the answers in node order.
fn inject(
    c: &mut RouterClient,
    out: &Out,
    deadline: Instant,
    swarm: &str,
    prompt: &str,
    nodes: &str,
) -> Result<u8, Fail> {
    let rid = c.send("inject", inject_payload(swarm, prompt, nodes)?)?;
    let mut w = InjectWait::default();
    while !w.finished() {
        let ev = c
            .next(Some(deadline))?
            .ok_or("timed out waiting for the nodes' answers")?;
        w.take(&ev, &rid, out)?;
    }
    if !out.json {
        let mut answers: Vec<&NodeWait> = w.nodes.values().collect();
        answers.sort_by_key(|m| m.node);
        for m in answers {
            say(&format!(
                "[node {}] {}",
                m.node,
                m.answer.as_deref().unwrap_or("(no answer)")
            ));
        }
    }
    Ok(if w.failed { 1 } else { 0 })
}

fn attach(c: &mut RouterClient, out: &Out, swarm: &str) -> Result<u8, Fail> {
    let rid = c.send("swarm_status", json!({"swarm_id": swarm}))?;
    loop {
        let Some(ev) = c.next(None)? else { continue };
        let d = &ev["data"];
        if rid_of(&ev) == Some(rid.as_str()) && ev["event"] == "command_rejected" {
            out.event(&ev);
            return Err(Fail::Refused);
        }
        if d["swarm_id"] != swarm {
            continue;
        }
        if out.json {
            out.event(&ev);
        } else {
            let name = ev["event"].as_str().unwrap_or("?");
            let node = d["node_id"]
                .as_u64()
                .map(|n| format!("[node {n}] "))
                .unwrap_or_default();
            let body = match name {
                "assistant_delta" | "assistant" | "reasoning_delta" | "reasoning" => {
                    text(&d["content"])
                }
                "agent_error" => text(&d["message"]),
                "swarm_status" => text(&d["status"]),
                _ => String::new(),
            };
            say(format!("{node}{name} {body}").trim_end());
        }
        if ev["event"] == "swarm_terminated"
            || (ev["event"] == "swarm_status" && d["status"] == "terminated")
        {
            return Ok(0);
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn say(s: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{s}");
}

struct Out {
    json: bool,
}

impl Out {
    /// Prints an event: as its JSON line, or as a progress line.
    fn event(&self, ev: &Value) {
        if self.json {
            say(&ev.to_string());
            return;
        }
        let d = &ev["data"];
        match ev["event"].as_str().unwrap_or("") {
            "swarm_launch_progress" => say(&format!(
                "  {:<10} {}",
                text(&d["stage"]),
                text(&d["message"])
            )),
            "swarm_launched" => say(&format!(
                "launched swarm {} (job {}, {} nodes, {})",
                text(&d["swarm_id"]),
                text(&d["job_id"]),
                d["node_count"],
                text(&d["agent_runtime"])
            )),
            "swarm_terminate_progress" => say(&format!(
                "  {:<10} {}",
                text(&d["stage"]),
                text(&d["message"])
            )),
            "swarm_status" => say(&format!("  status     {}", text(&d["status"]))),
            "swarm_terminated" => say(&format!("terminated swarm {}", text(&d["swarm_id"]))),
            "command_rejected" => eprintln!("clove: the router refused: {}", text(&d["reason"])),
            _ => {}
        }
    }

    fn event_json(&self, ev: &Value) {
        if self.json {
            say(&ev.to_string());
        }
    }

    fn providers(&self, list: &Value) {
        if self.json {
            return;
        }
        say(&format!(
            "{:<16} {:<8} {:<9} LABEL",
            "ID", "BACKEND", "STATE"
        ));
        for p in list.as_array().into_iter().flatten() {
            let state = if p["disabled"] == true {
                "disabled"
            } else {
                "ok"
            };
            say(&format!(
                "{:<16} {:<8} {:<9} {}",
                text(&p["id"]),
                text(&p["backend"]),
                state,
                text(&p["label"])
            ));
        }
    }

    fn swarms(&self, map: &Value) {
        if self.json {
            return;
        }
        say(&format!(
            "{:<36} {:<16} {:>5} {:<11} {:<10} CREATED",
            "SWARM", "JOB", "NODES", "STATUS", "PROVIDER"
        ));
        let mut rows: Vec<(&String, &Value)> = map
            .as_object()
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        rows.sort_by_key(|(_, s)| text(&s["created_at"]));
        for (id, s) in rows {
            say(&format!(
                "{:<36} {:<16} {:>5} {:<11} {:<10} {}",
                id,
                text(&s["job_id"]),
                s["node_count"],
                text(&s["status"]),
                text(&s["provider_id"]),
                text(&s["created_at"])
            ));
        }
    }
}
