//! The parts of `clove worker` that the Slurm provider runs on the cluster side:
//! * `slurm-task LAUNCH_DIR`: one Slurm task of a swarm's batch job; finds its node id in
//!   `SLURM_PROCID`, prepares its agent directory and runs the node's worker;
//! * `append FILE`: appends standard input to a file in one write (an inbox line over ssh);
//! * `unpack DIR`: writes the files of a launch, given as JSON on standard input, under DIR.
//!
//! None of them takes text from a request on its command line: paths are the router's own,
//! contents come on standard input or from files written before submission.

use crate::router::mailbox::{self, Workspace};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Most bytes `append` and `unpack` read from standard input.
const MAX_INPUT: u64 = 256 << 20;

/// `task.json` in a launch directory: what every task of the job runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    /// The workspace (`CODESWARM_BASE_DIR`).
    pub base_dir: PathBuf,
    /// Another worker (argv) instead of `clove worker`.
    pub program: Option<Vec<String>>,
    /// After its worker stopped cleanly (a `shutdown` line), the task waits this long for the
    /// router's `scancel`, so the job ends as CANCELLED by the termination rather than racing
    /// it to COMPLETED; a router that never comes does not hold the allocation longer.
    pub linger_secs: u64,
}

/// One file of a launch, relative to the launch directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleFile {
    pub path: String,
    pub content: String,
    #[serde(default)]
    pub executable: bool,
}

/// A path under a directory: relative, plain components only.
pub fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty()
        || rel.len() > 1024
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("{rel:?} must be a relative path without \"..\""));
    }
    Ok(root.join(p))
}

/// Writes a launch's files under `root` (directories 0700, files 0600 or 0700).
pub fn unpack(root: &Path, files: &[BundleFile]) -> Result<(), String> {
    mailbox::create_private_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for f in files {
        let path = safe_join(root, &f.path)?;
        if let Some(parent) = path.parent() {
            mailbox::create_private_dir(parent)
                .map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mode = if f.executable { 0o700 } else { 0o600 };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut w| std::io::Write::write_all(&mut w, f.content.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(buf)
}

/// `clove worker append FILE`.
pub fn append_stdin(file: &Path) -> Result<(), String> {
    let bytes = read_stdin()?;
    mailbox::append_line(file, &bytes)
        .map_err(|e| format!("cannot append to {}: {e}", file.display()))
}

/// `clove worker unpack DIR`.
pub fn unpack_stdin(root: &Path) -> Result<(), String> {
    let bytes = read_stdin()?;
    let files: Vec<BundleFile> =
        serde_json::from_slice(&bytes).map_err(|e| format!("standard input: {e}"))?;
    unpack(root, &files)
}

/// `clove worker slurm-task LAUNCH_DIR`: one node of a swarm inside its Slurm job.
pub fn slurm_task(launch: &Path) -> Result<i32, String> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set (run by srun)"));
    let job = env("SLURM_JOB_ID")?;
    let node: u32 = env("SLURM_PROCID")?
        .parse()
        .map_err(|_| "SLURM_PROCID is not a number")?;
    let text = std::fs::read_to_string(launch.join("task.json"))
        .map_err(|e| format!("cannot read {}/task.json: {e}", launch.display()))?;
    let spec: TaskSpec = serde_json::from_str(&text).map_err(|e| format!("task.json: {e}"))?;
    let ws = Workspace::new(&spec.base_dir);
    ws.create()
        .map_err(|e| format!("{}: {e}", ws.root.display()))?;
    let agent = ws.agent_dir(&job, node);
    mailbox::create_private_dir(&agent).map_err(|e| format!("{}: {e}", agent.display()))?;
    copy_tree(&launch.join("agent"), &agent)?;
    let argv: Vec<String> = match &spec.program {
        Some(a) => a.clone(),
        None => {
            let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
            vec![
                exe.to_string_lossy().into_owned(),
                "worker".into(),
                "--settings".into(),
                launch.join("worker.json").to_string_lossy().into_owned(),
            ]
        }
    };
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&agent)
        .env("CODESWARM_JOB_ID", &job)
        .env("CODESWARM_NODE_ID", node.to_string())
        .env("CODESWARM_BASE_DIR", &spec.base_dir)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    // Tells the router this node is quiet (it ends the grace period of a termination early).
    let _ = std::fs::write(ws.run_dir(&job).join(format!("exited_{node:02}")), b"");
    let code = status.code().unwrap_or(1);
    if code == 0 {
        // SIGTERM (scancel) ends this wait with the default action: nothing to catch.
        std::thread::sleep(Duration::from_secs(spec.linger_secs));
    }
    Ok(code)
}

/// Copies the launch's agent files (AGENTS.md, .agents/skills/...) into a node's directory.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(()); // nothing to copy
    };
    for e in entries.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().map_err(|e| e.to_string())?;
        if ft.is_dir() {
            mailbox::create_private_dir(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_stay_inside_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("launch");
        let f = |p: &str| BundleFile {
            path: p.into(),
            content: "x".into(),
            executable: false,
        };
        unpack(&root, &[f("a/b.md"), f("task.json")]).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("a/b.md")).unwrap(), "x");
        assert!(unpack(&root, &[f("../escape")]).is_err());
        assert!(unpack(&root, &[f("/etc/x")]).is_err());
        assert!(!d.path().join("escape").exists());
        let to = d.path().join("agent");
        std::fs::create_dir(&to).unwrap();
        copy_tree(&root, &to).unwrap();
        assert!(to.join("a/b.md").is_file());
    }
}
