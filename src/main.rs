//! The `clove` command line: the daemon (`serve`) and its clients. This file declares the
//! command tree and dispatches; each command lives in `src/cli/` (one file per group). This is
//! the only place that exits the process.

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::exit::{self, Failure, Outcome};
use cli::{agents, bench, call, exec, local, relay, status, stop, think, views};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// clove: run and coordinate AI agents on a cluster login node.
///
/// Start the daemon with `clove serve`; talk to it with the other commands. They find it
/// through --socket, then $CLOVE_SOCKET, then the per-user default ($XDG_RUNTIME_DIR/clove.sock,
/// else /tmp/clove-$UID/clove.sock).
#[derive(Parser)]
#[command(name = "clove", version, about, long_about, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Daemon socket: where clients connect, and where `serve` listens (default:
    /// $CLOVE_SOCKET, else $XDG_RUNTIME_DIR/clove.sock, else /tmp/clove-$UID/clove.sock).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON (for programs) instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; CLOVE_LOG=debug for more).
    Serve(local::ServeArgs),
    /// One screen about the daemon: version, uptime, listeners, agents, queues, store,
    /// recent problems.
    Status,
    /// Check that the daemon answers, and how fast.
    Ping,
    /// Send one request and print the reply: `clove call store '{"key":"a","value":1}'`.
    #[command(after_long_help = call::ops_help())]
    Call(call::CallArgs),
    /// Run a command through the daemon (EXEC): its output as it wrote it, its exit code.
    Exec(exec::ExecArgs),
    /// Ask the daemon to shut down cleanly (its owner only), and wait until it has.
    Stop(stop::StopArgs),
    /// List supervised agents as a table (persistent ones and why FAILED ones failed).
    Agents,
    /// Start a supervised agent: `clove spawn worker ./worker.py --restart on-failure`.
    Spawn(agents::SpawnArgs),
    /// Stop an agent (SIGTERM, then SIGKILL after the grace period).
    Kill(agents::KillArgs),
    /// Print an agent's log file; -f follows it until the agent is gone for good.
    Logs(agents::LogsArgs),
    /// The machine's and every agent's CPU and memory.
    Metrics,
    /// The audit log, newest entries last; -f keeps following it.
    Audit(views::AuditArgs),
    /// Ask the model: `clove think "What is 2+2?"` prints the answer.
    Think(think::ThinkArgs),
    /// Load-test the daemon (or any server of the Clove frame protocol) and print figures.
    Bench(bench::BenchArgs),
    /// Check, export or import the durable state of a STOPPED daemon (they refuse while a
    /// daemon holds the store). The store is found like `clove serve` finds it: --config,
    /// --state-dir, then store.path.
    State(local::StateArgs),
    /// Validate a config file (or the default one) and print the settings in effect as TOML.
    CheckConfig(local::ConfigArg),
    /// The ClawNet relay's per-agent tokens, through the running daemon.
    Relay(relay::RelayArgs),
    /// Drive swarms through the Codeswarm router over TCP (providers, launch, list, status,
    /// inject, attach, terminate).
    Swarm(clove::router::cli::SwarmArgs),
    /// The node worker a router provider starts, one per node (reads its mailbox from
    /// CODESWARM_JOB_ID, CODESWARM_NODE_ID, CODESWARM_BASE_DIR).
    Worker(WorkerArgs),
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
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Shell completions into DIR: clove.bash, _clove (zsh) and clove.fish.
    Completions {
        /// Where to write them.
        dir: PathBuf,
    },
    /// The default config file, every key commented with its default, on stdout.
    Config,
}

fn main() -> ExitCode {
    // The agent launcher, the EXEC helper and the log copier run before anything else (no
    // logging, no threads): see clove::supervisor::{launch, enter, logfile}.
    internal_subcommand();
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        let cli = match GenerateCli::try_parse_from(std::env::args_os().skip(1)) {
            Ok(c) => c,
            Err(e) => return usage_error(e),
        };
        return finish(generate(cli.what));
    }
    let cli = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging();
    finish(run(cli))
}

/// `clove __launch`, `__enter` and `__logcopy`, which never return.
fn internal_subcommand() {
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(a) if a == clove::supervisor::launch::SUBCOMMAND => {
            clove::supervisor::launch::main();
        }
        Some(a) if a == clove::supervisor::enter::SUBCOMMAND => {
            clove::supervisor::enter::main();
        }
        Some(a) if a == clove::supervisor::logfile::COPY_SUBCOMMAND => {
            let rest: Vec<String> = args.filter_map(|s| s.into_string().ok()).collect();
            clove::supervisor::logfile::copy_main(&rest);
        }
        _ => {}
    }
}

/// The command tree, with what is computed at run time (the op list of `clove call --help`).
fn cli_command() -> clap::Command {
    Cli::command()
}

/// Parses the command line. Help and version go to stdout (exit 0); a usage error is
/// printed and exits 64, not clap's 2, which means "cannot reach the daemon" here.
fn parse() -> Result<Cli, ExitCode> {
    cli_command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(usage_error)
}

fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(exit::USAGE),
    }
}

/// The exit code of a command, printing why it failed.
fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(f) => {
            eprintln!("clove: {}", f.message());
            ExitCode::from(f.code())
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
    // Warnings and errors are also kept in memory, for `clove status` (see clove::log_ring).
    clove::log_ring::install(b.build());
}

/// Runs one command.
fn run(cli: Cli) -> Outcome {
    let ctx = cli::Ctx {
        socket: clove::config::client_socket(cli.socket.as_deref()),
        json: cli.json,
    };
    match cli.command {
        Command::Serve(a) => local::serve(a, cli.socket),
        Command::Status => status::status(&ctx),
        Command::Ping => call::ping(&ctx),
        Command::Call(a) => call::call(&ctx, a),
        Command::Exec(a) => exec::exec(&ctx, a),
        Command::Stop(a) => stop::stop(&ctx, a),
        Command::Agents => agents::agents(&ctx),
        Command::Spawn(a) => agents::spawn(&ctx, a),
        Command::Kill(a) => agents::kill(&ctx, a),
        Command::Logs(a) => agents::logs(&ctx, a),
        Command::Metrics => views::metrics(&ctx),
        Command::Audit(a) => views::audit(&ctx, a),
        Command::Think(a) => think::think(&ctx, a),
        Command::Bench(a) => bench::bench(&ctx, a),
        Command::State(a) => local::state(a),
        Command::CheckConfig(a) => local::check_config(a, cli.json),
        Command::Relay(a) => relay::relay(&ctx, a),
        Command::Swarm(a) => swarm_command(a, cli.json),
        Command::Worker(a) => worker_command(a),
    }
}

/// `clove generate ...`: what the packages ship, generated from the clap definitions and the
/// config defaults so that it cannot drift from the program.
fn generate(what: Generate) -> Outcome {
    use clap_complete::Shell;
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(cli_command(), &dir))
                .map_err(|e| {
                    Failure::Usage(format!("cannot write man pages to {}: {e}", dir.display()))
                })?;
        }
        Generate::Completions { dir } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", dir.display())))?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cli_command(), "clove", &dir).map_err(
                    |e| Failure::Usage(format!("cannot write {shell} completions: {e}")),
                )?;
            }
        }
        Generate::Config => {
            let text =
                clove::config_doc::default_config().map_err(|e| Failure::Refused(e.to_string()))?;
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `clove worker`'s options.
#[derive(clap::Args)]
struct WorkerArgs {
    /// Worker settings (default: $CLOVE_WORKER_SETTINGS; without either, the mock worker).
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// What the Slurm provider runs on the cluster side (none: a node's worker).
    #[command(subcommand)]
    part: Option<WorkerPart>,
}

/// The cluster-side helpers of the Slurm provider (each reads its data from files or stdin).
#[derive(clap::Subcommand)]
enum WorkerPart {
    /// One Slurm task of a swarm's job: its node's worker (node id from SLURM_PROCID).
    SlurmTask {
        /// The launch directory (task.json, worker.json, agent files).
        launch_dir: PathBuf,
    },
    /// Appends standard input to FILE in one write (an inbox line sent over ssh).
    Append { file: PathBuf },
    /// Writes a launch's files (JSON on standard input) under DIR.
    Unpack { dir: PathBuf },
    /// Follows outboxes under the workspace DIR as told on stdin; records go to stdout.
    Follow {
        dir: PathBuf,
        #[arg(long, default_value_t = 50)]
        poll_busy_ms: u64,
        #[arg(long, default_value_t = 2000)]
        poll_idle_max_ms: u64,
        #[arg(long, default_value_t = 4 << 20)]
        max_record_bytes: usize,
    },
}

/// `clove swarm ...`: a router client over TCP. The router saying no is exit 1; a router
/// that cannot be reached (or answers nothing usable) is exit 2.
fn swarm_command(args: clove::router::cli::SwarmArgs, json: bool) -> Outcome {
    clove::router::cli::run(args, json)
        .map(ExitCode::from)
        .map_err(Failure::Unreachable)
}

/// `clove worker`: one node's worker, until its inbox says `shutdown` (or one of the Slurm
/// provider's cluster-side helpers).
fn worker_command(a: WorkerArgs) -> Outcome {
    use clove::router::worker::task;
    match a.part {
        None => clove::router::worker::run(a.settings).map_err(Failure::Refused)?,
        Some(WorkerPart::SlurmTask { launch_dir }) => {
            let code = task::slurm_task(&launch_dir).map_err(Failure::Refused)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Some(WorkerPart::Append { file }) => task::append_stdin(&file).map_err(Failure::Refused)?,
        Some(WorkerPart::Unpack { dir }) => task::unpack_stdin(&dir).map_err(Failure::Refused)?,
        Some(WorkerPart::Follow {
            dir,
            poll_busy_ms,
            poll_idle_max_ms,
            max_record_bytes,
        }) => {
            let cfg = clove::router::follow::FollowConfig {
                poll_busy: std::time::Duration::from_millis(poll_busy_ms.max(5)),
                poll_idle_max: std::time::Duration::from_millis(poll_idle_max_ms.max(10)),
                max_record_bytes,
            };
            clove::router::remote_follow::serve(&dir, cfg).map_err(Failure::Refused)?
        }
    }
    Ok(ExitCode::SUCCESS)
}
