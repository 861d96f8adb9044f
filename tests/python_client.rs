//! The framing checked from a second language: a stdlib-only Python client (as the Clove Python
//! SDK is) runs a short session against the real daemon.

use crate::harness::Daemon;
use std::process::Command;

#[test]
fn python_stdlib_client_session() {
    let d = Daemon::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/session.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&d.socket)
        .output()
        .expect("python3 must be installed (scripts/install-test-deps.sh does it)");
    assert!(
        out.status.success(),
        "python session failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python session ok"));
}
