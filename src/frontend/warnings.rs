//! A rate limit for warnings about single connections (a refused peer, a broken frame, a
//! client dropped for not reading).
//!
//! Each such warning is caused by a peer, so a peer can cause them as fast as it can connect:
//! a storm of 18,000 bad connections a second wrote 64,000 WARN lines in 8 seconds, burying
//! everything else in the log and costing the event loop a write each. The first
//! [`BURST`] warnings of each [`WINDOW`] are logged; the rest are counted, and one line
//! says how many were suppressed once the window is over. One limiter is shared by the event
//! loop and the front-ends it drives (single-threaded: plain cells, no lock).

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

/// Warnings logged per window before the rest are only counted.
pub const BURST: u32 = 10;
/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(5);

/// The limiter: see the module documentation.
#[derive(Debug, Default)]
pub struct Warnings {
    /// When the current window began (`None` before the first warning).
    start: Cell<Option<Instant>>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl Warnings {
    pub fn new() -> Warnings {
        Warnings::default()
    }

    /// Logs a warning at WARN for `target` (the caller's `module_path!()`, so log filters
    /// by module still apply), unless this window's burst has been logged already.
    pub fn warn(&self, target: &str, args: fmt::Arguments) {
        if self.admit(Instant::now()) {
            log::warn!(target: target, "{args}");
        }
    }

    /// Whether a warning at `now` may be logged (if not, it is counted). A window that is
    /// over is closed first, with its summary line.
    pub fn admit(&self, now: Instant) -> bool {
        if let Some(n) = self.summary_due(now) {
            log_summary(n);
        }
        if self.start.get().is_none() {
            self.start.set(Some(now));
        }
        if self.logged.get() < BURST {
            self.logged.set(self.logged.get() + 1);
            true
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            false
        }
    }

    /// Logs the summary of a window that is over, if it suppressed anything (for the event
    /// loop's timers: the summary must come even if no warning follows).
    pub fn tick(&self, now: Instant) {
        if let Some(n) = self.summary_due(now) {
            log_summary(n);
        }
    }

    /// When [`Warnings::tick`] has a summary to log: the end of a window that suppressed
    /// something.
    pub fn next_tick(&self) -> Option<Instant> {
        match self.start.get() {
            Some(start) if self.suppressed.get() > 0 => Some(start + WINDOW),
            _ => None,
        }
    }

    /// Closes the current window if it is over: returns how many warnings it suppressed (if
    /// any), and starts afresh.
    fn summary_due(&self, now: Instant) -> Option<u64> {
        let start = self.start.get()?;
        if now.duration_since(start) < WINDOW {
            return None;
        }
        let n = self.suppressed.replace(0);
        self.logged.set(0);
        self.start.set(None);
        (n > 0).then_some(n)
    }
}

fn log_summary(n: u64) {
    log::warn!(
        "suppressed {n} more warnings about connections in the last {}s (the first {BURST} of \
         every {}s are logged)",
        WINDOW.as_secs(),
        WINDOW.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_window_pass_the_rest_are_counted_once_it_is_over() {
        let w = Warnings::new();
        let t0 = Instant::now();
        let passed = (0..1000)
            .filter(|i| w.admit(t0 + Duration::from_micros(*i)))
            .count();
        assert_eq!(passed, BURST as usize);
        assert_eq!(w.next_tick(), Some(t0 + WINDOW));
        assert_eq!(w.summary_due(t0 + WINDOW / 2), None);
        assert_eq!(w.summary_due(t0 + WINDOW), Some(1000 - BURST as u64));
        // A new window: its burst passes again; a quiet window has nothing to say.
        assert_eq!(w.next_tick(), None);
        let t1 = t0 + WINDOW * 3;
        assert!(w.admit(t1));
        assert_eq!(w.next_tick(), None);
        assert_eq!(w.summary_due(t1 + WINDOW), None);
    }
}
