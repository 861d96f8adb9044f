//! Messaging between callers: REGISTER, SEND, RECV, BROADCAST.
//!
//! Every caller has a bounded mailbox (message count and bytes). A full mailbox refuses new
//! messages with a clear error to the sender instead of growing or silently dropping. Names are
//! unique among live callers and are released when their holder goes away for good.
//!
//! A message body is stored once however many mailboxes it goes to ([`Body`], shared): a
//! BROADCAST to 300 mailboxes costs one copy, not 300. Each mailbox counts the body's size
//! against its own cap (`limits.mailbox_max_bytes`), and all mailboxes together count each
//! live body once against the daemon-wide budget (`limits.mailboxes_total_bytes`): a body is
//! charged when it is first queued and released when the last mailbox holding it lets go
//! (read, or dropped with its owner), wherever that happens.

use super::CallerId;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Longest name (REGISTER, agent names) by default: `limits.max_name_bytes`.
pub const DEFAULT_MAX_NAME_BYTES: usize = 64;
/// The largest `limits.max_name_bytes` accepted: agent names become file names
/// (`NAME.log.N`) and cgroup directories (`NAME-ID`), which must fit the 255-byte limit of a
/// path component.
pub const MAX_NAME_BYTES_LIMIT: usize = 200;

/// The default of `limits.mailboxes_total_bytes`: bytes of message bodies all mailboxes
/// together may hold. A login node is shared, so hundreds of MiB at most: 128 MiB is eight
/// full mailboxes (`limits.mailbox_max_bytes`), or a thousand agents with 128 KiB waiting each.
pub const DEFAULT_MAILBOXES_TOTAL_BYTES: usize = 128 << 20;

/// Bytes of distinct message bodies held by all mailboxes together, and the most there may
/// be. Shared by every [`Body`], which gives its bytes back when it is dropped (on any
/// thread: a RECV reply is built after the mailbox lock is released).
struct Budget {
    used: AtomicUsize,
    cap: usize,
}

/// A message body, stored once and shared by every mailbox it was delivered to.
pub struct Body {
    raw: Box<RawValue>,
    budget: Arc<Budget>,
}

impl Body {
    /// The body as the JSON text it was sent as.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// Bytes of the body (what it costs its mailboxes and the daemon-wide budget).
    pub fn len(&self) -> usize {
        self.raw.get().len()
    }

    /// Never true for a valid JSON value; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.raw.get().is_empty()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.len(), Ordering::AcqRel);
    }
}

/// A message waiting in a mailbox.
pub struct Message {
    pub from: CallerId,
    /// The sender's name when it sent the message (shared by all copies of a BROADCAST).
    pub from_name: Option<Arc<str>>,
    pub body: Arc<Body>,
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
    /// `limits.mailboxes_total_bytes`, and what is held now.
    budget: Arc<Budget>,
    /// Longest name (`limits.max_name_bytes`).
    max_name: usize,
    names: HashMap<String, CallerId>,
    name_of: HashMap<CallerId, String>,
    mailboxes: HashMap<CallerId, Mailbox>,
}

/// Why a message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full {
        to: CallerId,
        max: usize,
    },
    TooManyBytes {
        to: CallerId,
        max: usize,
    },
    /// All mailboxes together hold `used` bytes; a body of `len` more would pass `max`
    /// (`limits.mailboxes_total_bytes`). The sender should try again once recipients have
    /// read theirs.
    DaemonFull {
        used: usize,
        len: usize,
        max: usize,
    },
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
            SendError::DaemonFull { used, len, max } => write!(
                f,
                "the daemon's mailboxes are full: they hold {used} bytes of messages, and \
                 {len} more would pass the limit of {max} (limits.mailboxes_total_bytes); \
                 try again when recipients have read theirs"
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
        Ipc::with_limits(
            cap,
            cap_bytes,
            DEFAULT_MAILBOXES_TOTAL_BYTES,
            DEFAULT_MAX_NAME_BYTES,
        )
    }

    /// Mailboxes of `cap` messages and `cap_bytes` bytes, `total_bytes` of bodies in all;
    /// names of at most `max_name` bytes.
    pub fn with_limits(cap: usize, cap_bytes: usize, total_bytes: usize, max_name: usize) -> Ipc {
        Ipc {
            cap,
            cap_bytes,
            budget: Arc::new(Budget {
                used: AtomicUsize::new(0),
                cap: total_bytes,
            }),
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

    /// Stores a body to be queued in one or more mailboxes, charging it to the daemon-wide
    /// budget (`limits.mailboxes_total_bytes`) once; dropping every copy gives it back.
    pub fn body(&self, raw: &RawValue) -> Result<Arc<Body>, SendError> {
        let len = raw.get().len();
        let cap = self.budget.cap;
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used.saturating_add(len) <= cap).then_some(used + len)
            })
            .map_err(|used| SendError::DaemonFull {
                used,
                len,
                max: cap,
            })?;
        Ok(Arc::new(Body {
            raw: raw.to_owned(),
            budget: self.budget.clone(),
        }))
    }

    /// The sender's name, for the messages it sends now.
    pub fn sender_name(&self, from: CallerId) -> Option<Arc<str>> {
        self.name_of.get(&from).map(|n| Arc::from(n.as_str()))
    }

    /// Queues a shared body in `to`'s mailbox, within that mailbox's caps.
    pub fn deliver(
        &mut self,
        from: CallerId,
        from_name: Option<Arc<str>>,
        to: CallerId,
        body: &Arc<Body>,
    ) -> Result<(), SendError> {
        let (cap, cap_bytes) = (self.cap, self.cap_bytes);
        let mb = self.mailboxes.entry(to).or_default();
        if mb.messages.len() >= cap {
            return Err(SendError::Full { to, max: cap });
        }
        let len = body.len();
        if mb.bytes + len > cap_bytes {
            return Err(SendError::TooManyBytes { to, max: cap_bytes });
        }
        mb.bytes += len;
        mb.messages.push_back(Message {
            from,
            from_name,
            body: body.clone(),
            at: Instant::now(),
        });
        Ok(())
    }

    /// Stores and queues one message (SEND): [`Ipc::body`] then [`Ipc::deliver`].
    pub fn send(&mut self, from: CallerId, to: CallerId, raw: &RawValue) -> Result<(), SendError> {
        let body = self.body(raw)?;
        let from_name = self.sender_name(from);
        self.deliver(from, from_name, to, &body)
    }

    /// Bytes of message bodies all mailboxes hold now (each shared body once), and the limit
    /// (`limits.mailboxes_total_bytes`).
    pub fn total_bytes(&self) -> (usize, usize) {
        (self.budget.used.load(Ordering::Acquire), self.budget.cap)
    }

    /// Every caller holding a name.
    /// Takes up to `max` messages, oldest first, from `caller`'s mailbox.
    pub fn take(&mut self, caller: CallerId, max: usize) -> Vec<Message> {
        match self.mailboxes.get_mut(&caller) {
            Some(mb) => {
                let n = max.min(mb.messages.len());
                let taken: Vec<Message> = mb.messages.drain(..n).collect();
                mb.bytes -= taken.iter().map(|m| m.body.len()).sum::<usize>();
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
        let mut short = Ipc::with_limits(2, 100, 1000, 3);
        assert!(short.register(1, "abcd").is_err());
        short.register(1, "abc").unwrap();
    }

    #[test]
    fn bounded_mailbox() {
        let mut ipc = Ipc::with_bytes(2, 10);
        ipc.send(1, 2, &raw("1")).unwrap();
        ipc.send(1, 2, &raw("2")).unwrap();
        assert_eq!(
            ipc.send(1, 2, &raw("3")),
            Err(SendError::Full { to: 2, max: 2 })
        );
        assert_eq!(
            ipc.send(1, 3, &raw("\"0123456789\"")),
            Err(SendError::TooManyBytes { to: 3, max: 10 })
        );
        // Refused messages cost nothing.
        assert_eq!(ipc.total_bytes(), (2, DEFAULT_MAILBOXES_TOTAL_BYTES));
    }

    #[test]
    fn a_shared_body_is_counted_once_and_released_by_its_last_holder() {
        let mut ipc = Ipc::with_limits(10, 100, 25, 64);
        let body = ipc.body(&raw("\"0123456789\"")).unwrap();
        for to in [2, 3, 4] {
            ipc.deliver(1, None, to, &body).unwrap();
        }
        drop(body);
        assert_eq!(ipc.total_bytes(), (12, 25));
        // Another 12 bytes fit; a third body does not, and says which key to raise.
        ipc.send(1, 5, &raw("\"abcdefghij\"")).unwrap();
        let e = ipc.send(1, 5, &raw("\"klmnopqrst\"")).unwrap_err();
        assert_eq!(
            e,
            SendError::DaemonFull {
                used: 24,
                len: 12,
                max: 25
            }
        );
        assert!(
            e.to_string().contains("limits.mailboxes_total_bytes"),
            "{e}"
        );
        // Two of three holders reading it release nothing; the last one does.
        let first = ipc.take(2, 10);
        ipc.forget(3);
        drop(first);
        assert_eq!(ipc.total_bytes().0, 24);
        let last = ipc.take(4, 10);
        assert_eq!(last[0].body.raw().get(), "\"0123456789\"");
        drop(last);
        assert_eq!(ipc.total_bytes().0, 12);
        ipc.send(1, 5, &raw("\"klmnopqrst\"")).unwrap();
    }
}
