//! The `clove` command line: the daemon (`serve`) and its clients. This is the only place that
//! exits the process.

use clap::{Args, Parser, Subcommand};
use clove::bench::{BenchOp, BenchSpec};
use clove::client::Client;
use clove::config::{self, Config, Overrides};
use clove::proto::op as ops;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// clove: run and coordinate AI agents on a cluster login node.
///
/// Start the daemon with `clove serve`; talk to it with the other commands. Clients find the
/// daemon through --socket, then $CLOVE_SOCKET, then /tmp/clove.sock.
#[derive(Parser)]
#[command(name = "clove", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SocketArg {
    /// Daemon socket (default: $CLOVE_SOCKET, else /tmp/clove.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; CLOVE_LOG=debug for more).
    Serve {
        /// Config file (default: $CLOVE_CONFIG, ~/.config/clove/clove.toml,
        /// /etc/clove/clove.toml, else built-in defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Socket path, overriding the config file and $CLOVE_SOCKET.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// State directory, overriding the config file and $CLOVE_STATE_DIR.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check that the daemon answers, and how fast.
    Ping {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Send one request and print the reply: `clove call store '{"key":"a","value":1}'`.
    ///
    /// OP is an op name (any case: store, get-perms) or number (0x30). JSON defaults to {}.
    /// Exits 1 when the reply says "success": false.
    Call {
        op: String,
        json: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
        /// Print the reply payload exactly as received (no pretty-printing).
        #[arg(long)]
        raw: bool,
    },
    /// Load-test the daemon (or any server of the Clove frame protocol) and print figures.
    Bench {
        #[command(flatten)]
        socket: SocketArg,
        /// Operation to measure.
        #[arg(long, value_enum, default_value = "noop")]
        op: BenchOp,
        /// Concurrent connections.
        #[arg(short = 'c', long, default_value_t = 1)]
        conns: usize,
        /// Measured requests (after warm-up).
        #[arg(short = 'n', long, default_value_t = 100_000)]
        requests: u64,
        /// Requests in flight per connection (pipeline window).
        #[arg(short = 'P', long, default_value_t = 1)]
        window: usize,
        /// Payload bytes (NOOP) or value bytes (STORE/FETCH).
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Distinct keys for STORE/FETCH.
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// Extra idle connections held open during the run.
        #[arg(long, default_value_t = 0)]
        idle: usize,
        /// Unmeasured warm-up requests.
        #[arg(long, default_value_t = 10_000)]
        warmup: u64,
        /// Connections that STORE continuously during the run (e.g. FETCH under writes).
        #[arg(long, default_value_t = 0)]
        background_writers: usize,
        /// Total STOREs per second of the background writers (0: as fast as answered).
        #[arg(long, default_value_t = 0)]
        background_rate: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask the model: `clove think "What is 2+2?"` prints the answer.
    ///
    /// PROMPT `-` reads the prompt from standard input. Function calls the model asks for are
    /// printed as `function_call NAME ARGUMENTS-JSON` lines. Exits 1 when THINK fails.
    Think {
        prompt: String,
        /// A configured model name (default: llm.default).
        #[arg(long)]
        model: Option<String>,
        /// System instruction.
        #[arg(long, value_name = "TEXT")]
        system: Option<String>,
        #[arg(long)]
        temperature: Option<f64>,
        #[arg(long)]
        max_tokens: Option<u64>,
        /// Thinking level (low, medium, high, ...) or a token budget.
        #[arg(long, value_name = "LEVEL")]
        thinking_level: Option<String>,
        /// An image file sent with the prompt.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Print the whole reply as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List supervised agents as a table.
    Agents {
        #[command(flatten)]
        socket: SocketArg,
        /// Print LIST's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a supervised agent: `clove spawn worker ./worker.py --restart on-failure`.
    Spawn {
        name: String,
        script: PathBuf,
        /// Arguments passed to the script after the socket path.
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        socket: SocketArg,
        /// Restart policy: never, on-failure or always.
        #[arg(long, default_value = "never")]
        restart: String,
        #[arg(long)]
        max_restarts: Option<u32>,
        /// Seconds in which max_restarts may happen.
        #[arg(long)]
        restart_window: Option<f64>,
        /// Interpreter (default: the daemon's agents.default_interpreter, python3).
        #[arg(long)]
        interpreter: Option<String>,
        /// Run without the sandbox (no namespaces).
        #[arg(long)]
        no_sandbox: bool,
        /// Give the agent the host's network (sandboxed agents have none by default).
        #[arg(long)]
        network: bool,
        /// Memory limit: bytes or 512M, 2G.
        #[arg(long)]
        memory: Option<String>,
        #[arg(long)]
        max_pids: Option<u64>,
        /// CPU time in microseconds per 100 ms period (50000 = half a core).
        #[arg(long)]
        cpu_quota: Option<u64>,
        /// Permission level (at most your own).
        #[arg(long)]
        level: Option<String>,
        /// Start it again (under the same id) whenever the daemon starts, until `clove kill`
        /// forgets it.
        #[arg(long)]
        persist: bool,
    },
    /// Stop an agent (SIGTERM, then SIGKILL after the grace period).
    Kill {
        /// Agent name or id.
        name: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print an agent's log file; -f keeps following it.
    Logs {
        /// Agent name or id.
        name: String,
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Check, export or import the durable state of a STOPPED daemon (they refuse while a
    /// daemon holds the store). The store is found like `clove serve` finds it: --config,
    /// --state-dir, then store.path.
    State {
        #[command(subcommand)]
        action: StateAction,
        /// Config file (as for `clove serve`).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// State directory (as for `clove serve`).
        #[arg(long, value_name = "DIR", global = true)]
        state_dir: Option<PathBuf>,
    },
    /// The ClawNet relay's per-agent tokens and credentials key (through the running daemon;
    /// needs the manage right, which the user's own clients have).
    Relay {
        #[command(subcommand)]
        action: RelayAction,
        /// Daemon socket (default: $CLOVE_SOCKET, else /tmp/clove.sock).
        #[arg(long, value_name = "PATH", global = true)]
        socket: Option<PathBuf>,
    },
    /// Validate a config file (or the default one) and print the effective settings.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

// `clove generate` is parsed on its own, not as a subcommand of `Cli`: the completions it
// writes would offer it (clap_complete lists hidden subcommands too).
/// Write the files the packages ship, generated from this program.
#[derive(Parser)]
#[command(name = "clove generate", bin_name = "clove generate")]
struct GenerateCli {
    #[command(subcommand)]
    what: Generate,
}

#[derive(Subcommand)]
enum Generate {
    /// Man pages into DIR: clove.1 and one page per subcommand (clove-serve.1, ...).
    Man { dir: PathBuf },
    /// Shell completions into DIR: clove.bash, _clove (zsh) and clove.fish.
    Completions { dir: PathBuf },
    /// The default config file, every key commented with its default, on stdout.
    Config,
}

/// Prints a line to stdout, ignoring a closed pipe (`clove ... | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Subcommand)]
enum RelayAction {
    /// Tokens: `create --agent ID --role worker|master|warden [--tenant T] [--expires 30d]`,
    /// `list`, `revoke ID`.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Re-encrypt every stored credential under a new master key, crash-safely.
    RotateKey,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token bound to one agent id, role and tenant; it is printed once.
    Create {
        #[arg(long, value_name = "ID")]
        agent: String,
        #[arg(long, default_value = "worker")]
        role: String,
        #[arg(long, value_name = "T")]
        tenant: Option<String>,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Print the whole reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id (or the token text itself); its live sockets are closed.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum StateAction {
    /// Verify the database (SQLite integrity check, every value parses); exit 1 on damage.
    Check,
    /// Write the durable state as JSON (to stdout, or --output FILE).
    Export {
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Replace the durable state with a JSON dump made by `clove state export`.
    Import {
        file: PathBuf,
        /// Overwrite a store that is not empty.
        #[arg(long)]
        replace: bool,
    },
}

fn main() -> ExitCode {
    // The agent launcher, the EXEC helper and the log copier run before anything else (no
    // logging, no threads): see clove::supervisor::{launch, enter, logfile}.
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(a) if a == clove::supervisor::launch::SUBCOMMAND => {
            clove::supervisor::launch::main();
        }
        Some(a) if a == clove::supervisor::enter::SUBCOMMAND => {
            let spec = args
                .next()
                .and_then(|s| s.into_string().ok())
                .unwrap_or_default();
            clove::supervisor::enter::main(&spec);
        }
        Some(a) if a == clove::supervisor::logfile::COPY_SUBCOMMAND => {
            let rest: Vec<String> = args.filter_map(|s| s.into_string().ok()).collect();
            clove::supervisor::logfile::copy_main(&rest);
        }
        Some(a) if a == "generate" => {
            let cli = GenerateCli::parse_from(std::env::args_os().skip(1));
            return generate(cli.what).unwrap_or_else(|msg| {
                eprintln!("clove: {msg}");
                ExitCode::from(2)
            });
        }
        _ => {}
    }
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("clove: {msg}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = std::env::var("CLOVE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter).target(env_logger::Target::Stderr);
    // Under systemd the journal adds its own timestamps, and takes each line's priority from
    // a `<N>` prefix (sd-daemon(3)).
    if clove::systemd::under_journald() {
        b.format(|buf, r| {
            let priority = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(
                buf,
                "<{priority}>{} {}: {}",
                r.level(),
                r.target(),
                r.args()
            )
        });
    }
    let _ = b.try_init();
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve {
            config,
            socket,
            state_dir,
        } => {
            let cfg = Config::load(config.as_deref(), &Overrides { socket, state_dir })
                .map_err(|e| e.to_string())?;
            clove::daemon::serve(cfg).map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents { socket, json } => {
            let path = config::client_socket(socket.socket.as_deref());
            let mut c = Client::connect(&path).map_err(|e| e.to_string())?;
            let list = clove::supervisor::cli::list(&mut c)?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print!("{}", clove::supervisor::cli::agents_table(&list));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Spawn {
            name,
            script,
            args,
            socket,
            restart,
            max_restarts,
            restart_window,
            interpreter,
            no_sandbox,
            network,
            memory,
            max_pids,
            cpu_quota,
            level,
            persist,
        } => {
            let script = std::path::absolute(&script)
                .map_err(|e| format!("bad script path {}: {e}", script.display()))?;
            let mut req = serde_json::json!({
                "name": name,
                "script": script,
                "args": args,
                "restart_policy": restart,
                "sandboxed": !no_sandbox,
                "network": network || no_sandbox,
                "persist": persist,
            });
            let mut limits = serde_json::Map::new();
            if let Some(m) = memory {
                limits.insert("memory".into(), m.into());
            }
            if let Some(p) = max_pids {
                limits.insert("max_pids".into(), p.into());
            }
            if let Some(q) = cpu_quota {
                limits.insert("cpu_quota".into(), q.into());
            }
            req["limits"] = limits.into();
            for (k, v) in [
                ("max_restarts", max_restarts.map(serde_json::Value::from)),
                (
                    "restart_window",
                    restart_window.map(serde_json::Value::from),
                ),
                ("python", interpreter.map(serde_json::Value::from)),
                ("level", level.map(serde_json::Value::from)),
            ] {
                if let Some(v) = v {
                    req[k] = v;
                }
            }
            agent_call(socket, ops::SPAWN, &req, |v| {
                format!(
                    "spawned {} (id {}, pid {}); log: {}",
                    v["name"].as_str().unwrap_or("?"),
                    v["id"],
                    v["pid"],
                    v["log_path"].as_str().unwrap_or("?")
                )
            })
        }
        Command::Kill { name, socket } => {
            let req = match name.parse::<u32>() {
                Ok(id) => serde_json::json!({"id": id}),
                Err(_) => serde_json::json!({"name": name}),
            };
            agent_call(socket, ops::KILL, &req, |v| {
                format!(
                    "killed agent {} (exit code {})",
                    v["agent_id"], v["exit_code"]
                )
            })
        }
        Command::Logs {
            name,
            follow,
            socket,
        } => {
            let path = config::client_socket(socket.socket.as_deref());
            let mut c = Client::connect(&path).map_err(|e| e.to_string())?;
            let log = clove::supervisor::cli::log_path(&mut c, &name)?;
            drop(c);
            clove::supervisor::cli::print_log(&log, follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State {
            action,
            config,
            state_dir,
        } => {
            let cfg = Config::load(
                config.as_deref(),
                &Overrides {
                    socket: None,
                    state_dir,
                },
            )
            .map_err(|e| e.to_string())?;
            state_command(&cfg, action)
        }
        Command::Relay { action, socket } => relay_command(socket, action),
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref(), &Overrides::default())
                .map_err(|e| e.to_string())?;
            say!("configuration is valid");
            say!("{cfg:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping { socket } => {
            let path = config::client_socket(socket.socket.as_deref());
            let mut c = Client::connect(&path).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let reply = c
                .call(ops::HELLO, b"{}")
                .map_err(|e| format!("no answer from {}: {e}", path.display()))?;
            let elapsed = t.elapsed();
            let v = reply.json().map_err(|e| e.to_string())?;
            if v["success"] == false {
                return Err(format!(
                    "{} refused: {}",
                    path.display(),
                    v["error"].as_str().unwrap_or("no reason given")
                ));
            }
            say!(
                "pong from clove {} at {} in {:.0}us (your agent id {})",
                v["kernel_version"].as_str().unwrap_or("?"),
                path.display(),
                elapsed.as_secs_f64() * 1e6,
                reply.agent_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            op,
            json,
            socket,
            raw,
        } => {
            let code = ops::parse(&op).ok_or_else(|| {
                format!(
                    "unknown op {op:?}; known ops: {}",
                    ops::NAMES
                        .iter()
                        .map(|(_, name)| name.to_lowercase())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let payload = json.unwrap_or_else(|| "{}".into());
            if code != ops::NOOP {
                serde_json::from_str::<serde_json::Value>(&payload)
                    .map_err(|e| format!("the request is not valid JSON: {e}"))?;
            }
            let path = config::client_socket(socket.socket.as_deref());
            let mut c = Client::connect(&path).map_err(|e| e.to_string())?;
            let reply = c
                .call(code, payload.as_bytes())
                .map_err(|e| format!("request failed: {e}"))?;
            let mut out = std::io::stdout().lock();
            let parsed = serde_json::from_slice::<serde_json::Value>(&reply.payload);
            match (&parsed, raw) {
                (Ok(v), false) => {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(v).unwrap_or_default()
                    );
                }
                _ => {
                    let _ = out.write_all(&reply.payload);
                    let _ = writeln!(out);
                }
            }
            let failed = parsed
                .ok()
                .and_then(|v| v.get("success").and_then(|s| s.as_bool()))
                == Some(false);
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Think {
            prompt,
            model,
            system,
            temperature,
            max_tokens,
            thinking_level,
            image,
            json,
            socket,
        } => {
            let prompt = if prompt == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| format!("cannot read the prompt from stdin: {e}"))?;
                s
            } else {
                prompt
            };
            let mut req = serde_json::json!({"prompt": prompt});
            if let Some(m) = model {
                req["model"] = m.into();
            }
            if let Some(s) = system {
                req["system_instruction"] = s.into();
            }
            if let Some(t) = temperature {
                req["temperature"] = t.into();
            }
            if let Some(n) = max_tokens {
                req["max_tokens"] = n.into();
            }
            if let Some(l) = thinking_level {
                req["thinking_level"] = match l.parse::<u64>() {
                    Ok(n) => n.into(),
                    Err(_) => l.into(),
                };
            }
            if let Some(path) = image {
                req["image"] = image_field(&path)?;
            }
            let path = config::client_socket(socket.socket.as_deref());
            let mut c = Client::connect(&path).map_err(|e| e.to_string())?;
            let reply = c
                .call_json(ops::THINK, &req)
                .map_err(|e| format!("request failed: {e}"))?;
            let ok = reply["success"].as_bool() == Some(true);
            let mut out = std::io::stdout().lock();
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&reply).unwrap_or_default()
                );
            } else if ok {
                let content = reply["content"].as_str().unwrap_or("");
                if !content.is_empty() {
                    let _ = writeln!(out, "{content}");
                }
                for f in reply["function_calls"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        out,
                        "function_call {} {}",
                        f["name"].as_str().unwrap_or("?"),
                        f["arguments"]
                    );
                }
            } else {
                eprintln!(
                    "clove: THINK failed: {}",
                    reply["error"].as_str().unwrap_or("no error given")
                );
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Bench {
            socket,
            op,
            conns,
            requests,
            window,
            size,
            keys,
            idle,
            warmup,
            background_writers,
            background_rate,
            json,
        } => {
            let spec = BenchSpec {
                socket: config::client_socket(socket.socket.as_deref()),
                op,
                conns,
                requests,
                window,
                size,
                keys,
                idle,
                warmup,
                background_writers,
                background_rate,
            };
            let result = clove::bench::run(&spec).map_err(|e| format!("bench failed: {e}"))?;
            if json {
                say!("{}", serde_json::to_string(&result).unwrap_or_default());
            } else {
                say!("{result}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The THINK `image` field for a file: base64 data plus the type its extension names (or, for
/// unknown extensions, none: the daemon recognises PNG, JPEG, GIF and WebP from the bytes).
fn image_field(path: &std::path::Path) -> Result<serde_json::Value, String> {
    use base64::Engine;
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))?;
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = match ext.as_str() {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "gif" => Some("image/gif"),
        "webp" => Some("image/webp"),
        _ => None,
    };
    Ok(match mime {
        Some(m) => serde_json::json!({"data": data, "mime_type": m}),
        None => serde_json::Value::String(data),
    })
}

/// Sends one agent request and prints a one-line summary, or the error (exit code 1).
fn agent_call(
    socket: SocketArg,
    op: u8,
    req: &serde_json::Value,
    summary: impl Fn(&serde_json::Value) -> String,
) -> Result<ExitCode, String> {
    let path = config::client_socket(socket.socket.as_deref());
    let mut c = Client::connect(&path).map_err(|e| e.to_string())?;
    let v = c
        .call_json(op, req)
        .map_err(|e| format!("request failed: {e}"))?;
    if v["success"] == serde_json::json!(true) {
        say!("{}", summary(&v));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("clove: {}", v["error"].as_str().unwrap_or("request failed"));
        Ok(ExitCode::from(1))
    }
}

/// `clove generate ...`: what the packages ship, generated from the clap definitions and the
/// config defaults so that it cannot drift from the program.
fn generate(what: Generate) -> Result<ExitCode, String> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| format!("cannot write man pages to {}: {e}", dir.display()))?;
        }
        Generate::Completions { dir } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut Cli::command(), "clove", &dir)
                    .map_err(|e| format!("cannot write {shell} completions: {e}"))?;
            }
        }
        Generate::Config => {
            let text = clove::config_doc::default_config().map_err(|e| e.to_string())?;
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `clove relay rotate-key`: the relay's credentials re-encrypted under a new key.
fn relay_rotate_key(socket: Option<PathBuf>) -> Result<ExitCode, String> {
    let path = config::client_socket(socket.as_deref());
    let mut c = Client::connect(&path)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", path.display()))?;
    let req = serde_json::json!({"service": "relay", "action": "rotate_key"});
    let v = c
        .call_json(ops::SERVICE_ADMIN, &req)
        .map_err(|e| format!("request failed: {e}"))?;
    if v["success"] != serde_json::json!(true) {
        eprintln!("clove: {}", v["error"].as_str().unwrap_or("request failed"));
        return Ok(ExitCode::from(1));
    }
    say!(
        "credentials key rotated: {} values re-encrypted, key id {}",
        v["credentials"],
        v["kid"].as_str().unwrap_or("")
    );
    Ok(ExitCode::SUCCESS)
}

/// `clove relay token ...`: SERVICE_ADMIN requests to the running daemon's relay.
fn relay_command(socket: Option<PathBuf>, action: RelayAction) -> Result<ExitCode, String> {
    let action = match action {
        RelayAction::Token { action } => action,
        RelayAction::RotateKey => return relay_rotate_key(socket),
    };
    let (req, json_out) = match &action {
        TokenAction::Create {
            agent,
            role,
            tenant,
            expires,
            json,
        } => {
            let expires_secs = match expires {
                Some(e) => Some(
                    humantime::parse_duration(e)
                        .map_err(|err| format!("--expires {e}: {err} (e.g. 30d, 12h)"))?
                        .as_secs()
                        .max(1),
                ),
                None => None,
            };
            let req = serde_json::json!({"service": "relay", "action": "token_create",
                "agent_id": agent, "role": role, "tenant": tenant, "expires_secs": expires_secs});
            (req, *json)
        }
        TokenAction::List { json } => (
            serde_json::json!({"service": "relay", "action": "token_list"}),
            *json,
        ),
        TokenAction::Revoke { id } => (
            serde_json::json!({"service": "relay", "action": "token_revoke", "id": id}),
            false,
        ),
    };
    let path = config::client_socket(socket.as_deref());
    let mut c = Client::connect(&path)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", path.display()))?;
    let v = c
        .call_json(ops::SERVICE_ADMIN, &req)
        .map_err(|e| format!("request failed: {e}"))?;
    if v["success"] != serde_json::json!(true) {
        eprintln!("clove: {}", v["error"].as_str().unwrap_or("request failed"));
        return Ok(ExitCode::from(1));
    }
    if json_out {
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    match action {
        TokenAction::Create { .. } => {
            say!("{}", v["token"].as_str().unwrap_or(""));
            eprintln!(
                "token {} for agent {} (role {}, tenant {}); shown once, keep it secret",
                v["id"].as_str().unwrap_or(""),
                v["agent_id"].as_str().unwrap_or(""),
                v["role"].as_str().unwrap_or(""),
                v["tenant"].as_str().unwrap_or("")
            );
        }
        TokenAction::List { .. } => {
            say!(
                "{:<14} {:<24} {:<8} {:<16} {:<8} EXPIRES",
                "ID",
                "AGENT",
                "ROLE",
                "TENANT",
                "STATE"
            );
            for t in v["tokens"].as_array().into_iter().flatten() {
                let exp = t["expires_ms"]
                    .as_u64()
                    .map(|ms| {
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                        )
                        .to_string()
                    })
                    .unwrap_or_else(|| "never".into());
                say!(
                    "{:<14} {:<24} {:<8} {:<16} {:<8} {exp}",
                    t["id"].as_str().unwrap_or(""),
                    t["agent_id"].as_str().unwrap_or(""),
                    t["role"].as_str().unwrap_or(""),
                    t["tenant"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or("")
                );
            }
        }
        TokenAction::Revoke { .. } => say!(
            "revoked {} ({} live sockets closed)",
            v["id"].as_str().unwrap_or(""),
            v["closed_sockets"]
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `clove state ...`.
fn state_command(cfg: &Config, action: StateAction) -> Result<ExitCode, String> {
    use clove::store::dump;
    match action {
        StateAction::Check => {
            let report = dump::check(&cfg.store).map_err(|e| e.to_string())?;
            say!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        StateAction::Export { output } => {
            let d = dump::export(&cfg.store).map_err(|e| e.to_string())?;
            let text = serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?;
            match output {
                None => say!("{text}"),
                Some(path) => {
                    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
                    std::fs::write(&tmp, format!("{text}\n"))
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    eprintln!(
                        "exported {} keys, {} agent names, {} persistent agents, {} audit entries to {}",
                        d.keys.len(),
                        d.agent_names.len(),
                        d.agent_specs.len(),
                        d.audit.len(),
                        path.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StateAction::Import { file, replace } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let d = dump::parse(&text, &cfg.store_limits)?;
            let c = dump::import(&cfg.store, &d, replace)?;
            say!(
                "imported into {}: {} keys, {} agent names, {} persistent agents, {} audit entries",
                cfg.store.path.display(),
                c.keys,
                c.agent_names,
                c.agent_specs,
                c.audit_entries
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
