//! GET_PERMS, SET_PERMS, LLM_REPORT, and permission checks on READ, WRITE and EXEC: lowering is
//! one-way, managing others needs the manage right, paths are checked after resolution.

use crate::agent_support::{list, script};
use crate::harness::{Daemon, frame, op, read_frame};
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

fn level(c: &mut crate::harness::Client) -> Value {
    c.ok(op::GET_PERMS, json!({}))["level"].clone()
}

#[test]
fn clients_start_unrestricted_with_every_field() {
    let d = Daemon::start();
    let mut c = d.client();
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(p["level"], "unrestricted");
    let perms = &p["permissions"];
    for f in [
        "can_exec",
        "can_read",
        "can_write",
        "can_think",
        "can_spawn",
        "can_http",
        "can_manage",
    ] {
        assert_eq!(perms[f], true, "{f}");
    }
    for f in ["read", "write", "blocked"] {
        assert!(perms["filesystem"][f].is_array(), "filesystem.{f}");
    }
    for f in ["exec", "blocked_commands", "network", "http_methods"] {
        assert!(perms[f].is_array(), "{f}");
    }
    for f in ["max_tokens", "max_calls", "tokens_used", "calls_made"] {
        assert!(perms["llm"][f].is_u64(), "llm.{f}");
    }
    assert!(perms["max_exec_time_ms"].is_u64());
}

#[test]
fn lowering_is_one_way() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": "standard"}));
    assert_eq!(level(&mut c), "standard");
    let e = c.err(op::SET_PERMS, json!({"level": "unrestricted"}));
    assert!(e.contains("never raise"), "{e}");
    c.ok(op::SET_PERMS, json!({"permissions": {"can_exec": false}}));
    assert_eq!(level(&mut c), "custom");
    let e = c.err(op::SET_PERMS, json!({"permissions": {"can_exec": true}}));
    assert!(e.contains("never raise"), "{e}");
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"write": ["/**"]}}}),
    );
    assert!(e.contains("never raise"), "{e}");
    // Still within: a narrower write list.
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"write": ["/tmp/narrow/**"]}}}),
    );
    c.ok(op::SET_PERMS, json!({"level": "minimal"}));
    let e = c.err(op::SET_PERMS, json!({"level": "readonly"}));
    assert!(e.contains("never raise"), "{e}");
    // What it lost is really gone.
    let e = c.err(op::EXEC, json!({"command": "true"}));
    assert!(e.contains("permission denied"), "{e}");
}

#[test]
fn managing_others_needs_the_manage_right_and_cannot_exceed_your_own() {
    let d = Daemon::start();
    let mut boss = d.client();
    let mut worker = d.client();
    let wid = worker.my_id();
    let bid = boss.my_id();
    boss.ok(op::SET_PERMS, json!({"agent_id": wid, "level": "readonly"}));
    assert_eq!(level(&mut worker), "readonly");
    let e = worker.err(op::SET_PERMS, json!({"level": "standard"}));
    assert!(e.contains("never raise"), "{e}");
    let e = worker.err(op::SET_PERMS, json!({"agent_id": bid, "level": "minimal"}));
    assert!(e.contains("manage right"), "{e}");
    let e = worker.err(op::GET_PERMS, json!({"agent_id": bid}));
    assert!(e.contains("manage right"), "{e}");
    // The manager can restore what it holds itself.
    boss.ok(op::SET_PERMS, json!({"agent_id": wid, "level": "standard"}));
    assert_eq!(level(&mut worker), "standard");
    let theirs = boss.ok(op::GET_PERMS, json!({"agent_id": wid}));
    assert_eq!(theirs["level"], "standard");
    // A manager that lowered itself cannot hand out more than it now holds.
    boss.ok(op::SET_PERMS, json!({"level": "standard"}));
    let e = boss.err(
        op::SET_PERMS,
        json!({"agent_id": wid, "level": "unrestricted"}),
    );
    assert!(e.contains("manage right"), "{e}");
}

#[test]
fn set_perms_errors() {
    let d = Daemon::start();
    let mut c = d.client();
    assert!(
        c.err(op::SET_PERMS, json!({"level": "root"}))
            .contains("unknown level")
    );
    assert!(
        c.err(op::SET_PERMS, json!({}))
            .contains("nothing to change")
    );
    assert!(
        c.err(
            op::SET_PERMS,
            json!({"agent_id": 987654, "level": "minimal"})
        )
        .contains("987654")
    );
    let e = c.err(op::SET_PERMS, json!({"permissions": {"can_fly": true}}));
    assert!(e.contains("can_fly"), "{e}");
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"read": ["relative/**"]}}}),
    );
    assert!(e.contains("absolute"), "{e}");
    assert_eq!(
        level(&mut c),
        "unrestricted",
        "failed changes change nothing"
    );
}

#[test]
fn paths_are_checked_after_resolving_dots_and_symlinks() {
    let d = Daemon::start();
    let root = d.path("fs");
    let allowed = root.join("allowed");
    let outside = root.join("outside");
    std::fs::create_dir_all(allowed.join("secret")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("file.txt"), "outside").unwrap();
    std::fs::write(allowed.join("ok.txt"), "inside").unwrap();
    std::fs::write(allowed.join("secret/key"), "k").unwrap();
    std::os::unix::fs::symlink(outside.join("file.txt"), allowed.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("dirlink")).unwrap();
    let a = allowed.display().to_string();
    let mut c = d.client();
    c.ok(
        op::SET_PERMS,
        json!({"level": "standard", "permissions": {"filesystem": {
            "read": [format!("{a}/**")],
            "write": [format!("{a}/**")],
            "blocked": [format!("{a}/secret/**")],
        }}}),
    );
    assert_eq!(
        c.ok(op::READ, json!({"path": format!("{a}/ok.txt")}))["content"],
        "inside"
    );
    let denied = [
        format!("{a}/../outside/file.txt"),
        format!("{a}/link.txt"),
        format!("{a}/dirlink/file.txt"),
        format!("{a}/secret/key"),
        format!("{a}/secret/../secret/key"),
    ];
    for p in &denied {
        let e = c.err(op::READ, json!({"path": p}));
        assert!(e.contains("permission denied"), "READ {p}: {e}");
    }
    for p in &denied {
        let e = c.err(op::WRITE, json!({"path": p, "content": "x"}));
        assert!(e.contains("permission denied"), "WRITE {p}: {e}");
    }
    let e = c.err(
        op::WRITE,
        json!({"path": format!("{a}/dirlink/new.txt"), "content": "x"}),
    );
    assert!(e.contains("permission denied"), "{e}");
    assert!(!outside.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("file.txt")).unwrap(),
        "outside"
    );
    c.ok(
        op::WRITE,
        json!({"path": format!("{a}/new.txt"), "content": "fine"}),
    );
    assert_eq!(
        std::fs::read_to_string(allowed.join("new.txt")).unwrap(),
        "fine"
    );
}

#[test]
fn standard_level_defaults_protect_system_files_and_the_state_dir() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": "standard"}));
    for p in ["/etc/shadow", "/etc/sudoers"] {
        let e = c.err(op::READ, json!({"path": p}));
        assert!(
            e.contains("permission denied") || e.contains("cannot open"),
            "{p}: {e}"
        );
    }
    let e = c.err(
        op::WRITE,
        json!({"path": "/etc/clove-test-should-not-exist", "content": ""}),
    );
    assert!(e.contains("permission denied"), "{e}");
    std::fs::write(d.state_dir.join("probe"), "state").unwrap();
    let e = c.err(op::READ, json!({"path": d.state_dir.join("probe")}));
    assert!(e.contains("permission denied"), "{e}");
}

#[test]
fn command_rules_and_blocked_events() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut watcher = d.client();
    watcher.ok(op::SUBSCRIBE, json!({"event_types": ["SYSCALL_BLOCKED"]}));
    c.ok(op::SET_PERMS, json!({"level": "standard"}));
    assert_eq!(
        c.ok(op::EXEC, json!({"command": "echo fine"}))["stdout"],
        "fine\n"
    );
    for cmd in [
        "sudo true",
        "echo a; sudo true",
        "echo $(dd if=/dev/null)",
        "/usr/bin/sudo -n true",
    ] {
        let e = c.err(op::EXEC, json!({"command": cmd}));
        assert!(e.contains("permission denied"), "{cmd}: {e}");
    }
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"exec": ["echo", "true"]}}),
    );
    c.ok(op::EXEC, json!({"command": "echo ok && true"}));
    let e = c.err(op::EXEC, json!({"command": "echo ok | cat"}));
    assert!(e.contains("\"cat\""), "{e}");
    let ev = watcher.ok(op::POLL_EVENTS, json!({"max": 100}));
    let events = ev["events"].as_array().unwrap();
    assert_eq!(events.len(), 5, "{ev}");
    assert_eq!(events[0]["type"], "SYSCALL_BLOCKED");
    assert_eq!(events[0]["data"]["agent_id"], c.id);
    assert_eq!(events[0]["data"]["op"], "EXEC");
    assert!(
        events[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("sudo")
    );
    c.ok(op::SET_PERMS, json!({"level": "readonly"}));
    assert!(
        c.err(op::EXEC, json!({"command": "echo"}))
            .contains("can_exec")
    );
    assert!(
        c.err(op::WRITE, json!({"path": "/tmp/x", "content": ""}))
            .contains("can_write")
    );
}

#[test]
fn llm_report_charges_usage_against_the_quota() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"llm": {"max_tokens": 100, "max_calls": 10}}}),
    );
    let r = c.ok(op::LLM_REPORT, json!({"tokens": 60, "success": true}));
    assert_eq!(r["tokens"], 60);
    assert_eq!(r["quota_exceeded"], false);
    let r = c.ok(op::LLM_REPORT, json!({"tokens": 50}));
    assert_eq!(r["quota_exceeded"], true);
    assert_eq!(r["tokens_used"], 110);
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(p["permissions"]["llm"]["tokens_used"], 110);
    assert_eq!(p["permissions"]["llm"]["calls_made"], 2);
    // Usage cannot be reset through SET_PERMS.
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"llm": {"max_tokens": 100, "tokens_used": 0}}}),
    );
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(p["permissions"]["llm"]["tokens_used"], 110);
    assert!(
        c.err(op::LLM_REPORT, json!({"tokens": -5}))
            .contains("`tokens`")
    );
    assert!(c.err(op::LLM_REPORT, json!({})).contains("tokens"));
}

/// Rules that a backtracking matcher needs time exponential in the number of stars for (and
/// stack in their length), installed by a caller on itself: adding blocked rules is lowering,
/// so any caller may. Each check must still answer at once, and other callers must be served.
#[test]
fn pathological_rules_are_checked_promptly_and_others_are_served() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut other = d.client();
    let cmd_rule = format!("{}#", "*a".repeat(150));
    let path_rule = format!("/**{}#", "a**".repeat(150));
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {
            "blocked_commands": [cmd_rule],
            "filesystem": {"blocked": [path_rule.clone()]},
        }}),
    );
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(
        p["permissions"]["filesystem"]["blocked"],
        json!([path_rule]),
        "{p}"
    );
    let dir = d.path(&"a".repeat(200));
    std::fs::create_dir(&dir).unwrap();
    let plain = dir.join("a".repeat(200));
    let hashed = dir.join(format!("{}#", "a".repeat(200)));
    std::fs::write(&plain, "fine").unwrap();
    std::fs::write(&hashed, "hidden").unwrap();
    let limit = Duration::from_secs(5);
    c.stream.set_read_timeout(Some(limit * 2)).unwrap();
    let prog = "a".repeat(300);
    let requests = [
        (op::EXEC, json!({"command": prog.clone()})),
        (op::EXEC, json!({"command": format!("{prog}#")})),
        (op::READ, json!({"path": plain})),
        (op::READ, json!({"path": hashed})),
    ];
    let mut replies = Vec::new();
    for (code, req) in &requests {
        let started = Instant::now();
        c.stream
            .write_all(&frame(0, *code, &serde_json::to_vec(req).unwrap()))
            .unwrap();
        // Another client is served while the check runs.
        assert_eq!(other.call_raw(op::NOOP, b"ping").payload, b"ping");
        assert!(
            started.elapsed() < limit,
            "NOOP took {:?} beside {req}",
            started.elapsed()
        );
        let reply = read_frame(&mut c.stream)
            .unwrap_or_else(|e| panic!("no reply to {req} within {:?}: {e}", limit * 2));
        assert!(
            started.elapsed() < limit,
            "{req} took {:?}",
            started.elapsed()
        );
        replies.push(reply.json());
    }
    // Not blocked: the program does not exist, so the shell says so.
    assert!(
        !replies[0].to_string().contains("permission denied"),
        "{}",
        replies[0]
    );
    assert_eq!(replies[0]["exit_code"], 127, "{}", replies[0]);
    for r in [&replies[1], &replies[3]] {
        assert_eq!(r["success"], false, "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(
            e.contains("permission denied") && e.contains("blocked by rule"),
            "{e}"
        );
    }
    assert_eq!(replies[2]["content"], "fine", "{}", replies[2]);
}

#[test]
fn over_long_permission_rules_are_refused_naming_the_key() {
    let d = Daemon::with_config("[limits]\nmax_permission_rule_bytes = 16\n");
    let mut c = d.client();
    let long = "/0123456789abcde"; // 16 bytes
    let too_long = format!("{long}f");
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"blocked": ["/a", too_long]}}}),
    );
    assert!(
        e.contains("entry 1 of `filesystem.blocked`")
            && e.contains("is 17 bytes, at most 16")
            && e.contains("limits.max_permission_rule_bytes"),
        "{e}"
    );
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"blocked_commands": ["x".repeat(17)]}}),
    );
    assert!(
        e.contains("`blocked_commands`") && e.contains("limits.max_permission_rule_bytes"),
        "{e}"
    );
    let e = c.err(
        op::SPAWN,
        json!({"name": "p", "script": script("sleeper.sh"), "python": "/bin/sh",
               "permissions": {"exec": ["y".repeat(17)]}}),
    );
    assert!(e.contains("limits.max_permission_rule_bytes"), "{e}");
    assert!(list(&mut c).is_empty());
    assert_eq!(level(&mut c), "unrestricted", "refusals change nothing");
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"blocked": [long]}}}),
    );
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(p["permissions"]["filesystem"]["blocked"], json!([long]));

    // The default is 4096 bytes.
    let d = Daemon::start();
    let mut c = d.client();
    let rule = |n: usize| format!("/{}", "r".repeat(n - 1));
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"blocked": [rule(4097)]}}}),
    );
    assert!(
        e.contains("is 4097 bytes, at most 4096 (limits.max_permission_rule_bytes)"),
        "{e}"
    );
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"blocked": [rule(4096)]}}}),
    );
}

#[test]
fn zero_and_absurd_rule_lengths_are_refused_at_start() {
    for value in ["0", "1000000"] {
        let (ok, text) = crate::harness::check_config(&format!(
            "[limits]\nmax_permission_rule_bytes = {value}\n"
        ));
        assert!(!ok, "{value} accepted");
        assert!(
            text.contains("limits.max_permission_rule_bytes"),
            "{value}: {text}"
        );
    }
}

#[test]
fn commands_are_refused_by_the_program_they_resolve_to() {
    // `standard` blocks dd. Writing it another way, or running it through a symlink with an
    // innocent name, does not get past the rule; the same link name to an allowed program does.
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": "standard"}));
    let dir = d.path("bin");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/dd", dir.join("copytool")).unwrap();
    std::os::unix::fs::symlink("/bin/echo", dir.join("say")).unwrap();
    for cmd in [
        "./copytool --version",
        "sub/../copytool --version",
        "echo start; ./copytool --version",
        "/usr/bin/../bin/dd --version",
    ] {
        let e = c.err(op::EXEC, json!({"command": cmd, "cwd": dir}));
        assert!(e.contains("permission denied"), "{cmd}: {e}");
        assert!(e.contains("dd"), "{cmd}: {e}");
    }
    let r = c.ok(op::EXEC, json!({"command": "./say hello", "cwd": dir}));
    assert_eq!(r["stdout"], "hello\n");
}
