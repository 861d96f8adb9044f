//! Runs one command (a Slurm client, or ssh) as a child of the calling thread, with its input
//! on stdin, its output captured (bounded) and a deadline, and reaps exactly that child.
//!
//! The end of the command is its exit, not the end of its output: an ssh client that starts a
//! persisting ControlMaster leaves that background master holding the pipes it inherited, so
//! waiting for EOF could wait for the master's whole life. The exit is noticed through a
//! pidfd (polled with the pipes), and what the pipes hold then is taken without waiting.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most bytes of stdout and of stderr kept (more is read and dropped).
const MAX_OUTPUT: usize = 4 << 20;

/// What a finished command left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr, trimmed, for messages (or the exit status when it said nothing).
    pub fn error_text(&self) -> String {
        let e = self.stderr.trim();
        if !e.is_empty() {
            return e.to_string();
        }
        match self.code {
            Some(c) => format!("exited with code {c}"),
            None => "killed by a signal".into(),
        }
    }
}

/// Runs `argv` with `stdin` as its input; kills it (and fails) past `timeout`.
pub fn run(argv: &[String], stdin: &[u8], timeout: Duration) -> Result<Output, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let result = collect(&mut child, stdin, Instant::now() + timeout);
    if result.is_err() {
        let _ = child.kill();
    }
    // Our own child only (never waitpid(-1)); after a kill this returns at once.
    let status = child.wait().map_err(|e| format!("{prog}: {e}"))?;
    let (stdout, stderr) = result.map_err(|e| format!("{prog}: {e}"))?;
    Ok(Output {
        code: status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a pipe end this process owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; a valid result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Feeds stdin and reads stdout/stderr until the child exits or the deadline passes.
fn collect(
    child: &mut Child,
    input: &[u8],
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut sin = child.stdin.take();
    let mut sout = child.stdout.take();
    let mut serr = child.stderr.take();
    for fd in [
        sin.as_ref().map(|s| s.as_raw_fd()),
        sout.as_ref().map(|s| s.as_raw_fd()),
        serr.as_ref().map(|s| s.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd);
    }
    let exit_fd = pidfd(child.id());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut written = 0;
    if input.is_empty() {
        sin = None; // EOF at once
    }
    loop {
        if let Some(s) = sin.as_mut() {
            match s.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The command does not read its input (or is gone): nothing more to give.
                Err(_) => written = input.len(),
            }
            if written >= input.len() {
                sin = None;
            }
        }
        drain(&mut sout, &mut out);
        drain(&mut serr, &mut err);
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            drain(&mut sout, &mut out);
            drain(&mut serr, &mut err);
            return Ok((out, err));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "timed out (router.slurm_command_timeout_secs); its output so far: {}",
                String::from_utf8_lossy(&err).trim()
            ));
        }
        wait_ready(&sin, &sout, &serr, exit_fd.as_ref(), left);
    }
}

/// Reads what a non-blocking pipe holds now; drops the pipe at EOF.
fn drain<R: Read + AsRawFd>(pipe: &mut Option<R>, into: &mut Vec<u8>) {
    let Some(p) = pipe.as_mut() else { return };
    let mut buf = [0u8; 16 * 1024];
    loop {
        match p.read(&mut buf) {
            Ok(0) => {
                *pipe = None;
                return;
            }
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(into.len());
                into.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits until a pipe is ready, the child exits, or `left` passes. Without a pidfd (an old
/// kernel) the wait is cut to 20 ms so the exit is still noticed soon.
fn wait_ready(
    sin: &Option<std::process::ChildStdin>,
    sout: &Option<std::process::ChildStdout>,
    serr: &Option<std::process::ChildStderr>,
    exit_fd: Option<&OwnedFd>,
    left: Duration,
) {
    let mut fds = Vec::with_capacity(4);
    let mut add = |fd: Option<RawFd>, events: libc::c_short| {
        if let Some(fd) = fd {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    };
    add(sin.as_ref().map(|s| s.as_raw_fd()), libc::POLLOUT);
    add(sout.as_ref().map(|s| s.as_raw_fd()), libc::POLLIN);
    add(serr.as_ref().map(|s| s.as_raw_fd()), libc::POLLIN);
    add(exit_fd.map(|f| f.as_raw_fd()), libc::POLLIN);
    let mut ms = left.as_millis().min(60_000) as i32;
    if exit_fd.is_none() {
        ms = ms.min(20);
    }
    // SAFETY: fds is a valid array of pollfd for its length.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn input_output_and_exit_code() {
        let o = run(
            &sh("cat; echo oops >&2; exit 3"),
            b"hello",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.stdout, b"hello");
        assert_eq!(o.code, Some(3));
        assert_eq!(o.error_text(), "oops");
        let big = vec![b'x'; 1 << 20];
        let o = run(&sh("cat"), &big, Duration::from_secs(10)).unwrap();
        assert_eq!(
            o.stdout.len(),
            big.len(),
            "input and output larger than a pipe"
        );
    }

    #[test]
    fn a_background_holder_of_the_pipes_does_not_hold_the_caller() {
        let t = Instant::now();
        let o = run(&sh("sleep 5 & echo done"), b"", Duration::from_secs(10)).unwrap();
        assert!(o.ok());
        assert_eq!(o.stdout_text().trim(), "done");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn past_the_deadline_the_command_is_killed() {
        let t = Instant::now();
        let e = run(
            &sh("echo started >&2; sleep 30"),
            b"",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(e.contains("timed out") && e.contains("started"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(run(&["/nonexistent/x".into()], b"", Duration::from_secs(1)).is_err());
    }
}
