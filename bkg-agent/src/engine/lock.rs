//! Ownership of a cgroup directory and of a uid range, each held for the agent's whole life.
//!
//! A cgroup directory is locked with an exclusive `flock`. Two agents with different state
//! directories but the same `--cgroup-dir` would otherwise take each other's run cgroups for
//! leftovers and remove them; with the lock the second one refuses to start, and whatever an
//! agent finds in a directory it locked was left by an earlier holder.
//!
//! A uid range is locked with an open-file-description lock on the bytes of one shared file that
//! stand for its uids: the kernel refuses any overlap, however the ranges are aligned. Without
//! it two agents with the same `--uid-base` would give their sandboxes the same host ids, and
//! one's sandbox could signal the other's processes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, Flock, FlockArg, fcntl};

pub use bkg_schema::paths::LOCK_DIR;

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
    #[error(
        "uids {first}-{last} overlap those of {} ({}; lock {}): give this agent a range of its own with --uid-base UID (or BKG_UID_BASE){}",
        if holders.len() > 1 { "other agents" } else { "another agent" },
        holders.join("; "),
        lock.display(),
        match free { Some(free) => format!(", e.g. --uid-base {free}, free now"), None => format!(", {UID_RANGE} or more from the other's") },
        last = first + (UID_RANGE - 1)
    )]
    UidsHeld { first: u32, lock: PathBuf, holders: Vec<String>, free: Option<u32> },
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

/// How many host uids an agent takes from its `--uid-base` (see `engine::IdSlots`).
pub const UID_RANGE: u32 = 65_536;

/// The file whose byte at offset U stands for host uid U.
const UID_LOCK_FILE: &str = "uids.lock";

/// A held uid range: the lock goes when the file is closed (with the agent, however it ends).
#[derive(Debug)]
pub struct UidRangeLock {
    _file: File,
}

/// Locks uids `first..first + UID_RANGE` for this agent. Its `owner` is written at the range's
/// first byte, where a refused agent reads the holder's (the lock it is refused by says where).
pub fn lock_uid_range(lock_dir: &Path, first: u32, owner: &str) -> Result<UidRangeLock, LockError> {
    let path = lock_dir.join(UID_LOCK_FILE);
    let file = open_lock_file(lock_dir, &path)?;
    let range = uid_range_lock(first);
    match fcntl(&file, FcntlArg::F_OFD_SETLK(&range)) {
        Ok(_) => {}
        Err(Errno::EAGAIN | Errno::EACCES) => {
            let held = |start: u64, len: u64| held_within(&file, start, len).map_err(io("inspect a lock of", &path));
            let (start, end) = (u64::from(first), u64::from(first) + u64::from(UID_RANGE));
            // Every agent holds exactly UID_RANGE uids and no two overlap: besides the one found,
            // another can only hold uids below its start or above its end.
            let holders = match held(start, end - start)? {
                // Released between the two calls: it was stopping.
                None => vec!["an agent that is stopping".to_owned()],
                Some(found) => {
                    let (found_start, found_end) = (found.max(start), found + u64::from(UID_RANGE));
                    let mut holders = Vec::new();
                    if let Some(below) = held(start, found_start - start)? {
                        holders.push(holder_at(&file, below));
                    }
                    holders.push(holder_at(&file, found));
                    if let Some(above) = held(found_end, end.saturating_sub(found_end))? {
                        holders.push(holder_at(&file, above));
                    }
                    holders
                }
            };
            let free = free_range_above(&file, end);
            return Err(LockError::UidsHeld { first, lock: path, holders, free });
        }
        Err(errno) => return Err(io("lock", &path)(errno.into())),
    }
    let mut record = owner.as_bytes().to_vec();
    record.truncate(HOLDER_BYTES - 1);
    record.push(b'\n');
    file.write_all_at(&record, u64::from(first)).map_err(io("write", &path))?;
    Ok(UidRangeLock { _file: file })
}

/// Opens (or creates) the lock file at `path` in `lock_dir`, never through a symlink.
fn open_lock_file(lock_dir: &Path, path: &Path) -> Result<File, LockError> {
    std::fs::create_dir_all(lock_dir).map_err(io("create", lock_dir))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("open", path))
}

/// What failing to `action` the file at `path` is, for `map_err`.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LockError {
    let path = path.to_owned();
    move |source| LockError::Io { action, path, source }
}

/// The most of a holder's record that is read back (pid and state directory).
const HOLDER_BYTES: usize = 1024;

fn uid_range_lock(first: u32) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value that the fields below complete.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = libc::off_t::from(first);
    lock.l_len = libc::off_t::from(UID_RANGE);
    lock
}

/// The first uid of a range another agent holds within `len` uids from `start`, if any does
/// (`len` 0 asks about none).
fn held_within(file: &File, start: u64, len: u64) -> std::io::Result<Option<u64>> {
    let (Ok(start), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len)) else {
        return Ok(None);
    };
    if len == 0 {
        return Ok(None);
    }
    let mut probe = uid_range_lock(0);
    probe.l_start = start;
    probe.l_len = len;
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok((i32::from(probe.l_type) != libc::F_UNLCK).then(|| u64::try_from(probe.l_start).unwrap_or(0)))
}

/// A `--uid-base` from `from` on whose range no agent holds now, for the refusal's hint: past
/// each holder found in turn, a few times at most.
fn free_range_above(file: &File, from: u64) -> Option<u32> {
    let mut candidate = from;
    for _ in 0..16 {
        let base = u32::try_from(candidate).ok().filter(|base| *base <= u32::MAX - UID_RANGE)?;
        match held_within(file, candidate, u64::from(UID_RANGE)).ok()? {
            None => return Some(base),
            Some(holder) => candidate = holder + u64::from(UID_RANGE),
        }
    }
    None
}

/// The owner record a holder wrote at `offset`, the first byte of its range.
fn holder_at(file: &File, offset: u64) -> String {
    let mut record = vec![0u8; HOLDER_BYTES];
    let read = file.read_at(&mut record, offset).unwrap_or(0);
    record.truncate(read);
    let text = String::from_utf8_lossy(record.split(|byte| *byte == b'\n').next().unwrap_or_default()).into_owned();
    match text.trim_matches(char::from(0)).trim() {
        "" => "an agent that is starting".to_owned(),
        text => text.to_owned(),
    }
}

/// The lock file of the cgroup directory `dir`.
pub fn lock_path_for(lock_dir: &Path, dir: &Path) -> PathBuf {
    bkg_schema::paths::lock_file(lock_dir, "cgroup", dir)
}

/// Locks the cgroup directory `dir` for this agent, recording `owner` (pid, state directory) in
/// the lock file so a refused agent can name the holder.
pub fn lock_cgroup_dir(lock_dir: &Path, dir: &Path, owner: &str) -> Result<DirLock, LockError> {
    let path = lock_path_for(lock_dir, dir);
    for _ in 0..ATTEMPTS {
        let file = open_lock_file(lock_dir, &path)?;
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
        // A third agent may lock the new file at the path: only the file still there counts.
        if !still_at(&lock, &path)? {
            continue;
        }
        lock.set_len(0).map_err(io("truncate", &path))?;
        lock.write_all(owner.as_bytes()).map_err(io("write", &path))?;
        return Ok(DirLock { path, _lock: lock });
    }
    Err(LockError::Io { action: "lock", path, source: std::io::Error::other("the lock file kept being replaced") })
}

/// Holds the socket path `socket` for this agent's whole life, its stop included: the socket
/// file outlives its listening while the agent disposes of its sandboxes, and `bkg agent stop`
/// (bkg-cli/src/client.rs, `stopping_agent`) tells such an agent from one that ended without
/// removing it by this lock. It is shared: an agent may bind a path whose file another lost
/// (engine's local_socket.rs), so two may hold it at once.
pub fn lock_socket(lock_dir: &Path, socket: &Path, owner: &str) -> Result<SocketLock, LockError> {
    let path = bkg_schema::paths::socket_lock_file(lock_dir, socket);
    for _ in 0..ATTEMPTS {
        let file = open_lock_file(lock_dir, &path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(lock) => lock,
            // Its last holder has it exclusively while it removes it: a new file comes.
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, errno)) => return Err(io("lock", &path)(errno.into())),
        };
        if !still_at(&lock, &path)? {
            continue;
        }
        lock.set_len(0).map_err(io("truncate", &path))?;
        lock.write_all(owner.as_bytes()).map_err(io("write", &path))?;
        return Ok(SocketLock { path, lock: Some(lock) });
    }
    Err(LockError::Io { action: "lock", path, source: std::io::Error::other("the lock file kept being replaced") })
}

/// A held socket path; its lock file goes with its last holder.
#[derive(Debug)]
pub struct SocketLock {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        // Exclusive only when no other agent holds it: then the file is removed, still locked,
        // so that a newcomer that opened it notices (`lock_socket` checks the path).
        if let Some(lock) = self.lock.take()
            && lock.relock(FlockArg::LockExclusiveNonblock).is_ok()
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` still names the file `lock` holds: its holder removes it as it stops, and what
/// was locked may be that removed file while the path names a new one.
fn still_at(lock: &File, path: &Path) -> Result<bool, LockError> {
    let locked = lock.metadata().map_err(io("inspect", path))?;
    match std::fs::symlink_metadata(path) {
        Ok(current) => Ok((current.dev(), current.ino()) == (locked.dev(), locked.ino())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LockError::Io { action: "inspect", path: path.to_owned(), source }),
    }
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

    #[test]
    fn a_socket_path_is_held_by_each_agent_on_it_and_its_file_goes_with_the_last() -> TestResult {
        let locks = tempfile::tempdir()?;
        let socket = Path::new("/run/bkg-test/agent.sock");
        let lock_file = bkg_schema::paths::socket_lock_file(locks.path(), socket);
        let first = lock_socket(locks.path(), socket, "pid 1, state directory /a")?;
        // One that bound the path after the first lost its file holds it too.
        let second = lock_socket(locks.path(), socket, "pid 2, state directory /b")?;
        // /proc/locks names the holder; flock_holder leaves out this process's own locks.
        assert!(std::fs::read_to_string("/proc/locks")?.contains(&format!(" {} ", std::process::id())));
        assert_eq!(bkg_schema::paths::flock_holder(&std::fs::metadata(&lock_file)?), None);
        drop(first);
        assert!(lock_file.exists(), "the second holder's lock file went with the first");
        drop(second);
        assert!(!lock_file.exists(), "the last holder left its lock file");
        lock_socket(locks.path(), socket, "pid 3")?;
        Ok(())
    }

    #[test]
    fn an_overlapping_uid_range_is_refused_with_its_holder_named_and_freed_with_the_holder() -> TestResult {
        let locks = tempfile::tempdir()?;
        let first = lock_uid_range(locks.path(), 0x7000_0000, "pid 1, state directory /a")?;
        // Open-file-description locks conflict between two opens in one process, as between agents.
        for overlapping in [0x7000_0000, 0x7000_0000 + 32_768, 0x7000_0000 - 65_535] {
            let refused = lock_uid_range(locks.path(), overlapping, "pid 2, state directory /b");
            let Err(error @ LockError::UidsHeld { .. }) = refused else {
                return Err(format!("{overlapping} was not refused: {refused:?}").into());
            };
            let message = error.to_string();
            assert!(message.contains("pid 1, state directory /a") && message.contains("--uid-base"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        // Ranges that only touch are both free.
        let below = lock_uid_range(locks.path(), 0x7000_0000 - 65_536, "pid 3")?;
        let above = lock_uid_range(locks.path(), 0x7000_0000 + 65_536, "pid 4")?;
        // A range across two holders names both, and the hint is a base no one holds.
        let across = lock_uid_range(locks.path(), 0x7000_0000 + 32_768, "pid 5");
        let Err(error @ LockError::UidsHeld { .. }) = across else {
            return Err(format!("a range across two holders was not refused: {across:?}").into());
        };
        let message = error.to_string();
        assert!(message.contains("overlap those of other agents (pid 1, state directory /a; pid 4;"), "{message}");
        let suggested = 0x7000_0000 + 2 * 65_536;
        assert!(message.ends_with(&format!("e.g. --uid-base {suggested}, free now")), "{message}");
        drop(lock_uid_range(locks.path(), suggested, "pid 5")?);
        drop(first);
        lock_uid_range(locks.path(), 0x7000_0000, "pid 2, state directory /b")?;
        drop((below, above));
        Ok(())
    }
}
