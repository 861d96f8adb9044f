//! Tests that measure time: a separate test binary, so that cargo runs it after (not beside)
//! the main suite's tests, and its figures are the daemon's, not those of whatever else the
//! suite runs at the same moment on a small machine. Keep it to tests that need it.

#[path = "harness.rs"]
mod harness;

mod connection_storm;
