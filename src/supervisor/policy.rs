//! The pure core of supervision: restart decisions and agent status transitions.
//!
//! Nothing here touches a process, a clock or a thread. [`RestartTracker::decide`] takes the
//! facts of one exit and `now` (milliseconds on any monotonic scale) and returns what to do;
//! [`Status::can_become`] is the one table of allowed status changes. Both are unit- and
//! property-tested below.
//!
//! The restart rules are OTP's intensity/period with a backoff in front:
//! * `never` never restarts; `on-failure` restarts after a non-zero exit or a death by signal,
//!   never after a clean exit; `always` restarts after any exit. An exit caused by a KILL
//!   request or by daemon shutdown is never restarted.
//! * At most `max_restarts` restarts may start within any `restart_window`. The exit that would
//!   need one more escalates instead: the agent is left stopped as FAILED (reported once).
//! * The n-th restart inside the current window waits `min(cap, initial * 2^(n-1))`; once old
//!   restarts fall out of the window the delay shrinks again.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// When an agent is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    /// Parses `never`, `on-failure` (also `on_failure`) or `always`.
    pub fn parse(text: &str) -> Result<RestartPolicy, String> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "never" | "no" => Ok(RestartPolicy::Never),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            _ => Err(format!(
                "invalid restart_policy {text:?}: use \"never\", \"on-failure\" or \"always\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// The restart settings of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartConfig {
    pub policy: RestartPolicy,
    /// Most restarts allowed to start within `window_ms`; 0 means "none": the first exit that
    /// would be restarted escalates.
    pub max_restarts: u32,
    pub window_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_cap_ms: u64,
}

/// Why a process ended, as far as the restart decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitFacts {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// It ended because someone asked (KILL, shutdown): never restarted.
    pub requested: bool,
}

impl ExitFacts {
    /// A non-zero exit or a death by signal.
    pub fn failed(&self) -> bool {
        self.signal.is_some() || self.code != Some(0)
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave it stopped (EXITED): the policy does not ask for a restart.
    Stop,
    /// Start it again at `at_ms` (after `delay_ms`); this is restart number `restart_count`
    /// over the agent's life.
    Restart {
        at_ms: u64,
        delay_ms: u64,
        restart_count: u32,
    },
    /// Too many restarts in the window: leave it stopped as FAILED and report it.
    Escalate { restart_count: u32 },
}

/// Restart history of one agent.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// Start times of the restarts still inside the window, oldest first. Never longer than
    /// `max_restarts`, so it is bounded.
    recent: VecDeque<u64>,
    /// Restarts over the agent's whole life.
    pub total: u32,
    /// Set once escalated; every later decision is `Stop`.
    pub escalated: bool,
}

impl RestartTracker {
    pub fn new() -> RestartTracker {
        RestartTracker::default()
    }

    /// Restarts inside the window ending at `now_ms`.
    pub fn in_window(&self, cfg: &RestartConfig, now_ms: u64) -> usize {
        self.recent
            .iter()
            .filter(|t| now_ms.saturating_sub(**t) < cfg.window_ms)
            .count()
    }

    /// Decides what follows an exit at `now_ms`, and records a restart when it says so.
    pub fn decide(&mut self, cfg: &RestartConfig, exit: &ExitFacts, now_ms: u64) -> Decision {
        if self.escalated || exit.requested {
            return Decision::Stop;
        }
        let wanted = match cfg.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit.failed(),
            RestartPolicy::Always => true,
        };
        if !wanted {
            return Decision::Stop;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= cfg.window_ms)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= cfg.max_restarts as usize {
            self.escalated = true;
            return Decision::Escalate {
                restart_count: self.total,
            };
        }
        let n = self.recent.len() as u32; // restarts already in the window
        let delay_ms = backoff(cfg.backoff_initial_ms, cfg.backoff_cap_ms, n);
        let at_ms = now_ms.saturating_add(delay_ms);
        // The restart counts from when it starts, so the window measures real restarts.
        self.recent.push_back(at_ms);
        self.total = self.total.saturating_add(1);
        Decision::Restart {
            at_ms,
            delay_ms,
            restart_count: self.total,
        }
    }
}

/// `min(cap, initial * 2^n)` without overflow.
pub fn backoff(initial_ms: u64, cap_ms: u64, n: u32) -> u64 {
    let factor = 1u64.checked_shl(n.min(63)).unwrap_or(u64::MAX);
    initial_ms.saturating_mul(factor).min(cap_ms)
}

/// An agent's status, as LIST shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The process is being started (namespaces, exec).
    Starting,
    Running,
    /// Frozen (cgroup freezer) or stopped (SIGSTOP).
    Paused,
    /// A KILL or shutdown is in progress: SIGTERM sent, SIGKILL scheduled.
    Stopping,
    /// Exited; waiting for its backoff delay before starting again.
    Restarting,
    /// Stopped for good without escalation (clean exit, policy, KILL).
    Exited,
    /// Stopped for good after too many restarts (escalated), or could not be started.
    Failed,
}

use Status::*;

/// Every allowed status change. Anything else is a bug in the supervisor.
pub const TRANSITIONS: &[(Status, Status)] = &[
    (Starting, Running),
    (Starting, Stopping),
    (Starting, Restarting),
    (Starting, Exited),
    (Starting, Failed),
    (Running, Paused),
    (Running, Stopping),
    (Running, Restarting),
    (Running, Exited),
    (Running, Failed),
    (Paused, Running),
    (Paused, Stopping),
    (Paused, Restarting),
    (Paused, Exited),
    (Paused, Failed),
    (Stopping, Exited),
    (Restarting, Starting),
    (Restarting, Exited),
    (Restarting, Failed),
];

impl Status {
    /// Is `self → next` in the table?
    pub fn can_become(self, next: Status) -> bool {
        TRANSITIONS.contains(&(self, next))
    }

    /// A process exists for this status.
    pub fn has_process(self) -> bool {
        matches!(self, Starting | Running | Paused | Stopping)
    }

    /// Stopped for good.
    pub fn is_final(self) -> bool {
        matches!(self, Exited | Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Starting => "STARTING",
            Running => "RUNNING",
            Paused => "PAUSED",
            Stopping => "STOPPING",
            Restarting => "RESTARTING",
            Exited => "EXITED",
            Failed => "FAILED",
        }
    }

    pub const ALL: [Status; 7] = [
        Starting, Running, Paused, Stopping, Restarting, Exited, Failed,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(policy: RestartPolicy, max: u32, window: u64) -> RestartConfig {
        RestartConfig {
            policy,
            max_restarts: max,
            window_ms: window,
            backoff_initial_ms: 100,
            backoff_cap_ms: 1000,
        }
    }

    const CRASH: ExitFacts = ExitFacts {
        code: Some(1),
        signal: None,
        requested: false,
    };
    const CLEAN: ExitFacts = ExitFacts {
        code: Some(0),
        signal: None,
        requested: false,
    };
    const SIGNALED: ExitFacts = ExitFacts {
        code: None,
        signal: Some(9),
        requested: false,
    };
    const KILLED: ExitFacts = ExitFacts {
        code: None,
        signal: Some(15),
        requested: true,
    };

    #[test]
    fn policies_table() {
        use RestartPolicy::*;
        // (policy, exit, restarts?)
        let table = [
            (Never, CRASH, false),
            (Never, CLEAN, false),
            (Never, SIGNALED, false),
            (OnFailure, CRASH, true),
            (OnFailure, CLEAN, false),
            (OnFailure, SIGNALED, true),
            (OnFailure, KILLED, false),
            (Always, CRASH, true),
            (Always, CLEAN, true),
            (Always, SIGNALED, true),
            (Always, KILLED, false),
        ];
        for (policy, exit, restarts) in table {
            let mut t = RestartTracker::new();
            let d = t.decide(&cfg(policy, 5, 10_000), &exit, 0);
            assert_eq!(
                matches!(d, Decision::Restart { .. }),
                restarts,
                "{policy:?} after {exit:?}: {d:?}"
            );
        }
    }

    #[test]
    fn escalates_once_after_max_restarts_in_window() {
        let c = cfg(RestartPolicy::Always, 3, 10_000);
        let mut t = RestartTracker::new();
        let mut now = 0;
        for i in 1..=3 {
            match t.decide(&c, &CRASH, now) {
                Decision::Restart {
                    at_ms,
                    restart_count,
                    delay_ms,
                } => {
                    assert_eq!(restart_count, i);
                    assert_eq!(delay_ms, backoff(100, 1000, i - 1));
                    now = at_ms + 10;
                }
                d => panic!("restart {i}: {d:?}"),
            }
        }
        assert_eq!(
            t.decide(&c, &CRASH, now),
            Decision::Escalate { restart_count: 3 }
        );
        assert_eq!(t.decide(&c, &CRASH, now + 100_000), Decision::Stop);
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let c = cfg(RestartPolicy::OnFailure, 2, 1_000);
        let mut t = RestartTracker::new();
        assert!(matches!(t.decide(&c, &CRASH, 0), Decision::Restart { .. }));
        assert!(matches!(
            t.decide(&c, &CRASH, 200),
            Decision::Restart { .. }
        ));
        // Both restarts (at 100 and 400) are more than a window old at 5000.
        match t.decide(&c, &CRASH, 5_000) {
            Decision::Restart { delay_ms, .. } => assert_eq!(delay_ms, 100, "backoff resets"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn zero_max_restarts_escalates_at_once() {
        let mut t = RestartTracker::new();
        assert_eq!(
            t.decide(&cfg(RestartPolicy::Always, 0, 1000), &CRASH, 0),
            Decision::Escalate { restart_count: 0 }
        );
    }

    #[test]
    fn backoff_is_capped_and_overflow_free() {
        assert_eq!(backoff(100, 1000, 0), 100);
        assert_eq!(backoff(100, 1000, 3), 800);
        assert_eq!(backoff(100, 1000, 4), 1000);
        assert_eq!(backoff(100, 1000, 200), 1000);
        assert_eq!(backoff(u64::MAX, u64::MAX, 5), u64::MAX);
        assert_eq!(backoff(0, 1000, 10), 0);
    }

    #[test]
    fn transitions_table() {
        // (from, to, allowed)
        let table = [
            (Starting, Running, true),
            (Running, Paused, true),
            (Paused, Running, true),
            (Paused, Stopping, true),
            (Running, Restarting, true),
            (Restarting, Starting, true),
            (Restarting, Exited, true),
            (Stopping, Exited, true),
            (Running, Failed, true),
            (Stopping, Restarting, false),
            (Stopping, Running, false),
            (Exited, Starting, false),
            (Exited, Running, false),
            (Failed, Starting, false),
            (Failed, Exited, false),
            (Restarting, Paused, false),
            (Restarting, Running, false),
            (Starting, Paused, false),
            (Running, Starting, false),
        ];
        for (from, to, ok) in table {
            assert_eq!(from.can_become(to), ok, "{from:?} -> {to:?}");
        }
        for s in Status::ALL {
            if s.is_final() {
                assert!(
                    Status::ALL.iter().all(|n| !s.can_become(*n)),
                    "{s:?} is final"
                );
            }
            assert!(!s.can_become(s), "{s:?} -> itself is not a change");
        }
    }

    fn policy() -> impl Strategy<Value = RestartPolicy> {
        prop_oneof![
            Just(RestartPolicy::Never),
            Just(RestartPolicy::OnFailure),
            Just(RestartPolicy::Always)
        ]
    }

    fn exit() -> impl Strategy<Value = ExitFacts> {
        (
            prop::option::of(-1i32..4),
            prop::option::of(1i32..32),
            any::<bool>(),
        )
            .prop_map(|(code, signal, requested)| ExitFacts {
                code: if signal.is_some() { None } else { code },
                signal,
                requested,
            })
    }

    proptest! {
        /// Whatever the exits and their timing, no window ever holds more than `max_restarts`
        /// restarts, delays stay within the cap, `never` never restarts, a clean exit never
        /// restarts under `on-failure`, requested exits never restart, and escalation is
        /// reported at most once.
        #[test]
        fn restart_invariants(
            pol in policy(),
            max in 0u32..6,
            window in 1u64..5_000,
            initial in 0u64..500,
            cap in 0u64..3_000,
            exits in prop::collection::vec((exit(), 0u64..2_000), 1..60),
        ) {
            let c = RestartConfig {
                policy: pol,
                max_restarts: max,
                window_ms: window,
                backoff_initial_ms: initial,
                backoff_cap_ms: cap,
            };
            let mut t = RestartTracker::new();
            let mut now = 0u64;
            let mut starts: Vec<u64> = Vec::new();
            let mut escalations = 0;
            for (e, gap) in exits {
                match t.decide(&c, &e, now) {
                    Decision::Restart { at_ms, delay_ms, restart_count } => {
                        prop_assert!(pol != RestartPolicy::Never);
                        prop_assert!(!e.requested);
                        prop_assert!(pol != RestartPolicy::OnFailure || e.failed());
                        prop_assert!(delay_ms <= cap);
                        prop_assert_eq!(at_ms, now + delay_ms);
                        starts.push(at_ms);
                        prop_assert_eq!(restart_count as usize, starts.len());
                        let in_window = starts.iter().filter(|s| at_ms - **s < window).count();
                        prop_assert!(in_window <= max as usize, "{} restarts in a window, max {}", in_window, max);
                        // The process runs from at_ms; the next exit comes after it started.
                        now = at_ms + gap;
                    }
                    Decision::Escalate { restart_count } => {
                        escalations += 1;
                        prop_assert_eq!(restart_count as usize, starts.len());
                        now += gap;
                    }
                    Decision::Stop => now += gap,
                }
            }
            prop_assert!(escalations <= 1);
        }
    }
}
