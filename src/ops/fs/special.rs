//! Files that are not data: pseudo-filesystems and the daemon's own `/proc` entries.
//!
//! Files on procfs, sysfs and their kin look like regular files, but reading them reports on
//! (or acts on) the running system: `/proc/<pid>/environ` and `mem` are another process's
//! secrets, `/proc/kmsg` never reaches end-of-file, `/sys` files can change the machine when
//! written. Path rules written as `/**` were not meant to reach them, so READ and WRITE refuse
//! a file on one of these filesystems (found with `fstatfs` on the opened descriptor, not from
//! the path) unless a rule names its directory. The daemon's own entries
//! (`/proc/<daemon pid>/...`, which `/proc/self` and `/proc/thread-self` resolve to, and
//! `/proc/<daemon thread id>/...`) hold its environment (API keys) and memory: no rule reaches
//! those.

use nix::sys::statfs::fstatfs;
use std::os::fd::AsFd;
use std::path::{Component, Path};

/// Pseudo-filesystems by `f_type` magic number (linux/magic.h), with the name used in errors.
const PSEUDO: [(u32, &str); 22] = [
    (0x0000_9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0xcafe_4a11, "bpffs"),
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6e73_6673, "nsfs"),
    (0x0765_5821, "resctrl"),
    (0x6c6f_6f70, "binderfs"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x6759_6969, "rpc_pipefs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0xabba_1974, "xenfs"),
    (0x0000_9fa1, "openpromfs"),
];

/// The procfs magic number.
const PROCFS: u32 = 0x0000_9fa0;

/// A pseudo-filesystem a file was found on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PseudoFs {
    magic: u32,
    /// Its usual name, for messages.
    pub name: &'static str,
}

impl PseudoFs {
    pub fn is_procfs(self) -> bool {
        self.magic == PROCFS
    }
}

/// The pseudo-filesystem `fd` is on, if it is on one.
pub fn pseudo_filesystem(fd: impl AsFd) -> Result<Option<PseudoFs>, nix::Error> {
    let st = fstatfs(fd)?;
    // `f_type` is a signed word on some targets; the magic numbers are 32-bit.
    let magic = st.filesystem_type().0 as u64 as u32;
    Ok(PSEUDO
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|&(magic, name)| PseudoFs { magic, name }))
}

/// True for a procfs path that belongs to the daemon itself: a numeric component of the path
/// is the daemon's process id or one of its thread ids (`/proc/<tid>` works for every thread,
/// though only the leader is listed). Checked on the canonical path, in which `/proc/self`,
/// `/proc/thread-self` and `/proc/net` (a link into `self`) are already resolved to numbers.
/// A number elsewhere in `/proc` equal to one of ours (an IRQ, say) is refused too: the check
/// errs towards refusing.
pub fn daemon_own(path: &Path) -> bool {
    let me = std::process::id();
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str()?.parse::<u32>().ok(),
            _ => None,
        })
        .any(|n| n == me || Path::new(&format!("/proc/self/task/{n}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_and_sys_are_pseudo_and_tmp_is_not() {
        let proc = std::fs::File::open("/proc/self/status").unwrap();
        let fs = pseudo_filesystem(&proc).unwrap().unwrap();
        assert!(fs.name == "procfs" && fs.is_procfs(), "{fs:?}");
        let here = std::fs::File::open(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert_eq!(pseudo_filesystem(&here).unwrap(), None);
        if let Ok(sys) = std::fs::File::open("/sys/kernel") {
            let fs = pseudo_filesystem(&sys).unwrap().unwrap();
            assert!(fs.name == "sysfs" && !fs.is_procfs(), "{fs:?}");
        }
    }

    #[test]
    fn the_daemons_own_entries_are_recognised_by_pid_and_thread_id() {
        let me = std::process::id();
        let tid = nix::unistd::gettid();
        assert!(daemon_own(Path::new(&format!("/proc/{me}/environ"))));
        assert!(daemon_own(Path::new(&format!("/proc/{me}/task/{tid}/mem"))));
        assert!(daemon_own(Path::new(&format!("/proc/{tid}/environ"))));
        assert!(!daemon_own(Path::new("/proc/1/environ")));
        assert!(!daemon_own(Path::new("/proc/kmsg")));
    }
}
