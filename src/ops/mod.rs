//! The Clove op service: the op table and every handler.
//!
//! [`Ops`] is the kernel plus the services the Clove ops reach (the supervisor's agent table,
//! THINK's model backends, the HTTP op's threads, the EXEC command runner), handed to it by the
//! assembly (`daemon.rs`); the kernel itself knows none of them.
//!
//! The table in [`route`] is the one place that says which ops run inline on the reactor thread
//! (bounded, non-blocking, O(1)-ish work on in-memory state) and which go to the worker pool
//! (anything that touches the filesystem, a child process, the network, or may wait). Op codes
//! and names are wire facts and live in [`crate::proto::op`].

pub mod access;
pub mod admin;
pub mod agents;
pub mod asyncq;
pub mod audit;
pub mod commands;
pub mod config;
pub mod core;
pub mod events;
pub mod exec;
pub mod fs;
pub mod ipc;
pub mod state;

pub use crate::proto::op::*;

use crate::http::HttpService;
use crate::kernel::request::Outcome;
use crate::kernel::{Call, Kernel, Responder};
use crate::llm::LlmService;
use crate::supervisor::Agents;
use commands::CommandRunner;
use config::OpsConfig;
use std::sync::Arc;

/// An inline handler: runs on the reactor thread and must not block.
pub type InlineFn = fn(&Ops, &Call, &[u8]) -> Outcome;
/// A worker handler: runs on a pool thread and answers through its responder.
pub type WorkerFn = fn(&Ops, &Call, Vec<u8>, Responder);

/// Where an op runs.
#[derive(Clone, Copy)]
pub enum Route {
    Inline(InlineFn),
    Worker(WorkerFn),
    /// Part of the protocol but not provided by this daemon (the reply says so).
    Unavailable,
}

/// How full a queue is, for HELLO: waiting entries and capacity.
pub type QueueProbe = Box<dyn Fn() -> (usize, usize) + Send + Sync>;

/// A service's figures for HELLO's `services` (and `clove status`): counters, queue depths,
/// listener addresses. Called on the reactor thread: it must only read memory.
pub struct ServiceProbe {
    pub name: &'static str,
    pub report: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
}

/// A service's administration for SERVICE_ADMIN: given the request, it answers once (from
/// any thread) through the callback. Handed in by the assembly, so the op service never
/// names the services it administers.
pub struct ServiceAdmin {
    pub name: &'static str,
    #[allow(clippy::type_complexity)]
    pub handle:
        Box<dyn Fn(serde_json::Value, Box<dyn FnOnce(serde_json::Value) + Send>) + Send + Sync>,
}

/// The kernel and the services the Clove ops use.
pub struct Ops {
    pub kernel: Arc<Kernel>,
    pub config: OpsConfig,
    /// Supervised agents: the table, the way to the supervisor thread, metrics samples.
    pub agents: Arc<Agents>,
    /// THINK's model backends.
    pub llm: LlmService,
    /// The HTTP op's threads.
    pub http: HttpService,
    /// The thread that runs EXEC commands.
    pub commands: CommandRunner,
    /// The reactor's completion queue (`server.completion_queue`).
    pub completion_queue: QueueProbe,
    /// Unsent reply bytes of all connections, and their budget
    /// (`server.pending_reply_total_bytes`).
    pub pending_replies: QueueProbe,
    /// Figures of the other services and listeners, by name.
    pub services: Vec<ServiceProbe>,
    /// Services that take SERVICE_ADMIN requests, by name.
    pub admin: Vec<ServiceAdmin>,
}

use Route::{Inline, Worker};

/// Where the op `code` runs; `None` for codes the protocol does not define.
pub fn route(code: u8) -> Option<Route> {
    Some(match code {
        NOOP => Inline(core::noop),
        THINK => Inline(think),
        EXEC => Worker(exec::exec),
        READ => Worker(fs::read),
        WRITE => Worker(fs::write),
        SPAWN => Inline(agents::spawn),
        KILL => Inline(agents::kill),
        LIST => Inline(agents::list),
        PAUSE => Inline(agents::pause),
        RESUME => Inline(agents::resume),
        SEND => Inline(ipc::send),
        RECV => Inline(ipc::recv),
        BROADCAST => Inline(ipc::broadcast),
        REGISTER => Inline(ipc::register),
        STORE => Inline(state::store),
        FETCH => Inline(state::fetch),
        DELETE => Inline(state::delete),
        KEYS => Inline(state::keys),
        GET_PERMS => Inline(access::get_perms),
        SET_PERMS => Inline(access::set_perms),
        HTTP => Inline(http),
        SUBSCRIBE => Inline(events::subscribe),
        UNSUBSCRIBE => Inline(events::unsubscribe),
        POLL_EVENTS => Inline(events::poll),
        EMIT => Inline(events::emit),
        GET_AUDIT_LOG => Inline(audit::get_audit_log),
        SET_AUDIT_CONFIG => Inline(audit::set_audit_config),
        ASYNC_POLL => Inline(asyncq::poll),
        SERVICE_ADMIN => Inline(admin::service_admin),
        METRICS_SYSTEM => Worker(agents::metrics_system),
        METRICS_AGENT => Worker(agents::metrics_agent),
        METRICS_ALL_AGENTS => Worker(agents::metrics_all_agents),
        METRICS_CGROUP => Worker(agents::metrics_cgroup),
        LLM_REPORT => Inline(access::llm_report),
        HELLO => Inline(core::hello),
        EXIT => Inline(core::exit),
        _ => return None,
    })
}

/// THINK: queued on the LLM service's fair queue; answers later.
fn think(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    o.llm.think(&o.kernel, call, payload)
}

/// HTTP: checked here, run on the HTTP service's threads; answers later.
fn http(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    o.http.http_op(&o.kernel, call, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_op_has_a_route_and_no_other_code_does() {
        for code in 0..=255u8 {
            assert_eq!(
                route(code).is_some(),
                known(code).is_some(),
                "op 0x{code:02X}: the route table and the protocol's names disagree"
            );
        }
    }
}
