//! Messaging between callers: REGISTER, SEND, RECV, BROADCAST.
//!
//! Every caller has a bounded mailbox (message count and bytes). A full mailbox refuses new
//! messages with a clear error to the sender instead of growing or silently dropping. Names are
//! unique among live callers and are released when their holder goes away for good.

use super::request::{Outcome, error, parse, parse_borrowed, to_bytes};
use super::{Call, CallerId, Kernel};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Longest name (REGISTER, agent names) by default: `limits.max_name_bytes`.
pub const DEFAULT_MAX_NAME_BYTES: usize = 64;
/// The largest `limits.max_name_bytes` accepted: agent names become file names
/// (`NAME.log.N`) and cgroup directories (`NAME-ID`), which must fit the 255-byte limit of a
/// path component.
pub const MAX_NAME_BYTES_LIMIT: usize = 200;

struct Message {
    from: CallerId,
    from_name: Option<String>,
    body: Box<RawValue>,
    at: Instant,
}

#[derive(Default)]
struct Mailbox {
    messages: VecDeque<Message>,
    bytes: usize,
}

/// Names and mailboxes.
pub struct Ipc {
    cap: usize,
    cap_bytes: usize,
    /// Longest name (`limits.max_name_bytes`).
    max_name: usize,
    names: HashMap<String, CallerId>,
    name_of: HashMap<CallerId, String>,
    mailboxes: HashMap<CallerId, Mailbox>,
}

/// Why a message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full { to: CallerId, max: usize },
    TooManyBytes { to: CallerId, max: usize },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Full { to, max } => {
                write!(
                    f,
                    "mailbox of agent {to} is full ({max} messages); try again later"
                )
            }
            SendError::TooManyBytes { to, max } => write!(
                f,
                "mailbox of agent {to} is full ({max} bytes queued); try again later"
            ),
        }
    }
}

/// Checks a name for REGISTER (and agent names, which are also used in paths) against the
/// character rules and `max` bytes (`limits.max_name_bytes`).
pub fn valid_name(name: &str, max: usize) -> Result<(), String> {
    if name.len() > max {
        // The name itself is not echoed: it may be as large as a whole frame.
        return Err(format!(
            "invalid name: {} bytes is longer than the limit of {max} bytes (limits.max_name_bytes)",
            name.len()
        ));
    }
    let ok = !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: 1 to {max} characters from A-Z a-z 0-9 _ - . :, not starting with '.' or '-'"
        ))
    }
}

impl Ipc {
    pub fn new(cap: usize) -> Ipc {
        Ipc::with_bytes(cap, 16 << 20)
    }

    pub fn with_bytes(cap: usize, cap_bytes: usize) -> Ipc {
        Ipc::with_limits(cap, cap_bytes, DEFAULT_MAX_NAME_BYTES)
    }

    /// Mailboxes of `cap` messages and `cap_bytes` bytes; names of at most `max_name` bytes.
    pub fn with_limits(cap: usize, cap_bytes: usize, max_name: usize) -> Ipc {
        Ipc {
            cap,
            cap_bytes,
            max_name,
            names: HashMap::new(),
            name_of: HashMap::new(),
            mailboxes: HashMap::new(),
        }
    }

    /// Gives `caller` the name `name`, releasing any name it held before.
    pub fn register(&mut self, caller: CallerId, name: &str) -> Result<(), String> {
        valid_name(name, self.max_name)?;
        match self.names.get(name) {
            Some(holder) if *holder != caller => {
                return Err(format!(
                    "name {name:?} is already registered by agent {holder}"
                ));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        if let Some(old) = self.name_of.remove(&caller) {
            self.names.remove(&old);
        }
        self.names.insert(name.to_string(), caller);
        self.name_of.insert(caller, name.to_string());
        Ok(())
    }

    pub fn lookup(&self, name: &str) -> Option<CallerId> {
        self.names.get(name).copied()
    }

    pub fn name_of(&self, caller: CallerId) -> Option<&str> {
        self.name_of.get(&caller).map(String::as_str)
    }

    /// Releases `caller`'s name, if any.
    pub fn release_name(&mut self, caller: CallerId) {
        if let Some(old) = self.name_of.remove(&caller) {
            self.names.remove(&old);
        }
    }

    /// Queues a message.
    pub fn deliver(
        &mut self,
        from: CallerId,
        to: CallerId,
        body: &RawValue,
    ) -> Result<(), SendError> {
        let from_name = self.name_of.get(&from).cloned();
        let (cap, cap_bytes) = (self.cap, self.cap_bytes);
        let mb = self.mailboxes.entry(to).or_default();
        if mb.messages.len() >= cap {
            return Err(SendError::Full { to, max: cap });
        }
        let len = body.get().len();
        if mb.bytes + len > cap_bytes {
            return Err(SendError::TooManyBytes { to, max: cap_bytes });
        }
        mb.bytes += len;
        mb.messages.push_back(Message {
            from,
            from_name,
            body: body.to_owned(),
            at: Instant::now(),
        });
        Ok(())
    }

    /// Every caller holding a name.
    pub fn registered(&self) -> Vec<CallerId> {
        self.name_of.keys().copied().collect()
    }

    /// Messages waiting for `caller`.
    pub fn queued(&self, caller: CallerId) -> usize {
        self.mailboxes.get(&caller).map_or(0, |m| m.messages.len())
    }

    /// Drops a caller's name and mailbox.
    pub fn forget(&mut self, caller: CallerId) {
        self.release_name(caller);
        self.mailboxes.remove(&caller);
    }
}

#[derive(Deserialize)]
struct RegisterReq {
    name: String,
}

/// REGISTER `{name}`. A plain client's name lives in memory (it goes with its connection). A
/// supervised agent's name is durable: the name is taken in memory at once (so two callers
/// cannot both get it), the reply is sent once the state store has committed it, and if the
/// commit fails the caller gets its previous name back and an error.
pub fn register(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: RegisterReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let ok = |caller: CallerId, name: &str| {
        to_bytes(&json!({"success": true, "agent_id": caller, "name": name}))
    };
    let agent = k.with_caller(call.caller, |c| c.kind) == Some(super::CallerKind::Agent);
    if !agent || !k.store.is_durable() {
        return match k.ipc.lock().register(call.caller, &req.name) {
            Ok(()) => Outcome::Reply(ok(call.caller, &req.name)),
            Err(e) => Outcome::Reply(error(e)),
        };
    }
    if let Err(e) = k.store.precheck() {
        return Outcome::Reply(error(format!("cannot register {:?}: {e}", req.name)));
    }
    let previous = {
        let mut ipc = k.ipc.lock();
        let previous = ipc.name_of(call.caller).map(str::to_string);
        if let Err(e) = ipc.register(call.caller, &req.name) {
            return Outcome::Reply(error(e));
        }
        previous
    };
    let responder = k.responder(call);
    let ipc = k.ipc.clone();
    let caller = call.caller;
    let name = req.name;
    k.store.submit_agent_name(
        &name.clone(),
        caller,
        Box::new(move |result| match result {
            Ok(_) => responder.reply(&ok(caller, &name)),
            Err(e) => {
                let mut ipc = ipc.lock();
                if ipc.name_of(caller) == Some(name.as_str()) {
                    ipc.release_name(caller);
                    if let Some(p) = previous {
                        let _ = ipc.register(caller, &p);
                    }
                }
                drop(ipc);
                responder.error(format!("cannot register {name:?}: {e}"));
            }
        }),
    );
    Outcome::Deferred
}

#[derive(Deserialize)]
struct SendReq<'a> {
    to: Option<Value>,
    to_name: Option<String>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

pub fn send(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: SendReq = match parse_borrowed(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let Some(message) = req.message else {
        return Outcome::Reply(error("invalid request: missing field `message`"));
    };
    let to = match (&req.to, &req.to_name) {
        (Some(Value::Number(n)), _) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(id) => id,
            None => return Outcome::Reply(error(format!("invalid recipient id {n}"))),
        },
        // The SDK's send_message(to=...) may pass a name in `to`.
        (Some(Value::String(name)), _) | (None, Some(name)) => match k.ipc.lock().lookup(name) {
            Some(id) => id,
            None => {
                return Outcome::Reply(error(format!("no agent is registered as {name:?}")));
            }
        },
        (Some(other), _) => {
            return Outcome::Reply(error(format!(
                "invalid request: field `to` must be an agent id (number), got {other}"
            )));
        }
        (None, None) => {
            return Outcome::Reply(error(
                "missing recipient: give `to` (agent id) or `to_name`",
            ));
        }
    };
    if !k.is_caller(to) {
        return Outcome::Reply(error(format!("no agent has id {to}")));
    }
    if let Err(e) = k.ipc.lock().deliver(call.caller, to, message) {
        return Outcome::Reply(error(e.to_string()));
    }
    k.events.lock().publish(
        "MESSAGE_RECEIVED",
        json!({"from": call.caller, "to": to}),
        call.caller,
        Some(to),
    );
    Outcome::Reply(to_bytes(&json!({"success": true, "delivered_to": to})))
}

#[derive(Deserialize, Default)]
struct RecvReq {
    max: Option<usize>,
}

pub fn recv(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: RecvReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let max = req.max.unwrap_or(10).clamp(1, 1000);
    let taken: Vec<Message> = {
        let mut ipc = k.ipc.lock();
        match ipc.mailboxes.get_mut(&call.caller) {
            Some(mb) => {
                let n = max.min(mb.messages.len());
                let taken: Vec<Message> = mb.messages.drain(..n).collect();
                mb.bytes -= taken.iter().map(|m| m.body.get().len()).sum::<usize>();
                taken
            }
            None => vec![],
        }
    };
    #[derive(serde::Serialize)]
    struct Out<'a> {
        from: CallerId,
        from_name: Option<&'a str>,
        message: &'a RawValue,
        age_ms: u64,
    }
    let now = Instant::now();
    let messages: Vec<Out> = taken
        .iter()
        .map(|m| Out {
            from: m.from,
            from_name: m.from_name.as_deref(),
            message: &m.body,
            age_ms: now.duration_since(m.at).as_millis() as u64,
        })
        .collect();
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        success: bool,
        count: usize,
        messages: Vec<Out<'a>>,
    }
    Outcome::Reply(to_bytes(&Reply {
        success: true,
        count: messages.len(),
        messages,
    }))
}

#[derive(Deserialize)]
struct BroadcastReq<'a> {
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    include_self: bool,
}

pub fn broadcast(k: &Kernel, call: &Call, payload: &[u8]) -> Outcome {
    let req: BroadcastReq = match parse_borrowed(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let Some(message) = req.message else {
        return Outcome::Reply(error("invalid request: missing field `message`"));
    };
    let mut delivered = Vec::new();
    let mut failed = 0usize;
    {
        let mut ipc = k.ipc.lock();
        let mut targets = ipc.registered();
        targets.sort_unstable();
        for to in targets {
            if to == call.caller && !req.include_self {
                continue;
            }
            match ipc.deliver(call.caller, to, message) {
                Ok(()) => delivered.push(to),
                Err(_) => failed += 1,
            }
        }
    }
    {
        let mut bus = k.events.lock();
        if bus.has_subscribers("MESSAGE_RECEIVED") {
            for to in &delivered {
                bus.publish(
                    "MESSAGE_RECEIVED",
                    json!({"from": call.caller, "to": to}),
                    call.caller,
                    Some(*to),
                );
            }
        }
    }
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "delivered_count": delivered.len(),
        "failed_count": failed,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn names_are_unique_and_released() {
        let mut ipc = Ipc::new(2);
        ipc.register(1, "alpha").unwrap();
        assert!(ipc.register(2, "alpha").is_err());
        ipc.register(1, "beta").unwrap();
        ipc.register(2, "alpha").unwrap();
        ipc.forget(2);
        assert_eq!(ipc.lookup("alpha"), None);
        assert!(valid_name("../etc", 64).is_err());
        assert!(valid_name("", 64).is_err());
        assert!(valid_name("worker-1.a:b", 64).is_ok());
        assert!(valid_name("abcd", 4).is_ok());
        let e = valid_name("abcde", 4).unwrap_err();
        assert!(e.contains("limits.max_name_bytes"), "{e}");
        let mut short = Ipc::with_limits(2, 100, 3);
        assert!(short.register(1, "abcd").is_err());
        short.register(1, "abc").unwrap();
    }

    #[test]
    fn bounded_mailbox() {
        let mut ipc = Ipc::with_bytes(2, 10);
        ipc.deliver(1, 2, &raw("1")).unwrap();
        ipc.deliver(1, 2, &raw("2")).unwrap();
        assert_eq!(
            ipc.deliver(1, 2, &raw("3")),
            Err(SendError::Full { to: 2, max: 2 })
        );
        assert_eq!(
            ipc.deliver(1, 3, &raw("\"0123456789\"")),
            Err(SendError::TooManyBytes { to: 3, max: 10 })
        );
    }
}
