//! The `[server]` config section: the Unix socket, who may connect, and the reactor's limits
//! (connections, frame size, pending replies per connection and in all, pipelining, slow
//! clients, queues).

use crate::kernel::conns::ConnLimits;
use crate::settings::{positive, secs};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's file name in its default directory.
pub const SOCKET_NAME: &str = "clove.sock";

/// The socket path when none is given: a per-user one, so that the users of one login node
/// never meet on a shared path (the Clove Python SDK's `/tmp/clove.sock` would make the second
/// user's daemon refuse to start, or their clients talk to another user's daemon).
///
/// `$XDG_RUNTIME_DIR/clove.sock` when that is an existing directory (systemd makes it, private
/// to the user), else `clove.sock` in [`private_tmp_dir`]. Clients compute the same path.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
    {
        Some(dir) => dir.join(SOCKET_NAME),
        None => private_tmp_dir().join(SOCKET_NAME),
    }
}

/// `/tmp/clove-UID`: the user's own directory for the socket when there is no
/// `$XDG_RUNTIME_DIR`. `clove serve` creates it `0700` and refuses one that is not a plain
/// directory of this user with that mode (another user may have made it first).
pub fn private_tmp_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/clove-{}", nix::unistd::geteuid()))
}

/// Whether `socket` is in [`private_tmp_dir`] (which the daemon then creates).
pub fn in_private_tmp_dir(socket: &Path) -> bool {
    socket.parent() == Some(private_tmp_dir().as_path())
}

/// `[server]` as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub socket: Option<PathBuf>,
    /// Octal permission bits for the socket file, e.g. "0600" or "0660".
    pub socket_mode: Option<String>,
    /// Group (name or numeric gid) to give the socket file; with mode 0660 this shares the
    /// daemon with a group.
    pub socket_group: Option<String>,
    /// Users besides the daemon's own that may connect (numeric uids).
    pub allowed_uids: Option<Vec<u32>>,
    /// The daemon's state directory (read by the assembly, not by the reactor).
    pub state_dir: Option<PathBuf>,
    pub workers: Option<usize>,
    pub job_queue: Option<usize>,
    pub max_connections: Option<usize>,
    /// Connections one agent may hold (all its processes together).
    pub max_connections_per_caller: Option<usize>,
    /// Connections the plain clients of one other allowed user may hold together.
    pub max_connections_per_uid: Option<usize>,
    /// Connections the processes the daemon started that speak as no agent may hold together.
    pub max_connections_descendants: Option<usize>,
    /// The last slots of `max_connections`, kept for the owner's own processes.
    pub owner_reserved_connections: Option<usize>,
    /// Seconds after which an agent's connection with nothing going on is closed.
    pub agent_idle_timeout_secs: Option<f64>,
    pub max_frame_bytes: Option<u64>,
    pub max_pending_reply_bytes: Option<usize>,
    /// Unsent reply bytes of all connections together.
    pub pending_reply_total_bytes: Option<usize>,
    pub max_pipelined: Option<usize>,
    pub slow_client_timeout_ms: Option<u64>,
    /// Replies produced off the reactor thread waiting for it; a full queue makes the sender
    /// wait (back-pressure), never fails a request.
    pub completion_queue: Option<usize>,
}

/// The validated `[server]` section.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_gid: Option<u32>,
    pub allowed_uids: Vec<u32>,
    pub workers: usize,
    pub job_queue: usize,
    pub max_connections: usize,
    pub max_connections_per_caller: usize,
    pub max_connections_per_uid: usize,
    pub max_connections_descendants: usize,
    pub owner_reserved_connections: usize,
    /// An agent's connection with no request in progress, no reply to write and nothing read
    /// for this long is closed (plain clients' connections are not).
    pub agent_idle_timeout: Duration,
    pub max_frame_bytes: u64,
    pub max_pending_reply_bytes: usize,
    /// Unsent reply bytes of all connections together; see `frontend::OutputBudget`.
    pub pending_reply_total_bytes: usize,
    pub max_pipelined: usize,
    pub slow_client_timeout: Duration,
    pub completion_queue: usize,
}

impl ServerConfig {
    /// The caps the kernel checks when it attributes a new connection.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_connections: self.max_connections,
            owner_reserved: self.owner_reserved_connections,
            per_caller: self.max_connections_per_caller,
            per_uid: self.max_connections_per_uid,
            descendants: self.max_connections_descendants,
        }
    }

    /// Validates `[server]`; `socket` is the path already chosen from flag, environment and
    /// file.
    pub fn from_raw(s: &RawServer, socket: PathBuf, errors: &mut Vec<String>) -> ServerConfig {
        if socket.as_os_str().len() >= 108 {
            errors.push(format!(
                "server.socket: path {} is too long for a Unix socket (max 107 bytes)",
                socket.display()
            ));
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        ServerConfig {
            socket,
            socket_mode: socket_mode(s.socket_mode.as_deref(), errors),
            socket_gid: socket_gid(s.socket_group.as_deref(), errors),
            allowed_uids: s.allowed_uids.clone().unwrap_or_default(),
            workers: positive(
                errors,
                "server.workers",
                s.workers,
                (cores * 2).max(4),
                1024,
            ),
            job_queue: positive(errors, "server.job_queue", s.job_queue, 256, 1 << 20),
            max_connections: positive(
                errors,
                "server.max_connections",
                s.max_connections,
                4096,
                1 << 20,
            ),
            max_connections_per_caller: positive(
                errors,
                "server.max_connections_per_caller",
                s.max_connections_per_caller,
                64,
                1 << 20,
            ),
            max_connections_per_uid: positive(
                errors,
                "server.max_connections_per_uid",
                s.max_connections_per_uid,
                256,
                1 << 20,
            ),
            max_connections_descendants: positive(
                errors,
                "server.max_connections_descendants",
                s.max_connections_descendants,
                256,
                1 << 20,
            ),
            owner_reserved_connections: owner_reserved_connections(s, errors),
            agent_idle_timeout: secs(
                errors,
                "server.agent_idle_timeout_secs",
                s.agent_idle_timeout_secs,
                600.0,
            ),
            max_frame_bytes: max_frame_bytes(s.max_frame_bytes, errors),
            max_pending_reply_bytes: positive(
                errors,
                "server.max_pending_reply_bytes",
                s.max_pending_reply_bytes,
                4 << 20,
                1 << 32,
            ),
            pending_reply_total_bytes: pending_reply_total_bytes(s, errors),
            max_pipelined: positive(
                errors,
                "server.max_pipelined",
                s.max_pipelined,
                128,
                1 << 20,
            ),
            slow_client_timeout: slow_client_timeout(s.slow_client_timeout_ms, errors),
            completion_queue: positive(
                errors,
                "server.completion_queue",
                s.completion_queue,
                4096,
                1 << 20,
            ),
        }
    }
}

/// `server.owner_reserved_connections`: 16 by default; 0 (no reserve) up to one less than
/// `max_connections` (the others must have at least one slot).
fn owner_reserved_connections(s: &RawServer, errors: &mut Vec<String>) -> usize {
    let max = s.max_connections.unwrap_or(4096);
    match s.owner_reserved_connections {
        None => 16.min(max.saturating_sub(1)),
        Some(n) if n < max => n,
        Some(n) => {
            errors.push(format!(
                "server.owner_reserved_connections: {n} must be less than server.max_connections ({max})"
            ));
            0
        }
    }
}

/// The default of `server.pending_reply_total_bytes`. Every connection may hold
/// `max_pending_reply_bytes` (4 MiB) of unsent replies, but 4096 of them would be 16 GiB: the
/// daemon-wide budget is what bounds the memory held for clients that do not read, and a login
/// node is shared, so it is 128 MiB (32 connections at their own cap).
pub const DEFAULT_PENDING_REPLY_TOTAL_BYTES: usize = 128 << 20;

fn pending_reply_total_bytes(s: &RawServer, errors: &mut Vec<String>) -> usize {
    let total = positive(
        errors,
        "server.pending_reply_total_bytes",
        s.pending_reply_total_bytes,
        DEFAULT_PENDING_REPLY_TOTAL_BYTES,
        1 << 40,
    );
    let own = s.max_pending_reply_bytes.unwrap_or(4 << 20);
    if total < own {
        errors.push(format!(
            "server.pending_reply_total_bytes: {total} is less than one connection may hold \
             (server.max_pending_reply_bytes = {own})"
        ));
    }
    total
}

fn socket_mode(text: Option<&str>, errors: &mut Vec<String>) -> u32 {
    let Some(text) = text else { return 0o600 };
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => m,
        Ok(m) if m <= 0o777 => {
            errors.push(format!(
                "server.socket_mode: {text:?} ({m:o}) must give the owner read and write (0600 or wider)"
            ));
            0o600
        }
        _ => {
            errors.push(format!(
                "server.socket_mode: {text:?} is not an octal mode like \"0600\""
            ));
            0o600
        }
    }
}

fn socket_gid(group: Option<&str>, errors: &mut Vec<String>) -> Option<u32> {
    match group {
        None | Some("") => None,
        Some(g) => match lookup_group(g) {
            Some(gid) => Some(gid),
            None => {
                errors.push(format!("server.socket_group: no group named {g:?}"));
                None
            }
        },
    }
}

fn max_frame_bytes(v: Option<u64>, errors: &mut Vec<String>) -> u64 {
    match v {
        None => crate::proto::clove::DEFAULT_MAX_PAYLOAD,
        Some(n) if (64..=(1u64 << 30)).contains(&n) => n,
        Some(n) => {
            errors.push(format!(
                "server.max_frame_bytes: {n} must be between 64 and 1073741824"
            ));
            crate::proto::clove::DEFAULT_MAX_PAYLOAD
        }
    }
}

fn slow_client_timeout(v: Option<u64>, errors: &mut Vec<String>) -> Duration {
    Duration::from_millis(match v {
        None => 10_000,
        Some(n) if (10..=3_600_000).contains(&n) => n,
        Some(n) => {
            errors.push(format!(
                "server.slow_client_timeout_ms: {n} must be between 10 and 3600000"
            ));
            10_000
        }
    })
}

/// Resolves a group name or numeric gid.
fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}
