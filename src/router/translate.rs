//! Outbox records → router events (ROUTER-COMPAT.md, "The node mailbox"). Pure: one complete
//! line in, what to publish (or why not) out.
//!
//! Records name their type: `codex_rpc` carries a JSON-RPC message of codex app-server whose
//! method maps to an event name; `worker_event` names its event itself; `worker_error` becomes
//! `agent_error`; `start` and `complete` become `worker_start` / `worker_complete`; trace
//! records are not forwarded. Every event gets the node's `swarm_id`, `job_id`, `node_id` and
//! the record's `injection_id`. Anything else is dropped and counted by kind, never fatal.

use super::wire::Event;
use serde_json::{Map, Value, json};

/// Where a record came from (the file it was read from says so, not the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    pub swarm_id: &'a str,
    pub job_id: &'a str,
    pub node_id: u32,
}

/// Why a record was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not JSON, not an object, no `type`, fields of the wrong type.
    Malformed,
    /// A record type or codex method this router does not know.
    Unknown,
    /// A record naming another job than the file it is in.
    ForeignJob,
}

/// What one record means.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated {
    /// Events to publish (possibly none: a valid record with nothing to say).
    Events(Vec<Event>),
    /// A record type that is not forwarded (traces, stderr).
    Skip,
    Dropped(Drop),
}

/// Event names only the router itself produces: a worker cannot publish these.
const ROUTER_ONLY: [&str; 8] = [
    "command_rejected",
    "swarm_",
    "inject_",
    "inter_swarm_",
    "queue_",
    "providers_list",
    "approvals_list",
    "exec_approval_submitted",
];

/// Default answers offered for an approval request that lists none.
const DEFAULT_DECISIONS: [&str; 4] = ["approved", "approved_for_session", "denied", "abort"];

/// Translates one outbox line.
pub fn translate(line: &str, from: &Origin) -> Translated {
    let Ok(Value::Object(rec)) = serde_json::from_str::<Value>(line) else {
        return Translated::Dropped(Drop::Malformed);
    };
    let Some(kind) = rec.get("type").and_then(Value::as_str) else {
        return Translated::Dropped(Drop::Malformed);
    };
    match rec.get("job_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(j)) if j == from.job_id => {}
        Some(Value::Number(n)) if n.to_string() == from.job_id => {}
        Some(_) => return Translated::Dropped(Drop::ForeignJob),
    }
    let injection_id = match rec.get("injection_id") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(_) => return Translated::Dropped(Drop::Malformed),
    };
    let one = |name: &str, data: Map<String, Value>| {
        Translated::Events(vec![with_ids(name, data, from, &injection_id)])
    };
    match kind {
        "worker_trace" | "codex_stderr" | "session_trace" => Translated::Skip,
        "start" | "complete" => {
            let mut data = rec.clone();
            for k in ["type", "job_id", "node_id", "injection_id"] {
                data.remove(k);
            }
            one(&format!("worker_{kind}"), data)
        }
        "worker_error" => {
            let message = match rec.get("error") {
                Some(Value::String(s)) => s.clone(),
                Some(v) if !v.is_null() => v.to_string(),
                _ => "the worker reported an error".to_string(),
            };
            one(
                "agent_error",
                obj(json!({"message": message, "source": "worker"})),
            )
        }
        "worker_event" => {
            let name = match rec.get("event").and_then(Value::as_str) {
                Some(n) if valid_event_name(n) => n,
                Some(_) => return Translated::Dropped(Drop::Unknown),
                None => return Translated::Dropped(Drop::Malformed),
            };
            let data = match rec.get("payload") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) => m.clone(),
                Some(_) => return Translated::Dropped(Drop::Malformed),
            };
            one(name, data)
        }
        "codex_rpc" => match rec.get("payload") {
            Some(Value::Object(msg)) => match codex(msg) {
                Ok(Some((name, data))) => one(name, data),
                Ok(None) => Translated::Events(Vec::new()),
                Err(d) => Translated::Dropped(d),
            },
            _ => Translated::Dropped(Drop::Malformed),
        },
        _ => Translated::Dropped(Drop::Unknown),
    }
}

fn valid_event_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !ROUTER_ONLY.iter().any(|r| {
            if r.ends_with('_') {
                n.starts_with(r)
            } else {
                n == *r
            }
        })
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn with_ids(name: &str, mut data: Map<String, Value>, from: &Origin, inj: &Value) -> Event {
    data.insert("swarm_id".into(), json!(from.swarm_id));
    data.insert("job_id".into(), json!(from.job_id));
    data.insert("node_id".into(), json!(from.node_id));
    data.insert("injection_id".into(), inj.clone());
    Event::new(name, Value::Object(data))
}

/// A codex app-server JSON-RPC message → an event (`Ok(None)`: a valid message with nothing to
/// publish, such as a response or a token count without figures).
/// An event's name and data.
type Named = (&'static str, Map<String, Value>);

fn codex(msg: &Map<String, Value>) -> Result<Option<Named>, Drop> {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A response to a request of the worker's: nothing for clients.
        return if msg.contains_key("id") {
            Ok(None)
        } else {
            Err(Drop::Malformed)
        };
    };
    let null = Value::Null;
    let params = msg.get("params").unwrap_or(&null);
    let m = &params["msg"];
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_default();
    Ok(Some(match method {
        "turn/started" => ("turn_started", Map::new()),
        "turn/completed" => ("turn_complete", Map::new()),
        "codex/event/agent_message_content_delta" | "codex/event/agent_message_delta" => (
            "assistant_delta",
            obj(json!({"content": text(&m["delta"])})),
        ),
        "codex/event/agent_message" => (
            "assistant",
            obj(json!({"content": text(&m["message"]),
                       "final_answer": m["phase"] == "final_answer"})),
        ),
        "codex/event/task_started" => ("task_started", Map::new()),
        "codex/event/task_complete" => (
            "task_complete",
            obj(json!({"last_agent_message": m["last_agent_message"]})),
        ),
        "thread/status/changed" => ("thread_status", obj(json!({"status": params["status"]}))),
        "codex/event/token_count" | "thread/tokenUsage/updated" => match usage(method, params) {
            Some(u) => ("usage", u),
            None => return Ok(None),
        },
        "codex/event/exec_command_begin" => (
            "command_started",
            obj(json!({"call_id": m["call_id"], "command": m["command"], "cwd": m["cwd"]})),
        ),
        "codex/event/exec_command_end" => (
            "command_completed",
            obj(
                json!({"call_id": m["call_id"], "command": m["command"], "cwd": m["cwd"],
                       "stdout": m["stdout"], "stderr": m["stderr"],
                       "exit_code": m["exit_code"], "duration": m["duration"]}),
            ),
        ),
        "codex/event/patch_apply_begin" => (
            "filechange_started",
            obj(json!({"call_id": m["call_id"], "changes": m["changes"]})),
        ),
        "codex/event/patch_apply_end" => (
            "filechange_completed",
            obj(json!({"call_id": m["call_id"], "success": m["success"],
                       "stdout": m["stdout"], "stderr": m["stderr"]})),
        ),
        "codex/event/agent_reasoning" => ("reasoning", obj(json!({"content": text(&m["text"])}))),
        "codex/event/agent_reasoning_delta" => (
            "reasoning_delta",
            obj(json!({"content": text(&m["delta"])})),
        ),
        "error" | "codex/event/error" => {
            let message = [
                &params["error"]["message"],
                &params["message"],
                &m["message"],
            ]
            .into_iter()
            .find_map(|v| v.as_str())
            .unwrap_or("the agent reported an error");
            ("agent_error", obj(json!({"message": message})))
        }
        "codex/event/exec_approval_request"
        | "item/commandExecution/requestApproval"
        | "codex/event/apply_patch_approval_request"
        | "item/fileChange/requestApproval"
        | "execCommandApproval"
        | "applyPatchApproval" => ("exec_approval_required", approval(method, msg, params)),
        _ => return Err(Drop::Unknown),
    }))
}

/// The many shapes of codex approval requests → `exec_approval_required`'s one shape.
fn approval(method: &str, msg: &Map<String, Value>, params: &Value) -> Map<String, Value> {
    let m = &params["msg"];
    let first = |vals: [&Value; 4]| {
        vals.into_iter()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let call_id = first([
        &m["call_id"],
        &params["callId"],
        &params["call_id"],
        &params["itemId"],
    ]);
    let call_id = match call_id {
        Value::Number(n) => Value::String(n.to_string()),
        v => v,
    };
    let approval_id = match msg.get("id") {
        Some(Value::String(s)) => json!(s),
        Some(Value::Number(n)) => json!(n.to_string()),
        _ => call_id.clone(),
    };
    let patch = method.contains("atch") || method.contains("fileChange");
    let decisions = first([
        &params["availableDecisions"],
        &params["available_decisions"],
        &m["available_decisions"],
        &Value::Null,
    ]);
    let decisions = if decisions.is_array() {
        decisions
    } else {
        json!(DEFAULT_DECISIONS)
    };
    obj(json!({
        "approval_id": approval_id,
        "call_id": call_id,
        "kind": if patch { "patch" } else { "exec" },
        "command": if patch { json!("apply_patch") } else { first([&m["command"], &params["command"], &Value::Null, &Value::Null]) },
        "reason": first([&m["reason"], &params["reason"], &Value::Null, &Value::Null]),
        "cwd": first([&m["cwd"], &params["cwd"], &Value::Null, &Value::Null]),
        "changes": first([&m["changes"], &params["fileChanges"], &Value::Null, &Value::Null]),
        "available_decisions": decisions,
        "method": method,
    }))
}

/// Token figures of either codex notification, flattened.
fn usage(method: &str, params: &Value) -> Option<Map<String, Value>> {
    const KEYS: [(&str, &str); 5] = [
        ("total_tokens", "totalTokens"),
        ("input_tokens", "inputTokens"),
        ("cached_input_tokens", "cachedInputTokens"),
        ("output_tokens", "outputTokens"),
        ("reasoning_output_tokens", "reasoningOutputTokens"),
    ];
    let (total, last, window, camel) = if method == "codex/event/token_count" {
        let info = &params["msg"]["info"];
        if !info.is_object() {
            return None;
        }
        (
            &info["total_token_usage"],
            &info["last_token_usage"],
            &info["model_context_window"],
            false,
        )
    } else {
        let u = &params["tokenUsage"];
        if !u.is_object() {
            return None;
        }
        (&u["total"], &u["last"], &u["modelContextWindow"], true)
    };
    let mut out = Map::new();
    for (snake, cam) in KEYS {
        let k = if camel { cam } else { snake };
        out.insert(snake.into(), total[k].clone());
        out.insert(format!("last_{snake}"), last[k].clone());
    }
    out.insert("model_context_window".into(), window.clone());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: Origin = Origin {
        swarm_id: "s1",
        job_id: "j1",
        node_id: 3,
    };

    fn rpc(method: &str, params: Value) -> String {
        json!({"type": "codex_rpc", "job_id": "j1", "node_id": 3, "injection_id": "i1",
               "payload": {"method": method, "params": params}})
        .to_string()
    }

    fn one(line: &str) -> Event {
        match translate(line, &FROM) {
            Translated::Events(mut v) if v.len() == 1 => v.remove(0),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn the_mock_workers_records_map_to_the_documented_events() {
        let e = one(&rpc(
            "thread/status/changed",
            json!({"status": {"type": "active"}}),
        ));
        assert_eq!(
            (e.name.as_str(), &e.data["status"]["type"]),
            ("thread_status", &json!("active"))
        );
        assert_eq!(e.data["swarm_id"], "s1");
        assert_eq!(e.data["node_id"], 3);
        assert_eq!(e.data["injection_id"], "i1");
        assert_eq!(one(&rpc("turn/started", json!({}))).name, "turn_started");
        let e = one(&rpc(
            "codex/event/agent_message",
            json!({"msg": {"phase": "final_answer", "message": "R"}}),
        ));
        assert_eq!(e.name, "assistant");
        assert_eq!(e.data["content"], "R");
        assert_eq!(e.data["final_answer"], true);
        let e = one(&rpc(
            "codex/event/task_complete",
            json!({"msg": {"last_agent_message": "R"}}),
        ));
        assert_eq!(e.data["last_agent_message"], "R");
        assert_eq!(one(&rpc("turn/completed", json!({}))).name, "turn_complete");
        let e = one(&rpc(
            "codex/event/agent_message_content_delta",
            json!({"msg": {"delta": "par"}}),
        ));
        assert_eq!(
            (e.name.as_str(), e.data["content"].as_str()),
            ("assistant_delta", Some("par"))
        );
    }

    #[test]
    fn usage_and_approvals_are_normalised() {
        let e = one(&rpc(
            "thread/tokenUsage/updated",
            json!({"tokenUsage": {
            "total": {"totalTokens": 10, "inputTokens": 7}, "last": {"totalTokens": 3},
            "modelContextWindow": 1000}}),
        ));
        assert_eq!(
            (
                e.data["total_tokens"].clone(),
                e.data["last_total_tokens"].clone()
            ),
            (json!(10), json!(3))
        );
        assert_eq!(e.data["model_context_window"], 1000);
        let e = one(&rpc(
            "codex/event/token_count",
            json!({"msg": {"info": {
            "total_token_usage": {"total_tokens": 5}, "last_token_usage": {}}}}),
        ));
        assert_eq!(e.data["total_tokens"], 5);
        assert_eq!(
            translate(
                &rpc("codex/event/token_count", json!({"msg": {"info": null}})),
                &FROM
            ),
            Translated::Events(vec![])
        );
        let line = json!({"type": "codex_rpc", "job_id": "j1", "payload": {"id": 7,
            "method": "execCommandApproval", "params": {"callId": "c9", "command": ["rm", "x"], "cwd": "/w"}}}).to_string();
        let e = one(&line);
        assert_eq!(e.name, "exec_approval_required");
        assert_eq!(
            (e.data["approval_id"].clone(), e.data["call_id"].clone()),
            (json!("7"), json!("c9"))
        );
        assert_eq!(e.data["available_decisions"][0], "approved");
    }

    #[test]
    fn bad_and_foreign_records_are_dropped_by_kind() {
        assert_eq!(
            translate("{not json", &FROM),
            Translated::Dropped(Drop::Malformed)
        );
        assert_eq!(
            translate("[1]", &FROM),
            Translated::Dropped(Drop::Malformed)
        );
        assert_eq!(
            translate("{\"x\":1}", &FROM),
            Translated::Dropped(Drop::Malformed)
        );
        assert_eq!(
            translate("{\"type\":\"mystery\"}", &FROM),
            Translated::Dropped(Drop::Unknown)
        );
        assert_eq!(
            translate(&rpc("who/knows", json!({})), &FROM),
            Translated::Dropped(Drop::Unknown)
        );
        assert_eq!(
            translate("{\"type\":\"start\",\"job_id\":\"other\"}", &FROM),
            Translated::Dropped(Drop::ForeignJob)
        );
        assert_eq!(
            translate("{\"type\":\"worker_trace\"}", &FROM),
            Translated::Skip
        );
        let spoof =
            json!({"type": "worker_event", "event": "swarm_terminated", "payload": {}}).to_string();
        assert_eq!(translate(&spoof, &FROM), Translated::Dropped(Drop::Unknown));
        let e = one(
            &json!({"type": "worker_event", "event": "assistant", "payload": {"content": "x",
            "swarm_id": "forged"}})
            .to_string(),
        );
        assert_eq!(e.data["swarm_id"], "s1");
        let e = one("{\"type\":\"worker_error\",\"error\":\"boom\"}");
        assert_eq!(
            (e.name.as_str(), e.data["message"].as_str()),
            ("agent_error", Some("boom"))
        );
    }
}
