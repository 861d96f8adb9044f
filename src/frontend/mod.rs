//! Protocol front-ends: bytes on a connection ⇄ requests to the kernel and services.
//!
//! The reactor is protocol-agnostic: it moves bytes and enforces flow control, then hands a
//! connection's unconsumed input to its [`Proto`]. Each front-end decodes what it can, handles
//! or dispatches each request, appends replies to the connection's output and says why it
//! stopped. Adding a listener for another protocol means adding a variant here.

pub mod clove;

use crate::kernel::Kernel;
use crate::reactor::conn::ConnIo;
use crate::reactor::pool::WorkerPool;
use std::sync::Arc;

/// What a front-end needs from the reactor while processing input.
pub struct Env<'a> {
    pub kernel: &'a Arc<Kernel>,
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

/// The protocol spoken on a connection.
pub enum Proto {
    Clove(clove::CloveProto),
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
        }
    }
}
