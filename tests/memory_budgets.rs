//! Item 6 of the security review (memory amplification): what the daemon holds for messages
//! waiting in mailboxes and for replies its clients do not read is bounded by two daemon-wide
//! budgets, `limits.mailboxes_total_bytes` and `server.pending_reply_total_bytes`, whatever
//! the number of connections. The RSS checks run with the defaults, which are the promise to a
//! login node.

use crate::harness::{Client, Daemon, frame, op, read_frame, wait_for};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

const MIB: u64 = 1024;

/// The largest RSS (KiB) seen until it has stopped growing for `quiet`, or `limit` passed.
fn rss_settled(d: &Daemon, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut peak = d.rss_kib();
    let mut last_growth = Instant::now();
    while start.elapsed() < limit && last_growth.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(50));
        let now = d.rss_kib();
        if now > peak + MIB {
            last_growth = Instant::now();
        }
        peak = peak.max(now);
    }
    peak
}

#[test]
fn broadcasts_to_300_mailboxes_hold_one_copy_of_each_body() {
    // Before the fix every mailbox got its own copy: 12 x 300 x 1 MB, RSS 26 -> 3,473 MiB.
    let d = Daemon::start();
    let mut receivers: Vec<Client> = (0..300)
        .map(|i| {
            let mut c = d.client();
            c.ok(op::REGISTER, json!({"name": format!("r{i}")}));
            c
        })
        .collect();
    let mut sender = d.client();
    sender.ok(op::HELLO, json!({}));
    let before = d.rss_kib();
    for i in 0..12 {
        let body = format!("{i:02}{}", "b".repeat(1_000_000));
        let r = sender.ok(op::BROADCAST, json!({"message": body}));
        assert_eq!(r["delivered_count"], 300, "{r}");
    }
    let grown = d.rss_kib().saturating_sub(before);
    // The default budget (limits.mailboxes_total_bytes, 128 MiB) plus slack; the bodies
    // themselves are 12 MB.
    assert!(
        grown < (128 + 32) * MIB,
        "RSS grew by {} MiB for 12 broadcasts of 1 MB to 300 mailboxes",
        grown / MIB
    );
    let q = sender.ok(op::HELLO, json!({}))["queues"]["mailboxes"].clone();
    assert_eq!(q["key"], "limits.mailboxes_total_bytes", "{q}");
    assert_eq!(q["capacity"], 128 << 20, "{q}");
    // Each body is counted once, not once per mailbox.
    assert_eq!(q["bytes"], 12 * 1_000_004, "{q}");
    // Every mailbox has all twelve, intact and in order.
    for c in [0, 150, 299] {
        let m = receivers[c].ok(op::RECV, json!({"max": 100}));
        assert_eq!(m["count"], 12);
        for i in 0..12 {
            let text = m["messages"][i]["message"].as_str().unwrap();
            assert!(text.starts_with(&format!("{i:02}bbb")) && text.len() == 1_000_002);
        }
    }
    // Bodies are released when the last mailbox holding them lets go of them.
    drop(receivers.drain(1..).collect::<Vec<_>>());
    wait_for(
        "the departed receivers' mailboxes to go",
        Duration::from_secs(10),
        || {
            let q = sender.ok(op::HELLO, json!({}))["queues"]["mailboxes"].clone();
            (q["bytes"] == 0).then_some(())
        },
    );
}

#[test]
fn mail_beyond_the_daemon_wide_budget_is_refused_naming_the_key() {
    let d = Daemon::with_config("[limits]\nmailboxes_total_bytes = 3000000\n");
    let mut a = d.client();
    let mut b = d.client();
    let mut c = d.client();
    b.ok(op::REGISTER, json!({"name": "b"}));
    c.ok(op::REGISTER, json!({"name": "c"}));
    let body = |i: usize| format!("{i}{}", "m".repeat(999_999));
    // One broadcast to two mailboxes costs its body once.
    let r = a.ok(op::BROADCAST, json!({"message": body(0)}));
    assert_eq!(r["delivered_count"], 2, "{r}");
    a.ok(op::SEND, json!({"to_name": "b", "message": body(1)}));
    // A third distinct megabyte does not fit in 3,000,000 bytes, for SEND and for BROADCAST,
    // and the error names the key; nothing is delivered.
    let e = a.err(op::SEND, json!({"to_name": "c", "message": body(2)}));
    assert!(
        e.contains("limits.mailboxes_total_bytes") && e.contains("3000000"),
        "{e}"
    );
    let e = a.err(op::BROADCAST, json!({"message": body(3)}));
    assert!(e.contains("limits.mailboxes_total_bytes"), "{e}");
    assert_eq!(c.ok(op::RECV, json!({"max": 10}))["count"], 1);
    // c's copy of the broadcast is gone, but b still holds it: nothing is released yet.
    let e = a.err(op::SEND, json!({"to_name": "c", "message": body(4)}));
    assert!(e.contains("limits.mailboxes_total_bytes"), "{e}");
    // Once b has read both, there is room again.
    assert_eq!(b.ok(op::RECV, json!({"max": 10}))["count"], 2);
    a.ok(op::SEND, json!({"to_name": "c", "message": body(5)}));
    a.ok(op::BROADCAST, json!({"message": body(6)}));
}

#[test]
fn clients_that_do_not_read_their_replies_stay_within_the_pending_reply_budget() {
    // Before the fix, 300 connections pipelining 10 FETCHes of 1 MB without reading held
    // 1,465 MiB: 4 MiB (and one reply more) per connection, for up to 4096 connections.
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        op::STORE,
        json!({"key": "big", "value": "v".repeat(1_000_000)}),
    );
    let before = d.rss_kib();
    let mut fetches = Vec::new();
    for _ in 0..10 {
        fetches.extend(frame(0, op::FETCH, br#"{"key":"big"}"#));
    }
    let hogs: Vec<_> = (0..300)
        .map(|_| {
            let mut s = d.raw();
            s.write_all(&fetches).unwrap();
            s
        })
        .collect();
    let peak = rss_settled(&d, Duration::from_millis(1500), Duration::from_secs(8));
    let grown = peak.saturating_sub(before);
    // The default budget (server.pending_reply_total_bytes, 128 MiB) plus slack.
    assert!(
        grown < (128 + 32) * MIB,
        "RSS grew by {} MiB for 300 connections that do not read",
        grown / MIB
    );
    // A client that reads is still served, big replies included.
    let t = Instant::now();
    let r = c.ok(op::FETCH, json!({"key": "big"}));
    assert_eq!(r["value"].as_str().map(str::len), Some(1_000_000));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a reading client waited {:?} behind 300 that do not read",
        t.elapsed()
    );
    let q = c.ok(op::HELLO, json!({}))["queues"]["replies"].clone();
    assert_eq!(q["key"], "server.pending_reply_total_bytes", "{q}");
    assert!(
        q["bytes"].as_u64().unwrap() <= q["capacity"].as_u64().unwrap() + (2 << 20),
        "{q}"
    );
    // Whatever the daemon did send a connection that does not read is correct and in order.
    for mut s in hogs.into_iter().take(5) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for _ in 0..10 {
            let Ok(f) = read_frame(&mut s) else { break };
            assert_eq!(f.op, op::FETCH);
            assert_eq!(f.json()["value"].as_str().map(str::len), Some(1_000_000));
        }
    }
}
