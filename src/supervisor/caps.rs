//! Dropping privileges for good in a sandboxed agent (and in a command run on its behalf)
//! just before it execs: the user it runs as, its capabilities and bounding set, and
//! no-new-privileges.
//!
//! Called only in freshly forked, single-threaded processes (the launcher's children and the
//! EXEC helper), never in the daemon.

use serde::{Deserialize, Serialize};

/// A user and group to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
}

/// The highest capability number the running kernel knows (CAP_CHECKPOINT_RESTORE = 40 on
/// 5.9+); read from /proc, with a margin when it cannot be read.
fn last_cap() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// `capset(2)` header and data, version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Empties the bounding set, so that no exec (not even of a file with capabilities) can ever
/// give a capability back. Needs CAP_SETPCAP in the current user namespace: a root daemon's
/// launcher and helper have it, and so does a process in the agent's own user namespace.
fn empty_bounding_set() -> Result<(), String> {
    for cap in 0..=last_cap() {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            // A number past what this kernel knows: there is nothing to drop.
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(os_err(&format!(
                "cannot drop capability {cap} from the bounding set"
            )));
        }
    }
    Ok(())
}

/// Becomes `creds` for good (real, effective and saved ids), with no supplementary groups.
fn become_user(c: Creds) -> Result<(), String> {
    // SAFETY: setgroups/setresgid/setresuid with plain integer arguments; the group list is
    // empty (null pointer, size 0).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(os_err("cannot drop supplementary groups"));
        }
        if libc::setresgid(c.gid, c.gid, c.gid) != 0 {
            return Err(os_err(&format!("cannot become group {}", c.gid)));
        }
        if libc::setresuid(c.uid, c.uid, c.uid) != 0 {
            return Err(os_err(&format!("cannot become user {}", c.uid)));
        }
    }
    Ok(())
}

/// Clears the effective, permitted, inheritable and ambient sets.
fn clear_capabilities() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
    {
        return Err(os_err("cannot clear the ambient capabilities"));
    }
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset(2) with a valid version-3 header and two data words, as it expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(os_err("cannot clear the capability sets"));
    }
    Ok(())
}

/// Everything a sandboxed agent's process gives up before it execs untrusted code, in the
/// order that keeps the privileges each step needs until that step is done: the bounding
/// set (needs CAP_SETPCAP), the user (needs CAP_SETUID/CAP_SETGID), then every remaining
/// capability, then no-new-privileges (so setuid and file-capability programs grant
/// nothing either). `creds` is the user to become (a root daemon's `sandbox.agent_user`);
/// `None` keeps the current one (a non-root daemon's agents are its own user, inside a user
/// namespace).
///
/// `need_bounding` says whether an empty bounding set is required: a process without
/// CAP_SETPCAP (a non-root daemon's agent outside a user namespace, when the namespaces could
/// not be made) cannot empty it, and with no-new-privileges it gains nothing from it.
pub fn drop_all(creds: Option<Creds>, need_bounding: bool) -> Result<(), String> {
    if let Err(e) = empty_bounding_set()
        && need_bounding
    {
        return Err(e);
    }
    if let Some(c) = creds {
        become_user(c)?;
    }
    clear_capabilities()?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os_err("cannot set no-new-privileges"));
    }
    Ok(())
}

/// `sandbox.agent_user` when the file does not set it.
pub const DEFAULT_AGENT_USER: &str = "nobody";

/// The user and group sandboxed agents of a root daemon run as: `sandbox.agent_user` given
/// as a name or a numeric uid (default `nobody`, or 65534 where there is no such user).
/// Root itself is refused: a process of uid 0 owns every root-owned file and cgroup, with or
/// without capabilities.
pub fn resolve_agent_user(name: Option<&str>) -> Result<Creds, String> {
    use nix::unistd::{Uid, User};
    let creds = match name {
        None => match User::from_name(DEFAULT_AGENT_USER) {
            Ok(Some(u)) => Creds {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            },
            _ => Creds {
                uid: 65534,
                gid: 65534,
            },
        },
        Some(text) => match text.parse::<u32>() {
            Ok(uid) => Creds {
                uid,
                gid: match User::from_uid(Uid::from_raw(uid)) {
                    Ok(Some(u)) => u.gid.as_raw(),
                    _ => uid,
                },
            },
            Err(_) => match User::from_name(text) {
                Ok(Some(u)) => Creds {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                },
                _ => return Err(format!("sandbox.agent_user: no user named {text:?}")),
            },
        },
    };
    if creds.uid == 0 || creds.gid == 0 {
        return Err(
            "sandbox.agent_user: sandboxed agents cannot run as root (uid or gid 0); name an \
             unprivileged user"
                .into(),
        );
    }
    Ok(creds)
}

/// True when `c` (with no supplementary groups) may reach `path` with `mode` (`0o4` read,
/// `0o1` execute): search permission on every directory on the way and the
/// wanted bits on the file, by the usual owner/group/other rule. Used to refuse, at SPAWN, a
/// script or interpreter the agent user could not open.
pub fn reachable_by(path: &std::path::Path, c: Creds, mode: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let allows = |m: &std::fs::Metadata, want: u32| {
        let bits = m.mode();
        let granted = if m.uid() == c.uid {
            bits >> 6
        } else if m.gid() == c.gid {
            bits >> 3
        } else {
            bits
        } & 0o7;
        granted & want == want
    };
    let mut dir = std::path::PathBuf::from("/");
    let parents: Vec<_> = path
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for part in parents {
        dir.push(part);
        match std::fs::metadata(&dir) {
            Ok(m) if allows(&m, 0o1) => {}
            _ => return false,
        }
    }
    std::fs::metadata(path).is_ok_and(|m| allows(&m, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_user_is_never_root() {
        assert!(resolve_agent_user(Some("0")).is_err());
        assert!(resolve_agent_user(Some("root")).is_err());
        assert!(resolve_agent_user(Some("no-such-user-xyz")).is_err());
        let n = resolve_agent_user(None).unwrap();
        assert_ne!(n.uid, 0);
        assert_eq!(resolve_agent_user(Some("4242")).unwrap().uid, 4242);
    }

    #[test]
    fn reachability_follows_the_directory_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script.py");
        std::fs::write(&f, "print(1)\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let other = Creds {
            uid: 4242,
            gid: 4242,
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable_by(&f, other, 0o4), "a 0700 directory on the way");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(reachable_by(&f, other, 0o4));
        assert!(!reachable_by(&f, other, 0o1), "not executable");
        assert!(!reachable_by(&dir.path().join("missing"), other, 0o4));
    }
}
