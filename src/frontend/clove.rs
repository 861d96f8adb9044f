//! The Clove binary protocol front-end on the Unix socket.
//!
//! Frames are decoded with the pure codec in [`crate::proto::clove`] and routed by the op table:
//! inline ops are answered right here on the reactor thread; worker ops are sent to the pool and
//! the connection waits (later frames stay buffered) until the reply comes back, so replies
//! are always in request order. A malformed stream (bad magic, oversized length) gets one error
//! reply and is closed, since no later frame boundary can be trusted.

use super::{Env, Stop};
use crate::kernel::ops::{self, Route};
use crate::kernel::request::{Outcome, error};
use crate::kernel::{Call, Kernel};
use crate::proto::clove;
use crate::reactor::conn::ConnIo;
use std::sync::Arc;

/// Per-connection protocol state. Clove frames carry no session state beyond the connection's
/// identity, which lives in [`ConnIo`].
#[derive(Default)]
pub struct CloveProto {
    pub max_payload: u64,
}

impl CloveProto {
    pub fn new(max_payload: u64) -> CloveProto {
        CloveProto { max_payload }
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
            if io.pending_out() >= env.max_pending_out {
                return (off, Stop::OutputFull);
            }
            let (frame, used) = match clove::decode(&input[off..], self.max_payload) {
                Ok(Some(f)) => f,
                Ok(None) => return (off, Stop::NeedInput),
                Err(e) => {
                    log::warn!("conn={} caller={}: {e}", io.id, io.caller);
                    clove::encode_into(&mut io.out, io.caller, e.op(), &error(e.to_string()));
                    io.close_after_flush = true;
                    // Nothing after a broken frame can be trusted: drop it all.
                    return (input.len(), Stop::Paused);
                }
            };
            let call = Call {
                caller: io.caller,
                conn: io.id,
                op: frame.header.op,
                peer: io.peer,
            };
            match dispatch(env, &call, frame.payload) {
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
                io.id,
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

fn dispatch(env: &Env, call: &Call, payload: &[u8]) -> Dispatched {
    let Some(info) = ops::info(call.op) else {
        return Dispatched::Reply(error(format!("unknown op 0x{:02X}", call.op)), false);
    };
    match info.route {
        Route::Inline(handler) => match handler(env.kernel, call, payload) {
            Outcome::Reply(bytes) => {
                env.kernel.audit.record_call(call.caller, call.op, &bytes);
                Dispatched::Reply(bytes, false)
            }
            Outcome::ReplyClose(bytes) => Dispatched::Reply(bytes, true),
            Outcome::Deferred => Dispatched::Pending,
        },
        Route::Worker(handler) => {
            let kernel: Arc<Kernel> = env.kernel.clone();
            let call = *call;
            let payload = payload.to_vec();
            let job = Box::new(move || {
                // The responder is made on the worker: a job handed back by a full queue is
                // dropped without sending anything, and the frame is retried later.
                let responder = kernel.responder(&call);
                handler(&kernel, &call, payload, responder);
            });
            match env.pool.try_submit(job) {
                Ok(()) => Dispatched::Pending,
                Err(_) => Dispatched::PoolFull,
            }
        }
        Route::Unavailable => Dispatched::Reply(
            error(format!(
                "op 0x{:02X} {} is not available in this version of clove",
                call.op, info.name
            )),
            false,
        ),
    }
}
