//! The commented default configuration file: every key the parser accepts, each with its
//! default, as `clove generate config` prints it and the packages install it
//! (`/etc/clove/clove.toml`).
//!
//! The defaults are read from the validated defaults ([`Config::from_raw`] of an empty file),
//! not written down a second time, so the file cannot drift from the code; the tests below
//! check that every key the parser accepts is in the file, and that the file, uncommented,
//! gives exactly the defaults.
//!
//! Two kinds of lines carry a key:
//! * `#key = value`: the default. Uncommenting the line changes nothing until the value is
//!   changed.
//! * `# key = value`: an example, for a key whose default is not one fixed value (it depends on
//!   the machine or the environment, or the key is unset by default).

use crate::config::{Config, ConfigError, Overrides, RawConfig};
use crate::llm::config::{LlmConfig, RawLlm, RawModel};
use crate::supervisor::config::{CgroupMode, OnShutdown};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use toml::Value;

/// The socket the generated file's defaults are computed with (the real default depends on
/// the user and the environment, so the file shows it as an example).
const EXAMPLE_SOCKET: &str = "/run/user/1000/clove.sock";

/// Width at which comment text is wrapped.
const WIDTH: usize = 96;

/// What a key's line shows.
enum Shown {
    /// The default (`#key = value`).
    Default(Value),
    /// An example value (`# key = value`); the text says what the default is.
    Example(Value),
}

struct Key {
    name: &'static str,
    shown: Shown,
    doc: &'static str,
}

/// A table of the file. An example table (`llm.models.NAME`) is shown commented out whole.
struct Table {
    header: &'static str,
    doc: &'static str,
    example: bool,
    keys: Vec<Key>,
}

impl Table {
    fn new(header: &'static str, doc: &'static str) -> Table {
        Table {
            header,
            doc,
            example: false,
            keys: Vec::new(),
        }
    }

    fn example(header: &'static str, doc: &'static str) -> Table {
        Table {
            example: true,
            ..Table::new(header, doc)
        }
    }

    /// A key with a fixed default.
    fn key(mut self, name: &'static str, value: impl Into<Value>, doc: &'static str) -> Table {
        self.keys.push(Key {
            name,
            shown: Shown::Default(value.into()),
            doc,
        });
        self
    }

    /// A key without a fixed default, shown with an example value.
    fn eg(mut self, name: &'static str, value: impl Into<Value>, doc: &'static str) -> Table {
        self.keys.push(Key {
            name,
            shown: Shown::Example(value.into()),
            doc,
        });
        self
    }
}

/// An integer for the file (TOML integers are signed 64-bit; no default comes near the limit).
fn int<T: TryInto<i64>>(n: T) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> Value {
    int(d.as_millis())
}

fn secs_int(d: Duration) -> Value {
    int(d.as_secs())
}

fn secs(d: Duration) -> Value {
    Value::Float(d.as_secs_f64())
}

fn strings(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|s| Value::from(*s)).collect())
}

/// The validated defaults the file shows: an empty file, with the socket and state directory
/// fixed (the environment must not leak into a generated file), and the environment's model
/// backends left out.
fn defaults() -> Result<Config, ConfigError> {
    let mut c = Config::from_raw(
        RawConfig::default(),
        &Overrides {
            socket: Some(PathBuf::from(EXAMPLE_SOCKET)),
            state_dir: Some(PathBuf::from("/var/lib/clove")),
        },
    )?;
    c.llm = LlmConfig::default();
    Ok(c)
}

/// The per-model defaults that `[llm]` sets (`concurrency`, `timeout_secs`): the validated
/// section keeps them only in its models, so ask it about one.
fn model_defaults() -> Result<(usize, Duration), ConfigError> {
    let mut raw = RawLlm::default();
    raw.models.insert(
        "probe".into(),
        RawModel {
            base_url: Some("http://127.0.0.1/v1".into()),
            ..RawModel::default()
        },
    );
    let mut errors = Vec::new();
    let llm = LlmConfig::build(Some(&raw), &|_| None, &mut errors);
    match llm.models.first() {
        Some(m) if errors.is_empty() => Ok((m.concurrency, m.timeout)),
        _ => Err(ConfigError(errors)),
    }
}

/// The file's tables, with the values of `c`. One line per key, as a table: rustfmt cannot
/// wrap the text, so it is left as written.
#[rustfmt::skip]
fn tables(c: &Config, model: (usize, Duration)) -> Vec<Table> {
    let store_path = c
        .store
        .path
        .strip_prefix(&c.state_dir)
        .unwrap_or(&c.store.path)
        .display()
        .to_string();
    vec![
        Table::new("server", "The socket, who may use it, and the event loop.")
            .eg("socket", EXAMPLE_SOCKET, "Unix socket clients connect to. $CLOVE_SOCKET and --socket override it. Default: $XDG_RUNTIME_DIR/clove.sock, else /tmp/clove-UID/clove.sock (a directory of your own, which the daemon creates with mode 0700), so that users of one machine never share a socket; the packaged service uses /run/clove/clove.sock. Under socket activation (clove.socket) the socket systemd passes is served instead.")
            .key("socket_mode", format!("{:04o}", c.server.socket_mode), "Octal permission bits of the socket file; must include owner read and write. 0660 with socket_group shares the daemon with a group. Not applied to a socket passed by systemd (SocketMode= in clove.socket decides).")
            .key("socket_group", "", "Group (name or numeric gid) to give the socket file; empty: the daemon's own group.")
            .key("allowed_uids", Value::Array(c.server.allowed_uids.iter().map(|u| int(*u)).collect()), "Users besides the daemon's own that may connect (numeric uids); every connection's peer credentials are checked, whatever the socket's mode.")
            .eg("state_dir", "/var/lib/clove", "State directory (database, agent logs); created 0700. $CLOVE_STATE_DIR and --state-dir override it. Default: $XDG_STATE_HOME/clove, else ~/.local/state/clove. The packaged services pass theirs: /var/lib/clove, and ~/.local/state/clove for the user service.")
            .eg("workers", 8, "Worker threads for requests that may block (file I/O, EXEC). Default: twice the number of CPU cores, at least 4.")
            .key("job_queue", int(c.server.job_queue), "Requests waiting for a worker; a full queue pauses the connection.")
            .key("max_connections", int(c.server.max_connections), "Connections open at once.")
            .key("max_frame_bytes", int(c.server.max_frame_bytes), "Largest request payload.")
            .key("max_pending_reply_bytes", int(c.server.max_pending_reply_bytes), "Unsent reply bytes per connection before it is paused.")
            .key("max_pipelined", int(c.server.max_pipelined), "Requests taken from one connection before others are served.")
            .key("slow_client_timeout_ms", millis(c.server.slow_client_timeout), "A paused connection that reads nothing for this long is dropped.")
            .key("completion_queue", int(c.server.completion_queue), "Replies from workers waiting for the event loop (full: senders wait).")
            .key("pending_reply_total_bytes", int(c.server.pending_reply_total_bytes), "Unsent reply bytes of all connections together; near it, connections with unsent replies stop being read, and those that read nothing are dropped sooner.")
            .key("max_connections_per_caller", int(c.server.max_connections_per_caller), "Connections one agent (all its processes together) may hold.")
            .key("max_connections_per_uid", int(c.server.max_connections_per_uid), "Connections of plain clients of one other allowed user.")
            .key("max_connections_descendants", int(c.server.max_connections_descendants), "Connections of processes the daemon started that speak as no agent.")
            .key("owner_reserved_connections", int(c.server.owner_reserved_connections), "The last slots of max_connections, kept for the owner's own processes.")
            .key("agent_idle_timeout_secs", secs(c.server.agent_idle_timeout), "An agent's connection with nothing going on for this long is closed (plain clients' never are)."),
        Table::new("limits", "Bounds on what callers may keep in the daemon.")
            .key("mailbox_len", int(c.kernel.mailbox_len), "Messages waiting per agent.")
            .key("mailbox_max_bytes", int(c.kernel.mailbox_max_bytes), "Bytes waiting per agent.")
            .key("mailboxes_total_bytes", int(c.kernel.mailboxes_total_bytes), "Bytes of messages waiting in all mailboxes together (a message sent to many counts once).")
            .key("event_queue_len", int(c.kernel.event_queue_len), "Events waiting per subscriber (the oldest are dropped, and counted).")
            .key("event_queue_bytes", int(c.kernel.event_queue_bytes), "Bytes of event data waiting per subscriber (same rule).")
            .key("state_max_keys", int(c.store_limits.max_keys), "Keys in the state store.")
            .key("state_max_key_bytes", int(c.store_limits.max_key_bytes), "Longest key.")
            .key("state_max_value_bytes", int(c.store_limits.max_value_bytes), "Largest value.")
            .key("state_max_total_bytes", int(c.store_limits.max_total_bytes), "All keys and values together.")
            .key("async_max_outstanding", int(c.kernel.async_max_outstanding), "Async requests accepted but not yet polled, per agent.")
            .key("max_subscriptions", int(c.kernel.max_subscriptions), "Event types one caller may be subscribed to.")
            .key("max_event_type_bytes", int(c.kernel.max_event_type_bytes), "Longest event type name (SUBSCRIBE, EMIT).")
            .key("max_name_bytes", int(c.kernel.max_name_bytes), "Longest name (REGISTER, SPAWN); at most 200.")
            .key("max_permission_rules", int(c.kernel.max_permission_rules), "Rules per list in a SET_PERMS or SPAWN permission set; at most 4096.")
            .key("max_permission_rule_bytes", int(c.kernel.max_permission_rule_bytes), "Longest rule in a SET_PERMS or SPAWN permission set; at most 65536."),
        Table::new("exec", "EXEC: shell commands run for callers.")
            .key("shell", c.ops.exec.shell.display().to_string(), "Shell that runs EXEC's command text (absolute path).")
            .key("default_timeout_secs", secs(c.ops.exec.default_timeout), "Timeout of a command that names none.")
            .key("max_timeout_secs", secs(c.ops.exec.max_timeout), "Longest timeout a command may ask for.")
            .key("max_output_bytes", int(c.ops.exec.max_output_bytes), "Output kept per stream; the rest is read and discarded, and the reply says truncated.")
            .key("max_running", int(c.ops.exec.max_running), "Commands running at once, all callers together (more: error).")
            .key("max_running_per_caller", int(c.ops.exec.max_running_per_caller), "Commands one caller may have running at once (more: error)."),
        Table::new("fs", "READ and WRITE.")
            .key("max_read_bytes", int(c.ops.fs_max_read_bytes), "Largest file READ returns."),
        Table::new("permissions", "Permission levels: unrestricted, standard, sandboxed, readonly, minimal (see the README, \"Permissions\").")
            .key("client_level", c.kernel.client_level.as_str(), "Level of plain clients (the user's own processes).")
            .key("agent_level", c.kernel.agent_level.as_str(), "Level of agents the daemon spawns.")
            .key("unattributed_level", c.kernel.unattributed_level.as_str(), "Level of a process started under the daemon that belongs to no live agent or command (it left its session, or outlived its agent)."),
        Table::example("permissions.levels.standard", "Overrides of a preset: any field of a permission set, for any of the five levels. Unset fields keep the preset's value; `clove check-config` prints the result.")
            .eg("can_exec", true, "EXEC.")
            .eg("can_read", true, "READ.")
            .eg("can_write", true, "WRITE.")
            .eg("can_think", true, "THINK.")
            .eg("can_spawn", false, "SPAWN.")
            .eg("can_http", false, "HTTP.")
            .eg("can_manage", false, "Changing other agents (KILL, SET_PERMS of others, ...).")
            .eg("filesystem.read", strings(&["/**"]), "Path patterns READ may open (* within a component, ** across).")
            .eg("filesystem.write", strings(&["/tmp/**", "/var/tmp/**"]), "Path patterns WRITE may change.")
            .eg("filesystem.blocked", strings(&["/scratch/secret/**"]), "Path patterns no READ or WRITE may touch; they win over read and write.")
            .eg("exec", strings(&["*"]), "Programs EXEC may run (file-name globs, or paths when they contain a /).")
            .eg("blocked_commands", strings(&["sudo", "rm -rf /"]), "Programs (or phrases, with a space) EXEC refuses.")
            .eg("network", strings(&["*.example.org"]), "Hosts HTTP may reach: an exact name, *.suffix, or *.")
            .eg("http_methods", strings(&["GET", "HEAD"]), "Methods HTTP may use.")
            .eg("llm.max_tokens", 0, "THINK token quota (0: unlimited).")
            .eg("llm.max_calls", 0, "THINK call quota (0: unlimited).")
            .eg("llm.tokens_used", 0, "A usage counter: accepted (so GET_PERMS output can be pasted here) and ignored.")
            .eg("llm.calls_made", 0, "A usage counter: accepted and ignored.")
            .eg("max_exec_time_ms", 60000, "Longest EXEC timeout (0: no limit beyond exec.max_timeout_secs).")
            .eg("level", "standard", "Accepted and ignored: the level is the table's name."),
        Table::new("llm", "THINK: model backends and the queue in front of them. With no [llm.models.*], OPENAI_API_KEY (with OPENAI_BASE_URL, OPENAI_MODEL) or GEMINI_API_KEY / GOOGLE_API_KEY configure one backend from the daemon's environment.")
            .eg("default", "local", "The model THINK uses when the request names none. Default: the only model; required with several.")
            .key("concurrency", int(model.0), "Calls in flight per model unless the model says otherwise.")
            .key("queue_per_agent", int(c.llm.queue_per_agent), "Requests one agent may have waiting per model (more: error).")
            .key("max_queued", int(c.llm.max_queued), "Requests waiting per model, all agents together.")
            .key("connect_timeout_secs", secs(c.llm.connect_timeout), "Connect timeout to a backend.")
            .key("timeout_secs", secs(model.1), "Budget for one THINK, retries and back-off included, unless the model says otherwise.")
            .key("max_retries", int(c.llm.max_retries), "Attempts after the first on 429, 5xx and connection failures.")
            .key("backoff_initial_ms", millis(c.llm.backoff_initial), "First retry delay; doubles per retry, capped; Retry-After is honoured.")
            .key("backoff_max_ms", millis(c.llm.backoff_max), "Largest retry delay.")
            .key("max_response_bytes", int(c.llm.max_response_bytes), "Largest backend response read.")
            .eg("ca_file", "/etc/pki/site-ca.pem", "PEM bundle of extra trusted CAs for every model without its own ca_file. Default: none (the public roots only)."),
        Table::example("llm.models.local", "One model backend; the table's name is what THINK's \"model\" field uses. Several may be configured.")
            .eg("provider", "openai", "\"openai\" (any OpenAI-compatible chat-completions server: vLLM, llama.cpp, Ollama, ...) or \"gemini\".")
            .eg("base_url", "http://gpu-node-12:8000/v1", "The server's API base URL. Default: the provider's public API.")
            .eg("model", "meta-llama/Llama-3.1-8B-Instruct", "The model id sent to the server. Default: the table's name.")
            .eg("api_key_env", "LOCAL_API_KEY", "Environment variable holding the API key (its name must contain API_KEY, TOKEN or SECRET).")
            .eg("api_key_file", "/etc/clove/local.key", "File holding the API key; must not be readable by group or others.")
            .eg("concurrency", 8, "Calls in flight to this model. Default: llm.concurrency.")
            .eg("timeout_secs", 300.0, "Budget for one THINK on this model. Default: llm.timeout_secs.")
            .eg("max_tokens_field", "max_tokens", "OpenAI only: the request field for max_tokens. Default: max_completion_tokens for api.openai.com, max_tokens elsewhere.")
            .eg("ca_file", "/etc/pki/gateway-ca.pem", "This model's extra trusted CAs (instead of llm.ca_file)."),
        Table::new("http", "HTTP: outbound requests for callers (allow-listed by their permissions).")
            .key("max_response_bytes", int(c.http.max_response_bytes), "Largest body returned; more is cut off, and the reply says truncated.")
            .key("default_timeout_secs", secs(c.http.default_timeout), "Timeout of a request that names none.")
            .key("max_timeout_secs", secs(c.http.max_timeout), "Longest timeout a request may ask for.")
            .key("connect_timeout_secs", secs(c.http.connect_timeout), "Connect timeout.")
            .key("max_redirects", int(c.http.max_redirects), "Redirect hops followed (each one checked against the allow-list again).")
            .key("threads", int(c.http.threads), "Requests in flight.")
            .key("queue", int(c.http.queue), "Requests waiting for a thread (more: error).")
            .key("max_headers", int(c.http.max_headers), "Headers one request may set (more: error).")
            .eg("ca_file", "/etc/pki/site-ca.pem", "PEM bundle of extra trusted CAs. Default: none (the public roots only)."),
        Table::new("agents", "Supervised agents (SPAWN).")
            .key("kill_grace_ms", millis(c.agents.kill_grace), "Time between SIGTERM and SIGKILL when an agent is stopped.")
            .key("log_max_bytes", int(c.agents.log_max_bytes), "Size at which an agent's log file is rotated.")
            .key("log_files", int(c.agents.log_files), "Rotated log files kept per agent (NAME.log.1 ...); 0 truncates instead.")
            .key("backoff_initial_ms", millis(c.agents.backoff_initial), "First restart delay; doubled for each further restart inside the window.")
            .key("backoff_cap_ms", millis(c.agents.backoff_cap), "Largest restart delay.")
            .key("on_shutdown", match c.agents.on_shutdown { OnShutdown::Stop => "stop", OnShutdown::Leave => "leave" }, "What shutdown does with running agents: \"stop\" (SIGTERM, grace, SIGKILL) or \"leave\".")
            .key("max_agents", int(c.agents.max_agents), "Agents known at once (running or restarting).")
            .key("keep_exited", int(c.agents.keep_exited), "Stopped agents kept in LIST (oldest forgotten first).")
            .key("spawn_timeout_ms", millis(c.agents.spawn_timeout), "How long an agent may take to start.")
            .key("metrics_interval_ms", millis(c.agents.metrics_interval), "Interval of the metrics sampler (CPU percentages, memory warnings).")
            .key("memory_warning_percent", int(c.agents.memory_warning_percent), "RESOURCE_WARNING when an agent's memory reaches this share of its limit.")
            .key("default_interpreter", c.agents.default_interpreter.as_str(), "Interpreter used when SPAWN names none.")
            .key("command_queue", int(c.agents.command_queue), "SPAWN, KILL, PAUSE, RESUME waiting for the supervisor (full: a busy error).")
            .key("max_args", int(c.agents.max_args), "Arguments one SPAWN may pass.")
            .key("max_args_bytes", int(c.agents.max_args_bytes), "Bytes of arguments in all, per SPAWN."),
        Table::new("sandbox", "Isolation of agents.")
            .key("require", c.sandbox.require, "Refuse a spawn whose isolation cannot be applied in full, instead of degrading.")
            .key("cgroups", match c.sandbox.cgroups { CgroupMode::Auto => "auto", CgroupMode::V1 => "v1", CgroupMode::V2 => "v2", CgroupMode::Off => "off" }, "Cgroup interface: \"auto\", \"v1\", \"v2\" or \"off\" (rlimits only).")
            .key("agent_user", crate::supervisor::caps::DEFAULT_AGENT_USER, "Root daemon only: the user sandboxed agents run as (a name or uid; never root).")
            .eg("cgroup_v2_root", "/sys/fs/cgroup/system.slice/clove.service", "A delegated cgroup v2 directory for agents' cgroups. Default: found from /proc/self/cgroup (the service's own, delegated by Delegate=yes)."),
        Table::new("audit", "The audit log (GET_AUDIT_LOG).")
            .key("max_entries", int(c.kernel.audit.max_entries), "Entries kept, in memory and on disk; the oldest are pruned.")
            .key("log_syscalls", c.kernel.audit.log_syscalls, "Every call.")
            .key("log_security", c.kernel.audit.log_security, "Denials and permission changes.")
            .key("log_lifecycle", c.kernel.audit.log_lifecycle, "Agents started, stopped, restarted.")
            .key("log_ipc", c.kernel.audit.log_ipc, "Messages and events.")
            .key("log_state", c.kernel.audit.log_state, "State store changes.")
            .key("log_resource", c.kernel.audit.log_resource, "Resource warnings and limits.")
            .key("log_network", c.kernel.audit.log_network, "HTTP requests."),
        Table::new("router", "The Codeswarm router: codeswarm.router.v1 JSON lines over TCP (see the README, \"Codeswarm router\").")
            .eg("listen", "127.0.0.1:8765", "Address of the router's TCP listener; \"\" turns it off. Unset: $CODESWARM_ROUTER_HOST/$CODESWARM_ROUTER_PORT, else 127.0.0.1:8765 (if that port is busy the daemon runs without the router; an address set here must be bound).")
            .key("allow_remote", c.router.allow_remote, "Accept clients from other hosts (their uid cannot be checked; they must send the token).")
            .eg("token", "a-long-random-secret", "The token clients send first ({\"command\": \"auth\", \"payload\": {\"token\": ...}}); required with allow_remote. At least 16 characters.")
            .eg("token_file", "/etc/clove/router.token", "A file holding the token, instead of token.")
            .key("max_clients", int(c.router.max_clients), "Router clients connected at once.")
            .key("max_line_bytes", int(c.router.max_line_bytes), "Longest command line a client may send.")
            .key("client_queue_bytes", int(c.router.client_queue_bytes), "Events waiting for one client; a client over it is dropped.")
            .key("max_nodes_per_swarm", int(c.router.max_nodes_per_swarm), "Nodes one swarm may have.")
            .key("max_live_swarms", int(c.router.max_live_swarms), "Swarms not yet terminated.")
            .key("max_inflight_injections", int(c.router.max_inflight_injections), "Injections handed out whose turn has not completed.")
            .key("max_inbox_line_bytes", int(c.router.max_inbox_line_bytes), "One inbox line (an injection's JSON).")
            .key("max_queue_items", int(c.router.max_queue_items), "Items in the inter-swarm queue.")
            .key("max_record_bytes", int(c.router.max_record_bytes), "Longest outbox record read from a worker.")
            .key("command_queue", int(c.router.command_queue), "Commands waiting for the router's thread (\"router busy\" beyond).")
            .key("keep_terminated", int(c.router.keep_terminated), "Terminated swarms still listed.")
            .key("poll_busy_ms", millis(c.router.poll_busy), "Outbox polling while a node is busy (besides inotify).")
            .key("poll_idle_max_ms", millis(c.router.poll_idle_max), "Polling backs off to this while nothing comes.")
            .key("terminate_grace_ms", millis(c.router.terminate_grace), "Between a swarm's shutdown line, SIGTERM and SIGKILL (Slurm: shutdown lines, then scancel, then scancel --signal=KILL).")
            .key("slurm_poll_secs", int(c.router.slurm_poll.as_secs()), "How often Slurm providers ask Slurm about their live swarms (one squeue for all of them; each second while a launch waits or a termination runs).")
            .key("launch_timeout_secs", int(c.router.launch_timeout.as_secs()), "How long a Slurm launch may wait for its job to run; then the job is cancelled and the launch refused.")
            .key("slurm_command_timeout_secs", int(c.router.slurm_command_timeout.as_secs()), "The longest one Slurm or ssh command may take before it is killed.")
            .eg("providers", toml::Value::Array(vec![toml::Value::Table({
                let mut t = toml::Table::new();
                t.insert("id".into(), "local".into());
                t.insert("label".into(), "Local processes on this host".into());
                t.insert("backend".into(), "local".into());
                t
            })]), "Where swarms run ([[router.providers]] tables: id, label, backend, workspace_root, defaults, launch_fields; the local backend also worker_program and limits; the slurm backend partition, time_limit, account, qos, workers_per_node (1), worker_path (this executable), sbatch_args, job_name_prefix (\"clove-\"), login_host (\"\": Slurm on this host), ssh_options, ssh_command ([\"ssh\"]), ssh_multiplex (true), worker_program). None: one \"local\" provider (workers on this host, mock answers)."),
        Table::new("relay", "The ClawNet relay: Socket.IO for remote agents and dashboards (see the README, \"ClawNet relay\").")
            .eg("listen", c.relay.listen.map(|a| a.to_string()).unwrap_or_default(), "Address of the relay's HTTP/WebSocket listener; \"\" turns the relay off. Default: 127.0.0.1:8766, without which (another program holds the port) the daemon runs without the relay; an address set here must be bound. A non-loopback address needs tls_cert/tls_key or allow_plaintext_remote.")
            .eg("tls_cert", "/etc/clove/relay.crt", "PEM certificate chain: the relay speaks TLS (wss://, https://).")
            .eg("tls_key", "/etc/clove/relay.key", "PEM private key of tls_cert.")
            .key("allow_plaintext_remote", c.relay.allow_plaintext_remote, "Let a non-loopback listen go without TLS (tokens are still required).")
            .eg("secret_file", "/etc/clove/clawnet.secret", "ClawNet's shared tenant secret (else $CLAWNET_SECRET_KEY); no built-in default.")
            .eg("tenants_file", "/etc/clove/clawnet-tenants.json", "ClawNet's tenants file {\"tenant\": \"secret\"} (else $CLAWNET_TENANTS_PATH).")
            .key("ping_interval_ms", millis(c.relay.ping_interval), "Engine.IO pingInterval.")
            .key("ping_timeout_ms", millis(c.relay.ping_timeout), "Engine.IO pingTimeout: a client that does not answer a ping in time is closed.")
            .key("connect_timeout_ms", millis(c.relay.connect_timeout), "Time a new session has to send its Socket.IO CONNECT.")
            .key("max_payload", int(c.relay.max_payload), "Engine.IO maxPayload: the largest packet, and HTTP body. Default: enough for an upload of max_file_bytes in base64 (a smaller value is an error).")
            .key("max_sessions", int(c.relay.max_sessions), "Engine.IO sessions (connected clients) at once.")
            .key("max_pending_output", int(c.relay.max_pending_output), "Output waiting per client; a client over it is dropped. Default: twice max_payload, at least 8 MiB and the download of a max_file_bytes file.")
            .key("max_agents", int(c.relay.max_agents), "Agents the relay remembers, per tenant.")
            .key("max_tasks", int(c.relay.max_tasks), "Tasks kept, per tenant (the oldest finished ones go first).")
            .key("max_queued_commands", int(c.relay.max_queued_commands), "Commands waiting for one offline agent.")
            .key("max_chat", int(c.relay.max_chat), "Chat messages kept, per tenant.")
            .key("max_rooms_per_agent", int(c.relay.max_rooms_per_agent), "Rooms one agent may be in.")
            .key("max_task_output", int(c.relay.max_task_output), "Bytes of a task result kept.")
            .key("ack_timeout_ms", millis(c.relay.ack_timeout), "A command not acknowledged this long is sent again (else $CLAWNET_ACK_TIMEOUT_MS).")
            .key("ack_max_retries", int(c.relay.ack_max_retries), "Resends before a command is marked UNACKED (else $CLAWNET_ACK_MAX_RETRIES).")
            .key("command_denylist", strings(&c.relay.command_denylist.iter().map(String::as_str).collect::<Vec<_>>()), "Commands refused (substrings; else $CLAWNET_COMMAND_DENYLIST).")
            .key("command_risky", strings(&c.relay.command_risky.iter().map(String::as_str).collect::<Vec<_>>()), "Commands that wait for a master's approve_task (else $CLAWNET_COMMAND_RISKYLIST).")
            .key("shell_enabled", c.relay.shell_enabled, "The interactive shell relay, masters only (else $CLAWNET_SHELL_ENABLED=1).")
            .key("jwt_ttl_secs", secs_int(c.relay.jwt_ttl), "Lifetime of a JWT from POST /api/auth/token.")
            .key("auth_failures_per_minute", int(c.relay.auth_failures_per_minute), "Failed handshakes allowed per source per minute.")
            .key("fleet_update_ms", millis(c.relay.fleet_update), "fleet_update broadcasts are coalesced over this long.")
            .key("max_file_bytes", int(c.relay.resources.max_file_bytes), "Largest file upload_file takes (decoded bytes); larger ones get SIZE_LIMIT.")
            .key("tenant_quota_bytes", int(c.relay.resources.tenant_quota_bytes), "Bytes of file content one tenant may keep.")
            .key("config_history", int(c.relay.resources.config_history), "Versions of an agent config kept (the newest).")
            .key("task_timeout_secs", secs_int(c.relay.resources.task_timeout), "An orchestration task not reported this long after it started fails.")
            .eg("credentials_key_file", "relay-credentials.key", "The 256-bit master key of the stored credentials, made (0600) at first start; relative paths are in the state directory. Default: relay-credentials.key in the state directory.")
            .key("max_resources", int(c.relay.resources.max_resources), "Shared keys, credentials, files, skills, configs and orchestrations, each, per tenant.")
            .key("max_resource_bytes", int(c.relay.resources.max_resource_bytes), "Largest credential value, skill, config version or orchestration (JSON bytes)."),
        Table::new("store", "The state database.")
            .key("path", store_path, "The database file; relative paths are inside the state directory.")
            .key("sync", c.store.sync.as_str(), "\"full\": every commit is fsynced and survives a power cut; \"normal\": commits survive a crash of the daemon, a power cut may lose the last ones.")
            .key("max_pending_writes", int(c.store.max_pending_writes), "Writes waiting for the writer thread; beyond it a write is refused as busy."),
    ]
}

/// `text` as `# ` comment lines of at most [`WIDTH`] columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            let _ = writeln!(out, "{line}");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}

fn render(tables: &[Table]) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "clove {} configuration: every key, with its default. Generated by `clove generate \
             config` from the defaults in the code.",
            env!("CARGO_PKG_VERSION")
        ),
    );
    comment(
        &mut out,
        "A key right after the '#' shows its default: remove the '#' and change the value. A \
         key after '# ' shows an example, for a key without a fixed default. Unknown keys are \
         errors; `clove check-config --config FILE` checks a file and prints the settings in \
         effect.",
    );
    comment(
        &mut out,
        "Read by `clove serve` when given --config, else $CLOVE_CONFIG, else \
         ~/.config/clove/clove.toml, else this file (/etc/clove/clove.toml).",
    );
    for t in tables {
        let _ = writeln!(out);
        comment(&mut out, t.doc);
        if t.example {
            comment(&mut out, "Uncomment the table's header with its keys.");
            let _ = writeln!(out, "# [{}]", t.header);
        } else {
            let _ = writeln!(out, "[{}]", t.header);
        }
        for k in &t.keys {
            let _ = writeln!(out);
            comment(&mut out, k.doc);
            match &k.shown {
                Shown::Default(v) => {
                    let _ = writeln!(out, "#{} = {v}", k.name);
                }
                Shown::Example(v) => {
                    let _ = writeln!(out, "# {} = {v}", k.name);
                }
            }
        }
    }
    out
}

/// The commented default configuration file.
pub fn default_config() -> Result<String, ConfigError> {
    Ok(render(&tables(&defaults()?, model_defaults()?)))
}

/// The configuration `c` in effect, as TOML (what `clove check-config` prints): every key
/// with the value the daemon uses, the file it came from in a comment, secrets left out. Keys
/// without a fixed default (`workers`, `state_dir`, ...) show what this configuration chose;
/// every permission level and model is shown in full.
pub fn effective_config(c: &Config, origin: Option<&std::path::Path>) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "clove {}: the configuration in effect, from {}, with the environment and \
             command line applied. API keys are not shown.",
            env!("CARGO_PKG_VERSION"),
            origin.map_or(
                "built-in defaults (no config file found)".to_string(),
                |p| { p.display().to_string() }
            )
        ),
    );
    // The per-model defaults of [llm] are not kept apart from the models: the models show them.
    let model = model_defaults().unwrap_or((0, Duration::ZERO));
    for t in tables(c, model) {
        if t.example {
            continue;
        }
        let _ = writeln!(out, "\n[{}]", t.header);
        for k in &t.keys {
            if t.header == "llm" && matches!(k.name, "concurrency" | "timeout_secs") {
                continue;
            }
            let value = match (&k.shown, in_effect(c, t.header, k.name)) {
                (_, Some(Some(v))) => v,
                (_, Some(None)) => continue,
                (Shown::Default(v), None) => v.clone(),
                (Shown::Example(_), None) => continue,
            };
            let _ = writeln!(out, "{} = {value}", k.name);
        }
    }
    levels_in_effect(&mut out, c);
    models_in_effect(&mut out, c);
    out
}

/// The value of `[table] key` in `c` where [`tables`] shows an example or a fixed text:
/// `Some(None)` when it is unset.
fn in_effect(c: &Config, table: &str, key: &str) -> Option<Option<Value>> {
    let path = |p: &std::path::Path| Value::from(p.display().to_string());
    Some(match (table, key) {
        ("server", "socket") => Some(path(&c.server.socket)),
        ("server", "state_dir") => Some(path(&c.state_dir)),
        ("server", "workers") => Some(int(c.server.workers)),
        ("server", "socket_group") => Some(Value::from(
            c.server
                .socket_gid
                .map(|g| g.to_string())
                .unwrap_or_default(),
        )),
        ("llm", "default") => c
            .llm
            .default
            .and_then(|i| c.llm.models.get(i))
            .map(|m| Value::from(m.name.as_str())),
        ("llm", "ca_file") => None,
        ("http", "ca_file") => c.http.ca.as_ref().map(|ca| path(&ca.path)),
        ("sandbox", "cgroup_v2_root") => c.sandbox.cgroup_v2_root.as_deref().map(path),
        ("sandbox", "agent_user") => c
            .sandbox
            .agent_creds
            .map(|a| Value::from(a.uid.to_string())),
        _ => return None,
    })
}

/// Every permission level as the daemon uses it, one table each.
fn levels_in_effect(out: &mut String, c: &Config) {
    for (name, perms) in &c.kernel.levels {
        let Ok(Value::Table(t)) = Value::try_from(perms) else {
            continue;
        };
        let _ = writeln!(out, "\n[permissions.levels.{name}]");
        for (k, v) in t.iter().filter(|(k, _)| *k != "level") {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
}

/// Every model backend, with where its key comes from (never the key).
fn models_in_effect(out: &mut String, c: &Config) {
    for m in &c.llm.models {
        let _ = writeln!(out, "\n[llm.models.{}]", m.name);
        let provider = format!("{:?}", m.provider).to_ascii_lowercase();
        let _ = writeln!(out, "provider = {}", Value::from(provider));
        let _ = writeln!(out, "base_url = {}", Value::from(m.base_url.as_str()));
        let _ = writeln!(out, "model = {}", Value::from(m.model.as_str()));
        let _ = writeln!(out, "concurrency = {}", int(m.concurrency));
        let _ = writeln!(out, "timeout_secs = {}", secs(m.timeout));
        let _ = writeln!(
            out,
            "max_tokens_field = {}",
            Value::from(m.max_tokens_field.as_str())
        );
        if let Some(ca) = &m.ca {
            let _ = writeln!(
                out,
                "ca_file = {}",
                Value::from(ca.path.display().to_string())
            );
        }
        let key = if m.api_key.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        let _ = writeln!(out, "# API key: {key} (models from {})", c.llm.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::perms::PermsPatch;
    use serde::de::{self, Deserialize, IntoDeserializer, Visitor};
    use std::collections::BTreeSet;
    use std::path::Path;

    /// A serde deserializer that answers every question with an empty value and writes down
    /// each field path a `Deserialize` type asks for: the keys the parser accepts, from the
    /// types themselves. Maps get one entry called `*`.
    struct Introspect<'a> {
        path: String,
        keys: &'a mut BTreeSet<String>,
    }

    impl Introspect<'_> {
        fn leaf(self) {
            self.keys.insert(self.path);
        }
    }

    #[derive(Debug)]
    struct Error(String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Error {}
    impl de::Error for Error {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Error(msg.to_string())
        }
    }

    /// Field names (or the one map key) with the deserializer for each value.
    struct Fields<'a> {
        prefix: String,
        names: std::vec::IntoIter<String>,
        current: Option<String>,
        keys: &'a mut BTreeSet<String>,
    }

    impl<'de> de::MapAccess<'de> for Fields<'_> {
        type Error = Error;
        fn next_key_seed<K: de::DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(name) = self.names.next() else {
                return Ok(None);
            };
            self.current = Some(name.clone());
            seed.deserialize(name.into_deserializer()).map(Some)
        }
        fn next_value_seed<V: de::DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Error> {
            let name = self.current.take().unwrap_or_default();
            let path = if self.prefix.is_empty() {
                name
            } else {
                format!("{}.{name}", self.prefix)
            };
            seed.deserialize(Introspect {
                path,
                keys: self.keys,
            })
        }
    }

    impl<'de> de::Deserializer<'de> for Introspect<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            // Only `toml::Value` (an open table such as permissions.levels.NAME) asks this.
            self.leaf();
            v.visit_bool(false)
        }
        fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_bool(false)
        }
        fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_u64(0)
        }
        fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_u8(v)
        }
        fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_u8(v)
        }
        fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_u8(v)
        }
        fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_u8(v)
        }
        fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_f64(0.0)
        }
        fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_str("")
        }
        fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_str(v)
        }
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_some(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_seq(de::value::SeqDeserializer::<_, Error>::new(
                std::iter::empty::<bool>(),
            ))
        }
        fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_map(Fields {
                prefix: self.path,
                names: vec!["*".to_string()].into_iter(),
                current: None,
                keys: self.keys,
            })
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_map(Fields {
                prefix: self.path,
                names: fields
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .into_iter(),
                current: None,
                keys: self.keys,
            })
        }
        serde::forward_to_deserialize_any! {
            i8 i16 i32 i128 u128 f32 char bytes byte_buf unit unit_struct newtype_struct
            tuple tuple_struct enum identifier ignored_any
        }
    }

    /// Every key path `T` accepts (`a.b`, `a.*.c` under maps).
    fn accepted<T: for<'de> Deserialize<'de>>(prefix: &str) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        T::deserialize(Introspect {
            path: prefix.to_string(),
            keys: &mut keys,
        })
        .unwrap_or_else(|e| panic!("introspecting {prefix}: {e}"));
        keys
    }

    /// Every key the config parser accepts. `permissions.levels.NAME` is an open table,
    /// checked as a permission set when the config is validated, so its keys are those of
    /// [`PermsPatch`].
    fn every_accepted_key() -> BTreeSet<String> {
        let mut keys = accepted::<RawConfig>("");
        assert!(keys.remove("permissions.levels.*"), "{keys:?}");
        keys.extend(accepted::<PermsPatch>("permissions.levels.*"));
        keys
    }

    /// The table a header line opens: `[name]`, or `# [name]` for an example table.
    fn header_of(line: &str) -> Option<&str> {
        let bare = line.strip_prefix("# ").unwrap_or(line);
        let name = bare.strip_prefix('[')?.strip_suffix(']')?;
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            .then_some(name)
    }

    /// The key a line shows, and whether as the default (`#key = `) or an example (`# key = `).
    fn key_of(line: &str) -> Option<(&str, bool)> {
        let (bare, default) = match line.strip_prefix("# ") {
            Some(rest) => (rest, false),
            None => (line.strip_prefix('#')?, true),
        };
        let (key, _) = bare.split_once(" = ")?;
        let ok = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        ok.then_some((key, default))
    }

    /// The key paths the file shows (defaults and examples), with a table's name replaced by
    /// `*` where the parser has a map.
    fn documented_keys(text: &str) -> BTreeSet<String> {
        let mut table = "";
        let mut keys = BTreeSet::new();
        for line in text.lines() {
            if let Some(h) = header_of(line) {
                table = h;
            } else if let Some((key, _)) = key_of(line) {
                let mut parts: Vec<&str> = table.split('.').collect();
                if let [first, second, name] = parts.as_mut_slice()
                    && matches!(
                        (*first, *second),
                        ("llm", "models") | ("permissions", "levels")
                    )
                {
                    *name = "*";
                }
                keys.insert(format!("{}.{key}", parts.join(".")));
            }
        }
        keys
    }

    /// The file with its default lines uncommented.
    fn uncomment_defaults(text: &str) -> String {
        text.lines()
            .map(|l| match key_of(l) {
                Some((_, true)) => &l[1..],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `text` validated like [`defaults`]: the same socket and state directory, and the
    /// `[llm]` section without the environment's backends.
    fn validate(text: &str) -> Config {
        let raw = Config::parse(text, Path::new("generated.toml")).unwrap();
        let llm = Config::parse(text, Path::new("generated.toml"))
            .unwrap()
            .llm;
        let mut c = Config::from_raw(
            raw,
            &Overrides {
                socket: Some(PathBuf::from(EXAMPLE_SOCKET)),
                state_dir: Some(PathBuf::from("/var/lib/clove")),
            },
        )
        .unwrap();
        let mut errors = Vec::new();
        c.llm = LlmConfig::build(llm.as_ref(), &|_| None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    #[test]
    fn every_key_the_parser_accepts_is_in_the_file_and_no_other() {
        let text = default_config().unwrap();
        let accepted = every_accepted_key();
        assert!(accepted.contains("server.socket"), "{accepted:?}");
        assert!(accepted.contains("llm.models.*.base_url"), "{accepted:?}");
        assert!(
            accepted.contains("permissions.levels.*.filesystem.read"),
            "{accepted:?}"
        );
        let documented = documented_keys(&text);
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty(),
            "keys missing from the file: {missing:?}"
        );
        assert!(unknown.is_empty(), "keys the parser refuses: {unknown:?}");
    }

    #[test]
    fn the_file_as_shipped_and_uncommented_gives_the_defaults() {
        let text = default_config().unwrap();
        let want = format!("{:?}", defaults().unwrap());
        assert_eq!(format!("{:?}", validate(&text)), want);
        let uncommented = uncomment_defaults(&text);
        assert!(uncommented.contains("\nsocket_mode = \"0600\"\n"));
        assert!(uncommented.contains("\ntimeout_secs = 120.0\n"));
        assert_eq!(format!("{:?}", validate(&uncommented)), want);
        // Changing an uncommented value changes the config: the lines are really read.
        let changed = uncommented.replace("\nmax_connections = 4096\n", "\nmax_connections = 77\n");
        assert_eq!(validate(&changed).server.max_connections, 77);
    }

    #[test]
    fn the_effective_config_reads_back_as_the_same_config() {
        let text = "[server]\nworkers = 3\nsocket_group = \"0\"\n[permissions.levels.standard]\n\
                    can_http = false\n[llm.models.local]\nbase_url = \"http://127.0.0.1:8000/v1\"\n\
                    concurrency = 2\n[sandbox]\ncgroups = \"off\"\n";
        let c = validate(text);
        let shown = effective_config(&c, Some(Path::new("/etc/x.toml")));
        assert!(shown.starts_with("# clove "), "{shown}");
        assert!(shown.contains("from /etc/x.toml"), "{shown}");
        for line in [
            "workers = 3",
            "socket_group = \"0\"",
            "cgroups = \"off\"",
            "concurrency = 2",
        ] {
            assert!(
                shown.lines().any(|l| l == line),
                "{line:?} missing from:\n{shown}"
            );
        }
        // Not a debug dump: octal modes and provider names as a config file writes them.
        assert!(
            shown.contains("socket_mode = \"0600\"") && shown.contains("provider = \"openai\"")
        );
        let again = validate(&shown);
        assert_eq!(format!("{:?}", again.kernel), format!("{:?}", c.kernel));
        assert_eq!(format!("{:?}", again.server), format!("{:?}", c.server));
        assert_eq!(
            format!("{:?}", again.llm.models),
            format!("{:?}", c.llm.models)
        );
        assert_eq!(format!("{:?}", again.sandbox), format!("{:?}", c.sandbox));
    }

    #[test]
    fn the_per_model_defaults_are_the_ones_a_model_gets() {
        let text = uncomment_defaults(&default_config().unwrap());
        let with_model = |t: &str| {
            let raw = Config::parse(t, Path::new("t.toml")).unwrap();
            let mut errors = Vec::new();
            let mut llm = raw.llm.unwrap_or_default();
            llm.models.insert(
                "m".into(),
                RawModel {
                    base_url: Some("http://127.0.0.1/v1".into()),
                    ..RawModel::default()
                },
            );
            let c = LlmConfig::build(Some(&llm), &|_| None, &mut errors);
            assert!(errors.is_empty(), "{errors:?}");
            (c.models[0].concurrency, c.models[0].timeout)
        };
        assert_eq!(with_model(&text), model_defaults().unwrap());
        let changed = text.replace("\nconcurrency = 4\n", "\nconcurrency = 5\n");
        assert_eq!(with_model(&changed).0, 5);
    }

    #[test]
    fn the_examples_are_accepted_by_the_parser() {
        // Uncomment everything, example tables included: every line must parse, and every
        // example permission set must be a valid patch.
        let text: String = default_config()
            .unwrap()
            .lines()
            .filter_map(|l| {
                if !l.starts_with('#') {
                    Some(l)
                } else if header_of(l).is_some() || key_of(l).is_some() {
                    Some(l.trim_start_matches('#').trim_start())
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let raw = Config::parse(&text, Path::new("examples.toml")).unwrap();
        let levels = &raw.permissions.levels;
        assert_eq!(levels.len(), 1);
        for v in levels.values() {
            let patch: PermsPatch = v.clone().try_into().unwrap();
            assert_eq!(patch.can_spawn, Some(false));
        }
        assert_eq!(raw.llm.unwrap().models.len(), 1);
    }
}
