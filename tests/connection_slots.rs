//! Item 7 of the security review (connection slots): an agent that held 4,200 idle
//! connections locked its user out (`clove ping` was refused). Connections are capped per
//! caller (`server.max_connections_per_caller`), per other user (`server.max_connections_per_uid`)
//! and for processes the daemon started that speak as no agent
//! (`server.max_connections_descendants`); the last `server.owner_reserved_connections` slots
//! are the owner's own; idle connections of agents are closed after
//! `server.agent_idle_timeout_secs`.

use crate::agent_support::{python, script};
use crate::harness::{Client, Daemon, op, read_frame, wait_for};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// Waits for a JSON report an agent writes.
fn report(path: &Path) -> Value {
    wait_for(&format!("the report {}", path.display()), T, || {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    })
}

/// Spawns `conn_flood.py` in `mode` as an agent; returns its report.
fn flood_agent(d: &Daemon, c: &mut Client, name: &str, args: &[&str]) -> Value {
    let out = d.path(&format!("{name}.json"));
    let mut all = vec![json!(args[0]), json!(out.display().to_string())];
    all.extend(args[1..].iter().map(|a| json!(a)));
    c.ok(
        op::SPAWN,
        json!({"name": name, "script": script("conn_flood.py"), "python": python(), "args": all}),
    );
    report(&out)
}

/// A connection of the owner's: the reply to a NOOP, or the refusal that came instead.
fn owner_connects(d: &Daemon) -> Result<std::os::unix::net::UnixStream, String> {
    use std::io::Write;
    let mut s = d.raw();
    // A refused connection gets its error frame and is closed at once, maybe before this
    // write: then the write fails, and the frame is still there to read.
    let _ = s.write_all(&crate::harness::frame(0, op::NOOP, b"ping"));
    let f = read_frame(&mut s).map_err(|e| e.to_string())?;
    if f.payload == b"ping" {
        Ok(s)
    } else {
        Err(String::from_utf8_lossy(&f.payload).into_owned())
    }
}

fn refusal(r: &Value) -> &str {
    r["refusal"].as_str().unwrap_or_default()
}

#[test]
fn an_agent_flooding_connections_leaves_its_owner_able_to_connect() {
    // Defaults: 4096 connections, of which an agent may hold 64.
    let d = Daemon::with_config("[agents]\nkill_grace_ms = 200\n");
    let mut c = d.client();
    let r = flood_agent(&d, &mut c, "flooder", &["flood", "5000"]);
    let mine: Vec<_> = (0..20)
        .map(|i| owner_connects(&d).unwrap_or_else(|e| panic!("owner connection {i}: {e}")))
        .collect();
    assert_eq!(mine.len(), 20);
    assert_eq!(r["held"], 64, "{r}");
    let e = refusal(&r);
    assert!(
        e.contains("too many connections") && e.contains("server.max_connections_per_caller"),
        "{r}"
    );
    c.ok(op::KILL, json!({"name": "flooder"}));
}

#[test]
fn the_last_slots_are_kept_for_the_owners_own_processes() {
    let d = Daemon::with_config(
        "[server]\nmax_connections = 40\nowner_reserved_connections = 8\n\
         max_connections_per_caller = 1000\n[agents]\nkill_grace_ms = 200\n",
    );
    let mut c = d.client();
    let r = flood_agent(&d, &mut c, "flooder", &["flood", "100"]);
    // 40 slots, 8 of them the owner's: the agent gets what is left of 32 besides `c`.
    assert_eq!(r["held"], 31, "{r}");
    assert!(
        refusal(&r).contains("server.owner_reserved_connections"),
        "{r}"
    );
    let mine: Vec<_> = (0..8)
        .map(|i| owner_connects(&d).unwrap_or_else(|e| panic!("reserved slot {i}: {e}")))
        .collect();
    let e = owner_connects(&d).expect_err("all 40 slots are taken");
    assert!(
        e.contains("too many connections") && e.contains("server.max_connections"),
        "{e}"
    );
    drop(mine);
}

#[test]
fn idle_connections_of_agents_are_closed_and_busy_ones_and_clients_are_not() {
    let d = Daemon::with_config(
        "[server]\nagent_idle_timeout_secs = 1\n[agents]\nkill_grace_ms = 200\n",
    );
    let mut c = d.client();
    let mut idle_client = d.client();
    idle_client.ok(op::HELLO, json!({}));
    let r = flood_agent(&d, &mut c, "idler", &["idle"]);
    let closed_at = r["quiet_closed_at"].as_f64().unwrap();
    assert_eq!(
        r["quiet_read"], "",
        "the idle connection ends with EOF: {r}"
    );
    assert!(
        (0.9..2.9).contains(&closed_at),
        "the idle connection was closed after {closed_at} s: {r}"
    );
    // The connection waiting for a 3 s command was not idle.
    assert_eq!(r["exec"]["stdout"], "done\n", "{r}");
    // A plain client idle for longer is still served.
    let f = idle_client.call_raw(op::NOOP, b"still here");
    assert_eq!(f.payload, b"still here");
    c.ok(op::KILL, json!({"name": "idler"}));
}

/// Opens up to `count` connections as `uid`, each asking HELLO; returns how many were
/// served and the first refusal.
/// Opens connections to the socket in argv[1] (argv[2] of them), each sending HELLO, until
/// one is refused; prints `{"held": N, "refusal": error or null}`.
const HOLD_CONNECTIONS_PY: &str = r#"
import json, socket, struct, sys
held, refusal = [], None
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    try:
        s.sendall(struct.pack("<IIBQ", 0x41474E54, 0, 0xFE, 2) + b"{}")
    except BrokenPipeError:
        pass  # refused at once: the error frame is still there to read
    head = s.recv(17, socket.MSG_WAITALL)
    if len(head) < 17:
        refusal = "closed"; break
    body = json.loads(s.recv(struct.unpack("<IIBQ", head)[3], socket.MSG_WAITALL))
    if body.get("success") is not True:
        refusal = body.get("error"); break
    held.append(s)
print(json.dumps({"held": len(held), "refusal": refusal}))
"#;

fn connect_as(uid: u32, socket: &Path, count: usize) -> Value {
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(HOLD_CONNECTIONS_PY)
        .arg(socket)
        .arg(count.to_string())
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn clients_of_another_allowed_user_are_capped_per_uid() {
    const NOBODY: u32 = 65534;
    let d = Daemon::with_config(&format!(
        "[server]\nallowed_uids = [{NOBODY}]\nsocket_mode = \"0666\"\nmax_connections_per_uid = 3\n"
    ));
    // Let the other user reach the socket in the test's private directory.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let r = connect_as(NOBODY, &d.socket, 5);
    assert_eq!(r["held"], 3, "{r}");
    assert!(
        refusal(&r).contains("server.max_connections_per_uid"),
        "{r}"
    );
    // The owner's own clients are not counted against it.
    let mine: Vec<_> = (0..10).map(|_| owner_connects(&d).unwrap()).collect();
    assert_eq!(mine.len(), 10);
}

#[test]
fn processes_the_daemon_started_that_are_no_agent_share_a_cap() {
    let d = Daemon::with_config("[server]\nmax_connections_descendants = 3\n");
    let mut c = d.client();
    std::fs::write(d.path("hold.py"), HOLD_CONNECTIONS_PY).unwrap();
    let r = c.ok(
        op::EXEC,
        json!({"command": format!("/usr/bin/python3 {} {} 5", d.path("hold.py").display(), d.socket.display())}),
    );
    let r: Value = serde_json::from_str(r["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(r["held"], 3, "{r}");
    assert!(
        refusal(&r).contains("server.max_connections_descendants"),
        "{r}"
    );
    // The owner's own connections are not among them.
    let t = Instant::now();
    let mine: Vec<_> = (0..10).map(|_| owner_connects(&d).unwrap()).collect();
    assert_eq!(mine.len(), 10);
    assert!(t.elapsed() < T);
}
