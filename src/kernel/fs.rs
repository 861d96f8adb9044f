//! READ and WRITE: file access checked against the caller's path rules after resolution.
//!
//! A path is checked as the kernel will open it: relative paths are taken from the caller's
//! working directory (read from `/proc/<peer pid>/cwd`), `..` and symlinks are resolved, and
//! only then matched against the allow and deny lists. The final component is opened with
//! `O_NOFOLLOW`, so a symlink swapped in after the check is refused rather than followed.

use super::Call;
use super::request::{bytes, parse, to_bytes};
use super::{Kernel, Responder};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The caller's working directory, for relative paths.
pub fn caller_cwd(call: &Call) -> Option<PathBuf> {
    if call.peer.pid <= 0 {
        return None;
    }
    std::fs::read_link(format!("/proc/{}/cwd", call.peer.pid)).ok()
}

/// Makes `path` absolute against the caller's working directory.
fn absolute(call: &Call, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("invalid path: empty".into());
    }
    if path.contains('\0') {
        return Err("invalid path: contains a NUL byte".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match caller_cwd(call) {
        Some(cwd) => Ok(cwd.join(p)),
        None => Err(format!(
            "relative path {path:?} but the caller's working directory is unknown; use an absolute path"
        )),
    }
}

/// Resolves a path for reading: it must exist; symlinks and `..` are resolved.
pub fn resolve_existing(call: &Call, path: &str) -> Result<PathBuf, String> {
    let abs = absolute(call, path)?;
    std::fs::canonicalize(&abs).map_err(|e| format!("cannot open {}: {e}", abs.display()))
}

/// Resolves a path for writing: an existing file is resolved fully; a new file's parent
/// directory is resolved and the file name appended.
pub fn resolve_for_write(call: &Call, path: &str) -> Result<PathBuf, String> {
    let abs = absolute(call, path)?;
    if std::fs::symlink_metadata(&abs).is_ok() {
        return std::fs::canonicalize(&abs)
            .map_err(|e| format!("cannot resolve {}: {e}", abs.display()));
    }
    let name = match abs.components().next_back() {
        Some(Component::Normal(n)) => n.to_owned(),
        _ => return Err(format!("invalid path {}: no file name", abs.display())),
    };
    let parent = abs
        .parent()
        .ok_or_else(|| format!("invalid path {}: no parent directory", abs.display()))?;
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| format!("cannot write {}: parent directory: {e}", abs.display()))?;
    Ok(parent.join(name))
}

#[derive(Deserialize)]
struct ReadReq {
    path: String,
}

/// READ `{path}` → `{success, content, size, encoding?}`.
pub fn read(k: &Kernel, call: &Call, payload: Vec<u8>, responder: Responder) {
    responder.reply(&bytes(do_read(k, call, &payload)));
}

fn do_read(k: &Kernel, call: &Call, payload: &[u8]) -> Result<Vec<u8>, String> {
    let req: ReadReq = parse(payload)?;
    let perms = k.perms(call.caller);
    perms.read_allowed().map_err(|e| deny(k, call, e))?;
    let resolved = resolve_existing(call, &req.path)?;
    perms.may_read(&resolved).map_err(|e| deny(k, call, e))?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&resolved)
        .map_err(|e| format!("cannot open {}: {e}", resolved.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", resolved.display()))?;
    if meta.is_dir() {
        return Err(format!(
            "cannot read {}: is a directory",
            resolved.display()
        ));
    }
    let max = k.config.fs_max_read_bytes;
    if meta.len() > max {
        return Err(format!(
            "cannot read {}: file is {} bytes, more than the limit of {max} (fs.max_read_bytes)",
            resolved.display(),
            meta.len()
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // Read one byte past the limit so a file that grew after the stat is still caught.
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {}: {e}", resolved.display()))?;
    if data.len() as u64 > max {
        return Err(format!(
            "cannot read {}: file is larger than the limit of {max} bytes (fs.max_read_bytes)",
            resolved.display()
        ));
    }
    let size = data.len();
    Ok(match String::from_utf8(data) {
        Ok(text) => to_bytes(&json!({
            "success": true, "content": text, "size": size, "path": resolved,
        })),
        Err(e) => to_bytes(&json!({
            "success": true,
            "content": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            "encoding": "base64",
            "size": size,
            "path": resolved,
        })),
    })
}

#[derive(Deserialize)]
struct WriteReq {
    path: String,
    content: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

/// WRITE `{path, content, mode?: "write"|"append", encoding?: "utf8"|"base64"}` →
/// `{success, bytes_written}`.
pub fn write(k: &Kernel, call: &Call, payload: Vec<u8>, responder: Responder) {
    responder.reply(&bytes(do_write(k, call, &payload)));
}

fn do_write(k: &Kernel, call: &Call, payload: &[u8]) -> Result<Vec<u8>, String> {
    let req: WriteReq = parse(payload)?;
    let append = match req.mode.as_deref() {
        None | Some("write") | Some("w") | Some("overwrite") => false,
        Some("append") | Some("a") => true,
        Some(other) => {
            return Err(format!(
                "invalid mode {other:?}: use \"write\" or \"append\""
            ));
        }
    };
    let data = match req.encoding.as_deref() {
        None | Some("utf8") | Some("utf-8") | Some("text") => req.content.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(req.content.as_bytes())
            .map_err(|e| format!("invalid base64 content: {e}"))?,
        Some(other) => {
            return Err(format!(
                "invalid encoding {other:?}: use \"utf8\" or \"base64\""
            ));
        }
    };
    let perms = k.perms(call.caller);
    perms.write_allowed().map_err(|e| deny(k, call, e))?;
    let resolved = resolve_for_write(call, &req.path)?;
    perms.may_write(&resolved).map_err(|e| deny(k, call, e))?;
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644);
    if append {
        opts.append(true);
    } else {
        opts.truncate(true);
    }
    let mut file = opts
        .open(&resolved)
        .map_err(|e| format!("cannot open {} for writing: {e}", resolved.display()))?;
    file.write_all(&data)
        .map_err(|e| format!("cannot write {}: {e}", resolved.display()))?;
    Ok(to_bytes(&json!({
        "success": true,
        "bytes_written": data.len(),
        "path": resolved,
    })))
}

/// Records a denial (SYSCALL_BLOCKED) and passes the message through.
fn deny(k: &Kernel, call: &Call, msg: String) -> String {
    super::access::blocked(k, call, &msg);
    msg
}
