//! The follower: reads every live node's outbox as it grows and hands complete records, already
//! translated into events, to the router's core.
//!
//! One thread (`clove-router-follow`) waits on inotify (immediate on a local filesystem) and on
//! a timer for polling, because on a shared filesystem another host's appends raise no inotify
//! event. Polling adapts per file: every `poll_busy` while its node is busy or data keeps
//! coming, backing off (doubling) to `poll_idle_max` while nothing comes.
//!
//! Per file it tracks the inode and the offset after the last complete line. The core stores
//! both with the effects of the records (one commit) before it publishes their events, so after
//! a restart the follower resumes at exactly the first record no client has seen: nothing is
//! replayed, nothing skipped. A worker that moves its outbox to the archive at exit is followed
//! there to its end; a file truncated under us starts over (and is logged).

use super::mailbox;
use super::translate::{Drop, Origin, Translated, translate};
use super::wire::Event;
use super::{CoreMsg, Stats};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const INOTIFY: Token = Token(0);
const WAKE: Token = Token(1);

/// A node's outbox to follow, from where the core last committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub swarm_id: String,
    pub job_id: String,
    pub node_id: u32,
    pub outbox: PathBuf,
    pub archive: PathBuf,
    /// 0: not known yet (the next file seen at the path is taken from its start).
    pub inode: u64,
    pub offset: u64,
}

/// What the core tells the follower.
#[derive(Debug)]
pub enum FollowCmd {
    Follow(FileSpec),
    /// Read what is left of a job's files, then stop following them.
    Unfollow {
        job_id: String,
    },
    /// A node became busy (poll its file quickly) or idle.
    Busy {
        job_id: String,
        node_id: u32,
    },
}

/// New records of one file: their events and where the file now stands.
#[derive(Debug, Clone, PartialEq)]
pub struct FileBatch {
    pub swarm_id: String,
    pub job_id: String,
    pub node_id: u32,
    pub inode: u64,
    pub offset: u64,
    pub events: Vec<Event>,
    /// The last batch of an unfollowed file: the core may forget its offset.
    pub finished: bool,
}

/// The follower's handle for the core.
#[derive(Clone)]
pub struct Follower {
    tx: Sender<FollowCmd>,
    /// Wakes a follower that waits on a mio poll (`None`: it waits on the channel itself).
    waker: Option<Arc<Waker>>,
}

impl Follower {
    /// A handle for a follower thread that waits on its channel (the remote follower).
    pub fn from_channel(tx: Sender<FollowCmd>) -> Follower {
        Follower { tx, waker: None }
    }

    /// Asks the follower without waiting: the follower itself may be waiting for the core
    /// (handing records over), so the core must never wait for it. A full queue gives the
    /// command back, for the core to send again later.
    pub fn try_send(&self, cmd: FollowCmd) -> Result<(), FollowCmd> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                if let Some(w) = &self.waker {
                    let _ = w.wake();
                }
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(c)) => Err(c),
            // The follower is gone (shutdown): nothing to follow any more.
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Ok(()),
        }
    }
}

struct Followed {
    spec: FileSpec,
    interval: Duration,
    next_poll: Instant,
    dirty: bool,
    /// Inside a line longer than the limit: skip to its end.
    skipping: bool,
    /// Its worker moved it to the archive and it was read to the end: nothing more comes.
    retired: bool,
    unfollowing: bool,
}

/// Settings of the follower.
pub struct FollowConfig {
    pub poll_busy: Duration,
    pub poll_idle_max: Duration,
    pub max_record_bytes: usize,
}

/// Starts the follower thread.
pub fn start(
    cfg: FollowConfig,
    core: Sender<CoreMsg>,
    stats: Arc<Stats>,
) -> std::io::Result<Follower> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(i) => {
            let fd = i.as_fd().as_raw_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), INOTIFY, Interest::READABLE)?;
            Some(i)
        }
        Err(e) => {
            log::warn!("router: no inotify ({e}); outboxes are polled only");
            None
        }
    };
    // Commands are few per swarm (follow, unfollow, busy hints); the core waits when full.
    let (tx, rx) = crossbeam_channel::bounded(4096);
    let mut f = FollowerThread {
        cfg,
        core,
        stats,
        poll,
        inotify,
        watches: HashMap::new(),
        dirs: HashMap::new(),
        files: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("clove-router-follow".into())
        .spawn(move || f.run(rx))?;
    Ok(Follower {
        tx,
        waker: Some(waker),
    })
}

struct FollowerThread {
    cfg: FollowConfig,
    core: Sender<CoreMsg>,
    stats: Arc<Stats>,
    poll: Poll,
    inotify: Option<Inotify>,
    /// Watched directories by watch descriptor, and the other way round.
    watches: HashMap<WatchDescriptor, PathBuf>,
    dirs: HashMap<PathBuf, WatchDescriptor>,
    /// Followed files by `(job, node)`.
    files: HashMap<(String, u32), Followed>,
}

impl FollowerThread {
    fn run(&mut self, rx: Receiver<FollowCmd>) {
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                log::error!("router follower: poll failed: {e}; polling on a timer");
                std::thread::sleep(self.cfg.poll_busy);
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.read_inotify();
            let batches = self.read_due();
            if !batches.is_empty() && self.core.send(CoreMsg::Records(batches)).is_err() {
                return;
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        self.files
            .values()
            .filter(|f| !f.retired)
            .map(|f| if f.dirty { now } else { f.next_poll })
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn command(&mut self, cmd: FollowCmd) {
        match cmd {
            FollowCmd::Follow(spec) => {
                if let Some(dir) = spec.outbox.parent() {
                    self.watch(dir);
                }
                let key = (spec.job_id.clone(), spec.node_id);
                self.files.insert(
                    key,
                    Followed {
                        spec,
                        interval: self.cfg.poll_busy,
                        next_poll: Instant::now(),
                        dirty: true,
                        skipping: false,
                        retired: false,
                        unfollowing: false,
                    },
                );
            }
            FollowCmd::Unfollow { job_id } => {
                for (_, f) in self.files.iter_mut().filter(|((j, _), _)| *j == job_id) {
                    f.unfollowing = true;
                    f.dirty = true;
                }
            }
            FollowCmd::Busy { job_id, node_id } => {
                if let Some(f) = self.files.get_mut(&(job_id, node_id)) {
                    f.interval = self.cfg.poll_busy;
                    f.next_poll = f.next_poll.min(Instant::now() + self.cfg.poll_busy);
                }
            }
        }
        self.stats
            .followed_files
            .store(self.files.len() as u64, Ordering::Relaxed);
    }

    fn watch(&mut self, dir: &Path) {
        let Some(ino) = &self.inotify else { return };
        if self.dirs.contains_key(dir) {
            return;
        }
        let flags = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE;
        match ino.add_watch(dir, flags) {
            Ok(wd) => {
                self.watches.insert(wd, dir.to_path_buf());
                self.dirs.insert(dir.to_path_buf(), wd);
            }
            // Polling still covers it.
            Err(e) => log::debug!("router: cannot watch {}: {e}", dir.display()),
        }
    }

    fn read_inotify(&mut self) {
        let Some(ino) = &self.inotify else { return };
        loop {
            let evs = match ino.read_events() {
                Ok(evs) if !evs.is_empty() => evs,
                _ => return,
            };
            for ev in evs {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // Events were lost: look at everything.
                    self.files.values_mut().for_each(|f| f.dirty = true);
                    continue;
                }
                let (Some(dir), Some(name)) = (self.watches.get(&ev.wd), ev.name) else {
                    continue;
                };
                let path = dir.join(name);
                for f in self.files.values_mut() {
                    if f.spec.outbox == path {
                        f.dirty = true;
                    }
                }
            }
        }
    }

    /// Reads every file that inotify flagged or whose poll is due.
    fn read_due(&mut self) -> Vec<FileBatch> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut finished = Vec::new();
        for (key, f) in self.files.iter_mut() {
            if f.retired && !f.unfollowing {
                continue;
            }
            if !f.dirty && f.next_poll > now {
                continue;
            }
            f.dirty = false;
            let batch = read_file(f, &self.cfg, &self.stats);
            let got = batch.as_ref().is_some_and(|b| !b.events.is_empty());
            // Adaptive polling: fast while data comes, doubling while it does not.
            f.interval = if got {
                self.cfg.poll_busy
            } else {
                (f.interval * 2).min(self.cfg.poll_idle_max)
            };
            f.next_poll = now + f.interval;
            let more = batch.as_ref().is_some_and(|b| b.events.len() >= 4096);
            if more {
                f.dirty = true;
            }
            let done = f.unfollowing && !more;
            match batch {
                Some(mut b) => {
                    b.finished = done;
                    out.push(b);
                }
                None if done => out.push(FileBatch {
                    swarm_id: f.spec.swarm_id.clone(),
                    job_id: f.spec.job_id.clone(),
                    node_id: f.spec.node_id,
                    inode: f.spec.inode,
                    offset: f.spec.offset,
                    events: Vec::new(),
                    finished: true,
                }),
                None => {}
            }
            if done {
                finished.push(key.clone());
            }
        }
        for k in finished {
            self.files.remove(&k);
        }
        self.stats
            .followed_files
            .store(self.files.len() as u64, Ordering::Relaxed);
        out
    }
}

/// Reads what is new in one file; `None` when nothing changed.
fn read_file(f: &mut Followed, cfg: &FollowConfig, stats: &Stats) -> Option<FileBatch> {
    let (file, from_archive) = match std::fs::File::open(&f.spec.outbox) {
        Ok(file) => (file, false),
        Err(_) => match std::fs::File::open(&f.spec.archive) {
            // The worker moved its outbox away at exit: the same file (same inode) is read to
            // its end there.
            Ok(file)
                if f.spec.inode != 0 && file.metadata().is_ok_and(|m| m.ino() == f.spec.inode) =>
            {
                (file, true)
            }
            _ => return None,
        },
    };
    let meta = file.metadata().ok()?;
    let before = (f.spec.inode, f.spec.offset);
    if f.spec.inode != meta.ino() {
        if f.spec.inode != 0 {
            log::warn!(
                "router: {} is a new file (inode {} -> {}); reading it from the start",
                f.spec.outbox.display(),
                f.spec.inode,
                meta.ino()
            );
        }
        f.spec.inode = meta.ino();
        f.spec.offset = 0;
        f.skipping = false;
    } else if meta.len() < f.spec.offset {
        log::warn!(
            "router: {} shrank below offset {} (to {} bytes); reading it from the start",
            f.spec.outbox.display(),
            f.spec.offset,
            meta.len()
        );
        stats.records_malformed.fetch_add(1, Ordering::Relaxed);
        f.spec.offset = 0;
        f.skipping = false;
    }
    let mut events = Vec::new();
    if f.skipping {
        match skip_line(&file, f.spec.offset, meta.len()) {
            Some(after) => {
                f.spec.offset = after;
                f.skipping = false;
            }
            None => f.spec.offset = meta.len(),
        }
    }
    if !f.skipping {
        read_records(&file, f, cfg, stats, &mut events);
    }
    if from_archive && f.spec.offset >= meta.len() {
        f.retired = true;
    }
    if events.is_empty() && (f.spec.inode, f.spec.offset) == before {
        return None;
    }
    Some(FileBatch {
        swarm_id: f.spec.swarm_id.clone(),
        job_id: f.spec.job_id.clone(),
        node_id: f.spec.node_id,
        inode: f.spec.inode,
        offset: f.spec.offset,
        events,
        finished: false,
    })
}

fn read_records(
    file: &std::fs::File,
    f: &mut Followed,
    cfg: &FollowConfig,
    stats: &Stats,
    events: &mut Vec<Event>,
) {
    let (lines, after) = match mailbox::read_lines(file, f.spec.offset, cfg.max_record_bytes) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("router: cannot read {}: {e}", f.spec.outbox.display());
            return;
        }
    };
    let origin = Origin {
        swarm_id: &f.spec.swarm_id,
        job_id: &f.spec.job_id,
        node_id: f.spec.node_id,
    };
    for line in lines {
        let Ok(line) = line else {
            stats.records_malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match translate(&line, &origin) {
            Translated::Events(evs) => {
                stats.records_forwarded.fetch_add(1, Ordering::Relaxed);
                events.extend(evs);
            }
            Translated::Skip => {}
            Translated::Dropped(Drop::Malformed) => {
                stats.records_malformed.fetch_add(1, Ordering::Relaxed);
            }
            Translated::Dropped(Drop::Unknown) => {
                stats.records_unknown.fetch_add(1, Ordering::Relaxed);
            }
            Translated::Dropped(Drop::ForeignJob) => {
                stats.records_foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if after == f.spec.offset && after < file.metadata().map(|m| m.len()).unwrap_or(0) {
        // No newline within the limit: a record too long to take. Skip to its end.
        if let Ok(m) = file.metadata()
            && m.len() - after > cfg.max_record_bytes as u64
        {
            log::warn!(
                "router: a record in {} is longer than router.max_record_bytes; skipped",
                f.spec.outbox.display()
            );
            stats.records_malformed.fetch_add(1, Ordering::Relaxed);
            f.skipping = true;
            match skip_line(file, after, m.len()) {
                Some(next) => {
                    f.spec.offset = next;
                    f.skipping = false;
                    f.dirty = true;
                }
                None => f.spec.offset = m.len(),
            }
            return;
        }
    }
    f.spec.offset = after;
}

/// The offset just after the next `\n` at or after `from`, if one has been written yet.
fn skip_line(file: &std::fs::File, from: u64, len: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = from;
    while pos < len {
        let n = file.read_at(&mut buf, pos).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Some(pos + i as u64 + 1);
        }
        pos += n as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn followed(dir: &Path) -> Followed {
        Followed {
            spec: FileSpec {
                swarm_id: "s".into(),
                job_id: "j".into(),
                node_id: 0,
                outbox: dir.join("outbox/j_00.jsonl"),
                archive: dir.join("archive/j_00.jsonl"),
                inode: 0,
                offset: 0,
            },
            interval: Duration::from_millis(10),
            next_poll: Instant::now(),
            dirty: true,
            skipping: false,
            retired: false,
            unfollowing: false,
        }
    }

    const CFG: FollowConfig = FollowConfig {
        poll_busy: Duration::from_millis(10),
        poll_idle_max: Duration::from_millis(100),
        max_record_bytes: 256,
    };

    fn append(p: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn reads_complete_records_once_and_follows_into_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("outbox")).unwrap();
        std::fs::create_dir_all(dir.path().join("archive")).unwrap();
        let mut f = followed(dir.path());
        let stats = Stats::default();
        assert!(read_file(&mut f, &CFG, &stats).is_none(), "no file yet");
        let out = f.spec.outbox.clone();
        append(
            &out,
            "{\"type\":\"worker_event\",\"event\":\"assistant\",\"payload\":{\"content\":\"a\"}}\n{\"type\":\"wor",
        );
        let b = read_file(&mut f, &CFG, &stats).unwrap();
        assert_eq!(b.events.len(), 1);
        assert!(
            read_file(&mut f, &CFG, &stats).is_none(),
            "the partial line waits"
        );
        append(&out, "ker_error\",\"error\":\"x\"}\nnot json\n");
        let b = read_file(&mut f, &CFG, &stats).unwrap();
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].name, "agent_error");
        assert_eq!(stats.records_malformed.load(Ordering::Relaxed), 1);
        append(&out, "{\"type\":\"complete\"}\n");
        std::fs::rename(&out, &f.spec.archive).unwrap();
        let b = read_file(&mut f, &CFG, &stats).unwrap();
        assert_eq!(b.events[0].name, "worker_complete");
        assert!(f.retired);
    }

    #[test]
    fn overlong_records_are_skipped_and_truncation_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("outbox")).unwrap();
        let mut f = followed(dir.path());
        let stats = Stats::default();
        let out = f.spec.outbox.clone();
        append(&out, &"x".repeat(300));
        assert!(read_file(&mut f, &CFG, &stats).is_some());
        assert!(f.skipping);
        append(
            &out,
            &format!("{}\n{{\"type\":\"start\"}}\n", "y".repeat(300)),
        );
        let mut names = Vec::new();
        for _ in 0..3 {
            if let Some(b) = read_file(&mut f, &CFG, &stats) {
                names.extend(b.events.into_iter().map(|e| e.name));
            }
        }
        assert_eq!(names, ["worker_start"]);
        std::fs::write(&out, "{\"type\":\"start\"}\n").unwrap();
        let b = read_file(&mut f, &CFG, &stats).unwrap();
        assert_eq!(
            b.events.len(),
            1,
            "a truncated file is read again from its start"
        );
    }
}
