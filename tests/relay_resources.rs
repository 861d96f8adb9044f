//! The relay's resource events, driven by the real socket.io-client (the scenarios in
//! `tests/relay_clients/resources.js`): shared memory (one state with Clove's global scope),
//! encrypted credentials and key rotation, files, skills, versioned configs and
//! orchestrations; access, tenant isolation, limits, and `kill -9` at the worst moments.

use crate::harness::{Daemon, op, wait_for};
use crate::relay::{acme_tenants, code, make_token, master_token, relay_daemon, run_json, url};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/relay_clients")
}

/// A scenario of `resources.js`.
fn scenario(name: &str, params: Value) -> Value {
    let mut cmd = Command::new("node");
    cmd.current_dir(clients_dir())
        .arg("resources.js")
        .arg(name)
        .arg(params.to_string());
    run_json(cmd, &format!("resources scenario {name}"))
}

/// Tokens for the named workers, keyed by name.
fn tokens(d: &Daemon, names: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for n in names {
        m.insert(n.to_string(), json!(make_token(d, n, "worker", &[])));
    }
    Value::Object(m)
}

fn params(d: &Daemon, names: &[&str]) -> Value {
    json!({"url": url(d), "master": master_token(d), "tokens": tokens(d, names)})
}

fn ok(v: &Value) {
    assert_eq!(v["success"], true, "expected success: {v}");
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn relay_shared_memory_events_access_and_ttl_expiry() {
    let d = relay_daemon("", &[]);
    let mut p = params(&d, &["w1", "w2"]);
    p["big"] = json!(2 << 20);
    let o = scenario("memory", p);
    ok(&o["set"]);
    assert_eq!(o["set"]["message"], "Memory set successfully");
    assert_eq!(o["set"]["data"]["owner"], "w1");
    assert_eq!(o["set"]["data"]["ttl"], 60.0);
    assert_eq!(o["update_seen"]["value"], json!({"a": 1}));
    assert_eq!(o["mgmt_seen"]["data"]["key"], "k1");
    let g = &o["get"]["data"];
    assert_eq!(
        (g["key"].clone(), g["value"].clone()),
        (json!("k1"), json!({"a": 1}))
    );
    assert_eq!(g["owner"], "w1");
    assert!(g["expiresAt"].as_u64().unwrap() > g["createdAt"].as_u64().unwrap());
    assert!(o["list"]["keys"].as_array().unwrap().contains(&json!("k1")));
    assert_eq!(o["list"]["data"][0]["key"], "k1");
    // A non-owner can neither overwrite nor delete; a master can overwrite (the owner stays).
    assert_eq!(code(&o["overwrite_other"]), "ACCESS_DENIED");
    assert_eq!(code(&o["delete_other"]), "ACCESS_DENIED");
    ok(&o["overwrite_master"]);
    assert_eq!(o["get_after_master"]["data"]["value"], json!({"a": 3}));
    assert_eq!(o["get_after_master"]["data"]["owner"], "w1");
    ok(&o["overwrite_owner"]);
    for k in ["no_key", "no_value", "bad_ttl", "get_no_key"] {
        assert_eq!(code(&o[k]), "INVALID_INPUT", "{k}: {}", o[k]);
    }
    assert_eq!(code(&o["too_big"]), "SIZE_LIMIT", "{}", o["too_big"]);
    assert_eq!(code(&o["get_missing"]), "NOT_FOUND");
    assert_eq!(code(&o["delete_missing"]), "NOT_FOUND");
    // TTL: read before, EXPIRED after, never listed.
    ok(&o["get_short"]);
    assert_eq!(code(&o["get_expired"]), "EXPIRED", "{}", o["get_expired"]);
    assert!(
        !o["list_after_expiry"]["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("short"))
    );
    assert_eq!(o["delete"]["data"]["deletedBy"], "w1");
    assert_eq!(o["deleted_seen"]["deletedBy"], "w1");
    assert_eq!(code(&o["get_deleted"]), "NOT_FOUND");
}

#[test]
fn relay_shared_memory_is_the_clove_global_scope_both_ways() {
    let d = relay_daemon("", &[]);
    let w1 = make_token(&d, "w1", "worker", &[]);
    let step = |op: &str, key: &str, value: Value| {
        scenario(
            "memory_step",
            json!({"url": url(&d), "token": w1, "agent": "w1", "op": op, "key": key,
                   "value": value, "ttl": 3600}),
        )
    };
    let mut c = d.client();
    c.ok(op::SUBSCRIBE, json!({"event_types": ["STATE_CHANGED"]}));
    // Relay -> Clove: a key set over Socket.IO is FETCHed (and announced as STATE_CHANGED).
    ok(&step("set", "from-relay", json!({"n": 1.5, "s": "x"})));
    let f = c.ok(op::FETCH, json!({"key": "from-relay"}));
    assert_eq!(f["exists"], true, "{f}");
    assert_eq!(f["value"], json!({"n": 1.5, "s": "x"}));
    assert_eq!(f["scope"], "global");
    let ev = c.ok(op::POLL_EVENTS, json!({"max": 10}));
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "STATE_CHANGED" && e["data"]["key"] == "from-relay"),
        "{ev}"
    );
    // Clove -> relay: a key STOREd by a Clove client is read with get_shared_memory.
    c.ok(
        op::STORE,
        json!({"key": "from-clove", "value": [1, 2, 3], "ttl": 600}),
    );
    let g = step("get", "from-clove", Value::Null);
    assert_eq!(g["data"]["value"], json!([1, 2, 3]), "{g}");
    assert_eq!(g["data"]["owner"], "clove");
    assert!(g["data"]["expiresAt"].as_u64().is_some());
    let l = step("list", "", Value::Null);
    let keys = l["keys"].as_array().unwrap();
    assert!(keys.contains(&json!("from-relay")) && keys.contains(&json!("from-clove")));
    // A Clove key is the user's: a relay worker may not overwrite it.
    assert_eq!(code(&step("set", "from-clove", json!(0))), "ACCESS_DENIED");
    // A Clove DELETE of the relay's key: gone for the relay too; and it survives a restart.
    ok(&step("set", "kept", json!("durable")));
    c.ok(op::DELETE, json!({"key": "from-relay"}));
    assert_eq!(code(&step("get", "from-relay", Value::Null)), "NOT_FOUND");
    drop(c);
    let mut d = d;
    d.kill9();
    d.spawn().unwrap();
    let g = scenario(
        "memory_step",
        json!({"url": url(&d), "token": w1, "agent": "w1", "op": "get", "key": "kept"}),
    );
    assert_eq!(g["data"]["value"], "durable");
    assert_eq!(g["data"]["owner"], "w1", "the owner survives a restart");
}

#[test]
fn relay_credentials_events_access_and_aliases() {
    let d = relay_daemon("", &[]);
    let mut p = params(&d, &["w1", "w2", "w3"]);
    let marker = "pw-7f3a9c1e5b";
    p["marker"] = json!(marker);
    let o = scenario("credentials", p);
    ok(&o["store"]);
    assert_eq!(o["store"]["message"], "Credentials stored successfully");
    assert_eq!(o["store"]["data"]["service"], "db");
    assert_eq!(o["store"]["data"]["owner"], "w1");
    let id = o["store"]["credentialId"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID");
    assert!(o["updated_seen"]["value"].is_null());
    assert_eq!(o["mgmt_seen"]["data"]["credentialId"], id);
    let g = &o["get_owner"];
    assert_eq!(g["data"]["value"], json!({"user": "svc", "pass": marker}));
    assert_eq!(g["data"]["description"], "the db");
    assert_eq!(
        g["credentials"], g["data"]["value"],
        "ClawNet's top-level shape"
    );
    assert_eq!(g["service"], "db");
    // Access: a stranger no, a master yes; only the owner (or a master) shares and revokes.
    assert_eq!(code(&o["get_stranger"]), "ACCESS_DENIED");
    ok(&o["get_master"]);
    assert_eq!(code(&o["share_by_other"]), "ACCESS_DENIED");
    assert_eq!(o["share"]["data"]["addedAgents"], json!(["w2"]));
    assert_eq!(o["share"]["data"]["sharedWith"], json!(["w2"]));
    assert_eq!(o["shared_seen"]["credentialId"], id);
    assert_eq!(o["get_shared"]["data"]["value"]["pass"], marker);
    assert_eq!(code(&o["revoke_by_shared"]), "ACCESS_DENIED");
    let listed = o["list_w2"]["credentials"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].get("value").is_none(),
        "listings never carry values"
    );
    // Aliases: service / credentials / shareWith / agents.
    ok(&o["store_alias"]);
    assert_eq!(o["get_alias"]["credentials"], format!("tok-{marker}"));
    assert_eq!(o["revoke"]["data"]["removedAgents"], json!(["w2"]));
    assert_eq!(o["revoked_seen"]["credentialId"], id);
    // Revoked: refused at once.
    assert_eq!(code(&o["get_after_revoke"]), "ACCESS_DENIED");
    // Storing under a name one owns replaces the value, same id.
    assert_eq!(o["restore"]["credentialId"], id);
    assert_eq!(
        o["get_restored"]["data"]["value"]["pass"],
        format!("{marker}-2")
    );
    assert_eq!(o["list_master"]["data"].as_array().unwrap().len(), 2);
    assert_eq!(o["list_w3"]["data"].as_array().unwrap().len(), 1);
    for k in ["no_value", "no_name", "get_nothing", "share_no_target"] {
        assert_eq!(code(&o[k]), "INVALID_INPUT", "{k}: {}", o[k]);
    }
    assert_eq!(code(&o["get_unknown"]), "NOT_FOUND");
    assert_eq!(code(&o["delete_other"]), "ACCESS_DENIED");
    ok(&o["delete"]);
    assert_eq!(code(&o["get_deleted"]), "NOT_FOUND");
    assert_eq!(
        o["marker_in_events"], false,
        "no event carries a credential value"
    );
    // Nor do the error texts, the audit log or the daemon's log.
    let text = o.to_string();
    for k in ["get_stranger", "get_after_revoke", "share_by_other"] {
        assert!(!o[k].to_string().contains(marker), "{k}");
    }
    assert!(text.contains(marker), "the values were read back");
    let mut c = d.client();
    let audit = c.ok(op::GET_AUDIT_LOG, json!({"limit": 1000}));
    let audit = audit.to_string();
    assert!(audit.contains("RELAY_CREDENTIALS_READ"), "{audit}");
    assert!(!audit.contains(marker), "the audit log has no value");
    assert!(!d.logs().contains(marker), "the log has no value");
}

#[test]
fn relay_credentials_are_never_plaintext_on_disk_and_tampering_is_a_clean_error() {
    let mut d = relay_daemon("", &[]);
    let marker = "plain-4c2d8e6f1a";
    let w1 = make_token(&d, "w1", "worker", &[]);
    let stored = scenario(
        "store_many",
        json!({"url": url(&d), "token": w1, "n": 20, "prefix": marker}),
    );
    let ids: Vec<String> = stored["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    // Committed, and read back once (a read must leave nothing on disk either).
    let back = scenario(
        "read_many",
        json!({"url": url(&d), "token": w1, "ids": ids}),
    );
    assert_eq!(back[&ids[3]], format!("{marker}-3"));
    let key = d.state_dir.join("relay-credentials.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert_eq!(
        files_containing(&d.state_dir, marker.as_bytes()),
        Vec::<PathBuf>::new(),
        "a plaintext value in the state directory"
    );
    d.stop();
    assert_eq!(
        files_containing(&d.state_dir, marker.as_bytes()),
        Vec::<PathBuf>::new()
    );
    // Tamper with one ciphertext (the daemon is stopped), and move another's to a third id.
    let db = rusqlite::Connection::open(d.state_dir.join("store.db")).unwrap();
    let doc = |id: &str| -> (String, Value) {
        let (k, body): (String, String) = db
            .query_row(
                "SELECT id, body FROM docs WHERE collection = 'relay.credentials' AND id LIKE ?1",
                [format!("%{id}")],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        (k, serde_json::from_str(&body).unwrap())
    };
    let (k0, mut v0) = doc(&ids[0]);
    let ct = v0["sealed"]["ct"].as_str().unwrap().to_owned();
    let flipped = if ct.starts_with('A') { "B" } else { "A" };
    v0["sealed"]["ct"] = json!(format!("{flipped}{}", &ct[1..]));
    let (_, v1) = doc(&ids[1]);
    let (k2, mut v2) = doc(&ids[2]);
    v2["sealed"] = v1["sealed"].clone();
    for (k, v) in [(k0, v0), (k2, v2)] {
        db.execute(
            "UPDATE docs SET body = ?1 WHERE collection = 'relay.credentials' AND id = ?2",
            [v.to_string(), k],
        )
        .unwrap();
    }
    drop(db);
    d.spawn().unwrap();
    let back = scenario(
        "read_many",
        json!({"url": url(&d), "token": w1, "ids": ids}),
    );
    for bad in [&ids[0], &ids[2]] {
        assert_eq!(back[bad]["code"], "INTERNAL_ERROR", "{}", back[bad]);
        let e = back[bad]["error"].as_str().unwrap();
        assert!(e.contains("cannot be read") && !e.contains(marker), "{e}");
    }
    assert_eq!(
        back[&ids[1]],
        format!("{marker}-1"),
        "the others still open"
    );
    assert_eq!(back[&ids[19]], format!("{marker}-19"));
    assert!(d.alive());
}

/// Key rotation interrupted by `kill -9` (as soon as the new key file exists, so during the
/// re-encryption or its commit), then settled at the next start: every value still opens,
/// one key file is left, and a full rotation then goes through.
#[test]
fn relay_key_rotation_interrupted_by_kill9_is_settled_at_start() {
    let mut d = relay_daemon("max_resources = 5000", &[]);
    let w1 = make_token(&d, "w1", "worker", &[]);
    let n = 1500;
    let stored = scenario(
        "store_many",
        json!({"url": url(&d), "token": w1, "n": n, "prefix": "rot"}),
    );
    let ids: Vec<String> = stored["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let key = d.state_dir.join("relay-credentials.key");
    let pending = d.state_dir.join("relay-credentials.key.new");
    let old_key = std::fs::read(&key).unwrap();
    let mut rotate = Command::new(crate::harness::BIN)
        .args(["relay", "rotate-key", "--socket"])
        .arg(&d.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the new key file", Duration::from_secs(20), || {
        pending.exists().then_some(())
    });
    d.kill9();
    let _ = rotate.wait();
    d.spawn().unwrap();
    let settled = d.logs();
    assert!(
        settled.contains("rolled back an interrupted credentials key rotation")
            || settled.contains("finished an interrupted credentials key rotation"),
        "the restart settles the rotation"
    );
    assert!(!pending.exists(), "one key file is left");
    let back = scenario(
        "read_many",
        json!({"url": url(&d), "token": w1, "ids": ids}),
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            back[id],
            format!("rot-{i}"),
            "credential {i} after the crash"
        );
    }
    // A rotation that completes: a new key, the same values.
    let out = Command::new(crate::harness::BIN)
        .args(["relay", "rotate-key", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{n} values")));
    let new_key = std::fs::read(&key).unwrap();
    assert_ne!(new_key, old_key);
    assert!(!pending.exists());
    d.kill9();
    d.spawn().unwrap();
    let back = scenario(
        "read_many",
        json!({"url": url(&d), "token": w1, "ids": ids[..50]}),
    );
    for (i, id) in ids[..50].iter().enumerate() {
        assert_eq!(back[id], format!("rot-{i}"));
    }
}

#[test]
fn relay_files_events_access_and_removal() {
    let d = relay_daemon("", &[]);
    let o = scenario("files", params(&d, &["w1", "w2", "w3"]));
    ok(&o["upload"]);
    assert_eq!(o["upload"]["size"], 5);
    assert_eq!(o["upload"]["filename"], "a.txt");
    assert_eq!(o["upload"]["message"], "File uploaded successfully");
    let id = o["upload"]["fileId"].as_str().unwrap();
    assert_eq!(o["uploaded_seen"]["type"], "text/plain");
    assert_eq!(o["mgmt_seen"]["data"]["fileId"], id);
    ok(&o["upload_alias"]);
    assert_eq!(o["alias_seen_by_w2"]["name"], "b.bin");
    assert_eq!(o["binary_round_trip"], true, "a Buffer attachment");
    let dl = &o["download"];
    assert_eq!(dl["data"]["data"], "aGVsbG8=");
    assert_eq!(dl["data"]["name"], "a.txt");
    assert_eq!(dl["data"]["type"], "text/plain");
    assert_eq!(
        (
            dl["fileId"].clone(),
            dl["filename"].clone(),
            dl["owner"].clone()
        ),
        (json!(id), json!("a.txt"), json!("w1"))
    );
    assert_eq!(code(&o["download_stranger"]), "ACCESS_DENIED");
    assert_eq!(code(&o["share_by_other"]), "ACCESS_DENIED");
    ok(&o["share"]);
    assert_eq!(o["shared_seen"]["fileId"], id);
    assert_eq!(o["download_shared"]["data"]["data"], "aGVsbG8=");
    ok(&o["download_master"]);
    assert_eq!(o["list_w2"]["files"].as_array().unwrap().len(), 2);
    assert_eq!(o["list_w3"]["files"].as_array().unwrap().len(), 0);
    ok(&o["revoke"]);
    assert_eq!(o["revoked_seen"]["fileId"], id);
    assert_eq!(code(&o["download_revoked"]), "ACCESS_DENIED");
    assert_eq!(code(&o["delete_other"]), "ACCESS_DENIED");
    assert_eq!(o["delete"]["message"], "File deleted successfully");
    assert_eq!(code(&o["download_deleted"]), "NOT_FOUND");
    for k in ["no_data", "no_name", "bad_base64"] {
        assert_eq!(code(&o[k]), "INVALID_INPUT", "{k}: {}", o[k]);
    }
    assert_eq!(code(&o["download_missing"]), "NOT_FOUND");
    // The deleted file's content is gone from the state directory; the others are there.
    let dir = d.state_dir.join("relay-files");
    wait_for("the content removed", Duration::from_secs(10), || {
        (!dir.join(id).exists()).then_some(())
    });
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

#[test]
fn relay_a_10_mib_file_round_trips_byte_exact_and_one_byte_more_is_refused() {
    let d = relay_daemon("", &[]);
    let w1 = make_token(&d, "w1", "worker", &[]);
    let o = scenario(
        "big_file",
        json!({"url": url(&d), "token": w1, "size": 10 << 20}),
    );
    ok(&o["upload"]);
    assert_eq!(o["upload"]["size"], 10 << 20);
    assert_eq!(o["download_ok"], true, "{o}");
    assert_eq!(o["same"], true, "byte-exact");
    assert_eq!(code(&o["over"]), "SIZE_LIMIT", "{}", o["over"]);
    assert_eq!(o["still_connected"], true);
    let id = o["upload"]["fileId"].as_str().unwrap();
    let on_disk = d.state_dir.join("relay-files").join(id);
    assert_eq!(std::fs::metadata(on_disk).unwrap().len(), 10 << 20);
    eprintln!(
        "10 MiB upload {} ms, download {} ms",
        o["upload_ms"], o["download_ms"]
    );
}

#[test]
fn relay_file_quota_per_tenant() {
    let d = relay_daemon("tenant_quota_bytes = 3000\nmax_file_bytes = 2000", &[]);
    let w1 = make_token(&d, "w1", "worker", &[]);
    let o = scenario("quota", json!({"url": url(&d), "token": w1, "size": 1400}));
    ok(&o["first"]);
    ok(&o["second"]);
    assert_eq!(code(&o["third"]), "SIZE_LIMIT", "{}", o["third"]);
    assert!(o["third"]["error"].as_str().unwrap().contains("quota"));
    ok(&o["delete"]);
    ok(&o["after_delete"]);
}

#[test]
fn relay_skills_events_access_and_experience() {
    let d = relay_daemon("", &[]);
    let o = scenario("skills", params(&d, &["w1", "w2", "w3"]));
    ok(&o["register"]);
    assert_eq!(o["register"]["message"], "Skill registered successfully");
    let id = o["register"]["skillId"].as_str().unwrap();
    assert_eq!(o["registered_seen"]["skillId"], id);
    assert_eq!(code(&o["duplicate"]), "ALREADY_EXISTS");
    let g = &o["get"];
    assert_eq!(g["data"]["description"], "parses logs");
    assert_eq!(
        (g["name"].clone(), g["owner"].clone()),
        (json!("parse"), json!("w1"))
    );
    assert_eq!(g["experience"], 0);
    assert_eq!(o["get_alias_shared"]["data"]["data"], json!({"cmd": "rg"}));
    assert_eq!(o["get_alias_shared"]["experience"], 4);
    assert_eq!(code(&o["get_stranger"]), "ACCESS_DENIED");
    assert_eq!(o["exp1"]["newExperience"], 1);
    assert_eq!(o["exp5"]["newExperience"], 6);
    assert_eq!(o["exp_floor"]["newExperience"], 0, "never below 0");
    assert_eq!(code(&o["exp_stranger"]), "ACCESS_DENIED");
    assert_eq!(code(&o["exp_bad"]), "INVALID_INPUT");
    assert_eq!(code(&o["share_by_other"]), "ACCESS_DENIED");
    ok(&o["share"]);
    assert_eq!(o["shared_seen"]["skillId"], id);
    assert_eq!(o["exp_shared"]["newExperience"], 2);
    assert_eq!(o["list_w2"]["skills"].as_array().unwrap().len(), 2);
    assert_eq!(o["list_master"]["data"].as_array().unwrap().len(), 2);
    ok(&o["revoke"]);
    assert_eq!(o["revoked_seen"]["skillId"], id);
    assert_eq!(code(&o["get_revoked"]), "ACCESS_DENIED");
    assert_eq!(code(&o["delete_other"]), "ACCESS_DENIED");
    ok(&o["delete_master"]);
    assert_eq!(o["deleted_seen"]["by"], "master");
    assert_eq!(code(&o["get_deleted"]), "NOT_FOUND");
    assert_eq!(code(&o["no_name"]), "INVALID_INPUT");
}

#[test]
fn relay_configs_have_versions_revert_clone_and_history_bound() {
    let d = relay_daemon("config_history = 3", &[]);
    let o = scenario("configs", params(&d, &["w1", "w2"]));
    ok(&o["save"]);
    assert_eq!(o["save"]["version"], 1);
    assert_eq!(o["saved_seen"]["data"]["name"], "runner");
    assert_eq!(code(&o["duplicate"]), "ALREADY_EXISTS");
    assert_eq!(o["update2"]["newVersion"], 2);
    assert_eq!(o["updated_seen"]["currentVersion"], 2);
    assert_eq!(o["update3"]["newVersion"], 3);
    let g = &o["get3"];
    assert_eq!(g["data"]["data"], json!({"v": 3}));
    assert_eq!(g["data"]["currentVersion"], 3);
    assert_eq!(g["version"], 3);
    assert_eq!(g["history"].as_array().unwrap().len(), 3);
    // A revert is a new version with the old data.
    assert_eq!(o["revert1"]["currentVersion"], 4);
    assert_eq!(o["get_reverted"]["data"]["data"], json!({"v": 1}));
    assert_eq!(o["revert_alias"]["currentVersion"], 5);
    // Three versions kept: 3, 4, 5; version 1 is gone.
    assert_eq!(code(&o["revert_trimmed"]), "NOT_FOUND");
    assert_eq!(code(&o["revert_unknown"]), "NOT_FOUND");
    let clone = o["clone"]["newConfigId"].as_str().unwrap();
    assert_eq!(o["clone"]["configId"], clone);
    assert_eq!(o["get_clone"]["data"]["data"], json!({"v": 3}));
    assert_eq!(o["get_clone"]["version"], 1);
    assert_eq!(o["get_clone"]["name"], "runner-2");
    let list = o["list"]["configs"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["versionCount"], 3);
    assert_eq!(list[0]["currentVersion"], 5);
    assert_eq!(o["list_w2"]["data"].as_array().unwrap().len(), 0);
    assert_eq!(code(&o["get_other"]), "ACCESS_DENIED");
    assert_eq!(code(&o["update_other"]), "ACCESS_DENIED");
    assert_eq!(o["update_master"]["newVersion"], 6);
    assert_eq!(code(&o["no_data"]), "INVALID_INPUT");
    assert_eq!(code(&o["delete_other"]), "ACCESS_DENIED");
    ok(&o["delete"]);
    assert_eq!(o["deleted_seen"]["configId"], o["save"]["configId"]);
    assert_eq!(code(&o["get_deleted"]), "NOT_FOUND");
}

#[test]
fn relay_orchestrations_sequential_parallel_failure_cancel_and_refusals() {
    let d = relay_daemon("", &[]);
    let o = scenario("orchestrations", params(&d, &["a1", "a2", "w3"]));
    let id = o["create"]["orchestrationId"].as_str().unwrap();
    assert_eq!(o["create"]["orchId"], id);
    assert_eq!(o["created_seen"]["taskCount"], 2);
    assert_eq!(code(&o["start_by_worker"]), "ACCESS_DENIED");
    assert_eq!(o["start"]["message"], "Orchestration started successfully");
    assert_eq!(code(&o["start_again"]), "INVALID_INPUT");
    let e = &o["exec0"];
    assert_eq!(
        (
            e["taskIndex"].clone(),
            e["command"].clone(),
            e["agentId"].clone()
        ),
        (json!(0), json!("/fetch"), json!("a1"))
    );
    assert_eq!(e["description"], "fetch");
    assert_eq!(o["legacy0"]["task"]["command"], "/fetch");
    // Sequential: task 1 is not running yet; reports from others and repeats are refused.
    assert_eq!(code(&o["early"]), "INVALID_INPUT");
    assert_eq!(code(&o["foreign"]), "ACCESS_DENIED");
    assert_eq!(code(&o["bad_status"]), "INVALID_INPUT");
    assert_eq!(code(&o["bad_index"]), "NOT_FOUND");
    assert_eq!(o["report0"]["message"], "Task result recorded");
    assert_eq!(code(&o["repeat0"]), "INVALID_INPUT", "task 0 is done");
    assert_eq!(o["exec1"]["taskIndex"], 1);
    assert_eq!(o["a2_got_task0"], false);
    let mid = &o["mid"]["data"];
    assert_eq!(mid["status"], "running");
    assert_eq!(mid["tasks"][0]["status"], "completed");
    assert_eq!(mid["tasks"][0]["result"], "fetched");
    assert_eq!(mid["tasks"][1]["status"], "running");
    assert_eq!(o["completed"]["status"], "completed");
    assert_eq!(o["completed"]["results"][1]["result"], "processed");
    let g = &o["get"]["data"];
    assert_eq!(g["status"], "completed");
    for t in g["tasks"].as_array().unwrap() {
        assert!(t["startedAt"].as_u64().unwrap() <= t["completedAt"].as_u64().unwrap());
    }
    let listed = o["list"]["orchestrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["orchestrationId"] == id)
        .cloned()
        .unwrap();
    assert_eq!(
        (
            listed["taskCount"].clone(),
            listed["completedCount"].clone()
        ),
        (json!(2), json!(2))
    );
    assert_eq!(o["list_w3"]["data"].as_array().unwrap().len(), 0);
    assert_eq!(code(&o["get_w3"]), "ACCESS_DENIED");
    // Parallel: a target-less task went to both agents; a repeat is refused; one failure
    // fails the plan once every task is done.
    ok(&o["par_start"]);
    assert_eq!(o["par_a1"]["taskIndex"], 0);
    assert_eq!(o["par_a2_count"], 2, "a2 got the shared task and its own");
    ok(&o["par_r1"]);
    assert_eq!(code(&o["par_dup"]), "ALREADY_EXISTS");
    ok(&o["par_r2"]);
    assert_eq!(o["par_running"]["data"]["status"], "running");
    assert_eq!(o["par_running"]["data"]["tasks"][1]["status"], "failed");
    ok(&o["par_r3"]);
    assert_eq!(o["par_completed"]["status"], "failed");
    assert_eq!(
        o["par_completed"]["results"][0]["result"],
        json!({"a1": "a1 done", "a2": "a2 done"})
    );
    // Sequential failure ends the plan; the next task is never sent.
    ok(&o["fail_report"]);
    assert_eq!(o["fail_completed"]["status"], "failed");
    assert_eq!(o["fail_a2_got"], false);
    // Cancel tells every agent; nothing is accepted after.
    assert_eq!(code(&o["cancel_by_worker"]), "ACCESS_DENIED");
    assert_eq!(
        o["cancel"]["message"],
        "Orchestration cancelled successfully"
    );
    assert_eq!(o["cancel_a1"]["status"], "cancelled");
    assert_eq!(o["cancel_a2"]["status"], "cancelled");
    assert_eq!(code(&o["report_after_cancel"]), "INVALID_INPUT");
    assert_eq!(code(&o["cancel_again"]), "INVALID_INPUT");
    for k in ["no_tasks", "no_target", "bad_mode"] {
        assert_eq!(code(&o[k]), "INVALID_INPUT", "{k}: {}", o[k]);
    }
    assert_eq!(code(&o["start_unknown"]), "NOT_FOUND");
}

#[test]
fn relay_orchestration_task_for_an_offline_agent_is_delivered_when_it_connects() {
    let d = relay_daemon("", &[]);
    let late = make_token(&d, "late", "worker", &[]);
    let plan = scenario(
        "start_plan",
        json!({"url": url(&d), "master": master_token(&d), "mode": "parallel",
               "targets": ["late"]}),
    );
    let id = plan["id"].as_str().unwrap();
    let got = scenario(
        "work",
        json!({"url": url(&d), "token": late, "agent": "late", "id": id}),
    );
    assert_eq!(got["task"]["command"], "/step0", "{got}");
    ok(&got["report"]);
    let st = scenario(
        "plan_status",
        json!({"url": url(&d), "master": master_token(&d), "id": id, "status": "completed",
               "wait_ms": 5000}),
    );
    assert_eq!(st["data"]["status"], "completed");
    assert_eq!(st["data"]["tasks"][0]["result"], "late did /step0");
}

#[test]
fn relay_orchestration_task_timeout_fails_it() {
    let d = relay_daemon("task_timeout_secs = 1", &[]);
    let o = scenario("timeout", params(&d, &["a1"]));
    assert_eq!(o["done"]["status"], "failed", "{o}");
    let ms = o["ms"].as_u64().unwrap();
    assert!((800..5000).contains(&ms), "failed after {ms} ms");
    let t = &o["get"]["data"]["tasks"][0];
    assert_eq!(t["status"], "failed");
    assert!(t["result"].as_str().unwrap().contains("timed out"), "{t}");
    assert_eq!(code(&o["late"]), "INVALID_INPUT");
}

#[test]
fn relay_orchestration_survives_kill9_and_completes_after_restart() {
    let mut d = relay_daemon("", &[]);
    let a1 = make_token(&d, "a1", "worker", &[]);
    let a2 = make_token(&d, "a2", "worker", &[]);
    let plan = scenario(
        "start_plan",
        json!({"url": url(&d), "master": master_token(&d), "mode": "sequential",
               "targets": ["a1", "a2", "a1"]}),
    );
    let id = plan["id"].as_str().unwrap();
    let first = scenario(
        "work",
        json!({"url": url(&d), "token": a1, "agent": "a1", "id": id}),
    );
    ok(&first["report"]);
    // Task 1 is running (a2 is offline) when the daemon dies.
    d.kill9();
    d.spawn().unwrap();
    let st = scenario(
        "plan_status",
        json!({"url": url(&d), "master": master_token(&d), "id": id}),
    );
    assert_eq!(st["data"]["status"], "running");
    assert_eq!(st["data"]["tasks"][0]["status"], "completed");
    assert_eq!(st["data"]["tasks"][1]["status"], "running");
    let second = scenario(
        "work",
        json!({"url": url(&d), "token": a2, "agent": "a2", "id": id}),
    );
    assert_eq!(second["task"]["taskIndex"], 1, "{second}");
    ok(&second["report"]);
    let third = scenario(
        "work",
        json!({"url": url(&d), "token": a1, "agent": "a1", "id": id}),
    );
    assert_eq!(third["task"]["taskIndex"], 2);
    let st = scenario(
        "plan_status",
        json!({"url": url(&d), "master": master_token(&d), "id": id, "status": "completed",
               "wait_ms": 5000}),
    );
    assert_eq!(st["data"]["status"], "completed");
    let results: Vec<&Value> = st["data"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["result"])
        .collect();
    assert_eq!(
        results,
        [
            &json!("a1 did /step0"),
            &json!("a2 did /step1"),
            &json!("a1 did /step2")
        ]
    );
}

#[test]
fn relay_resources_are_isolated_between_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let d = relay_daemon(&acme_tenants(dir.path()), &[("CLAWNET_SECRET_KEY", "shh")]);
    let marker = "iso-secret-93b1";
    let o = scenario(
        "isolation",
        json!({"url": url(&d), "secret": "shh", "b_secret": "acme:acme-pass", "marker": marker}),
    );
    assert_eq!(o["a_same"]["data"]["value"], "A", "{o}");
    assert_eq!(o["b_same"]["data"]["value"], "B");
    assert_eq!(o["b_list_memory"]["keys"], json!(["same"]));
    for k in [
        "b_cred",
        "b_cred_service",
        "b_file",
        "b_share_file",
        "b_skill",
        "b_config",
        "b_orch",
        "b_report",
    ] {
        assert_eq!(code(&o[k]), "NOT_FOUND", "{k}: {}", o[k]);
    }
    assert_eq!(
        o["b_lists"],
        json!({"credentials": 0, "files": 0, "skills": 0, "configs": 0, "orchestrations": 0})
    );
    assert_eq!(
        o["b_got_exec"], 0,
        "tenant A's task for `b-user` is not tenant B's b-user's"
    );
    assert_eq!(o["b_saw_a"], false);
    ok(&o["b_delete_memory"]);
    assert_eq!(
        o["a_same_after"]["data"]["value"], "A",
        "B's delete is B's own"
    );
    // Tenant B's keys are invisible to Clove; tenant A's (default) are the global scope.
    let mut c = d.client();
    let f = c.ok(op::FETCH, json!({"key": "same"}));
    assert_eq!(f["value"], "A");
    let keys = c.ok(op::KEYS, json!({}));
    assert_eq!(keys["keys"], json!(["same"]));
}

/// Resource changes are committed when acknowledged: after `kill -9`, everything acked is
/// there (shared keys, credentials, files, skills, configs, orchestrations), exactly.
#[test]
fn relay_kill9_loses_no_acknowledged_resource() {
    let mut d = relay_daemon("", &[]);
    let p = params(&d, &["w1", "w2", "w3", "a1", "a2"]);
    scenario("skills", p.clone());
    scenario("configs", p.clone());
    scenario("files", p.clone());
    scenario("orchestrations", p.clone());
    let w1 = p["tokens"]["w1"].as_str().unwrap().to_owned();
    scenario(
        "store_many",
        json!({"url": url(&d), "token": w1, "n": 30, "prefix": "k9"}),
    );
    for i in 0..5 {
        let r = scenario(
            "memory_step",
            json!({"url": url(&d), "token": w1, "agent": "w1", "op": "set",
                   "key": format!("m{i}"), "value": i, "ttl": 3600}),
        );
        ok(&r);
    }
    let before = scenario(
        "inventory",
        json!({"url": url(&d), "master": master_token(&d)}),
    );
    assert_eq!(
        before["credentials"].as_array().unwrap().len(),
        30,
        "{before}"
    );
    assert_eq!(before["skills"].as_array().unwrap().len(), 1);
    assert_eq!(before["configs"].as_array().unwrap().len(), 1);
    assert_eq!(before["files"].as_array().unwrap().len(), 2);
    assert_eq!(before["orchestrations"].as_array().unwrap().len(), 4);
    assert_eq!(before["keys"].as_array().unwrap().len(), 5);
    d.kill9();
    d.spawn().unwrap();
    let after = scenario(
        "inventory",
        json!({"url": url(&d), "master": master_token(&d)}),
    );
    assert_eq!(after, before, "everything acknowledged survives kill -9");
    assert_eq!(
        std::fs::read_dir(d.state_dir.join("relay-files"))
            .unwrap()
            .count(),
        2
    );
}
