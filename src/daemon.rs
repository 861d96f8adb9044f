//! `clove serve`: assembles the daemon (socket, kernel, pool, reactor, signals), runs it, and
//! cleans up.
//!
//! Startup refuses rather than guesses: a socket path held by a live daemon, a path that is not
//! a socket, or a stale socket owned by someone else all stop the start with a clear message.
//! A lock file beside the socket (`<socket>.lock`, held with `flock` for the daemon's life)
//! closes the race between two daemons starting at once. The socket is claimed (locked and
//! checked) before anything is created: a daemon that cannot run leaves no state directory or
//! store behind. A clean stop removes the socket and both lock files.

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
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// The lock beside the Clove socket (the agents' socket lives in the state directory,
    /// which the state store's lock already keeps to one daemon).
    _lock: Option<crate::lockfile::Lock>,
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
pub fn serve(mut config: Config) -> Result<(), DaemonError> {
    // First, while this is the only thread: what systemd passed (see crate::systemd).
    let systemd =
        crate::systemd::Handoff::take().map_err(|e| DaemonError::Refused(e.to_string()))?;
    if let Some(s) = &systemd.socket
        && s.path != config.server.socket
    {
        log::info!(
            "serving the socket systemd passed, {}, instead of {}",
            s.path.display(),
            config.server.socket.display()
        );
        config.server.socket = s.path.clone();
    }
    ignore_sigpipe();
    raise_fd_limit();
    return_large_buffers_to_the_system();
    // The socket first: a path another daemon holds stops the start before anything is made.
    let claim = match systemd.socket {
        Some(_) => None,
        None => Some(claim_socket(&config.server)?),
    };
    prepare_state_dir(&config.state_dir)?;
    // The store first: a damaged, newer or locked state file stops the start before the socket
    // is touched.
    let store = crate::store::StateStore::open(
        &config.store,
        config.store_limits,
        config.kernel.audit.max_entries,
    )
    .map_err(|e| DaemonError::Refused(e.to_string()))?;
    // A socket passed by systemd is systemd's: no lock, no mode change, not removed at exit.
    let (listener, bound) = match (systemd.socket, claim) {
        (Some(s), _) => (mio::net::UnixListener::from_std(s.listener), None),
        (None, Some(lock)) => bind_socket(&config.server, lock).map(|(l, b)| (l, Some(b)))?,
        (None, None) => {
            return Err(DaemonError::Refused(
                "internal error: the socket was not claimed".into(),
            ));
        }
    };
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
    // Unsent reply bytes of all connections, kept by the reactor, shown by HELLO.
    let pending_replies = Arc::new(AtomicUsize::new(0));
    let (mut router, router_listener, router_probe) =
        start_router(&config, &kernel, &agents, router_bind)?;
    let relay = start_relay(&config, &kernel)?;
    if let Some((r, _)) = &relay {
        r.set_reply_budget(
            pending_replies.clone(),
            config.server.pending_reply_total_bytes,
        );
    }
    let mut ops = start_ops(&config, &kernel, &agents, &sink, pending_replies.clone())?;
    ops.services.push(router_probe);
    if let Some((r, _)) = &relay {
        let probe = r.clone();
        ops.services.push(crate::ops::ServiceProbe {
            name: "relay",
            report: Box::new(move || probe.report()),
        });
        let admin = r.clone();
        ops.admin.push(crate::ops::ServiceAdmin {
            name: "relay",
            handle: Box::new(move |req, done| admin.admin(req, done)),
        });
    }
    let ops = Arc::new(ops);
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
        pending_replies,
    );
    reactor
        .add_listener(clove_listener(listener, &config.server))
        .map_err(io_err("cannot register the socket"))?;
    let agent_socket = add_agent_socket(&config, &mut reactor)?;
    let mut relay_addr = None;
    let mut relay_thread = None;
    if let Some((r, l)) = relay {
        let l = relay_listener(&r, l);
        relay_addr = l.local_addr();
        reactor
            .add_listener(l)
            .map_err(io_err("cannot register the relay listener"))?;
        relay_thread = Some((
            r.clone(),
            r.start_timers()
                .map_err(io_err("cannot start the relay thread"))?,
        ));
    }
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
        agent_socket: agent_socket.as_ref().map(|b| b.path.clone()),
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

    let relay_ready = relay_addr.map(|a| a.to_string());
    announce_ready(&config, &router_ready, relay_ready.as_deref());
    if let Some(n) = &systemd.notifier {
        let (a, socket) = (agents.clone(), config.server.socket.clone());
        let status = move || {
            let agents = a.table.lock().live_count();
            format!("listening on {}; {agents} agents", socket.display())
        };
        let initial = status();
        n.ready(&initial);
        reactor.set_heartbeat(crate::systemd::Heartbeat::new(
            n.clone(),
            systemd.watchdog,
            initial,
            Box::new(status),
        ));
    }
    let result = reactor.run();
    if let Some(n) = &systemd.notifier {
        n.stopping();
    }
    log::info!("shutting down");
    if let Some((r, thread)) = relay_thread {
        r.stop();
        let _ = thread.join();
    }
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
    for b in [bound, agent_socket].into_iter().flatten() {
        b.remove();
    }
    result.map_err(io_err("event loop failed"))
}

/// Logs what the daemon serves and prints the one ready line (`router=ADDRESS` or
/// `router=off`), which scripts and tests wait for.
fn announce_ready(config: &Config, router: &str, relay: Option<&str>) {
    log::info!(
        "listening on {} (mode {:o}), router on {router}, relay on {}, state in {}, {} workers",
        config.server.socket.display(),
        config.server.socket_mode,
        relay.unwrap_or("off"),
        config.state_dir.display(),
        config.server.workers
    );
    let relay = relay.map(|a| format!(" relay={a}")).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "clove: ready socket={} router={router} pid={} version={}{relay}",
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
        tls: None,
    }
}

/// The relay service and its bound listener, unless it is off or its default port is taken.
fn start_relay(
    config: &Config,
    kernel: &Arc<Kernel>,
) -> Result<Option<(Arc<crate::relay::Relay>, mio::net::TcpListener)>, DaemonError> {
    let Some(addr) = config.relay.listen else {
        return Ok(None);
    };
    let place = TcpPlace {
        key: "relay.listen",
        addr,
        explicit: config.relay.listen_explicit,
    };
    let Some(listener) = bind_tcp(&place)? else {
        return Ok(None);
    };
    let relay = crate::relay::Relay::new(config.relay.clone(), kernel.clone())
        .map_err(DaemonError::Refused)?;
    Ok(Some((relay, listener)))
}

/// The relay listener: HTTP, Engine.IO and Socket.IO; each connection only gets an id (the
/// Socket.IO handshake carries its token). Peers on other hosts only when it listens on a
/// non-loopback address (which the config allows only with TLS or an explicit opt-out).
fn relay_listener(relay: &Arc<crate::relay::Relay>, socket: mio::net::TcpListener) -> Listener {
    let allow_remote = socket
        .local_addr()
        .map(|a| !a.ip().is_loopback())
        .unwrap_or(false);
    let r = relay.clone();
    Listener {
        name: "relay",
        socket: ListenSocket::Tcp(socket),
        admission: Admission::IdOnly,
        make: Box::new(move |outbox| {
            Proto::Relay(Box::new(crate::frontend::relay::RelayProto::new(
                r.clone(),
                outbox,
            )))
        }),
        refuse: crate::frontend::relay::refusal,
        max_pending_push: relay.cfg.max_pending_output,
        allow_remote,
        tls: relay.cfg.tls.as_ref().map(|t| t.config.clone()),
    }
}

/// Starts the services the Clove ops use (THINK, HTTP, EXEC's runner) and hands them, with
/// the kernel and the agents, to the op service.
fn start_ops(
    config: &Config,
    kernel: &Arc<Kernel>,
    agents: &Arc<Agents>,
    sink: &Sink,
    pending_replies: Arc<AtomicUsize>,
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
        pending_replies: Box::new({
            let budget = config.server.pending_reply_total_bytes;
            move || (pending_replies.load(Ordering::Relaxed), budget)
        }),
        services: vec![daemon_probe(config)],
        admin: Vec::new(),
    })
}

/// HELLO's `services.daemon`, for `clove status`: the process, its listeners and state
/// directory, and its recent warnings and errors (see [`crate::log_ring`]). Reads memory only.
fn daemon_probe(config: &Config) -> crate::ops::ServiceProbe {
    let started = std::time::Instant::now();
    let started_at = crate::clock::iso8601(std::time::SystemTime::now());
    let mut listeners = vec![serde_json::json!({
        "name": "clove",
        "address": config.server.socket,
    })];
    if config.sandbox.agent_creds.is_some() {
        listeners.push(serde_json::json!({
            "name": "agents",
            "address": config.state_dir.join(AGENT_SOCKET),
        }));
    }
    let state_dir = config.state_dir.clone();
    crate::ops::ServiceProbe {
        name: "daemon",
        report: Box::new(move || {
            serde_json::json!({
                "pid": std::process::id(),
                "started_at": started_at,
                "uptime_ms": started.elapsed().as_millis() as u64,
                "state_dir": state_dir,
                "listeners": listeners,
                "recent_problems": crate::log_ring::recent(),
            })
        }),
    }
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
        tls: None,
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

/// Large blocks (above 256 KiB: big replies, requests and message bodies) get their own
/// mappings, so their memory goes back to the system as soon as they are freed, and the RSS
/// follows what the budgets count (`server.pending_reply_total_bytes`,
/// `limits.mailboxes_total_bytes`). glibc's default raises this threshold to the size of the
/// largest block freed so far (up to 32 MiB): after the first multi-MiB reply, such buffers
/// come from the heap, and what they leave there stays resident (300 clients that do not read
/// held 128 MiB of replies in a 177 MiB daemon; with this, 150 MiB). Small blocks, the hot
/// path, are unaffected.
fn return_large_buffers_to_the_system() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) != 1 {
            log::debug!("mallopt(M_MMAP_THRESHOLD) refused; large buffers stay in the heap");
        }
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

/// Makes the per-user socket directory `/tmp/clove-UID` (mode 0700), or checks the one that
/// is there: a plain directory of this user that nobody else can use. /tmp is shared, so
/// another user could have made it first to receive our socket; then we refuse.
fn private_socket_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(format!("cannot create {}", dir.display()))(e)),
    }
    let meta =
        std::fs::symlink_metadata(dir).map_err(io_err(format!("cannot stat {}", dir.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(DaemonError::Refused(format!(
            "{} is not a private directory of this user (it is {}, uid {}, mode {:o});              another user may have made it: remove it, or choose a socket with --socket",
            dir.display(),
            if meta.file_type().is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Claims the socket path: makes its private directory when it is the default one, takes
/// the lock beside it, and checks what is at the path (removing a stale socket of ours).
fn claim_socket(config: &ServerConfig) -> Result<crate::lockfile::Lock, DaemonError> {
    let path = &config.socket;
    if crate::reactor::config::in_private_tmp_dir(path)
        && let Some(dir) = path.parent()
    {
        private_socket_dir(dir)?;
    }
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
    Ok(lock)
}

/// Binds the claimed socket path (the claim's lock is held for the daemon's life).
fn bind_socket(
    config: &ServerConfig,
    lock: crate::lockfile::Lock,
) -> Result<(mio::net::UnixListener, BoundSocket), DaemonError> {
    let path = &config.socket;
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
            _lock: Some(lock),
        },
    ))
}

/// Binds and listens on the agents' socket when sandboxed agents run as another user (a root
/// daemon).
fn add_agent_socket(
    config: &Config,
    reactor: &mut Reactor,
) -> Result<Option<BoundSocket>, DaemonError> {
    let Some(creds) = config.sandbox.agent_creds else {
        return Ok(None);
    };
    let (listener, bound) = bind_agent_socket(&config.state_dir, &config.server.socket, creds)?;
    let mut agents = clove_listener(listener, &config.server);
    agents.name = "agents";
    agents.admission = Admission::AgentsOnly;
    reactor
        .add_listener(agents)
        .map_err(io_err("cannot register the agents' socket"))?;
    Ok(Some(bound))
}

/// Where the agents' socket is bound: in the private state directory, where no process
/// outside an agent's sandbox can reach it.
const AGENT_SOCKET: &str = "agent.sock";

/// Binds the agents' socket of a root daemon whose sandboxed agents run as `agent_user`.
///
/// Those agents cannot connect to the Clove socket (it is the daemon's, mode 0600), and must
/// not be given it. So the daemon binds a second socket, owned by the agent user, in its
/// private state directory: nothing outside can reach it, and each sandboxed agent's
/// launcher mounts it over the Clove socket's path inside the agent's own mount namespace
/// (see `supervisor::launch`), where the agent (and its SDK) find it under the usual name.
/// Only processes of live agents are let in through it (see the reactor). `socket` is the
/// Clove socket, whose directories the agent user must be able to search.
fn bind_agent_socket(
    state_dir: &Path,
    socket: &Path,
    agent_user: crate::supervisor::caps::Creds,
) -> Result<(mio::net::UnixListener, BoundSocket), DaemonError> {
    let path = state_dir.join(AGENT_SOCKET);
    if path.as_os_str().len() >= 108 {
        return Err(DaemonError::Refused(format!(
            "the agents' socket {} would be too long for a Unix socket (max 107 bytes); \
             choose a shorter state directory",
            path.display()
        )));
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            return Err(DaemonError::Refused(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        std::fs::remove_file(&path).map_err(io_err(format!(
            "cannot remove the old agents' socket {}",
            path.display()
        )))?;
    }
    // SAFETY: umask(2) only swaps the process mask; no other thread has started yet.
    let old = unsafe { libc::umask(0o177) };
    let bound = mio::net::UnixListener::bind(&path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err(format!("cannot bind {}", path.display())))?;
    nix::unistd::chown(
        &path,
        Some(nix::unistd::Uid::from_raw(agent_user.uid)),
        Some(nix::unistd::Gid::from_raw(agent_user.gid)),
    )
    .map_err(|e| {
        DaemonError::Refused(format!(
            "cannot give {} to the agent user {}: {e}",
            path.display(),
            agent_user.uid
        ))
    })?;
    let meta = std::fs::symlink_metadata(&path)
        .map_err(io_err(format!("cannot stat {}", path.display())))?;
    if let Some(dir) = socket.parent()
        && !crate::supervisor::caps::reachable_by(&dir.join("."), agent_user, 0o1)
    {
        log::warn!(
            "sandboxed agents run as uid {} (sandbox.agent_user), which cannot search {} \
             (a directory on the way is closed to it): they will not reach the socket",
            agent_user.uid,
            dir.display()
        );
    }
    Ok((
        listener,
        BoundSocket {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            _lock: None,
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
