//! The `clove` command line: the daemon (`serve`) and its clients. This is the only place that
//! exits the process.

use clap::{Args, Parser, Subcommand};
use clove::bench::{BenchOp, BenchSpec};
use clove::client::Client;
use clove::config::{self, Config, Overrides};
use clove::kernel::ops;
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
    /// Validate a config file (or the default one) and print the effective settings.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
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
    // Under systemd the journal adds its own timestamps.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format_timestamp(None);
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
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref(), &Overrides::default())
                .map_err(|e| e.to_string())?;
            println!("configuration is valid");
            println!("{cfg:#?}");
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
            println!(
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
                    ops::OPS
                        .iter()
                        .map(|o| o.name.to_lowercase())
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
                println!("{}", serde_json::to_string(&result).unwrap_or_default());
            } else {
                println!("{result}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `clove state ...`.
fn state_command(cfg: &Config, action: StateAction) -> Result<ExitCode, String> {
    use clove::store::{StoreLimits, dump};
    match action {
        StateAction::Check => {
            let report = dump::check(&cfg.store).map_err(|e| e.to_string())?;
            println!("{report}");
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
                None => println!("{text}"),
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
            let d = dump::parse(&text, &StoreLimits::from_config(cfg))?;
            let c = dump::import(&cfg.store, &d, replace)?;
            println!(
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
