//! The Slurm backend's thread: launches, deliveries, the poll and the termination stages.

use super::query::{self, job_state};
use super::script;
use super::*;

impl Backend {
    pub(super) fn run(&mut self, rx: Receiver<Cmd>) {
        loop {
            let wait = self.next_poll.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.shell.close();
                    return;
                }
            }
            if Instant::now() >= self.next_poll {
                self.poll();
                self.next_poll = Instant::now() + self.interval();
            }
        }
    }

    fn interval(&self) -> Duration {
        let busy = self.jobs.values().any(|j| !matches!(j.phase, Phase::Live));
        if busy {
            FAST_POLL.min(self.deps.poll)
        } else {
            self.deps.poll
        }
    }

    fn reply(&self, msg: BackendMsg) {
        self.deps.replies.send(self.deps.index, msg);
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Launch(ticket, spec) => {
                if let Err(e) = self.launch(ticket, &spec) {
                    self.reply(BackendMsg::Launched {
                        ticket,
                        result: Err(e),
                    });
                }
            }
            Cmd::Deliver(ticket, job, node, line) => {
                let result = self.deliver(&job, node, &line);
                self.reply(BackendMsg::Delivered { ticket, result });
            }
            Cmd::Status(job) | Cmd::Adopt(job) => {
                let j = self.track(&job);
                // Report at the next poll, which comes now.
                j.reported = None;
                self.next_poll = Instant::now();
            }
            Cmd::ListActive => {
                let active = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| matches!(j.phase, Phase::Live))
                    .map(|(id, _)| id.clone())
                    .collect();
                self.reply(BackendMsg::Active { result: Ok(active) });
            }
            Cmd::Terminate(job, force) => self.begin_terminate(&job, force),
        }
    }

    /// The job as tracked, added as live if it was not (adopted after a restart).
    fn track(&mut self, job: &JobRef) -> &mut Job {
        self.jobs.entry(job.job_id.clone()).or_insert_with(|| Job {
            node_count: job.node_count,
            phase: Phase::Live,
            reported: None,
        })
    }

    fn progress(&self, ticket: Ticket, stage: &'static str, message: String) {
        self.reply(BackendMsg::LaunchProgress {
            ticket,
            stage,
            message,
        });
    }

    /// Writes the launch's files and submits; the job is then followed by the poll.
    fn launch(&mut self, ticket: Ticket, spec: &LaunchSpec) -> Result<(), String> {
        let plan = WorkerPlan::from_params(&self.config, &spec.params, &self.deps.llm, false)?;
        let sched = Scheduling::of(&self.slurm, &spec.params)?;
        self.progress(
            ticket,
            "submitting",
            "writing the launch files and calling sbatch".into(),
        );
        let dir = self.ws.root.join("launch").join(&spec.swarm_id);
        let grace = self.deps.grace.as_secs();
        let spec_file = TaskSpec {
            base_dir: self.ws.root.clone(),
            program: plan.program.clone(),
            linger_secs: grace + LINGER_EXTRA_SECS,
        };
        let files = script::bundle(spec, &spec_file, &plan.settings)?;
        self.write_bundle(&dir, &files)?;
        let name = format!(
            "{}{}",
            self.slurm.job_name_prefix,
            &spec.swarm_id[..8.min(spec.swarm_id.len())]
        );
        let argv = script::sbatch_argv(
            &self.slurm,
            &sched,
            &name,
            spec.node_count,
            &self.worker_path,
            &dir,
        );
        let out = self.shell.run(&argv, b"")?;
        if !out.ok() {
            // sbatch's own words (unknown partition, bad time limit, ...), verbatim.
            return Err(out.error_text());
        }
        let text = out.stdout_text();
        // --parsable: "ID" or "ID;cluster".
        let id = text
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("sbatch answered {:?}, not a job id", text.trim()));
        }
        log::info!(
            "router: swarm {} submitted as Slurm job {id} ({name})",
            spec.swarm_id
        );
        self.progress(ticket, "submitted", format!("Slurm job {id} submitted"));
        self.reply(BackendMsg::Submitted {
            ticket,
            job_id: id.clone(),
        });
        self.jobs.insert(
            id,
            Job {
                node_count: spec.node_count,
                phase: Phase::Launching {
                    ticket,
                    deadline: Instant::now() + self.deps.launch_timeout,
                    last_pending: None,
                    runtime: plan.runtime,
                    sched,
                },
                reported: None,
            },
        );
        self.next_poll = Instant::now();
        Ok(())
    }

    fn write_bundle(
        &self,
        dir: &std::path::Path,
        files: &[task::BundleFile],
    ) -> Result<(), String> {
        if self.shell.ssh.is_none() {
            self.ws
                .create()
                .map_err(|e| format!("cannot create {}: {e}", self.ws.root.display()))?;
            return task::unpack(dir, files);
        }
        let body = serde_json::to_vec(files).map_err(|e| e.to_string())?;
        let argv = vec![
            self.worker_path.clone(),
            "worker".into(),
            "unpack".into(),
            dir.to_string_lossy().into_owned(),
        ];
        self.shell
            .run_ok(&argv, &body)
            .map(|_| ())
            .map_err(|e| format!("cannot write the launch files on the login host: {e}"))
    }

    fn deliver(&mut self, job: &str, node: u32, line: &[u8]) -> Result<(), String> {
        match self.jobs.get(job) {
            Some(j) if node < j.node_count => {}
            Some(_) => return Err(format!("job {job} has no node {node}")),
            None => {
                return Err(format!(
                    "job {job} is not running (Slurm reported it ended)"
                ));
            }
        }
        let path = self.ws.inbox(job, node);
        if self.shell.ssh.is_none() {
            return mailbox::append_line(&path, line)
                .map_err(|e| format!("cannot append to {}: {e}", path.display()));
        }
        let argv = vec![
            self.worker_path.clone(),
            "worker".into(),
            "append".into(),
            path.to_string_lossy().into_owned(),
        ];
        self.shell.run_ok(&argv, line).map(|_| ())
    }

    /// One squeue for every tracked job; sacct/scontrol for those it does not list.
    fn poll(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let listed = match self.shell.run_ok(&query::squeue_argv(), b"") {
            Ok(o) => query::parse_squeue(&o.stdout_text()),
            Err(e) => {
                let e = format!("squeue failed: {e}");
                log::warn!("router: provider {}: {e}", self.config.id);
                let ids: Vec<String> = self.jobs.keys().cloned().collect();
                for id in ids {
                    self.advance(&id, None, "", Some(&e));
                }
                return;
            }
        };
        let missing: Vec<String> = self
            .jobs
            .keys()
            .filter(|id| !listed.contains_key(*id))
            .cloned()
            .collect();
        let (ended, err) = match query::ended_states(&self.shell, &missing) {
            Ok(m) => (m, None),
            Err(e) => (HashMap::new(), Some(e)),
        };
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            let (state, reason) = match listed.get(&id) {
                Some(q) => (Some(q.state.clone()), q.reason.clone()),
                None => (ended.get(&id).cloned(), String::new()),
            };
            let why = format!(
                "Slurm does not list job {id} and could not say how it ended{}",
                err.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            );
            self.advance(&id, state.as_deref(), &reason, Some(&why));
        }
    }

    /// Moves one job along with its Slurm state (`None`: unknown, `why` says why).
    fn advance(&mut self, id: &str, state: Option<&str>, reason: &str, why: Option<&str>) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        match &mut job.phase {
            Phase::Launching { .. } => self.advance_launch(id, state, reason),
            Phase::Stopping { .. } => self.advance_stop(id, state),
            Phase::Live => {
                let now = state.unwrap_or("unknown").to_string();
                if job.reported.as_deref() == Some(now.as_str()) {
                    return;
                }
                job.reported = Some(now);
                let result = match state {
                    Some(s) => Ok((job_state(s), Some(s.to_string()))),
                    None => Err(why.unwrap_or("Slurm cannot tell").to_string()),
                };
                if matches!(result, Ok((JobState::Ended, _))) {
                    self.jobs.remove(id);
                }
                self.reply(BackendMsg::Status {
                    job_id: id.to_string(),
                    result,
                });
            }
        }
    }
}

mod stages;
