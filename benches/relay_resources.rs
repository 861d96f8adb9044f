//! Relay resources benchmark: `cargo bench --bench relay_resources`.
//!
//! Each figure is printed next to an anchor measured in the same run on the same machine:
//! - a 10 MiB file uploaded then downloaded through clove's relay (`upload_file`,
//!   `download_file`: base64 in Socket.IO over WebSocket, written to and read from disk), next
//!   to the same base64 bytes sent to a plain `ws` echo server and back (the floor: one
//!   WebSocket round trip of the same bytes, no Socket.IO, no disk);
//! - the `get_credentials` ack round trip p50/p99 (a lookup, an access check, AES-256-GCM
//!   decryption, an audit entry), next to `latency_ping` on the same connection;
//! - an orchestration of 100 parallel tasks on 50 agents (each agent answers its
//!   `exec_task` with `report_task_result`), from `start_orchestration` to
//!   `orchestration_completed`, next to 100 messages bounced over 50 connections by the `ws`
//!   echo server at once (the floor for 100 round trips on 50 sockets).
//!
//! The client is tungstenite over blocking sockets speaking Engine.IO 4 / Socket.IO 5 itself
//! (one thread per agent in the orchestration). Every wait has a deadline. Under `cargo test
//! --all-targets` (no `--bench` argument) every phase runs at a tiny size as a check that the
//! benchmark still works. Sizes: `BENCH_FILE_MIB` (10), `BENCH_FILE_ROUNDS` (5),
//! `BENCH_GETS` (2000), `BENCH_TASKS` (100), `BENCH_AGENTS` (50).

use base64::Engine as _;
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const SECRET: &str = "bench-secret";
const DEADLINE: Duration = Duration::from_secs(120);

#[path = "support/mod.rs"]
mod support;
use support::{Server, env_num, percentile};

fn start_clove() -> (Server, SocketAddr) {
    let s = Server::clove(
        "clove-resources-bench",
        "[relay]\nlisten = \"127.0.0.1:0\"\nmax_resources = 100000\nmax_tasks = 100000\n",
        &[("CLAWNET_SECRET_KEY", SECRET)],
    );
    let addr = s.listener("relay");
    (s, addr)
}

fn start_floor() -> (Server, SocketAddr) {
    let s = Server::node("floor.js", &[]);
    let addr = s.node_addr();
    (s, addr)
}

fn ws_connect(url: &str) -> WebSocket<TcpStream> {
    let host = url
        .split("//")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap();
    let stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, _) = tungstenite::client(url, stream).unwrap();
    ws
}

/// A Socket.IO client over one WebSocket.
struct Sio {
    ws: WebSocket<TcpStream>,
    next: u64,
}

impl Sio {
    fn connect(addr: SocketAddr, auth: Value) -> Sio {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let mut s = Sio {
            ws: ws_connect(&url),
            next: 0,
        };
        let open = s.text();
        assert!(open.starts_with('0'), "{open}");
        s.send(format!("40{auth}"));
        loop {
            let t = s.text();
            if t.starts_with("40") {
                return s;
            }
            assert!(!t.starts_with("44"), "refused: {t}");
        }
    }

    fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// The next Engine.IO message's text (pings are answered on the way).
    fn text(&mut self) -> String {
        loop {
            match self.ws.read().unwrap() {
                Message::Text(t) if t.as_str() == "2" => self.send("3".into()),
                Message::Text(t) => return t.as_str().to_owned(),
                _ => {}
            }
        }
    }

    /// Sends event `name` with `data` and waits for its ack; events before it go to `seen`.
    fn call(&mut self, name: &str, data: &Value, seen: &mut Vec<(String, Value)>) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(format!("42{id}{}", json!([name, data])));
        let prefix = format!("43{id}");
        loop {
            let t = self.text();
            if let Some(rest) = t.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(rest).unwrap();
                return v[0].clone();
            }
            if let Some(e) = event(&t) {
                seen.push(e);
            }
        }
    }

    /// Waits for event `name` accepted by `pred`.
    fn wait(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let t = self.text();
            if let Some((n, d)) = event(&t)
                && n == name
                && pred(&d)
            {
                return d;
            }
        }
    }
}

/// An event message's name and data.
fn event(text: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(text.strip_prefix("42")?).ok()?;
    Some((v[0].as_str()?.to_owned(), v[1].clone()))
}

fn auth(agent: &str) -> Value {
    json!({"token": SECRET, "agent_id": agent, "role": "master"})
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct FileFigures {
    upload_ms: f64,
    download_ms: f64,
    echo_ms: f64,
}

/// Uploads and downloads a file of `size` random bytes `rounds` times through the relay, and
/// sends the same base64 text through the echo server as often: median times.
fn files(clove: SocketAddr, floor: SocketAddr, size: usize, rounds: usize) -> FileFigures {
    let bytes: Vec<u8> = (0..size as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let mut s = Sio::connect(clove, auth("bench-files"));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut seen = Vec::new();
    for r in 0..rounds {
        let t = Instant::now();
        let u = s.call(
            "upload_file",
            &json!({"name": format!("f{r}"), "data": b64}),
            &mut seen,
        );
        up.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(u["success"], true, "{u}");
        let t = Instant::now();
        let d = s.call("download_file", &json!({"fileId": u["fileId"]}), &mut seen);
        down.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(d["data"]["data"].as_str().map(str::len), Some(b64.len()));
        assert!(d["data"]["data"] == b64.as_str(), "byte-exact");
        seen.clear();
    }
    let mut echo = Vec::new();
    let mut ws = ws_connect(&format!("ws://{}/", floor));
    for _ in 0..rounds {
        let t = Instant::now();
        ws.send(Message::text(b64.clone())).unwrap();
        let back = ws.read().unwrap();
        echo.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(back.len(), b64.len());
    }
    FileFigures {
        upload_ms: median(up),
        download_ms: median(down),
        echo_ms: median(echo),
    }
}

/// `get_credentials` and `latency_ping` round trips on one connection: p50/p99 of each.
fn credentials(clove: SocketAddr, n: usize) -> ((f64, f64), (f64, f64)) {
    let mut s = Sio::connect(clove, auth("bench-creds"));
    let mut seen = Vec::new();
    let stored = s.call(
        "store_credentials",
        &json!({"name": "db", "value": {"user": "u", "password": "p4ss"}}),
        &mut seen,
    );
    let id = stored["credentialId"].clone();
    let mut time = |event: &str, data: &Value| {
        let mut v: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                let r = s.call(event, data, &mut seen);
                assert!(r["ok"] == true, "{r}");
                seen.clear();
                t.elapsed()
            })
            .collect();
        v.sort();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    };
    let get = time("get_credentials", &json!({"credentialId": id}));
    let ping = time("latency_ping", &json!({}));
    (get, ping)
}

/// An orchestration of `tasks` parallel tasks on `agents` agents: milliseconds from
/// `start_orchestration` to `orchestration_completed`.
fn orchestration(clove: SocketAddr, tasks: usize, agents: usize) -> f64 {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..agents)
        .map(|i| {
            let addr = clove;
            let ready = ready_tx.clone();
            std::thread::spawn(move || {
                let name = format!("ag{i}");
                let mut s = Sio::connect(addr, auth(&name));
                let _ = ready.send(());
                // Events that arrive while a report waits for its ack are queued, not lost.
                let mut queue: std::collections::VecDeque<(String, Value)> = Default::default();
                loop {
                    let next = match queue.pop_front() {
                        Some(e) => Some(e),
                        None => event(&s.text()),
                    };
                    match next {
                        Some((n, d)) if n == "exec_task" => {
                            let r = json!({"orchestrationId": d["orchestrationId"],
                                           "taskIndex": d["taskIndex"], "status": "completed",
                                           "result": "ok"});
                            let mut seen = Vec::new();
                            let ack = s.call("report_task_result", &r, &mut seen);
                            assert_eq!(ack["success"], true, "{ack}");
                            queue.extend(seen);
                        }
                        Some((n, _)) if n == "orchestration_completed" => return,
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for _ in 0..agents {
        ready_rx.recv_timeout(DEADLINE).unwrap();
    }
    let mut m = Sio::connect(clove, auth("bench-master"));
    let list: Vec<Value> = (0..tasks)
        .map(|i| json!({"command": format!("/t{i}"), "targetAgentId": format!("ag{}", i % agents)}))
        .collect();
    let mut seen = Vec::new();
    let plan = m.call(
        "create_orchestration",
        &json!({"name": "bench", "mode": "parallel", "tasks": list}),
        &mut seen,
    );
    let id = plan["orchestrationId"].clone();
    let t = Instant::now();
    let started = m.call(
        "start_orchestration",
        &json!({"orchestrationId": id}),
        &mut seen,
    );
    assert_eq!(started["success"], true, "{started}");
    // The master is no participant: it learns of the end from its management_data_update.
    let ended = |n: &str, d: &Value| {
        n == "management_data_update"
            && d["type"] == "orchestration_updated"
            && d["data"]["orchestrationId"] == id
            && d["data"]["status"] != "running"
    };
    let done = match seen.into_iter().find(|(n, d)| ended(n, d)) {
        Some((_, d)) => d,
        None => m.wait("management_data_update", |d| {
            ended("management_data_update", d)
        }),
    };
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(done["data"]["status"], "completed", "{done}");
    for w in workers {
        w.join().unwrap();
    }
    ms
}

/// `n` messages bounced by the echo server over `conns` connections at once: milliseconds.
fn echo_round_trips(floor: SocketAddr, n: usize, conns: usize) -> f64 {
    let mut socks: Vec<WebSocket<TcpStream>> = (0..conns)
        .map(|_| ws_connect(&format!("ws://{}/", floor)))
        .collect();
    let t = Instant::now();
    for i in 0..n {
        socks[i % conns]
            .send(Message::text(format!("task {i}")))
            .unwrap();
    }
    for i in 0..n {
        socks[i % conns].read().unwrap();
    }
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (mib, rounds, gets, tasks, agents) = if full {
        (
            env_num("BENCH_FILE_MIB", 10),
            env_num("BENCH_FILE_ROUNDS", 5),
            env_num("BENCH_GETS", 2000),
            env_num("BENCH_TASKS", 100),
            env_num("BENCH_AGENTS", 50),
        )
    } else {
        // Under `cargo test --all-targets`: tiny sizes, so the benchmark cannot rot.
        (1, 1, 20, 10, 5)
    };
    let (_clove, clove) = start_clove();
    let (_floor, floor) = start_floor();
    let f = files(clove, floor, mib << 20, rounds);
    let (get, ping) = credentials(clove, gets);
    let orch = orchestration(clove, tasks, agents);
    let echo = echo_round_trips(floor, tasks, agents);
    println!(
        "{:<58} {:>14} {:>18}",
        "relay resources benchmark", "clove", "anchor"
    );
    println!(
        "{:<58} {:>14} {:>18}",
        format!("{mib} MiB file: upload + download ms (median of {rounds})"),
        format!("{:.0} + {:.0}", f.upload_ms, f.download_ms),
        format!("{:.0} ws echo", f.echo_ms)
    );
    println!(
        "{:<58} {:>14} {:>18}",
        "get_credentials p50/p99 ms (anchor: latency_ping)",
        format!("{:.3}/{:.3}", get.0, get.1),
        format!("{:.3}/{:.3}", ping.0, ping.1)
    );
    println!(
        "{:<58} {:>14} {:>18}",
        format!("orchestration, {tasks} parallel tasks on {agents} agents, ms"),
        format!("{orch:.1}"),
        format!("{echo:.1} ws echo")
    );
    if !full {
        assert!(f.upload_ms > 0.0 && f.download_ms > 0.0 && orch > 0.0);
        println!("relay resources bench smoke test: 1 passed, 0 failed");
    }
}
