//! `clove think PROMPT`: one THINK, the answer printed.

use super::exit::{Failure, Outcome, refused};
use super::{Ctx, print_json, say};
use clap::Args;
use clove::proto::op as ops;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `clove think`'s arguments.
#[derive(Args)]
pub struct ThinkArgs {
    /// The prompt; `-` reads it from standard input.
    pub prompt: String,
    /// A configured model name (default: llm.default).
    #[arg(long)]
    pub model: Option<String>,
    /// System instruction.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Sampling temperature, 0 to 2.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Longest answer, in tokens.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Thinking level (low, medium, high, ...) or a token budget.
    #[arg(long, value_name = "LEVEL")]
    pub thinking_level: Option<String>,
    /// An image file sent with the prompt.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
}

/// `clove think`. Function calls the model asks for are printed as
/// `function_call NAME ARGUMENTS-JSON` lines; exit 1 when THINK fails.
pub fn think(ctx: &Ctx, a: ThinkArgs) -> Outcome {
    let prompt = if a.prompt == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::Usage(format!("cannot read the prompt from stdin: {e}")))?;
        s
    } else {
        a.prompt
    };
    let mut req = json!({"prompt": prompt});
    if let Some(m) = a.model {
        req["model"] = m.into();
    }
    if let Some(s) = a.system {
        req["system_instruction"] = s.into();
    }
    if let Some(t) = a.temperature {
        req["temperature"] = t.into();
    }
    if let Some(n) = a.max_tokens {
        req["max_tokens"] = n.into();
    }
    if let Some(l) = a.thinking_level {
        req["thinking_level"] = match l.parse::<u64>() {
            Ok(n) => n.into(),
            Err(_) => l.into(),
        };
    }
    if let Some(path) = a.image {
        req["image"] = image_field(&path)?;
    }
    let mut c = ctx.connect()?;
    let reply = ctx.call(&mut c, ops::THINK, &req)?;
    let ok = reply["success"].as_bool() == Some(true);
    if ctx.json {
        print_json(&reply);
    } else if ok {
        let content = reply["content"].as_str().unwrap_or("");
        if !content.is_empty() {
            say!("{content}");
        }
        for f in reply["function_calls"].as_array().into_iter().flatten() {
            say!(
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
    Ok(if ok { ExitCode::SUCCESS } else { refused() })
}

/// The THINK `image` field for a file: base64 data plus the type its extension names (or, for
/// unknown extensions, none: the daemon recognises PNG, JPEG, GIF and WebP from the bytes).
fn image_field(path: &Path) -> Result<serde_json::Value, Failure> {
    use base64::Engine;
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read image {}: {e}", path.display())))?;
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
        Some(m) => json!({"data": data, "mime_type": m}),
        None => serde_json::Value::String(data),
    })
}
