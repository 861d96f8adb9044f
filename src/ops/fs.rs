//! READ and WRITE: file access checked against the caller's path rules after resolution.
//!
//! A path is checked as the kernel will open it: relative paths are taken from the caller's
//! working directory (read from `/proc/<peer pid>/cwd`), `..` and symlinks are resolved, and
//! only then matched against the allow and deny lists. The final component is opened with
//! `O_NOFOLLOW`, so a symlink swapped in after the check is refused rather than followed.
//!
//! Only regular files are read or written. A FIFO without a writer, a FIFO without a reader or
//! a terminal would block the worker in `open` or `read` for as long as the other side likes,
//! and a few such requests would stop the worker pool for every caller; so the type is checked
//! before opening, the open itself is non-blocking (`O_NONBLOCK`, and `O_NOCTTY` so a terminal
//! never becomes the daemon's), and the opened file is checked again in case the path was
//! swapped in between.

use super::Ops;
use crate::kernel::Call;
use crate::kernel::request::{bytes, parse, to_bytes};
use crate::kernel::{Kernel, Responder};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
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
pub fn read(o: &Ops, call: &Call, payload: Vec<u8>, responder: Responder) {
    let k = &*o.kernel;
    responder.reply(&bytes(do_read(
        k,
        o.config.fs_max_read_bytes,
        call,
        &payload,
    )));
}

fn do_read(k: &Kernel, max: u64, call: &Call, payload: &[u8]) -> Result<Vec<u8>, String> {
    let req: ReadReq = parse(payload)?;
    let perms = k.perms(call.caller);
    perms.read_allowed().map_err(|e| deny(k, call, e))?;
    let resolved = resolve_existing(call, &req.path)?;
    perms.may_read(&resolved).map_err(|e| deny(k, call, e))?;
    let before = std::fs::symlink_metadata(&resolved)
        .map_err(|e| format!("cannot open {}: {e}", resolved.display()))?;
    regular_only(&resolved, &before, "read")?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(&resolved)
        .map_err(|e| format!("cannot open {}: {e}", resolved.display()))?;
    let meta = opened_regular(&file, &resolved, "read")?;
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
pub fn write(o: &Ops, call: &Call, payload: Vec<u8>, responder: Responder) {
    let k = &*o.kernel;
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
    if let Ok(before) = std::fs::symlink_metadata(&resolved) {
        regular_only(&resolved, &before, "write")?;
    }
    // Not O_TRUNC: the file is emptied only once it is known to be a regular file.
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create(true)
        .append(append)
        .custom_flags(OPEN_FLAGS)
        .mode(0o644);
    let mut file = opts.open(&resolved).map_err(|e| {
        // A FIFO that appeared after the check, with no reader: O_NONBLOCK makes open fail
        // with ENXIO instead of waiting for one.
        if let Ok(now) = std::fs::symlink_metadata(&resolved)
            && let Err(msg) = regular_only(&resolved, &now, "write")
        {
            return msg;
        }
        format!("cannot open {} for writing: {e}", resolved.display())
    })?;
    opened_regular(&file, &resolved, "write")?;
    if !append {
        file.set_len(0)
            .map_err(|e| format!("cannot truncate {}: {e}", resolved.display()))?;
    }
    file.write_all(&data)
        .map_err(|e| format!("cannot write {}: {e}", resolved.display()))?;
    Ok(to_bytes(&json!({
        "success": true,
        "bytes_written": data.len(),
        "path": resolved,
    })))
}

/// Flags for every open: never follow a final symlink, never wait in `open` (a FIFO's other
/// side, a device), never acquire a controlling terminal.
const OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;

/// What a file type is, for messages.
fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "of an unknown type"
    }
}

/// Refuses anything but a regular file, saying what it is.
fn regular_only(path: &Path, meta: &Metadata, what: &str) -> Result<(), String> {
    if meta.is_file() {
        return Ok(());
    }
    Err(format!(
        "cannot {what} {}: it is {}, not a regular file",
        path.display(),
        kind(meta.file_type())
    ))
}

/// Checks the opened file (the path may have been swapped since it was checked) and makes it
/// blocking again: regular files ignore `O_NONBLOCK` anyway, but nothing should depend on that.
fn opened_regular(file: &File, path: &Path, what: &str) -> Result<Metadata, String> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    regular_only(path, &meta, what)?;
    let flags = fcntl(file, FcntlArg::F_GETFL)
        .map_err(|e| format!("cannot {what} {}: fcntl: {e}", path.display()))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags))
        .map_err(|e| format!("cannot {what} {}: fcntl: {e}", path.display()))?;
    Ok(meta)
}

/// Records a denial (SYSCALL_BLOCKED) and passes the message through.
fn deny(k: &Kernel, call: &Call, msg: String) -> String {
    crate::kernel::access::blocked(k, call, &msg);
    msg
}
