//! Engine.IO sessions: their transports (long-polling, WebSocket, and the upgrade between
//! them), what waits to be sent on each, and the ping/pong and handshake timers.
//!
//! A session outlives HTTP connections: a polling client sends each GET and POST on whatever
//! connection it has, so a session is found by its `sid`, and a GET with nothing to deliver
//! is held (its connection's [`Link`] kept) until a packet or the next ping is due. Output
//! for a session is resolved here, under the relay's lock, into [`Send`]s: bytes for one
//! connection, pushed by the caller once the lock is released (a push may wait for room in
//! the reactor's queue, and nobody may wait while holding the lock).
//!
//! Bounds: at most `relay.max_sessions` sessions; a polling session's queue holds at most
//! `relay.max_pending_output` bytes (a client that stops polling is closed, never buffered
//! for); WebSocket output is bounded by the reactor's per-connection push allowance.

use super::State;
use crate::proto::engineio::{self, ErrorCode, OpenInfo, Packet, PacketType, Transport};
use crate::proto::http::{Persist, write_response_head};
use crate::proto::socketio;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// The relay's way to one connection, made by the front-end: bytes pushed here are written
/// to that connection by the reactor (from any thread).
pub trait Link: Send + Sync {
    /// Appends bytes to the connection's output.
    fn push(&self, bytes: Vec<u8>);
    /// Appends bytes, then closes the connection once they are written.
    fn push_close(&self, bytes: Vec<u8>);
    /// Answers the request the connection holds (a long-poll GET, a request answered after
    /// a commit); `close` when the request asked for `Connection: close`.
    fn respond(&self, bytes: Vec<u8>, close: bool);
}

/// A connection's key: the id the reactor gave it at accept.
pub type ConnKey = u32;

/// Bytes for one connection, to push once the relay's lock is released.
pub struct Output {
    pub link: Arc<dyn Link>,
    pub bytes: Vec<u8>,
    /// Close the connection once the bytes are written.
    pub close: bool,
    /// The bytes answer a held HTTP request (a long-poll GET): the connection may take its
    /// next request once they are queued.
    pub respond: bool,
}

/// A held polling GET: the connection to answer on.
pub struct Waiting {
    pub conn: ConnKey,
    pub link: Arc<dyn Link>,
    pub persist: Persist,
}

/// How a session reaches its client.
pub enum Wire {
    Polling {
        queue: VecDeque<Packet>,
        bytes: usize,
        waiting: Option<Waiting>,
    },
    Ws {
        conn: ConnKey,
        link: Arc<dyn Link>,
    },
}

/// One Engine.IO session.
pub struct Session {
    pub key: u64,
    pub sid: String,
    pub wire: Wire,
    /// A WebSocket connection probing an upgrade of this polling session.
    pub probe: Option<(ConnKey, Arc<dyn Link>)>,
    pub decoder: socketio::Decoder,
    /// Where the client connects from (rate limits, audit).
    pub source: String,
    /// Bumped whenever the ping schedule changes, so stale timers are ignored.
    pub ping_gen: u64,
    /// The session's pending timers (ping or pong, and the handshake deadline), cancelled
    /// when it closes so a flood of short sessions leaves no timers behind.
    pub timers: [Option<super::TimerKey>; 2],
    pub awaiting_pong: bool,
    pub opened: Instant,
    /// The Socket.IO connection, once the handshake passed.
    pub socket: Option<super::Socket>,
}

/// What a polling GET gets.
pub enum PollGet {
    /// Packets were waiting: the response body.
    Body(Vec<u8>),
    /// Nothing yet: the connection is held.
    Held,
    Refused(ErrorCode),
}

/// The bytes of one server-to-client WebSocket frame (FIN set, never masked, never
/// fragmented).
pub fn ws_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// The frame carrying one Engine.IO packet.
pub fn ws_packet(p: &Packet, out: &mut Vec<u8>) {
    match p {
        Packet::Text(kind, data) => {
            let mut text = Vec::with_capacity(1 + data.len());
            text.push(kind.digit() as u8);
            text.extend_from_slice(data.as_bytes());
            ws_frame(0x1, &text, out);
        }
        Packet::Binary(bytes) => ws_frame(0x2, bytes, out),
    }
}

/// A close frame with a status code (1000 normal, 1001 going away, 1008 policy, 1009 too big).
pub fn ws_close(code: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    ws_frame(0x8, &code.to_be_bytes(), &mut out);
    out
}

/// A complete polling response carrying `packets`.
pub fn polling_response(packets: &[Packet], persist: Persist) -> Vec<u8> {
    let mut body = Vec::new();
    engineio::encode_payload(packets, &mut body);
    http_response(200, "text/plain; charset=UTF-8", &body, persist)
}

/// A complete HTTP response.
pub fn http_response(status: u16, content_type: &str, body: &[u8], persist: Persist) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    let headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    // The header values are constants: this cannot fail.
    let _ = write_response_head(&mut out, status, &headers, body.len(), persist);
    out.extend_from_slice(body);
    out
}

impl State {
    fn new_session(&mut self, source: &str, wire: Wire) -> Result<&mut Session, ErrorCode> {
        if self.sessions.len() >= self.cfg.max_sessions {
            self.counters.refused_sessions += 1;
            log::warn!(
                "relay: refused a session from {source}: {} open (relay.max_sessions)",
                self.sessions.len()
            );
            return Err(ErrorCode::Forbidden);
        }
        self.next_key += 1;
        let key = self.next_key;
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let limits = socketio::Limits {
            max_packet: self.cfg.max_payload,
            max_attachments: socketio::DEFAULT_MAX_ATTACHMENTS,
            max_attachment_bytes: self.cfg.max_payload,
        };
        self.by_sid.insert(sid.clone(), key);
        let ping = self
            .timers
            .add(now + self.cfg.ping_interval, super::Timer::Ping(key, 0));
        let connect = self
            .timers
            .add(now + self.cfg.connect_timeout, super::Timer::Connect(key));
        self.counters.sessions_opened += 1;
        Ok(self.sessions.entry(key).or_insert(Session {
            key,
            sid,
            wire,
            probe: None,
            decoder: socketio::Decoder::new(limits),
            source: source.to_owned(),
            ping_gen: 0,
            timers: [Some(ping), Some(connect)],
            awaiting_pong: false,
            opened: now,
            socket: None,
        }))
    }

    fn open_info(&self, sid: &str, transport: Transport) -> OpenInfo {
        OpenInfo::new(
            sid,
            transport,
            self.cfg.ping_interval.as_millis() as u64,
            self.cfg.ping_timeout.as_millis() as u64,
            self.cfg.max_payload as u64,
        )
    }

    /// A polling handshake: a new session; the response body carries its open packet.
    pub fn open_polling(&mut self, source: &str, persist: Persist) -> Result<Vec<u8>, ErrorCode> {
        let wire = Wire::Polling {
            queue: VecDeque::new(),
            bytes: 0,
            waiting: None,
        };
        let sid = self.new_session(source, wire)?.sid.clone();
        let open = self.open_info(&sid, Transport::Polling).packet();
        Ok(polling_response(&[open], persist))
    }

    /// A direct WebSocket handshake: a new session on `link`; its open packet is sent.
    pub fn open_websocket(
        &mut self,
        source: &str,
        conn: ConnKey,
        link: Arc<dyn Link>,
    ) -> Result<String, ErrorCode> {
        let wire = Wire::Ws {
            conn,
            link: link.clone(),
        };
        let sid = self.new_session(source, wire)?.sid.clone();
        let mut bytes = Vec::new();
        ws_packet(
            &self.open_info(&sid, Transport::Websocket).packet(),
            &mut bytes,
        );
        self.fx.sends.push(Output {
            link,
            bytes,
            close: false,
            respond: false,
        });
        Ok(sid)
    }

    /// The session `sid` names, if it is live.
    pub fn session_key(&self, sid: &str) -> Option<u64> {
        self.by_sid.get(sid).copied()
    }

    /// A polling GET: what is queued at once, else the connection is held.
    pub fn poll_get(
        &mut self,
        sid: &str,
        conn: ConnKey,
        link: Arc<dyn Link>,
        persist: Persist,
    ) -> PollGet {
        let Some(s) = self
            .session_key(sid)
            .and_then(|k| self.sessions.get_mut(&k))
        else {
            return PollGet::Refused(ErrorCode::SessionIdUnknown);
        };
        let probing = s.probe.is_some();
        let Wire::Polling {
            queue,
            bytes,
            waiting,
        } = &mut s.wire
        else {
            return PollGet::Refused(ErrorCode::BadRequest);
        };
        if waiting.is_some() {
            // engine.io closes a session whose client overlaps two GETs.
            let key = s.key;
            self.close_session(key, "overlapping polling GET");
            return PollGet::Refused(ErrorCode::BadRequest);
        }
        if queue.is_empty() && probing {
            // An upgrade is being probed: the client sends `5` only once its GET returned,
            // so a GET that arrives after the probe is answered at once (engine.io writes a
            // noop to it too), never held until the next ping.
            return PollGet::Body(polling_response(&[Packet::bare(PacketType::Noop)], persist));
        }
        if queue.is_empty() {
            *waiting = Some(Waiting {
                conn,
                link,
                persist,
            });
            return PollGet::Held;
        }
        let packets: Vec<Packet> = queue.drain(..).collect();
        *bytes = 0;
        PollGet::Body(polling_response(&packets, persist))
    }

    /// A polling POST: its packets, handled in order.
    pub fn poll_post(&mut self, sid: &str, body: &[u8]) -> Result<(), (u16, String)> {
        let Some(key) = self.session_key(sid) else {
            let e = ErrorCode::SessionIdUnknown;
            return Err((e.status(), e.body()));
        };
        if !matches!(
            self.sessions.get(&key).map(|s| &s.wire),
            Some(Wire::Polling { .. })
        ) {
            let e = ErrorCode::BadRequest;
            return Err((e.status(), e.body()));
        }
        let limits = engineio::PayloadLimits {
            max_payload: self.cfg.max_payload,
            max_packets: engineio::DEFAULT_MAX_PACKETS,
        };
        match engineio::decode_payload(body, &limits) {
            Ok(packets) => {
                for p in packets {
                    if !self.sessions.contains_key(&key) {
                        break;
                    }
                    self.on_packet(key, p);
                }
                Ok(())
            }
            Err(e) => {
                self.counters.protocol_errors += 1;
                self.close_session(key, "malformed polling payload");
                Err((e.status(), format!("{{\"error\":\"{e}\"}}")))
            }
        }
    }

    /// A WebSocket connection naming an existing session: an upgrade probe.
    pub fn ws_probe(
        &mut self,
        sid: &str,
        conn: ConnKey,
        link: Arc<dyn Link>,
    ) -> Result<(), ErrorCode> {
        let Some(s) = self
            .session_key(sid)
            .and_then(|k| self.sessions.get_mut(&k))
        else {
            return Err(ErrorCode::SessionIdUnknown);
        };
        if !matches!(s.wire, Wire::Polling { .. }) || s.probe.is_some() {
            return Err(ErrorCode::BadRequest);
        }
        s.probe = Some((conn, link));
        Ok(())
    }

    /// A packet from a WebSocket connection (attached to session `sid`, or probing it).
    pub fn ws_packet(&mut self, sid: &str, conn: ConnKey, p: Packet) {
        let Some(key) = self.session_key(sid) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let attached = matches!(&s.wire, Wire::Ws { conn: c, .. } if *c == conn);
        if attached {
            self.on_packet(key, p);
            return;
        }
        let Some((probe_conn, probe_link)) = s.probe.clone() else {
            return;
        };
        if probe_conn != conn {
            return;
        }
        if p.is_probe() {
            let mut bytes = Vec::new();
            ws_packet(&Packet::Text(PacketType::Pong, "probe".into()), &mut bytes);
            self.fx.sends.push(Output {
                link: probe_link,
                bytes,
                close: false,
                respond: false,
            });
            // The client waits for its pending GET to return before it upgrades.
            self.answer_waiting(key, &[Packet::bare(PacketType::Noop)]);
        } else if p.kind() == PacketType::Upgrade {
            self.finish_upgrade(key, conn, probe_link);
        }
    }

    /// `5` on the probing connection: the session moves to it, with what was queued.
    fn finish_upgrade(&mut self, key: u64, conn: ConnKey, link: Arc<dyn Link>) {
        self.answer_waiting(key, &[Packet::bare(PacketType::Noop)]);
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let old = std::mem::replace(
            &mut s.wire,
            Wire::Ws {
                conn,
                link: link.clone(),
            },
        );
        s.probe = None;
        self.counters.upgrades += 1;
        if let Wire::Polling { queue, .. } = old
            && !queue.is_empty()
        {
            let mut bytes = Vec::new();
            for p in &queue {
                ws_packet(p, &mut bytes);
            }
            self.fx.sends.push(Output {
                link,
                bytes,
                close: false,
                respond: false,
            });
        }
    }

    /// Answers a held GET of session `key` with `packets` (nothing when none is held).
    fn answer_waiting(&mut self, key: u64, packets: &[Packet]) {
        if let Some(Session {
            wire: Wire::Polling { waiting, .. },
            ..
        }) = self.sessions.get_mut(&key)
            && let Some(w) = waiting.take()
        {
            self.fx.sends.push(Output {
                link: w.link,
                bytes: polling_response(packets, w.persist),
                close: w.persist == Persist::Close,
                respond: true,
            });
        }
    }

    /// One Engine.IO packet from the client of session `key`.
    fn on_packet(&mut self, key: u64, p: Packet) {
        match p {
            Packet::Text(PacketType::Pong, _) => self.on_pong(key),
            Packet::Text(PacketType::Ping, data) => {
                // Engine.IO 3 clients ping; answer so they are not cut off.
                self.send_packets(key, vec![Packet::Text(PacketType::Pong, data)]);
            }
            Packet::Text(PacketType::Message, text) => {
                let r = self
                    .sessions
                    .get_mut(&key)
                    .map(|s| s.decoder.feed_text(&text));
                self.on_decoded(key, r);
            }
            Packet::Binary(bytes) => {
                let r = self
                    .sessions
                    .get_mut(&key)
                    .map(|s| s.decoder.feed_binary(bytes));
                self.on_decoded(key, r);
            }
            Packet::Text(PacketType::Close, _) => self.close_session(key, "client closed"),
            Packet::Text(PacketType::Noop | PacketType::Upgrade, _) => {}
            Packet::Text(PacketType::Open, _) => {
                self.counters.protocol_errors += 1;
                self.close_session(key, "open packet from a client");
            }
        }
    }

    fn on_decoded(
        &mut self,
        key: u64,
        r: Option<Result<Option<socketio::Message>, socketio::SioError>>,
    ) {
        match r {
            Some(Ok(Some(msg))) => self.on_sio(key, msg),
            Some(Ok(None)) | None => {}
            Some(Err(e)) => {
                self.counters.protocol_errors += 1;
                log::debug!("relay: session {key}: {e}; closing it");
                self.close_session(key, "malformed Socket.IO packet");
            }
        }
    }

    fn on_pong(&mut self, key: u64) {
        let interval = self.cfg.ping_interval;
        if let Some(s) = self.sessions.get_mut(&key)
            && s.awaiting_pong
        {
            s.awaiting_pong = false;
            s.ping_gen += 1;
            let g = s.ping_gen;
            if let Some(pong) = s.timers[0].take() {
                self.timers.cancel(pong);
            }
            s.timers[0] = Some(
                self.timers
                    .add(Instant::now() + interval, super::Timer::Ping(key, g)),
            );
        }
    }

    /// The ping timer of session `key` fired: ping, and expect the pong within pingTimeout.
    pub fn ping_due(&mut self, key: u64, g: u64) {
        let timeout = self.cfg.ping_timeout;
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if s.ping_gen != g || s.awaiting_pong {
            return;
        }
        s.awaiting_pong = true;
        s.timers[0] = Some(
            self.timers
                .add(Instant::now() + timeout, super::Timer::Pong(key, g)),
        );
        self.send_packets(key, vec![Packet::bare(PacketType::Ping)]);
    }

    /// The pong deadline of session `key` passed.
    pub fn pong_due(&mut self, key: u64, g: u64) {
        if let Some(s) = self.sessions.get(&key)
            && s.ping_gen == g
            && s.awaiting_pong
        {
            self.counters.ping_timeouts += 1;
            self.close_session(key, "ping timeout");
        }
    }

    /// The Socket.IO handshake deadline of session `key` passed.
    pub fn connect_due(&mut self, key: u64) {
        if let Some(s) = self.sessions.get(&key)
            && s.socket.is_none()
        {
            self.close_session(key, "no Socket.IO handshake in time");
        }
    }

    /// Sends Engine.IO packets to session `key` on its current transport.
    pub fn send_packets(&mut self, key: u64, packets: Vec<Packet>) {
        let max = self.cfg.max_pending_output;
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        match &mut s.wire {
            Wire::Ws { link, .. } => {
                let mut bytes = Vec::new();
                for p in &packets {
                    ws_packet(p, &mut bytes);
                }
                self.fx.sends.push(Output {
                    link: link.clone(),
                    bytes,
                    close: false,
                    respond: false,
                });
            }
            Wire::Polling {
                queue,
                bytes,
                waiting,
            } => {
                let add: usize = packets.iter().map(|p| p.polling_len() + 1).sum();
                if *bytes + add > max {
                    self.counters.dropped_slow += 1;
                    self.close_session(key, "client does not poll its output");
                    return;
                }
                if let Some(w) = waiting.take() {
                    debug_assert!(queue.is_empty());
                    self.fx.sends.push(Output {
                        link: w.link,
                        bytes: polling_response(&packets, w.persist),
                        close: w.persist == Persist::Close,
                        respond: true,
                    });
                } else {
                    *bytes += add;
                    queue.extend(packets);
                }
            }
        }
    }

    /// Sends the same WebSocket bytes / polling packet to many sessions (a broadcast): the
    /// frame is built once.
    pub fn send_many(&mut self, keys: &[u64], packet: &Packet) {
        let mut frame = Vec::new();
        ws_packet(packet, &mut frame);
        for &key in keys {
            match self.sessions.get(&key).map(|s| &s.wire) {
                Some(Wire::Ws { link, .. }) => self.fx.sends.push(Output {
                    link: link.clone(),
                    bytes: frame.clone(),
                    close: false,
                    respond: false,
                }),
                Some(Wire::Polling { .. }) => self.send_packets(key, vec![packet.clone()]),
                None => {}
            }
        }
    }

    /// A connection closed: a held GET on it is forgotten; a session whose WebSocket it was
    /// ends (a probe that never upgraded just goes away).
    pub fn conn_closed(&mut self, sid: &str, conn: ConnKey) {
        let Some(key) = self.session_key(sid) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if s.probe.as_ref().is_some_and(|(c, _)| *c == conn) {
            s.probe = None;
        }
        match &mut s.wire {
            Wire::Ws { conn: c, .. } if *c == conn => self.close_session(key, "transport closed"),
            Wire::Polling { waiting, .. } if waiting.as_ref().is_some_and(|w| w.conn == conn) => {
                *waiting = None;
            }
            _ => {}
        }
    }

    /// Ends session `key`: its client is told (close frame, or a close packet to a held GET),
    /// its socket leaves presence, rooms and the tenant.
    pub fn close_session(&mut self, key: u64, why: &str) {
        let Some(mut s) = self.sessions.remove(&key) else {
            return;
        };
        self.by_sid.remove(&s.sid);
        for t in s.timers.iter_mut().filter_map(Option::take) {
            self.timers.cancel(t);
        }
        self.counters.sessions_closed += 1;
        log::debug!("relay: session {} closed: {why}", s.sid);
        match &mut s.wire {
            Wire::Ws { link, .. } => {
                let code = if why == "client closed" || why == "transport closed" {
                    1000
                } else {
                    1001
                };
                self.fx.sends.push(Output {
                    link: link.clone(),
                    bytes: ws_close(code),
                    close: true,
                    respond: false,
                });
            }
            Wire::Polling { waiting, .. } => {
                if let Some(w) = waiting.take() {
                    self.fx.sends.push(Output {
                        link: w.link,
                        bytes: polling_response(&[Packet::bare(PacketType::Close)], w.persist),
                        close: w.persist == Persist::Close,
                        respond: true,
                    });
                }
            }
        }
        if let Some((_, link)) = s.probe.take() {
            self.fx.sends.push(Output {
                link,
                bytes: ws_close(1001),
                close: true,
                respond: false,
            });
        }
        if let Some(sock) = s.socket.take() {
            self.socket_gone(key, sock, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::MemoryStream;
    use crate::relay::State;
    use crate::relay::auth::Auth;
    use crate::relay::config::{RawRelay, RelayConfig};
    use parking_lot::Mutex;
    use std::time::Duration;
    use tungstenite::protocol::{Role, WebSocket};

    /// A connection that records what the relay sends it.
    #[derive(Default)]
    struct Recorder {
        got: Mutex<Vec<(String, &'static str)>>,
    }

    impl Link for Recorder {
        fn push(&self, bytes: Vec<u8>) {
            self.got
                .lock()
                .push((String::from_utf8_lossy(&bytes).into_owned(), "push"));
        }
        fn push_close(&self, bytes: Vec<u8>) {
            self.got
                .lock()
                .push((String::from_utf8_lossy(&bytes).into_owned(), "close"));
        }
        fn respond(&self, bytes: Vec<u8>, _close: bool) {
            self.got
                .lock()
                .push((String::from_utf8_lossy(&bytes).into_owned(), "respond"));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(String, &'static str)> {
            std::mem::take(&mut *self.got.lock())
        }
    }

    fn state(raw: RawRelay) -> State {
        let mut errors = Vec::new();
        let cfg =
            RelayConfig::from_raw_env(&raw, std::path::Path::new("/tmp"), &|_| None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let auth = Auth::new(cfg.secrets.clone(), &[1; 32], cfg.jwt_ttl, 10);
        State::new(std::sync::Arc::new(cfg), auth)
    }

    /// Carries out what the state collected, as `Relay::with` does.
    fn apply(st: &mut State) {
        for o in std::mem::take(&mut st.fx.sends) {
            match (o.respond, o.close) {
                (true, c) => o.link.respond(o.bytes, c),
                (false, true) => o.link.push_close(o.bytes),
                (false, false) => o.link.push(o.bytes),
            }
        }
    }

    fn open_polling(st: &mut State) -> String {
        let body = st.open_polling("t", Persist::KeepAlive).unwrap();
        let text = String::from_utf8(body).unwrap();
        text.split("\"sid\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_held_poll_is_answered_by_the_next_packet() {
        let mut st = state(RawRelay::default());
        let sid = open_polling(&mut st);
        let key = st.session_key(&sid).unwrap();
        let get = std::sync::Arc::new(Recorder::default());
        assert!(matches!(
            st.poll_get(&sid, 7, get.clone(), Persist::KeepAlive),
            PollGet::Held
        ));
        st.send_packets(key, vec![Packet::message("2[\"x\"]")]);
        apply(&mut st);
        let got = get.take();
        assert_eq!(got.len(), 1);
        assert!(
            got[0].0.ends_with("\r\n\r\n42[\"x\"]") && got[0].1 == "respond",
            "{got:?}"
        );
        // Nothing held now: packets queue and the next GET takes them at once.
        st.send_packets(
            key,
            vec![Packet::bare(PacketType::Noop), Packet::message("3")],
        );
        match st.poll_get(&sid, 7, get.clone(), Persist::KeepAlive) {
            PollGet::Body(b) => assert!(String::from_utf8(b).unwrap().ends_with("6\u{1e}43")),
            _ => panic!("queued packets were not returned"),
        }
        assert!(matches!(
            st.poll_get(&sid, 7, get.clone(), Persist::KeepAlive),
            PollGet::Held
        ));
        // A second GET while one is held ends the session (engine.io's rule).
        assert!(matches!(
            st.poll_get(&sid, 8, get.clone(), Persist::KeepAlive),
            PollGet::Refused(ErrorCode::BadRequest)
        ));
        assert!(
            st.session_key(&sid).is_none(),
            "overlapping GETs close the session"
        );
    }

    #[test]
    fn the_upgrade_probe_frees_the_held_poll_and_moves_the_queue() {
        let mut st = state(RawRelay::default());
        let sid = open_polling(&mut st);
        let key = st.session_key(&sid).unwrap();
        let get = std::sync::Arc::new(Recorder::default());
        let ws = std::sync::Arc::new(Recorder::default());
        assert!(matches!(
            st.poll_get(&sid, 1, get.clone(), Persist::KeepAlive),
            PollGet::Held
        ));
        st.ws_probe(&sid, 2, ws.clone()).unwrap();
        st.ws_packet(&sid, 2, Packet::Text(PacketType::Ping, "probe".into()));
        apply(&mut st);
        let probe = ws.take();
        assert_eq!(probe.len(), 1);
        assert!(probe[0].0.ends_with("3probe"));
        assert!(
            get.take()[0].0.ends_with("\r\n\r\n6"),
            "the held GET got a noop"
        );
        // Output sent before the upgrade completes waits in the polling queue, then moves.
        st.send_packets(key, vec![Packet::message("2[\"late\"]")]);
        st.ws_packet(&sid, 2, Packet::bare(PacketType::Upgrade));
        apply(&mut st);
        let moved = ws.take();
        assert!(
            moved.iter().any(|(b, _)| b.contains("42[\"late\"]")),
            "{moved:?}"
        );
        assert_eq!(st.counters.upgrades, 1);
        // A GET that arrives while a probe is pending is not held: the client waits for it
        // before it completes the upgrade.
        let sid2 = open_polling(&mut st);
        st.ws_probe(&sid2, 3, ws.clone()).unwrap();
        match st.poll_get(&sid2, 4, get.clone(), Persist::KeepAlive) {
            PollGet::Body(b) => assert!(String::from_utf8(b).unwrap().ends_with("\r\n\r\n6")),
            _ => panic!("a GET during a probe was held"),
        }
        assert!(matches!(
            st.poll_get(&sid, 1, get, Persist::KeepAlive),
            PollGet::Refused(ErrorCode::BadRequest)
        ));
    }

    #[test]
    fn a_client_that_does_not_pong_or_poll_is_closed() {
        let raw = RawRelay {
            ping_interval_ms: Some(10),
            ping_timeout_ms: Some(1000),
            max_pending_output: Some(2_000_001),
            max_file_bytes: Some(100_000),
            ..Default::default()
        };
        let mut st = state(raw);
        let sid = open_polling(&mut st);
        let now = Instant::now();
        st.fire_due(now + Duration::from_millis(15));
        assert!(st.session_key(&sid).is_some(), "pinged, not yet late");
        st.fire_due(now + Duration::from_millis(2000));
        assert!(st.session_key(&sid).is_none(), "closed after pingTimeout");
        assert_eq!(st.counters.ping_timeouts, 1);
        // A polling client that never comes for its output is closed at the output bound.
        let sid = open_polling(&mut st);
        let key = st.session_key(&sid).unwrap();
        for _ in 0..3 {
            st.send_packets(key, vec![Packet::message("x".repeat(900_000))]);
        }
        assert!(st.session_key(&sid).is_none());
        assert_eq!(st.counters.dropped_slow, 1);
    }

    #[test]
    fn sessions_are_bounded() {
        let mut st = state(RawRelay {
            max_sessions: Some(2),
            ..Default::default()
        });
        open_polling(&mut st);
        open_polling(&mut st);
        assert_eq!(
            st.open_polling("t", Persist::KeepAlive).unwrap_err(),
            ErrorCode::Forbidden
        );
        assert_eq!(st.counters.refused_sessions, 1);
        // A closed session leaves no timer behind.
        assert_eq!(st.timers.len(), 4);
        let keys: Vec<u64> = st.sessions.keys().copied().collect();
        for k in keys {
            st.close_session(k, "test");
        }
        assert!(st.timers.is_empty());
    }

    #[test]
    fn server_frames_are_read_by_a_websocket_client() {
        let mut client = WebSocket::from_raw_socket(MemoryStream::new(1 << 20), Role::Client, None);
        let mut bytes = Vec::new();
        ws_packet(&Packet::message("2[\"x\"]"), &mut bytes);
        ws_packet(&Packet::Binary(vec![9; 70_000]), &mut bytes);
        ws_frame(0x1, &vec![b'a'; 300], &mut bytes);
        bytes.extend(ws_close(1000));
        client.get_mut().feed(&bytes);
        assert_eq!(
            client.read().unwrap(),
            tungstenite::Message::text("42[\"x\"]")
        );
        assert_eq!(
            client.read().unwrap(),
            tungstenite::Message::binary(vec![9u8; 70_000])
        );
        assert_eq!(client.read().unwrap().len(), 300);
        assert!(
            matches!(client.read().unwrap(), tungstenite::Message::Close(Some(f)) if u16::from(f.code) == 1000)
        );
    }

    #[test]
    fn polling_responses_are_complete_http() {
        let r = polling_response(
            &[Packet::message("40"), Packet::bare(PacketType::Ping)],
            Persist::KeepAlive,
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n440\u{1e}2"));
    }
}
