//! Starting and stopping: socket ownership and mode, refusing a second daemon, stale sockets,
//! signals, configuration errors.

use crate::harness::{BIN, Daemon, op};
use serde_json::json;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};

#[test]
fn socket_is_owner_only_by_default_and_mode_is_configurable() {
    let d = Daemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let d2 = Daemon::with_config("[server]\nsocket_mode = \"0660\"\n");
    let meta = std::fs::metadata(&d2.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

#[test]
fn second_daemon_on_a_live_socket_is_refused() {
    let d = Daemon::start();
    // Same socket, its own state directory: the live socket alone must stop it.
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.path("other-state"))
        .env_remove("CLOVE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another") && err.contains(&d.socket.display().to_string()),
        "{err}"
    );
    // The first daemon is untouched and still answers.
    assert!(d.socket.exists());
    d.client().ok(op::HELLO, json!({}));
}

#[test]
fn stale_socket_is_replaced_but_a_non_socket_is_not() {
    let mut d = Daemon::start();
    d.kill9();
    assert!(d.socket.exists(), "kill -9 leaves the socket file behind");
    d.spawn().expect("restart over a stale socket");
    d.client().ok(op::HELLO, json!({}));
    d.stop();

    std::fs::write(&d.socket, b"not a socket").unwrap();
    let out = d.command().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&d.socket).unwrap(), b"not a socket");
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_remove_the_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut d = Daemon::start();
        let mut c = d.client();
        c.ok(op::HELLO, json!({}));
        d.signal(sig);
        let st =
            crate::harness::wait_for("daemon exit", std::time::Duration::from_secs(10), || {
                d.child.as_mut().unwrap().try_wait().unwrap()
            });
        assert!(st.success(), "signal {sig}: {st}");
        assert!(!d.socket.exists());
        d.child = None;
    }
}

#[test]
fn sighup_and_vanishing_clients_do_not_kill_the_daemon() {
    let mut d = Daemon::start();
    d.signal(libc::SIGHUP);
    // Clients that disappear while their replies are being written (EPIPE, not SIGPIPE).
    for _ in 0..20 {
        let mut s = d.raw();
        use std::io::Write;
        for _ in 0..20 {
            let _ = s.write_all(&crate::harness::frame(0, op::NOOP, &[0u8; 50_000]));
        }
        drop(s);
    }
    let mut c = d.client();
    c.ok(op::HELLO, json!({}));
    assert!(d.alive());
}

#[test]
fn config_errors_are_reported_together_and_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[server]\nworkers = 0\nmax_connections = 0\n[permissions]\nagent_level = \"god\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["server.workers", "server.max_connections", "god"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(!dir.path().join("s.sock").exists());

    std::fs::write(&cfg, "[server]\nsokcet = \"/tmp/x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sokcet"));
}

#[test]
fn cli_call_and_ping_work_against_the_daemon() {
    let d = Daemon::start();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("CLOVE_SOCKET", &d.socket)
            .output()
            .unwrap()
    };
    let ping = run(&["ping"]);
    assert!(ping.status.success());
    assert!(String::from_utf8_lossy(&ping.stdout).starts_with("pong"));
    let st = run(&["call", "store", r#"{"key":"cli","value":[1,2]}"#]);
    assert!(st.status.success());
    let fe = run(&["call", "0x31", r#"{"key":"cli"}"#]);
    let v: serde_json::Value = serde_json::from_slice(&fe.stdout).unwrap();
    assert_eq!(v["value"], json!([1, 2]));
    let bad = run(&["call", "fetch", r#"{"nokey":1}"#]);
    assert_eq!(bad.status.code(), Some(1), "success:false exits 1");
    let unknown = run(&["call", "frobnicate"]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown op"));
    let nodaemon = Command::new(BIN)
        .args(["ping", "--socket", "/nonexistent/clove.sock"])
        .output()
        .unwrap();
    assert_eq!(nodaemon.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nodaemon.stderr).contains("is `clove serve` running"));
}

#[test]
fn peers_of_other_users_are_refused_unless_allowed() {
    use std::os::unix::process::CommandExt;
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let nobody = 65534;
    // A world-writable socket, so that only the peer-credential check stands in the way.
    let d = Daemon::with_config("[server]\nsocket_mode = \"0666\"\n");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ping = |d: &Daemon| {
        Command::new(BIN)
            .arg("ping")
            .arg("--socket")
            .arg(&d.socket)
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap()
    };
    let out = ping(&d);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not use this daemon"), "{err}");
    assert!(d.logs().contains("refused connection from uid 65534"));

    let allowed = Daemon::with_config(&format!(
        "[server]\nsocket_mode = \"0666\"\nallowed_uids = [{nobody}]\n"
    ));
    std::fs::set_permissions(allowed.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ping(&allowed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_async_poll_max_and_unknown_get_perms_id_are_named_and_the_connection_goes_on() {
    let d = Daemon::start();
    let mut c = d.client();
    let accepted = c.ok(
        op::EXEC,
        json!({"command": "echo done", "async": true, "request_id": "r1"}),
    );
    assert_eq!(accepted["status"], "accepted");
    for bad in [json!("x"), json!(-1), json!(1.5), json!({"n": 1})] {
        let e = c.err(op::ASYNC_POLL, json!({"max": bad}));
        assert!(e.contains("`max`"), "max {bad}: {e}");
        // Still usable; a refused poll took nothing.
        assert_eq!(c.ok(op::HELLO, json!({}))["success"], true);
    }
    let e = c.err(op::GET_PERMS, json!({"agent_id": 999_999}));
    assert!(e.contains("999999"), "{e}");
    let e = c.err(op::GET_PERMS, json!({"agent_id": "x"}));
    assert!(e.contains("`agent_id`"), "{e}");
    let mine = c.my_id();
    assert_eq!(c.ok(op::GET_PERMS, json!({}))["agent_id"], mine);
    // The async result is still waiting, whole, for a good poll.
    let r = crate::harness::wait_for("async result", std::time::Duration::from_secs(10), || {
        let p = c.ok(op::ASYNC_POLL, json!({"max": 10}));
        (p["count"] == 1).then_some(p)
    });
    assert_eq!(r["results"][0]["request_id"], "r1");
    let payload: serde_json::Value =
        serde_json::from_str(r["results"][0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["stdout"], "done\n");
}

/// Runs `clove serve` on `socket` (state beside it, no config) and returns its output; a daemon
/// that unexpectedly starts is stopped after its ready line so the test fails instead of hanging.
fn serve_once(socket: &std::path::Path, state_dir: &std::path::Path) -> std::process::Output {
    let cfg = state_dir.with_extension("toml");
    std::fs::write(&cfg, "").unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .env_remove("CLOVE_SOCKET")
        .env_remove("CLOVE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let watcher = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("clove: ready") {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut out = child.wait_with_output().unwrap();
    out.stdout = watcher.join().unwrap().into_bytes();
    out
}

#[test]
fn a_foreign_listener_on_the_path_is_refused_and_left_alone() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busy.sock");
    // Something that is not clove answers on the path, and holds no lock file.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4];
            // The daemon's probe connects and hangs up; a real client sends "ping".
            if s.read_exact(&mut buf).is_ok() && &buf == b"ping" {
                let _ = s.write_all(b"pong");
                return;
            }
        }
    });
    assert!(!dir.path().join("busy.sock.lock").exists());
    let out = serve_once(&socket, &dir.path().join("state"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started over a live listener: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already answering") && err.contains(&socket.display().to_string()),
        "the refusal must say what and where: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("clove: ready"),
        "{err}"
    );
    // The listener's socket file is still there, and still its own: it answers.
    let meta = std::fs::symlink_metadata(&socket).expect("socket file removed");
    assert!(meta.file_type().is_socket());
    let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(b"ping").unwrap();
    let mut reply = [0u8; 4];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");
    server.join().unwrap();
}

#[test]
fn a_stale_socket_without_a_lock_file_is_replaced_unless_another_user_owns_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    // Bound, then the listener dropped: the file stays and nothing answers on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(std::fs::symlink_metadata(&socket).is_ok());
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
    assert!(!dir.path().join("stale.sock.lock").exists());

    if nix::unistd::geteuid().as_raw() == 0 {
        // Someone else's stale socket is not ours to remove.
        std::os::unix::fs::lchown(&socket, Some(65534), Some(65534)).unwrap();
        let out = serve_once(&socket, &dir.path().join("state0"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("stale socket")
                && err.contains("65534")
                && err.contains(&socket.display().to_string()),
            "{err}"
        );
        let meta = std::fs::symlink_metadata(&socket).expect("foreign stale socket removed");
        assert!(std::os::unix::fs::MetadataExt::uid(&meta) == 65534);
        std::os::unix::fs::lchown(&socket, Some(0), Some(0)).unwrap();
    } else {
        eprintln!("skipped the other-user half: needs root to chown the socket");
    }

    let mut d = Daemon {
        child: None,
        socket: socket.clone(),
        state_dir: dir.path().join("state"),
        config_path: dir.path().join("clove.toml"),
        log_path: dir.path().join("daemon.log"),
        env: Vec::new(),
        ready: String::new(),
        dir,
    };
    std::fs::write(&d.config_path, "").unwrap();
    d.spawn().expect("start over our own stale socket");
    let mut c = d.client();
    c.ok(op::HELLO, json!({}));
    assert!(d.logs().contains("removing stale socket"), "{}", d.logs());
}

/// A group from /etc/group other than root's: (name, gid).
fn some_group() -> Option<(String, u32)> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    let groups: Vec<(String, u32)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_string();
            let gid = f.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .filter(|(_, gid)| *gid != 0)
        .collect();
    ["daemon", "nogroup", "users"]
        .iter()
        .find_map(|want| groups.iter().find(|(n, _)| n == want).cloned())
        .or_else(|| groups.first().cloned())
}

#[test]
fn socket_group_gives_the_socket_to_that_group_and_lets_its_members_in() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to give the socket to a group it is not in");
        return;
    }
    let Some((group, gid)) = some_group() else {
        eprintln!("skipped: /etc/group has no group besides root");
        return;
    };
    let nobody = 65534;
    let config = |group: &str| {
        format!(
            "[server]\nsocket_mode = \"0660\"\nsocket_group = \"{group}\"\nallowed_uids = [{nobody}]\n"
        )
    };
    let ping_as = |d: &Daemon, gid: u32| {
        Command::new(BIN)
            .arg("ping")
            .arg("--socket")
            .arg(&d.socket)
            .uid(nobody)
            .gid(gid)
            .output()
            .unwrap()
    };
    for spelled in [group.clone(), gid.to_string()] {
        let d = Daemon::with_config(&config(&spelled));
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let meta = std::fs::metadata(&d.socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "{spelled}");
        assert_eq!(meta.gid(), gid, "socket_group = {spelled:?}");
        assert_eq!(meta.uid(), 0);
        // A member of the group gets through the file mode (and, allowed, the uid check)...
        let member = ping_as(&d, gid);
        assert!(
            member.status.success(),
            "group member refused: {}",
            String::from_utf8_lossy(&member.stderr)
        );
        // ...and the same user outside the group is stopped by the file mode itself.
        let outsider_gid = if gid == nobody { nobody - 1 } else { nobody };
        let outsider = ping_as(&d, outsider_gid);
        assert!(!outsider.status.success());
        let err = String::from_utf8_lossy(&outsider.stderr);
        assert!(
            err.contains("cannot connect") && err.contains("os error 13"),
            "expected the file mode to refuse (EACCES): {err}"
        );
    }
}

#[test]
fn an_unknown_socket_group_stops_the_start_naming_key_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("clove.toml");
    std::fs::write(
        &cfg,
        "[server]\nsocket_mode = \"0660\"\nsocket_group = \"no-such-group-clove\"\n",
    )
    .unwrap();
    let socket = dir.path().join("s.sock");
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("CLOVE_SOCKET")
        .env_remove("CLOVE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("server.socket_group") && err.contains("no-such-group-clove"),
        "{err}"
    );
    assert!(!socket.exists(), "no socket may be left behind");
}

/// The number right after `label` in `text` (e.g. `p50 20.2us` → 20.2).
fn figure_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in bench output:\n{text}"));
    let rest = text[at + label.len()..].trim_start();
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("{label:?} is not followed by a number in:\n{text}"))
}

#[test]
fn clove_bench_measures_the_daemon_and_refuses_bad_arguments() {
    let d = Daemon::start();
    let bench = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("bench")
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .env_remove("CLOVE_SOCKET")
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A key of the user's that looks like a bench key is not the bench's to touch.
    d.client()
        .ok(op::STORE, json!({"key": "bench:0", "value": "mine"}));
    let small = ["-c", "2", "-n", "2000", "--warmup", "200"];
    for op_name in ["noop", "fetch", "store"] {
        let (st, out, err) = bench(&[&["--op", op_name][..], &small[..]].concat());
        assert!(st.success(), "bench --op {op_name}: {err}");
        assert!(
            out.contains(&format!("op={op_name} conns=2 window=1"))
                && out.contains("requests=2000"),
            "{out}"
        );
        assert_eq!(figure_after(&out, "errors"), 0.0, "{out}");
        for label in ["throughput", "p50", "p99"] {
            let v = figure_after(&out, label);
            assert!(v > 0.0, "{label} is {v} in:\n{out}");
        }
        assert!(
            figure_after(&out, "p99") >= figure_after(&out, "p50"),
            "{out}"
        );
        assert!(
            out.contains(&format!("server pid {}", d.pid())),
            "the daemon's pid and RSS are reported: {out}"
        );
        // The store's commits during the run: only STORE makes any (the bench's own
        // connections opening and closing must not show up as commits of a NOOP run).
        let store = &out[out.find("store (sync=").expect("store figures")..];
        let commits = figure_after(store, "):");
        if op_name == "store" {
            assert!(commits > 0.0, "{out}");
        } else {
            assert_eq!(commits, 0.0, "{out}");
        }
    }
    // The bench cleaned up after itself (its keys live under clove-bench:PID:), and left the
    // user's keys alone.
    let mut c = d.client();
    let keys = c.ok(op::KEYS, json!({"prefix": "clove-bench:"}));
    assert_eq!(keys["count"], 0, "{keys}");
    let mine = c.ok(op::FETCH, json!({"key": "bench:0"}));
    assert_eq!(mine["value"], "mine", "{mine}");

    let (st, out, err) = bench(&[&["--op", "fetch", "--json", "-P", "4"][..], &small[..]].concat());
    assert!(st.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("--json output is not one JSON object ({e}): {out}"));
    assert_eq!(v["op"], "fetch");
    assert_eq!(v["conns"], 2);
    assert_eq!(v["window"], 4);
    assert_eq!(v["requests"], 2000);
    assert_eq!(v["errors"], 0);
    for key in ["throughput", "p50_us", "p99_us", "seconds"] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(x > 0.0, "{key} = {x}: {v}");
    }
    assert!(v["p99_us"].as_f64() >= v["p50_us"].as_f64(), "{v}");
    assert_eq!(v["server_pid"], d.pid());
    assert_eq!(v["store"]["commits"], 0, "{v}");

    for (args, flag) in [
        (&["-c", "0"][..], "--conns"),
        (&["-n", "0"][..], "--requests"),
        (&["-P", "0"][..], "--window"),
    ] {
        let (st, out, err) = bench(args);
        assert_eq!(st.code(), Some(64), "{args:?}: {out}{err}");
        assert!(
            err.contains(flag) && err.contains("at least 1"),
            "{args:?}: the error must name {flag}: {err}"
        );
    }
    let (st, _, err) = bench(&["-c", "x"]);
    assert_eq!(st.code(), Some(64));
    assert!(err.contains("--conns"), "{err}");
    let out = Command::new(BIN)
        .args(["bench", "-n", "10", "--socket"])
        .arg(d.path("no-such.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no-such.sock") && err.contains("is `clove serve` running"),
        "{err}"
    );
    // The daemon served all of it and is still fine.
    c.ok(op::HELLO, json!({}));
}
