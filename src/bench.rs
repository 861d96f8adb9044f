//! `clove bench`: a load generator for the Clove protocol, in the manner of redis-benchmark.
//!
//! One thread drives every connection from its own `mio::Poll`, so the client costs one core
//! at most and the same client measures clove and the limit probe (`limit-echo`) alike. Each
//! connection keeps `window` requests in flight (1 = strict request/response, more =
//! pipelining). Latency is measured per request from the moment its bytes are handed to the
//! socket to the moment its reply is parsed.

use crate::proto::clove;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    /// NOOP with a payload of `--size` bytes (echoed back).
    Noop,
    /// STORE of a `--size`-byte string value under one of `--keys` keys.
    Store,
    /// FETCH of one of `--keys` keys (stored before the run).
    Fetch,
}

/// A benchmark to run.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub socket: PathBuf,
    pub op: BenchOp,
    pub conns: usize,
    pub requests: u64,
    pub window: usize,
    pub size: usize,
    pub keys: usize,
    pub idle: usize,
    pub warmup: u64,
    /// Extra connections that STORE continuously (each with one write in flight) while the
    /// measured run goes on: FETCH under concurrent writes.
    pub background_writers: usize,
    /// Total STOREs per second of the background writers (0: as fast as they are answered).
    pub background_rate: u64,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub op: String,
    pub conns: usize,
    pub window: usize,
    pub size: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub idle_conns: usize,
    pub server_pid: Option<i32>,
    pub server_rss_kib: Option<u64>,
    /// Acknowledged STOREs per second of the background writers, if any ran.
    pub background_writes_per_sec: Option<f64>,
    /// The state store's commits during the run (from HELLO before and after), if the server
    /// reports them.
    pub store: Option<StoreFigures>,
}

/// What the state store's writer did during a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreFigures {
    pub sync: String,
    pub commits: u64,
    pub changes: u64,
    pub avg_batch: f64,
    /// (batch size bucket, commits), smallest first; only buckets that were used.
    pub batch_sizes: Vec<(String, u64)>,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "op={} conns={} window={} size={} requests={} idle_conns={}",
            self.op, self.conns, self.window, self.size, self.requests, self.idle_conns
        )?;
        writeln!(
            f,
            "  throughput {:.0} req/s over {:.2}s, errors {}",
            self.throughput, self.seconds, self.errors
        )?;
        write!(
            f,
            "  latency p50 {:.1}us  p99 {:.1}us  p99.9 {:.1}us  max {:.1}us",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        if let Some(w) = self.background_writes_per_sec {
            write!(f, "\n  concurrent background STOREs: {w:.0}/s")?;
        }
        if let Some(s) = &self.store {
            let sizes: Vec<String> = s
                .batch_sizes
                .iter()
                .map(|(b, n)| format!("{b}:{n}"))
                .collect();
            write!(
                f,
                "\n  store (sync={}): {} commits of {} changes, average batch {:.2}; commits by batch size {}",
                s.sync,
                s.commits,
                s.changes,
                s.avg_batch,
                if sizes.is_empty() {
                    "-".to_string()
                } else {
                    sizes.join(" ")
                }
            )?;
        }
        if let (Some(pid), Some(rss)) = (self.server_pid, self.server_rss_kib) {
            write!(f, "\n  server pid {pid} rss {:.1} MiB", rss as f64 / 1024.0)?;
        }
        Ok(())
    }
}

/// Lists sized by a command-line number are preallocated up to this many entries and grow past
/// it, so an absurd `-c` or `-P` fails on what it really needs, not on a giant allocation.
const PREALLOC: usize = 4096;

/// Connects to the server, saying where and what to check when that fails.
fn connect(socket: &std::path::Path) -> io::Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {}: {e} (is `clove serve` running? set --socket or CLOVE_SOCKET)",
                socket.display()
            ),
        )
    })
}

struct BenchConn {
    stream: UnixStream,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    inflight: VecDeque<Instant>,
}

/// Runs a benchmark and returns its figures.
pub fn run(spec: &BenchSpec) -> io::Result<BenchResult> {
    for (flag, value) in [
        ("-c/--conns", spec.conns as u64),
        ("-P/--window", spec.window as u64),
        ("-n/--requests", spec.requests),
    ] {
        if value == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{flag} must be at least 1 (got 0)"),
            ));
        }
    }
    let value = "x".repeat(spec.size);
    let keys = spec.keys.max(1);
    // The bench's keys live under a prefix of their own and are deleted when it ends, so a
    // run leaves nothing in the user's store.
    let prefix = key_prefix();
    // One control connection prepares the keys and reads the store's figures before and after,
    // and stays open for the whole run: the daemon does work when a connection closes (it drops
    // the caller's private state, a store commit), and the bench's own must not fall into the
    // measured window.
    let mut control = crate::client::Client::connect(&spec.socket)?;
    if spec.op == BenchOp::Fetch {
        let c = &mut control;
        for i in 0..keys {
            let r = c.call(
                crate::proto::op::STORE,
                format!("{{\"key\":\"{prefix}{i}\",\"value\":\"{value}\"}}").as_bytes(),
            )?;
            if !r.payload.starts_with(b"{\"success\":true") {
                return Err(io::Error::other(format!(
                    "cannot prepare keys: {}",
                    String::from_utf8_lossy(&r.payload)
                )));
            }
        }
    }
    let noop_frame = clove::encode(0, crate::proto::op::NOOP, value.as_bytes());
    let make = |i: u64, out: &mut Vec<u8>| match spec.op {
        BenchOp::Noop => out.extend_from_slice(&noop_frame),
        BenchOp::Store => clove::encode_into(
            out,
            0,
            crate::proto::op::STORE,
            format!(
                "{{\"key\":\"{prefix}{}\",\"value\":\"{value}\"}}",
                i % keys as u64
            )
            .as_bytes(),
        ),
        BenchOp::Fetch => clove::encode_into(
            out,
            0,
            crate::proto::op::FETCH,
            format!("{{\"key\":\"{prefix}{}\"}}", i % keys as u64).as_bytes(),
        ),
    };

    // Idle connections: each proves itself with one NOOP, then just stays open.
    let mut idle = Vec::with_capacity(spec.idle.min(PREALLOC));
    for _ in 0..spec.idle {
        let mut s = connect(&spec.socket)?;
        s.write_all(&clove::encode(0, 0, b"idle"))?;
        let r = crate::client::read_frame(&mut s)?;
        if r.payload != b"idle" {
            return Err(io::Error::other("idle connection got a wrong echo"));
        }
        idle.push(s);
    }

    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(spec.conns.min(PREALLOC));
    for i in 0..spec.conns {
        let s = connect(&spec.socket)?;
        s.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(s);
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(BenchConn {
            stream,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            inflight: VecDeque::with_capacity(spec.window.min(PREALLOC)),
        });
    }
    let server_pid = peer_pid(&conns[0].stream);
    let stats_before = store_stats(&mut control);
    let background = Background::start(spec)?;

    let total = spec.requests + spec.warmup;
    let mut issued: u64 = 0;
    let mut done: u64 = 0;
    let mut errors: u64 = 0;
    let mut lat: Vec<u32> = Vec::with_capacity(spec.requests.min(1 << 24) as usize);
    let mut started = Instant::now();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];

    for c in conns.iter_mut() {
        fill(c, spec.window, total, &mut issued, &make);
        flush(c)?;
    }
    while done < total {
        poll.poll(&mut events, Some(Duration::from_secs(30)))?;
        if events.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply for 30s ({done} of {total} done)"),
            ));
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_readable() || ev.is_read_closed() {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "server closed a connection",
                            ));
                        }
                        Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                let now = Instant::now();
                let mut off = 0;
                while let Some((frame, used)) = clove::decode(&c.inbuf[off..], u64::MAX)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
                {
                    let sent = c.inflight.pop_front().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "reply without request")
                    })?;
                    let ok = match spec.op {
                        BenchOp::Noop => frame.payload.len() == spec.size,
                        _ => frame.payload.starts_with(b"{\"success\":true"),
                    };
                    if !ok {
                        errors += 1;
                    }
                    done += 1;
                    if done == spec.warmup {
                        started = now;
                    } else if done > spec.warmup {
                        lat.push(now.duration_since(sent).as_nanos().min(u32::MAX as u128) as u32);
                    }
                    off += used;
                }
                c.inbuf.drain(..off);
                fill(c, spec.window, total, &mut issued, &make);
            }
            flush(c)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let server_rss_kib = server_pid.and_then(rss_kib);
    let background_writes_per_sec = background.stop()?;
    let store = match (stats_before, store_stats(&mut control)) {
        (Some(a), Some(b)) => Some(store_delta(&a, &b)),
        _ => None,
    };
    if spec.op != BenchOp::Noop || spec.background_writers > 0 {
        delete_keys(&spec.socket, &mut control, &prefix)?;
    }
    drop(idle);
    Ok(BenchResult {
        op: format!("{:?}", spec.op).to_lowercase(),
        conns: spec.conns,
        window: spec.window,
        size: spec.size,
        requests: spec.requests,
        errors,
        seconds,
        throughput: spec.requests as f64 / seconds.max(1e-9),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: lat.last().map_or(0.0, |v| *v as f64 / 1000.0),
        idle_conns: spec.idle,
        server_pid,
        server_rss_kib,
        background_writes_per_sec,
        store,
    })
}

/// The `store` object of the server's HELLO reply (absent on servers without one).
fn store_stats(c: &mut crate::client::Client) -> Option<serde_json::Value> {
    let v = c.call(crate::proto::op::HELLO, b"{}").ok()?.json().ok()?;
    v.get("store").filter(|s| s["durable"] == true).cloned()
}

fn store_delta(a: &serde_json::Value, b: &serde_json::Value) -> StoreFigures {
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let commits = n(b, "commits").saturating_sub(n(a, "commits"));
    let changes = n(b, "changes_committed").saturating_sub(n(a, "changes_committed"));
    let buckets = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["batch_sizes"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or("?").to_string(),
                            p[1].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = buckets(a);
    let batch_sizes = buckets(b)
        .into_iter()
        .map(|(name, after)| {
            let was = before.iter().find(|(n, _)| *n == name).map_or(0, |x| x.1);
            (name, after.saturating_sub(was))
        })
        .filter(|(_, count)| *count > 0)
        .collect();
    StoreFigures {
        sync: b["sync"].as_str().unwrap_or("?").to_string(),
        commits,
        changes,
        avg_batch: changes as f64 / commits.max(1) as f64,
        batch_sizes,
    }
}

/// The prefix of this run's keys: `clove-bench:PID:`.
fn key_prefix() -> String {
    format!("clove-bench:{}:", std::process::id())
}

/// Deletes every key under `prefix`: listed with KEYS, deleted over a few connections with
/// one DELETE in flight on each (the store commits them in batches).
fn delete_keys(
    socket: &std::path::Path,
    control: &mut crate::client::Client,
    prefix: &str,
) -> io::Result<()> {
    loop {
        let req = serde_json::json!({"prefix": prefix, "limit": 10_000}).to_string();
        let listed = control
            .call(crate::proto::op::KEYS, req.as_bytes())?
            .json()?;
        let keys: Vec<String> = serde_json::from_value(listed["keys"].clone()).unwrap_or_default();
        if keys.is_empty() {
            return Ok(());
        }
        let mut conns = (0..keys.len().clamp(1, 8))
            .map(|_| connect(socket))
            .collect::<io::Result<Vec<_>>>()?;
        for batch in keys.chunks(conns.len()) {
            for (s, key) in conns.iter_mut().zip(batch) {
                let req = serde_json::json!({ "key": key }).to_string();
                s.write_all(&clove::encode(0, crate::proto::op::DELETE, req.as_bytes()))?;
            }
            for s in conns.iter_mut().take(batch.len()) {
                crate::client::read_frame(s)?;
            }
        }
        if listed["truncated"] != serde_json::Value::Bool(true) {
            return Ok(());
        }
    }
}

/// Background writers: one thread keeping one STORE in flight on each of its connections.
struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<(u64, Duration)>>>,
}

impl Background {
    fn start(spec: &BenchSpec) -> io::Result<Background> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if spec.background_writers == 0 {
            return Ok(Background { stop, thread: None });
        }
        let mut conns = Vec::with_capacity(spec.background_writers.min(PREALLOC));
        for _ in 0..spec.background_writers {
            let s = connect(&spec.socket)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            conns.push(s);
        }
        let flag = stop.clone();
        let value = "y".repeat(spec.size);
        let prefix = key_prefix();
        // One round sends one STORE per connection; pace rounds to reach the requested rate.
        let round_gap = (spec.background_rate > 0).then(|| {
            Duration::from_secs_f64(spec.background_writers as f64 / spec.background_rate as f64)
        });
        let thread = std::thread::Builder::new()
            .name("bench-writers".into())
            .spawn(move || -> io::Result<(u64, Duration)> {
                let started = Instant::now();
                let mut done = 0u64;
                let mut i = 0u64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    for (c, s) in conns.iter_mut().enumerate() {
                        let payload = format!(
                            "{{\"key\":\"{prefix}bg:{c}:{}\",\"value\":\"{value}\"}}",
                            i % 1000
                        );
                        s.write_all(&clove::encode(
                            0,
                            crate::proto::op::STORE,
                            payload.as_bytes(),
                        ))?;
                    }
                    for s in conns.iter_mut() {
                        let r = crate::client::read_frame(s)?;
                        if !r.payload.starts_with(b"{\"success\":true") {
                            return Err(io::Error::other(format!(
                                "background STORE failed: {}",
                                String::from_utf8_lossy(&r.payload)
                            )));
                        }
                        done += 1;
                    }
                    i += 1;
                    if let Some(gap) = round_gap {
                        // The load generator paces itself; it never waits on the server here.
                        let due = started + gap.mul_f64(i as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                }
                Ok((done, started.elapsed()))
            })?;
        Ok(Background {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the writers; returns their acknowledged writes per second.
    fn stop(mut self) -> io::Result<Option<f64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take() {
            None => Ok(None),
            Some(t) => {
                let (n, took) = t
                    .join()
                    .map_err(|_| io::Error::other("background writer panicked"))??;
                Ok(Some(n as f64 / took.as_secs_f64().max(1e-9)))
            }
        }
    }
}

fn fill(
    c: &mut BenchConn,
    window: usize,
    total: u64,
    issued: &mut u64,
    make: &impl Fn(u64, &mut Vec<u8>),
) {
    let now = Instant::now();
    while c.inflight.len() < window && *issued < total {
        make(*issued, &mut c.out);
        c.inflight.push_back(now);
        *issued += 1;
    }
}

fn flush(c: &mut BenchConn) -> io::Result<()> {
    while c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out.clear();
    c.out_pos = 0;
    Ok(())
}

fn peer_pid(s: &UnixStream) -> Option<i32> {
    use std::os::fd::AsFd;
    nix::sys::socket::getsockopt(&s.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
