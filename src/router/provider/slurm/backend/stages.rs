//! The stages of a launch waiting for Slurm and of a termination.

use super::super::query::job_state;
use super::super::*;

impl Backend {
    /// A submitted job: `pending` while Slurm holds it, `ready` and launched once it runs,
    /// cancelled and refused past the launch timeout.
    pub(super) fn advance_launch(&mut self, id: &str, state: Option<&str>, reason: &str) {
        let Some(Job {
            phase:
                Phase::Launching {
                    ticket,
                    deadline,
                    last_pending,
                    runtime,
                    sched,
                },
            node_count,
            ..
        }) = self.jobs.get_mut(id)
        else {
            return;
        };
        let ticket = *ticket;
        let now = Instant::now();
        match state.map(job_state) {
            Some(JobState::Running) => {
                let (runtime, sched, nodes) = (runtime.clone(), sched.clone(), *node_count);
                if let Some(j) = self.jobs.get_mut(id) {
                    j.phase = Phase::Live;
                    j.reported = state.map(str::to_string);
                }
                self.progress(ticket, "ready", format!("Slurm job {id} is running"));
                self.reply(BackendMsg::Launched {
                    ticket,
                    result: Ok(Launched {
                        job_id: id.to_string(),
                        backend_state: json!({"slurm_state": state, "node_count": nodes,
                            "partition": sched.partition, "time": sched.time}),
                        agent_runtime: runtime,
                    }),
                });
            }
            Some(JobState::Ended) => {
                self.jobs.remove(id);
                self.reply(BackendMsg::Launched {
                    ticket,
                    result: Err(format!(
                        "Slurm job {id} ended before it ran: {}",
                        state.unwrap_or("")
                    )),
                });
            }
            _ if now >= *deadline => {
                let why = if reason.is_empty() { "unknown" } else { reason };
                let secs = self.deps.launch_timeout.as_secs();
                let cancelled = match self.scancel(id, false) {
                    Ok(()) => "it was cancelled".to_string(),
                    Err(e) => format!("cancelling it failed: {e}"),
                };
                self.jobs.remove(id);
                self.reply(BackendMsg::Launched {
                    ticket,
                    result: Err(format!(
                        "Slurm job {id} did not start within {secs} s (router.launch_timeout_secs; \
                         Slurm's reason: {why}); {cancelled}"
                    )),
                });
            }
            _ => {
                if last_pending.is_none_or(|t| now.duration_since(t) >= PENDING_EVERY) {
                    *last_pending = Some(now);
                    let msg = match (state, reason) {
                        (Some(s), r) if !r.is_empty() => format!("Slurm job {id} is {s} ({r})"),
                        (Some(s), _) => format!("Slurm job {id} is {s}"),
                        (None, _) => format!("Slurm job {id} is not listed yet"),
                    };
                    self.progress(ticket, "pending", msg);
                }
            }
        }
    }

    fn stop_progress(&self, id: &str, stage: &'static str, message: String) {
        self.reply(BackendMsg::TerminateProgress {
            job_id: id.to_string(),
            stage,
            message,
        });
    }

    pub(super) fn begin_terminate(&mut self, job: &JobRef, force: bool) {
        let grace = self.deps.grace;
        let j = self.track(job);
        if matches!(j.phase, Phase::Stopping { .. }) {
            return; // already on its way; its end is reported once
        }
        if let Phase::Launching { ticket, .. } = j.phase {
            // Terminated before it ran: the launch is refused, the job cancelled below.
            j.phase = Phase::Live;
            self.reply(BackendMsg::Launched {
                ticket,
                result: Err("terminated before Slurm ran it".into()),
            });
        }
        let id = job.job_id.clone();
        if force {
            self.cancel_stage(&id, "force: scancel at once".into());
        } else {
            let n = job.node_count;
            let mut failed = Vec::new();
            for node in 0..n {
                if let Err(e) = self.deliver(&id, node, &mailbox::shutdown_line()) {
                    failed.push(format!("node {node}: {e}"));
                }
            }
            if let Some(j) = self.jobs.get_mut(&id) {
                j.phase = Phase::Stopping {
                    stage: Stop::Shutdown,
                    deadline: Instant::now() + grace,
                };
            }
            let mut msg = format!(
                "asked {n} workers to shut down; scancel after at most {} ms",
                grace.as_millis()
            );
            if !failed.is_empty() {
                msg.push_str(&format!(" (not delivered: {})", failed.join("; ")));
            }
            self.stop_progress(&id, "stopping", msg);
        }
        self.next_poll = Instant::now();
    }

    /// `scancel`, then wait for the job to leave the queue.
    fn cancel_stage(&mut self, id: &str, why: String) {
        let wait = self.deps.grace.max(Duration::from_secs(10));
        match self.scancel(id, false) {
            Ok(()) => self.stop_progress(id, "cancelling", format!("{why}: scancel {id}")),
            Err(e) => {
                self.stop_progress(id, "error", format!("scancel {id} failed: {e}; retrying"))
            }
        }
        if let Some(j) = self.jobs.get_mut(id) {
            j.phase = Phase::Stopping {
                stage: Stop::Cancelled,
                deadline: Instant::now() + wait,
            };
        }
    }

    pub(super) fn advance_stop(&mut self, id: &str, state: Option<&str>) {
        let Some(Job {
            phase: Phase::Stopping { stage, deadline },
            node_count,
            ..
        }) = self.jobs.get(id)
        else {
            return;
        };
        let (stage, deadline, nodes) = (*stage, *deadline, *node_count);
        let now = Instant::now();
        if let Some(s) = state.filter(|s| job_state(s) == JobState::Ended) {
            self.jobs.remove(id);
            self.stop_progress(id, "ended", format!("Slurm job {id} left the queue: {s}"));
            self.reply(BackendMsg::Terminated {
                job_id: id.to_string(),
                result: Ok(()),
            });
            return;
        }
        match stage {
            Stop::Shutdown => {
                let quiet = self.exited_count(id) >= nodes;
                if quiet || now >= deadline {
                    let why = if quiet {
                        "every worker stopped"
                    } else {
                        "grace period over"
                    };
                    self.cancel_stage(id, why.into());
                }
            }
            Stop::Cancelled if now >= deadline => {
                let r = self.scancel(id, true);
                let msg = match r {
                    Ok(()) => format!(
                        "still in the queue ({}): scancel --signal=KILL {id}",
                        state.unwrap_or("unknown")
                    ),
                    Err(e) => format!("scancel --signal=KILL {id} failed: {e}"),
                };
                self.stop_progress(id, "killing", msg);
                if let Some(j) = self.jobs.get_mut(id) {
                    j.phase = Phase::Stopping {
                        stage: Stop::Killed,
                        deadline: now + Duration::from_secs(30),
                    };
                }
            }
            Stop::Killed if now >= deadline => {
                self.jobs.remove(id);
                self.reply(BackendMsg::Terminated {
                    job_id: id.to_string(),
                    result: Err(format!(
                        "Slurm job {id} is still in the queue ({}) after scancel --signal=KILL",
                        state.unwrap_or("unknown")
                    )),
                });
            }
            _ => {}
        }
    }

    fn scancel(&self, id: &str, kill: bool) -> Result<(), String> {
        let mut argv = vec!["scancel".to_string()];
        if kill {
            argv.push("--signal=KILL".into());
            argv.push("--full".into());
        }
        argv.push(id.to_string());
        self.shell.run_ok(&argv, b"").map(|_| ())
    }

    /// How many tasks of the job marked their worker stopped (`runs/<job>/exited_NN`).
    fn exited_count(&self, id: &str) -> u32 {
        let dir = self.ws.run_dir(id);
        let names: Vec<String> = if self.shell.ssh.is_none() {
            std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            let argv = vec![
                "ls".into(),
                "-1".into(),
                "--".into(),
                dir.to_string_lossy().into_owned(),
            ];
            self.shell
                .run_ok(&argv, b"")
                .map(|o| o.stdout_text().lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        names.iter().filter(|n| n.starts_with("exited_")).count() as u32
    }
}
