//! Agent supervision benchmark: `cargo bench --bench agents`.
//!
//! Starts its own daemon (the built `clove` binary) on a temporary socket and prints:
//! 1. crash-to-respawn latency with zero backoff (p50, p99 over 200 restarts), as measured by
//!    the daemon from reaping the crashed process to the new interpreter running
//!    (`respawn_ms` in AGENT_SPAWNED), plus the client-side cycle time;
//! 2. spawn throughput: agents per second until every SPAWN has answered "running";
//! 3. NOOP latency of another client while 50 agents crash-loop, against its idle value, and
//!    the same for the limit probe (`benches/limit-echo.c`, a bare epoll echo server:
//!    the floor for this protocol on the machine), measured in the same windows, so that what
//!    the machine's load does to any server is told apart from what clove adds.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only checks its own setup.
//! Environment: `BENCH_RESTARTS` (200), `BENCH_SPAWNS` (100), `BENCH_LOOPERS` (50),
//! `BENCH_CRASH_AFTER` (seconds each crash-looping agent runs, 0.2), `BENCH_NOOPS` (20000),
//! `BENCH_SANDBOX` (1) and `BENCH_NETWORK` (0) for the crash-to-respawn agent (a new network
//! namespace per start is what makes the tail long).

use clove::client::Client;
use clove::proto::op as ops;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("clove-bench")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("clove.sock");
        let config = dir.path().join("clove.toml");
        std::fs::write(
            &config,
            "[agents]\nbackoff_initial_ms = 0\nbackoff_cap_ms = 0\nkill_grace_ms = 500\nmax_agents = 2000\n\
             [limits]\nevent_queue_len = 100000\n",
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_clove"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("CLOVE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(line.starts_with("clove: ready"), "{line}");
        Daemon {
            child,
            socket,
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the daemon this program started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agent_scripts")
        .join(name)
        .display()
        .to_string()
}

fn call(c: &mut Client, op: u8, req: Value) -> Value {
    let v = c.call_json(op, &req).unwrap();
    assert_eq!(v["success"], json!(true), "{req} -> {v}");
    v
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn crash_to_respawn(d: &Daemon, restarts: usize) {
    let mut ev = d.client();
    call(
        &mut ev,
        ops::SUBSCRIBE,
        json!({"event_types": ["AGENT_SPAWNED"]}),
    );
    let mut c = d.client();
    let t0 = Instant::now();
    call(
        &mut c,
        ops::SPAWN,
        json!({"name": "crashloop", "script": script("crash.sh"), "python": "/bin/sh",
            "args": ["1"], "restart_policy": "always", "max_restarts": 100000, "restart_window": 1,
            "network": env_num("BENCH_NETWORK", 0) == 1, "sandboxed": env_num("BENCH_SANDBOX", 1) == 1}),
    );
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lat.len() < restarts && Instant::now() < deadline {
        let r = call(&mut ev, ops::POLL_EVENTS, json!({"max": 1000}));
        for e in r["events"].as_array().unwrap() {
            if let Some(ms) = e["data"]["respawn_ms"].as_f64() {
                lat.push(ms);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = t0.elapsed();
    call(&mut c, ops::KILL, json!({"name": "crashloop"}));
    lat.truncate(restarts);
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "crash-to-respawn (zero backoff, /bin/sh agent exiting 1, sandboxed={} network={}): n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        env_num("BENCH_SANDBOX", 1) == 1,
        env_num("BENCH_NETWORK", 0) == 1,
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    println!(
        "  client-side: {} restarts in {:.2} s = {:.2} ms per crash+respawn cycle",
        lat.len(),
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1000.0 / lat.len().max(1) as f64
    );
}

fn spawn_throughput(d: &Daemon, n: usize) {
    let conns = 4;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|k| {
            let mut c = d.client();
            std::thread::spawn(move || {
                for i in (k..n).step_by(conns) {
                    call(
                        &mut c,
                        ops::SPAWN,
                        json!({"name": format!("s{i}"), "script": script("sleeper.sh"),
                            "python": "/bin/sh"}),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let dt = t0.elapsed();
    println!(
        "spawn throughput (sandboxed, cgroups, {conns} clients): {n} agents RUNNING in {:.2} s = {:.0} agents/s",
        dt.as_secs_f64(),
        n as f64 / dt.as_secs_f64()
    );
    let mut c = d.client();
    let t0 = Instant::now();
    for i in 0..n {
        call(&mut c, ops::KILL, json!({"name": format!("s{i}")}));
    }
    println!(
        "  kill: {n} agents stopped in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
}

/// NOOP round trips on `c`, and on the probe's connection `p` when there is one, taken in
/// turns (one on each, then again) so that both see the same moments of the load.
fn noop_latency(c: &mut Client, mut p: Option<&mut Client>, n: usize) -> [(f64, f64); 2] {
    let mut v = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let one = |c: &mut Client| {
        let t = Instant::now();
        let r = c.call(ops::NOOP, b"x").unwrap();
        assert_eq!(r.payload, b"x");
        t.elapsed().as_secs_f64() * 1e6
    };
    for _ in 0..n {
        v[0].push(one(c));
        if let Some(p) = p.as_deref_mut() {
            v[1].push(one(p));
        }
    }
    v.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            (0.0, 0.0)
        } else {
            (pct(&v, 0.5), pct(&v, 0.99))
        }
    })
}

/// The limit probe, compiled and started on a socket of its own (`LIMIT_ECHO_SRC` or
/// `benches/limit-echo.c`); `None` when there is no source or no C compiler.
struct Probe {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Probe {
    fn start() -> Option<Probe> {
        let src = std::env::var("LIMIT_ECHO_SRC")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/limit-echo.c"));
        if !src.exists() {
            println!("(no limit probe: {} not found)", src.display());
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("clove-probe")
            .tempdir_in("/tmp")
            .ok()?;
        let bin = dir.path().join("limit-echo");
        let built = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        if !built {
            println!("(no limit probe: cc failed on {})", src.display());
            return None;
        }
        let socket = dir.path().join("probe.sock");
        let child = Command::new(&bin).arg(&socket).spawn().ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Probe {
            child,
            socket,
            _dir: dir,
        })
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn noop_under_crash_loops(d: &Daemon, loopers: usize, after: f64, noops: usize) {
    let mut c = d.client();
    let probe = Probe::start();
    let mut p = probe.as_ref().map(Probe::client);
    noop_latency(&mut c, p.as_mut(), noops / 10);
    let [(idle50, idle99), probe_idle] = noop_latency(&mut c, p.as_mut(), noops);
    let mut m = d.client();
    for i in 0..loopers {
        call(
            &mut m,
            ops::SPAWN,
            json!({"name": format!("loop{i}"), "script": script("crash.sh"), "python": "/bin/sh",
                "args": ["1", after.to_string()], "restart_policy": "always",
                "max_restarts": 100000, "restart_window": 1}),
        );
    }
    let before: u64 = restarts(&mut m);
    let t0 = Instant::now();
    let [(busy50, busy99), probe_busy] = noop_latency(&mut c, p.as_mut(), noops);
    let rate = (restarts(&mut m) - before) as f64 / t0.elapsed().as_secs_f64();
    println!("NOOP latency, idle: p50 {idle50:.1} us  p99 {idle99:.1} us");
    println!(
        "NOOP latency, {loopers} agents crash-looping ({rate:.0} restarts/s, each runs {after}s): p50 {busy50:.1} us  p99 {busy99:.1} us  (vs idle: p50 {:.2}x, p99 {:.2}x; goal <= 2x)",
        busy50 / idle50,
        busy99 / idle99
    );
    if probe.is_some() {
        let ((i50, i99), (b50, b99)) = (probe_idle, probe_busy);
        println!(
            "limit probe, same load: idle p50 {i50:.1} us  p99 {i99:.1} us; crash-looping p50 {b50:.1} us  p99 {b99:.1} us  (vs idle: p50 {:.2}x, p99 {:.2}x)",
            b50 / i50,
            b99 / i99
        );
        println!(
            "clove vs the probe under load: p50 {:.2}x  p99 {:.2}x",
            busy50 / b50,
            busy99 / b99
        );
    }
    for i in 0..loopers {
        let _ = m.call_json(ops::KILL, &json!({"name": format!("loop{i}")}));
    }
}

fn restarts(c: &mut Client) -> u64 {
    let r = c.call(ops::LIST, b"").unwrap();
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a["restarts"].as_u64().unwrap_or(0))
        .sum()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Under `cargo test --all-targets`: a quick check that the benchmark's setup works,
        // not a measurement (run `cargo bench --bench agents` for that).
        let d = Daemon::start();
        let mut c = d.client();
        call(
            &mut c,
            ops::SPAWN,
            json!({"name": "smoke", "script": script("sleeper.sh"), "python": "/bin/sh"}),
        );
        call(&mut c, ops::KILL, json!({"name": "smoke"}));
        println!("agents bench setup smoke test: 1 passed, 0 failed");
        return;
    }
    let d = Daemon::start();
    crash_to_respawn(&d, env_num("BENCH_RESTARTS", 200));
    spawn_throughput(&d, env_num("BENCH_SPAWNS", 100));
    noop_under_crash_loops(
        &d,
        env_num("BENCH_LOOPERS", 50),
        env_num("BENCH_CRASH_AFTER", 0.2),
        env_num("BENCH_NOOPS", 20000),
    );
}
