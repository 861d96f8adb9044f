//! Limits that used to be compile-time constants, each set small in the config and checked
//! over the socket: the completion queue (`server.completion_queue`), the supervisor's
//! command queue (`agents.command_queue`), subscriptions and event type names
//! (`limits.max_subscriptions`, `limits.max_event_type_bytes`), names
//! (`limits.max_name_bytes`) and SPAWN arguments (`agents.max_args`, `agents.max_args_bytes`).
//! With the defaults, every refusal checked here would have been a success.

use crate::agent_support::{list, script};
use crate::harness::{Client, Daemon, frame, op, read_frame, wait_for};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn sleeper(name: &str, args: Value) -> Value {
    json!({"name": name, "script": script("sleeper.sh"), "python": "/bin/sh", "args": args})
}

/// Sends `requests` in one write (pipelined) and returns the replies, checking that each
/// echoes its request's op (so replies come back in request order).
fn pipelined(d: &Daemon, requests: &[(u8, Value)]) -> Vec<Value> {
    let mut s = d.raw();
    let mut bytes = Vec::new();
    for (o, body) in requests {
        bytes.extend(frame(0, *o, &serde_json::to_vec(body).unwrap()));
    }
    s.write_all(&bytes).unwrap();
    requests
        .iter()
        .enumerate()
        .map(|(i, (o, body))| {
            let f = read_frame(&mut s).unwrap_or_else(|e| panic!("no reply to request {i}: {e}"));
            assert_eq!(f.op, *o, "reply {i} answers request {i} ({body})");
            f.json()
        })
        .collect()
}

fn hello(d: &Daemon) -> Value {
    d.client().ok(op::HELLO, json!({}))
}

#[test]
fn a_completion_queue_of_one_is_back_pressure_not_errors() {
    let d = Daemon::with_config("[server]\ncompletion_queue = 1\nworkers = 4\n");
    let q = &hello(&d)["queues"]["completion"];
    assert_eq!(
        q["capacity"], 1,
        "the configured capacity is in effect: {q}"
    );
    assert_eq!(q["key"], "server.completion_queue");

    const CONNS: usize = 6;
    const CYCLES: usize = 5;
    let dir = d.dir.path().to_path_buf();
    let barrier = Arc::new(Barrier::new(CONNS));
    let d = Arc::new(d);
    let threads: Vec<_> = (0..CONNS)
        .map(|c| {
            let (d, dir, barrier) = (d.clone(), dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                let input = dir.join(format!("in-{c}.txt"));
                std::fs::write(&input, format!("conn {c}")).unwrap();
                // Worker ops (READ, WRITE, EXEC, METRICS_*), store commits answered by the
                // writer thread, and inline ops, pipelined.
                let mut reqs = Vec::new();
                for i in 0..CYCLES {
                    let out = dir.join(format!("out-{c}-{i}.txt"));
                    reqs.push((op::READ, json!({"path": input})));
                    reqs.push((
                        op::WRITE,
                        json!({"path": out, "content": format!("w {c} {i}")}),
                    ));
                    reqs.push((op::EXEC, json!({"command": format!("echo {c}-{i}")})));
                    reqs.push((op::STORE, json!({"key": format!("k-{c}-{i}"), "value": i})));
                    reqs.push((op::METRICS_CGROUP, json!({"name": "nobody"})));
                    reqs.push((op::LIST, json!({})));
                    reqs.push((op::METRICS_SYSTEM, json!({})));
                    reqs.push((op::FETCH, json!({"key": format!("k-{c}-{i}")})));
                }
                barrier.wait();
                let replies = pipelined(&d, &reqs);
                for (n, r) in replies.iter().enumerate() {
                    let i = n / 8;
                    let what = format!("conn {c} request {n}: {r}");
                    match n % 8 {
                        0 => assert_eq!(r["content"], format!("conn {c}"), "{what}"),
                        1 => assert_eq!(r["success"], true, "{what}"),
                        2 => assert_eq!(r["stdout"], format!("{c}-{i}\n"), "{what}"),
                        3 => assert_eq!(r["key"], format!("k-{c}-{i}"), "{what}"),
                        4 => assert_eq!(r["error"], "no such agent", "{what}"),
                        5 => assert!(r.is_array(), "{what}"),
                        6 => assert_eq!(r["success"], true, "{what}"),
                        _ => assert_eq!(r["value"], i, "{what}"),
                    }
                }
                for i in 0..CYCLES {
                    let out = dir.join(format!("out-{c}-{i}.txt"));
                    assert_eq!(std::fs::read_to_string(out).unwrap(), format!("w {c} {i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a connection's replies were wrong");
    }
    // Still answering, and nothing is left waiting.
    let q = &hello(&d)["queues"]["completion"];
    assert_eq!(q["queued"], 0, "{q}");
}

/// One client's SPAWN, LIST, KILL, pipelined. Returns how many busy refusals it got.
fn spawn_list_kill(d: &Daemon, name: &str) -> usize {
    let replies = pipelined(
        d,
        &[
            (op::SPAWN, sleeper(name, json!([]))),
            (op::LIST, json!({})),
            (op::KILL, json!({"name": name})),
        ],
    );
    let busy = |r: &Value| {
        r["success"] == false
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("busy") && e.contains("agents.command_queue"))
    };
    let mut refused = 0;
    let (spawn, listed, kill) = (&replies[0], &replies[1], &replies[2]);
    assert!(listed.is_array(), "LIST: {listed}");
    if spawn["success"] == true {
        assert_eq!(spawn["name"], name, "{spawn}");
        let in_list = listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent_id"] == spawn["agent_id"] || a["id"] == spawn["agent_id"]);
        assert!(in_list, "a spawned agent is listed: {listed}");
        if kill["success"] == true {
            assert_eq!(kill["agent_id"], spawn["agent_id"], "{kill}");
            assert_eq!(kill["killed"], true, "{kill}");
        } else {
            assert!(busy(kill), "KILL is done or busy, got {kill}");
            refused += 1;
        }
    } else {
        assert!(busy(spawn), "SPAWN is done or busy, got {spawn}");
        refused += 1;
        let e = kill["error"].as_str().unwrap_or_default();
        assert!(e.contains("no agent named"), "{kill}");
    }
    refused
}

#[test]
fn a_full_supervisor_queue_is_a_clear_busy_error_and_every_request_is_answered() {
    let d = Daemon::with_config(
        "[server]\ncompletion_queue = 1\n[agents]\ncommand_queue = 1\nkill_grace_ms = 200\nmax_agents = 64\n",
    );
    let q = &hello(&d)["queues"]["supervisor"];
    assert_eq!(
        q["capacity"], 1,
        "the configured capacity is in effect: {q}"
    );
    assert_eq!(q["key"], "agents.command_queue");
    let d = Arc::new(d);
    const CLIENTS: usize = 8;
    let mut refused = 0;
    // A SPAWN keeps the supervisor busy for milliseconds while the reactor queues the other
    // clients' commands in microseconds, so a round all but surely overflows a queue of one;
    // a few rounds make it certain enough.
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (d, barrier) = (d.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    spawn_list_kill(&d, &format!("q{round}-{c}"))
                })
            })
            .collect();
        for t in threads {
            refused += t.join().expect("a client got a wrong reply");
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "a burst against a queue of one is refused as busy"
    );
    // Agents whose KILL was refused are still running: stop them, retrying while busy.
    let mut c = d.client();
    for a in list(&mut c) {
        if a["state"] == "EXITED" || a["state"] == "FAILED" {
            continue;
        }
        let id = a["agent_id"].clone();
        wait_for("KILL to be accepted", T, || {
            let r = c.call(op::KILL, json!({"id": id}));
            let e = r["error"].as_str().unwrap_or_default();
            (r["success"] == true || e.contains("not running")).then_some(())
        });
    }
    assert!(
        list(&mut c)
            .iter()
            .all(|a| a["state"] == "EXITED" || a["state"] == "FAILED"),
        "{:?}",
        list(&mut c)
    );
    let q = &hello(&d)["queues"];
    assert_eq!(q["supervisor"]["queued"], 0, "{q}");
}

#[test]
fn subscriptions_and_event_type_names_follow_their_keys() {
    let d = Daemon::with_config("[limits]\nmax_subscriptions = 3\nmax_event_type_bytes = 8\n");
    let mut c = d.client();
    c.ok(op::SUBSCRIBE, json!({"event_types": ["A", "B", "CUSTOM"]}));
    // Already subscribed types cost nothing.
    c.ok(op::SUBSCRIBE, json!({"event_types": ["A"]}));
    let e = c.err(op::SUBSCRIBE, json!({"event_types": ["D"]}));
    assert!(
        e.contains("at most 3") && e.contains("limits.max_subscriptions"),
        "{e}"
    );
    c.ok(op::UNSUBSCRIBE, json!({"event_types": ["A"]}));
    c.ok(op::SUBSCRIBE, json!({"event_types": ["EIGHT_88"]}));

    let mut other = d.client();
    let e = other.err(op::EMIT, json!({"event_type": "NINE_9999", "data": {}}));
    assert!(
        e.contains("limit of 8 bytes") && e.contains("limits.max_event_type_bytes"),
        "{e}"
    );
    let e = other.err(op::SUBSCRIBE, json!({"event_types": ["NINE_9999"]}));
    assert!(e.contains("limits.max_event_type_bytes"), "{e}");
    let r = other.ok(
        op::EMIT,
        json!({"event_type": "EIGHT_88", "data": {"n": 1}}),
    );
    assert_eq!(r["delivered_to"], 1, "{r}");
    let r = c.ok(op::POLL_EVENTS, json!({}));
    assert_eq!(r["events"][0]["data"]["custom_type"], "EIGHT_88", "{r}");
}

#[test]
fn names_follow_limits_max_name_bytes_for_register_and_spawn() {
    let d = Daemon::with_config("[limits]\nmax_name_bytes = 5\n[agents]\nkill_grace_ms = 200\n");
    let mut c = d.client();
    c.ok(op::REGISTER, json!({"name": "abcde"}));
    let e = c.err(op::REGISTER, json!({"name": "abcdef"}));
    assert!(
        e.contains("limit of 5 bytes") && e.contains("limits.max_name_bytes"),
        "{e}"
    );
    let e = c.err(op::SPAWN, sleeper("sixsix", json!([])));
    assert!(e.contains("limits.max_name_bytes"), "{e}");
    let r = c.ok(op::SPAWN, sleeper("five5", json!([])));
    assert_eq!(r["name"], "five5");
    c.ok(op::KILL, json!({"name": "five5"}));
    assert!(list(&mut c).iter().all(|a| a["name"] == "five5"));
}

#[test]
fn spawn_arguments_follow_agents_max_args_and_max_args_bytes() {
    let d =
        Daemon::with_config("[agents]\nmax_args = 2\nmax_args_bytes = 10\nkill_grace_ms = 200\n");
    let mut c = d.client();
    let e = c.err(op::SPAWN, sleeper("a", json!(["1", "2", "3"])));
    assert!(
        e.contains("3 given, at most 2") && e.contains("agents.max_args"),
        "{e}"
    );
    let e = c.err(op::SPAWN, sleeper("a", json!(["12345", "123456"])));
    assert!(
        e.contains("11 bytes") && e.contains("at most 10") && e.contains("agents.max_args_bytes"),
        "{e}"
    );
    assert!(list(&mut c).is_empty(), "refused spawns leave nothing");
    let r = c.ok(op::SPAWN, sleeper("a", json!(["12345", "12345"])));
    assert_eq!(r["name"], "a");
    c.ok(op::KILL, json!({"name": "a"}));
}

#[test]
fn event_queues_are_bounded_in_bytes_by_limits_event_queue_bytes() {
    let d = Daemon::with_config("[limits]\nevent_queue_bytes = 4096\n");
    let mut sub = d.client();
    sub.ok(op::SUBSCRIBE, json!({"event_types": ["CUSTOM"]}));
    let mut emitter = d.client();
    // Each event's data is about 1115 bytes of JSON: three fit in 4096, the oldest go.
    for i in 0..10 {
        emitter.ok(
            op::EMIT,
            json!({"event_type": "CUSTOM", "data": {"i": i, "pad": "p".repeat(1100)}}),
        );
    }
    let r = sub.ok(op::POLL_EVENTS, json!({"max": 100}));
    let got: Vec<i64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [7, 8, 9], "{r}");
    assert_eq!(r["dropped"], 7, "{r}");
    // One event larger than a whole queue is refused, naming the key.
    let e = emitter.err(
        op::EMIT,
        json!({"event_type": "CUSTOM", "data": "x".repeat(5000)}),
    );
    assert!(
        e.contains("at most 4096") && e.contains("limits.event_queue_bytes"),
        "{e}"
    );
    // With the default budget the same event goes through.
    let d = Daemon::start();
    let mut sub = d.client();
    sub.ok(op::SUBSCRIBE, json!({"event_types": ["CUSTOM"]}));
    let r = d.client().ok(
        op::EMIT,
        json!({"event_type": "CUSTOM", "data": "x".repeat(5000)}),
    );
    assert_eq!(r["delivered_to"], 1, "{r}");
}

#[test]
fn zero_and_absurd_limits_are_refused_all_at_once_naming_each_key() {
    let (ok, text) = crate::harness::check_config(
        "[server]\ncompletion_queue = 0\n\
         [limits]\nmax_subscriptions = 0\nmax_event_type_bytes = 1000000\nmax_name_bytes = 300\n\
         max_permission_rules = 5000\nevent_queue_bytes = 0\n\
         [agents]\ncommand_queue = 0\nmax_args = 0\nmax_args_bytes = 100000000\n",
    );
    assert!(!ok);
    for key in [
        "server.completion_queue",
        "limits.max_subscriptions",
        "limits.max_event_type_bytes",
        "limits.max_name_bytes",
        "limits.max_permission_rules",
        "limits.event_queue_bytes",
        "agents.command_queue",
        "agents.max_args:",
        "agents.max_args_bytes",
    ] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
    // The defaults are the old constants.
    let d = Daemon::start();
    let mut c: Client = d.client();
    let q = c.ok(op::HELLO, json!({}))["queues"].clone();
    assert_eq!(q["completion"]["capacity"], 4096, "{q}");
    assert_eq!(q["supervisor"]["capacity"], 1024, "{q}");
    c.ok(op::REGISTER, json!({"name": "n".repeat(64)}));
    let e = c.err(op::REGISTER, json!({"name": "n".repeat(65)}));
    assert!(e.contains("limit of 64 bytes"), "{e}");
}

#[test]
fn a_daemon_stopping_with_a_full_completion_queue_exits() {
    let mut d =
        Daemon::with_config("[server]\ncompletion_queue = 1\n[agents]\nkill_grace_ms = 1000\n");
    let mut c = d.client();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "stubborn", "script": script("stubborn.sh"), "python": "/bin/sh"}),
    );
    let log = std::path::PathBuf::from(r["log_path"].as_str().unwrap());
    wait_for("the agent to ignore SIGTERM", T, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("stubborn agent up"))
    });
    // EXECs still running when the daemon stops: their replies come after the reactor has
    // stopped reading, and fill the queue.
    let mut execs = Vec::new();
    for i in 0..3 {
        let marker = d.path(&format!("exec-{i}"));
        let cmd = format!("touch {}; sleep 30", marker.display());
        let mut s = d.raw();
        s.write_all(&frame(
            0,
            op::EXEC,
            &serde_json::to_vec(&json!({"command": cmd})).unwrap(),
        ))
        .unwrap();
        execs.push((s, marker));
    }
    wait_for("the EXECs to run", T, || {
        execs.iter().all(|(_, m)| m.exists()).then_some(())
    });
    // A KILL waiting out the grace: the supervisor answers it while the daemon shuts down.
    let mut killer = d.raw();
    killer
        .write_all(&frame(0, op::KILL, br#"{"name": "stubborn"}"#))
        .unwrap();
    wait_for("the agent to be STOPPING", T, || {
        list(&mut c)
            .iter()
            .any(|a| a["name"] == "stubborn" && a["state"] == "STOPPING")
            .then_some(())
    });
    let started = std::time::Instant::now();
    let status = d.stop();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopping took {:?}",
        started.elapsed()
    );
}

#[test]
fn permission_rule_lists_follow_limits_max_permission_rules() {
    let d = Daemon::with_config("[limits]\nmax_permission_rules = 3\n");
    let mut c = d.client();
    let rules = |n: usize| (0..n).map(|i| format!("/data/{i}/**")).collect::<Vec<_>>();
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"read": rules(4)}}}),
    );
    assert!(
        e.contains("`filesystem.read` has 4, at most 3")
            && e.contains("limits.max_permission_rules"),
        "{e}"
    );
    let e = c.err(
        op::SPAWN,
        json!({"name": "p", "script": script("sleeper.sh"), "python": "/bin/sh",
               "permissions": {"network": ["a", "b", "c", "d"]}}),
    );
    assert!(e.contains("limits.max_permission_rules"), "{e}");
    assert!(list(&mut c).is_empty());
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"read": rules(3)}}}),
    );
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(
        p["permissions"]["filesystem"]["read"],
        json!(rules(3)),
        "{p}"
    );

    // The default (256) bounds what one request can make the event loop compare: a caller's
    // new rules are checked pairwise against its current ones.
    let d = Daemon::start();
    let mut c = d.client();
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"read": rules(257)}}}),
    );
    assert!(e.contains("at most 256"), "{e}");
}
