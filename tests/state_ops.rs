//! STORE, FETCH, DELETE, KEYS: scopes, private namespaces, TTL, limits.

use crate::harness::{Daemon, op, wait_for};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn store_fetch_delete_keys_round_trip() {
    let d = Daemon::start();
    let mut c = d.client();
    let v = json!({"nested": [1, 2.5, "three", null, {"ok": true}]});
    let r = c.ok(op::STORE, json!({"key": "doc:1", "value": v}));
    assert_eq!(r["key"], "doc:1");
    c.ok(op::STORE, json!({"key": "doc:2", "value": "two"}));
    c.ok(op::STORE, json!({"key": "other", "value": 3}));
    let f = c.ok(op::FETCH, json!({"key": "doc:1"}));
    assert_eq!(f["exists"], true);
    assert_eq!(f["value"], v);
    assert_eq!(f["scope"], "global");
    let k = c.ok(op::KEYS, json!({"prefix": "doc:"}));
    assert_eq!(k["keys"], json!(["doc:1", "doc:2"]));
    assert_eq!(k["count"], 2);
    let all = c.ok(op::KEYS, json!({}));
    assert_eq!(all["count"], 3);
    // Another client sees global keys.
    let mut other = d.client();
    assert_eq!(other.ok(op::FETCH, json!({"key": "doc:2"}))["value"], "two");
    assert_eq!(
        other.ok(op::DELETE, json!({"key": "doc:2"}))["deleted"],
        true
    );
    assert_eq!(c.ok(op::DELETE, json!({"key": "doc:2"}))["deleted"], false);
    let missing = c.ok(op::FETCH, json!({"key": "doc:2"}));
    assert_eq!(missing["exists"], false);
    assert_eq!(missing["value"], json!(null));
    // Overwrite replaces.
    c.ok(op::STORE, json!({"key": "other", "value": 4}));
    assert_eq!(other.ok(op::FETCH, json!({"key": "other"}))["value"], 4);
}

#[test]
fn values_come_back_byte_for_byte() {
    let d = Daemon::start();
    let mut c = d.client();
    let payload = br#"{"key":"exact","value":{"b":1,"a":[1.50,"\u00e9"]}}"#;
    assert_eq!(c.call_raw(op::STORE, payload).json()["success"], true);
    let f = c.call_raw(op::FETCH, br#"{"key":"exact"}"#);
    let text = String::from_utf8(f.payload).unwrap();
    assert!(
        text.contains(r#"{"b":1,"a":[1.50,"\u00e9"]}"#),
        "value was re-encoded: {text}"
    );
}

#[test]
fn agent_scope_is_private_and_shadows_global_for_its_owner() {
    let d = Daemon::start();
    let mut a = d.client();
    let mut b = d.client();
    a.ok(op::STORE, json!({"key": "k", "value": "global"}));
    a.ok(
        op::STORE,
        json!({"key": "k", "value": "a-private", "scope": "agent"}),
    );
    let fa = a.ok(op::FETCH, json!({"key": "k"}));
    assert_eq!(fa["value"], "a-private");
    assert_eq!(fa["scope"], "agent");
    let fb = b.ok(op::FETCH, json!({"key": "k"}));
    assert_eq!(fb["value"], "global");
    // No global key name reaches the private one: not KEYS, not DELETE.
    a.ok(
        op::STORE,
        json!({"key": "secret", "value": 1, "scope": "agent"}),
    );
    assert_eq!(b.ok(op::FETCH, json!({"key": "secret"}))["exists"], false);
    assert_eq!(b.ok(op::DELETE, json!({"key": "secret"}))["deleted"], false);
    let bk = b.ok(op::KEYS, json!({}));
    assert_eq!(bk["keys"], json!(["k"]));
    let ak = a.ok(op::KEYS, json!({}));
    assert_eq!(ak["keys"], json!(["k", "secret"]));
    // The owner's DELETE removes its own key first, then the shared one.
    assert_eq!(a.ok(op::DELETE, json!({"key": "k"}))["deleted"], true);
    assert_eq!(a.ok(op::FETCH, json!({"key": "k"}))["value"], "global");
    // Session scope is shared like global.
    a.ok(
        op::STORE,
        json!({"key": "s", "value": 1, "scope": "session"}),
    );
    assert_eq!(b.ok(op::FETCH, json!({"key": "s"}))["scope"], "session");
}

#[test]
fn ttl_expires_and_is_reclaimed() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SUBSCRIBE, json!({"event_types": ["STATE_CHANGED"]}));
    c.ok(op::STORE, json!({"key": "short", "value": 1, "ttl": 0.3}));
    c.ok(op::STORE, json!({"key": "long", "value": 2, "ttl": 60}));
    assert_eq!(c.ok(op::FETCH, json!({"key": "short"}))["exists"], true);
    let t = Instant::now();
    wait_for("expiry", Duration::from_secs(5), || {
        (c.ok(op::FETCH, json!({"key": "short"}))["exists"] == false).then_some(())
    });
    assert!(t.elapsed() >= Duration::from_millis(200));
    // Reclaimed by the daemon's own timer: an expire event arrives without any read of the key.
    let events = wait_for("expire event", Duration::from_secs(5), || {
        let ev = c.ok(op::POLL_EVENTS, json!({}));
        let list = ev["events"].as_array().unwrap().clone();
        list.iter()
            .find(|e| e["data"]["action"] == "expire")
            .cloned()
    });
    assert_eq!(events["data"]["key"], "short");
    assert_eq!(c.ok(op::KEYS, json!({}))["keys"], json!(["long"]));
    for bad in [json!(0), json!(-1), json!("10")] {
        let e = c.err(op::STORE, json!({"key": "x", "value": 1, "ttl": bad}));
        assert!(e.contains("ttl"), "{e}");
    }
}

#[test]
fn bad_scope_and_limits_are_clear_errors() {
    let d = Daemon::with_config(
        "[limits]\nstate_max_keys = 3\nstate_max_value_bytes = 100\nstate_max_key_bytes = 16\n",
    );
    let mut c = d.client();
    let e = c.err(op::STORE, json!({"key": "a", "value": 1, "scope": "world"}));
    assert!(e.contains("scope"), "{e}");
    let e = c.err(op::STORE, json!({"key": "", "value": 1}));
    assert!(e.contains("empty"), "{e}");
    let e = c.err(op::STORE, json!({"key": "k".repeat(17), "value": 1}));
    assert!(e.contains("16"), "{e}");
    let e = c.err(op::STORE, json!({"key": "big", "value": "x".repeat(200)}));
    assert!(e.contains("100"), "{e}");
    for k in ["a", "b", "c"] {
        c.ok(op::STORE, json!({"key": k, "value": 1}));
    }
    let e = c.err(op::STORE, json!({"key": "d", "value": 1}));
    assert!(e.contains("full"), "{e}");
    c.ok(op::STORE, json!({"key": "a", "value": 2}));
    c.ok(op::DELETE, json!({"key": "a"}));
    c.ok(op::STORE, json!({"key": "d", "value": 1}));
}

#[test]
fn private_keys_of_a_client_are_reclaimed_when_it_leaves() {
    let d = Daemon::with_config("[limits]\nstate_max_keys = 1\n");
    let mut a = d.client();
    a.ok(
        op::STORE,
        json!({"key": "mine", "value": 1, "scope": "agent"}),
    );
    let mut b = d.client();
    assert!(
        b.err(op::STORE, json!({"key": "x", "value": 1}))
            .contains("full")
    );
    drop(a);
    // Once the client is gone its private keys no longer count against the store's limit.
    wait_for("reclaim", Duration::from_secs(5), || {
        (b.call(op::STORE, json!({"key": "x", "value": 1}))["success"] == true).then_some(())
    });
    assert_eq!(b.ok(op::FETCH, json!({"key": "mine"}))["exists"], false);
}

#[test]
fn delete_and_keys_reject_bad_fields_and_the_connection_goes_on() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::STORE, json!({"key": "kept", "value": 1}));
    let cases = [
        (op::DELETE, json!({}), "`key`"),
        (op::DELETE, json!({"key": 5}), "`key`"),
        (op::DELETE, json!({"key": null}), "`key`"),
        (op::DELETE, json!({"key": ["kept"]}), "`key`"),
        (op::KEYS, json!({"prefix": 5}), "`prefix`"),
        (op::KEYS, json!({"prefix": {"a": 1}}), "`prefix`"),
    ];
    for (code, req, field) in cases {
        let e = c.err(code, req.clone());
        assert!(e.contains(field), "{req}: error does not name {field}: {e}");
        // The same connection still serves, and the bad request changed nothing.
        let k = c.ok(op::KEYS, json!({"prefix": "kep"}));
        assert_eq!(k["keys"], json!(["kept"]), "after {req}");
        assert_eq!(
            c.ok(op::FETCH, json!({"key": "kept"}))["value"],
            1,
            "after {req}"
        );
    }
    assert_eq!(c.ok(op::DELETE, json!({"key": "kept"}))["deleted"], true);
}
