//! What a Slurm launch submits: the files written before submission (the batch script, the
//! task and worker settings, AGENTS.md and skills) and sbatch's argv.
//!
//! The batch script is the same text for every swarm and takes everything from its arguments
//! (`$1` the clove binary as the nodes see it, `$2` the launch directory); scheduling values
//! go to sbatch as separate argv words. Nothing from a request is ever pasted into shell text.

use super::config::Scheduling;
use crate::router::config::SlurmConfig;
use crate::router::provider::LaunchSpec;
use crate::router::worker::task::{BundleFile, TaskSpec, safe_join};
use std::path::Path;

/// Most skill files one launch may write, and their size each (as the local backend).
const MAX_SKILLS: usize = 256;
const MAX_SKILL_BYTES: usize = 1 << 20;

/// The batch script (constant).
pub const BATCH_SCRIPT: &str = "#!/bin/sh\n\
# Written by clove for one swarm. It takes everything from its arguments: $1 is the clove\n\
# binary as the compute nodes see it, $2 the launch directory (task.json, worker.json, the\n\
# agent files). One Slurm task per worker; each finds its node id in SLURM_PROCID.\n\
exec srun --kill-on-bad-exit=0 \"$1\" worker slurm-task \"$2\"\n";

/// The files of a launch, relative to its launch directory.
pub fn bundle(
    spec: &LaunchSpec,
    task: &TaskSpec,
    settings: &serde_json::Value,
) -> Result<Vec<BundleFile>, String> {
    let mut files = vec![
        BundleFile {
            path: "job.sh".into(),
            content: BATCH_SCRIPT.into(),
            executable: true,
        },
        BundleFile {
            path: "task.json".into(),
            content: text(task)?,
            executable: false,
        },
        BundleFile {
            path: "worker.json".into(),
            content: text(settings)?,
            executable: false,
        },
    ];
    if let Some(md) = &spec.agents_md {
        files.push(BundleFile {
            path: "agent/AGENTS.md".into(),
            content: md.clone(),
            executable: false,
        });
    }
    if spec.skills.len() > MAX_SKILLS {
        return Err(format!("too many skill files: at most {MAX_SKILLS}"));
    }
    for s in &spec.skills {
        // Checked here too, so a bad path is a launch error before anything is written.
        safe_join(Path::new("/"), &s.path).map_err(|e| format!("skill file path {e}"))?;
        if s.content.len() > MAX_SKILL_BYTES {
            return Err(format!(
                "skill file {} is larger than {MAX_SKILL_BYTES} bytes",
                s.path
            ));
        }
        files.push(BundleFile {
            path: format!("agent/.agents/skills/{}", s.path),
            content: s.content.clone(),
            executable: false,
        });
    }
    Ok(files)
}

/// JSON text, as a launch error when it cannot be encoded.
fn text<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

/// sbatch's argv for a launch directory (`--parsable`: the answer is the bare job id).
pub fn sbatch_argv(
    c: &SlurmConfig,
    sched: &Scheduling,
    job_name: &str,
    workers: u32,
    worker_path: &str,
    launch_dir: &Path,
) -> Vec<String> {
    let nodes = workers.div_ceil(c.workers_per_node.max(1));
    let dir = launch_dir.to_string_lossy();
    let mut a: Vec<String> = vec![
        "sbatch".into(),
        "--parsable".into(),
        format!("--job-name={job_name}"),
        format!("--ntasks={workers}"),
        format!("--nodes={nodes}"),
        format!("--chdir={dir}"),
        format!("--output={dir}/slurm-%j.out"),
    ];
    for (flag, v) in [
        ("--partition", &sched.partition),
        ("--time", &sched.time),
        ("--account", &sched.account),
        ("--qos", &sched.qos),
    ] {
        if let Some(v) = v {
            a.push(format!("{flag}={v}"));
        }
    }
    a.extend(c.sbatch_args.iter().cloned());
    a.push(format!("{dir}/job.sh"));
    a.push(worker_path.to_string());
    a.push(dir.into_owned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_carries_every_value_as_its_own_word() {
        let c = SlurmConfig {
            workers_per_node: 2,
            sbatch_args: vec!["--exclusive".into()],
            ..SlurmConfig::default()
        };
        let s = Scheduling {
            partition: Some("gpu; rm -rf /".into()),
            time: Some("10".into()),
            ..Scheduling::default()
        };
        let a = sbatch_argv(&c, &s, "clove-x", 3, "/opt/clove", Path::new("/w/launch/s"));
        assert!(a.contains(&"--ntasks=3".to_string()));
        assert!(a.contains(&"--nodes=2".to_string()));
        assert!(a.contains(&"--partition=gpu; rm -rf /".to_string()));
        assert_eq!(
            &a[a.len() - 3..],
            ["/w/launch/s/job.sh", "/opt/clove", "/w/launch/s"]
        );
        assert!(!BATCH_SCRIPT.contains("gpu"));
    }
}
