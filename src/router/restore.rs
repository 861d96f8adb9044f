//! Start of the router: what the store holds is loaded back and each provider reconciled.
//!
//! Live swarms stay and are followed again from their committed offsets; a provider that
//! cannot answer keeps its swarms as `unknown` and is asked again with backoff (never
//! forgotten); an interrupted termination resumes; a launch cut short by the restart is
//! cleaned up and reported to its client. A document that cannot be read is logged by name
//! and skipped (never a silent empty state).

use super::core::{APPROVALS, Core, NODES, OFFSETS, QUEUE, SWARMS};
use super::state::{Approval, NodeState, QueueItem, Status, Swarm};
use super::wire::Event;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;

fn load<T: DeserializeOwned>(core: &Core, collection: &str) -> Vec<(String, T)> {
    let mut out = Vec::new();
    for (id, body) in core.kernel.store.take_docs(collection) {
        match serde_json::from_str(&body) {
            Ok(v) => out.push((id, v)),
            Err(e) => {
                log::error!("router: cannot read {collection}/{id} from the store: {e}; skipped")
            }
        }
    }
    out
}

impl Core {
    pub(super) fn restore(&mut self) {
        let swarms: Vec<(String, Swarm)> = load(self, SWARMS);
        let nodes: HashMap<String, Vec<NodeState>> = load(self, NODES).into_iter().collect();
        for (id, v) in load::<Value>(self, OFFSETS) {
            if let (Some(i), Some(o)) = (v["inode"].as_u64(), v["offset"].as_u64()) {
                self.offsets.insert(id, (i, o));
            }
        }
        let mut queue: Vec<QueueItem> = load(self, QUEUE).into_iter().map(|(_, q)| q).collect();
        queue.sort_by_key(|q| q.created_ms);
        self.queue = queue;
        self.approvals = load::<Approval>(self, APPROVALS).into_iter().collect();
        self.approvals_version = self.approvals.len() as u64;
        let mut swarms: Vec<Swarm> = swarms.into_iter().map(|(_, s)| s).collect();
        swarms.sort_by_key(|s| s.created_ms);
        let total = swarms.len();
        for mut s in swarms {
            s.nodes = nodes
                .get(&s.swarm_id)
                .cloned()
                .unwrap_or_else(|| super::core::fresh_nodes(s.node_count));
            s.nodes.resize(s.node_count as usize, NodeState::default());
            let id = s.swarm_id.clone();
            self.swarms.insert(id.clone(), s);
            self.reconcile(&id);
        }
        log::info!(
            "router: {total} swarms loaded ({} live), {} queue items, {} pending approvals",
            self.swarms.values().filter(|s| s.status.is_live()).count(),
            self.queue.len(),
            self.approvals.len()
        );
    }

    /// Brings one loaded swarm back under the router's watch.
    fn reconcile(&mut self, id: &str) {
        let Some(s) = self.swarms.get(id) else { return };
        if !s.status.is_live() {
            return;
        }
        let Some(p) = self.provider_index(&s.provider_id) else {
            let reason = format!("provider {} is not configured any more", s.provider_id);
            log::warn!("router: swarm {id}: {reason}; kept as unknown");
            if let Some(s) = self.swarms.get_mut(id) {
                s.unknown_reason = Some(reason);
                s.set_status(Status::Unknown);
            }
            self.save_swarm(id);
            return;
        };
        let job = Core::job_ref(s);
        let status = s.status;
        let force = s.terminate.as_ref().is_some_and(|t| t.force);
        let launch_rid = s.launch_request_id.clone();
        self.by_job.insert((p, job.job_id.clone()), id.to_string());
        if let Err(e) = self.providers[p].adopt(&job) {
            log::warn!("router: swarm {id}: cannot adopt its job: {e}");
        }
        match status {
            Status::Pending => {
                // Its client never got `swarm_launched`: clean up what may have started.
                log::warn!(
                    "router: swarm {id}: its launch was cut short by a restart; stopping it"
                );
                if let Some(s) = self.swarms.get_mut(id) {
                    s.set_status(Status::Terminating);
                    s.terminate = Some(Default::default());
                }
                self.save_swarm(id);
                self.emit_event(Event::rejected(
                    &launch_rid,
                    "launch interrupted by a restart of the daemon",
                ));
                self.follow(id, p);
                self.resume_termination(id, p, true);
            }
            Status::Terminating => {
                self.follow(id, p);
                self.resume_termination(id, p, force);
            }
            _ => {
                self.follow(id, p);
                if let Err(e) = self.providers[p].status(&job) {
                    log::warn!("router: swarm {id}: {e}");
                    self.schedule_retry(id);
                }
            }
        }
    }

    fn resume_termination(&mut self, id: &str, p: usize, force: bool) {
        let Some(s) = self.swarms.get(id) else { return };
        let job = Core::job_ref(s);
        self.terminate_progress(
            id,
            "resumed",
            "termination resumed after a restart of the daemon",
        );
        if let Err(e) = self.providers[p].terminate(&job, force) {
            log::warn!("router: swarm {id}: {e}");
            self.schedule_retry(id);
        }
    }
}
