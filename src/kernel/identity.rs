//! Who a connecting process speaks as, from its peer credentials and facts about it that it
//! cannot change.
//!
//! A process the daemon started, directly or not, must never be mistaken for one of the user's
//! own clients (those are `unrestricted` by default), and one agent's process must never be
//! taken for another's. Attribution therefore rests only on facts a process cannot forge:
//!
//! 1. **Its pid namespace.** A sandboxed agent runs in a pid namespace of its own, and no
//!    process can ever leave its pid namespace (`setns` only affects its future children, and
//!    the agent has no capability to do it anyway). A process in an agent's pid namespace
//!    speaks as that agent, whatever its parent, session or process group.
//! 2. **Its session.** Every agent (its launcher) and every EXEC command is started in a
//!    session of its own (`setsid`). A process can leave its session only for a new one of
//!    its own (`setsid`); it can never join another one. A process in an agent's session
//!    speaks as the agent; in a running EXEC command's session, for whoever ran the command.
//! 3. **Its parent chain.** A process below an agent's launcher or a running command (by
//!    `ppid`, which a process cannot change) speaks for that agent or command, even when it
//!    left the session.
//!
//! The keys cannot be aliased by a recycled pid or namespace: a session id is the pid of its
//! leader, and the leaders registered here are the daemon's own children, which stay
//! unreaped (their pid held) until they have been unregistered; a pid namespace is kept alive
//! by a descriptor the kernel holds while it is registered, so its inode number cannot be
//! given to a new namespace.
//!
//! Process groups are **not** a key: before sessions were used, every agent and command
//! shared the daemon's session, and any of them could `setpgid` into another's group.
//!
//! What matches none of these:
//! - any other descendant of the daemon (a process that left its session with `setsid` and was
//!   orphaned to the daemon, a subreaper; leftovers of an agent or command that has ended) is a
//!   client at `permissions.unattributed_level` (`minimal` by default): no more than the least
//!   it could have inherited;
//! - a process whose ancestry cannot be read (it exited before its connection was accepted)
//!   is treated the same way: its requests may already be in the socket buffer, and guessing
//!   "the user's own" would hand them full rights;
//! - everything else is one of the user's own processes: a client at
//!   `permissions.client_level`.

use super::perms::Permissions;
use super::{CallerId, CallerKind, Kernel};
use std::os::fd::AsFd;
use std::sync::Arc;

/// Whoever started a running EXEC command (recorded while the command runs).
#[derive(Debug, Clone)]
pub struct ExecOwner {
    pub caller: CallerId,
    pub kind: CallerKind,
    /// The caller's permissions when the command was started.
    pub perms: Arc<Permissions>,
}

/// Whose session a registered session leader leads.
#[derive(Debug, Clone)]
pub(crate) enum Leader {
    /// An agent's supervised process (its launcher).
    Agent(CallerId),
    /// A running EXEC command (its shell, or the helper that enters an agent's sandbox).
    Exec(ExecOwner),
}

/// The identity of a namespace: the device and inode of its `/proc/PID/ns/*` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    /// The namespace a `/proc/PID/ns/*` path names.
    pub fn of_path(path: &str) -> Option<NsId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(NsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The namespace an open namespace file refers to.
    pub fn of_fd(fd: impl AsFd) -> Option<NsId> {
        let st = nix::sys::stat::fstat(fd).ok()?;
        Some(NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// What a connecting process is.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A process of a supervised agent (or of a command it ran).
    Agent(CallerId),
    /// A process of an EXEC command run by a plain client: a new client with these rights.
    ExecOf(Arc<Permissions>),
    /// Started by the daemon somehow, but attributable to no live agent or running command,
    /// or of unknown ancestry: a new client at the unattributed level.
    Unattributed,
    /// One of the user's own processes.
    Outside,
}

/// How many generations to walk up before giving up (a deeper chain is unattributed).
const MAX_DEPTH: usize = 64;

/// Classifies the process `pid` (from `SO_PEERCRED`).
pub fn classify(k: &Kernel, pid: i32) -> Origin {
    if pid <= 0 {
        // No pid: the peer is in a pid namespace we cannot see into, i.e. not ours to trust.
        return Origin::Unattributed;
    }
    let Some(st) = stat_of(pid) else {
        return Origin::Unattributed;
    };
    if let Some(agent) =
        NsId::of_path(&format!("/proc/{pid}/ns/pid")).and_then(|ns| k.agent_with_pid_ns(ns))
    {
        return Origin::Agent(agent);
    }
    if let Some(origin) = owner(k, st.session) {
        return origin;
    }
    ancestry(k, pid)
}

/// The parent walk: a registered leader above `pid` names its owner; reaching the daemon
/// itself means an orphan that escaped every key; an ancestor older than the daemon (the
/// user's shell, usually the first or second step up) means one of the user's own processes.
fn ancestry(k: &Kernel, pid: i32) -> Origin {
    let me = std::process::id() as i32;
    let my_start = stat_of(me).map(|s| s.start).unwrap_or(0);
    let mut p = pid;
    for _ in 0..MAX_DEPTH {
        if p == me {
            return Origin::Unattributed;
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

/// The agent or command whose registered leader is `pid` (also the id of its session).
fn owner(k: &Kernel, pid: i32) -> Option<Origin> {
    Some(match k.leader(pid)? {
        Leader::Agent(agent) => Origin::Agent(agent),
        Leader::Exec(exec) => match exec.kind {
            CallerKind::Agent => Origin::Agent(exec.caller),
            CallerKind::Client => Origin::ExecOf(exec.perms),
        },
    })
}

/// The fields of /proc/PID/stat that identity needs.
struct Stat {
    ppid: i32,
    /// The session id: the pid of the session's leader.
    session: i32,
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
    let _pgrp = fields.next()?;
    let session = fields.next()?.parse().ok()?;
    // After session: tty_nr, tpgid, flags, 4 fault counts, 4 times, priority, nice,
    // num_threads, itrealvalue, then starttime.
    let start = fields.nth(15)?.parse().ok()?;
    Some(Stat {
        ppid,
        session,
        start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parentheses() {
        let me = std::process::id() as i32;
        let s = stat_of(me).expect("own stat");
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(
            s.session,
            nix::unistd::getsid(None).expect("own session").as_raw()
        );
        let parent = stat_of(s.ppid).expect("parent's stat");
        assert!(parent.start <= s.start, "{} > {}", parent.start, s.start);
        assert!(s.start > 0);
        assert!(stat_of(i32::MAX).is_none());
    }

    #[test]
    fn namespace_ids_from_paths_and_descriptors_agree() {
        let by_path = NsId::of_path("/proc/self/ns/pid").expect("own pid namespace");
        let f = std::fs::File::open("/proc/self/ns/pid").expect("open own pid namespace");
        assert_eq!(NsId::of_fd(&f), Some(by_path));
        assert_ne!(NsId::of_path("/proc/self/ns/net"), Some(by_path));
    }
}
