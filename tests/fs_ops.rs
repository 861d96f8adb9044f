//! READ and WRITE on files that are not regular files (FIFOs, devices), and other filesystem edge cases.

use crate::harness::{Daemon, frame, op, read_frame};
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const WORKERS: usize = 2;

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// Sends one request on its own connection (a connection with a request at a worker is not
/// read further, so each of these can hold a worker of its own).
fn send(d: &Daemon, code: u8, req: &Value) -> UnixStream {
    let mut s = d.raw();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&frame(0, code, &serde_json::to_vec(req).unwrap()))
        .unwrap();
    s
}

fn error_of(reply: &Value) -> &str {
    assert_eq!(reply["success"], false, "{reply}");
    reply["error"].as_str().unwrap_or_else(|| panic!("{reply}"))
}

/// READ of a FIFO nobody writes to and WRITE to a FIFO nobody reads from used to wait in open(2)
/// for ever, each holding a worker: twice as many as there are workers stopped every READ,
/// WRITE and EXEC of every caller. (READs and WRITEs are sent apart, so that they cannot meet
/// each other at the FIFO.)
#[test]
fn fifos_are_refused_at_once_and_hold_no_worker() {
    let d = Daemon::with_config(&format!("[server]\nworkers = {WORKERS}\n"));
    let fifo = d.path("fifo");
    mkfifo(&fifo);
    let plain = d.path("plain.txt");
    std::fs::write(&plain, "still served").unwrap();
    let batches = [
        ("READ", op::READ, json!({"path": fifo})),
        ("WRITE", op::WRITE, json!({"path": fifo, "content": "x"})),
        (
            "WRITE append",
            op::WRITE,
            json!({"path": fifo, "content": "x", "mode": "append"}),
        ),
    ];
    for (name, code, req) in batches {
        let started = Instant::now();
        let pending: Vec<UnixStream> = (0..WORKERS * 2).map(|_| send(&d, code, &req)).collect();
        for (i, mut s) in pending.into_iter().enumerate() {
            let reply = read_frame(&mut s)
                .unwrap_or_else(|e| panic!("{name} {i} of the FIFO got no reply: {e}"))
                .json();
            let e = error_of(&reply);
            assert!(
                e.contains(&fifo.display().to_string())
                    && e.contains("is a FIFO, not a regular file"),
                "{name} {i}: {e}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} of the FIFO took {:?}",
            started.elapsed()
        );
        // Every worker is free: a plain READ is served at once.
        let started = Instant::now();
        let reply = read_frame(&mut send(&d, op::READ, &json!({"path": plain})))
            .unwrap_or_else(|e| panic!("READ after the {name}s of the FIFO: {e}"))
            .json();
        assert_eq!(reply["content"], "still served", "{reply}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// With a reader on the other side, WRITE to a FIFO is still refused and writes nothing.
#[test]
fn write_to_a_fifo_with_a_reader_writes_nothing() {
    let d = Daemon::start();
    let mut c = d.client();
    let fifo = d.path("fifo");
    mkfifo(&fifo);
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let e = c.err(op::WRITE, json!({"path": fifo, "content": "leak"}));
    assert!(e.contains("is a FIFO, not a regular file"), "{e}");
    let mut buf = [0u8; 16];
    // Nothing to read: 0 (no writer has it open) or EAGAIN, never the content.
    match reader.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the FIFO must be empty, read gave {other:?}: {buf:?}"),
    }
    let e = c.err(op::READ, json!({"path": fifo}));
    assert!(e.contains("is a FIFO, not a regular file"), "{e}");
}

#[test]
fn directories_devices_and_sockets_get_clear_errors() {
    let d = Daemon::start();
    let mut c = d.client();
    let dir = d.path("sub");
    std::fs::create_dir(&dir).unwrap();
    let sock = d.path("listening.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let cases: [(&Path, &str); 4] = [
        (&dir, "is a directory, not a regular file"),
        (
            Path::new("/dev/null"),
            "is a character device, not a regular file",
        ),
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (&sock, "is a socket, not a regular file"),
    ];
    for (path, want) in cases {
        let e = c.err(op::READ, json!({"path": path}));
        assert!(
            e.starts_with("cannot read") && e.contains(want),
            "READ {path:?}: {e}"
        );
        let e = c.err(op::WRITE, json!({"path": path, "content": "x"}));
        assert!(
            e.starts_with("cannot write") && e.contains(want),
            "WRITE {path:?}: {e}"
        );
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// Regular files behave as before: WRITE creates (mode 0644), replaces and appends; READ
/// returns what is there; a refused WRITE changes nothing.
#[test]
fn regular_files_are_created_replaced_and_appended() {
    let d = Daemon::start();
    let mut c = d.client();
    let p = d.path("new.txt");
    let w = c.ok(
        op::WRITE,
        json!({"path": p, "content": "a long first line\n"}),
    );
    assert_eq!(w["bytes_written"], 18);
    // 0644 less the daemon's umask.
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert!(mode & 0o600 == 0o600 && mode & 0o133 == 0, "mode {mode:o}");
    c.ok(op::WRITE, json!({"path": p, "content": "short\n"}));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "short\n");
    c.ok(
        op::WRITE,
        json!({"path": p, "content": "more\n", "mode": "append"}),
    );
    let r = c.ok(op::READ, json!({"path": p}));
    assert_eq!(r["content"], "short\nmore\n");
    assert_eq!(r["size"], 11);
    let empty = d.path("empty");
    c.ok(op::WRITE, json!({"path": empty, "content": ""}));
    let r = c.ok(op::READ, json!({"path": empty}));
    assert_eq!(r["content"], "");
    assert_eq!(r["size"], 0);
    // Files the kernel makes up as they are read are on a pseudo-filesystem: `/**` does not
    // reach them (a rule naming `/proc` does: see fs_races.rs).
    let e = c.err(
        op::READ,
        json!({"path": format!("/proc/{}/stat", std::process::id())}),
    );
    assert!(e.contains("pseudo-filesystem"), "{e}");
    let fifo = d.path("fifo");
    mkfifo(&fifo);
    c.err(op::WRITE, json!({"path": fifo, "content": "x"}));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "short\nmore\n");
}
