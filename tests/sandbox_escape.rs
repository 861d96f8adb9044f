//! A sandboxed agent tries to get out through EXEC, whose commands must run inside the agent's
//! sandbox, with no more than the agent's rights. Every probe runs in real processes inside
//! the agent (`tests/agent_scripts/sandbox_probe.py`); the tests assert what the kernel and
//! the daemon answered.

use crate::agent_support::{python, script};
use crate::harness::{Client, Daemon, op, wait_for};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Waits for a probe's JSON report.
fn report(path: &Path) -> Value {
    wait_for(&format!("the probe's report {}", path.display()), T, || {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    })
}

/// No capability in any set, not even in the bounding set, and no-new-privileges.
fn assert_powerless(status: &Value, what: &str) {
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status[set], "0000000000000000",
            "{what}: {set} is not empty: {status}"
        );
    }
    assert_eq!(status["NoNewPrivs"], "1", "{what}: {status}");
}

/// Spawns `sandbox_probe.py MODE ARGS...` as a default sandboxed agent (network off) with
/// `limits`.
fn spawn_probe(c: &mut Client, name: &str, args: &[String], limits: Value) -> Value {
    let r = c.ok(
        op::SPAWN,
        json!({"name": name, "script": script("sandbox_probe.py"), "python": python(),
               "args": args, "limits": limits}),
    );
    assert_eq!(r["isolation"]["network"], "none", "{r}");
    r
}

/// The EXEC reply's stdout.
fn stdout(r: &Value, name: &str) -> String {
    let e = &r[name];
    assert!(e.is_object(), "no EXEC reply for {name}: {r}");
    e["stdout"].as_str().unwrap_or_default().to_string()
}

/// EXEC from a network-off, cgroup-limited sandboxed agent runs inside its sandbox: in its pid
/// and net namespaces and cgroups, held to its limits, without capabilities, and whatever it
/// leaves behind has no more rights than the agent had lowered itself to.
#[test]
fn exec_from_a_sandboxed_agent_stays_in_its_sandbox() {
    let d = Daemon::start();
    let mut c = d.client();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = d.path("exec_probe.json");
    let args = ["exec".into(), port.to_string(), out.display().to_string()];
    let a = spawn_probe(
        &mut c,
        "boxed",
        &args,
        json!({"max_pids": 8, "memory": "64M"}),
    );
    for l in ["max_pids", "memory"] {
        assert_eq!(a["isolation"]["limits"][l]["via"], "cgroup", "{a}");
    }
    let r = report(&out);
    assert_eq!(r["lowered"]["success"], true, "{r}");
    // Where the command ran: the agent's own pid and net namespaces and cgroups.
    let own = &r["own"];
    let place: Value = serde_json::from_str(stdout(&r, "where").trim())
        .unwrap_or_else(|e| panic!("where: {e}: {r}"));
    assert_eq!(place["pid_ns"], own["pid_ns"], "pid namespace: {r}");
    assert_eq!(place["net_ns"], own["net_ns"], "net namespace: {r}");
    assert_eq!(place["cgroup"], own["cgroup"], "cgroups: {r}");
    let host_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(place["pid_ns"], json!(host_pid_ns.to_str().unwrap()), "{r}");
    // As the agent's own user, with every privilege it gave up given up too.
    assert_eq!(place["status"]["Uid"], own["status"]["Uid"], "{r}");
    assert_powerless(&place["status"], "an agent's command");
    // The host's loopback is out of reach, as it is for the agent.
    let net = stdout(&r, "net");
    assert!(net.starts_with("refused"), "reached 127.0.0.1: {net} {r}");
    assert!(
        listener.accept().is_err(),
        "a connection arrived from the sandbox"
    );
    // Its limits hold: no 300 MB past memory: 64M, no 40 processes past max_pids: 8.
    let mem = stdout(&r, "memory");
    assert!(!mem.contains("allocated"), "allocated past the limit: {r}");
    assert_ne!(r["memory"]["exit_code"], 0, "{r}");
    let forks: u64 = stdout(&r, "pids")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("pids: {e}: {r}"));
    assert!(forks < 8, "forked {forks} processes past max_pids 8: {r}");
    // What a command leaves behind (a new session, outliving it) has the agent's lowered
    // rights at most: it is still the agent's (its pid namespace), or less.
    let left = report(Path::new(&format!("{}.detached", out.display())));
    assert!(left.get("error").is_none(), "{left}");
    let perms = &left["perms"]["permissions"];
    assert_eq!(perms["can_http"], false, "{left}");
    assert_eq!(perms["filesystem"]["write"], json!([]), "{left}");
    assert_eq!(left["raise"]["success"], false, "{left}");
    assert_eq!(left["agent_id"], a["agent_id"], "{left}");
    c.ok(op::KILL, json!({"name": "boxed"}));
}
