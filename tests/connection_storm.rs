//! Item 8 of the security review (flooding): a client opening connections as fast as it can
//! and sending garbage on each delayed an already connected client's NOOP to 160-270 ms and
//! wrote a WARN line per connection (64,000 in 8 s). The reactor takes a bounded number of
//! new connections per turn, so established ones keep their share, and per-connection
//! warnings are rate-limited with a periodic count of those suppressed.

use crate::harness::Daemon;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[test]
fn a_connection_storm_leaves_an_established_client_its_share_and_the_log_readable() {
    // The log level a user runs with (the harness's default is debug).
    let d = Daemon::with_config_env("", &[("CLOVE_LOG", "info")]);
    let mut c = d.client();
    assert_eq!(
        c.call_raw(crate::harness::op::NOOP, b"warm").payload,
        b"warm"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let storm: Vec<_> = (0..2)
        .map(|_| {
            let (stop, made, socket) = (stop.clone(), made.clone(), d.socket.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = UnixStream::connect(&socket) {
                        let _ = s.write_all(b"GET /garbage HTTP/1.1\r\n\r\n");
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut rtts = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let t = Instant::now();
        let f = c.call_raw(crate::harness::op::NOOP, b"n");
        rtts.push(t.elapsed());
        assert_eq!(f.payload, b"n");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in storm {
        t.join().unwrap();
    }
    let made = made.load(Ordering::Relaxed);
    rtts.sort();
    let p50 = rtts[rtts.len() / 2];
    let p99 = rtts[rtts.len() * 99 / 100];
    let max = rtts[rtts.len() - 1];
    eprintln!(
        "storm: {made} connections in 3.3 s; NOOP of the established client over {} samples: \
         p50 {p50:?} p99 {p99:?} max {max:?}",
        rtts.len()
    );
    assert!(made > 3000, "the storm made only {made} connections");
    assert!(
        p99 < Duration::from_millis(50),
        "an established client's NOOP took {p99:?} (p99; p50 {p50:?}, max {max:?}) during a \
         storm of {made} connections"
    );
    // The daemon still answers, and said what happened without a line per connection.
    assert_eq!(
        c.call_raw(crate::harness::op::NOOP, b"after").payload,
        b"after"
    );
    let logs = d.logs();
    let warns = logs.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(
        warns <= 60,
        "{warns} WARN lines for {made} bad connections; the first: {}",
        logs.lines().find(|l| l.contains(" WARN ")).unwrap_or("")
    );
    wait_for_summary(&d);
}

/// The suppressed warnings are counted in a summary line once the interval has passed.
fn wait_for_summary(d: &Daemon) {
    crate::harness::wait_for(
        "a line counting the suppressed warnings",
        Duration::from_secs(15),
        || d.logs().contains("suppressed").then_some(()),
    );
}
