//! System, process and cgroup metrics (read with the `procfs` crate and from cgroup files),
//! and the sampler thread that turns CPU counters into percentages.
//!
//! CPU percentages need two readings some time apart. The sampler thread takes them every
//! `agents.metrics_interval_ms` and stores the result in [`Samples`]; METRICS_* replies read
//! the latest sample, so a percentage never depends on when the previous caller asked. Until
//! the first interval has passed the percentages are 0. Missing data is 0 or null, never
//! garbage. The sampler also emits RESOURCE_WARNING when an agent's memory use crosses
//! `agents.memory_warning_percent` of its limit (once per crossing): the cgroup's charge
//! against a cgroup limit, or, with the rlimit fallback, the main process's address space
//! against its `RLIMIT_AS`.

use super::{AgentInfo, Agents};
use crate::kernel::audit::Category;
use crate::kernel::{CallerId, Kernel};
use parking_lot::Mutex;
use procfs::{Current, CurrentSI};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The latest CPU percentages.
#[derive(Default)]
pub struct Samples {
    inner: Mutex<SampleData>,
}

#[derive(Default)]
struct SampleData {
    /// Previous system counters: (busy, total) overall and per core.
    last_total: Option<(u64, u64)>,
    last_cores: Vec<(u64, u64)>,
    cpu_percent: f64,
    per_core: Vec<f64>,
    /// Per agent: last CPU time (µs) and when it was read, and the derived percentage.
    agents: HashMap<CallerId, AgentCpu>,
    /// Agents currently above the memory warning threshold.
    warned: HashSet<CallerId>,
}

#[derive(Clone, Copy)]
struct AgentCpu {
    usec: u64,
    at: Instant,
    percent: f64,
}

impl Samples {
    /// System CPU percent and per-core percents.
    pub fn system_cpu(&self) -> (f64, Vec<f64>) {
        let d = self.inner.lock();
        (d.cpu_percent, d.per_core.clone())
    }

    /// An agent's CPU percent (of one core), 0 when not sampled yet.
    pub fn agent_cpu(&self, id: CallerId) -> f64 {
        self.inner.lock().agents.get(&id).map_or(0.0, |a| a.percent)
    }
}

fn busy_total(t: &procfs::CpuTime) -> (u64, u64) {
    let idle = t.idle + t.iowait.unwrap_or(0);
    let total = t.user
        + t.nice
        + t.system
        + t.idle
        + t.iowait.unwrap_or(0)
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn percent(prev: (u64, u64), now: (u64, u64)) -> f64 {
    let busy = now.0.saturating_sub(prev.0) as f64;
    let total = now.1.saturating_sub(prev.1) as f64;
    if total <= 0.0 {
        0.0
    } else {
        round2((busy / total * 100.0).clamp(0.0, 100.0))
    }
}

fn round2(x: f64) -> f64 {
    if x.is_finite() {
        (x * 100.0).round() / 100.0
    } else {
        0.0
    }
}

/// CPU time of a process in microseconds (user + system).
fn process_cpu_usec(pid: i32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second().max(1);
    Some((stat.utime + stat.stime) * 1_000_000 / ticks)
}

/// CPU time of an agent: its cgroup's when it has one, else its main process's.
fn agent_cpu_usec(a: &AgentInfo) -> Option<u64> {
    a.cgroup
        .as_ref()
        .and_then(|c| c.cpu_usage_usec())
        .or_else(|| a.main_pid.or(a.pid).and_then(process_cpu_usec))
}

/// An agent's memory use against its memory limit.
struct MemUse {
    /// "cgroup": the cgroup's charge against its limit. "rlimit": the main process's address
    /// space (what `RLIMIT_AS` bounds) against the limit given as that rlimit.
    via: &'static str,
    current: u64,
    limit: u64,
    /// The main process's resident set (rlimit only), for the warning's reader.
    rss: Option<u64>,
}

/// What the memory warning compares for one agent, if it has a memory limit. With the rlimit
/// fallback only the main process is read (one small /proc file): every process has its own
/// `RLIMIT_AS`, and the interpreter is the one that normally grows.
fn memory_use(a: &AgentInfo) -> Option<(CallerId, String, MemUse)> {
    if let Some((Some(current), Some(limit))) = a.cgroup.as_ref().map(|c| c.memory()) {
        let m = MemUse {
            via: "cgroup",
            current,
            limit,
            rss: None,
        };
        return Some((a.id, a.spec.name.clone(), m));
    }
    if a.isolation["limits"]["memory"]["via"] != "rlimit" {
        return None;
    }
    let limit = a.spec.limits.memory?;
    let (vms, rss) = statm(a.main_pid?)?;
    let m = MemUse {
        via: "rlimit",
        current: vms,
        limit,
        rss: Some(rss),
    };
    Some((a.id, a.spec.name.clone(), m))
}

/// Address space and resident set of a process in bytes, from /proc/PID/statm.
fn statm(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let page = procfs::page_size();
    let size = f.next()??;
    let resident = f.next()??;
    Some((size.saturating_mul(page), resident.saturating_mul(page)))
}

/// Takes one sample: system CPU, per-agent CPU, memory warnings.
pub fn sample(k: &Kernel, sup: &Agents) {
    let now = Instant::now();
    let stats = procfs::KernelStats::current().ok();
    let agents: Vec<AgentInfo> = sup
        .table
        .lock()
        .agents
        .values()
        .filter(|a| a.status.has_process())
        .cloned()
        .collect();
    let usage: Vec<(CallerId, Option<u64>)> =
        agents.iter().map(|a| (a.id, agent_cpu_usec(a))).collect();
    let warn_pct = sup.config.memory_warning_percent as u64;
    let mem: Vec<(CallerId, String, MemUse)> = agents.iter().filter_map(memory_use).collect();
    let mut warnings = Vec::new();
    {
        let mut d = sup.samples.inner.lock();
        if let Some(s) = &stats {
            let total = busy_total(&s.total);
            if let Some(prev) = d.last_total {
                d.cpu_percent = percent(prev, total);
            }
            d.last_total = Some(total);
            let cores: Vec<(u64, u64)> = s.cpu_time.iter().map(busy_total).collect();
            if d.last_cores.len() == cores.len() {
                d.per_core = d
                    .last_cores
                    .iter()
                    .zip(&cores)
                    .map(|(p, n)| percent(*p, *n))
                    .collect();
            } else {
                d.per_core = vec![0.0; cores.len()];
            }
            d.last_cores = cores;
        }
        let live: HashSet<CallerId> = usage.iter().map(|(id, _)| *id).collect();
        d.agents.retain(|id, _| live.contains(id));
        d.warned.retain(|id| live.contains(id));
        for (id, usec) in usage {
            let Some(usec) = usec else { continue };
            let pct = match d.agents.get(&id) {
                Some(prev) if usec >= prev.usec => {
                    let wall = now.duration_since(prev.at).as_micros() as f64;
                    if wall > 0.0 {
                        round2((usec - prev.usec) as f64 / wall * 100.0)
                    } else {
                        prev.percent
                    }
                }
                _ => 0.0,
            };
            d.agents.insert(
                id,
                AgentCpu {
                    usec,
                    at: now,
                    percent: pct,
                },
            );
        }
        for (id, name, m) in mem {
            let (cur, lim) = (m.current, m.limit);
            let high = lim > 0 && cur.saturating_mul(100) >= lim.saturating_mul(warn_pct);
            // Re-arm only after dropping clearly below the threshold (10 points).
            let low = cur.saturating_mul(100) < lim.saturating_mul(warn_pct.saturating_sub(10));
            if high && d.warned.insert(id) {
                warnings.push((id, name, m));
            } else if low {
                d.warned.remove(&id);
            }
        }
    }
    for (id, name, m) in warnings {
        let mut data = json!({
            "agent_id": id,
            "name": name,
            "kind": "memory",
            "via": m.via,
            "memory_current": m.current,
            "memory_limit": m.limit,
            "percent": round2(m.current as f64 * 100.0 / m.limit as f64),
        });
        if let Some(rss) = m.rss {
            data["rss"] = rss.into();
        }
        k.audit(
            Category::Resource,
            "RESOURCE_WARNING",
            id,
            true,
            data.clone(),
        );
        k.emit("RESOURCE_WARNING", data, id);
    }
}

/// Starts the sampler thread; it ends when `stop` is dropped or signalled.
pub fn start_sampler(
    k: Arc<Kernel>,
    sup: Arc<Agents>,
    stop: crossbeam_channel::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let interval = sup.config.metrics_interval;
    std::thread::Builder::new()
        .name("clove-metrics".into())
        .spawn(move || {
            sample(&k, &sup);
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop.recv_timeout(interval)
            {
                sample(&k, &sup);
            }
        })
}

/// METRICS_SYSTEM's `metrics` object.
pub fn system(samples: &Samples) -> Value {
    let (cpu_percent, per_core) = samples.system_cpu();
    let count = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load = procfs::LoadAverage::current()
        .map(|l| {
            vec![
                round2(l.one as f64),
                round2(l.five as f64),
                round2(l.fifteen as f64),
            ]
        })
        .unwrap_or_else(|_| vec![0.0, 0.0, 0.0]);
    let (total, available) = procfs::Meminfo::current()
        .map(|m| (m.mem_total, m.mem_available.unwrap_or(m.mem_free)))
        .unwrap_or((0, 0));
    let used = total.saturating_sub(available);
    let (read_bytes, write_bytes) = procfs::diskstats()
        .map(|v| {
            v.iter()
                .filter(|d| Path::new(&format!("/sys/block/{}", d.name)).exists())
                .filter(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram"))
                .fold((0u64, 0u64), |(r, w), d| {
                    (
                        r.saturating_add(d.sectors_read * 512),
                        w.saturating_add(d.sectors_written * 512),
                    )
                })
        })
        .unwrap_or((0, 0));
    let (sent, recv) = procfs::net::dev_status()
        .map(|m| {
            m.values()
                .filter(|d| d.name != "lo")
                .fold((0u64, 0u64), |(s, r), d| {
                    (
                        s.saturating_add(d.sent_bytes),
                        r.saturating_add(d.recv_bytes),
                    )
                })
        })
        .unwrap_or((0, 0));
    json!({
        "cpu": {
            "percent": cpu_percent,
            "per_core": if per_core.len() == count { per_core } else { vec![0.0; count] },
            "count": count,
            "load_avg": load,
        },
        "memory": {
            "total": total,
            "available": available,
            "used": used,
            "percent": if total > 0 { round2(used as f64 * 100.0 / total as f64) } else { 0.0 },
        },
        "disk": {"read_bytes": read_bytes, "write_bytes": write_bytes},
        "network": {"bytes_sent": sent, "bytes_recv": recv},
    })
}

/// A process's metrics (zeros when it is gone).
pub fn process(pid: Option<i32>, cpu_percent: f64) -> Value {
    let p = pid.and_then(|p| procfs::process::Process::new(p).ok());
    let stat = p.as_ref().and_then(|p| p.stat().ok());
    let fds = p.as_ref().and_then(|p| p.fd_count().ok()).unwrap_or(0);
    let page = procfs::page_size();
    json!({
        "pid": pid,
        "cpu": {"percent": cpu_percent},
        "memory": {
            "rss": stat.as_ref().map_or(0, |s| s.rss.saturating_mul(page)),
            "vms": stat.as_ref().map_or(0, |s| s.vsize),
        },
        "threads": stat.as_ref().map_or(0, |s| s.num_threads.max(0)),
        "fds": fds,
    })
}

/// The `cgroup` object of an agent's metrics.
pub fn agent_cgroup(a: &AgentInfo) -> Value {
    match &a.cgroup {
        None => json!({"valid": false, "cpu_usage_usec": 0, "mem_current": 0}),
        Some(c) => {
            let (cur, lim) = c.memory();
            let (pids, pids_max) = c.pids_count();
            json!({
                "valid": true,
                "version": format!("v{}", c.version),
                "cpu_usage_usec": c.cpu_usage_usec().unwrap_or(0),
                "mem_current": cur.unwrap_or(0),
                "mem_limit": lim,
                "pids_current": pids.unwrap_or(0),
                "pids_max": pids_max,
                "oom_kills": c.oom_kills(),
            })
        }
    }
}

/// METRICS_AGENT's `metrics` object.
pub fn agent(samples: &Samples, a: &AgentInfo) -> Value {
    let uptime = match (a.status.has_process(), a.started_at) {
        (true, Some(t)) => t.elapsed().as_millis() as u64,
        _ => 0,
    };
    json!({
        "agent_id": a.id,
        "name": a.spec.name,
        "status": a.status.as_str().to_ascii_lowercase(),
        "state": a.status.as_str(),
        "uptime_ms": uptime,
        "restarts": a.restarts,
        "process": process(
            if a.status.has_process() { a.main_pid.or(a.pid) } else { None },
            samples.agent_cpu(a.id),
        ),
        "cgroup": agent_cgroup(a),
    })
}

/// Reads cgroup metrics from a directory (v1: one directory per controller is looked up by
/// replacing the controller component; v2: one directory).
pub fn cgroup_dir(dirs: &[(String, PathBuf)]) -> Value {
    let find = |ctrl: &str| {
        dirs.iter()
            .find(|(c, _)| c.is_empty() || c == ctrl)
            .map(|(_, d)| d.clone())
    };
    let read = |d: Option<PathBuf>, f: &str| -> Option<u64> {
        let s = std::fs::read_to_string(d?.join(f)).ok()?;
        let s = s.trim();
        if s == "max" { None } else { s.parse().ok() }
    };
    let keyed = |d: Option<PathBuf>, f: &str, key: &str| -> Option<u64> {
        let s = std::fs::read_to_string(d?.join(f)).ok()?;
        s.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == key).then(|| it.next()?.parse().ok())?
        })
    };
    let v2 = dirs.iter().any(|(c, _)| c.is_empty());
    let (cpu_usec, mem_cur, mem_lim, pids_cur, pids_max) = if v2 {
        (
            keyed(find(""), "cpu.stat", "usage_usec"),
            read(find(""), "memory.current"),
            read(find(""), "memory.max"),
            read(find(""), "pids.current"),
            read(find(""), "pids.max"),
        )
    } else {
        (
            read(find("cpuacct"), "cpuacct.usage").map(|ns| ns / 1000),
            read(find("memory"), "memory.usage_in_bytes"),
            read(find("memory"), "memory.limit_in_bytes").filter(|l| *l < (1 << 62)),
            read(find("pids"), "pids.current"),
            read(find("pids"), "pids.max"),
        )
    };
    json!({
        "valid": !dirs.is_empty(),
        "version": if dirs.is_empty() { Value::Null } else if v2 { "v2".into() } else { "v1".into() },
        "cpu": {"usage_usec": cpu_usec.unwrap_or(0)},
        "memory": {"current": mem_cur.unwrap_or(0), "limit": mem_lim},
        "pids": {"current": pids_cur.unwrap_or(0), "max": pids_max},
        "paths": dirs.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_bounded() {
        assert_eq!(percent((0, 0), (0, 0)), 0.0);
        assert_eq!(percent((10, 100), (60, 200)), 50.0);
        assert_eq!(percent((10, 100), (5, 50)), 0.0);
        assert_eq!(round2(f64::NAN), 0.0);
    }
}
