//! Engine.IO protocol v4: packets, their WebSocket and HTTP long-polling forms, the open
//! packet, and the checks on the handshake query. No I/O and no session state (that is the
//! relay front-end's); every function here is pure.
//!
//! A packet is a type digit and optional text (`4hello`, `2`, `3probe`), or a binary message.
//! Over WebSocket each frame carries one packet: a text frame is the text form, a binary frame
//! is the raw bytes of a binary message. Over long-polling a body carries several packets
//! joined by the record separator `\x1e`, a binary message written as `b` + base64. A v4 body
//! is always text: the separator cannot appear inside packets built from JSON (JSON escapes
//! control characters), so splitting on it is unambiguous.
//!
//! Limits: [`PayloadLimits`] bounds a polling body (bytes, checked first, and packet count,
//! checked before the packet list is allocated). WebSocket frames are bounded by the
//! WebSocket layer's `max_message_size`, which the relay sets to the same `maxPayload`.

use super::http::Query;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// The protocol revision served (the `EIO` query parameter).
pub const PROTOCOL: &str = "4";
/// Separator between packets in a long-polling body.
pub const SEPARATOR: u8 = 0x1e;
/// Default interval between server pings (ms), as engine.io.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 25_000;
/// Default time a client has to answer a ping (ms), as engine.io.
pub const DEFAULT_PING_TIMEOUT_MS: u64 = 20_000;
/// Default `maxPayload` (bytes), engine.io's `maxHttpBufferSize`.
pub const DEFAULT_MAX_PAYLOAD: usize = 1_000_000;
/// Default cap on packets in one polling body.
pub const DEFAULT_MAX_PACKETS: usize = 256;
/// Longest `sid` accepted in a query; the relay's own ids are much shorter.
pub const MAX_SID_LEN: usize = 64;

/// Base64 as browsers and Node write it, accepting bodies with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Engine.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Open = 0,
    Close = 1,
    Ping = 2,
    Pong = 3,
    Message = 4,
    Upgrade = 5,
    Noop = 6,
}

impl PacketType {
    /// The type for an ASCII digit `'0'..='6'`.
    pub fn from_digit(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }

    /// The ASCII digit written on the wire.
    pub fn digit(self) -> char {
        char::from(b'0' + self as u8)
    }
}

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A packet in text form: its type and its (possibly empty) text.
    Text(PacketType, String),
    /// A binary message (the only packet that can carry bytes).
    Binary(Vec<u8>),
}

impl Packet {
    /// A text message.
    pub fn message(text: impl Into<String>) -> Packet {
        Packet::Text(PacketType::Message, text.into())
    }

    /// A packet of `kind` with no data (`2`, `3`, `6`, ...).
    pub fn bare(kind: PacketType) -> Packet {
        Packet::Text(kind, String::new())
    }

    /// Whether this is the client's upgrade probe, `2probe`, to answer with `3probe`.
    pub fn is_probe(&self) -> bool {
        matches!(self, Packet::Text(PacketType::Ping, data) if data == "probe")
    }

    /// The packet's type (`Message` for binary).
    pub fn kind(&self) -> PacketType {
        match self {
            Packet::Text(kind, _) => *kind,
            Packet::Binary(_) => PacketType::Message,
        }
    }

    /// The WebSocket frame carrying this packet.
    pub fn ws_frame(&self) -> WsFrame<'_> {
        match self {
            Packet::Text(kind, data) => {
                let mut text = String::with_capacity(1 + data.len());
                text.push(kind.digit());
                text.push_str(data);
                WsFrame::Text(text)
            }
            Packet::Binary(bytes) => WsFrame::Binary(bytes),
        }
    }

    /// Bytes this packet takes in a polling body (without separator), to batch by size.
    pub fn polling_len(&self) -> usize {
        match self {
            Packet::Text(_, data) => 1 + data.len(),
            Packet::Binary(bytes) => 1 + bytes.len().div_ceil(3) * 4,
        }
    }
}

/// A WebSocket frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame<'a> {
    Text(String),
    Binary(&'a [u8]),
}

/// Why Engine.IO input is refused. Each is fatal for the session (engine.io closes it);
/// for a polling POST answer [`EngineError::status`] first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A polling body larger than `max_payload` (413).
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge { len: usize, max: usize },
    /// A polling body with more than `max_packets` packets (400).
    #[error("more than {max} packets in one payload")]
    TooManyPackets { max: usize },
    /// An empty packet (no type) (400).
    #[error("empty packet")]
    EmptyPacket,
    /// A first byte that is not a packet type (400).
    #[error("unknown packet type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A polling body that is not UTF-8 (400).
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    /// A `b` packet that is not valid base64 (400).
    #[error("invalid base64 in a binary packet")]
    InvalidBase64,
}

impl EngineError {
    /// The HTTP status for a polling POST refused with this error.
    pub fn status(&self) -> u16 {
        match self {
            EngineError::PayloadTooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// Decodes a WebSocket text frame: one packet in text form.
pub fn decode_ws_text(text: &str) -> Result<Packet, EngineError> {
    let first = *text.as_bytes().first().ok_or(EngineError::EmptyPacket)?;
    let kind = PacketType::from_digit(first).ok_or(EngineError::UnknownType(first))?;
    // The type is one ASCII byte, so slicing after it stays on a char boundary.
    Ok(Packet::Text(kind, text[1..].to_owned()))
}

/// Decodes a WebSocket binary frame: a binary message, bytes as they are.
pub fn decode_ws_binary(bytes: &[u8]) -> Packet {
    Packet::Binary(bytes.to_vec())
}

/// Limits on a polling POST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Most bytes in a body (`maxPayload`).
    pub max_payload: usize,
    /// Most packets in a body.
    pub max_packets: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_packets: DEFAULT_MAX_PACKETS,
        }
    }
}

/// Decodes a polling POST body into its packets, in order.
pub fn decode_payload(body: &[u8], limits: &PayloadLimits) -> Result<Vec<Packet>, EngineError> {
    if body.len() > limits.max_payload {
        return Err(EngineError::PayloadTooLarge {
            len: body.len(),
            max: limits.max_payload,
        });
    }
    let count = body.iter().filter(|&&b| b == SEPARATOR).count() + 1;
    if count > limits.max_packets {
        return Err(EngineError::TooManyPackets {
            max: limits.max_packets,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| EngineError::InvalidUtf8)?;
    let mut packets = Vec::with_capacity(count);
    for part in text.split(char::from(SEPARATOR)) {
        packets.push(decode_polling_packet(part)?);
    }
    Ok(packets)
}

fn decode_polling_packet(part: &str) -> Result<Packet, EngineError> {
    match part.strip_prefix('b') {
        Some(b64) => BASE64
            .decode(b64)
            .map(Packet::Binary)
            .map_err(|_| EngineError::InvalidBase64),
        None => decode_ws_text(part),
    }
}

/// Appends a polling GET response body carrying `packets` to `out`.
pub fn encode_payload(packets: &[Packet], out: &mut Vec<u8>) {
    out.reserve(packets.iter().map(|p| p.polling_len() + 1).sum());
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match packet {
            Packet::Text(kind, data) => {
                out.push(kind.digit() as u8);
                out.extend_from_slice(data.as_bytes());
            }
            Packet::Binary(bytes) => {
                out.push(b'b');
                let mut b64 = String::with_capacity(bytes.len().div_ceil(3) * 4);
                BASE64.encode_string(bytes, &mut b64);
                out.extend_from_slice(b64.as_bytes());
            }
        }
    }
}

/// The transports served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

impl Transport {
    /// The `transport` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        }
    }
}

/// The handshake data sent in the open packet (`0{...}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenInfo {
    pub sid: String,
    pub upgrades: Vec<String>,
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

impl OpenInfo {
    /// Handshake data for a session opened on `transport`: a polling session may upgrade to
    /// WebSocket, a WebSocket session has nowhere to go. Times are in milliseconds.
    pub fn new(
        sid: &str,
        transport: Transport,
        ping_interval: u64,
        ping_timeout: u64,
        max_payload: u64,
    ) -> Self {
        let upgrades = match transport {
            Transport::Polling => vec![Transport::Websocket.as_str().to_owned()],
            Transport::Websocket => Vec::new(),
        };
        OpenInfo {
            sid: sid.to_owned(),
            upgrades,
            ping_interval,
            ping_timeout,
            max_payload,
        }
    }

    /// The JSON text, keys in engine.io's order.
    pub fn to_json(&self) -> String {
        // `Value`'s Display cannot fail, unlike `serde_json::to_string`, and escapes the sid.
        format!(
            "{{\"sid\":{},\"upgrades\":{},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            Value::from(self.sid.as_str()),
            Value::from(self.upgrades.clone()),
            self.ping_interval,
            self.ping_timeout,
            self.max_payload
        )
    }

    /// The open packet.
    pub fn packet(&self) -> Packet {
        Packet::Text(PacketType::Open, self.to_json())
    }
}

/// Engine.IO's HTTP error codes; the body is [`ErrorCode::body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    TransportUnknown = 0,
    SessionIdUnknown = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    /// The number in the body.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// engine.io's message for the code (clients match these texts).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::TransportUnknown => "Transport unknown",
            ErrorCode::SessionIdUnknown => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The HTTP status engine.io answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Forbidden => 403,
            _ => 400,
        }
    }

    /// The JSON body, e.g. `{"code":5,"message":"Unsupported protocol version"}`.
    pub fn body(self) -> String {
        format!(
            "{{\"code\":{},\"message\":\"{}\"}}",
            self.code(),
            self.message()
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// What an Engine.IO request asks for, once its query passed [`check_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRequest {
    pub transport: Transport,
    /// `None` for a handshake (a new session).
    pub sid: Option<String>,
}

/// Checks an Engine.IO request's query (engine.io's order: transport, protocol version, then
/// the handshake rules). Whether the `sid` names a live session, and whether its transport
/// matches, is the relay's to check (answer [`ErrorCode::SessionIdUnknown`] /
/// [`ErrorCode::BadRequest`]).
pub fn check_request(
    query: &Query,
    is_get: bool,
    is_websocket_upgrade: bool,
) -> Result<EngineRequest, ErrorCode> {
    let transport = match query.get("transport") {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::Websocket,
        _ => return Err(ErrorCode::TransportUnknown),
    };
    if query.get("EIO") != Some(PROTOCOL) {
        return Err(ErrorCode::UnsupportedProtocolVersion);
    }
    if is_websocket_upgrade != (transport == Transport::Websocket) {
        return Err(ErrorCode::BadRequest);
    }
    let sid = match query.get("sid") {
        None => None,
        Some(sid) if sid.is_empty() || sid.len() > MAX_SID_LEN => {
            return Err(ErrorCode::SessionIdUnknown);
        }
        Some(sid) => Some(sid.to_owned()),
    };
    if sid.is_none() && !is_get {
        return Err(ErrorCode::BadHandshakeMethod);
    }
    Ok(EngineRequest { transport, sid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(body: &[u8]) -> Result<Vec<Packet>, EngineError> {
        decode_payload(body, &PayloadLimits::default())
    }

    fn encoded(packets: &[Packet]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_payload(packets, &mut out);
        out
    }

    #[test]
    fn websocket_text_frames() {
        assert_eq!(decode_ws_text("4hello"), Ok(Packet::message("hello")));
        assert_eq!(
            decode_ws_text("2probe"),
            Ok(Packet::Text(PacketType::Ping, "probe".into()))
        );
        assert!(decode_ws_text("2probe").unwrap().is_probe());
        assert_eq!(decode_ws_text("3"), Ok(Packet::bare(PacketType::Pong)));
        assert_eq!(decode_ws_text("5"), Ok(Packet::bare(PacketType::Upgrade)));
        assert_eq!(decode_ws_text("4€"), Ok(Packet::message("€")));
        assert_eq!(decode_ws_text(""), Err(EngineError::EmptyPacket));
        assert_eq!(decode_ws_text("7"), Err(EngineError::UnknownType(b'7')));
        assert_eq!(decode_ws_text("€"), Err(EngineError::UnknownType(0xe2)));
        assert_eq!(
            Packet::message("40").ws_frame(),
            WsFrame::Text("440".into())
        );
        assert_eq!(
            Packet::bare(PacketType::Noop).ws_frame(),
            WsFrame::Text("6".into())
        );
    }

    #[test]
    fn websocket_binary_frames_are_raw_messages() {
        let packet = decode_ws_binary(&[1, 2, 3]);
        assert_eq!(packet, Packet::Binary(vec![1, 2, 3]));
        assert_eq!(packet.kind(), PacketType::Message);
        assert_eq!(packet.ws_frame(), WsFrame::Binary(&[1, 2, 3]));
    }

    #[test]
    fn polling_payloads_use_the_record_separator_and_base64() {
        // The examples of the engine.io-parser v4 changelog.
        let packets = vec![Packet::message("hello"), Packet::message("€€€")];
        assert_eq!(encoded(&packets), "4hello\x1e4€€€".as_bytes());
        let mixed = vec![Packet::message("hello"), Packet::Binary(vec![1, 2, 3])];
        assert_eq!(encoded(&mixed), b"4hello\x1ebAQID");
        assert_eq!(payload(b"4hello\x1ebAQID"), Ok(mixed));
        assert_eq!(
            payload(b"2probe\x1e4user message\x1e1"),
            Ok(vec![
                Packet::Text(PacketType::Ping, "probe".into()),
                Packet::message("user message"),
                Packet::bare(PacketType::Close),
            ])
        );
        // Padding is optional on input; output is padded like Node's.
        assert_eq!(
            payload(b"bAQIDBA"),
            Ok(vec![Packet::Binary(vec![1, 2, 3, 4])])
        );
        assert_eq!(encoded(&[Packet::Binary(vec![1, 2, 3, 4])]), b"bAQIDBA==");
        assert_eq!(payload(b"b"), Ok(vec![Packet::Binary(vec![])]));
        assert_eq!(encoded(&[]), b"");
    }

    #[test]
    fn bad_polling_payloads_are_typed_errors() {
        assert_eq!(payload(b""), Err(EngineError::EmptyPacket));
        assert_eq!(payload(b"4a\x1e\x1e4b"), Err(EngineError::EmptyPacket));
        assert_eq!(payload(b"abc"), Err(EngineError::UnknownType(b'a')));
        assert_eq!(payload(b"b!!!"), Err(EngineError::InvalidBase64));
        assert_eq!(payload(b"4\xff"), Err(EngineError::InvalidUtf8));
        let limits = PayloadLimits {
            max_payload: 8,
            max_packets: 2,
        };
        assert_eq!(
            decode_payload(b"4123456789", &limits),
            Err(EngineError::PayloadTooLarge { len: 10, max: 8 })
        );
        assert_eq!(
            decode_payload(b"2\x1e2\x1e2", &limits),
            Err(EngineError::TooManyPackets { max: 2 })
        );
        assert_eq!(decode_payload(b"2\x1e2", &limits).map(|p| p.len()), Ok(2));
        assert_eq!(
            EngineError::PayloadTooLarge { len: 1, max: 0 }.status(),
            413
        );
        assert_eq!(EngineError::InvalidBase64.status(), 400);
    }

    #[test]
    fn polling_len_matches_the_encoding() {
        for packet in [
            Packet::message("héllo"),
            Packet::bare(PacketType::Ping),
            Packet::Binary(vec![]),
            Packet::Binary(vec![9; 1]),
            Packet::Binary(vec![9; 5]),
            Packet::Binary(vec![9; 6]),
        ] {
            assert_eq!(
                packet.polling_len(),
                encoded(std::slice::from_ref(&packet)).len(),
                "{packet:?}"
            );
        }
    }

    #[test]
    fn open_packet() {
        let info = OpenInfo::new(
            "lv_VI97HAXpY6yYWAAAC",
            Transport::Polling,
            25_000,
            20_000,
            1_000_000,
        );
        let Packet::Text(PacketType::Open, json) = info.packet() else {
            panic!("not an open packet")
        };
        assert_eq!(
            json,
            "{\"sid\":\"lv_VI97HAXpY6yYWAAAC\",\"upgrades\":[\"websocket\"],\
             \"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}"
        );
        assert_eq!(serde_json::from_str::<OpenInfo>(&json).unwrap(), info);
        let ws = OpenInfo::new("a\"b", Transport::Websocket, 1, 2, 3);
        assert!(
            ws.to_json()
                .starts_with("{\"sid\":\"a\\\"b\",\"upgrades\":[],")
        );
        assert_eq!(serde_json::from_str::<OpenInfo>(&ws.to_json()).unwrap(), ws);
    }

    #[test]
    fn error_codes_match_engine_io() {
        assert_eq!(
            ErrorCode::UnsupportedProtocolVersion.body(),
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        );
        let all = [
            (ErrorCode::TransportUnknown, 0, "Transport unknown", 400),
            (ErrorCode::SessionIdUnknown, 1, "Session ID unknown", 400),
            (
                ErrorCode::BadHandshakeMethod,
                2,
                "Bad handshake method",
                400,
            ),
            (ErrorCode::BadRequest, 3, "Bad request", 400),
            (ErrorCode::Forbidden, 4, "Forbidden", 403),
            (
                ErrorCode::UnsupportedProtocolVersion,
                5,
                "Unsupported protocol version",
                400,
            ),
        ];
        for (code, n, message, status) in all {
            assert_eq!(
                (code.code(), code.message(), code.status()),
                (n, message, status)
            );
            let body: Value = serde_json::from_str(&code.body()).unwrap();
            assert_eq!(body, serde_json::json!({"code": n, "message": message}));
        }
    }

    fn check(query: &str, is_get: bool, upgrade: bool) -> Result<EngineRequest, ErrorCode> {
        check_request(&Query::parse(query).unwrap(), is_get, upgrade)
    }

    #[test]
    fn handshake_queries() {
        assert_eq!(
            check("EIO=4&transport=polling&t=N8hyd6w", true, false),
            Ok(EngineRequest {
                transport: Transport::Polling,
                sid: None
            })
        );
        assert_eq!(
            check("EIO=4&transport=websocket", true, true),
            Ok(EngineRequest {
                transport: Transport::Websocket,
                sid: None
            })
        );
        assert_eq!(
            check("EIO=4&transport=polling&sid=abc", false, false),
            Ok(EngineRequest {
                transport: Transport::Polling,
                sid: Some("abc".into())
            })
        );
        assert_eq!(
            check("EIO=4&transport=websocket&sid=abc", true, true).map(|r| r.sid),
            Ok(Some("abc".into()))
        );
        use ErrorCode::*;
        assert_eq!(
            check("EIO=3&transport=polling", true, false),
            Err(UnsupportedProtocolVersion)
        );
        assert_eq!(
            check("transport=polling", true, false),
            Err(UnsupportedProtocolVersion)
        );
        assert_eq!(
            check("EIO=4&transport=tobi", true, false),
            Err(TransportUnknown)
        );
        assert_eq!(check("EIO=4", true, false), Err(TransportUnknown));
        // The transport is checked first, as engine.io does.
        assert_eq!(check("EIO=3", true, false), Err(TransportUnknown));
        assert_eq!(
            check("EIO=4&transport=polling", false, false),
            Err(BadHandshakeMethod)
        );
        assert_eq!(
            check("EIO=4&transport=websocket", true, false),
            Err(BadRequest)
        );
        assert_eq!(
            check("EIO=4&transport=polling", true, true),
            Err(BadRequest)
        );
        assert_eq!(
            check("EIO=4&transport=polling&sid=", true, false),
            Err(SessionIdUnknown)
        );
        let long = format!("EIO=4&transport=polling&sid={}", "a".repeat(65));
        assert_eq!(check(&long, true, false), Err(SessionIdUnknown));
    }

    fn packet_strategy() -> impl Strategy<Value = Packet> {
        prop_oneof![
            (0u8..7, "[^\u{1e}]{0,20}").prop_map(|(t, data)| {
                let kind = PacketType::from_digit(b'0' + t).unwrap();
                Packet::Text(kind, data)
            }),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Packet::Binary),
        ]
    }

    proptest! {
        #[test]
        fn payload_round_trip(packets in proptest::collection::vec(packet_strategy(), 1..10)) {
            let body = encoded(&packets);
            prop_assert_eq!(payload(&body), Ok(packets));
        }

        #[test]
        fn ws_text_round_trip(packet in packet_strategy()) {
            match packet.ws_frame() {
                WsFrame::Text(text) => prop_assert_eq!(decode_ws_text(&text), Ok(packet.clone())),
                WsFrame::Binary(bytes) => prop_assert_eq!(decode_ws_binary(bytes), packet.clone()),
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(packets) = payload(&body) {
                // Whatever decodes re-encodes to a body that decodes to the same packets.
                prop_assert_eq!(payload(&encoded(&packets)), Ok(packets));
            }
        }
    }
}
