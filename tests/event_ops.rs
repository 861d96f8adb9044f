//! SUBSCRIBE, UNSUBSCRIBE, POLL_EVENTS, EMIT: custom events, reserved kernel types, bounded
//! queues, STATE_CHANGED.

use crate::harness::{Daemon, op};
use serde_json::json;

#[test]
fn emit_custom_events_to_subscribers() {
    let d = Daemon::start();
    let mut sub = d.client();
    let mut other = d.client();
    let mut emitter = d.client();
    let s = sub.ok(op::SUBSCRIBE, json!({"event_types": ["CUSTOM"]}));
    assert_eq!(s["subscribed"], json!(["CUSTOM"]));
    other.ok(op::SUBSCRIBE, json!({"event": "build_done"}));
    let r = emitter.ok(
        op::EMIT,
        json!({"event_type": "CUSTOM", "data": {"msg": "hello"}}),
    );
    assert_eq!(r["delivered_to"], 1);
    let r = emitter.ok(
        op::EMIT,
        json!({"event": "build_done", "data": {"ok": true}}),
    );
    assert_eq!(
        r["delivered_to"], 2,
        "CUSTOM subscribers and build_done subscribers"
    );
    let p = sub.ok(op::POLL_EVENTS, json!({}));
    assert_eq!(p["count"], 2);
    let e0 = &p["events"][0];
    assert_eq!(e0["type"], "CUSTOM");
    assert_eq!(e0["data"]["msg"], "hello");
    assert_eq!(e0["source_agent_id"], emitter.id);
    assert!(e0["age_ms"].is_u64());
    assert!(e0["timestamp"].as_str().unwrap().ends_with('Z'));
    let e1 = &p["events"][1];
    assert_eq!(e1["type"], "CUSTOM");
    assert_eq!(e1["data"]["custom_type"], "build_done");
    let o = other.ok(op::POLL_EVENTS, json!({"max": 10}));
    assert_eq!(o["count"], 1);
    assert_eq!(o["events"][0]["data"]["ok"], true);
    // Non-object data is wrapped so custom_type can be set.
    other.ok(op::EMIT, json!({"event": "build_done", "data": [1, 2]}));
    let o = other.ok(op::POLL_EVENTS, json!({}));
    assert_eq!(o["events"][0]["data"]["value"], json!([1, 2]));
}

#[test]
fn kernel_event_types_cannot_be_forged() {
    let d = Daemon::start();
    let mut c = d.client();
    for t in ["AGENT_EXITED", "STATE_CHANGED", "SYSCALL_BLOCKED"] {
        let e = c.err(op::EMIT, json!({"event_type": t, "data": {}}));
        assert!(e.contains("reserved"), "{e}");
    }
    let e = c.err(op::EMIT, json!({"data": {}}));
    assert!(e.contains("event type"), "{e}");
    let e = c.err(op::SUBSCRIBE, json!({}));
    assert!(e.contains("no event types"), "{e}");
    let e = c.err(op::SUBSCRIBE, json!({"event_types": [""]}));
    assert!(e.contains("invalid event type"), "{e}");
}

#[test]
fn unsubscribe_stops_delivery() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SUBSCRIBE, json!({"events": ["a", "b"]}));
    let u = c.ok(op::UNSUBSCRIBE, json!({"event_types": ["a"]}));
    assert_eq!(u["unsubscribed"], json!(["a"]));
    assert_eq!(c.ok(op::EMIT, json!({"event": "a"}))["delivered_to"], 0);
    assert_eq!(c.ok(op::EMIT, json!({"event": "b"}))["delivered_to"], 1);
    c.ok(op::SUBSCRIBE, json!({"event_types": ["CUSTOM"]}));
    assert_eq!(
        c.ok(op::EMIT, json!({"event": "a"}))["delivered_to"],
        1,
        "via CUSTOM"
    );
    let u = c.ok(op::UNSUBSCRIBE, json!({"all": true}));
    assert_eq!(u["unsubscribed"], json!(["CUSTOM", "b"]));
    assert_eq!(c.ok(op::EMIT, json!({"event": "b"}))["delivered_to"], 0);
    let e = c.err(op::UNSUBSCRIBE, json!({}));
    assert!(e.contains("nothing to unsubscribe"), "{e}");
}

#[test]
fn event_queue_is_bounded_and_drops_oldest_with_a_count() {
    let d = Daemon::with_config("[limits]\nevent_queue_len = 4\n");
    let mut sub = d.client();
    let mut em = d.client();
    sub.ok(op::SUBSCRIBE, json!({"event_types": ["CUSTOM"]}));
    for i in 0..10 {
        em.ok(op::EMIT, json!({"event_type": "CUSTOM", "data": {"i": i}}));
    }
    let p = sub.ok(op::POLL_EVENTS, json!({"max": 100}));
    assert_eq!(p["count"], 4);
    assert_eq!(p["dropped"], 6);
    let got: Vec<i64> = p["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![6, 7, 8, 9]);
}

#[test]
fn state_changed_reports_shared_changes_to_all_and_private_ones_to_the_owner() {
    let d = Daemon::start();
    let mut a = d.client();
    let mut b = d.client();
    a.ok(op::SUBSCRIBE, json!({"event_types": ["STATE_CHANGED"]}));
    b.ok(op::SUBSCRIBE, json!({"event_types": ["STATE_CHANGED"]}));
    a.ok(op::STORE, json!({"key": "shared", "value": 1}));
    a.ok(
        op::STORE,
        json!({"key": "private", "value": 1, "scope": "agent"}),
    );
    b.ok(op::DELETE, json!({"key": "shared"}));
    let pa = a.ok(op::POLL_EVENTS, json!({}));
    let pb = b.ok(op::POLL_EVENTS, json!({}));
    let keys = |p: &serde_json::Value| -> Vec<(String, String)> {
        p["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["data"]["key"].as_str().unwrap().to_string(),
                    e["data"]["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let s = |k: &str, a: &str| (k.to_string(), a.to_string());
    assert_eq!(
        keys(&pa),
        vec![
            s("shared", "store"),
            s("private", "store"),
            s("shared", "delete")
        ]
    );
    assert_eq!(keys(&pb), vec![s("shared", "store"), s("shared", "delete")]);
    assert_eq!(pa["events"][0]["data"]["agent_id"], a.id);
    assert_eq!(pa["events"][0]["data"]["scope"], "global");
}

#[test]
fn bad_poll_events_max_is_named_and_the_connection_goes_on() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SUBSCRIBE, json!({"event": "tick"}));
    for bad in [json!("x"), json!(-1), json!(2.5), json!([10])] {
        c.ok(op::EMIT, json!({"event": "tick", "data": {"bad": bad}}));
        let e = c.err(op::POLL_EVENTS, json!({"max": bad}));
        assert!(e.contains("`max`"), "max {bad}: {e}");
        // The refused poll took nothing: the event is still there for the next one.
        let p = c.ok(op::POLL_EVENTS, json!({"max": 10}));
        assert_eq!(p["count"], 1, "after max {bad}: {p}");
        assert_eq!(p["events"][0]["data"]["bad"], bad);
    }
}
