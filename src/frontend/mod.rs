//! Protocol front-ends: bytes on a connection ⇄ calls into the kernel and services.
//!
//! The reactor is protocol-agnostic: it moves bytes and enforces flow control, then hands a
//! connection's unconsumed input to its [`Proto`]. Each front-end decodes what it can, handles
//! or dispatches each request, appends replies to the connection's output and says why it
//! stopped. What a front-end needs from the reactor it names here ([`ConnIo`], [`Outbox`],
//! [`Env`]); the reactor supplies them. Adding a listener for another protocol means adding a
//! variant here.

pub mod clove;
pub mod router;

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
}

/// What a front-end needs from the reactor while processing input.
pub struct Env<'a> {
    pub ops: &'a Arc<Ops>,
    pub pool: &'a WorkerPool,
    /// Stop producing replies once this many bytes are waiting to be written.
    pub max_pending_out: usize,
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
    /// Too many reply bytes are waiting to be written.
    OutputFull,
}

/// The part of a connection's state that protocol front-ends read and write.
pub struct ConnIo {
    /// The reactor's name for the connection, for logs (`slot.generation`).
    pub label: ConnLabel,
    pub caller: CallerId,
    pub peer: Peer,
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
            Proto::Router(p) => p.closed(io),
        }
    }

    /// The connection was just accepted: a front-end may greet or refuse it (write output,
    /// set `close_after_flush`) before any input arrives.
    pub fn opened(&mut self, io: &mut ConnIo) {
        match self {
            Proto::Clove(_) => {
                let _ = io;
            }
            Proto::Router(p) => p.opened(io),
        }
    }
}
