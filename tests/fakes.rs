//! Fake servers for things outside the machine (LLM APIs, web servers): real HTTP/1.1 servers
//! on loopback that record every request they receive.
//!
//! [`FakeServer`] is the plain server: a handler closure decides each reply. [`FakeLlm`] puts an
//! OpenAI-compatible or Gemini-compatible API on top, answering in the real wire format with
//! fixed token usage, with a script of canned replies (429, 503, ...) served first and a gate
//! that holds requests until the test opens it.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What the fake sends back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Never answer; close the connection when the server stops (or after a minute).
    pub hang: bool,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: body.into(),
            hang: false,
        }
    }

    pub fn json(status: u16, v: &Value) -> Reply {
        Reply::new(status, serde_json::to_vec(v).unwrap())
            .header("Content-Type", "application/json")
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::new(200, "")
        }
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A real HTTP/1.1 server on 127.0.0.1 (keep-alive, one thread per connection), over TLS
/// when started with [`FakeServer::start_tls`].
pub struct FakeServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    scheme: &'static str,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeServer {
        FakeServer::start_with(None, handler)
    }

    /// An HTTPS server presenting `tls`'s certificate (see [`TestCa`]).
    pub fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        FakeServer::start_with(Some(tls), handler)
    }

    fn start_with(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let log = log.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (log, stop, handler) = (log.clone(), stop.clone(), handler.clone());
                    let tls = tls.clone();
                    std::thread::spawn(move || {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                        match tls {
                            None => serve_conn(conn, &log, &stop, &*handler),
                            Some(cfg) => {
                                let Ok(session) = rustls::ServerConnection::new(cfg) else {
                                    return;
                                };
                                let stream = rustls::StreamOwned::new(session, conn);
                                serve_conn(stream, &log, &stop, &*handler)
                            }
                        }
                    });
                }
            });
        }
        FakeServer {
            addr,
            log,
            stop,
            scheme,
        }
    }

    /// `http://127.0.0.1:PORT{path}` (`https://` for a TLS server).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            if Instant::now() > deadline {
                panic!("fake server got {} requests, expected {n}: {r:?}", r.len());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_conn(
    conn: impl Read + Write,
    log: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
    handler: &Handler,
) {
    let mut reader = BufReader::new(conn);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        log.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        if reply.hang {
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if req.method != "HEAD" {
            bytes.extend_from_slice(&reply.body);
        }
        let writer = reader.get_mut();
        if writer
            .write_all(&bytes)
            .and_then(|_| writer.flush())
            .is_err()
            || close
        {
            return;
        }
    }
}

fn read_request(r: &mut impl BufRead) -> Option<Recorded> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut body = Vec::new();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some(Recorded {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A gate requests wait at while it is closed.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }

    /// Waits while closed (a minute at most, so a failing test cannot hang forever).
    pub fn pass(&self) {
        let guard = self.closed.lock().unwrap();
        let _ = self
            .cv
            .wait_timeout_while(guard, Duration::from_secs(60), |closed| *closed)
            .unwrap();
    }
}

/// Which API a [`FakeLlm`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Gemini,
}

/// Usage every fake answer reports.
pub const PROMPT_TOKENS: u64 = 10;
pub const COMPLETION_TOKENS: u64 = 5;
pub const TOTAL_TOKENS: u64 = 15;

/// A fake model API: answers `echo: <prompt>`, or a call of the first declared tool when the
/// prompt contains `use a tool`.
pub struct FakeLlm {
    pub server: FakeServer,
    /// Replies served (in order) before the normal behaviour.
    pub script: Arc<Mutex<VecDeque<Reply>>>,
    pub gate: Arc<Gate>,
}

impl FakeLlm {
    /// `key`: when set, requests without it are refused with 401 as the real APIs do.
    pub fn start(api: Api, key: Option<&str>) -> FakeLlm {
        FakeLlm::start_with(api, key, None)
    }

    /// The same API over HTTPS, presenting `tls`'s certificate.
    pub fn start_tls(api: Api, key: Option<&str>, tls: Arc<rustls::ServerConfig>) -> FakeLlm {
        FakeLlm::start_with(api, key, Some(tls))
    }

    fn start_with(api: Api, key: Option<&str>, tls: Option<Arc<rustls::ServerConfig>>) -> FakeLlm {
        let script: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let gate: Arc<Gate> = Arc::default();
        let key = key.map(str::to_string);
        let (s, g) = (script.clone(), gate.clone());
        let server = FakeServer::start_with(tls, move |req| {
            g.pass();
            if let Some(r) = s.lock().unwrap().pop_front() {
                return r;
            }
            answer(api, key.as_deref(), req)
        });
        FakeLlm {
            server,
            script,
            gate,
        }
    }

    /// The base URL to configure: `.../v1` (OpenAI) or `.../v1beta` (Gemini).
    pub fn base_url(&self, api: Api) -> String {
        match api {
            Api::OpenAi => self.server.url("/v1"),
            Api::Gemini => self.server.url("/v1beta"),
        }
    }

    pub fn push(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    /// The user prompt of each request received, in order.
    pub fn prompts(&self) -> Vec<String> {
        self.server.requests().iter().map(prompt_of).collect()
    }
}

/// The user prompt text of a chat-completions or generateContent request.
pub fn prompt_of(r: &Recorded) -> String {
    let v = r.json();
    if let Some(msgs) = v["messages"].as_array() {
        let user = msgs.iter().rev().find(|m| m["role"] == "user").unwrap();
        return match &user["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
            other => panic!("odd content {other}"),
        };
    }
    v["contents"][0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("")
}

fn answer(api: Api, key: Option<&str>, req: &Recorded) -> Reply {
    let unauthorized = |msg: &str| {
        Reply::json(
            401,
            &json!({"error": {"message": msg, "type": "invalid_request_error", "code": 401}}),
        )
    };
    match api {
        Api::OpenAi => {
            if req.method != "POST" || req.path != "/v1/chat/completions" {
                return Reply::json(404, &json!({"error": {"message": "no such route"}}));
            }
            if let Some(k) = key
                && req.header("authorization") != Some(&format!("Bearer {k}"))
            {
                return unauthorized("Incorrect API key provided");
            }
        }
        Api::Gemini => {
            if req.method != "POST"
                || !req.path.starts_with("/v1beta/models/")
                || !req.path.ends_with(":generateContent")
            {
                return Reply::json(404, &json!({"error": {"message": "no such route"}}));
            }
            if let Some(k) = key
                && req.header("x-goog-api-key") != Some(k)
            {
                return unauthorized("API key not valid. Please pass a valid API key.");
            }
        }
    }
    let body = req.json();
    if let Some(refusal) = refuse_thinking(api, req, &body) {
        return refusal;
    }
    let prompt = prompt_of(req);
    match api {
        Api::OpenAi => {
            let model = body["model"].as_str().unwrap_or("?");
            let tool = body["tools"][0]["function"]["name"].as_str();
            let message = match tool {
                Some(t) if prompt.contains("use a tool") => json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": t, "arguments": "{\"city\":\"Paris\"}"}}],
                }),
                _ => json!({"role": "assistant", "content": format!("echo: {prompt}")}),
            };
            Reply::json(
                200,
                &json!({
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": PROMPT_TOKENS,
                              "completion_tokens": COMPLETION_TOKENS,
                              "total_tokens": TOTAL_TOKENS},
                }),
            )
        }
        Api::Gemini => {
            let tool = body["tools"][0]["functionDeclarations"][0]["name"].as_str();
            let parts = match tool {
                Some(t) if prompt.contains("use a tool") => {
                    json!([{"functionCall": {"name": t, "args": {"city": "Paris"}}}])
                }
                _ => json!([{"text": format!("echo: {prompt}")}]),
            };
            let model = req
                .path
                .trim_start_matches("/v1beta/models/")
                .trim_end_matches(":generateContent");
            Reply::json(
                200,
                &json!({
                    "candidates": [{"content": {"role": "model", "parts": parts},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": PROMPT_TOKENS,
                                      "candidatesTokenCount": COMPLETION_TOKENS,
                                      "totalTokenCount": TOTAL_TOKENS},
                    "modelVersion": model,
                }),
            )
        }
    }
}

/// The 400s the real APIs give for a thinking setting the model cannot take:
/// - OpenAI refuses `reasoning_effort` for models that do not reason (the gpt-4o and gpt-4.1
///   families, gpt-3.5) and values outside its list for the others;
/// - Gemini refuses `thinkingLevel` for 2.x models (they take `thinkingBudget`), a level outside
///   its list for 3.x, both fields at once, and a budget outside the model's range (2.5 Pro
///   cannot turn thinking off).
fn refuse_thinking(api: Api, req: &Recorded, body: &Value) -> Option<Reply> {
    match api {
        Api::OpenAi => {
            let effort = body.get("reasoning_effort")?;
            let model = body["model"].as_str().unwrap_or("");
            let message = if ["gpt-4", "gpt-3.5", "chatgpt-4o"]
                .iter()
                .any(|p| model.starts_with(p))
            {
                "Unsupported parameter: 'reasoning_effort' is not supported with this model."
                    .to_string()
            } else if !["none", "minimal", "low", "medium", "high", "xhigh"]
                .contains(&effort.as_str().unwrap_or(""))
            {
                format!(
                    "Invalid value: {effort}. Supported values are: 'none', 'minimal', 'low', \
                     'medium', 'high' and 'xhigh'."
                )
            } else {
                return None;
            };
            Some(Reply::json(
                400,
                &json!({"error": {"message": message, "type": "invalid_request_error",
                                  "param": "reasoning_effort", "code": "unsupported_parameter"}}),
            ))
        }
        Api::Gemini => {
            let cfg = body.pointer("/generationConfig/thinkingConfig")?;
            let model = req
                .path
                .trim_start_matches("/v1beta/models/")
                .trim_end_matches(":generateContent");
            let major: u32 = model
                .strip_prefix("gemini-")
                .and_then(|r| r.split(['.', '-']).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (level, budget) = (cfg.get("thinkingLevel"), cfg.get("thinkingBudget"));
            let message = if level.is_some() && budget.is_some() {
                "You can only set only one of thinking budget and thinking level.".to_string()
            } else if level.is_some() && major < 3 {
                "Thinking level is not supported for this model.".to_string()
            } else if let Some(l) = level
                && !["minimal", "low", "medium", "high"].contains(&l.as_str().unwrap_or(""))
            {
                format!("Invalid value at 'generation_config.thinking_config.thinking_level' ({l})")
            } else if let Some(b) = budget.and_then(Value::as_i64)
                && major == 2
            {
                let (min, max, off) = if model.contains("pro") {
                    (128, 32768, false)
                } else if model.contains("lite") {
                    (512, 24576, true)
                } else {
                    (1, 24576, true)
                };
                if b == 0 && !off {
                    "Budget 0 is invalid. This model only works in thinking mode.".to_string()
                } else if b != -1 && b != 0 && !(min..=max).contains(&b) {
                    format!(
                        "The thinking budget {b} is invalid. Please choose a value between {min} \
                         and {max}."
                    )
                } else {
                    return None;
                }
            } else {
                return None;
            };
            Some(Reply::json(
                400,
                &json!({"error": {"code": 400, "message": message,
                                  "status": "INVALID_ARGUMENT"}}),
            ))
        }
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`, made
/// with the `openssl` command in a temporary directory (removed on drop).
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM): what a `ca_file` points at.
    pub ca_pem: PathBuf,
    /// Server side TLS settings presenting the signed certificate.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("clove-test-ca")
            .tempdir_in("/tmp")
            .unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
        )
        .unwrap();
        // Each CA gets its own name: certificates are matched to their issuer by name.
        let cn = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";
        openssl(
            dir.path(),
            &format!("req -x509 {ec} -keyout ca.key -out ca.pem -subj /CN={cn}"),
        );
        openssl(
            dir.path(),
            &format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost"),
        );
        openssl(
            dir.path(),
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
             -out server.pem -extfile ext.cnf",
        );
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(p("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(p("server.key")).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        TestCa {
            ca_pem: p("ca.pem"),
            dir,
            server: Arc::new(server),
        }
    }
}

/// Runs `openssl` with `args` (split on whitespace) in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port on 127.0.0.1 where connecting hangs: a listener with a backlog of 0 whose one queued
/// connection is never accepted, so the kernel drops further SYNs and a client's connect waits
/// until its own connect timeout.
pub struct Unanswered {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: TcpStream,
}

impl Unanswered {
    pub fn start() -> Unanswered {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) again on our own listening socket, to shrink its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = listener.local_addr().unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        // The mechanism itself, checked: a further connect must hang.
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "a full accept queue should make connect hang here, got {probe:?}"
        );
        Unanswered {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// `t` as an HTTP date (RFC 9110 IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`), as servers
/// send in `Retry-After`.
pub fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a time after 1970")
        .as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 1970-01-01 was a Thursday.
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn http_dates_are_formatted_like_servers_send_them() {
    let t = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(s);
    assert_eq!(http_date(t(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(t(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(t(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
}

#[test]
fn the_fake_apis_refuse_thinking_settings_as_the_real_ones_do() {
    let post = |fake: &FakeLlm, path: &str, body: &Value| -> u16 {
        let body = serde_json::to_vec(body).unwrap();
        let mut s = TcpStream::connect(fake.server.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply[9..12].parse().unwrap()
    };
    let g = FakeLlm::start(Api::Gemini, None);
    let ask = |thinking: Value| {
        json!({"contents": [{"parts": [{"text": "p"}]}],
               "generationConfig": {"thinkingConfig": thinking}})
    };
    let path = |m: &str| format!("/v1beta/models/{m}:generateContent");
    let level = ask(json!({"thinkingLevel": "low"}));
    assert_eq!(post(&g, &path("gemini-2.5-flash"), &level), 400);
    assert_eq!(post(&g, &path("gemini-3-pro-preview"), &level), 200);
    let off = ask(json!({"thinkingBudget": 0}));
    assert_eq!(post(&g, &path("gemini-2.5-pro"), &off), 400);
    assert_eq!(post(&g, &path("gemini-2.5-flash"), &off), 200);
    let o = FakeLlm::start(Api::OpenAi, None);
    let chat = |model: &str| {
        json!({"model": model, "reasoning_effort": "low",
               "messages": [{"role": "user", "content": "p"}]})
    };
    assert_eq!(post(&o, "/v1/chat/completions", &chat("gpt-4o-mini")), 400);
    assert_eq!(post(&o, "/v1/chat/completions", &chat("o4-mini")), 200);
}
