//! The `[exec]` and `[fs]` config sections: raw (as written) and validated.

use crate::settings::{positive, secs};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[exec]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub shell: Option<PathBuf>,
    pub default_timeout_secs: Option<f64>,
    pub max_timeout_secs: Option<f64>,
    pub max_output_bytes: Option<usize>,
    pub max_running: Option<usize>,
    pub max_running_per_caller: Option<usize>,
}

/// `[fs]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFs {
    pub max_read_bytes: Option<u64>,
}

/// EXEC's validated settings.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub shell: PathBuf,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_output_bytes: usize,
    /// EXEC commands running at once, all callers together.
    pub max_running: usize,
    /// EXEC commands one caller may have running at once.
    pub max_running_per_caller: usize,
}

/// The validated settings of the ops service.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub exec: ExecConfig,
    /// Largest file READ returns (`fs.max_read_bytes`).
    pub fs_max_read_bytes: u64,
}

impl ExecConfig {
    pub fn from_raw(raw: &RawExec, errors: &mut Vec<String>) -> ExecConfig {
        let max_output_bytes = positive(
            errors,
            "exec.max_output_bytes",
            raw.max_output_bytes,
            1 << 20,
            1 << 30,
        );
        let max_running = positive(errors, "exec.max_running", raw.max_running, 64, 4096);
        let max_running_per_caller = positive(
            errors,
            "exec.max_running_per_caller",
            raw.max_running_per_caller,
            16,
            4096,
        );
        if max_running_per_caller > max_running {
            errors.push(format!(
                "exec.max_running_per_caller ({max_running_per_caller}) is larger than \
                 exec.max_running ({max_running})"
            ));
        }
        let default_timeout = secs(
            errors,
            "exec.default_timeout_secs",
            raw.default_timeout_secs,
            30.0,
        );
        let max_timeout = secs(
            errors,
            "exec.max_timeout_secs",
            raw.max_timeout_secs,
            3600.0,
        );
        if default_timeout > max_timeout {
            errors.push("exec.default_timeout_secs is larger than exec.max_timeout_secs".into());
        }
        let shell = raw
            .shell
            .clone()
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        if !shell.is_absolute() {
            errors.push(format!(
                "exec.shell: {} must be an absolute path",
                shell.display()
            ));
        }
        ExecConfig {
            shell,
            default_timeout,
            max_timeout,
            max_output_bytes,
            max_running,
            max_running_per_caller,
        }
    }
}

impl OpsConfig {
    pub fn from_raw(exec: &RawExec, fs: &RawFs, errors: &mut Vec<String>) -> OpsConfig {
        OpsConfig {
            exec: ExecConfig::from_raw(exec, errors),
            fs_max_read_bytes: fs.max_read_bytes.unwrap_or(16 << 20),
        }
    }
}
