//! Security issue, item 3: READ and WRITE must operate on the file they checked.
//!
//! A path was resolved and checked, then opened again by name, so a directory swapped for a
//! symlink in between (`renameat2(RENAME_EXCHANGE)` in a loop) sent READ and WRITE elsewhere; a
//! hard link to a file the caller may not read was read through its other name.

use crate::harness::{Client, Daemon, op};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
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

/// A private directory outside `/tmp` (so `sandboxed` may neither read nor write it), blocked
/// for `standard` by the daemon's config.
fn private_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("clove-race-secret")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn config_blocking(private: &Path) -> String {
    format!(
        "[permissions.levels.standard.filesystem]\nblocked = [\"/etc/shadow\", \"/etc/gshadow\", \"{}/**\"]\n",
        private.display()
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
