//! Configuration: the TOML file the user wrote ([`RawConfig`]) and the validated values the
//! daemon runs with ([`Config`]).
//!
//! Every key has a default, so the daemon runs with no file at all. Unknown keys are errors (a
//! typo must not silently fall back to a default), and all problems are reported at once.
//! Precedence: command-line flags, then environment (`CLOVE_SOCKET`, `CLOVE_STATE_DIR`), then
//! the file (`--config`, `$CLOVE_CONFIG`, `~/.config/clove/clove.toml`, `/etc/clove/clove.toml`),
//! then built-in defaults.

use crate::http::{HttpConfig, RawHttp};
use crate::kernel::audit::{AuditConfig, RawAudit};
use crate::kernel::config::{KernelConfig, Levels, RawPermissions};
use crate::llm::config::{LlmConfig, RawLlm};
use crate::ops::config::{OpsConfig, RawExec, RawFs};
use crate::reactor::config::{RawServer, ServerConfig};
use crate::relay::config::{RawRelay, RelayConfig};
use crate::router::config::{RawRouter, RouterConfig};
use crate::settings::positive;
use crate::store::{RawStore, StoreConfig, StoreLimits};
use crate::supervisor::config::{AgentsConfig, RawAgents, RawSandbox, SandboxConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub use crate::reactor::config::default_socket;

/// A configuration problem (or several), ready to print.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// The file as written. Every field is optional; each section's type lives next to the module
/// that uses it.
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
    pub llm: Option<RawLlm>,
    /// `[http]`: the HTTP op's limits (see `crate::http`).
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub agents: RawAgents,
    #[serde(default)]
    pub sandbox: RawSandbox,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub store: RawStore,
    /// `[relay]`: the ClawNet relay (see `crate::relay::config`).
    #[serde(default)]
    pub relay: RawRelay,
    /// `[router]`: the Codeswarm router (see `crate::router::config`).
    #[serde(default)]
    pub router: RawRouter,
}

/// `[limits]` as written: the kernel's queues and names, and the state store's sizes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub mailbox_len: Option<usize>,
    pub mailbox_max_bytes: Option<usize>,
    /// Bytes of message bodies all mailboxes together may hold (a shared body counts once).
    pub mailboxes_total_bytes: Option<usize>,
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

/// The validated configuration the daemon runs with: one section per module.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub server: ServerConfig,
    pub kernel: KernelConfig,
    /// The `[store]` section: the state database.
    pub store: StoreConfig,
    pub store_limits: StoreLimits,
    pub ops: OpsConfig,
    pub llm: LlmConfig,
    pub http: HttpConfig,
    pub agents: AgentsConfig,
    pub sandbox: SandboxConfig,
    pub relay: RelayConfig,
    /// The `[router]` section: the Codeswarm router and its providers.
    pub router: RouterConfig,
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
        let Some(path) = config_file(file) else {
            return Self::from_raw(RawConfig::default(), overrides);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        log::debug!("config from {}", path.display());
        Self::load_text(&text, &path, overrides)
    }

    /// Reads and validates the text of the config file `path`: every problem, of the file
    /// and of its values, reported at once in file order as `FILE:LINE: problem`.
    pub fn load_text(
        text: &str,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        use crate::config_file::{File, Problem, report};
        let (file, raw, mut problems) = File::read(text);
        match Self::from_raw(raw, overrides) {
            Ok(c) if problems.is_empty() => Ok(c),
            Ok(_) => Err(ConfigError(report(path, problems))),
            Err(e) => {
                problems.extend(e.0.iter().map(|m| {
                    let text = crate::config_file::describe_validation(m);
                    Problem {
                        line: file.line_of_message(&text),
                        text,
                    }
                }));
                Err(ConfigError(report(path, problems)))
            }
        }
    }

    /// Parses TOML text into the raw form, with every problem of the file (see
    /// [`crate::config_file`]), naming the file and line in each.
    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let (_, raw, problems) = crate::config_file::File::read(text);
        if problems.is_empty() {
            Ok(raw)
        } else {
            Err(ConfigError(crate::config_file::report(path, problems)))
        }
    }

    /// Validates a raw config (plus overrides), reporting every problem at once.
    pub fn from_raw(raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let socket = overrides
            .socket
            .clone()
            .or_else(|| std::env::var_os("CLOVE_SOCKET").map(PathBuf::from))
            .or_else(|| raw.server.socket.clone())
            .unwrap_or_else(default_socket);
        let state_dir = overrides
            .state_dir
            .clone()
            .or_else(|| std::env::var_os("CLOVE_STATE_DIR").map(PathBuf::from))
            .or_else(|| raw.server.state_dir.clone())
            .unwrap_or_else(default_state_dir);
        let server = ServerConfig::from_raw(&raw.server, socket, &mut errors);
        let store = StoreConfig::from_raw(&raw.store, &state_dir, &mut errors);
        let store_limits = store_limits(&raw.limits, &mut errors);
        let audit = AuditConfig::from_raw(&raw.audit, &mut errors);
        let levels = Levels::from_raw(&raw.permissions, &state_dir, &store.path, &mut errors);
        let mut kernel = kernel_config(&raw.limits, levels, audit, &mut errors);
        let ops = OpsConfig::from_raw(&raw.exec, &raw.fs, &mut errors);
        let llm = LlmConfig::from_raw(raw.llm.as_ref(), &mut errors);
        let http = HttpConfig::from_raw(&raw.http, &mut errors);
        let agents = AgentsConfig::from_raw(&raw.agents, &mut errors);
        let sandbox = SandboxConfig::from_raw(&raw.sandbox, &mut errors);
        // The kernel lets the agent user in only for agents' own processes.
        kernel.agent_uid = sandbox.agent_creds.map(|c| c.uid);
        let relay = RelayConfig::from_raw(&raw.relay, &state_dir, &mut errors);
        let router = RouterConfig::from_raw(
            &raw.router,
            &state_dir,
            &|k| std::env::var(k).ok(),
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            state_dir,
            server,
            kernel,
            store,
            store_limits,
            ops,
            llm,
            http,
            agents,
            sandbox,
            relay,
            router,
        })
    }

    /// Built-in defaults with no file, environment or flags (for tests and `--help` text).
    pub fn defaults() -> Config {
        Self::from_raw(RawConfig::default(), &Overrides::default())
            .unwrap_or_else(|e| panic!("built-in defaults must be valid: {e}"))
    }
}

/// The state store's share of `[limits]`.
fn store_limits(l: &RawLimits, errors: &mut Vec<String>) -> StoreLimits {
    StoreLimits {
        max_keys: positive(
            errors,
            "limits.state_max_keys",
            l.state_max_keys,
            100_000,
            1 << 30,
        ),
        max_key_bytes: positive(
            errors,
            "limits.state_max_key_bytes",
            l.state_max_key_bytes,
            1024,
            1 << 20,
        ),
        max_value_bytes: positive(
            errors,
            "limits.state_max_value_bytes",
            l.state_max_value_bytes,
            1 << 20,
            1 << 30,
        ),
        max_total_bytes: positive(
            errors,
            "limits.state_max_total_bytes",
            l.state_max_total_bytes,
            256 << 20,
            1 << 40,
        ),
    }
}

/// The kernel's share of `[limits]`, with the permission presets and the audit settings.
fn kernel_config(
    l: &RawLimits,
    levels: Levels,
    audit: AuditConfig,
    errors: &mut Vec<String>,
) -> KernelConfig {
    use crate::kernel::ipc::{
        DEFAULT_MAILBOXES_TOTAL_BYTES, DEFAULT_MAX_NAME_BYTES, MAX_NAME_BYTES_LIMIT,
    };
    KernelConfig {
        mailbox_len: positive(errors, "limits.mailbox_len", l.mailbox_len, 1024, 1 << 24),
        mailbox_max_bytes: positive(
            errors,
            "limits.mailbox_max_bytes",
            l.mailbox_max_bytes,
            16 << 20,
            1 << 34,
        ),
        // Counted once per body however many mailboxes share it, so a BROADCAST to every
        // agent costs its size once; see `kernel::ipc`.
        mailboxes_total_bytes: positive(
            errors,
            "limits.mailboxes_total_bytes",
            l.mailboxes_total_bytes,
            DEFAULT_MAILBOXES_TOTAL_BYTES,
            1 << 40,
        ),
        event_queue_len: positive(
            errors,
            "limits.event_queue_len",
            l.event_queue_len,
            1024,
            1 << 24,
        ),
        event_queue_bytes: positive(
            errors,
            "limits.event_queue_bytes",
            l.event_queue_bytes,
            16 << 20,
            1 << 34,
        ),
        async_max_outstanding: positive(
            errors,
            "limits.async_max_outstanding",
            l.async_max_outstanding,
            64,
            1 << 20,
        ),
        max_subscriptions: positive(
            errors,
            "limits.max_subscriptions",
            l.max_subscriptions,
            256,
            1 << 16,
        ),
        max_event_type_bytes: positive(
            errors,
            "limits.max_event_type_bytes",
            l.max_event_type_bytes,
            128,
            4096,
        ),
        // Names become file names (`NAME.log.N`) and cgroup directories (`NAME-ID`), which
        // must stay under the 255-byte limit of a path component.
        max_name_bytes: positive(
            errors,
            "limits.max_name_bytes",
            l.max_name_bytes,
            DEFAULT_MAX_NAME_BYTES,
            MAX_NAME_BYTES_LIMIT,
        ),
        // Rule lists are compared pairwise on the reactor thread (a caller's new set against
        // its current one): 4096 x 4096 takes about 15 ms in a release build.
        max_permission_rules: positive(
            errors,
            "limits.max_permission_rules",
            l.max_permission_rules,
            256,
            4096,
        ),
        // Every check compares rules with paths, program names and each other; the longest
        // path the kernel resolves is 4096 bytes (PATH_MAX).
        max_permission_rule_bytes: positive(
            errors,
            "limits.max_permission_rule_bytes",
            l.max_permission_rule_bytes,
            4096,
            1 << 16,
        ),
        client_level: levels.client_level,
        agent_level: levels.agent_level,
        unattributed_level: levels.unattributed_level,
        levels: levels.levels,
        audit,
        agent_uid: None,
    }
}

/// The config file to read: the explicit one, `$CLOVE_CONFIG`, or the first default location
/// that exists (`None`: built-in defaults).
pub fn config_file(explicit: Option<&Path>) -> Option<PathBuf> {
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

/// The socket path a client should use: flag, then `$CLOVE_SOCKET`, then the per-user
/// default (the daemon's, see [`default_socket`]).
pub fn client_socket(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("CLOVE_SOCKET")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_socket)
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
        assert_eq!(c.server.socket_mode, 0o600);
        assert_eq!(c.server.max_frame_bytes, 1 << 20);
        assert_eq!(c.kernel.client_level, "unrestricted");
        assert_eq!(c.kernel.agent_level, "standard");
        assert_eq!(c.kernel.unattributed_level, "minimal");
        // Only a root daemon runs agents as another user, and lets that user in as agents.
        assert_eq!(
            c.kernel.agent_uid.is_some(),
            nix::unistd::geteuid().is_root()
        );
        assert_eq!(c.kernel.agent_uid, c.sandbox.agent_creds.map(|a| a.uid));
        let c = parse("[permissions]\nunattributed_level = \"readonly\"\n").unwrap();
        assert_eq!(c.kernel.unattributed_level, "readonly");
        let e = parse("[permissions]\nunattributed_level = \"agent\"\n").unwrap_err();
        assert!(
            e.to_string().contains("permissions.unattributed_level"),
            "{e}"
        );
        assert!(
            c.kernel
                .level("standard")
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
    fn file_and_value_problems_come_together_in_file_order_with_lines() {
        let text = "[limits]\nmailbox_len = 0\n[server]\nwokers = 2\nmax_connections = 0\n";
        let e = Config::load_text(text, Path::new("c.toml"), &Overrides::default()).unwrap_err();
        assert_eq!(
            e.0,
            [
                "c.toml:2: limits.mailbox_len: must be at least 1",
                "c.toml:4: server.wokers: unknown key; did you mean `workers`?",
                "c.toml:5: server.max_connections: must be at least 1",
            ],
            "{e}"
        );
    }

    #[test]
    fn limit_keys_have_defaults_and_refuse_zero_and_absurd_values() {
        let c = parse("").unwrap();
        assert_eq!(c.server.completion_queue, 4096);
        assert_eq!(c.kernel.max_subscriptions, 256);
        assert_eq!(c.kernel.max_event_type_bytes, 128);
        assert_eq!(c.kernel.max_name_bytes, 64);
        assert_eq!(c.kernel.max_permission_rules, 256);
        assert_eq!(c.kernel.max_permission_rule_bytes, 4096);
        let c = parse(
            "[server]\ncompletion_queue = 1\n[limits]\nmax_subscriptions = 2\nmax_event_type_bytes = 8\nmax_name_bytes = 200\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.server.completion_queue,
                c.kernel.max_subscriptions,
                c.kernel.max_event_type_bytes,
                c.kernel.max_name_bytes
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
    fn daemon_wide_memory_budgets_have_defaults_and_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.server.pending_reply_total_bytes, 128 << 20);
        assert_eq!(c.kernel.mailboxes_total_bytes, 128 << 20);
        let c = parse(
            "[server]\npending_reply_total_bytes = 1048576\nmax_pending_reply_bytes = 65536\n\
             [limits]\nmailboxes_total_bytes = 1000\n",
        )
        .unwrap();
        assert_eq!(c.server.pending_reply_total_bytes, 1 << 20);
        assert_eq!(c.kernel.mailboxes_total_bytes, 1000);
        // The budget of all connections cannot be smaller than what one may hold.
        let e = parse("[server]\npending_reply_total_bytes = 1048576\n").unwrap_err();
        assert!(
            e.0[0].starts_with("server.pending_reply_total_bytes: 1048576 is less than")
                && e.0[0].contains("server.max_pending_reply_bytes = 4194304"),
            "{e}"
        );
        let e =
            parse("[server]\npending_reply_total_bytes = 0\n[limits]\nmailboxes_total_bytes = 0\n")
                .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn connection_caps_have_defaults_and_the_reserve_leaves_room_for_others() {
        let c = parse("").unwrap();
        let l = c.server.conn_limits();
        assert_eq!(
            (
                l.max_connections,
                l.owner_reserved,
                l.per_caller,
                l.per_uid,
                l.descendants
            ),
            (4096, 16, 64, 256, 256)
        );
        assert_eq!(
            c.server.agent_idle_timeout,
            std::time::Duration::from_secs(600)
        );
        let c = parse(
            "[server]\nmax_connections = 8\nowner_reserved_connections = 0\n\
             agent_idle_timeout_secs = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.server.owner_reserved_connections, 0);
        assert_eq!(
            c.server.agent_idle_timeout,
            std::time::Duration::from_millis(500)
        );
        // A small max_connections takes a smaller default reserve.
        assert_eq!(
            parse("[server]\nmax_connections = 4\n")
                .unwrap()
                .server
                .owner_reserved_connections,
            3
        );
        let e = parse(
            "[server]\nmax_connections = 8\nowner_reserved_connections = 8\n\
             max_connections_per_caller = 0\nagent_idle_timeout_secs = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.0[0].contains("server.max_connections_per_caller"), "{e}");
        assert!(
            e.0.iter().any(|m| m.starts_with(
                "server.owner_reserved_connections: 8 must be less than server.max_connections (8)"
            )),
            "{e}"
        );
        assert!(
            e.0.iter()
                .any(|m| m.starts_with("server.agent_idle_timeout_secs")),
            "{e}"
        );
    }

    #[test]
    fn a_store_outside_the_state_dir_is_blocked_too() {
        let c = parse("[store]\npath = \"/data/clove/s.db\"\n").unwrap();
        let std = c.kernel.level("standard").unwrap();
        assert!(std.may_read(Path::new("/data/clove/s.db")).is_err());
        assert!(std.may_read(Path::new("/data/clove/s.db-wal")).is_err());
        assert!(std.may_read(Path::new("/data/clove/other")).is_ok());
        assert!(
            c.kernel
                .level("unrestricted")
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
        let p = c.kernel.level("standard").unwrap();
        assert!(!p.can_http);
        assert_eq!(p.level, "standard");
        assert!(parse("[permissions.levels.bogus]\ncan_http = false\n").is_err());
        assert!(
            parse("[permissions.levels.standard]\nfilesystem = { read = [\"tmp\"] }\n").is_err()
        );
    }
}
