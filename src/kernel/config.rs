//! The kernel's settings: the `[permissions]` section and the kernel's share of `[limits]`
//! (mailboxes and their daemon-wide budget, event queues, async results, names and permission
//! rules), plus `[audit]`.

use super::audit::AuditConfig;
use super::perms::{self, Permissions, PermsPatch};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// `[permissions]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermissions {
    /// Level of plain clients (the user's own processes). Default `unrestricted`.
    pub client_level: Option<String>,
    /// Level of spawned agents. Default `standard`.
    pub agent_level: Option<String>,
    /// Level of a process started under the daemon that no live agent or running command
    /// owns any more (it left its session and was orphaned, or outlived its agent or command).
    /// Default `minimal`.
    pub unattributed_level: Option<String>,
    /// Overrides of the presets: `[permissions.levels.standard] can_http = false`.
    #[serde(default)]
    pub levels: BTreeMap<String, toml::Value>,
}

/// The validated settings of the kernel.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    pub mailbox_len: usize,
    pub mailbox_max_bytes: usize,
    /// Bytes of message bodies all mailboxes together may hold, each shared body counted once
    /// (`limits.mailboxes_total_bytes`).
    pub mailboxes_total_bytes: usize,
    pub event_queue_len: usize,
    /// Bytes of event data one subscriber's queue may hold (`limits.event_queue_bytes`).
    pub event_queue_bytes: usize,
    pub async_max_outstanding: usize,
    pub max_subscriptions: usize,
    pub max_event_type_bytes: usize,
    pub max_name_bytes: usize,
    pub max_permission_rules: usize,
    pub max_permission_rule_bytes: usize,
    pub client_level: String,
    pub agent_level: String,
    /// See [`RawPermissions::unattributed_level`].
    pub unattributed_level: String,
    /// The five presets after config overrides.
    pub levels: BTreeMap<String, Permissions>,
    pub audit: AuditConfig,
    /// The uid sandboxed agents run as when it is not the daemon's own (a root daemon runs
    /// them as `sandbox.agent_user`): its processes may connect only as agents.
    pub agent_uid: Option<u32>,
}

impl KernelConfig {
    /// The permission preset called `name` (after overrides).
    pub fn level(&self, name: &str) -> Option<&Permissions> {
        self.levels.get(name)
    }

    /// The preset called `name`, or `minimal` when there is none (never more than asked).
    pub fn level_or_minimal(&self, name: &str) -> Permissions {
        self.level(name)
            .or_else(|| self.level("minimal"))
            .cloned()
            .unwrap_or_else(|| perms::minimal(""))
    }
}

/// The permission presets with the file's overrides applied, and the two default levels.
pub struct Levels {
    pub levels: BTreeMap<String, Permissions>,
    pub client_level: String,
    pub agent_level: String,
    pub unattributed_level: String,
}

impl Levels {
    /// Builds the presets: the state directory (and a state database outside it) is blocked for
    /// every level that blocks anything.
    pub fn from_raw(
        raw: &RawPermissions,
        state_dir: &Path,
        store_path: &Path,
        errors: &mut Vec<String>,
    ) -> Levels {
        let state_text = state_dir.to_string_lossy().into_owned();
        let mut levels = BTreeMap::new();
        for name in perms::LEVELS {
            let Some(mut p) = perms::builtin_level(name, &state_text) else {
                continue;
            };
            if let Some(value) = raw.levels.get(name) {
                match value.clone().try_into::<PermsPatch>() {
                    Ok(patch) => {
                        p = p.patched(&patch);
                        p.level = name.to_string();
                    }
                    Err(e) => errors.push(format!("permissions.levels.{name}: {e}")),
                }
            }
            // A state database outside the state directory is as private as the directory
            // (the file, its write-ahead log and its lock).
            if !p.filesystem.blocked.is_empty() && !store_path.starts_with(state_dir) {
                p.filesystem
                    .blocked
                    .push(format!("{}*", store_path.display()));
            }
            if let Err(e) = p.validate() {
                errors.push(format!("permissions.levels.{name}: {e}"));
            }
            levels.insert(name.to_string(), p);
        }
        for name in raw.levels.keys() {
            if !levels.contains_key(name) {
                errors.push(format!(
                    "permissions.levels.{name}: unknown level (known: {})",
                    perms::LEVELS.join(", ")
                ));
            }
        }
        let mut level = |key: &str, v: &Option<String>, default: &str| -> String {
            let name = v.clone().unwrap_or_else(|| default.to_string());
            if !perms::LEVELS.contains(&name.as_str()) {
                errors.push(format!(
                    "permissions.{key}: unknown level {name:?} (known: {})",
                    perms::LEVELS.join(", ")
                ));
                return default.to_string();
            }
            name
        };
        let client_level = level("client_level", &raw.client_level, "unrestricted");
        let agent_level = level("agent_level", &raw.agent_level, "standard");
        let unattributed_level = level("unattributed_level", &raw.unattributed_level, "minimal");
        Levels {
            levels,
            client_level,
            agent_level,
            unattributed_level,
        }
    }
}
