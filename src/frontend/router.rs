//! The `codeswarm.router.v1` front-end: JSON lines on a TCP connection ⇄ router commands.
//!
//! Lines are split by the pure codec ([`crate::proto::jsonl`]) and classified by
//! [`crate::router::wire::parse_line`] right here on the reactor thread (bounded work per line);
//! commands go to the router's core over a bounded channel without waiting. What is wrong with
//! a line (too long, not UTF-8, not JSON, not an object, a bad envelope) and a full router
//! queue are answered to this connection alone with `command_rejected`, since no other client
//! could correlate them. Everything else the router says is an event for every client, pushed
//! through the connection's [`Outbox`].

use super::{ConnIo, Env, Outbox, Stop};
use crate::proto::jsonl::{LineDecoder, LineError};
use crate::router::wire::{self, Event, Line};
use crate::router::{ClientCommand, ClientSink, RouterHandle};
use serde_json::Value;

/// Per-connection state.
pub struct RouterProto {
    decoder: LineDecoder,
    handle: RouterHandle,
    /// The client's id in the router's list; `None` when it was refused (too many clients).
    client: Option<u64>,
    authenticated: bool,
}

/// The connection's outbox as the router's sink for events.
struct ConnSink(Box<dyn Outbox>);

impl ClientSink for ConnSink {
    fn push(&self, line: Vec<u8>) {
        self.0.push(line);
    }
}

impl RouterProto {
    pub fn new(handle: RouterHandle, outbox: Box<dyn Outbox>) -> RouterProto {
        let client = handle.connect(Box::new(ConnSink(outbox)));
        RouterProto {
            decoder: LineDecoder::new(handle.max_line_bytes()),
            authenticated: !handle.token_required(),
            handle,
            client,
        }
    }

    /// A client over `router.max_clients` is told so and closed at once.
    pub fn opened(&mut self, io: &mut ConnIo) {
        if self.client.is_none() {
            log::warn!(
                "conn={}: refused: too many router clients (router.max_clients)",
                io.label
            );
            self.answer(
                io,
                &Value::Null,
                "too many clients: the router holds its maximum (router.max_clients)",
            );
            io.close_after_flush = true;
        }
    }

    fn answer(&self, io: &mut ConnIo, request_id: &Value, reason: &str) {
        self.handle.count_rejected();
        let line = wire::encode_event(
            &Event::rejected(request_id, reason),
            std::time::SystemTime::now(),
        );
        io.out.extend_from_slice(&line);
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
            if io.close_after_flush {
                return (input.len(), Stop::Paused);
            }
            if *budget == 0 {
                return (off, Stop::Budget);
            }
            if env.output.full(io.pending_out(), io.held_out()) {
                return (off, Stop::OutputFull);
            }
            let step = self.decoder.decode(&input[off..]);
            let consumed = step.consumed;
            match step.item {
                None => {
                    off += consumed;
                    return (off, Stop::NeedInput);
                }
                Some(Err(e)) => {
                    let reason = match e {
                        LineError::TooLong { max } => {
                            format!("line too long: at most {max} bytes (router.max_line_bytes)")
                        }
                        e => e.to_string(),
                    };
                    self.answer(io, &Value::Null, &reason);
                }
                Some(Ok(line)) => {
                    let parsed = wire::parse_line(line);
                    self.line(parsed, io);
                }
            }
            off += consumed;
            *budget -= 1;
        }
    }

    fn line(&mut self, parsed: Line, io: &mut ConnIo) {
        match parsed {
            Line::Ignore => {}
            Line::Reject { request_id, reason } => self.answer(io, &request_id, &reason),
            Line::Auth { token } => {
                let ok = self
                    .client
                    .is_some_and(|id| self.handle.authenticate(id, &token));
                if ok {
                    self.authenticated = true;
                } else {
                    log::warn!("conn={}: wrong router token; closing", io.label);
                    self.answer(io, &Value::Null, "authentication failed");
                    io.close_after_flush = true;
                }
            }
            Line::Command { request_id, .. } if !self.authenticated => {
                self.answer(io, &request_id, "authentication required: send {\"command\": \"auth\", \"payload\": {\"token\": ...}} first");
            }
            Line::Command {
                name,
                request_id,
                payload,
            } => {
                let rid = request_id.clone();
                if self
                    .handle
                    .submit(ClientCommand {
                        name,
                        request_id,
                        payload,
                    })
                    .is_err()
                {
                    self.answer(
                        io,
                        &rid,
                        "router busy: too many commands waiting (router.command_queue); try again",
                    );
                }
            }
        }
    }

    /// The connection is gone: leave the router's client list. Event lines that were still
    /// waiting for it are counted as dropped.
    pub fn closed(&mut self, io: &mut ConnIo) {
        if let Some(id) = self.client.take() {
            let unsent = io.out[io.out_pos.min(io.out.len())..]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.handle.disconnect(id, unsent as u64);
        }
    }
}

/// A refusal on this wire (wrong user, full daemon): one `command_rejected` line.
pub fn refusal(msg: &str) -> Vec<u8> {
    wire::encode_event(
        &Event::rejected(&Value::Null, msg),
        std::time::SystemTime::now(),
    )
}
