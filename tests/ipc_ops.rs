//! REGISTER, SEND, RECV, BROADCAST: names, bounded mailboxes, MESSAGE_RECEIVED.

use crate::harness::{Daemon, op, wait_for};
use serde_json::json;
use std::time::Duration;

#[test]
fn register_send_recv_by_name_and_id() {
    let d = Daemon::start();
    let mut alice = d.client();
    let mut bob = d.client();
    let r = alice.ok(op::REGISTER, json!({"name": "alice"}));
    assert_eq!(r["name"], "alice");
    assert_eq!(r["agent_id"], alice.id);
    bob.ok(op::REGISTER, json!({"name": "bob"}));
    let bob_id = bob.id;
    let s = alice.ok(
        op::SEND,
        json!({"to_name": "bob", "message": {"task": "go", "n": 1}}),
    );
    assert_eq!(s["delivered_to"], bob_id);
    alice.ok(op::SEND, json!({"to": bob_id, "message": "second"}));
    let m = bob.ok(op::RECV, json!({}));
    assert_eq!(m["count"], 2);
    let msgs = m["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["message"], json!({"task": "go", "n": 1}));
    assert_eq!(msgs[0]["from"], alice.id);
    assert_eq!(msgs[0]["from_name"], "alice");
    assert!(msgs[0]["age_ms"].is_u64());
    assert_eq!(msgs[1]["message"], "second");
    assert_eq!(bob.ok(op::RECV, json!({}))["count"], 0);
    // RECV max takes only that many, in order.
    for i in 0..5 {
        alice.ok(op::SEND, json!({"to": bob_id, "message": i}));
    }
    let two = bob.ok(op::RECV, json!({"max": 2}));
    assert_eq!(two["messages"][0]["message"], 0);
    assert_eq!(two["messages"][1]["message"], 1);
    assert_eq!(bob.ok(op::RECV, json!({"max": 10}))["count"], 3);
}

#[test]
fn names_are_unique_validated_and_released() {
    let d = Daemon::start();
    let mut a = d.client();
    let mut b = d.client();
    a.ok(op::REGISTER, json!({"name": "worker"}));
    let e = b.err(op::REGISTER, json!({"name": "worker"}));
    assert!(e.contains("already registered"), "{e}");
    for bad in ["", "../etc/passwd", "a b", "-x", &"n".repeat(65)] {
        let e = b.err(op::REGISTER, json!({"name": bad}));
        assert!(e.contains("invalid name"), "{bad:?}: {e}");
    }
    // Re-registering under a new name releases the old one.
    a.ok(op::REGISTER, json!({"name": "worker2"}));
    b.ok(op::REGISTER, json!({"name": "worker"}));
    // A client's name is released when it disconnects.
    drop(a);
    wait_for("name release", Duration::from_secs(5), || {
        (b.call(op::REGISTER, json!({"name": "worker2"}))["success"] == true).then_some(())
    });
}

#[test]
fn send_errors_are_clear() {
    let d = Daemon::start();
    let mut c = d.client();
    let e = c.err(op::SEND, json!({"to": 999_999, "message": 1}));
    assert!(e.contains("999999"), "{e}");
    let e = c.err(op::SEND, json!({"to_name": "nobody", "message": 1}));
    assert!(e.contains("nobody"), "{e}");
    let e = c.err(op::SEND, json!({"message": 1}));
    assert!(e.contains("recipient"), "{e}");
    let e = c.err(op::SEND, json!({"to": 1}));
    assert!(e.contains("message"), "{e}");
    let e = c.err(op::SEND, json!({"to": [1], "message": 1}));
    assert!(e.contains("`to`"), "{e}");
}

#[test]
fn mailbox_is_bounded_and_says_so() {
    let d = Daemon::with_config("[limits]\nmailbox_len = 5\n");
    let mut a = d.client();
    let mut b = d.client();
    let bid = b.my_id();
    for i in 0..5 {
        a.ok(op::SEND, json!({"to": bid, "message": i}));
    }
    let e = a.err(op::SEND, json!({"to": bid, "message": 5}));
    assert!(e.contains("full") && e.contains('5'), "{e}");
    assert_eq!(b.ok(op::RECV, json!({"max": 100}))["count"], 5);
    a.ok(op::SEND, json!({"to": bid, "message": "room again"}));
}

#[test]
fn mailbox_byte_limit_applies() {
    let d = Daemon::with_config("[limits]\nmailbox_max_bytes = 1000\n");
    let mut a = d.client();
    let mut b = d.client();
    let bid = b.my_id();
    a.ok(op::SEND, json!({"to": bid, "message": "x".repeat(900)}));
    let e = a.err(op::SEND, json!({"to": bid, "message": "x".repeat(200)}));
    assert!(e.contains("bytes"), "{e}");
    b.ok(op::RECV, json!({}));
    a.ok(op::SEND, json!({"to": bid, "message": "x".repeat(200)}));
}

#[test]
fn broadcast_reaches_registered_callers_and_raises_events() {
    let d = Daemon::start();
    let mut hub = d.client();
    let mut w1 = d.client();
    let mut w2 = d.client();
    let mut anon = d.client();
    hub.ok(op::REGISTER, json!({"name": "hub"}));
    w1.ok(op::REGISTER, json!({"name": "w1"}));
    w2.ok(op::REGISTER, json!({"name": "w2"}));
    w1.ok(op::SUBSCRIBE, json!({"event_types": ["MESSAGE_RECEIVED"]}));
    let b = hub.ok(op::BROADCAST, json!({"message": {"cmd": "stop"}}));
    assert_eq!(b["delivered_count"], 2);
    assert_eq!(
        w1.ok(op::RECV, json!({}))["messages"][0]["message"]["cmd"],
        "stop"
    );
    assert_eq!(w2.ok(op::RECV, json!({}))["count"], 1);
    assert_eq!(hub.ok(op::RECV, json!({}))["count"], 0, "no self delivery");
    assert_eq!(
        anon.ok(op::RECV, json!({}))["count"],
        0,
        "unregistered callers get none"
    );
    let b = hub.ok(op::BROADCAST, json!({"message": 1, "include_self": true}));
    assert_eq!(b["delivered_count"], 3);
    let ev = w1.ok(op::POLL_EVENTS, json!({}));
    let events = ev["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "MESSAGE_RECEIVED");
    assert_eq!(events[0]["data"]["from"], hub.id);
    assert_eq!(events[0]["data"]["to"], w1.id);
}

#[test]
fn bad_fields_of_message_ops_are_named_and_the_connection_goes_on() {
    let d = Daemon::start();
    let mut a = d.client();
    let mut b = d.client();
    a.ok(op::REGISTER, json!({"name": "sender"}));
    b.ok(op::REGISTER, json!({"name": "receiver"}));
    let bid = b.id;
    let cases = [
        (true, op::BROADCAST, json!({}), "`message`"),
        (
            true,
            op::SEND,
            json!({"to": 999_999, "message": 1}),
            "999999",
        ),
        (
            true,
            op::SEND,
            json!({"to_name": "nobody", "message": 1}),
            "\"nobody\"",
        ),
        (true, op::REGISTER, json!({"name": 5}), "`name`"),
        (true, op::REGISTER, json!({"name": null}), "`name`"),
        (true, op::REGISTER, json!({"name": ["x"]}), "`name`"),
        (true, op::REGISTER, json!({"name": {"n": "x"}}), "`name`"),
        (true, op::REGISTER, json!({}), "`name`"),
        (false, op::RECV, json!({"max": "x"}), "`max`"),
        (false, op::RECV, json!({"max": -1}), "`max`"),
        (false, op::RECV, json!({"max": 1.5}), "`max`"),
    ];
    for (i, (from_a, code, req, needle)) in cases.into_iter().enumerate() {
        let c = if from_a { &mut a } else { &mut b };
        let e = c.err(code, req.clone());
        assert!(
            e.contains(needle),
            "{req}: error does not name {needle}: {e}"
        );
        // Both connections still work, and the failed request had no effect: the sender kept
        // its name, and the only message waiting is the one sent now.
        a.ok(op::SEND, json!({"to_name": "receiver", "message": i}));
        let m = b.ok(op::RECV, json!({"max": 10}));
        assert_eq!(m["count"], 1, "after {req}: {m}");
        assert_eq!(m["messages"][0]["message"], i, "after {req}");
        assert_eq!(m["messages"][0]["from_name"], "sender", "after {req}");
        assert_eq!(
            a.ok(op::SEND, json!({"to": bid, "message": "id"}))["delivered_to"],
            bid
        );
        b.ok(op::RECV, json!({}));
    }
}
