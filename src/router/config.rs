//! The `[router]` config section: where the Codeswarm router listens, who may use it, its
//! limits, and its providers (`[[router.providers]]`), raw (as written) and validated.
//!
//! Providers are read from plain TOML tables rather than a derived struct because each backend
//! has its own keys (the `local` backend today, `slurm` and `ssh` later): the common keys are
//! checked here, and each backend's keys by `local_keys` (and its successors), so an unknown
//! key is still an error naming the provider.

use crate::settings::positive;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The address the old Python router listened on, which every client defaults to.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";

/// `[router]` as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    /// `host:port`; `""` turns the router off.
    pub listen: Option<String>,
    /// Accept clients from other hosts (their uid cannot be checked; they must send a token).
    pub allow_remote: Option<bool>,
    /// The token clients send in an `auth` command (required with `allow_remote`).
    pub token: Option<String>,
    /// A file holding the token (instead of `token`).
    pub token_file: Option<PathBuf>,
    pub max_clients: Option<usize>,
    pub max_line_bytes: Option<usize>,
    pub client_queue_bytes: Option<usize>,
    pub max_nodes_per_swarm: Option<usize>,
    pub max_live_swarms: Option<usize>,
    pub max_inflight_injections: Option<usize>,
    pub max_inbox_line_bytes: Option<usize>,
    pub max_queue_items: Option<usize>,
    pub max_record_bytes: Option<usize>,
    pub command_queue: Option<usize>,
    pub keep_terminated: Option<usize>,
    pub poll_busy_ms: Option<u64>,
    pub poll_idle_max_ms: Option<u64>,
    pub terminate_grace_ms: Option<u64>,
    /// How often Slurm is asked about live swarms (one `squeue` for all of them).
    pub slurm_poll_secs: Option<u64>,
    /// How long a launch may wait for its job to run before it is cancelled and refused.
    pub launch_timeout_secs: Option<u64>,
    /// The longest one Slurm or ssh command may take before it is killed.
    pub slurm_command_timeout_secs: Option<u64>,
    /// `[[router.providers]]`: checked by hand, see the module docs.
    pub providers: Option<Vec<toml::Table>>,
}

/// A secret that never shows in `Debug` output (`clove check-config` prints the config).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the router listens, and whether the user chose it (see `daemon::bind_tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub explicit: bool,
}

/// Which program runs a provider's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Workers are processes of this host.
    Local,
    /// One Slurm batch job per swarm (directly, or through ssh to a login host).
    Slurm,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Slurm => "slurm",
        }
    }
}

/// A `slurm` provider's own keys (ROUTER-COMPAT.md, "How clove configures providers").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub time_limit: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Workers (Slurm tasks) per Slurm node.
    pub workers_per_node: u32,
    /// The clove binary as the compute nodes (and the login host) see it; `None`: this
    /// executable.
    pub worker_path: Option<String>,
    /// Extra sbatch arguments (argv, never a shell string).
    pub sbatch_args: Vec<String>,
    pub job_name_prefix: String,
    /// Where Slurm commands run; `None`: on this host.
    pub login_host: Option<String>,
    /// Extra `ssh` arguments (argv), before the host.
    pub ssh_options: Vec<String>,
    /// The ssh client (argv); default `["ssh"]`.
    pub ssh_command: Vec<String>,
    /// One multiplexed connection for every command (default); `false` opens one per command
    /// (slow: for hosts that forbid ControlMaster, and to measure the difference).
    pub ssh_multiplex: bool,
}

/// Resource limits for each worker process of a provider (cgroup, else rlimit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLimits {
    pub memory: Option<u64>,
    pub max_pids: Option<u64>,
    pub cpu_quota: Option<u64>,
}

impl WorkerLimits {
    pub fn is_empty(&self) -> bool {
        *self == WorkerLimits::default()
    }
}

/// One validated provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: String,
    pub label: String,
    pub backend: Backend,
    /// Where the mailbox and the agent directories live.
    pub workspace_root: PathBuf,
    /// Launch parameters, overridden key by key by a launch's `provider_params`.
    pub defaults: Map<String, Value>,
    /// What `providers_list` tells a UI to ask for.
    pub launch_fields: Vec<Value>,
    /// Another worker speaking the mailbox contract (argv), instead of `clove worker`.
    pub worker_program: Option<Vec<String>>,
    pub limits: WorkerLimits,
    /// The `slurm` backend's keys (`None` for other backends).
    pub slurm: Option<SlurmConfig>,
}

/// The validated `[router]` section.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// `None`: the router is turned off (`listen = ""`).
    pub listen: Option<Listen>,
    pub allow_remote: bool,
    pub token: Option<Token>,
    pub max_clients: usize,
    pub max_line_bytes: usize,
    pub client_queue_bytes: usize,
    pub max_nodes_per_swarm: usize,
    pub max_live_swarms: usize,
    pub max_inflight_injections: usize,
    pub max_inbox_line_bytes: usize,
    pub max_queue_items: usize,
    pub max_record_bytes: usize,
    pub command_queue: usize,
    pub keep_terminated: usize,
    pub poll_busy: Duration,
    pub poll_idle_max: Duration,
    pub terminate_grace: Duration,
    pub slurm_poll: Duration,
    pub launch_timeout: Duration,
    pub slurm_command_timeout: Duration,
    pub providers: Vec<ProviderConfig>,
    /// The daemon's state directory (the ssh control socket's directory goes under it).
    pub state_dir: PathBuf,
}

impl RouterConfig {
    /// Validates `[router]`; `env` reads an environment variable (the process environment in
    /// the daemon, a table in tests).
    pub fn from_raw(
        raw: &RawRouter,
        state_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<String>,
    ) -> RouterConfig {
        let listen = listen(raw.listen.as_deref(), env, errors);
        let allow_remote = raw.allow_remote.unwrap_or(false);
        let token = token(raw, errors);
        if let Some(l) = listen
            && !l.addr.ip().is_loopback()
        {
            if !allow_remote {
                errors.push(format!(
                    "router.listen: {} is not a loopback address; other hosts' users cannot be \
                     identified there: set router.allow_remote = true and a router.token (or \
                     keep loopback and use an ssh -L tunnel)",
                    l.addr
                ));
            } else if token.is_none() {
                errors.push(format!(
                    "router.allow_remote: listening on {} needs router.token (or \
                     router.token_file): remote clients cannot be identified otherwise",
                    l.addr
                ));
            }
        }
        let limits = RouterLimits::from_raw(raw, errors);
        if limits.client_queue_bytes < super::BATCH_BYTES {
            // Events go out in batches of up to this size: a smaller allowance would drop
            // every client at the first busy moment.
            errors.push(format!(
                "router.client_queue_bytes: {} is less than {} (one batch of events)",
                limits.client_queue_bytes,
                super::BATCH_BYTES
            ));
        }
        let providers = providers(raw.providers.as_deref(), state_dir, errors);
        RouterConfig {
            listen,
            allow_remote,
            token,
            max_clients: limits.max_clients,
            max_line_bytes: limits.max_line_bytes,
            client_queue_bytes: limits.client_queue_bytes,
            max_nodes_per_swarm: limits.max_nodes_per_swarm,
            max_live_swarms: limits.max_live_swarms,
            max_inflight_injections: limits.max_inflight_injections,
            max_inbox_line_bytes: limits.max_inbox_line_bytes,
            max_queue_items: limits.max_queue_items,
            max_record_bytes: limits.max_record_bytes,
            command_queue: limits.command_queue,
            keep_terminated: limits.keep_terminated,
            poll_busy: millis(
                errors,
                "router.poll_busy_ms",
                raw.poll_busy_ms,
                50,
                5,
                10_000,
            ),
            poll_idle_max: millis(
                errors,
                "router.poll_idle_max_ms",
                raw.poll_idle_max_ms,
                2_000,
                10,
                600_000,
            ),
            terminate_grace: millis(
                errors,
                "router.terminate_grace_ms",
                raw.terminate_grace_ms,
                5_000,
                0,
                600_000,
            ),
            slurm_poll: secs(
                errors,
                "router.slurm_poll_secs",
                raw.slurm_poll_secs,
                15,
                1,
                3600,
            ),
            launch_timeout: secs(
                errors,
                "router.launch_timeout_secs",
                raw.launch_timeout_secs,
                3600,
                1,
                30 * 86_400,
            ),
            slurm_command_timeout: secs(
                errors,
                "router.slurm_command_timeout_secs",
                raw.slurm_command_timeout_secs,
                60,
                1,
                3600,
            ),
            providers,
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The provider with this id.
    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id == id)
    }
}

/// The numeric limits, checked together.
struct RouterLimits {
    max_clients: usize,
    max_line_bytes: usize,
    client_queue_bytes: usize,
    max_nodes_per_swarm: usize,
    max_live_swarms: usize,
    max_inflight_injections: usize,
    max_inbox_line_bytes: usize,
    max_queue_items: usize,
    max_record_bytes: usize,
    command_queue: usize,
    keep_terminated: usize,
}

impl RouterLimits {
    fn from_raw(r: &RawRouter, e: &mut Vec<String>) -> RouterLimits {
        RouterLimits {
            max_clients: positive(e, "router.max_clients", r.max_clients, 256, 1 << 20),
            max_line_bytes: positive(
                e,
                "router.max_line_bytes",
                r.max_line_bytes,
                1 << 20,
                1 << 30,
            ),
            client_queue_bytes: positive(
                e,
                "router.client_queue_bytes",
                r.client_queue_bytes,
                16 << 20,
                1 << 32,
            ),
            max_nodes_per_swarm: positive(
                e,
                "router.max_nodes_per_swarm",
                r.max_nodes_per_swarm,
                256,
                // Node ids are zero-padded to two digits in mailbox names; beyond 99 they
                // simply grow, which every reader handles, but 100k processes is absurd.
                100_000,
            ),
            max_live_swarms: positive(e, "router.max_live_swarms", r.max_live_swarms, 64, 1 << 16),
            max_inflight_injections: positive(
                e,
                "router.max_inflight_injections",
                r.max_inflight_injections,
                4096,
                1 << 24,
            ),
            max_inbox_line_bytes: positive(
                e,
                "router.max_inbox_line_bytes",
                r.max_inbox_line_bytes,
                1 << 20,
                1 << 30,
            ),
            max_queue_items: positive(
                e,
                "router.max_queue_items",
                r.max_queue_items,
                1024,
                1 << 20,
            ),
            max_record_bytes: positive(
                e,
                "router.max_record_bytes",
                r.max_record_bytes,
                4 << 20,
                1 << 30,
            ),
            command_queue: positive(e, "router.command_queue", r.command_queue, 1024, 1 << 20),
            keep_terminated: positive(e, "router.keep_terminated", r.keep_terminated, 100, 1 << 20),
        }
    }
}

fn millis(
    errors: &mut Vec<String>,
    name: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Duration {
    Duration::from_millis(match v {
        None => default,
        Some(n) if (min..=max).contains(&n) => n,
        Some(n) => {
            errors.push(format!("{name}: {n} must be between {min} and {max}"));
            default
        }
    })
}

fn secs(
    errors: &mut Vec<String>,
    name: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Duration {
    millis(
        errors,
        name,
        v.map(|s| s.saturating_mul(1000)),
        default * 1000,
        min * 1000,
        max * 1000,
    )
}

/// `router.listen`, else `CODESWARM_ROUTER_HOST` / `CODESWARM_ROUTER_PORT`, else the default.
fn listen(
    text: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<Listen> {
    let (text, explicit, key) = match text {
        Some("") => return None,
        Some(t) => (t.to_string(), true, "router.listen"),
        None => {
            let host = env("CODESWARM_ROUTER_HOST").filter(|h| !h.is_empty());
            let port = env("CODESWARM_ROUTER_PORT").filter(|p| !p.is_empty());
            if host.is_none() && port.is_none() {
                (DEFAULT_LISTEN.to_string(), false, "router.listen")
            } else {
                let host = host.unwrap_or_else(|| "127.0.0.1".into());
                let port = port.unwrap_or_else(|| "8765".into());
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                (
                    format!("{host}:{port}"),
                    true,
                    "CODESWARM_ROUTER_HOST/CODESWARM_ROUTER_PORT",
                )
            }
        }
    };
    match parse_addr(&text) {
        Some(addr) => Some(Listen { addr, explicit }),
        None => {
            errors.push(format!(
                "{key}: {text:?} is not an address like \"127.0.0.1:8765\" (or \"\" to turn the router off)"
            ));
            None
        }
    }
}

/// `ip:port`, or `localhost:port` (the one name resolved, and only to a loopback address).
fn parse_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(a) = text.parse() {
        return Some(a);
    }
    let (host, _) = text.rsplit_once(':')?;
    if host != "localhost" {
        return None;
    }
    text.to_socket_addrs().ok()?.find(|a| a.ip().is_loopback())
}

fn token(raw: &RawRouter, errors: &mut Vec<String>) -> Option<Token> {
    let text = match (&raw.token, &raw.token_file) {
        (Some(_), Some(_)) => {
            errors.push("router.token and router.token_file: give one of them".into());
            return None;
        }
        (Some(t), None) => t.clone(),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                errors.push(format!(
                    "router.token_file: cannot read {}: {e}",
                    path.display()
                ));
                return None;
            }
        },
        (None, None) => return None,
    };
    if text.is_empty() {
        return None;
    }
    if text.len() < 16 {
        errors.push("router.token: must be at least 16 characters".into());
        return None;
    }
    Some(Token(text))
}

/// The built-in provider used when none is configured: workers on this host, mock answers.
fn default_local(state_dir: &Path) -> ProviderConfig {
    ProviderConfig {
        id: "local".into(),
        label: "Local processes on this host".into(),
        backend: Backend::Local,
        workspace_root: state_dir.join("router").join("local"),
        defaults: default_defaults(),
        launch_fields: local_launch_fields(),
        worker_program: None,
        limits: WorkerLimits::default(),
        slurm: None,
    }
}

fn default_defaults() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("worker_mode".into(), json!("mock"));
    m
}

/// What a UI asks for when launching on a local provider.
fn local_launch_fields() -> Vec<Value> {
    vec![
        json!({"name": "worker_mode", "label": "Worker mode", "type": "select",
               "options": ["mock", "command", "llm"], "default": "mock"}),
        json!({"name": "worker_command", "label": "Command (argv, for worker_mode = command)",
               "type": "list", "required": false}),
        json!({"name": "llm_model", "label": "Model (for worker_mode = llm)", "type": "text",
               "required": false}),
    ]
}

/// What a UI asks for when launching on a Slurm provider.
fn slurm_launch_fields() -> Vec<Value> {
    vec![
        json!({"name": "partition", "label": "Partition", "type": "text", "required": false}),
        json!({"name": "time", "label": "Time limit (Slurm's format, e.g. 01:00:00)",
               "type": "text", "required": false}),
        json!({"name": "account", "label": "Account", "type": "text", "required": false}),
        json!({"name": "qos", "label": "QOS", "type": "text", "required": false}),
        json!({"name": "worker_mode", "label": "Worker mode", "type": "select",
               "options": ["mock", "command", "llm"], "default": "mock"}),
    ]
}

pub(crate) const COMMON_KEYS: [&str; 6] = [
    "id",
    "label",
    "backend",
    "workspace_root",
    "defaults",
    "launch_fields",
];

fn providers(
    raw: Option<&[toml::Table]>,
    state_dir: &Path,
    errors: &mut Vec<String>,
) -> Vec<ProviderConfig> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return vec![default_local(state_dir)];
    };
    let mut out: Vec<ProviderConfig> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let Some(p) = provider(i, t, state_dir, errors) else {
            continue;
        };
        if out.iter().any(|o| o.id == p.id) {
            errors.push(format!(
                "router.providers[{i}].id: {:?} is used twice",
                p.id
            ));
            continue;
        }
        out.push(p);
    }
    out
}

fn provider(
    i: usize,
    t: &toml::Table,
    state_dir: &Path,
    errors: &mut Vec<String>,
) -> Option<ProviderConfig> {
    let key = |k: &str| format!("router.providers[{i}].{k}");
    let string = |k: &str, errors: &mut Vec<String>| match t.get(k) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(format!("{}: must be a string", key(k)));
            None
        }
    };
    let Some(id) = string("id", errors) else {
        errors.push(format!(
            "{}: required (a short name clients launch with)",
            key("id")
        ));
        return None;
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errors.push(format!(
            "{}: {id:?} must be 1 to 64 of A-Z a-z 0-9 - _ .",
            key("id")
        ));
        return None;
    }
    let backend = match string("backend", errors).as_deref() {
        Some("local") | None => Backend::Local,
        Some("slurm") => Backend::Slurm,
        Some(other) => {
            errors.push(format!(
                "{}: {other:?} is not a backend this build has (\"local\", \"slurm\")",
                key("backend")
            ));
            return None;
        }
    };
    let defaults = defaults_of(t.get("defaults"), &key("defaults"), errors);
    let launch_fields = match t.get("launch_fields") {
        None if backend == Backend::Slurm => slurm_launch_fields(),
        None => local_launch_fields(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect(),
        Some(_) => {
            errors.push(format!(
                "{}: must be an array of tables",
                key("launch_fields")
            ));
            Vec::new()
        }
    };
    let workspace_root = match string("workspace_root", errors) {
        Some(p) if Path::new(&p).is_absolute() => PathBuf::from(p),
        Some(p) => {
            errors.push(format!(
                "{}: {p:?} must be an absolute path",
                key("workspace_root")
            ));
            PathBuf::new()
        }
        None => state_dir.join("router").join(&id),
    };
    let (worker_program, limits, slurm) = match backend {
        Backend::Local => {
            let (w, l) = local_keys(i, t, errors);
            (w, l, None)
        }
        Backend::Slurm => {
            let (w, s) = super::provider::slurm::config::slurm_keys(i, t, errors);
            (w, WorkerLimits::default(), Some(s))
        }
    };
    Some(ProviderConfig {
        label: string("label", errors).unwrap_or_else(|| id.clone()),
        id,
        backend,
        workspace_root,
        defaults,
        launch_fields,
        worker_program,
        limits,
        slurm,
    })
}

/// A provider's `defaults` table as launch parameters.
fn defaults_of(v: Option<&toml::Value>, key: &str, errors: &mut Vec<String>) -> Map<String, Value> {
    match v {
        None => default_defaults(),
        Some(toml::Value::Table(d)) => match serde_json::to_value(d) {
            Ok(Value::Object(m)) => m,
            _ => {
                errors.push(format!("{key}: cannot be read as launch parameters"));
                Map::new()
            }
        },
        Some(_) => {
            errors.push(format!("{key}: must be a table"));
            Map::new()
        }
    }
}

/// The `local` backend's own keys: `worker_program` (argv) and `limits`; anything else that is
/// not a common key is an error.
fn local_keys(
    i: usize,
    t: &toml::Table,
    errors: &mut Vec<String>,
) -> (Option<Vec<String>>, WorkerLimits) {
    let mut program = None;
    let mut limits = WorkerLimits::default();
    for (k, v) in t {
        let key = format!("router.providers[{i}].{k}");
        match k.as_str() {
            k if COMMON_KEYS.contains(&k) => {}
            "worker_program" => match argv(&serde_json::to_value(v).unwrap_or(Value::Null)) {
                Ok(a) => program = Some(a),
                Err(e) => errors.push(format!("{key}: {e}")),
            },
            "limits" => match serde_json::to_value(v)
                .map_err(|e| e.to_string())
                .and_then(|v| parse_limits(&v))
            {
                Ok(l) => limits = l,
                Err(e) => errors.push(format!("{key}: {e}")),
            },
            _ => errors.push(format!("{key}: unknown key for a local provider")),
        }
    }
    (program, limits)
}

/// An argv: a non-empty list of strings (never a shell command line).
pub fn argv(v: &Value) -> Result<Vec<String>, String> {
    let Some(a) = v.as_array() else {
        return Err(
            "must be a list of arguments, e.g. [\"python3\", \"worker.py\"] (no shell)".into(),
        );
    };
    if a.is_empty() || a.len() > 256 {
        return Err("must have 1 to 256 arguments".into());
    }
    a.iter()
        .map(|x| match x.as_str() {
            Some(s) if !s.contains('\0') && s.len() <= 4096 => Ok(s.to_string()),
            _ => Err("every argument must be a string (at most 4096 bytes, no NUL)".into()),
        })
        .collect()
}

/// `{memory: "512M" | bytes, max_pids, cpu_quota}` for a provider or a launch.
pub fn parse_limits(v: &Value) -> Result<WorkerLimits, String> {
    let Some(m) = v.as_object() else {
        return Err("must be a table like {memory = \"2G\", max_pids = 256}".into());
    };
    let mut l = WorkerLimits::default();
    for (k, x) in m {
        match k.as_str() {
            "memory" => {
                let bytes = match x {
                    Value::Number(n) => n.as_u64().ok_or("memory: a whole number of bytes")?,
                    Value::String(s) => parse_size(s)?,
                    _ => return Err("memory: bytes or a size like \"512M\"".into()),
                };
                if !(4 << 20..=1 << 42).contains(&bytes) {
                    return Err(format!("memory: {bytes} must be between 4 MiB and 4 TiB"));
                }
                l.memory = Some(bytes);
            }
            "max_pids" => match x.as_u64() {
                Some(n) if (1..=4_194_304).contains(&n) => l.max_pids = Some(n),
                _ => return Err("max_pids: a number between 1 and 4194304".into()),
            },
            "cpu_quota" => match x.as_u64() {
                Some(n) if (1_000..=100_000_000).contains(&n) => l.cpu_quota = Some(n),
                _ => {
                    return Err(
                        "cpu_quota: microseconds per 100 ms, between 1000 and 100000000".into(),
                    );
                }
            },
            other => {
                return Err(format!(
                    "unknown limit {other:?} (memory, max_pids, cpu_quota)"
                ));
            }
        }
    }
    Ok(l)
}

/// `512M`, `2G`, `1048576`: bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{text:?}: unknown size suffix (K, M, G, T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a size like 512M"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<RouterConfig, Vec<String>> {
        let raw: RawRouter = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut errors = Vec::new();
        let c = RouterConfig::from_raw(&raw, Path::new("/state"), &get, &mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn defaults_give_one_local_provider_on_the_old_port() {
        let c = parse("", &[]).unwrap();
        let l = c.listen.unwrap();
        assert_eq!(l.addr.to_string(), "127.0.0.1:8765");
        assert!(!l.explicit);
        assert_eq!(c.providers.len(), 1);
        assert_eq!(c.providers[0].id, "local");
        assert_eq!(
            c.providers[0].workspace_root,
            Path::new("/state/router/local")
        );
        assert_eq!(c.max_line_bytes, 1 << 20);
    }

    #[test]
    fn listen_comes_from_the_file_then_the_environment() {
        assert!(
            parse("listen = \"\"", &[("CODESWARM_ROUTER_PORT", "9")])
                .unwrap()
                .listen
                .is_none()
        );
        let c = parse("", &[("CODESWARM_ROUTER_PORT", "9999")]).unwrap();
        assert_eq!(c.listen.unwrap().addr.to_string(), "127.0.0.1:9999");
        assert!(c.listen.unwrap().explicit);
        let c = parse(
            "listen = \"127.0.0.1:7000\"",
            &[("CODESWARM_ROUTER_PORT", "9999")],
        )
        .unwrap();
        assert_eq!(c.listen.unwrap().addr.port(), 7000);
        assert!(parse("listen = \"nonsense\"", &[]).is_err());
    }

    #[test]
    fn remote_listen_needs_opt_in_and_token() {
        let e = parse("listen = \"0.0.0.0:8765\"", &[]).unwrap_err();
        assert!(e[0].contains("allow_remote"), "{e:?}");
        let e = parse("listen = \"0.0.0.0:8765\"\nallow_remote = true", &[]).unwrap_err();
        assert!(e[0].contains("router.token"), "{e:?}");
        let c = parse(
            "listen = \"0.0.0.0:8765\"\nallow_remote = true\ntoken = \"0123456789abcdef\"",
            &[],
        )
        .unwrap();
        assert!(format!("{c:?}").contains("<redacted>"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn providers_are_checked_key_by_key() {
        let c = parse(
            "[[providers]]\nid = \"fast\"\nbackend = \"local\"\nworker_program = [\"python3\", \"w.py\"]\n\
             limits = {memory = \"512M\", max_pids = 64}\n[providers.defaults]\nworker_mode = \"command\"\n",
            &[],
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(p.worker_program.as_deref().unwrap(), ["python3", "w.py"]);
        assert_eq!(p.limits.memory, Some(512 << 20));
        assert_eq!(p.defaults["worker_mode"], "command");
        let e = parse(
            "[[providers]]\nid = \"x\"\nbogus = 1\n[[providers]]\nid = \"x\"\n[[providers]]\nbackend = \"slurmy\"\nid = \"y\"\n\
             [[providers]]\nid = \"z\"\nworker_program = \"python3 w.py\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn zero_and_absurd_limits_are_refused() {
        let e = parse("max_clients = 0\nclient_queue_bytes = 100\nmax_nodes_per_swarm = 1000000\npoll_busy_ms = 1", &[])
            .unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
    }
}
