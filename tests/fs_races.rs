//! Security issue, items 3 and 4: READ and WRITE must operate on the file they checked, and must
//! never hand out the daemon's own secrets or wedge a worker on a special file.
//!
//! Item 3: a path was resolved and checked, then opened again by name, so a directory swapped
//! for a symlink in between (`renameat2(RENAME_EXCHANGE)` in a loop) sent READ and WRITE
//! elsewhere; a hard link to a file the caller may not read was read through its other name.
//! Item 4: `/proc/thread-self/environ` escaped the `/proc/*/environ` rule and returned the
//! daemon's environment, and a few READs of `/proc/kmsg` (a "regular file" that never ends)
//! held every worker for good.

use crate::harness::{Client, Daemon, frame, op, read_frame};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Requests each racing client sends (bounded; the deadline below bounds the time too).
const RACE_ROUNDS: usize = 5_000;
/// A racing run stops sending at this deadline even when its rounds are not done.
const RACE_DEADLINE: Duration = Duration::from_secs(120);

/// A marker unique to this run, so a leak cannot be confused with another test's data.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{what}-{}-{nanos:x}", std::process::id())
}

/// Swaps two names in one directory with `renameat2(RENAME_EXCHANGE)` as fast as it can, in a
/// process of its own, until dropped.
struct Racer {
    child: Child,
}

const RACER: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
a, b = sys.argv[2].encode(), sys.argv[3].encode()
AT_FDCWD, RENAME_EXCHANGE = -100, 2
if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
    sys.exit("renameat2: errno %d" % ctypes.get_errno())
print("ready", flush=True)
while True:
    libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
"#;

impl Racer {
    /// Starts swapping `dir/a` and `dir/b`; returns once the first swap succeeded.
    fn start(dir: &Path, a: &str, b: &str) -> Racer {
        let mut child = Command::new("python3")
            .args(["-c", RACER])
            .arg(dir)
            .args([a, b])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the racing helper");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the racing helper did not start");
        Racer { child }
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a racing client saw.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    ok: usize,
    refused: usize,
    /// Replies that carried the secret marker (must stay 0).
    leaked: usize,
    /// The first of them, cut short and with the marker masked (it may be /etc/shadow).
    example: String,
}

/// Sends up to `RACE_ROUNDS` copies of `request` (op `code`) and sorts the replies: a
/// successful READ must return exactly `expect_content`; no reply may mention `secret`.
fn race_client(
    mut c: Client,
    code: u8,
    request: Value,
    expect_content: Option<String>,
    secret: String,
) -> Tally {
    let mut t = Tally::default();
    let deadline = Instant::now() + RACE_DEADLINE;
    while t.sent < RACE_ROUNDS && Instant::now() < deadline {
        let reply = c.call(code, request.clone());
        t.sent += 1;
        let text = reply.to_string();
        if text.contains(&secret) {
            if t.leaked == 0 {
                t.example = text
                    .replace(&secret, "<secret>")
                    .chars()
                    .take(160)
                    .collect();
            }
            t.leaked += 1;
            continue;
        }
        if reply["success"] == true {
            if let Some(want) = &expect_content {
                assert_eq!(&reply["content"], want.as_str(), "{reply}");
            }
            t.ok += 1;
        } else {
            t.refused += 1;
        }
    }
    t
}

/// A client at `level` (lowered from the default).
fn client_at(d: &Daemon, level: &str) -> Client {
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": level}));
    c
}

/// The layout of the issue: `x/d` a directory holding `name`, `x/alt -> target`.
fn race_layout(root: &Path, name: &str, decoy: &str, target: &Path) -> PathBuf {
    let x = root.join("x");
    std::fs::create_dir_all(x.join("d")).unwrap();
    std::fs::write(x.join("d").join(name), decoy).unwrap();
    std::os::unix::fs::symlink(target, x.join("alt")).unwrap();
    x
}

/// Runs one racing client per level at once, each sending `request`.
fn race_levels(
    d: &Daemon,
    levels: &[&str],
    code: u8,
    request: Value,
    expect: Option<String>,
    secret: &str,
) -> Vec<(String, Tally)> {
    let handles: Vec<_> = levels
        .iter()
        .map(|level| {
            let c = client_at(d, level);
            let (request, expect, secret) = (request.clone(), expect.clone(), secret.to_string());
            let level = level.to_string();
            std::thread::spawn(move || (level, race_client(c, code, request, expect, secret)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A private directory, blocked for `standard` and `sandboxed` by the daemon's config (it is
/// in the build's target directory, which may be anywhere, /tmp included: the block, not the
/// location, is what keeps it out of reach).
fn private_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("clove-race-secret")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn config_blocking(private: &Path) -> String {
    let blocked = format!(
        "blocked = [\"/etc/shadow\", \"/etc/gshadow\", \"{}/**\"]\n",
        private.display()
    );
    format!(
        "[permissions.levels.standard.filesystem]\n{blocked}\
         [permissions.levels.sandboxed.filesystem]\n{blocked}"
    )
}

fn assert_no_escape(results: &[(String, Tally)], what: &str) {
    for (level, t) in results {
        eprintln!("{what} at {level}: {t:?}");
        assert!(
            t.leaked == 0,
            "{what} at {level}: {} of {} replies held the secret, e.g. {}",
            t.leaked,
            t.sent,
            t.example
        );
        assert!(
            t.sent >= 1_000,
            "{what} at {level}: only {} requests before the deadline",
            t.sent
        );
    }
}

/// Item 3, READ: `x/d/shadow` is swapped with `x/alt -> private dir` thousands of times a
/// second while a `standard` and a `sandboxed` client READ it; no reply may hold the private
/// file, every successful one holds the decoy.
#[test]
fn issue3_rename_exchange_race_never_reads_another_file() {
    let private = private_dir();
    let secret = marker("SECRET");
    std::fs::write(private.path().join("shadow"), &secret).unwrap();
    let d = Daemon::with_config(&config_blocking(private.path()));
    let decoy = marker("decoy");
    let x = race_layout(d.dir.path(), "shadow", &decoy, private.path());
    let request = json!({"path": x.join("d/shadow")});
    let _racer = Racer::start(&x, "d", "alt");
    let results = race_levels(
        &d,
        &["standard", "sandboxed"],
        op::READ,
        request,
        Some(decoy),
        &secret,
    );
    assert_no_escape(&results, "READ");
}

/// Item 3, WRITE: the same race while WRITE creates `x/d/f`: nothing may appear in (or change
/// in) the private directory.
#[test]
fn issue3_rename_exchange_race_never_writes_outside_the_allowed_tree() {
    let private = private_dir();
    let secret = marker("SECRET");
    std::fs::write(private.path().join("shadow"), &secret).unwrap();
    let d = Daemon::with_config(&config_blocking(private.path()));
    let x = race_layout(d.dir.path(), "shadow", "decoy", private.path());
    let request = json!({"path": x.join("d/f"), "content": "written", "mode": "append"});
    let racer = Racer::start(&x, "d", "alt");
    let results = race_levels(
        &d,
        &["standard", "sandboxed"],
        op::WRITE,
        request,
        None,
        &secret,
    );
    drop(racer);
    let names: Vec<_> = std::fs::read_dir(private.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["shadow"], "WRITE created a file in the private dir");
    assert_eq!(
        std::fs::read_to_string(private.path().join("shadow")).unwrap(),
        secret
    );
    assert_no_escape(&results, "WRITE");
}

/// Removes a file on drop (one that a failing run of the test below may leave in /etc).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Item 3, the issue's own repro: `x/alt -> /etc`, READ `x/d/shadow` and WRITE `x/d/<name>`
/// at `standard` and `sandboxed`; no reply holds `/etc/shadow`, no file appears in `/etc`.
#[test]
fn issue3_rename_exchange_race_against_etc_shadow() {
    let shadow = std::fs::read_to_string("/etc/shadow").ok();
    let d = Daemon::start();
    let decoy = marker("decoy");
    let x = race_layout(d.dir.path(), "shadow", &decoy, Path::new("/etc"));
    let name = marker("clove-race");
    let escaped = RemoveOnDrop(Path::new("/etc").join(&name));
    let _racer = Racer::start(&x, "d", "alt");
    // Any line of /etc/shadow is the secret; its first line is enough to recognise it (when
    // the test cannot read it, the decoy check below still catches every other file).
    let first = shadow
        .as_deref()
        .and_then(|s| s.lines().next())
        .unwrap_or("root:")
        .to_string();
    let reads = race_levels(
        &d,
        &["standard", "sandboxed"],
        op::READ,
        json!({"path": x.join("d/shadow")}),
        Some(decoy),
        &first,
    );
    let writes = race_levels(
        &d,
        &["standard", "sandboxed"],
        op::WRITE,
        json!({"path": x.join("d").join(&name), "content": "x"}),
        None,
        &first,
    );
    assert!(
        !escaped.0.exists(),
        "WRITE created {} (root-owned, outside every write rule)",
        escaped.0.display()
    );
    assert_no_escape(&reads, "READ (alt -> /etc)");
    assert_no_escape(&writes, "WRITE (alt -> /etc)");
}

/// The blocked list of `c`'s current set, plus `extra`.
fn blocked_plus(c: &mut Client, extra: &str) -> Vec<Value> {
    let p = c.ok(op::GET_PERMS, json!({}));
    let mut blocked = p["permissions"]["filesystem"]["blocked"]
        .as_array()
        .unwrap()
        .clone();
    blocked.push(json!(extra));
    blocked
}

/// Item 3, hard links: a second name made for a file the caller may not read (in a blocked
/// directory, and `/etc/shadow` itself) does not make it readable or writable. The rule: a file
/// with more than one link is served only to a caller whose rules reach every path (it cannot be
/// known where the other names are); a file with one link is served as before.
#[test]
fn issue3_hard_link_to_a_file_the_caller_may_not_read_is_refused() {
    let d = Daemon::start();
    let root = d.path("links");
    let (secret_dir, public) = (root.join("secret"), root.join("public"));
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::create_dir_all(&public).unwrap();
    let secret = marker("SECRET");
    std::fs::write(secret_dir.join("key"), &secret).unwrap();
    std::fs::hard_link(secret_dir.join("key"), public.join("link")).unwrap();
    std::fs::write(public.join("plain"), "plain").unwrap();
    let mut c = client_at(&d, "sandboxed");
    let blocked = blocked_plus(&mut c, &format!("{}/**", secret_dir.display()));
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"blocked": blocked}}}),
    );
    let e = c.err(op::READ, json!({"path": secret_dir.join("key")}));
    assert!(e.contains("permission denied"), "{e}");
    let e = c.err(op::READ, json!({"path": public.join("link")}));
    assert!(
        e.contains("permission denied") && e.contains("2 links") && !e.contains(&secret),
        "{e}"
    );
    let e = c.err(
        op::WRITE,
        json!({"path": public.join("link"), "content": "overwritten"}),
    );
    assert!(e.contains("permission denied"), "{e}");
    assert_eq!(
        std::fs::read_to_string(secret_dir.join("key")).unwrap(),
        secret
    );
    // A file with one name is served as before.
    assert_eq!(
        c.ok(op::READ, json!({"path": public.join("plain")}))["content"],
        "plain"
    );
    c.ok(
        op::WRITE,
        json!({"path": public.join("plain"), "content": "new"}),
    );
    assert_eq!(
        c.ok(op::READ, json!({"path": public.join("plain")}))["content"],
        "new"
    );
    // A caller whose rules reach every path may read every name anyway.
    let mut user = d.client();
    assert_eq!(
        user.ok(op::READ, json!({"path": public.join("link")}))["content"],
        secret.as_str()
    );
    // The issue's repro: `ln /etc/shadow /tmp/...` (possible for root, on the same filesystem).
    let link = d.path("shadow-link");
    match std::fs::hard_link("/etc/shadow", &link) {
        Ok(()) => {
            let first = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
            let first = first.lines().next().unwrap_or("root:").to_string();
            for level in ["standard", "sandboxed"] {
                let mut c = client_at(&d, level);
                let e = c.err(op::READ, json!({"path": link}));
                assert!(
                    e.contains("permission denied") && !e.contains(&first),
                    "{level}: {e}"
                );
            }
            std::fs::remove_file(&link).unwrap();
        }
        Err(e) => eprintln!(
            "cannot link /etc/shadow into {} ({e}); part skipped",
            link.display()
        ),
    }
}

/// A daemon whose environment holds a fake model key, and the key.
fn daemon_with_key(toml: &str) -> (Daemon, String) {
    let key = marker("sk-test");
    let d = Daemon::with_config_env(toml, &[("OPENAI_API_KEY", key.as_str())]);
    (d, key)
}

/// The daemon's thread ids, as seen in `/proc/<pid>/task`.
fn daemon_tids(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every way to name the daemon's own environment and memory that the issue lists.
fn daemon_proc_paths(d: &Daemon) -> Vec<String> {
    let pid = d.pid();
    let mut paths = vec![
        "/proc/thread-self/environ".to_string(),
        "/proc/self/environ".to_string(),
        format!("/proc/{pid}/environ"),
        "/proc/self/mem".to_string(),
    ];
    for tid in daemon_tids(d).iter().take(3) {
        paths.push(format!("/proc/self/task/{tid}/environ"));
        paths.push(format!("/proc/self/task/{tid}/mem"));
        paths.push(format!("/proc/{pid}/task/{tid}/environ"));
        paths.push(format!("/proc/{tid}/environ"));
    }
    paths
}

/// Asserts READ of each path is refused as a permission matter and never shows `key`.
fn assert_refused(c: &mut Client, paths: &[String], key: &str, why: &str) {
    for p in paths {
        let reply = c.call(op::READ, json!({"path": p}));
        let text = reply.to_string();
        // A leaking reply is the daemon's whole environment: show only its start.
        let start: String = text.chars().take(200).collect();
        assert!(
            !text.contains(key),
            "READ {p} leaked the daemon's key: {start}..."
        );
        assert_eq!(reply["success"], false, "READ {p}: {start}");
        let e = reply["error"].as_str().unwrap();
        assert!(
            e.contains("permission denied") && e.contains(why),
            "READ {p}: {e}"
        );
    }
}

/// Item 4: at `readonly` (which blocks `/proc/*/environ` and `/proc/*/mem`), no name of the
/// daemon's own environment or memory is readable: `/proc/thread-self/environ` resolves to
/// `/proc/<pid>/task/<tid>/environ`, which that rule did not match.
#[test]
fn issue4_the_daemons_environment_and_memory_are_refused_at_readonly() {
    let (d, key) = daemon_with_key("");
    let mut c = client_at(&d, "readonly");
    assert_refused(&mut c, &daemon_proc_paths(&d), &key, "");
    // The same through a symlink the caller made.
    let link = d.path("env-link");
    std::os::unix::fs::symlink("/proc/thread-self/environ", &link).unwrap();
    assert_refused(&mut c, &[link.display().to_string()], &key, "");
}

/// Item 4: even a caller whose rules name `/proc` explicitly cannot read the daemon's own
/// entries (`/proc/self`, `/proc/thread-self`, `/proc/<daemon pid>`, `/proc/<daemon tid>`),
/// while it can read another process's.
#[test]
fn issue4_the_daemons_own_proc_entries_are_refused_even_with_a_proc_rule() {
    let (d, key) = daemon_with_key(
        "[permissions.levels.unrestricted.filesystem]\nread = [\"/**\", \"/proc/**\"]\n",
    );
    let mut c = d.client();
    let me = std::process::id();
    let status = c.ok(op::READ, json!({"path": format!("/proc/{me}/status")}));
    assert!(
        status["content"]
            .as_str()
            .unwrap()
            .contains(&format!("Pid:\t{me}")),
        "{status}"
    );
    assert_refused(&mut c, &daemon_proc_paths(&d), &key, "the daemon");
    let e = c.err(
        op::WRITE,
        json!({"path": "/proc/self/comm", "content": "pwned"}),
    );
    assert!(e.contains("permission denied"), "{e}");
}

/// Item 4: files on pseudo-filesystems (procfs, sysfs, ...) are refused unless a rule names
/// their directory: `/**` does not reach them, and a caller cannot give itself such a rule.
#[test]
fn issue4_pseudo_filesystems_need_a_rule_that_names_them() {
    let d = Daemon::start();
    let mut c = d.client();
    let me = std::process::id();
    let sys = [
        "/sys/kernel/uevent_seqnum",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let mut paths = vec![format!("/proc/{me}/status"), "/proc/cpuinfo".to_string()];
    paths.extend(sys.map(String::from));
    for p in &paths {
        let e = c.err(op::READ, json!({"path": p}));
        assert!(
            e.contains("permission denied") && e.contains("pseudo-filesystem"),
            "READ {p}: {e}"
        );
    }
    let e = c.err(
        op::WRITE,
        json!({"path": format!("/proc/{me}/comm"), "content": "renamed"}),
    );
    assert!(e.contains("pseudo-filesystem"), "{e}");
    let e = c.err(
        op::SET_PERMS,
        json!({"permissions": {"filesystem": {"read": ["/**", "/proc/**"]}}}),
    );
    assert!(e.contains("never raise"), "{e}");
}

/// Sends READ `path` on a connection of its own at `rules` (None: the default), unanswered yet.
fn pending_read(d: &Daemon, read_rules: Option<Value>, path: &str) -> UnixStream {
    let mut c = d.client();
    if let Some(read) = read_rules {
        c.ok(
            op::SET_PERMS,
            json!({"permissions": {"filesystem": {"read": read}}}),
        );
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = serde_json::to_vec(&json!({"path": path})).unwrap();
    c.stream.write_all(&frame(c.id, op::READ, &body)).unwrap();
    c.stream
}

/// Item 4: four READs of `/proc/kmsg` (more than the workers) on connections of their own are
/// answered at once, refused, and a READ of a plain file and a NOOP are still served promptly:
/// without a `/proc` rule the file is refused before it is opened; with one, the read never
/// waits for data.
#[test]
fn issue4_kmsg_reads_hold_no_worker() {
    let d = Daemon::with_config(
        "[server]\nworkers = 2\n[permissions.levels.unrestricted.filesystem]\nread = [\"/**\", \"/proc/**\"]\n",
    );
    let plain = d.path("plain.txt");
    std::fs::write(&plain, "still served").unwrap();
    // Only root may open /proc/kmsg; others get EACCES at once, which proves less.
    let with_rule = if nix::unistd::geteuid().is_root() {
        "reading it would wait"
    } else {
        "/proc/kmsg"
    };
    for (rules, want) in [
        (Some(json!(["/**"])), "pseudo-filesystem"),
        (None, with_rule),
    ] {
        let started = Instant::now();
        let pending: Vec<UnixStream> = (0..4)
            .map(|_| pending_read(&d, rules.clone(), "/proc/kmsg"))
            .collect();
        for (i, mut s) in pending.into_iter().enumerate() {
            let reply = read_frame(&mut s)
                .unwrap_or_else(|e| panic!("READ {i} of /proc/kmsg ({rules:?}) got no reply: {e}"))
                .json();
            assert_eq!(reply["success"], false, "{reply}");
            let e = reply["error"].as_str().unwrap();
            eprintln!("READ {i} of /proc/kmsg ({rules:?}): {e}");
            assert!(e.contains(want), "{rules:?}: {e}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let mut c = d.client();
        c.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(
            c.ok(op::READ, json!({"path": plain}))["content"],
            "still served"
        );
        assert_eq!(c.call_raw(op::NOOP, b"ping").payload, b"ping");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a plain READ after the /proc/kmsg READs took {:?}",
            started.elapsed()
        );
    }
}
