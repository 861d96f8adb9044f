//! The ClawNet relay, driven by real clients: socket.io-client (Node) over WebSocket, over
//! polling with the upgrade and over polling alone, and python-socketio as a second
//! implementation (scripts in `tests/relay_clients/`); plus raw TCP for what no client library
//! sends (malformed, oversized, never ponging, never reading).

use crate::harness::{Daemon, wait_for};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/relay_clients")
}

/// A daemon whose relay listens on a free loopback port, with `extra` in `[relay]`.
pub fn relay_daemon(extra: &str, env: &[(&str, &str)]) -> Daemon {
    let toml = format!("[relay]\nlisten = \"127.0.0.1:0\"\n{extra}\n");
    Daemon::with_config_env(&toml, env)
}

/// The relay's address, from the ready line.
pub fn addr(d: &Daemon) -> SocketAddr {
    let word = d
        .ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("relay="))
        .unwrap_or_else(|| panic!("no relay= in the ready line: {}", d.ready));
    word.parse().unwrap()
}

/// Writes a tenants file with one tenant, `acme` (secret `acme-pass`), into `dir`; returns
/// the `[relay]` line that names it.
pub fn acme_tenants(dir: &Path) -> String {
    let tenants = dir.join("tenants.json");
    std::fs::write(&tenants, r#"{"acme": "acme-pass"}"#).unwrap();
    format!("tenants_file = {:?}", tenants.display().to_string())
}

pub fn url(d: &Daemon) -> String {
    format!("http://{}", addr(d))
}

pub fn master_token(d: &Daemon) -> String {
    std::fs::read_to_string(d.state_dir.join("relay-master.token"))
        .expect("master token file")
        .trim()
        .to_string()
}

/// `clove relay token create ...`: the token printed.
pub fn make_token(d: &Daemon, agent: &str, role: &str, extra: &[&str]) -> String {
    let out = Command::new(crate::harness::BIN)
        .args(["relay", "token", "create", "--agent", agent, "--role", role])
        .args(extra)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs a program with a deadline; its stdout must be one JSON object. Its output is read
/// while it runs: one that writes more than a pipe holds must not wait for a reader forever.
pub fn run_json(mut cmd: Command, what: &str) -> Value {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{what} failed ({status}): {err}\n{out}");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out}\n{err}"))
}

/// A socket.io-client scenario of `scenarios.js`.
fn scenario(name: &str, params: Value) -> Value {
    let mut cmd = Command::new("node");
    cmd.current_dir(clients_dir())
        .arg("scenarios.js")
        .arg(name)
        .arg(params.to_string());
    run_json(cmd, &format!("scenario {name}"))
}

pub fn code(v: &Value) -> &str {
    v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {v}"))
}

fn core_on(transports: Value) -> Value {
    let d = relay_daemon("", &[]);
    let p = json!({
        "url": url(&d),
        "master": master_token(&d),
        "worker": make_token(&d, "w1", "worker", &[]),
        "warden": make_token(&d, "warden1", "warden", &[]),
        "transports": transports,
    });
    let out = scenario("core", p);
    check_core(&out);
    out
}

fn check_core(o: &Value) {
    let w1 = |f: &Value| {
        f.as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "w1")
            .cloned()
            .unwrap()
    };
    assert_eq!(w1(&o["fleet"])["verified"], true, "{o}");
    assert_eq!(w1(&o["fleet"])["specs"], json!({"cpu": 4}));
    assert_eq!(o["joined"]["agent_id"], "w1");
    assert_eq!(o["hello"]["ok"], true);
    assert_eq!(w1(&o["fleet_after_report"])["specs"]["mem"], 16);
    assert_eq!(o["ping"]["ok"], true);
    assert!(o["ping"]["server_ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(o["dispatch"]["status"], "SENT");
    assert_eq!(o["command"]["cmd"], "echo hi");
    assert!(o["command"]["trace_id"].is_string());
    assert_eq!(o["command_ack"]["ok"], true);
    assert_eq!(o["result"]["ok"], true);
    assert_eq!(
        o["task_update"].as_array().unwrap().last().unwrap()["output"],
        "hi\n"
    );
    assert_eq!(o["mirror_cmd"]["msg"], "CMD: echo hi");
    assert_eq!(code(&o["dispatch_no_cmd"]), "INVALID_INPUT");
    assert_eq!(code(&o["ack_unknown_task"]), "NOT_FOUND");
    assert_eq!(code(&o["result_foreign"]), "ACCESS_DENIED");
    assert_eq!(code(&o["approve_by_worker"]), "ACCESS_DENIED");
    assert_eq!(code(&o["approve_not_waiting"]), "INVALID_INPUT");
    assert_eq!(o["chat"]["ok"], true);
    assert_eq!(o["chat"]["deduped"], Value::Null);
    assert_eq!(o["chat_seen"]["localId"], "l-1");
    assert_eq!(o["chat_dup"]["deduped"], true);
    assert_eq!(o["direct_seen"]["msg"], "to master only");
    assert_eq!(code(&o["chat_empty"]), "INVALID_INPUT");
    assert_eq!(o["join"]["members"], json!(["w1"]));
    assert_eq!(o["room_update"]["members"], json!(["master", "w1"]));
    assert_eq!(code(&o["join_reserved"]), "ACCESS_DENIED");
    assert_eq!(code(&o["join_bad"]), "INVALID_INPUT");
    assert_eq!(o["room_chat_seen"]["to"], "#ops");
    assert_eq!(o["leave_seen"]["members"], json!(["w1"]));
    assert_eq!(code(&o["chat_room_not_member"]), "ACCESS_DENIED");
    assert_eq!(o["history"]["messages"].as_array().unwrap().len(), 3);
    assert_eq!(code(&o["shell_off"]), "ACCESS_DENIED");
    assert_eq!(code(&o["unknown"]), "INVALID_INPUT");
    assert_eq!(o["ping_after_unknown"]["ok"], true);
    assert_eq!(
        o["traffic_types"],
        json!(["chat", "connect", "dispatch", "result"])
    );
    assert_eq!(o["left"]["agent_id"], "w1");
}

#[test]
fn relay_core_events_over_websocket() {
    let o = core_on(json!(["websocket"]));
    assert_eq!(o["transport"], "websocket");
}

#[test]
fn relay_core_events_over_polling_with_upgrade() {
    let o = core_on(json!(["polling", "websocket"]));
    assert_eq!(o["transport"], "websocket", "the client upgraded");
}

#[test]
fn relay_core_events_over_polling_only() {
    let o = core_on(json!(["polling"]));
    assert_eq!(o["transport"], "polling");
}

#[test]
fn relay_python_socketio_client_over_both_transports() {
    let d = relay_daemon("", &[]);
    let worker = make_token(&d, "py-worker", "worker", &[]);
    for transport in ["websocket", "polling"] {
        let mut cmd = Command::new("python3");
        cmd.arg(clients_dir().join("client.py")).args([
            &url(&d),
            &master_token(&d),
            &worker,
            transport,
        ]);
        let o = run_json(cmd, "client.py");
        assert_eq!(o["transport"], transport);
        assert_eq!(o["ping"]["ok"], true, "{o}");
        assert_eq!(o["command"]["cmd"], "hostname");
        assert_eq!(o["result"]["ok"], true);
        assert!(o["task_update"].is_array(), "{o}");
        assert_eq!(o["chat"]["ok"], true);
        assert_eq!(o["chat_seen"]["from"], "py-worker");
        assert_eq!(code(&o["unknown"]), "INVALID_INPUT");
        assert!(
            o["refused"].as_str().unwrap().contains("failed to connect"),
            "{o}"
        );
    }
}

#[test]
fn relay_seed_presence_events_and_the_shell_relay() {
    let d = relay_daemon(
        "shell_enabled = true",
        &[("CLAWNET_SECRET_KEY", "shh-seed")],
    );
    let o = scenario(
        "seed_presence",
        json!({"url": url(&d), "secret": "shh-seed"}),
    );
    assert_eq!(code(&o["hello_observer"]), "INVALID_INPUT", "{o}");
    assert_eq!(code(&o["join_observer"]), "INVALID_INPUT");
    assert_eq!(o["connect"]["ok"], true, "{o}");
    assert_eq!(o["joined"]["agentId"], "seed-1");
    let seed = o["fleet"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "seed-1")
        .unwrap()
        .clone();
    assert_eq!(
        seed["verified"], false,
        "shared-secret agents are not verified"
    );
    assert_eq!(code(&o["connect_again_other"]), "ACCESS_DENIED");
    assert_eq!(code(&o["connect_missing"]), "INVALID_INPUT");
    assert_eq!(o["shell_start"]["ok"], true);
    assert_eq!(o["shell_seen"]["cols"], 80);
    assert_eq!(o["shell_output"]["ok"], true);
    assert_eq!(o["shell_output_seen"]["from"], "seed-1");
    assert_eq!(code(&o["shell_by_worker"]), "ACCESS_DENIED");
    assert_eq!(code(&o["shell_offline"]), "NOT_FOUND");
    assert_eq!(o["disconnect"]["ok"], true);
    assert_eq!(o["left"]["agent_id"], "seed-1");
    assert_eq!(
        o["still_connected"], true,
        "agent_disconnect keeps the socket"
    );
}

#[test]
fn relay_token_forms_and_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "auth_failures_per_minute = 1000\n{}",
        acme_tenants(dir.path())
    );
    let d = relay_daemon(&extra, &[("CLAWNET_SECRET_KEY", "shh")]);
    let revoked = make_token(&d, "w-revoked", "worker", &[]);
    let out = Command::new(crate::harness::BIN)
        .args(["relay", "token", "revoke", &revoked, "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let expired = make_token(&d, "w-old", "worker", &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    let p = json!({
        "url": url(&d), "worker": make_token(&d, "w1", "worker", &[]), "expired": expired,
        "revoked": revoked, "secret": "shh", "acme_secret": "acme-pass",
    });
    let o = scenario("identity", p);
    for refused in [
        "other_id",
        "other_role",
        "expired",
        "revoked",
        "garbage",
        "no_token",
        "wrong_secret",
        "polling_refused",
        "bound_jwt_other_id",
        "jwt_revoked",
    ] {
        assert_eq!(o[refused], "Unauthorized", "{refused}: {o}");
    }
    assert_eq!(o["bound_jwt_ok"], "connected");
    assert!(
        o["agent_token"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "w1" && a["verified"] == true)
    );
    assert!(
        o["agent_token_no_id"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "w1")
    );
    assert!(
        o["secret_fleet"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "self-asserted" && a["verified"] == false)
    );
    let acme: Vec<&Value> = o["tenant_secret"].as_array().unwrap().iter().collect();
    assert!(
        acme.iter().all(|a| a["id"] == "acme-1"),
        "tenant acme sees only its own: {acme:?}"
    );
    assert_eq!(o["jwt_bad"]["status"], 401);
    assert_eq!(o["jwt"]["status"], 200);
    assert_eq!(o["jwt"]["tokenType"], "Bearer");
    assert!(
        o["jwt_connect"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "jwt-agent")
    );
    assert_eq!(o["verify"]["body"]["valid"], true);
    assert_eq!(o["metrics_no_token"], 401);
    assert_eq!(o["metrics"]["status"], 200);
    assert!(o["metrics"]["body"]["handshakes"].as_u64().unwrap() >= 4);
    assert_eq!(o["metrics_worker"], 403);
    assert_eq!(o["revoke"]["status"], 200);
    assert_eq!(o["verify_revoked"]["status"], 401);
    assert_eq!(o["root"]["online"], true);
    assert_eq!(o["other_route"], 404);
    // Every failure is audited, and no secret reaches the log or the audit entries.
    let mut c = d.client();
    let audit = c.ok(
        crate::harness::op::GET_AUDIT_LOG,
        json!({"category": "SECURITY", "limit": 1000}),
    );
    let failures = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "RELAY_AUTH_FAILED")
        .count();
    assert!(failures >= 10, "{audit}");
    let text = audit.to_string() + &d.logs();
    for secret in ["shh\"", "acme-pass", &revoked[17..], &expired[17..]] {
        assert!(
            !text.contains(secret),
            "a secret leaked into the log or audit: {secret}"
        );
    }
}

#[test]
fn relay_failed_handshakes_are_rate_limited_per_source() {
    let d = relay_daemon("auth_failures_per_minute = 3", &[]);
    let good = master_token(&d);
    let mut raw = RawWs::connect(addr(&d));
    for _ in 0..3 {
        raw.send_text(r#"40{"token":"wrong"}"#);
        assert!(raw.recv_text_containing("Unauthorized").is_some());
    }
    // Now even the right token is refused from this source for a minute.
    raw.send_text(&format!(r#"40{{"token":"{good}"}}"#));
    assert!(raw.recv_text_containing("Unauthorized").is_some());
    let mut c = d.client();
    let hello = c.ok(crate::harness::op::HELLO, json!({}));
    assert!(
        hello["services"]["relay"]["rate_limited"].as_u64().unwrap() >= 1,
        "{hello}"
    );
}

#[test]
fn relay_tenants_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let d = relay_daemon(&acme_tenants(dir.path()), &[("CLAWNET_SECRET_KEY", "shh")]);
    let o = scenario(
        "tenants",
        json!({"url": url(&d), "secret": "shh", "acme_secret": "acme-pass"}),
    );
    assert_eq!(o["b_leaks"], json!([]), "{o}");
    assert_eq!(o["a_leaks"], json!([]), "{o}");
    assert_eq!(
        o["b_fleet_ids"],
        json!(["a1", "b-master", "b1"]),
        "acme's own a1 only"
    );
    assert_eq!(o["a_fleet_ids"], json!(["a-master", "a1"]));
    assert_eq!(o["b1_commands"], 0);
    assert_eq!(o["b_tasks"], 0);
    assert_eq!(
        o["dispatch_all"]["tasks"].as_array().unwrap().len(),
        1,
        "all = tenant a's workers"
    );
    assert_eq!(
        o["dispatch_cross"]["status"], "QUEUED",
        "b1 is not an agent of tenant a"
    );
    assert_eq!(o["a_rooms"], json!([["a1"]]));
    assert_eq!(o["b_rooms"], json!([["b1"]]));
}

#[test]
fn relay_dispatch_to_an_offline_agent_is_delivered_on_connect_also_after_a_restart() {
    let mut d = relay_daemon("", &[]);
    let w = make_token(&d, "late", "worker", &[]);
    let r = scenario(
        "dispatch",
        json!({"url": url(&d), "master": master_token(&d), "to": "late", "cmd": "make all"}),
    );
    assert_eq!(r["status"], "QUEUED", "{r}");
    let got = scenario(
        "receive",
        json!({"url": url(&d), "token": w, "agent_id": "late", "ack": true}),
    );
    assert_eq!(got["commands"][0]["cmd"], "make all", "{got}");
    assert_eq!(got["commands"][0]["id"], r["task_id"]);
    // Queued, then the daemon restarts: the command waits in the store.
    let r2 = scenario(
        "dispatch",
        json!({"url": url(&d), "master": master_token(&d), "to": "late", "cmd": "make install"}),
    );
    assert_eq!(r2["status"], "QUEUED");
    d.stop();
    d.spawn().unwrap();
    let got = scenario(
        "receive",
        json!({"url": url(&d), "token": w, "agent_id": "late"}),
    );
    let cmds: Vec<&Value> = got["commands"].as_array().unwrap().iter().collect();
    assert_eq!(
        cmds.len(),
        1,
        "only the unacknowledged command comes again: {got}"
    );
    assert_eq!(cmds[0]["cmd"], "make install");
}

#[test]
fn relay_unacknowledged_commands_are_resent_then_marked_unacked() {
    let d = relay_daemon(
        "",
        &[
            ("CLAWNET_ACK_TIMEOUT_MS", "200"),
            ("CLAWNET_ACK_MAX_RETRIES", "2"),
        ],
    );
    let w = make_token(&d, "deaf", "worker", &[]);
    let url = url(&d);
    let master = master_token(&d);
    let d2 = &d;
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            scenario(
                "receive",
                json!({"url": url, "token": w, "agent_id": "deaf", "wait_ms": 4000}),
            )
        });
        wait_for("the agent online", Duration::from_secs(10), || {
            let mut c = d2.client();
            let h = c.ok(crate::harness::op::HELLO, json!({}));
            (h["services"]["relay"]["sockets"] == 1).then_some(())
        });
        let r = scenario(
            "dispatch",
            json!({"url": url, "master": master, "to": "deaf", "cmd": "date"}),
        );
        assert_eq!(r["status"], "SENT");
        let got = receiver.join().unwrap();
        let copies = got["commands"].as_array().unwrap();
        assert_eq!(copies.len(), 3, "first send plus 2 retries: {got}");
        assert!(copies.iter().all(|c| c["id"] == r["task_id"]));
    });
    let mut c = d.client();
    let h = c.ok(crate::harness::op::HELLO, json!({}));
    assert_eq!(h["services"]["relay"]["commands_unacked"], 1, "{h}");
}

#[test]
fn relay_deny_and_risky_lists() {
    let d = relay_daemon(
        "command_denylist = [\"rm -rf\"]\ncommand_risky = [\"sudo\"]",
        &[],
    );
    let o = scenario(
        "deny_risky",
        json!({"url": url(&d), "master": master_token(&d), "worker": make_token(&d, "w1", "worker", &[])}),
    );
    assert_eq!(o["denied"]["status"], "REJECTED", "{o}");
    assert_eq!(code(&o["denied"]), "ACCESS_DENIED");
    assert_eq!(o["risky"]["status"], "AWAITING_APPROVAL");
    assert_eq!(
        o["commands_before"],
        json!([]),
        "nothing reached the agent before approval"
    );
    assert_eq!(code(&o["approve_worker"]), "ACCESS_DENIED");
    assert_eq!(o["approve"]["ok"], true);
    assert_eq!(o["command"]["cmd"], "sudo reboot now");
    assert!(
        o["updates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "REJECTED")
    );
    // ClawNet's variables apply when the file says nothing.
    let d = relay_daemon(
        "",
        &[
            ("CLAWNET_COMMAND_DENYLIST", "rm -rf, mkfs"),
            ("CLAWNET_COMMAND_RISKYLIST", "sudo"),
        ],
    );
    let o = scenario(
        "deny_risky",
        json!({"url": url(&d), "master": master_token(&d), "worker": make_token(&d, "w1", "worker", &[])}),
    );
    assert_eq!(o["denied"]["status"], "REJECTED", "{o}");
    assert_eq!(o["risky"]["status"], "AWAITING_APPROVAL");
}

#[test]
fn relay_duplicate_agent_id_replaces_the_older_socket() {
    let d = relay_daemon("", &[]);
    let o = scenario(
        "duplicate",
        json!({"url": url(&d), "master": master_token(&d), "worker": make_token(&d, "w1", "worker", &[])}),
    );
    assert_eq!(o["a_reason"], "io server disconnect", "{o}");
    assert!(
        o["a_told"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("replaced")
    );
    assert_eq!(
        o["last_fleet"][0]["status"], "online",
        "the old socket's end left w1 online: {o}"
    );
    assert_eq!(o["left_events"], 0);
    assert_eq!(o["b_ping"]["ok"], true);
    assert_eq!(o["b_command"]["cmd"], "whoami");
    assert!(o["offline"].is_array());
}

/// A minimal WebSocket client on a raw socket: what no library would send.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    fn connect(addr: SocketAddr) -> RawWs {
        Self::connect_path(addr, "/socket.io/?EIO=4&transport=websocket")
    }

    fn connect_path(addr: SocketAddr, path: &str) -> RawWs {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let mut ws = RawWs { s, buf: Vec::new() };
        let head = ws.read_until(b"\r\n\r\n").expect("upgrade answer");
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let open = ws.recv_text().expect("open packet");
        assert!(open.starts_with("0{\"sid\""), "{open}");
        ws
    }

    fn read_until(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(end.len()).position(|w| w == end) {
                return Some(self.buf.drain(..i + end.len()).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// The next frame: (opcode, payload); `None` at the end of the stream.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2) {
            return None;
        }
        let op = self.buf[0] & 0x0f;
        let (len, hl) = match self.buf[1] & 0x7f {
            126 => {
                self.fill(4);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10);
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        if !self.fill(hl + len) {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..hl + len).collect();
        Some((op, frame[hl..].to_vec()))
    }

    fn recv_text(&mut self) -> Option<String> {
        loop {
            let (op, p) = self.recv()?;
            match op {
                1 => return Some(String::from_utf8(p).unwrap()),
                8 => return None,
                _ => {}
            }
        }
    }

    /// Skips text frames until one is exactly `want`.
    fn recv_exact(&mut self, want: &str) -> bool {
        loop {
            match self.recv_text() {
                Some(t) if t == want => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }

    fn recv_text_containing(&mut self, needle: &str) -> Option<String> {
        loop {
            let t = self.recv_text()?;
            if t.contains(needle) {
                return Some(t);
            }
        }
    }

    fn send_frame(&mut self, op: u8, payload: &[u8]) {
        let mut f = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1u8, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.s.write_all(&f);
    }

    fn send_text(&mut self, text: &str) {
        self.send_frame(1, text.as_bytes());
    }

    /// Reads until the server closes; true when it did within the read timeout.
    fn closed_by_server(&mut self) -> bool {
        loop {
            match self.recv() {
                None => return true,
                Some((8, _)) => return true,
                Some(_) => {}
            }
        }
    }
}

#[test]
fn relay_client_that_never_pongs_is_closed_after_ping_timeout() {
    let d = relay_daemon("ping_interval_ms = 300\nping_timeout_ms = 300", &[]);
    let mut raw = RawWs::connect(addr(&d));
    raw.send_text(&format!(r#"40{{"token":"{}"}}"#, master_token(&d)));
    assert!(raw.recv_text_containing("40{\"sid\"").is_some());
    let t0 = Instant::now();
    assert!(raw.recv_exact("2"), "a ping comes");
    assert!(
        raw.closed_by_server(),
        "closed after the ping went unanswered"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A client that answers stays.
    let mut good = RawWs::connect(addr(&d));
    good.send_text(&format!(r#"40{{"token":"{}"}}"#, master_token(&d)));
    for _ in 0..4 {
        assert!(good.recv_exact("2"));
        good.send_text("3");
    }
    let mut c = d.client();
    let h = c.ok(crate::harness::op::HELLO, json!({}));
    assert_eq!(h["services"]["relay"]["ping_timeouts"], 1, "{h}");
}

#[test]
fn relay_non_reading_client_is_dropped_and_others_are_unaffected() {
    let d = relay_daemon("max_pending_output = 2000000\nmax_file_bytes = 100000", &[]);
    let mut raw = RawWs::connect(addr(&d));
    raw.send_text(&format!(
        r#"40{{"token":"{}","agent_id":"sleepy"}}"#,
        make_token(&d, "sleepy", "worker", &[])
    ));
    assert!(raw.recv_text_containing("40{\"sid\"").is_some());
    // `raw` reads nothing more while 10 MB of chat goes to everyone.
    let o = scenario(
        "flood",
        json!({"url": url(&d), "master": master_token(&d), "worker": make_token(&d, "w1", "worker", &[]), "size": 50000, "n": 200}),
    );
    assert_eq!(o["acked"], 200, "{o}");
    assert_eq!(o["got"], 200, "the reading client got every message: {o}");
    assert_eq!(o["ping_ok"], true);
    assert!(
        d.logs().contains("dropping it"),
        "the non-reader was dropped"
    );
    // What it gets now ends: the daemon closed it.
    raw.s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let closed = loop {
        match raw.s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "the connection was closed after {total} bytes");
    assert!(
        total < 40_000_000,
        "the daemon did not buffer everything for it: {total}"
    );
}

/// Sends raw bytes to the relay; returns what came back before it closed (or 5 s passed).
fn raw_http(a: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn relay_oversized_packets_are_refused() {
    let d = relay_daemon("max_payload = 100000\nmax_file_bytes = 10000", &[]);
    let a = addr(&d);
    // A WebSocket message over maxPayload: close 1009.
    let mut raw = RawWs::connect(a);
    raw.send_text(&format!(r#"40{{"token":"{}"}}"#, master_token(&d)));
    assert!(raw.recv_text_containing("40{\"sid\"").is_some());
    raw.send_text(&format!(
        "42[\"chat\",{{\"msg\":\"{}\"}}]",
        "y".repeat(200_000)
    ));
    let mut code = None;
    while let Some((op, p)) = raw.recv() {
        if op == 8 {
            code = Some(u16::from_be_bytes([p[0], p[1]]));
            break;
        }
    }
    assert_eq!(code, Some(1009));
    // A polling body over it: 413.
    let body = "4".repeat(100_001);
    let r = raw_http(a, format!("POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // A head over 16 KiB: 431.
    let r = raw_http(
        a,
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "z".repeat(20_000)
        )
        .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert_eq!(
        scenario(
            "healthy",
            json!({"url": url(&d), "master": master_token(&d)})
        )["ok"],
        true
    );
}

#[test]
fn relay_malformed_input_of_every_kind_crashes_nothing() {
    let mut d = relay_daemon("", &[]);
    let a = addr(&d);
    let token = master_token(&d);
    // HTTP and Engine.IO handshakes.
    let http_cases: &[(&str, &str)] = &[
        ("GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            "GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n",
            "\"code\":5",
        ),
        (
            "GET /socket.io/?EIO=4&transport=carrier-pigeon HTTP/1.1\r\nHost: x\r\n\r\n",
            "\"code\":0",
        ),
        (
            "GET /socket.io/?EIO=4&transport=polling&sid=nope HTTP/1.1\r\nHost: x\r\n\r\n",
            "\"code\":1",
        ),
        (
            "POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "\"code\":2",
        ),
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\r\n",
            "\"code\":3",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 411",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "HTTP/1.1 400",
        ),
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET /socket.io/?EIO=4&transport=polling&%zz HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ];
    for (req, expect) in http_cases {
        let r = raw_http(a, req.as_bytes());
        assert!(r.contains(expect), "{req:?} -> {r}");
    }
    // A polling session fed bad payloads: 400 and the session is gone.
    let open = raw_http(
        a,
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    for body in ["9", "", "b!!!", "4\u{1e}", "40{\"token\":"] {
        let r = raw_http(a, format!("POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        assert!(
            r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 200"),
            "{body:?} -> {r}"
        );
    }
    // WebSocket frames with bad Engine.IO or Socket.IO content: the session is closed.
    let ws_cases = [
        "",
        "9",
        "4",
        "49",
        "4{",
        "42",
        "42{}",
        "42[\"connect\"]",
        "45-[]",
        "451-[\"x\",{\"_placeholder\":true,\"num\":7}]",
        "43[]",
        "44{}",
        "0",
        "42[\"chat\"",
    ];
    for case in ws_cases {
        let mut raw = RawWs::connect(a);
        raw.send_text(&format!(r#"40{{"token":"{token}"}}"#));
        assert!(raw.recv_text_containing("40{\"sid\"").is_some());
        raw.send_text(case);
        raw.send_text("42[\"latency_ping\",{}]");
        // Either the packet was ignored (no ack asked), or the session closed: never a hang.
        raw.s
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = raw.recv_text_containing("zzz-never");
    }
    // Binary frames without a binary packet, and namespaces that do not exist.
    let mut raw = RawWs::connect(a);
    raw.send_frame(2, &[1, 2, 3]);
    assert!(
        raw.closed_by_server(),
        "an unexpected attachment ends the session"
    );
    let mut raw = RawWs::connect(a);
    raw.send_text(&format!(r#"40/admin,{{"token":"{token}"}}"#));
    assert_eq!(
        raw.recv_text().as_deref(),
        Some("44/admin,{\"message\":\"Invalid namespace\"}")
    );
    // Events before the handshake are not served; an event is answered after it.
    let mut raw = RawWs::connect(a);
    raw.send_text("421[\"latency_ping\",{}]");
    raw.send_text(&format!(r#"40{{"token":"{token}"}}"#));
    raw.send_text("422[\"latency_ping\",{}]");
    let ack = raw.recv_text_containing("432[").unwrap();
    assert!(ack.contains("server_ts"));
    assert!(d.alive(), "the daemon survived");
    assert_eq!(
        scenario(
            "healthy",
            json!({"url": url(&d), "master": token, "transports": ["polling", "websocket"]})
        )["ok"],
        true
    );
}

#[test]
fn relay_kill9_loses_no_acknowledged_task_or_chat() {
    let mut d = relay_daemon("max_chat = 5000\nmax_tasks = 5000", &[]);
    let w = json!({"url": url(&d), "master": master_token(&d), "n": 200});
    let acked = scenario("acked_writes", w);
    d.kill9();
    d.spawn().unwrap();
    let back = scenario(
        "read_back",
        json!({"url": url(&d), "master": master_token(&d)}),
    );
    let chats: std::collections::HashSet<&str> = back["chats"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let tasks: std::collections::HashSet<&str> = back["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let acked_chats = acked["chats"].as_array().unwrap();
    assert_eq!(acked_chats.len(), 200, "{acked}");
    for k in acked_chats {
        assert!(
            chats.contains(k.as_str().unwrap()),
            "acknowledged chat {k} lost"
        );
    }
    // task_update carries the newest 50: the acknowledged ones among them all survive.
    let acked_tasks: Vec<&str> = acked["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(acked_tasks.len(), 200);
    assert_eq!(tasks.len(), 50);
    assert!(
        tasks.iter().all(|t| acked_tasks.contains(t)),
        "the newest 50 are acknowledged ones"
    );
    // And every acknowledged task's command still waits for its agent.
    let w = make_token(&d, "offline-agent", "worker", &[]);
    let got = scenario(
        "receive",
        json!({"url": url(&d), "token": w, "agent_id": "offline-agent", "wait_ms": 1500}),
    );
    let delivered: std::collections::HashSet<&str> = got["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for t in &acked_tasks {
        assert!(delivered.contains(t), "acknowledged task {t} lost");
    }
}

#[test]
fn relay_master_token_file_tokens_cli_and_the_ready_line() {
    let d = relay_daemon("", &[]);
    let path = d.state_dir.join("relay-master.token");
    let meta = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = master_token(&d);
    assert!(token.starts_with("clv_"));
    assert!(
        d.logs().contains("relay-master.token"),
        "the path is logged"
    );
    assert!(!d.logs().contains(&token), "the token is not");
    let t = make_token(&d, "w1", "worker", &["--tenant", "acme"]);
    let list = Command::new(crate::harness::BIN)
        .args(["relay", "token", "list", "--json", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(
        !list.to_string().contains(&t[17..]),
        "no secret in the listing"
    );
    assert!(
        tokens
            .iter()
            .any(|x| x["agent_id"] == "w1" && x["tenant"] == "acme")
    );
    // Nothing stored in the state dir holds the secret part of a token.
    let db = std::fs::read(d.state_dir.join("store.db")).unwrap_or_default();
    let wal = std::fs::read(d.state_dir.join("store.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(20).any(|w| w == &t.as_bytes()[17..37]),
            "a token secret is stored"
        );
    }
    // A second start does not make another master token.
    let mut d = d;
    d.stop();
    d.spawn().unwrap();
    assert_eq!(master_token(&d), token);
    // Off with listen = "".
    let off = Daemon::with_config("[relay]\nlisten = \"\"\n");
    assert!(!off.ready.contains("relay="), "{}", off.ready);
}

#[test]
fn relay_revoking_a_token_closes_its_live_sockets() {
    let d = relay_daemon("", &[]);
    let t = make_token(&d, "w1", "worker", &[]);
    let mut raw = RawWs::connect(addr(&d));
    raw.send_text(&format!(r#"40{{"token":"{t}"}}"#));
    assert!(raw.recv_text_containing("40{\"sid\"").is_some());
    let out = Command::new(crate::harness::BIN)
        .args(["relay", "token", "revoke", &t[4..16], "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 live sockets closed"));
    assert!(raw.closed_by_server());
}

#[test]
fn relay_tls_serves_wss_and_https_polling() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let d = relay_daemon(&extra, &[("CLAWNET_SECRET_KEY", "shh")]);
    let url = format!("https://{}", addr(&d));
    let o = scenario("tls", json!({"url": url, "secret": "shh", "ca": cert}));
    for (name, transport) in [
        ("websocket", "websocket"),
        ("polling+websocket", "websocket"),
        ("polling", "polling"),
    ] {
        assert_eq!(
            o[name],
            json!({"ping": true, "chat": true, "echo": true, "transport": transport}),
            "{o}"
        );
    }
    // Without trusting the certificate the client refuses the server.
    assert_ne!(o["refused"], "connected");
    // Plain HTTP on the TLS port gets nowhere.
    let r = raw_http(addr(&d), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!r.contains("online"), "{r}");
    // A certificate that does not load stops the start, naming the keys.
    let (ok, err) = crate::harness::check_config(&format!(
        "[relay]\ntls_cert = {:?}\ntls_key = {:?}\n",
        key.display().to_string(),
        key.display().to_string()
    ));
    assert!(!ok && err.contains("relay.tls_cert"), "{err}");
}

/// The request that a TLS client sends with its handshake's last message (as Node's does) is
/// answered at once on a kept-alive connection. The daemon sends its session tickets while it
/// reads that flight and the answer right after: with Nagle's algorithm on the socket, the
/// answer waited for the client to acknowledge the tickets, which a client with nothing to
/// send delays by 40 ms; socket.io-client's upgrade probe lost its race against the session's
/// first messages that way, and the session stayed on polling.
#[test]
fn relay_tls_answers_the_request_that_ends_the_handshake_at_once() {
    use rustls::pki_types::pem::PemObject;
    use std::sync::Arc;
    let ca = crate::fakes::TestCa::new();
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        ca.dir.path().join("server.pem").display().to_string(),
        ca.dir.path().join("server.key").display().to_string()
    );
    let d = relay_daemon(&extra, &[("CLAWNET_SECRET_KEY", "shh")]);
    let a = addr(&d);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca.ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let request = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    // The best of a few connections, so a busy machine does not fail the test; with the
    // delayed acknowledgement every one of them takes 40 ms or more.
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(a).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = rustls::ClientConnection::new(config.clone(), name).unwrap();
        // Written before the handshake: rustls sends it along with its Finished.
        tls.writer().write_all(request).unwrap();
        while tls.is_handshaking() {
            if tls.wants_write() {
                tls.write_tls(&mut tcp).unwrap();
            } else {
                assert!(tls.read_tls(&mut tcp).unwrap() > 0, "the server hung up");
                tls.process_new_packets().unwrap();
            }
        }
        let sent = Instant::now();
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(tls.read_tls(&mut tcp).unwrap() > 0, "the server hung up");
            tls.process_new_packets().unwrap();
            let _ = tls.reader().read_to_end(&mut got);
        }
        best = best.min(sent.elapsed());
        let head = String::from_utf8_lossy(&got);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    }
    assert!(
        best < Duration::from_millis(25),
        "the answer took {best:?} at best"
    );
}
