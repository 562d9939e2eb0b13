//! Opening a path with a local user's rights, never the agent's: what a local user names (their
//! project directory, a volume) is opened in a thread of its own whose filesystem ids are the
//! user's (`setfsuid`, `setfsgid`, `setgroups`, made as raw syscalls, which change the calling
//! thread only; glibc's wrappers would change every thread of the agent). Moving the fsuid off 0
//! also drops the thread's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so the kernel checks every
//! directory on the way and the path itself exactly as it would for the user. The thread ends
//! after that one open, so no other work ever runs with those ids.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::auth::LocalUser;

#[derive(Debug, thiserror::Error)]
pub enum CallerFsError {
    #[error("{what} {path} does not exist")]
    Missing { what: String, path: String },
    #[error("{what} {path} is a symbolic link; name what it points to")]
    Symlink { what: String, path: String },
    #[error("{what} {path}: permission denied for user {user}")]
    Denied { what: String, path: String, user: String },
    #[error("{what} {path} must be a directory or a regular file")]
    NotPlain { what: String, path: String },
    #[error("{what} {path}: {error}")]
    Other { what: String, path: String, error: nix::Error },
    #[error("could not take on the ids of user {0}: {1}")]
    Ids(String, nix::Error),
    #[error("the thread that opens files as the user failed")]
    Thread,
}

/// What the user could open: the path with every symlink on the way resolved (as the user saw
/// them), and whether it is a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub resolved: PathBuf,
    pub is_dir: bool,
}

/// Opens `path` for reading as `user` (its last component must not be a symlink), and says
/// where it led. `what` names it in errors ("volume source", "project directory").
pub fn open_as(user: &LocalUser, path: &Path, what: &str) -> Result<Opened, CallerFsError> {
    let (user, path, what) = (user.clone(), path.to_path_buf(), what.to_owned());
    std::thread::Builder::new()
        .name("open-as-user".into())
        .spawn(move || {
            become_user(&user)?;
            open_here(&user, &path, &what)
        })
        .map_err(|_| CallerFsError::Thread)?
        .join()
        .map_err(|_| CallerFsError::Thread)?
}

/// Gives the calling thread (only) the user's filesystem ids.
fn become_user(user: &LocalUser) -> Result<(), CallerFsError> {
    let failed = |error| CallerFsError::Ids(user.name.clone(), error);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: setgroups reads `groups.len()` gids from a live slice; the raw syscall changes
    // this thread's credentials only.
    let set = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    nix::errno::Errno::result(set).map_err(failed)?;
    // SAFETY: setfsgid and setfsuid take an id and return the previous one; as raw syscalls
    // they change this thread only.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, user.gid);
        libc::syscall(libc::SYS_setfsuid, user.uid);
    }
    // Asking with an invalid id changes nothing and returns the current one: proof it took.
    // SAFETY: as above; -1 is never a valid id, so nothing changes.
    let now = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) };
    if now != i64::from(user.uid) {
        return Err(failed(nix::errno::Errno::EPERM));
    }
    Ok(())
}

fn open_here(user: &LocalUser, path: &Path, what: &str) -> Result<Opened, CallerFsError> {
    let (what, shown) = (what.to_owned(), path.display().to_string());
    let fail = |error: nix::Error| match error {
        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {
            CallerFsError::Missing { what: what.clone(), path: shown.clone() }
        }
        nix::errno::Errno::ELOOP => CallerFsError::Symlink { what: what.clone(), path: shown.clone() },
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => {
            CallerFsError::Denied { what: what.clone(), path: shown.clone(), user: user.name.clone() }
        }
        error => CallerFsError::Other { what: what.clone(), path: shown.clone(), error },
    };
    // O_PATH first: it reads nothing, so a FIFO or a device cannot block or act on the open.
    let handle: OwnedFd =
        open(path, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map_err(fail)?;
    let stat = fstat(&handle).map_err(fail)?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    let is_dir = kind == SFlag::S_IFDIR;
    if kind == SFlag::S_IFLNK {
        return Err(fail(nix::errno::Errno::ELOOP));
    }
    if !is_dir && kind != SFlag::S_IFREG {
        return Err(CallerFsError::NotPlain { what: what.clone(), path: shown.clone() });
    }
    // Reopening through the descriptor checks read permission on the very file found above.
    let magic = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    let readable: OwnedFd =
        open(&magic, OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK, Mode::empty()).map_err(fail)?;
    drop(readable);
    let resolved = std::fs::read_link(&magic)
        .map_err(|error| fail(nix::errno::Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))))?;
    Ok(Opened { resolved, is_dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> LocalUser {
        LocalUser {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            name: "nobody".into(),
            namespace: "user-nobody".into(),
        }
    }

    #[test]
    fn a_user_opens_only_what_their_rights_reach() {
        if !nix::unistd::geteuid().is_root() {
            // Without root there are no other ids to take on; the security suite covers it as root.
            return;
        }
        let Ok(dir) = tempfile::tempdir() else { panic!("a temp dir") };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).ok();
        let private = dir.path().join("private");
        std::fs::write(&private, "secret").ok();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).ok();
        let public = dir.path().join("public");
        std::fs::write(&public, "hello").ok();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).ok();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&public, &link).ok();

        assert!(matches!(open_as(&nobody(), &private, "volume source"), Err(CallerFsError::Denied { .. })));
        assert!(matches!(open_as(&nobody(), &link, "volume source"), Err(CallerFsError::Symlink { .. })));
        let opened = open_as(&nobody(), &public, "volume source").ok();
        assert_eq!(opened.map(|opened| opened.is_dir), Some(false));
        assert!(std::fs::read(&private).is_ok(), "the agent's own threads keep root's rights");
    }
}
