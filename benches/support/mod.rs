//! What the benchmarks share: a `clove serve` (or a Node helper server) of their own, stopped
//! when dropped; a router client over JSON lines; percentiles and sizes.
//!
//! Each benchmark includes this file with `#[path = "support/mod.rs"] mod support;` and uses
//! the part it needs.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server process of the benchmark's own: stopped (SIGTERM, then reaped) when dropped.
pub struct Server {
    pub child: Child,
    /// The first line it printed: clove's ready line, or a Node helper's `ready PORT`.
    pub ready: String,
    /// clove's config, socket and state (`None` for a Node helper).
    pub dir: Option<tempfile::TempDir>,
}

impl Server {
    /// `clove serve` with `config` (TOML; `{dir}` in it stands for the fresh directory under
    /// /tmp that holds its config, socket and state), logging warnings only, with `env` added
    /// to its environment; returns once it is ready.
    pub fn clove(prefix: &str, config: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("temp dir");
        let path = dir.path().join("clove.toml");
        let config = config.replace("{dir}", &dir.path().to_string_lossy());
        std::fs::write(&path, config).expect("write the config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clove"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--socket")
            .arg(dir.path().join("clove.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("CLOVE_LOG", "warn")
            .envs(env.iter().copied());
        Server::spawn(cmd, Some(dir))
    }

    /// A Node helper of `tests/relay_clients/` (`floor.js`, `anchor.js`) on a port the kernel
    /// picks.
    pub fn node(script: &str, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new("node");
        cmd.current_dir(relay_clients_dir())
            .arg(script)
            .arg("0")
            .envs(env.iter().copied());
        Server::spawn(cmd, None)
    }

    fn spawn(mut cmd: Command, dir: Option<tempfile::TempDir>) -> Server {
        let what = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e} (scripts/test.sh installs node)"));
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("the ready line");
        assert!(!ready.is_empty(), "{what} stopped before it was ready");
        Server { child, ready, dir }
    }

    /// A listener's address from clove's ready line (`router`, `relay`).
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {name} listener in {:?}", self.ready))
    }

    /// A Node helper's address (its ready line is `ready PORT`).
    pub fn node_addr(&self) -> SocketAddr {
        let port: u16 = self
            .ready
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{:?}", self.ready));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Its resident set size.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

pub fn relay_clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/relay_clients")
}

/// A router client written by hand: `codeswarm.router.v1` JSON lines over a TcpStream.
pub struct RouterClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    n: u64,
}

impl RouterClient {
    /// Connects; a read waits at most `wait`.
    pub fn connect(addr: SocketAddr, wait: Duration) -> RouterClient {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(wait)).expect("timeout");
        RouterClient {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
            n: 0,
        }
    }

    /// Sends a command; returns its request id.
    pub fn send(&mut self, command: &str, payload: Value) -> String {
        self.n += 1;
        let rid = format!("b{}", self.n);
        let line = json!({"protocol": "codeswarm.router.v1", "command": command,
                          "request_id": rid, "payload": payload});
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        rid
    }

    /// The next event.
    pub fn next(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read");
        assert!(line.ends_with('\n'), "the router closed the connection");
        serde_json::from_str(&line).expect("JSON line")
    }

    /// The first event `pred` accepts (a refusal of any command is a failure).
    pub fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next();
            if v["event"] == "command_rejected" {
                panic!("refused: {v}");
            }
            if pred(&v) {
                return v;
            }
        }
    }

    /// Launches a swarm of `nodes` with `payload`'s other fields; returns its id.
    pub fn launch(&mut self, nodes: u32, mut payload: Value) -> String {
        payload["nodes"] = json!(nodes);
        let rid = self.send("swarm_launch", payload);
        let v = self
            .until(|v| v["event"] == "swarm_launched" && v["data"]["request_id"] == rid.as_str());
        v["data"]["swarm_id"]
            .as_str()
            .expect("swarm id")
            .to_string()
    }

    pub fn terminate(&mut self, swarm: &str, force: bool) {
        let rid = self.send(
            "swarm_terminate",
            json!({"swarm_id": swarm, "terminate_params": {"force": force}}),
        );
        self.until(|v| v["event"] == "swarm_terminated" && v["data"]["request_id"] == rid.as_str());
    }
}

/// The `p` quantile (nearest rank) of sorted durations, in milliseconds; 0 for none.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// A size from the environment, else `default`.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises the open-files limit to its hard limit (thousands of connections).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
