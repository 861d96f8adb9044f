//! THINK benchmark: kernel overhead per THINK against a fake OpenAI-compatible backend that
//! answers at once, and THINK throughput with many concurrent agents.
//!
//! `cargo bench --bench think` prints:
//! * the latency of a chat-completions POST sent straight to the fake (the floor: HTTP on
//!   loopback plus the fake's JSON work), p50/p99;
//! * the latency of a synchronous THINK through clove (one agent, backend concurrency 1),
//!   p50/p99, and the difference: the kernel's overhead per THINK;
//! * throughput with 50 concurrent agents (one connection each, synchronous THINKs in a loop)
//!   at backend concurrency 8.
//!
//! Sizes: `THINK_BENCH_N` (sequential requests, default 3000) and `THINK_BENCH_TOTAL`
//! (requests in the throughput run, default 10000). Run under `cargo test` (no `--bench`
//! argument) it does a few requests of each kind only, as a check that it still works.

#[path = "../tests/fakes.rs"]
mod fakes;

use clove::client::Client;
use fakes::{Api, FakeLlm};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 50;
const THINK: u8 = 0x01;
const OK: &[u8] = b"\"success\":true";

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(base_url: &str, concurrency: usize) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("clove-bench")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let socket = dir.path().join("clove.sock");
        let config = dir.path().join("clove.toml");
        std::fs::write(
            &config,
            format!(
                "[llm]\nconcurrency = {concurrency}\nqueue_per_agent = 64\n\
                 [llm.models.fake]\nbase_url = \"{base_url}\"\nmodel = \"bench\"\n"
            ),
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_clove"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("CLOVE_LOG", "warn")
            .env_remove("OPENAI_API_KEY")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start clove");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        assert!(line.starts_with("clove: ready"), "daemon said {line:?}");
        Daemon {
            child,
            socket,
            _dir: dir,
        }
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

fn think_once(c: &mut Client, i: usize) -> Duration {
    let payload = format!("{{\"prompt\":\"question {i}\"}}");
    let t = Instant::now();
    let reply = c.call(THINK, payload.as_bytes()).expect("THINK reply");
    let took = t.elapsed();
    assert!(
        reply.payload.windows(OK.len()).any(|w| w == OK),
        "THINK failed: {}",
        String::from_utf8_lossy(&reply.payload)
    );
    took
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

fn direct(url: &str, n: usize) -> Vec<Duration> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!(
            "{{\"model\":\"bench\",\"messages\":[{{\"role\":\"user\",\"content\":\"question {i}\"}}]}}"
        );
        let t = Instant::now();
        let mut r = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .expect("direct POST");
        let _ = r.body_mut().read_to_vec().expect("body");
        lat.push(t.elapsed());
        assert_eq!(r.status(), 200);
    }
    lat.sort();
    lat
}

fn sequential(socket: &Path, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(socket).expect("connect");
    for i in 0..(n / 10).max(1) {
        think_once(&mut c, i);
    }
    let mut lat: Vec<Duration> = (0..n).map(|i| think_once(&mut c, i)).collect();
    lat.sort();
    lat
}

fn concurrent(socket: &Path, total: usize) -> (f64, Vec<Duration>) {
    let per_agent = total.div_ceil(AGENTS);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(AGENTS + 1));
    let threads: Vec<_> = (0..AGENTS)
        .map(|a| {
            let socket = socket.to_path_buf();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                think_once(&mut c, a);
                barrier.wait();
                (0..per_agent)
                    .map(|i| think_once(&mut c, a * 100_000 + i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let mut lat = Vec::with_capacity(per_agent * AGENTS);
    for th in threads {
        lat.extend(th.join().expect("agent thread"));
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    ((per_agent * AGENTS) as f64 / secs, lat)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, total) = if bench {
        (
            env_usize("THINK_BENCH_N", 3000),
            env_usize("THINK_BENCH_TOTAL", 10_000),
        )
    } else {
        (20, 100)
    };
    let fake = FakeLlm::start(Api::OpenAi, None);
    let base = fake.base_url(Api::OpenAi);

    let floor = direct(&format!("{base}/chat/completions"), n);
    let d1 = Daemon::start(&base, 1);
    let through = sequential(&d1.socket, n);
    drop(d1);
    let d8 = Daemon::start(&base, 8);
    let (rate, lat) = concurrent(&d8.socket, total);
    drop(d8);

    println!("THINK benchmark (fake OpenAI-compatible backend on loopback, answers at once)");
    println!(
        "  direct POST to the fake      n={n:<6} p50 {:>8.1}us  p99 {:>8.1}us",
        pct(&floor, 0.5),
        pct(&floor, 0.99)
    );
    println!(
        "  THINK through clove (c=1)    n={n:<6} p50 {:>8.1}us  p99 {:>8.1}us",
        pct(&through, 0.5),
        pct(&through, 0.99)
    );
    // A difference of percentiles of two runs is only meaningful with many samples; with the
    // few of the smoke run it can even be negative, so it is shown only from `cargo bench`.
    if bench {
        println!(
            "  kernel overhead per THINK    p50 {:>8.1}us  p99 {:>8.1}us  (THINK minus direct)",
            pct(&through, 0.5) - pct(&floor, 0.5),
            pct(&through, 0.99) - pct(&floor, 0.99)
        );
    }
    println!(
        "  throughput, {AGENTS} agents, backend concurrency 8: {rate:.0} THINK/s over {} requests \
         (latency p50 {:.1}us p99 {:.1}us)",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    if !bench {
        assert_eq!(
            fake.server.requests().len(),
            2 * n + n / 10 + AGENTS + lat.len()
        );
        println!("think-bench: 1 passed, 0 failed");
    }
}
