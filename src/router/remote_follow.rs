//! Following outboxes on another host: one long-lived `clove worker follow DIR` per login host,
//! started over ssh, runs the ordinary follower ([`super::follow`]) next to the files and
//! sends the translated events back as JSON lines; this side hands them to the core exactly as
//! the local follower would (same batches, same durable offsets).
//!
//! The connection is lazy (made when the first file is followed) and is made again with
//! capped backoff when it drops (sshd restarted, network cut); every file is then followed
//! again from the offset of the last batch handed to the core, so nothing is replayed or
//! skipped across a reconnection, and (through the stored offsets) across a daemon restart.
//!
//! Wire, one JSON object per line. To the far side: `{"op": "follow", "swarm_id", "job_id",
//! "node_id", "inode", "offset"}`, `{"op": "unfollow", "job_id"}`, `{"op": "busy", "job_id",
//! "node_id"}`. Back: `{"swarm_id", "job_id", "node_id", "inode", "offset", "finished",
//! "events": [[name, data], ...]}`.

use super::follow::{self, FileBatch, FileSpec, FollowCmd, FollowConfig, Follower};
use super::mailbox::Workspace;
use super::provider::slurm::shell::Shell;
use super::wire::Event;
use super::{CoreMsg, Stats};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest line either side accepts (a batch holds at most 4096 records).
const MAX_LINE: u64 = 256 << 20;
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

// ---- the far side ----------------------------------------------------------------------

/// `clove worker follow DIR`: follows outboxes under the workspace DIR as told on stdin, until
/// stdin ends (the ssh session is gone).
pub fn serve(dir: &Path, cfg: FollowConfig) -> Result<(), String> {
    let ws = Workspace::new(dir);
    let (core_tx, core_rx) = crossbeam_channel::bounded::<CoreMsg>(64);
    let follower = follow::start(cfg, core_tx, Arc::new(Stats::default()))
        .map_err(|e| format!("cannot start the follower: {e}"))?;
    std::thread::Builder::new()
        .name("follow-input".into())
        .spawn(move || read_commands(&ws, &follower))
        .map_err(|e| e.to_string())?;
    let out = std::io::stdout();
    for msg in core_rx {
        let CoreMsg::Records(batches) = msg else {
            continue;
        };
        let mut lock = out.lock();
        for b in batches {
            let line = json!({"swarm_id": b.swarm_id, "job_id": b.job_id, "node_id": b.node_id,
                "inode": b.inode, "offset": b.offset, "finished": b.finished,
                "events": b.events.iter().map(|e| json!([e.name, e.data])).collect::<Vec<_>>()});
            if writeln!(lock, "{line}")
                .and_then(|()| lock.flush())
                .is_err()
            {
                return Ok(()); // the reader is gone
            }
        }
    }
    Ok(())
}

fn read_commands(ws: &Workspace, follower: &Follower) {
    let stdin = std::io::stdin();
    let mut lines = BufReader::new(stdin.lock());
    let mut line = String::new();
    loop {
        line.clear();
        match Read::by_ref(&mut lines).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => std::process::exit(0),
            Ok(_) => {}
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            eprintln!("clove worker follow: not JSON: {}", line.trim());
            continue;
        };
        if let Some(cmd) = command_of(ws, &v) {
            // This process does nothing else: waiting for room is fine here.
            let mut cmd = cmd;
            while let Err(c) = follower.try_send(cmd) {
                cmd = c;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn command_of(ws: &Workspace, v: &Value) -> Option<FollowCmd> {
    let job = v["job_id"].as_str()?.to_string();
    if !super::mailbox::valid_job_id(&job) {
        return None;
    }
    let node = v["node_id"].as_u64().unwrap_or(0) as u32;
    match v["op"].as_str()? {
        "follow" => Some(FollowCmd::Follow(FileSpec {
            swarm_id: v["swarm_id"].as_str()?.to_string(),
            outbox: ws.outbox(&job, node),
            archive: ws.archive(&job, node),
            job_id: job,
            node_id: node,
            inode: v["inode"].as_u64().unwrap_or(0),
            offset: v["offset"].as_u64().unwrap_or(0),
        })),
        "unfollow" => Some(FollowCmd::Unfollow { job_id: job }),
        "busy" => Some(FollowCmd::Busy {
            job_id: job,
            node_id: node,
        }),
        _ => None,
    }
}

fn batch_of(v: &Value) -> Option<FileBatch> {
    Some(FileBatch {
        swarm_id: v["swarm_id"].as_str()?.to_string(),
        job_id: v["job_id"].as_str()?.to_string(),
        node_id: v["node_id"].as_u64()? as u32,
        inode: v["inode"].as_u64()?,
        offset: v["offset"].as_u64()?,
        finished: v["finished"].as_bool().unwrap_or(false),
        events: v["events"]
            .as_array()?
            .iter()
            .filter_map(|e| Some(Event::new(e[0].as_str()?, e[1].clone())))
            .collect(),
    })
}

// ---- this side -------------------------------------------------------------------------

/// What the remote follower of one login host needs.
pub struct RemoteSpec {
    pub shell: Shell,
    /// `<worker_path> worker follow <workspace> ...` (run through `shell`'s ssh).
    pub argv: Vec<String>,
    pub core: Sender<CoreMsg>,
    pub label: String,
}

/// Starts the thread that keeps the remote follower running; its handle takes the same
/// commands as the local follower's.
pub fn start(spec: RemoteSpec) -> std::io::Result<Follower> {
    let (tx, rx) = crossbeam_channel::bounded(4096);
    let mut t = Remote {
        spec,
        files: HashMap::new(),
        unfollowing: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("clove-router-rfollow".into())
        .spawn(move || t.run(rx))?;
    Ok(Follower::from_channel(tx))
}

struct Remote {
    spec: RemoteSpec,
    /// Followed files with the offset of the last batch handed to the core.
    files: HashMap<(String, u32), FileSpec>,
    unfollowing: HashSet<String>,
}

enum End {
    /// The core is gone: stop.
    Stop,
    /// The connection dropped: make it again.
    Dropped(String),
}

struct Session {
    child: Child,
    lines: Receiver<Option<String>>,
}

impl Remote {
    fn run(&mut self, rx: Receiver<FollowCmd>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            // Nothing to follow: no connection, just wait for work.
            while self.files.is_empty() {
                match rx.recv() {
                    Ok(cmd) => self.apply(&cmd),
                    Err(_) => return,
                }
            }
            let started = Instant::now();
            let end = match self.connect() {
                Ok(s) => self.session(s, &rx),
                Err(e) => End::Dropped(e),
            };
            match end {
                End::Stop => return,
                End::Dropped(e) => {
                    log::warn!(
                        "router: remote follower on {}: {e}; again in {backoff:?}",
                        self.spec.label
                    );
                }
            }
            if started.elapsed() > BACKOFF_MAX * 3 {
                backoff = BACKOFF_FIRST; // it had been up for a while
            }
            let until = Instant::now() + backoff;
            loop {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(cmd) => self.apply(&cmd),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Keeps this side's list in step with a command.
    fn apply(&mut self, cmd: &FollowCmd) {
        match cmd {
            FollowCmd::Follow(spec) => {
                self.files
                    .insert((spec.job_id.clone(), spec.node_id), spec.clone());
            }
            FollowCmd::Unfollow { job_id } => {
                self.unfollowing.insert(job_id.clone());
            }
            FollowCmd::Busy { .. } => {}
        }
    }

    fn connect(&self) -> Result<Session, String> {
        let argv = match &self.spec.shell.ssh {
            Some(s) => s.argv(&self.spec.argv),
            None => self.spec.argv.clone(),
        };
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = crossbeam_channel::bounded(64);
        std::thread::Builder::new()
            .name("clove-router-rfollow-read".into())
            .spawn(move || read_lines(out, &tx))
            .map_err(|e| e.to_string())?;
        Ok(Session { child, lines })
    }

    fn session(&mut self, mut s: Session, rx: &Receiver<FollowCmd>) -> End {
        let mut initial: Vec<Value> = self.files.values().map(follow_line).collect();
        initial.extend(
            self.unfollowing
                .iter()
                .map(|j| json!({"op": "unfollow", "job_id": j})),
        );
        let end = match send(&mut s.child, &initial) {
            Err(e) => End::Dropped(e),
            Ok(()) => self.pump(&mut s, rx),
        };
        let _ = s.child.kill();
        let _ = s.child.wait(); // our own child only
        end
    }

    fn pump(&mut self, s: &mut Session, rx: &Receiver<FollowCmd>) -> End {
        loop {
            crossbeam_channel::select! {
                recv(rx) -> cmd => {
                    let Ok(cmd) = cmd else { return End::Stop };
                    self.apply(&cmd);
                    let line = match &cmd {
                        FollowCmd::Follow(spec) => follow_line(spec),
                        FollowCmd::Unfollow { job_id } => json!({"op": "unfollow", "job_id": job_id}),
                        FollowCmd::Busy { job_id, node_id } =>
                            json!({"op": "busy", "job_id": job_id, "node_id": node_id}),
                    };
                    if let Err(e) = send(&mut s.child, &[line]) {
                        return End::Dropped(e);
                    }
                }
                recv(s.lines) -> line => {
                    let Ok(Some(line)) = line else {
                        return End::Dropped("the connection ended".into());
                    };
                    if !self.batch(&line) {
                        return End::Stop;
                    }
                }
            }
        }
    }

    /// One batch from the far side, to the core; false when the core is gone.
    fn batch(&mut self, line: &str) -> bool {
        let Some(b) = serde_json::from_str::<Value>(line)
            .ok()
            .as_ref()
            .and_then(batch_of)
        else {
            log::warn!(
                "router: remote follower on {}: unreadable line",
                self.spec.label
            );
            return true;
        };
        let key = (b.job_id.clone(), b.node_id);
        if b.finished {
            self.files.remove(&key);
            if !self.files.keys().any(|(j, _)| *j == b.job_id) {
                self.unfollowing.remove(&b.job_id);
            }
        } else if let Some(f) = self.files.get_mut(&key) {
            f.inode = b.inode;
            f.offset = b.offset;
        }
        self.spec.core.send(CoreMsg::Records(vec![b])).is_ok()
    }
}

fn follow_line(f: &FileSpec) -> Value {
    json!({"op": "follow", "swarm_id": f.swarm_id, "job_id": f.job_id, "node_id": f.node_id,
           "inode": f.inode, "offset": f.offset})
}

fn send(child: &mut Child, lines: &[Value]) -> Result<(), String> {
    let Some(stdin) = child.stdin.as_mut() else {
        return Err("no stdin".into());
    };
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    stdin
        .write_all(text.as_bytes())
        .and_then(|()| stdin.flush())
        .map_err(|e| format!("cannot write to the remote follower: {e}"))
}

fn read_lines(out: std::process::ChildStdout, tx: &Sender<Option<String>>) {
    let mut r = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        match Read::by_ref(&mut r).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => {
                let _ = tx.send(None);
                return;
            }
            Ok(_) => {
                if tx.send(Some(line.trim_end().to_string())).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_batches_round_trip() {
        let ws = Workspace::new("/w");
        let spec = FileSpec {
            swarm_id: "s".into(),
            job_id: "12".into(),
            node_id: 1,
            outbox: ws.outbox("12", 1),
            archive: ws.archive("12", 1),
            inode: 5,
            offset: 99,
        };
        match command_of(&ws, &follow_line(&spec)) {
            Some(FollowCmd::Follow(s)) => assert_eq!(s, spec),
            other => panic!("{other:?}"),
        }
        assert!(
            command_of(
                &ws,
                &json!({"op": "follow", "job_id": "../x", "swarm_id": "s"})
            )
            .is_none()
        );
        let b = batch_of(
            &json!({"swarm_id": "s", "job_id": "12", "node_id": 1, "inode": 5,
            "offset": 120, "finished": false, "events": [["assistant", {"content": "hi"}]]}),
        )
        .unwrap();
        assert_eq!(b.events[0].name, "assistant");
        assert_eq!(b.offset, 120);
    }
}
