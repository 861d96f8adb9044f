//! Integration tests: each module starts the real `clove` binary (see `harness.rs`) and drives
//! it over its socket.

mod agent_support;
mod fakes;
mod harness;
mod router_support;

mod agent_restart;
mod connect_timeouts;
mod connection_slots;
mod durability;
mod event_ops;
mod exec_fs_ops;
mod framing;
mod fs_ops;
mod fs_races;
mod http_op;
mod identity;
mod ipc_ops;
mod lifecycle;
mod limits_config;
mod memory_budgets;
mod newcomer;
mod perms_ops;
mod python_client;
mod relay;
mod relay_resources;
mod router;
mod sandbox_escape;
mod smoke;
mod state_ops;
mod supervision;
mod think;
mod tls;
mod unprivileged;
