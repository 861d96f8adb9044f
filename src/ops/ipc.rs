//! Messaging between callers: REGISTER, SEND, RECV, BROADCAST (mailboxes are
//! [`crate::kernel::ipc`]).

use super::Ops;
use crate::kernel::ipc::Message;
use crate::kernel::request::{Outcome, error, parse, parse_borrowed, to_bytes};
use crate::kernel::{Call, CallerId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Deserialize)]
struct RegisterReq {
    name: String,
}

/// REGISTER `{name}`. A plain client's name lives in memory (it goes with its connection). A
/// supervised agent's name is durable: the name is taken in memory at once (so two callers
/// cannot both get it), the reply is sent once the state store has committed it, and if the
/// commit fails the caller gets its previous name back and an error.
pub fn register(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: RegisterReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let ok = |caller: CallerId, name: &str| {
        to_bytes(&json!({"success": true, "agent_id": caller, "name": name}))
    };
    let agent = k.with_caller(call.caller, |c| c.kind) == Some(crate::kernel::CallerKind::Agent);
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

pub fn send(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
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
    if let Err(e) = k.ipc.lock().send(call.caller, to, message) {
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

pub fn recv(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req: RecvReq = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let max = req.max.unwrap_or(10).clamp(1, 1000);
    let taken: Vec<Message> = k.ipc.lock().take(call.caller, max);
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
            message: m.body.raw(),
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

pub fn broadcast(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
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
        targets.retain(|to| *to != call.caller || req.include_self);
        targets.sort_unstable();
        if !targets.is_empty() {
            // One copy of the body for every mailbox, charged once to the daemon-wide budget.
            let body = match ipc.body(message) {
                Ok(b) => b,
                Err(e) => return Outcome::Reply(error(e.to_string())),
            };
            let from_name = ipc.sender_name(call.caller);
            for to in targets {
                match ipc.deliver(call.caller, from_name.clone(), to, &body) {
                    Ok(()) => delivered.push(to),
                    Err(_) => failed += 1,
                }
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
