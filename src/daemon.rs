//! `clove serve`: assembles the daemon (socket, kernel, pool, reactor, signals), runs it, and
//! cleans up.
//!
//! Startup refuses rather than guesses: a socket path held by a live daemon, a path that is not
//! a socket, or a stale socket owned by someone else all stop the start with a clear message.
//! A lock file beside the socket (`<socket>.lock`, held with `flock` for the daemon's life)
//! closes the race between two daemons starting at once.

use crate::config::Config;
use crate::frontend::Proto;
use crate::frontend::clove::CloveProto;
use crate::kernel::Kernel;
use crate::ops::{Ops, ServiceProbe};
use crate::pool::WorkerPool;
use crate::reactor::config::ServerConfig;
use crate::reactor::listen::{Admission, ListenSocket, Listener};
use crate::reactor::{Reactor, Sink, WAKER};
use crate::router::RouterService;
use crate::router::config::RouterConfig;
use crate::supervisor::Agents;
use mio::{Poll, Waker};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// The bound socket, and what is needed to remove exactly it at exit.
struct BoundSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
    _lock: nix::fcntl::Flock<File>,
}

impl BoundSocket {
    /// Removes the socket file if it is still the one we created.
    fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.dev() == self.dev
            && m.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), DaemonError> {
    ignore_sigpipe();
    raise_fd_limit();
    prepare_state_dir(&config.state_dir)?;
    // The store first: a damaged, newer or locked state file stops the start before the socket
    // is touched.
    let store = crate::store::StateStore::open(
        &config.store,
        config.store_limits,
        config.kernel.audit.max_entries,
    )
    .map_err(|e| DaemonError::Refused(e.to_string()))?;
    let (listener, bound) = bind_socket(&config.server)?;
    // Bound before anything starts, so an unusable explicit address stops the start at once.
    let router_bind = bind_router(&config.router)?;

    let poll = Poll::new().map_err(io_err("cannot create poll"))?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("cannot create waker"))?);
    // Worker results waiting for the reactor (`server.completion_queue`); see `Sink`.
    let (tx, rx) = crossbeam_channel::bounded(config.server.completion_queue);
    let sink = Sink::new(tx, waker.clone());
    let kernel = Arc::new(Kernel::with_store(config.kernel.clone(), store));
    let agents = Arc::new(Agents::new(config.agents.clone(), config.sandbox.clone()));
    let (mut router, router_listener, router_probe) =
        start_router(&config, &kernel, &agents, router_bind)?;
    let ops = Arc::new(start_ops(
        &config,
        &kernel,
        &agents,
        &sink,
        vec![router_probe],
    )?);
    let pool = WorkerPool::start(config.server.workers, config.server.job_queue)
        .map_err(io_err("cannot start worker threads"))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut reactor = Reactor::new(
        poll,
        config.server.clone(),
        ops,
        pool,
        (sink.clone(), rx),
        shutdown.clone(),
    );
    reactor
        .add_listener(clove_listener(listener, &config.server))
        .map_err(io_err("cannot register the socket"))?;
    let router_ready = match (&router, router_listener) {
        (Some(r), Some((l, addr))) => {
            reactor
                .add_listener(router_listener_of(l, r.handle(), &config.router))
                .map_err(io_err("cannot register the router's listener"))?;
            addr.to_string()
        }
        _ => "off".to_string(),
    };
    start_signal_thread(shutdown.clone(), sink)?;
    // Orphaned descendants of agents are re-parented to us (and reaped by the supervisor)
    // instead of lingering under init.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    let paths = crate::supervisor::Paths {
        state_dir: config.state_dir.clone(),
        socket: config.server.socket.clone(),
    };
    let supervisor = crate::supervisor::start(kernel.clone(), agents.clone(), paths)
        .map_err(io_err("cannot start the supervisor thread"))?;
    // Before the reactor accepts anyone: names of agents re-attached, stale copies stopped,
    // persistent agents started again.
    crate::supervisor::persist::restore(&kernel, &agents);
    let (sampler_stop, sampler_rx) = crossbeam_channel::bounded::<()>(0);
    let sampler =
        crate::supervisor::metrics::start_sampler(kernel.clone(), agents.clone(), sampler_rx)
            .map_err(io_err("cannot start the metrics sampler thread"))?;

    announce_ready(&config, &router_ready);
    let result = reactor.run();
    log::info!("shutting down");
    // Swarm workers keep running (they are adopted again by the next daemon).
    if let Some(r) = router.as_mut() {
        r.stop();
    }
    kernel.shutdown();
    let stop = config.agents.on_shutdown == crate::supervisor::config::OnShutdown::Stop;
    crate::supervisor::shutdown(&agents, supervisor, stop);
    drop(sampler_stop);
    let _ = sampler.join();
    // Without the reactor (and its completion queue) replies to late commits are dropped
    // instead of waiting for a reader; then the writer commits what is queued and stops.
    drop(reactor);
    kernel.store.close();
    bound.remove();
    result.map_err(io_err("event loop failed"))
}

/// Logs what the daemon serves and prints the one ready line (`router=ADDRESS` or
/// `router=off`), which scripts and tests wait for.
fn announce_ready(config: &Config, router: &str) {
    log::info!(
        "listening on {} (mode {:o}), router on {router}, state in {}, {} workers",
        config.server.socket.display(),
        config.server.socket_mode,
        config.state_dir.display(),
        config.server.workers
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "clove: ready socket={} router={router} pid={} version={}",
        config.server.socket.display(),
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    let _ = out.flush();
}

/// The Clove socket: every connection a kernel caller, speaking Clove frames.
fn clove_listener(socket: mio::net::UnixListener, server: &ServerConfig) -> Listener {
    let max_frame = server.max_frame_bytes;
    Listener {
        name: "clove",
        socket: ListenSocket::Unix(socket),
        admission: Admission::Caller,
        make: Box::new(move |outbox| Proto::Clove(CloveProto::new(max_frame, outbox))),
        refuse: crate::reactor::clove_refusal,
        // Clove connections are never sent anything they did not ask for.
        max_pending_push: usize::MAX,
        allow_remote: false,
    }
}

/// Starts the services the Clove ops use (THINK, HTTP, EXEC's runner) and hands them, with
/// the kernel and the agents, to the op service.
fn start_ops(
    config: &Config,
    kernel: &Arc<Kernel>,
    agents: &Arc<Agents>,
    sink: &Sink,
    services: Vec<ServiceProbe>,
) -> Result<Ops, DaemonError> {
    let llm = crate::llm::LlmService::start(kernel, config.llm.clone())
        .map_err(io_err("cannot start LLM threads"))?;
    let http = crate::http::HttpService::start(kernel, config.http.clone())
        .map_err(io_err("cannot start HTTP threads"))?;
    let commands = crate::ops::commands::CommandRunner::start(kernel, &config.ops.exec)
        .map_err(io_err("cannot start the command runner thread"))?;
    let probe = sink.clone();
    Ok(Ops {
        kernel: kernel.clone(),
        config: config.ops.clone(),
        agents: agents.clone(),
        llm,
        http,
        commands,
        completion_queue: Box::new(move || (probe.queued(), probe.capacity())),
        services,
    })
}

/// The router's listener as bound at start.
enum RouterBind {
    /// `router.listen = ""`.
    Off,
    /// The built-in default address is held by another program.
    Busy(std::net::SocketAddr),
    Bound(mio::net::TcpListener, std::net::SocketAddr),
}

fn bind_router(cfg: &RouterConfig) -> Result<RouterBind, DaemonError> {
    let Some(listen) = cfg.listen else {
        return Ok(RouterBind::Off);
    };
    let place = TcpPlace {
        key: "router.listen",
        addr: listen.addr,
        explicit: listen.explicit,
    };
    Ok(match bind_tcp(&place)? {
        Some(l) => {
            let addr = l.local_addr().map_err(io_err(format!(
                "cannot use {} (router.listen)",
                listen.addr
            )))?;
            RouterBind::Bound(l, addr)
        }
        None => RouterBind::Busy(listen.addr),
    })
}

type RouterParts = (
    Option<RouterService>,
    Option<(mio::net::TcpListener, std::net::SocketAddr)>,
    ServiceProbe,
);

/// Starts the router when its listener is bound; its probe says what it is doing (or why it
/// does not run) in HELLO's `services.router`.
fn start_router(
    config: &Config,
    kernel: &Arc<Kernel>,
    agents: &Arc<Agents>,
    bind: RouterBind,
) -> Result<RouterParts, DaemonError> {
    let off = |state: &str, reason: String| {
        let v = serde_json::json!({"listen": null, "state": state, "reason": reason});
        ServiceProbe {
            name: "router",
            report: Box::new(move || v.clone()),
        }
    };
    let (listener, addr) = match bind {
        RouterBind::Off => return Ok((None, None, off("off", "router.listen is \"\"".into()))),
        RouterBind::Busy(a) => {
            let why = format!("{a} is in use by another program (router.listen)");
            return Ok((None, None, off("off", why)));
        }
        RouterBind::Bound(l, a) => (l, a),
    };
    let exe = std::env::current_exe().map_err(io_err("cannot find the clove binary"))?;
    let deps = crate::router::RouterDeps {
        kernel: kernel.clone(),
        sandbox: Arc::new(CgroupSandbox(agents.clone())),
        llm: llm_defaults(&config.llm),
        exe,
        addr,
    };
    let service = RouterService::start(config.router.clone(), deps)
        .map_err(io_err("cannot start the router's threads"))?;
    let handle = service.handle();
    let probe = ServiceProbe {
        name: "router",
        report: Box::new(move || handle.report()),
    };
    Ok((Some(service), Some((listener, addr)), probe))
}

/// The router's TCP listener: connections only hold an id (no kernel caller), speak JSON
/// lines, and may have `router.client_queue_bytes` of events waiting.
fn router_listener_of(
    socket: mio::net::TcpListener,
    handle: crate::router::RouterHandle,
    cfg: &RouterConfig,
) -> Listener {
    Listener {
        name: "router",
        socket: ListenSocket::Tcp(socket),
        admission: Admission::IdOnly,
        make: Box::new(move |outbox| {
            Proto::Router(crate::frontend::router::RouterProto::new(
                handle.clone(),
                outbox,
            ))
        }),
        refuse: crate::frontend::router::refusal,
        max_pending_push: cfg.client_queue_bytes,
        allow_remote: cfg.allow_remote,
    }
}

/// The daemon's default OpenAI-compatible model, for workers in `llm` mode.
fn llm_defaults(
    llm: &crate::llm::config::LlmConfig,
) -> crate::router::provider::local::LlmDefaults {
    let m = llm
        .default
        .and_then(|i| llm.models.get(i))
        .filter(|m| m.provider == crate::llm::config::Provider::OpenAi);
    crate::router::provider::local::LlmDefaults {
        base_url: m.map(|m| m.base_url.clone()),
        model: m.map(|m| m.model.clone()),
        api_key: m
            .and_then(|m| m.api_key.as_ref())
            .map(|k| k.expose().to_string()),
    }
}

/// Worker limits through the agents' cgroup machinery (rlimits where cgroups cannot).
struct CgroupSandbox(Arc<Agents>);

impl crate::router::provider::WorkerSandbox for CgroupSandbox {
    fn confine(
        &self,
        leaf: &str,
        l: &crate::router::config::WorkerLimits,
    ) -> Result<crate::router::provider::Confinement, String> {
        let limits = crate::supervisor::cgroup::Limits {
            memory: l.memory,
            max_pids: l.max_pids,
            cpu_quota: l.cpu_quota,
            cpu_period: None,
            cpu_shares: None,
        };
        limits.validate()?;
        let mut c = crate::router::provider::Confinement::default();
        let applied = match self.0.cgroups.get().map(|cg| cg.create(leaf, &limits)) {
            Some(Ok(cg)) => {
                c.procs_files = cg.procs_files();
                c.dirs = cg.dirs.iter().map(|(_, d)| d.clone()).collect();
                cg.applied
            }
            Some(Err(e)) => {
                log::debug!("router: no cgroup for {leaf}: {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut degraded = false;
        for (name, v) in [
            ("memory", l.memory),
            ("max_pids", l.max_pids),
            ("cpu_quota", l.cpu_quota),
        ] {
            let Some(v) = v else { continue };
            let via = if applied.iter().any(|a| a == name) {
                "cgroup"
            } else if name == "memory" {
                c.rlimit_as = Some(v);
                "rlimit"
            } else if name == "max_pids" {
                c.rlimit_nproc = Some(v);
                "rlimit"
            } else {
                "not applied"
            };
            degraded |= via != "cgroup";
            c.report.insert(name.into(), serde_json::json!(via));
        }
        if degraded && self.0.sandbox.require {
            for d in &c.dirs {
                let _ = std::fs::remove_dir(d);
            }
            return Err(
                "sandbox requirement not met: some worker limits cannot be applied \
                        through cgroups on this machine (sandbox.require)"
                    .into(),
            );
        }
        Ok(c)
    }
}

/// Where a TCP listener goes, and who chose the address.
pub struct TcpPlace {
    /// The config key that sets it (`router.listen`), for messages.
    pub key: &'static str,
    pub addr: std::net::SocketAddr,
    /// Set by the user (file or environment) rather than the built-in default.
    pub explicit: bool,
}

/// Binds a TCP listener. A built-in default address that another program holds is not fatal:
/// the daemon runs without that listener and says so (`Ok(None)`). An address the user chose
/// that cannot be bound stops the start, naming the key.
pub fn bind_tcp(place: &TcpPlace) -> Result<Option<mio::net::TcpListener>, DaemonError> {
    match std::net::TcpListener::bind(place.addr) {
        Ok(l) => {
            l.set_nonblocking(true)
                .map_err(io_err(format!("cannot use {} ({})", place.addr, place.key)))?;
            Ok(Some(mio::net::TcpListener::from_std(l)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !place.explicit => {
            log::warn!(
                "{} is in use by another program: running without this listener (set {} to \
                 another address, or \"\" to turn it off)",
                place.addr,
                place.key
            );
            Ok(None)
        }
        Err(e) => Err(DaemonError::Refused(format!(
            "cannot listen on {} ({}): {e}",
            place.addr, place.key
        ))),
    }
}

fn ignore_sigpipe() {
    // A client that disappears mid-write must cost us an EPIPE, never our life. (The Rust
    // runtime already does this; being explicit keeps it true if that ever changes.)
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Raises the soft open-file limit to the hard limit, so thousands of clients fit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

fn prepare_state_dir(dir: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!(
        "cannot create state directory {}",
        dir.display()
    )))?;
    let meta = std::fs::metadata(dir).map_err(io_err(format!(
        "cannot stat state directory {}",
        dir.display()
    )))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(DaemonError::Refused(format!(
            "state directory {} belongs to uid {}, not to this user",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(
            format!("cannot make state directory {} private", dir.display()),
        ))?;
    }
    Ok(())
}

/// Takes the lock beside the socket, checks what is at the socket path, and binds.
fn bind_socket(
    config: &ServerConfig,
) -> Result<(mio::net::UnixListener, BoundSocket), DaemonError> {
    let path = &config.socket;
    let my_uid = nix::unistd::geteuid().as_raw();
    let lock = crate::lockfile::take(path).map_err(|e| match e {
        crate::lockfile::LockError::Unusable(why) => {
            DaemonError::Refused(format!("{why}; choose another socket path"))
        }
        crate::lockfile::LockError::Held { lock, holder } => DaemonError::Refused(format!(
            "another clove daemon{} holds {}; is one already running on {}?",
            holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            lock.display(),
            path.display()
        )),
    })?;

    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(DaemonError::Refused(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(DaemonError::Refused(format!(
                    "another daemon is already answering on {}; stop it first or use --socket",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                if meta.uid() != my_uid {
                    return Err(DaemonError::Refused(format!(
                        "stale socket {} belongs to uid {}; refusing to remove it",
                        path.display(),
                        meta.uid()
                    )));
                }
                log::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io_err(format!(
                    "cannot remove stale socket {}",
                    path.display()
                )))?;
            }
            Err(e) => {
                return Err(DaemonError::Refused(format!(
                    "cannot tell whether {} is in use ({e}); refusing to start",
                    path.display()
                )));
            }
        }
    }
    // Create the socket with no group/other bits from the start, then set the configured mode.
    // SAFETY: umask(2) only swaps the process mask; no other thread has started yet.
    let old = unsafe { libc::umask(0o177) };
    let bound = mio::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err(format!("cannot bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
        .map_err(io_err(format!("cannot set mode of {}", path.display())))?;
    if let Some(gid) = config.socket_gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            DaemonError::Refused(format!(
                "cannot give {} to group {gid}: {e}",
                path.display()
            ))
        })?;
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(io_err(format!("cannot stat {}", path.display())))?;
    Ok((
        listener,
        BoundSocket {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            _lock: lock,
        },
    ))
}

fn start_signal_thread(shutdown: Arc<AtomicBool>, sink: Sink) -> Result<(), DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(io_err("cannot install signal handlers"))?;
    std::thread::Builder::new()
        .name("clove-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    log::info!("SIGHUP received; configuration reload is not supported, ignoring");
                    continue;
                }
                log::info!("signal {sig} received; stopping");
                shutdown.store(true, Ordering::Release);
                sink.wake();
            }
        })
        .map_err(io_err("cannot start signal thread"))?;
    Ok(())
}
