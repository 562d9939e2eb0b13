//! Ownership of a cgroup directory: an exclusive `flock` held for the agent's whole life. Two
//! agents with different state directories but the same `--cgroup-dir` would otherwise take each
//! other's run cgroups for leftovers and remove them; with the lock the second one refuses to
//! start, and whatever an agent finds in a directory it locked was left by an earlier holder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Where the locks live: per boot (a tmpfs), like the cgroups they guard, and shared by every
/// agent of the host whatever its state directory.
pub const LOCK_DIR: &str = "/run/bkg/locks";

/// How often a lock file replaced under us (its holder removed it while stopping) is retried.
const ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "cgroup directory {} is in use by another agent ({holder}; lock {}): give this agent a directory of its own with --cgroup-dir NAME (or BKG_CGROUP_DIR)",
        dir.display(),
        lock.display()
    )]
    Held { dir: PathBuf, lock: PathBuf, holder: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

/// A held lock; the lock file goes when this is dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still locked: a newcomer that opened the old file notices (see `lock`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of the cgroup directory `dir`: named by a hash of its path, which may be long.
pub fn lock_path_for(lock_dir: &Path, dir: &Path) -> PathBuf {
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    lock_dir.join(format!("cgroup-{}.lock", hex::encode(&digest[..12])))
}

/// Locks the cgroup directory `dir` for this agent, recording `owner` (pid, state directory) in
/// the lock file so a refused agent can name the holder.
pub fn lock_cgroup_dir(lock_dir: &Path, dir: &Path, owner: &str) -> Result<DirLock, LockError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| LockError::Io { action, path, source }
    };
    std::fs::create_dir_all(lock_dir).map_err(io("create", lock_dir))?;
    let path = lock_path_for(lock_dir, dir);
    for _ in 0..ATTEMPTS {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("open", &path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "an agent that is starting".to_owned(),
                    text => text.to_owned(),
                };
                return Err(LockError::Held { dir: dir.to_owned(), lock: path, holder });
            }
            Err((_, errno)) => return Err(io("lock", &path)(errno.into())),
        };
        // The holder removes the file as it stops: what we locked may be that removed file, while
        // the path now names a new one that a third agent may lock too. Only the file still at
        // the path counts.
        let locked = lock.metadata().map_err(io("inspect", &path))?;
        let current = match std::fs::symlink_metadata(&path) {
            Ok(current) => Some(current),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(LockError::Io { action: "inspect", path, source }),
        };
        if current.is_none_or(|current| (current.dev(), current.ino()) != (locked.dev(), locked.ino())) {
            continue;
        }
        lock.set_len(0).map_err(io("truncate", &path))?;
        lock.write_all(owner.as_bytes()).map_err(io("write", &path))?;
        return Ok(DirLock { path, _lock: lock });
    }
    Err(LockError::Io { action: "lock", path, source: std::io::Error::other("the lock file kept being replaced") })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_and_the_lock_goes_with_its_holder() -> TestResult {
        let locks = tempfile::tempdir()?;
        let dir = Path::new("/sys/fs/cgroup/cpu/bkg");
        let first = lock_cgroup_dir(locks.path(), dir, "pid 1, state directory /a")?;
        // flock locks belong to the open file: a second open in the same process conflicts too.
        let second = lock_cgroup_dir(locks.path(), dir, "pid 2, state directory /b");
        let Err(error @ LockError::Held { .. }) = second else {
            return Err(format!("the second lock was not refused: {second:?}").into());
        };
        let message = error.to_string();
        assert!(message.contains("pid 1, state directory /a") && message.contains("--cgroup-dir"), "{message}");
        assert!(!message.contains('\n'));
        lock_cgroup_dir(locks.path(), Path::new("/sys/fs/cgroup/cpu/bkg-other"), "pid 3")?;
        drop(first);
        assert!(!lock_path_for(locks.path(), dir).exists());
        lock_cgroup_dir(locks.path(), dir, "pid 2, state directory /b")?;
        Ok(())
    }
}
