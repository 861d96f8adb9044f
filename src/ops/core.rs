//! NOOP, HELLO and EXIT: the ops that need no state.

use super::{NAMES, Ops, Route, route};
use crate::kernel::Call;
use crate::kernel::request::{Outcome, to_bytes};
use serde_json::{Map, Value, json};

/// Protocol version reported by HELLO.
pub const PROTOCOL_VERSION: u32 = 1;

/// NOOP echoes the payload bytes unchanged.
pub fn noop(_: &Ops, _: &Call, payload: &[u8]) -> Outcome {
    Outcome::Reply(payload.to_vec())
}

/// HELLO: who the kernel is, what it offers, and the caller's id.
pub fn hello(o: &Ops, call: &Call, _: &[u8]) -> Outcome {
    let mut features = Map::new();
    for (code, name) in NAMES {
        features.insert(
            name.to_ascii_lowercase(),
            Value::Bool(!matches!(route(*code), None | Some(Route::Unavailable))),
        );
    }
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "protocol_version": PROTOCOL_VERSION,
        "kernel": "clove",
        "kernel_version": env!("CARGO_PKG_VERSION"),
        "features": features,
        "agent_id": call.caller,
        // Commit counters and batch sizes of the state store's writer.
        "store": o.kernel.store.stats_json(),
        "queues": queues(o),
        "services": o
            .services
            .iter()
            .map(|p| (p.name.to_string(), (p.report)()))
            .collect::<Map<String, Value>>(),
    })))
}

/// The daemon's internal queues as they are now: what waits in each, and its configured
/// capacity (so an operator can see a saturated daemon, and which key to raise).
fn queues(o: &Ops) -> Value {
    let (queued, capacity) = (o.completion_queue)();
    let mut q = json!({
        "completion": {"queued": queued, "capacity": capacity, "key": "server.completion_queue"},
    });
    let (bytes, capacity) = (o.pending_replies)();
    q["replies"] = json!({
        "bytes": bytes,
        "capacity": capacity,
        "key": "server.pending_reply_total_bytes",
    });
    let (bytes, capacity) = o.kernel.ipc.lock().total_bytes();
    q["mailboxes"] = json!({
        "bytes": bytes,
        "capacity": capacity,
        "key": "limits.mailboxes_total_bytes",
    });
    q["exec"] = json!({
        "running": o.commands.running(),
        "capacity": o.config.exec.max_running,
        "key": "exec.max_running",
    });
    if let Some(h) = o.agents.handle() {
        q["supervisor"] = json!({
            "queued": h.queued(),
            "capacity": h.capacity(),
            "key": "agents.command_queue",
        });
    }
    q
}

/// EXIT replies `goodbye` and closes the connection once the reply is flushed.
pub fn exit(_: &Ops, _: &Call, _: &[u8]) -> Outcome {
    Outcome::ReplyClose(b"goodbye".to_vec())
}
