//! Files: `upload_file`, `download_file`, `list_files`, `share_file`, `revoke_file_access`,
//! `delete_file`. Contents are files under the state directory (`relay-files/<fileId>`,
//! written as a temporary file, fsynced, renamed, the directory fsynced), metadata documents
//! in the store (`relay.files`); the acknowledgement of an upload waits for both.
//!
//! Sizes: an upload's size is computed from the length of its base64 text before anything is
//! decoded, and a file over `relay.max_file_bytes` gets `SIZE_LIMIT` (the relay's
//! `max_payload` is sized so such an upload still arrives whole and gets that answer rather
//! than a closed connection). A tenant's files together stay within
//! `relay.tenant_quota_bytes` (uploads under way count). Decoding, writing, reading and
//! encoding run on the relay's I/O thread ([`super::io`]); the reactor thread only checks and
//! queues. A deleted file's content is removed once its metadata's removal is committed; a
//! crash in between leaves content no document names, which the next start removes.
//!
//! Besides the seed's base64 `data`, an upload may carry its content as a Socket.IO binary
//! attachment (a `Buffer` from socket.io-client): no base64 at all on the way in.

use super::State;
use super::events::{Ctx, error_reply};
use super::io::Job;
use super::resources::{
    self, FILES, can_change, can_read, doc, emit_to, emit_to_sharers, mgmt, need_agent, required,
    text,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory of file contents, in the state directory.
pub const FILES_DIR: &str = "relay-files";

/// Base64 as browsers and Node write it; padding optional, since the size is computed from
/// the text either way.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A stored file's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub owner: String,
    #[serde(default)]
    pub shared_with: BTreeSet<String>,
    pub created_ms: u64,
}

super::resources::shared_by_fields!(FileMeta);

impl FileMeta {
    pub fn to_json(&self) -> Value {
        json!({"fileId": self.id, "id": self.id, "name": self.name, "filename": self.name,
               "type": self.mime, "size": self.size, "createdAt": self.created_ms,
               "owner": self.owner, "sharedWith": self.shared_with})
    }
}

/// An upload's content as it arrived.
pub enum Body {
    Base64(String),
    Bytes(Vec<u8>),
}

/// An upload for the I/O thread.
pub struct Upload {
    pub tenant: String,
    pub key: u64,
    pub ack: Option<u64>,
    pub meta: FileMeta,
    pub body: Body,
    pub dir: PathBuf,
    /// The caller's role and agent, for the events after the commit.
    pub by: String,
}

/// A download for the I/O thread.
pub struct Download {
    pub tenant: String,
    pub key: u64,
    pub ack: Option<u64>,
    pub id: String,
    pub path: PathBuf,
    pub agent: Option<String>,
    pub role: super::auth::Role,
}

/// The decoded size of base64 text (the text after any `data:...;base64,` prefix), from its
/// length alone.
pub fn decoded_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take(2).take_while(|b| *b == b'=').count();
    (b64.len() - pad) / 4 * 3 + ((b64.len() - pad) % 4 * 3 / 4)
}

/// The base64 text of a `data` field, without a data-URL prefix (browsers' FileReader).
fn strip_data_url(s: &str) -> &str {
    match s
        .strip_prefix("data:")
        .and_then(|r| r.split_once(";base64,"))
    {
        Some((_, rest)) => rest,
        None => s,
    }
}

/// Where file `id`'s content lives.
pub fn content_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

impl State {
    fn files_dir(&self) -> PathBuf {
        self.cfg.state_dir.join(FILES_DIR)
    }
}

pub fn upload_file(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    match plan_upload(st, ctx, arg) {
        Ok(()) => {
            ctx.deferred = true;
            Value::Null
        }
        Err(e) => e,
    }
}

/// The content of an upload: the base64 text moved out of the arguments, or a binary
/// attachment the `data` placeholder names.
fn body(ctx: &mut Ctx, arg: &Value) -> Result<Body, Value> {
    if let Some(text) = ctx.large.take() {
        return Ok(Body::Base64(text));
    }
    let data = arg.get("data");
    if let Some(n) = data
        .filter(|d| d.get("_placeholder").and_then(Value::as_bool) == Some(true))
        .and_then(|d| d.get("num"))
        .and_then(Value::as_u64)
        && (n as usize) < ctx.attachments.len()
    {
        return Ok(Body::Bytes(std::mem::take(
            &mut ctx.attachments[n as usize],
        )));
    }
    match data.and_then(Value::as_str) {
        Some(s) => Ok(Body::Base64(s.to_owned())),
        None => Err(error_reply(
            "INVALID_INPUT",
            "upload_file needs `data`: base64 text (or a binary attachment)",
        )),
    }
}

fn plan_upload(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Result<(), Value> {
    let me = need_agent(ctx)?;
    let name = required(arg, &["name", "filename"])?;
    let mime = text(arg, &["type", "mimeType"]).unwrap_or("application/octet-stream");
    if mime.len() > 255 {
        return Err(error_reply("INVALID_INPUT", "`type` is at most 255 bytes"));
    }
    let mut body = body(ctx, arg)?;
    let size = match &mut body {
        Body::Bytes(b) => b.len(),
        Body::Base64(s) => {
            let start = s.len() - strip_data_url(s).len();
            s.drain(..start);
            decoded_len(s)
        }
    } as u64;
    check_room(st, ctx, size)?;
    let share = resources::share_with(arg)?;
    let Some(io) = st.io.clone() else {
        return Err(error_reply(
            "INTERNAL_ERROR",
            "the relay's file thread is not running",
        ));
    };
    let meta = FileMeta {
        id: super::auth::uuid_v4(),
        name,
        mime: mime.to_owned(),
        size,
        shared_with: share.into_iter().filter(|a| *a != me).collect(),
        owner: me.clone(),
        created_ms: crate::clock::now_ms(),
    };
    let up = Upload {
        tenant: ctx.tenant.clone(),
        key: ctx.key,
        ack: ctx.ack,
        meta,
        body,
        dir: st.files_dir(),
        by: me,
    };
    if io.try_send(Job::Write(Box::new(up))).is_err() {
        return Err(busy());
    }
    st.tenant(&ctx.tenant).res.reserved_bytes += size;
    st.uploads_in_flight += size;
    Ok(())
}

fn busy() -> Value {
    error_reply(
        "INTERNAL_ERROR",
        "the relay's file queue is full; try again in a moment",
    )
}

/// The file's size, the tenant's quota and count, and the uploads under way.
fn check_room(st: &mut State, ctx: &Ctx, size: u64) -> Result<(), Value> {
    let limits = st.cfg.resources.clone();
    if size > limits.max_file_bytes as u64 {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!(
                "the file is {size} bytes; at most {} (relay.max_file_bytes)",
                limits.max_file_bytes
            ),
        ));
    }
    // Uploads decoded and written at once, all tenants together: a few of the largest.
    if st.uploads_in_flight + size > 4 * limits.max_file_bytes as u64 {
        return Err(busy());
    }
    let r = &st.tenant(&ctx.tenant).res;
    let used = r.file_bytes + r.reserved_bytes;
    if used + size > limits.tenant_quota_bytes {
        return Err(error_reply(
            "SIZE_LIMIT",
            &format!(
                "this tenant's files use {used} bytes; {size} more exceed its quota of {} \
                 (relay.tenant_quota_bytes)",
                limits.tenant_quota_bytes
            ),
        ));
    }
    let n = r.files.len();
    resources::check_count(st, "files", n)
}

impl super::Relay {
    /// On the I/O thread: decodes and writes an upload durably, then records it.
    pub fn write_upload(self: &Arc<Self>, mut up: Upload) {
        let written = match std::mem::replace(&mut up.body, Body::Bytes(Vec::new())) {
            Body::Bytes(b) => Ok(b),
            Body::Base64(s) => B64
                .decode(s.as_bytes())
                .map_err(|_| error_reply("INVALID_INPUT", "`data` is not base64")),
        }
        .and_then(|bytes| {
            write_content(&up.dir, &up.meta.id, &bytes).map_err(|e| {
                log::error!("relay: cannot write file {}: {e}", up.meta.id);
                error_reply("INTERNAL_ERROR", &format!("cannot write the file: {e}"))
            })
        });
        self.with(|st| st.upload_done(up, written));
    }

    /// On the I/O thread: reads a file and answers the download with it.
    pub fn read_download(self: &Arc<Self>, d: Download) {
        let reply = match std::fs::read(&d.path) {
            Ok(bytes) => self.download_reply(&d, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                resources::not_found("file", &d.id)
            }
            Err(e) => error_reply("INTERNAL_ERROR", &format!("cannot read the file: {e}")),
        };
        let Some(ack) = d.ack else {
            return;
        };
        // Built off the lock: the text is as large as the file, and more.
        let text = super::socket::ack_text(ack, reply);
        let over = self.reply_budget_full(text.len());
        self.with(|st| {
            if over {
                st.counters.downloads_refused += 1;
                let e = error_reply(
                    "INTERNAL_ERROR",
                    "the daemon holds too many unsent replies (server.pending_reply_total_bytes); \
                     try again in a moment",
                );
                st.emit_ack(d.key, ack, e);
            } else {
                st.counters.downloads += 1;
                st.send_packets(d.key, vec![crate::proto::engineio::Packet::message(text)]);
            }
        });
    }

    /// The answer to a download, checked again now (a revoke or delete since the request
    /// takes effect).
    fn download_reply(self: &Arc<Self>, d: &Download, bytes: &[u8]) -> Value {
        let meta = self.with(|st| {
            let f = st.tenant(&d.tenant).res.files.get(&d.id)?.clone();
            let ok = d.role == super::auth::Role::Master
                || d.agent
                    .as_deref()
                    .is_some_and(|a| a == f.owner || f.shared_with.contains(a));
            Some((f, ok))
        });
        let (f, allowed) = match meta {
            None => return resources::not_found("file", &d.id),
            Some(m) => m,
        };
        if !allowed {
            return resources::denied("file", &d.id);
        }
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        json!({"success": true, "ok": true,
            "data": {"fileId": f.id, "name": f.name, "data": data, "type": f.mime,
                     "size": f.size, "createdAt": f.created_ms, "owner": f.owner},
            "fileId": f.id, "filename": f.name, "owner": f.owner, "size": f.size,
            "type": f.mime, "timestamp": f.created_ms})
    }
}

/// Writes a file's content durably: a temporary file, fsync, rename, fsync of the directory.
fn write_content(dir: &Path, id: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{id}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let r = f.write_all(bytes).and_then(|_| f.sync_all());
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, content_path(dir, id))?;
    std::fs::File::open(dir)?.sync_all()
}

impl State {
    /// An upload was written (or failed): it is recorded, and answered once committed.
    fn upload_done(&mut self, up: Upload, written: Result<(), Value>) {
        let size = up.meta.size;
        self.uploads_in_flight = self.uploads_in_flight.saturating_sub(size);
        let t = self.tenant(&up.tenant);
        t.res.reserved_bytes = t.res.reserved_bytes.saturating_sub(size);
        if let Err(e) = written {
            if let Some(ack) = up.ack {
                self.emit_ack(up.key, ack, e);
            }
            return;
        }
        let f = up.meta;
        t.res.file_bytes += size;
        t.res.files.insert(f.id.clone(), f.clone());
        self.counters.uploads += 1;
        let mut ctx = Ctx::detached(&up.tenant, up.key, up.ack, Some(up.by.clone()));
        ctx.writes.push(doc(FILES, &up.tenant, &f.id, &f));
        if let Some(ack) = up.ack {
            let reply = json!({"success": true, "ok": true, "fileId": f.id, "id": f.id,
                "message": "File uploaded successfully", "size": f.size, "filename": f.name,
                "timestamp": f.created_ms, "data": f.to_json()});
            ctx.outs
                .push((vec![up.key], super::socket::ack_text(ack, reply)));
        }
        let note = f.to_json();
        emit_to_sharers(self, &mut ctx, &f, "file_uploaded", note.clone());
        mgmt(self, &mut ctx, "file_uploaded", note);
        let on_error = up.ack.map(|a| (up.key, a));
        self.push_commit(ctx.writes, ctx.outs, on_error);
    }
}

pub fn download_file(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let id = match readable(st, ctx, arg) {
        Ok(f) => f.id,
        Err(e) => return e,
    };
    let Some(io) = st.io.clone() else {
        return error_reply("INTERNAL_ERROR", "the relay's file thread is not running");
    };
    let d = Download {
        tenant: ctx.tenant.clone(),
        key: ctx.key,
        ack: ctx.ack,
        path: content_path(&st.files_dir(), &id),
        id,
        agent: ctx.agent.clone(),
        role: ctx.role,
    };
    if io.try_send(Job::Read(Box::new(d))).is_err() {
        return busy();
    }
    ctx.deferred = true;
    Value::Null
}

/// The file an event names, if the caller may read it.
fn readable(st: &mut State, ctx: &Ctx, arg: &Value) -> Result<FileMeta, Value> {
    let id = required(arg, &["fileId", "id"])?;
    let Some(f) = st.tenant(&ctx.tenant).res.files.get(&id) else {
        return Err(resources::not_found("file", &id));
    };
    if !can_read(ctx, f) {
        return Err(resources::denied("file", &id));
    }
    Ok(f.clone())
}

/// The file an event names, if the caller may change it.
fn changeable(st: &mut State, ctx: &Ctx, arg: &Value) -> Result<FileMeta, Value> {
    let f = readable(st, ctx, arg)?;
    if !can_change(ctx, &f.owner) {
        return Err(resources::not_owner("file", &f.id));
    }
    Ok(f)
}

pub fn list_files(st: &mut State, ctx: &mut Ctx, _: &Value) -> Value {
    let t = st.tenant(&ctx.tenant);
    let mut list: Vec<&FileMeta> = t.res.files.values().filter(|f| can_read(ctx, *f)).collect();
    list.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    let v: Vec<Value> = list.iter().map(|f| f.to_json()).collect();
    json!({"success": true, "ok": true, "data": v, "files": v})
}

pub fn share_file(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    file_access(st, ctx, arg, true).unwrap_or_else(|e| e)
}

pub fn revoke_file_access(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    file_access(st, ctx, arg, false).unwrap_or_else(|e| e)
}

fn file_access(st: &mut State, ctx: &mut Ctx, arg: &Value, share: bool) -> Result<Value, Value> {
    let f = changeable(st, ctx, arg)?;
    let agents = resources::targets(arg)?;
    let t = st.tenant(&ctx.tenant);
    let Some(f) = t.res.files.get_mut(&f.id) else {
        return Err(resources::not_found("file", &f.id));
    };
    let changed = resources::apply_access(f, &agents, share);
    let f = f.clone();
    ctx.writes.push(doc(FILES, &ctx.tenant, &f.id, &f));
    let (event, msg) = if share {
        ("file_shared", "File shared successfully")
    } else {
        ("file_access_revoked", "Access revoked successfully")
    };
    let mut note = f.to_json();
    note["by"] = json!(ctx.who());
    emit_to(st, ctx, &changed, event, note);
    Ok(
        json!({"success": true, "ok": true, "message": msg, "fileId": f.id,
              "data": {"fileId": f.id, "agents": changed, "sharedWith": f.shared_with}}),
    )
}

pub fn delete_file(st: &mut State, ctx: &mut Ctx, arg: &Value) -> Value {
    let f = match changeable(st, ctx, arg) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let dir = st.files_dir();
    let t = st.tenant(&ctx.tenant);
    t.res.files.remove(&f.id);
    t.res.file_bytes = t.res.file_bytes.saturating_sub(f.size);
    ctx.writes
        .push(resources::doc_delete(FILES, &ctx.tenant, &f.id));
    ctx.after.push(Job::Remove(content_path(&dir, &f.id)));
    let mut note = f.to_json();
    note["by"] = json!(ctx.who());
    emit_to_sharers(st, ctx, &f, "file_deleted", note.clone());
    mgmt(st, ctx, "file_deleted", note);
    resources::message("File deleted successfully")
}

/// Removes contents no document names (a crash between writing a file and committing its
/// metadata, or between a delete's commit and the removal) and temporary files. At start.
pub fn sweep_orphans(st: &State) {
    let dir = st.files_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let known: std::collections::HashSet<&str> = st
        .tenants
        .values()
        .flat_map(|t| t.res.files.keys().map(String::as_str))
        .collect();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !known.contains(name.as_ref()) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        log::info!("relay: removed {removed} file contents no document names");
    }
    for t in st.tenants.values() {
        for f in t.res.files.values() {
            if !content_path(&dir, &f.id).exists() {
                log::warn!(
                    "relay: the content of file {} ({}) is missing",
                    f.id,
                    f.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_sizes_come_from_the_text_length() {
        for n in 0..40usize {
            let bytes = vec![7u8; n];
            let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let bare = padded.trim_end_matches('=');
            assert_eq!(decoded_len(&padded), n, "{padded}");
            assert_eq!(decoded_len(bare), n, "{bare}");
            assert_eq!(B64.decode(bare).unwrap().len(), n);
        }
        assert_eq!(strip_data_url("data:text/plain;base64,QUJD"), "QUJD");
        assert_eq!(strip_data_url("QUJD"), "QUJD");
        // 10 MiB and one byte more: told apart without decoding anything.
        let max = 10 << 20;
        let text = base64::engine::general_purpose::STANDARD.encode(vec![0u8; max]);
        assert_eq!(text.len(), crate::relay::config::base64_len(max));
        assert_eq!(decoded_len(&text), max);
        let over = base64::engine::general_purpose::STANDARD.encode(vec![0u8; max + 1]);
        assert_eq!(decoded_len(&over), max + 1);
    }
}
