//! The `slurm` backend's keys in a `[[router.providers]]` table, checked one by one (an
//! unknown key is an error naming the provider), and the scheduling values of one launch
//! (provider keys, overridden by the launch's `partition`/`time`/`account`/`qos`).

use crate::router::config::{COMMON_KEYS, SlurmConfig, argv};
use serde_json::{Map, Value};

/// Reads a slurm provider's own keys; returns its `worker_program` (if any) and the rest.
pub fn slurm_keys(
    i: usize,
    t: &toml::Table,
    errors: &mut Vec<String>,
) -> (Option<Vec<String>>, SlurmConfig) {
    let mut c = SlurmConfig {
        workers_per_node: 1,
        job_name_prefix: "clove-".into(),
        ssh_command: vec!["ssh".into()],
        ssh_multiplex: true,
        ..SlurmConfig::default()
    };
    let mut program = None;
    for (k, v) in t {
        let key = format!("router.providers[{i}].{k}");
        let json = serde_json::to_value(v).unwrap_or(Value::Null);
        let text = || -> Result<String, String> {
            match v.as_str() {
                Some(s) if plain(s) => Ok(s.to_string()),
                _ => Err(format!(
                    "{key}: must be a string of at most 256 bytes without control characters"
                )),
            }
        };
        let list = |empty_ok: bool| -> Result<Vec<String>, String> {
            match json.as_array() {
                Some(a) if a.is_empty() && empty_ok => Ok(Vec::new()),
                _ => argv(&json).map_err(|e| format!("{key}: {e}")),
            }
        };
        let r: Result<(), String> = match k.as_str() {
            k if COMMON_KEYS.contains(&k) => Ok(()),
            "partition" => text().map(|s| c.partition = Some(s)),
            "time_limit" => text().map(|s| c.time_limit = Some(s)),
            "account" => text().map(|s| c.account = Some(s)),
            "qos" => text().map(|s| c.qos = Some(s)),
            "worker_path" => text().and_then(|s| {
                if s.starts_with('/') {
                    c.worker_path = Some(s);
                    Ok(())
                } else {
                    Err(format!("{key}: {s:?} must be an absolute path"))
                }
            }),
            "job_name_prefix" => text().and_then(|s| {
                if s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    c.job_name_prefix = s;
                    Ok(())
                } else {
                    Err(format!("{key}: {s:?} must be at most 32 of A-Z a-z 0-9 - _ ."))
                }
            }),
            "login_host" => text().and_then(|s| {
                if s.is_empty() {
                    Ok(())
                } else if valid_host(&s) {
                    c.login_host = Some(s);
                    Ok(())
                } else {
                    Err(format!(
                        "{key}: {s:?} must be a host name or user@host (no spaces, not starting with -)"
                    ))
                }
            }),
            "workers_per_node" => match v.as_integer() {
                Some(n) if (1..=4096).contains(&n) => {
                    c.workers_per_node = n as u32;
                    Ok(())
                }
                _ => Err(format!("{key}: must be a whole number from 1 to 4096")),
            },
            "ssh_multiplex" => match v.as_bool() {
                Some(b) => {
                    c.ssh_multiplex = b;
                    Ok(())
                }
                None => Err(format!("{key}: must be true or false")),
            },
            "sbatch_args" => list(true).map(|a| c.sbatch_args = a),
            "ssh_options" => list(true).map(|a| c.ssh_options = a),
            "ssh_command" => list(false).map(|a| c.ssh_command = a),
            "worker_program" => list(false).map(|a| program = Some(a)),
            _ => Err(format!("{key}: unknown key for a slurm provider")),
        };
        if let Err(e) = r {
            errors.push(e);
        }
    }
    (program, c)
}

/// A value that goes into an argument list: short, no control characters.
fn plain(s: &str) -> bool {
    s.len() <= 256 && !s.chars().any(char::is_control)
}

/// `host`, `user@host`, `host:port`-free names ssh takes as its destination argument.
fn valid_host(s: &str) -> bool {
    !s.starts_with('-')
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:[]".contains(c))
}

/// Where and how long one launch runs: the provider's keys with the launch's values over them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduling {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
}

impl Scheduling {
    /// The launch's `partition`, `time` (or `time_limit`), `account`, `qos` over the keys.
    pub fn of(c: &SlurmConfig, params: &Map<String, Value>) -> Result<Scheduling, String> {
        let get = |names: &[&str], default: &Option<String>| -> Result<Option<String>, String> {
            for n in names {
                match params.get(*n) {
                    None | Some(Value::Null) => continue,
                    Some(Value::String(s)) if s.is_empty() => return Ok(None),
                    Some(Value::String(s)) if plain(s) && !s.starts_with('-') => {
                        return Ok(Some(s.clone()));
                    }
                    Some(_) => {
                        return Err(format!(
                            "{n} must be a string (at most 256 bytes, no control characters, not starting with -)"
                        ));
                    }
                }
            }
            Ok(default.clone())
        };
        Ok(Scheduling {
            partition: get(&["partition"], &c.partition)?,
            time: get(&["time", "time_limit"], &c.time_limit)?,
            account: get(&["account"], &c.account)?,
            qos: get(&["qos"], &c.qos)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(text: &str) -> Result<(Option<Vec<String>>, SlurmConfig), Vec<String>> {
        let t: toml::Table = toml::from_str(text).unwrap();
        let mut e = Vec::new();
        let r = slurm_keys(0, &t, &mut e);
        if e.is_empty() { Ok(r) } else { Err(e) }
    }

    #[test]
    fn keys_are_checked_and_defaulted() {
        let (_, c) = keys("id = \"hpc\"\nbackend = \"slurm\"").unwrap();
        assert_eq!(c.workers_per_node, 1);
        assert_eq!(c.job_name_prefix, "clove-");
        assert_eq!(c.ssh_command, ["ssh"]);
        assert_eq!(c.login_host, None);
        let (p, c) = keys(
            "partition = \"gpu\"\nworkers_per_node = 4\nsbatch_args = [\"--exclusive\"]\n\
             login_host = \"me@login1\"\nssh_options = [\"-p\", \"2222\"]\nworker_program = [\"python3\", \"w.py\"]",
        )
        .unwrap();
        assert_eq!(c.partition.as_deref(), Some("gpu"));
        assert_eq!(c.workers_per_node, 4);
        assert_eq!(c.sbatch_args, ["--exclusive"]);
        assert_eq!(c.login_host.as_deref(), Some("me@login1"));
        assert_eq!(p.unwrap(), ["python3", "w.py"]);
        let e = keys(
            "login_host = \"-oProxyCommand=x\"\nworkers_per_node = 0\nbogus = 1\n\
             worker_path = \"clove\"\njob_name_prefix = \"a b\"\nsbatch_args = \"--x\"",
        )
        .unwrap_err();
        assert_eq!(e.len(), 6, "{e:?}");
    }

    #[test]
    fn launch_values_override_the_keys() {
        let c = SlurmConfig {
            partition: Some("debug".into()),
            time_limit: Some("10".into()),
            ..SlurmConfig::default()
        };
        let p = |v: Value| v.as_object().unwrap().clone();
        let s = Scheduling::of(&c, &p(json!({"partition": "gpu", "qos": "high"}))).unwrap();
        assert_eq!(s.partition.as_deref(), Some("gpu"));
        assert_eq!(s.time.as_deref(), Some("10"));
        assert_eq!(s.qos.as_deref(), Some("high"));
        let s = Scheduling::of(&c, &p(json!({"time_limit": "5"}))).unwrap();
        assert_eq!(s.time.as_deref(), Some("5"));
        assert!(Scheduling::of(&c, &p(json!({"partition": "--uid=0"}))).is_err());
        assert!(Scheduling::of(&c, &p(json!({"account": 3}))).is_err());
    }
}
