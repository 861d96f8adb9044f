//! Supervised agents across daemon restarts (issue 4): `persist: true` agents start again
//! under their ids with their private keys, names and permissions, after a clean stop and
//! after a `kill -9` (without a second copy); other agents do not, and their names are free;
//! KILL forgets a persistent agent; the audit log survives with ids that continue.

use crate::agent_support::{alive, list, python, script, tree};
use crate::harness::{BIN, Client, Daemon, op, wait_for};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const FAST: &str = "[agents]\nkill_grace_ms = 400\nbackoff_initial_ms = 20\nbackoff_cap_ms = 80\n";
const T: Duration = Duration::from_secs(20);

fn find(c: &mut Client, name: &str) -> Option<Value> {
    list(c).into_iter().find(|a| a["name"] == json!(name))
}

/// Waits until the agent `name` reports boot number `boots`; returns its report.
fn report(c: &mut Client, name: &str, boots: u64) -> Value {
    wait_for(&format!("{name} to report boot {boots}"), T, || {
        let v = c.ok(op::FETCH, json!({"key": format!("report:{name}")}));
        (v["value"]["boots"] == json!(boots)).then(|| v["value"].clone())
    })
}

fn running(c: &mut Client, name: &str) -> Value {
    wait_for(&format!("{name} to be RUNNING"), T, || {
        find(c, name).filter(|a| a["state"] == "RUNNING")
    })
}

/// Sends a message to `name` and waits for the echo; returns the sender id of the echo.
fn echo_from(c: &mut Client, name: &str, tag: &str) -> Value {
    c.ok(op::SEND, json!({"to_name": name, "message": tag}));
    wait_for(&format!("the echo of {tag}"), T, || {
        let r = c.ok(op::RECV, json!({"max": 10}));
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["message"]["echo"] == json!(tag))
            .map(|m| m["from"].clone())
    })
}

#[test]
fn persistent_agents_come_back_after_a_restart_and_a_crash_and_kill_forgets_them() {
    let mut d = Daemon::with_config(FAST);
    let mut c = d.client();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "keeper", "script": script("persistent_agent.py"), "python": python(),
            "args": ["keeper-alias"], "persist": true, "restart_policy": "on-failure"}),
    );
    assert_eq!(r["persist"], true, "{r}");
    let id = r["agent_id"].clone();
    let first = report(&mut c, "keeper", 1);
    assert_eq!(first["id"], id);
    // Lowered after the spawn: a persistent agent keeps its lowered permissions.
    c.ok(op::SET_PERMS, json!({"agent_id": id, "level": "readonly"}));
    let temp = c.ok(
        op::SPAWN,
        json!({"name": "temp", "script": script("sleeper.sh"), "python": "/bin/sh"}),
    );
    assert_eq!(temp["persist"], false);
    let doomed = c.ok(
        op::SPAWN,
        json!({"name": "doomed", "script": script("sleeper.sh"), "python": "/bin/sh",
            "persist": true}),
    );
    let k = c.ok(op::KILL, json!({"name": "doomed"}));
    assert_eq!(k["killed"], true);
    assert_eq!(find(&mut c, "keeper").unwrap()["persist"], true);
    // The agent's private key is its own.
    assert_eq!(c.ok(op::FETCH, json!({"key": "boots"}))["exists"], false);
    drop(c);

    // A clean stop (agents are stopped with the daemon) and a start. From here on agents are
    // told to outlive the daemon (on_shutdown = "leave"), so that after the crash below the
    // old copy is still running and the new daemon must stop it before starting the agent
    // again. (With the default "stop", agents die with a crashed daemon: see
    // agents_die_with_a_crashed_daemon_unless_told_to_stay.)
    assert!(d.stop().success());
    std::fs::write(&d.config_path, format!("{FAST}on_shutdown = \"leave\"\n")).unwrap();
    d.spawn().unwrap();
    let mut c = d.client();
    let second = report(&mut c, "keeper", 2);
    assert_eq!(second["id"], id, "same id: {second}");
    assert_eq!(second["env_id"], id);
    let a = running(&mut c, "keeper");
    assert_eq!(a["id"], id);
    assert_eq!(a["restarts"], 0, "restart counters start again");
    assert_eq!(a["persist"], true);
    assert!(
        find(&mut c, "temp").is_none(),
        "a non-persistent agent does not come back"
    );
    assert!(find(&mut c, "doomed").is_none(), "a KILLed one neither");
    let p = c.ok(op::GET_PERMS, json!({"agent_id": id}));
    assert_eq!(p["level"], "readonly", "{p}");
    let life = c.ok(
        op::GET_AUDIT_LOG,
        json!({"category": "AGENT_LIFECYCLE", "agent_id": id, "limit": 1000}),
    );
    let spawned: Vec<&Value> = life["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "AGENT_SPAWNED")
        .collect();
    assert_eq!(
        spawned.len(),
        2,
        "one before, one after the restart: {life}"
    );
    assert_eq!(spawned[1]["details"]["restored"], true);
    assert!(spawned[0]["details"].get("restored").is_none());
    // Its name (registered by the agent itself, before the restart) is still its own.
    let e = c.err(op::REGISTER, json!({"name": "keeper-alias"}));
    assert!(e.contains(&format!("agent {id}")), "{e}");
    assert_eq!(echo_from(&mut c, "keeper-alias", "hello"), id);
    // Names of agents that did not come back are free.
    c.ok(op::REGISTER, json!({"name": "temp"}));
    let mut other = d.client();
    other.ok(op::REGISTER, json!({"name": "doomed"}));
    drop(other);

    // A crash: the old agent processes outlive the daemon; the new daemon stops them before
    // starting the agent again, so exactly one copy runs.
    let before = running(&mut c, "keeper");
    let old = tree(before["supervisor_pid"].as_i64().unwrap());
    let temp2 = c.ok(
        op::SPAWN,
        json!({"name": "temp2", "script": script("sleeper.sh"), "python": "/bin/sh"}),
    );
    let temp2_group = temp2["supervisor_pid"].as_i64().unwrap();
    drop(c);
    d.kill9();
    assert!(
        old.iter().all(|p| alive(*p)),
        "the agent survived the crash: {old:?}"
    );
    d.spawn().unwrap();
    for p in &old {
        wait_for(&format!("old agent process {p} to be gone"), T, || {
            (!alive(*p)).then_some(())
        });
    }
    let mut c = d.client();
    let third = report(&mut c, "keeper", 3);
    assert_eq!(third["id"], id);
    let a = running(&mut c, "keeper");
    assert!(
        !old.contains(&a["supervisor_pid"].as_i64().unwrap()),
        "a new process: {a}"
    );
    assert_eq!(echo_from(&mut c, "keeper-alias", "again"), id);
    assert!(find(&mut c, "temp2").is_none());
    c.ok(op::REGISTER, json!({"name": "temp2"}));
    // The crashed daemon's non-persistent agent was left running, unsupervised: clean up.
    // SAFETY: kill(2) on the process group of the agent this test started.
    unsafe { libc::kill(-(temp2_group as i32), libc::SIGKILL) };

    // KILL forgets a persistent agent, also across a crash right after the reply.
    let k = c.ok(op::KILL, json!({"name": "keeper"}));
    assert_eq!(k["killed"], true);
    drop(c);
    d.kill9();
    d.spawn().unwrap();
    let mut c = d.client();
    assert!(list(&mut c).is_empty(), "{:?}", list(&mut c));
    c.ok(op::REGISTER, json!({"name": "keeper-alias"}));
    assert_eq!(
        c.ok(op::FETCH, json!({"key": "report:keeper"}))["value"]["boots"],
        3
    );
    let _ = doomed;
}

#[test]
fn a_stopped_persistent_agent_stays_listed_starts_again_and_kill_forgets_it() {
    let mut d = Daemon::with_config(FAST);
    let mut c = d.client();
    // Exits at once with an error: escalates (max_restarts 0) and stays FAILED.
    let r = c.ok(
        op::SPAWN,
        json!({"name": "flaky", "script": script("crash.sh"), "python": "/bin/sh",
            "args": ["3"], "persist": true, "restart_policy": "on-failure", "max_restarts": 0}),
    );
    let id = r["agent_id"].clone();
    let a = wait_for("flaky to fail", T, || {
        find(&mut c, "flaky").filter(|a| a["state"] == "FAILED")
    });
    assert_eq!(a["persist"], true);
    // Kept in LIST while other stopped agents come and go.
    drop(c);
    assert!(d.stop().success());
    d.spawn().unwrap();
    let mut c = d.client();
    // Like an enabled service, it is started again (and fails again).
    let a = wait_for("flaky to be started again and fail", T, || {
        find(&mut c, "flaky").filter(|a| a["state"] == "FAILED" && a["id"] == id)
    });
    assert_eq!(a["exit_code"], 3, "{a}");
    let k = c.ok(op::KILL, json!({"id": id}));
    assert_eq!(k["forgotten"], true, "{k}");
    assert_eq!(k["killed"], false);
    let e = c.err(op::KILL, json!({"id": id}));
    assert!(e.contains("not running"), "{e}");
    drop(c);
    assert!(d.stop().success());
    d.spawn().unwrap();
    let mut c = d.client();
    assert!(list(&mut c).is_empty());
}

/// Two SECURITY entries (a client lowers itself, then is denied raising itself again), and a
/// STORE after them: the store's one writer commits in order, so once the STORE is answered
/// the entries are on disk.
fn denial(d: &Daemon) {
    let mut low = d.client();
    low.ok(op::SET_PERMS, json!({"level": "standard"}));
    let e = low.err(op::SET_PERMS, json!({"level": "unrestricted"}));
    assert!(e.contains("permission denied"), "{e}");
    low.ok(op::STORE, json!({"key": "sync", "value": 1}));
}

fn entries(c: &mut Client, since: u64) -> Vec<Value> {
    let r = c.ok(op::GET_AUDIT_LOG, json!({"since_id": since, "limit": 1000}));
    r["entries"].as_array().unwrap().clone()
}

fn ids(v: &[Value]) -> Vec<u64> {
    v.iter().map(|e| e["id"].as_u64().unwrap()).collect()
}

#[test]
fn audit_log_survives_restarts_and_crashes_with_ids_that_continue() {
    let mut d = Daemon::with_config("[audit]\nmax_entries = 12\n");
    denial(&d);
    denial(&d);
    let mut c = d.client();
    let before = entries(&mut c, 0);
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(before.iter().all(|e| e["category"] == "SECURITY"));
    assert_eq!(before[1]["event_type"], "SYSCALL_BLOCKED");
    assert_eq!(before[1]["success"], false);
    drop(c);

    assert!(d.stop().success());
    d.spawn().unwrap();
    let mut c = d.client();
    let after = entries(&mut c, 0);
    assert_eq!(after, before, "the same entries, ids and timestamps");
    let last = *ids(&before).last().unwrap();
    denial(&d);
    let new = entries(&mut c, last);
    assert_eq!(
        ids(&new),
        [last + 1, last + 2],
        "a clean stop continues the ids: {new:?}"
    );
    let last = last + 2;
    drop(c);

    // A crash: what was committed is there; new ids are above every id shown before.
    d.kill9();
    d.spawn().unwrap();
    let mut c = d.client();
    let all = entries(&mut c, 0);
    assert_eq!(all.len(), 6);
    assert_eq!(*ids(&all).last().unwrap(), last);
    denial(&d);
    let new = entries(&mut c, last);
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(ids(&new)[0] > last);
    let r = c.ok(op::GET_AUDIT_LOG, json!({"limit": 1}));
    assert_eq!(r["last_id"], new[1]["id"]);
    // Paging across the runs: in order, nothing twice.
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let r = c.ok(op::GET_AUDIT_LOG, json!({"since_id": since, "limit": 2}));
        let page = ids(r["entries"].as_array().unwrap());
        if page.is_empty() {
            break;
        }
        since = *page.last().unwrap();
        seen.extend(page);
    }
    assert_eq!(seen, ids(&entries(&mut c, 0)));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    // Bounded by audit.max_entries, also on disk: the newest are kept.
    for _ in 0..5 {
        denial(&d);
    }
    let newest = ids(&entries(&mut c, 0));
    assert_eq!(newest.len(), 12);
    drop(c);
    assert!(d.stop().success());
    d.spawn().unwrap();
    let mut c = d.client();
    assert_eq!(ids(&entries(&mut c, 0)), newest);
}

#[test]
fn state_export_holds_agent_names_specs_and_the_audit_log() {
    let mut d = Daemon::with_config(FAST);
    let mut c = d.client();
    let r = c.ok(
        op::SPAWN,
        json!({"name": "kept", "script": script("sleeper.sh"), "python": "/bin/sh",
            "persist": true}),
    );
    let id = r["agent_id"].as_u64().unwrap();
    c.ok(
        op::SPAWN,
        json!({"name": "passing", "script": script("sleeper.sh"), "python": "/bin/sh"}),
    );
    drop(c);
    denial(&d);
    // The next start releases the name of the agent that does not come back.
    assert!(d.stop().success());
    d.spawn().unwrap();
    let mut c = d.client();
    running(&mut c, "kept");
    drop(c);
    assert!(d.stop().success());
    let out = Command::new(BIN)
        .args(["state", "export", "--config"])
        .arg(&d.config_path)
        .arg("--state-dir")
        .arg(&d.state_dir)
        .env_remove("CLOVE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dump["agent_names"],
        json!([{"name": "kept", "agent_id": id}])
    );
    let spec = &dump["agent_specs"][0];
    assert_eq!(spec["agent_id"], id);
    assert_eq!(spec["spec"]["name"], "kept");
    assert_eq!(spec["spec"]["persist"], true);
    assert!(spec["spec"]["process"]["pgid"].is_i64(), "{spec}");
    let audit = dump["audit"].as_array().unwrap();
    assert!(
        audit.iter().any(|e| e["event_type"] == "SYSCALL_BLOCKED"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e["event_type"] == "AGENT_SPAWNED" && e["agent_id"] == id)
    );
}

#[test]
fn agents_die_with_a_crashed_daemon_unless_told_to_stay() {
    // A daemon killed with SIGKILL cannot stop its agents; they must not live on unsupervised
    // (they could reconnect to a new daemon as plain clients). With on_shutdown = "leave" they
    // are meant to outlive it.
    for (config, should_survive) in [
        (FAST.to_string(), false),
        (format!("{FAST}on_shutdown = \"leave\"\n"), true),
    ] {
        let mut d = Daemon::with_config(&config);
        let mut c = d.client();
        for (name, sandboxed) in [("boxed", true), ("plain", false)] {
            c.ok(
                op::SPAWN,
                json!({"name": name, "script": script("sleeper.sh"), "python": "/bin/sh",
                    "sandboxed": sandboxed}),
            );
        }
        // launcher + init + sleep for the sandboxed one, the sleep itself for the other. Wait
        // until both scripts have printed their line and exec'd `sleep`: a crashed daemon
        // takes its log pipes with it, so a write after the crash would end in SIGPIPE.
        let daemon = d.pid() as i64;
        let cmdline =
            |p: &i64| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let pids: Vec<i64> = wait_for("the agents' processes", T, || {
            let t: Vec<i64> = tree(daemon).into_iter().filter(|p| *p != daemon).collect();
            let sleeping = t.iter().filter(|p| cmdline(p).starts_with("sleep")).count();
            (t.len() >= 4 && sleeping == 2).then_some(t)
        });
        let names: std::collections::HashMap<i64, String> = pids
            .iter()
            .map(|p| {
                let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
                (*p, cmd.replace('\0', " ").chars().take(60).collect())
            })
            .collect();
        drop(c);
        d.kill9();
        if should_survive {
            std::thread::sleep(Duration::from_millis(300));
            let dead: Vec<(i64, String)> = pids
                .iter()
                .filter(|p| !alive(**p))
                .map(|p| (*p, names.get(p).cloned().unwrap_or_default()))
                .collect();
            // Clean up before asserting, so a failure leaves nothing running.
            for p in &pids {
                // SAFETY: kill(2) on processes this test started through the daemon.
                unsafe { libc::kill(*p as i32, libc::SIGKILL) };
            }
            wait_for("the left agents to be killed", T, || {
                pids.iter().all(|p| !alive(*p)).then_some(())
            });
            crate::agent_support::remove_cgroups_of(daemon);
            assert!(
                dead.is_empty(),
                "leave: agents must survive, gone: {dead:?}"
            );
        } else {
            wait_for("agents to die with the daemon", T, || {
                pids.iter().all(|p| !alive(*p)).then_some(())
            });
        }
    }
}
