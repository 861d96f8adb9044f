//! Socket.IO protocol v5 packets (carried in Engine.IO messages): the text codec, the
//! reassembly of binary packets from their attachments, and builders for what the relay sends.
//!
//! Text form: the type digit, `<n>-` (attachment count, binary types only), the namespace and
//! a comma (`/admin,`, left out for `/`), the ack id digits, then the JSON payload:
//! `2["chat",{"to":"all"}]`, `31["ok"]`, `51-["upload",{"_placeholder":true,"num":0}]`.
//!
//! A binary packet arrives as that text header followed by `n` binary Engine.IO messages; the
//! placeholders `{"_placeholder":true,"num":k}` in the payload stand for attachment `k`.
//! [`Decoder`] assembles them into a [`Message`]: the packet with its placeholders left in
//! place (validated) plus the attachments as raw bytes, so bytes the relay only forwards are
//! never copied into JSON or base64. [`reconstruct`] gives a [`Data`] tree with the bytes in
//! place when a handler wants one; [`deconstruct`] is the reverse, for sending.
//!
//! Payloads are `serde_json::Value`, not `Box<RawValue>`: the relay reads fields of almost every
//! event (event name, ids, targets), so the payload would be parsed in full anyway, and a
//! `Value` also lets the decoder check the payload's shape (an event is a non-empty array
//! starting with its name) before the packet goes further. serde_json's recursion limit (128)
//! bounds nesting, so the recursive walks below cannot overflow the stack on input.
//!
//! Limits ([`Limits`]) are checked before anything is allocated for them: the packet length
//! before parsing, the attachment count before reserving, the ack id without overflow, and the
//! total attachment bytes as they arrive. Every malformed input is a [`SioError`].

use serde_json::{Map, Value};

/// Default cap on one packet's text (bytes), the Engine.IO default `maxPayload`.
pub const DEFAULT_MAX_PACKET: usize = 1_000_000;
/// Default cap on a binary packet's attachment count.
pub const DEFAULT_MAX_ATTACHMENTS: usize = 10;
/// Default cap on the total bytes of one packet's attachments.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: usize = 10_000_000;

/// Event names Socket.IO reserves; a client may not emit them.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Decoder limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in a packet's text form.
    pub max_packet: usize,
    /// Most attachments a binary packet may announce.
    pub max_attachments: usize,
    /// Most bytes in all of one packet's attachments together.
    pub max_attachment_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet: DEFAULT_MAX_PACKET,
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
            max_attachment_bytes: DEFAULT_MAX_ATTACHMENT_BYTES,
        }
    }
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl PacketKind {
    /// The type for an ASCII digit `'0'..='6'`.
    pub fn from_digit(b: u8) -> Option<PacketKind> {
        Some(match b {
            b'0' => PacketKind::Connect,
            b'1' => PacketKind::Disconnect,
            b'2' => PacketKind::Event,
            b'3' => PacketKind::Ack,
            b'4' => PacketKind::ConnectError,
            b'5' => PacketKind::BinaryEvent,
            b'6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    /// The ASCII digit written on the wire.
    pub fn digit(self) -> char {
        char::from(b'0' + self as u8)
    }

    /// Whether packets of this type announce attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// One Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: PacketKind,
    /// The namespace, `/` by default.
    pub nsp: String,
    /// The ack id: an event with one expects exactly one ACK with the same id.
    pub id: Option<u64>,
    pub data: Option<Value>,
    /// Attachments announced by a binary packet (0 for other types).
    pub attachments: usize,
}

impl Packet {
    fn new(kind: PacketKind, data: Option<Value>) -> Packet {
        Packet {
            kind,
            nsp: "/".to_owned(),
            id: None,
            data,
            attachments: 0,
        }
    }

    /// The same packet with an ack id.
    pub fn with_id(mut self, id: u64) -> Packet {
        self.id = Some(id);
        self
    }

    /// For an event: its name (when it is a string) and its arguments.
    pub fn event(&self) -> Option<(&str, &[Value])> {
        if !matches!(self.kind, PacketKind::Event | PacketKind::BinaryEvent) {
            return None;
        }
        match self.data.as_ref()?.as_array()?.split_first()? {
            (Value::String(name), args) => Some((name, args)),
            _ => None,
        }
    }

    /// Encodes the text form (see the module doc).
    pub fn encode(&self) -> String {
        let count = if self.kind.is_binary() {
            self.attachments
        } else {
            0
        };
        encode_parts(self.kind, &self.nsp, self.id, self.data.as_ref(), count)
    }
}

fn encode_parts(
    kind: PacketKind,
    nsp: &str,
    id: Option<u64>,
    data: Option<&Value>,
    attachments: usize,
) -> String {
    let mut out = String::new();
    out.push(kind.digit());
    if kind.is_binary() {
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    if !nsp.is_empty() && nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    if let Some(data) = data {
        // `Value`'s Display is compact JSON, like JSON.stringify, and cannot fail.
        out.push_str(&data.to_string());
    }
    out
}

/// Why Socket.IO input is refused. All are fatal for the Engine.IO session: socket.io closes
/// the connection on a parse error, since later packets may depend on the lost one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    #[error("packet of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("illegal attachment count")]
    BadAttachmentCount,
    #[error("too many attachments (at most {max})")]
    TooManyAttachments { max: usize },
    #[error("ack id out of range")]
    AckIdTooLarge,
    #[error("invalid JSON payload: {0}")]
    InvalidJson(String),
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
    #[error("reserved event name {0:?}")]
    ReservedEvent(String),
    #[error("attachments exceed {max} bytes")]
    AttachmentsTooLarge { max: usize },
    #[error("placeholder does not name an attachment")]
    BadPlaceholder,
    #[error("binary message without a binary packet waiting for it")]
    UnexpectedBinary,
    #[error("text packet while a binary packet still waits for attachments")]
    UnexpectedText,
}

/// Decodes one packet's text form.
pub fn decode(text: &str, limits: &Limits) -> Result<Packet, SioError> {
    if text.len() > limits.max_packet {
        return Err(SioError::TooLarge {
            len: text.len(),
            max: limits.max_packet,
        });
    }
    let mut cur = Cursor { text, pos: 0 };
    let first = cur.next_byte().ok_or(SioError::Empty)?;
    let kind = PacketKind::from_digit(first).ok_or(SioError::UnknownType(first))?;
    let attachments = if kind.is_binary() {
        cur.attachment_count(limits.max_attachments)?
    } else {
        0
    };
    let nsp = cur.namespace().to_owned();
    let id = cur.digits(SioError::AckIdTooLarge)?;
    let rest = cur.rest();
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|e| SioError::InvalidJson(e.to_string()))?)
    };
    check_payload(kind, data.as_ref())?;
    if let (true, Some(data)) = (kind.is_binary(), &data) {
        check_placeholders(data, attachments)?;
    }
    Ok(Packet {
        kind,
        nsp,
        id,
        data,
        attachments,
    })
}

/// A read position in a packet's text. Every boundary it stops at follows an ASCII byte, so
/// slicing there is always on a char boundary.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// A run of ASCII digits as a u64 (`None` when there is no digit), refusing overflow.
    fn digits(&mut self, overflow: SioError) -> Result<Option<u64>, SioError> {
        let mut value: Option<u64> = None;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            let next = value
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')));
            value = Some(next.ok_or_else(|| overflow.clone())?);
            self.pos += 1;
        }
        Ok(value)
    }

    /// `<n>-`, with `n` at most `max`.
    fn attachment_count(&mut self, max: usize) -> Result<usize, SioError> {
        let too_many = SioError::TooManyAttachments { max };
        let count = self
            .digits(too_many.clone())?
            .ok_or(SioError::BadAttachmentCount)?;
        if self.next_byte() != Some(b'-') {
            return Err(SioError::BadAttachmentCount);
        }
        match usize::try_from(count) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(too_many),
        }
    }

    /// `/name,` (the comma may be missing at the end of the text), else the root namespace.
    fn namespace(&mut self) -> &'a str {
        if self.peek() != Some(b'/') {
            return "/";
        }
        let rest = &self.text[self.pos..];
        match rest.find(',') {
            Some(comma) => {
                self.pos += comma + 1;
                &rest[..comma]
            }
            None => {
                self.pos = self.text.len();
                rest
            }
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }
}

/// The payload shapes socket.io accepts for each type.
fn check_payload(kind: PacketKind, data: Option<&Value>) -> Result<(), SioError> {
    let ok = match (kind, data) {
        (PacketKind::Connect, None | Some(Value::Object(_))) => true,
        (PacketKind::Disconnect, None) => true,
        (PacketKind::ConnectError, None | Some(Value::Object(_) | Value::String(_))) => true,
        (PacketKind::Ack | PacketKind::BinaryAck, Some(Value::Array(_))) => true,
        (PacketKind::Event | PacketKind::BinaryEvent, Some(Value::Array(items))) => {
            return check_event_name(items.first());
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SioError::InvalidPayload(expected_payload(kind)))
    }
}

fn expected_payload(kind: PacketKind) -> &'static str {
    match kind {
        PacketKind::Connect => "CONNECT carries an object or nothing",
        PacketKind::Disconnect => "DISCONNECT carries no payload",
        PacketKind::ConnectError => "CONNECT_ERROR carries an object or a string",
        PacketKind::Ack | PacketKind::BinaryAck => "an ACK carries an array",
        PacketKind::Event | PacketKind::BinaryEvent => "an EVENT carries a non-empty array",
    }
}

/// An event starts with its name: a string that is not reserved, or a number (socket.io
/// allows numeric names).
fn check_event_name(name: Option<&Value>) -> Result<(), SioError> {
    match name {
        Some(Value::String(s)) if RESERVED_EVENTS.contains(&s.as_str()) => {
            Err(SioError::ReservedEvent(s.clone()))
        }
        Some(Value::String(_) | Value::Number(_)) => Ok(()),
        _ => Err(SioError::InvalidPayload(
            "an EVENT starts with its name (a string or a number)",
        )),
    }
}

/// A complete packet with its attachments (empty for non-binary packets). Placeholders in
/// `packet.data` are left in place and every one names an existing attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub packet: Packet,
    pub attachments: Vec<Vec<u8>>,
}

impl Message {
    /// A message without attachments.
    pub fn plain(packet: Packet) -> Message {
        Message {
            packet,
            attachments: Vec::new(),
        }
    }

    /// The text to send, then the attachments to send as binary Engine.IO messages, in
    /// order. An EVENT or ACK with attachments is sent as its binary type with the count
    /// taken from `attachments`; other types never carry attachments.
    pub fn encode(&self) -> (String, &[Vec<u8>]) {
        let kind = binary_kind(self.packet.kind, !self.attachments.is_empty());
        let sent: &[Vec<u8>] = if kind.is_binary() {
            &self.attachments
        } else {
            &[]
        };
        let p = &self.packet;
        let text = encode_parts(kind, &p.nsp, p.id, p.data.as_ref(), sent.len());
        (text, sent)
    }

    /// The payload with attachment bytes in place of their placeholders (binary packets), or
    /// as plain JSON (other packets, whose placeholder-like objects are just data).
    pub fn data(&self) -> Result<Option<Data>, SioError> {
        match &self.packet.data {
            None => Ok(None),
            Some(v) if self.packet.kind.is_binary() => reconstruct(v, &self.attachments).map(Some),
            Some(v) => Ok(Some(Data::Json(v.clone()))),
        }
    }
}

/// The type to send an EVENT or ACK as: its binary variant when it has attachments.
fn binary_kind(kind: PacketKind, has_attachments: bool) -> PacketKind {
    match (kind, has_attachments) {
        (PacketKind::Event, true) => PacketKind::BinaryEvent,
        (PacketKind::Ack, true) => PacketKind::BinaryAck,
        (kind, _) => kind,
    }
}

/// A binary packet waiting for its attachments.
#[derive(Debug, Clone)]
struct Pending {
    packet: Packet,
    attachments: Vec<Vec<u8>>,
    bytes: usize,
}

/// Turns the Engine.IO messages of one connection into complete [`Message`]s: text messages
/// through [`Decoder::feed_text`], binary ones through [`Decoder::feed_binary`]. After an
/// error the decoder is reset; the caller closes the session anyway.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
    pending: Option<Pending>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            pending: None,
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// A text message: a packet, complete unless it is a binary packet with attachments.
    pub fn feed_text(&mut self, text: &str) -> Result<Option<Message>, SioError> {
        if self.pending.take().is_some() {
            return Err(SioError::UnexpectedText);
        }
        let packet = decode(text, &self.limits)?;
        if packet.attachments == 0 {
            return Ok(Some(Message::plain(packet)));
        }
        self.pending = Some(Pending {
            attachments: Vec::with_capacity(packet.attachments),
            packet,
            bytes: 0,
        });
        Ok(None)
    }

    /// A binary message: the next attachment of the waiting packet.
    pub fn feed_binary(&mut self, bytes: Vec<u8>) -> Result<Option<Message>, SioError> {
        let mut pending = self.pending.take().ok_or(SioError::UnexpectedBinary)?;
        pending.bytes = pending.bytes.saturating_add(bytes.len());
        if pending.bytes > self.limits.max_attachment_bytes {
            return Err(SioError::AttachmentsTooLarge {
                max: self.limits.max_attachment_bytes,
            });
        }
        pending.attachments.push(bytes);
        if pending.attachments.len() < pending.packet.attachments {
            self.pending = Some(pending);
            return Ok(None);
        }
        Ok(Some(Message {
            packet: pending.packet,
            attachments: pending.attachments,
        }))
    }
}

/// The attachment index a placeholder object names: `Some(Ok(k))` for a valid one,
/// `Some(Err(..))` for a malformed one, `None` when `value` is not a placeholder.
fn placeholder_index(value: &Value) -> Option<Result<usize, SioError>> {
    let obj = value.as_object()?;
    if obj.get("_placeholder") != Some(&Value::Bool(true)) {
        return None;
    }
    let num = obj.get("num").and_then(Value::as_u64);
    Some(
        num.and_then(|n| usize::try_from(n).ok())
            .ok_or(SioError::BadPlaceholder),
    )
}

/// Every placeholder in `value` names one of `count` attachments.
fn check_placeholders(value: &Value, count: usize) -> Result<(), SioError> {
    match placeholder_index(value) {
        Some(Ok(k)) if k < count => return Ok(()),
        Some(_) => return Err(SioError::BadPlaceholder),
        None => {}
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| check_placeholders(v, count)),
        Value::Object(map) => map.values().try_for_each(|v| check_placeholders(v, count)),
        _ => Ok(()),
    }
}

fn has_placeholder(value: &Value) -> bool {
    placeholder_index(value).is_some()
        || match value {
            Value::Array(items) => items.iter().any(has_placeholder),
            Value::Object(map) => map.values().any(has_placeholder),
            _ => false,
        }
}

/// A payload that may hold bytes: JSON with binary leaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A JSON value with no bytes inside.
    Json(Value),
    Bytes(Vec<u8>),
    Array(Vec<Data>),
    /// Key order is kept as given.
    Object(Vec<(String, Data)>),
}

/// Replaces the bytes in `data` with placeholders, returning the JSON and the attachments in
/// placeholder order. Takes `data` by value so the bytes move instead of being copied.
pub fn deconstruct(data: Data) -> (Value, Vec<Vec<u8>>) {
    let mut attachments = Vec::new();
    let value = deconstruct_into(data, &mut attachments);
    (value, attachments)
}

fn deconstruct_into(data: Data, attachments: &mut Vec<Vec<u8>>) -> Value {
    match data {
        Data::Json(v) => v,
        Data::Bytes(bytes) => {
            let num = attachments.len();
            attachments.push(bytes);
            placeholder(num)
        }
        Data::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|d| deconstruct_into(d, attachments))
                .collect(),
        ),
        Data::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, d)| (k, deconstruct_into(d, attachments)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// The placeholder for attachment `num`.
pub fn placeholder(num: usize) -> Value {
    let mut obj = Map::new();
    obj.insert("_placeholder".to_owned(), Value::Bool(true));
    obj.insert("num".to_owned(), Value::from(num));
    Value::Object(obj)
}

/// Puts the attachment bytes back in place of their placeholders. Subtrees without
/// placeholders stay [`Data::Json`].
pub fn reconstruct(value: &Value, attachments: &[Vec<u8>]) -> Result<Data, SioError> {
    if let Some(index) = placeholder_index(value) {
        let bytes = attachments.get(index?).ok_or(SioError::BadPlaceholder)?;
        return Ok(Data::Bytes(bytes.clone()));
    }
    if !has_placeholder(value) {
        return Ok(Data::Json(value.clone()));
    }
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| reconstruct(v, attachments))
            .collect::<Result<_, _>>()
            .map(Data::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), reconstruct(v, attachments)?)))
            .collect::<Result<_, _>>()
            .map(Data::Object),
        // Scalars are never placeholders, and `has_placeholder` said there is one below.
        _ => Ok(Data::Json(value.clone())),
    }
}

/// An EVENT `[name, args...]` to the root namespace, without an ack id.
pub fn event(name: &str, args: Vec<Value>) -> Packet {
    let mut items = Vec::with_capacity(args.len() + 1);
    items.push(Value::from(name));
    items.extend(args);
    Packet::new(PacketKind::Event, Some(Value::Array(items)))
}

/// The ACK answering ack id `id` with `args`.
pub fn ack(id: u64, args: Vec<Value>) -> Packet {
    Packet::new(PacketKind::Ack, Some(Value::Array(args))).with_id(id)
}

/// The CONNECT answer of an accepted client: `0{"sid":...}`.
pub fn connect_ok(sid: &str) -> Packet {
    let mut obj = Map::new();
    obj.insert("sid".to_owned(), Value::from(sid));
    Packet::new(PacketKind::Connect, Some(Value::Object(obj)))
}

/// The CONNECT_ERROR answer of a refused client: `4{"message":...}`.
pub fn connect_error(message: &str) -> Packet {
    let mut obj = Map::new();
    obj.insert("message".to_owned(), Value::from(message));
    Packet::new(PacketKind::ConnectError, Some(Value::Object(obj)))
}

/// An event whose arguments may hold bytes: a BINARY_EVENT with attachments when they do, a
/// plain EVENT otherwise.
pub fn event_with_bytes(name: &str, args: Vec<Data>) -> Message {
    let mut items = Vec::with_capacity(args.len() + 1);
    items.push(Data::Json(Value::from(name)));
    items.extend(args);
    binary_message(PacketKind::Event, None, Data::Array(items))
}

/// An ACK whose arguments may hold bytes (BINARY_ACK when they do).
pub fn ack_with_bytes(id: u64, args: Vec<Data>) -> Message {
    binary_message(PacketKind::Ack, Some(id), Data::Array(args))
}

fn binary_message(kind: PacketKind, id: Option<u64>, data: Data) -> Message {
    let (value, attachments) = deconstruct(data);
    let kind = binary_kind(kind, !attachments.is_empty());
    let mut packet = Packet::new(kind, Some(value));
    packet.id = id;
    packet.attachments = attachments.len();
    Message {
        packet,
        attachments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn dec(text: &str) -> Result<Packet, SioError> {
        decode(text, &Limits::default())
    }

    fn packet(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<Value>) -> Packet {
        Packet {
            kind,
            nsp: nsp.to_owned(),
            id,
            data,
            attachments: 0,
        }
    }

    #[test]
    fn decodes_the_protocol_examples() {
        use PacketKind::*;
        assert_eq!(dec("0"), Ok(packet(Connect, "/", None, None)));
        assert_eq!(
            dec("0/admin,{\"token\":\"123\"}"),
            Ok(packet(
                Connect,
                "/admin",
                None,
                Some(json!({"token": "123"}))
            ))
        );
        assert_eq!(
            dec("1/admin,"),
            Ok(packet(Disconnect, "/admin", None, None))
        );
        assert_eq!(
            dec("2[\"hello\",1]"),
            Ok(packet(Event, "/", None, Some(json!(["hello", 1]))))
        );
        assert_eq!(
            dec("2/admin,456[\"project:delete\",123]"),
            Ok(packet(
                Event,
                "/admin",
                Some(456),
                Some(json!(["project:delete", 123]))
            ))
        );
        assert_eq!(
            dec("3/admin,456[]"),
            Ok(packet(Ack, "/admin", Some(456), Some(json!([]))))
        );
        assert_eq!(
            dec("4{\"message\":\"Unauthorized\"}"),
            Ok(packet(
                ConnectError,
                "/",
                None,
                Some(json!({"message": "Unauthorized"}))
            ))
        );
        let binary = dec("51-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(binary.kind, BinaryEvent);
        assert_eq!(binary.attachments, 1);
        let binary_ack = dec("61-/admin,456[{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((binary_ack.kind, binary_ack.id), (BinaryAck, Some(456)));
        assert_eq!(binary_ack.nsp, "/admin");
        // The namespace may end the text without a comma; `/,` is the root.
        assert_eq!(dec("0/admin").map(|p| p.nsp), Ok("/admin".to_owned()));
        assert_eq!(dec("2/,[\"a\"]").map(|p| p.nsp), Ok("/".to_owned()));
    }

    #[test]
    fn event_accessor() {
        let p = dec("212[\"chat\",{\"to\":\"all\"},2]").unwrap();
        let (name, args) = p.event().unwrap();
        assert_eq!(name, "chat");
        assert_eq!(args, &[json!({"to": "all"}), json!(2)]);
        assert_eq!(p.id, Some(12));
        assert_eq!(dec("2[7]").unwrap().event(), None);
        assert_eq!(ack(1, vec![]).event(), None);
    }

    #[test]
    fn malformed_packets_are_typed_errors() {
        use SioError::*;
        assert_eq!(dec(""), Err(Empty));
        assert_eq!(dec("7"), Err(UnknownType(b'7')));
        assert_eq!(dec("x[]"), Err(UnknownType(b'x')));
        assert_eq!(dec("5[\"a\"]"), Err(BadAttachmentCount));
        assert_eq!(dec("5-[\"a\"]"), Err(BadAttachmentCount));
        assert_eq!(dec("51[\"a\"]"), Err(BadAttachmentCount));
        assert_eq!(dec("511-[\"a\"]"), Err(TooManyAttachments { max: 10 }));
        assert_eq!(
            dec("599999999999999999999999-[\"a\"]"),
            Err(TooManyAttachments { max: 10 })
        );
        assert_eq!(
            dec("218446744073709551615[\"a\"]").map(|p| p.id),
            Ok(Some(u64::MAX))
        );
        assert_eq!(dec("218446744073709551616[\"a\"]"), Err(AckIdTooLarge));
        assert!(matches!(dec("2[\"a\""), Err(InvalidJson(_))));
        assert!(matches!(dec("2[1e999]"), Err(InvalidJson(_))));
        assert!(matches!(dec("2"), Err(InvalidPayload(_))));
        assert!(matches!(dec("2[]"), Err(InvalidPayload(_))));
        assert!(matches!(dec("2{}"), Err(InvalidPayload(_))));
        assert!(matches!(dec("2[null]"), Err(InvalidPayload(_))));
        assert!(matches!(dec("3{}"), Err(InvalidPayload(_))));
        assert!(matches!(dec("0[]"), Err(InvalidPayload(_))));
        assert!(matches!(dec("1{}"), Err(InvalidPayload(_))));
        assert!(matches!(dec("4[]"), Err(InvalidPayload(_))));
        assert_eq!(
            dec("2[\"disconnect\"]"),
            Err(ReservedEvent("disconnect".into()))
        );
        // Placeholders must name an announced attachment.
        assert_eq!(
            dec("51-[\"a\",{\"_placeholder\":true,\"num\":1}]"),
            Err(BadPlaceholder)
        );
        assert_eq!(
            dec("51-[\"a\",{\"_placeholder\":true,\"num\":-1}]"),
            Err(BadPlaceholder)
        );
        assert_eq!(
            dec("51-[\"a\",{\"_placeholder\":true}]"),
            Err(BadPlaceholder)
        );
        let deep = format!("2{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(dec(&deep), Err(InvalidJson(_))));
    }

    #[test]
    fn size_is_checked_first() {
        let limits = Limits {
            max_packet: 4,
            ..Limits::default()
        };
        assert_eq!(
            decode("2[\"ab\"]", &limits),
            Err(SioError::TooLarge { len: 7, max: 4 })
        );
    }

    #[test]
    fn builders_encode_as_socket_io_does() {
        assert_eq!(connect_ok("abc").encode(), "0{\"sid\":\"abc\"}");
        assert_eq!(
            connect_error("Unauthorized").encode(),
            "4{\"message\":\"Unauthorized\"}"
        );
        assert_eq!(
            event("chat_update", vec![json!({"msg": "hi"})]).encode(),
            "2[\"chat_update\",{\"msg\":\"hi\"}]"
        );
        assert_eq!(event("x", vec![]).with_id(7).encode(), "27[\"x\"]");
        assert_eq!(
            ack(12, vec![json!({"ok": true})]).encode(),
            "312[{\"ok\":true}]"
        );
        let mut p = connect_error("Invalid namespace");
        p.nsp = "/admin".into();
        assert_eq!(p.encode(), "4/admin,{\"message\":\"Invalid namespace\"}");
    }

    #[test]
    fn binary_event_round_trip_through_the_decoder() {
        let msg = event_with_bytes(
            "upload",
            vec![Data::Object(vec![
                ("name".into(), Data::Json(json!("a.bin"))),
                ("data".into(), Data::Bytes(vec![1, 2, 3])),
                ("thumb".into(), Data::Bytes(vec![])),
            ])],
        );
        let (text, attachments) = msg.encode();
        assert_eq!(
            text,
            "52-[\"upload\",{\"data\":{\"_placeholder\":true,\"num\":0},\"name\":\"a.bin\",\
             \"thumb\":{\"_placeholder\":true,\"num\":1}}]"
        );
        assert_eq!(attachments, &[vec![1, 2, 3], vec![]]);

        let mut decoder = Decoder::new(Limits::default());
        assert_eq!(decoder.feed_text(&text), Ok(None));
        assert!(decoder.is_waiting());
        assert_eq!(decoder.feed_binary(attachments[0].clone()), Ok(None));
        let got = decoder
            .feed_binary(attachments[1].clone())
            .unwrap()
            .unwrap();
        assert!(!decoder.is_waiting());
        assert_eq!(got, msg);
        let Some(Data::Array(items)) = got.data().unwrap() else {
            panic!("not an array")
        };
        let Data::Object(fields) = &items[1] else {
            panic!("not an object")
        };
        assert!(fields.contains(&("data".into(), Data::Bytes(vec![1, 2, 3]))));
        assert!(fields.contains(&("name".into(), Data::Json(json!("a.bin")))));
    }

    #[test]
    fn events_without_bytes_stay_plain() {
        let msg = event_with_bytes("x", vec![Data::Json(json!(1))]);
        assert_eq!(msg.packet.kind, PacketKind::Event);
        assert_eq!(msg.encode(), ("2[\"x\",1]".to_owned(), &[][..]));
        let msg = ack_with_bytes(3, vec![Data::Bytes(vec![9])]);
        assert_eq!(msg.encode().0, "61-3[{\"_placeholder\":true,\"num\":0}]");
        // A binary packet announcing no attachments is complete at once.
        let mut decoder = Decoder::default();
        let got = decoder.feed_text("50-[\"x\"]").unwrap().unwrap();
        assert_eq!(got.packet.kind, PacketKind::BinaryEvent);
        assert!(got.attachments.is_empty());
    }

    #[test]
    fn decoder_sequencing_errors() {
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.feed_binary(vec![1]),
            Err(SioError::UnexpectedBinary)
        );
        assert_eq!(decoder.feed_text("51-[\"a\"]"), Ok(None));
        assert_eq!(decoder.feed_text("2[\"a\"]"), Err(SioError::UnexpectedText));
        // The decoder was reset by the error.
        assert!(!decoder.is_waiting());
        let limits = Limits {
            max_attachment_bytes: 4,
            ..Limits::default()
        };
        let mut decoder = Decoder::new(limits);
        assert_eq!(decoder.feed_text("52-[\"a\"]"), Ok(None));
        assert_eq!(decoder.feed_binary(vec![0; 3]), Ok(None));
        assert_eq!(
            decoder.feed_binary(vec![0; 2]),
            Err(SioError::AttachmentsTooLarge { max: 4 })
        );
        assert!(!decoder.is_waiting());
    }

    #[test]
    fn placeholders_in_plain_events_are_just_data() {
        let mut decoder = Decoder::default();
        let text = "2[\"a\",{\"_placeholder\":true,\"num\":5}]";
        let msg = decoder.feed_text(text).unwrap().unwrap();
        assert_eq!(
            msg.data(),
            Ok(Some(Data::Json(
                json!(["a", {"_placeholder": true, "num": 5}])
            )))
        );
    }

    #[test]
    fn reconstruct_reuses_and_checks_indexes() {
        let value = json!([{"_placeholder": true, "num": 0}, {"_placeholder": true, "num": 0}]);
        let data = reconstruct(&value, &[vec![7]]).unwrap();
        assert_eq!(
            data,
            Data::Array(vec![Data::Bytes(vec![7]), Data::Bytes(vec![7])])
        );
        assert_eq!(reconstruct(&value, &[]), Err(SioError::BadPlaceholder));
        assert_eq!(
            reconstruct(&json!({"a": 1}), &[]),
            Ok(Data::Json(json!({"a": 1})))
        );
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ]
    }

    fn data_strategy() -> impl Strategy<Value = Data> {
        let leaf = prop_oneof![
            json_leaf().prop_map(Data::Json),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Data::Bytes),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Data::Array),
                proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Data::Object(m.into_iter().collect())),
            ]
        })
    }

    fn packet_strategy() -> impl Strategy<Value = Packet> {
        let nsp = prop_oneof![Just("/".to_owned()), "/[a-z0-9]{1,6}"];
        let id = proptest::option::of(any::<u64>());
        let args = proptest::collection::vec(json_leaf(), 0..4);
        (0u8..5, nsp, id, args, "[a-z_:]{1,10}").prop_map(|(t, nsp, id, args, name)| {
            let (kind, data) = match t {
                0 => (PacketKind::Connect, Some(json!({"auth": args}))),
                1 => (PacketKind::Disconnect, None),
                2 => {
                    let mut items = vec![Value::from(format!("ev_{name}"))];
                    items.extend(args);
                    (PacketKind::Event, Some(Value::Array(items)))
                }
                3 => (PacketKind::Ack, Some(Value::Array(args))),
                _ => (PacketKind::ConnectError, Some(Value::from(name))),
            };
            Packet {
                kind,
                nsp,
                id,
                data,
                attachments: 0,
            }
        })
    }

    #[test]
    fn large_numbers_survive_a_round_trip() {
        // A number re-encoded and decoded again is the same number (serde_json's
        // float_roundtrip; the fast parser was off by one in the last digit here).
        let p = dec("3[1111111111111111111111]").unwrap();
        assert_eq!(dec(&p.encode()), Ok(p));
    }

    proptest! {
        #[test]
        fn text_round_trip(p in packet_strategy()) {
            prop_assert_eq!(dec(&p.encode()), Ok(p));
        }

        #[test]
        fn binary_round_trip(name in "[a-z]{1,8}", args in proptest::collection::vec(data_strategy(), 0..4)) {
            let msg = event_with_bytes(&name, args.clone());
            let (text, attachments) = msg.encode();
            // Generated data may carry more attachments than the default limit; the limit has
            // tests of its own, this one is about the round trip.
            let mut decoder = Decoder::new(Limits {
                max_attachments: 4096,
                ..Limits::default()
            });
            let mut got = decoder.feed_text(&text).unwrap();
            for a in attachments {
                prop_assert!(got.is_none());
                got = decoder.feed_binary(a.clone()).unwrap();
            }
            let got = got.unwrap();
            prop_assert_eq!(&got, &msg);
            // Reconstructing then deconstructing gives back the same JSON and bytes.
            let data = got.data().unwrap().unwrap();
            prop_assert_eq!(deconstruct(data), (msg.packet.data.clone().unwrap(), msg.attachments.clone()));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[0-6]?[0-9-]{0,3}/?[a-z,]{0,3}[0-9]{0,3}.{0,20}") {
            if let Ok(p) = dec(&text) {
                prop_assert_eq!(dec(&p.encode()), Ok(p));
            }
        }
    }
}
