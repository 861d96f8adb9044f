//! Socket.IO on a session: the handshake (a token, checked and bound to the claimed id and
//! role; failures audited and rate-limited per source), a socket's arrival (presence, the
//! replaced older socket of the same agent, queued commands) and its departure, and the
//! emit helpers every handler uses.

use super::auth::{self, Identity, Refusal, Role};
use super::tenant::{self, Agent};
use super::{Commit, Socket, State, Timer};
use crate::proto::engineio::Packet;
use crate::proto::socketio::{self, Message, PacketKind};
use crate::store::StateStore;
use serde_json::{Value, json};
use std::time::Instant;

/// The file (in the state directory) the first master token is written to.
pub const MASTER_TOKEN_FILE: &str = "relay-master.token";

impl State {
    /// A complete Socket.IO packet from session `key`.
    pub fn on_sio(&mut self, key: u64, msg: Message) {
        let p = &msg.packet;
        if p.nsp != "/" {
            if p.kind == PacketKind::Connect {
                let mut e = socketio::connect_error("Invalid namespace");
                e.nsp = p.nsp.clone();
                self.send_packets(key, vec![Packet::message(e.encode())]);
            }
            return;
        }
        match p.kind {
            PacketKind::Connect => self.on_connect(key, p.data.as_ref()),
            PacketKind::Disconnect => {
                let sock = self.sessions.get_mut(&key).and_then(|s| s.socket.take());
                if let Some(sock) = sock {
                    self.socket_gone(key, sock, "client disconnect");
                }
            }
            PacketKind::Event | PacketKind::BinaryEvent => self.on_event(key, msg),
            // The relay never asks clients for acks; a CONNECT_ERROR is not theirs to send.
            PacketKind::Ack | PacketKind::BinaryAck | PacketKind::ConnectError => {}
        }
    }

    fn on_connect(&mut self, key: u64, data: Option<&Value>) {
        let Some(s) = self.sessions.get(&key) else {
            return;
        };
        if s.socket.is_some() {
            return;
        }
        let source = s.source.clone();
        let now = Instant::now();
        let field = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_str);
        let claimed = field("agent_id").or(field("agentId"));
        if !self.auth.allowed(&source, now) {
            self.counters.rate_limited += 1;
            self.refuse(key, &source, claimed, &Refusal::RateLimited);
            return;
        }
        let token = field("token").unwrap_or("");
        let checked = self
            .auth
            .check(token, crate::clock::now_ms())
            .and_then(|g| auth::bind(&g, claimed, field("role")));
        match checked {
            Ok(id) => self.socket_arrived(key, id, data),
            Err(why) => {
                self.auth.note_failure(&source, now);
                self.refuse(key, &source, claimed, &why);
            }
        }
    }

    fn refuse(&mut self, key: u64, source: &str, claimed: Option<&str>, why: &Refusal) {
        self.counters.auth_failures += 1;
        log::info!("relay: refused a handshake from {source}: {why}");
        self.fx.audits.push((
            "RELAY_AUTH_FAILED",
            false,
            json!({"source": source, "agent_id": claimed, "reason": why.to_string()}),
        ));
        let e = socketio::connect_error(auth::UNAUTHORIZED);
        self.send_packets(key, vec![Packet::message(e.encode())]);
    }

    /// A socket passed the handshake: answer it, then update presence.
    fn socket_arrived(&mut self, key: u64, id: Identity, data: Option<&Value>) {
        if let Some(agent_id) = &id.agent_id {
            let max = self.cfg.max_agents;
            let mut writes = Vec::new();
            let t = self.tenant(&id.tenant);
            if !t.agents.contains_key(agent_id) && !t.make_room_for_agent(max, &mut writes) {
                let e =
                    socketio::connect_error("too many agents in this tenant (relay.max_agents)");
                self.send_packets(key, vec![Packet::message(e.encode())]);
                return;
            }
            self.push_commit(writes, Vec::new(), None);
        }
        let sio_sid = uuid::Uuid::new_v4().simple().to_string();
        self.counters.handshakes += 1;
        // The handshake deadline is met.
        if let Some(t) = self.sessions.get_mut(&key).and_then(|s| s.timers[1].take()) {
            self.timers.cancel(t);
        }
        self.send_packets(
            key,
            vec![Packet::message(socketio::connect_ok(&sio_sid).encode())],
        );
        self.readmit(key, Socket { id, sio_sid }, data);
    }

    /// Makes `sock` the socket of session `key`: tenant membership, presence of its agent,
    /// the fleet and recent tasks for it, and the commands queued for its agent.
    pub fn readmit(&mut self, key: u64, sock: Socket, data: Option<&Value>) {
        let id = sock.id.clone();
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        s.socket = Some(sock);
        self.tenant(&id.tenant).members.insert(key);
        let (mut writes, mut outs) = (Vec::new(), Vec::new());
        if let Some(agent_id) = &id.agent_id {
            self.agent_online(key, &id, agent_id, data, &mut writes, &mut outs);
        }
        let t = self.tenant(&id.tenant);
        let snapshot = event_text("fleet_update", t.fleet());
        let tasks = event_text("task_update", t.recent_tasks(50));
        self.send_packets(key, vec![Packet::message(snapshot), Packet::message(tasks)]);
        self.push_commit(writes, outs, None);
        if let Some(agent_id) = &id.agent_id {
            self.deliver_queued(&id.tenant, agent_id);
            self.deliver_plan_tasks(&id.tenant, agent_id);
        }
    }

    /// [`State::readmit`] for a socket that no longer speaks for an agent.
    pub fn readmit_observer(&mut self, key: u64, sock: Socket) {
        self.readmit(key, sock, None);
    }

    /// Presence of an agent whose socket just arrived; an older live socket of the same
    /// agent is replaced (told why, then closed) after the new one owns the agent.
    fn agent_online(
        &mut self,
        key: u64,
        id: &Identity,
        agent_id: &str,
        data: Option<&Value>,
        writes: &mut Vec<crate::store::DocWrite>,
        outs: &mut Vec<(Vec<u64>, String)>,
    ) {
        let now = crate::clock::now_ms();
        let t = self.tenant(&id.tenant);
        let specs = data.and_then(|d| d.get("specs")).cloned();
        let agent = t
            .agents
            .entry(agent_id.to_owned())
            .or_insert_with(|| Agent {
                id: agent_id.to_owned(),
                role: id.role,
                specs: Value::Null,
                capabilities: Value::Null,
                last_seen: now,
                verified: id.verified,
                session: None,
                rooms: Default::default(),
            });
        let old = agent.session.replace(key);
        agent.role = id.role;
        agent.verified = id.verified;
        agent.last_seen = now;
        if let Some(specs) = specs {
            agent.specs = specs;
        }
        let old_rooms: Vec<String> = if old.is_some_and(|o| o != key) {
            std::mem::take(&mut agent.rooms).into_iter().collect()
        } else {
            Vec::new()
        };
        writes.push(tenant::agent_doc(&t.name, agent));
        let others: Vec<u64> = t.members.iter().copied().filter(|k| *k != key).collect();
        let joined = json!({"agentId": agent_id, "agent_id": agent_id, "role": id.role.as_str(),
                            "verified": id.verified, "metadata": data.and_then(|d| d.get("metadata"))});
        outs.push((others, event_text("agent_joined", joined.clone())));
        for room in old_rooms {
            self.leave_room(&id.tenant, agent_id, &room);
        }
        if let Some(old) = old.filter(|o| *o != key) {
            self.counters.replaced_sockets += 1;
            let reason = json!({"reason": "replaced by a newer connection with the same agent id"});
            self.send_packets(
                old,
                vec![
                    Packet::message(event_text("disconnect_reason", reason)),
                    Packet::message("1".to_owned()),
                ],
            );
            self.close_session(old, "replaced by a newer socket of the same agent");
        }
        self.traffic(
            &id.tenant,
            json!({"type": "connect", "agent_id": agent_id, "role": id.role.as_str()}),
        );
        self.fx
            .events
            .push(json!({"event": "agent_joined", "tenant": id.tenant, "data": joined}));
        self.schedule_fleet(&id.tenant);
    }

    /// A socket left (disconnect, transport closed, replaced, timed out).
    pub fn socket_gone(&mut self, key: u64, sock: Socket, why: &str) {
        let id = sock.id;
        let t = self.tenant(&id.tenant);
        t.members.remove(&key);
        let Some(agent_id) = id.agent_id else {
            return;
        };
        let Some(agent) = t.agents.get_mut(&agent_id) else {
            return;
        };
        if agent.session != Some(key) {
            // An older socket of an agent that has a newer one: presence is the newer one's.
            return;
        }
        agent.session = None;
        agent.last_seen = crate::clock::now_ms();
        let rooms = std::mem::take(&mut agent.rooms);
        let doc = tenant::agent_doc(&t.name, agent);
        for room in rooms {
            self.leave_room(&id.tenant, &agent_id, &room);
        }
        let t = self.tenant(&id.tenant);
        let members: Vec<u64> = t.members.iter().copied().collect();
        let left = json!({"agentId": agent_id, "agent_id": agent_id, "reason": why});
        self.push_commit(
            vec![doc],
            vec![(members, event_text("agent_left", left.clone()))],
            None,
        );
        self.traffic(
            &id.tenant,
            json!({"type": "disconnect", "agent_id": agent_id, "reason": why}),
        );
        self.fx
            .events
            .push(json!({"event": "agent_left", "tenant": id.tenant, "data": left}));
        self.schedule_fleet(&id.tenant);
    }

    /// Queues a coalesced `fleet_update` to the tenant (one per `relay.fleet_update_ms`).
    pub fn schedule_fleet(&mut self, tenant: &str) {
        let delay = self.cfg.fleet_update;
        let t = self.tenant(tenant);
        if !t.fleet_pending {
            t.fleet_pending = true;
            let _ = self
                .timers
                .add(Instant::now() + delay, Timer::Fleet(tenant.to_owned()));
        }
    }

    /// Sends the tenant its fleet.
    pub fn flush_fleet(&mut self, tenant: &str) {
        let t = self.tenant(tenant);
        t.fleet_pending = false;
        let members: Vec<u64> = t.members.iter().copied().collect();
        let text = event_text("fleet_update", t.fleet());
        self.send_many(&members, &Packet::message(text));
    }

    /// A record for the tenant's wardens.
    pub fn traffic(&mut self, tenant: &str, mut record: Value) {
        record["ts"] = json!(crate::clock::now_ms());
        let wardens = self.sessions_with_role(tenant, Role::Warden);
        if !wardens.is_empty() {
            self.send_many(&wardens, &Packet::message(event_text("traffic", record)));
        }
    }

    /// Output for after a commit (or at once when there is nothing to write).
    pub fn push_commit(
        &mut self,
        writes: Vec<crate::store::DocWrite>,
        outs: Vec<(Vec<u64>, String)>,
        on_error: Option<(u64, u64)>,
    ) {
        self.push_commit_then(writes, outs, on_error, Vec::new());
    }

    /// [`State::push_commit`], and I/O jobs (removing a deleted file's content) queued once
    /// the change is committed.
    pub fn push_commit_then(
        &mut self,
        writes: Vec<crate::store::DocWrite>,
        outs: Vec<(Vec<u64>, String)>,
        on_error: Option<(u64, u64)>,
        after: Vec<super::io::Job>,
    ) {
        if writes.is_empty() {
            for (keys, text) in outs {
                self.send_many(&keys, &Packet::message(text));
            }
            self.queue_jobs(after);
        } else {
            self.fx.commits.push(Commit {
                writes,
                outs,
                on_error,
                after,
            });
        }
    }

    /// Queues I/O jobs without waiting; one that finds the queue full is dropped (logged): a
    /// file's content left behind is removed at the next start.
    pub fn queue_jobs(&mut self, jobs: Vec<super::io::Job>) {
        for job in jobs {
            let sent = self.io.as_ref().is_some_and(|q| q.try_send(job).is_ok());
            if !sent {
                log::warn!(
                    "relay: the I/O queue is full; a deleted file's content stays until the next start"
                );
            }
        }
    }

    /// Sends ack `id` with `value` to session `key` at once.
    pub fn emit_ack(&mut self, key: u64, id: u64, value: Value) {
        let text = socketio::ack(id, vec![value]).encode();
        self.send_packets(key, vec![Packet::message(text)]);
    }
}

/// The Engine.IO message text of an event `[name, data]`.
pub fn event_text(name: &str, data: Value) -> String {
    socketio::event(name, vec![data]).encode()
}

/// The Engine.IO message text of ack `id` carrying `value`.
pub fn ack_text(id: u64, value: Value) -> String {
    socketio::ack(id, vec![value]).encode()
}

/// With no shared secret and no token at all (a first start with nothing configured), makes
/// a master token and writes it to a 0600 file in the state directory; logs the path only.
pub fn ensure_master_token(st: &mut State, store: &StateStore) -> Result<(), String> {
    if st.auth.has_shared_secret() || !st.auth.tokens.is_empty() {
        return Ok(());
    }
    let now = crate::clock::now_ms();
    let (rec, token) = auth::new_token(
        "master",
        Role::Master,
        super::config::DEFAULT_TENANT,
        None,
        now,
    );
    let body = serde_json::to_value(&rec).map_err(|e| e.to_string())?;
    store
        .docs_wait(vec![tenant::put(tenant::TOKENS, rec.id.clone(), &body)])
        .map_err(|e| format!("relay: cannot save the master token: {e}"))?;
    let path = st.cfg.state_dir.join(MASTER_TOKEN_FILE);
    auth::write_private(&path, format!("{token}\n").as_bytes())
        .map_err(|e| format!("relay: cannot write {}: {e}", path.display()))?;
    st.auth.tokens.insert(rec.id.clone(), rec);
    log::info!(
        "relay: no secret or token configured; a master token (agent id \"master\") is in {}",
        path.display()
    );
    Ok(())
}
