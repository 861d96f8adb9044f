//! The `clove` command line's commands, one file per group; `main.rs` declares the command
//! tree and dispatches to them. This is the face (layer 6): it talks to the daemon through
//! [`clove::client`], prints for people (or `--json` for programs), and decides exit codes
//! ([`exit`]).

pub mod agents;
pub mod bench;
pub mod call;
pub mod exec;
pub mod exit;
pub mod local;
pub mod relay;
pub mod status;
pub mod stop;
pub mod think;
pub mod views;

use clove::client::{Client, Reply};
use exit::Failure;
use serde_json::Value;
use std::path::PathBuf;

/// Prints a line to stdout, ignoring a closed pipe (`clove ... | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use say;

/// What every client command needs: where the daemon is, and whether to print JSON.
pub struct Ctx {
    pub socket: PathBuf,
    pub json: bool,
}

impl Ctx {
    /// A connection to the daemon (exit 2 when there is none).
    pub fn connect(&self) -> Result<Client, Failure> {
        Client::connect(&self.socket).map_err(|e| Failure::Unreachable(e.to_string()))
    }

    /// Sends one request and returns the reply frame. A connection that breaks is exit 2.
    /// The reply's warnings (unknown request fields) are printed on stderr.
    pub fn request(&self, c: &mut Client, op: u8, payload: &[u8]) -> Result<Reply, Failure> {
        let reply = c.call(op, payload).map_err(|e| {
            Failure::Unreachable(format!("no answer from {}: {e}", self.socket.display()))
        })?;
        if let Ok(v) = serde_json::from_slice::<Value>(&reply.payload) {
            print_warnings(&v);
        }
        Ok(reply)
    }

    /// Sends a JSON request and returns the JSON reply, whatever its `success`.
    pub fn call(&self, c: &mut Client, op: u8, req: &Value) -> Result<Value, Failure> {
        let payload = serde_json::to_vec(req).map_err(|e| Failure::Usage(e.to_string()))?;
        let reply = self.request(c, op, &payload)?;
        reply
            .json()
            .map_err(|e| Failure::Refused(format!("unexpected reply: {e}")))
    }

    /// Like [`Ctx::call`], and a reply with `"success": false` is exit 1 with its error.
    pub fn ok(&self, c: &mut Client, op: u8, req: &Value) -> Result<Value, Failure> {
        let v = self.call(c, op, req)?;
        if v["success"] == Value::Bool(false) {
            return Err(Failure::Refused(
                v["error"]
                    .as_str()
                    .unwrap_or("the request failed")
                    .to_string(),
            ));
        }
        Ok(v)
    }

    /// One request on a connection of its own: [`Ctx::ok`].
    pub fn ok_once(&self, op: u8, req: &Value) -> Result<Value, Failure> {
        let mut c = self.connect()?;
        self.ok(&mut c, op, req)
    }
}

/// `clove: warning: ...` for each warning of a reply.
pub fn print_warnings(reply: &Value) {
    for w in reply["warnings"].as_array().into_iter().flatten() {
        eprintln!("clove: warning: {}", w.as_str().unwrap_or_default());
    }
}

/// Prints a value as pretty JSON.
pub fn print_json(v: &Value) {
    say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Formats rows as columns separated by two spaces, the first row being the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A byte count for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in milliseconds for people: `3s`, `2h 5m`, `4days 1h`.
pub fn since_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let rounded = if secs >= 3600 { secs - secs % 60 } else { secs };
    humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
}
