//! Opening a checked path once, without following anything the check did not see.
//!
//! READ and WRITE check a canonical path (no symlink, no `..`) against the caller's rules. If
//! they then opened that path again by name, every directory on it would be looked up a second
//! time, and a directory swapped for a symlink in between (`renameat2(RENAME_EXCHANGE)` in a
//! loop does it thousands of times a second) would send the open somewhere else entirely:
//! `O_NOFOLLOW` guards only the last component. So the directory is opened here as a
//! descriptor with no symlink followed anywhere on the way (`openat2` with
//! `RESOLVE_NO_SYMLINKS`, or one `O_NOFOLLOW` step per component where `openat2` is missing),
//! its real path is read back from the kernel and compared with the checked one, and the file
//! is then opened relative to that descriptor, by a single name, with `O_NOFOLLOW`.

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a checked path could not be opened as it was checked.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The path changed after it was checked: a component is now a symbolic link, or what was
    /// opened is no longer at the checked path. The caller should refuse (and may try again).
    Changed,
    /// Any other failure (missing, no permission, not a directory, ...).
    Io(Errno),
}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> Self {
        OpenError::Io(e)
    }
}

/// Set once `openat2` turned out to be missing (kernels before 5.6 answer `ENOSYS`; some
/// seccomp filters answer `EPERM`), so later calls go straight to the component walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory at the absolute canonical `path` as an `O_PATH` descriptor, following
/// no symlink on the way, and checks that the directory opened is at `path`.
pub fn directory(path: &Path) -> Result<OwnedFd, OpenError> {
    if !path.is_absolute() {
        return Err(OpenError::Io(Errno::EINVAL));
    }
    let fd = match by_openat2(path) {
        Some(result) => result?,
        None => walk(path)?,
    };
    verify(&fd, path)?;
    Ok(fd)
}

/// `openat2(RESOLVE_NO_SYMLINKS)`: one call, and the kernel refuses every symlink (and every
/// magic link of `/proc`) on the path with `ELOOP`. `None` when the kernel lacks it.
fn by_openat2(path: &Path) -> Option<Result<OwnedFd, OpenError>> {
    if NO_OPENAT2.load(Ordering::Relaxed) {
        return None;
    }
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(AT_FDCWD, path, how) {
        Ok(fd) => Some(Ok(fd)),
        Err(Errno::ENOSYS) | Err(Errno::EPERM) => {
            NO_OPENAT2.store(true, Ordering::Relaxed);
            log::debug!("openat2 is not available; opening paths one component at a time");
            None
        }
        // The checked path had no symlink: one now is a component swapped since the check.
        Err(Errno::ELOOP) => Some(Err(OpenError::Changed)),
        Err(e) => Some(Err(OpenError::Io(e))),
    }
}

/// The fallback for kernels without `openat2`: from `/`, each component is opened relative
/// to the previous one with `O_NOFOLLOW | O_DIRECTORY`, so a symlink anywhere fails the walk.
pub fn walk(path: &Path) -> Result<OwnedFd, OpenError> {
    if !path.is_absolute() {
        return Err(OpenError::Io(Errno::EINVAL));
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = openat(AT_FDCWD, "/", flags, Mode::empty())?;
    for component in path.components() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            // Canonical paths are absolute and hold neither `.` nor `..`.
            _ => return Err(OpenError::Io(Errno::EINVAL)),
        };
        dir = match openat(&dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            // A symlink opened with O_NOFOLLOW | O_DIRECTORY fails with ENOTDIR (or ELOOP).
            Err(Errno::ENOTDIR) | Err(Errno::ELOOP) if is_symlink(&dir, name) => {
                return Err(OpenError::Changed);
            }
            Err(e) => return Err(OpenError::Io(e)),
        };
    }
    Ok(dir)
}

fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// Checks that the open file `fd` is at `path`: the kernel's own record of where it is
/// (`/proc/self/fd/N`) must be exactly the checked path. A directory on the way renamed or
/// exchanged after the check, or a file removed, shows here (a removed file reads as
/// `PATH (deleted)`).
pub fn verify(fd: &impl AsFd, path: &Path) -> Result<(), OpenError> {
    let link = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let actual = nix::fcntl::readlink(link.as_str())?;
    if actual.as_os_str() == path.as_os_str() {
        Ok(())
    } else {
        log::debug!(
            "opened {:?} but checked {}: the path changed in between",
            actual,
            path.display()
        );
        Err(OpenError::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::create_dir_all(t.path().join("other/b")).unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("link")).unwrap();
        t
    }

    /// The temporary directory may itself be reached through a symlink: use its real path.
    fn real(t: &tempfile::TempDir) -> std::path::PathBuf {
        std::fs::canonicalize(t.path()).unwrap()
    }

    #[test]
    fn directories_open_only_along_their_checked_path() {
        let t = layout();
        let root = real(&t);
        let walked = |p: &Path| walk(p).and_then(|fd| verify(&fd, p).map(|_| fd));
        type Open = fn(&Path) -> Result<OwnedFd, OpenError>;
        let ways: [Open; 2] = [directory, walked];
        for open in ways {
            let fd = open(&root.join("a/b")).unwrap();
            verify(&fd, &root.join("a/b")).unwrap();
            assert_eq!(open(&root.join("link/b")).unwrap_err(), OpenError::Changed);
            assert_eq!(
                open(&root.join("missing/b")).unwrap_err(),
                OpenError::Io(Errno::ENOENT)
            );
        }
    }

    #[test]
    fn the_walk_refuses_a_symlink_anywhere_on_the_path() {
        let t = layout();
        let root = real(&t);
        assert!(walk(&root.join("a/b")).is_ok());
        assert_eq!(walk(&root.join("link/b")).unwrap_err(), OpenError::Changed);
        assert_eq!(walk(&root.join("link")).unwrap_err(), OpenError::Changed);
        std::fs::write(root.join("file"), "").unwrap();
        assert_eq!(
            walk(&root.join("file/x")).unwrap_err(),
            OpenError::Io(Errno::ENOTDIR)
        );
        assert_eq!(
            walk(Path::new("relative/x")).unwrap_err(),
            OpenError::Io(Errno::EINVAL)
        );
    }

    #[test]
    fn a_directory_moved_after_opening_fails_verification() {
        let t = layout();
        let root = real(&t);
        let fd = directory(&root.join("a/b")).unwrap();
        std::fs::rename(root.join("a"), root.join("moved")).unwrap();
        assert_eq!(
            verify(&fd, &root.join("a/b")).unwrap_err(),
            OpenError::Changed
        );
        verify(&fd, &root.join("moved/b")).unwrap();
    }
}
