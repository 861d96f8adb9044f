//! Relay benchmark: `cargo bench --bench relay`.
//!
//! Measures clove's relay against, in the same run and with the same load generator:
//! - the **anchor**: a minimal Node server on socket.io 4.8 answering the same events the way
//!   ClawNet does (`tests/relay_clients/anchor.js`; ClawNet is exactly such a server);
//! - the **floor**: a plain `ws` echo server (`tests/relay_clients/floor.js`), what any
//!   WebSocket server on this machine costs, with no Engine.IO or Socket.IO at all.
//!
//! Printed, each with the anchor's and the floor's figure: connects per second (full
//! Engine.IO + Socket.IO handshake with an agent id, so presence is broadcast), the
//! `latency_ping` ack round trip p50/p99 on 1 and on 100 connections, acks per second with 100
//! connections, the time for one chat to reach 1,000 clients, and the server's RSS with
//! 10,000 idle WebSocket clients.
//!
//! The load generator is one thread with one epoll (mio) speaking Engine.IO 4 / Socket.IO 5
//! over WebSocket itself, so that the client is never the bottleneck the way a Node client
//! would be. Every wait has a deadline. Each phase connects from its own loopback address
//! (127.0.0.X) so that closed connections in TIME_WAIT never run the ports out.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs every phase at a tiny size
//! against clove and the anchor, as a check that the benchmark still works. Sizes:
//! `BENCH_CONNECTS` (300), `BENCH_PINGS` (3000), `BENCH_CONNS` (100), `BENCH_ACKS` (30000),
//! `BENCH_FANOUT` (1000), `BENCH_IDLE` (10000).

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";

#[path = "support/mod.rs"]
mod support;
use support::{env_num, percentile, raise_fd_limit};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Clove,
    Anchor,
    Floor,
}

/// One of the three servers, and where it listens.
struct Server {
    kind: Kind,
    addr: SocketAddr,
    process: support::Server,
}

fn start(kind: Kind) -> Server {
    let env = [("CLAWNET_SECRET_KEY", SECRET)];
    let process = match kind {
        Kind::Clove => support::Server::clove(
            "clove-relay-bench",
            "[server]\nmax_connections = 30000\n[relay]\nlisten = \"127.0.0.1:0\"\nmax_sessions = 30000\n",
            &env,
        ),
        Kind::Anchor => support::Server::node("anchor.js", &env),
        Kind::Floor => support::Server::node("floor.js", &env),
    };
    let addr = match kind {
        Kind::Clove => process.listener("relay"),
        _ => process.node_addr(),
    };
    Server {
        kind,
        addr,
        process,
    }
}

#[derive(PartialEq)]
enum St {
    Upgrade,
    Open,
    Connect,
    Ready,
    Dead,
}

struct Conn {
    s: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    st: St,
    sent_at: Option<Instant>,
    next_id: u64,
    /// The Socket.IO CONNECT to send once the open packet came.
    auth: String,
}

/// A text frame, masked with a zero key (legal, and the XOR costs nothing).
fn client_frame(text: &str, out: &mut Vec<u8>) {
    out.push(0x81);
    match text.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(text.as_bytes());
}

/// One server frame at the front of `buf`: (opcode, payload range, length used).
fn server_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, hl) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= hl + len).then(|| (buf[0] & 0x0f, hl..hl + len, hl + len))
}

/// Clients of one server, driven by one epoll.
struct Load {
    kind: Kind,
    addr: SocketAddr,
    source: Ipv4Addr,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
}

impl Load {
    fn new(server: &Server, phase: u8) -> Load {
        Load {
            kind: server.kind,
            addr: server.addr,
            source: Ipv4Addr::new(127, 0, 0, phase),
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(4096),
            conns: Vec::new(),
        }
    }

    /// Starts one connection (bound to this phase's source address) and its upgrade request.
    fn start_conn(&mut self, agent: Option<String>) {
        let SocketAddr::V4(to) = self.addr else {
            unreachable!()
        };
        let fd = bound_connect(self.source, to);
        let std_stream = std::net::TcpStream::from(fd);
        std_stream.set_nodelay(true).unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from_std(std_stream);
        let path = if self.kind == Kind::Floor {
            "/"
        } else {
            "/socket.io/?EIO=4&transport=websocket"
        };
        let mut out = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        let token = Token(self.conns.len());
        self.poll
            .registry()
            .register(&mut s, token, Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        let _ = s.write(&out).map(|n| out.drain(..n));
        let auth = match agent {
            Some(a) => format!("40{{\"token\":\"{SECRET}\",\"agent_id\":\"{a}\"}}"),
            None => format!("40{{\"token\":\"{SECRET}\"}}"),
        };
        self.conns.push(Conn {
            s,
            inbuf: Vec::new(),
            out,
            st: St::Upgrade,
            sent_at: None,
            next_id: 1,
            auth,
        });
    }
}

/// What one pump turn saw: application text frames per connection.
type Texts = Vec<(usize, String)>;

impl Load {
    fn send(&mut self, i: usize, text: &str) {
        let c = &mut self.conns[i];
        client_frame(text, &mut c.out);
        flush(c);
    }

    /// Waits up to `timeout` for input; answers pings, advances handshakes, returns texts of
    /// connections that are ready.
    fn pump(&mut self, timeout: Duration) -> Texts {
        let mut texts = Vec::new();
        let _ = self.poll.poll(&mut self.events, Some(timeout));
        let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for i in ready {
            self.service(i, &mut texts);
        }
        texts
    }

    fn service(&mut self, i: usize, texts: &mut Texts) {
        let kind = self.kind;
        let c = &mut self.conns[i];
        flush(c);
        let mut chunk = [0u8; 65536];
        loop {
            match c.s.read(&mut chunk) {
                Ok(0) => {
                    c.st = St::Dead;
                    break;
                }
                Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.st = St::Dead;
                    break;
                }
            }
        }
        if c.st == St::Upgrade {
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            assert!(
                c.inbuf.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&c.inbuf)
            );
            c.inbuf.drain(..end + 4);
            c.st = if kind == Kind::Floor {
                St::Ready
            } else {
                St::Open
            };
        }
        let mut used = 0;
        while let Some((op, range, n)) = server_frame(&c.inbuf[used..]) {
            let start = used;
            used += n;
            if op != 1 {
                continue;
            }
            let text = &c.inbuf[start + range.start..start + range.end];
            match (&c.st, text) {
                (_, b"2") if kind != Kind::Floor => client_frame("3", &mut c.out),
                (St::Open, t) if t.starts_with(b"0") => {
                    let auth = std::mem::take(&mut c.auth);
                    client_frame(&auth, &mut c.out);
                    c.st = St::Connect;
                }
                (St::Connect, t) if t.starts_with(b"40") => c.st = St::Ready,
                (St::Connect, t) if t.starts_with(b"44") => {
                    panic!("refused: {}", String::from_utf8_lossy(t))
                }
                (St::Ready, t) => texts.push((i, String::from_utf8_lossy(t).into_owned())),
                _ => {}
            }
        }
        c.inbuf.drain(..used);
        flush(c);
    }

    fn ready(&self) -> usize {
        self.conns.iter().filter(|c| c.st == St::Ready).count()
    }

    /// Opens `n` connections, at most `at_once` handshakes in flight; returns the time taken.
    fn open(&mut self, n: usize, at_once: usize, agents: Option<&str>) -> Duration {
        let t0 = Instant::now();
        let first = self.conns.len();
        let deadline = t0 + Duration::from_secs(120);
        while self.ready() < first + n {
            let started = self.conns.len() - first;
            let in_flight = started - (self.ready() - first);
            for k in started..(started + at_once.saturating_sub(in_flight)).min(n) {
                self.start_conn(agents.map(|p| format!("{p}-{k}")));
            }
            self.pump(Duration::from_millis(10));
            assert!(
                Instant::now() < deadline,
                "{:?}: only {} of {n} connected",
                self.kind,
                self.ready() - first
            );
            assert!(
                !self.conns.iter().any(|c| c.st == St::Dead),
                "{:?}: a connection was closed",
                self.kind
            );
        }
        t0.elapsed()
    }

    fn ping_text(&mut self, i: usize) -> String {
        let c = &mut self.conns[i];
        let id = c.next_id;
        c.next_id += 1;
        match self.kind {
            Kind::Floor => format!("p{id}"),
            _ => format!("42{id}[\"latency_ping\",{{}}]"),
        }
    }

    fn is_ack(&self, text: &str) -> bool {
        match self.kind {
            Kind::Floor => text.starts_with('p'),
            _ => text.starts_with("43"),
        }
    }

    /// Each of `conns` keeps one `latency_ping` in flight until `total` acks came back;
    /// returns the round trips and the time taken.
    fn pings(&mut self, conns: std::ops::Range<usize>, total: usize) -> (Vec<Duration>, Duration) {
        let mut samples = Vec::with_capacity(total);
        let t0 = Instant::now();
        let mut sent = 0;
        for i in conns.clone() {
            let text = self.ping_text(i);
            self.conns[i].sent_at = Some(Instant::now());
            self.send(i, &text);
            sent += 1;
        }
        let deadline = t0 + Duration::from_secs(300);
        while samples.len() < total {
            for (i, text) in self.pump(Duration::from_millis(50)) {
                if !conns.contains(&i) || !self.is_ack(&text) {
                    continue;
                }
                if let Some(at) = self.conns[i].sent_at.take() {
                    samples.push(at.elapsed());
                }
                if sent < total {
                    let text = self.ping_text(i);
                    self.conns[i].sent_at = Some(Instant::now());
                    self.send(i, &text);
                    sent += 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: pings stalled at {}",
                self.kind,
                samples.len()
            );
        }
        (samples, t0.elapsed())
    }

    /// Connection `from` sends one chat to everyone; returns when every other connection got it.
    fn fan_out(&mut self, from: usize, round: usize) -> Duration {
        let marker = format!("fan-{round}-x");
        let text = match self.kind {
            Kind::Floor => format!("broadcast {marker}"),
            _ => format!("420[\"chat\",{{\"to\":\"all\",\"msg\":\"{marker}\"}}]"),
        };
        let mut got = vec![false; self.conns.len()];
        got[from] = true;
        let mut missing = self.conns.len() - 1;
        let t0 = Instant::now();
        self.send(from, &text);
        while missing > 0 {
            for (i, t) in self.pump(Duration::from_millis(50)) {
                if !got[i] && t.contains(&marker) {
                    got[i] = true;
                    missing -= 1;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{:?}: {missing} never got the broadcast",
                self.kind
            );
        }
        t0.elapsed()
    }

    /// Keeps reading (so nothing piles up anywhere) for `d`.
    fn settle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.pump(Duration::from_millis(20));
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A TCP connection from `source` (any port) to `to`, connected (blocking; loopback is fast).
fn bound_connect(source: Ipv4Addr, to: SocketAddrV4) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the addresses live for each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let from = sockaddr(SocketAddrV4::new(source, 0));
        let r = libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len);
        assert_eq!(r, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let dest = sockaddr(to);
        let r = libc::connect(fd, (&dest as *const libc::sockaddr_in).cast(), len);
        assert_eq!(r, 0, "connect {to}: {}", std::io::Error::last_os_error());
        owned
    }
}

fn flush(c: &mut Conn) {
    while !c.out.is_empty() {
        match c.s.write(&c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(_) => break,
        }
    }
}

/// Every figure of one server.
#[derive(Default, Clone)]
struct Figures {
    connects_per_s: f64,
    p1: (f64, f64),
    p100: (f64, f64),
    acks_per_s: f64,
    fan_out_ms: f64,
    idle_rss_mb: f64,
    idle_kb_per_conn: f64,
}

struct Sizes {
    connects: usize,
    pings: usize,
    conns: usize,
    acks: usize,
    fanout: usize,
    idle: usize,
}

fn measure(kind: Kind, z: &Sizes) -> Figures {
    let server = start(kind);
    let mut f = Figures::default();
    let agents = (kind != Kind::Floor).then_some("agent");
    {
        let mut load = Load::new(&server, 2);
        let t = load.open(z.connects, 50, agents);
        f.connects_per_s = z.connects as f64 / t.as_secs_f64();
    }
    {
        let mut load = Load::new(&server, 3);
        load.open(1, 1, None);
        let (mut s, _) = load.pings(0..1, z.pings);
        s.sort();
        f.p1 = (percentile(&s, 0.5), percentile(&s, 0.99));
    }
    {
        let mut load = Load::new(&server, 4);
        load.open(z.conns, 50, None);
        let (mut s, took) = load.pings(0..z.conns, z.acks);
        s.sort();
        f.p100 = (percentile(&s, 0.5), percentile(&s, 0.99));
        f.acks_per_s = z.acks as f64 / took.as_secs_f64();
    }
    {
        let mut load = Load::new(&server, 5);
        load.open(z.fanout + 1, 100, None);
        load.settle(Duration::from_millis(200));
        let mut times: Vec<Duration> = (0..5).map(|r| load.fan_out(0, r)).collect();
        times.sort();
        f.fan_out_ms = times[2].as_secs_f64() * 1000.0;
    }
    {
        std::thread::sleep(Duration::from_millis(500));
        let before = server.process.rss_kib();
        let mut load = Load::new(&server, 6);
        load.open(z.idle, 200, None);
        load.settle(Duration::from_secs(1));
        let after = server.process.rss_kib();
        f.idle_rss_mb = after as f64 / 1024.0;
        f.idle_kb_per_conn = after.saturating_sub(before) as f64 / z.idle as f64;
    }
    f
}

fn print_table(z: &Sizes, rows: &[(Kind, Figures)]) {
    let get = |k: Kind| rows.iter().find(|(x, _)| *x == k).map(|(_, f)| f.clone());
    let (c, a, fl) = (
        get(Kind::Clove).unwrap_or_default(),
        get(Kind::Anchor),
        get(Kind::Floor),
    );
    let col = |f: &Option<Figures>, v: &dyn Fn(&Figures) -> String| {
        f.as_ref().map(v).unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<46} {:>16} {:>16} {:>16}",
        "relay benchmark", "clove", "anchor", "floor (ws echo)"
    );
    let line = |name: String, v: &dyn Fn(&Figures) -> String| {
        println!(
            "{:<46} {:>16} {:>16} {:>16}",
            name,
            v(&c),
            col(&a, v),
            col(&fl, v)
        );
    };
    line(
        format!("connects/s ({} with agent ids, 50 at once)", z.connects),
        &|f| format!("{:.0}", f.connects_per_s),
    );
    line("latency_ping, 1 connection, p50/p99 ms".into(), &|f| {
        format!("{:.3}/{:.3}", f.p1.0, f.p1.1)
    });
    line(
        format!("latency_ping, {} connections, p50/p99 ms", z.conns),
        &|f| format!("{:.2}/{:.2}", f.p100.0, f.p100.1),
    );
    line(format!("acks/s, {} connections", z.conns), &|f| {
        format!("{:.0}", f.acks_per_s)
    });
    line(
        format!("chat to {} clients, ms (median of 5)", z.fanout),
        &|f| format!("{:.1}", f.fan_out_ms),
    );
    line(format!("RSS with {} idle ws clients, MB", z.idle), &|f| {
        format!("{:.1}", f.idle_rss_mb)
    });
    line("  RSS per idle client, KiB".into(), &|f| {
        format!("{:.1}", f.idle_kb_per_conn)
    });
    if let Some(a) = a {
        println!(
            "clove / anchor: {:.1}x connects/s, {:.1}x acks/s, {:.2}x memory per client",
            c.connects_per_s / a.connects_per_s,
            c.acks_per_s / a.acks_per_s,
            c.idle_kb_per_conn / a.idle_kb_per_conn.max(0.001)
        );
    }
}

fn main() {
    raise_fd_limit();
    let full = std::env::args().any(|a| a == "--bench");
    if !full {
        // Under `cargo test --all-targets`: every phase at a tiny size, against clove and the
        // anchor, so the benchmark cannot rot (run `cargo bench --bench relay` to measure).
        let z = Sizes {
            connects: 20,
            pings: 50,
            conns: 10,
            acks: 200,
            fanout: 20,
            idle: 100,
        };
        let rows = vec![
            (Kind::Clove, measure(Kind::Clove, &z)),
            (Kind::Anchor, measure(Kind::Anchor, &z)),
        ];
        print_table(&z, &rows);
        for (k, f) in &rows {
            assert!(
                f.connects_per_s > 0.0 && f.acks_per_s > 0.0 && f.fan_out_ms > 0.0,
                "{k:?}"
            );
            assert!(f.idle_rss_mb > 0.0, "{k:?}: no RSS read");
        }
        println!("relay bench setup smoke test: 1 passed, 0 failed");
        return;
    }
    let z = Sizes {
        connects: env_num("BENCH_CONNECTS", 300),
        pings: env_num("BENCH_PINGS", 3000),
        conns: env_num("BENCH_CONNS", 100),
        acks: env_num("BENCH_ACKS", 30000),
        fanout: env_num("BENCH_FANOUT", 1000),
        idle: env_num("BENCH_IDLE", 10000),
    };
    let rows: Vec<(Kind, Figures)> = [Kind::Clove, Kind::Anchor, Kind::Floor]
        .into_iter()
        .map(|k| (k, measure(k, &z)))
        .collect();
    print_table(&z, &rows);
}
