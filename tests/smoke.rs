//! The shortest useful session: start, HELLO, NOOP, stop.

use crate::harness::{Daemon, op};
use serde_json::json;

#[test]
fn hello_noop_and_clean_stop() {
    let mut d = Daemon::start();
    let mut c = d.client();
    let hello = c.ok(op::HELLO, json!({}));
    assert_eq!(hello["protocol_version"], 1);
    assert_eq!(hello["agent_id"], c.id);
    assert!(c.id > 0);
    let echo = c.call_raw(op::NOOP, b"ping");
    assert_eq!(echo.payload, b"ping");
    drop(c);
    let st = d.stop();
    assert!(st.success(), "exit status {st}");
    assert!(!d.socket.exists(), "socket removed on SIGTERM");
}
