//! The `[agents]` and `[sandbox]` config sections: raw (as written) and validated.

use super::caps::{Creds, resolve_agent_user};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The largest `agents.max_args`: beyond some tens of thousands `execve` refuses anyway.
pub const MAX_ARGS_LIMIT: usize = 65_536;
/// The largest `agents.max_args_bytes`: Linux caps a command line (arguments and environment)
/// at a quarter of the stack limit, 2 MiB with the usual 8 MiB stack.
pub const MAX_ARGS_BYTES_LIMIT: usize = 1 << 20;

/// `[agents]` as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    /// Time between SIGTERM and SIGKILL when an agent is stopped (KILL, shutdown).
    pub kill_grace_ms: Option<u64>,
    /// Size at which an agent's log file is rotated.
    pub log_max_bytes: Option<u64>,
    /// Rotated log files kept per agent (`NAME.log.1` ... `NAME.log.N`).
    pub log_files: Option<u32>,
    /// First restart delay; doubled for each further restart inside the window.
    pub backoff_initial_ms: Option<u64>,
    /// Largest restart delay.
    pub backoff_cap_ms: Option<u64>,
    /// What shutdown does with running agents: "stop" (SIGTERM, grace, SIGKILL) or "leave".
    pub on_shutdown: Option<String>,
    /// Most agents known at once (running or restarting).
    pub max_agents: Option<usize>,
    /// Stopped agents kept in LIST (oldest forgotten first).
    pub keep_exited: Option<usize>,
    /// How long an agent may take to start (namespaces set up, interpreter exec'd).
    pub spawn_timeout_ms: Option<u64>,
    /// Interval of the metrics sampler (CPU percentages, memory warnings).
    pub metrics_interval_ms: Option<u64>,
    /// RESOURCE_WARNING when an agent's memory use reaches this percentage of its limit.
    pub memory_warning_percent: Option<u8>,
    /// Interpreter used when SPAWN gives none.
    pub default_interpreter: Option<String>,
    /// SPAWN, KILL, PAUSE, RESUME (and saves of changed permissions) waiting for the
    /// supervisor thread; beyond it such a request is refused as busy.
    pub command_queue: Option<usize>,
    /// Most `args` one SPAWN may pass.
    pub max_args: Option<usize>,
    /// Most bytes of `args` in all, per SPAWN.
    pub max_args_bytes: Option<usize>,
}

/// `[sandbox]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// Refuse a spawn whose isolation cannot be applied in full, instead of degrading.
    pub require: Option<bool>,
    /// Which cgroup interface to use: "auto", "v1", "v2" or "off" (rlimits only).
    pub cgroups: Option<String>,
    /// A delegated cgroup v2 directory to create agent cgroups in (default: detected from
    /// /proc/self/cgroup).
    pub cgroup_v2_root: Option<PathBuf>,
    /// The user (name or numeric uid) sandboxed agents run as when the daemon runs as root.
    /// Default `nobody`.
    pub agent_user: Option<String>,
}

/// What shutdown does with running agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    Stop,
    Leave,
}

/// Which cgroup interface the supervisor may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    Auto,
    V1,
    V2,
    Off,
}

/// Validated `[agents]`.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    pub kill_grace: Duration,
    pub log_max_bytes: u64,
    pub log_files: u32,
    pub backoff_initial: Duration,
    pub backoff_cap: Duration,
    pub on_shutdown: OnShutdown,
    pub max_agents: usize,
    pub keep_exited: usize,
    pub spawn_timeout: Duration,
    pub metrics_interval: Duration,
    pub memory_warning_percent: u8,
    pub default_interpreter: String,
    pub command_queue: usize,
    pub max_args: usize,
    pub max_args_bytes: usize,
}

/// Validated `[sandbox]`.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub require: bool,
    pub cgroups: CgroupMode,
    pub cgroup_v2_root: Option<PathBuf>,
    /// Who sandboxed agents run as, when that is not the daemon's own user: set when the
    /// daemon runs as root (from `sandbox.agent_user`), `None` otherwise (a non-root daemon's
    /// agents are its own user, inside a user namespace).
    pub agent_creds: Option<Creds>,
}

fn ranged(
    errors: &mut Vec<String>,
    name: &str,
    v: Option<u64>,
    default: u64,
    lo: u64,
    hi: u64,
) -> u64 {
    match v {
        None => default,
        Some(n) if (lo..=hi).contains(&n) => n,
        Some(n) => {
            errors.push(format!("{name}: {n} must be between {lo} and {hi}"));
            default
        }
    }
}

impl AgentsConfig {
    pub fn from_raw(raw: &RawAgents, errors: &mut Vec<String>) -> AgentsConfig {
        let ms = |errors: &mut Vec<String>, name: &str, v, d, lo, hi| {
            Duration::from_millis(ranged(errors, name, v, d, lo, hi))
        };
        let backoff_initial = ms(
            errors,
            "agents.backoff_initial_ms",
            raw.backoff_initial_ms,
            100,
            0,
            3_600_000,
        );
        let backoff_cap = ms(
            errors,
            "agents.backoff_cap_ms",
            raw.backoff_cap_ms,
            30_000,
            0,
            86_400_000,
        );
        if backoff_cap < backoff_initial {
            errors.push("agents.backoff_cap_ms is smaller than agents.backoff_initial_ms".into());
        }
        let on_shutdown = match raw.on_shutdown.as_deref() {
            None | Some("stop") => OnShutdown::Stop,
            Some("leave") => OnShutdown::Leave,
            Some(other) => {
                errors.push(format!(
                    "agents.on_shutdown: {other:?} must be \"stop\" or \"leave\""
                ));
                OnShutdown::Stop
            }
        };
        let default_interpreter = raw
            .default_interpreter
            .clone()
            .unwrap_or_else(|| "python3".into());
        if default_interpreter.is_empty() || default_interpreter.contains('\0') {
            errors.push("agents.default_interpreter: must be a program name or path".into());
        }
        AgentsConfig {
            kill_grace: ms(
                errors,
                "agents.kill_grace_ms",
                raw.kill_grace_ms,
                5_000,
                0,
                600_000,
            ),
            log_max_bytes: ranged(
                errors,
                "agents.log_max_bytes",
                raw.log_max_bytes,
                10 << 20,
                4096,
                1 << 40,
            ),
            log_files: ranged(
                errors,
                "agents.log_files",
                raw.log_files.map(u64::from),
                3,
                0,
                100,
            ) as u32,
            backoff_initial,
            backoff_cap,
            on_shutdown,
            max_agents: ranged(
                errors,
                "agents.max_agents",
                raw.max_agents.map(|n| n as u64),
                256,
                1,
                100_000,
            ) as usize,
            keep_exited: ranged(
                errors,
                "agents.keep_exited",
                raw.keep_exited.map(|n| n as u64),
                100,
                0,
                100_000,
            ) as usize,
            spawn_timeout: ms(
                errors,
                "agents.spawn_timeout_ms",
                raw.spawn_timeout_ms,
                10_000,
                100,
                600_000,
            ),
            metrics_interval: ms(
                errors,
                "agents.metrics_interval_ms",
                raw.metrics_interval_ms,
                1_000,
                50,
                3_600_000,
            ),
            memory_warning_percent: ranged(
                errors,
                "agents.memory_warning_percent",
                raw.memory_warning_percent.map(u64::from),
                90,
                1,
                100,
            ) as u8,
            default_interpreter,
            command_queue: ranged(
                errors,
                "agents.command_queue",
                raw.command_queue.map(|n| n as u64),
                1024,
                1,
                1 << 20,
            ) as usize,
            max_args: ranged(
                errors,
                "agents.max_args",
                raw.max_args.map(|n| n as u64),
                256,
                1,
                MAX_ARGS_LIMIT as u64,
            ) as usize,
            max_args_bytes: ranged(
                errors,
                "agents.max_args_bytes",
                raw.max_args_bytes.map(|n| n as u64),
                64 << 10,
                1,
                MAX_ARGS_BYTES_LIMIT as u64,
            ) as usize,
        }
    }
}

impl SandboxConfig {
    pub fn from_raw(raw: &RawSandbox, errors: &mut Vec<String>) -> SandboxConfig {
        let cgroups = match raw.cgroups.as_deref() {
            None | Some("auto") => CgroupMode::Auto,
            Some("v1") => CgroupMode::V1,
            Some("v2") => CgroupMode::V2,
            Some("off") => CgroupMode::Off,
            Some(other) => {
                errors.push(format!(
                    "sandbox.cgroups: {other:?} must be \"auto\", \"v1\", \"v2\" or \"off\""
                ));
                CgroupMode::Auto
            }
        };
        if let Some(p) = &raw.cgroup_v2_root
            && !p.is_absolute()
        {
            errors.push(format!(
                "sandbox.cgroup_v2_root: {} must be an absolute path",
                p.display()
            ));
        }
        // Checked whoever runs check-config; used only by a root daemon.
        let creds = resolve_agent_user(raw.agent_user.as_deref())
            .map_err(|e| errors.push(e))
            .ok();
        SandboxConfig {
            require: raw.require.unwrap_or(false),
            cgroups,
            cgroup_v2_root: raw.cgroup_v2_root.clone(),
            agent_creds: creds.filter(|_| nix::unistd::geteuid().is_root()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let mut errors = Vec::new();
        let a = AgentsConfig::from_raw(&RawAgents::default(), &mut errors);
        let s = SandboxConfig::from_raw(&RawSandbox::default(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.kill_grace, Duration::from_secs(5));
        assert_eq!(a.on_shutdown, OnShutdown::Stop);
        assert_eq!(a.default_interpreter, "python3");
        assert_eq!(a.command_queue, 1024);
        assert_eq!((a.max_args, a.max_args_bytes), (256, 64 << 10));
        assert_eq!(s.cgroups, CgroupMode::Auto);
        assert!(!s.require);
        let raw: RawAgents = toml::from_str(
            "on_shutdown = \"later\"\nbackoff_initial_ms = 500\nbackoff_cap_ms = 100\nmax_agents = 0\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        AgentsConfig::from_raw(&raw, &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        let raw: RawAgents =
            toml::from_str("command_queue = 0\nmax_args = 0\nmax_args_bytes = 1073741824\n")
                .unwrap();
        let mut errors = Vec::new();
        AgentsConfig::from_raw(&raw, &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        for key in [
            "agents.command_queue",
            "agents.max_args",
            "agents.max_args_bytes",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{key}:"))),
                "{key}: {errors:?}"
            );
        }
        let raw: RawSandbox =
            toml::from_str("cgroups = \"v3\"\ncgroup_v2_root = \"rel\"\nagent_user = \"root\"\n")
                .unwrap();
        let mut errors = Vec::new();
        SandboxConfig::from_raw(&raw, &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("sandbox.agent_user:")));
        assert!(
            toml::from_str::<RawAgents>("kill_grace = 5").is_err(),
            "unknown keys"
        );
    }
}
