//! The Clove binary protocol front-end on the Unix socket.
//!
//! Frames are decoded with the pure codec in [`crate::proto::clove`] and routed by the op table:
//! inline ops are answered right here on the reactor thread; worker ops are sent to the pool and
//! the connection waits (later frames stay buffered) until the reply comes back, so replies
//! are always in request order. A malformed stream (bad magic, oversized length) gets one error
//! reply and is closed, since no later frame boundary can be trusted. An inline handler that
//! panics does not take the event loop down with it: see `run_inline`.

use super::{ConnIo, Env, Outbox, Stop};
use crate::kernel::request::{self, Outcome, Warnings, error};
use crate::kernel::{Call, CallRecord, CallerId, Deliver, ReplyPath};
use crate::ops::{self, Ops, Route};
use crate::proto::clove;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Per-connection protocol state. Clove frames carry no session state beyond the connection's
/// identity, which lives in [`ConnIo`], and the way back for replies made on other threads.
pub struct CloveProto {
    pub max_payload: u64,
    back: ReplyPath,
    /// Unknown fields of the request being answered, for its reply (see [`request::Warnings`]).
    warnings: Arc<Warnings>,
}

/// Replies made off the reactor thread (or later): framed here, with the request's warnings
/// added, and handed to the connection's outbox.
struct CloveBack(Box<dyn Outbox>, Arc<Warnings>);

impl Deliver for CloveBack {
    fn deliver(&self, caller: CallerId, op: u8, payload: &[u8]) {
        let frame = match self.1.take() {
            Some(w) => clove::encode(caller, op, &request::with_warnings(payload.to_vec(), &w)),
            None => clove::encode(caller, op, payload),
        };
        self.0.reply(frame);
    }
}

impl CloveProto {
    pub fn new(max_payload: u64, outbox: Box<dyn Outbox>) -> CloveProto {
        let warnings = Warnings::new();
        CloveProto {
            max_payload,
            back: Arc::new(CloveBack(outbox, warnings.clone())),
            warnings,
        }
    }

    pub fn process(
        &mut self,
        input: &[u8],
        io: &mut ConnIo,
        env: &Env,
        budget: &mut usize,
    ) -> (usize, Stop) {
        let mut off = 0;
        loop {
            if io.busy || io.close_after_flush {
                return (off, Stop::Paused);
            }
            if *budget == 0 {
                return (off, Stop::Budget);
            }
            if env.output.full(io.pending_out(), io.held_out()) {
                return (off, Stop::OutputFull);
            }
            let (frame, used) = match clove::decode(&input[off..], self.max_payload) {
                Ok(Some(f)) => f,
                Ok(None) => return (off, Stop::NeedInput),
                Err(e) => {
                    env.warnings.warn(
                        module_path!(),
                        format_args!("conn={} caller={}: {e}", io.label, io.caller),
                    );
                    clove::encode_into(&mut io.out, io.caller, e.op(), &error(e.to_string()));
                    io.close_after_flush = true;
                    // Nothing after a broken frame can be trusted: drop it all.
                    return (input.len(), Stop::Paused);
                }
            };
            let call = Call {
                caller: io.caller,
                op: frame.header.op,
                peer: io.peer,
                back: &self.back,
            };
            match dispatch(env, &call, frame.payload, &self.warnings) {
                Dispatched::Reply(bytes, close) => {
                    clove::encode_into(&mut io.out, io.caller, call.op, &bytes);
                    if close {
                        io.close_after_flush = true;
                    }
                }
                Dispatched::Pending => io.busy = true,
                Dispatched::PoolFull => return (off, Stop::PoolFull),
            }
            log::trace!(
                "conn={} caller={} op={} len={}",
                io.label,
                io.caller,
                ops::name(call.op),
                frame.payload.len()
            );
            off += used;
            *budget -= 1;
        }
    }
}

enum Dispatched {
    /// Answer now (and close after, for EXIT).
    Reply(Vec<u8>, bool),
    /// The reply will arrive as a completion.
    Pending,
    /// Not accepted: the worker queue is full; the frame stays unconsumed.
    PoolFull,
}

/// Runs (or queues) the handler of one request. Replies made here carry the request's
/// warnings; a reply made later takes them in [`CloveBack::deliver`].
fn dispatch(env: &Env, call: &Call, payload: &[u8], warnings: &Arc<Warnings>) -> Dispatched {
    let (Some(name), Some(route)) = (ops::known(call.op), ops::route(call.op)) else {
        return Dispatched::Reply(error(format!("unknown op 0x{:02X}", call.op)), false);
    };
    let warned = |bytes: Vec<u8>| match warnings.take() {
        Some(w) => request::with_warnings(bytes, &w),
        None => bytes,
    };
    match route {
        Route::Inline(handler) => {
            let outcome = request::collecting(warnings, || {
                run_inline(name, call, || handler(env.ops, call, payload))
            });
            match outcome {
                Outcome::Reply(bytes) => {
                    let bytes = warned(bytes);
                    env.ops
                        .kernel
                        .audit
                        .record_call(call.caller, call.op, &bytes);
                    Dispatched::Reply(bytes, false)
                }
                Outcome::ReplyClose(bytes) => Dispatched::Reply(warned(bytes), true),
                Outcome::Deferred => Dispatched::Pending,
            }
        }
        Route::Worker(handler) => {
            let ops: Arc<Ops> = env.ops.clone();
            let record = CallRecord::of(call);
            let payload = payload.to_vec();
            let warnings = warnings.clone();
            let job = Box::new(move || {
                let call = record.call();
                // The responder is made on the worker: a job handed back by a full queue is
                // dropped without sending anything, and the frame is retried later.
                let responder = ops.kernel.responder(&call);
                request::collecting(&warnings, || handler(&ops, &call, payload, responder));
            });
            match env.pool.try_submit(job) {
                Ok(()) => Dispatched::Pending,
                Err(_) => Dispatched::PoolFull,
            }
        }
        Route::Unavailable => Dispatched::Reply(
            error(format!(
                "op 0x{:02X} {} is not available in this version of clove",
                call.op, name
            )),
            false,
        ),
    }
}

/// Runs an inline handler on the reactor thread. A panic in it must not unwind into the event
/// loop, which would stop the daemon for every client: it is logged, and the caller gets
/// `internal error in OP ...` and its connection is closed once that is written. Closing is
/// deliberate: the handler may have made a responder whose drop has already queued a reply of
/// its own, and may have left the caller's state half changed; after the error, nothing more
/// is read from or answered on that connection, so no reply can be doubled or misordered.
fn run_inline(op_name: &str, call: &Call, f: impl FnOnce() -> Outcome) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            log::error!(
                "caller={}: internal error in {op_name}: {what}; closing the connection",
                call.caller
            );
            Outcome::ReplyClose(error(format!(
                "internal error in {op_name}: the request failed inside the daemon (see its log); \
                 this connection is closed"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Peer;

    struct Nowhere;

    impl Deliver for Nowhere {
        fn deliver(&self, _: CallerId, _: u8, _: &[u8]) {}
    }

    fn call(back: &ReplyPath) -> Call<'_> {
        Call {
            caller: 7,
            op: ops::STORE,
            peer: Peer {
                pid: 1,
                uid: 0,
                gid: 0,
            },
            back,
        }
    }

    fn error_text(outcome: Outcome) -> String {
        match outcome {
            Outcome::ReplyClose(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(v["success"], false, "{v}");
                v["error"].as_str().unwrap().to_string()
            }
            other => panic!("expected an error reply and a close, got {other:?}"),
        }
    }

    #[test]
    fn a_panicking_handler_becomes_an_error_reply_that_closes_the_connection() {
        let back: ReplyPath = Arc::new(Nowhere);
        let e = error_text(run_inline("STORE", &call(&back), || panic!("boom")));
        assert!(e.starts_with("internal error in STORE"), "{e}");
        assert!(e.contains("closed"), "{e}");
        // Formatted messages and payloads that are not text are caught too.
        let n = 5;
        let e = error_text(run_inline("KEYS", &call(&back), || {
            panic!("index {n} out of range")
        }));
        assert!(e.starts_with("internal error in KEYS"), "{e}");
        let e = error_text(run_inline("FETCH", &call(&back), || {
            std::panic::panic_any(42u32)
        }));
        assert!(e.starts_with("internal error in FETCH"), "{e}");
    }

    #[test]
    fn outcomes_of_handlers_that_return_pass_through_unchanged() {
        let back: ReplyPath = Arc::new(Nowhere);
        match run_inline("NOOP", &call(&back), || Outcome::Reply(b"echo".to_vec())) {
            Outcome::Reply(b) => assert_eq!(b, b"echo"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run_inline("STORE", &call(&back), || Outcome::Deferred),
            Outcome::Deferred
        ));
        match run_inline("EXIT", &call(&back), || {
            Outcome::ReplyClose(b"goodbye".to_vec())
        }) {
            Outcome::ReplyClose(b) => assert_eq!(b, b"goodbye"),
            other => panic!("{other:?}"),
        }
    }
}
