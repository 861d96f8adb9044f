//! The HTTP routes besides Engine.IO: `GET /` (status, open to anyone allowed to connect),
//! `POST /api/auth/token` (a shared secret or per-agent token for a JWT), `/api/auth/verify`,
//! `/api/auth/revoke` and `GET /api/metrics`. Every route but `GET /` needs a token; the old
//! relay's unauthenticated admin routes do not exist here (404).

use super::State;
use super::auth::{Grant, Refusal, Role, TokenKind};
use super::tenant::{REVOKED, put};
use crate::proto::http::Method;
use crate::store::DocWrite;
use serde_json::{Value, json};
use std::time::Instant;

/// One request, as the front-end parsed it.
pub struct ApiRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
    /// Where it comes from (the rate limit's key).
    pub source: &'a str,
}

/// The answer: at once, or once `writes` are committed.
pub enum ApiReply {
    Now(u16, Value),
    AfterCommit(Vec<DocWrite>, u16, Value),
}

fn err(status: u16, msg: &str) -> ApiReply {
    ApiReply::Now(status, json!({"error": msg}))
}

impl State {
    /// Answers one API request.
    pub fn api(&mut self, req: &ApiRequest) -> ApiReply {
        match (req.method, req.path) {
            (Method::Get | Method::Head, "/") => ApiReply::Now(
                200,
                json!({"status": "ClawNet relay (clove)", "online": true,
                       "version": env!("CARGO_PKG_VERSION")}),
            ),
            (Method::Post, "/api/auth/token") => self.api_token(req),
            (Method::Post, "/api/auth/verify") => self.api_verify(req),
            (Method::Post, "/api/auth/revoke") => self.api_revoke(req),
            (Method::Get, "/api/metrics") => self.api_metrics(req),
            (
                _,
                "/" | "/api/auth/token" | "/api/auth/verify" | "/api/auth/revoke" | "/api/metrics",
            ) => err(405, "method not allowed"),
            _ => err(404, "not found"),
        }
    }

    /// Checks a token from the API, counting a failure against the source.
    fn api_check(
        &mut self,
        req: &ApiRequest,
        token: &str,
        what: &'static str,
    ) -> Result<Grant, ApiReply> {
        let now = Instant::now();
        if !self.auth.allowed(req.source, now) {
            self.counters.rate_limited += 1;
            return Err(err(429, "too many failed attempts; try again later"));
        }
        match self.auth.check(token, crate::clock::now_ms()) {
            Ok(g) => Ok(g),
            Err(why) => {
                self.auth.note_failure(req.source, now);
                self.counters.auth_failures += 1;
                self.fx.audits.push((
                    "RELAY_AUTH_FAILED",
                    false,
                    json!({"source": req.source, "route": req.path, "reason": why.to_string()}),
                ));
                let msg = match why {
                    Refusal::Expired => "token expired",
                    Refusal::Revoked => "token revoked",
                    _ => what,
                };
                Err(err(401, msg))
            }
        }
    }

    fn bearer<'a>(&self, req: &'a ApiRequest) -> &'a str {
        req.authorization
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("")
    }

    fn api_token(&mut self, req: &ApiRequest) -> ApiReply {
        let body: Value = serde_json::from_slice(req.body).unwrap_or(Value::Null);
        let secret = body
            .get("secret")
            .or_else(|| body.get("token"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let grant = match self.api_check(req, secret, "Invalid secret") {
            Ok(g) if g.kind != TokenKind::Jwt => g,
            Ok(_) => return err(400, "send a shared secret or an agent token, not a JWT"),
            Err(reply) => return reply,
        };
        let (token, exp_ms) = self.auth.issue_jwt(&grant, crate::clock::now_ms());
        ApiReply::Now(
            200,
            json!({"token": token, "expiresAt": exp_ms, "expiresIn": self.cfg.jwt_ttl.as_secs(),
                   "tokenType": "Bearer", "tenant": grant.tenant}),
        )
    }

    fn api_verify(&mut self, req: &ApiRequest) -> ApiReply {
        let token = self.bearer(req);
        match self.api_check(req, token, "Invalid token") {
            Ok(g) => ApiReply::Now(
                200,
                json!({"valid": true, "tenant": g.tenant, "agent_id": g.agent_id,
                       "role": g.role.map(Role::as_str), "kind": g.kind.as_str(),
                       "expiresAt": g.jti.map(|(_, exp)| exp)}),
            ),
            Err(reply) => reply,
        }
    }

    fn api_revoke(&mut self, req: &ApiRequest) -> ApiReply {
        let token = self.bearer(req);
        let grant = match self.api_check(req, token, "Invalid token") {
            Ok(g) => g,
            Err(reply) => return reply,
        };
        let Some((jti, exp)) = grant.jti else {
            return err(
                400,
                "only JWTs are revoked here; per-agent tokens with `clove relay token revoke`",
            );
        };
        if self.auth.revoked.len() >= super::auth::MAX_REVOKED {
            self.auth.prune(crate::clock::now_ms());
            if self.auth.revoked.len() >= super::auth::MAX_REVOKED {
                return err(503, "too many revoked tokens; try again later");
            }
        }
        self.auth.revoked.insert(jti.clone(), exp);
        self.fx.audits.push((
            "RELAY_TOKEN_REVOKED",
            true,
            json!({"jti": jti, "tenant": grant.tenant}),
        ));
        let write = put(REVOKED, jti, &json!({"exp": exp}));
        ApiReply::AfterCommit(vec![write], 200, json!({"revoked": true, "success": true}))
    }

    fn api_metrics(&mut self, req: &ApiRequest) -> ApiReply {
        let token = self.bearer(req);
        let grant = match self.api_check(req, token, "Invalid token") {
            Ok(g) => g,
            Err(reply) => return reply,
        };
        if grant.role.is_some_and(|r| r != Role::Master) {
            return err(403, "metrics are for masters");
        }
        let t = self.tenant(&grant.tenant);
        let online = t.agents.values().filter(|a| a.online()).count();
        let tenant = json!({"name": t.name, "agents": t.agents.len(), "online": online,
                            "sockets": t.members.len(), "tasks": t.tasks.len(), "chat": t.chat.len()});
        let mut v = serde_json::to_value(&self.counters).unwrap_or(Value::Null);
        v["sessions"] = json!(self.sessions.len());
        v["tenant"] = tenant;
        ApiReply::Now(200, v)
    }
}
