//! HTTP (op 0x50): outbound HTTP requests for agents, through `ureq` (no shell, no curl), on
//! the HTTP service's own threads.
//!
//! Safety rules: the URL is parsed properly (http/https only, no credentials in the authority)
//! and its host matched against the caller's allow-list (exact name or `*.suffix`) with the
//! method checked against `http_methods`, before anything is sent. Redirects are followed by
//! hand, so the same check runs again on every hop; a hop to a host that is not allowed is
//! refused. Responses are read up to `http.max_response_bytes` (the reply says `truncated`),
//! and bodies that are not UTF-8 come back base64 with `encoding: "base64"`.

use crate::kernel::asyncq::ReplyTo;
use crate::kernel::perms::Permissions;
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use crate::kernel::{Call, CallRecord, Kernel, access};
use base64::Engine;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use ureq::http;

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Largest response body returned; the rest is cut and the reply says `truncated: true`.
    pub max_response_bytes: Option<u64>,
    pub default_timeout_secs: Option<f64>,
    pub max_timeout_secs: Option<f64>,
    pub connect_timeout_secs: Option<f64>,
    /// Redirect hops followed (each one re-checked against the allow-list).
    pub max_redirects: Option<u32>,
    /// Threads making HTTP requests.
    pub threads: Option<usize>,
    /// Requests waiting for a thread; more are refused.
    pub queue: Option<usize>,
    /// PEM bundle of extra trusted CAs (a site-internal CA), added to the public roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Most headers one request may set.
    pub max_headers: Option<usize>,
}

/// The validated `[http]` section.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_response_bytes: u64,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_redirects: u32,
    pub threads: usize,
    pub queue: usize,
    /// Extra trusted CAs from `http.ca_file`.
    pub ca: Option<crate::tls::CaBundle>,
    /// Most headers one request may set (`http.max_headers`).
    pub max_headers: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig::from_raw(&RawHttp::default(), &mut Vec::new())
    }
}

impl HttpConfig {
    /// Validates the section, adding any problems to `errors`.
    pub fn from_raw(r: &RawHttp, errors: &mut Vec<String>) -> HttpConfig {
        let mut secs = |name: &str, v: Option<f64>, default: f64| match v {
            None => Duration::from_secs_f64(default),
            Some(x) if x.is_finite() && x > 0.0 && x <= 86400.0 => Duration::from_secs_f64(x),
            Some(x) => {
                errors.push(format!(
                    "http.{name}: {x} must be a number of seconds in (0, 86400]"
                ));
                Duration::from_secs_f64(default)
            }
        };
        let default_timeout = secs("default_timeout_secs", r.default_timeout_secs, 30.0);
        let max_timeout = secs("max_timeout_secs", r.max_timeout_secs, 300.0);
        let connect_timeout = secs("connect_timeout_secs", r.connect_timeout_secs, 10.0);
        if default_timeout > max_timeout {
            errors.push("http.default_timeout_secs is larger than http.max_timeout_secs".into());
        }
        let max_response_bytes = match r.max_response_bytes {
            None => 8 << 20,
            Some(n) if (1..=(1 << 30)).contains(&n) => n,
            Some(n) => {
                errors.push(format!(
                    "http.max_response_bytes: {n} must be between 1 and 1073741824"
                ));
                8 << 20
            }
        };
        let max_redirects = match r.max_redirects {
            None => 5,
            Some(n) if n <= 50 => n,
            Some(n) => {
                errors.push(format!("http.max_redirects: {n} must be at most 50"));
                5
            }
        };
        let mut count = |name: &str, v: Option<usize>, default: usize, max: usize| match v {
            None => default,
            Some(n) if (1..=max).contains(&n) => n,
            Some(n) => {
                errors.push(format!("http.{name}: {n} must be between 1 and {max}"));
                default
            }
        };
        let threads = count("threads", r.threads, 8, 512);
        let queue = count("queue", r.queue, 256, 1 << 20);
        let max_headers = count("max_headers", r.max_headers, 64, 1024);
        let ca = r
            .ca_file
            .as_deref()
            .and_then(|p| crate::tls::CaBundle::load(p, "http.ca_file", errors));
        HttpConfig {
            max_response_bytes,
            default_timeout,
            max_timeout,
            connect_timeout,
            max_redirects,
            threads,
            queue,
            ca,
            max_headers,
        }
    }
}

/// Methods the HTTP op knows.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// Headers a request may not set: the connection and framing are ours to manage, and `Host`
/// must be the URL's host, which is what the allow-list checked.
const FORBIDDEN_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];
#[derive(Deserialize)]
struct RawReq {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    body: Option<Value>,
    /// `base64` when `body` is base64-encoded bytes.
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    follow_redirects: Option<bool>,
    #[serde(rename = "async", default)]
    is_async: Option<Value>,
    #[serde(default)]
    request_id: Option<Value>,
}

/// A checked request, ready to send.
#[derive(Debug)]
struct Prepared {
    url: String,
    method: http::Method,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
    follow_redirects: bool,
    is_async: Option<Value>,
    request_id: Option<Value>,
}

/// A URL's parts that the checks need.
#[derive(Debug)]
pub struct Target {
    pub uri: http::Uri,
    /// Lower-case, without IPv6 brackets.
    pub host: String,
}

/// Parses an http(s) URL for sending: scheme, host, no user info.
pub fn parse_target(url: &str) -> Result<Target, String> {
    if let Some((scheme, _)) = url.split_once(':')
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !scheme.contains('.')
    {
        return Err(format!(
            "invalid URL {url:?}: scheme {scheme:?} is not supported (use http or https)"
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "invalid URL {url:?}: scheme {other:?} is not supported (use http or https)"
            ));
        }
        None => return Err(format!("invalid URL {url:?}: it needs http:// or https://")),
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("invalid URL {url:?}: no host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!(
            "invalid URL {url:?}: credentials in the URL are not supported; send an \
             Authorization header instead"
        ));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("invalid URL {url:?}: no host"));
    }
    Ok(Target { uri, host })
}

/// Resolves a `Location` header against the URL that sent it.
pub fn resolve_location(base: &http::Uri, location: &str) -> String {
    let location = location.split('#').next().unwrap_or("");
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    let has_scheme = location.split_once(':').is_some_and(|(s, rest)| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            && rest.starts_with("//")
    });
    if has_scheme {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if let Some(q) = location.strip_prefix('?') {
        format!("{scheme}://{authority}{}?{q}", base.path())
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    }
}

fn prepare(cfg: &HttpConfig, payload: &[u8]) -> Result<Prepared, String> {
    let raw: RawReq = parse(payload)?;
    let method_text = raw.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    if !METHODS.contains(&method_text.as_str()) {
        return Err(format!(
            "invalid request: field `method`: unknown HTTP method {method_text:?} (known: {})",
            METHODS.join(", ")
        ));
    }
    let method = http::Method::from_bytes(method_text.as_bytes())
        .map_err(|e| format!("invalid request: field `method`: {e}"))?;
    parse_target(&raw.url)?;
    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        if headers.len() >= cfg.max_headers {
            return Err(format!(
                "invalid request: field `headers`: at most {} headers (http.max_headers)",
                cfg.max_headers
            ));
        }
        let value = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(format!(
                    "invalid request: field `headers.{name}`: expected a string, got {other}"
                ));
            }
        };
        let hn = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid request: header name {name:?} is not valid"))?;
        if FORBIDDEN_HEADERS.contains(&hn.as_str()) {
            return Err(format!(
                "invalid request: header {name:?} cannot be set; clove manages it"
            ));
        }
        let hv = http::HeaderValue::from_str(&value)
            .map_err(|_| format!("invalid request: header {name:?} has an invalid value"))?;
        headers.push((hn, hv));
    }
    let body = match (raw.body, raw.encoding.as_deref()) {
        (None | Some(Value::Null), _) => None,
        (Some(Value::String(s)), Some("base64")) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| format!("invalid request: field `body` is not valid base64: {e}"))?,
        ),
        (Some(_), Some(enc)) if enc != "utf8" && enc != "utf-8" => {
            return Err(format!(
                "invalid request: field `encoding`: {enc:?} must be \"utf8\" or \"base64\""
            ));
        }
        (Some(Value::String(s)), _) => Some(s.into_bytes()),
        (Some(other), _) => {
            // A JSON body: sent as JSON unless the caller chose a content type.
            if !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
                headers.push((
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                ));
            }
            Some(serde_json::to_vec(&other).map_err(|e| format!("cannot encode body: {e}"))?)
        }
    };
    if body.is_some() && (method == http::Method::GET || method == http::Method::HEAD) {
        return Err(format!(
            "invalid request: a {method} request cannot carry a body"
        ));
    }
    let timeout = match raw.timeout {
        None => cfg.default_timeout.min(cfg.max_timeout),
        Some(t) if t.is_finite() && t > 0.0 => {
            let t = Duration::from_secs_f64(t.min(1e9));
            if t > cfg.max_timeout {
                return Err(format!(
                    "timeout of {}s exceeds the maximum of {}s (http.max_timeout_secs)",
                    t.as_secs_f64(),
                    cfg.max_timeout.as_secs_f64()
                ));
            }
            t
        }
        Some(t) => {
            return Err(format!(
                "invalid request: field `timeout`: {t} must be a number of seconds above 0"
            ));
        }
    };
    Ok(Prepared {
        url: raw.url,
        method,
        headers,
        body,
        timeout,
        follow_redirects: raw.follow_redirects.unwrap_or(true),
        is_async: raw.is_async,
        request_id: raw.request_id,
    })
}

/// Where a finished request goes.
struct HttpJob {
    call: CallRecord,
    req: Prepared,
    perms: Arc<Permissions>,
    reply: ReplyTo,
}

/// The HTTP service: a bounded queue and a fixed set of threads.
pub struct HttpService {
    tx: Sender<HttpJob>,
    cfg: HttpConfig,
}

impl HttpService {
    /// Starts the HTTP threads. They hold only a weak reference to the kernel.
    pub fn start(kernel: &Arc<Kernel>, cfg: HttpConfig) -> std::io::Result<HttpService> {
        let (tx, rx) = bounded::<HttpJob>(cfg.queue);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(cfg.connect_timeout))
            .tls_config(crate::tls::tls_config(cfg.ca.as_ref()))
            .user_agent(concat!("clove/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        if let Some(ca) = &cfg.ca {
            log::info!(
                "http: trusting {} certificate(s) from {} besides the public roots",
                ca.len(),
                ca.path.display()
            );
        }
        for i in 0..cfg.threads {
            let rx: Receiver<HttpJob> = rx.clone();
            let k = Arc::downgrade(kernel);
            let agent = agent.clone();
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name(format!("clove-http-{i}"))
                .stack_size(1 << 20)
                .spawn(move || serve(&rx, &k, &agent, &cfg))?;
        }
        Ok(HttpService { tx, cfg })
    }

    /// HTTP (inline): check the request and the allow-list, then hand it to an HTTP thread.
    pub fn http_op(&self, k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
        match submit(self, k, call, payload) {
            Ok(o) => o,
            Err(e) => Outcome::Reply(error(e)),
        }
    }
}

fn serve(rx: &Receiver<HttpJob>, kernel: &Weak<Kernel>, agent: &ureq::Agent, cfg: &HttpConfig) {
    while let Ok(job) = rx.recv() {
        let Some(k) = kernel.upgrade() else {
            return;
        };
        let reply = bytes_of(execute(
            &k,
            &job.call.call(),
            &job.perms,
            agent,
            cfg,
            job.req,
        ));
        job.reply.deliver(&k, &reply);
    }
}

fn bytes_of(r: Result<Value, String>) -> Vec<u8> {
    match r {
        Ok(v) => to_bytes(&v),
        Err(e) => error(e),
    }
}

fn submit(svc: &HttpService, k: &Kernel, call: &Call, payload: &[u8]) -> Result<Outcome, String> {
    let mut req = prepare(&svc.cfg, payload)?;
    let perms = k.perms(call.caller);
    let target = parse_target(&req.url)?;
    if let Err(e) = perms.may_http(&target.host, req.method.as_str()) {
        access::blocked(k, call, &e);
        return Err(e);
    }
    let request_id = crate::kernel::asyncq::async_id(
        req.is_async.take(),
        req.request_id.take(),
        "http",
        call.caller,
    )?;
    // The reactor is the only sender, so room seen here is still there at `try_send`.
    if svc.tx.capacity().is_some_and(|cap| svc.tx.len() >= cap) {
        return Err(format!(
            "HTTP queue full ({} requests waiting, http.queue); try again later",
            svc.tx.len()
        ));
    }
    let (reply, outcome) = ReplyTo::for_inline(k, call, request_id)?;
    let job = HttpJob {
        call: CallRecord::of(call),
        req,
        perms,
        reply,
    };
    match svc.tx.try_send(job) {
        Ok(()) => Ok(outcome),
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            // An async request was accepted already (a result slot is reserved): the failure
            // is filed where the caller will look for it.
            job.reply
                .deliver(k, &error("HTTP queue full (http.queue); try again later"));
            Ok(outcome)
        }
    }
}

/// Sends the request, following redirects by hand with the allow-list checked on every hop.
fn execute(
    k: &Kernel,
    call: &Call,
    perms: &Permissions,
    agent: &ureq::Agent,
    cfg: &HttpConfig,
    req: Prepared,
) -> Result<Value, String> {
    let started = Instant::now();
    let deadline = started + req.timeout;
    let mut url = req.url;
    let mut target = parse_target(&url)?;
    let mut method = req.method;
    let mut body = req.body;
    let mut headers = req.headers;
    let mut hops: u32 = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out(req.timeout));
        }
        let mut b = http::Request::builder()
            .method(method.clone())
            .uri(target.uri.clone());
        for (n, v) in &headers {
            b = b.header(n, v);
        }
        let sent = match &body {
            Some(bytes) => b.body(bytes.clone()).map(|r| {
                let r = agent
                    .configure_request(r)
                    .timeout_global(Some(remaining))
                    .build();
                agent.run(r)
            }),
            None => b.body(()).map(|r| {
                let r = agent
                    .configure_request(r)
                    .timeout_global(Some(remaining))
                    .build();
                agent.run(r)
            }),
        }
        .map_err(|e| format!("cannot build the request: {e}"))?;
        let mut resp = sent.map_err(|e| send_error(e, &target.host, req.timeout))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if req.follow_redirects
            && matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
            && let Some(loc) = location
        {
            if hops >= cfg.max_redirects {
                return Err(format!(
                    "too many redirects (more than {}, http.max_redirects); last one to {loc}",
                    cfg.max_redirects
                ));
            }
            hops += 1;
            let next_url = resolve_location(&target.uri, &loc);
            let next = parse_target(&next_url).map_err(|e| format!("redirect refused: {e}"))?;
            // 303 always, and 301/302 after a POST (as browsers do), become GET without a body.
            if status.as_u16() == 303 && method != http::Method::HEAD
                || matches!(status.as_u16(), 301 | 302) && method == http::Method::POST
            {
                method = http::Method::GET;
                body = None;
                headers.retain(|(n, _)| n != http::header::CONTENT_TYPE);
            }
            if let Err(e) = perms.may_http(&next.host, method.as_str()) {
                let msg = format!("redirect from {url} to {next_url} refused: {e}");
                access::blocked(k, call, &msg);
                return Err(msg);
            }
            if next.host != target.host || next.uri.scheme() != target.uri.scheme() {
                // Credentials meant for one origin are not handed to another.
                headers
                    .retain(|(n, _)| n != http::header::AUTHORIZATION && n != http::header::COOKIE);
            }
            log::debug!(
                "http: caller={} redirect {} -> host {}",
                call.caller,
                status.as_u16(),
                next.host
            );
            url = next_url;
            target = next;
            continue;
        }
        let mut resp_headers = Map::new();
        for (n, v) in resp.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            match resp_headers.get_mut(n.as_str()) {
                Some(Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&v);
                }
                _ => {
                    resp_headers.insert(n.as_str().to_string(), v.into());
                }
            }
        }
        let (bytes, truncated) = if method == http::Method::HEAD {
            (Vec::new(), false)
        } else {
            crate::tls::read_capped(resp.body_mut(), cfg.max_response_bytes).map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    timed_out(req.timeout)
                } else {
                    format!("error reading the response from {}: {e}", target.host)
                }
            })?
        };
        let ok = status.as_u16() < 400;
        let mut reply = Map::new();
        reply.insert("success".into(), ok.into());
        reply.insert("status_code".into(), status.as_u16().into());
        reply.insert("headers".into(), Value::Object(resp_headers));
        match body_text(bytes, truncated) {
            Ok(text) => {
                reply.insert("body".into(), text.into());
            }
            Err(b64) => {
                reply.insert("body".into(), b64.into());
                reply.insert("encoding".into(), "base64".into());
            }
        }
        if truncated {
            reply.insert("truncated".into(), true.into());
        }
        reply.insert("url".into(), url.into());
        if hops > 0 {
            reply.insert("redirects".into(), hops.into());
        }
        reply.insert(
            "duration_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
        if !ok {
            reply.insert(
                "error".into(),
                format!(
                    "HTTP {}{}",
                    status.as_u16(),
                    status
                        .canonical_reason()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default()
                )
                .into(),
            );
        }
        return Ok(Value::Object(reply));
    }
}

/// The body as text if it is UTF-8 (a cut in the middle of a character is trimmed back when
/// the body was truncated), else as base64 (`Err`).
fn body_text(mut bytes: Vec<u8>, truncated: bool) -> Result<String, String> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let utf8 = e.utf8_error();
            bytes = e.into_bytes();
            if truncated && utf8.error_len().is_none() {
                bytes.truncate(utf8.valid_up_to());
                return String::from_utf8(bytes)
                    .map_err(|e| base64::engine::general_purpose::STANDARD.encode(e.as_bytes()));
            }
            Err(base64::engine::general_purpose::STANDARD.encode(&bytes))
        }
    }
}

fn timed_out(t: Duration) -> String {
    format!("timed out after {}", crate::clock::secs_text(t))
}

fn send_error(e: ureq::Error, host: &str, timeout: Duration) -> String {
    if let Some(why) = crate::tls::certificate_problem(&e) {
        return format!(
            "TLS certificate of {host} is not accepted: {why} (for a site-internal CA, set \
             http.ca_file)"
        );
    }
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) => {
            format!("cannot connect to {host}: connection timed out (http.connect_timeout_secs)")
        }
        ureq::Error::Timeout(_) => timed_out(timeout),
        ureq::Error::HostNotFound => format!("cannot resolve host {host}"),
        ureq::Error::Io(io) => format!("cannot reach {host}: {io}"),
        other => format!("request to {host} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("https://API.Example.org:8443/x?y").unwrap();
        assert_eq!(t.host, "api.example.org");
        assert_eq!(parse_target("http://[::1]:80/").unwrap().host, "::1");
        assert!(parse_target("ftp://h/").unwrap_err().contains("scheme"));
        assert!(parse_target("example.org/x").is_err());
        assert!(
            parse_target("http://allowed.org@evil.org/")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(parse_target("http://exa mple.org/").is_err());
    }

    #[test]
    fn locations() {
        let base: http::Uri = "http://a.org:81/d/e/f?q=1".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "https://b.org/x"),
            "https://b.org/x"
        );
        assert_eq!(resolve_location(&base, "//c.org/y"), "http://c.org/y");
        assert_eq!(resolve_location(&base, "/z#frag"), "http://a.org:81/z");
        assert_eq!(resolve_location(&base, "g"), "http://a.org:81/d/e/g");
        assert_eq!(resolve_location(&base, "?p=2"), "http://a.org:81/d/e/f?p=2");
    }

    #[test]
    fn requests_are_checked() {
        let cfg = HttpConfig::default();
        let ok = prepare(
            &cfg,
            br#"{"url":"http://h/","method":"post","body":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(ok.method, http::Method::POST);
        assert_eq!(ok.body.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert!(
            ok.headers
                .iter()
                .any(|(n, _)| n == http::header::CONTENT_TYPE)
        );
        for (bad, what) in [
            (
                r#"{"url":"http://h/","method":"BREW"}"#,
                "unknown HTTP method",
            ),
            (
                r#"{"url":"http://h/","headers":{"Host":"x"}}"#,
                "cannot be set",
            ),
            (
                r#"{"url":"http://h/","headers":{"a":"b\r\nc: d"}}"#,
                "invalid value",
            ),
            (r#"{"url":"http://h/","body":"x"}"#, "cannot carry a body"),
            (r#"{"url":"http://h/","timeout":100000}"#, "exceeds"),
            (r#"{"url":"file:///etc/passwd"}"#, "scheme"),
            (r#"{}"#, "url"),
        ] {
            let e = prepare(&cfg, bad.as_bytes()).unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn bodies() {
        assert_eq!(body_text(b"hi".to_vec(), false), Ok("hi".into()));
        assert_eq!(body_text(vec![0xff, 0], false), Err("/wA=".into()));
        // "é" is two bytes; a cut after the first one is trimmed, not base64'd.
        assert_eq!(body_text(vec![b'a', 0xc3], true), Ok("a".into()));
    }
}
