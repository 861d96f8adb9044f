//! The op table: every Clove op code, its name, and where it runs.
//!
//! This is the one place that says which ops run inline on the reactor thread (bounded,
//! non-blocking, O(1)-ish work on in-memory state) and which go to the worker pool (anything
//! that touches the filesystem, a child process, the network, or may wait).

use super::request::Outcome;
use super::{Call, Kernel, Responder};

/// An inline handler: runs on the reactor thread and must not block.
pub type InlineFn = fn(&Kernel, &Call, &[u8]) -> Outcome;
/// A worker handler: runs on a pool thread and answers through its responder.
pub type WorkerFn = fn(&Kernel, &Call, Vec<u8>, Responder);

/// Where an op runs.
#[derive(Clone, Copy)]
pub enum Route {
    Inline(InlineFn),
    Worker(WorkerFn),
    /// Part of the protocol but not provided by this daemon (the reply says so).
    Unavailable,
}

/// One op code.
#[derive(Clone, Copy)]
pub struct OpInfo {
    pub code: u8,
    pub name: &'static str,
    pub route: Route,
}

pub const NOOP: u8 = 0x00;
pub const THINK: u8 = 0x01;
pub const EXEC: u8 = 0x02;
pub const READ: u8 = 0x03;
pub const WRITE: u8 = 0x04;
pub const SPAWN: u8 = 0x10;
pub const KILL: u8 = 0x11;
pub const LIST: u8 = 0x12;
pub const PAUSE: u8 = 0x14;
pub const RESUME: u8 = 0x15;
pub const SEND: u8 = 0x20;
pub const RECV: u8 = 0x21;
pub const BROADCAST: u8 = 0x22;
pub const REGISTER: u8 = 0x23;
pub const STORE: u8 = 0x30;
pub const FETCH: u8 = 0x31;
pub const DELETE: u8 = 0x32;
pub const KEYS: u8 = 0x33;
pub const GET_PERMS: u8 = 0x40;
pub const SET_PERMS: u8 = 0x41;
pub const HTTP: u8 = 0x50;
pub const SUBSCRIBE: u8 = 0x60;
pub const UNSUBSCRIBE: u8 = 0x61;
pub const POLL_EVENTS: u8 = 0x62;
pub const EMIT: u8 = 0x63;
pub const GET_AUDIT_LOG: u8 = 0x76;
pub const SET_AUDIT_CONFIG: u8 = 0x77;
pub const ASYNC_POLL: u8 = 0x80;
pub const METRICS_SYSTEM: u8 = 0xC0;
pub const METRICS_AGENT: u8 = 0xC1;
pub const METRICS_ALL_AGENTS: u8 = 0xC2;
pub const METRICS_CGROUP: u8 = 0xC3;
pub const LLM_REPORT: u8 = 0xF0;
pub const HELLO: u8 = 0xFE;
pub const EXIT: u8 = 0xFF;

use super::{access, agents, asyncq, audit, core, events, exec, fs, ipc, state};
use Route::{Inline, Worker};

/// Every op the protocol defines, in code order.
pub const OPS: &[OpInfo] = &[
    op(NOOP, "NOOP", Inline(core::noop)),
    op(THINK, "THINK", Inline(crate::llm::think)),
    op(EXEC, "EXEC", Worker(exec::exec)),
    op(READ, "READ", Worker(fs::read)),
    op(WRITE, "WRITE", Worker(fs::write)),
    op(SPAWN, "SPAWN", Inline(agents::spawn)),
    op(KILL, "KILL", Inline(agents::kill)),
    op(LIST, "LIST", Inline(agents::list)),
    op(PAUSE, "PAUSE", Inline(agents::pause)),
    op(RESUME, "RESUME", Inline(agents::resume)),
    op(SEND, "SEND", Inline(ipc::send)),
    op(RECV, "RECV", Inline(ipc::recv)),
    op(BROADCAST, "BROADCAST", Inline(ipc::broadcast)),
    op(REGISTER, "REGISTER", Inline(ipc::register)),
    op(STORE, "STORE", Inline(state::store)),
    op(FETCH, "FETCH", Inline(state::fetch)),
    op(DELETE, "DELETE", Inline(state::delete)),
    op(KEYS, "KEYS", Inline(state::keys)),
    op(GET_PERMS, "GET_PERMS", Inline(access::get_perms)),
    op(SET_PERMS, "SET_PERMS", Inline(access::set_perms)),
    op(HTTP, "HTTP", Inline(crate::http::http_op)),
    op(SUBSCRIBE, "SUBSCRIBE", Inline(events::subscribe)),
    op(UNSUBSCRIBE, "UNSUBSCRIBE", Inline(events::unsubscribe)),
    op(POLL_EVENTS, "POLL_EVENTS", Inline(events::poll)),
    op(EMIT, "EMIT", Inline(events::emit)),
    op(GET_AUDIT_LOG, "GET_AUDIT_LOG", Inline(audit::get_audit_log)),
    op(
        SET_AUDIT_CONFIG,
        "SET_AUDIT_CONFIG",
        Inline(audit::set_audit_config),
    ),
    op(ASYNC_POLL, "ASYNC_POLL", Inline(asyncq::poll)),
    op(
        METRICS_SYSTEM,
        "METRICS_SYSTEM",
        Worker(agents::metrics_system),
    ),
    op(
        METRICS_AGENT,
        "METRICS_AGENT",
        Worker(agents::metrics_agent),
    ),
    op(
        METRICS_ALL_AGENTS,
        "METRICS_ALL_AGENTS",
        Worker(agents::metrics_all_agents),
    ),
    op(
        METRICS_CGROUP,
        "METRICS_CGROUP",
        Worker(agents::metrics_cgroup),
    ),
    op(LLM_REPORT, "LLM_REPORT", Inline(access::llm_report)),
    op(HELLO, "HELLO", Inline(core::hello)),
    op(EXIT, "EXIT", Inline(core::exit)),
];

const fn op(code: u8, name: &'static str, route: Route) -> OpInfo {
    OpInfo { code, name, route }
}

/// Code → op, built once.
static TABLE: std::sync::LazyLock<[Option<OpInfo>; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [None; 256];
    for info in OPS {
        t[info.code as usize] = Some(*info);
    }
    t
});

/// Looks up an op by code.
pub fn info(code: u8) -> Option<OpInfo> {
    TABLE[code as usize]
}

/// The op's name, or `0x..` for unknown codes.
pub fn name(code: u8) -> String {
    match info(code) {
        Some(i) => i.name.to_string(),
        None => format!("0x{code:02X}"),
    }
}

/// Parses an op given by name (any case, `-` or `_`) or number (`0x31`, `49`).
pub fn parse(text: &str) -> Option<u8> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u8::from_str_radix(hex, 16).ok();
    }
    if let Ok(n) = t.parse::<u8>() {
        return Some(n);
    }
    let upper = t.to_ascii_uppercase().replace('-', "_");
    OPS.iter().find(|i| i.name == upper).map(|i| i.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for pair in OPS.windows(2) {
            assert!(pair[0].code < pair[1].code, "OPS must be sorted and unique");
        }
        assert_eq!(parse("fetch"), Some(FETCH));
        assert_eq!(parse("0x31"), Some(FETCH));
        assert_eq!(parse("get-perms"), Some(GET_PERMS));
        assert_eq!(parse("nope"), None);
        assert_eq!(name(0x99), "0x99");
    }
}
