//! Who a connecting process speaks as, from its peer credentials and its place in the process
//! tree.
//!
//! A process the daemon started, directly or not, must never be mistaken for one of the user's
//! own clients: those are `unrestricted` by default, and a spawned agent runs untrusted code.
//! So a peer is classified by walking up its parent chain:
//!
//! - a supervised agent's process (or a descendant of one) speaks **as that agent**;
//! - a descendant of a running EXEC command speaks for the caller that ran it: as the agent,
//!   when an agent ran it, or as a new client with a copy of the caller's permissions at the
//!   time of the EXEC (a client that lowered itself cannot get its rights back this way);
//! - any other descendant of the daemon (an orphan that a subreaper daemon inherited, whose
//!   process group names no agent or command, or something left behind by an agent that is
//!   gone) is a client at `permissions.agent_level`;
//! - a process whose parent chain cannot be read (it exited before its connection was
//!   accepted, or an ancestor did mid-walk) is treated like the last case: its requests may
//!   already be in the socket buffer, and guessing "the user's own" would hand them full rights;
//! - everything else is one of the user's own processes: a client at
//!   `permissions.client_level`.

use super::perms::Permissions;
use super::{CallerId, CallerKind, Kernel};
use std::sync::Arc;

/// Whoever started a running EXEC command (recorded while the command runs).
#[derive(Debug, Clone)]
pub struct ExecOwner {
    pub caller: CallerId,
    pub kind: CallerKind,
    /// The caller's permissions when the command was started.
    pub perms: Arc<Permissions>,
}

/// What a connecting process is.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A supervised agent's process or one of its descendants.
    Agent(CallerId),
    /// A descendant of an EXEC command run by a plain client: a new client with these rights.
    ExecOf(Arc<Permissions>),
    /// Started by the daemon somehow, but neither by a live agent nor by a running command, or
    /// of unknown ancestry: a new client at the agent level.
    Unattributed,
    /// One of the user's own processes.
    Outside,
}

/// How many generations to walk up before giving up (a deeper chain is unattributed).
const MAX_DEPTH: usize = 64;

/// Classifies the process `pid` (from `SO_PEERCRED`).
pub fn classify(k: &Kernel, pid: i32) -> Origin {
    let me = std::process::id() as i32;
    if pid <= 0 {
        // No pid: the peer is in a pid namespace we cannot see into, i.e. not ours to trust.
        return Origin::Unattributed;
    }
    // Every descendant of the daemon started after it: an ancestor that started earlier (the
    // user's shell, usually the first or second step up) ends the walk.
    let my_start = stat_of(me).map(|s| s.start).unwrap_or(0);
    let mut p = pid;
    for _ in 0..MAX_DEPTH {
        if p == me {
            // A descendant of the daemon that matched nothing on the way up: an orphan
            // re-parented to us. Its process group may still name its agent or command.
            return match stat_of(pid).and_then(|s| owner(k, s.pgrp)) {
                Some(origin) => origin,
                None => Origin::Unattributed,
            };
        }
        if p == 1 {
            return Origin::Outside;
        }
        if let Some(origin) = owner(k, p) {
            return origin;
        }
        match stat_of(p) {
            Some(s) if s.start < my_start => return Origin::Outside,
            Some(s) => p = s.ppid,
            None => return Origin::Unattributed,
        }
    }
    Origin::Unattributed
}

/// The agent or command that `pid` belongs to, if it is a supervised agent's process or the
/// leader of a running EXEC command's process group.
fn owner(k: &Kernel, pid: i32) -> Option<Origin> {
    if let Some(agent) = k.agent_with_pid(pid) {
        return Some(Origin::Agent(agent));
    }
    let exec = k.exec_owner(pid)?;
    Some(match exec.kind {
        CallerKind::Agent => Origin::Agent(exec.caller),
        CallerKind::Client => Origin::ExecOf(exec.perms),
    })
}

/// The fields of /proc/PID/stat that identity needs.
struct Stat {
    ppid: i32,
    pgrp: i32,
    /// Start time in clock ticks since boot.
    start: u64,
}

fn stat_of(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let mut fields = s[s.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    // After pgrp: session, tty_nr, tpgid, flags, 4 fault counts, 4 times, priority, nice,
    // num_threads, itrealvalue, then starttime.
    let start = fields.nth(16)?.parse().ok()?;
    Some(Stat { ppid, pgrp, start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parentheses() {
        let me = std::process::id() as i32;
        let s = stat_of(me).expect("own stat");
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(s.pgrp, nix::unistd::getpgrp().as_raw());
        let parent = stat_of(s.ppid).expect("parent's stat");
        assert!(parent.start <= s.start, "{} > {}", parent.start, s.start);
        assert!(s.start > 0);
        assert!(stat_of(i32::MAX).is_none());
    }
}
