//! Protocol front-ends: bytes on a connection ⇄ calls into the kernel and services.
//!
//! The reactor is protocol-agnostic: it moves bytes and enforces flow control, then hands a
//! connection's unconsumed input to its [`Proto`]. Each front-end decodes what it can, handles
//! or dispatches each request, appends replies to the connection's output and says why it
//! stopped. What a front-end needs from the reactor it names here ([`ConnIo`], [`Outbox`],
//! [`Env`]); the reactor supplies them. Adding a listener for another protocol means adding a
//! variant here.

pub mod clove;
pub mod relay;
pub mod router;
pub mod warnings;

use crate::kernel::{CallerId, Peer};
use crate::ops::Ops;
use crate::pool::WorkerPool;
use std::sync::Arc;

/// The way to a connection from other threads, implemented by the reactor: bytes sent here
/// are appended to the connection's output on the reactor thread (and dropped if the
/// connection has closed meanwhile).
pub trait Outbox: Send + Sync {
    /// The reply the connection waits for: once delivered it may take its next request.
    fn reply(&self, bytes: Vec<u8>);
    /// Unsolicited output (events a service streams to the connection).
    fn push(&self, bytes: Vec<u8>);
    /// Unsolicited output after which the connection is closed (once it is written): a
    /// service ending a session from another thread (a timeout, a replaced socket).
    fn push_close(&self, bytes: Vec<u8>);
}

/// What a front-end needs from the reactor while processing input.
pub struct Env<'a> {
    pub ops: &'a Arc<Ops>,
    pub pool: &'a WorkerPool,
    /// The rate limit for warnings about single connections (a peer's doing).
    pub warnings: &'a warnings::Warnings,
    /// When to stop producing replies: see [`OutputBudget::full`].
    pub output: OutputBudget,
}

/// How many unsent reply bytes a connection may have before it stops taking requests: its
/// own cap, and its part of the daemon-wide budget for all connections together.
///
/// Replies cannot be sized before they are made (a FETCH reply is as large as the value), so
/// the checks are made before each request and the last reply may go past them, by one reply.
#[derive(Debug, Clone, Copy)]
pub struct OutputBudget {
    /// This connection's cap (`server.max_pending_reply_bytes`).
    pub own_max: usize,
    /// Reply bytes every other connection holds (see [`ConnIo::held_out`]).
    pub others: usize,
    /// Connections that have unsent replies stop taking requests once all connections
    /// together hold this many (three quarters of `server.pending_reply_total_bytes`).
    pub soft: usize,
    /// Connections with nothing unsent stop at `server.pending_reply_total_bytes` itself: the
    /// quarter above `soft` is kept for clients that read their replies, so those that do not
    /// cannot shut everyone else out by filling the budget.
    pub hard: usize,
}

impl OutputBudget {
    /// True when a connection with `pending` unsent reply bytes, in an output buffer of `held`
    /// bytes (its written part not yet released), must not take another request now.
    pub fn full(&self, pending: usize, held: usize) -> bool {
        let total = self.others.saturating_add(held);
        pending >= self.own_max || total >= if pending > 0 { self.soft } else { self.hard }
    }
}

/// Why a front-end stopped consuming input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Everything complete was handled; more bytes are needed.
    NeedInput,
    /// The connection cannot take more requests now (a request is out, or it is closing).
    Paused,
    /// The worker queue is full; retry when it has room.
    PoolFull,
    /// The per-turn request budget is spent; continue on a later turn.
    Budget,
    /// Too many reply bytes are waiting to be written, on this connection or on all of them
    /// together ([`OutputBudget`]).
    OutputFull,
}

/// The part of a connection's state that protocol front-ends read and write.
pub struct ConnIo {
    /// The reactor's name for the connection, for logs (`slot.generation`).
    pub label: ConnLabel,
    pub caller: CallerId,
    pub peer: Peer,
    /// The peer's address, for TCP connections (rate limits and logs of remote peers).
    pub addr: Option<std::net::SocketAddr>,
    /// Unsent reply bytes start at `out_pos`.
    pub out: Vec<u8>,
    pub out_pos: usize,
    /// A request of this connection is being handled elsewhere; later frames wait.
    pub busy: bool,
    /// Close once everything queued has been written (EXIT, fatal protocol error).
    pub close_after_flush: bool,
}

impl ConnIo {
    /// Reply bytes not yet written to the socket.
    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reply bytes the connection's output buffer holds: those not yet written, and those
    /// written but not yet released (a buffer is compacted only when that is cheap). This is
    /// what the daemon-wide budget counts, since it is memory held all the same.
    pub fn held_out(&self) -> usize {
        if self.pending_out() == 0 {
            0
        } else {
            self.out.len()
        }
    }
}

/// A connection's name in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLabel {
    pub slot: u32,
    pub generation: u32,
}

impl std::fmt::Display for ConnLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// The protocol spoken on a connection.
pub enum Proto {
    Clove(clove::CloveProto),
    /// HTTP, Engine.IO and Socket.IO on the relay listener.
    Relay(Box<relay::RelayProto>),
    /// `codeswarm.router.v1` JSON lines (the Codeswarm router's TCP listener).
    Router(router::RouterProto),
}

impl Proto {
    /// Consumes complete requests from `input`; returns the bytes consumed and why it stopped.
    pub fn process(
        &mut self,
        input: &[u8],
        io: &mut ConnIo,
        env: &Env,
        budget: &mut usize,
    ) -> (usize, Stop) {
        match self {
            Proto::Clove(p) => p.process(input, io, env, budget),
            Proto::Relay(p) => p.process(input, io, env, budget),
            Proto::Router(p) => p.process(input, io, env, budget),
        }
    }

    /// The connection is closed (by either side): a front-end lets go of what it registered
    /// for it elsewhere (a service's list of clients, say). Nothing can be sent any more.
    pub fn closed(&mut self, io: &mut ConnIo) {
        match self {
            Proto::Clove(_) => {
                let _ = io;
            }
            Proto::Relay(p) => p.closed(io),
            Proto::Router(p) => p.closed(io),
        }
    }

    /// The connection was just accepted: a front-end may greet or refuse it (write output,
    /// set `close_after_flush`) before any input arrives.
    pub fn opened(&mut self, io: &mut ConnIo) {
        match self {
            Proto::Clove(_) | Proto::Relay(_) => {
                let _ = io;
            }
            Proto::Router(p) => p.opened(io),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OutputBudget;

    #[test]
    fn output_budget_keeps_the_last_quarter_for_connections_that_read() {
        let b = |others| OutputBudget {
            own_max: 100,
            others,
            soft: 750,
            hard: 1000,
        };
        // A connection's own cap, whatever the others hold.
        assert!(!b(0).full(99, 99));
        assert!(b(0).full(100, 100));
        // Over three quarters, a connection with unsent replies waits (its written but
        // unreleased bytes count too)...
        assert!(!b(700).full(49, 49));
        assert!(b(700).full(40, 50));
        // ...one that has written everything goes on up to the whole budget.
        assert!(!b(999).full(0, 0));
        assert!(b(1000).full(0, 0));
        assert!(b(usize::MAX).full(1, 1));
    }
}
