//! The relay's I/O thread (`clove-relay-io`): everything the relay does with the disk besides
//! the store (file contents written, read and removed, the credentials key rotated), so the
//! reactor thread never waits for a disk. Jobs come over a bounded queue; a full queue is a
//! refusal the client sees ("try again"), never a wait on the reactor.

use super::Relay;
use super::files::{Download, Upload};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::path::PathBuf;
use std::sync::Arc;

/// Jobs waiting for the I/O thread at most.
pub const QUEUE: usize = 64;

/// One piece of work for the I/O thread.
pub enum Job {
    /// Decode and write an upload, then record it.
    Write(Box<Upload>),
    /// Read a file and answer the download.
    Read(Box<Download>),
    /// Remove a deleted file's content.
    Remove(PathBuf),
    /// `clove relay rotate-key`; the reply goes to the callback.
    Rotate(super::admin::Done),
    /// Finish the queued jobs, then exit.
    Stop,
}

/// The relay's way to its I/O thread.
#[derive(Clone)]
pub struct IoQueue {
    tx: Sender<Job>,
}

impl IoQueue {
    pub fn new() -> (IoQueue, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        (IoQueue { tx }, rx)
    }

    /// Queues a job without waiting; gives it back when the queue is full or closed.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }

    /// Queues `Stop`, waiting for room (at shutdown, off the reactor).
    pub fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
    }
}

/// Starts the I/O thread.
pub fn start(relay: Arc<Relay>, rx: Receiver<Job>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("clove-relay-io".into())
        .spawn(move || run(&relay, &rx))
}

fn run(relay: &Arc<Relay>, rx: &Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Write(up) => relay.write_upload(*up),
            Job::Read(d) => relay.read_download(*d),
            Job::Remove(path) => {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    log::warn!("relay: cannot remove {}: {e}", path.display());
                }
            }
            Job::Rotate(done) => done(relay.rotate_key()),
            Job::Stop => return,
        }
    }
}
