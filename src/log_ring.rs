//! The daemon's most recent warnings and errors, kept in memory so that `clove status` can
//! show them (through HELLO) without anyone reading the log.
//!
//! [`install`] puts a logger in front of the real one (env_logger): every record still goes
//! there, and warnings and errors are also copied into a small ring. The ring is bounded
//! ([`CAPACITY`] entries of at most [`MAX_MESSAGE`] bytes), so a flood of warnings costs a
//! fixed amount of memory; the oldest entries make room.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Entries kept.
pub const CAPACITY: usize = 20;
/// Longest message kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_MESSAGE: usize = 400;

/// One warning or error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// ISO-8601 UTC.
    pub time: String,
    pub level: &'static str,
    pub target: String,
    pub message: String,
}

static RING: Mutex<VecDeque<Problem>> = Mutex::new(VecDeque::new());

/// Copies a record into the ring.
pub fn record(level: Level, target: &str, message: String) {
    let mut message = message;
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    let p = Problem {
        time: crate::clock::iso8601(std::time::SystemTime::now()),
        level: if level == Level::Error {
            "ERROR"
        } else {
            "WARN"
        },
        target: target.to_string(),
        message,
    };
    // A poisoned lock only means a panic while holding it; the ring is still usable.
    let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    if ring.len() == CAPACITY {
        ring.pop_front();
    }
    ring.push_back(p);
}

/// The recent problems, oldest first.
pub fn recent() -> Vec<Problem> {
    let ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    ring.iter().cloned().collect()
}

/// A logger that hands every record to `inner` and keeps warnings and errors.
struct Ring<L> {
    inner: L,
}

impl<L: Log> Log for Ring<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= Level::Warn || self.inner.enabled(m)
    }

    fn log(&self, r: &Record) {
        if r.level() <= Level::Warn {
            record(r.level(), r.target(), r.args().to_string());
        }
        if self.inner.enabled(r.metadata()) {
            self.inner.log(r);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs `inner` as the process's logger, behind the ring. Warnings are kept even when
/// `inner` filters them out. Does nothing if a logger is already installed.
pub fn install(inner: env_logger::Logger) {
    let level = inner.filter().max(LevelFilter::Warn);
    if log::set_boxed_logger(Box::new(Ring { inner })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_problems_cut_to_size() {
        for i in 0..CAPACITY + 5 {
            record(Level::Warn, "t", format!("problem {i}"));
        }
        record(Level::Error, "t", "x".repeat(MAX_MESSAGE * 2));
        let r = recent();
        assert_eq!(r.len(), CAPACITY);
        assert_eq!(r[0].message, "problem 6");
        let last = &r[CAPACITY - 1];
        assert_eq!(last.level, "ERROR");
        assert_eq!(last.message.len(), MAX_MESSAGE + 3);
    }
}
