//! The daemon run by an ordinary user, the way most cluster users run it: their own binary,
//! their own state directory, no root. Driven through the CLI as that user, like a user's
//! shell would. (The test itself needs root, to become another user.)

use crate::agent_support::retry_text_busy;
use crate::harness::{BIN, wait_for};
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;
const T: Duration = Duration::from_secs(15);

/// A home directory owned by `nobody` with a copy of the binary (the build tree may not be
/// reachable for other users) and an agent script.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("clove-user")
            .tempdir_in("/tmp")
            .unwrap();
        let home = Home { dir };
        std::fs::copy(BIN, home.path("clove")).unwrap();
        std::fs::write(
            home.path("agent.sh"),
            "echo \"agent up uid=$(id -u) host=$(hostname)\"\nexec sleep 60\n",
        )
        .unwrap();
        for (p, mode) in [
            (home.dir.path().to_path_buf(), 0o700),
            (home.path("clove"), 0o755),
            (home.path("agent.sh"), 0o644),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        home
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `clove ARGS...` as nobody, with a user's plain environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.path("clove"));
        c.args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("CLOVE_SOCKET", self.path("clove.sock"))
            .env("CLOVE_STATE_DIR", self.path("state"))
            .current_dir(self.dir.path())
            .uid(NOBODY)
            // std drops root's supplementary groups when it sets the uid.
            .gid(NOBODY);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        retry_text_busy("clove", || c.output())
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "clove {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn serve(&self) -> Server {
        let mut serve = self.command(&["serve"]);
        serve
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = retry_text_busy("clove serve", || serve.spawn());
        let server = Server(child);
        wait_for("the daemon to answer", T, || {
            self.run(&["ping"]).status.success().then_some(())
        });
        server
    }
}

/// The daemon's process, stopped by its pid when dropped.
struct Server(Child);

impl Server {
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        self.0.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn owner_and_mode(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.mode() & 0o777)
}

#[test]
fn an_ordinary_user_runs_the_daemon_with_agents_and_durable_state() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let home = Home::new();
    let mut server = home.serve();
    // The socket and the state are the user's own, private.
    assert_eq!(owner_and_mode(&home.path("clove.sock")), (NOBODY, 0o600));
    assert_eq!(owner_and_mode(&home.path("state")).0, NOBODY);

    let out = home.ok(&["call", "store", r#"{"key": "run", "value": {"step": 1}}"#]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["success"], true, "{out}");

    // A sandboxed agent with a memory limit: without root the namespaces come from a user
    // namespace, and the limit from an rlimit when the cgroup tree is not the user's.
    let script = home.path("agent.sh").display().to_string();
    let out = home.ok(&[
        "spawn",
        "worker",
        &script,
        "--interpreter",
        "/bin/sh",
        "--memory",
        "256M",
    ]);
    assert!(out.contains("spawned worker"), "{out}");
    let list: Value = serde_json::from_str(&home.ok(&["agents", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "worker", "{list}");
    assert_eq!(list[0]["state"], "RUNNING", "{list}");
    // The full SPAWN reply tells how the sandbox was made.
    let spawn = serde_json::json!({"name": "probe", "script": script, "python": "/bin/sh",
        "limits": {"memory": "256M"}});
    let a: Value = serde_json::from_str(&home.ok(&["call", "spawn", &spawn.to_string()])).unwrap();
    let iso = &a["isolation"];
    let namespaces: Vec<&str> = iso["namespaces"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let userns = namespaces.contains(&"user");
    if userns {
        assert!(
            namespaces.contains(&"pid") && namespaces.contains(&"net"),
            "{iso}"
        );
    } else {
        // Unprivileged user namespaces are disabled on this kernel: the sandbox says so.
        assert!(
            iso["degraded_reason"]
                .as_str()
                .unwrap_or("")
                .contains("namespaces"),
            "{iso}"
        );
    }
    let via = iso["limits"]["memory"]["via"].as_str().unwrap_or("");
    assert!(via == "cgroup" || via == "rlimit", "{iso}");
    let log = home.path("state/agents/probe.log");
    let line = wait_for("the agent's first line in its log", T, || {
        std::fs::read_to_string(&log).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("agent up"))
                .map(String::from)
        })
    });
    assert!(line.contains(&format!("uid={NOBODY}")), "{line}");
    if userns {
        assert!(line.contains("host=clove-probe"), "own hostname: {line}");
    }
    assert_eq!(owner_and_mode(&log).0, NOBODY);

    // A clean stop takes the agent along and removes the socket.
    let pids = [list[0]["pid"].as_i64().unwrap(), a["pid"].as_i64().unwrap()];
    assert!(server.stop().success());
    assert!(!home.path("clove.sock").exists());
    for pid in pids {
        wait_for("the agents to be gone", T, || {
            (!crate::agent_support::alive(pid)).then_some(())
        });
    }

    // What was stored is still there after a restart, still as the same user.
    let mut server = home.serve();
    let out = home.ok(&["call", "fetch", r#"{"key": "run"}"#]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["value"], serde_json::json!({"step": 1}), "{out}");
    assert!(server.stop().success());
}

/// An ordinary user's sandboxed agent (in a user namespace) runs EXEC inside its sandbox: the
/// command, started by the agent through `clove call exec`, is in the agent's pid namespace
/// and holds no capability, like the agent itself.
#[test]
fn an_ordinary_users_sandboxed_agent_runs_exec_inside_its_sandbox() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let home = Home::new();
    let probe = home.path("exec.sh");
    let out = home.path("exec.out");
    std::fs::write(
        &probe,
        format!(
            "readlink /proc/self/ns/pid > {out}.agent\n\
             {clove} call exec '{{\"command\": \"readlink /proc/self/ns/pid; grep -E \
             \\\"^(CapEff|CapBnd|NoNewPrivs)\\\" /proc/self/status\"}}' > {out}.tmp\n\
             mv {out}.tmp {out}\n\
             exec sleep 60\n",
            out = out.display(),
            clove = home.path("clove").display(),
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&probe, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut server = home.serve();
    let spawn = serde_json::json!({"name": "execer", "script": probe, "python": "/bin/sh"});
    let a: Value = serde_json::from_str(&home.ok(&["call", "spawn", &spawn.to_string()])).unwrap();
    let reply: Value = wait_for("the agent's EXEC reply", T, || {
        serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()
    });
    assert_eq!(reply["exit_code"], 0, "{reply}");
    let stdout = reply["stdout"].as_str().unwrap_or_default();
    let own = std::fs::read_to_string(format!("{}.agent", out.display())).unwrap();
    let namespaces = a["isolation"]["namespaces"].to_string();
    if namespaces.contains("\"pid\"") {
        assert!(stdout.starts_with(own.trim()), "{stdout} vs {own}");
        for line in ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000"] {
            assert!(stdout.contains(line), "{stdout}");
        }
        assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    } else {
        eprintln!("no pid namespace here (unprivileged user namespaces disabled): {namespaces}");
    }
    assert!(server.stop().success());
}
