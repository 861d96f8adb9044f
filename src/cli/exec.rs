//! `clove exec CMD...`: a command run by the daemon (EXEC), its output printed as it came and
//! its exit code passed on.

use super::exit::{Failure, Outcome};
use super::{Ctx, print_json};
use clap::Args;
use clove::proto::op as ops;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

/// `clove exec`'s arguments.
#[derive(Args)]
pub struct ExecArgs {
    /// Seconds before the command is killed (default: the daemon's exec.default_timeout_secs).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Working directory (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<std::path::PathBuf>,
    /// The command. One argument is shell text (`'squeue | wc -l'`); several are quoted and
    /// joined, so each stays one word (`ls -l 'my dir'`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `word` quoted for `sh` when it needs it.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The shell text EXEC runs for these arguments.
pub fn command_text(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        many => many.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
    }
}

/// `clove exec`: stdout and stderr as the command wrote them; the command's exit code
/// (128 + N for a command killed by signal N). A refusal (permission, timeout, bad `cwd`)
/// is exit 1 with the daemon's reason, after whatever output was captured.
pub fn exec(ctx: &Ctx, a: ExecArgs) -> Outcome {
    let cwd = match a.cwd {
        Some(d) => std::path::absolute(&d)
            .map_err(|e| Failure::Usage(format!("bad --cwd {}: {e}", d.display())))?,
        None => std::env::current_dir()
            .map_err(|e| Failure::Usage(format!("cannot tell the current directory: {e}")))?,
    };
    let mut req = json!({"command": command_text(&a.command), "cwd": cwd});
    if let Some(t) = a.timeout {
        req["timeout"] = t.into();
    }
    let mut c = ctx.connect()?;
    let v = ctx.call(&mut c, ops::EXEC, &req)?;
    if ctx.json {
        print_json(&v);
    } else {
        let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let _ = std::io::stdout()
            .lock()
            .write_all(text("stdout").as_bytes());
        let _ = std::io::stderr()
            .lock()
            .write_all(text("stderr").as_bytes());
        if v["truncated"] == true {
            eprintln!("clove: the output was cut at the daemon's exec.max_output_bytes");
        }
    }
    let code = v["exit_code"].as_i64();
    match (v["error"].as_str(), code) {
        (Some(e), _) => Err(Failure::Refused(e.to_string())),
        (None, Some(c)) if c < 0 => Ok(ExitCode::from((128 - c).clamp(0, 255) as u8)),
        (None, Some(c)) => Ok(ExitCode::from(c.clamp(0, 255) as u8)),
        (None, None) => Err(Failure::Refused("the reply has no exit code".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_argument_is_shell_text_several_are_words() {
        assert_eq!(command_text(&["ls | wc -l".into()]), "ls | wc -l");
        assert_eq!(
            command_text(&["ls".into(), "-l".into(), "my dir".into(), "it's".into()]),
            r"ls -l 'my dir' 'it'\''s'"
        );
        assert_eq!(command_text(&["echo".into(), "".into()]), "echo ''");
    }
}
