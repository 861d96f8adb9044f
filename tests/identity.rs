//! Who a connecting process speaks as. Processes the daemon started (agents, their
//! descendants and orphans, the commands EXEC runs) must never be taken for the user's own
//! `unrestricted` clients; the user's own processes still are.

use crate::agent_support::{python, script};
use crate::harness::{Client, Daemon, op, wait_for};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Waits for a probe's report file.
fn report(path: &Path) -> Value {
    wait_for(&format!("the probe's report {}", path.display()), T, || {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    })
}

/// An unsandboxed agent running the identity probe in `mode`.
fn spawn_probe(c: &mut Client, name: &str, mode: &str, out: &Path, extra: &[&str]) -> u64 {
    let mut args = vec![json!(mode), json!(out.display().to_string())];
    args.extend(extra.iter().map(|a| json!(a)));
    let r = c.ok(
        op::SPAWN,
        json!({"name": name, "script": script("identity_probe.py"), "python": python(),
               "sandboxed": false, "args": args}),
    );
    r["agent_id"].as_u64().expect("agent_id")
}

/// The report says: a restricted caller that could not raise itself.
fn assert_restricted(r: &Value) {
    assert_eq!(r["level"], "standard", "{r}");
    assert_eq!(r["can_manage"], false, "{r}");
    assert_eq!(r["raise"]["success"], false, "{r}");
    let e = r["raise"]["error"].as_str().unwrap_or_default();
    assert!(e.contains("permission denied"), "{r}");
}

/// Spawns a probe agent that leaves an orphan behind (in a new session with `setsid`) and
/// returns the agent's id and the orphan's report, checking that the daemon inherited it.
fn orphan(d: &Daemon, c: &mut Client, name: &str, extra: &[&str]) -> (u64, Value) {
    let out = d.path(&format!("{name}.json"));
    let id = spawn_probe(c, name, "orphan", &out, extra);
    let r = report(&out);
    // The grandchild's parent exited: as a subreaper the daemon inherited it.
    assert_eq!(r["ppid"], json!(d.pid()), "{r}");
    (id, r)
}

/// Stops the probe agent and its orphan (which a KILL of a new session does not reach).
fn stop_orphan(c: &mut Client, id: u64, r: &Value) {
    c.ok(op::KILL, json!({"id": id}));
    let pid = r["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the probe's own process; ESRCH if it is gone already.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn an_orphan_of_an_agent_speaks_as_the_agent() {
    let d = Daemon::start();
    let mut c = d.client();
    let (id, r) = orphan(&d, &mut c, "parent", &[]);
    assert_eq!(
        r["agent_id"],
        json!(id),
        "the orphan keeps its agent's identity: {r}"
    );
    assert_restricted(&r);
    stop_orphan(&mut c, id, &r);
}

#[test]
fn an_orphan_in_a_new_session_is_restricted_not_the_users_own() {
    let d = Daemon::start();
    let mut c = d.client();
    let (id, r) = orphan(&d, &mut c, "escaper", &["setsid"]);
    assert_eq!(r["pgid"], r["pid"], "the probe left its process group: {r}");
    // Nothing ties it to its agent any more, but it was started under the daemon: it gets
    // permissions.unattributed_level (minimal), under an id of its own.
    assert_ne!(r["agent_id"], json!(id), "{r}");
    assert_ne!(r["agent_id"], json!(c.my_id()), "{r}");
    assert_eq!(r["level"], "minimal", "{r}");
    assert_eq!(r["raise"]["success"], false, "{r}");
    stop_orphan(&mut c, id, &r);
}

#[test]
fn a_command_an_agent_runs_speaks_as_the_agent() {
    let d = Daemon::start();
    let mut c = d.client();
    let out = d.path("exec.json");
    let id = spawn_probe(&mut c, "runner", "exec", &out, &[]);
    let r = report(&out);
    assert_eq!(r["agent_id"], json!(id), "{r}");
    assert_restricted(&r);
    let mut exec_reply = out.clone().into_os_string();
    exec_reply.push(".exec");
    let e = report(Path::new(&exec_reply));
    assert_eq!(e["exit_code"], 0, "{e}");
    c.ok(op::KILL, json!({"id": id}));
}

#[test]
fn a_command_a_client_runs_gets_the_clients_rights_no_more() {
    let d = Daemon::start();
    let mut c = d.client();
    let probe = |c: &mut Client, out: &Path| -> Value {
        let cmd = format!(
            "{} {} {} report {}",
            python(),
            script("identity_probe.py"),
            d.socket.display(),
            out.display()
        );
        let e = c.ok(op::EXEC, json!({"command": cmd, "timeout": 20}));
        assert_eq!(e["exit_code"], 0, "{e}");
        report(out)
    };
    // The user's own client: its command is the user too.
    let r = probe(&mut c, &d.path("full.json"));
    assert_eq!(r["level"], "unrestricted", "{r}");
    assert_ne!(
        r["agent_id"],
        json!(c.my_id()),
        "a new connection, a new id: {r}"
    );
    // A client that lowered itself cannot get its rights back through a command.
    c.ok(op::SET_PERMS, json!({"level": "standard"}));
    let r = probe(&mut c, &d.path("lowered.json"));
    assert_restricted(&r);
    assert_ne!(r["agent_id"], json!(c.my_id()), "{r}");
    // Meanwhile a process of the user's outside the daemon is still the user's own.
    let mut outside = d.client();
    let p = outside.ok(op::GET_PERMS, json!({}));
    assert_eq!(p["level"], "unrestricted", "{p}");
}

// ---- process groups are no identity (the setpgid orphan) -------------------------------

/// A default (`standard`, sandboxed) agent running `hostile.py`, which EXECs a command that
/// orphans an attacker, moves it into process group `pgid` and connects. Returns the agent's
/// id and the attacker's report.
fn setpgid_orphan(
    d: &Daemon,
    c: &mut Client,
    name: &str,
    sandboxed: bool,
    pgid: i64,
) -> (u64, Value) {
    let out = d.path(&format!("{name}.json"));
    let r = c.ok(
        op::SPAWN,
        json!({"name": name, "script": script("hostile.py"), "python": python(),
               "sandboxed": sandboxed,
               "args": ["exec-orphan", pgid.to_string(), out.display().to_string()]}),
    );
    let id = r["agent_id"].as_u64().expect("agent_id");
    let report = wait_for(
        &format!("the attacker's report {}", out.display()),
        T,
        || {
            let text = std::fs::read_to_string(&out).ok()?;
            serde_json::from_str::<Value>(&text).ok()
        },
    );
    assert!(
        report.get("error").is_none(),
        "the attacker failed: {report}"
    );
    (id, report)
}

/// The daemon gave the attacker nothing beyond its own agent's rights: it speaks as the
/// hostile agent, at `standard`, and cannot raise itself, read /etc/shadow or spawn.
fn assert_attacker_is_only_itself(r: &Value, hostile: u64) {
    assert_eq!(
        r["agent_id"],
        json!(hostile),
        "attributed to someone else: {r}"
    );
    assert_eq!(r["perms"]["level"], "standard", "{r}");
    assert_eq!(r["raise"]["success"], false, "{r}");
    assert_eq!(r["shadow"]["success"], false, "read /etc/shadow: {r}");
    assert_eq!(r["spawn"]["success"], false, "spawned an agent: {r}");
}

/// The process group of another agent is no way into its identity: a sandboxed agent's
/// orphaned command that moves into the victim agent's group (or tries to) is still the
/// hostile agent, with the hostile agent's rights, and never sees the victim's keys. Same for
/// an unsandboxed hostile agent, whose orphan really is re-parented to the daemon.
#[test]
fn setpgid_orphan_cannot_take_another_agents_identity() {
    let d = Daemon::start();
    let mut c = d.client();
    let victim_out = d.path("victim.json");
    let v = c.ok(
        op::SPAWN,
        json!({"name": "victim", "script": script("hostile.py"), "python": python(),
               "args": ["victim", victim_out.display().to_string()]}),
    );
    let victim = report(&victim_out);
    assert_eq!(victim["stored"]["success"], true, "{victim}");
    assert_eq!(victim["agent_id"], v["agent_id"], "{victim}");
    // The victim's process group: its supervised process leads it.
    let pgid = v["supervisor_pid"].as_i64().expect("supervisor_pid");
    for (name, sandboxed) in [("thief", true), ("plain-thief", false)] {
        let (hostile, r) = setpgid_orphan(&d, &mut c, name, sandboxed, pgid);
        assert_ne!(
            r["agent_id"], v["agent_id"],
            "took the victim's identity: {r}"
        );
        assert_attacker_is_only_itself(&r, hostile);
        assert_eq!(
            r["fetch"]["exists"], false,
            "read the victim's agent-scoped key: {r}"
        );
        if !sandboxed {
            assert_eq!(r["ppid"], json!(d.pid()), "re-parented to the daemon: {r}");
        }
        c.ok(op::KILL, json!({"id": hostile}));
    }
    c.ok(op::KILL, json!({"name": "victim"}));
}

/// The process group of a user's running command is no way to the user's rights: the
/// attacker that moves into it (or tries to) stays the hostile agent's, at `standard`.
#[test]
fn setpgid_orphan_cannot_take_a_users_exec_identity() {
    let d = Daemon::start();
    let mut c = d.client();
    let marker = format!("clove-victim-exec-{}", std::process::id());
    c.ok(
        op::EXEC,
        json!({"command": format!("sleep 60; : {marker}"), "timeout": 60, "async": true}),
    );
    // The user's command, found as an attacker scanning /proc would find it.
    let pgid = wait_for("the user's command in /proc", T, || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i64 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains(&marker) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let pgrp = stat.rsplit(')').next()?.split_whitespace().nth(2)?;
            (pgrp.parse::<i64>().ok()? == pid).then_some(pid)
        })
    });
    for (name, sandboxed) in [("thief", true), ("plain-thief", false)] {
        let (hostile, r) = setpgid_orphan(&d, &mut c, name, sandboxed, pgid);
        assert_ne!(
            r["perms"]["level"], "unrestricted",
            "got the user's rights: {r}"
        );
        assert_attacker_is_only_itself(&r, hostile);
        c.ok(op::KILL, json!({"id": hostile}));
    }
    // SAFETY: kill(2) on the test's own command's process group.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}

/// Whatever a command detaches (a new session, then orphaned to the daemon) gets no more
/// than the client that ran it had: it escaped every key, so it gets
/// `permissions.unattributed_level` (`minimal`), never the agent level.
#[test]
fn a_detached_process_of_a_lowered_clients_command_gets_no_more_than_the_client() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": "standard"}));
    c.ok(op::SET_PERMS, json!({"permissions": {"can_http": false}}));
    let out = d.path("detached.json");
    // Started in a new session (setsid) and left behind (&): the shell exits at once.
    let cmd = format!(
        "setsid {} {} {} report {} >/dev/null 2>&1 &",
        python(),
        script("identity_probe.py"),
        d.socket.display(),
        out.display()
    );
    let e = c.ok(op::EXEC, json!({"command": cmd, "timeout": 20}));
    assert_eq!(e["exit_code"], 0, "{e}");
    let r = report(&out);
    assert_eq!(r["level"], "minimal", "{r}");
    assert_eq!(r["raise"]["success"], false, "{r}");
}
