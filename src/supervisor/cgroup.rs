//! Agent cgroups: detection of cgroup v1 hierarchies and a delegated cgroup v2 subtree, one
//! cgroup per agent with its limits, freezing, killing what is left, and removal.
//!
//! Layout: under the daemon's own cgroup (read from /proc/self/cgroup, so a daemon started in
//! a sub-cgroup stays inside it) the daemon makes `clove-<pid>`, and in it one cgroup per agent,
//! `<name>-<id>`. With v1 that happens in each of the memory, pids, cpu, cpuacct and freezer
//! hierarchies that are mounted and writable; with v2 in the delegated directory (the daemon's
//! own cgroup, or `sandbox.cgroup_v2_root`), after moving the daemon itself into a `daemon`
//! leaf when it sits in the directory it delegates (v2's "no internal processes" rule).
//!
//! Parsing of /proc/self/mountinfo and /proc/self/cgroup is pure and unit-tested; the file
//! operations work on any directory tree, so the v2 code is tested against a plain temp dir.

use super::config::CgroupMode;
use std::path::{Path, PathBuf};

/// Controllers the v1 backend uses, by hierarchy.
const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];
/// Controllers the v2 backend enables for agents.
const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// A cgroup mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Mount point.
    pub point: PathBuf,
    /// Path inside the hierarchy that is mounted there (usually `/`).
    pub root: String,
    /// v1 controllers (empty for v2).
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// Parses the cgroup mounts out of /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (root, point) = (unescape(l[3]), unescape(l[4]));
        match r[0] {
            "cgroup2" => out.push(CgroupMount {
                point: PathBuf::from(point),
                root,
                controllers: vec![],
                v2: true,
            }),
            "cgroup" => {
                let controllers = r[2]
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o) || *o == "cpuset")
                    .map(str::to_string)
                    .collect();
                out.push(CgroupMount {
                    point: PathBuf::from(point),
                    root,
                    controllers,
                    v2: false,
                });
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/cgroup: controllers (empty for v2) and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let ctrl = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: ctrl
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The directory of our cgroup for a mount: mount point + (our path relative to the mount's
/// root). `None` when our cgroup lies outside what is mounted there.
pub fn own_dir(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        path
    } else if path == root {
        ""
    } else {
        path.strip_prefix(root)?.strip_prefix('/').map_or("", |r| r)
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rel)
    })
}

/// Which cgroup interface the daemon uses.
#[derive(Debug, Clone)]
pub enum Backend {
    /// v1: our per-daemon directory in each usable hierarchy, by controller.
    V1(Vec<(String, PathBuf)>),
    /// v2: our per-daemon directory and the controllers enabled below it.
    V2 {
        dir: PathBuf,
        controllers: Vec<String>,
    },
    /// No cgroups; limits fall back to rlimits. The reason says why.
    Off(String),
}

/// The cgroup manager of one daemon.
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub backend: Backend,
}

/// Limits to apply, all optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Bytes of memory.
    pub memory: Option<u64>,
    pub max_pids: Option<u64>,
    /// CPU time in microseconds per `cpu_period`.
    pub cpu_quota: Option<u64>,
    /// Microseconds; default 100000.
    pub cpu_period: Option<u64>,
    /// Relative weight (v1 shares, 2..=262144).
    pub cpu_shares: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Checks that every limit is sane.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = self.memory
            && !(4 << 20..=1 << 42).contains(&m)
        {
            return Err(format!(
                "invalid limits.memory {m}: must be between 4 MiB (4194304) and 4 TiB bytes"
            ));
        }
        if let Some(p) = self.max_pids
            && !(1..=4_194_304).contains(&p)
        {
            return Err(format!(
                "invalid limits.max_pids {p}: must be between 1 and 4194304"
            ));
        }
        if let Some(p) = self.cpu_period
            && !(1_000..=1_000_000).contains(&p)
        {
            return Err(format!(
                "invalid limits.cpu_period {p}: must be between 1000 and 1000000 microseconds"
            ));
        }
        if let Some(q) = self.cpu_quota
            && !(1_000..=100_000_000).contains(&q)
        {
            return Err(format!(
                "invalid limits.cpu_quota {q}: must be between 1000 and 100000000 microseconds"
            ));
        }
        if self.cpu_period.is_some() && self.cpu_quota.is_none() {
            return Err("limits.cpu_period needs limits.cpu_quota".into());
        }
        if let Some(s) = self.cpu_shares
            && !(2..=262_144).contains(&s)
        {
            return Err(format!(
                "invalid limits.cpu_shares {s}: must be between 2 and 262144"
            ));
        }
        Ok(())
    }
}

/// One agent's cgroup (one directory per v1 hierarchy, or one v2 directory).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentCgroup {
    pub version: u8,
    /// (controller, directory); v2 has one entry with controller "".
    pub dirs: Vec<(String, PathBuf)>,
    /// Limits that were written.
    pub applied: Vec<String>,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse().ok()
}

/// `key value` lines (memory.events, memory.oom_control, cpu.stat).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

impl Cgroups {
    /// Detects what this machine offers and prepares the per-daemon directory.
    pub fn detect(mode: CgroupMode, v2_root: Option<&Path>) -> Cgroups {
        if mode == CgroupMode::Off {
            return Cgroups {
                backend: Backend::Off("cgroups are turned off (sandbox.cgroups = \"off\")".into()),
            };
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default();
        let member = std::fs::read_to_string("/proc/self/cgroup")
            .map(|t| parse_proc_cgroup(&t))
            .unwrap_or_default();
        let pid = std::process::id();
        let mut reasons = Vec::new();
        if matches!(mode, CgroupMode::Auto | CgroupMode::V2) {
            match detect_v2(&mounts, &member, v2_root, pid) {
                Ok(b) => return Cgroups { backend: b },
                Err(e) => reasons.push(format!("v2: {e}")),
            }
        }
        if matches!(mode, CgroupMode::Auto | CgroupMode::V1) {
            match detect_v1(&mounts, &member, pid) {
                Ok(b) => return Cgroups { backend: b },
                Err(e) => reasons.push(format!("v1: {e}")),
            }
        }
        Cgroups {
            backend: Backend::Off(format!("no usable cgroups ({})", reasons.join("; "))),
        }
    }

    /// "v1", "v2" or None.
    pub fn version(&self) -> Option<&'static str> {
        match self.backend {
            Backend::V1(_) => Some("v1"),
            Backend::V2 { .. } => Some("v2"),
            Backend::Off(_) => None,
        }
    }

    /// Controllers available to agents.
    pub fn controllers(&self) -> Vec<String> {
        match &self.backend {
            Backend::V1(dirs) => dirs.iter().map(|(c, _)| c.clone()).collect(),
            Backend::V2 { controllers, .. } => {
                let mut c = controllers.clone();
                c.push("freezer".into());
                c
            }
            Backend::Off(_) => vec![],
        }
    }

    /// The per-daemon parent directories (for METRICS_CGROUP and cleanup).
    pub fn parent_dirs(&self) -> Vec<(String, PathBuf)> {
        match &self.backend {
            Backend::V1(dirs) => dirs.clone(),
            Backend::V2 { dir, .. } => vec![(String::new(), dir.clone())],
            Backend::Off(_) => vec![],
        }
    }

    /// Creates an agent's cgroup and writes its limits. Limits the backend cannot apply are
    /// left out of `applied` (the caller falls back to rlimits for them).
    pub fn create(&self, leaf: &str, limits: &Limits) -> Result<AgentCgroup, String> {
        match &self.backend {
            Backend::Off(reason) => Err(reason.clone()),
            Backend::V1(parents) => {
                let mut cg = AgentCgroup {
                    version: 1,
                    dirs: vec![],
                    applied: vec![],
                };
                for (ctrl, parent) in parents {
                    let dir = parent.join(leaf);
                    if let Err(e) = std::fs::create_dir(&dir)
                        && e.kind() != std::io::ErrorKind::AlreadyExists
                    {
                        cg.remove();
                        return Err(format!("cannot create cgroup {}: {e}", dir.display()));
                    }
                    cg.dirs.push((ctrl.clone(), dir));
                }
                if let Err(e) = cg.write_v1_limits(limits) {
                    cg.remove();
                    return Err(e);
                }
                Ok(cg)
            }
            Backend::V2 { dir, controllers } => {
                let d = dir.join(leaf);
                if let Err(e) = std::fs::create_dir(&d)
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    return Err(format!("cannot create cgroup {}: {e}", d.display()));
                }
                let mut cg = AgentCgroup {
                    version: 2,
                    dirs: vec![(String::new(), d)],
                    applied: vec![],
                };
                if let Err(e) = cg.write_v2_limits(limits, controllers) {
                    cg.remove();
                    return Err(e);
                }
                Ok(cg)
            }
        }
    }

    /// Removes the per-daemon directories (they must be empty of agents by now).
    pub fn cleanup(&self) {
        for (_, dir) in self.parent_dirs() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl AgentCgroup {
    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| self.version == 2 || c == ctrl)
            .map(|(_, d)| d.as_path())
    }

    fn write_v1_limits(&mut self, l: &Limits) -> Result<(), String> {
        if let Some(m) = l.memory
            && let Some(d) = self.dir("memory").map(Path::to_path_buf)
        {
            write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
            // Without a memsw limit an agent could swap instead of being held to its limit.
            let memsw = d.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &m.to_string())?;
            }
            self.applied.push("memory".into());
        }
        if let Some(p) = l.max_pids
            && let Some(d) = self.dir("pids").map(Path::to_path_buf)
        {
            write(&d.join("pids.max"), &p.to_string())?;
            self.applied.push("max_pids".into());
        }
        if let Some(d) = self.dir("cpu").map(Path::to_path_buf) {
            if let Some(q) = l.cpu_quota {
                write(
                    &d.join("cpu.cfs_period_us"),
                    &l.cpu_period.unwrap_or(100_000).to_string(),
                )?;
                write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                self.applied.push("cpu_quota".into());
            }
            if let Some(s) = l.cpu_shares {
                write(&d.join("cpu.shares"), &s.to_string())?;
                self.applied.push("cpu_shares".into());
            }
        }
        Ok(())
    }

    fn write_v2_limits(&mut self, l: &Limits, controllers: &[String]) -> Result<(), String> {
        let Some(d) = self.dir("").map(Path::to_path_buf) else {
            return Ok(());
        };
        let has = |c: &str| controllers.iter().any(|x| x == c);
        if let Some(m) = l.memory
            && has("memory")
        {
            write(&d.join("memory.max"), &m.to_string())?;
            let swap = d.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            self.applied.push("memory".into());
        }
        if let Some(p) = l.max_pids
            && has("pids")
        {
            write(&d.join("pids.max"), &p.to_string())?;
            self.applied.push("max_pids".into());
        }
        if has("cpu") {
            if let Some(q) = l.cpu_quota {
                write(
                    &d.join("cpu.max"),
                    &format!("{q} {}", l.cpu_period.unwrap_or(100_000)),
                )?;
                self.applied.push("cpu_quota".into());
            }
            if let Some(s) = l.cpu_shares {
                write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
                self.applied.push("cpu_shares".into());
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some((_, d)) = self.dirs.first() else {
            return vec![];
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs everything left in the cgroup.
    pub fn kill_all(&self) {
        if self.version == 2
            && let Some(d) = self.dir("")
            && write(&d.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        // v1 (or v2 before 5.14): kill what is listed; a frozen cgroup is thawed so the kill
        // takes effect.
        let _ = self.freeze(false);
        for pid in self.pids() {
            if pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Can this cgroup be frozen?
    pub fn can_freeze(&self) -> bool {
        match self.version {
            2 => self
                .dir("")
                .is_some_and(|d| d.join("cgroup.freeze").exists()),
            _ => self.dir("freezer").is_some(),
        }
    }

    /// Freezes or thaws every process in the cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        match self.version {
            2 => {
                let d = self.dir("").ok_or("no cgroup")?;
                write(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            }
            _ => {
                let d = self.dir("freezer").ok_or("no freezer cgroup")?;
                write(
                    &d.join("freezer.state"),
                    if frozen { "FROZEN" } else { "THAWED" },
                )
            }
        }
    }

    /// Removes the directories; true when all are gone.
    pub fn remove(&self) -> bool {
        let mut ok = true;
        for (_, d) in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                ok = false;
            }
        }
        ok
    }

    /// Times the kernel's OOM killer acted in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        match self.version {
            2 => self
                .dir("")
                .and_then(|d| read_keyed(&d.join("memory.events"), "oom_kill"))
                .unwrap_or(0),
            _ => self
                .dir("memory")
                .and_then(|d| read_keyed(&d.join("memory.oom_control"), "oom_kill"))
                .unwrap_or(0),
        }
    }

    /// (current bytes, limit bytes).
    pub fn memory(&self) -> (Option<u64>, Option<u64>) {
        match self.version {
            2 => match self.dir("") {
                Some(d) => (
                    read_u64(&d.join("memory.current")),
                    read_u64(&d.join("memory.max")),
                ),
                None => (None, None),
            },
            _ => match self.dir("memory") {
                Some(d) => (
                    read_u64(&d.join("memory.usage_in_bytes")),
                    read_u64(&d.join("memory.limit_in_bytes")).filter(|l| *l < (1 << 62)),
                ),
                None => (None, None),
            },
        }
    }

    /// (current, max) pids.
    pub fn pids_count(&self) -> (Option<u64>, Option<u64>) {
        match self.dir("pids") {
            Some(d) => (
                read_u64(&d.join("pids.current")),
                read_u64(&d.join("pids.max")),
            ),
            None => (None, None),
        }
    }

    /// CPU time used, in microseconds.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        match self.version {
            2 => self
                .dir("")
                .and_then(|d| read_keyed(&d.join("cpu.stat"), "usage_usec")),
            _ => self
                .dir("cpuacct")
                .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                .map(|ns| ns / 1000),
        }
    }
}

/// v1 `cpu.shares` (default 1024) to v2 `cpu.weight` (default 100), as systemd maps them.
pub fn shares_to_weight(shares: u64) -> u64 {
    (1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142).clamp(1, 10_000)
}

fn detect_v1(mounts: &[CgroupMount], member: &[Membership], pid: u32) -> Result<Backend, String> {
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    let mut problems = Vec::new();
    for ctrl in V1_CONTROLLERS {
        let Some(m) = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl))
        else {
            continue;
        };
        let Some(mem) = member
            .iter()
            .find(|l| l.controllers.iter().any(|c| c == ctrl))
        else {
            continue;
        };
        let Some(own) = own_dir(m, &mem.path) else {
            continue;
        };
        let dir = own.join(format!("clove-{pid}"));
        if let Some((_, same)) = dirs.iter().find(|(_, d)| *d == dir) {
            // Co-mounted controllers (cpu,cpuacct) share one directory.
            let same = same.clone();
            dirs.push((ctrl.to_string(), same));
            continue;
        }
        remove_stale(&own);
        match std::fs::create_dir(&dir) {
            Ok(()) => dirs.push((ctrl.to_string(), dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                dirs.push((ctrl.to_string(), dir))
            }
            Err(e) => problems.push(format!("{}: {e}", dir.display())),
        }
    }
    // Co-mounted controllers share directories; keep one entry per controller but create and
    // remove each directory once (remove_dir of an already removed one is harmless).
    if dirs.iter().any(|(c, _)| c == "memory" || c == "pids") {
        Ok(Backend::V1(dirs))
    } else if problems.is_empty() {
        Err("no memory or pids hierarchy mounted".into())
    } else {
        Err(problems.join(", "))
    }
}

fn detect_v2(
    mounts: &[CgroupMount],
    member: &[Membership],
    root_override: Option<&Path>,
    pid: u32,
) -> Result<Backend, String> {
    let base = match root_override {
        Some(p) => p.to_path_buf(),
        None => {
            let m = mounts.iter().find(|m| m.v2).ok_or("no cgroup2 mount")?;
            let mem = member
                .iter()
                .find(|l| l.controllers.is_empty())
                .ok_or("no v2 line in /proc/self/cgroup")?;
            own_dir(m, &mem.path).ok_or("our cgroup is outside the cgroup2 mount")?
        }
    };
    prepare_v2(&base, pid)
}

/// Makes `base/clove-<pid>` with memory, pids and cpu enabled below it. When the daemon
/// itself sits in `base`, it first moves into `base/daemon` (v2 forbids enabling controllers
/// for children of a cgroup that has processes).
pub fn prepare_v2(base: &Path, pid: u32) -> Result<Backend, String> {
    let available = std::fs::read_to_string(base.join("cgroup.controllers"))
        .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", base.display()))?;
    let wanted: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| c.to_string())
        .collect();
    if !wanted.iter().any(|c| c == "memory" || c == "pids") {
        return Err(format!(
            "{} offers no memory or pids controller (has: {})",
            base.display(),
            available.trim()
        ));
    }
    let procs = std::fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
    if procs.lines().any(|l| !l.trim().is_empty()) {
        let leaf = base.join("daemon");
        if let Err(e) = std::fs::create_dir(&leaf)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(format!("cannot create {}: {e}", leaf.display()));
        }
        // Only our own process can be moved; anything else in there makes it unusable.
        let ours = procs
            .lines()
            .all(|l| l.trim().parse::<u32>().is_ok_and(|p| p == pid));
        if !ours {
            return Err(format!(
                "{} holds other processes; delegate an empty subtree (sandbox.cgroup_v2_root)",
                base.display()
            ));
        }
        write(&leaf.join("cgroup.procs"), &pid.to_string())?;
    }
    remove_stale(base);
    let enable = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    write(&base.join("cgroup.subtree_control"), &enable)?;
    let dir = base.join(format!("clove-{pid}"));
    if let Err(e) = std::fs::create_dir(&dir)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(format!("cannot create {}: {e}", dir.display()));
    }
    write(&dir.join("cgroup.subtree_control"), &enable)?;
    Ok(Backend::V2 {
        dir,
        controllers: wanted,
    })
}

/// Removes `clove-<pid>` directories of daemons that are no longer running (best effort:
/// only empty cgroups can be removed).
fn remove_stale(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("clove-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        if std::fs::remove_dir(&dir).is_ok() {
            log::info!("removed stale cgroup {}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:39 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";

    const PROC_CGROUP: &str = "\
9:name=systemd:/
8:pids:/docker/abc/inner
4:memory:/process_api/81f0
1:cpu,cpuacct:/
0::/user.slice/clove.service
";

    #[test]
    fn parses_mounts_and_membership() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6, "{m:?}");
        assert_eq!(m[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[2].root, "/docker/abc");
        assert!(
            m[3].controllers.is_empty() && !m[3].v2,
            "name=systemd has no controllers"
        );
        assert!(m[4].v2);
        assert_eq!(m[5].point, PathBuf::from("/mnt/with space"));
        let c = parse_proc_cgroup(PROC_CGROUP);
        assert_eq!(c[2].controllers, vec!["memory"]);
        assert_eq!(c[2].path, "/process_api/81f0");
        assert!(c[4].controllers.is_empty());
        assert_eq!(
            own_dir(&m[1], &c[2].path),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/81f0"))
        );
        // A hierarchy mounted with a sub-root: our path is relative to it.
        assert_eq!(
            own_dir(&m[2], &c[1].path),
            Some(PathBuf::from("/sys/fs/cgroup/pids/inner"))
        );
        assert_eq!(own_dir(&m[2], "/elsewhere"), None);
        assert_eq!(
            own_dir(&m[4], &c[4].path),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/user.slice/clove.service"
            ))
        );
    }

    #[test]
    fn shares_map_to_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn limits_are_validated() {
        assert!(Limits::default().validate().is_ok());
        let bad = [
            Limits {
                memory: Some(1),
                ..Default::default()
            },
            Limits {
                max_pids: Some(0),
                ..Default::default()
            },
            Limits {
                cpu_quota: Some(10),
                ..Default::default()
            },
            Limits {
                cpu_period: Some(100_000),
                ..Default::default()
            },
            Limits {
                cpu_shares: Some(1),
                ..Default::default()
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
    }

    /// The v2 code against a plain directory laid out like a delegated subtree.
    #[test]
    fn v2_delegated_subtree() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::write(
            base.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let pid = std::process::id();
        std::fs::write(base.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        let b = prepare_v2(base, pid).unwrap();
        // The daemon moved itself into a leaf and enabled the controllers.
        assert_eq!(
            std::fs::read_to_string(base.join("daemon/cgroup.procs")).unwrap(),
            pid.to_string()
        );
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        let cg = Cgroups { backend: b };
        assert_eq!(cg.version(), Some("v2"));
        let limits = Limits {
            memory: Some(64 << 20),
            max_pids: Some(20),
            cpu_quota: Some(50_000),
            cpu_period: None,
            cpu_shares: Some(1024),
        };
        let a = cg.create("worker-7", &limits).unwrap();
        let dir = base.join(format!("clove-{pid}/worker-7"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("pids.max"), "20");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(
            a.applied,
            vec!["memory", "max_pids", "cpu_quota", "cpu_shares"]
        );
        assert_eq!(a.procs_files(), vec![dir.join("cgroup.procs")]);
        std::fs::write(dir.join("cgroup.freeze"), "0").unwrap();
        assert!(a.can_freeze());
        a.freeze(true).unwrap();
        assert_eq!(read("cgroup.freeze"), "1");
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(a.oom_kills(), 1);
        std::fs::write(dir.join("memory.current"), "1234\n").unwrap();
        assert_eq!(a.memory(), (Some(1234), Some(64 << 20)));
        std::fs::write(dir.join("cpu.stat"), "usage_usec 777\nuser_usec 700\n").unwrap();
        assert_eq!(a.cpu_usage_usec(), Some(777));
    }

    #[test]
    fn v2_refuses_a_subtree_shared_with_others() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(tmp.path().join("cgroup.procs"), "1\n").unwrap();
        let e = prepare_v2(tmp.path(), 4242).unwrap_err();
        assert!(e.contains("other processes"), "{e}");
        std::fs::write(tmp.path().join("cgroup.controllers"), "io").unwrap();
        let e = prepare_v2(tmp.path(), 4242).unwrap_err();
        assert!(e.contains("no memory or pids"), "{e}");
    }
}
