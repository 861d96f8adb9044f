//! Turning a SPAWN request into a checked [`AgentSpec`], and an agent incarnation into a
//! running launcher process.

use super::AgentSpec;
use super::caps::{Creds, reachable_by};
use super::cgroup::{AgentCgroup, Limits};
use super::config::AgentsConfig;
use super::launch::{self, LaunchSpec};
use crate::kernel::perms::Permissions;
use crate::kernel::{CallerId, ipc};
use crate::secrets::is_secret_env;
use serde::Deserialize;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The SPAWN request fields that need the filesystem to check (done on the supervisor thread,
/// never on the reactor).
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub name: String,
    pub script: String,
    pub interpreter: Option<String>,
    pub args: Vec<String>,
    pub cwd: Option<String>,
    /// The spawner's process, for resolving relative paths against its working directory.
    pub caller_pid: i32,
    pub parent_id: CallerId,
    pub sandboxed: bool,
    pub network: bool,
    pub limits: Limits,
    pub restart: RestartFields,
    pub permissions: Permissions,
    pub persist: bool,
}

/// Restart settings as requested.
#[derive(Debug, Clone, Copy)]
pub struct RestartFields {
    pub policy: super::policy::RestartPolicy,
    pub max_restarts: u32,
    pub window_secs: f64,
}

/// `limits.memory` may be bytes or a string with a K/M/G/T suffix.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// Parses `"512M"`, `"1G"`, `"1048576"`, `"64MiB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use bytes or a number with K, M, G or T"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Resolves paths and checks everything that needs the filesystem, and the configured limits
/// on names and arguments. `agent_user` is who a sandboxed agent will run as when that is not
/// the daemon's user (a root daemon): its script and interpreter must be reachable by that
/// user, and an interpreter named without a path is looked up only where that user can run
/// it.
pub fn resolve(
    req: SpawnRequest,
    config: &AgentsConfig,
    max_name_bytes: usize,
    agent_user: Option<Creds>,
) -> Result<AgentSpec, String> {
    let agent_user = agent_user.filter(|_| req.sandboxed);
    ipc::valid_name(&req.name, max_name_bytes)?;
    check_args(&req.args, config)?;
    let caller_cwd = std::fs::read_link(format!("/proc/{}/cwd", req.caller_pid)).ok();
    let base = |p: &str| -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            caller_cwd
                .clone()
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(path)
        }
    };
    if req.script.is_empty() || req.script.contains('\0') {
        return Err("invalid request: field `script` must be a path".into());
    }
    let script = find_script(base(&req.script), agent_user)?;
    let name = req
        .interpreter
        .as_deref()
        .unwrap_or(&config.default_interpreter);
    let interpreter = find_program(name, agent_user)
        .map_err(|e| format!("field `python` (the interpreter): {e}"))?;
    let cwd = match &req.cwd {
        Some(c) => {
            let p = base(c);
            if !p.is_dir() {
                return Err(format!(
                    "invalid working directory `cwd`: {} is not a directory",
                    p.display()
                ));
            }
            p
        }
        None => caller_cwd
            .filter(|p| p.is_dir())
            .or_else(|| script.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    req.limits.validate()?;
    let r = req.restart;
    if !(r.window_secs.is_finite() && r.window_secs > 0.0 && r.window_secs <= 7.0 * 86400.0) {
        return Err(format!(
            "invalid request: field `restart_window`: {} must be seconds in (0, 604800]",
            r.window_secs
        ));
    }
    if r.max_restarts > 100_000 {
        return Err(format!(
            "invalid request: field `max_restarts`: {} is more than 100000",
            r.max_restarts
        ));
    }
    Ok(AgentSpec {
        name: req.name,
        script,
        interpreter,
        args: req.args,
        cwd,
        sandboxed: req.sandboxed,
        network: req.network,
        limits: req.limits,
        restart_policy: r.policy,
        max_restarts: r.max_restarts,
        restart_window_ms: (r.window_secs * 1000.0) as u64,
        persist: req.persist,
        permissions: req.permissions,
        parent_id: req.parent_id,
    })
}

/// The script, canonical, a file, and readable by the agent user when there is one.
fn find_script(script: PathBuf, agent_user: Option<Creds>) -> Result<PathBuf, String> {
    let script = std::fs::canonicalize(&script)
        .map_err(|e| format!("field `script`: {} not found: {e}", script.display()))?;
    if !script.is_file() {
        return Err(format!(
            "field `script`: {} is not a file",
            script.display()
        ));
    }
    if let Some(u) = agent_user
        && !reachable_by(&script, u, 0o4)
    {
        return Err(format!(
            "script {} cannot be read by uid {}, the user sandboxed agents run as \
             (sandbox.agent_user): make it and its directories readable to that user",
            script.display(),
            u.uid
        ));
    }
    Ok(script)
}

/// The SPAWN `args` against `agents.max_args` and `agents.max_args_bytes`, and for NUL bytes.
pub fn check_args(args: &[String], limits: &AgentsConfig) -> Result<(), String> {
    if args.len() > limits.max_args {
        return Err(format!(
            "too many arguments: {} given, at most {} (agents.max_args)",
            args.len(),
            limits.max_args
        ));
    }
    let bytes: usize = args.iter().map(String::len).sum();
    if bytes > limits.max_args_bytes {
        return Err(format!(
            "arguments too large: {bytes} bytes in all, at most {} (agents.max_args_bytes)",
            limits.max_args_bytes
        ));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err("invalid request: an argument contains a NUL byte".into());
    }
    Ok(())
}

/// An interpreter given by path, or by name searched in `$PATH`; with `user`, one that user
/// can run (a root daemon's sandboxed agents run as another user).
pub fn find_program(name: &str, user: Option<Creds>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            && user.is_none_or(|u| reachable_by(p, u, 0o1))
    };
    if name.is_empty() || name.contains('\0') {
        return Err("invalid interpreter name".into());
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if executable(&p) {
            Ok(p)
        } else if let Some(u) = user {
            Err(format!(
                "unknown interpreter {name:?}: not a file that uid {} (sandbox.agent_user) \
                 can run",
                u.uid
            ))
        } else {
            Err(format!(
                "unknown interpreter {name:?}: not an executable file"
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| format!("unknown interpreter {name:?}: not found in PATH"))
}

/// A started launcher and the pipes the supervisor reads.
pub struct Started {
    pub child: Child,
    /// The agent's stdout and stderr.
    pub log: OwnedFd,
    /// The launcher's control socket: its spec goes out by [`release`], its reports come back.
    pub control: std::os::unix::net::UnixStream,
    /// The launch spec, JSON, for [`release`].
    pub spec: Vec<u8>,
}

/// What the supervisor passes to each incarnation.
pub struct Incarnation<'a> {
    pub spec: &'a AgentSpec,
    pub id: CallerId,
    pub socket: &'a Path,
    /// The agents' socket, mounted over `socket` in a sandboxed agent of a root daemon.
    pub agent_socket: Option<&'a Path>,
    pub cgroup: Option<&'a AgentCgroup>,
    pub require: bool,
    /// Limits the cgroup did not take, for rlimits.
    pub rlimit_as: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    /// Kill the launcher (and so the agent) if the supervisor thread dies with the daemon,
    /// even by SIGKILL. Set unless `agents.on_shutdown = "leave"`: an agent that outlived a
    /// crashed daemon would run unsupervised and could reconnect as a plain client.
    pub die_with_daemon: bool,
    /// The user a sandboxed agent becomes (root daemon), see [`LaunchSpec::creds`].
    pub creds: Option<Creds>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    Ok((r, w))
}

/// Starts `clove __launch` for one incarnation of an agent.
pub fn start(inc: &Incarnation) -> Result<Started, String> {
    let spec = inc.spec;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let program_name = spec
        .interpreter
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.interpreter.display().to_string());
    let mut argv = vec![
        program_name,
        spec.script.display().to_string(),
        inc.socket.display().to_string(),
    ];
    argv.extend(spec.args.iter().cloned());
    let launch = LaunchSpec {
        program: spec.interpreter.clone(),
        argv,
        sandboxed: spec.sandboxed,
        network: spec.network,
        hostname: hostname(&spec.name),
        require: inc.require,
        cgroup_procs: inc.cgroup.map(|c| c.procs_files()).unwrap_or_default(),
        rlimit_as: inc.rlimit_as,
        rlimit_nproc: inc.rlimit_nproc,
        die_with: inc.die_with_daemon.then(|| std::process::id() as i32),
        creds: inc.creds,
        agent_socket: inc
            .agent_socket
            .map(|s| (s.to_path_buf(), inc.socket.to_path_buf())),
    };
    let launch_json =
        serde_json::to_vec(&launch).map_err(|e| format!("cannot encode launch spec: {e}"))?;
    let (log_r, log_w) = pipe().map_err(|e| format!("cannot create log pipe: {e}"))?;
    // One socket pair carries the spec to the launcher and its reports back (see
    // `launch::main`). The spec is sent only by [`release`], after the supervisor has
    // recorded the launcher: until then it waits, so nothing it starts can connect to the
    // daemon before the daemon knows whose it is.
    let (control, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("cannot create the launcher's control socket: {e}"))?;
    let log_w2 = log_w
        .try_clone()
        .map_err(|e| format!("cannot duplicate log pipe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(launch::SUBCOMMAND)
        .current_dir(&spec.cwd)
        // The launcher takes its control socket off its stdin (see `launch::main`). With no
        // pre_exec code, std starts it with posix_spawn: no copy of the daemon's page tables
        // and no copy-on-write faults in the reactor afterwards.
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(log_w))
        .stderr(Stdio::from(log_w2))
        // No process group here: the launcher starts a session (and with it a group) of its
        // own, which a group leader could not.
        .env("CLOVE_SOCKET", inc.socket)
        .env("CLOVE_AGENT_ID", inc.id.to_string())
        .env("CLOVE_AGENT_NAME", &spec.name)
        .env_remove("CLOVE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("CLOVE_CONFIG");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_secret_env) {
            cmd.env_remove(&name);
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the agent launcher: {e}"))?;
    drop(cmd);
    Ok(Started {
        child,
        log: log_r,
        control,
        spec: launch_json,
    })
}

/// Sends the launcher its spec, which lets it go on: call once the launcher's pid is
/// recorded. The launcher reads the spec to its end (our half-close), so the write cannot wait
/// for long; a launcher that stopped reading is given a few seconds, then gets nothing (and
/// fails on a truncated spec).
pub fn release(control: &std::os::unix::net::UnixStream, spec: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    control.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut w = control;
    w.write_all(spec)?;
    control.shutdown(std::net::Shutdown::Write)
}

/// A hostname from an agent name: letters, digits and '-' only, at most 63 bytes.
pub fn hostname(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(57)
        .collect();
    format!("clove-{}", h.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("worker:1.a"), "clove-worker-1-a");
        assert!(hostname(&"x".repeat(64)).len() <= 63);
    }

    #[test]
    fn programs() {
        assert!(find_program("sh", None).is_ok());
        assert!(find_program("/bin/sh", None).is_ok());
        assert!(find_program("no-such-interpreter-xyz", None).is_err());
        assert!(find_program("/etc/passwd", None).is_err());
        let nobody = Creds {
            uid: 65534,
            gid: 65534,
        };
        assert!(find_program("/bin/sh", Some(nobody)).is_ok());
    }
}
