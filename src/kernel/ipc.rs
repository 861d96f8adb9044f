//! Messaging between callers: REGISTER, SEND, RECV, BROADCAST.
//!
//! Every caller has a bounded mailbox (message count and bytes). A full mailbox refuses new
//! messages with a clear error to the sender instead of growing or silently dropping. Names are
//! unique among live callers and are released when their holder goes away for good.

use super::CallerId;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Longest name (REGISTER, agent names) by default: `limits.max_name_bytes`.
pub const DEFAULT_MAX_NAME_BYTES: usize = 64;
/// The largest `limits.max_name_bytes` accepted: agent names become file names
/// (`NAME.log.N`) and cgroup directories (`NAME-ID`), which must fit the 255-byte limit of a
/// path component.
pub const MAX_NAME_BYTES_LIMIT: usize = 200;

/// A message waiting in a mailbox.
pub struct Message {
    pub from: CallerId,
    pub from_name: Option<String>,
    pub body: Box<RawValue>,
    pub at: Instant,
}

#[derive(Default)]
struct Mailbox {
    messages: VecDeque<Message>,
    bytes: usize,
}

/// Names and mailboxes.
pub struct Ipc {
    cap: usize,
    cap_bytes: usize,
    /// Longest name (`limits.max_name_bytes`).
    max_name: usize,
    names: HashMap<String, CallerId>,
    name_of: HashMap<CallerId, String>,
    mailboxes: HashMap<CallerId, Mailbox>,
}

/// Why a message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full { to: CallerId, max: usize },
    TooManyBytes { to: CallerId, max: usize },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Full { to, max } => {
                write!(
                    f,
                    "mailbox of agent {to} is full ({max} messages); try again later"
                )
            }
            SendError::TooManyBytes { to, max } => write!(
                f,
                "mailbox of agent {to} is full ({max} bytes queued); try again later"
            ),
        }
    }
}

/// Checks a name for REGISTER (and agent names, which are also used in paths) against the
/// character rules and `max` bytes (`limits.max_name_bytes`).
pub fn valid_name(name: &str, max: usize) -> Result<(), String> {
    if name.len() > max {
        // The name itself is not echoed: it may be as large as a whole frame.
        return Err(format!(
            "invalid name: {} bytes is longer than the limit of {max} bytes (limits.max_name_bytes)",
            name.len()
        ));
    }
    let ok = !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: 1 to {max} characters from A-Z a-z 0-9 _ - . :, not starting with '.' or '-'"
        ))
    }
}

impl Ipc {
    pub fn new(cap: usize) -> Ipc {
        Ipc::with_bytes(cap, 16 << 20)
    }

    pub fn with_bytes(cap: usize, cap_bytes: usize) -> Ipc {
        Ipc::with_limits(cap, cap_bytes, DEFAULT_MAX_NAME_BYTES)
    }

    /// Mailboxes of `cap` messages and `cap_bytes` bytes; names of at most `max_name` bytes.
    pub fn with_limits(cap: usize, cap_bytes: usize, max_name: usize) -> Ipc {
        Ipc {
            cap,
            cap_bytes,
            max_name,
            names: HashMap::new(),
            name_of: HashMap::new(),
            mailboxes: HashMap::new(),
        }
    }

    /// Gives `caller` the name `name`, releasing any name it held before.
    pub fn register(&mut self, caller: CallerId, name: &str) -> Result<(), String> {
        valid_name(name, self.max_name)?;
        match self.names.get(name) {
            Some(holder) if *holder != caller => {
                return Err(format!(
                    "name {name:?} is already registered by agent {holder}"
                ));
            }
            Some(_) => return Ok(()),
            None => {}
        }
        if let Some(old) = self.name_of.remove(&caller) {
            self.names.remove(&old);
        }
        self.names.insert(name.to_string(), caller);
        self.name_of.insert(caller, name.to_string());
        Ok(())
    }

    pub fn lookup(&self, name: &str) -> Option<CallerId> {
        self.names.get(name).copied()
    }

    pub fn name_of(&self, caller: CallerId) -> Option<&str> {
        self.name_of.get(&caller).map(String::as_str)
    }

    /// Releases `caller`'s name, if any.
    pub fn release_name(&mut self, caller: CallerId) {
        if let Some(old) = self.name_of.remove(&caller) {
            self.names.remove(&old);
        }
    }

    /// Queues a message.
    pub fn deliver(
        &mut self,
        from: CallerId,
        to: CallerId,
        body: &RawValue,
    ) -> Result<(), SendError> {
        let from_name = self.name_of.get(&from).cloned();
        let (cap, cap_bytes) = (self.cap, self.cap_bytes);
        let mb = self.mailboxes.entry(to).or_default();
        if mb.messages.len() >= cap {
            return Err(SendError::Full { to, max: cap });
        }
        let len = body.get().len();
        if mb.bytes + len > cap_bytes {
            return Err(SendError::TooManyBytes { to, max: cap_bytes });
        }
        mb.bytes += len;
        mb.messages.push_back(Message {
            from,
            from_name,
            body: body.to_owned(),
            at: Instant::now(),
        });
        Ok(())
    }

    /// Every caller holding a name.
    /// Takes up to `max` messages, oldest first, from `caller`'s mailbox.
    pub fn take(&mut self, caller: CallerId, max: usize) -> Vec<Message> {
        match self.mailboxes.get_mut(&caller) {
            Some(mb) => {
                let n = max.min(mb.messages.len());
                let taken: Vec<Message> = mb.messages.drain(..n).collect();
                mb.bytes -= taken.iter().map(|m| m.body.get().len()).sum::<usize>();
                taken
            }
            None => vec![],
        }
    }

    pub fn registered(&self) -> Vec<CallerId> {
        self.name_of.keys().copied().collect()
    }

    /// Messages waiting for `caller`.
    pub fn queued(&self, caller: CallerId) -> usize {
        self.mailboxes.get(&caller).map_or(0, |m| m.messages.len())
    }

    /// Drops a caller's name and mailbox.
    pub fn forget(&mut self, caller: CallerId) {
        self.release_name(caller);
        self.mailboxes.remove(&caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn names_are_unique_and_released() {
        let mut ipc = Ipc::new(2);
        ipc.register(1, "alpha").unwrap();
        assert!(ipc.register(2, "alpha").is_err());
        ipc.register(1, "beta").unwrap();
        ipc.register(2, "alpha").unwrap();
        ipc.forget(2);
        assert_eq!(ipc.lookup("alpha"), None);
        assert!(valid_name("../etc", 64).is_err());
        assert!(valid_name("", 64).is_err());
        assert!(valid_name("worker-1.a:b", 64).is_ok());
        assert!(valid_name("abcd", 4).is_ok());
        let e = valid_name("abcde", 4).unwrap_err();
        assert!(e.contains("limits.max_name_bytes"), "{e}");
        let mut short = Ipc::with_limits(2, 100, 3);
        assert!(short.register(1, "abcd").is_err());
        short.register(1, "abc").unwrap();
    }

    #[test]
    fn bounded_mailbox() {
        let mut ipc = Ipc::with_bytes(2, 10);
        ipc.deliver(1, 2, &raw("1")).unwrap();
        ipc.deliver(1, 2, &raw("2")).unwrap();
        assert_eq!(
            ipc.deliver(1, 2, &raw("3")),
            Err(SendError::Full { to: 2, max: 2 })
        );
        assert_eq!(
            ipc.deliver(1, 3, &raw("\"0123456789\"")),
            Err(SendError::TooManyBytes { to: 3, max: 10 })
        );
    }
}
