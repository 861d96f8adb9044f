//! The router core's client commands (ROUTER-COMPAT.md, "Commands in scope"), the launch and
//! termination flows they start, injections, and the inter-swarm queue's dispatch.

use super::core::{APPROVALS, Core, NODES, Pending, QUEUE, fresh_nodes, status_event};
use super::mailbox;
use super::provider::LaunchSpec;
use super::state::{Approval, QueueItem, SelectorDoc, Status, Swarm, Termination, redacted};
use super::wire::{self, ApproveReq, EnqueueReq, InjectReq, LaunchReq, Request};
use super::{ClientCommand, uuid};
use crate::kernel::audit::Category;
use serde_json::{Map, Value, json};
use std::time::SystemTime;

fn now_text() -> String {
    crate::clock::iso8601(SystemTime::now())
}

impl Core {
    /// One client command: checked, then handled.
    pub(super) fn command(&mut self, c: ClientCommand) {
        let rid = c.request_id;
        let req = match wire::parse_request(&c.name, &c.payload) {
            Ok(r) => r,
            Err(e) => return self.reject(&rid, e),
        };
        match req {
            Request::SwarmLaunch(l) => self.launch(l, &rid),
            Request::Inject(i) => self.inject(i, &rid),
            Request::SwarmList => self.swarm_list(&rid),
            Request::SwarmStatus { swarm_id } => match self.swarms.get(&swarm_id) {
                Some(s) => {
                    let ev = status_event(s, &rid);
                    // Answered from what is known now; the provider is asked as well, and a
                    // change it finds is reported with another swarm_status.
                    if matches!(s.status, Status::Running | Status::Unknown)
                        && let Some(p) = self.provider_index(&s.provider_id)
                        && let Err(e) = self.providers[p].status(&Core::job_ref(s))
                    {
                        log::debug!("router: swarm {swarm_id}: {e}");
                    }
                    self.emit_event(ev);
                }
                None => self.reject(&rid, "unknown swarm_id"),
            },
            Request::SwarmTerminate { swarm_id, force } => self.terminate(&swarm_id, force, &rid),
            Request::ProvidersList => self.providers_list(&rid),
            Request::EnqueueInject(e) => self.enqueue(e, &rid),
            Request::QueueList => {
                let items: Vec<Value> = self.queue.iter().map(QueueItem::listing).collect();
                self.emit("queue_list", json!({"request_id": rid, "items": items}));
            }
            Request::ApprovalsList => self.approvals_list(&rid),
            Request::ApproveExecution(a) => self.approve(a, &rid),
        }
    }

    fn swarm_list(&mut self, rid: &Value) {
        let swarms: Map<String, Value> = self
            .swarms
            .values()
            .map(|s| (s.swarm_id.clone(), s.listing()))
            .collect();
        self.emit("swarm_list", json!({"request_id": rid, "swarms": swarms}));
    }

    fn providers_list(&mut self, rid: &Value) {
        let providers: Vec<Value> = self
            .providers
            .iter()
            .map(|p| {
                let c = p.config();
                let reason = p.disabled_reason();
                json!({"id": c.id, "label": c.label, "backend": c.backend.name(),
                       "defaults": redacted(&c.defaults), "launch_fields": c.launch_fields,
                       "disabled": reason.is_some(), "disabled_reason": reason})
            })
            .collect();
        self.emit(
            "providers_list",
            json!({"request_id": rid, "providers": providers}),
        );
    }

    // ---- launch ------------------------------------------------------------------------

    /// Checks a launch against the providers and limits; returns the provider's index and
    /// the merged launch parameters.
    fn check_launch(&self, l: &LaunchReq) -> Result<(usize, Map<String, Value>), String> {
        let pidx = match &l.provider {
            None => 0,
            Some(id) => self
                .provider_index(id)
                .ok_or_else(|| format!("unknown provider: {id}"))?,
        };
        let p = self
            .providers
            .get(pidx)
            .ok_or("no provider is configured")?;
        if let Some(why) = p.disabled_reason() {
            return Err(format!("provider {} is disabled: {why}", p.config().id));
        }
        if l.nodes as usize > self.cfg.max_nodes_per_swarm {
            return Err(format!(
                "too many nodes: {} asked, at most {} per swarm (router.max_nodes_per_swarm)",
                l.nodes, self.cfg.max_nodes_per_swarm
            ));
        }
        let live = self.swarms.values().filter(|s| s.status.is_live()).count();
        if live >= self.cfg.max_live_swarms {
            return Err(format!(
                "too many live swarms: {live} running, at most {} (router.max_live_swarms); \
                 terminate one first",
                self.cfg.max_live_swarms
            ));
        }
        let mut params = p.config().defaults.clone();
        params.extend(l.provider_params.clone());
        p.check_params(&params)?;
        Ok((pidx, params))
    }

    fn launch(&mut self, l: LaunchReq, rid: &Value) {
        let (pidx, params) = match self.check_launch(&l) {
            Ok(x) => x,
            Err(e) => return self.reject(rid, e),
        };
        let cfg = self.providers[pidx].config().clone();
        let swarm_id = uuid();
        let job_hint = format!("{}-{}", cfg.backend.name(), &uuid()[..8]);
        let created_ms = crate::clock::now_ms();
        let swarm = Swarm {
            swarm_id: swarm_id.clone(),
            job_id: job_hint.clone(),
            provider_id: cfg.id.clone(),
            provider_backend: cfg.backend.name().into(),
            node_count: l.nodes,
            status: Status::Pending,
            system_prompt: l.system_prompt.clone(),
            provider_params: params.clone(),
            agent_runtime: String::new(),
            created_at: now_text(),
            created_ms,
            ended_ms: None,
            launch_request_id: rid.clone(),
            backend_state: Value::Null,
            terminate: None,
            unknown_reason: None,
            nodes: fresh_nodes(l.nodes),
        };
        self.swarms.insert(swarm_id.clone(), swarm);
        self.by_job
            .insert((pidx, job_hint.clone()), swarm_id.clone());
        self.save_swarm(&swarm_id);
        self.save_nodes(&swarm_id);
        self.launch_progress(
            &swarm_id,
            "queued",
            &format!("launch of {} nodes queued", l.nodes),
        );
        let ticket = self.ticket(Pending::Launch {
            swarm_id: swarm_id.clone(),
        });
        let spec = LaunchSpec {
            swarm_id: swarm_id.clone(),
            job_hint,
            node_count: l.nodes,
            params,
            agents_md: l.agents_md,
            skills: l.skills,
        };
        if let Err(e) = self.providers[pidx].launch(ticket, spec) {
            self.tickets.remove(&ticket);
            self.launch_failed(&swarm_id, &e);
        }
    }

    pub(super) fn launch_progress(&mut self, swarm_id: &str, stage: &str, message: &str) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        let data = json!({"request_id": s.launch_request_id, "swarm_id": swarm_id,
            "provider": s.provider_id, "provider_id": s.provider_id, "stage": stage,
            "message": message, "timestamp": now_text()});
        self.emit("swarm_launch_progress", data);
    }

    /// A launch that did not happen leaves nothing behind but its `command_rejected`.
    fn launch_failed(&mut self, swarm_id: &str, reason: &str) {
        let Some(s) = self.swarms.remove(swarm_id) else {
            return;
        };
        if let Some(p) = self.provider_index(&s.provider_id) {
            self.by_job.remove(&(p, s.job_id.clone()));
        }
        self.delete(super::core::SWARMS, swarm_id);
        self.delete(NODES, swarm_id);
        self.audit(
            Category::Lifecycle,
            "SWARM_LAUNCH_FAILED",
            false,
            json!({"swarm_id": swarm_id, "provider_id": s.provider_id, "error": reason}),
        );
        self.reject(&s.launch_request_id, format!("launch failed: {reason}"));
    }

    /// The scheduler's job id, kept while the job waits to run.
    pub(super) fn submitted(&mut self, pidx: usize, swarm_id: &str, job_id: String) {
        let Some(s) = self.swarms.get_mut(swarm_id) else {
            return;
        };
        let old = std::mem::replace(&mut s.job_id, job_id.clone());
        self.by_job.remove(&(pidx, old));
        self.by_job.insert((pidx, job_id), swarm_id.to_string());
        self.save_swarm(swarm_id);
    }

    pub(super) fn launched(
        &mut self,
        pidx: usize,
        swarm_id: &str,
        result: Result<super::provider::Launched, String>,
    ) {
        let l = match result {
            Ok(l) => l,
            Err(e) => return self.launch_failed(swarm_id, &e),
        };
        let Some(s) = self.swarms.get_mut(swarm_id) else {
            return;
        };
        let old_job = std::mem::replace(&mut s.job_id, l.job_id.clone());
        s.backend_state = l.backend_state;
        s.agent_runtime = l.agent_runtime;
        let terminating = s.status == Status::Terminating;
        s.set_status(Status::Running);
        let s = s.clone();
        self.by_job.remove(&(pidx, old_job));
        self.by_job
            .insert((pidx, l.job_id.clone()), swarm_id.to_string());
        self.save_swarm(swarm_id);
        self.follow(swarm_id, pidx);
        let mut data = json!({"request_id": s.launch_request_id, "swarm_id": swarm_id,
            "job_id": s.job_id, "node_count": s.node_count, "provider": s.provider_id,
            "provider_id": s.provider_id, "agent_runtime": s.agent_runtime});
        for k in ["partition", "time"] {
            // What the backend used (a Slurm provider's defaults count), else what was asked.
            match s.backend_state.get(k).filter(|v| !v.is_null()) {
                Some(v) => data[k] = v.clone(),
                None => {
                    if let Some(v) = s.provider_params.get(k) {
                        data[k] = v.clone();
                    }
                }
            }
        }
        self.emit("swarm_launched", data);
        self.audit(
            Category::Lifecycle,
            "SWARM_LAUNCHED",
            true,
            json!({"swarm_id": swarm_id, "job_id": s.job_id, "provider_id": s.provider_id,
                   "node_count": s.node_count, "agent_runtime": s.agent_runtime}),
        );
        if terminating {
            // A terminate came while the launch ran: carry it out now.
            let force = s.terminate.as_ref().is_some_and(|t| t.force);
            if let Err(e) = self.providers[pidx].terminate(&Core::job_ref(&s), force) {
                log::warn!("router: swarm {swarm_id}: {e}");
                self.schedule_retry(swarm_id);
            }
            return;
        }
        if !s.system_prompt.trim().is_empty() {
            let nodes: Vec<u32> = (0..s.node_count).collect();
            self.inject_nodes(swarm_id, &nodes, &s.system_prompt, &s.launch_request_id);
        }
    }

    // ---- inject ------------------------------------------------------------------------

    /// Why a swarm cannot take injections now, if so.
    fn not_injectable(s: &Swarm) -> Option<String> {
        match s.status {
            Status::Running => None,
            Status::Pending => Some("the swarm is not running yet (status pending)".into()),
            Status::Terminating => Some("the swarm is terminating".into()),
            Status::Terminated => Some("the swarm is terminated".into()),
            Status::Unknown => Some(format!(
                "the swarm's state is unknown: {}",
                s.unknown_reason
                    .as_deref()
                    .unwrap_or("its provider does not answer")
            )),
        }
    }

    /// Checks the size of an inbox line and the injection budget for `n` more injections.
    fn check_injection(&self, content: &str, n: usize) -> Result<(), String> {
        let bytes = mailbox::user_line(content, "00000000-0000-0000-0000-000000000000").len();
        if bytes > self.cfg.max_inbox_line_bytes {
            return Err(format!(
                "content too long: its inbox line would be {bytes} bytes, at most {} (router.max_inbox_line_bytes)",
                self.cfg.max_inbox_line_bytes
            ));
        }
        let inflight = self.inflight();
        if inflight + n > self.cfg.max_inflight_injections {
            return Err(format!(
                "too many injections in flight: {inflight} not yet answered, at most {} (router.max_inflight_injections)",
                self.cfg.max_inflight_injections
            ));
        }
        Ok(())
    }

    fn inject(&mut self, i: InjectReq, rid: &Value) {
        let Some(s) = self.swarms.get(&i.swarm_id) else {
            return self.reject(rid, "unknown swarm_id");
        };
        if let Some(why) = Self::not_injectable(s) {
            return self.reject(rid, why);
        }
        let nodes = match i.nodes.resolve(s.node_count) {
            Ok(n) => n,
            Err(e) => return self.reject(rid, e),
        };
        if let Err(e) = self.check_injection(&i.content, nodes.len()) {
            return self.reject(rid, e);
        }
        self.audit(
            Category::Lifecycle,
            "SWARM_INJECTED",
            true,
            json!({"swarm_id": i.swarm_id, "nodes": nodes, "bytes": i.content.len()}),
        );
        self.inject_nodes(&i.swarm_id, &nodes, &i.content, rid);
    }

    /// One injection per node: `inject_ack` now (the node counts as busy from here), then
    /// `inject_delivered` or `inject_failed` when the provider has appended the inbox line.
    pub(super) fn inject_nodes(
        &mut self,
        swarm_id: &str,
        nodes: &[u32],
        content: &str,
        rid: &Value,
    ) -> Vec<String> {
        let Some(s) = self.swarms.get(swarm_id) else {
            return Vec::new();
        };
        let Some(pidx) = self.provider_index(&s.provider_id) else {
            return Vec::new();
        };
        let job = Core::job_ref(s);
        let mut ids = Vec::with_capacity(nodes.len());
        for &node in nodes {
            let inj = uuid();
            self.emit(
                "inject_ack",
                json!({"request_id": rid, "swarm_id": swarm_id,
                "injection_id": inj, "node_id": node, "prompt": content}),
            );
            if let Some(n) = self
                .swarms
                .get_mut(swarm_id)
                .and_then(|s| s.nodes.get_mut(node as usize))
            {
                n.add(&inj);
            }
            let ticket = self.ticket(Pending::Inject {
                swarm_id: swarm_id.into(),
                node,
                injection_id: inj.clone(),
                request_id: rid.clone(),
            });
            if let Err(e) =
                self.providers[pidx].inject(ticket, &job, node, mailbox::user_line(content, &inj))
            {
                self.tickets.remove(&ticket);
                if let Some(n) = self
                    .swarms
                    .get_mut(swarm_id)
                    .and_then(|s| s.nodes.get_mut(node as usize))
                {
                    n.remove(&inj);
                }
                self.emit(
                    "inject_failed",
                    json!({"request_id": rid, "swarm_id": swarm_id,
                    "injection_id": inj, "node_id": node, "error": e}),
                );
            }
            self.tell_follower(
                swarm_id,
                super::follow::FollowCmd::Busy {
                    job_id: job.job_id.clone(),
                    node_id: node,
                },
            );
            ids.push(inj);
        }
        self.save_nodes(swarm_id);
        ids
    }

    // ---- terminate ---------------------------------------------------------------------

    fn terminate(&mut self, swarm_id: &str, force: bool, rid: &Value) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return self.reject(rid, "unknown swarm_id");
        };
        let Some(pidx) = self.provider_index(&s.provider_id) else {
            // Its workers may still run somewhere; only its provider can stop them.
            let reason = format!(
                "provider {} is not configured any more: put it back in the config to terminate \
                 this swarm",
                s.provider_id
            );
            return self.reject(rid, reason);
        };
        match s.status {
            Status::Terminated => {
                self.emit(
                    "swarm_terminated",
                    json!({"request_id": rid, "swarm_id": swarm_id}),
                );
            }
            Status::Terminating => {
                // Its own swarm_terminated comes when the running termination ends.
                if let Some(s) = self.swarms.get_mut(swarm_id) {
                    let t = s.terminate.get_or_insert_with(Termination::default);
                    t.request_ids.push(rid.clone());
                    let ev = status_event(s, rid);
                    self.save_swarm(swarm_id);
                    self.emit_event(ev);
                }
            }
            _ => self.begin_terminate(swarm_id, pidx, force, rid),
        }
    }

    fn begin_terminate(&mut self, swarm_id: &str, pidx: usize, force: bool, rid: &Value) {
        let Some(s) = self.swarms.get_mut(swarm_id) else {
            return;
        };
        let was_pending = s.status == Status::Pending;
        s.set_status(Status::Terminating);
        s.terminate = Some(Termination {
            force,
            request_ids: vec![rid.clone()],
        });
        let ev = status_event(s, rid);
        let job = Core::job_ref(s);
        self.save_swarm(swarm_id);
        self.emit_event(ev);
        self.audit(
            Category::Lifecycle,
            "SWARM_TERMINATE",
            true,
            json!({"swarm_id": swarm_id, "job_id": job.job_id, "force": force}),
        );
        self.drop_queue_for(swarm_id, "target swarm terminating");
        if was_pending {
            return; // carried out when the launch reports back
        }
        if let Err(e) = self.providers[pidx].terminate(&job, force) {
            log::warn!("router: swarm {swarm_id}: {e}");
            self.schedule_retry(swarm_id);
        }
    }

    pub(super) fn terminate_progress(&mut self, swarm_id: &str, stage: &str, message: &str) {
        let Some(s) = self.swarms.get(swarm_id) else {
            return;
        };
        let rid = s
            .terminate
            .as_ref()
            .and_then(|t| t.request_ids.first().cloned())
            .unwrap_or(Value::Null);
        let data = json!({"request_id": rid, "swarm_id": swarm_id, "job_id": s.job_id,
            "stage": stage, "message": message, "timestamp": now_text()});
        self.emit("swarm_terminate_progress", data);
    }

    // ---- inter-swarm queue -------------------------------------------------------------

    fn enqueue(&mut self, e: EnqueueReq, rid: &Value) {
        if !self.swarms.contains_key(&e.source_swarm_id) {
            return self.reject(rid, "unknown source_swarm_id");
        }
        let Some(t) = self.swarms.get(&e.target_swarm_id) else {
            return self.reject(rid, "unknown target_swarm_id");
        };
        if matches!(t.status, Status::Terminating | Status::Terminated) {
            return self.reject(rid, format!("target swarm is {}", t.status.as_str()));
        }
        if let wire::Selector::Nodes(n) = &e.selector
            && let Err(err) = wire::Nodes::List(n.clone()).resolve(t.node_count)
        {
            return self.reject(rid, err);
        }
        if self.queue.len() >= self.cfg.max_queue_items {
            return self.reject(
                rid,
                format!(
                    "the inter-swarm queue is full: {} items (router.max_queue_items)",
                    self.cfg.max_queue_items
                ),
            );
        }
        if let Err(err) = self.check_injection(&e.content, 0) {
            return self.reject(rid, err);
        }
        let item = QueueItem {
            queue_id: uuid(),
            request_id: rid.clone(),
            source_swarm_id: e.source_swarm_id,
            target_swarm_id: e.target_swarm_id,
            selector: SelectorDoc::from(&e.selector),
            content: e.content,
            created_at: now_text(),
            created_ms: crate::clock::now_ms(),
            blocked: None,
        };
        self.put(QUEUE, &item.queue_id, &item);
        self.emit(
            "inter_swarm_enqueued",
            json!({"request_id": rid, "queue_id": item.queue_id,
            "source_swarm_id": item.source_swarm_id, "target_swarm_id": item.target_swarm_id,
            "selector": item.selector.kind, "nodes": item.selector.nodes}),
        );
        self.queue.push(item);
        self.emit_queue_updated();
        self.dispatch();
    }

    /// Sends queued items whose target nodes are free. Items for one target go in order;
    /// an item that must wait holds back only later items for the same target, never
    /// another target's (no head-of-line blocking between swarms).
    pub(super) fn dispatch(&mut self) {
        let mut waiting_targets: Vec<String> = Vec::new();
        let mut i = 0;
        let mut changed = false;
        while i < self.queue.len() {
            let target = self.queue[i].target_swarm_id.clone();
            if waiting_targets.contains(&target) {
                i += 1;
                continue;
            }
            let picked = match self.swarms.get(&target) {
                None => Err("target swarm is gone".to_string()),
                Some(s) if !s.status.is_live() || s.status == Status::Terminating => {
                    Err(format!("target swarm is {}", s.status.as_str()))
                }
                Some(s) if s.status != Status::Running => Ok(None),
                Some(s) => Ok(self.queue[i].pick(&s.nodes)),
            };
            match picked {
                Err(reason) => {
                    let q = self.queue.remove(i);
                    self.delete(QUEUE, &q.queue_id);
                    self.emit(
                        "inter_swarm_dropped",
                        json!({"request_id": q.request_id,
                        "queue_id": q.queue_id, "source_swarm_id": q.source_swarm_id,
                        "target_swarm_id": q.target_swarm_id, "reason": reason}),
                    );
                    changed = true;
                }
                Ok(None) => {
                    waiting_targets.push(target);
                    if self.queue[i].blocked.is_none() {
                        let q = &mut self.queue[i];
                        q.blocked = Some("every chosen node of the target swarm is busy".into());
                        let q = q.clone();
                        self.put(QUEUE, &q.queue_id, &q);
                        self.emit(
                            "inter_swarm_blocked",
                            json!({"request_id": q.request_id,
                            "queue_id": q.queue_id, "source_swarm_id": q.source_swarm_id,
                            "target_swarm_id": q.target_swarm_id, "reason": q.blocked}),
                        );
                        changed = true;
                    }
                    i += 1;
                }
                Ok(Some(nodes)) => {
                    let q = self.queue.remove(i);
                    self.delete(QUEUE, &q.queue_id);
                    let ids = self.inject_nodes(&target, &nodes, &q.content, &q.request_id);
                    self.emit(
                        "inter_swarm_dispatched",
                        json!({"request_id": q.request_id,
                        "queue_id": q.queue_id, "source_swarm_id": q.source_swarm_id,
                        "target_swarm_id": q.target_swarm_id, "node_ids": nodes,
                        "injection_ids": ids}),
                    );
                    changed = true;
                }
            }
        }
        if changed {
            self.emit_queue_updated();
        }
    }

    // ---- approvals ---------------------------------------------------------------------

    fn approvals_list(&mut self, rid: &Value) {
        let mut by_swarm: Map<String, Value> = Map::new();
        for a in self.approvals.values() {
            let nodes = by_swarm
                .entry(a.swarm_id.clone())
                .or_insert_with(|| json!({}));
            if let Some(m) = nodes.as_object_mut() {
                let list = m.entry(a.node_id.to_string()).or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.push(a.listing());
                }
            }
        }
        self.emit(
            "approvals_list",
            json!({"request_id": rid,
            "approvals_version": self.approvals_version, "approvals": by_swarm}),
        );
    }

    fn approve(&mut self, a: ApproveReq, rid: &Value) {
        let key = match a.node_id {
            Some(n) => Some(Approval::key(&a.job_id, n, &a.call_id))
                .filter(|k| self.approvals.contains_key(k)),
            None => self
                .approvals
                .iter()
                .find(|(_, x)| x.job_id == a.job_id && x.call_id == a.call_id)
                .map(|(k, _)| k.clone()),
        };
        let Some(key) = key else {
            return self.reject(rid, "unknown approval request");
        };
        let Some(ap) = self.approvals.get_mut(&key) else {
            return;
        };
        ap.status = "submitted".into();
        ap.approved = Some(a.approved);
        ap.decision = Some(a.decision.clone());
        ap.submit_request_id = rid.clone();
        let ap = ap.clone();
        self.put(APPROVALS, &key, &ap);
        let Some((pidx, job)) = self
            .swarms
            .get(&ap.swarm_id)
            .and_then(|s| Some((self.provider_index(&s.provider_id)?, Core::job_ref(s))))
        else {
            return self.reject(rid, "the approval's swarm is gone");
        };
        let payload = json!({"type": "exec_approval", "call_id": ap.call_id,
            "approval_id": ap.approval_id, "approved": a.approved, "decision": a.decision,
            "injection_id": ap.injection_id});
        let ticket = self.ticket(Pending::Control {
            key: key.clone(),
            request_id: rid.clone(),
        });
        if let Err(e) =
            self.providers[pidx].control(ticket, &job, ap.node_id, mailbox::control_line(&payload))
        {
            self.tickets.remove(&ticket);
            return self.reject(
                rid,
                format!("cannot deliver the decision to the worker: {e}"),
            );
        }
        self.audit(
            Category::Security,
            "SWARM_APPROVAL",
            true,
            json!({"swarm_id": ap.swarm_id, "job_id": ap.job_id, "node_id": ap.node_id,
                   "call_id": ap.call_id, "approved": a.approved, "decision": a.decision}),
        );
        self.emit(
            "exec_approval_submitted",
            json!({"request_id": rid, "swarm_id": ap.swarm_id,
            "job_id": ap.job_id, "node_id": ap.node_id, "injection_id": ap.injection_id,
            "call_id": ap.call_id, "approval_id": ap.approval_id, "approved": a.approved,
            "decision": a.decision}),
        );
    }
}
