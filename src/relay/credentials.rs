//! Credentials: `store_credentials`, `get_credentials`, `list_credentials`,
//! `share_credentials`, `revoke_credentials_access` (and `delete_credentials`), encrypted at
//! rest, and `clove relay rotate-key`.
//!
//! Each value is sealed with AES-256-GCM under a key derived per tenant (HKDF-SHA256) from a
//! 256-bit master key in a 0600 file the daemon makes in its state directory
//! (`relay.credentials_key_file`), with a random 96-bit nonce per value and the tenant and
//! credential id as associated data: a ciphertext moved to another credential or tenant does
//! not open. Every sealed value names its master key (`kid`, a fingerprint), so values sealed
//! under either key open while a rotation is under way. A value is never in a log line, an
//! event, a listing, the audit log or an error text; a ciphertext that does not open gives
//! `INTERNAL_ERROR` without details.
//!
//! Rotation (crash-safe): (1) the new key is written beside the old one as `<file>.new`
//! (fsynced); (2) every value is sealed again under it and committed in ONE store transaction
//! together with the record of which key is current (`relay.meta`); (3) `<file>.new` is
//! renamed over the key file. At start, [`open_keyring`] finishes an interrupted rotation
//! (the record names the new key: step 3 is done now) or rolls it back (it does not: values
//! sealed under the new key are sealed again under the old one, then `<file>.new` goes).
//! While a rotation runs, changes to credentials are refused for its few milliseconds.

use super::State;
use super::events::{Ctx, error_reply};
use super::resources::{
    self, CREDENTIALS, can_change, can_read, doc, emit_to, emit_to_sharers, mgmt, need_agent,
    required, text,
};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The collection holding which master key is current.
pub const META: &str = "relay.meta";
const META_KEY_ID: &str = "credentials_key";

/// Why a value could not be sealed or opened. The texts name no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the value does not open: it was changed, or moved from another credential")]
    Tampered,
    #[error("the master key it was sealed with ({0}) is not available")]
    UnknownKey(String),
    #[error("the stored ciphertext is malformed")]
    Malformed,
    #[error("the system's random number generator failed")]
    Random,
}

/// A value as kept: which master key, the nonce and the ciphertext (with its tag), base64.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    pub kid: String,
    pub nonce: String,
    pub ct: String,
}

/// A master key and its fingerprint.
#[derive(Clone)]
pub struct MasterKey {
    pub kid: String,
    bytes: [u8; 32],
}

impl MasterKey {
    pub fn new(bytes: [u8; 32]) -> MasterKey {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"clove relay credentials key id\0".as_slice(), &bytes].concat(),
        );
        let kid = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        MasterKey { kid, bytes }
    }

    /// A fresh random key.
    pub fn random() -> Result<MasterKey, CryptoError> {
        let mut b = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| CryptoError::Random)?;
        Ok(MasterKey::new(b))
    }

    /// The tenant's AES-256-GCM key: HKDF-SHA256 of the master key, for that tenant.
    fn cipher(&self, tenant: &str) -> Aes256Gcm {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"clove-relay-credentials-v1"), &self.bytes);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit (255 * 32): this cannot fail.
        let _ = hk.expand(
            &[b"tenant:".as_slice(), tenant.as_bytes()].concat(),
            &mut okm,
        );
        Aes256Gcm::new(&okm.into())
    }
}

/// The associated data: the tenant and the credential id, length-prefixed so that no two
/// pairs give the same bytes.
fn aad(tenant: &str, id: &str) -> Vec<u8> {
    let mut v = b"clove-relay-credential\0".to_vec();
    v.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    v.extend_from_slice(tenant.as_bytes());
    v.extend_from_slice(id.as_bytes());
    v
}

/// The master keys the relay holds: the current one, and during or after an interrupted
/// rotation the other.
pub struct Keyring {
    pub path: PathBuf,
    pub current: MasterKey,
    pub other: Option<MasterKey>,
    /// A rotation is under way: changes to credentials wait for it.
    pub rotating: bool,
    /// A rotation failed to commit: the next start settles it; no other runs before.
    pub unsettled: bool,
}

impl Keyring {
    fn key(&self, kid: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(self.other.as_ref())
            .find(|k| k.kid == kid)
    }

    /// Seals `plain` for credential `id` of `tenant` under the current key.
    pub fn seal(&self, tenant: &str, id: &str, plain: &[u8]) -> Result<Sealed, CryptoError> {
        seal_with(&self.current, tenant, id, plain)
    }

    /// Opens a sealed value of credential `id` of `tenant`.
    pub fn open(&self, tenant: &str, id: &str, s: &Sealed) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .key(&s.kid)
            .ok_or_else(|| CryptoError::UnknownKey(s.kid.clone()))?;
        let nonce: [u8; 12] = B64
            .decode(&s.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(CryptoError::Malformed)?;
        let ct = B64.decode(&s.ct).map_err(|_| CryptoError::Malformed)?;
        let aad = aad(tenant, id);
        key.cipher(tenant)
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Tampered)
    }

    /// Seals again under the current key a value sealed under another (`None`: nothing to do).
    pub fn reseal(
        &self,
        tenant: &str,
        id: &str,
        s: &Sealed,
    ) -> Result<Option<Sealed>, CryptoError> {
        if s.kid == self.current.kid {
            return Ok(None);
        }
        let plain = self.open(tenant, id, s)?;
        self.seal(tenant, id, &plain).map(Some)
    }
}

fn seal_with(key: &MasterKey, tenant: &str, id: &str, plain: &[u8]) -> Result<Sealed, CryptoError> {
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| CryptoError::Random)?;
    let aad = aad(tenant, id);
    let ct = key
        .cipher(tenant)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Malformed)?;
    Ok(Sealed {
        kid: key.kid.clone(),
        nonce: B64.encode(nonce),
        ct: B64.encode(ct),
    })
}

/// One credential as kept: its value sealed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub owner: String,
    #[serde(default)]
    pub shared_with: BTreeSet<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub sealed: Sealed,
}

super::resources::shared_by_fields!(Credential);

impl Credential {
    /// What listings show: everything but the value.
    pub fn meta(&self) -> Value {
        json!({"credentialId": self.id, "id": self.id, "name": self.name, "service": self.name,
               "description": self.description, "owner": self.owner,
               "sharedWith": self.shared_with, "createdAt": self.created_ms,
               "updatedAt": self.updated_ms})
    }
}

/// The path of the rotation's new key, beside the key file.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// Reads a key file: `None` when there is none.
fn read_key(path: &Path) -> Result<Option<MasterKey>, String> {
    match std::fs::read(path) {
        Ok(b) => {
            let bytes: [u8; 32] = b.try_into().map_err(|_| {
                format!(
                    "{} is not a 32-byte key (relay.credentials_key_file)",
                    path.display()
                )
            })?;
            warn_if_readable(path);
            Ok(Some(MasterKey::new(bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "relay: {} can be read by others (mode {:o}); it should be 0600",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
}

/// Writes a key file (0600) crash-safely: a temporary file, fsync, rename, fsync of the
/// directory.
pub fn write_key(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&key.bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Makes a rename or removal in `path`'s directory durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// How an interrupted rotation was settled at start (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Nothing,
    Finished,
    RolledBack,
}

/// Opens the credentials' master key at start (making it on first start), settles a rotation
/// a crash interrupted, and seals again under the current key every value that is not.
/// Runs before the reactor: it may wait for the store.
pub fn open_keyring(st: &mut State, store: &crate::store::StateStore) -> Result<(), String> {
    let path = st.cfg.resources.credentials_key_file.clone();
    let pending = pending_path(&path);
    let recorded = store
        .take_docs(META)
        .into_iter()
        .find(|(id, _)| id == META_KEY_ID)
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| v.get("kid")?.as_str().map(str::to_owned));
    let io = |e: std::io::Error| format!("relay: cannot write the credentials key: {e}");
    let (current, other, settled) = match (read_key(&path)?, read_key(&pending)?) {
        (None, None) => {
            let k = MasterKey::random().map_err(|e| e.to_string())?;
            write_key(&path, &k).map_err(io)?;
            (k, None, Settled::Nothing)
        }
        (Some(c), None) => (c, None, Settled::Nothing),
        (Some(c), Some(p)) if recorded.as_deref() != Some(p.kid.as_str()) => {
            (c, Some(p), Settled::RolledBack)
        }
        // The commit of step (2) named the new key (or it is the only key left): finish
        // step (3).
        (c, Some(p)) => {
            std::fs::rename(&pending, &path)
                .and_then(|_| sync_dir(&path))
                .map_err(io)?;
            (p, c, Settled::Finished)
        }
    };
    let mut ring = Keyring {
        path,
        current,
        other,
        rotating: false,
        unsettled: false,
    };
    let (mut writes, lost) = reseal_all(st, &ring);
    if recorded.as_deref() != Some(ring.current.kid.as_str()) {
        writes.push(key_record(&ring.current));
    }
    if !writes.is_empty() {
        store
            .docs_wait(writes)
            .map_err(|e| format!("relay: cannot save the credentials re-sealed at start: {e}"))?;
    }
    if settled == Settled::RolledBack {
        std::fs::remove_file(&pending)
            .and_then(|_| sync_dir(&pending))
            .map_err(io)?;
    }
    match settled {
        Settled::Finished => log::info!("relay: finished an interrupted credentials key rotation"),
        Settled::RolledBack => {
            log::info!("relay: rolled back an interrupted credentials key rotation")
        }
        Settled::Nothing => {}
    }
    if lost > 0 {
        log::error!(
            "relay: {lost} stored credentials cannot be opened with the credentials key ({}); \
             reading them fails",
            ring.path.display()
        );
    }
    // Everything that opens is under the current key now.
    ring.other = None;
    st.keyring = Some(ring);
    Ok(())
}

/// The record of which master key is current.
fn key_record(k: &MasterKey) -> crate::store::DocWrite {
    super::tenant::put(META, META_KEY_ID.to_owned(), &json!({"kid": k.kid}))
}

/// Seals again under the current key every value under another: the documents to write, and
/// how many values do not open at all.
fn reseal_all(st: &mut State, ring: &Keyring) -> (Vec<crate::store::DocWrite>, usize) {
    let (mut writes, mut lost) = (Vec::new(), 0);
    for t in st.tenants.values_mut() {
        for c in t.res.credentials.values_mut() {
            match ring.reseal(&t.name, &c.id, &c.sealed) {
                Ok(Some(s)) => {
                    c.sealed = s;
                    writes.push(doc(CREDENTIALS, &t.name, &c.id, &*c));
                }
                Ok(None) => {}
                Err(_) => lost += 1,
            }
        }
    }
    (writes, lost)
}

/// How a rotation ended, for [`State::end_rotation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationEnd {
    /// Nothing was changed (the new key could not be written).
    Untouched,
    /// Committed and renamed: the old key is no longer needed.
    Done,
    /// Sealed in memory but not settled on disk: the next start settles it.
    Unsettled,
}

impl State {
    /// Marks a rotation as under way; the key file's path.
    pub fn begin_rotation(&mut self) -> Result<PathBuf, String> {
        let ring = self
            .keyring
            .as_mut()
            .ok_or("the credentials key is not open")?;
        if ring.rotating {
            return Err("a key rotation is already under way".into());
        }
        if ring.unsettled {
            return Err(
                "an earlier rotation did not complete; restart the daemon to settle it first"
                    .into(),
            );
        }
        ring.rotating = true;
        Ok(ring.path.clone())
    }

    /// Makes `key` current and seals every value again under it: the documents to commit in
    /// one transaction (with the record naming the new key), and how many values there are.
    pub fn rotate_to(&mut self, key: MasterKey) -> (Vec<crate::store::DocWrite>, usize) {
        let Some(mut ring) = self.keyring.take() else {
            return (Vec::new(), 0);
        };
        let old = std::mem::replace(&mut ring.current, key);
        ring.other = Some(old);
        let (mut writes, lost) = reseal_all(self, &ring);
        if lost > 0 {
            log::error!("relay: {lost} credentials do not open and were left as they were");
        }
        let n = self.tenants.values().map(|t| t.res.credentials.len()).sum();
        writes.push(key_record(&ring.current));
        self.keyring = Some(ring);
        (writes, n)
    }

    pub fn end_rotation(&mut self, end: RotationEnd) {
        if let Some(ring) = self.keyring.as_mut() {
            ring.rotating = false;
            match end {
                RotationEnd::Untouched => {}
                RotationEnd::Done => ring.other = None,
                RotationEnd::Unsettled => ring.unsettled = true,
            }
        }
    }
}

impl super::Relay {
    /// `clove relay rotate-key`: a new master key, every value sealed again under it, crash-
    /// safely (see the module). Runs on the relay's I/O thread (it writes files and waits for
    /// the store).
    pub fn rotate_key(self: &std::sync::Arc<Self>) -> Value {
        let fail = |e: String| json!({"success": false, "error": e});
        let path = match self.with(|st| st.begin_rotation()) {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let pending = pending_path(&path);
        let key = match MasterKey::random() {
            Ok(k) => k,
            Err(e) => {
                self.with(|st| st.end_rotation(RotationEnd::Untouched));
                return fail(e.to_string());
            }
        };
        if let Err(e) = write_key(&pending, &key) {
            self.with(|st| st.end_rotation(RotationEnd::Untouched));
            return fail(format!("cannot write {}: {e}", pending.display()));
        }
        let kid = key.kid.clone();
        let (writes, n) = self.with(|st| st.rotate_to(key));
        if let Err(e) = self.kernel.store.docs_wait(writes) {
            self.with(|st| st.end_rotation(RotationEnd::Unsettled));
            return fail(format!(
                "the re-sealed values were not saved ({e}); the old key stays current, and the \
                 next start settles the rotation"
            ));
        }
        if let Err(e) = std::fs::rename(&pending, &path).and_then(|_| sync_dir(&path)) {
            self.with(|st| st.end_rotation(RotationEnd::Unsettled));
            return fail(format!(
                "the values are sealed under the new key, but {} could not replace {}: {e}; \
                 the next start finishes the rotation",
                pending.display(),
                path.display()
            ));
        }
        self.with(|st| {
            st.end_rotation(RotationEnd::Done);
            st.fx.audits.push((
                "RELAY_KEY_ROTATED",
                true,
                json!({"kid": kid, "credentials": n}),
            ));
        });
        log::info!("relay: credentials key rotated ({n} values re-sealed, key id {kid})");
        json!({"success": true, "kid": kid, "credentials": n})
    }
}

fn busy(st: &State) -> Result<&Keyring, Value> {
    match &st.keyring {
        None => Err(error_reply(
            "INTERNAL_ERROR",
            "the credentials key is not open",
        )),
        Some(r) if r.rotating => Err(error_reply(
            "INTERNAL_ERROR",
            "a credentials key rotation is under way; try again in a moment",
        )),
        Some(r) => Ok(r),
    }
}

/// The credential an event names: `credentialId`, or ClawNet's `service` (a name: the
/// caller's own first, else the newest it may read, or change when `change`).
fn find(st: &mut State, ctx: &Ctx, arg: &Value, change: bool) -> Result<String, Value> {
    let t = st.tenant(&ctx.tenant);
    if let Some(id) = text(arg, &["credentialId", "id"]) {
        let Some(c) = t.res.credentials.get(id) else {
            return Err(resources::not_found("credential", id));
        };
        if !can_read(ctx, c) {
            return Err(resources::denied("credential", id));
        }
        if change && !can_change(ctx, &c.owner) {
            return Err(resources::not_owner("credential", id));
        }
        return Ok(id.to_owned());
    }
    let Some(name) = text(arg, &["service", "name"]) else {
        return Err(error_reply(
            "INVALID_INPUT",
            "needs `credentialId` (or `service`)",
        ));
    };
    let me = ctx.agent.as_deref();
    let mut named: Vec<&Credential> = t
        .res
        .credentials
        .values()
        .filter(|c| c.name == name && can_read(ctx, *c))
        .collect();
    named.sort_by_key(|c| (Some(c.owner.as_str()) == me, c.updated_ms));
    let Some(c) = named.last() else {
        return Err(resources::not_found("credential", name));
    };
    if change && !can_change(ctx, &c.owner) {
        return Err(resources::not_owner("credential", name));
    }
    Ok(c.id.clone())
}

pub fn store_credentials(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    plan_store(st, ctx, arg).unwrap_or_else(|e| e)
}

fn plan_store(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Result<Value, Value> {
    busy(st)?;
    let me = need_agent(ctx)?;
    let name = required(arg, &["name", "service"])?;
    let value = match arg.get("value").or_else(|| arg.get("credentials")) {
        Some(v) if !v.is_null() => v,
        _ => {
            return Err(error_reply(
                "INVALID_INPUT",
                "store_credentials needs `value` (or `credentials`)",
            ));
        }
    };
    resources::check_size(st, "the credential value", value)?;
    let description = text(arg, &["description"]).unwrap_or("").to_owned();
    resources::check_size(st, "the description", &json!(description))?;
    let share = resources::share_with(arg)?;
    let now = crate::clock::now_ms();
    let t = st.tenant(&ctx.tenant);
    // Storing under a name the caller already owns replaces that credential's value.
    let own = t
        .res
        .credentials
        .values()
        .find(|c| c.owner == me && c.name == name)
        .cloned();
    if own.is_none() {
        let n = st.tenant(&ctx.tenant).res.credentials.len();
        resources::check_count(st, "credentials", n)?;
    }
    let id = own
        .as_ref()
        .map_or_else(super::auth::uuid_v4, |c| c.id.clone());
    let ring = busy(st)?;
    let sealed = ring
        .seal(&ctx.tenant, &id, value.to_string().as_bytes())
        .map_err(|e| error_reply("INTERNAL_ERROR", &format!("cannot seal the value: {e}")))?;
    let mut shared_with = own
        .as_ref()
        .map(|c| c.shared_with.clone())
        .unwrap_or_default();
    shared_with.extend(share.into_iter().filter(|a| *a != me));
    let cred = Credential {
        id: id.clone(),
        name: name.clone(),
        description,
        owner: me.clone(),
        shared_with,
        created_ms: own.as_ref().map_or(now, |c| c.created_ms),
        updated_ms: now,
        sealed,
    };
    ctx.writes.push(doc(CREDENTIALS, &ctx.tenant, &id, &cred));
    let note = json!({"credentialId": id, "name": name, "service": name, "owner": me,
                      "sharedWith": cred.shared_with, "timestamp": now,
                      "action": if own.is_some() { "updated" } else { "stored" }});
    emit_to_sharers(st, ctx, &cred, "credentials_updated", note.clone());
    mgmt(st, ctx, "credentials_updated", note);
    st.fx.audits.push((
        "RELAY_CREDENTIALS_STORED",
        true,
        json!({"tenant": ctx.tenant, "credentialId": id, "name": name, "by": me}),
    ));
    let reply = json!({"success": true, "ok": true, "credentialId": id, "id": id,
        "message": "Credentials stored successfully",
        "data": {"credentialId": id, "service": name, "name": name, "owner": me,
                 "sharedWith": cred.shared_with, "timestamp": now}});
    st.tenant(&ctx.tenant).res.credentials.insert(id, cred);
    Ok(reply)
}

pub fn get_credentials(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let id = match find(st, ctx, arg, false) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let Some(c) = st.tenant(&ctx.tenant).res.credentials.get(&id).cloned() else {
        return resources::not_found("credential", &id);
    };
    let Some(ring) = &st.keyring else {
        return error_reply("INTERNAL_ERROR", "the credentials key is not open");
    };
    let value = match ring.open(&ctx.tenant, &id, &c.sealed) {
        Ok(plain) => serde_json::from_slice::<Value>(&plain).unwrap_or(Value::Null),
        Err(e) => {
            log::warn!(
                "relay: credential {id} of tenant {} does not open: {e}",
                ctx.tenant
            );
            return error_reply(
                "INTERNAL_ERROR",
                &format!("credential {id} cannot be read: {e}"),
            );
        }
    };
    st.fx.audits.push((
        "RELAY_CREDENTIALS_READ",
        true,
        json!({"tenant": ctx.tenant, "credentialId": id, "name": c.name, "by": ctx.who()}),
    ));
    json!({"success": true, "ok": true,
        "data": {"credentialId": id, "name": c.name, "description": c.description,
                 "value": value, "createdAt": c.created_ms, "owner": c.owner},
        "credentialId": id, "service": c.name, "credentials": value, "owner": c.owner,
        "timestamp": c.updated_ms})
}

pub fn list_credentials(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let t = st.tenant(&ctx.tenant);
    let mut list: Vec<&Credential> = t
        .res
        .credentials
        .values()
        .filter(|c| can_read(ctx, *c))
        .collect();
    list.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    let metas: Vec<Value> = list.iter().map(|c| c.meta()).collect();
    json!({"success": true, "ok": true, "data": metas, "credentials": metas})
}

pub fn share_credentials(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    change_access(st, ctx, arg, true).unwrap_or_else(|e| e)
}

pub fn revoke_credentials_access(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    change_access(st, ctx, arg, false).unwrap_or_else(|e| e)
}

fn change_access(st: &mut State, ctx: &mut Ctx, arg: &Value, share: bool) -> Result<Value, Value> {
    busy(st)?;
    let id = find(st, ctx, arg, true)?;
    let agents = resources::targets(arg)?;
    let now = crate::clock::now_ms();
    let tenant = ctx.tenant.clone();
    let t = st.tenant(&tenant);
    let Some(c) = t.res.credentials.get_mut(&id) else {
        return Err(resources::not_found("credential", &id));
    };
    let changed = resources::apply_access(c, &agents, share);
    c.updated_ms = now;
    let c = c.clone();
    ctx.writes.push(doc(CREDENTIALS, &tenant, &id, &c));
    let (event, field, message, audit) = if share {
        (
            "credentials_shared",
            "addedAgents",
            "Credentials shared successfully",
            "RELAY_CREDENTIALS_SHARED",
        )
    } else {
        (
            "credentials_access_revoked",
            "removedAgents",
            "Access revoked successfully",
            "RELAY_CREDENTIALS_REVOKED",
        )
    };
    let note = json!({"credentialId": id, "name": c.name, "service": c.name, "owner": c.owner,
                      "by": ctx.who(), "timestamp": now});
    emit_to(st, ctx, &changed, event, note);
    st.fx.audits.push((
        audit,
        true,
        json!({"tenant": tenant, "credentialId": id, "agents": changed, "by": ctx.who()}),
    ));
    Ok(json!({"success": true, "ok": true, "message": message,
              "data": {"service": c.name, "credentialId": id, field: changed,
                       "sharedWith": c.shared_with}}))
}

/// `delete_credentials {credentialId}` (not in the seed; the owner or a master).
pub fn delete_credentials(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    if let Err(e) = busy(st) {
        return e;
    }
    let id = match find(st, ctx, arg, true) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let Some(c) = st.tenant(&ctx.tenant).res.credentials.remove(&id) else {
        return resources::not_found("credential", &id);
    };
    ctx.writes
        .push(resources::doc_delete(CREDENTIALS, &ctx.tenant, &id));
    let note = json!({"credentialId": id, "name": c.name, "owner": c.owner, "by": ctx.who()});
    emit_to_sharers(st, ctx, &c, "credentials_deleted", note.clone());
    mgmt(st, ctx, "credentials_deleted", note);
    st.fx.audits.push((
        "RELAY_CREDENTIALS_DELETED",
        true,
        json!({"tenant": ctx.tenant, "credentialId": id, "by": ctx.who()}),
    ));
    resources::message("Credentials deleted successfully")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring {
            path: PathBuf::from("/nonexistent"),
            current: MasterKey::new([7; 32]),
            other: None,
            rotating: false,
            unsettled: false,
        }
    }

    #[test]
    fn a_value_opens_only_for_its_tenant_and_id_under_its_key() {
        let r = ring();
        let s = r.seal("acme", "id-1", b"hunter2").unwrap();
        assert_eq!(r.open("acme", "id-1", &s).unwrap(), b"hunter2");
        assert_eq!(s.kid, r.current.kid);
        // Moved to another credential or tenant: it does not open.
        assert_eq!(r.open("acme", "id-2", &s), Err(CryptoError::Tampered));
        assert_eq!(r.open("lab", "id-1", &s), Err(CryptoError::Tampered));
        // One flipped bit of the ciphertext or the nonce: a clean error.
        let mut ct = B64.decode(&s.ct).unwrap();
        ct[0] ^= 1;
        let bad = Sealed {
            ct: B64.encode(ct),
            ..s.clone()
        };
        assert_eq!(r.open("acme", "id-1", &bad), Err(CryptoError::Tampered));
        let bad = Sealed {
            nonce: "AAAA".into(),
            ..s.clone()
        };
        assert_eq!(r.open("acme", "id-1", &bad), Err(CryptoError::Malformed));
        // Nonces are random: the same value seals differently, and the text never shows.
        let s2 = r.seal("acme", "id-1", b"hunter2").unwrap();
        assert_ne!(s.nonce, s2.nonce);
        assert!(
            !s.ct.contains("hunter2")
                && !B64
                    .decode(&s.ct)
                    .unwrap()
                    .windows(7)
                    .any(|w| w == b"hunter2")
        );
    }

    #[test]
    fn a_rotated_ring_opens_both_keys_and_reseals_to_the_current() {
        let mut r = ring();
        let old = r.seal("t", "a", b"v").unwrap();
        let k2 = MasterKey::new([9; 32]);
        r.other = Some(std::mem::replace(&mut r.current, k2));
        assert_eq!(r.open("t", "a", &old).unwrap(), b"v");
        let new = r.reseal("t", "a", &old).unwrap().unwrap();
        assert_eq!(new.kid, r.current.kid);
        assert!(r.reseal("t", "a", &new).unwrap().is_none());
        r.other = None;
        assert!(matches!(
            r.open("t", "a", &old),
            Err(CryptoError::UnknownKey(_))
        ));
        assert_eq!(r.open("t", "a", &new).unwrap(), b"v");
    }

    /// A relay state over a durable store in `dir` (the credentials key file is there too).
    fn state_in(dir: &Path) -> (State, crate::store::StateStore) {
        let mut errors = Vec::new();
        let raw = crate::relay::config::RawRelay::default();
        let cfg =
            crate::relay::config::RelayConfig::from_raw_env(&raw, dir, &|_| None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let auth = crate::relay::auth::Auth::new(cfg.secrets.clone(), &[1; 32], cfg.jwt_ttl, 10);
        let limits = crate::store::StoreLimits {
            max_keys: 10_000,
            max_key_bytes: 256,
            max_value_bytes: 1 << 20,
            max_total_bytes: 64 << 20,
        };
        let store = crate::store::StateStore::open_at(
            &crate::store::StoreConfig::at(&dir.join("store.db")),
            limits,
        )
        .unwrap();
        let mut st = State::new(std::sync::Arc::new(cfg), auth);
        crate::relay::resources::load(&mut st, &store);
        (st, store)
    }

    fn cred(id: &str, sealed: Sealed) -> Credential {
        Credential {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            owner: "w".into(),
            shared_with: BTreeSet::new(),
            created_ms: 1,
            updated_ms: 1,
            sealed,
        }
    }

    /// Leaves the store as a rotation from `k1` to `k2` that crashed after writing
    /// `<file>.new`: values `a` (under k1) and `b` (under k2: stored after the switch), and the
    /// record of the current key naming `recorded`.
    fn crashed_rotation(dir: &Path, k1: &MasterKey, k2: &MasterKey, recorded: &MasterKey) {
        let key_file = dir.join(crate::relay::config::CREDENTIALS_KEY_FILE);
        write_key(&key_file, k1).unwrap();
        write_key(&pending_path(&key_file), k2).unwrap();
        let (_, store) = state_in(dir);
        let a = seal_with(k1, "t", "a", b"\"va\"").unwrap();
        let b = seal_with(k2, "t", "b", b"\"vb\"").unwrap();
        store
            .docs_wait(vec![
                doc(CREDENTIALS, "t", "a", &cred("a", a)),
                doc(CREDENTIALS, "t", "b", &cred("b", b)),
                key_record(recorded),
            ])
            .unwrap();
        store.close();
    }

    /// Opens the keyring after the crash; the values, and the sealed records on disk.
    fn reopen(dir: &Path) -> (Vec<Vec<u8>>, Vec<String>) {
        let (mut st, store) = state_in(dir);
        open_keyring(&mut st, &store).unwrap();
        let ring = st.keyring.as_ref().unwrap();
        let t = &st.tenants["t"];
        let values = ["a", "b"]
            .iter()
            .map(|id| ring.open("t", id, &t.res.credentials[*id].sealed).unwrap())
            .collect();
        store.close();
        drop(store);
        let (st, _) = state_in(dir);
        let kids = ["a", "b"]
            .iter()
            .map(|id| st.tenants["t"].res.credentials[*id].sealed.kid.clone())
            .collect();
        (values, kids)
    }

    #[test]
    fn a_rotation_that_committed_is_finished_at_start() {
        let d = tempfile::tempdir().unwrap();
        let (k1, k2) = (MasterKey::new([1; 32]), MasterKey::new([2; 32]));
        crashed_rotation(d.path(), &k1, &k2, &k2);
        let (values, kids) = reopen(d.path());
        assert_eq!(values, [b"\"va\"".to_vec(), b"\"vb\"".to_vec()]);
        assert_eq!(
            kids,
            [k2.kid.clone(), k2.kid.clone()],
            "everything under the new key"
        );
        let key_file = d.path().join(crate::relay::config::CREDENTIALS_KEY_FILE);
        assert_eq!(read_key(&key_file).unwrap().unwrap().kid, k2.kid);
        assert!(!pending_path(&key_file).exists());
    }

    #[test]
    fn a_rotation_that_did_not_commit_is_rolled_back_at_start() {
        let d = tempfile::tempdir().unwrap();
        let (k1, k2) = (MasterKey::new([1; 32]), MasterKey::new([2; 32]));
        crashed_rotation(d.path(), &k1, &k2, &k1);
        let (values, kids) = reopen(d.path());
        assert_eq!(values, [b"\"va\"".to_vec(), b"\"vb\"".to_vec()]);
        assert_eq!(
            kids,
            [k1.kid.clone(), k1.kid.clone()],
            "everything under the old key"
        );
        let key_file = d.path().join(crate::relay::config::CREDENTIALS_KEY_FILE);
        assert_eq!(read_key(&key_file).unwrap().unwrap().kid, k1.kid);
        assert!(!pending_path(&key_file).exists());
    }

    #[test]
    fn key_ids_differ_per_key_and_key_files_are_private() {
        assert_ne!(MasterKey::new([1; 32]).kid, MasterKey::new([2; 32]).kid);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let k = MasterKey::random().unwrap();
        write_key(&p, &k).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_key(&p).unwrap().unwrap().kid, k.kid);
        assert!(read_key(&d.path().join("none")).unwrap().is_none());
        std::fs::write(&p, b"short").unwrap();
        assert!(read_key(&p).is_err());
    }
}
