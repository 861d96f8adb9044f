//! Async requests: EXEC, HTTP and THINK with `"async": true`, and ASYNC_POLL.
//!
//! An async request is accepted at once with a `request_id`; its result (the JSON text of the
//! reply the synchronous form would have sent) waits in the caller's bounded result queue until
//! ASYNC_POLL takes it. A caller can have at most `limits.async_max_outstanding` requests
//! accepted but not yet polled; more are refused with a clear error.

use super::request::{Outcome, peek, to_bytes};
use super::{Call, CallerId, Kernel, Responder};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

/// A finished async request.
#[derive(Debug, Clone)]
pub struct AsyncResult {
    pub request_id: Value,
    pub opcode: u8,
    /// The JSON text of the synchronous reply.
    pub payload: String,
}

#[derive(Default)]
struct Slot {
    outstanding: usize,
    ready: VecDeque<AsyncResult>,
}

/// Per-caller async results.
pub struct AsyncResults {
    cap: usize,
    slots: HashMap<CallerId, Slot>,
}

impl AsyncResults {
    pub fn new(cap: usize) -> AsyncResults {
        AsyncResults {
            cap,
            slots: HashMap::new(),
        }
    }

    /// Counts one more outstanding request, or refuses when the caller has too many.
    pub fn reserve(&mut self, caller: CallerId) -> Result<(), String> {
        let slot = self.slots.entry(caller).or_default();
        if slot.outstanding >= self.cap {
            return Err(format!(
                "too many async requests outstanding ({}); poll results with ASYNC_POLL first",
                self.cap
            ));
        }
        slot.outstanding += 1;
        Ok(())
    }

    /// Gives back a slot reserved for a request that was refused before it started.
    pub fn release(&mut self, caller: CallerId) {
        if let Some(slot) = self.slots.get_mut(&caller) {
            slot.outstanding = slot.outstanding.saturating_sub(1);
        }
    }

    /// Files a result. Dropped if the caller went away meanwhile.
    pub fn complete(&mut self, caller: CallerId, result: AsyncResult) {
        if let Some(slot) = self.slots.get_mut(&caller) {
            slot.ready.push_back(result);
        }
    }

    /// Takes up to `max` finished results.
    pub fn take(&mut self, caller: CallerId, max: usize) -> Vec<AsyncResult> {
        match self.slots.get_mut(&caller) {
            Some(slot) => {
                let n = max.min(slot.ready.len());
                slot.outstanding -= n;
                slot.ready.drain(..n).collect()
            }
            None => vec![],
        }
    }

    pub fn forget(&mut self, caller: CallerId) {
        self.slots.remove(&caller);
    }
}

#[derive(Deserialize, Default)]
struct AsyncFlags {
    #[serde(rename = "async", default)]
    is_async: Option<Value>,
    request_id: Option<Value>,
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// The `async` and `request_id` fields of an EXEC-like request: `"async": true` gives
/// `Some(request_id)` (the client's, or a new `PREFIX-CALLER-N`); absent or false gives `None`.
pub fn async_id(
    is_async: Option<Value>,
    request_id: Option<Value>,
    prefix: &str,
    caller: CallerId,
) -> Result<Option<Value>, String> {
    match is_async {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(other) => {
            return Err(format!(
                "invalid request: field `async`: expected a boolean, got {other}"
            ));
        }
    }
    match request_id {
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(Some(v)),
        Some(Value::Null) | None => Ok(Some(Value::String(format!(
            "{prefix}-{caller}-{}",
            NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)
        )))),
        Some(other) => Err(format!(
            "invalid request: field `request_id` must be a string or number, got {other}"
        )),
    }
}

/// Reserves a result slot for an accepted async request and returns the `accepted` reply.
pub fn accept(k: &Kernel, caller: CallerId, request_id: &Value) -> Result<Vec<u8>, String> {
    k.asyncq.lock().reserve(caller)?;
    Ok(to_bytes(&json!({
        "success": true,
        "async": true,
        "request_id": request_id,
        "status": "accepted",
    })))
}

/// A worker op's `async` decision, taken before the work starts: for `"async": true` a result
/// slot is reserved (so a caller with too many outstanding requests is refused before anything
/// runs). Then either [`Reservation::start`] (the work started) or [`Reservation::cancel`] (it
/// was refused: the error goes back on the connection, the slot is given back).
pub struct Reservation {
    caller: CallerId,
    op: u8,
    request_id: Option<Value>,
}

impl Reservation {
    /// Reads `async` and `request_id` and reserves a result slot when async.
    pub fn new(k: &Kernel, call: &Call, payload: &[u8]) -> Result<Reservation, String> {
        // Only two fields of the request, which the op parses in full (and warns about).
        let flags: AsyncFlags = peek(payload).unwrap_or_default();
        let prefix = crate::proto::op::name(call.op).to_ascii_lowercase();
        let request_id = async_id(flags.is_async, flags.request_id, &prefix, call.caller)?;
        if request_id.is_some() {
            k.asyncq.lock().reserve(call.caller)?;
        }
        Ok(Reservation {
            caller: call.caller,
            op: call.op,
            request_id,
        })
    }

    /// The work has started: an async request is told `accepted` now and its result is filed
    /// later; a synchronous one waits for the result on `responder`.
    pub fn start(self, responder: Responder) -> ReplyTo {
        match self.request_id {
            None => ReplyTo::Sync(responder),
            Some(request_id) => {
                responder.reply(&to_bytes(&json!({
                    "success": true,
                    "async": true,
                    "request_id": request_id,
                    "status": "accepted",
                })));
                ReplyTo::Async {
                    caller: self.caller,
                    op: self.op,
                    request_id,
                }
            }
        }
    }

    /// The request was refused before it started.
    pub fn cancel(self, k: &Kernel) {
        if self.request_id.is_some() {
            k.asyncq.lock().release(self.caller);
        }
    }
}

/// Where the reply to a request that finishes later goes: straight back on the connection
/// (synchronous), or into the caller's async results for ASYNC_POLL.
pub enum ReplyTo {
    Sync(Responder),
    Async {
        caller: CallerId,
        op: u8,
        request_id: Value,
    },
}

impl ReplyTo {
    /// For an op handled on the reactor thread that answers later (THINK, HTTP): with a
    /// `request_id` (the request said `"async": true`) the `accepted` reply is the outcome now
    /// and the result is filed later; without, the reply waits for the result.
    pub fn for_inline(
        k: &Kernel,
        call: &Call,
        request_id: Option<Value>,
    ) -> Result<(ReplyTo, Outcome), String> {
        Ok(match request_id {
            None => (ReplyTo::Sync(k.responder(call)), Outcome::Deferred),
            Some(request_id) => {
                let accepted = accept(k, call.caller, &request_id)?;
                (
                    ReplyTo::Async {
                        caller: call.caller,
                        op: call.op,
                        request_id,
                    },
                    Outcome::Reply(accepted),
                )
            }
        })
    }

    /// Delivers the reply payload.
    pub fn deliver(self, k: &Kernel, reply: &[u8]) {
        match self {
            ReplyTo::Sync(r) => r.reply(reply),
            ReplyTo::Async {
                caller,
                op,
                request_id,
            } => k.asyncq.lock().complete(
                caller,
                AsyncResult {
                    request_id,
                    opcode: op,
                    payload: String::from_utf8_lossy(reply).into_owned(),
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outstanding_is_bounded_until_polled() {
        let mut q = AsyncResults::new(2);
        q.reserve(1).unwrap();
        q.reserve(1).unwrap();
        assert!(q.reserve(1).is_err());
        q.complete(
            1,
            AsyncResult {
                request_id: json!("a"),
                opcode: 2,
                payload: "{}".into(),
            },
        );
        assert!(
            q.reserve(1).is_err(),
            "completed but not polled still counts"
        );
        assert_eq!(q.take(1, 10).len(), 1);
        q.reserve(1).unwrap();
        q.forget(1);
        q.complete(
            1,
            AsyncResult {
                request_id: json!("b"),
                opcode: 2,
                payload: "{}".into(),
            },
        );
        assert!(q.take(1, 10).is_empty());
    }
}
