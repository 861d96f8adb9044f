//! The command runner: one thread that owns every running EXEC command once it has started,
//! reads its output, enforces its timeout and reaps it.
//!
//! A worker checks an EXEC request and starts the command, then hands it here and is free
//! again: a command that runs for an hour holds no worker, so long commands cannot starve
//! READ, WRITE or METRICS of other clients. The thread waits in one `mio::Poll` on every
//! command's stdout and stderr pipes and on a pidfd per command (readable when it exits), so
//! it sleeps until something happens or the nearest deadline; it never polls on a timer.
//!
//! How many commands may run is bounded twice: `exec.max_running` in all and
//! `exec.max_running_per_caller` for one caller. [`CommandRunner::admit`] refuses beyond
//! either with a clear error; an admitted command holds a [`Ticket`] until it has finished.
//!
//! Only pids it was handed are reaped here (`waitpid` on that pid), never `waitpid(-1)`:
//! the supervisor thread reaps the agents.

use super::config::ExecConfig;
use crate::kernel::{CallerId, Kernel};
use crate::process::{has_exited, kill_group, pidfd_open};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ChildStdout};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long to keep reading output after the shell exits, for its background children.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);
/// Without a pidfd (kernels before 5.3) an exit is noticed by checking this often.
const NO_PIDFD_CHECK: Duration = Duration::from_millis(20);
const WAKER: Token = Token(0);

/// Called once with the result, on the runner thread.
pub type Done = Box<dyn FnOnce(&Kernel, Finished) + Send>;

/// A started command handed to the runner.
pub struct Launch {
    pub child: Child,
    pub timeout: Duration,
    /// Output kept per stream; the rest is read and discarded.
    pub max_output: usize,
    pub ticket: Ticket,
    pub done: Done,
}

/// What a finished command produced.
#[derive(Debug, Default)]
pub struct Finished {
    /// The shell's pid, which is also its process group.
    pub pid: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code, or `-signal` when killed by a signal; `None` if it never exited normally.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration: Duration,
    /// Set when the runner could not see the command through.
    pub error: Option<String>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_caller: HashMap<CallerId, usize>,
}

/// One admitted command; gives its place back when dropped.
pub struct Ticket {
    counts: Arc<Mutex<Counts>>,
    caller: CallerId,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                c.per_caller.remove(&self.caller);
            }
        }
    }
}

/// The handle to the runner thread.
pub struct CommandRunner {
    tx: Sender<Launch>,
    waker: Arc<Waker>,
    counts: Arc<Mutex<Counts>>,
    max_running: usize,
    max_per_caller: usize,
}

impl CommandRunner {
    /// Starts the runner thread. It holds only a weak reference to the kernel.
    pub fn start(kernel: &Arc<Kernel>, cfg: &ExecConfig) -> std::io::Result<CommandRunner> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // Every admitted command fits: admission is bounded by the same number.
        let (tx, rx) = bounded(cfg.max_running);
        let k = Arc::downgrade(kernel);
        std::thread::Builder::new()
            .name("clove-exec".into())
            .spawn(move || Runner::new(poll, rx, k).run())?;
        Ok(CommandRunner {
            tx,
            waker,
            counts: Arc::default(),
            max_running: cfg.max_running,
            max_per_caller: cfg.max_running_per_caller,
        })
    }

    /// Takes a place for one more command of `caller`, or says which limit is reached.
    pub fn admit(&self, caller: CallerId) -> Result<Ticket, String> {
        let mut c = self.counts.lock();
        let mine = c.per_caller.get(&caller).copied().unwrap_or(0);
        if mine >= self.max_per_caller {
            return Err(format!(
                "too many commands running: this caller has {mine}, at most {} \
                 (exec.max_running_per_caller); wait for one to finish",
                self.max_per_caller
            ));
        }
        if c.total >= self.max_running {
            return Err(format!(
                "too many commands running: {} in all, at most {} (exec.max_running); \
                 try again when one has finished",
                c.total, self.max_running
            ));
        }
        c.total += 1;
        *c.per_caller.entry(caller).or_insert(0) += 1;
        Ok(Ticket {
            counts: self.counts.clone(),
            caller,
        })
    }

    /// Commands running now.
    pub fn running(&self) -> usize {
        self.counts.lock().total
    }

    /// Hands a started command to the runner thread. If that thread is gone (the daemon is
    /// stopping), the command is killed and reported as such.
    pub fn run(&self, k: &Kernel, launch: Launch) {
        match self.tx.try_send(launch) {
            Ok(()) => {
                let _ = self.waker.wake();
            }
            Err(TrySendError::Full(mut l) | TrySendError::Disconnected(mut l)) => {
                let pid = l.child.id() as i32;
                kill_group(pid);
                // Unregistered before it is reaped (see Runner::finish).
                k.exec_finished(pid);
                let _ = l.child.wait();
                (l.done)(
                    k,
                    Finished {
                        pid,
                        error: Some("the daemon is stopping; the command was killed".into()),
                        ..Finished::default()
                    },
                );
            }
        }
    }
}

impl Drop for CommandRunner {
    fn drop(&mut self) {
        // The thread notices the closed channel once woken, finishes what runs, and ends.
        let _ = self.waker.wake();
    }
}

/// The standard output or error pipe of a command.
enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

impl Pipe {
    fn raw(&self) -> i32 {
        match self {
            Pipe::Out(p) => p.as_raw_fd(),
            Pipe::Err(p) => p.as_raw_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Pipe::Out(p) => p.read(buf),
            Pipe::Err(p) => p.read(buf),
        }
    }
}

/// A command the runner is watching.
struct Running {
    child: Child,
    pid: i32,
    pipes: [Option<Pipe>; 2],
    pidfd: Option<OwnedFd>,
    bufs: [Vec<u8>; 2],
    max_output: usize,
    truncated: bool,
    started: Instant,
    deadline: Instant,
    exited_at: Option<Instant>,
    timed_out: bool,
    ticket: Ticket,
    done: Done,
}

impl Running {
    /// When this command next needs attention without an event.
    fn next_deadline(&self) -> Instant {
        let mut at = if self.timed_out {
            // Killed: only its exit is awaited.
            Instant::now() + Duration::from_secs(3600)
        } else {
            self.deadline
        };
        if let Some(t) = self.exited_at {
            at = at.min(t + DRAIN_AFTER_EXIT);
        }
        if self.pidfd.is_none() && self.exited_at.is_none() {
            at = at.min(Instant::now() + NO_PIDFD_CHECK);
        }
        at
    }
}

struct Runner {
    poll: Poll,
    rx: Receiver<Launch>,
    kernel: Weak<Kernel>,
    slots: Vec<Option<Running>>,
    free: Vec<usize>,
    chunk: Vec<u8>,
}

/// Tokens: 0 is the waker; slot `s` uses `1 + 3s` (stdout), `2 + 3s` (stderr), `3 + 3s` (pidfd).
fn token(slot: usize, which: usize) -> Token {
    Token(1 + slot * 3 + which)
}

impl Runner {
    fn new(poll: Poll, rx: Receiver<Launch>, kernel: Weak<Kernel>) -> Runner {
        Runner {
            poll,
            rx,
            kernel,
            slots: Vec::new(),
            free: Vec::new(),
            chunk: vec![0; 64 * 1024],
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut open = true;
        loop {
            let timeout = self
                .slots
                .iter()
                .flatten()
                .map(Running::next_deadline)
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                log::error!("command runner: poll failed: {e}; killing its commands");
                self.abandon(&format!("the command runner failed: {e}"));
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let t = ev.token().0 - 1;
                let (slot, which) = (t / 3, t % 3);
                if which == 2 {
                    if let Some(Some(r)) = self.slots.get_mut(slot) {
                        r.exited_at.get_or_insert_with(Instant::now);
                    }
                } else {
                    self.read(slot, which);
                }
            }
            self.sweep();
            loop {
                match self.rx.try_recv() {
                    Ok(launch) => self.add(launch),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !open && self.slots.iter().all(Option::is_none) {
                return;
            }
        }
    }

    fn add(&mut self, launch: Launch) {
        let Launch {
            mut child,
            timeout,
            max_output,
            ticket,
            done,
        } = launch;
        let pid = child.id() as i32;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let pipes = [
            child.stdout.take().map(Pipe::Out),
            child.stderr.take().map(Pipe::Err),
        ];
        let reg = self.poll.registry();
        for (i, p) in pipes.iter().enumerate() {
            if let Some(p) = p {
                let fd = p.raw();
                if let Err(e) = set_nonblocking(fd).and_then(|()| {
                    reg.register(&mut SourceFd(&fd), token(slot, i), Interest::READABLE)
                }) {
                    log::warn!("command runner: cannot watch output of pid {pid}: {e}");
                }
            }
        }
        let pidfd = pidfd_open(pid);
        if let Some(fd) = &pidfd {
            let raw = fd.as_raw_fd();
            if let Err(e) = reg.register(&mut SourceFd(&raw), token(slot, 2), Interest::READABLE) {
                log::warn!("command runner: cannot watch pid {pid}: {e}");
            }
        }
        let now = Instant::now();
        self.slots[slot] = Some(Running {
            child,
            pid,
            pipes,
            pidfd,
            bufs: [Vec::new(), Vec::new()],
            max_output,
            truncated: false,
            started: now,
            deadline: now + timeout,
            exited_at: None,
            timed_out: false,
            ticket,
            done,
        });
        // Output or an exit that came before registration needs no read here: epoll reports
        // readiness that already exists when a descriptor is added.
    }

    /// Reads one pipe until it would block; output beyond the cap is discarded.
    fn read(&mut self, slot: usize, which: usize) {
        let Some(Some(r)) = self.slots.get_mut(slot) else {
            return;
        };
        loop {
            let Some(pipe) = r.pipes[which].as_mut() else {
                return;
            };
            match pipe.read(&mut self.chunk) {
                Ok(0) => {
                    let fd = pipe.raw();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    r.pipes[which] = None;
                    return;
                }
                Ok(n) => {
                    let buf = &mut r.bufs[which];
                    let room = r.max_output.saturating_sub(buf.len());
                    if n > room {
                        r.truncated = true;
                    }
                    buf.extend_from_slice(&self.chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    let fd = pipe.raw();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    r.pipes[which] = None;
                    return;
                }
            }
        }
    }

    /// Kills commands past their deadline and finishes those that are done.
    fn sweep(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let Some(r) = self.slots[slot].as_mut() else {
                continue;
            };
            // Left unreaped (see finish): only its exit is noticed here.
            if r.exited_at.is_none() && r.pidfd.is_none() && has_exited(r.pid) {
                r.exited_at = Some(now);
            }
            if !r.timed_out && r.exited_at.is_none() && now >= r.deadline {
                kill_group(r.pid);
                r.timed_out = true;
            }
            let finished = match r.exited_at {
                Some(t) => {
                    r.timed_out
                        || r.pipes.iter().all(Option::is_none)
                        || now >= t + DRAIN_AFTER_EXIT
                }
                None => false,
            };
            if finished && let Some(r) = self.slots[slot].take() {
                self.free.push(slot);
                self.finish(r, None);
            }
        }
    }

    /// Stops watching a command, reaps it and delivers its result.
    fn finish(&mut self, mut r: Running, error: Option<String>) {
        let reg = self.poll.registry();
        for p in r.pipes.iter().flatten() {
            let fd = p.raw();
            let _ = reg.deregister(&mut SourceFd(&fd));
        }
        if let Some(fd) = &r.pidfd {
            let raw = fd.as_raw_fd();
            let _ = reg.deregister(&mut SourceFd(&raw));
        }
        // The command's first process leads its session, and the kernel attributes the
        // session's processes by that pid: unregister it while the process is still ours
        // (a zombie at worst), so that its pid cannot be reused under the registration.
        if let Some(k) = self.kernel.upgrade() {
            k.exec_finished(r.pid);
        }
        // The shell has exited (its pidfd said so), so this wait does not block; when we got
        // here for another reason the group was killed first.
        let status = match r.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                kill_group(r.pid);
                r.child.wait().ok()
            }
        };
        let finished = Finished {
            pid: r.pid,
            stdout: std::mem::take(&mut r.bufs[0]),
            stderr: std::mem::take(&mut r.bufs[1]),
            exit_code: status.and_then(|s| s.code().or_else(|| s.signal().map(|s| -s))),
            signal: status.and_then(|s| s.signal()),
            truncated: r.truncated,
            timed_out: r.timed_out,
            duration: r.started.elapsed(),
            error,
        };
        // The command's place (its ticket) is given back before the reply goes out: a caller
        // at its limit may send its next EXEC as soon as it has read this reply.
        let Running { done, ticket, .. } = r;
        drop(ticket);
        match self.kernel.upgrade() {
            Some(k) => done(&k, finished),
            None => log::debug!("command {} finished after the daemon stopped", finished.pid),
        }
    }

    /// Kills and reports every command (the runner cannot go on).
    fn abandon(&mut self, why: &str) {
        for slot in 0..self.slots.len() {
            if let Some(r) = self.slots[slot].take() {
                kill_group(r.pid);
                self.finish(r, Some(why.to_string()));
            }
        }
    }
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
