//! The worker pool: a fixed set of threads fed over one bounded channel.
//!
//! Jobs are closures that own everything they need (work leaves the reactor by value). The
//! reactor submits with [`WorkerPool::try_submit`], which never blocks: a full queue hands the
//! job back so the reactor can stop reading from that connection until capacity returns. A job
//! that panics is caught and logged; the thread survives, and the job's responder (dropped
//! during unwinding) still sends the client an error reply.

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// A unit of blocking work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of worker threads.
pub struct WorkerPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    busy: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Starts `workers` threads sharing a queue of `queue` jobs.
    pub fn start(workers: usize, queue: usize) -> std::io::Result<WorkerPool> {
        let (tx, rx) = bounded::<Job>(queue);
        let busy = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx: Receiver<Job> = rx.clone();
            let busy = busy.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("clove-worker-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            busy.fetch_add(1, Ordering::Relaxed);
                            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                                log::error!("worker {i}: a job panicked; the thread carries on");
                            }
                            busy.fetch_sub(1, Ordering::Relaxed);
                        }
                    })?,
            );
        }
        Ok(WorkerPool {
            tx: Some(tx),
            threads,
            busy,
        })
    }

    /// Queues a job without blocking; gives it back when the queue is full.
    pub fn try_submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
            }),
            None => Err(job),
        }
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.len())
    }

    /// Workers running a job right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.threads.len()
    }

    /// Closes the queue. Threads finish their current job and exit; they are not joined,
    /// because a job may be waiting on a child process that shutdown is about to kill.
    pub fn close(&mut self) {
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn full_queue_hands_the_job_back() {
        let pool = WorkerPool::start(1, 1).unwrap();
        let (block_tx, block_rx) = bounded::<()>(0);
        let (started_tx, started_rx) = bounded::<()>(1);
        pool.try_submit(Box::new(move || {
            started_tx.send(()).unwrap();
            let _ = block_rx.recv();
        }))
        .ok()
        .unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(pool.try_submit(Box::new(|| {})).is_ok());
        assert!(pool.try_submit(Box::new(|| {})).is_err());
        block_tx.send(()).unwrap();
    }

    #[test]
    fn panicking_job_does_not_kill_the_worker() {
        let pool = WorkerPool::start(1, 4).unwrap();
        pool.try_submit(Box::new(|| panic!("boom"))).ok().unwrap();
        let (tx, rx) = bounded(1);
        pool.try_submit(Box::new(move || tx.send(42).unwrap()))
            .ok()
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 42);
    }
}
