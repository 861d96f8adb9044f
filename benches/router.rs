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
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PROTOCOL: &str = "codeswarm.router.v1";
const WAIT: Duration = Duration::from_secs(60);

struct Daemon {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("clove-rbench")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let config = dir.path().join("clove.toml");
        std::fs::write(
            &config,
            "[router]\nlisten = \"127.0.0.1:0\"\nmax_clients = 4096\nmax_live_swarms = 1024\n\
             keep_terminated = 10\n[server]\nmax_connections = 8192\n",
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_clove"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("clove.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("CLOVE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clove");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("router="))
            .filter(|a| *a != "off")
            .unwrap_or_else(|| panic!("no router in {line:?}"))
            .to_string();
        Daemon {
            child,
            addr,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// A router client written by hand: JSON lines over a TcpStream.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
    n: u64,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Client {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
            n: 0,
        }
    }

    fn send(&mut self, command: &str, payload: Value) -> String {
        self.n += 1;
        let rid = format!("b{}", self.n);
        let line = json!({"protocol": PROTOCOL, "command": command, "request_id": rid, "payload": payload});
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        rid
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read");
        assert!(line.ends_with('\n'), "the router closed the connection");
        serde_json::from_str(&line).expect("JSON line")
    }

    fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
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

    fn launch(&mut self, nodes: u32) -> String {
        let rid = self.send("swarm_launch", json!({"nodes": nodes}));
        let v = self
            .until(|v| v["event"] == "swarm_launched" && v["data"]["request_id"] == rid.as_str());
        v["data"]["swarm_id"]
            .as_str()
            .expect("swarm id")
            .to_string()
    }

    fn terminate(&mut self, swarm: &str) {
        let rid = self.send("swarm_terminate", json!({"swarm_id": swarm}));
        self.until(|v| v["event"] == "swarm_terminated" && v["data"]["request_id"] == rid.as_str());
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Inject → assistant, one node, one at a time.
fn inject_latency(d: &Daemon, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(&d.addr);
    let swarm = c.launch(1);
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
    c.terminate(&swarm);
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
    let mut c = Client::connect(&d.addr);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let swarm = c.launch(1);
        lat.push(t.elapsed());
        c.terminate(&swarm);
    }
    lat.sort();
    lat
}

/// Events/s delivered to `readers` clients while one more never reads: one injector keeps
/// `window` injections in flight into an 8-node swarm, every reader counts every line.
fn fan_out(d: &Daemon, readers: usize, injections: usize) -> (f64, u64, Value) {
    let stuck = TcpStream::connect(&d.addr).expect("the client that never reads");
    let mut c = Client::connect(&d.addr);
    let swarm = c.launch(8);
    let total = Arc::new(AtomicU64::new(0));
    let marker = format!("end-of-bench-{}", std::process::id());
    let barrier = Arc::new(std::sync::Barrier::new(readers + 1));
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let (addr, total, marker, barrier) = (
                d.addr.clone(),
                total.clone(),
                marker.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let s = TcpStream::connect(&addr).expect("connect");
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
    c.terminate(&swarm);
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
        json!({"protocol": PROTOCOL, "type": "event", "timestamp": "2026-01-01T00:00:00.000Z",
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
    let sock = d._dir.path().join("clove.sock");
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
        .map(|_| TcpStream::connect(&d.addr).expect("idle client"))
        .collect();
    let deadline = Instant::now() + WAIT;
    while hello_router(d)["clients"].as_u64().unwrap_or(0) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    (conns, d.rss_kib())
}

fn live_nodes(d: &Daemon, nodes: usize) -> (u64, u64) {
    let mut c = Client::connect(&d.addr);
    let per = 10.min(nodes).max(1);
    let swarms: Vec<String> = (0..nodes.div_ceil(per))
        .map(|_| c.launch(per as u32))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let followed = hello_router(d)["followed_files"].as_u64().unwrap_or(0);
    let rss = d.rss_kib();
    for s in &swarms {
        c.terminate(s);
    }
    (rss, followed)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with valid structs.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() {
    raise_fd_limit();
    let bench = std::env::args().any(|a| a == "--bench");
    let s = |name, full, smoke| if bench { env_usize(name, full) } else { smoke };
    let (n_inj, n_launch, n_readers, n_idle, n_nodes) = (
        s("ROUTER_BENCH_INJECTIONS", 200, 20),
        s("ROUTER_BENCH_LAUNCHES", 20, 3),
        s("ROUTER_BENCH_CLIENTS", 50, 5),
        s("ROUTER_BENCH_IDLE", 1000, 20),
        s("ROUTER_BENCH_NODES", 100, 4),
    );
    let d = Daemon::start();
    let echo = echo_latency(n_inj, 200);
    let inject = inject_latency(&d, n_inj);
    let launch = launch_latency(&d, n_launch);
    let (rate, delivered, stats) = fan_out(&d, n_readers, if bench { 2000 } else { 20 });
    let plain = plain_fan_out(n_readers, if bench { 128_000 } else { 640 });
    drop(d);
    // Memory on a fresh daemon, so that one figure does not carry another's allocations.
    let d = Daemon::start();
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
