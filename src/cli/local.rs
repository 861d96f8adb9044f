//! The commands that work without a running daemon: `clove serve` (which is the daemon),
//! `clove check-config` and `clove state`.

use super::exit::{Failure, Outcome, refused};
use super::say;
use clap::{Args, Subcommand};
use clove::config::{Config, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

/// `--config` as `clove serve` takes it.
#[derive(Args)]
pub struct ConfigArg {
    /// Config file (default: $CLOVE_CONFIG, ~/.config/clove/clove.toml, /etc/clove/clove.toml,
    /// else built-in defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `clove serve`'s arguments (the socket is the global --socket).
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// State directory, overriding the config file and $CLOVE_STATE_DIR.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `clove state`'s arguments.
#[derive(Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub action: StateAction,
    /// Config file (as for `clove serve`).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// State directory (as for `clove serve`).
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

/// What `clove state` does.
#[derive(Subcommand)]
pub enum StateAction {
    /// Verify the database (SQLite integrity check, every value parses); exit 1 on damage.
    Check,
    /// Write the durable state as JSON (to stdout, or --output FILE).
    Export {
        /// Write to FILE (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Replace the durable state with a JSON dump made by `clove state export`.
    Import {
        /// The dump to import.
        file: PathBuf,
        /// Overwrite a store that is not empty.
        #[arg(long)]
        replace: bool,
    },
}

/// Loads the configuration; an invalid or missing file is a usage error (exit 64).
fn load(config: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, Failure> {
    Config::load(config, overrides).map_err(|e| Failure::Usage(e.to_string()))
}

/// `clove serve`: runs the daemon until SIGTERM or SIGINT. A daemon that cannot start (its
/// socket or store in use, ...) exits 1.
pub fn serve(a: ServeArgs, socket: Option<PathBuf>) -> Outcome {
    let cfg = load(
        a.config.config.as_deref(),
        &Overrides {
            socket,
            state_dir: a.state_dir,
        },
    )?;
    clove::daemon::serve(cfg).map_err(|e| Failure::Refused(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// `clove check-config`: validates the file and prints the settings in effect, as TOML (or
/// JSON with --json). Every problem is reported at once, in file order, exit 64.
pub fn check_config(a: ConfigArg, json: bool) -> Outcome {
    let cfg = load(a.config.as_deref(), &Overrides::default())?;
    let origin = clove::config::config_file(a.config.as_deref());
    let text = clove::config_doc::effective_config(&cfg, origin.as_deref());
    if json {
        let v: toml::Table = toml::from_str(&text)
            .map_err(|e| Failure::Refused(format!("cannot show the configuration: {e}")))?;
        super::print_json(&serde_json::json!({"valid": true, "file": origin, "config": v}));
    } else {
        print!("{text}");
        eprintln!(
            "clove: the configuration is valid ({})",
            origin.map_or("built-in defaults".into(), |p| p.display().to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `clove state ...`.
pub fn state(a: StateArgs) -> Outcome {
    use clove::store::dump;
    let cfg = load(
        a.config.as_deref(),
        &Overrides {
            socket: None,
            state_dir: a.state_dir,
        },
    )?;
    match a.action {
        StateAction::Check => {
            let report = dump::check(&cfg.store).map_err(|e| Failure::Refused(e.to_string()))?;
            say!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                refused()
            })
        }
        StateAction::Export { output } => {
            let d = dump::export(&cfg.store).map_err(|e| Failure::Refused(e.to_string()))?;
            let text =
                serde_json::to_string_pretty(&d).map_err(|e| Failure::Refused(e.to_string()))?;
            match output {
                None => say!("{text}"),
                Some(path) => {
                    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
                    std::fs::write(&tmp, format!("{text}\n"))
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .map_err(|e| {
                            Failure::Usage(format!("cannot write {}: {e}", path.display()))
                        })?;
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
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let d = dump::parse(&text, &cfg.store_limits).map_err(Failure::Usage)?;
            let c = dump::import(&cfg.store, &d, replace).map_err(Failure::Refused)?;
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
