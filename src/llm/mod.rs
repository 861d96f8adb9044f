//! THINK: model backends behind a fair queue.
//!
//! Each configured model is a backend with its own [`FairQueue`] and its own threads (as many
//! as its `concurrency`), so model calls that take seconds never occupy the reactor or the
//! shared worker pool. The THINK handler runs inline on the reactor: it parses and checks the
//! request (permission `can_think`, the caller's LLM quota), then queues it and returns at once
//! (`Deferred` for a synchronous THINK, `accepted` for `"async": true`). A backend thread takes
//! requests round-robin across callers, calls the model with retries ([`transport`]), charges
//! the caller's quota with the usage the backend reported, and answers through the caller's
//! responder or files the result for ASYNC_POLL.

pub mod config;
pub mod gemini;
pub mod openai;
pub mod queue;
pub mod transport;

use crate::kernel::asyncq::ReplyTo;
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use crate::kernel::{Call, CallerId, Kernel, access};
use config::{LlmConfig, ModelConfig, Provider};
use parking_lot::{Condvar, Mutex};
use queue::{FairQueue, Refused};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A validated THINK request.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinkRequest {
    pub prompt: String,
    pub system_instruction: Option<String>,
    pub image: Option<Image>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub thinking_level: Option<ThinkingLevel>,
    pub tools: Vec<FunctionDecl>,
}

/// An image sent with the prompt: base64 data and its MIME type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub mime_type: String,
    pub data: String,
}

/// How hard the model should think: a level name (`low`, `high`, ...) or a token budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkingLevel {
    Named(String),
    Budget(u64),
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDecl {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

/// A function call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCall {
    pub id: Option<String>,
    pub name: String,
    pub arguments: Value,
}

/// What a backend answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinkOutput {
    pub content: String,
    pub function_calls: Vec<FunctionCall>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub model: String,
    pub finish_reason: Option<String>,
}

/// Most tools one THINK may declare.
const MAX_TOOLS: usize = 128;

#[derive(Deserialize)]
struct RawThink {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    system_instruction: Option<String>,
    #[serde(default)]
    image: Option<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    thinking_level: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(rename = "async", default)]
    is_async: Option<Value>,
    #[serde(default)]
    request_id: Option<Value>,
}

/// A parsed THINK payload.
#[derive(Debug)]
pub struct ParsedThink {
    pub request: ThinkRequest,
    /// The model asked for (`None`: the default).
    pub model: Option<String>,
    /// The `async` and `request_id` fields as sent (see [`crate::kernel::asyncq::async_id`]).
    pub is_async: Option<Value>,
    pub request_id: Option<Value>,
}

/// Parses and validates a THINK payload (one pass over the bytes: it may be a megabyte of
/// image, and this runs on the reactor thread).
pub fn parse_think(payload: &[u8]) -> Result<ParsedThink, String> {
    let raw: RawThink = parse(payload)?;
    let prompt = raw
        .prompt
        .ok_or("invalid request: missing field `prompt`")?;
    let image = match raw.image {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_image(v)?),
    };
    if prompt.trim().is_empty() && image.is_none() {
        return Err("invalid request: field `prompt` is empty".into());
    }
    if let Some(t) = raw.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(format!(
            "invalid request: field `temperature`: {t} must be between 0 and 2"
        ));
    }
    if raw.max_tokens == Some(0) {
        return Err("invalid request: field `max_tokens` must be at least 1".into());
    }
    let thinking_level = match raw.thinking_level {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 32 => {
            Some(ThinkingLevel::Named(s.to_ascii_lowercase()))
        }
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            Some(ThinkingLevel::Budget(n.as_u64().unwrap_or(0)))
        }
        Some(other) => {
            return Err(format!(
                "invalid request: field `thinking_level`: expected a level name such as \
                 \"low\" or \"high\", or a token budget, got {other}"
            ));
        }
    };
    let mut tools = Vec::new();
    for (i, t) in raw.tools.unwrap_or_default().into_iter().enumerate() {
        parse_tool(t, i, &mut tools)?;
        if tools.len() > MAX_TOOLS {
            return Err(format!(
                "invalid request: field `tools`: at most {MAX_TOOLS} functions"
            ));
        }
    }
    if let Some(m) = &raw.model
        && m.is_empty()
    {
        return Err("invalid request: field `model` is empty".into());
    }
    Ok(ParsedThink {
        request: ThinkRequest {
            prompt,
            system_instruction: raw.system_instruction.filter(|s| !s.is_empty()),
            image,
            temperature: raw.temperature,
            max_tokens: raw.max_tokens,
            thinking_level,
            tools,
        },
        model: raw.model,
        is_async: raw.is_async,
        request_id: raw.request_id,
    })
}

/// `image`: `{data, mime_type}` (also `mimeType`), a `data:` URL, or bare base64 (PNG, JPEG,
/// GIF and WebP are recognised from their first bytes).
fn parse_image(v: Value) -> Result<Image, String> {
    let (mime, data) = match v {
        Value::Object(mut o) => {
            let data = match o.remove("data") {
                Some(Value::String(s)) => s,
                _ => {
                    return Err(
                        "invalid request: field `image.data` must be a base64 string".into(),
                    );
                }
            };
            let mime = ["mime_type", "mimeType", "mime"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string));
            (mime, data)
        }
        Value::String(s) => match s.strip_prefix("data:") {
            Some(rest) => {
                let (head, data) = rest.split_once(',').ok_or(
                    "invalid request: field `image`: a data URL needs a comma before the data",
                )?;
                let mime = head
                    .strip_suffix(";base64")
                    .ok_or("invalid request: field `image`: only base64 data URLs are supported")?;
                (Some(mime.to_string()), data.to_string())
            }
            None => (None, s),
        },
        _ => {
            return Err(
                "invalid request: field `image`: expected {\"data\": base64, \"mime_type\": ...}"
                    .into(),
            );
        }
    };
    // Line-wrapped base64 is accepted; the common unwrapped case is not copied.
    let data = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        data.chars().filter(|c| !c.is_ascii_whitespace()).collect()
    } else {
        data
    };
    if data.is_empty()
        || !data.len().is_multiple_of(4)
        || !data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err("invalid request: field `image.data` is not valid base64".into());
    }
    let mime = match mime {
        Some(m) => m,
        None => sniff_image(&data).ok_or(
            "invalid request: field `image`: give `mime_type` (the image type could not be \
             recognised)",
        )?,
    };
    if !mime.starts_with("image/") || mime.len() > 64 {
        return Err(format!(
            "invalid request: field `image.mime_type`: {mime:?} is not an image type"
        ));
    }
    Ok(Image {
        mime_type: mime,
        data,
    })
}

fn sniff_image(b64: &str) -> Option<String> {
    use base64::Engine;
    let head = &b64[..b64.len().min(16)];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(head)
        .ok()?;
    let t = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(b"\xFF\xD8\xFF") {
        "image/jpeg"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        "image/webp"
    } else {
        return None;
    };
    Some(t.to_string())
}

/// One tool: `{name, description?, parameters?}`, OpenAI's `{type: "function", function:
/// {...}}`, or Gemini's `{functionDeclarations: [...]}`.
fn parse_tool(t: Value, i: usize, out: &mut Vec<FunctionDecl>) -> Result<(), String> {
    let Value::Object(mut o) = t else {
        return Err(format!(
            "invalid request: field `tools[{i}]` must be a function declaration object"
        ));
    };
    if let Some(Value::Array(decls)) = o
        .remove("functionDeclarations")
        .or_else(|| o.remove("function_declarations"))
    {
        for d in decls {
            parse_tool(d, i, out)?;
        }
        return Ok(());
    }
    if let Some(Value::Object(f)) = o.remove("function") {
        o = f;
    }
    let name = match o.get("name") {
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)) =>
        {
            s.clone()
        }
        _ => {
            return Err(format!(
                "invalid request: field `tools[{i}].name` must be a function name \
                 (letters, digits, _ - . :)"
            ));
        }
    };
    let parameters = match o.remove("parameters") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p),
        Some(_) => {
            return Err(format!(
                "invalid request: field `tools[{i}].parameters` must be a JSON schema object"
            ));
        }
    };
    out.push(FunctionDecl {
        name,
        description: o
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        parameters,
    });
    Ok(())
}

/// Where a finished THINK goes.
/// A queued THINK.
struct Job {
    req: ThinkRequest,
    reply: ReplyTo,
    queued_at: Instant,
}

struct Backend {
    cfg: ModelConfig,
    queue: Mutex<FairQueue<Job>>,
    ready: Condvar,
    agent: ureq::Agent,
}

/// The LLM service: one backend per configured model, each with its threads.
pub struct LlmService {
    config: LlmConfig,
    backends: Vec<Arc<Backend>>,
}

impl LlmService {
    /// Starts every backend's threads. They hold only a weak reference to the kernel.
    pub fn start(kernel: &Arc<Kernel>, config: LlmConfig) -> std::io::Result<LlmService> {
        let mut backends = Vec::new();
        for m in &config.models {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_connect(Some(config.connect_timeout))
                .tls_config(crate::tls::tls_config(m.ca.as_ref()))
                .max_idle_connections_per_host(m.concurrency.max(3))
                .max_idle_connections(m.concurrency.max(3) * 2)
                .user_agent(concat!("clove/", env!("CARGO_PKG_VERSION")))
                .build()
                .into();
            let b = Arc::new(Backend {
                cfg: m.clone(),
                queue: Mutex::new(FairQueue::new(config.queue_per_agent, config.max_queued)),
                ready: Condvar::new(),
                agent,
            });
            for i in 0..m.concurrency {
                let b = b.clone();
                let k = Arc::downgrade(kernel);
                let c = config.clone();
                std::thread::Builder::new()
                    .name(format!("clove-llm-{}-{i}", m.name))
                    .stack_size(1 << 20)
                    .spawn(move || serve(&b, &k, &c))?;
            }
            log::info!(
                "llm: model {:?} ({} {} at {}), {} concurrent calls, key {}",
                m.name,
                m.provider.name(),
                m.model,
                m.base_url,
                m.concurrency,
                if m.api_key.is_some() { "set" } else { "none" }
            );
            if let Some(ca) = &m.ca {
                log::info!(
                    "llm: model {:?} trusts {} certificate(s) from {} besides the public roots",
                    m.name,
                    ca.len(),
                    ca.path.display()
                );
            }
            backends.push(b);
        }
        if backends.is_empty() {
            log::info!("llm: no backend configured; THINK will explain how to configure one");
        } else {
            log::info!("llm: models from {}", config.source);
        }
        Ok(LlmService { config, backends })
    }

    /// Requests waiting for model `name` (all callers), for status and tests.
    pub fn queued(&self, name: &str) -> Option<usize> {
        self.backends
            .iter()
            .find(|b| b.cfg.name == name)
            .map(|b| b.queue.lock().len())
    }

    /// THINK (inline): check, queue, and answer later.
    pub fn think(&self, k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
        match self.submit(k, call, payload) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Reply(error(e)),
        }
    }

    fn submit(&self, k: &Kernel, call: &Call, payload: &[u8]) -> Result<Outcome, String> {
        let ParsedThink {
            request: req,
            model,
            is_async,
            request_id,
        } = parse_think(payload)?;
        let request_id =
            crate::kernel::asyncq::async_id(is_async, request_id, "think", call.caller)?;
        let svc = self;
        let idx = svc.config.select(model.as_deref())?;
        let perms = k.perms(call.caller);
        if !perms.can_think {
            let e = "permission denied: this caller may not use THINK (can_think is false)";
            access::blocked(k, call, e);
            return Err(e.into());
        }
        if let Err(e) = access::check_quota(k, call.caller) {
            access::blocked(k, call, &e);
            return Err(e);
        }
        let backend = &svc.backends[idx];
        let mut q = backend.queue.lock();
        if let Err(r) = q.check(call.caller) {
            return Err(refused(r, &q, &backend.cfg.name));
        }
        let (reply, outcome) = ReplyTo::for_inline(k, call, request_id)?;
        let job = Job {
            req,
            reply,
            queued_at: Instant::now(),
        };
        if q.push(call.caller, job).is_err() {
            // `check` above said there was room and the lock is held: cannot happen.
            return Err("internal error: THINK queue refused a request it had room for".into());
        }
        drop(q);
        backend.ready.notify_one();
        log::debug!(
            "think: caller={} queued for model {:?}",
            call.caller,
            backend.cfg.name
        );
        Ok(outcome)
    }
}

fn refused(r: Refused, q: &FairQueue<Job>, model: &str) -> String {
    match r {
        Refused::CallerFull => format!(
            "THINK queue full: this agent already has {} requests waiting for model {model:?} \
             (llm.queue_per_agent); wait for answers before sending more",
            q.per_caller()
        ),
        Refused::TotalFull => format!(
            "THINK queue full: {} requests are waiting for model {model:?} (llm.max_queued); \
             try again later",
            q.total()
        ),
    }
}

/// A backend thread: take the next request round-robin, run it, answer; forever.
fn serve(b: &Backend, kernel: &Weak<Kernel>, cfg: &LlmConfig) {
    loop {
        let (caller, job) = {
            let mut q = b.queue.lock();
            loop {
                if let Some(next) = q.pop() {
                    break next;
                }
                b.ready.wait(&mut q);
            }
        };
        let Some(k) = kernel.upgrade() else {
            return;
        };
        run_job(&k, b, cfg, caller, job);
    }
}

fn run_job(k: &Kernel, b: &Backend, cfg: &LlmConfig, caller: CallerId, job: Job) {
    if !k.is_caller(caller) {
        log::debug!("think: caller={caller} went away; dropping its queued request");
        return;
    }
    let waited = job.queued_at.elapsed();
    let started = Instant::now();
    let result = access::check_quota(k, caller).and_then(|()| call_model(b, cfg, &job.req));
    let reply = match result {
        Ok(out) => {
            let charge = access::charge(k, caller, out.total_tokens);
            log::info!(
                "think: caller={caller} model={:?} tokens={} in {}ms (queued {}ms)",
                b.cfg.name,
                out.total_tokens,
                started.elapsed().as_millis(),
                waited.as_millis()
            );
            success_reply(b, &out, charge, waited, started.elapsed())
        }
        Err(e) => {
            log::info!("think: caller={caller} model={:?} failed: {e}", b.cfg.name);
            let mut r = Map::new();
            r.insert("success".into(), false.into());
            r.insert("error".into(), e.into());
            r.insert("content".into(), "".into());
            r.insert("tokens".into(), 0.into());
            r.insert("model".into(), b.cfg.model.clone().into());
            r.insert("backend".into(), b.cfg.name.clone().into());
            to_bytes(&Value::Object(r))
        }
    };
    job.reply.deliver(k, &reply);
}

fn success_reply(
    b: &Backend,
    out: &ThinkOutput,
    charge: Option<access::Charge>,
    waited: Duration,
    took: Duration,
) -> Vec<u8> {
    let mut r = Map::new();
    r.insert("success".into(), true.into());
    r.insert("content".into(), out.content.clone().into());
    r.insert("tokens".into(), out.total_tokens.into());
    r.insert("model".into(), out.model.clone().into());
    r.insert("backend".into(), b.cfg.name.clone().into());
    r.insert(
        "usage".into(),
        json!({
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "total_tokens": out.total_tokens,
        }),
    );
    if !out.function_calls.is_empty() {
        let calls: Vec<Value> = out
            .function_calls
            .iter()
            .map(|c| {
                let mut v = json!({"name": c.name, "arguments": c.arguments});
                if let Some(id) = &c.id {
                    v["id"] = id.clone().into();
                }
                v
            })
            .collect();
        r.insert("function_calls".into(), Value::Array(calls));
    }
    if let Some(f) = &out.finish_reason {
        r.insert("finish_reason".into(), f.clone().into());
    }
    if let Some(c) = charge
        && c.exceeded
    {
        r.insert("quota_exceeded".into(), true.into());
    }
    r.insert("queue_ms".into(), (waited.as_millis() as u64).into());
    r.insert("duration_ms".into(), (took.as_millis() as u64).into());
    to_bytes(&Value::Object(r))
}

/// Calls the backend for `req` (with retries) and reads its answer.
fn call_model(b: &Backend, cfg: &LlmConfig, req: &ThinkRequest) -> Result<ThinkOutput, String> {
    let m = &b.cfg;
    let (url, headers, body) = match m.provider {
        Provider::OpenAi => (openai::url(m), openai::headers(m), openai::body(m, req)),
        Provider::Gemini => (
            gemini::url(m),
            gemini::headers(m),
            gemini::body(m, req).map_err(|e| format!("model {:?}: {e}", m.name))?,
        ),
    };
    let body = serde_json::to_vec(&body).map_err(|e| format!("cannot encode the request: {e}"))?;
    let policy = transport::RetryPolicy {
        max_retries: cfg.max_retries,
        initial: cfg.backoff_initial,
        max: cfg.backoff_max,
    };
    let answer = transport::post_json(
        &transport::Post {
            agent: &b.agent,
            url: &url,
            headers: &headers,
            body: &body,
            max_response_bytes: cfg.max_response_bytes,
            secret: m.api_key.as_ref().map(|k| k.expose()),
        },
        Instant::now() + m.timeout,
        m.timeout,
        &policy,
    )
    .map_err(|e| {
        format!(
            "model {:?}: {}{}",
            m.name,
            scrub(e.clone(), m),
            thinking_hint(m, req, &e)
        )
    })?;
    match m.provider {
        Provider::OpenAi => openai::parse(m, &answer),
        Provider::Gemini => gemini::parse(m, &answer),
    }
    .map_err(|e| format!("model {:?}: {}", m.name, scrub(e, m)))
}

/// For a backend that refused the request (400) over its thinking setting: what THINK's
/// `thinking_level` became on the wire, and that leaving it out is the fix. Models that do not
/// reason (OpenAI's gpt-4o family, for one) refuse `reasoning_effort` outright.
fn thinking_hint(m: &ModelConfig, req: &ThinkRequest, err: &str) -> String {
    let lower = err.to_ascii_lowercase();
    if req.thinking_level.is_none()
        || !lower.contains("answered 400")
        || !(lower.contains("reasoning") || lower.contains("thinking"))
    {
        return String::new();
    }
    let field = match m.provider {
        Provider::OpenAi => "reasoning_effort",
        Provider::Gemini => "generationConfig.thinkingConfig",
    };
    format!(
        " (THINK's thinking_level is sent to {} as {field}; leave thinking_level out for a \
         model that does not support it)",
        m.model
    )
}

/// Removes the model's key from a message that quotes backend text (an error page could echo
/// it), so it cannot reach a client or a log.
fn scrub(msg: String, m: &ModelConfig) -> String {
    match &m.api_key {
        Some(k) if k.expose().len() >= 4 && msg.contains(k.expose()) => {
            msg.replace(k.expose(), "<redacted>")
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_requests_are_validated() {
        let p = parse_think(br#"{"prompt":"hi","model":"x","temperature":0.2}"#).unwrap();
        assert_eq!(p.request.prompt, "hi");
        assert_eq!(p.model.as_deref(), Some("x"));
        assert_eq!(
            crate::kernel::asyncq::async_id(p.is_async, p.request_id, "t", 1),
            Ok(None)
        );
        let p = parse_think(br#"{"prompt":"hi","async":true,"request_id":5}"#).unwrap();
        assert_eq!(
            crate::kernel::asyncq::async_id(p.is_async, p.request_id, "t", 1),
            Ok(Some(json!(5)))
        );
        let p = parse_think(br#"{"prompt":"hi","async":true}"#).unwrap();
        let id = crate::kernel::asyncq::async_id(p.is_async, p.request_id, "t", 7)
            .unwrap()
            .unwrap();
        assert!(id.as_str().unwrap().starts_with("t-7-"), "{id}");
        let p = parse_think(br#"{"prompt":"hi","async":"yes"}"#).unwrap();
        assert!(crate::kernel::asyncq::async_id(p.is_async, p.request_id, "t", 1).is_err());
        for (bad, what) in [
            (r#"{}"#, "prompt"),
            (r#"{"prompt":" "}"#, "empty"),
            (r#"{"prompt":"a","temperature":3}"#, "temperature"),
            (r#"{"prompt":"a","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"a","image":{"data":"!!"}}"#, "base64"),
            (r#"{"prompt":"a","image":{"data":"AAAA"}}"#, "mime_type"),
            (
                r#"{"prompt":"a","image":{"data":"AAAA","mime_type":"text/x"}}"#,
                "image type",
            ),
            (
                r#"{"prompt":"a","tools":[{"name":"a b"}]}"#,
                "tools[0].name",
            ),
            (r#"{"prompt":"a","thinking_level":[1]}"#, "thinking_level"),
        ] {
            match parse_think(bad.as_bytes()) {
                Err(e) => assert!(e.contains(what), "{bad}: {e}"),
                Ok(_) => panic!("{bad} should fail"),
            }
        }
    }

    #[test]
    fn images_and_tools_in_every_form() {
        // A 1x1 PNG's first bytes.
        let png = "iVBORw0KGgoAAAANSUhEUgAAAAE=";
        let r = parse_think(format!(r#"{{"prompt":"p","image":"{png}"}}"#).as_bytes())
            .unwrap()
            .request;
        assert_eq!(r.image.unwrap().mime_type, "image/png");
        let r = parse_think(br#"{"prompt":"p","image":"data:image/jpeg;base64,AAAA"}"#)
            .unwrap()
            .request;
        assert_eq!(r.image.unwrap().mime_type, "image/jpeg");
        let r = parse_think(
            br#"{"prompt":"p","tools":[{"name":"a"},{"type":"function","function":{"name":"b",
            "parameters":{"type":"object"}}},{"functionDeclarations":[{"name":"c"},{"name":"d"}]}]}"#,
        )
        .unwrap()
        .request;
        let names: Vec<_> = r.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }
}
