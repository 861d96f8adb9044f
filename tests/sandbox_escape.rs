//! A sandboxed agent tries to get out: through EXEC (whose commands must run inside the
//! agent's sandbox, with no more than the agent's rights), and through the privileges a root
//! daemon could have left it (capabilities, cgroup files, mounts). Every probe runs in real
//! processes inside the agent (`tests/agent_scripts/sandbox_probe.py`); the tests assert what
//! the kernel and the daemon answered.

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

/// The fields of /proc/PID/status that say what a process may do.
fn host_status(pid: i64) -> Value {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mut v = json!({});
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':')
            && matches!(
                key,
                "Uid" | "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb" | "NoNewPrivs"
            )
        {
            v[key] = value.split_whitespace().next().unwrap_or("").into();
        }
    }
    v
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

/// The user sandboxed agents run as: a root daemon's `sandbox.agent_user` (nobody), else the
/// daemon's own.
fn agent_uid() -> u32 {
    if nix::unistd::geteuid().is_root() {
        65534
    } else {
        nix::unistd::geteuid().as_raw()
    }
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

/// A sandboxed agent holds no capability (none effective, permitted, inheritable or ambient,
/// an empty bounding set, no-new-privileges), so it can neither write itself into the host's
/// root cgroups to leave its limits nor mount anything; and it still reaches the daemon. Under
/// a root daemon it runs as `sandbox.agent_user` (nobody).
#[test]
fn a_sandboxed_agent_has_no_capabilities_cgroup_writes_or_mounts() {
    let d = Daemon::start();
    let mut c = d.client();
    let out = d.path("caps.json");
    let args = ["caps".into(), out.display().to_string()];
    let a = spawn_probe(&mut c, "caps", &args, json!({"max_pids": 16}));
    let r = report(&out);
    // It could not write itself into the host's root cgroups (to leave its limits), and it
    // is still in its own; it could not mount.
    let writes = r["cgroup_writes"].as_object().unwrap();
    assert!(!writes.is_empty(), "no v1 root cgroup to try: {r}");
    for (file, outcome) in writes {
        let outcome = outcome.as_str().unwrap_or_default();
        assert!(outcome.starts_with("refused"), "{file}: {outcome}: {r}");
    }
    let cgroup = r["cgroup"].as_str().unwrap();
    assert!(cgroup.contains("pids:/clove-"), "{r}");
    let mount = r["mount"].as_str().unwrap_or("");
    assert!(mount.starts_with("refused"), "{r}");
    // Because it holds nothing: no capability in any set, seen from inside and from the host
    // (its interpreter's /proc/PID/status).
    assert_powerless(&r["status"], "the agent, seen from inside");
    let pid = a["pid"].as_i64().unwrap();
    assert_powerless(&host_status(pid), "the agent, seen from the host");
    assert_eq!(r["uid"], agent_uid(), "{r}");
    assert_eq!(a["isolation"]["capabilities"], "none", "{a}");
    assert_eq!(a["isolation"]["uid"], agent_uid(), "{a}");
    // And it still reaches the daemon, as itself.
    assert_eq!(r["agent_id"], a["agent_id"], "{r}");
    c.ok(op::KILL, json!({"name": "caps"}));
}

/// Reads the daemon's first answer on a connection to `path`, made by Python as `uid` (root:
/// unchanged). The socket is opened by root before the switch (an `O_PATH` descriptor) and
/// connected through `/proc/self/fd`, so that the user's process reaches the socket file even
/// where its directories are closed to it: then only the daemon's own check stands.
fn first_answer(path: &Path, uid: u32) -> String {
    let code = format!(
        "import os, socket\n\
         fd = os.open({path:?}, os.O_PATH)\n\
         if {uid} != 0:\n    os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n\
         s = socket.socket(socket.AF_UNIX)\n\
         try:\n    s.connect('/proc/self/fd/%d' % fd)\n\
         except OSError as e:\n    print('cannot connect', e); raise SystemExit\n\
         s.settimeout(5)\n\
         try:\n    s.recv(17)\n    print('answered', s.recv(4096))\n\
         except socket.timeout:\n    print('let in, silent')\n",
        path = path.display().to_string(),
    );
    let out = std::process::Command::new(python())
        .args(["-c", &code])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A root daemon's sandboxed agents reach it through the agents' socket (in the private
/// state directory, owned by the agent user, mounted over the Clove socket's path inside each
/// agent); through it only a live agent's processes are let in, whatever their user, and the
/// Clove socket stays closed to the agent user.
#[test]
fn the_agents_socket_lets_in_only_agents() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (a root daemon, and a process of another user)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let agents = d.state_dir.join("agent.sock");
    let meta = std::fs::symlink_metadata(&agents).expect("the agents' socket");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
    let main = std::fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!((main.uid(), main.mode() & 0o777), (0, 0o600));
    let refused = "your user may not use this daemon";
    for uid in [0, 65534] {
        let text = first_answer(&agents, uid);
        assert!(text.contains(refused), "uid {uid} let in: {text}");
    }
    let text = first_answer(&d.socket, 65534);
    assert!(text.contains("cannot connect"), "{text}");
}
