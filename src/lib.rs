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
//! * [`reactor`] owns every client socket, flow control and the worker pool.
//! * [`frontend`] turns bytes on a connection into kernel requests, one module per protocol.
//! * [`proto`] holds the pure codecs (fuzzed).
//! * [`kernel`] is the shared state and the op handlers; [`store`] keeps state-store data.
//! * [`llm`] runs THINK on model backends behind a fair per-agent queue, on its own threads;
//!   [`mod@http`] runs the HTTP op (outbound requests, allow-listed) on its own threads.
//! * [`supervisor`] owns agent processes (spawn, sandbox, cgroups, restarts); [`metrics`]
//!   reads /proc and cgroup figures.
//! * [`systemd`] reads what systemd hands the daemon (a socket, the notify socket, the
//!   watchdog) and sends readiness, status and watchdog pings back.
//! * [`daemon`] assembles the pieces for `clove serve`; [`client`] and [`mod@bench`] are the
//!   client side used by the CLI.

pub mod bench;
pub mod client;
pub mod config;
pub mod config_doc;
pub mod daemon;
pub mod frontend;
pub mod http;
pub mod kernel;
pub mod llm;
pub mod lockfile;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod tls;
