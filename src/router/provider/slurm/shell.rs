//! Where a Slurm provider's commands run: on this host, or on the login host through one
//! multiplexed ssh connection.
//!
//! Over ssh every command goes through a ControlMaster (control socket in a 0700 directory
//! under the state dir; `ControlPersist` keeps it between calls), with `BatchMode=yes` (a
//! password prompt would hang the router), `ConnectTimeout` and `ServerAliveInterval`, and the
//! user's `ssh_options` after them. The remote command line is built from an argv by quoting
//! every word for the remote shell; payloads (inbox lines, files) go on stdin, never on it.
//! Transient failures (refused, reset, timeouts, key exchange) are retried with capped
//! backoff; the last error is ssh's own message.

use super::exec::{self, Output};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Attempts per command when ssh fails transiently.
const ATTEMPTS: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest unix socket path (sun_path is 108 bytes; ssh appends a random suffix while it
/// creates the socket).
const MAX_CONTROL_PATH: usize = 100 - 20;

/// How to reach the login host.
#[derive(Debug, Clone)]
pub struct Ssh {
    pub host: String,
    pub command: Vec<String>,
    pub options: Vec<String>,
    /// The 0700 directory holding the control socket.
    pub control_dir: PathBuf,
    /// Multiplex (the default); off only to measure what one connection per call costs.
    pub multiplex: bool,
}

/// Runs commands here or on the login host.
#[derive(Debug, Clone)]
pub struct Shell {
    pub ssh: Option<Ssh>,
    pub timeout: Duration,
}

impl Shell {
    /// Runs `argv` once (no retry); over ssh, its words are quoted for the remote shell.
    pub fn run_once(&self, argv: &[String], stdin: &[u8]) -> Result<Output, String> {
        match &self.ssh {
            None => exec::run(argv, stdin, self.timeout),
            Some(s) => exec::run(&s.argv(argv), stdin, self.timeout),
        }
    }

    /// Runs `argv`, retrying when ssh itself failed transiently (never when the command ran
    /// and failed: its answer stands). `Err` is ssh's (or the runner's) message.
    pub fn run(&self, argv: &[String], stdin: &[u8]) -> Result<Output, String> {
        let mut delay = BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            let r = self.run_once(argv, stdin);
            let transient = match &r {
                Ok(o) if self.ssh.is_some() && o.code == Some(255) => transient(&o.stderr),
                Ok(_) => return r,
                Err(e) => e.contains("timed out"),
            };
            if !transient || attempt >= ATTEMPTS {
                return match r {
                    Ok(o) if self.ssh.is_some() && o.code == Some(255) => {
                        Err(format!("ssh: {}", o.error_text()))
                    }
                    r => r,
                };
            }
            log::debug!("router: ssh attempt {attempt} failed transiently; retrying");
            // A bounded pause on the provider's own thread (never the reactor or the core).
            std::thread::sleep(delay);
            delay = (delay * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// Like [`Shell::run`], and a non-zero exit is an error carrying the command's stderr.
    pub fn run_ok(&self, argv: &[String], stdin: &[u8]) -> Result<Output, String> {
        let o = self.run(argv, stdin)?;
        if o.ok() { Ok(o) } else { Err(o.error_text()) }
    }

    /// Ends the ssh master, if any (at shutdown, or before measuring without it).
    pub fn close(&self) {
        if let Some(s) = &self.ssh {
            let mut a = s.base();
            a.extend(["-O".into(), "exit".into(), s.host.clone()]);
            let _ = exec::run(&a, b"", Duration::from_secs(5));
        }
    }
}

impl Ssh {
    /// ssh and its options, without destination or command.
    fn base(&self) -> Vec<String> {
        let mut a = self.command.clone();
        let o = |a: &mut Vec<String>, v: String| {
            a.push("-o".into());
            a.push(v);
        };
        o(&mut a, "BatchMode=yes".into());
        o(&mut a, "ConnectTimeout=10".into());
        o(&mut a, "ServerAliveInterval=15".into());
        o(&mut a, "ServerAliveCountMax=3".into());
        if self.multiplex {
            o(&mut a, "ControlMaster=auto".into());
            o(
                &mut a,
                format!("ControlPath={}", self.control_dir.join("%C").display()),
            );
            o(&mut a, "ControlPersist=600".into());
        } else {
            o(&mut a, "ControlMaster=no".into());
            o(&mut a, "ControlPath=none".into());
        }
        a.extend(self.options.iter().cloned());
        a
    }

    /// The full ssh argv running `argv` on the login host.
    pub fn argv(&self, argv: &[String]) -> Vec<String> {
        let mut a = self.base();
        a.push(self.host.clone());
        a.push(remote_command(argv));
        a
    }
}

/// A word for a POSIX shell: as is when it is plainly safe, else in single quotes.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The remote command line for an argv (ssh hands it to the remote user's shell).
pub fn remote_command(argv: &[String]) -> String {
    argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// Whether ssh's message is about the connection (worth another try) rather than the
/// command or the credentials.
pub fn transient(stderr: &str) -> bool {
    let e = stderr.to_ascii_lowercase();
    if e.contains("permission denied") || e.contains("host key verification failed") {
        return false;
    }
    [
        "connection refused",
        "connection reset",
        "connection timed out",
        "timed out",
        "kex_exchange_identification",
        "ssh_exchange_identification",
        "connection closed",
        "broken pipe",
        "no route to host",
        "network is unreachable",
        "mux_client",
        "control socket",
    ]
    .iter()
    .any(|m| e.contains(m))
}

/// The directory for the control socket: `preferred` when its socket paths fit, else one
/// under /tmp named after the uid. Created 0700; an existing one must be ours and private.
pub fn control_dir(preferred: &Path) -> Result<PathBuf, String> {
    let uid = nix::unistd::getuid().as_raw();
    // %C expands to 40 hex digits.
    let dir = if preferred.as_os_str().len() + 41 <= MAX_CONTROL_PATH {
        preferred.to_path_buf()
    } else {
        PathBuf::from(format!("/tmp/clove-ssh-{uid}"))
    };
    crate::router::mailbox::create_private_dir(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} must be a directory of uid {uid} with mode 0700 (it holds the ssh control socket)",
            dir.display()
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("/a/b_c.jsonl"), "/a/b_c.jsonl");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(quote(""), "''");
        let argv: Vec<String> = ["squeue", "-o", "%i|%T"].map(String::from).to_vec();
        assert_eq!(remote_command(&argv), "squeue -o '%i|%T'");
    }

    #[test]
    fn quoted_words_reach_the_command_unchanged() {
        let words: Vec<String> = [
            "printf", "%s\\n", "a b", "it's", "$HOME", "`x`", "*", "\"q\"",
        ]
        .map(String::from)
        .to_vec();
        let o = exec::run(
            &["sh".into(), "-c".into(), remote_command(&words)],
            b"",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(o.stdout_text(), "a b\nit's\n$HOME\n`x`\n*\n\"q\"\n");
    }

    #[test]
    fn ssh_argv_has_batch_mode_and_the_control_path() {
        let s = Ssh {
            host: "me@login".into(),
            command: vec!["ssh".into()],
            options: vec!["-p".into(), "2222".into()],
            control_dir: "/state/ssh".into(),
            multiplex: true,
        };
        let a = s.argv(&["sbatch".into(), "--parsable".into(), "/w/job.sh".into()]);
        assert!(a.contains(&"BatchMode=yes".to_string()));
        assert!(a.contains(&"ControlPath=/state/ssh/%C".to_string()));
        assert_eq!(a[a.len() - 2], "me@login");
        assert_eq!(a[a.len() - 1], "sbatch --parsable /w/job.sh");
        assert!(transient(
            "ssh: connect to host x port 22: Connection refused"
        ));
        assert!(!transient("Permission denied (publickey)."));
    }
}
