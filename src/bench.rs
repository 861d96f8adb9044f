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
        if let (Some(pid), Some(rss)) = (self.server_pid, self.server_rss_kib) {
            write!(f, "\n  server pid {pid} rss {:.1} MiB", rss as f64 / 1024.0)?;
        }
        Ok(())
    }
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
    if spec.conns == 0 || spec.window == 0 || spec.requests == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "conns, window and requests must be at least 1",
        ));
    }
    let value = "x".repeat(spec.size);
    let keys = spec.keys.max(1);
    if spec.op == BenchOp::Fetch {
        let mut c = crate::client::Client::connect(&spec.socket)?;
        for i in 0..keys {
            let r = c.call(
                crate::kernel::ops::STORE,
                format!("{{\"key\":\"bench:{i}\",\"value\":\"{value}\"}}").as_bytes(),
            )?;
            if !r.payload.starts_with(b"{\"success\":true") {
                return Err(io::Error::other(format!(
                    "cannot prepare keys: {}",
                    String::from_utf8_lossy(&r.payload)
                )));
            }
        }
    }
    let noop_frame = clove::encode(0, crate::kernel::ops::NOOP, value.as_bytes());
    let make = |i: u64, out: &mut Vec<u8>| match spec.op {
        BenchOp::Noop => out.extend_from_slice(&noop_frame),
        BenchOp::Store => clove::encode_into(
            out,
            0,
            crate::kernel::ops::STORE,
            format!(
                "{{\"key\":\"bench:{}\",\"value\":\"{value}\"}}",
                i % keys as u64
            )
            .as_bytes(),
        ),
        BenchOp::Fetch => clove::encode_into(
            out,
            0,
            crate::kernel::ops::FETCH,
            format!("{{\"key\":\"bench:{}\"}}", i % keys as u64).as_bytes(),
        ),
    };

    // Idle connections: each proves itself with one NOOP, then just stays open.
    let mut idle = Vec::with_capacity(spec.idle);
    for _ in 0..spec.idle {
        let mut s = std::os::unix::net::UnixStream::connect(&spec.socket)?;
        s.write_all(&clove::encode(0, 0, b"idle"))?;
        let r = crate::client::read_frame(&mut s)?;
        if r.payload != b"idle" {
            return Err(io::Error::other("idle connection got a wrong echo"));
        }
        idle.push(s);
    }

    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        let s = std::os::unix::net::UnixStream::connect(&spec.socket)?;
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
            inflight: VecDeque::with_capacity(spec.window),
        });
    }
    let server_pid = peer_pid(&conns[0].stream);

    let total = spec.requests + spec.warmup;
    let mut issued: u64 = 0;
    let mut done: u64 = 0;
    let mut errors: u64 = 0;
    let mut lat: Vec<u32> = Vec::with_capacity(spec.requests as usize);
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
    })
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
