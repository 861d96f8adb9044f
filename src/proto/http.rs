//! HTTP/1.1 on the relay listener: request heads, query strings, response heads, and the
//! WebSocket handshake key. No I/O: everything works on byte slices and `Vec`s.
//!
//! [`parse_head`] follows the codec contract used across `proto`: `Ok(None)` means the head is
//! not complete yet, `Ok(Some(head))` is a complete head (with [`RequestHead::head_len`], the
//! bytes it used), and `Err` is a request to refuse with [`HeadError::status`] before closing.
//! The head size and header count are bounded ([`HeadLimits`]); only the headers the relay
//! needs are kept, in a small owned [`RequestHead`].
//!
//! Bodies: only `Content-Length` bodies are accepted, up to [`HeadLimits::max_body`]. A chunked
//! body is refused with 411 Length Required (the client can resend with a length: browsers
//! and socket.io-client always send one for polling POSTs), any other transfer coding with 501,
//! and a request with several `Content-Length` headers, or with both headers, with 400, since
//! those are the classic request-smuggling shapes.
//!
//! # WebSocket without giving tungstenite the socket
//!
//! The reactor owns every socket, so tungstenite never sees one. After the upgrade response
//! (see [`RequestHead::websocket_accept`] and [`write_switching_protocols`]) the connection
//! keeps a `tungstenite::WebSocket<MemoryStream>` built with `WebSocket::from_raw_socket(..,
//! Role::Server, Some(config))`. [`MemoryStream`] is a pair of byte buffers: the reactor
//! [`feed`](MemoryStream::feed)s bytes it read from the socket, calls `ws.read()` until it
//! returns `Io(WouldBlock)` (the input is empty), queues outgoing messages with `ws.write()` +
//! `ws.flush()`, and writes [`output`](MemoryStream::output) to the socket, dropping what
//! the socket took with [`consume_output`](MemoryStream::consume_output). Write interest is
//! wanted while output is pending. When the output reaches its cap, `MemoryStream` answers
//! `WouldBlock`, tungstenite keeps the frame in its own bounded buffer, and the reactor stops
//! reading from that client (back-pressure). Bytes that arrived after the upgrade head in the
//! same read are fed before the first `read()`. Pong and close replies are queued by
//! tungstenite itself during `read()`, so the reactor flushes after reading too. After a close
//! handshake `read()` / `flush()` answer `ConnectionClosed`: write out what is left in the
//! output, then close the socket.
//!
//! Use a small `WebSocketConfig::read_buffer_size` (the default 128 KiB is allocated per
//! connection) and set `max_message_size` / `max_frame_size` to the Engine.IO `maxPayload`.
//! Only tungstenite's `handshake` feature is enabled, for `derive_accept_key`; the frame codec
//! needs no feature at all. The unit test `websocket_over_memory_buffers` proves the approach.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Default cap on a request head (16 KiB, as Node's HTTP server).
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;
/// Default cap on the number of headers in a request.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Hard ceiling on [`HeadLimits::max_headers`]: the header table lives on the stack.
pub const MAX_HEADERS_CEILING: usize = 128;
/// Default cap on a request body (1,000,000 bytes, Engine.IO's default `maxHttpBufferSize`).
pub const DEFAULT_MAX_BODY: u64 = 1_000_000;
/// Most `key=value` pairs [`Query::parse`] accepts.
pub const MAX_QUERY_PAIRS: usize = 64;

/// Size limits for [`parse_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes in a request head, request line and final blank line included.
    pub max_head: usize,
    /// Most header lines (capped at [`MAX_HEADERS_CEILING`]).
    pub max_headers: usize,
    /// Largest `Content-Length` accepted.
    pub max_body: u64,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head: DEFAULT_MAX_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Why a request is refused. The caller answers with [`HeadError::status`] and closes the
/// connection: after a bad head the byte stream cannot be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than `max_head` or has more than `max_headers` headers (431).
    #[error("request head too large (at most {max_head} bytes and {max_headers} headers)")]
    HeadTooLarge { max_head: usize, max_headers: usize },
    /// Not HTTP/1.x syntax (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A header the relay needs is repeated (400).
    #[error("duplicate {0} header")]
    Duplicate(&'static str),
    /// A header the relay needs is not printable ASCII (400).
    #[error("invalid {0} header")]
    InvalidHeader(&'static str),
    /// `Transfer-Encoding: chunked` (411: send a `Content-Length` instead).
    #[error("chunked request bodies are not supported; send Content-Length")]
    ChunkedBody,
    /// Some other transfer coding (501).
    #[error("unsupported transfer encoding")]
    UnsupportedTransferEncoding,
    /// The announced body is larger than `max_body` (413).
    #[error("request body of {len} bytes exceeds the maximum of {max} bytes")]
    BodyTooLarge { len: u64, max: u64 },
}

impl HeadError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::HeadTooLarge { .. } => 431,
            HeadError::Malformed(_) | HeadError::Duplicate(_) | HeadError::InvalidHeader(_) => 400,
            HeadError::ChunkedBody => 411,
            HeadError::UnsupportedTransferEncoding => 501,
            HeadError::BodyTooLarge { .. } => 413,
        }
    }
}

/// The request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    /// Any other token (kept for logs and a 405 answer).
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other(token) => token,
        }
    }
}

/// The tokens of the `Connection` header the server acts on (case-insensitive; all
/// `Connection` headers are combined).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

/// A parsed request head, owning only what the relay needs. Header values are trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The path, raw (not percent-decoded), always starting with `/`.
    pub path: String,
    /// The raw query string after `?` (empty when there is none); see [`Query::parse`].
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub host: Option<String>,
    /// The body length (0 when the header is absent: such a request has no body).
    pub content_length: u64,
    pub connection: ConnectionTokens,
    pub upgrade: Option<String>,
    pub sec_websocket_key: Option<String>,
    pub sec_websocket_version: Option<String>,
    pub origin: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// Bytes of the buffer the head used; the body (if any) starts there.
    pub head_len: usize,
}

impl RequestHead {
    /// Whether the connection may serve another request after this one.
    pub fn keep_alive(&self) -> bool {
        if self.connection.close {
            return false;
        }
        self.minor_version >= 1 || self.connection.keep_alive
    }

    /// Whether this is a WebSocket upgrade request (`GET`, `Connection: upgrade`,
    /// `Upgrade: websocket`). Check [`RequestHead::websocket_accept`] before switching.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.method == Method::Get
            && self.connection.upgrade
            && self.upgrade.as_deref().is_some_and(|u| {
                u.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
            })
    }

    /// Validates the WebSocket handshake headers and returns the `Sec-WebSocket-Accept`
    /// value. The key must be base64 of 16 bytes (RFC 6455 4.2.1) and the version 13.
    pub fn websocket_accept(&self) -> Result<String, WsHandshakeError> {
        match self.sec_websocket_version.as_deref() {
            Some("13") => {}
            _ => return Err(WsHandshakeError::UnsupportedVersion),
        }
        let key = self
            .sec_websocket_key
            .as_deref()
            .ok_or(WsHandshakeError::MissingKey)?;
        if !is_websocket_key(key) {
            return Err(WsHandshakeError::BadKey);
        }
        Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
    }
}

/// A key is 24 base64 characters ending in `==` (16 bytes); checked without decoding.
fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Why a WebSocket upgrade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsHandshakeError {
    /// No `Sec-WebSocket-Key` (400).
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    /// A key that is not base64 of 16 bytes (400).
    #[error("invalid Sec-WebSocket-Key")]
    BadKey,
    /// Not version 13 (426, with `Sec-WebSocket-Version: 13`).
    #[error("unsupported WebSocket version (only 13)")]
    UnsupportedVersion,
}

impl WsHandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            WsHandshakeError::MissingKey | WsHandshakeError::BadKey => 400,
            WsHandshakeError::UnsupportedVersion => 426,
        }
    }
}

/// Parses a request head at the front of `buf` (see the module doc for the contract).
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    let too_large = HeadError::HeadTooLarge {
        max_head: limits.max_head,
        max_headers: limits.max_headers,
    };
    let mut table = [httparse::EMPTY_HEADER; MAX_HEADERS_CEILING];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut req = httparse::Request::new(&mut table[..max_headers]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large),
        Err(e) => return Err(HeadError::Malformed(httparse_reason(e))),
    };
    if head_len > limits.max_head {
        return Err(too_large);
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let (path, query) = split_target(target)?;
    let mut head = RequestHead {
        method: Method::from_token(method),
        path: path.to_owned(),
        query: query.to_owned(),
        minor_version,
        host: None,
        content_length: 0,
        connection: ConnectionTokens::default(),
        upgrade: None,
        sec_websocket_key: None,
        sec_websocket_version: None,
        origin: None,
        authorization: None,
        content_type: None,
        head_len,
    };
    let framing = collect_headers(&mut head, req.headers)?;
    check_framing(&mut head, framing, limits)?;
    Ok(Some(head))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Version => "invalid HTTP version",
        _ => "invalid request line",
    }
}

/// Splits an origin-form target (`/path?query`); other forms are not served here.
fn split_target(target: &str) -> Result<(&str, &str), HeadError> {
    if !target.starts_with('/') {
        return Err(HeadError::Malformed(
            "request target must be an absolute path",
        ));
    }
    Ok(target.split_once('?').unwrap_or((target, "")))
}

/// The body-framing headers, checked once all headers are seen.
#[derive(Default)]
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: Option<String>,
}

fn collect_headers(
    head: &mut RequestHead,
    headers: &[httparse::Header<'_>],
) -> Result<Framing, HeadError> {
    let mut framing = Framing::default();
    for h in headers {
        let name = h.name;
        let slot = if name.eq_ignore_ascii_case("host") {
            (&mut head.host, "Host")
        } else if name.eq_ignore_ascii_case("upgrade") {
            (&mut head.upgrade, "Upgrade")
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            (&mut head.sec_websocket_key, "Sec-WebSocket-Key")
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            (&mut head.sec_websocket_version, "Sec-WebSocket-Version")
        } else if name.eq_ignore_ascii_case("origin") {
            (&mut head.origin, "Origin")
        } else if name.eq_ignore_ascii_case("authorization") {
            (&mut head.authorization, "Authorization")
        } else if name.eq_ignore_ascii_case("content-type") {
            (&mut head.content_type, "Content-Type")
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            (&mut framing.transfer_encoding, "Transfer-Encoding")
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = header_text(h.value, "Content-Length")?;
            if framing.content_length.is_some() {
                return Err(HeadError::Duplicate("Content-Length"));
            }
            framing.content_length = Some(parse_content_length(value)?);
            continue;
        } else if name.eq_ignore_ascii_case("connection") {
            add_connection_tokens(&mut head.connection, header_text(h.value, "Connection")?);
            continue;
        } else {
            continue;
        };
        set_once(slot.0, h.value, slot.1)?;
    }
    Ok(framing)
}

fn set_once(slot: &mut Option<String>, value: &[u8], name: &'static str) -> Result<(), HeadError> {
    if slot.is_some() {
        return Err(HeadError::Duplicate(name));
    }
    *slot = Some(header_text(value, name)?.to_owned());
    Ok(())
}

/// A header value as trimmed printable ASCII (obs-text bytes are refused for the headers
/// kept here; none of them legitimately carries any).
fn header_text<'a>(value: &'a [u8], name: &'static str) -> Result<&'a str, HeadError> {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(HeadError::InvalidHeader(name));
    }
    std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| HeadError::InvalidHeader(name))
}

/// Digits only: no sign, no spaces inside, no list (`5, 5` is a duplicate in disguise).
fn parse_content_length(value: &str) -> Result<u64, HeadError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::InvalidHeader("Content-Length"));
    }
    value
        .parse::<u64>()
        .map_err(|_| HeadError::InvalidHeader("Content-Length"))
}

fn add_connection_tokens(tokens: &mut ConnectionTokens, value: &str) {
    for token in value.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("close") {
            tokens.close = true;
        } else if token.eq_ignore_ascii_case("keep-alive") {
            tokens.keep_alive = true;
        } else if token.eq_ignore_ascii_case("upgrade") {
            tokens.upgrade = true;
        }
    }
}

fn check_framing(
    head: &mut RequestHead,
    framing: Framing,
    limits: &HeadLimits,
) -> Result<(), HeadError> {
    if head.minor_version >= 1 && head.host.is_none() {
        return Err(HeadError::Malformed("missing Host header"));
    }
    if let Some(te) = framing.transfer_encoding {
        if framing.content_length.is_some() {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return Err(if last.eq_ignore_ascii_case("chunked") {
            HeadError::ChunkedBody
        } else {
            HeadError::UnsupportedTransferEncoding
        });
    }
    let len = framing.content_length.unwrap_or(0);
    if len > limits.max_body {
        return Err(HeadError::BodyTooLarge {
            len,
            max: limits.max_body,
        });
    }
    head.content_length = len;
    Ok(())
}

/// Why a query string cannot be decoded (answer 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in query string")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("query string is not valid UTF-8")]
    InvalidUtf8,
    /// More than [`MAX_QUERY_PAIRS`] pairs.
    #[error("too many query parameters")]
    TooMany,
}

/// A decoded `application/x-www-form-urlencoded` query string, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes `raw` (without the `?`): pairs split on `&`, key and value on the first `=`,
    /// `+` is a space, `%XX` an escaped byte. Empty segments (`a=1&&b=2`) are skipped.
    pub fn parse(raw: &str) -> Result<Query, QueryError> {
        let mut pairs = Vec::new();
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            if pairs.len() == MAX_QUERY_PAIRS {
                return Err(QueryError::TooMany);
            }
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            pairs.push((
                percent_decode(key, true)?.into_owned(),
                percent_decode(value, true)?.into_owned(),
            ));
        }
        Ok(Query { pairs })
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_as_space`), borrowing when there is
/// nothing to decode.
pub fn percent_decode(s: &str, plus_as_space: bool) -> Result<Cow<'_, str>, QueryError> {
    if !s.bytes().any(|b| b == b'%' || (plus_as_space && b == b'+')) {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(QueryError::BadEscape);
                };
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| QueryError::InvalidUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Whether the connection stays open after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    KeepAlive,
    Close,
}

/// A response header name or value that would break the head (CR, LF, NUL, or an empty or
/// non-token name). Refused rather than sanitised, so header injection cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response header {name:?}")]
pub struct ResponseHeaderError {
    pub name: String,
}

/// Appends a response head: status line, `headers`, `Content-Length: body_len`, the
/// `Connection` header for `persist`, and the blank line. `out` is unchanged on error.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body_len: usize,
    persist: Persist,
) -> Result<(), ResponseHeaderError> {
    check_headers(headers)?;
    let connection = match persist {
        Persist::KeepAlive => "keep-alive",
        Persist::Close => "close",
    };
    push_status_line(out, status);
    push_headers(out, headers);
    push_header(out, "Content-Length", &body_len.to_string());
    push_header(out, "Connection", connection);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Appends the `101 Switching Protocols` head accepting a WebSocket upgrade, with `accept`
/// from [`RequestHead::websocket_accept`] and any `extra` headers.
pub fn write_switching_protocols(
    out: &mut Vec<u8>,
    accept: &str,
    extra: &[(&str, &str)],
) -> Result<(), ResponseHeaderError> {
    check_headers(&[("Sec-WebSocket-Accept", accept)])?;
    check_headers(extra)?;
    push_status_line(out, 101);
    push_header(out, "Upgrade", "websocket");
    push_header(out, "Connection", "Upgrade");
    push_header(out, "Sec-WebSocket-Accept", accept);
    push_headers(out, extra);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn check_headers(headers: &[(&str, &str)]) -> Result<(), ResponseHeaderError> {
    let bad_name = |n: &str| n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let bad_value = |v: &str| v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
    match headers.iter().find(|(n, v)| bad_name(n) || bad_value(v)) {
        Some((name, _)) => Err(ResponseHeaderError {
            name: (*name).to_owned(),
        }),
        None => Ok(()),
    }
}

fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
}

fn push_headers(out: &mut Vec<u8>, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        push_header(out, name, value);
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase for the statuses the relay sends (empty for others, which is valid).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// An in-memory `Read + Write` pair for driving `tungstenite::WebSocket` without a socket
/// (see the module doc). Reading an empty input and writing past `max_output` pending bytes
/// answer `WouldBlock`, exactly like a non-blocking socket.
#[derive(Debug, Clone)]
pub struct MemoryStream {
    input: Vec<u8>,
    read_pos: usize,
    output: Vec<u8>,
    max_output: usize,
}

impl MemoryStream {
    /// A stream whose pending output is capped at `max_output` bytes.
    pub fn new(max_output: usize) -> Self {
        MemoryStream {
            input: Vec::new(),
            read_pos: 0,
            output: Vec::new(),
            max_output,
        }
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.read_pos == self.input.len() {
            self.input.clear();
            self.read_pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// Input bytes not yet read by the WebSocket.
    pub fn pending_input(&self) -> usize {
        self.input.len() - self.read_pos
    }

    /// Bytes waiting to be written to the socket.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Drops the first `n` output bytes (those the socket accepted).
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// Takes all pending output.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }
}

impl io::Read for MemoryStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.input[self.read_pos..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.read_pos += n;
        if self.read_pos == self.input.len() {
            self.input.clear();
            self.read_pos = 0;
        }
        Ok(n)
    }
}

impl io::Write for MemoryStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.max_output.saturating_sub(self.output.len());
        if room == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = room.min(buf.len());
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tungstenite::protocol::{Role, WebSocket};
    use tungstenite::{Error as WsError, Message};

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_head(text.as_bytes(), &HeadLimits::default())
    }

    fn ok(text: &str) -> RequestHead {
        parse(text).unwrap().unwrap()
    }

    const POLL: &str = "POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\n\
        Host: localhost:8766\r\nContent-Type: text/plain;charset=UTF-8\r\n\
        Content-Length: 5\r\nOrigin: http://localhost:3000\r\n\r\n4hey!";

    #[test]
    fn parses_a_polling_post() {
        let head = ok(POLL);
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.path, "/socket.io/");
        assert_eq!(head.query, "EIO=4&transport=polling&sid=abc");
        assert_eq!(head.host.as_deref(), Some("localhost:8766"));
        assert_eq!(
            head.content_type.as_deref(),
            Some("text/plain;charset=UTF-8")
        );
        assert_eq!(head.origin.as_deref(), Some("http://localhost:3000"));
        assert_eq!(head.content_length, 5);
        assert_eq!(&POLL.as_bytes()[head.head_len..], b"4hey!");
        assert!(head.keep_alive());
        assert!(!head.is_websocket_upgrade());
    }

    #[test]
    fn every_prefix_of_a_head_needs_more() {
        let end = POLL.find("\r\n\r\n").unwrap() + 4;
        for n in 0..end {
            assert_eq!(parse(&POLL[..n]), Ok(None), "prefix {n}");
        }
        assert!(parse(&POLL[..end]).unwrap().is_some());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        let h = ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive());
        let h = ok("GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive());
        let h = ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive());
    }

    #[test]
    fn oversized_heads_map_to_431() {
        let limits = HeadLimits {
            max_head: 64,
            max_headers: 2,
            max_body: 10,
        };
        // Still incomplete but already past the limit: refused without waiting for the end.
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        let err = parse_head(long.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.status(), 431);
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_head(many.as_bytes(), &limits).unwrap_err().status(),
            431
        );
        let body = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            parse_head(body.as_bytes(), &limits),
            Err(HeadError::BodyTooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn malformed_heads_map_to_400() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            "GET http://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x03\x03",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}: {err}");
        }
        let latin1 = b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: http://\xe9\r\n\r\n";
        assert_eq!(
            parse_head(latin1, &HeadLimits::default()),
            Err(HeadError::InvalidHeader("Origin"))
        );
    }

    #[test]
    fn transfer_encodings_are_refused() {
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
        assert_eq!(parse(chunked), Err(HeadError::ChunkedBody));
        assert_eq!(HeadError::ChunkedBody.status(), 411);
        let gzip = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parse(gzip).unwrap_err().status(), 501);
    }

    #[test]
    fn websocket_upgrade_and_accept_key() {
        // The sample handshake of RFC 6455 section 1.3.
        let head = ok("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
            Host: server.example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
        assert!(head.is_websocket_upgrade());
        let accept = head.websocket_accept().unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut out = Vec::new();
        write_switching_protocols(&mut out, &accept, &[]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );

        let mut bad = head.clone();
        bad.sec_websocket_version = Some("8".into());
        assert_eq!(bad.websocket_accept().unwrap_err().status(), 426);
        bad = head.clone();
        bad.sec_websocket_key = Some("short==".into());
        assert_eq!(bad.websocket_accept(), Err(WsHandshakeError::BadKey));
        bad.sec_websocket_key = None;
        assert_eq!(bad.websocket_accept(), Err(WsHandshakeError::MissingKey));
        bad = head;
        bad.method = Method::Post;
        assert!(!bad.is_websocket_upgrade());
    }

    #[test]
    fn query_strings_are_percent_decoded() {
        let q = Query::parse("EIO=4&transport=polling&t=N8h%2Byd&name=a+b%20c&&flag").unwrap();
        assert_eq!(q.get("EIO"), Some("4"));
        assert_eq!(q.get("t"), Some("N8h+yd"));
        assert_eq!(q.get("name"), Some("a b c"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
        assert_eq!(q.pairs().len(), 5);
        assert_eq!(Query::parse("a=%4"), Err(QueryError::BadEscape));
        assert_eq!(Query::parse("a=%zz"), Err(QueryError::BadEscape));
        assert_eq!(Query::parse("a=%ff"), Err(QueryError::InvalidUtf8));
        assert_eq!(Query::parse(&"a&".repeat(65)), Err(QueryError::TooMany));
        assert!(matches!(
            percent_decode("plain", true),
            Ok(Cow::Borrowed("plain"))
        ));
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("%E2%82%AC", false).unwrap(), "€");
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            200,
            &[("Content-Type", "text/plain; charset=UTF-8")],
            2,
            Persist::KeepAlive,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n\
             Content-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
        let mut out = b"keep".to_vec();
        let injected = write_response_head(
            &mut out,
            400,
            &[("X-Origin", "a\r\nSet-Cookie: x")],
            0,
            Persist::Close,
        );
        assert!(injected.is_err());
        assert!(
            write_response_head(&mut out, 400, &[("Bad:Name", "v")], 0, Persist::Close).is_err()
        );
        assert_eq!(out, b"keep");
        let mut out = Vec::new();
        write_response_head(&mut out, 431, &[], 0, Persist::Close).unwrap();
        assert!(out.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(out.ends_with(b"Connection: close\r\n\r\n"));
    }

    /// Moves every byte each side wrote to the other side's input.
    fn pump(a: &mut WebSocket<MemoryStream>, b: &mut WebSocket<MemoryStream>) {
        let bytes = a.get_mut().take_output();
        b.get_mut().feed(&bytes);
        let bytes = b.get_mut().take_output();
        a.get_mut().feed(&bytes);
    }

    fn would_block<T: std::fmt::Debug>(r: Result<T, WsError>) -> bool {
        matches!(r, Err(WsError::Io(ref e)) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The approach the reactor will use: tungstenite's WebSocket over in-memory buffers,
    /// with the bytes between the two ends moved by hand, as the reactor moves them between
    /// the buffers and the socket.
    #[test]
    fn websocket_over_memory_buffers() {
        let config = tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let mut client =
            WebSocket::from_raw_socket(MemoryStream::new(1 << 16), Role::Client, Some(config));
        let mut server =
            WebSocket::from_raw_socket(MemoryStream::new(1 << 16), Role::Server, Some(config));

        // Nothing arrived yet: the server sees WouldBlock, as on a non-blocking socket.
        assert!(would_block(server.read()));

        client.send(Message::text("40")).unwrap();
        client.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        // Client frames are masked, so the wire bytes do not contain the text as is.
        assert!(!client.get_ref().output().windows(2).any(|w| w == b"40"));
        pump(&mut client, &mut server);
        assert_eq!(server.read().unwrap(), Message::text("40"));
        assert_eq!(
            server.read().unwrap(),
            Message::binary(vec![0u8, 1, 2, 255])
        );
        assert!(would_block(server.read()));

        server.send(Message::text("40{\"sid\":\"x\"}")).unwrap();
        server.send(Message::binary(vec![7u8; 300])).unwrap();
        pump(&mut client, &mut server);
        assert_eq!(client.read().unwrap(), Message::text("40{\"sid\":\"x\"}"));
        assert_eq!(client.read().unwrap(), Message::binary(vec![7u8; 300]));

        // Bytes may arrive one at a time: the frame is still reassembled.
        client.send(Message::text("42[\"chat\"]")).unwrap();
        let bytes = client.get_mut().take_output();
        for byte in &bytes[..bytes.len() - 1] {
            server.get_mut().feed(std::slice::from_ref(byte));
            assert!(would_block(server.read()));
        }
        server.get_mut().feed(&bytes[bytes.len() - 1..]);
        assert_eq!(server.read().unwrap(), Message::text("42[\"chat\"]"));

        // Close: the client starts, the server's read() sees it and queues the reply itself.
        client.close(None).unwrap();
        pump(&mut client, &mut server);
        assert!(matches!(server.read().unwrap(), Message::Close(_)));
        // Once the reply is written tungstenite reports the normal end of the connection; the
        // reactor then writes the remaining output and closes the socket.
        assert!(matches!(server.flush(), Err(WsError::ConnectionClosed)));
        assert!(!server.get_ref().output().is_empty(), "close reply queued");
        pump(&mut client, &mut server);
        // The client gets the reply as a close message; both ends are done writing.
        assert_eq!(client.read().unwrap(), Message::Close(None));
        assert!(!client.can_write() && !server.can_write());
        assert!(matches!(server.read(), Err(WsError::AlreadyClosed)));
    }

    #[test]
    fn memory_stream_applies_back_pressure() {
        use std::io::{Read, Write};
        let mut s = MemoryStream::new(4);
        assert_eq!(s.write(b"abcdef").unwrap(), 4);
        assert_eq!(s.write(b"g").unwrap_err().kind(), io::ErrorKind::WouldBlock);
        s.consume_output(3);
        assert_eq!(s.output(), b"d");
        assert_eq!(s.write(b"xyz").unwrap(), 3);
        let mut buf = [0u8; 8];
        assert_eq!(
            s.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        s.feed(b"hello");
        assert_eq!(s.read(&mut buf[..2]).unwrap(), 2);
        assert_eq!(s.pending_input(), 3);
        s.feed(b"!");
        assert_eq!(s.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"llo!");
        assert_eq!(s.pending_input(), 0);
    }

    proptest! {
        #[test]
        fn chunked_arrival_gives_the_same_head(split in 0usize..200) {
            let full = POLL.as_bytes();
            let at = split.min(full.len());
            let first = parse_head(&full[..at], &HeadLimits::default()).unwrap();
            let whole = parse_head(full, &HeadLimits::default()).unwrap().unwrap();
            if let Some(head) = first {
                prop_assert_eq!(head, whole);
            }
        }

        #[test]
        fn query_round_trips_through_percent_encoding(
            pairs in proptest::collection::vec(("[a-zA-Z0-9_]{1,8}", "\\PC{0,12}"), 0..10)
        ) {
            let raw: Vec<String> = pairs
                .iter()
                .map(|(k, v)| {
                    let enc: String = v
                        .bytes()
                        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                        .collect();
                    format!("{k}={enc}")
                })
                .collect();
            let q = Query::parse(&raw.join("&")).unwrap();
            let expect: Vec<(String, String)> = pairs.into_iter().collect();
            prop_assert_eq!(q.pairs(), &expect[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let limits = HeadLimits { max_head: 128, max_headers: 4, max_body: 100 };
            if let Ok(Some(head)) = parse_head(&bytes, &limits) {
                prop_assert!(head.head_len <= bytes.len());
                prop_assert!(head.content_length <= 100);
            }
        }
    }
}
