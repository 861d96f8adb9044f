//! Clove op codes and their names: the numbers of the wire protocol, shared by the daemon's op
//! table and every client (CLI, bench). Where an op runs is the ops service's business.

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
/// Administration of a service (`{service, action, ...}`), e.g. the relay's tokens.
pub const SERVICE_ADMIN: u8 = 0x90;
pub const METRICS_SYSTEM: u8 = 0xC0;
pub const METRICS_AGENT: u8 = 0xC1;
pub const METRICS_ALL_AGENTS: u8 = 0xC2;
pub const METRICS_CGROUP: u8 = 0xC3;
pub const LLM_REPORT: u8 = 0xF0;
pub const HELLO: u8 = 0xFE;
pub const EXIT: u8 = 0xFF;

/// Every op the protocol defines, in code order.
pub const NAMES: &[(u8, &str)] = &[
    (NOOP, "NOOP"),
    (THINK, "THINK"),
    (EXEC, "EXEC"),
    (READ, "READ"),
    (WRITE, "WRITE"),
    (SPAWN, "SPAWN"),
    (KILL, "KILL"),
    (LIST, "LIST"),
    (PAUSE, "PAUSE"),
    (RESUME, "RESUME"),
    (SEND, "SEND"),
    (RECV, "RECV"),
    (BROADCAST, "BROADCAST"),
    (REGISTER, "REGISTER"),
    (STORE, "STORE"),
    (FETCH, "FETCH"),
    (DELETE, "DELETE"),
    (KEYS, "KEYS"),
    (GET_PERMS, "GET_PERMS"),
    (SET_PERMS, "SET_PERMS"),
    (HTTP, "HTTP"),
    (SUBSCRIBE, "SUBSCRIBE"),
    (UNSUBSCRIBE, "UNSUBSCRIBE"),
    (POLL_EVENTS, "POLL_EVENTS"),
    (EMIT, "EMIT"),
    (GET_AUDIT_LOG, "GET_AUDIT_LOG"),
    (SET_AUDIT_CONFIG, "SET_AUDIT_CONFIG"),
    (ASYNC_POLL, "ASYNC_POLL"),
    (SERVICE_ADMIN, "SERVICE_ADMIN"),
    (METRICS_SYSTEM, "METRICS_SYSTEM"),
    (METRICS_AGENT, "METRICS_AGENT"),
    (METRICS_ALL_AGENTS, "METRICS_ALL_AGENTS"),
    (METRICS_CGROUP, "METRICS_CGROUP"),
    (LLM_REPORT, "LLM_REPORT"),
    (HELLO, "HELLO"),
    (EXIT, "EXIT"),
];

/// The op's name when the protocol defines it.
pub fn known(code: u8) -> Option<&'static str> {
    NAMES
        .binary_search_by_key(&code, |(c, _)| *c)
        .ok()
        .map(|i| NAMES[i].1)
}

/// The op's name, or `0x..` for unknown codes.
pub fn name(code: u8) -> String {
    match known(code) {
        Some(n) => n.to_string(),
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
    NAMES.iter().find(|(_, n)| *n == upper).map(|(c, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_unique_and_parse_back() {
        for pair in NAMES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "NAMES must be sorted and unique");
        }
        for (code, n) in NAMES {
            assert_eq!(parse(n), Some(*code));
            assert_eq!(name(*code), *n);
        }
        assert_eq!(parse("fetch"), Some(FETCH));
        assert_eq!(parse("0x31"), Some(FETCH));
        assert_eq!(parse("get-perms"), Some(GET_PERMS));
        assert_eq!(parse("nope"), None);
        assert_eq!(name(0x99), "0x99");
    }
}
