//! READ and WRITE: file access checked against the caller's path rules, on the file checked.
//!
//! A path is checked as the kernel will open it: relative paths are taken from the caller's
//! working directory (read from `/proc/<peer pid>/cwd`), `..` and symlinks are resolved (as the
//! user expects: HPC paths such as `/home` are often symlinks), and only then is the canonical
//! path matched against the allow and deny lists. It is then opened once and every later step
//! uses that descriptor (module `open`): its directory is opened following no symlink at all, the
//! kernel's record of where the opened directory and file are must equal the checked path, and
//! a path that changed in between is refused. So a directory swapped for a symlink after the
//! check cannot redirect READ or WRITE elsewhere.
//!
//! What a path cannot show is checked on the opened file (module `special`): a file on a
//! pseudo-filesystem (`/proc`, `/sys`, ...) is served only through a rule naming its directory,
//! the daemon's own `/proc` entries never; a file with more than one hard link only to a caller
//! whose rules reach every path, since its other names are unknown.
//!
//! Only regular files are read or written. A FIFO without a writer, a FIFO without a reader or
//! a terminal would block the worker in `open` or `read` for as long as the other side likes,
//! and a few such requests would stop the worker pool for every caller; so the type is checked
//! before opening, the open itself is non-blocking (`O_NONBLOCK`, and `O_NOCTTY` so a terminal
//! never becomes the daemon's), and the opened file is checked again. The file stays
//! non-blocking and every read is bounded by `fs.max_read_bytes`, so a file that never ends
//! (`/proc/kmsg`, where a rule allows it) cannot hold a worker either.

mod open;
mod special;

use super::Ops;
use crate::kernel::Call;
use crate::kernel::perms::{FsAccess, Permissions};
use crate::kernel::request::{bytes, parse, to_bytes};
use crate::kernel::{Kernel, Responder};
use base64::Engine;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, fstatat};
use open::OpenError;
use serde::Deserialize;
use serde_json::json;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
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
    let checked = Checked {
        k,
        call,
        perms: &perms,
        path: &resolved,
        access: FsAccess::Read,
    };
    let (dir, name) = checked.open_directory()?;
    let mut file = checked.open_file(&dir, name, OFlag::O_RDONLY)?;
    let data = read_bounded(&mut file, &resolved, max)?;
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

/// Reads at most `max` bytes of `file` without ever waiting: the descriptor is non-blocking,
/// so a file that has no data yet and has not ended (`/proc/kmsg`) fails at once instead of
/// holding the worker, and one byte past the limit is asked for so that a file that grew after
/// the stat (or that never ends) is caught.
fn read_bounded(file: &mut File, path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    if len > max {
        return Err(format!(
            "cannot read {}: file is {len} bytes, more than the limit of {max} (fs.max_read_bytes)",
            path.display()
        ));
    }
    let mut data = Vec::with_capacity(len as usize);
    match file.take(max + 1).read_to_end(&mut data) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            return Err(format!(
                "cannot read {}: the file has no more data now and has not ended; reading it would wait, so it is refused",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    if data.len() as u64 > max {
        return Err(format!(
            "cannot read {}: file is larger than the limit of {max} bytes (fs.max_read_bytes)",
            path.display()
        ));
    }
    Ok(data)
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

/// WRITE's `mode`: `true` to append.
fn append_mode(mode: Option<&str>) -> Result<bool, String> {
    match mode {
        None | Some("write") | Some("w") | Some("overwrite") => Ok(false),
        Some("append") | Some("a") => Ok(true),
        Some(other) => Err(format!(
            "invalid mode {other:?}: use \"write\" or \"append\""
        )),
    }
}

/// WRITE's content as bytes, decoded per `encoding`.
fn content_bytes(content: String, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    match encoding {
        None | Some("utf8") | Some("utf-8") | Some("text") => Ok(content.into_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(content.as_bytes())
            .map_err(|e| format!("invalid base64 content: {e}")),
        Some(other) => Err(format!(
            "invalid encoding {other:?}: use \"utf8\" or \"base64\""
        )),
    }
}

fn do_write(k: &Kernel, call: &Call, payload: &[u8]) -> Result<Vec<u8>, String> {
    let req: WriteReq = parse(payload)?;
    let append = append_mode(req.mode.as_deref())?;
    let data = content_bytes(req.content, req.encoding.as_deref())?;
    let perms = k.perms(call.caller);
    perms.write_allowed().map_err(|e| deny(k, call, e))?;
    let resolved = resolve_for_write(call, &req.path)?;
    perms.may_write(&resolved).map_err(|e| deny(k, call, e))?;
    let checked = Checked {
        k,
        call,
        perms: &perms,
        path: &resolved,
        access: FsAccess::Write,
    };
    let (dir, name) = checked.open_directory()?;
    // Not O_TRUNC: the file is emptied only once it is known to be a regular file that this
    // caller may write.
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT;
    if append {
        flags |= OFlag::O_APPEND;
    }
    let mut file = checked.open_file(&dir, name, flags)?;
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

/// Flags for every open of a file: never follow a symlink, never wait (in `open` for a FIFO's
/// other side or a device, in `read` for data), never acquire a controlling terminal, never
/// leak the descriptor into a child.
const OPEN_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// A canonical path that passed the caller's rules, being opened for `access`.
struct Checked<'a> {
    k: &'a Kernel,
    call: &'a Call<'a>,
    perms: &'a Permissions,
    path: &'a Path,
    access: FsAccess,
}

impl Checked<'_> {
    fn verb(&self) -> &'static str {
        match self.access {
            FsAccess::Read => "read",
            FsAccess::Write => "write",
        }
    }

    /// Opens the directory holding the checked path (see [`open::directory`]) and applies the
    /// pseudo-filesystem rules to it before anything in it is opened; returns it and the name.
    fn open_directory(&self) -> Result<(OwnedFd, &OsStr), String> {
        let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Err(format!(
                "cannot {} {}: it is a directory, not a regular file",
                self.verb(),
                self.path.display()
            ));
        };
        let dir = open::directory(parent).map_err(|e| self.open_error(e))?;
        self.special_rules(&dir)?;
        Ok((dir, name))
    }

    /// Opens `name` in `dir` (one component, `O_NOFOLLOW`): refuses anything but a regular file
    /// before opening it, then checks the opened file itself: still at the checked path, a
    /// regular file, on no pseudo-filesystem the rules do not name, and with one link unless
    /// the caller's rules reach every path.
    fn open_file(&self, dir: &OwnedFd, name: &OsStr, flags: OFlag) -> Result<File, String> {
        if let Ok(st) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            self.regular_only(st.st_mode)?;
        }
        let fd = nix::fcntl::openat(
            dir,
            name,
            flags | OPEN_FLAGS,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| {
            // A FIFO that appeared after the check, with no reader: O_NONBLOCK makes open
            // fail with ENXIO instead of waiting for one.
            if let Ok(st) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                && let Err(msg) = self.regular_only(st.st_mode)
            {
                return msg;
            }
            self.open_error(OpenError::Io(e))
        })?;
        open::verify(&fd, self.path).map_err(|e| self.open_error(e))?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", self.path.display()))?;
        self.regular_only(meta.mode())?;
        self.special_rules(&file)?;
        self.one_name_only(&meta)?;
        Ok(file)
    }

    /// Refuses a file on a pseudo-filesystem unless a rule names its directory, and the
    /// daemon's own `/proc` entries always.
    fn special_rules(&self, fd: impl std::os::fd::AsFd) -> Result<(), String> {
        let path = self.path.display();
        let Some(fs) = special::pseudo_filesystem(fd)
            .map_err(|e| format!("cannot {} {path}: fstatfs: {e}", self.verb()))?
        else {
            return Ok(());
        };
        if fs.is_procfs() && special::daemon_own(self.path) {
            return Err(self.deny(format!(
                "permission denied: {path} belongs to the daemon itself; its own /proc entries are never served"
            )));
        }
        if !self.perms.names_explicitly(self.path, self.access) {
            return Err(self.deny(format!(
                "permission denied: {path} is on {}, a pseudo-filesystem; only a {} rule naming its directory (such as \"/proc/**\") reaches it, \"/**\" does not",
                fs.name,
                self.verb()
            )));
        }
        Ok(())
    }

    /// The hard-link rule: another name of this file may be outside the caller's rules, and
    /// there is no way to find a file's other names; so a file with several is served only to
    /// a caller whose rules reach every path.
    fn one_name_only(&self, meta: &Metadata) -> Result<(), String> {
        let links = meta.nlink();
        if links <= 1 || self.perms.reaches_every_path(self.access) {
            return Ok(());
        }
        Err(self.deny(format!(
            "permission denied: {} has {links} links (hard links); a file with more than one name is served only to callers whose {} rules reach every path, since its other names may be outside them",
            self.path.display(),
            self.verb()
        )))
    }

    /// Refuses anything but a regular file, saying what it is.
    fn regular_only(&self, mode: u32) -> Result<(), String> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => return Ok(()),
            libc::S_IFDIR => "a directory",
            libc::S_IFIFO => "a FIFO",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            libc::S_IFSOCK => "a socket",
            libc::S_IFLNK => "a symbolic link",
            _ => "of an unknown type",
        };
        Err(format!(
            "cannot {} {}: it is {kind}, not a regular file",
            self.verb(),
            self.path.display()
        ))
    }

    /// The message for a failed open; a path that changed since the check is recorded as a
    /// blocked call (it is what an attempt to swap a directory for a symlink looks like).
    fn open_error(&self, e: OpenError) -> String {
        let path = self.path.display();
        let verb = self.verb();
        match e {
            OpenError::Changed => self.deny(format!(
                "cannot {verb} {path}: the path changed while it was being opened (a directory on it was renamed or replaced by a symbolic link); refused"
            )),
            OpenError::Io(e) => {
                let e = std::io::Error::from(e);
                match self.access {
                    FsAccess::Read => format!("cannot open {path}: {e}"),
                    FsAccess::Write => format!("cannot open {path} for writing: {e}"),
                }
            }
        }
    }

    fn deny(&self, msg: String) -> String {
        deny(self.k, self.call, msg)
    }
}

/// Records a denial (SYSCALL_BLOCKED) and passes the message through.
fn deny(k: &Kernel, call: &Call, msg: String) -> String {
    crate::kernel::access::blocked(k, call, &msg);
    msg
}
