//! Supervised agents across daemon restarts: the record kept for a `persist: true` agent, the
//! stamp that recognises its processes left behind by a daemon that died, and the restore run
//! at start (stale copies killed, names re-attached or released, agents started again under
//! their saved ids).
//!
//! What is kept (in the state store, see [`crate::store`]):
//! * the spec of every agent spawned with `"persist": true` ([`SavedAgent`]: the checked
//!   [`AgentSpec`] with the agent's current permissions, plus the [`ProcessStamp`] of its
//!   running incarnation), saved before the SPAWN reply and again at each (re)start;
//! * the registered name of every supervised agent (one per agent);
//! * the agent-scoped keys of supervised agents.
//!
//! At start ([`restore`]), every saved spec is started again under its saved id, with its
//! restart counters reset, like an enabled service: also when it had exited or escalated
//! before. Names and keys of agents that do not come back are forgotten, so no name stays held
//! by nobody. Only KILL forgets a persistent agent.

use super::cgroup::AgentCgroup;
use super::{AgentSpec, Command};
use crate::kernel::{CallerId, Kernel};
use crate::store::{AgentSpecRecord, Done};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Identifies one process exactly: its pid, its start time (clock ticks after boot, from
/// `/proc/PID/stat`) and the boot it ran in. A pid with the same start time in the same boot
/// is the same process, so a stamp never matches a recycled pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStamp {
    /// The supervised process (the launcher), which leads the agent's process group.
    pub pgid: i32,
    pub start_ticks: u64,
    pub boot_id: String,
    /// The agent's cgroup, when it had one: (controller, directory) pairs.
    #[serde(default)]
    pub cgroup: Option<(u8, Vec<(String, PathBuf)>)>,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    pgrp: i32,
    start_ticks: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Parses the fields after the command name (which may contain spaces and parentheses).
fn parse_stat(s: &str) -> Option<ProcStat> {
    let rest: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
    // Field 3 (state) is rest[0]; field 5 (pgrp) rest[2]; field 22 (starttime) rest[19].
    Some(ProcStat {
        state: rest.first()?.chars().next()?,
        pgrp: rest.get(2)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// This boot's id (empty when unknown, which never matches a recorded one).
fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

impl ProcessStamp {
    /// The stamp of our child `pid` (read right after it was started: it is our child, so
    /// until we reap it the pid cannot be reused).
    pub fn of(pid: i32, cgroup: Option<&AgentCgroup>) -> Option<ProcessStamp> {
        let st = proc_stat(pid)?;
        Some(ProcessStamp {
            pgid: pid,
            start_ticks: st.start_ticks,
            boot_id: boot_id().to_string(),
            cgroup: cgroup.map(|c| (c.version, c.dirs.clone())),
        })
    }

    /// True when the stamped process still runs: same boot, same pid and start time, still
    /// leading its process group, owned by us, not a zombie.
    pub fn still_running(&self) -> bool {
        if self.pgid <= 1 || self.boot_id.is_empty() || self.boot_id != boot_id() {
            return false;
        }
        let Some(st) = proc_stat(self.pgid) else {
            return false;
        };
        let mine = std::fs::metadata(format!("/proc/{}", self.pgid))
            .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
        mine && st.start_ticks == self.start_ticks
            && st.pgrp == self.pgid
            && !matches!(st.state, 'Z' | 'X' | 'x')
    }

    /// The cgroup the stamped agent ran in, if it still exists and belonged to a daemon that
    /// is gone (`.../clove-<pid>/<leaf>` where no process `<pid>` runs and it is not us).
    pub fn stale_cgroup(&self) -> Option<AgentCgroup> {
        let (version, dirs) = self.cgroup.as_ref()?;
        let me = std::process::id();
        let stale = |d: &PathBuf| {
            let daemon = d
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("clove-"))
                .and_then(|p| p.parse::<u32>().ok());
            match daemon {
                Some(pid) => {
                    pid != me
                        && !PathBuf::from(format!("/proc/{pid}")).exists()
                        && d.join("cgroup.procs").is_file()
                }
                None => false,
            }
        };
        (!dirs.is_empty() && dirs.iter().all(|(_, d)| stale(d))).then(|| AgentCgroup {
            version: *version,
            dirs: dirs.clone(),
            applied: Vec::new(),
        })
    }

    /// Kills what a dead daemon left running of this agent: its process group (only when the
    /// stamp still matches, so a recycled pid is never touched) and everything in its old
    /// cgroup. Returns the cgroup, to be removed once empty.
    pub fn kill_leftovers(&self, id: CallerId) -> Option<AgentCgroup> {
        if self.still_running() {
            log::warn!(
                "agent={id}: its process group {} from before the restart still runs; killing it so that only one copy runs",
                self.pgid
            );
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let cg = self.stale_cgroup()?;
        if !cg.pids().is_empty() {
            log::warn!("agent={id}: killing what is left in its old cgroup");
            cg.kill_all();
        }
        Some(cg)
    }
}

/// The record of a persistent agent, as kept in the store (`agent_specs.spec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedAgent {
    #[serde(flatten)]
    pub spec: AgentSpec,
    /// The incarnation running when it was last saved.
    #[serde(default)]
    pub process: Option<ProcessStamp>,
}

impl SavedAgent {
    pub fn to_record(&self, id: CallerId) -> Option<AgentSpecRecord> {
        match serde_json::to_value(self) {
            Ok(spec) => Some(AgentSpecRecord {
                agent_id: id,
                name: Some(self.spec.name.clone()),
                spec,
                saved_ms: crate::clock::now_ms(),
            }),
            Err(e) => {
                log::error!("agent={id}: cannot encode its spec: {e}");
                None
            }
        }
    }
}

/// The outcome of one durable write that the supervisor waits for without blocking: the
/// store's completion fills it in and wakes the supervisor's poll.
#[derive(Clone, Default)]
pub struct Ack(Arc<OnceLock<Result<(), String>>>);

impl Ack {
    /// The completion to hand to the store.
    pub fn completion(&self, waker: Arc<mio::Waker>) -> Done {
        let slot = self.0.clone();
        Box::new(move |r| {
            let _ = slot.set(r.map(|_| ()).map_err(|e| e.to_string()));
            let _ = waker.wake();
        })
    }

    /// `None` while the write is not committed yet.
    pub fn result(&self) -> Option<Result<(), String>> {
        self.0.get().cloned()
    }
}

/// A completion for writes nobody waits for: failures are logged.
pub fn logged(what: String) -> Done {
    Box::new(move |r| {
        if let Err(e) = r {
            log::warn!("{what}: {e}");
        }
    })
}

/// Brings back what the previous run left: called once at start, after the supervisor thread
/// started and before the reactor accepts connections (so no client can take a name first,
/// and no stale copy of an agent is still running when its new incarnation connects).
pub fn restore(kernel: &Kernel, agents: &super::Agents) {
    let recovered = kernel.store.take_recovered();
    let mut back: BTreeMap<CallerId, (AgentSpec, Option<AgentCgroup>)> = BTreeMap::new();
    // Ids whose records cannot be read: left untouched on disk, not started.
    let mut unreadable = BTreeSet::new();
    for rec in recovered.agent_specs {
        let id = rec.agent_id;
        match serde_json::from_value::<SavedAgent>(rec.spec) {
            Ok(saved) => {
                let stale = saved.process.as_ref().and_then(|p| p.kill_leftovers(id));
                back.insert(id, (saved.spec, stale));
            }
            Err(e) => {
                log::error!(
                    "the saved spec of persistent agent {id} cannot be read ({e}); it is not started (it stays in the store: see `clove state export`)"
                );
                unreadable.insert(id);
            }
        }
    }
    let mut forget = BTreeSet::new();
    {
        let mut ipc = kernel.ipc.lock();
        for n in recovered.agent_names {
            if unreadable.contains(&n.agent_id) {
                continue;
            }
            let attached = back.contains_key(&n.agent_id)
                && ipc.name_of(n.agent_id).is_none()
                && ipc.register(n.agent_id, &n.name).is_ok();
            if !attached {
                forget.insert(n.agent_id);
            }
        }
    }
    // Keys of agents that do not come back can never be reached again.
    for ns in kernel.store.agent_namespaces() {
        if !back.contains_key(&ns) && !unreadable.contains(&ns) {
            forget.insert(ns);
        }
    }
    // An agent that comes back keeps what it has; an extra name of it (left by an older
    // build) is simply not attached, and the agent's next name save replaces it.
    forget.retain(|id| !back.contains_key(id));
    for id in &forget {
        kernel
            .store
            .submit_forget_agent(*id, logged(format!("cannot forget agent {id}")));
    }
    if !forget.is_empty() {
        log::info!(
            "released the names and keys of {} agents that do not come back",
            forget.len()
        );
    }
    let Some(h) = agents.handle() else {
        return;
    };
    if !back.is_empty() {
        log::info!("starting {} persistent agents again", back.len());
    }
    for (id, (spec, stale)) in back {
        h.send_blocking(Command::Start {
            spec: Box::new(spec),
            id,
            stale,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_stamp_matches_only_its_own_process() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let stamp = ProcessStamp::of(pid, None).unwrap();
        assert!(stamp.still_running());
        let other_start = ProcessStamp {
            start_ticks: stamp.start_ticks + 1,
            ..stamp.clone()
        };
        assert!(!other_start.still_running(), "a recycled pid is not ours");
        let other_boot = ProcessStamp {
            boot_id: "another-boot".into(),
            ..stamp.clone()
        };
        assert!(!other_boot.still_running());
        // Not killed when the stamp does not match.
        assert!(other_start.kill_leftovers(1).is_none());
        assert!(child.try_wait().unwrap().is_none(), "still running");
        stamp.kill_leftovers(1);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // A zombie or a gone process is not running.
        assert!(!stamp.still_running());
    }

    #[test]
    fn saved_agent_round_trips_and_tolerates_a_missing_stamp() {
        let text = r#"{"name":"w","script":"/w.py","interpreter":"/usr/bin/python3","args":[],
            "cwd":"/","sandboxed":false,"network":true,"limits":{"memory":null,"max_pids":null,
            "cpu_quota":null,"cpu_period":null,"cpu_shares":null},"restart_policy":"always",
            "max_restarts":5,"restart_window_ms":300000,"persist":true,
            "permissions":PERMS,"parent_id":3}"#;
        let perms =
            serde_json::to_string(&crate::kernel::perms::builtin_level("standard", "/s").unwrap())
                .unwrap();
        let text = text.replace("PERMS", &perms);
        let saved: SavedAgent = serde_json::from_str(&text).unwrap();
        assert!(saved.process.is_none());
        assert_eq!(saved.spec.name, "w");
        let rec = saved.to_record(9).unwrap();
        assert_eq!(rec.agent_id, 9);
        assert_eq!(rec.spec["permissions"]["level"], "standard");
        let again: SavedAgent = serde_json::from_value(rec.spec).unwrap();
        assert_eq!(again.spec.restart_window_ms, 300_000);
    }
}
