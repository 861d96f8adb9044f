//! The relay's administration (SERVICE_ADMIN `{service: "relay", action, ...}`, used by
//! `clove relay token ...` and `clove relay rotate-key`): per-agent tokens made, listed and
//! revoked, and the credentials key rotated (see [`super::credentials`]). A token is shown
//! once, when it is made; the store keeps its hash. A revoke takes effect at once: sockets
//! admitted with the token are closed.

use super::auth::{self, Role, valid_name};
use super::config::DEFAULT_TENANT;
use super::tenant::{TOKENS, put};
use super::{Relay, State};
use serde_json::{Value, json};
use std::sync::Arc;

/// The answer callback of a SERVICE_ADMIN request.
pub type Done = Box<dyn FnOnce(Value) + Send>;

fn fail(msg: impl Into<String>) -> Value {
    json!({"success": false, "error": msg.into()})
}

impl Relay {
    /// Handles one administration request; `done` gets the reply (after any commit).
    pub fn admin(self: &Arc<Self>, req: Value, done: Done) {
        let action = req.get("action").and_then(Value::as_str).unwrap_or("");
        if action == "rotate_key" {
            // Files and a store commit to wait for: the relay's I/O thread does it.
            if let Err(super::io::Job::Rotate(done)) =
                self.io_queue.try_send(super::io::Job::Rotate(done))
            {
                done(fail("the relay's I/O queue is full; try again"));
            }
            return;
        }
        let planned = self.with(|st| match action {
            "token_create" => st.token_create(&req),
            "token_list" => Ok((Vec::new(), st.token_list(&req))),
            "token_revoke" => st.token_revoke(&req),
            other => Err(fail(format!(
                "unknown relay action {other:?} (token_create, token_list, token_revoke, \
                 rotate_key)"
            ))),
        });
        match planned {
            Err(reply) => done(reply),
            Ok((writes, reply)) if writes.is_empty() => done(reply),
            Ok((writes, reply)) => self.kernel.store.submit_docs(
                writes,
                Box::new(move |r| match r {
                    Ok(_) => done(reply),
                    Err(e) => done(fail(format!("not saved: {e}"))),
                }),
            ),
        }
    }
}

type Planned = Result<(Vec<crate::store::DocWrite>, Value), Value>;

impl State {
    fn token_create(&mut self, req: &Value) -> Planned {
        let s = |k: &str| req.get(k).and_then(Value::as_str);
        let agent = s("agent_id")
            .filter(|a| valid_name(a))
            .ok_or_else(|| fail("agent_id: a name of 1-128 characters is needed"))?;
        let role = Role::parse(s("role").unwrap_or("worker"))
            .ok_or_else(|| fail("role: worker, master or warden"))?;
        let tenant = s("tenant").unwrap_or(DEFAULT_TENANT);
        if !valid_name(tenant) {
            return Err(fail("tenant: a name of 1-128 characters is needed"));
        }
        if self.auth.tokens.len() >= auth::MAX_TOKENS {
            return Err(fail(format!(
                "{} tokens exist already; revoke some first",
                auth::MAX_TOKENS
            )));
        }
        let now = crate::clock::now_ms();
        let expires = match req.get("expires_secs").and_then(Value::as_u64) {
            Some(0) => return Err(fail("expires_secs: at least 1")),
            Some(secs) => Some(now.saturating_add(secs.saturating_mul(1000))),
            None => None,
        };
        let (rec, token) = auth::new_token(agent, role, tenant, expires, now);
        let body = serde_json::to_value(&rec).map_err(|e| fail(e.to_string()))?;
        let write = put(TOKENS, rec.id.clone(), &body);
        let mut reply = rec.public(now);
        reply["success"] = json!(true);
        reply["token"] = json!(token);
        self.fx.audits.push((
            "RELAY_TOKEN_CREATED",
            true,
            json!({"id": rec.id, "agent_id": agent, "role": role.as_str(), "tenant": tenant}),
        ));
        self.auth.tokens.insert(rec.id.clone(), rec);
        Ok((vec![write], reply))
    }

    fn token_list(&self, req: &Value) -> Value {
        let now = crate::clock::now_ms();
        let agent = req.get("agent_id").and_then(Value::as_str);
        let mut list: Vec<&auth::TokenRecord> = self
            .auth
            .tokens
            .values()
            .filter(|t| agent.is_none_or(|a| t.agent_id == a))
            .collect();
        list.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        json!({"success": true, "tokens": list.iter().map(|t| t.public(now)).collect::<Vec<_>>()})
    }

    fn token_revoke(&mut self, req: &Value) -> Planned {
        let id = req.get("id").and_then(Value::as_str).unwrap_or("");
        let id = id
            .strip_prefix(auth::TOKEN_PREFIX)
            .map(|r| r.split('_').next().unwrap_or(""))
            .unwrap_or(id);
        let Some(rec) = self.auth.tokens.get_mut(id) else {
            return Err(fail(format!(
                "no token {id:?} (see `clove relay token list`)"
            )));
        };
        rec.revoked = true;
        let body = serde_json::to_value(&*rec).map_err(|e| fail(e.to_string()))?;
        let write = put(TOKENS, id.to_owned(), &body);
        let victims: Vec<u64> = self
            .sessions
            .values()
            .filter(|s| {
                s.socket
                    .as_ref()
                    .is_some_and(|k| k.id.token_id.as_deref() == Some(id))
            })
            .map(|s| s.key)
            .collect();
        for key in &victims {
            self.close_session(*key, "its token was revoked");
        }
        self.fx.audits.push((
            "RELAY_TOKEN_REVOKED",
            true,
            json!({"id": id, "closed_sockets": victims.len()}),
        ));
        Ok((
            vec![write],
            json!({"success": true, "id": id, "revoked": true, "closed_sockets": victims.len()}),
        ))
    }
}
