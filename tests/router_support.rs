//! Helpers for the router tests: a daemon with its router on a free loopback port, and a
//! client of `codeswarm.router.v1` written by hand (JSON lines over a plain `TcpStream`, not
//! the crate's codec), the way Codeswarm's own CLI talks to the router.

#![allow(dead_code)]

use crate::harness::{Daemon, op};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const PROTOCOL: &str = "codeswarm.router.v1";
/// The longest any single wait in these tests may take.
pub const T: Duration = Duration::from_secs(20);

/// A daemon whose router listens on a port the kernel picks; `extra` is more TOML for the
/// `[router]` section (and `[[router.providers]]` after it).
pub fn router_daemon(extra: &str) -> (Daemon, String) {
    router_daemon_env(extra, &[])
}

pub fn router_daemon_env(extra: &str, env: &[(&str, &str)]) -> (Daemon, String) {
    let d = Daemon::with_config_env(&format!("[router]\nlisten = \"127.0.0.1:0\"\n{extra}"), env);
    let addr = router_addr(&d);
    (d, addr)
}

/// The router's address, from HELLO's `services.router` on the Clove socket.
pub fn router_addr(d: &Daemon) -> String {
    let v = d.client().ok(op::HELLO, json!({}));
    v["services"]["router"]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("no router listener in HELLO: {v}"))
        .to_string()
}

/// The router's counters from HELLO.
pub fn router_stats(d: &Daemon) -> Value {
    d.client().ok(op::HELLO, json!({}))["services"]["router"].clone()
}

/// A router client.
pub struct Rc {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Every event received so far, in order.
    pub seen: Vec<Value>,
    next: u64,
    /// Bytes after the last `\n` when the stream ended (a line the router never finished).
    pub eof: bool,
}

impl Rc {
    pub fn connect(addr: &str) -> Rc {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        Rc {
            stream,
            buf: Vec::new(),
            seen: Vec::new(),
            next: 0,
            eof: false,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_line(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends a command; returns its request id.
    pub fn command(&mut self, name: &str, payload: Value) -> String {
        self.next += 1;
        let rid = format!("req-{}-{}", std::process::id(), self.next);
        let line = json!({"protocol": PROTOCOL, "type": "command", "command": name,
                          "request_id": rid, "payload": payload});
        self.send_line(&line.to_string());
        rid
    }

    /// Reads until one more complete line arrived (returns it parsed), or the deadline.
    pub fn read_event(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let v: Value =
                    serde_json::from_slice(&line[..line.len() - 1]).unwrap_or_else(|e| {
                        panic!(
                            "router sent a line that is not JSON ({e}): {:?}",
                            String::from_utf8_lossy(&line)
                        )
                    });
                assert_eq!(v["protocol"], PROTOCOL, "{v}");
                assert_eq!(v["type"], "event", "{v}");
                assert!(
                    v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                    "{v}"
                );
                self.seen.push(v.clone());
                return Some(v);
            }
            if self.eof {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.eof = true,
            }
        }
    }

    /// The first event (already seen or still to come) matching `pred`.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + T;
        while let Some(v) = self.read_event(deadline) {
            if pred(&v) {
                return v;
            }
        }
        panic!(
            "timed out waiting for {what}; got {} events, last: {:?}",
            self.seen.len(),
            self.seen.last()
        );
    }

    /// The event `name` answering `rid`; panics on a `command_rejected` for it.
    pub fn answer(&mut self, rid: &str, name: &str) -> Value {
        let v = self.wait(&format!("{name} for {rid}"), |v| {
            v["data"]["request_id"] == rid
                && (v["event"] == name || v["event"] == "command_rejected")
        });
        assert_eq!(v["event"], name, "{rid} was answered with {v}");
        v
    }

    /// The reason of the `command_rejected` answering `rid`.
    pub fn rejected(&mut self, rid: &str) -> String {
        let v = self.wait(&format!("an answer to {rid}"), |v| {
            v["data"]["request_id"] == rid
        });
        assert_eq!(
            v["event"], "command_rejected",
            "{rid} should be rejected, got {v}"
        );
        v["data"]["reason"].as_str().unwrap().to_string()
    }

    /// Sends a command and waits for its `name` answer.
    pub fn ask(&mut self, command: &str, payload: Value, name: &str) -> Value {
        let rid = self.command(command, payload);
        self.answer(&rid, name)
    }

    /// Sends `inject` with `payload`; returns its request id and, from its `inject_ack`, the
    /// injection id.
    pub fn inject_acked(&mut self, payload: Value) -> (String, String) {
        let rid = self.command("inject", payload);
        let inj = self.answer(&rid, "inject_ack")["data"]["injection_id"]
            .as_str()
            .unwrap()
            .to_string();
        (rid, inj)
    }

    /// The `content` of every event named `name` seen so far, in order.
    pub fn contents(&self, name: &str) -> Vec<&str> {
        self.seen
            .iter()
            .filter(|v| v["event"] == name)
            .map(|v| v["data"]["content"].as_str().unwrap())
            .collect()
    }

    /// Sends a command and returns the reason it was rejected.
    pub fn refuse(&mut self, command: &str, payload: Value) -> String {
        let rid = self.command(command, payload);
        self.rejected(&rid)
    }

    /// Events seen so far named `name` about `swarm`.
    pub fn events_of(&self, swarm: &str, name: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == name && v["data"]["swarm_id"] == swarm)
            .cloned()
            .collect()
    }

    /// Reads until the router closes the connection; returns whether it did before `T`.
    pub fn wait_closed(&mut self) -> bool {
        let deadline = Instant::now() + T;
        while !self.eof && Instant::now() < deadline {
            self.read_event(deadline);
        }
        self.eof
    }
}

/// Launches a swarm; returns (swarm_id, job_id).
pub fn launch(c: &mut Rc, nodes: u32, params: Value) -> (String, String) {
    let v = c.ask(
        "swarm_launch",
        json!({"nodes": nodes, "provider_params": params}),
        "swarm_launched",
    );
    (
        v["data"]["swarm_id"].as_str().unwrap().into(),
        v["data"]["job_id"].as_str().unwrap().into(),
    )
}

/// Injects and waits, per target node, for `inject_delivered` and `turn_complete`; returns
/// each node's `assistant` answer (in node order).
pub fn inject_wait(c: &mut Rc, swarm: &str, nodes: Value, content: &str) -> Vec<(u64, String)> {
    let rid = c.command(
        "inject",
        json!({"swarm_id": swarm, "nodes": nodes, "content": content}),
    );
    c.answer(&rid, "inject_ack");
    // Every ack comes before the first delivery: collect them.
    let delivered_first = c.wait("first delivery", |v| {
        v["data"]["request_id"] == rid && v["event"] == "inject_delivered"
    });
    let _ = delivered_first;
    let acks: Vec<Value> = c
        .seen
        .iter()
        .filter(|v| v["data"]["request_id"] == rid && v["event"] == "inject_ack")
        .cloned()
        .collect();
    let mut out = Vec::new();
    for a in acks {
        let inj = a["data"]["injection_id"].as_str().unwrap().to_string();
        c.wait("delivery", |v| {
            v["event"] == "inject_delivered" && v["data"]["injection_id"] == inj
        });
        c.wait("turn_complete", |v| {
            v["event"] == "turn_complete" && v["data"]["injection_id"] == inj
        });
        let ans = c.wait("assistant", |v| {
            v["event"] == "assistant" && v["data"]["injection_id"] == inj
        });
        out.push((
            a["data"]["node_id"].as_u64().unwrap(),
            ans["data"]["content"].as_str().unwrap().to_string(),
        ));
    }
    out.sort();
    out
}

/// Terminates a swarm and waits for its end.
pub fn terminate(c: &mut Rc, swarm: &str) {
    c.ask(
        "swarm_terminate",
        json!({"swarm_id": swarm}),
        "swarm_terminated",
    );
}

/// The workspace of the default local provider of a daemon.
pub fn workspace(d: &Daemon) -> std::path::PathBuf {
    d.state_dir.join("router").join("local")
}

/// A node's outbox file.
pub fn outbox(d: &Daemon, job: &str, node: u32) -> std::path::PathBuf {
    workspace(d)
        .join("mailbox/outbox")
        .join(format!("{job}_{node:02}.jsonl"))
}

/// The pid in a node's heartbeat file, once the worker has written it.
pub fn worker_pid(d: &Daemon, job: &str, node: u32) -> i32 {
    worker_pid_in(d, "local", job, node)
}

/// [`worker_pid`] for a node of another provider (its workspace under the state directory).
pub fn worker_pid_in(d: &Daemon, provider: &str, job: &str, node: u32) -> i32 {
    let p = d
        .state_dir
        .join("router")
        .join(provider)
        .join("mailbox/heartbeat")
        .join(format!("{job}_{node:02}.json"));
    crate::harness::wait_for("a heartbeat", T, || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    })
}

pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Codeswarm's mock worker, written from the contract (ROUTER-COMPAT.md) in plain Python:
/// polls its inbox, answers each `user` line with the six `codex_rpc` records, writes `start`
/// and `complete`, and stops on `shutdown` (or when its workspace is gone).
pub const PY_MOCK: &str = r#"
import json, os, sys, time
job = os.environ["CODESWARM_JOB_ID"]
node = int(os.environ["CODESWARM_NODE_ID"])
base = os.environ["CODESWARM_BASE_DIR"]
name = "%s_%02d.jsonl" % (job, node)
inbox = os.path.join(base, "mailbox", "inbox", name)
outbox = os.path.join(base, "mailbox", "outbox", name)

def write(rec):
    with open(outbox, "a") as f:
        f.write(json.dumps(rec) + "\n")

def rpc(inj, method, params):
    write({"type": "codex_rpc", "job_id": job, "node_id": node, "injection_id": inj,
           "payload": {"method": method, "params": params}})

write({"type": "start", "job_id": job, "node_id": node})
offset = 0
while True:
    try:
        with open(inbox, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        data = b""
    end = data.rfind(b"\n")
    if end >= 0:
        offset += end + 1
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            msg = json.loads(line)
            if msg.get("type") == "shutdown":
                write({"type": "complete", "job_id": job, "node_id": node})
                sys.exit(0)
            if msg.get("type") != "user":
                continue
            prompt = " ".join(msg["content"].split())
            if len(prompt) > 180:
                prompt = prompt[:177] + "..."
            r = "Mock worker received prompt: " + prompt
            inj = msg["injection_id"]
            rpc(inj, "thread/status/changed", {"status": {"type": "active"}})
            rpc(inj, "turn/started", {})
            rpc(inj, "codex/event/agent_message", {"msg": {"phase": "final_answer", "message": r}})
            rpc(inj, "codex/event/task_complete", {"msg": {"last_agent_message": r}})
            rpc(inj, "turn/completed", {})
            rpc(inj, "thread/status/changed", {"status": {"type": "idle"}})
    if not os.path.isdir(os.path.dirname(inbox)):
        sys.exit(0)
    time.sleep(0.02)
"#;
