//! Who a relay client is: the three token forms of the Socket.IO handshake's `auth.token`,
//! the per-source limit on failed attempts, and the key files in the state directory.
//!
//! - **Per-agent tokens** `clv_<id>_<secret>`: made by `clove relay token create`, kept in the
//!   store as the SHA-256 of the secret (never the secret), and bound to an agent id, a role
//!   and a tenant. A handshake that claims another id or role is refused. Such agents are
//!   `verified` in the fleet.
//! - **The shared secret** of ClawNet (`default` tenant) or a tenants file's `tenant:secret`:
//!   only when one is configured. Ids and roles are then self-asserted as in ClawNet, and the
//!   agents show `verified: false`.
//! - **JWTs** (HS256) issued by `POST /api/auth/token` for a shared secret or a per-agent
//!   token, signed with a key only the daemon reads (`relay-jwt.key`, 0600), with an expiry
//!   and a revocation list.
//!
//! Secrets are compared in constant time (digests of equal length, so no length leaks
//! either), never logged, and never part of an error text.

use super::config::{DEFAULT_TENANT, SharedSecrets};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The prefix of per-agent tokens.
pub const TOKEN_PREFIX: &str = "clv_";
/// The message every refused handshake gets (the dashboard and agent match this text).
pub const UNAUTHORIZED: &str = "Unauthorized";
/// Source addresses (or users) whose failures are remembered at once.
const MAX_RATE_KEYS: usize = 65_536;
/// Revoked JWT ids remembered at once (each only until its token would have expired).
pub const MAX_REVOKED: usize = 100_000;
/// Per-agent tokens kept at once.
pub const MAX_TOKENS: usize = 100_000;
/// Longest agent id, tenant or room name accepted anywhere in the relay.
pub const MAX_ID_BYTES: usize = 128;

/// A relay client's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Master,
    Warden,
}

impl Role {
    /// ClawNet's role names; anything else is not a role.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "worker" => Some(Role::Worker),
            "master" => Some(Role::Master),
            "warden" => Some(Role::Warden),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Master => "master",
            Role::Warden => "warden",
        }
    }
}

/// Which token form a client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Agent,
    Shared,
    Jwt,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Agent => "agent_token",
            TokenKind::Shared => "shared_secret",
            TokenKind::Jwt => "jwt",
        }
    }
}

/// What a valid token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub kind: TokenKind,
    pub tenant: String,
    /// Set when the token binds an agent id (per-agent tokens, JWTs made from one).
    pub agent_id: Option<String>,
    /// Set when the token binds a role.
    pub role: Option<Role>,
    /// The id is the daemon's word, not the client's.
    pub verified: bool,
    /// A JWT's id and expiry (for revoke).
    pub jti: Option<(String, u64)>,
    /// The per-agent token's id (a revoke closes the sockets admitted with it).
    pub token_id: Option<String>,
}

/// Who a connected socket is, once the handshake passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: String,
    /// `None`: an observer (a dashboard connected without an agent id).
    pub agent_id: Option<String>,
    pub role: Role,
    pub verified: bool,
    pub kind: TokenKind,
    /// The per-agent token (id) or JWT (jti) the socket was admitted with.
    pub token_id: Option<String>,
}

/// Why a handshake is refused (for the audit log; the client only ever sees `Unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no token")]
    NoToken,
    #[error("unknown or wrong token")]
    BadToken,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("token is bound to agent {bound:?}, not {claimed:?}")]
    OtherAgent { bound: String, claimed: String },
    #[error("token is bound to role {bound}, not {claimed}")]
    OtherRole {
        bound: &'static str,
        claimed: String,
    },
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("too many failed attempts from this source; try again later")]
    RateLimited,
}

/// A per-agent token as stored: the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub agent_id: String,
    pub role: Role,
    pub tenant: String,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
}

impl TokenRecord {
    /// The listing form: everything but the hash.
    pub fn public(&self, now_ms: u64) -> Value {
        let state = if self.revoked {
            "revoked"
        } else if self.expires_ms.is_some_and(|e| e <= now_ms) {
            "expired"
        } else {
            "active"
        };
        json!({
            "id": self.id, "agent_id": self.agent_id, "role": self.role.as_str(),
            "tenant": self.tenant, "created_ms": self.created_ms,
            "expires_ms": self.expires_ms, "state": state,
        })
    }
}

/// Random bytes from the system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // getrandom(2) does not fail on Linux once the pool is initialised; if it ever did,
        // a predictable id or key would be worse than stopping.
        panic!("the system's random number generator failed");
    }
    b
}

/// A random UUID (version 4), as text.
pub fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two secrets (their digests are compared, so lengths leak nothing).
pub fn secret_eq(a: &str, b: &str) -> bool {
    bool::from(sha256(a.as_bytes()).ct_eq(&sha256(b.as_bytes())))
}

/// A new per-agent token: the record to store and the token text to hand out once.
pub fn new_token(
    agent_id: &str,
    role: Role,
    tenant: &str,
    expires_ms: Option<u64>,
    now_ms: u64,
) -> (TokenRecord, String) {
    let id = hex(&random_bytes::<6>());
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let rec = TokenRecord {
        id: id.clone(),
        agent_id: agent_id.to_owned(),
        role,
        tenant: tenant.to_owned(),
        hash: hex(&sha256(secret.as_bytes())),
        created_ms: now_ms,
        expires_ms,
        revoked: false,
    };
    (rec, format!("{TOKEN_PREFIX}{id}_{secret}"))
}

/// A name usable as an agent id, tenant or room: 1..=128 printable characters, no controls.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

/// The token forms, their keys and the revocation list.
pub struct Auth {
    secrets: SharedSecrets,
    jwt_key: ring::hmac::Key,
    jwt_ttl: Duration,
    pub tokens: HashMap<String, TokenRecord>,
    /// Revoked JWT ids and when each would have expired (ms).
    pub revoked: HashMap<String, u64>,
    rate: RateLimit,
}

impl Auth {
    pub fn new(
        secrets: SharedSecrets,
        jwt_key: &[u8],
        jwt_ttl: Duration,
        per_minute: usize,
    ) -> Auth {
        Auth {
            secrets,
            jwt_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, jwt_key),
            jwt_ttl,
            tokens: HashMap::new(),
            revoked: HashMap::new(),
            rate: RateLimit::new(per_minute),
        }
    }

    /// Whether any shared secret (default or tenant) is configured.
    pub fn has_shared_secret(&self) -> bool {
        self.secrets.default.is_some() || !self.secrets.tenants.is_empty()
    }

    /// Checks a token of any form.
    pub fn check(&self, token: &str, now_ms: u64) -> Result<Grant, Refusal> {
        if token.is_empty() {
            return Err(Refusal::NoToken);
        }
        if let Some(rest) = token.strip_prefix(TOKEN_PREFIX) {
            return self.check_agent_token(rest, now_ms);
        }
        if token.split('.').count() == 3 {
            return self.check_jwt(token, now_ms);
        }
        self.check_shared(token)
    }

    fn check_agent_token(&self, rest: &str, now_ms: u64) -> Result<Grant, Refusal> {
        let (id, secret) = rest.split_once('_').ok_or(Refusal::BadToken)?;
        let rec = self.tokens.get(id);
        // Hash even when the id is unknown, so both cases take the same time.
        let digest = hex(&sha256(secret.as_bytes()));
        let stored = rec.map(|r| r.hash.as_str()).unwrap_or("");
        let matches = bool::from(digest.as_bytes().ct_eq(stored.as_bytes()));
        let rec = match rec {
            Some(r) if matches => r,
            _ => return Err(Refusal::BadToken),
        };
        if rec.revoked {
            return Err(Refusal::Revoked);
        }
        if rec.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(Refusal::Expired);
        }
        Ok(Grant {
            kind: TokenKind::Agent,
            tenant: rec.tenant.clone(),
            agent_id: Some(rec.agent_id.clone()),
            role: Some(rec.role),
            verified: true,
            jti: None,
            token_id: Some(rec.id.clone()),
        })
    }

    /// The shared secret (`default` tenant) or `tenant:secret` from the tenants file.
    fn check_shared(&self, token: &str) -> Result<Grant, Refusal> {
        let grant = |tenant: &str| Grant {
            kind: TokenKind::Shared,
            tenant: tenant.to_owned(),
            agent_id: None,
            role: None,
            verified: false,
            jti: None,
            token_id: None,
        };
        if let Some(secret) = &self.secrets.default
            && secret_eq(token, secret)
        {
            return Ok(grant(DEFAULT_TENANT));
        }
        if let Some((tenant, secret)) = token.split_once(':')
            && let Some(expected) = self.secrets.tenants.get(tenant)
            && secret_eq(secret, expected)
        {
            return Ok(grant(tenant));
        }
        Err(Refusal::BadToken)
    }

    /// Issues a JWT carrying what `grant` says (its binding, if any, included).
    pub fn issue_jwt(&self, grant: &Grant, now_ms: u64) -> (String, u64) {
        let exp_ms = now_ms + self.jwt_ttl.as_millis() as u64;
        let claims = json!({
            "tenant": grant.tenant,
            "sub": grant.agent_id,
            "role": grant.role.map(Role::as_str),
            "verified": grant.verified,
            "jti": uuid_v4(),
            "iat": now_ms / 1000,
            "exp": exp_ms / 1000,
        });
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{body}");
        let sig = ring::hmac::sign(&self.jwt_key, signing_input.as_bytes());
        (
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())),
            exp_ms,
        )
    }

    fn check_jwt(&self, token: &str, now_ms: u64) -> Result<Grant, Refusal> {
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(b), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refusal::BadToken);
        };
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| Refusal::BadToken)?;
        let signing_input = &token[..h.len() + 1 + b.len()];
        ring::hmac::verify(&self.jwt_key, signing_input.as_bytes(), &sig)
            .map_err(|_| Refusal::BadToken)?;
        // Signed by us, so the header is ours; still, only HS256 is ever accepted.
        let header: Value = decode_json(h)?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(Refusal::Invalid("JWT algorithm"));
        }
        let claims: Value = decode_json(b)?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Refusal::Invalid("JWT"))?;
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or(Refusal::Invalid("JWT"))?;
        if exp.saturating_mul(1000) <= now_ms {
            return Err(Refusal::Expired);
        }
        if self.revoked.contains_key(jti) {
            return Err(Refusal::Revoked);
        }
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let tenant = s("tenant").ok_or(Refusal::Invalid("JWT"))?;
        Ok(Grant {
            kind: TokenKind::Jwt,
            tenant,
            agent_id: s("sub"),
            role: s("role").as_deref().and_then(Role::parse),
            verified: claims.get("verified").and_then(Value::as_bool) == Some(true),
            jti: Some((jti.to_owned(), exp * 1000)),
            token_id: Some(jti.to_owned()),
        })
    }

    /// Counts a failure from `source`; `true` while the source is still allowed to try.
    pub fn note_failure(&mut self, source: &str, now: Instant) -> bool {
        self.rate.fail(source, now)
    }

    /// Whether `source` may try again now.
    pub fn allowed(&mut self, source: &str, now: Instant) -> bool {
        self.rate.allowed(source, now)
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub fn prune(&mut self, now_ms: u64) {
        self.revoked.retain(|_, exp| *exp > now_ms);
    }
}

fn decode_json(part: &str) -> Result<Value, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Refusal::BadToken)?;
    serde_json::from_slice(&bytes).map_err(|_| Refusal::Invalid("JWT"))
}

/// Binds a valid token to what the handshake claims. A bound id or role that differs from the
/// claim is refused; an unbound one takes the claim (self-asserted, as in ClawNet).
pub fn bind(
    grant: &Grant,
    claimed_id: Option<&str>,
    claimed_role: Option<&str>,
) -> Result<Identity, Refusal> {
    let claimed_role = match claimed_role {
        None | Some("") => None,
        Some(r) => Some(Role::parse(r).ok_or(Refusal::Invalid("role"))?),
    };
    let agent_id = match (&grant.agent_id, claimed_id) {
        (Some(bound), Some(claimed)) if !claimed.is_empty() && claimed != bound => {
            return Err(Refusal::OtherAgent {
                bound: bound.clone(),
                claimed: claimed.to_owned(),
            });
        }
        (Some(bound), _) => Some(bound.clone()),
        (None, Some(c)) if !c.is_empty() => {
            if !valid_name(c) {
                return Err(Refusal::Invalid("agent_id"));
            }
            Some(c.to_owned())
        }
        (None, _) => None,
    };
    let role = match (grant.role, claimed_role) {
        (Some(bound), Some(claimed)) if bound != claimed => {
            return Err(Refusal::OtherRole {
                bound: bound.as_str(),
                claimed: claimed.as_str().to_owned(),
            });
        }
        (Some(bound), _) => bound,
        (None, Some(claimed)) => claimed,
        (None, None) => Role::Worker,
    };
    Ok(Identity {
        tenant: grant.tenant.clone(),
        agent_id,
        role,
        verified: grant.verified,
        kind: grant.kind,
        token_id: grant.token_id.clone(),
    })
}

/// Failed attempts per source in a sliding minute, bounded in sources.
struct RateLimit {
    per_minute: usize,
    sources: HashMap<String, (Instant, usize)>,
}

impl RateLimit {
    fn new(per_minute: usize) -> RateLimit {
        RateLimit {
            per_minute,
            sources: HashMap::new(),
        }
    }

    fn allowed(&mut self, source: &str, now: Instant) -> bool {
        match self.sources.get(source) {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(60) => {
                *n < self.per_minute
            }
            _ => true,
        }
    }

    fn fail(&mut self, source: &str, now: Instant) -> bool {
        if self.sources.len() >= MAX_RATE_KEYS && !self.sources.contains_key(source) {
            let minute = Duration::from_secs(60);
            self.sources
                .retain(|_, (t, _)| now.duration_since(*t) < minute);
            if self.sources.len() >= MAX_RATE_KEYS {
                // Too many sources failing at once: refuse new ones rather than grow.
                return false;
            }
        }
        let e = self.sources.entry(source.to_owned()).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 < self.per_minute
    }
}

/// Reads the JWT signing key from the state directory, creating it (0600) on first start.
pub fn load_or_create_key(dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = dir.join("relay-jwt.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => log::warn!("{} is too short; making a new key", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = random_bytes::<32>();
    write_private(&path, &key)?;
    Ok(key.to_vec())
}

/// Writes a file only the owner can read, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(default: Option<&str>) -> Auth {
        let mut tenants = std::collections::BTreeMap::new();
        tenants.insert("acme".to_owned(), "acme-secret".to_owned());
        let secrets = SharedSecrets {
            default: default.map(str::to_owned),
            tenants,
        };
        Auth::new(secrets, &[7u8; 32], Duration::from_secs(60), 3)
    }

    #[test]
    fn per_agent_tokens_bind_id_role_and_tenant() {
        let mut a = auth(None);
        let (rec, token) = new_token("w1", Role::Worker, "acme", None, 0);
        assert!(!rec.hash.contains(&token[17..]), "only a hash is kept");
        a.tokens.insert(rec.id.clone(), rec.clone());
        let g = a.check(&token, 1).unwrap();
        assert_eq!((g.tenant.as_str(), g.verified), ("acme", true));
        let id = bind(&g, None, None).unwrap();
        assert_eq!(id.agent_id.as_deref(), Some("w1"));
        assert!(matches!(
            bind(&g, Some("w2"), None),
            Err(Refusal::OtherAgent { .. })
        ));
        assert!(matches!(
            bind(&g, Some("w1"), Some("master")),
            Err(Refusal::OtherRole { .. })
        ));
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(a.check(&wrong, 1), Err(Refusal::BadToken));
        a.tokens.get_mut(&rec.id).unwrap().expires_ms = Some(5);
        assert_eq!(a.check(&token, 5), Err(Refusal::Expired));
        a.tokens.get_mut(&rec.id).unwrap().revoked = true;
        assert_eq!(a.check(&token, 1), Err(Refusal::Revoked));
    }

    #[test]
    fn shared_secrets_only_when_configured() {
        assert_eq!(
            auth(None).check("very-secret-key-123", 0),
            Err(Refusal::BadToken)
        );
        let a = auth(Some("s3cret"));
        assert_eq!(a.check("s3cret", 0).unwrap().tenant, "default");
        assert_eq!(a.check("acme:acme-secret", 0).unwrap().tenant, "acme");
        assert_eq!(a.check("acme:s3cret", 0), Err(Refusal::BadToken));
        assert_eq!(a.check("", 0), Err(Refusal::NoToken));
        let g = a.check("s3cret", 0).unwrap();
        let id = bind(&g, Some("anyone"), Some("master")).unwrap();
        assert_eq!((id.role, id.verified), (Role::Master, false));
    }

    #[test]
    fn jwts_expire_and_are_revoked() {
        let mut a = auth(Some("s3cret"));
        let g = a.check("s3cret", 0).unwrap();
        let (jwt, exp) = a.issue_jwt(&g, 1_000_000);
        let back = a.check(&jwt, 1_000_001).unwrap();
        assert_eq!(
            (back.kind, back.tenant.as_str()),
            (TokenKind::Jwt, "default")
        );
        assert_eq!(a.check(&jwt, exp), Err(Refusal::Expired));
        let mut forged = jwt.clone();
        forged.insert(forged.len() - 3, 'x');
        assert_eq!(a.check(&forged, 1_000_001), Err(Refusal::BadToken));
        a.revoked.insert(back.jti.unwrap().0, exp);
        assert_eq!(a.check(&jwt, 1_000_001), Err(Refusal::Revoked));
    }

    #[test]
    fn failures_are_limited_per_source() {
        let mut a = auth(None);
        let now = Instant::now();
        assert!(a.note_failure("1.2.3.4", now));
        assert!(a.note_failure("1.2.3.4", now));
        assert!(!a.note_failure("1.2.3.4", now));
        assert!(!a.allowed("1.2.3.4", now));
        assert!(a.allowed("5.6.7.8", now));
        assert!(a.allowed("1.2.3.4", now + Duration::from_secs(61)));
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
