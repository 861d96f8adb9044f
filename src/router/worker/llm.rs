//! `worker_mode = "llm"`: an OpenAI-compatible streaming chat-completions client. One
//! conversation per node, kept in the agent directory (`conversation.json`), so a restarted
//! worker continues it. Each streamed chunk is an `assistant_delta`; the reported usage becomes
//! a `usage` event; a failed request is an `agent_error` (with the key never quoted).
//!
//! The API key comes from `CLOVE_WORKER_API_KEY` (set by the provider from the daemon's own
//! `[llm]` key, only for the daemon's own backend, or from `llm_api_key_env`), else from
//! `llm_api_key_file`, else from `OPENAI_API_KEY`; never from a command line.

use super::{Turn, TurnCtx};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

/// Messages kept in a conversation (the oldest are dropped beyond it) and their bytes.
const MAX_MESSAGES: usize = 400;
const MAX_CONVERSATION_BYTES: usize = 8 << 20;
/// The answer kept per turn.
const MAX_ANSWER: usize = 16 << 20;
/// One SSE line at most (a longer one is an error).
const MAX_SSE_LINE: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
pub struct LlmSettings {
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub api_key_file: Option<String>,
}

fn api_key(s: &LlmSettings) -> Result<Option<String>, String> {
    if let Ok(k) = std::env::var("CLOVE_WORKER_API_KEY") {
        return Ok(Some(k));
    }
    if let Some(f) = &s.api_key_file {
        return std::fs::read_to_string(f)
            .map(|k| Some(k.trim().to_string()))
            .map_err(|e| format!("cannot read llm_api_key_file {f}: {e}"));
    }
    Ok(std::env::var("OPENAI_API_KEY").ok())
}

fn load_conversation(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
        .unwrap_or_default()
}

fn save_conversation(path: &Path, msgs: &mut Vec<Value>) {
    while msgs.len() > MAX_MESSAGES
        || (msgs.len() > 1 && Value::Array(msgs.clone()).to_string().len() > MAX_CONVERSATION_BYTES)
    {
        msgs.remove(0);
    }
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, Value::Array(msgs.clone()).to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Runs one turn; returns the full answer.
pub fn turn(ctx: &TurnCtx, t: &Turn) -> String {
    let inj = t.injection_id.as_str();
    let Some(s) = &ctx.settings.llm else {
        ctx.outbox.event(
            inj,
            "agent_error",
            json!({"message": "worker_mode llm has no model settings"}),
        );
        return String::new();
    };
    let key = match api_key(s) {
        Ok(k) => k,
        Err(e) => {
            ctx.outbox.event(inj, "agent_error", json!({"message": e}));
            return String::new();
        }
    };
    let conv_path = ctx.cwd.join("conversation.json");
    let mut msgs = load_conversation(&conv_path);
    msgs.push(json!({"role": "user", "content": t.prompt}));
    let mut full = String::new();
    match request(ctx, s, key.as_deref(), &msgs, inj, &mut full) {
        Ok(()) => msgs.push(json!({"role": "assistant", "content": full})),
        Err(e) => {
            let e = match &key {
                Some(k) if k.len() >= 4 => e.replace(k.as_str(), "<redacted>"),
                _ => e,
            };
            ctx.outbox.event(inj, "agent_error", json!({"message": e}));
        }
    }
    save_conversation(&conv_path, &mut msgs);
    full
}

fn request(
    ctx: &TurnCtx,
    s: &LlmSettings,
    key: Option<&str>,
    msgs: &[Value],
    inj: &str,
    full: &mut String,
) -> Result<(), String> {
    let mut body = json!({"model": s.model, "messages": msgs, "stream": true,
                          "stream_options": {"include_usage": true}});
    if let Some(m) = s.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if let Some(t) = s.temperature {
        body["temperature"] = json!(t);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(
            ctx.settings.command_timeout_secs.max(1),
        )))
        .tls_config(crate::tls::tls_config(None))
        .user_agent(concat!("clove-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let url = format!("{}/chat/completions", s.base_url.trim_end_matches('/'));
    let mut req = agent
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    if let Some(k) = key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let mut resp = req
        .send(body.to_string().as_bytes())
        .map_err(|e| format!("cannot reach the model at {url}: {e}"))?;
    let status = resp.status();
    let reader = resp.body_mut().as_reader();
    if !status.is_success() {
        let mut text = String::new();
        let _ = reader.take(64 * 1024).read_to_string(&mut text);
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().chars().take(500).collect());
        return Err(format!("the model answered {status}: {detail}"));
    }
    read_stream(ctx, reader, inj, full)
}

/// Reads server-sent events: a delta per content chunk, usage at the end, until `[DONE]`.
fn read_stream(
    ctx: &TurnCtx,
    reader: impl Read,
    inj: &str,
    full: &mut String,
) -> Result<(), String> {
    let mut r = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .by_ref()
            .take(MAX_SSE_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("error reading the model's stream: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && n as u64 >= MAX_SSE_LINE {
            return Err("the model's stream has a line longer than 4 MiB".into());
        }
        let text = String::from_utf8_lossy(&line);
        let Some(data) = text.trim_end().strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(());
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(e) = chunk["error"]["message"].as_str() {
            return Err(format!("the model reported an error: {e}"));
        }
        if let Some(delta) = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .filter(|d| !d.is_empty())
        {
            if full.len() + delta.len() <= MAX_ANSWER {
                full.push_str(delta);
            }
            ctx.outbox
                .event(inj, "assistant_delta", json!({"content": delta}));
        }
        let u = &chunk["usage"];
        if u.is_object() {
            ctx.outbox.event(
                inj,
                "usage",
                json!({
                    "total_tokens": u["total_tokens"],
                    "input_tokens": u["prompt_tokens"],
                    "cached_input_tokens": u["prompt_tokens_details"]["cached_tokens"],
                    "output_tokens": u["completion_tokens"],
                    "reasoning_output_tokens": u["completion_tokens_details"]["reasoning_tokens"],
                    "last_total_tokens": u["total_tokens"],
                    "last_input_tokens": u["prompt_tokens"],
                    "last_output_tokens": u["completion_tokens"],
                    "model_context_window": null,
                }),
            );
        }
    }
}
