//! The `[relay]` config section: where the ClawNet relay listens, how clients prove who they
//! are, the Engine.IO timers and sizes, and every bound of the relay's state.
//!
//! ClawNet's own environment variables are honoured where the file says nothing
//! (`CLAWNET_SECRET_KEY`, `CLAWNET_TENANTS_PATH`, `CLAWNET_COMMAND_DENYLIST`,
//! `CLAWNET_COMMAND_RISKYLIST`, `CLAWNET_ACK_TIMEOUT_MS`, `CLAWNET_ACK_MAX_RETRIES`,
//! `CLAWNET_SHELL_ENABLED`), so a relay moved from ClawNet keeps its settings. The environment
//! is read once, here, by [`RelayConfig::from_raw`]; nothing below reads it again.

use crate::settings::positive;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default listen address (the Socket.IO port ClawNet's clients use, on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8766";
/// The tenant of shared-secret clients and of tokens that name none.
pub const DEFAULT_TENANT: &str = "default";

/// `[relay]` as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// `host:port`; `""` turns the relay off.
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_plaintext_remote: Option<bool>,
    /// A file holding ClawNet's shared secret (else `CLAWNET_SECRET_KEY`).
    pub secret_file: Option<PathBuf>,
    /// A JSON file `{"tenant": "secret"}` (else `CLAWNET_TENANTS_PATH`).
    pub tenants_file: Option<PathBuf>,
    pub ping_interval_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub max_payload: Option<usize>,
    pub max_sessions: Option<usize>,
    pub max_pending_output: Option<usize>,
    pub max_agents: Option<usize>,
    pub max_tasks: Option<usize>,
    pub max_queued_commands: Option<usize>,
    pub max_chat: Option<usize>,
    pub max_rooms_per_agent: Option<usize>,
    pub max_task_output: Option<usize>,
    pub ack_timeout_ms: Option<u64>,
    pub ack_max_retries: Option<u32>,
    pub command_denylist: Option<Vec<String>>,
    pub command_risky: Option<Vec<String>>,
    pub shell_enabled: Option<bool>,
    pub jwt_ttl_secs: Option<u64>,
    pub auth_failures_per_minute: Option<usize>,
    pub fleet_update_ms: Option<u64>,
    pub max_file_bytes: Option<usize>,
    pub tenant_quota_bytes: Option<u64>,
    pub config_history: Option<usize>,
    pub task_timeout_secs: Option<u64>,
    /// The credentials master key (relative: in the state directory).
    pub credentials_key_file: Option<PathBuf>,
    pub max_resources: Option<usize>,
    pub max_resource_bytes: Option<usize>,
}

/// Where the shared secret came from, for messages (the secret itself is never shown).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecrets {
    /// The `default` tenant's secret, when one is configured.
    pub default: Option<String>,
    /// Other tenants' secrets (`tenant:secret` tokens).
    pub tenants: BTreeMap<String, String>,
}

impl std::fmt::Debug for SharedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSecrets")
            .field("default", &self.default.as_ref().map(|_| "<redacted>"))
            .field("tenants", &self.tenants.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The validated `[relay]` section.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `None`: the relay is off.
    pub listen: Option<SocketAddr>,
    /// The address came from the file, not the built-in default.
    pub listen_explicit: bool,
    /// The listener's certificate and key, when it speaks TLS (`wss://`).
    pub tls: Option<ServerTls>,
    pub allow_plaintext_remote: bool,
    pub secrets: SharedSecrets,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_payload: usize,
    pub max_sessions: usize,
    pub max_pending_output: usize,
    pub max_agents: usize,
    pub max_tasks: usize,
    pub max_queued_commands: usize,
    pub max_chat: usize,
    pub max_rooms_per_agent: usize,
    pub max_task_output: usize,
    pub ack_timeout: Duration,
    pub ack_max_retries: u32,
    pub command_denylist: Vec<String>,
    pub command_risky: Vec<String>,
    pub shell_enabled: bool,
    pub jwt_ttl: Duration,
    pub auth_failures_per_minute: usize,
    pub fleet_update: Duration,
    /// The daemon's state directory: the master token and the JWT key files live there.
    pub state_dir: PathBuf,
    pub resources: ResourceLimits,
}

/// The resource events' settings (`relay.max_file_bytes`, ... ).
#[derive(Debug, Clone)]
pub struct ResourceLimits {
    /// Largest file `upload_file` takes (decoded bytes).
    pub max_file_bytes: usize,
    /// Bytes of file content one tenant may keep.
    pub tenant_quota_bytes: u64,
    /// Versions of an agent config kept (the newest).
    pub config_history: usize,
    /// An orchestration task not reported this long after it started fails.
    pub task_timeout: Duration,
    /// The 256-bit key the credentials' keys are derived from (made at first start).
    pub credentials_key_file: PathBuf,
    /// Shared keys, credentials, files, skills, configs and orchestrations, each, per tenant.
    pub max_resources: usize,
    /// Largest credential value, skill, config version or orchestration (JSON bytes).
    pub max_resource_bytes: usize,
}

/// The default of `relay.max_file_bytes`: the seed's 10 MB (10,485,760 bytes).
pub const DEFAULT_MAX_FILE_BYTES: usize = 10 << 20;

/// Bytes of base64 that carry `n` bytes.
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

/// The smallest Engine.IO packet that carries an `upload_file` of `max_file` bytes, with room
/// for the event's other fields and for files somewhat (a sixteenth) over the limit, so those
/// get a `SIZE_LIMIT` answer instead of a closed connection.
pub fn upload_packet_bytes(max_file: usize) -> usize {
    let b64 = base64_len(max_file);
    b64.saturating_add((b64 / 16).max(16 << 10))
}

/// The largest `download_file` answer: the content is in it twice (`data.data` and ClawNet's
/// top-level `data`), base64, plus the other fields.
pub fn download_reply_bytes(max_file: usize) -> usize {
    base64_len(max_file)
        .saturating_mul(2)
        .saturating_add(64 << 10)
}

impl RelayConfig {
    /// Validates `[relay]`, reading ClawNet's variables from the process environment.
    pub fn from_raw(r: &RawRelay, state_dir: &Path, errors: &mut Vec<String>) -> RelayConfig {
        Self::from_raw_env(r, state_dir, &|k| std::env::var(k).ok(), errors)
    }

    /// [`RelayConfig::from_raw`] with the environment given (for tests).
    pub fn from_raw_env(
        r: &RawRelay,
        state_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<String>,
    ) -> RelayConfig {
        let net = Network::from_raw(r, state_dir, errors);
        let tasks = TaskRules::from_raw(r, env, errors);
        let secrets = shared_secrets(r, state_dir, env, errors);
        let num = |name: &str, v: Option<usize>, default: usize, max: usize, e: &mut Vec<_>| {
            positive(e, &format!("relay.{name}"), v, default, max)
        };
        let ms = |name: &str, v: Option<u64>, default: u64, e: &mut Vec<String>| {
            Duration::from_millis(
                num(name, v.map(|x| x as usize), default as usize, 86_400_000, e) as u64,
            )
        };
        let resources = ResourceLimits::from_raw(r, state_dir, errors);
        let max_payload = num(
            "max_payload",
            r.max_payload,
            1_000_000.max(upload_packet_bytes(resources.max_file_bytes)),
            1 << 30,
            errors,
        );
        let max_pending_output = num(
            "max_pending_output",
            r.max_pending_output,
            (8 << 20)
                .max(2 * max_payload)
                .max(download_reply_bytes(resources.max_file_bytes)),
            1 << 31,
            errors,
        );
        resources.check_sizes(max_payload, max_pending_output, errors);
        let jwt_secs = r.jwt_ttl_secs.map(|v| v as usize);
        RelayConfig {
            listen: net.listen,
            listen_explicit: net.explicit,
            tls: net.tls,
            allow_plaintext_remote: net.allow_plaintext_remote,
            secrets,
            ping_interval: ms("ping_interval_ms", r.ping_interval_ms, 25_000, errors),
            ping_timeout: ms("ping_timeout_ms", r.ping_timeout_ms, 20_000, errors),
            connect_timeout: ms("connect_timeout_ms", r.connect_timeout_ms, 45_000, errors),
            max_payload,
            max_sessions: num("max_sessions", r.max_sessions, 4096, 1 << 20, errors),
            max_pending_output,
            max_agents: num("max_agents", r.max_agents, 10_000, 1 << 20, errors),
            max_tasks: num("max_tasks", r.max_tasks, 1000, 1 << 20, errors),
            max_queued_commands: num(
                "max_queued_commands",
                r.max_queued_commands,
                256,
                1 << 16,
                errors,
            ),
            max_chat: num("max_chat", r.max_chat, 1000, 1 << 20, errors),
            max_rooms_per_agent: num(
                "max_rooms_per_agent",
                r.max_rooms_per_agent,
                32,
                4096,
                errors,
            ),
            max_task_output: num(
                "max_task_output",
                r.max_task_output,
                65_536,
                16 << 20,
                errors,
            ),
            ack_timeout: ms("ack_timeout_ms", tasks.ack_timeout_ms, 30_000, errors),
            ack_max_retries: tasks.ack_max_retries,
            command_denylist: tasks.denylist,
            command_risky: tasks.risky,
            shell_enabled: tasks.shell_enabled,
            jwt_ttl: Duration::from_secs(
                num("jwt_ttl_secs", jwt_secs, 86_400, 31_536_000, errors) as u64
            ),
            auth_failures_per_minute: num(
                "auth_failures_per_minute",
                r.auth_failures_per_minute,
                10,
                1 << 20,
                errors,
            ),
            fleet_update: ms("fleet_update_ms", r.fleet_update_ms, 50, errors),
            state_dir: state_dir.to_path_buf(),
            resources,
        }
    }
}

impl ResourceLimits {
    fn from_raw(r: &RawRelay, state_dir: &Path, errors: &mut Vec<String>) -> ResourceLimits {
        let num = |name: &str, v: Option<usize>, default: usize, max: usize, e: &mut Vec<_>| {
            positive(e, &format!("relay.{name}"), v, default, max)
        };
        let quota = r
            .tenant_quota_bytes
            .map(|v| v.min(usize::MAX as u64) as usize);
        let timeout = r
            .task_timeout_secs
            .map(|v| v.min(usize::MAX as u64) as usize);
        let key_file = r.credentials_key_file.as_ref().map_or_else(
            || state_dir.join(CREDENTIALS_KEY_FILE),
            |p| state_dir.join(p),
        );
        ResourceLimits {
            max_file_bytes: num(
                "max_file_bytes",
                r.max_file_bytes,
                DEFAULT_MAX_FILE_BYTES,
                256 << 20,
                errors,
            ),
            tenant_quota_bytes: num("tenant_quota_bytes", quota, 1 << 30, 1 << 50, errors) as u64,
            config_history: num("config_history", r.config_history, 50, 10_000, errors),
            task_timeout: Duration::from_secs(num(
                "task_timeout_secs",
                timeout,
                3600,
                30 * 86_400,
                errors,
            ) as u64),
            credentials_key_file: key_file,
            max_resources: num("max_resources", r.max_resources, 1000, 1 << 20, errors),
            max_resource_bytes: num(
                "max_resource_bytes",
                r.max_resource_bytes,
                65_536,
                16 << 20,
                errors,
            ),
        }
    }

    /// The largest file must fit in one packet (`relay.max_payload`) and its download in a
    /// client's output allowance (`relay.max_pending_output`).
    fn check_sizes(&self, max_payload: usize, max_pending_output: usize, errors: &mut Vec<String>) {
        let upload = upload_packet_bytes(self.max_file_bytes);
        if max_payload < upload {
            errors.push(format!(
                "relay.max_payload: {max_payload} cannot carry a file of relay.max_file_bytes \
                 ({}) in base64; it must be at least {upload}",
                self.max_file_bytes
            ));
        }
        let download = download_reply_bytes(self.max_file_bytes);
        if max_pending_output < download {
            errors.push(format!(
                "relay.max_pending_output: {max_pending_output} cannot hold the download of a \
                 file of relay.max_file_bytes ({}); it must be at least {download}",
                self.max_file_bytes
            ));
        }
    }
}

/// The credentials master key's file name in the state directory (the default of
/// `relay.credentials_key_file`).
pub const CREDENTIALS_KEY_FILE: &str = "relay-credentials.key";

/// A listener's TLS configuration, and the certificate file it came from (what `Debug`
/// shows: the configuration itself is long and says nothing more to a reader).
#[derive(Clone)]
pub struct ServerTls {
    pub config: std::sync::Arc<rustls::ServerConfig>,
    pub cert: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({})", self.cert.display())
    }
}

/// Where the relay listens and how remote peers reach it.
struct Network {
    listen: Option<SocketAddr>,
    explicit: bool,
    tls: Option<ServerTls>,
    allow_plaintext_remote: bool,
}

impl Network {
    fn from_raw(r: &RawRelay, state_dir: &Path, errors: &mut Vec<String>) -> Network {
        let (listen, explicit) = listen(r.listen.as_deref(), errors);
        let tls = match (&r.tls_cert, &r.tls_key) {
            (Some(c), Some(k)) => load_tls(&state_dir.join(c), &state_dir.join(k), errors),
            (None, None) => None,
            _ => {
                errors.push("relay.tls_cert and relay.tls_key: give both or neither".into());
                None
            }
        };
        let allow_plaintext_remote = r.allow_plaintext_remote.unwrap_or(false);
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && tls.is_none()
            && !allow_plaintext_remote
        {
            errors.push(format!(
                "relay.listen: {addr} is not a loopback address; remote agents need TLS \
                 (relay.tls_cert, relay.tls_key) or relay.allow_plaintext_remote = true"
            ));
        }
        Network {
            listen,
            explicit,
            tls,
            allow_plaintext_remote,
        }
    }
}

/// The task rules, each from the file, else ClawNet's variable, else the default.
struct TaskRules {
    ack_timeout_ms: Option<u64>,
    ack_max_retries: u32,
    denylist: Vec<String>,
    risky: Vec<String>,
    shell_enabled: bool,
}

impl TaskRules {
    fn from_raw(
        r: &RawRelay,
        env: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<String>,
    ) -> TaskRules {
        let env_u64 = |k: &str| env(k).and_then(|v| v.trim().parse::<u64>().ok());
        let ack_max_retries = r
            .ack_max_retries
            .or_else(|| env_u64("CLAWNET_ACK_MAX_RETRIES").map(|n| n.min(100) as u32))
            .unwrap_or(3);
        if ack_max_retries > 100 {
            errors.push("relay.ack_max_retries: at most 100".into());
        }
        let list = |v: &Option<Vec<String>>, var: &str| match v {
            Some(v) => v.clone(),
            None => env(var).map(|s| split_list(&s)).unwrap_or_default(),
        };
        TaskRules {
            ack_timeout_ms: r
                .ack_timeout_ms
                .or_else(|| env_u64("CLAWNET_ACK_TIMEOUT_MS")),
            ack_max_retries: ack_max_retries.min(100),
            denylist: list(&r.command_denylist, "CLAWNET_COMMAND_DENYLIST"),
            risky: list(&r.command_risky, "CLAWNET_COMMAND_RISKYLIST"),
            shell_enabled: r
                .shell_enabled
                .unwrap_or_else(|| env("CLAWNET_SHELL_ENABLED").as_deref() == Some("1")),
        }
    }
}

/// Reads the certificate chain and key (PEM) into a server configuration.
fn load_tls(cert: &Path, key: &Path, errors: &mut Vec<String>) -> Option<ServerTls> {
    let read = |p: &Path, k: &str, errors: &mut Vec<String>| match std::fs::read(p) {
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(format!("{k}: cannot read {}: {e}", p.display()));
            None
        }
    };
    let (c, k) = (
        read(cert, "relay.tls_cert", errors)?,
        read(key, "relay.tls_key", errors)?,
    );
    match crate::tls::server_config(&c, &k) {
        Ok(config) => Some(ServerTls {
            config: std::sync::Arc::new(config),
            cert: cert.to_path_buf(),
        }),
        Err(e) => {
            errors.push(format!(
                "relay.tls_cert / relay.tls_key: {}, {}: {e}",
                cert.display(),
                key.display()
            ));
            None
        }
    }
}

/// Comma-separated list items, trimmed, empty ones dropped (ClawNet's list variables).
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn listen(v: Option<&str>, errors: &mut Vec<String>) -> (Option<SocketAddr>, bool) {
    match v {
        None => (DEFAULT_LISTEN.parse().ok(), false),
        Some("") => (None, true),
        Some(s) => match s.parse() {
            Ok(a) => (Some(a), true),
            Err(_) => {
                errors.push(format!(
                    "relay.listen: {s:?} is not an address like 127.0.0.1:8766 (or \"\" for off)"
                ));
                (None, true)
            }
        },
    }
}

/// The shared secret and tenants: from the files the config names, else ClawNet's variables.
/// There is no built-in default secret: without one, only tokens are accepted.
fn shared_secrets(
    r: &RawRelay,
    state_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> SharedSecrets {
    let default = match &r.secret_file {
        Some(p) => read_secret_file(&state_dir.join(p), "relay.secret_file", errors),
        None => env("CLAWNET_SECRET_KEY").filter(|s| !s.is_empty()),
    };
    let tenants_path = r
        .tenants_file
        .as_ref()
        .map(|p| (state_dir.join(p), "relay.tenants_file"))
        .or_else(|| {
            env("CLAWNET_TENANTS_PATH").map(|p| (PathBuf::from(p), "CLAWNET_TENANTS_PATH"))
        });
    let tenants = match tenants_path {
        Some((path, key)) => read_tenants(&path, key, errors),
        None => BTreeMap::new(),
    };
    SharedSecrets { default, tenants }
}

fn read_secret_file(path: &Path, key: &str, errors: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        Ok(_) => {
            errors.push(format!("{key}: {} is empty", path.display()));
            None
        }
        Err(e) => {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn read_tenants(path: &Path, key: &str, errors: &mut Vec<String>) -> BTreeMap<String, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            return BTreeMap::new();
        }
    };
    match serde_json::from_str::<BTreeMap<String, String>>(&text) {
        Ok(map) if map.values().all(|s| !s.is_empty()) && map.len() <= 10_000 => map,
        Ok(_) => {
            errors.push(format!(
                "{key}: {} must map at most 10000 tenant names to non-empty secrets",
                path.display()
            ));
            BTreeMap::new()
        }
        Err(e) => {
            // The parse error may quote the file's text, which holds secrets: say where only.
            errors.push(format!(
                "{key}: {} is not a JSON object of tenant names to secrets (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ));
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(raw: RawRelay, env: &[(&str, &str)]) -> (RelayConfig, Vec<String>) {
        let mut errors = Vec::new();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let c = RelayConfig::from_raw_env(&raw, Path::new("/tmp"), &lookup, &mut errors);
        (c, errors)
    }

    #[test]
    fn defaults_have_no_secret_and_listen_on_loopback() {
        let (c, e) = cfg(RawRelay::default(), &[]);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.listen, Some("127.0.0.1:8766".parse().unwrap()));
        assert!(!c.listen_explicit);
        assert_eq!(c.secrets.default, None);
        assert!(!c.shell_enabled);
        assert_eq!(c.ack_max_retries, 3);
    }

    #[test]
    fn clawnet_variables_apply_when_the_file_is_silent() {
        let env = [
            ("CLAWNET_SECRET_KEY", "s3cret"),
            ("CLAWNET_ACK_TIMEOUT_MS", "1500"),
            ("CLAWNET_ACK_MAX_RETRIES", "5"),
            ("CLAWNET_COMMAND_DENYLIST", "rm -rf, shutdown"),
            ("CLAWNET_SHELL_ENABLED", "1"),
        ];
        let (c, e) = cfg(RawRelay::default(), &env);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.secrets.default.as_deref(), Some("s3cret"));
        assert_eq!(c.ack_timeout, Duration::from_millis(1500));
        assert_eq!(c.ack_max_retries, 5);
        assert_eq!(c.command_denylist, ["rm -rf", "shutdown"]);
        assert!(c.shell_enabled);
        let raw = RawRelay {
            ack_max_retries: Some(1),
            shell_enabled: Some(false),
            command_denylist: Some(vec![]),
            ..Default::default()
        };
        let (c, _) = cfg(raw, &env);
        assert_eq!(c.ack_max_retries, 1);
        assert!(!c.shell_enabled);
        assert!(c.command_denylist.is_empty());
    }

    #[test]
    fn remote_plaintext_and_bad_values_are_refused_by_key() {
        let raw = RawRelay {
            listen: Some("0.0.0.0:8766".into()),
            max_payload: Some(0),
            ..Default::default()
        };
        let (_, e) = cfg(raw, &[]);
        assert!(e.iter().any(|m| m.starts_with("relay.listen:")), "{e:?}");
        assert!(
            e.iter().any(|m| m.starts_with("relay.max_payload:")),
            "{e:?}"
        );
        let raw = RawRelay {
            listen: Some(String::new()),
            ..Default::default()
        };
        let (c, e) = cfg(raw, &[]);
        assert!(e.is_empty());
        assert_eq!(c.listen, None);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let (c, _) = cfg(RawRelay::default(), &[("CLAWNET_SECRET_KEY", "hunter2")]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
