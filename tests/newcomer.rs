//! Issue 16, "what a newcomer trips over": typos in requests and config files, the per-user
//! socket, leftovers of `serve`, the everyday commands and their exit codes, the agents' story
//! in the daemon's log. Each test drives the real binary and checks what a user would see.

use crate::harness::{BIN, Daemon, op};
use serde_json::json;
use std::process::{Command, Output};

/// Runs `clove ARGS` as a client of `d`.
pub fn clove(d: &Daemon, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CLOVE_SOCKET", &d.socket)
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_request_fields_are_warned_about_in_the_reply_and_by_clove_call() {
    let d = Daemon::start();
    let mut c = d.client();
    // Inline (FETCH), deferred to the store's writer (STORE) and worker (EXEC) ops alike.
    let v = c.ok(op::STORE, json!({"key": "a", "value": 1, "tll": 5}));
    assert_eq!(
        v["warnings"],
        json!(["unknown field 'tll' (did you mean 'ttl'?)"])
    );
    let v = c.ok(op::FETCH, json!({"key": "a", "keys": "global"}));
    assert_eq!(v["value"], 1);
    assert_eq!(
        v["warnings"],
        json!(["unknown field 'keys' (did you mean 'key'?)"])
    );
    let v = c.ok(op::EXEC, json!({"command": "true", "timout": 3}));
    assert_eq!(
        v["warnings"],
        json!(["unknown field 'timout' (did you mean 'timeout'?)"])
    );
    // The warnings belong to their request: the next reply has none.
    let v = c.ok(op::FETCH, json!({"key": "a"}));
    assert!(v.get("warnings").is_none(), "{v}");
    // A field nothing resembles is named, with the fields the op knows.
    let v = c.ok(op::DELETE, json!({"key": "a", "colour": "red"}));
    let w = v["warnings"][0].as_str().unwrap();
    assert!(
        w.starts_with("unknown field 'colour' (ignored; known fields: key"),
        "{w}"
    );
    // The key was stored without a TTL: the typo changed nothing but is no longer silent.
    let out = clove(&d, &["call", "store", r#"{"key":"b","value":1,"tll":5}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: unknown field 'tll' (did you mean 'ttl'?)"),
        "{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["success"], true);
}

#[test]
fn requests_shaped_like_the_python_sdks_get_no_warnings() {
    let d = Daemon::start();
    let mut c = d.client();
    let script = d.path("agent.sh");
    std::fs::write(&script, "sleep 30\n").unwrap();
    let file = d.path("sdk.txt");
    let f = file.to_str().unwrap();
    // Each op with every field the SDK (old and new) sends; some are refused (no model, no
    // network), but none may warn about a field.
    let requests = [
        (
            op::EXEC,
            json!({"command": "true", "timeout": 30, "cwd": "/", "async": false}),
        ),
        (
            op::WRITE,
            json!({"path": f, "content": "x", "mode": "write"}),
        ),
        (op::READ, json!({"path": f})),
        (
            op::SPAWN,
            json!({"name": "sdk", "script": script, "sandboxed": false, "network": true,
            "restart_policy": "never", "max_restarts": 5, "restart_window": 300,
            "limits": {"memory": "64M"}, "python": "/bin/sh"}),
        ),
        (op::PAUSE, json!({"name": "sdk"})),
        (op::RESUME, json!({"name": "sdk"})),
        (op::KILL, json!({"name": "sdk"})),
        (op::REGISTER, json!({"name": "sdk-client"})),
        (
            op::SEND,
            json!({"message": {"a": 1}, "to_name": "sdk-client"}),
        ),
        (op::RECV, json!({"max": 10})),
        (
            op::BROADCAST,
            json!({"message": {"a": 1}, "include_self": false}),
        ),
        (op::GET_PERMS, json!({})),
        (
            op::STORE,
            json!({"key": "k", "value": {"v": 1}, "scope": "global", "ttl": 60}),
        ),
        (op::FETCH, json!({"key": "k"})),
        (op::KEYS, json!({"prefix": "k"})),
        (op::DELETE, json!({"key": "k"})),
        (
            op::HTTP,
            json!({"url": "http://127.0.0.1:9/", "method": "GET", "timeout": 1,
            "headers": {"Accept": "text/plain"}, "body": "x", "async": false}),
        ),
        (op::SUBSCRIBE, json!({"event_types": ["CUSTOM"]})),
        (op::EMIT, json!({"event_type": "CUSTOM", "data": {}})),
        (op::POLL_EVENTS, json!({"max": 10})),
        (op::UNSUBSCRIBE, json!({"event_types": ["CUSTOM"]})),
        (op::METRICS_SYSTEM, json!({})),
        (op::METRICS_AGENT, json!({"agent_id": 1})),
        (op::METRICS_ALL_AGENTS, json!({})),
        (op::METRICS_CGROUP, json!({})),
        (
            op::THINK,
            json!({"prompt": "hi", "system_instruction": "s", "thinking_level": "low",
            "temperature": 0.5, "model": "m", "image": {"data": "AA==", "mime_type": "image/png"}}),
        ),
        (op::GET_AUDIT_LOG, json!({"limit": 5, "since_id": 0})),
        (op::SET_AUDIT_CONFIG, json!({"log_syscalls": false})),
        (op::ASYNC_POLL, json!({"max": 10})),
        (op::LLM_REPORT, json!({"tokens": 1, "success": true})),
        (op::SET_PERMS, json!({"level": "standard"})),
    ];
    for (code, req) in requests {
        let v = c.call(code, req.clone());
        assert!(v.get("warnings").is_none(), "op {code:#x} {req}: {v}");
    }
}

#[test]
fn global_flags_go_anywhere_and_exit_codes_follow_one_rule() {
    let d = Daemon::start();
    let sock = d.socket.to_str().unwrap();
    // --socket and --json before or after the subcommand.
    for args in [
        &["--socket", sock, "--json", "ping"][..],
        &["ping", "--socket", sock, "--json"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("CLOVE_SOCKET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kernel"], "clove", "{v}");
    }
    // 1: the daemon said no.
    let out = clove(&d, &["call", "fetch", r#"{"nokey":1}"#]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = clove(&d, &["kill", "nobody-has-this-name"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // 2: no daemon.
    let out = clove(&d, &["--socket", "/nonexistent/clove.sock", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // 64: usage errors, each saying what is wrong.
    for (args, says) in [
        (&["call", "store", "{bad"][..], "not valid JSON"),
        (&["call", "fech"][..], "did you mean fetch?"),
        (
            &["spawn", "a", "b.py", "--restart", "sometimes"][..],
            "possible values",
        ),
        (
            &["state", "import", "/nonexistent/dump.json"][..],
            "cannot read",
        ),
        (
            &["check-config", "--config", "/nonexistent/clove.toml"][..],
            "cannot read",
        ),
        (&["exec"][..], "required"),
        (&["frobnicate"][..], "unrecognized subcommand"),
    ] {
        let out = clove(&d, args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // Help: the rule in `clove --help`, the ops in `clove call --help`, help for every flag.
    let help = stdout(&clove(&d, &["--help"]));
    assert!(
        help.contains("Exit codes: 0 success; 1 the daemon said no"),
        "{help}"
    );
    let call_help = stdout(&clove(&d, &["call", "--help"]));
    for op in [
        "store",
        "get_audit_log",
        "0x76",
        "metrics_all_agents",
        "pause",
    ] {
        assert!(call_help.contains(op), "{op} missing from: {call_help}");
    }
    for sub in ["spawn", "exec", "logs", "audit", "stop", "bench", "serve"] {
        let h = stdout(&clove(&d, &["help", sub]));
        let undocumented: Vec<&str> = h
            .lines()
            .map(str::trim_end)
            .filter(|l| l.trim_start().starts_with('-') && !l.contains("  "))
            .collect();
        assert!(
            undocumented.is_empty(),
            "{sub}: flags without help: {undocumented:?}\n{h}"
        );
    }
}

#[test]
fn clove_exec_prints_raw_output_and_passes_the_exit_code_on() {
    let d = Daemon::start();
    let out = clove(
        &d,
        &["exec", "sh", "-c", "printf out; printf err >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out");
    assert_eq!(stderr(&out), "err");
    // One argument is shell text; several are words; the current directory is the command's.
    let dir = d.path("work dir");
    std::fs::create_dir(&dir).unwrap();
    let out = Command::new(BIN)
        .args(["exec", "pwd; echo \"$0\" | wc -c"])
        .current_dir(&dir)
        .env("CLOVE_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("{}\n", dir.display())),
        "{}",
        stdout(&out)
    );
    let out = clove(&d, &["exec", "echo", "a  b", "$HOME"]);
    assert_eq!(stdout(&out), "a  b $HOME\n");
    // Killed by a signal: 128 + N, as a shell says it.
    let out = clove(&d, &["exec", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    // A refusal names the field at fault: the working directory `cwd`.
    let out = clove(&d, &["exec", "--cwd", "/nonexistent/dir", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("working directory") && err.contains("`cwd`"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/dir"), "{err}");
    let mut c = d.client();
    let e = c.err(op::EXEC, json!({"command": "true", "cwd": "/etc/passwd"}));
    assert!(
        e.contains("working directory `cwd`") && e.contains("not a directory"),
        "{e}"
    );
}

/// Every `*.lock` file under `dir`.
fn lock_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(lock_files(&p));
        } else if p.extension().is_some_and(|x| x == "lock") {
            found.push(p);
        }
    }
    found
}

#[test]
fn status_metrics_and_audit_are_readable_and_stop_leaves_nothing_behind() {
    let mut d = Daemon::start();
    // A warning in the daemon's log: a frame with a bad magic.
    {
        use std::io::Write;
        let mut s = d.raw();
        s.write_all(&[0u8; 17]).unwrap();
        let _ = crate::harness::read_frame(&mut s);
    }
    let out = clove(&d, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        format!("(pid {})", d.pid()),
        format!("listening  {} (clove)", d.socket.display()),
        "agents     none".to_string(),
        "queues     completion 0/4096".to_string(),
        "store.db: 0 keys".to_string(),
        "WARN  conn=".to_string(),
        "bad frame magic".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from:\n{text}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&clove(&d, &["status", "--json"]).stdout).unwrap();
    assert_eq!(v["pid"], d.pid());
    assert!(v["uptime_ms"].as_u64().is_some(), "{v}");
    assert_eq!(v["recent_problems"][0]["level"], "WARN", "{v}");
    assert!(v["store"]["file_bytes"].as_u64().unwrap() > 0, "{v}");

    let out = clove(&d, &["metrics"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("cpu "), "{}", stdout(&out));
    assert!(stdout(&out).contains("(no agents)"), "{}", stdout(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&clove(&d, &["--json", "metrics"]).stdout).unwrap();
    assert!(v["system"]["memory"]["total"].as_u64().unwrap() > 0, "{v}");

    // The audit log: a denial (SECURITY) shows up, and -f prints the next one as it comes.
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": "minimal"}));
    c.err(op::EXEC, json!({"command": "true"}));
    let out = clove(&d, &["audit"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("SECURITY"), "{}", stdout(&out));
    let mut follow = Command::new(BIN)
        .args([
            "audit",
            "-f",
            "-n",
            "1",
            "--interval",
            "0.05",
            "--category",
            "security",
        ])
        .env("CLOVE_SOCKET", &d.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("SECURITY"), "{first}");
    c.err(op::READ, json!({"path": "/etc/hostname"}));
    let next = lines.next().unwrap().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        next.contains("SECURITY") && next.contains("FAILED"),
        "{next}"
    );

    // `clove stop`: a clean shutdown, waited for; socket and lock files are gone.
    let out = clove(&d, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("(pid {})", d.pid())),
        "{}",
        stdout(&out)
    );
    let st = d.child.as_mut().unwrap().try_wait().unwrap();
    assert!(
        st.is_some_and(|s| s.success()),
        "the daemon had exited cleanly: {st:?}"
    );
    d.child = None;
    assert!(!d.socket.exists());
    assert_eq!(lock_files(d.dir.path()), Vec::<std::path::PathBuf>::new());
    let out = clove(&d, &["stop"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn serve_on_a_busy_socket_creates_no_state_and_the_default_socket_is_per_user() {
    let d = Daemon::start();
    let state = d.path("never-made");
    let out = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("CLOVE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another"), "{}", stderr(&out));
    assert!(!state.exists(), "a refused daemon made {}", state.display());

    // No --socket, no $CLOVE_SOCKET: $XDG_RUNTIME_DIR/clove.sock, found by clients too.
    let runtime = d.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--state-dir"])
        .arg(d.path("state2"))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("CLOVE_SOCKET")
        .env_remove("CLOVE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(
        ready.contains(&format!("socket={}/clove.sock", runtime.display())),
        "{ready}"
    );
    let out = Command::new(BIN)
        .arg("ping")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("CLOVE_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("{}/clove.sock", runtime.display())));
    let out = Command::new(BIN)
        .arg("stop")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("CLOVE_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(serve.wait().unwrap().success());
    assert_eq!(
        std::fs::read_dir(&runtime).unwrap().count(),
        0,
        "socket and lock removed"
    );

    // Without $XDG_RUNTIME_DIR: /tmp/clove-UID/clove.sock, in a directory made 0700.
    let uid = nix::unistd::geteuid();
    let private = std::path::PathBuf::from(format!("/tmp/clove-{uid}"));
    if private.join("clove.sock").exists() {
        eprintln!("skipping the /tmp default: {} is in use", private.display());
        return;
    }
    let out = Command::new(BIN)
        .arg("ping")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("CLOVE_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("/tmp/clove-{uid}/clove.sock")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_daemon_log_tells_each_agents_story_and_the_cli_shows_why_it_failed() {
    let d = Daemon::with_config(
        "[agents]\nkill_grace_ms = 400\nbackoff_initial_ms = 20\nbackoff_cap_ms = 40\n",
    );
    let crash = crate::agent_support::script("crash.sh");
    let sleeper = crate::agent_support::script("sleeper.sh");
    // A crash loop that is given up after one restart.
    let out = clove(
        &d,
        &[
            "spawn",
            "loop",
            &crash,
            "--interpreter",
            "/bin/sh",
            "--no-sandbox",
            "--restart",
            "on-failure",
            "--max-restarts",
            "1",
            "--",
            "3",
            "0.2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // `clove logs -f` ends by itself once the agent is gone for good.
    let follow = Command::new(BIN)
        .args(["logs", "-f", "loop"])
        .env("CLOVE_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert_eq!(follow.status.code(), Some(0), "{}", stderr(&follow));
    assert!(
        stdout(&follow).contains("stopped for good: FAILED"),
        "{}",
        stdout(&follow)
    );
    assert!(
        stderr(&follow).contains("agent loop is FAILED: gave up after 1 restarts"),
        "{}",
        stderr(&follow)
    );
    let table = stdout(&clove(&d, &["agents"]));
    let row = table.lines().find(|l| l.contains("loop")).unwrap();
    assert!(
        row.contains("FAILED") && row.contains("gave up after 1 restarts"),
        "{table}"
    );
    assert!(row.contains("exit code 3"), "{table}");
    let logs = d.logs();
    for needle in [
        "name=loop: spawned, pid ",
        "name=loop: pid ",
        "exited: exited, exit code 3",
        "name=loop: restarting in ",
        "name=loop: FAILED: gave up after 1 restarts",
    ] {
        assert!(
            logs.contains(needle),
            "{needle:?} missing from the daemon's log:\n{logs}"
        );
    }

    // `clove spawn`, `clove agents` and the agent's own log name the same pid; a persistent
    // agent says so; `ps` shows the launcher without its JSON spec.
    let out = clove(
        &d,
        &[
            "spawn",
            "calm",
            &sleeper,
            "--interpreter",
            "/bin/sh",
            "--persist",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let spawned = stdout(&out);
    let pid: i64 = spawned
        .split("pid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let list: serde_json::Value =
        serde_json::from_slice(&clove(&d, &["agents", "--json"]).stdout).unwrap();
    let calm = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "calm")
        .unwrap();
    assert_eq!(calm["pid"], pid, "{list}");
    let table = stdout(&clove(&d, &["agents"]));
    let row = table.lines().find(|l| l.contains("calm")).unwrap();
    assert!(
        row.contains(&pid.to_string()) && row.contains("yes"),
        "{table}"
    );
    let own = stdout(&clove(&d, &["logs", "calm"]));
    assert!(own.contains(&format!("running: pid {pid}")), "{own}");
    let launcher = calm["supervisor_pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{launcher}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("__launch ") && !cmdline.contains('{'),
        "{cmdline}"
    );
    assert!(cmdline.len() < 200, "{cmdline}");
    let out = clove(&d, &["kill", "calm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let logs = d.logs();
    assert!(
        logs.contains(&format!("name=calm: pid {pid} killed by caller")),
        "{logs}"
    );
    let own = stdout(&clove(&d, &["logs", "calm"]));
    assert!(own.contains(&format!("pid {pid} exited: killed")), "{own}");
    // No spec file stays behind.
    let left: Vec<_> = std::fs::read_dir(d.state_dir.join("agents"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".launch-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn every_config_mistake_is_reported_in_one_run_in_file_order_and_check_config_prints_toml() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("clove.toml");
    // Six mistakes, the last in the file being one found only when values are checked.
    std::fs::write(
        &cfg,
        "# six mistakes\n[server]\nwokers = 4\n\n[limits]\nstate_max_keys = \"many\"\n\
         [permisions]\nclient_level = \"standard\"\n[agents]\nkill_grace = 100\n\
         [audit]\nlog_secrity = true\n[exec]\nshell = \"sh\"\n",
    )
    .unwrap();
    let cfg_s = cfg.display().to_string();
    let want = [
        format!("{cfg_s}:3: server.wokers: unknown key; did you mean `workers`?"),
        format!("{cfg_s}:6: limits.state_max_keys: invalid type: string \"many\", expected usize"),
        format!("{cfg_s}:7: permisions: unknown key; did you mean `permissions`?"),
        format!("{cfg_s}:10: agents.kill_grace: unknown key; did you mean `kill_grace_ms`?"),
        format!("{cfg_s}:12: audit.log_secrity: unknown key; did you mean `log_security`?"),
        format!("{cfg_s}:14: exec.shell: sh must be an absolute path"),
    ];
    for cmd in [
        &["check-config"][..],
        &["serve", "--socket", "/tmp/never-bound-by-clove.sock"][..],
    ] {
        let out = Command::new(BIN)
            .args(cmd)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{cmd:?}: {}", stderr(&out));
        let err = stderr(&out);
        let got: Vec<&str> = err.lines().skip(1).map(str::trim).collect();
        assert_eq!(got, want, "{cmd:?}:\n{err}");
    }
    // A valid file: the settings in effect as TOML, with the file named; the output reads
    // back as a valid config.
    std::fs::write(&cfg, "[server]\nworkers = 3\nsocket_mode = \"0660\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains(&format!("from {cfg_s}")), "{shown}");
    for line in [
        "[server]",
        "workers = 3",
        "socket_mode = \"0660\"",
        "[permissions.levels.standard]",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} missing:\n{shown}"
        );
    }
    assert!(
        !shown.contains("socket_mode: 420") && !shown.contains("OpenAi"),
        "{shown}"
    );
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &shown).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_example_config_in_the_repository_is_the_generated_one() {
    let out = Command::new(BIN)
        .args(["generate", "config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clove.toml"))
            .expect(
                "examples/clove.toml: write it with `clove generate config > examples/clove.toml`",
            );
    assert!(
        shipped == stdout(&out),
        "examples/clove.toml is out of date: run `cargo run -- generate config > examples/clove.toml`"
    );
}
