//! Test harness: runs the real `clove` binary on a temporary socket and state directory and
//! talks to it over the socket the way a user's program would.
//!
//! Frames are built and parsed here by hand (not with the crate's codec), so a codec bug cannot
//! hide itself by being symmetric.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const MAGIC: u32 = 0x4147_4E54;
pub const BIN: &str = env!("CARGO_BIN_EXE_clove");

/// Encodes one frame: `<IIBQ` header + payload.
pub fn frame(agent_id: u32, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + payload.len());
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.extend_from_slice(&agent_id.to_le_bytes());
    v.push(op);
    v.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A reply frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub magic: u32,
    pub agent_id: u32,
    pub op: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// Reads one frame from a blocking stream.
pub fn read_frame(s: &mut impl Read) -> std::io::Result<Frame> {
    let mut h = [0u8; 17];
    s.read_exact(&mut h)?;
    let magic = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let agent_id = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let op = h[8];
    let len = u64::from_le_bytes(h[9..17].try_into().unwrap());
    assert!(len < (1 << 31), "absurd reply length {len}");
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)?;
    Ok(Frame {
        magic,
        agent_id,
        op,
        payload,
    })
}

/// `clove check-config --config FILE`: whether the file passed, and what it printed on stderr.
pub fn check_config_file(path: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("cannot run clove check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`check_config_file`] on `toml` written to a temporary file.
pub fn check_config(toml: &str) -> (bool, String) {
    let dir = tempfile::Builder::new()
        .prefix("clove-config")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("clove.toml");
    std::fs::write(&path, toml).unwrap();
    check_config_file(&path)
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Environment variables that configure an LLM backend or a proxy, removed from every test
/// daemon's environment unless the test sets them.
pub const LLM_AND_PROXY_ENV: [&str; 13] = [
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_BASE_URL",
    "GEMINI_MODEL",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A running daemon in its own temporary directory.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Extra environment variables for the daemon process.
    pub env: Vec<(String, String)>,
    /// The daemon's `clove: ready ...` line (listener addresses are in it).
    pub ready: String,
}

impl Daemon {
    /// Starts a daemon with built-in defaults.
    pub fn start() -> Daemon {
        Daemon::with_config("")
    }

    /// Starts a daemon with the given TOML config.
    pub fn with_config(toml: &str) -> Daemon {
        Daemon::with_config_env(toml, &[])
    }

    /// Starts a daemon with the given TOML config and extra environment variables.
    pub fn with_config_env(toml: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("clove-test")
            .tempdir_in("/tmp")
            .unwrap();
        // A root daemon runs sandboxed agents as `nobody`: they must reach the socket, read
        // the scripts tests write here and write their reports here, as they would in /tmp.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let socket = dir.path().join("clove.sock");
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("clove.toml");
        std::fs::write(&config_path, toml).unwrap();
        let log_path = dir.path().join("daemon.log");
        let mut d = Daemon {
            child: None,
            dir,
            socket,
            state_dir,
            config_path,
            log_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ready: String::new(),
        };
        d.spawn()
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
        d
    }

    /// The command line that starts this daemon (for tests that start more of them).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env("CLOVE_LOG", "debug")
            .env_remove("CLOVE_SOCKET")
            .env_remove("CLOVE_CONFIG")
            // A router address from the developer's shell must not become the tests' choice.
            .env_remove("CODESWARM_ROUTER_HOST")
            .env_remove("CODESWARM_ROUTER_PORT");
        // The developer's own model keys and proxies must not leak into tests.
        for var in LLM_AND_PROXY_ENV {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts (or restarts) the process and waits for its ready line.
    pub fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {BIN}: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !ready_sent && line.starts_with("clove: ready") {
                    let _ = tx.send(line.clone());
                    ready_sent = true;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(20));
        let Ok(ready) = ready else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no ready line; log:\n{}", self.logs()));
        };
        self.ready = ready;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A protocol client.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// A raw connected socket.
    pub fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM, then wait (SIGKILL after 10 s). Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let st = child.wait().unwrap();
                panic!(
                    "daemon ignored SIGTERM for 10s ({st}); log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap (a crash).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// True while the process is running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Resident set size of the daemon in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking protocol client with assertion helpers.
pub struct Client {
    pub stream: UnixStream,
    /// The id the daemon reports in reply headers.
    pub id: u32,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client { stream, id: 0 }
    }

    /// Sends raw payload bytes for `op`; returns the reply frame.
    pub fn call_raw(&mut self, op: u8, payload: &[u8]) -> Frame {
        self.stream.write_all(&frame(self.id, op, payload)).unwrap();
        let f =
            read_frame(&mut self.stream).unwrap_or_else(|e| panic!("no reply to op {op:#x}: {e}"));
        assert_eq!(f.magic, MAGIC, "reply magic");
        assert_eq!(f.op, op, "reply op must echo the request op");
        self.id = f.agent_id;
        f
    }

    /// Sends a JSON request; returns the JSON reply.
    pub fn call(&mut self, op: u8, request: Value) -> Value {
        let payload = serde_json::to_vec(&request).unwrap();
        self.call_raw(op, &payload).json()
    }

    /// Like `call`, asserting `success: true`.
    pub fn ok(&mut self, op: u8, request: Value) -> Value {
        let v = self.call(op, request.clone());
        assert_eq!(
            v["success"],
            Value::Bool(true),
            "op {op:#x} {request} should succeed, got {v}"
        );
        v
    }

    /// Like `call`, asserting `success: false`; returns the error text.
    pub fn err(&mut self, op: u8, request: Value) -> String {
        let v = self.call(op, request.clone());
        assert_eq!(
            v["success"],
            Value::Bool(false),
            "op {op:#x} {request} should fail, got {v}"
        );
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error reply without an error string: {v}"))
            .to_string()
    }

    /// This connection's id as the daemon knows it (learned via HELLO if not yet known).
    pub fn my_id(&mut self) -> u32 {
        if self.id == 0 {
            self.ok(op::HELLO, serde_json::json!({}));
        }
        self.id
    }
}

/// Op codes, spelled out here rather than imported, as a client written elsewhere would.
pub mod op {
    pub const NOOP: u8 = 0x00;
    pub const THINK: u8 = 0x01;
    pub const EXEC: u8 = 0x02;
    pub const READ: u8 = 0x03;
    pub const WRITE: u8 = 0x04;
    pub const SPAWN: u8 = 0x10;
    pub const KILL: u8 = 0x11;
    pub const LIST: u8 = 0x12;
    pub const PAUSE: u8 = 0x14;
    pub const RESUME: u8 = 0x15;
    pub const SEND: u8 = 0x20;
    pub const RECV: u8 = 0x21;
    pub const BROADCAST: u8 = 0x22;
    pub const REGISTER: u8 = 0x23;
    pub const STORE: u8 = 0x30;
    pub const FETCH: u8 = 0x31;
    pub const DELETE: u8 = 0x32;
    pub const KEYS: u8 = 0x33;
    pub const GET_PERMS: u8 = 0x40;
    pub const SET_PERMS: u8 = 0x41;
    pub const HTTP: u8 = 0x50;
    pub const SUBSCRIBE: u8 = 0x60;
    pub const UNSUBSCRIBE: u8 = 0x61;
    pub const POLL_EVENTS: u8 = 0x62;
    pub const EMIT: u8 = 0x63;
    pub const GET_AUDIT_LOG: u8 = 0x76;
    pub const SET_AUDIT_CONFIG: u8 = 0x77;
    pub const ASYNC_POLL: u8 = 0x80;
    pub const METRICS_SYSTEM: u8 = 0xC0;
    pub const METRICS_AGENT: u8 = 0xC1;
    pub const METRICS_ALL_AGENTS: u8 = 0xC2;
    pub const METRICS_CGROUP: u8 = 0xC3;
    pub const LLM_REPORT: u8 = 0xF0;
    pub const HELLO: u8 = 0xFE;
    pub const EXIT: u8 = 0xFF;
}
