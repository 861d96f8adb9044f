//! Router benchmark (issue 11): the Codeswarm router over TCP with the local provider and the
//! mock worker, each figure next to an anchor measured in the same run.
//!
//! `cargo bench --bench router` prints:
//! * inject → `assistant` latency per node (one node, 200 injections one after the other),
//!   p50/p99, beside a plain loopback TCP echo of lines of the same size (the floor on this
//!   machine) and the old Python router's figure measured here (p50 313 ms);
//! * swarm_launch → swarm_launched (old router: 106 ms);
//! * event fan-out: events per second delivered to 50 reading clients while one more client
//!   never reads, beside a plain loopback fan-out of the same lines by one thread;
//! * the daemon's RSS idle, with 1,000 idle router clients, and with 100 live nodes followed.
//!
//! Sizes: `ROUTER_BENCH_INJECTIONS` (200), `ROUTER_BENCH_LAUNCHES` (20), `ROUTER_BENCH_CLIENTS`
//! (50), `ROUTER_BENCH_IDLE` (1000), `ROUTER_BENCH_NODES` (100). Run under `cargo test` (no
//! `--bench` argument) it does a few of each, as a check that it still works.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

#[path = "support/mod.rs"]
mod support;
use support::{
    RouterClient as Client, Server as Daemon, env_num, percentile as pct, raise_fd_limit,
};

fn start() -> Daemon {
    Daemon::clove(
        "clove-rbench",
        "[router]\nlisten = \"127.0.0.1:0\"\nmax_clients = 4096\nmax_live_swarms = 1024\n\
         keep_terminated = 10\n[server]\nmax_connections = 8192\n",
        &[],
    )
}

fn router(d: &Daemon) -> SocketAddr {
    d.listener("router")
}

/// Inject → assistant, one node, one at a time.
fn inject_latency(d: &Daemon, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(router(d), WAIT);
    let swarm = c.launch(1, json!({}));
    let mut lat = Vec::with_capacity(n);
    for i in 0..(n + n / 10) {
        let t = Instant::now();
        let rid = c.send(
            "inject",
            json!({"swarm_id": swarm, "nodes": 0, "content": format!("question {i}")}),
        );
        let ack =
            c.until(|v| v["event"] == "inject_ack" && v["data"]["request_id"] == rid.as_str());
        let inj = ack["data"]["injection_id"].clone();
        c.until(|v| v["event"] == "assistant" && v["data"]["injection_id"] == inj);
        if i >= n / 10 {
            lat.push(t.elapsed());
        }
        c.until(|v| v["event"] == "turn_complete" && v["data"]["injection_id"] == inj);
    }
    c.terminate(&swarm, false);
    lat.sort();
    lat
}

/// The same exchange's floor: a line out and a line back over loopback TCP to a thread that
/// echoes it.
fn echo_latency(n: usize, size: usize) -> Vec<Duration> {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if w.write_all(line.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let msg = format!("{}\n", "x".repeat(size));
    let mut line = String::new();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        w.write_all(msg.as_bytes()).expect("write");
        line.clear();
        r.read_line(&mut line).expect("read");
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

fn launch_latency(d: &Daemon, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(router(d), WAIT);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let swarm = c.launch(1, json!({}));
        lat.push(t.elapsed());
        c.terminate(&swarm, false);
    }
    lat.sort();
    lat
}

/// Events/s delivered to `readers` clients while one more never reads: one injector keeps
/// `window` injections in flight into an 8-node swarm, every reader counts every line.
fn fan_out(d: &Daemon, readers: usize, injections: usize) -> (f64, u64, Value) {
    let stuck = TcpStream::connect(router(d)).expect("the client that never reads");
    let mut c = Client::connect(router(d), WAIT);
    let swarm = c.launch(8, json!({}));
    let total = Arc::new(AtomicU64::new(0));
    let marker = format!("end-of-bench-{}", std::process::id());
    let barrier = Arc::new(std::sync::Barrier::new(readers + 1));
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let (addr, total, marker, barrier) =
                (router(d), total.clone(), marker.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                barrier.wait();
                let mut r = BufReader::with_capacity(1 << 16, s);
                let mut line = Vec::new();
                let mut n = 0u64;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).expect("read") == 0 {
                        panic!("a reading client was dropped");
                    }
                    n += 1;
                    if line.windows(marker.len()).any(|w| w == marker.as_bytes())
                        && line.windows(11).any(|w| w == b"\"assistant\"")
                    {
                        break;
                    }
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let window = 16;
    let mut sent = Vec::new();
    let mut done = 0;
    for i in 0..=injections {
        let content = if i == injections {
            marker.clone()
        } else {
            format!("fan-out {i}")
        };
        let nodes = if i == injections {
            json!(0)
        } else {
            json!("all")
        };
        sent.push(c.send(
            "inject",
            json!({"swarm_id": swarm, "nodes": nodes, "content": content}),
        ));
        while sent.len() - done > window {
            let rid = sent[done].clone();
            c.until(|v| {
                v["event"] == "inject_delivered" && v["data"]["request_id"] == rid.as_str()
            });
            done += 1;
        }
    }
    for th in threads {
        th.join().expect("reader");
    }
    let secs = t.elapsed().as_secs_f64();
    let delivered = total.load(Ordering::Relaxed);
    drop(stuck);
    c.terminate(&swarm, false);
    let stats = hello_router(d);
    (delivered as f64 / secs, delivered, stats)
}

/// The same lines written by one thread to `readers` loopback sockets, 64 lines per write
/// (the floor: what the kernel's loopback and the readers take).
fn plain_fan_out(readers: usize, lines: usize) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0usize;
                loop {
                    let k = s.read(&mut buf).expect("read");
                    if k == 0 {
                        return n;
                    }
                    n += buf[..k].iter().filter(|&&b| b == b'\n').count();
                }
            })
        })
        .collect();
    let mut socks: Vec<TcpStream> = (0..readers)
        .map(|_| l.accept().expect("accept").0)
        .collect();
    let line = format!(
        "{}\n",
        json!({"protocol": "codeswarm.router.v1", "type": "event", "timestamp": "2026-01-01T00:00:00.000Z",
               "event": "assistant", "data": {"content": "Mock worker received prompt: fan-out 1", "swarm_id": "00000000-0000-0000-0000-000000000000",
               "job_id": "local-00000000", "node_id": 3, "injection_id": "00000000-0000-0000-0000-000000000000", "final_answer": true}})
    );
    // Lines go out in batches, as the reactor writes what has queued up for a connection.
    let batch = line.repeat(64);
    let t = Instant::now();
    for _ in 0..lines.div_ceil(64) {
        for s in socks.iter_mut() {
            s.write_all(batch.as_bytes()).expect("write");
        }
    }
    drop(socks);
    let got: usize = threads.into_iter().map(|t| t.join().expect("reader")).sum();
    got as f64 / t.elapsed().as_secs_f64()
}

fn hello_router(d: &Daemon) -> Value {
    // The daemon's Clove socket is next to its state: ask HELLO through the CLI.
    let sock = d
        .dir
        .as_ref()
        .expect("clove's dir")
        .path()
        .join("clove.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_clove"))
        .args(["call", "hello", "--socket"])
        .arg(&sock)
        .output()
        .expect("clove call");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["services"]["router"].clone()
}

fn idle_clients(d: &Daemon, n: usize) -> (Vec<TcpStream>, u64) {
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(router(d)).expect("idle client"))
        .collect();
    let deadline = Instant::now() + WAIT;
    while hello_router(d)["clients"].as_u64().unwrap_or(0) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    (conns, d.rss_kib())
}

fn live_nodes(d: &Daemon, nodes: usize) -> (u64, u64) {
    let mut c = Client::connect(router(d), WAIT);
    let per = 10.min(nodes).max(1);
    let swarms: Vec<String> = (0..nodes.div_ceil(per))
        .map(|_| c.launch(per as u32, json!({})))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let followed = hello_router(d)["followed_files"].as_u64().unwrap_or(0);
    let rss = d.rss_kib();
    for s in &swarms {
        c.terminate(s, false);
    }
    (rss, followed)
}

fn main() {
    raise_fd_limit();
    let bench = std::env::args().any(|a| a == "--bench");
    let s = |name, full, smoke| if bench { env_num(name, full) } else { smoke };
    let (n_inj, n_launch, n_readers, n_idle, n_nodes) = (
        s("ROUTER_BENCH_INJECTIONS", 200, 20),
        s("ROUTER_BENCH_LAUNCHES", 20, 3),
        s("ROUTER_BENCH_CLIENTS", 50, 5),
        s("ROUTER_BENCH_IDLE", 1000, 20),
        s("ROUTER_BENCH_NODES", 100, 4),
    );
    let d = start();
    let echo = echo_latency(n_inj, 200);
    let inject = inject_latency(&d, n_inj);
    let launch = launch_latency(&d, n_launch);
    let (rate, delivered, stats) = fan_out(&d, n_readers, if bench { 2000 } else { 20 });
    let plain = plain_fan_out(n_readers, if bench { 128_000 } else { 640 });
    drop(d);
    // Memory on a fresh daemon, so that one figure does not carry another's allocations.
    let d = start();
    let rss_idle = d.rss_kib();
    let (conns, rss_clients) = idle_clients(&d, n_idle);
    drop(conns);
    let (rss_nodes, followed) = live_nodes(&d, n_nodes);

    println!("router benchmark (local provider, mock worker; store sync = full, state in /tmp)");
    println!(
        "  inject -> assistant, 1 node     n={:<5} p50 {:>7.2} ms  p99 {:>7.2} ms   (old router: p50 313 ms)",
        inject.len(),
        pct(&inject, 0.5),
        pct(&inject, 0.99)
    );
    println!(
        "    anchor: loopback TCP echo of a 200-byte line  p50 {:>7.3} ms  p99 {:>7.3} ms",
        pct(&echo, 0.5),
        pct(&echo, 0.99)
    );
    println!(
        "  swarm_launch -> swarm_launched  n={:<5} p50 {:>7.2} ms  p99 {:>7.2} ms   (old router: 106 ms)",
        launch.len(),
        pct(&launch, 0.5),
        pct(&launch, 0.99)
    );
    println!(
        "  event fan-out to {n_readers} clients (+1 not reading): {rate:.0} events/s delivered ({delivered} lines); \
         the one not reading: dropped {} client(s), {} events not sent",
        stats["clients_dropped"], stats["events_dropped"]
    );
    println!(
        "    anchor: one thread writing such lines to {n_readers} loopback sockets, 64 per write: {plain:.0} lines/s"
    );
    println!(
        "  RSS: {:.1} MiB idle, {:.1} MiB with {n_idle} idle router clients, {:.1} MiB with {n_nodes} live nodes ({followed} files followed)",
        rss_idle as f64 / 1024.0,
        rss_clients as f64 / 1024.0,
        rss_nodes as f64 / 1024.0
    );
    if !bench {
        assert!(delivered > 0 && followed >= n_nodes as u64);
        println!("router-bench: 1 passed, 0 failed");
    }
}
