//! Durable state (issue 4): what a client was told is stored survives SIGTERM, `kill -9` and
//! restarts; damaged, newer or busy state files are refused and left untouched; TTLs run on
//! the wall clock across downtime; `clove state check | export | import` work on a stopped
//! daemon's files.

use crate::harness::{BIN, Daemon, frame, op, read_frame, wait_for};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn db_path(d: &Daemon) -> PathBuf {
    d.state_dir.join("store.db")
}

/// Length and hash of the database and of its write-ahead log (if any).
fn snapshot(db: &Path) -> [(usize, u64); 2] {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let sum = |bytes: Option<Vec<u8>>| match bytes {
        None => (usize::MAX, 0),
        Some(b) => {
            let mut h = DefaultHasher::new();
            b.hash(&mut h);
            (b.len(), h.finish())
        }
    };
    [sum(std::fs::read(db).ok()), sum(std::fs::read(wal).ok())]
}

/// Runs a command that must exit by itself (within 20 s), capturing its output.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "command did not exit within 20s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `clove state ARGS` against the daemon's config and state directory.
fn state_cmd(d: &Daemon, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("state")
        .args(args)
        .arg("--config")
        .arg(&d.config_path)
        .arg("--state-dir")
        .arg(&d.state_dir)
        .env_remove("CLOVE_CONFIG");
    run(cmd)
}

/// Starts the daemon's command expecting a refusal; returns stderr.
fn expect_refusal(d: &Daemon) -> String {
    let out = run(d.command());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the daemon must refuse to start (exit 1); stdout {:?} stderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("clove: ready"),
        "it must not have become ready"
    );
    stderr
}

fn fetch(c: &mut crate::harness::Client, key: &str) -> Value {
    c.ok(op::FETCH, json!({"key": key}))
}

#[test]
fn acknowledged_state_survives_restarts_and_session_state_does_not() {
    let mut d = Daemon::start();
    let mut c = d.client();
    c.ok(
        op::STORE,
        json!({"key": "g", "value": {"deep": [1, 2.5, "x"]}}),
    );
    c.ok(
        op::STORE,
        json!({"key": "s", "value": "temp", "scope": "session"}),
    );
    c.ok(
        op::STORE,
        json!({"key": "flip", "value": 1, "scope": "global"}),
    );
    c.ok(
        op::STORE,
        json!({"key": "flip", "value": 2, "scope": "session"}),
    );
    c.ok(
        op::STORE,
        json!({"key": "mine", "value": 5, "scope": "agent"}),
    );
    assert_eq!(fetch(&mut c, "mine")["scope"], "agent");
    c.ok(op::STORE, json!({"key": "gone", "value": true}));
    let r = c.ok(op::DELETE, json!({"key": "gone"}));
    assert_eq!(r["deleted"], true);
    // The bytes of a value come back exactly as sent, also after a restart.
    let raw = br#"{"key":"exact","value":{ "spaced" :  [1,  2] }}"#;
    assert!(c.call_raw(op::STORE, raw).json()["success"] == true);
    drop(c);

    // A clean stop, then a crash: both keep what was acknowledged.
    assert!(d.stop().success());
    d.spawn().unwrap();
    let mut c = d.client();
    assert_eq!(fetch(&mut c, "g")["value"], json!({"deep": [1, 2.5, "x"]}));
    assert_eq!(fetch(&mut c, "g")["scope"], "global");
    assert_eq!(
        fetch(&mut c, "s")["exists"],
        false,
        "session keys are memory only"
    );
    assert_eq!(
        fetch(&mut c, "flip")["exists"],
        false,
        "a global key turned session is no longer durable"
    );
    assert_eq!(fetch(&mut c, "gone")["exists"], false);
    assert_eq!(
        fetch(&mut c, "mine")["exists"],
        false,
        "a plain client's agent keys are memory only"
    );
    let f = c.call_raw(op::FETCH, br#"{"key":"exact"}"#);
    assert!(
        String::from_utf8_lossy(&f.payload).contains(r#""value":{ "spaced" :  [1,  2] }"#),
        "{}",
        String::from_utf8_lossy(&f.payload)
    );
    c.ok(op::STORE, json!({"key": "after", "value": 7}));
    drop(c);
    d.kill9();
    d.spawn().unwrap();
    let mut c = d.client();
    assert_eq!(fetch(&mut c, "after")["value"], 7);
    assert_eq!(fetch(&mut c, "g")["exists"], true);
    let keys = c.ok(op::KEYS, json!({}));
    assert_eq!(keys["keys"], json!(["after", "exact", "g"]));
}

#[test]
fn state_changed_is_published_after_the_commit() {
    let d = Daemon::start();
    let mut watcher = d.client();
    watcher.ok(op::SUBSCRIBE, json!({"event_types": ["STATE_CHANGED"]}));
    let mut c = d.client();
    c.ok(op::STORE, json!({"key": "k", "value": 1}));
    c.ok(op::DELETE, json!({"key": "k"}));
    let r = c.ok(op::DELETE, json!({"key": "k"}));
    assert_eq!(r["deleted"], false);
    let got = watcher.ok(op::POLL_EVENTS, json!({}));
    let actions: Vec<&str> = got["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["store", "delete"], "{got}");
}

#[test]
fn limits_are_enforced_by_the_durable_store_and_after_a_restart() {
    let mut d = Daemon::with_config("[limits]\nstate_max_keys = 3\nstate_max_value_bytes = 10\n");
    let mut c = d.client();
    for k in ["a", "b", "c"] {
        c.ok(op::STORE, json!({"key": k, "value": 1}));
    }
    let e = c.err(op::STORE, json!({"key": "d", "value": 1}));
    assert_eq!(e, "cannot store \"d\": state store is full: 3 keys");
    let e = c.err(op::STORE, json!({"key": "a", "value": "0123456789"}));
    assert!(e.contains("value is 12 bytes; the maximum is 10"), "{e}");
    drop(c);
    d.kill9();
    d.spawn().unwrap();
    let mut c = d.client();
    let e = c.err(op::STORE, json!({"key": "d", "value": 1}));
    assert!(e.contains("3 keys"), "{e}");
    c.ok(op::DELETE, json!({"key": "a"}));
    c.ok(op::STORE, json!({"key": "d", "value": 1}));
}

/// One writer connection of the crash test: what it was told, and what it had in flight.
#[derive(Default)]
struct WriterLog {
    /// key -> value text (None: deleted), as acknowledged.
    acked: HashMap<String, Option<Value>>,
    /// A change sent and not yet answered when the daemon died.
    inflight: Option<(String, Option<Value>)>,
    /// The connection's id, once a STORE of it was acknowledged (so it owns committed data).
    id: u32,
}

fn crash_writer(
    socket: PathBuf,
    prefix: String,
    seed: u64,
    total: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let Ok(mut s) = UnixStream::connect(&socket) else {
        return log;
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut x = seed | 1;
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("{prefix}-{}", x % 40);
        let (op, payload, change) = if x.is_multiple_of(5) {
            (
                op::DELETE,
                json!({"key": key}),
                (key.clone(), None::<Value>),
            )
        } else {
            let value = json!({"n": i, "pad": "x".repeat((x % 200) as usize)});
            (
                op::STORE,
                json!({"key": key, "value": value}),
                (key.clone(), Some(value)),
            )
        };
        log.inflight = Some(change);
        let bytes = frame(0, op, payload.to_string().as_bytes());
        if s.write_all(&bytes).is_err() {
            break;
        }
        let Ok(reply) = read_frame(&mut s) else {
            break;
        };
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["success"], true, "{v}");
        assert_eq!(v["key"], key, "the reply answers this request");
        if log.id != 0 {
            assert_eq!(reply.agent_id, log.id, "replies come to this connection");
        }
        let (k, val) = log.inflight.take().unwrap();
        if val.is_some() {
            log.id = reply.agent_id;
        }
        log.acked.insert(k, val);
        total.fetch_add(1, Ordering::Relaxed);
    }
    log
}

#[test]
fn crash_test_acknowledged_writes_survive_kill_9_at_random_moments() {
    let mut d = Daemon::start();
    let seed = now_ms();
    eprintln!("crash test seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // key -> expected value (None = absent), across all rounds.
    let mut expected: HashMap<String, Option<Value>> = HashMap::new();
    let mut max_id_seen = 0u32;
    // CLOVE_CRASH_ROUNDS=50 makes it a soak test.
    let rounds = std::env::var("CLOVE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u64);
    for round in 0..rounds {
        let sync = if round % 2 == 0 { "full" } else { "normal" };
        std::fs::write(&d.config_path, format!("[store]\nsync = \"{sync}\"\n")).unwrap();
        if round > 0 {
            d.spawn().unwrap();
        }
        // A new connection never gets the id of a connection whose writes were committed, nor
        // one handed out before a clean stop.
        let mut probe = d.client();
        let id = probe.my_id();
        assert!(
            id > max_id_seen,
            "id {id} reused (max before {max_id_seen})"
        );
        drop(probe);

        let total = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let socket = d.socket.clone();
                let (total, stop) = (total.clone(), stop.clone());
                let prefix = format!("w{w}");
                // Unrelated streams per writer (consecutive xorshift states would only be
                // shifted copies of one another).
                let seed = next().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ w;
                std::thread::spawn(move || crash_writer(socket, prefix, seed, total, stop))
            })
            .collect();
        wait_for("some acknowledged writes", Duration::from_secs(20), || {
            (total.load(Ordering::Relaxed) >= 20).then_some(())
        });
        // Then let them run for a random while and pull the plug mid-flight.
        let until = Instant::now() + Duration::from_millis(20 + next() % 300);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = d.pid();
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        let logs: Vec<WriterLog> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
        max_id_seen = logs.iter().map(|l| l.id).fold(max_id_seen, u32::max);
        eprintln!(
            "round {round} (sync={sync}): killed pid {pid} after {} acknowledged writes",
            total.load(Ordering::Relaxed)
        );
        assert!(acked > 0);

        // The file passes its integrity check right after the crash.
        let out = state_cmd(&d, &["check"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("integrity: ok"),
            "check failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );

        d.spawn().unwrap();
        let mut c = d.client();
        max_id_seen = max_id_seen.max(c.my_id());
        let mut inflight: HashMap<String, Option<Value>> = HashMap::new();
        for l in &logs {
            for (k, v) in &l.acked {
                expected.insert(k.clone(), v.clone());
            }
            if let Some((k, v)) = &l.inflight {
                inflight.insert(k.clone(), v.clone());
                // A key no acknowledged change ever touched was absent before its change in
                // flight; it must be found absent or with that change.
                expected.entry(k.clone()).or_insert(None);
            }
        }
        for (key, want) in expected.iter_mut() {
            let got = fetch(&mut c, key);
            let got = (got["exists"] == true).then(|| got["value"].clone());
            if &got == want {
                continue;
            }
            // A change whose reply never came may or may not have been committed.
            match inflight.get(key) {
                Some(maybe) if &got == maybe => *want = got,
                _ => panic!(
                    "round {round}: key {key}: acknowledged {want:?}, found {got:?} after kill -9 (seed {seed})"
                ),
            }
        }
        drop(c);
        d.stop();
    }
    let out = state_cmd(&d, &["check"]);
    assert!(out.status.success());
}

#[test]
fn ttl_runs_on_the_wall_clock_across_downtime() {
    let mut d = Daemon::start();
    let mut c = d.client();
    let t0 = now_ms();
    c.ok(op::STORE, json!({"key": "short", "value": 1, "ttl": 1}));
    c.ok(op::STORE, json!({"key": "long", "value": 2, "ttl": 6}));
    c.ok(op::STORE, json!({"key": "forever", "value": 3}));
    drop(c);
    d.kill9();
    // The daemon is down while "short" expires.
    wait_for("the short TTL to pass", Duration::from_secs(10), || {
        (now_ms() > t0 + 1200).then_some(())
    });
    d.spawn().unwrap();
    let mut c = d.client();
    assert_eq!(fetch(&mut c, "short")["exists"], false);
    if now_ms() < t0 + 5500 {
        assert_eq!(fetch(&mut c, "long")["value"], 2, "not expired yet");
    }
    // It still expires on time while the daemon runs...
    wait_for("the long key to expire", Duration::from_secs(20), || {
        (fetch(&mut c, "long")["exists"] == false).then_some(())
    });
    assert!(now_ms() >= t0 + 6000, "expired early");
    assert_eq!(fetch(&mut c, "forever")["value"], 3);
    // ...and its row is deleted from the file while the daemon runs (the writer's purge; the
    // key that expired while the daemon was down was deleted at start and is not counted).
    // "long" was written by the run before the crash: the writer learns of its expiry from the
    // file.
    let store = wait_for(
        "the expired row to be purged",
        Duration::from_secs(10),
        || {
            let store = c.ok(op::HELLO, json!({}))["store"].clone();
            (store["expired_rows_purged"].as_u64().unwrap() >= 1).then_some(store)
        },
    );
    assert_eq!(store["expired_rows_purged"], 1, "{store}");
    drop(c);
    assert!(d.stop().success());
    // The file itself holds no expired row: `check` counts rows as they are on disk, expired
    // ones included (a stop does not purge).
    let out = state_cmd(&d, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 keys (0 expired)"), "{text}");
    let out = state_cmd(&d, &["export"]);
    assert!(out.status.success());
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = dump["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["forever"]);
    assert!(
        d.logs().contains("1 expired keys removed"),
        "the start must report the key that expired while down:\n{}",
        d.logs()
    );
}

#[test]
fn concurrent_writers_share_commits() {
    // Group commit: with 16 connections writing at once and an fsync per commit, changes that
    // arrive while a commit is syncing are committed together in the next one. A writer that
    // committed every change on its own would never show a batch larger than 1.
    const CONNECTIONS: usize = 16;
    const STORES_EACH: usize = 40;
    const ROUNDS: usize = 10;
    let d = Daemon::with_config("[store]\nsync = \"full\"\n");
    let mut c = d.client();
    for round in 0..ROUNDS {
        let start = Arc::new(std::sync::Barrier::new(CONNECTIONS));
        let writers: Vec<_> = (0..CONNECTIONS)
            .map(|w| {
                let socket = d.socket.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    let mut c = crate::harness::Client::connect(&socket);
                    start.wait();
                    for i in 0..STORES_EACH {
                        c.ok(
                            op::STORE,
                            json!({"key": format!("r{round}-w{w}-{i}"), "value": i}),
                        );
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a writer connection failed");
        }
        let store = c.ok(op::HELLO, json!({}))["store"].clone();
        assert_eq!(store["sync"], "full", "{store}");
        assert_eq!(store["synchronous"], "FULL", "{store}");
        let commits = store["commits"].as_u64().unwrap();
        let changes = store["changes_committed"].as_u64().unwrap();
        let max_batch = store["max_batch"].as_u64().unwrap();
        let written = ((round + 1) * CONNECTIONS * STORES_EACH) as u64;
        assert!(
            changes >= written,
            "{changes} changes for {written} stores: {store}"
        );
        let per_bucket: Vec<u64> = store["batch_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_u64().unwrap())
            .collect();
        assert_eq!(
            per_bucket.iter().sum::<u64>(),
            commits,
            "every commit is in one bucket: {store}"
        );
        if max_batch > 1 {
            eprintln!("group commit seen in round {round}: {store}");
            assert!(commits < changes, "{store}");
            assert!(
                per_bucket[1..].iter().any(|&n| n > 0),
                "a batch above 1 is counted in its bucket: {store}"
            );
            // What was committed in batches is all there.
            for w in 0..CONNECTIONS {
                let key = format!("r{round}-w{w}-{}", STORES_EACH - 1);
                assert_eq!(fetch(&mut c, &key)["value"], STORES_EACH - 1);
            }
            assert_eq!(
                c.ok(op::KEYS, json!({"limit": 100000}))["keys"]
                    .as_array()
                    .unwrap()
                    .len(),
                written as usize
            );
            return;
        }
    }
    panic!(
        "{ROUNDS} rounds of {CONNECTIONS} concurrent writers never produced a commit of more than one change: {}",
        c.ok(op::HELLO, json!({}))["store"]
    );
}

/// The thread id of the daemon's writer thread (`clove-store`).
fn store_thread(pid: i32) -> i32 {
    wait_for("the clove-store thread", Duration::from_secs(10), || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == "clove-store")
            })
            .and_then(|t| t.file_name().to_str()?.parse().ok())
    })
}

/// `struct ptrace_syscall_info` up to the entry arguments (linux/ptrace.h).
#[repr(C)]
#[derive(Default)]
struct SyscallInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    nr: u64,
    args: [u64; 6],
}

fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> Result<libc::c_long, String> {
    // SAFETY: ptrace(2) on a thread of our own child; `addr`/`data` are plain values or point at
    // a live `SyscallInfo` of the size passed.
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r < 0 {
        Err(format!(
            "ptrace({req:#x}) on thread {tid}: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(r)
    }
}

/// Holds ONE thread of the daemon (its writer) at the entry of its next `fsync`/`fdatasync`:
/// a commit stalled on the disk, exactly where a slow disk would stall it, while every other
/// thread of the daemon runs on. (An SQLite lock held from outside cannot do this: the daemon
/// keeps the file in exclusive locking mode, see the test.) The tracer is a thread of the test;
/// dropping the `Stall`, also when a test fails, lets the writer go.
struct Stall {
    release: Option<std::sync::mpsc::Sender<()>>,
    stalled: std::sync::mpsc::Receiver<Result<u64, String>>,
    tracer: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Stall {
    /// Attaches to thread `tid` and lets it run until it starts to sync a file.
    fn arm(tid: i32) -> Stall {
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let (armed_tx, armed) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stalled_tx, stalled) = std::sync::mpsc::channel();
        let tracer = std::thread::spawn(move || -> Result<(), String> {
            let wait = |flags: libc::c_int| -> Result<Option<libc::c_int>, String> {
                let mut st = 0;
                // SAFETY: waitpid(2) for our tracee only.
                match unsafe { libc::waitpid(tid, &mut st, libc::__WALL | flags) } {
                    0 => Ok(None),
                    r if r == tid => Ok(Some(st)),
                    _ => Err(format!(
                        "waitpid {tid}: {}",
                        std::io::Error::last_os_error()
                    )),
                }
            };
            let attach = (|| {
                ptrace(
                    libc::PTRACE_SEIZE,
                    tid,
                    0,
                    libc::PTRACE_O_TRACESYSGOOD as usize,
                )?;
                ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0)?;
                wait(0).map(|_| ())
            })();
            let failed = attach.is_err();
            let _ = armed_tx.send(attach);
            if failed {
                return Ok(());
            }
            let mut inject = 0usize;
            loop {
                ptrace(libc::PTRACE_SYSCALL, tid, 0, inject)?;
                inject = 0;
                let st = loop {
                    if let Some(st) = wait(libc::WNOHANG)? {
                        break st;
                    }
                    if !matches!(
                        release_rx.try_recv(),
                        Err(std::sync::mpsc::TryRecvError::Empty)
                    ) {
                        // Given up before the sync came: stop it once more to detach.
                        ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0)?;
                        wait(0)?;
                        return ptrace(libc::PTRACE_DETACH, tid, 0, 0).map(|_| ());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                if !libc::WIFSTOPPED(st) {
                    return Err(format!("the writer thread ended ({st:#x})"));
                }
                let sig = libc::WSTOPSIG(st);
                if sig == libc::SIGTRAP | 0x80 {
                    let mut info = SyscallInfo::default();
                    ptrace(
                        libc::PTRACE_GET_SYSCALL_INFO,
                        tid,
                        std::mem::size_of::<SyscallInfo>(),
                        &mut info as *mut SyscallInfo as usize,
                    )?;
                    let sync = [libc::SYS_fsync as u64, libc::SYS_fdatasync as u64];
                    if info.op == libc::PTRACE_SYSCALL_INFO_ENTRY && sync.contains(&info.nr) {
                        let _ = stalled_tx.send(Ok(info.nr));
                        break;
                    }
                } else if st >> 16 != libc::PTRACE_EVENT_STOP {
                    // A signal for the thread: deliver it.
                    inject = sig as usize;
                }
            }
            // Held here, inside the commit, until released (or the test gives up).
            let _ = release_rx.recv();
            ptrace(libc::PTRACE_DETACH, tid, 0, 0).map(|_| ())
        });
        match armed.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot trace the writer thread (ptrace is needed here): {e}"),
            Err(e) => panic!("the tracer did not attach: {e}"),
        }
        Stall {
            release: Some(release),
            stalled,
            tracer: Some(tracer),
        }
    }

    /// Waits until the writer is held at a sync; returns the syscall number.
    fn wait_stalled(&self, timeout: Duration) -> u64 {
        match self.stalled.recv_timeout(timeout) {
            Ok(Ok(nr)) => nr,
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("the writer never reached a sync within {timeout:?}: {e}"),
        }
    }

    /// Lets the writer go on (detaches).
    fn release(mut self) {
        self.finish().unwrap_or_else(|e| panic!("{e}"));
    }

    fn finish(&mut self) -> Result<(), String> {
        drop(self.release.take());
        match self.tracer.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the tracer thread panicked".into()),
            None => Ok(()),
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[test]
fn reads_do_not_wait_for_a_stalled_commit() {
    let d = Daemon::with_config("[store]\nsync = \"full\"\n");
    let mut reader = d.client();
    let mut first = d.client();
    let mut second = d.client();
    first.ok(op::STORE, json!({"key": "k", "value": "old"}));
    second.ok(op::HELLO, json!({}));

    // An outside program cannot take (or even wait for) an SQLite lock on the live file: the
    // daemon holds it in exclusive locking mode from start to stop. So no outside lock can
    // stall the writer or make a client's STORE fail with "database is locked".
    {
        let outside = rusqlite::Connection::open(db_path(&d)).unwrap();
        outside.busy_timeout(Duration::from_millis(200)).unwrap();
        let e = outside.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy),
            "{e}"
        );
        let e = outside
            .query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy),
            "{e}"
        );
    }
    first.ok(op::STORE, json!({"key": "k", "value": "old"}));

    // A real stall instead: the writer held at the fsync of the next commit.
    let stall = Stall::arm(store_thread(d.pid()));
    // A read that waited for the held writer would never be answered: give up after 5 s.
    reader
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let commits = |c: &mut crate::harness::Client| {
        c.ok(op::HELLO, json!({}))["store"]["commits"]
            .as_u64()
            .unwrap()
    };
    let before = commits(&mut reader);
    let send = |mut c: crate::harness::Client, req: Value| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.call(op::STORE, req));
        });
        rx
    };
    let pending_k = send(first, json!({"key": "k", "value": "new"}));
    let nr = stall.wait_stalled(Duration::from_secs(20));
    eprintln!("writer held at syscall {nr}");
    // A second write queues behind the stalled commit.
    let pending_fresh = send(second, json!({"key": "fresh", "value": 1}));
    wait_for(
        "the second STORE to be queued",
        Duration::from_secs(10),
        || {
            let store = reader.ok(op::HELLO, json!({}))["store"].clone();
            (store["pending"].as_u64().unwrap() >= 1).then_some(())
        },
    );

    let held = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || held.elapsed() < Duration::from_millis(500) {
        let t = Instant::now();
        let k = fetch(&mut reader, "k");
        assert_eq!(
            k["value"], "old",
            "a read must not see an uncommitted value: {k}"
        );
        let fresh = fetch(&mut reader, "fresh");
        assert_eq!(fresh["exists"], false, "{fresh}");
        let keys = reader.ok(op::KEYS, json!({}));
        assert_eq!(keys["keys"], json!(["k"]), "{keys}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "reads took {:?} while the writer was stalled",
            t.elapsed()
        );
        assert_eq!(commits(&mut reader), before, "the commit is still held");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pending_k.try_recv().is_err() && pending_fresh.try_recv().is_err(),
        "no STORE may be answered before its commit"
    );

    stall.release();
    for (what, rx) in [("k", pending_k), ("fresh", pending_fresh)] {
        let r = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("the STORE of {what} was never answered: {e}"));
        assert_eq!(
            r["success"], true,
            "the stalled STORE of {what} succeeds: {r}"
        );
    }
    assert_eq!(fetch(&mut reader, "k")["value"], "new");
    assert_eq!(fetch(&mut reader, "fresh")["value"], 1);
    assert_eq!(
        reader.ok(op::KEYS, json!({}))["keys"],
        json!(["fresh", "k"])
    );
    assert!(commits(&mut reader) > before);
}

/// How many times a thread of the daemon has blocked (and so woken again) so far.
fn wakeups(pid: i32, tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in:\n{status}"))
}

#[test]
fn the_writer_sleeps_until_the_next_expiry() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::STORE, json!({"key": "plain", "value": 1}));
    let (pid, tid) = (d.pid(), store_thread(d.pid()));
    let purged = |c: &mut crate::harness::Client| {
        c.ok(op::HELLO, json!({}))["store"]["expired_rows_purged"]
            .as_u64()
            .unwrap()
    };
    // Over a quiet stretch (no client writes), the writer must not wake at all. (A writer that
    // polled for expired rows would wake at least twice in it.)
    let quiet = |what: &str| {
        // First let it finish what it was doing (answering the last write) and go to sleep.
        let before = wait_for("the writer to go idle", Duration::from_secs(10), || {
            let n = wakeups(pid, tid);
            std::thread::sleep(Duration::from_millis(200));
            (wakeups(pid, tid) == n).then_some(n)
        });
        std::thread::sleep(Duration::from_millis(2500));
        let woke = wakeups(pid, tid) - before;
        assert_eq!(woke, 0, "{what}: the writer woke {woke} times in 2.5 s");
    };
    quiet("no key has an expiry");

    let stored = now_ms();
    c.ok(op::STORE, json!({"key": "soon", "value": 1, "ttl": 2}));
    c.ok(op::STORE, json!({"key": "far", "value": 1, "ttl": 3600}));
    assert_eq!(purged(&mut c), 0);
    // The writer wakes for the expiry and deletes the row...
    wait_for(
        "the expired row to be purged",
        Duration::from_secs(10),
        || (purged(&mut c) == 1).then_some(()),
    );
    assert!(now_ms() >= stored + 2000, "purged before it expired");
    // ...then sleeps again, although a key that expires in an hour is left.
    quiet("the next expiry is an hour away");
    assert_eq!(purged(&mut c), 1);
    assert_eq!(fetch(&mut c, "far")["exists"], true);
    assert_eq!(fetch(&mut c, "soon")["exists"], false);
}

/// A daemon with a few keys, stopped cleanly.
fn stopped_daemon_with_data(n: usize) -> Daemon {
    let mut d = Daemon::start();
    let mut c = d.client();
    for i in 0..n {
        c.ok(
            op::STORE,
            json!({"key": format!("k{i}"), "value": "v".repeat(300)}),
        );
    }
    drop(c);
    assert!(d.stop().success());
    d
}

#[test]
fn a_corrupt_database_is_refused_and_left_untouched() {
    let d = stopped_daemon_with_data(200);
    let db = db_path(&d);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() >= 8 * 4096, "{} bytes", bytes.len());
    // Scribble over the middle of the file (b-tree pages), keeping the header intact.
    for b in &mut bytes[3 * 4096..6 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let before = snapshot(&db);
    let stderr = expect_refusal(&d);
    assert!(
        stderr.contains("is damaged or not a clove state store"),
        "{stderr}"
    );
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert_eq!(snapshot(&db), before, "the file must be left untouched");
    let out = state_cmd(&d, &["check"]);
    assert_ne!(out.status.code(), Some(0), "check must fail");
    assert_eq!(snapshot(&db), before);

    // Not a database at all.
    std::fs::write(&db, b"this is not a database, just text\n".repeat(200)).unwrap();
    let before = snapshot(&db);
    let stderr = expect_refusal(&d);
    assert!(stderr.contains("not an SQLite database file"), "{stderr}");
    assert_eq!(snapshot(&db), before);
}

#[test]
fn a_truncated_database_is_refused_and_left_untouched() {
    let d = stopped_daemon_with_data(200);
    let db = db_path(&d);
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2 / 4096 * 4096).unwrap();
    drop(f);
    let before = snapshot(&db);
    let stderr = expect_refusal(&d);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(snapshot(&db), before);

    // Cut to nothing: still refused, never silently reset to an empty store.
    std::fs::write(&db, b"").unwrap();
    let stderr = expect_refusal(&d);
    assert!(stderr.contains("the file is empty"), "{stderr}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let d = stopped_daemon_with_data(3);
    let db = db_path(&d);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        conn.execute_batch("PRAGMA journal_mode = DELETE;").unwrap();
    }
    let before = snapshot(&db);
    let stderr = expect_refusal(&d);
    assert!(
        stderr.contains("has schema version 99, but this clove only knows versions up to 2"),
        "{stderr}"
    );
    assert_eq!(snapshot(&db), before);
    let out = state_cmd(&d, &["export"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(snapshot(&db), before);
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(op::STORE, json!({"key": "k", "value": 1}));
    let db = db_path(&d);
    let before = snapshot(&db);
    // Another socket, same state directory.
    let mut other = Command::new(BIN);
    other
        .arg("serve")
        .arg("--config")
        .arg(&d.config_path)
        .arg("--socket")
        .arg(d.path("other.sock"))
        .arg("--state-dir")
        .arg(&d.state_dir)
        .env_remove("CLOVE_SOCKET");
    let out = run(other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is in use by another clove daemon (pid {})",
            d.pid()
        )),
        "{stderr}"
    );
    assert!(!d.path("other.sock").exists());
    assert_eq!(snapshot(&db), before);
    // The state tools refuse too while the daemon runs.
    for args in [&["check"][..], &["export"][..]] {
        let out = state_cmd(&d, args);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another clove daemon"));
    }
    // The first daemon is unaffected.
    assert_eq!(fetch(&mut c, "k")["value"], 1);
    c.ok(op::STORE, json!({"key": "k2", "value": 2}));
}

#[test]
fn export_then_import_restores_the_state_elsewhere() {
    let mut a = Daemon::start();
    let mut c = a.client();
    c.ok(op::STORE, json!({"key": "one", "value": {"n": 1}}));
    c.ok(op::STORE, json!({"key": "two", "value": [2], "ttl": 3600}));
    c.ok(
        op::STORE,
        json!({"key": "tmp", "value": 0, "scope": "session"}),
    );
    drop(c);
    assert!(a.stop().success());
    let out = state_cmd(&a, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 keys (0 expired)"), "{text}");
    let dump_path = a.path("dump.json");
    let out = state_cmd(&a, &["export", "--output", dump_path.to_str().unwrap()]);
    assert!(out.status.success());
    let dump: Value = serde_json::from_slice(&std::fs::read(&dump_path).unwrap()).unwrap();
    assert_eq!(dump["format"], "clove-state");
    assert_eq!(dump["keys"].as_array().unwrap().len(), 2);

    // A fresh daemon elsewhere: import refuses while it runs, works once it is stopped.
    let mut b = Daemon::start();
    let mut c = b.client();
    c.ok(op::STORE, json!({"key": "old", "value": 1}));
    drop(c);
    let out = state_cmd(&b, &["import", dump_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another clove daemon"));
    assert!(b.stop().success());
    let out = state_cmd(&b, &["import", dump_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replace"));
    let out = state_cmd(&b, &["import", "--replace", dump_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 keys"));
    b.spawn().unwrap();
    let mut c = b.client();
    assert_eq!(fetch(&mut c, "one")["value"], json!({"n": 1}));
    assert_eq!(fetch(&mut c, "two")["value"], json!([2]));
    assert_eq!(
        fetch(&mut c, "old")["exists"],
        false,
        "replaced, not merged"
    );
    assert_eq!(fetch(&mut c, "tmp")["exists"], false);

    // A broken dump is refused with every problem named, and nothing changes.
    let bad = b.path("bad.json");
    std::fs::write(
        &bad,
        r#"{"format":"clove-state","schema_version":1,"keys":[{"scope":"session","key":"x","value":1},{"scope":"global","key":"","value":1}]}"#,
    )
    .unwrap();
    drop(c);
    assert!(b.stop().success());
    let out = state_cmd(&b, &["import", "--replace", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("not durable") && err.contains("must not be empty"),
        "{err}"
    );
    let out = state_cmd(&b, &["export"]);
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dump["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn store_config_is_validated_and_store_path_is_honoured() {
    let d = Daemon::start();
    std::fs::write(&d.config_path, "[store]\nsync = \"sometimes\"\n").unwrap();
    let out = run(d.command());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("store.sync: \"sometimes\" is not a sync mode"),
        "{err}"
    );
    drop(d);

    let dir = tempfile::Builder::new()
        .prefix("clove-test-db")
        .tempdir_in("/tmp")
        .unwrap();
    let custom = dir.path().join("sub/my.db");
    let mut d = Daemon::with_config(&format!(
        "[store]\npath = \"{}\"\nsync = \"normal\"\n",
        custom.display()
    ));
    let mut c = d.client();
    c.ok(op::STORE, json!({"key": "k", "value": 1}));
    let hello = c.ok(op::HELLO, json!({}));
    assert_eq!(hello["store"]["sync"], "normal");
    assert_eq!(
        hello["store"]["synchronous"], "NORMAL",
        "what SQLite reports for the writer's connection: {hello}"
    );
    assert_eq!(hello["store"]["path"], custom.display().to_string());
    assert!(hello["store"]["commits"].as_u64().unwrap() >= 1);
    drop(c);
    assert!(d.stop().success());
    assert!(custom.exists());
    assert!(!d.state_dir.join("store.db").exists());
}

/// A small tmpfs mounted for one test, unmounted (lazily, so a failing test cannot leave it
/// busy) when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let out = run({
            let mut m = Command::new("mount");
            m.args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir);
            m
        });
        assert!(out.status.success(), "mount: {out:?}");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_the_write_and_the_store_recovers_when_space_is_freed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let mut d = Daemon::start();
    assert!(d.stop().success());
    let disk = SmallDisk::mount(d.state_dir.join("small"), "4m");
    let db = disk.0.join("store.db");
    std::fs::write(
        &d.config_path,
        format!(
            "[store]\npath = \"{}\"\nsync = \"full\"\n[limits]\nstate_max_value_bytes = 1048576\n",
            db.display()
        ),
    )
    .unwrap();
    d.spawn().unwrap();
    let mut c = d.client();
    c.ok(op::STORE, json!({"key": "before", "value": 1}));
    // Take all the space that is left, then grow the database past what it already holds.
    let filler = disk.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    let big = "x".repeat(256 * 1024);
    let mut stored = Vec::new();
    let mut refusal = None;
    for i in 0..64 {
        let key = format!("big{i}");
        let r = c.call(op::STORE, json!({"key": key, "value": big}));
        if r["success"] == true {
            stored.push(key);
        } else {
            refusal = Some((key, r["error"].as_str().unwrap().to_string()));
            break;
        }
    }
    let (refused_key, e) = refusal.expect("a full disk refuses a write");
    assert!(
        e.contains("disk is full") && e.contains("nothing was changed"),
        "{e}"
    );
    // Reads go on, and the refused key is not there.
    assert_eq!(fetch(&mut c, "before")["value"], 1);
    assert_eq!(fetch(&mut c, &refused_key)["exists"], false);
    let hello = c.ok(op::HELLO, json!({}));
    assert_eq!(hello["store"]["failed"], false, "{hello}");
    // Space freed: writes work again without a restart.
    std::fs::remove_file(&filler).unwrap();
    c.ok(op::STORE, json!({"key": "after", "value": 2}));
    drop(c);
    // What was acknowledged is on disk; what was refused is not.
    d.kill9();
    d.spawn().unwrap();
    let mut c = d.client();
    assert_eq!(fetch(&mut c, "before")["value"], 1);
    assert_eq!(fetch(&mut c, "after")["value"], 2);
    for key in &stored {
        assert_eq!(
            fetch(&mut c, key)["value"].as_str().map(str::len),
            Some(big.len())
        );
    }
    assert_eq!(fetch(&mut c, &refused_key)["exists"], false);
    drop(c);
    assert!(d.stop().success());
}

#[test]
fn short_lived_connections_cost_no_commit() {
    // A plain client's private keys are memory-only; dropping them when it disconnects must
    // not write to the database (with sync = "full" that would be an fsync per connection).
    let d = Daemon::start();
    let mut c = d.client();
    let commits =
        |c: &mut crate::harness::Client| c.ok(op::HELLO, json!({}))["store"]["commits"].clone();
    let before = commits(&mut c);
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut short = d.client();
        ids.push(short.my_id());
        if i % 2 == 0 {
            short.ok(
                op::STORE,
                json!({"key": "mine", "value": i, "scope": "agent"}),
            );
            assert_eq!(fetch(&mut short, "mine")["value"], i);
        }
    }
    // A disconnect is handled in one go on the event loop: once a message to the id is
    // refused, its private keys have been handed to the writer too.
    for id in ids {
        wait_for(
            "the short connection to be let go",
            Duration::from_secs(10),
            || {
                let r = c.call(op::SEND, json!({"to": id, "message": "x"}));
                (r["success"] == false).then_some(())
            },
        );
    }
    wait_for("the writer to be idle", Duration::from_secs(10), || {
        (c.ok(op::HELLO, json!({}))["store"]["pending"] == 0).then_some(())
    });
    assert_eq!(commits(&mut c), before, "disconnects committed something");
    // A durable write still commits, of course.
    c.ok(op::STORE, json!({"key": "shared", "value": 1}));
    assert_ne!(commits(&mut c), before);
}
