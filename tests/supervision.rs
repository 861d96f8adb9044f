//! Supervised agents: SPAWN, LIST, KILL, PAUSE, RESUME, restart policies, identity binding,
//! permissions, sandbox and cgroup limits, metrics, audit log, shutdown and the CLI. Every
//! agent is a real child process (small shell or Python scripts in tests/agent_scripts).

use crate::agent_support::{alive, list, python, script, tree};
use crate::harness::{Client, Daemon, op, wait_for};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Fast timers so the tests stay short.
const FAST: &str = "[agents]\nkill_grace_ms = 400\nbackoff_initial_ms = 20\nbackoff_cap_ms = 80\nmetrics_interval_ms = 100\n";

const T: Duration = Duration::from_secs(15);

fn agent(c: &mut Client, name: &str) -> Value {
    list(c)
        .into_iter()
        .find(|a| a["name"] == json!(name))
        .unwrap_or_else(|| panic!("no agent {name} in LIST"))
}

fn wait_state(c: &mut Client, name: &str, state: &str) -> Value {
    wait_for(&format!("{name} to be {state}"), T, || {
        let a = agent(c, name);
        (a["state"] == json!(state)).then_some(a)
    })
}

/// Collects events until one of `kind` satisfies `pred`; returns every event seen.
fn wait_event(
    c: &mut Client,
    seen: &mut Vec<Value>,
    kind: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(e) = seen
        .iter()
        .find(|e| e["type"] == json!(kind) && pred(&e["data"]))
    {
        return e.clone();
    }
    wait_for(&format!("event {kind}"), T, || {
        let r = c.ok(op::POLL_EVENTS, json!({"max": 1000}));
        let mut hit = None;
        for e in r["events"].as_array().unwrap() {
            if hit.is_none() && e["type"] == json!(kind) && pred(&e["data"]) {
                hit = Some(e.clone());
            }
            seen.push(e.clone());
        }
        hit
    })
}

fn subscribed(d: &Daemon) -> Client {
    let mut ev = d.client();
    ev.ok(
        op::SUBSCRIBE,
        json!({"event_types": ["AGENT_SPAWNED", "AGENT_EXITED", "AGENT_RESTARTING",
            "AGENT_ESCALATED", "AGENT_PAUSED", "AGENT_RESUMED", "SYSCALL_BLOCKED", "RESOURCE_WARNING"]}),
    );
    ev
}

fn sh_agent(name: &str, file: &str, args: Value) -> Value {
    json!({"name": name, "script": script(file), "python": "/bin/sh", "args": args})
}

#[test]
fn spawn_list_kill_and_logs() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let r = c.ok(op::SPAWN, sh_agent("sleepy", "sleeper.sh", json!([])));
    let id = r["agent_id"].as_u64().unwrap();
    assert_eq!(r["id"], r["agent_id"]);
    assert_eq!(r["status"], "running");
    assert_eq!(r["restart_policy"], "never");
    assert!(r["isolation"].is_object(), "{r}");
    let pid = r["pid"].as_i64().unwrap();
    assert!(alive(pid), "agent process {pid} runs");
    let e = wait_event(&mut ev, &mut seen, "AGENT_SPAWNED", |d| {
        d["agent_id"] == json!(id)
    });
    assert_eq!(e["data"]["name"], "sleepy");
    assert_eq!(e["data"]["pid"], json!(pid));
    assert_eq!(e["data"]["parent_id"], json!(c.id));
    let a = agent(&mut c, "sleepy");
    assert_eq!(a["state"], "RUNNING");
    assert_eq!(a["running"], true);
    assert_eq!(a["pid"], json!(pid));
    assert_eq!(a["restarts"], 0);
    assert!(a["uptime_ms"].is_u64());
    // The agent's output lands in its log file.
    let log = PathBuf::from(a["log_path"].as_str().unwrap());
    assert!(log.starts_with(&d.state_dir), "{log:?}");
    wait_for("agent output in its log", T, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("sleeper sleepy up with socket"))
    });
    // A second live agent cannot take the name.
    let e = c.err(op::SPAWN, sh_agent("sleepy", "sleeper.sh", json!([])));
    assert!(e.contains("already"), "{e}");
    let procs = tree(a["supervisor_pid"].as_i64().unwrap());
    let k = c.ok(op::KILL, json!({"name": "sleepy"}));
    assert_eq!(k["killed"], true);
    assert_eq!(k["agent_id"], json!(id));
    for p in &procs {
        assert!(!alive(*p), "process {p} of the killed agent is gone");
    }
    let a = agent(&mut c, "sleepy");
    assert_eq!(a["state"], "EXITED");
    assert_eq!(a["running"], false);
    let e = wait_event(&mut ev, &mut seen, "AGENT_EXITED", |d| {
        d["agent_id"] == json!(id)
    });
    assert_eq!(e["data"]["signal"], 15);
    assert_eq!(e["data"]["killed_by"], json!(c.id));
    assert_eq!(e["data"]["reason"], "killed");
    // The name is free again once the agent is gone for good.
    c.ok(op::SPAWN, sh_agent("sleepy", "sleeper.sh", json!([])));
    c.ok(op::KILL, json!({"name": "sleepy"}));
    let e = c.err(op::KILL, json!({"name": "sleepy"}));
    assert!(e.contains("not running"), "{e}");
}

#[test]
fn bad_spawn_requests_get_clear_errors() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let cases = [
        (
            json!({"name": "a", "script": "/no/such/script.py"}),
            "not found",
        ),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "python": "no-such-interpreter"}),
            "unknown interpreter",
        ),
        (
            json!({"name": "../etc", "script": script("sleeper.sh")}),
            "invalid name",
        ),
        (
            json!({"name": "", "script": script("sleeper.sh")}),
            "invalid name",
        ),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "limits": {"memory": 12}}),
            "limits.memory",
        ),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "limits": {"max_pids": 0}}),
            "max_pids",
        ),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "limits": {"memory": "lots"}}),
            "invalid size",
        ),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "restart_policy": "sometimes"}),
            "restart_policy",
        ),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "restart_window": -1}),
            "restart_window",
        ),
        (json!({"name": "a"}), "missing field `script`"),
        (
            json!({"name": "a", "script": script("sleeper.sh"), "level": "godmode"}),
            "unknown level",
        ),
    ];
    for (req, want) in cases {
        let e = c.err(op::SPAWN, req.clone());
        assert!(e.contains(want), "{req} -> {e:?}, wanted {want:?}");
    }
    assert!(
        list(&mut c).is_empty(),
        "failed spawns leave no agent behind"
    );
    let e = c.err(op::KILL, json!({"name": "nobody"}));
    assert!(e.contains("no agent"), "{e}");
    let e = c.err(op::PAUSE, json!({}));
    assert!(e.contains("give `id` or `name`"), "{e}");
}

#[test]
fn kill_of_sigterm_ignoring_agent_does_not_block_other_clients() {
    let d = Daemon::with_config("[agents]\nkill_grace_ms = 1500\n");
    let mut c = d.client();
    let r = c.ok(op::SPAWN, sh_agent("stubborn", "stubborn.sh", json!([])));
    let id = r["agent_id"].as_u64().unwrap();
    let log = PathBuf::from(r["log_path"].as_str().unwrap());
    wait_for("trap installed", T, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("stubborn agent up"))
    });
    let mut killer = d.client();
    let started = Instant::now();
    let payload = serde_json::to_vec(&json!({"id": id})).unwrap();
    use std::io::Write;
    killer
        .stream
        .write_all(&crate::harness::frame(0, op::KILL, &payload))
        .unwrap();
    // While the KILL waits out the grace, another client is answered promptly.
    let mut other = d.client();
    wait_state(&mut other, "stubborn", "STOPPING");
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(1000) {
        let t = Instant::now();
        assert_eq!(other.call_raw(op::NOOP, b"x").payload, b"x");
        let a = agent(&mut other, "stubborn");
        assert_eq!(a["state"], "STOPPING", "{a}");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        worst < Duration::from_millis(200),
        "NOOP+LIST took {worst:?} during a KILL"
    );
    let reply = crate::harness::read_frame(&mut killer.stream)
        .unwrap()
        .json();
    let waited = started.elapsed();
    assert_eq!(reply["killed"], true, "{reply}");
    assert_eq!(reply["exit_code"], -9, "SIGKILL after the grace: {reply}");
    assert!(
        waited >= Duration::from_millis(1400),
        "the grace was honoured ({waited:?})"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(agent(&mut c, "stubborn")["state"], "EXITED");
}

#[test]
fn on_failure_escalates_after_max_restarts_in_window() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let mut req = sh_agent("crasher", "crash.sh", json!(["3"]));
    req["restart_policy"] = json!("on-failure");
    req["max_restarts"] = json!(2);
    req["restart_window"] = json!(60);
    let id = c.ok(op::SPAWN, req)["agent_id"].clone();
    let esc = wait_event(&mut ev, &mut seen, "AGENT_ESCALATED", |d| {
        d["agent_id"] == id
    });
    assert_eq!(esc["data"]["agent_name"], "crasher");
    assert_eq!(esc["data"]["restart_count"], 2);
    assert_eq!(esc["data"]["exit_code"], 3);
    let restarting: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "AGENT_RESTARTING")
        .collect();
    assert_eq!(restarting.len(), 2, "{seen:?}");
    assert_eq!(restarting[0]["data"]["restart_count"], 1);
    assert_eq!(restarting[1]["data"]["restart_count"], 2);
    assert_eq!(restarting[0]["data"]["exit_code"], 3);
    let exits = seen.iter().filter(|e| e["type"] == "AGENT_EXITED").count();
    assert_eq!(exits, 3, "every exit is reported");
    let a = wait_state(&mut c, "crasher", "FAILED");
    assert_eq!(a["restarts"], 2);
    assert_eq!(a["exit_code"], 3);
    // Escalation is reported once, and the agent stays stopped.
    std::thread::sleep(Duration::from_millis(300));
    let more = c.ok(op::POLL_EVENTS, json!({"max": 100}));
    assert!(
        more["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "AGENT_ESCALATED" && e["type"] != "AGENT_RESTARTING"),
        "{more}"
    );
    assert_eq!(agent(&mut c, "crasher")["state"], "FAILED");
}

#[test]
fn kill_during_the_restart_backoff_stops_it_without_a_second_exit() {
    // A long backoff, so the KILL lands while the agent waits to be started again.
    let d = Daemon::with_config(
        "[agents]\nkill_grace_ms = 400\nbackoff_initial_ms = 2000\nbackoff_cap_ms = 2000\n",
    );
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let mut req = sh_agent("looper", "crash.sh", json!(["3"]));
    req["restart_policy"] = json!("always");
    let id = c.ok(op::SPAWN, req)["agent_id"].clone();
    wait_event(&mut ev, &mut seen, "AGENT_RESTARTING", |d| {
        d["agent_id"] == id
    });
    let a = agent(&mut c, "looper");
    assert_eq!(a["state"], "RESTARTING", "{a}");
    let k = c.ok(op::KILL, json!({"id": id}));
    assert_eq!(k["killed"], true, "{k}");
    assert_eq!(k["restart_cancelled"], true, "{k}");
    let a = agent(&mut c, "looper");
    assert_eq!(a["state"], "EXITED", "{a}");
    assert_eq!(a["exit_code"], 3, "LIST keeps the real last exit: {a}");
    // Well past the backoff: it was never started again.
    std::thread::sleep(Duration::from_millis(2500));
    let r = c.ok(op::POLL_EVENTS, json!({"max": 1000}));
    seen.extend(r["events"].as_array().unwrap().iter().cloned());
    let count = |kind: &str| {
        seen.iter()
            .filter(|e| e["type"] == kind && e["data"]["agent_id"] == id)
            .count()
    };
    assert_eq!(
        count("AGENT_EXITED"),
        1,
        "one exit, reported once: {seen:?}"
    );
    assert_eq!(count("AGENT_SPAWNED"), 1, "not started again: {seen:?}");
    assert_eq!(count("AGENT_RESTARTING"), 1, "{seen:?}");
    let a = agent(&mut c, "looper");
    assert_eq!(a["state"], "EXITED", "{a}");
    assert_eq!(a["restarts"], 1, "{a}");
    // The audit log agrees, and records who called the restart off.
    let life = c.ok(
        op::GET_AUDIT_LOG,
        json!({"category": "AGENT_LIFECYCLE", "agent_id": id, "limit": 100}),
    );
    let kinds: Vec<&str> = life["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "AGENT_SPAWNED",
            "AGENT_EXITED",
            "AGENT_RESTARTING",
            "AGENT_RESTART_CANCELLED"
        ],
        "{life}"
    );
    assert_eq!(life["entries"][3]["details"]["killed_by"], json!(c.id));
    let e = c.err(op::KILL, json!({"id": id}));
    assert!(e.contains("not running"), "{e}");
}

#[test]
fn restart_policies_and_clean_exits() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    // on-failure + clean exit: no restart.
    let mut req = sh_agent("clean", "crash.sh", json!(["0"]));
    req["restart_policy"] = json!("on-failure");
    let clean = c.ok(op::SPAWN, req)["agent_id"].clone();
    // on-failure + death by signal: restarted.
    let mut req = json!({"name": "signaled", "script": script("crash.sh"), "python": "/bin/sh",
        "args": ["0", "30"], "restart_policy": "on-failure", "max_restarts": 1});
    req["sandboxed"] = json!(false);
    let signaled = c.ok(op::SPAWN, req);
    // never + crash: stays EXITED.
    let mut req = sh_agent("never", "crash.sh", json!(["1"]));
    req["restart_policy"] = json!("never");
    let never = c.ok(op::SPAWN, req)["agent_id"].clone();
    // always + clean exit: restarted.
    let mut req = sh_agent("always", "crash.sh", json!(["0", "0.05"]));
    req["restart_policy"] = json!("always");
    req["max_restarts"] = json!(100);
    let always = c.ok(op::SPAWN, req)["agent_id"].clone();

    let e = wait_event(&mut ev, &mut seen, "AGENT_EXITED", |d| {
        d["agent_id"] == clean
    });
    assert_eq!(e["data"]["exit_code"], 0);
    let e = wait_event(&mut ev, &mut seen, "AGENT_EXITED", |d| {
        d["agent_id"] == never
    });
    assert_eq!(e["data"]["exit_code"], 1);
    // SIGKILL the signaled agent from outside: it must come back.
    let pid = signaled["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on a process this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let r = wait_event(&mut ev, &mut seen, "AGENT_RESTARTING", |d| {
        d["agent_id"] == signaled["agent_id"]
    });
    assert_eq!(r["data"]["exit_code"], -9);
    let exited = seen
        .iter()
        .find(|e| e["type"] == "AGENT_EXITED" && e["data"]["agent_id"] == signaled["agent_id"])
        .unwrap();
    assert_eq!(exited["data"]["signal"], 9);
    assert_eq!(exited["data"]["signal_name"], "SIGKILL");
    wait_for("always to restart a few times", T, || {
        let a = agent(&mut c, "always");
        (a["restarts"].as_u64().unwrap() >= 3).then_some(())
    });
    wait_state(&mut c, "signaled", "RUNNING");
    for name in ["clean", "never"] {
        let a = agent(&mut c, name);
        assert_eq!(a["state"], "EXITED", "{a}");
        assert_eq!(a["restarts"], 0, "{a}");
    }
    assert!(
        !seen.iter().any(|e| e["type"] == "AGENT_RESTARTING"
            && (e["data"]["agent_id"] == clean || e["data"]["agent_id"] == never)),
        "{seen:?}"
    );
    c.ok(op::KILL, json!({"id": always}));
    assert_eq!(agent(&mut c, "always")["state"], "EXITED");
}

#[test]
fn pause_and_resume_really_stop_progress() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let file = d.path("counter.txt");
    let r = c.ok(
        op::SPAWN,
        sh_agent("counter", "counter.sh", json!([file.display().to_string()])),
    );
    let id = r["agent_id"].clone();
    let read = || -> u64 {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_for("the counter to run", T, || (read() > 3).then_some(()));
    let p = c.ok(op::PAUSE, json!({"name": "counter"}));
    assert_eq!(p["paused"], true);
    assert_eq!(p["agent_id"], id);
    assert_eq!(agent(&mut c, "counter")["state"], "PAUSED");
    wait_event(&mut ev, &mut seen, "AGENT_PAUSED", |d| d["agent_id"] == id);
    // Let anything in flight settle, then the counter must stand still.
    std::thread::sleep(Duration::from_millis(200));
    let v1 = read();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(), v1, "a paused agent makes no progress");
    let r = c.ok(op::RESUME, json!({"id": id}));
    assert_eq!(r["resumed"], true);
    wait_for("the counter to move again", T, || {
        (read() > v1 + 3).then_some(())
    });
    wait_event(&mut ev, &mut seen, "AGENT_RESUMED", |d| d["agent_id"] == id);
    assert_eq!(agent(&mut c, "counter")["state"], "RUNNING");
    // Killing a paused agent works too.
    c.ok(op::PAUSE, json!({"id": id}));
    let k = c.ok(op::KILL, json!({"id": id}));
    assert_eq!(k["killed"], true);
    assert_eq!(agent(&mut c, "counter")["state"], "EXITED");
}

#[test]
fn agent_connection_is_bound_to_agent_id_and_send_reaches_it() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "echoer", "script": script("echo_agent.py"), "python": python(),
            "restart_policy": "on-failure"}),
    );
    let id = r["agent_id"].as_u64().unwrap();
    let ids = wait_for("the agent to report its ids", T, || {
        let v = c.ok(op::FETCH, json!({"key": "ids:echoer"}));
        (v["exists"] == true).then(|| v["value"].clone())
    });
    assert_eq!(
        ids["hello"],
        json!(id),
        "HELLO on the agent's connection gives its id"
    );
    assert_eq!(
        ids["second_connection"],
        json!(id),
        "every connection of the agent"
    );
    assert_eq!(ids["env"], json!(id), "CLOVE_AGENT_ID");
    assert_eq!(
        PathBuf::from(ids["argv_socket"].as_str().unwrap()),
        std::fs::canonicalize(&d.socket).unwrap(),
        "argv[1] is the socket"
    );
    // SEND by id and by (spawn) name both reach it; it answers from its id.
    c.ok(op::SEND, json!({"to": id, "message": "ping"}));
    c.ok(op::SEND, json!({"to_name": "echoer", "message": "pong"}));
    let mut got = Vec::new();
    wait_for("two echoes", T, || {
        let r = c.ok(op::RECV, json!({"max": 10}));
        got.extend(r["messages"].as_array().unwrap().iter().cloned());
        (got.len() >= 2).then_some(())
    });
    for m in &got {
        assert_eq!(m["from"], json!(id));
        assert_eq!(m["from_name"], "echoer");
    }
    assert_eq!(got[0]["message"], json!({"echo": "ping"}));
    assert_eq!(got[1]["message"], json!({"echo": "pong"}));
    // Identity survives a restart: same id, same (lowered) permissions, same name.
    c.ok(op::SET_PERMS, json!({"agent_id": id, "level": "readonly"}));
    c.ok(op::DELETE, json!({"key": "ids:echoer"}));
    let pid = agent(&mut c, "echoer")["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the agent process this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let ids = wait_for("the restarted agent to report", T, || {
        let v = c.ok(op::FETCH, json!({"key": "ids:echoer"}));
        (v["exists"] == true).then(|| v["value"].clone())
    });
    assert_eq!(ids["hello"], json!(id), "{ids}");
    let a = agent(&mut c, "echoer");
    assert_eq!(a["restarts"], 1);
    assert_ne!(a["pid"], json!(pid));
    let p = c.ok(op::GET_PERMS, json!({"agent_id": id}));
    assert_eq!(p["level"], "readonly", "permissions survive the restart");
    c.ok(op::SEND, json!({"to_name": "echoer", "message": "again"}));
    wait_for("the echo after the restart", T, || {
        let r = c.ok(op::RECV, json!({"max": 10}));
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["message"] == json!({"echo": "again"}))
            .cloned()
    });
    c.ok(op::KILL, json!({"id": id}));
    // Gone for good: its id no longer takes messages, its name is released.
    let e = c.err(op::SEND, json!({"to": id, "message": 1}));
    assert!(e.contains("no agent"), "{e}");
    c.ok(op::REGISTER, json!({"name": "echoer"}));
}

#[test]
fn agent_cannot_raise_itself_or_spawn_without_manage_right() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let victim = c.ok(op::SPAWN, sh_agent("victim", "sleeper.sh", json!([])));
    let r = c.ok(
        op::SPAWN,
        json!({"name": "rogue", "script": script("rogue_agent.py"), "python": python(),
            "args": [victim["agent_id"].to_string()]}),
    );
    let rogue = r["agent_id"].clone();
    assert_eq!(r["level"], "standard");
    let out = wait_for("the rogue's results", T, || {
        let v = c.ok(op::FETCH, json!({"key": "rogue:rogue"}));
        (v["exists"] == true).then(|| v["value"].clone())
    });
    for k in ["raise_self", "grant_manage", "spawn", "kill_other"] {
        assert_eq!(out[k]["success"], false, "{k}: {}", out[k]);
        assert!(
            out[k]["error"]
                .as_str()
                .unwrap()
                .contains("permission denied"),
            "{k}: {}",
            out[k]
        );
    }
    assert_eq!(out["perms"]["level"], "standard");
    assert_eq!(out["perms"]["permissions"]["can_spawn"], false);
    assert_eq!(agent(&mut c, "victim")["state"], "RUNNING");
    wait_event(&mut ev, &mut seen, "SYSCALL_BLOCKED", |d| {
        d["agent_id"] == rogue && d["op"] == "SPAWN"
    });
    let audit = c.ok(
        op::GET_AUDIT_LOG,
        json!({"category": "SECURITY", "agent_id": rogue, "limit": 100}),
    );
    let kinds: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["op"].as_str().unwrap_or(""))
        .collect();
    for op_name in ["SET_PERMS", "SPAWN", "KILL"] {
        assert!(
            kinds.contains(&op_name),
            "audit has the {op_name} denial: {audit}"
        );
    }
    // SPAWN may only lower an agent below permissions.agent_level (standard here): by level,
    // or by `permissions`.
    let r = c.ok(
        op::SPAWN,
        json!({"name": "low", "script": script("sleeper.sh"), "python": "/bin/sh", "level": "readonly"}),
    );
    assert_eq!(r["level"], "readonly");
    let r = c.ok(
        op::SPAWN,
        json!({"name": "no-exec", "script": script("sleeper.sh"), "python": "/bin/sh",
            "permissions": {"can_exec": false}}),
    );
    let p = c.ok(op::GET_PERMS, json!({"agent_id": r["agent_id"]}));
    assert_eq!(p["permissions"]["can_exec"], false, "{p}");
    // Asking for more, even by an unrestricted manager, is refused with the way to do it.
    for (name, extra) in [
        ("high", json!({"level": "unrestricted"})),
        ("spawner", json!({"permissions": {"can_spawn": true}})),
    ] {
        let mut req = json!({"name": name, "script": script("sleeper.sh"), "python": "/bin/sh"});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let e = c.err(op::SPAWN, req);
        assert!(
            e.contains("permissions.agent_level (standard)") && e.contains("SET_PERMS"),
            "{name}: {e}"
        );
    }
    assert!(
        list(&mut c)
            .iter()
            .all(|a| a["name"] != "high" && a["name"] != "spawner"),
        "refused spawns leave nothing behind"
    );
    // Spawn at the default level, then raise it: that needs the manage right, and never goes
    // beyond the raiser's own rights.
    let r = c.ok(
        op::SPAWN,
        json!({"name": "high", "script": script("sleeper.sh"), "python": "/bin/sh"}),
    );
    assert_eq!(r["level"], "standard");
    let high = r["agent_id"].clone();
    let mut lowered = d.client();
    lowered.ok(
        op::SET_PERMS,
        json!({"level": "standard", "permissions": {"can_spawn": true, "can_manage": true}}),
    );
    let e = lowered.err(
        op::SET_PERMS,
        json!({"agent_id": high, "level": "unrestricted"}),
    );
    assert!(e.contains("beyond your own"), "{e}");
    // The lowered manager may still spawn at the default level (within its own rights).
    lowered.ok(
        op::SPAWN,
        json!({"name": "by-lowered", "script": script("sleeper.sh"), "python": "/bin/sh"}),
    );
    c.ok(
        op::SET_PERMS,
        json!({"agent_id": high, "level": "unrestricted"}),
    );
    let p = c.ok(op::GET_PERMS, json!({"agent_id": high}));
    assert_eq!(p["level"], "unrestricted");
    assert_eq!(p["permissions"]["can_spawn"], true);
}

#[test]
fn set_perms_on_an_agent_is_audited_as_permissions_changed() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let me = c.my_id();
    let r = c.ok(op::SPAWN, sh_agent("target", "sleeper.sh", json!([])));
    let id = r["agent_id"].clone();
    assert_eq!(r["level"], "standard");
    let changed = |c: &mut Client| -> Vec<Value> {
        let audit = c.ok(
            op::GET_AUDIT_LOG,
            json!({"category": "SECURITY", "since_id": 0, "limit": 1000}),
        );
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == "PERMISSIONS_CHANGED")
            .cloned()
            .collect()
    };
    assert!(changed(&mut c).is_empty(), "nothing changed yet");
    c.ok(op::SET_PERMS, json!({"agent_id": id, "level": "readonly"}));
    let entries = changed(&mut c);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["category"], "SECURITY");
    assert_eq!(e["agent_id"], id, "the entry is about the target: {e}");
    assert_eq!(e["success"], true);
    assert_eq!(e["details"]["agent_id"], id, "{e}");
    assert_eq!(e["details"]["level"], "readonly", "the new level: {e}");
    assert_eq!(e["details"]["changed_by"], json!(me), "{e}");
    // A refused change is a denial, not a change.
    let mut low = d.client();
    low.ok(op::SET_PERMS, json!({"level": "standard"}));
    let e = low.err(op::SET_PERMS, json!({"agent_id": id, "level": "minimal"}));
    assert!(e.contains("permission denied"), "{e}");
    let entries = changed(&mut c);
    assert_eq!(
        entries.len(),
        2,
        "the client's own lowering only: {entries:?}"
    );
    assert_eq!(entries[1]["agent_id"], json!(low.my_id()));
    assert_eq!(entries[1]["details"]["level"], "standard");
    assert_eq!(
        c.ok(op::GET_PERMS, json!({"agent_id": id}))["level"],
        "readonly"
    );
}

#[test]
fn without_the_manage_right_kill_does_not_tell_which_agents_exist() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let victim = c.ok(op::SPAWN, sh_agent("victim", "sleeper.sh", json!([])));
    let mut low = d.client();
    low.ok(op::SET_PERMS, json!({"level": "standard"}));
    let existing = low.err(op::KILL, json!({"name": "victim"}));
    let missing = low.err(op::KILL, json!({"name": "no-such-agent"}));
    let by_id = low.err(op::KILL, json!({"id": victim["agent_id"]}));
    let missing_id = low.err(op::KILL, json!({"id": 99999}));
    assert!(existing.contains("permission denied"), "{existing}");
    for e in [&missing, &by_id, &missing_id] {
        assert_eq!(
            e, &existing,
            "the same denial whether or not the agent exists"
        );
    }
    for (o, name) in [(op::PAUSE, "PAUSE"), (op::RESUME, "RESUME")] {
        let e = low.err(o, json!({"name": "no-such-agent"}));
        assert!(e.contains("permission denied") && e.contains(name), "{e}");
    }
    // Every attempt is a denial on record.
    let me = low.my_id();
    let audit = c.ok(
        op::GET_AUDIT_LOG,
        json!({"category": "SECURITY", "agent_id": me, "limit": 100}),
    );
    let kills = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "SYSCALL_BLOCKED" && e["details"]["op"] == "KILL")
        .count();
    assert_eq!(kills, 4, "{audit}");
    assert_eq!(agent(&mut c, "victim")["state"], "RUNNING");
    // A manager still gets the precise answer.
    let e = c.err(op::KILL, json!({"name": "no-such-agent"}));
    assert!(e.contains("no agent named"), "{e}");
}

/// The test process's mount table, less mounts under /tmp (other tests mount and unmount
/// small file systems there while this one runs).
fn host_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v: Vec<String> = info
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| !p.starts_with("/tmp/")))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn sandboxed_agent_has_its_own_mounts_pids_and_hostname() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let probe = d.path("ns_probe.py");
    std::fs::write(
        &probe,
        r#"import json, os, socket, sys, time
out = sys.argv[2]
report = {
    "pid": os.getpid(),
    "hostname": socket.gethostname(),
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}
with open(out + ".tmp", "w") as f:
    json.dump(report, f)
os.rename(out + ".tmp", out)
time.sleep(3600)
"#,
    )
    .unwrap();
    let out = d.path("ns_probe.json");
    let before = host_mounts();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "ns-probe", "script": probe, "python": python(),
            "args": [out.display().to_string()]}),
    );
    let iso = &r["isolation"];
    for ns in ["pid", "mount", "uts"] {
        assert!(
            iso["namespaces"].as_array().unwrap().contains(&json!(ns)),
            "{ns} namespace: {iso}"
        );
    }
    assert_eq!(iso["proc_mounted"], true, "{iso}");
    let report: Value = wait_for("the probe's report", T, || {
        serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()
    });
    // The agent mounted a fresh /proc and made its mounts private; with the agent running, the
    // host's mount table is as it was (no /proc over /proc, no propagation flag changed).
    let after = host_mounts();
    let added: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    let removed: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the host's mounts changed: added {added:?}, removed {removed:?}"
    );
    assert!(alive(r["pid"].as_i64().unwrap()), "the agent still runs");
    // Its own pid namespace: it is pid 2 under the namespace's init, and its /proc shows only
    // the processes of the namespace.
    let pid = report["pid"].as_i64().unwrap();
    assert!(pid <= 3, "pid {pid} inside its namespace: {report}");
    let procs = report["procs"].as_array().unwrap();
    assert!(procs.len() < 10, "{report}");
    assert!(
        procs.contains(&json!(1)) && procs.contains(&json!(pid)),
        "{report}"
    );
    assert_ne!(
        json!(pid),
        r["pid"],
        "the host sees another pid than the agent does"
    );
    // Its own hostname (uts namespace), set by the launcher from the agent's name; the host's
    // is untouched.
    assert_eq!(report["hostname"], "clove-ns-probe", "{report}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "clove-ns-probe");
    c.ok(op::KILL, json!({"name": "ns-probe"}));
}

/// Why this machine has no writable cgroup v1 `memory` and `pids` hierarchies (read from
/// /proc/self/mountinfo, not from the daemon), or None when it has both.
fn no_cgroup_v1_here() -> Option<String> {
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !writable_v1(c))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "this machine has no writable cgroup v1 hierarchy for {}",
            missing.join(" and ")
        )
    })
}

/// Skips (returns None, with the reason printed) only when the machine itself has no cgroup
/// v1 memory and pids hierarchies; where it has them, the daemon must have used them.
fn v1_or_skip(r: &Value) -> Option<()> {
    if let Some(why) = no_cgroup_v1_here() {
        eprintln!("skipping: {why}");
        return None;
    }
    assert_eq!(
        r["isolation"]["cgroup"]["version"], "v1",
        "the machine has writable cgroup v1 memory and pids hierarchies, but the daemon did not use them: {}",
        r["isolation"]
    );
    Some(())
}

#[test]
fn memory_limit_oom_kills_on_cgroup_v1() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "hog", "script": script("memory_hog.py"), "python": python(),
            "limits": {"memory": "48M"}, "restart_policy": "on-failure", "max_restarts": 1}),
    );
    if v1_or_skip(&r).is_none() {
        return;
    }
    assert_eq!(r["isolation"]["limits"]["memory"]["via"], "cgroup");
    assert_eq!(r["isolation"]["applied"], true, "{r}");
    let id = r["agent_id"].clone();
    let e = wait_event(&mut ev, &mut seen, "AGENT_EXITED", |d| d["agent_id"] == id);
    assert_eq!(e["data"]["signal"], 9, "{e}");
    assert_eq!(e["data"]["oom_killed"], true, "{e}");
    assert_eq!(e["data"]["reason"], "oom");
    // Handled per policy: restarted once, then escalated.
    wait_event(&mut ev, &mut seen, "AGENT_RESTARTING", |d| {
        d["agent_id"] == id
    });
    wait_event(&mut ev, &mut seen, "AGENT_ESCALATED", |d| {
        d["agent_id"] == id
    });
    let cg_dir = PathBuf::from(r["isolation"]["cgroup"]["paths"][0].as_str().unwrap());
    wait_for("the agent cgroup to be removed", T, || {
        (!cg_dir.exists()).then_some(())
    });
}

#[test]
fn pids_limit_contains_a_fork_bomb_on_cgroup_v1() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let out = d.path("forks.txt");
    let r = c.ok(
        op::SPAWN,
        json!({"name": "bomb", "script": script("fork_bomb.py"), "python": python(),
            "args": [out.display().to_string()], "limits": {"max_pids": 6}}),
    );
    if v1_or_skip(&r).is_none() {
        return;
    }
    assert_eq!(r["isolation"]["limits"]["max_pids"]["via"], "cgroup");
    let n: u64 = wait_for("the fork count", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    assert!(
        n <= 5,
        "at most max_pids - 1 children besides the agent, got {n}"
    );
    let m = c.ok(op::METRICS_AGENT, json!({"agent_id": r["agent_id"]}));
    assert!(
        m["metrics"]["cgroup"]["pids_current"].as_u64().unwrap() <= 6,
        "{m}"
    );
    assert_eq!(m["metrics"]["cgroup"]["pids_max"], 6);
    c.ok(op::KILL, json!({"name": "bomb"}));
}

/// True when this machine has a writable cgroup v1 hierarchy with `controller`.
fn writable_v1(controller: &str) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        l.len() >= 6
            && r.len() >= 3
            && r[0] == "cgroup"
            && l[5].split(',').any(|o| o == "rw")
            && r[2].split(',').any(|o| o == controller)
    })
}

#[test]
fn cpu_quota_and_shares_throttle_a_busy_agent_on_cgroup_v1() {
    if !writable_v1("cpu") {
        eprintln!("skipping: this machine has no writable cgroup v1 cpu hierarchy");
        return;
    }
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let spin = d.path("spin.sh");
    std::fs::write(&spin, "while :; do :; done\n").unwrap();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "spinner", "script": spin, "python": "/bin/sh",
            "limits": {"cpu_quota": 20000, "cpu_period": 100000, "cpu_shares": 256}}),
    );
    let limits = &r["isolation"]["limits"];
    for l in ["cpu_quota", "cpu_shares"] {
        assert_eq!(limits[l]["via"], "cgroup", "{}", r["isolation"]);
    }
    let paths: Vec<PathBuf> = r["isolation"]["cgroup"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    let dir = |controller: &str| -> PathBuf {
        paths
            .iter()
            .find(|p| p.components().any(|c| c.as_os_str() == controller))
            .unwrap_or_else(|| panic!("no {controller} cgroup in {paths:?}"))
            .clone()
    };
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    let cpu = dir("cpu");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(cpu.join("cpu.shares")), "256");
    // The spinner wants a whole CPU; over a second it gets about a fifth of one.
    let usage = |c: &mut Client| -> u64 {
        let m = c.ok(op::METRICS_AGENT, json!({"agent_id": r["agent_id"]}));
        m["metrics"]["cgroup"]["cpu_usage_usec"].as_u64().unwrap()
    };
    wait_for("the spinner to use CPU", T, || {
        (usage(&mut c) > 0).then_some(())
    });
    let (u0, t0) = (usage(&mut c), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let (u1, dt) = (usage(&mut c), t0.elapsed());
    let share = (u1 - u0) as f64 / dt.as_micros() as f64;
    assert!(
        share < 0.35,
        "a 20% quota let it use {:.0}% of a CPU",
        share * 100.0
    );
    let stat = read(cpu.join("cpu.stat"));
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "{stat}");
    c.ok(op::KILL, json!({"name": "spinner"}));
}

#[test]
fn network_false_has_no_access_to_host_loopback() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = |c: &mut Client, name: &str, network: bool| -> (String, Value) {
        let out = d.path(&format!("{name}.txt"));
        let r = c.ok(
            op::SPAWN,
            json!({"name": name, "script": script("net_probe.py"), "python": python(),
                "network": network, "args": [port.to_string(), out.display().to_string()]}),
        );
        let result = wait_for("the probe result", T, || std::fs::read_to_string(&out).ok());
        (result, r)
    };
    let (isolated, r) = probe(&mut c, "isolated", false);
    assert!(
        isolated.starts_with("failed"),
        "network:false reached the host: {isolated}"
    );
    assert_eq!(r["isolation"]["network"], "none", "{r}");
    assert!(
        r["isolation"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!("net"))
    );
    assert!(listener.accept().is_err(), "no connection arrived");
    // The same probe with network allowed does connect: the test can tell the difference.
    let (open, _) = probe(&mut c, "open", true);
    assert_eq!(open, "connected");
    wait_for("the allowed connection", T, || listener.accept().ok());
}

#[test]
fn metrics_fields_are_present_and_numeric() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let r = c.ok(
        op::SPAWN,
        sh_agent(
            "m1",
            "counter.sh",
            json!([d.path("m1.txt").display().to_string()]),
        ),
    );
    let id = r["agent_id"].clone();
    let sys = c.ok(op::METRICS_SYSTEM, json!({}));
    let m = &sys["metrics"];
    for path in [
        "/cpu/percent",
        "/cpu/count",
        "/memory/total",
        "/memory/available",
        "/memory/used",
        "/memory/percent",
        "/disk/read_bytes",
        "/disk/write_bytes",
        "/network/bytes_sent",
        "/network/bytes_recv",
    ] {
        assert!(
            m.pointer(path).is_some_and(Value::is_number),
            "{path} in {m}"
        );
    }
    assert_eq!(m["cpu"]["load_avg"].as_array().unwrap().len(), 3);
    assert!(
        m["cpu"]["per_core"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_number)
    );
    assert!(m["memory"]["total"].as_u64().unwrap() > 0);
    // CPU percentages come from the sampler: after a couple of intervals they are real.
    wait_for("a CPU sample of the busy agent", T, || {
        let a = c.ok(op::METRICS_AGENT, json!({"agent_id": id}));
        let p = a["metrics"]["process"]["cpu"]["percent"].as_f64().unwrap();
        (p > 0.0).then_some(a)
    });
    let a = c.ok(op::METRICS_AGENT, json!({"agent_id": id}));
    let am = &a["metrics"];
    assert_eq!(am["agent_id"], id);
    assert_eq!(am["name"], "m1");
    assert_eq!(am["status"], "running");
    for path in [
        "/uptime_ms",
        "/process/pid",
        "/process/cpu/percent",
        "/process/memory/rss",
        "/process/memory/vms",
        "/process/threads",
        "/process/fds",
        "/cgroup/cpu_usage_usec",
        "/cgroup/mem_current",
    ] {
        assert!(
            am.pointer(path).is_some_and(Value::is_number),
            "{path} in {am}"
        );
    }
    assert!(am["process"]["memory"]["rss"].as_u64().unwrap() > 0);
    assert!(am["cgroup"]["valid"].is_boolean());
    let all = c.ok(op::METRICS_ALL_AGENTS, json!({}));
    assert_eq!(all["count"], 1);
    assert_eq!(all["agents"][0]["agent_id"], id);
    let cg = c.ok(op::METRICS_CGROUP, json!({}));
    for path in ["/cpu/usage_usec", "/memory/current", "/pids/current"] {
        assert!(
            cg["metrics"].pointer(path).is_some_and(Value::is_number),
            "{path} in {cg}"
        );
    }
    let e = c.err(op::METRICS_CGROUP, json!({"cgroup_path": "../../etc"}));
    assert!(e.contains(".."), "{e}");
    let e = c.err(op::METRICS_AGENT, json!({"agent_id": 99999}));
    assert!(e.contains("no agent"), "{e}");
}

#[test]
fn audit_log_pages_in_order_and_is_guarded() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let cfg = c.ok(op::SET_AUDIT_CONFIG, json!({"log_syscalls": true}));
    assert_eq!(cfg["config"]["log_syscalls"], true);
    for i in 0..25 {
        c.call_raw(op::NOOP, format!("n{i}").as_bytes());
    }
    c.ok(op::SPAWN, sh_agent("audited", "crash.sh", json!(["0"])));
    wait_state(&mut c, "audited", "EXITED");
    // Page through everything with since_id: ids strictly increase, nothing repeats or is
    // skipped between pages.
    let mut since = 0u64;
    let mut ids = Vec::new();
    loop {
        let page = c.ok(op::GET_AUDIT_LOG, json!({"since_id": since, "limit": 7}));
        let entries = page["entries"].as_array().unwrap().clone();
        assert_eq!(page["count"], json!(entries.len()));
        if entries.is_empty() {
            break;
        }
        for e in &entries {
            let id = e["id"].as_u64().unwrap();
            assert!(id > since, "{id} after {since}");
            ids.push(id);
            since = id;
            assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
            assert!(e["category"].is_string() && e["event_type"].is_string());
            assert!(e["success"].is_boolean());
        }
    }
    assert!(ids.len() >= 28, "{} entries", ids.len());
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {ids:?}"
    );
    let life = c.ok(
        op::GET_AUDIT_LOG,
        json!({"category": "AGENT_LIFECYCLE", "since_id": 0}),
    );
    let kinds: Vec<&str> = life["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["AGENT_SPAWNED", "AGENT_EXITED"], "{life}");
    assert_eq!(life["entries"][0]["agent_name"], "audited");
    let e = c.err(op::GET_AUDIT_LOG, json!({"category": "nope"}));
    assert!(e.contains("unknown audit category"), "{e}");
    // The log is bounded.
    c.ok(op::SET_AUDIT_CONFIG, json!({"max_entries": 5}));
    let all = c.ok(op::GET_AUDIT_LOG, json!({"limit": 1000}));
    assert!(all["count"].as_u64().unwrap() <= 5, "{all}");
    // Without the manage right: own entries only, and no config changes.
    let mut low = d.client();
    low.ok(op::SET_PERMS, json!({"level": "standard"}));
    let e = low.err(op::SET_AUDIT_CONFIG, json!({"log_syscalls": false}));
    assert!(e.contains("permission denied"), "{e}");
    let mine = low.ok(op::GET_AUDIT_LOG, json!({"limit": 1000}));
    let me = low.my_id();
    assert!(
        mine["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["agent_id"] == json!(me)),
        "{mine}"
    );
    let e = low.err(op::GET_AUDIT_LOG, json!({"agent_id": c.id}));
    assert!(e.contains("permission denied"), "{e}");
}

#[test]
fn shutdown_leaves_no_agent_process_behind() {
    // SIGTERM first, SIGKILL only after the grace: an agent that handles SIGTERM finishes its
    // work, one that ignores it lives on for the grace. (PDEATHSIG alone would SIGKILL
    // everything at once when the daemon exits.)
    const GRACE: Duration = Duration::from_millis(1500);
    let mut d = Daemon::with_config(&format!(
        "[agents]\nkill_grace_ms = {}\n",
        GRACE.as_millis()
    ));
    let mut c = d.client();
    let graceful_sh = d.path("graceful.sh");
    std::fs::write(
        &graceful_sh,
        "trap 'echo \"got SIGTERM\" > \"$2\"; exit 0' TERM\necho \"graceful agent up\"\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    let marker = d.path("graceful.marker");
    let mut procs = Vec::new();
    let mut ids = std::collections::HashMap::new();
    let mut stubborn_pid = 0;
    for (name, file, sandboxed) in [
        ("s1", script("sleeper.sh"), true),
        ("s2", script("stubborn.sh"), true),
        ("s3", script("sleeper.sh"), false),
        ("g1", graceful_sh.display().to_string(), true),
    ] {
        let r = c.ok(
            op::SPAWN,
            json!({"name": name, "script": file, "python": "/bin/sh",
                "args": [marker.display().to_string()], "sandboxed": sandboxed}),
        );
        ids.insert(name, r["agent_id"].clone());
        let log = PathBuf::from(r["log_path"].as_str().unwrap());
        // Up (and its trap installed) before the daemon is stopped.
        wait_for(&format!("{name} to be up"), T, || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|s| s.contains(" up"))
        });
        if name == "s2" {
            stubborn_pid = r["pid"].as_i64().unwrap();
        }
        let top = r["supervisor_pid"].as_i64().unwrap();
        wait_for("the agent's process tree", T, || {
            let t = tree(top);
            (t.len() >= if sandboxed { 3 } else { 1 }).then_some(())
        });
        procs.extend(tree(top));
    }
    c.ok(op::SPAWN, {
        let mut r = sh_agent("later", "crash.sh", json!(["1"]));
        r["restart_policy"] = json!("always");
        r
    });
    drop(c);
    let stopped_at = Instant::now();
    d.signal(libc::SIGTERM);
    // The SIGTERM-handling agent writes its marker and exits long before the grace is over.
    wait_for("the graceful agent's marker", GRACE, || {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|s| s.contains("got SIGTERM"))
    });
    // The SIGTERM-ignoring one is still there most of the grace later.
    std::thread::sleep(GRACE.saturating_sub(Duration::from_millis(500)));
    let early = stopped_at.elapsed();
    assert!(
        alive(stubborn_pid),
        "the SIGTERM-ignoring agent was killed after {early:?}, before the {GRACE:?} grace"
    );
    let status = wait_for("the daemon to exit", T, || {
        d.child.as_mut().unwrap().try_wait().unwrap()
    });
    let took = stopped_at.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= GRACE - Duration::from_millis(100),
        "the daemon exited after {took:?}, without waiting out the {GRACE:?} grace"
    );
    assert!(took < GRACE + Duration::from_secs(5), "{took:?}");
    for p in &procs {
        wait_for(&format!("agent process {p} to be gone"), T, || {
            (!alive(*p)).then_some(())
        });
    }
    let logs = d.logs();
    assert!(logs.contains("supervisor stopped"), "{logs}");
    // The exits are on record, as stopped by the shutdown: the graceful agent with its own
    // exit code 0, the stubborn one by SIGKILL.
    d.spawn().unwrap();
    let mut c = d.client();
    let life = c.ok(
        op::GET_AUDIT_LOG,
        json!({"category": "AGENT_LIFECYCLE", "since_id": 0, "limit": 1000}),
    );
    let exited = |name: &str| -> Value {
        let hits: Vec<&Value> = life["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == "AGENT_EXITED" && e["agent_id"] == ids[name])
            .collect();
        assert_eq!(hits.len(), 1, "one exit of {name}: {life}");
        hits[0]["details"].clone()
    };
    for name in ["s1", "s2", "s3", "g1"] {
        assert_eq!(exited(name)["reason"], "shutdown", "{name}: {life}");
    }
    let g = exited("g1");
    assert_eq!(g["exit_code"], 0, "{g}");
    assert!(g.get("signal").is_none_or(Value::is_null), "{g}");
    let s = exited("s2");
    assert_eq!(s["signal"], 9, "{s}");
    assert_eq!(exited("s1")["signal"], 15);
}

#[test]
fn limits_fall_back_to_rlimits_and_require_refuses() {
    let d = Daemon::with_config("[sandbox]\ncgroups = \"off\"\n");
    let mut c = d.client();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "capped", "script": script("memory_hog.py"), "python": python(),
            "limits": {"memory": "64M"}}),
    );
    assert_eq!(r["isolation"]["limits"]["memory"]["via"], "rlimit", "{r}");
    assert_eq!(r["isolation"]["applied"], false);
    assert!(
        r["isolation"]["degraded_reason"]
            .as_str()
            .unwrap()
            .contains("RLIMIT_AS")
    );
    let a = wait_state(&mut c, "capped", "EXITED");
    assert_eq!(a["exit_code"], 1, "MemoryError under RLIMIT_AS: {a}");
    let strict = Daemon::with_config("[sandbox]\ncgroups = \"off\"\nrequire = true\n");
    let mut c = strict.client();
    let e = c.err(
        op::SPAWN,
        json!({"name": "capped", "script": script("sleeper.sh"), "python": "/bin/sh",
            "limits": {"memory": "64M"}}),
    );
    assert!(e.contains("sandbox requirement not met"), "{e}");
    assert!(list(&mut c).is_empty());
}

#[test]
fn cli_spawn_agents_logs_kill() {
    let d = Daemon::with_config(FAST);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::BIN)
            .args(args)
            .arg("--socket")
            .arg(&d.socket)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "spawn",
        "cli1",
        &script("sleeper.sh"),
        "--interpreter",
        "/bin/sh",
        "--restart",
        "on-failure",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("spawned cli1"), "{out}");
    let (code, out, _) = run(&["agents"]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{out}"
    );
    assert!(
        lines[1].contains("cli1")
            && lines[1].contains("RUNNING")
            && lines[1].contains("on-failure"),
        "{out}"
    );
    let (code, out, _) = wait_for("the log line", T, || {
        let r = run(&["logs", "cli1"]);
        r.1.contains("sleeper cli1 up").then_some(r)
    });
    assert_eq!(code, Some(0), "{out}");
    // `logs -f` keeps printing what the agent writes.
    run(&[
        "spawn",
        "tick",
        &script("ticker.sh"),
        "--interpreter",
        "/bin/sh",
    ]);
    let mut follow = std::process::Command::new(crate::harness::BIN)
        .args(["logs", "tick", "-f", "--socket"])
        .arg(&d.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A watchdog, so a broken follower fails the test instead of hanging it.
    let follower = follow.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(T);
        // SAFETY: kill(2) on the CLI process this test started (harmless if already gone).
        unsafe { libc::kill(follower, libc::SIGKILL) };
    });
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut seen = 0;
    for line in lines.by_ref() {
        if line.unwrap().starts_with("tick ") {
            seen += 1;
            if seen == 10 {
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen, 10, "ticks followed live");
    let (code, out, err) = run(&["kill", "cli1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = run(&["kill", "cli1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not running"), "{err}");
    let (_, out, _) = run(&["agents"]);
    assert!(out.contains("EXITED"), "{out}");
}

/// The parent pid of `pid` from /proc (None once it is gone).
fn parent_pid(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn orphaned_descendants_are_reaped_by_the_daemon() {
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    let daemon = d.pid() as i64;
    // A subshell starts a long sleeper, records its pid and exits: the sleeper is orphaned
    // while it still has 30 s to live, so its new parent can be read while it runs.
    let orphan_sh = d.path("orphan.sh");
    std::fs::write(
        &orphan_sh,
        "( sleep 30 & echo $! > \"$2.tmp\" && mv \"$2.tmp\" \"$2\" )\nexec sleep 3600\n",
    )
    .unwrap();
    let file = d.path("orphan.pid");
    c.ok(
        op::SPAWN,
        json!({"name": "parent", "script": orphan_sh, "python": "/bin/sh",
            "args": [file.display().to_string()], "sandboxed": false}),
    );
    let pid: i64 = wait_for("the orphan's pid", T, || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    // Until the subshell has exited the parent is the subshell; then it must be the daemon (a
    // child subreaper). Without the subreaper it would be init (pid 1), or whatever subreaper
    // is above the daemon: anything but the subshell and the daemon fails at once.
    let deadline = Instant::now() + T;
    let mut subshell = None;
    loop {
        let Some(p) = parent_pid(pid) else {
            panic!("the orphan {pid} vanished before it was killed (it sleeps 30 s)");
        };
        if p == daemon {
            break;
        }
        assert!(
            p != 1 && subshell.is_none_or(|s| s == p),
            "the orphan {pid} was re-parented to {p}, not to the daemon {daemon}"
        );
        subshell = Some(p);
        assert!(
            Instant::now() < deadline,
            "the orphan {pid} is still a child of {p}, not of the daemon {daemon}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(alive(pid), "the orphan runs while re-parented");
    // It dies: the daemon, its parent now, must reap it (no zombie left with the daemon as
    // parent).
    // SAFETY: kill(2) on the orphan this test's agent started (its pid was just checked).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + T;
    while let Some(p) = parent_pid(pid) {
        assert!(
            Instant::now() < deadline,
            "the orphan {pid} was not reaped: state {:?}, parent {p} (daemon {daemon})",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(agent(&mut c, "parent")["state"], "RUNNING");
}

/// The launcher's unprivileged path: run as `nobody`, it builds the sandbox inside a new user
/// namespace (skipped where the test cannot switch users).
#[test]
fn launcher_sandboxes_an_unprivileged_agent_in_a_user_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to run the launcher as another user");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = tempfile::Builder::new()
        .prefix("clove-userns")
        .tempdir_in("/tmp")
        .unwrap();
    let bin = dir.path().join("clove");
    std::fs::copy(crate::harness::BIN, &bin).unwrap();
    let probe = dir.path().join("probe.sh");
    std::fs::write(
        &probe,
        "echo \"uid=$(id -u) host=$(hostname) procs=$(ls /proc | grep -c '^[0-9]')\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), &bin, &probe] {
        let mode = if p == dir.path() || p == bin {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let spec = json!({"program": "/bin/sh", "argv": ["sh", probe, "/nonexistent.sock"],
        "sandboxed": true, "network": false, "hostname": "clove-probe", "require": true,
        "cgroup_procs": [], "rlimit_as": null, "rlimit_nproc": null});
    // The spec comes in a file (the launcher reads and removes it), as the supervisor passes it.
    let spec_file = dir.path().join("launch.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    std::fs::set_permissions(&spec_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut launch = std::process::Command::new(&bin);
    launch.arg("__launch").arg(&spec_file).uid(65534).gid(65534);
    let out = crate::agent_support::retry_text_busy("clove __launch", || launch.output());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("namespaces") && !out.status.success() {
        eprintln!("skipping: unprivileged user namespaces are not allowed here: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("uid=65534"), "{stdout}");
    assert!(
        stdout.contains("host=clove-probe"),
        "own uts namespace: {stdout}"
    );
    // A fresh /proc in a new pid namespace shows only init and the probe's own processes.
    let procs: usize = stdout
        .split("procs=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(999);
    assert!(procs < 10, "{stdout}");
}

#[test]
fn memory_warning_near_the_limit() {
    let d = Daemon::with_config(&format!("{FAST}memory_warning_percent = 50\n"));
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "holder", "script": script("memory_hold.py"), "python": python(),
            "args": ["48"], "limits": {"memory": "80M"}}),
    );
    // With cgroup v1 on the machine the limit must be a cgroup one; elsewhere (a v2 machine)
    // it is tested when the daemon found a usable cgroup, else skipped with the reason.
    let via_cgroup = r["isolation"]["limits"]["memory"]["via"] == "cgroup";
    match no_cgroup_v1_here() {
        None => {
            v1_or_skip(&r);
            assert!(via_cgroup, "{}", r["isolation"]);
        }
        Some(why) if !via_cgroup => {
            eprintln!("skipping: {why}, and the daemon found no other memory cgroup");
            return;
        }
        Some(_) => {}
    }
    let w = wait_event(&mut ev, &mut seen, "RESOURCE_WARNING", |d| {
        d["agent_id"] == r["agent_id"]
    });
    assert_eq!(w["data"]["kind"], "memory");
    assert_eq!(w["data"]["memory_limit"], json!(80u64 << 20));
    assert!(w["data"]["percent"].as_f64().unwrap() >= 50.0, "{w}");
    let audit = c.ok(op::GET_AUDIT_LOG, json!({"category": "RESOURCE"}));
    assert_eq!(audit["count"], 1, "{audit}");
}

#[test]
fn memory_warning_near_an_rlimit_without_cgroups() {
    let d = Daemon::with_config(&format!(
        "{FAST}memory_warning_percent = 50\n[sandbox]\ncgroups = \"off\"\n"
    ));
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    // Holds 48 MiB under an 80 MiB RLIMIT_AS: past half of its address-space limit. Another
    // agent holds 1 MiB under 1 GiB: far below, never warned about.
    let small = c.ok(
        op::SPAWN,
        json!({"name": "small", "script": script("memory_hold.py"), "python": python(),
            "args": ["1"], "limits": {"memory": "1G"}}),
    );
    let r = c.ok(
        op::SPAWN,
        json!({"name": "holder", "script": script("memory_hold.py"), "python": python(),
            "args": ["48"], "limits": {"memory": "80M"}}),
    );
    assert_eq!(r["isolation"]["limits"]["memory"]["via"], "rlimit", "{r}");
    let w = wait_event(&mut ev, &mut seen, "RESOURCE_WARNING", |d| {
        d["agent_id"] == r["agent_id"]
    });
    assert_eq!(w["data"]["kind"], "memory", "{w}");
    assert_eq!(w["data"]["via"], "rlimit", "{w}");
    assert_eq!(w["data"]["memory_limit"], json!(80u64 << 20));
    let cur = w["data"]["memory_current"].as_u64().unwrap();
    assert!((40 << 20..80 << 20).contains(&cur), "{w}");
    // RLIMIT_AS bounds the address space, which grows at the allocation; the resident set
    // follows as pages are touched, and is reported alongside.
    assert!(w["data"]["rss"].as_u64().is_some_and(|r| r > 0), "{w}");
    assert!(w["data"]["percent"].as_f64().unwrap() >= 50.0, "{w}");
    // Once per crossing, and not for the small agent (several samples later).
    std::thread::sleep(Duration::from_millis(500));
    let more = c.ok(op::POLL_EVENTS, json!({"max": 1000}));
    seen.extend(more["events"].as_array().unwrap().iter().cloned());
    let warnings: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "RESOURCE_WARNING")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_ne!(warnings[0]["data"]["agent_id"], small["agent_id"]);
    let audit = c.ok(op::GET_AUDIT_LOG, json!({"category": "RESOURCE"}));
    assert_eq!(audit["count"], 1, "{audit}");
    assert_eq!(agent(&mut c, "holder")["state"], "RUNNING");
}

#[test]
fn agent_limits_max_agents_keep_exited_and_log_rotation() {
    let d = Daemon::with_config(&format!(
        "{FAST}max_agents = 2\nkeep_exited = 1\nlog_max_bytes = 4096\nlog_files = 1\n"
    ));
    let mut c = d.client();
    c.ok(op::SPAWN, sh_agent("a1", "chatty.sh", json!(["200"])));
    c.ok(op::SPAWN, sh_agent("a2", "sleeper.sh", json!([])));
    let e = c.err(op::SPAWN, sh_agent("a3", "sleeper.sh", json!([])));
    assert!(e.contains("agents.max_agents"), "{e}");
    // 20 KB of output through a 4 KB log: rotated, one old file kept, nothing more.
    let log = PathBuf::from(agent(&mut c, "a1")["log_path"].as_str().unwrap());
    wait_for("the chatty agent to finish", T, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("chatty done"))
    });
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 4096 + 64 * 1024, "{size}");
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    assert!(rotated.exists(), "rotated file");
    assert!(!PathBuf::from(format!("{}.2", log.display())).exists());
    let total = size + std::fs::metadata(&rotated).unwrap().len();
    assert!(total < 20_000, "old output was dropped, {total} bytes kept");
    // Stopped agents: only the newest one stays in LIST.
    c.ok(op::KILL, json!({"name": "a1"}));
    c.ok(op::KILL, json!({"name": "a2"}));
    let names: Vec<Value> = list(&mut c).iter().map(|a| a["name"].clone()).collect();
    assert_eq!(names, vec![json!("a2")]);
    c.ok(op::SPAWN, sh_agent("a3", "sleeper.sh", json!([])));
}

#[test]
fn on_shutdown_leave_keeps_agents_and_their_logs() {
    let mut d = Daemon::with_config(&format!("{FAST}on_shutdown = \"leave\"\n"));
    let mut c = d.client();
    let r = c.ok(op::SPAWN, sh_agent("ticker", "ticker.sh", json!([])));
    let top = r["supervisor_pid"].as_i64().unwrap();
    let log = PathBuf::from(r["log_path"].as_str().unwrap());
    wait_for("ticks", T, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("tick 3"))
    });
    drop(c);
    assert!(d.stop().success());
    let procs = tree(top);
    assert!(procs.iter().all(|p| alive(*p)), "left running: {procs:?}");
    wait_for(
        "output to keep reaching the log after the daemon exited",
        T,
        || {
            let s = std::fs::read_to_string(&log).ok()?;
            let after = s.split("left this agent running").nth(1)?;
            after.contains("tick").then_some(())
        },
    );
    // Clean up what the test left running: the agent's whole process group.
    // SAFETY: kill(2) on the process group of the agent this test started.
    unsafe { libc::kill(-(top as i32), libc::SIGKILL) };
    for p in procs {
        wait_for("the left agent to be killed", T, || {
            (!alive(p)).then_some(())
        });
    }
}

#[test]
fn an_agent_that_exits_at_once_has_still_started() {
    // The interpreter runs and exits before the supervisor has read the launcher's report:
    // SPAWN still answers "started", and the exit is handled by the restart policy.
    let d = Daemon::with_config(FAST);
    let mut c = d.client();
    for i in 0..40 {
        let policy = if i % 2 == 0 { "never" } else { "always" };
        let r = c.call(
            op::SPAWN,
            json!({"name": format!("brief{i}"), "script": script("crash.sh"), "python": "/bin/sh",
                "args": ["0"], "sandboxed": i % 4 < 2, "restart_policy": policy}),
        );
        assert_eq!(r["success"], true, "spawn {i}: {r}");
        assert_eq!(r["name"], format!("brief{i}"));
    }
    // The "never" ones end EXITED with code 0; the "always" ones were restarted.
    wait_for("every brief agent to have run", T, || {
        let agents = list(&mut c);
        agents
            .iter()
            .all(|a| {
                let i: usize = a["name"].as_str().unwrap()[5..].parse().unwrap();
                if i.is_multiple_of(2) {
                    a["state"] == "EXITED" && a["exit_code"] == 0
                } else {
                    a["restarts"].as_u64().unwrap() >= 1
                }
            })
            .then_some(())
    });
}

/// The state letter of a process in /proc (R, S, T, Z, ...).
fn proc_state(pid: i64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

#[test]
fn pause_falls_back_to_sigstop_without_a_freezer() {
    let d = Daemon::with_config(&format!("{FAST}[sandbox]\ncgroups = \"off\"\n"));
    let mut c = d.client();
    let mut ev = subscribed(&d);
    let mut seen = Vec::new();
    let file = d.path("counter.txt");
    let r = c.ok(
        op::SPAWN,
        sh_agent("counter", "counter.sh", json!([file.display().to_string()])),
    );
    assert!(r["isolation"]["cgroup"].is_null(), "{r}");
    let (id, pid) = (r["agent_id"].clone(), r["pid"].as_i64().unwrap());
    let read = || -> u64 {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_for("the counter to run", T, || (read() > 3).then_some(()));
    c.ok(op::PAUSE, json!({"id": id}));
    let e = wait_event(&mut ev, &mut seen, "AGENT_PAUSED", |d| d["agent_id"] == id);
    assert_eq!(e["data"]["method"], "signal", "{e}");
    let top = r["supervisor_pid"].as_i64().unwrap();
    let states = || -> Vec<Option<char>> { tree(top).iter().map(|p| proc_state(*p)).collect() };
    // Stopped: T. Also allowed: a shell parked in vfork until its (stopped) child execs shows
    // D, and a child that exited just before its shell was stopped stays a zombie (Z).
    let stopped = |s: &[Option<char>]| {
        s.contains(&Some('T')) && s.iter().all(|s| matches!(s, Some('T' | 'D' | 'Z') | None))
    };
    let t0 = Instant::now();
    while !stopped(&states()) {
        assert!(t0.elapsed() < T, "not stopped: {:?}", states());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let v1 = read();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(), v1, "a stopped agent makes no progress");
    c.ok(op::RESUME, json!({"id": id}));
    wait_for("the counter to move again", T, || {
        (read() > v1 + 3).then_some(())
    });
    assert!(!states().contains(&Some('T')), "{:?}", states());
    assert_eq!(agent(&mut c, "counter")["state"], "RUNNING");
    // A stopped agent can still be killed.
    c.ok(op::PAUSE, json!({"id": id}));
    let k = c.ok(op::KILL, json!({"id": id}));
    assert_eq!(k["killed"], true);
    assert!(!crate::agent_support::alive(pid));
}
