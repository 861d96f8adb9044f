//! Connection slots: who holds how many connections, and the caps that keep one holder from
//! taking them all.
//!
//! Every connection is attributed when it is accepted ([`super::Kernel::connect`]) to a
//! [`Holder`]: a supervised agent (all its processes' connections count against the agent, one
//! caller), a plain client of another allowed user (counted per uid), a process the daemon
//! started that speaks as no agent (counted together), or the daemon owner's own process. Only
//! the owner's own processes may use the last `owner_reserved` slots, so an agent that opens
//! connections until it is refused leaves its user able to connect. The owner's own clients are
//! capped by `max_connections` alone: they are the user.

use super::CallerId;
use std::collections::HashMap;

/// The caps checked when a connection is accepted (from `[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// `server.max_connections`: the daemon's slots.
    pub max_connections: usize,
    /// `server.owner_reserved_connections`: of those, the last ones, kept for the owner's
    /// own processes.
    pub owner_reserved: usize,
    /// `server.max_connections_per_caller`: connections one agent may hold.
    pub per_caller: usize,
    /// `server.max_connections_per_uid`: connections the plain clients of one other allowed
    /// user may hold together.
    pub per_uid: usize,
    /// `server.max_connections_descendants`: connections the processes the daemon started
    /// that speak as no agent may hold together.
    pub descendants: usize,
}

impl ConnLimits {
    /// No caps at all (for tools and tests that attribute a connection without a reactor).
    pub const NONE: ConnLimits = ConnLimits {
        max_connections: usize::MAX,
        owner_reserved: 0,
        per_caller: usize::MAX,
        per_uid: usize::MAX,
        descendants: usize::MAX,
    };
}

/// Whom a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// One of the daemon owner's own processes, outside the daemon's tree.
    Owner,
    /// A plain client of another allowed user.
    OtherUser(u32),
    /// A process the daemon started that speaks as no agent: a command a plain client ran
    /// with EXEC (or its descendants), or something left behind by an agent that is gone.
    Descendant,
    /// A supervised agent's process (the count is the agent's record's `conns`).
    Agent(CallerId),
}

/// Why a connection was refused; the text (sent to the peer before closing) names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Only the owner's own processes may take the last slots.
    Reserved {
        live: usize,
        max: usize,
        reserved: usize,
    },
    /// The agent holds its maximum.
    PerCaller { agent: CallerId, max: usize },
    /// The other user's clients hold their maximum.
    PerUid { uid: u32, max: usize },
    /// Processes the daemon started hold their maximum.
    Descendants { max: usize },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Reserved {
                live,
                max,
                reserved,
            } => write!(
                f,
                "too many connections: the daemon holds {live} of its {max}, and the last \
                 {reserved} are kept for its owner's own processes \
                 (server.owner_reserved_connections)"
            ),
            Refused::PerCaller { agent, max } => write!(
                f,
                "too many connections: agent {agent} holds its maximum of {max} \
                 (server.max_connections_per_caller)"
            ),
            Refused::PerUid { uid, max } => write!(
                f,
                "too many connections: the clients of uid {uid} hold their maximum of {max} \
                 (server.max_connections_per_uid)"
            ),
            Refused::Descendants { max } => write!(
                f,
                "too many connections: processes started by the daemon that are no agent \
                 hold their maximum of {max} (server.max_connections_descendants)"
            ),
        }
    }
}

/// Connections of the holders counted here (agents count in their own records).
#[derive(Debug, Default)]
pub struct ConnCounts {
    per_uid: HashMap<u32, usize>,
    descendants: usize,
}

impl ConnCounts {
    /// Takes a slot for a client `holder` (not an agent), if its cap allows.
    pub fn take(&mut self, holder: Holder, limits: &ConnLimits) -> Result<(), Refused> {
        match holder {
            Holder::Owner | Holder::Agent(_) => Ok(()),
            Holder::OtherUser(uid) => {
                let n = self.per_uid.entry(uid).or_insert(0);
                if *n >= limits.per_uid {
                    return Err(Refused::PerUid {
                        uid,
                        max: limits.per_uid,
                    });
                }
                *n += 1;
                Ok(())
            }
            Holder::Descendant => {
                if self.descendants >= limits.descendants {
                    return Err(Refused::Descendants {
                        max: limits.descendants,
                    });
                }
                self.descendants += 1;
                Ok(())
            }
        }
    }

    /// Gives back a slot taken by [`ConnCounts::take`].
    pub fn give_back(&mut self, holder: Holder) {
        match holder {
            Holder::Owner | Holder::Agent(_) => {}
            Holder::OtherUser(uid) => {
                if let Some(n) = self.per_uid.get_mut(&uid) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_uid.remove(&uid);
                    }
                }
            }
            Holder::Descendant => self.descendants = self.descendants.saturating_sub(1),
        }
    }
}

/// The reserve: with `live` connections open, may `holder` take another slot?
pub fn check_reserve(holder: Holder, live: usize, limits: &ConnLimits) -> Result<(), Refused> {
    let open_to_all = limits.max_connections.saturating_sub(limits.owner_reserved);
    if holder != Holder::Owner && live >= open_to_all {
        return Err(Refused::Reserved {
            live,
            max: limits.max_connections,
            reserved: limits.owner_reserved,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        max_connections: 10,
        owner_reserved: 2,
        per_caller: 3,
        per_uid: 2,
        descendants: 1,
    };

    #[test]
    fn other_users_and_descendants_have_their_own_caps() {
        let mut c = ConnCounts::default();
        c.take(Holder::OtherUser(7), &LIMITS).unwrap();
        c.take(Holder::OtherUser(7), &LIMITS).unwrap();
        let e = c.take(Holder::OtherUser(7), &LIMITS).unwrap_err();
        assert!(
            e.to_string().contains("server.max_connections_per_uid"),
            "{e}"
        );
        // Another user has its own count; the owner none.
        c.take(Holder::OtherUser(8), &LIMITS).unwrap();
        for _ in 0..100 {
            c.take(Holder::Owner, &LIMITS).unwrap();
        }
        c.take(Holder::Descendant, &LIMITS).unwrap();
        let e = c.take(Holder::Descendant, &LIMITS).unwrap_err();
        assert!(
            e.to_string().contains("server.max_connections_descendants"),
            "{e}"
        );
        c.give_back(Holder::OtherUser(7));
        c.give_back(Holder::Descendant);
        c.take(Holder::OtherUser(7), &LIMITS).unwrap();
        c.take(Holder::Descendant, &LIMITS).unwrap();
    }

    #[test]
    fn only_the_owner_takes_the_reserved_slots() {
        for holder in [Holder::Agent(5), Holder::OtherUser(7), Holder::Descendant] {
            assert!(check_reserve(holder, 7, &LIMITS).is_ok());
            let e = check_reserve(holder, 8, &LIMITS).unwrap_err();
            assert!(
                e.to_string().contains("server.owner_reserved_connections"),
                "{e}"
            );
        }
        assert!(check_reserve(Holder::Owner, 9, &LIMITS).is_ok());
        let none = ConnLimits {
            owner_reserved: 0,
            ..LIMITS
        };
        assert!(check_reserve(Holder::Descendant, 9, &none).is_ok());
    }
}
