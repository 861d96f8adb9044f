//! The relay's front-end: HTTP/1.1 on the relay listener (keep-alive, `Content-Length`
//! bodies, bounded heads and bodies, clear 4xx answers), Engine.IO's two transports on
//! `/socket.io/`, the WebSocket upgrade, and the API routes. Sessions and everything above
//! Engine.IO packets are the relay service's ([`crate::relay`]).
//!
//! A connection is a small state machine: `Http` (request after request; a long-poll GET or
//! a request answered after a commit is *held*: later input waits until the answer is
//! queued), then possibly `Ws` (after a `101`, frames decoded by tungstenite over a
//! [`MemoryStream`]: the reactor owns the socket), and `Done` (closing). Output the relay
//! produces on other threads (events, answers to held requests) reaches the connection
//! through its [`Link`], i.e. the reactor's [`Outbox`]; output made here while processing
//! input is written straight into the connection's buffer.

use super::{ConnIo, Env, Outbox, Stop};
use crate::proto::engineio::{self, ErrorCode, Packet, Transport};
use crate::proto::http::{
    HeadLimits, MemoryStream, Persist, Query, RequestHead, parse_head, write_switching_protocols,
};
use crate::relay::api::ApiRequest;
use crate::relay::engine::{http_response, ws_close};
use crate::relay::{Link, PollGet, Relay};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// Bytes tungstenite reads at a time per connection. It allocates this much per connection
/// up front and the reads are copies from memory, so it is kept small: idle connections are
/// many (a larger message grows the buffer as needed).
const WS_READ_BUFFER: usize = 512;

/// A connection's way back, for the relay: the reactor's outbox, and whether the connection
/// holds a request whose answer is still to come.
struct ConnLink {
    outbox: Box<dyn Outbox>,
    held: AtomicBool,
}

impl Link for ConnLink {
    fn push(&self, bytes: Vec<u8>) {
        self.outbox.push(bytes);
    }

    fn push_close(&self, bytes: Vec<u8>) {
        self.outbox.push_close(bytes);
    }

    fn respond(&self, bytes: Vec<u8>, close: bool) {
        self.held.store(false, Ordering::Release);
        if close {
            self.outbox.push_close(bytes);
        } else {
            self.outbox.push(bytes);
        }
    }
}

enum ConnState {
    /// HTTP requests; `hold` names the session whose GET this connection holds.
    Http {
        hold: Option<String>,
    },
    Ws(Box<WsConn>),
    /// Closing: input is dropped.
    Done,
}

struct WsConn {
    ws: WebSocket<MemoryStream>,
    /// The Engine.IO session this WebSocket carries (or probes).
    sid: String,
}

/// Per-connection state of a relay connection.
pub struct RelayProto {
    relay: Arc<Relay>,
    link: Arc<ConnLink>,
    state: ConnState,
    limits: HeadLimits,
}

/// What one HTTP request did to the input.
enum Step {
    /// The request is not complete yet.
    Need,
    /// `n` bytes were one request; go on.
    Used(usize),
    /// `n` bytes were an upgrade request: the rest is WebSocket frames.
    Upgraded(usize),
    /// A fatal error was answered; the connection closes.
    Fatal,
}

impl RelayProto {
    pub fn new(relay: Arc<Relay>, outbox: Box<dyn Outbox>) -> RelayProto {
        relay.connections.fetch_add(1, Ordering::Relaxed);
        let limits = HeadLimits {
            max_body: relay.cfg.max_payload as u64,
            ..HeadLimits::default()
        };
        RelayProto {
            relay,
            link: Arc::new(ConnLink {
                outbox,
                held: AtomicBool::new(false),
            }),
            state: ConnState::Http { hold: None },
            limits,
        }
    }

    pub fn process(
        &mut self,
        input: &[u8],
        io: &mut ConnIo,
        env: &Env,
        budget: &mut usize,
    ) -> (usize, Stop) {
        // The daemon-wide reply budget (see `OutputBudget`) applies to relay clients too.
        if env.output.full(io.pending_out(), io.held_out()) {
            return (0, Stop::OutputFull);
        }
        self.process_input(input, io, env.output.own_max, budget)
    }

    /// [`RelayProto::process`] with only what it uses of the environment (the fuzz target
    /// drives it without a reactor).
    pub fn process_input(
        &mut self,
        input: &[u8],
        io: &mut ConnIo,
        max_pending_out: usize,
        budget: &mut usize,
    ) -> (usize, Stop) {
        let mut used = 0;
        loop {
            match &mut self.state {
                ConnState::Done => return (input.len(), Stop::Paused),
                ConnState::Ws(_) => {
                    self.ws_input(&input[used..], io);
                    let stop = if io.pending_out() >= max_pending_out {
                        Stop::OutputFull
                    } else {
                        Stop::NeedInput
                    };
                    return (input.len(), stop);
                }
                ConnState::Http { hold } => {
                    if self.link.held.load(Ordering::Acquire) {
                        return (used, Stop::Paused);
                    }
                    *hold = None;
                }
            }
            if io.close_after_flush {
                return (input.len(), Stop::Paused);
            }
            if used == input.len() {
                return (used, Stop::NeedInput);
            }
            if io.pending_out() >= max_pending_out {
                return (used, Stop::OutputFull);
            }
            if *budget == 0 {
                return (used, Stop::Budget);
            }
            match self.http_request(&input[used..], io) {
                Step::Need => return (used, Stop::NeedInput),
                Step::Used(n) | Step::Upgraded(n) => {
                    used += n;
                    *budget -= 1;
                }
                Step::Fatal => {
                    self.state = ConnState::Done;
                    return (input.len(), Stop::Paused);
                }
            }
        }
    }

    /// The connection is gone: the relay forgets a GET it held or the session it carried.
    pub fn closed(&mut self, io: &mut ConnIo) {
        self.relay.connections.fetch_sub(1, Ordering::Relaxed);
        let sid = match &self.state {
            ConnState::Http { hold: Some(sid) } => Some(sid.clone()),
            ConnState::Ws(w) => Some(w.sid.clone()),
            _ => None,
        };
        if let Some(sid) = sid {
            self.relay.conn_closed(&sid, io.caller);
        }
    }

    /// The key rate limits and audit entries use: the address of a remote peer, the user of
    /// a local one (every local user shares the loopback address).
    fn source(io: &ConnIo) -> String {
        match io.addr {
            Some(a) if io.peer.uid == u32::MAX => a.ip().to_string(),
            _ => format!("uid:{}", io.peer.uid),
        }
    }

    fn http_request(&mut self, buf: &[u8], io: &mut ConnIo) -> Step {
        let head = match parse_head(buf, &self.limits) {
            Ok(Some(h)) => h,
            Ok(None) => return Step::Need,
            Err(e) => {
                let body = serde_json::json!({"error": e.to_string()}).to_string();
                io.out.extend(http_response(
                    e.status(),
                    "application/json",
                    body.as_bytes(),
                    Persist::Close,
                ));
                io.close_after_flush = true;
                return Step::Fatal;
            }
        };
        let total = head.head_len + head.content_length as usize;
        if buf.len() < total {
            return Step::Need;
        }
        let body = &buf[head.head_len..total];
        let persist = if head.keep_alive() {
            Persist::KeepAlive
        } else {
            Persist::Close
        };
        let step = if head.path == "/socket.io/" || head.path == "/socket.io" {
            self.engine_request(&head, body, io, persist)
        } else {
            self.api_request(&head, body, io, persist);
            Step::Used(0)
        };
        if persist == Persist::Close && !self.link.held.load(Ordering::Acquire) {
            io.close_after_flush = true;
        }
        match step {
            Step::Used(_) => Step::Used(total),
            Step::Upgraded(_) => Step::Upgraded(total),
            other => other,
        }
    }

    fn api_request(&mut self, head: &RequestHead, body: &[u8], io: &mut ConnIo, persist: Persist) {
        let source = Self::source(io);
        let req = ApiRequest {
            method: &head.method,
            path: &head.path,
            authorization: head.authorization.as_deref(),
            body,
            source: &source,
        };
        self.link.held.store(true, Ordering::Release);
        // `None`: answered through the link once the change is committed.
        if let Some((status, value)) = self.relay.api(&req, self.link.clone(), persist) {
            self.link.held.store(false, Ordering::Release);
            let body = if head.method == crate::proto::http::Method::Head {
                Vec::new()
            } else {
                value.to_string().into_bytes()
            };
            io.out
                .extend(http_response(status, "application/json", &body, persist));
        }
    }

    fn engine_error(io: &mut ConnIo, code: ErrorCode, persist: Persist) -> Step {
        io.out.extend(http_response(
            code.status(),
            "application/json",
            code.body().as_bytes(),
            persist,
        ));
        Step::Used(0)
    }

    fn engine_request(
        &mut self,
        head: &RequestHead,
        body: &[u8],
        io: &mut ConnIo,
        persist: Persist,
    ) -> Step {
        let Ok(query) = Query::parse(&head.query) else {
            return Self::engine_error(io, ErrorCode::BadRequest, persist);
        };
        let is_get = head.method == crate::proto::http::Method::Get;
        let req = match engineio::check_request(&query, is_get, head.is_websocket_upgrade()) {
            Ok(r) => r,
            Err(code) => return Self::engine_error(io, code, persist),
        };
        let source = Self::source(io);
        match (req.transport, req.sid) {
            (Transport::Websocket, sid) => self.upgrade(head, sid, io, &source, persist),
            (Transport::Polling, None) => match self.relay.open_polling(&source, persist) {
                Ok(bytes) => {
                    io.out.extend(bytes);
                    Step::Used(0)
                }
                Err(code) => Self::engine_error(io, code, persist),
            },
            (Transport::Polling, Some(sid)) if is_get => {
                self.link.held.store(true, Ordering::Release);
                match self
                    .relay
                    .poll_get(&sid, io.caller, self.link.clone(), persist)
                {
                    PollGet::Body(bytes) => {
                        self.link.held.store(false, Ordering::Release);
                        io.out.extend(bytes);
                    }
                    PollGet::Held => self.state = ConnState::Http { hold: Some(sid) },
                    PollGet::Refused(code) => {
                        self.link.held.store(false, Ordering::Release);
                        return Self::engine_error(io, code, persist);
                    }
                }
                Step::Used(0)
            }
            (Transport::Polling, Some(sid)) if head.method == crate::proto::http::Method::Post => {
                match self.relay.poll_post(&sid, body) {
                    Ok(()) => io
                        .out
                        .extend(http_response(200, "text/html", b"ok", persist)),
                    Err((status, text)) => io.out.extend(http_response(
                        status,
                        "application/json",
                        text.as_bytes(),
                        persist,
                    )),
                }
                Step::Used(0)
            }
            (Transport::Polling, Some(_)) => Self::engine_error(io, ErrorCode::BadRequest, persist),
        }
    }

    /// A WebSocket upgrade: a new session (no sid) or a probe of a polling session.
    fn upgrade(
        &mut self,
        head: &RequestHead,
        sid: Option<String>,
        io: &mut ConnIo,
        source: &str,
        persist: Persist,
    ) -> Step {
        let accept = match head.websocket_accept() {
            Ok(a) => a,
            Err(e) => {
                let body = serde_json::json!({"error": e.to_string()}).to_string();
                io.out.extend(http_response(
                    e.status(),
                    "application/json",
                    body.as_bytes(),
                    persist,
                ));
                return Step::Used(0);
            }
        };
        let link: Arc<dyn Link> = self.link.clone();
        let sid = match sid {
            Some(sid) => match self.relay.ws_probe(&sid, io.caller, link) {
                Ok(()) => sid,
                Err(code) => return Self::engine_error(io, code, persist),
            },
            None => match self.relay.open_websocket(source, io.caller, link) {
                Ok(sid) => sid,
                Err(code) => return Self::engine_error(io, code, persist),
            },
        };
        // The head is fixed text plus a base64 accept key: writing it cannot fail.
        let _ = write_switching_protocols(&mut io.out, &accept, &[]);
        let max = self.relay.cfg.max_payload;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        // tungstenite only ever writes control replies (pong, close) here; the cap bounds them.
        let ws =
            WebSocket::from_raw_socket(MemoryStream::new(64 * 1024), Role::Server, Some(config));
        self.state = ConnState::Ws(Box::new(WsConn { ws, sid }));
        Step::Upgraded(0)
    }

    /// WebSocket frames: decoded, their Engine.IO packets handed to the relay in one call.
    fn ws_input(&mut self, input: &[u8], io: &mut ConnIo) {
        let ConnState::Ws(w) = &mut self.state else {
            return;
        };
        w.ws.get_mut().feed(input);
        let mut packets = Vec::new();
        let mut close: Option<u16> = None;
        loop {
            match w.ws.read() {
                Ok(tungstenite::Message::Text(t)) => match engineio::decode_ws_text(t.as_str()) {
                    Ok(p) => packets.push(p),
                    Err(_) => {
                        close = Some(1002);
                        break;
                    }
                },
                Ok(tungstenite::Message::Binary(b)) => packets.push(Packet::Binary(b.to_vec())),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    close = Some(0);
                    break;
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    close = Some(1009);
                    break;
                }
                Err(e) => {
                    log::debug!("relay: conn={}: bad WebSocket input: {e}", io.label);
                    close = Some(1002);
                    break;
                }
            }
        }
        let sid = w.sid.clone();
        io.out.extend(w.ws.get_mut().take_output());
        if !packets.is_empty() {
            self.relay.ws_packets(&sid, io.caller, packets);
        }
        if let Some(code) = close {
            if code != 0 {
                io.out.extend(ws_close(code));
            }
            io.close_after_flush = true;
            self.relay.conn_closed(&sid, io.caller);
            self.state = ConnState::Done;
        }
    }
}

/// A refusal on the relay's wire (before any request is read): an HTTP 403.
pub fn refusal(msg: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": msg}).to_string();
    http_response(403, "application/json", body.as_bytes(), Persist::Close)
}
