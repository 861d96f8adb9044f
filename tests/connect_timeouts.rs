//! Connect timeouts, provoked for real: a loopback listener whose accept queue is full makes
//! the kernel drop the daemon's SYNs, so its connect hangs until `http.connect_timeout_secs` /
//! `llm.connect_timeout_secs` ends it. The reply says it was the connect that timed out, and
//! other clients are answered meanwhile.

use crate::fakes::Unanswered;
use crate::harness::{Client, Daemon, op};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Sends `request` from another client and, until its error arrives, keeps checking that NOOP
/// is answered promptly. Returns the error and how long it took.
fn err_while_others_are_served(d: &Daemon, opcode: u8, request: Value) -> (String, Duration) {
    let socket = d.socket.clone();
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        let mut c = Client::connect(&socket);
        (c.err(opcode, request), started.elapsed())
    });
    let mut c = d.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut noops, mut worst) = (0, Duration::ZERO);
    while !waiting.is_finished() {
        assert!(Instant::now() < deadline, "no reply within 30s");
        let t = Instant::now();
        assert_eq!(c.call_raw(op::NOOP, b"still here").payload, b"still here");
        worst = worst.max(t.elapsed());
        noops += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (err, took) = waiting.join().unwrap();
    assert!(
        noops >= 5,
        "only {noops} NOOPs while the call waited {took:?}"
    );
    assert!(
        worst < Duration::from_millis(500),
        "a NOOP took {worst:?} while the connect hung"
    );
    (err, took)
}

/// Roughly the configured second: not the request timeout (30 s), not an instant refusal.
fn assert_about_one_second(took: Duration) {
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "took {took:?} with a 1s connect timeout"
    );
}

#[test]
fn http_connect_timeout_is_reported_as_such() {
    let hole = Unanswered::start();
    let d = Daemon::with_config("[http]\nconnect_timeout_secs = 1\n");
    let url = format!("http://127.0.0.1:{}/never", hole.port());
    let (e, took) = err_while_others_are_served(&d, op::HTTP, json!({"url": url, "timeout": 30}));
    assert!(
        e.contains("cannot connect to 127.0.0.1: connection timed out")
            && e.contains("http.connect_timeout_secs"),
        "{e}"
    );
    assert_about_one_second(took);
}

#[test]
fn llm_connect_timeout_is_reported_as_such() {
    let hole = Unanswered::start();
    let d = Daemon::with_config(&format!(
        "[llm]\nconnect_timeout_secs = 1\nmax_retries = 0\ntimeout_secs = 30\n\
         [llm.models.far]\nbase_url = \"http://127.0.0.1:{}/v1\"\n",
        hole.port()
    ));
    let (e, took) = err_while_others_are_served(&d, op::THINK, json!({"prompt": "hello?"}));
    assert!(
        e.contains("cannot connect to the backend: connection timed out")
            && e.contains("llm.connect_timeout_secs"),
        "{e}"
    );
    assert_about_one_second(took);
}
