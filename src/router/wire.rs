//! The `codeswarm.router.v1` wire: command lines parsed into typed requests, events encoded
//! into envelope lines. Pure: no I/O, no clock (the caller passes the time).
//!
//! What is wrong with a line decides its answer (ROUTER-COMPAT.md): a line whose `protocol` is
//! missing or different is ignored, as the seed says; everything else that is wrong gets a
//! `command_rejected` naming the problem (invalid JSON, not an object, a payload that is not
//! an object, fields of the wrong type, unknown commands), never silence and never a crash.

use serde::Serialize;
use serde_json::{Map, Value, json};
use std::time::SystemTime;

/// The protocol string every command and event carries.
pub const PROTOCOL: &str = "codeswarm.router.v1";

/// One router event: a name and its data object.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

impl Event {
    pub fn new(name: impl Into<String>, data: Value) -> Event {
        Event {
            name: name.into(),
            data,
        }
    }

    /// `command_rejected{request_id, reason}`.
    pub fn rejected(request_id: &Value, reason: impl Into<String>) -> Event {
        Event::new(
            "command_rejected",
            json!({"request_id": request_id, "reason": reason.into()}),
        )
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    protocol: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    event: &'a str,
    data: &'a Value,
}

/// The event as one `\n`-terminated line (encoded once, sent to every client).
pub fn encode_event(ev: &Event, at: SystemTime) -> Vec<u8> {
    let stamp = crate::clock::iso8601(at);
    let env = Envelope {
        protocol: PROTOCOL,
        kind: "event",
        timestamp: &stamp,
        event: &ev.name,
        data: &ev.data,
    };
    let mut out = Vec::with_capacity(128);
    // A `Value` always serialises (its map keys are strings), so this cannot fail; if it
    // ever did, an empty line would be skipped by every client.
    let _ = crate::proto::jsonl::encode_line(&mut out, &env);
    out
}

/// What one line from a client asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A command of this protocol.
    Command {
        name: String,
        request_id: Value,
        payload: Map<String, Value>,
    },
    /// `{"command": "auth", "payload": {"token"}}`, for listeners that require a token.
    Auth { token: String },
    /// Another protocol's line, or none: ignored (the seed says so).
    Ignore,
    /// Wrong in a way worth telling the client.
    Reject { request_id: Value, reason: String },
}

/// Parses one complete line (already checked for length and UTF-8 by the JSON-lines codec).
pub fn parse_line(line: &str) -> Line {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Line::Reject {
                request_id: Value::Null,
                reason: format!("invalid JSON: {e}"),
            };
        }
    };
    let Value::Object(mut obj) = v else {
        return Line::Reject {
            request_id: Value::Null,
            reason: "a command must be a JSON object".into(),
        };
    };
    let request_id = match obj.remove("request_id") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => Value::String(s),
        Some(Value::Number(n)) => Value::Number(n),
        Some(_) => {
            return Line::Reject {
                request_id: Value::Null,
                reason: "request_id must be a string".into(),
            };
        }
    };
    let is_auth = obj.get("command").and_then(Value::as_str) == Some("auth");
    if !is_auth && obj.get("protocol").and_then(Value::as_str) != Some(PROTOCOL) {
        return Line::Ignore;
    }
    let reject = |reason: &str| Line::Reject {
        request_id: request_id.clone(),
        reason: reason.to_string(),
    };
    let name = match obj.remove("command") {
        Some(Value::String(s)) if !s.is_empty() => s,
        None => return reject("missing command"),
        Some(_) => return reject("command must be a non-empty string"),
    };
    let payload = match obj.remove("payload") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return reject("payload must be a JSON object"),
    };
    if is_auth {
        return match payload.get("token").and_then(Value::as_str) {
            Some(t) => Line::Auth {
                token: t.to_string(),
            },
            None => reject("auth needs payload.token (a string)"),
        };
    }
    Line::Command {
        name,
        request_id,
        payload,
    }
}

/// Which nodes of a swarm an injection goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    All,
    List(Vec<u32>),
}

impl Nodes {
    /// The node ids for a swarm of `count` nodes, or why not (an id out of range).
    pub fn resolve(&self, count: u32) -> Result<Vec<u32>, String> {
        match self {
            Nodes::All => Ok((0..count).collect()),
            Nodes::List(ids) => {
                if let Some(bad) = ids.iter().find(|&&n| n >= count) {
                    return Err(format!(
                        "node {bad} is out of range: the swarm has nodes 0 to {}",
                        count.saturating_sub(1)
                    ));
                }
                let mut v = ids.clone();
                v.sort_unstable();
                v.dedup();
                Ok(v)
            }
        }
    }
}

/// One skill file of an `agents_bundle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillFile {
    pub path: String,
    pub content: String,
}

/// `swarm_launch`'s payload.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchReq {
    pub nodes: u32,
    pub system_prompt: String,
    pub provider: Option<String>,
    pub provider_params: Map<String, Value>,
    pub agents_md: Option<String>,
    pub skills: Vec<SkillFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InjectReq {
    pub swarm_id: String,
    pub nodes: Nodes,
    pub content: String,
}

/// An `enqueue_inject` selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The first idle node.
    Idle,
    /// Every node, once all are idle.
    All,
    /// These nodes, once all of them are idle.
    Nodes(Vec<u32>),
}

impl Selector {
    pub fn name(&self) -> &'static str {
        match self {
            Selector::Idle => "idle",
            Selector::All => "all",
            Selector::Nodes(_) => "nodes",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnqueueReq {
    pub source_swarm_id: String,
    pub target_swarm_id: String,
    pub selector: Selector,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApproveReq {
    pub job_id: String,
    pub call_id: String,
    pub node_id: Option<u32>,
    pub injection_id: Option<String>,
    pub approved: bool,
    pub decision: String,
}

/// A command with its payload checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    SwarmLaunch(LaunchReq),
    Inject(InjectReq),
    SwarmList,
    SwarmStatus { swarm_id: String },
    SwarmTerminate { swarm_id: String, force: bool },
    ProvidersList,
    EnqueueInject(EnqueueReq),
    QueueList,
    ApprovalsList,
    ApproveExecution(ApproveReq),
}

/// The old router's multi-task project commands: answered "not supported yet".
const PROJECT_COMMANDS: [&str; 6] = [
    "project_create",
    "project_plan",
    "project_start",
    "project_resume",
    "project_resume_preview",
    "project_list",
];

/// Checks a command's payload; the error is the `command_rejected` reason.
pub fn parse_request(name: &str, p: &Map<String, Value>) -> Result<Request, String> {
    Ok(match name {
        "swarm_launch" => Request::SwarmLaunch(launch(p)?),
        "inject" => Request::Inject(InjectReq {
            swarm_id: req_str(p, "swarm_id")?,
            nodes: match p.get("nodes") {
                None | Some(Value::Null) => Nodes::All,
                Some(v) => nodes(v, "nodes")?,
            },
            content: content(p)?,
        }),
        "swarm_list" => Request::SwarmList,
        "swarm_status" => Request::SwarmStatus {
            swarm_id: req_str(p, "swarm_id")?,
        },
        "swarm_terminate" => Request::SwarmTerminate {
            swarm_id: req_str(p, "swarm_id")?,
            force: match p.get("terminate_params") {
                None | Some(Value::Null) => false,
                Some(Value::Object(t)) => {
                    opt_bool(t, "terminate_params.force", "force")?.unwrap_or(false)
                }
                Some(_) => return Err("terminate_params must be an object".into()),
            },
        },
        "providers_list" => Request::ProvidersList,
        "enqueue_inject" => Request::EnqueueInject(enqueue(p)?),
        "queue_list" => Request::QueueList,
        "approvals_list" => Request::ApprovalsList,
        "approve_execution" => Request::ApproveExecution(approve(p)?),
        n if PROJECT_COMMANDS.contains(&n) => return Err(format!("not supported yet: {n}")),
        n => return Err(format!("unknown command: {}", clip(n, 64))),
    })
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn req_str(p: &Map<String, Value>, k: &str) -> Result<String, String> {
    match p.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(format!("{k} is required")),
        Some(_) => Err(format!("{k} must be a string")),
    }
}

fn opt_str(p: &Map<String, Value>, k: &str) -> Result<Option<String>, String> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{k} must be a string")),
    }
}

fn opt_bool(p: &Map<String, Value>, label: &str, k: &str) -> Result<Option<bool>, String> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{label} must be true or false")),
    }
}

fn node_id(v: &Value, k: &str) -> Result<u32, String> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{k} must be a node number (an integer >= 0)"))
}

fn nodes(v: &Value, k: &str) -> Result<Nodes, String> {
    match v {
        Value::String(s) if s == "all" => Ok(Nodes::All),
        Value::Number(_) => Ok(Nodes::List(vec![node_id(v, k)?])),
        Value::Array(a) if !a.is_empty() => Ok(Nodes::List(
            a.iter().map(|x| node_id(x, k)).collect::<Result<_, _>>()?,
        )),
        _ => Err(format!(
            "{k} must be \"all\", a node number or a non-empty list of node numbers"
        )),
    }
}

fn content(p: &Map<String, Value>) -> Result<String, String> {
    match p.get("content") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err("content is required".into()),
        Some(_) => Err("content must be a string".into()),
    }
}

fn launch(p: &Map<String, Value>) -> Result<LaunchReq, String> {
    let nodes = match p.get("nodes") {
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("nodes must be an integer >= 1")?,
        None => return Err("nodes is required".into()),
    };
    let mut provider_params = match p.get("provider_params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("provider_params must be an object".into()),
    };
    // The seed puts the scheduling keys at the top level; provider_params wins when both do.
    for k in ["partition", "time", "account", "qos"] {
        match p.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                provider_params
                    .entry(k)
                    .or_insert_with(|| Value::String(s.clone()));
            }
            Some(_) => return Err(format!("{k} must be a string")),
        }
    }
    let (mut agents_md, mut skills) = (opt_str(p, "agents_md_content")?, Vec::new());
    match p.get("agents_bundle") {
        None | Some(Value::Null) => {}
        Some(Value::Object(b)) => {
            if let Some(md) = opt_str(b, "agents_md_content")? {
                agents_md = Some(md);
            }
            skills = skill_files(b.get("skills_files"))?;
        }
        Some(_) => return Err("agents_bundle must be an object".into()),
    }
    Ok(LaunchReq {
        nodes,
        system_prompt: opt_str(p, "system_prompt")?.unwrap_or_default(),
        provider: opt_str(p, "provider")?,
        provider_params,
        agents_md,
        skills,
    })
}

fn skill_files(v: Option<&Value>) -> Result<Vec<SkillFile>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(a) = v.as_array() else {
        return Err("agents_bundle.skills_files must be a list".into());
    };
    a.iter()
        .map(|f| {
            let path = f.get("path").and_then(Value::as_str);
            let content = f.get("content").and_then(Value::as_str);
            match (path, content) {
                (Some(path), Some(content)) => Ok(SkillFile {
                    path: path.to_string(),
                    content: content.to_string(),
                }),
                _ => Err(
                    "each of agents_bundle.skills_files needs path and content (strings)".into(),
                ),
            }
        })
        .collect()
}

fn enqueue(p: &Map<String, Value>) -> Result<EnqueueReq, String> {
    let selector = match opt_str(p, "selector")?.as_deref() {
        None | Some("idle") => Selector::Idle,
        Some("all") => Selector::All,
        Some("nodes") => match p.get("nodes") {
            Some(v) => match nodes(v, "nodes")? {
                Nodes::List(l) => Selector::Nodes(l),
                Nodes::All => Selector::All,
            },
            None => return Err("selector \"nodes\" needs nodes (a list of node numbers)".into()),
        },
        Some(other) => {
            return Err(format!(
                "selector must be \"idle\", \"all\" or \"nodes\", not {:?}",
                clip(other, 32)
            ));
        }
    };
    Ok(EnqueueReq {
        source_swarm_id: req_str(p, "source_swarm_id")?,
        target_swarm_id: req_str(p, "target_swarm_id")?,
        selector,
        content: content(p)?,
    })
}

fn approve(p: &Map<String, Value>) -> Result<ApproveReq, String> {
    let job_id = match p.get("job_id") {
        Some(Value::Number(n)) => n.to_string(),
        _ => req_str(p, "job_id")?,
    };
    let decision = opt_str(p, "decision")?;
    let approved = match (opt_bool(p, "approved", "approved")?, decision.as_deref()) {
        (Some(b), _) => b,
        (None, Some(d)) => d.starts_with("approved") || d == "accept" || d == "allow",
        (None, None) => return Err("approved (true or false) or decision is required".into()),
    };
    let decision = decision.unwrap_or_else(|| if approved { "approved" } else { "denied" }.into());
    if decision.len() > 64 {
        return Err("decision is too long (at most 64 bytes)".into());
    }
    Ok(ApproveReq {
        job_id,
        call_id: req_str(p, "call_id")?,
        node_id: match p.get("node_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(node_id(v, "node_id")?),
        },
        injection_id: opt_str(p, "injection_id")?,
        approved,
        decision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(v: Value) -> String {
        v.to_string()
    }

    #[test]
    fn lines_are_classified_as_the_compat_notes_say() {
        assert!(matches!(
            parse_line("{nope"),
            Line::Reject {
                request_id: Value::Null,
                ..
            }
        ));
        assert!(matches!(parse_line("[1,2]"), Line::Reject { .. }));
        assert!(matches!(parse_line("42"), Line::Reject { .. }));
        assert_eq!(
            parse_line(&line(json!({"command": "swarm_list"}))),
            Line::Ignore
        );
        assert_eq!(
            parse_line(&line(json!({"protocol": "other", "command": "swarm_list"}))),
            Line::Ignore
        );
        let r = parse_line(&line(json!({"protocol": PROTOCOL, "command": "swarm_list",
            "request_id": "r1", "payload": null})));
        assert_eq!(
            r,
            Line::Reject {
                request_id: json!("r1"),
                reason: "payload must be a JSON object".into()
            }
        );
        let r = parse_line(&line(json!({"protocol": PROTOCOL, "command": "swarm_list",
            "request_id": "r2", "type": "command", "timestamp": "x"})));
        assert!(
            matches!(r, Line::Command { ref name, .. } if name == "swarm_list"),
            "{r:?}"
        );
        assert_eq!(
            parse_line(&line(json!({"command": "auth", "payload": {"token": "t"}}))),
            Line::Auth { token: "t".into() }
        );
    }

    #[test]
    fn payloads_are_checked() {
        let p = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            parse_request("project_plan", &Map::new()).unwrap_err(),
            "not supported yet: project_plan"
        );
        assert!(
            parse_request("bogus", &Map::new())
                .unwrap_err()
                .starts_with("unknown command")
        );
        assert!(parse_request("swarm_launch", &p(json!({"nodes": 0}))).is_err());
        assert!(parse_request("swarm_launch", &p(json!({"nodes": "2"}))).is_err());
        let Request::SwarmLaunch(l) = parse_request(
            "swarm_launch",
            &p(json!({"nodes": 2, "partition": "gpu", "provider_params": {"partition": "cpu"}})),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(l.provider_params["partition"], "cpu");
        assert_eq!(
            parse_request(
                "inject",
                &p(json!({"swarm_id": "s", "nodes": [1, 0], "content": "x"}))
            )
            .unwrap(),
            Request::Inject(InjectReq {
                swarm_id: "s".into(),
                nodes: Nodes::List(vec![1, 0]),
                content: "x".into()
            })
        );
        assert!(
            parse_request(
                "inject",
                &p(json!({"swarm_id": "s", "nodes": -1, "content": "x"}))
            )
            .is_err()
        );
        assert!(parse_request("inject", &p(json!({"swarm_id": "s", "content": 5}))).is_err());
        assert!(
            parse_request(
                "enqueue_inject",
                &p(json!({"source_swarm_id": "a",
            "target_swarm_id": "b", "selector": "nodes", "content": "x"}))
            )
            .is_err()
        );
        let Request::ApproveExecution(a) = parse_request(
            "approve_execution",
            &p(json!({"job_id": 12, "call_id": "c", "decision": "approved_for_session"})),
        )
        .unwrap() else {
            panic!()
        };
        assert!(a.approved);
        assert_eq!(a.job_id, "12");
    }

    #[test]
    fn nodes_resolve_within_the_swarm() {
        assert_eq!(Nodes::All.resolve(3).unwrap(), vec![0, 1, 2]);
        assert_eq!(Nodes::List(vec![2, 0, 2]).resolve(3).unwrap(), vec![0, 2]);
        assert!(
            Nodes::List(vec![3])
                .resolve(3)
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn events_are_one_line_in_the_envelope() {
        let line = encode_event(
            &Event::new("assistant", json!({"content": "a\nb"})),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["protocol"], PROTOCOL);
        assert_eq!(v["type"], "event");
        assert_eq!(v["event"], "assistant");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["content"], "a\nb");
    }
}
