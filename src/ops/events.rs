//! SUBSCRIBE, UNSUBSCRIBE, POLL_EVENTS and EMIT (the bus itself is [`crate::kernel::events`]).

use super::Ops;
use crate::kernel::Call;
use crate::kernel::events::{CUSTOM, KERNEL_EVENTS, check_type, json_len};
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Deserialize, Default)]
struct SubReq {
    event_types: Option<Vec<String>>,
    events: Option<Vec<String>>,
    event: Option<String>,
    #[serde(default)]
    all: bool,
}

impl SubReq {
    fn types(self) -> Vec<String> {
        let mut v = self.event_types.unwrap_or_default();
        v.extend(self.events.unwrap_or_default());
        v.extend(self.event);
        v
    }
}

pub fn subscribe(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let types = match parse::<SubReq>(payload) {
        Ok(r) => r.types(),
        Err(e) => return Outcome::Reply(error(e)),
    };
    if types.is_empty() {
        return Outcome::Reply(error(
            "no event types given: send {\"event_types\": [\"AGENT_EXITED\", ...]}",
        ));
    }
    let max = k.config.max_event_type_bytes;
    if let Some(e) = types.iter().find_map(|t| check_type(t, max).err()) {
        return Outcome::Reply(error(e));
    }
    match k.events.lock().subscribe(call.caller, &types) {
        Ok(all) => Outcome::Reply(to_bytes(&json!({"success": true, "subscribed": all}))),
        Err(e) => Outcome::Reply(error(e)),
    }
}

pub fn unsubscribe(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req = match parse::<SubReq>(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let all = req.all;
    let types = req.types();
    if !all && types.is_empty() {
        return Outcome::Reply(error(
            "nothing to unsubscribe: give event_types or \"all\": true",
        ));
    }
    let removed = k
        .events
        .lock()
        .unsubscribe(call.caller, if all { None } else { Some(&types) });
    Outcome::Reply(to_bytes(&json!({"success": true, "unsubscribed": removed})))
}

#[derive(Deserialize, Default)]
struct PollReq {
    max: Option<usize>,
}

pub fn poll(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req = match parse::<PollReq>(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let max = req.max.unwrap_or(100).clamp(1, 1000);
    let (events, dropped) = k.events.lock().take(call.caller, max);
    let now = Instant::now();
    let list: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "type": e.kind,
                "data": e.data,
                "source_agent_id": e.source,
                "age_ms": now.duration_since(e.at).as_millis() as u64,
                "timestamp": crate::clock::iso8601(e.wall),
            })
        })
        .collect();
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "count": list.len(),
        "events": list,
        "dropped": dropped,
    })))
}

#[derive(Deserialize)]
struct EmitReq {
    event_type: Option<String>,
    event: Option<String>,
    #[serde(default)]
    data: Value,
}

pub fn emit(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    let req = match parse::<EmitReq>(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let Some(name) = req.event_type.or(req.event) else {
        return Outcome::Reply(error(
            "missing event type: send {\"event_type\": \"CUSTOM\", \"data\": {...}}",
        ));
    };
    if let Err(e) = check_type(&name, k.config.max_event_type_bytes) {
        return Outcome::Reply(error(e));
    }
    if KERNEL_EVENTS.contains(&name.as_str()) {
        return Outcome::Reply(error(format!(
            "event type {name} is reserved for the kernel; emit CUSTOM or a name of your own"
        )));
    }
    let mut data = req.data;
    let alias = if name == CUSTOM {
        None
    } else {
        match &mut data {
            Value::Object(m) => {
                m.insert("custom_type".into(), Value::String(name.clone()));
            }
            other => {
                let value = other.take();
                data = json!({"custom_type": name, "value": value});
            }
        }
        Some(name.as_str())
    };
    let size = json_len(&data);
    if size > k.config.event_queue_bytes {
        return Outcome::Reply(error(format!(
            "event data is {size} bytes; a subscriber's queue holds at most {} (limits.event_queue_bytes)",
            k.config.event_queue_bytes
        )));
    }
    let delivered = k
        .events
        .lock()
        .publish_as(CUSTOM, alias, data, call.caller, None);
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "event": name,
        "delivered_to": delivered,
    })))
}
