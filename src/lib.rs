//! clove: one daemon that runs and coordinates AI agents on an HPC login node.
//!
//! ```text
//!              ┌──────────────────── reactor thread (mio::Poll) ────────────────────┐
//!  clients ──▶ │ listeners → Conn slab → codec (pure) → Request ─┬─ inline op       │──▶ replies
//!              │            ◀── Completion queue ◀── Waker ◀─────┼──────────────────│
//!              └─────────────────────────────────────────────────┼──────────────────┘
//!                                                                ▼ bounded channel
//!                        worker pool (N threads): file I/O, EXEC, METRICS, anything that may block
//!                        supervisor thread: agent processes, SIGCHLD, restarts, cgroups, logs
//!                        metrics sampler thread: CPU percentages, memory warnings
//! ```
//!
//! The modules form layers; each uses only the layers below it (`scripts/check-layers.sh`
//! checks it):
//!
//! 6. `main.rs` and `cli/` (in the binary): the CLI.
//! 5. [`daemon`] assembles the pieces for `clove serve`; [`config`] reads the file into each
//!    module's own section.
//! 4. [`reactor`] owns every client socket, flow control and the listeners.
//! 3. [`frontend`] turns bytes on a connection into calls, one module per protocol.
//! 2. Services: [`ops`] (the Clove op table and handlers), [`supervisor`] (agent processes,
//!    sandbox, cgroups, restarts, metrics), [`llm`] (THINK), [`mod@http`] (the HTTP op),
//!    [`relay`] (the ClawNet relay: Socket.IO agents and dashboards).
//!    [`router`] (the Codeswarm router: swarms, providers, the node worker).
//! 1. [`kernel`]: the shared state (callers and identity, permissions, state store facade,
//!    mailboxes, events, audit, async results).
//! 0. Leaves: [`proto`] (pure codecs, fuzzed), [`store`] (SQLite), [`pool`], [`clock`],
//!    [`settings`], [`secrets`], [`lockfile`], [`log_ring`] (recent warnings, for `clove
//!    status`), [`spelling`] (did-you-mean), [`tls`], [`process`] (exit checks, pidfds, group
//!    signals), [`sockdiag`] (who owns a loopback TCP peer), [`systemd`] (what systemd hands
//!    the daemon, and readiness, status and watchdog pings back), and the client side used by
//!    the CLI: [`client`], [`mod@bench`]. ([`config_doc`], the commented default config, is
//!    part of the assembly, with [`config`].)

pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_doc;
pub mod config_file;
pub mod daemon;
pub mod frontend;
pub mod http;
pub mod kernel;
pub mod llm;
pub mod lockfile;
pub mod log_ring;
pub mod ops;
pub mod pool;
pub mod process;
pub mod proto;
pub mod reactor;
pub mod relay;
pub mod router;
pub mod secrets;
pub mod settings;
pub mod sockdiag;
pub mod spelling;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod tls;
