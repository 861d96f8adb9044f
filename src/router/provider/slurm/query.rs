//! Asking Slurm about jobs: one `squeue` for every live job of this user, and for jobs it no
//! longer lists, `sacct` (when accounting works) or else `scontrol show job` to learn how they
//! ended. An empty `squeue` answer never means "ended" by itself; a check that fails leaves
//! the job's state unknown (the caller asks again at the next poll).

use super::shell::Shell;
use crate::router::provider::JobState;
use std::collections::HashMap;

/// A job as `squeue` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub state: String,
    pub reason: String,
    pub name: String,
}

/// The argv of the one poll: every job of the (remote) user, id|state|reason|name.
pub fn squeue_argv() -> Vec<String> {
    ["squeue", "--me", "-h", "-t", "all", "-o", "%i|%T|%r|%j"]
        .map(String::from)
        .to_vec()
}

/// Parses squeue's lines (job arrays and steps never appear: one line per batch job).
pub fn parse_squeue(text: &str) -> HashMap<String, Queued> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(4, '|');
            let id = f.next()?.trim();
            let state = f.next()?.trim();
            let reason = f.next().unwrap_or("").trim();
            let name = f.next().unwrap_or("").trim();
            (!id.is_empty() && !state.is_empty()).then(|| {
                (
                    id.to_string(),
                    Queued {
                        state: state.to_string(),
                        reason: reason.to_string(),
                        name: name.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// Slurm's job state as the router's.
pub fn job_state(slurm: &str) -> JobState {
    // sacct says "CANCELLED by 0": the first word is the state.
    match slurm.split_whitespace().next().unwrap_or("") {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => JobState::Pending,
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT"
        | "RESIZING" => JobState::Running,
        _ => JobState::Ended,
    }
}

/// How jobs that squeue no longer lists ended: `sacct` for all of them in one call, then
/// `scontrol show job` for each one sacct did not know. Jobs nobody could tell about are
/// left out (their state stays unknown).
pub fn ended_states(sh: &Shell, ids: &[String]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut argv: Vec<String> = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j"]
        .map(String::from)
        .to_vec();
    argv.push(ids.join(","));
    let mut errors = Vec::new();
    match sh.run_ok(&argv, b"") {
        Ok(o) => {
            for l in o.stdout_text().lines() {
                if let Some((id, state)) = l.split_once('|')
                    && ids.iter().any(|i| i == id.trim())
                    && !state.trim().is_empty()
                {
                    out.insert(id.trim().to_string(), state.trim().to_string());
                }
            }
        }
        Err(e) => errors.push(format!("sacct: {e}")),
    }
    let unknown: Vec<&String> = ids.iter().filter(|i| !out.contains_key(*i)).collect();
    for id in unknown {
        let argv: Vec<String> = vec![
            "scontrol".into(),
            "show".into(),
            "job".into(),
            "-o".into(),
            id.clone(),
        ];
        match sh.run_ok(&argv, b"") {
            Ok(o) => {
                if let Some(st) = scontrol_state(&o.stdout_text()) {
                    out.insert(id.clone(), st);
                }
            }
            Err(e) => errors.push(format!("scontrol show job {id}: {e}")),
        }
    }
    if out.is_empty() && !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(out)
}

/// `JobState=X` of `scontrol show job -o`.
pub fn scontrol_state(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_and_states() {
        let q = parse_squeue("12|PENDING|Resources|clove-ab\n13|RUNNING|None|clove-cd\n\nbad\n");
        assert_eq!(q.len(), 2);
        assert_eq!(q["12"].reason, "Resources");
        assert_eq!(q["13"].name, "clove-cd");
        assert_eq!(job_state("PENDING"), JobState::Pending);
        assert_eq!(job_state("COMPLETING"), JobState::Running);
        assert_eq!(job_state("CANCELLED by 0"), JobState::Ended);
        assert_eq!(job_state("TIMEOUT"), JobState::Ended);
        assert_eq!(
            scontrol_state("JobId=1 JobName=x JobState=CANCELLED Reason=None").as_deref(),
            Some("CANCELLED")
        );
    }
}
