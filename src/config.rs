//! Configuration: the TOML file the user wrote ([`RawConfig`]) and the validated values the
//! daemon runs with ([`Config`]).
//!
//! Every key has a default, so the daemon runs with no file at all. Unknown keys are errors (a
//! typo must not silently fall back to a default), and all problems are reported at once.
//! Precedence: command-line flags, then environment (`CLOVE_SOCKET`, `CLOVE_STATE_DIR`), then
//! the file (`--config`, `$CLOVE_CONFIG`, `~/.config/clove/clove.toml`, `/etc/clove/clove.toml`),
//! then built-in defaults.

use crate::kernel::perms::{self, Permissions, PermsPatch};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default Unix socket path, the one the Clove Python SDK uses.
pub const DEFAULT_SOCKET: &str = "/tmp/clove.sock";

/// A configuration problem (or several), ready to print.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// The file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub exec: RawExec,
    #[serde(default)]
    pub fs: RawFs,
    #[serde(default)]
    pub permissions: RawPermissions,
    /// `[llm]`: model backends and the THINK queue (see `crate::llm::config`).
    pub llm: Option<crate::llm::config::RawLlm>,
    /// `[http]`: the HTTP op's limits (see `crate::http`).
    #[serde(default)]
    pub http: crate::http::RawHttp,
    #[serde(default)]
    pub agents: crate::supervisor::config::RawAgents,
    #[serde(default)]
    pub sandbox: crate::supervisor::config::RawSandbox,
    #[serde(default)]
    pub audit: crate::kernel::audit::RawAudit,
    #[serde(default)]
    pub store: crate::store::RawStore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub socket: Option<PathBuf>,
    /// Octal permission bits for the socket file, e.g. "0600" or "0660".
    pub socket_mode: Option<String>,
    /// Group (name or numeric gid) to give the socket file; with mode 0660 this shares the
    /// daemon with a group.
    pub socket_group: Option<String>,
    /// Users besides the daemon's own that may connect (numeric uids).
    pub allowed_uids: Option<Vec<u32>>,
    pub state_dir: Option<PathBuf>,
    pub workers: Option<usize>,
    pub job_queue: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_frame_bytes: Option<u64>,
    pub max_pending_reply_bytes: Option<usize>,
    pub max_pipelined: Option<usize>,
    pub slow_client_timeout_ms: Option<u64>,
    /// Replies produced off the reactor thread waiting for it; a full queue makes the sender
    /// wait (back-pressure), never fails a request.
    pub completion_queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub mailbox_len: Option<usize>,
    pub mailbox_max_bytes: Option<usize>,
    pub event_queue_len: Option<usize>,
    pub event_queue_bytes: Option<usize>,
    pub state_max_keys: Option<usize>,
    pub state_max_key_bytes: Option<usize>,
    pub state_max_value_bytes: Option<usize>,
    pub state_max_total_bytes: Option<usize>,
    pub async_max_outstanding: Option<usize>,
    /// Event types one caller may be subscribed to at once.
    pub max_subscriptions: Option<usize>,
    /// Longest event type name (SUBSCRIBE, EMIT).
    pub max_event_type_bytes: Option<usize>,
    /// Longest name (REGISTER, agent names in SPAWN).
    pub max_name_bytes: Option<usize>,
    /// Most rules in each list of a permission set given by SET_PERMS or SPAWN.
    pub max_permission_rules: Option<usize>,
    /// Longest rule in a permission set given by SET_PERMS or SPAWN.
    pub max_permission_rule_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub shell: Option<PathBuf>,
    pub default_timeout_secs: Option<f64>,
    pub max_timeout_secs: Option<f64>,
    pub max_output_bytes: Option<usize>,
    pub max_running: Option<usize>,
    pub max_running_per_caller: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFs {
    pub max_read_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermissions {
    /// Level of plain clients (the user's own processes). Default `unrestricted`.
    pub client_level: Option<String>,
    /// Level of spawned agents. Default `standard`.
    pub agent_level: Option<String>,
    /// Overrides of the presets: `[permissions.levels.standard] can_http = false`.
    #[serde(default)]
    pub levels: BTreeMap<String, toml::Value>,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_gid: Option<u32>,
    pub allowed_uids: Vec<u32>,
    pub state_dir: PathBuf,
    pub workers: usize,
    pub job_queue: usize,
    pub max_connections: usize,
    pub max_frame_bytes: u64,
    pub max_pending_reply_bytes: usize,
    pub max_pipelined: usize,
    pub slow_client_timeout: Duration,
    pub completion_queue: usize,
    pub mailbox_len: usize,
    pub mailbox_max_bytes: usize,
    pub event_queue_len: usize,
    /// Bytes of event data one subscriber's queue may hold (`limits.event_queue_bytes`).
    pub event_queue_bytes: usize,
    pub state_max_keys: usize,
    pub state_max_key_bytes: usize,
    pub state_max_value_bytes: usize,
    pub state_max_total_bytes: usize,
    pub async_max_outstanding: usize,
    pub max_subscriptions: usize,
    pub max_event_type_bytes: usize,
    pub max_name_bytes: usize,
    pub max_permission_rules: usize,
    pub max_permission_rule_bytes: usize,
    pub exec_shell: PathBuf,
    pub exec_default_timeout: Duration,
    pub exec_max_timeout: Duration,
    pub exec_max_output_bytes: usize,
    /// EXEC commands running at once, all callers together.
    pub exec_max_running: usize,
    /// EXEC commands one caller may have running at once.
    pub exec_max_running_per_caller: usize,
    pub fs_max_read_bytes: u64,
    pub client_level: String,
    pub agent_level: String,
    /// The five presets after config overrides.
    pub levels: BTreeMap<String, Permissions>,
    pub llm: crate::llm::config::LlmConfig,
    pub http: crate::http::HttpConfig,
    pub agents: crate::supervisor::config::AgentsConfig,
    pub sandbox: crate::supervisor::config::SandboxConfig,
    pub audit: crate::kernel::audit::AuditConfig,
    /// The `[store]` section: the state database.
    pub store: crate::store::StoreConfig,
}

/// Values given on the command line, which win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Config {
    /// Loads the config: explicit file, or the first default location that exists, or built-in
    /// defaults; then environment and flag overrides; then validation.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (raw, origin) = match find_file(file) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError(vec![format!("cannot read {}: {e}", path.display())])
                })?;
                (Self::parse(&text, &path)?, Some(path))
            }
            None => (RawConfig::default(), None),
        };
        if let Some(p) = &origin {
            log::debug!("config from {}", p.display());
        }
        Self::from_raw(raw, overrides)
    }

    /// Parses TOML text into the raw form, naming the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))
    }

    /// Validates a raw config (plus overrides), reporting every problem at once.
    pub fn from_raw(raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let s = &raw.server;
        let socket = overrides
            .socket
            .clone()
            .or_else(|| std::env::var_os("CLOVE_SOCKET").map(PathBuf::from))
            .or_else(|| s.socket.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if socket.as_os_str().len() >= 108 {
            errors.push(format!(
                "server.socket: path {} is too long for a Unix socket (max 107 bytes)",
                socket.display()
            ));
        }
        let socket_mode = match s.socket_mode.as_deref() {
            None => 0o600,
            Some(text) => match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
                Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => m,
                Ok(m) if m <= 0o777 => {
                    errors.push(format!(
                        "server.socket_mode: {text:?} ({m:o}) must give the owner read and write (0600 or wider)"
                    ));
                    0o600
                }
                _ => {
                    errors.push(format!(
                        "server.socket_mode: {text:?} is not an octal mode like \"0600\""
                    ));
                    0o600
                }
            },
        };
        let socket_gid = match s.socket_group.as_deref() {
            None | Some("") => None,
            Some(g) => match lookup_group(g) {
                Some(gid) => Some(gid),
                None => {
                    errors.push(format!("server.socket_group: no group named {g:?}"));
                    None
                }
            },
        };
        let state_dir = overrides
            .state_dir
            .clone()
            .or_else(|| std::env::var_os("CLOVE_STATE_DIR").map(PathBuf::from))
            .or_else(|| s.state_dir.clone())
            .unwrap_or_else(default_state_dir);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut positive = |name: &str, v: Option<usize>, default: usize, max: usize| -> usize {
            match v {
                None => default,
                Some(0) => {
                    errors.push(format!("{name}: must be at least 1"));
                    default
                }
                Some(n) if n > max => {
                    errors.push(format!("{name}: {n} is absurdly large (max {max})"));
                    default
                }
                Some(n) => n,
            }
        };
        let workers = positive("server.workers", s.workers, (cores * 2).max(4), 1024);
        let job_queue = positive("server.job_queue", s.job_queue, 256, 1 << 20);
        let max_connections = positive("server.max_connections", s.max_connections, 4096, 1 << 20);
        let max_pending_reply_bytes = positive(
            "server.max_pending_reply_bytes",
            s.max_pending_reply_bytes,
            4 << 20,
            1 << 32,
        );
        let max_pipelined = positive("server.max_pipelined", s.max_pipelined, 128, 1 << 20);
        let completion_queue =
            positive("server.completion_queue", s.completion_queue, 4096, 1 << 20);
        let l = &raw.limits;
        let mailbox_len = positive("limits.mailbox_len", l.mailbox_len, 1024, 1 << 24);
        let mailbox_max_bytes = positive(
            "limits.mailbox_max_bytes",
            l.mailbox_max_bytes,
            16 << 20,
            1 << 34,
        );
        let event_queue_len = positive("limits.event_queue_len", l.event_queue_len, 1024, 1 << 24);
        let event_queue_bytes = positive(
            "limits.event_queue_bytes",
            l.event_queue_bytes,
            16 << 20,
            1 << 34,
        );
        let state_max_keys = positive("limits.state_max_keys", l.state_max_keys, 100_000, 1 << 30);
        let state_max_key_bytes = positive(
            "limits.state_max_key_bytes",
            l.state_max_key_bytes,
            1024,
            1 << 20,
        );
        let state_max_value_bytes = positive(
            "limits.state_max_value_bytes",
            l.state_max_value_bytes,
            1 << 20,
            1 << 30,
        );
        let state_max_total_bytes = positive(
            "limits.state_max_total_bytes",
            l.state_max_total_bytes,
            256 << 20,
            1 << 40,
        );
        let async_max_outstanding = positive(
            "limits.async_max_outstanding",
            l.async_max_outstanding,
            64,
            1 << 20,
        );
        let max_subscriptions = positive(
            "limits.max_subscriptions",
            l.max_subscriptions,
            256,
            1 << 16,
        );
        let max_event_type_bytes = positive(
            "limits.max_event_type_bytes",
            l.max_event_type_bytes,
            128,
            4096,
        );
        // Names become file names (`NAME.log.N`) and cgroup directories (`NAME-ID`), which
        // must stay under the 255-byte limit of a path component.
        let max_name_bytes = positive(
            "limits.max_name_bytes",
            l.max_name_bytes,
            crate::kernel::ipc::DEFAULT_MAX_NAME_BYTES,
            crate::kernel::ipc::MAX_NAME_BYTES_LIMIT,
        );
        // Rule lists are compared pairwise on the reactor thread (a caller's new set against
        // its current one): 4096 x 4096 takes about 15 ms in a release build.
        let max_permission_rules = positive(
            "limits.max_permission_rules",
            l.max_permission_rules,
            256,
            4096,
        );
        // Every check compares rules with paths, program names and each other; the longest
        // path the kernel resolves is 4096 bytes (PATH_MAX).
        let max_permission_rule_bytes = positive(
            "limits.max_permission_rule_bytes",
            l.max_permission_rule_bytes,
            4096,
            1 << 16,
        );
        let exec_max_output_bytes = positive(
            "exec.max_output_bytes",
            raw.exec.max_output_bytes,
            1 << 20,
            1 << 30,
        );
        let exec_max_running = positive("exec.max_running", raw.exec.max_running, 64, 4096);
        let exec_max_running_per_caller = positive(
            "exec.max_running_per_caller",
            raw.exec.max_running_per_caller,
            16,
            4096,
        );
        if exec_max_running_per_caller > exec_max_running {
            errors.push(format!(
                "exec.max_running_per_caller ({exec_max_running_per_caller}) is larger than \
                 exec.max_running ({exec_max_running})"
            ));
        }
        let max_frame_bytes = match s.max_frame_bytes {
            None => crate::proto::clove::DEFAULT_MAX_PAYLOAD,
            Some(n) if (64..=(1u64 << 30)).contains(&n) => n,
            Some(n) => {
                errors.push(format!(
                    "server.max_frame_bytes: {n} must be between 64 and 1073741824"
                ));
                crate::proto::clove::DEFAULT_MAX_PAYLOAD
            }
        };
        let slow_client_timeout = Duration::from_millis(match s.slow_client_timeout_ms {
            None => 10_000,
            Some(n) if (10..=3_600_000).contains(&n) => n,
            Some(n) => {
                errors.push(format!(
                    "server.slow_client_timeout_ms: {n} must be between 10 and 3600000"
                ));
                10_000
            }
        });
        let mut secs = |name: &str, v: Option<f64>, default: f64| -> Duration {
            match v {
                None => Duration::from_secs_f64(default),
                Some(x) if x.is_finite() && x > 0.0 && x <= 7.0 * 86400.0 => {
                    Duration::from_secs_f64(x)
                }
                Some(x) => {
                    errors.push(format!(
                        "{name}: {x} must be a number of seconds in (0, 604800]"
                    ));
                    Duration::from_secs_f64(default)
                }
            }
        };
        let exec_default_timeout = secs(
            "exec.default_timeout_secs",
            raw.exec.default_timeout_secs,
            30.0,
        );
        let exec_max_timeout = secs("exec.max_timeout_secs", raw.exec.max_timeout_secs, 3600.0);
        if exec_default_timeout > exec_max_timeout {
            errors.push("exec.default_timeout_secs is larger than exec.max_timeout_secs".into());
        }
        let exec_shell = raw
            .exec
            .shell
            .clone()
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        if !exec_shell.is_absolute() {
            errors.push(format!(
                "exec.shell: {} must be an absolute path",
                exec_shell.display()
            ));
        }
        let fs_max_read_bytes = raw.fs.max_read_bytes.unwrap_or(16 << 20);
        let store = crate::store::StoreConfig::from_raw(&raw.store, &state_dir, &mut errors);

        let state_text = state_dir.to_string_lossy().into_owned();
        let mut levels = BTreeMap::new();
        for name in perms::LEVELS {
            let Some(mut p) = perms::builtin_level(name, &state_text) else {
                continue;
            };
            if let Some(value) = raw.permissions.levels.get(name) {
                match value.clone().try_into::<PermsPatch>() {
                    Ok(patch) => {
                        p = p.patched(&patch);
                        p.level = name.to_string();
                    }
                    Err(e) => errors.push(format!("permissions.levels.{name}: {e}")),
                }
            }
            // A state database outside the state directory is as private as the directory
            // (the file, its write-ahead log and its lock).
            if !p.filesystem.blocked.is_empty() && !store.path.starts_with(&state_dir) {
                p.filesystem
                    .blocked
                    .push(format!("{}*", store.path.display()));
            }
            if let Err(e) = p.validate() {
                errors.push(format!("permissions.levels.{name}: {e}"));
            }
            levels.insert(name.to_string(), p);
        }
        for name in raw.permissions.levels.keys() {
            if !levels.contains_key(name) {
                errors.push(format!(
                    "permissions.levels.{name}: unknown level (known: {})",
                    perms::LEVELS.join(", ")
                ));
            }
        }
        let mut level = |key: &str, v: &Option<String>, default: &str| -> String {
            let name = v.clone().unwrap_or_else(|| default.to_string());
            if !perms::LEVELS.contains(&name.as_str()) {
                errors.push(format!(
                    "permissions.{key}: unknown level {name:?} (known: {})",
                    perms::LEVELS.join(", ")
                ));
                return default.to_string();
            }
            name
        };
        let client_level = level(
            "client_level",
            &raw.permissions.client_level,
            "unrestricted",
        );
        let agent_level = level("agent_level", &raw.permissions.agent_level, "standard");
        let llm = crate::llm::config::LlmConfig::from_raw(raw.llm.as_ref(), &mut errors);
        let http = crate::http::HttpConfig::from_raw(&raw.http, &mut errors);
        let agents = crate::supervisor::config::AgentsConfig::from_raw(&raw.agents, &mut errors);
        let sandbox = crate::supervisor::config::SandboxConfig::from_raw(&raw.sandbox, &mut errors);
        let audit = crate::kernel::audit::AuditConfig::from_raw(&raw.audit, &mut errors);

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            socket,
            socket_mode,
            socket_gid,
            allowed_uids: s.allowed_uids.clone().unwrap_or_default(),
            state_dir,
            workers,
            job_queue,
            max_connections,
            max_frame_bytes,
            max_pending_reply_bytes,
            max_pipelined,
            slow_client_timeout,
            completion_queue,
            mailbox_len,
            mailbox_max_bytes,
            event_queue_len,
            event_queue_bytes,
            state_max_keys,
            state_max_key_bytes,
            state_max_value_bytes,
            state_max_total_bytes,
            async_max_outstanding,
            max_subscriptions,
            max_event_type_bytes,
            max_name_bytes,
            max_permission_rules,
            max_permission_rule_bytes,
            exec_shell,
            exec_default_timeout,
            exec_max_timeout,
            exec_max_output_bytes,
            exec_max_running,
            exec_max_running_per_caller,
            fs_max_read_bytes,
            client_level,
            agent_level,
            levels,
            llm,
            http,
            agents,
            sandbox,
            audit,
            store,
        })
    }

    /// Built-in defaults with no file, environment or flags (for tests and `--help` text).
    pub fn defaults() -> Config {
        Self::from_raw(RawConfig::default(), &Overrides::default())
            .unwrap_or_else(|e| panic!("built-in defaults must be valid: {e}"))
    }

    /// The permission preset called `name` (after overrides).
    pub fn level(&self, name: &str) -> Option<&Permissions> {
        self.levels.get(name)
    }
}

/// The config file to read: the explicit one, `$CLOVE_CONFIG`, or the first default location
/// that exists.
fn find_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("CLOVE_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".config/clove/clove.toml"));
    }
    candidates.push(PathBuf::from("/etc/clove/clove.toml"));
    candidates.into_iter().find(|p| p.exists())
}

/// `$XDG_STATE_HOME/clove`, else `~/.local/state/clove`, else `/var/lib/clove`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("clove");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(home).join(".local/state/clove");
    }
    PathBuf::from("/var/lib/clove")
}

/// Resolves a group name or numeric gid.
fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The socket path a client should use: flag, then `$CLOVE_SOCKET`, then the default.
pub fn client_socket(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CLOVE_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw = Config::parse(text, Path::new("test.toml"))?;
        Config::from_raw(
            raw,
            &Overrides {
                socket: Some("/tmp/t.sock".into()),
                state_dir: Some("/tmp/state".into()),
            },
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.client_level, "unrestricted");
        assert_eq!(c.agent_level, "standard");
        assert!(
            c.level("standard")
                .unwrap()
                .filesystem
                .blocked
                .contains(&"/tmp/state/**".to_string())
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse("[server]\nsockett = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("sockett"), "{e}");
    }

    #[test]
    fn all_errors_reported_at_once() {
        let e = parse("[server]\nworkers = 0\nsocket_mode = \"0400\"\n[limits]\nmailbox_len = 0\n")
            .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn limit_keys_have_defaults_and_refuse_zero_and_absurd_values() {
        let c = parse("").unwrap();
        assert_eq!(c.completion_queue, 4096);
        assert_eq!(c.max_subscriptions, 256);
        assert_eq!(c.max_event_type_bytes, 128);
        assert_eq!(c.max_name_bytes, 64);
        assert_eq!(c.max_permission_rules, 256);
        assert_eq!(c.max_permission_rule_bytes, 4096);
        let c = parse(
            "[server]\ncompletion_queue = 1\n[limits]\nmax_subscriptions = 2\nmax_event_type_bytes = 8\nmax_name_bytes = 200\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.completion_queue,
                c.max_subscriptions,
                c.max_event_type_bytes,
                c.max_name_bytes
            ),
            (1, 2, 8, 200)
        );
        let e = parse(
            "[server]\ncompletion_queue = 0\n[limits]\nmax_subscriptions = 0\nmax_event_type_bytes = 100000\nmax_name_bytes = 201\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        for key in [
            "server.completion_queue: must be at least 1",
            "limits.max_subscriptions: must be at least 1",
            "limits.max_event_type_bytes: 100000 is absurdly large",
            "limits.max_name_bytes: 201 is absurdly large",
        ] {
            assert!(e.0.iter().any(|m| m.starts_with(key)), "{key}: {e}");
        }
    }

    #[test]
    fn a_store_outside_the_state_dir_is_blocked_too() {
        let c = parse("[store]\npath = \"/data/clove/s.db\"\n").unwrap();
        let std = c.level("standard").unwrap();
        assert!(std.may_read(Path::new("/data/clove/s.db")).is_err());
        assert!(std.may_read(Path::new("/data/clove/s.db-wal")).is_err());
        assert!(std.may_read(Path::new("/data/clove/other")).is_ok());
        assert!(
            c.level("unrestricted")
                .unwrap()
                .may_read(Path::new("/data/clove/s.db"))
                .is_ok()
        );
        let c = parse("").unwrap();
        assert_eq!(c.store.path, Path::new("/tmp/state/store.db"));
    }

    #[test]
    fn level_overrides() {
        let c = parse("[permissions.levels.standard]\ncan_http = false\n").unwrap();
        let p = c.level("standard").unwrap();
        assert!(!p.can_http);
        assert_eq!(p.level, "standard");
        assert!(parse("[permissions.levels.bogus]\ncan_http = false\n").is_err());
        assert!(
            parse("[permissions.levels.standard]\nfilesystem = { read = [\"tmp\"] }\n").is_err()
        );
    }
}
