//! `clove relay token create|list|revoke` and `clove relay rotate-key`: the ClawNet relay's
//! per-agent tokens and its credentials key, through the running daemon (SERVICE_ADMIN; needs
//! the manage right, which the user's own clients have).

use super::exit::{Failure, Outcome};
use super::{Ctx, say};
use clap::{Args, Subcommand};
use clove::proto::op;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Args)]
pub struct RelayArgs {
    #[command(subcommand)]
    action: RelayAction,
}

#[derive(Subcommand)]
enum RelayAction {
    /// Tokens: `create --agent ID --role worker|master|warden [--tenant T] [--expires 30d]`,
    /// `list`, `revoke ID`.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Re-encrypt every stored credential under a new master key, crash-safely (an
    /// interrupted rotation is finished when the daemon starts again).
    RotateKey,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token bound to one agent id, role and tenant; it is printed once.
    Create {
        /// The agent id the token speaks for (a handshake claiming another is refused).
        #[arg(long, value_name = "ID")]
        agent: String,
        /// The role it may claim.
        #[arg(long, default_value = "worker", value_parser = ["worker", "master", "warden"])]
        role: String,
        /// Its tenant (default: `default`).
        #[arg(long, value_name = "T")]
        tenant: Option<String>,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id (or the token text itself); its live sockets are closed.
    Revoke {
        /// The token's id, as `list` shows it.
        id: String,
    },
}

/// `clove relay ...`.
pub fn relay(ctx: &Ctx, args: RelayArgs) -> Outcome {
    let action = match args.action {
        RelayAction::Token { action } => action,
        RelayAction::RotateKey => return rotate_key(ctx),
    };
    let req = request(&action)?;
    let v = ctx.ok_once(op::SERVICE_ADMIN, &req)?;
    if ctx.json {
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    match action {
        TokenAction::Create { .. } => {
            say!("{}", v["token"].as_str().unwrap_or(""));
            eprintln!(
                "token {} for agent {} (role {}, tenant {}); shown once, keep it secret",
                text(&v["id"]),
                text(&v["agent_id"]),
                text(&v["role"]),
                text(&v["tenant"])
            );
        }
        TokenAction::List => list(&v),
        TokenAction::Revoke { .. } => say!(
            "revoked {} ({} live sockets closed)",
            text(&v["id"]),
            v["closed_sockets"]
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `clove relay rotate-key`.
fn rotate_key(ctx: &Ctx) -> Outcome {
    let v = ctx.ok_once(
        op::SERVICE_ADMIN,
        &json!({"service": "relay", "action": "rotate_key"}),
    )?;
    if ctx.json {
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        say!(
            "credentials key rotated: {} values re-encrypted, key id {}",
            v["credentials"],
            text(&v["kid"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn request(action: &TokenAction) -> Result<Value, Failure> {
    Ok(match action {
        TokenAction::Create {
            agent,
            role,
            tenant,
            expires,
        } => {
            let expires_secs = match expires {
                Some(e) => Some(
                    humantime::parse_duration(e)
                        .map_err(|err| {
                            Failure::Usage(format!("--expires {e}: {err} (e.g. 30d, 12h)"))
                        })?
                        .as_secs()
                        .max(1),
                ),
                None => None,
            };
            json!({"service": "relay", "action": "token_create", "agent_id": agent,
                "role": role, "tenant": tenant, "expires_secs": expires_secs})
        }
        TokenAction::List => json!({"service": "relay", "action": "token_list"}),
        TokenAction::Revoke { id } => {
            json!({"service": "relay", "action": "token_revoke", "id": id})
        }
    })
}

fn list(v: &Value) {
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
            text(&t["id"]),
            text(&t["agent_id"]),
            text(&t["role"]),
            text(&t["tenant"]),
            text(&t["state"])
        );
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
