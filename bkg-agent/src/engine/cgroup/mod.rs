//! Per-run cgroups for sandboxed processes, over cgroup v1 or v2 behind one trait.
//!
//! Everything this module creates lives in `<own cgroup>/<agent_dir>/` of each hierarchy, where
//! "own cgroup" is the agent's cgroup as the kernel reports it. Parents and siblings of the
//! agent's cgroup are never written to, and only processes found inside our run cgroups are
//! ever signalled.

mod v1;
mod v2;

pub use v1::{V1Driver, V1Hierarchy};
pub use v2::{V2Driver, WANTED_CONTROLLERS as V2_CONTROLLERS};

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Where a v2-only host mounts the unified hierarchy; a cgroup2 mount anywhere else is the
/// hybrid layout's controller-less side hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CFS_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long killing and removal wait for dying tasks to leave a cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Bounds the pidfds held open at once while killing, so a large run cannot exhaust our fds.
const KILL_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// 1000 = one full CPU.
    pub cpu_millis: u64,
    /// RAM plus swap; the run gets no swap beyond this.
    pub memory_bytes: u64,
    pub pids_max: u64,
}

impl CgroupLimits {
    /// Rejects values the kernel would refuse, or accept with surprising results (a zero memory
    /// limit), so the error names the limit rather than a control file.
    fn validate(&self) -> Result<(), CgroupError> {
        let quota = self.cpu_millis.checked_mul(CFS_PERIOD_US / 1000);
        if quota.is_none_or(|quota| quota < MIN_CPU_QUOTA_US) {
            return Err(CgroupError::InvalidLimits(format!(
                "cpu_millis {} is outside {}..={}",
                self.cpu_millis,
                MIN_CPU_QUOTA_US * 1000 / CFS_PERIOD_US,
                u64::MAX / (CFS_PERIOD_US / 1000)
            )));
        }
        if self.memory_bytes == 0 {
            return Err(CgroupError::InvalidLimits("memory_bytes must be above zero".into()));
        }
        if self.pids_max == 0 {
            return Err(CgroupError::InvalidLimits("pids_max must be above zero".into()));
        }
        Ok(())
    }

    /// CPU time allowed per [`CFS_PERIOD_US`]; meaningful once [`Self::validate`] passed.
    fn cpu_quota_us(&self) -> u64 {
        self.cpu_millis.saturating_mul(CFS_PERIOD_US / 1000)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_nanos: u64,
    pub peak_memory_bytes: u64,
    pub oom_kills: u64,
    /// How often a fork failed because `pids_max` was reached.
    pub pids_limit_hits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "cgroup v1",
            CgroupVersion::V2 => "cgroup v2",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("cannot create cgroup {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot remove cgroup {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("unexpected content in {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("cannot work out the cgroup layout: {0}")]
    Layout(String),
    #[error("{0:?} is not usable as a cgroup name: it must be one plain path component")]
    InvalidName(String),
    #[error("invalid cgroup limits: {0}")]
    InvalidLimits(String),
    #[error(
        "controllers {missing} cannot be enabled in {}; the agent needs a cgroup with them delegated (e.g. systemd Delegate=yes)",
        dir.display()
    )]
    ControllersUnavailable { dir: PathBuf, missing: String },
    #[error("cannot send SIGKILL to pid {pid}: {source}")]
    Signal { pid: i32, source: io::Error },
    #[error("processes are still in {} after {timeout:?}", path.display())]
    KillTimeout { path: PathBuf, timeout: Duration },
}

pub trait CgroupDriver: Send + Sync {
    /// Creates `<own cgroup>/<agent_dir>/<name>` in every hierarchy used, with limits applied.
    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Box<dyn RunCgroup>, CgroupError>;
    /// Removes leftovers of a previous agent under `<own cgroup>/<agent_dir>/`: kills their
    /// processes, then removes the directories. Returns how many run cgroups were removed.
    fn remove_stale(&self) -> Result<usize, CgroupError>;
    /// Removes the agent's own directories (at shutdown, once every run cgroup is gone).
    fn remove_agent_dirs(&self) -> Result<(), CgroupError>;
    /// `<own cgroup>/<agent_dir>` in every hierarchy used: what the agent locks as its own.
    fn agent_dirs(&self) -> Vec<PathBuf>;
    fn version(&self) -> CgroupVersion;
}

pub trait RunCgroup: Send + Sync {
    /// The `cgroup.procs` files (v1: one per hierarchy): they list the cgroup's processes, and a
    /// pid written into them moves that whole process in.
    fn procs_paths(&self) -> Vec<PathBuf>;
    /// The files a single-threaded process writes `0` into to join itself. v1: `tasks`, which
    /// moves the writing thread alone: moving a whole process (`cgroup.procs`) takes the
    /// host-wide lock every fork waits on and first waits an RCU grace period for it (5-10 ms
    /// here, docs/testing.md), moving the caller's own thread does not. v2: `cgroup.procs`.
    fn join_files(&self) -> Vec<PathBuf>;
    /// Replaces the limits, e.g. when a pre-made cgroup is claimed for a run with other limits.
    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Gives the cgroup the lowest CPU weight (`true`: a pool sandbox being prepared, which must
    /// wait behind every run) or the default one back (`false`: a run took it). The scheduler
    /// weighs cgroups against each other before the tasks inside them, so a task's own
    /// `SCHED_IDLE` does not keep it from taking half a CPU from a run in another cgroup.
    fn set_background(&self, background: bool) -> Result<(), CgroupError>;
    fn usage(&self) -> Result<CgroupUsage, CgroupError>;
    /// The memory charged to the cgroup now (its processes' and its tmpfs pages).
    fn memory_now(&self) -> Result<u64, CgroupError>;
    /// Processes in this cgroup and any cgroup below it, sorted.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Kills every process inside and waits (bounded) until none is left.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Removes the cgroup from every hierarchy, waiting (bounded) for dying tasks to drain.
    /// A cgroup that is already gone counts as removed.
    fn remove(&self) -> Result<(), CgroupError>;
}

/// Where the agent's cgroups live, as read from `/proc/self/cgroup` and `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup2 is mounted at `/sys/fs/cgroup`; `own_dir` is the agent's cgroup directory.
    Unified { own_dir: PathBuf },
    /// cgroup v1 hierarchies. A cgroup2 mount elsewhere (the hybrid layout) carries no
    /// controllers worth limiting with and is ignored.
    Legacy { hierarchies: Vec<V1Hierarchy> },
}

/// Detects the host's cgroup layout and returns a ready driver for it.
///
/// On v2 this already creates `<own>/<agent_dir>` and enables the cpu, memory and pids
/// controllers, so a host that cannot limit runs is reported here rather than at the first run.
pub fn detect(agent_dir: &str) -> Result<Box<dyn CgroupDriver>, CgroupError> {
    let proc_self_cgroup = read_text(Path::new("/proc/self/cgroup"))?;
    let mountinfo = read_text(Path::new("/proc/self/mountinfo"))?;
    match detect_layout(&proc_self_cgroup, &mountinfo)? {
        CgroupLayout::Unified { own_dir } => {
            let driver = V2Driver::new(own_dir.clone(), agent_dir)?;
            let missing = driver.unavailable_controllers();
            if !missing.is_empty() {
                return Err(CgroupError::ControllersUnavailable { dir: own_dir, missing: missing.join(", ") });
            }
            Ok(Box::new(driver))
        }
        CgroupLayout::Legacy { hierarchies } => Ok(Box::new(V1Driver::new(hierarchies, agent_dir)?)),
    }
}

/// The pure part of [`detect`], over the texts of `/proc/self/cgroup` and `/proc/self/mountinfo`.
pub fn detect_layout(proc_self_cgroup: &str, mountinfo: &str) -> Result<CgroupLayout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo)?;
    let memberships = parse_proc_cgroup(proc_self_cgroup)?;

    // Later mounts on the same point hide earlier ones (cgroup2 over the tmpfs, for one).
    let root_mount = mounts.iter().rev().find(|mount| mount.mount_point == Path::new(CGROUP_ROOT));
    if let Some(mount) = root_mount
        && mount.fs_type == "cgroup2"
    {
        let membership = memberships
            .iter()
            .find(|membership| membership.hierarchy_id == 0)
            .ok_or_else(|| CgroupError::Layout("cgroup2 is mounted but /proc/self/cgroup has no `0::` line".into()))?;
        let own_dir = own_dir_in_mount(mount, &membership.path).ok_or_else(|| {
            CgroupError::Layout(format!(
                "our cgroup {} is not visible under the cgroup2 mount at {CGROUP_ROOT}",
                membership.path.display()
            ))
        })?;
        return Ok(CgroupLayout::Unified { own_dir });
    }

    let hierarchies: Vec<V1Hierarchy> = memberships
        .iter()
        .filter(|membership| membership.hierarchy_id != 0 && !membership.controllers.is_empty())
        .filter_map(|membership| {
            mounts
                .iter()
                .filter(|mount| {
                    mount.fs_type == "cgroup"
                        && membership.controllers.iter().all(|controller| mount.super_options.contains(controller))
                })
                .find_map(|mount| own_dir_in_mount(mount, &membership.path))
                .map(|own_dir| V1Hierarchy { controllers: membership.controllers.clone(), own_dir })
        })
        .collect();
    if hierarchies.is_empty() {
        return Err(CgroupError::Layout(format!(
            "no cgroup2 mount at {CGROUP_ROOT} and none of our cgroup v1 hierarchies is mounted"
        )));
    }
    Ok(CgroupLayout::Legacy { hierarchies })
}

/// One line of `/proc/self/mountinfo`, reduced to what locating cgroups needs.
struct Mount {
    /// The directory of the filesystem that appears at `mount_point`; not `/` for bind mounts
    /// and for cgroupfs mounted inside a cgroup namespace.
    root: PathBuf,
    mount_point: PathBuf,
    fs_type: String,
    super_options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, CgroupError> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let malformed = || CgroupError::Layout(format!("malformed mountinfo line {line:?}"));
            let fields: Vec<&str> = line.split(' ').collect();
            // Optional fields (`shared:N`, ...) vary in number and end at a lone `-`.
            let separator = fields.iter().skip(6).position(|field| *field == "-").ok_or_else(malformed)? + 6;
            let (Some(root), Some(mount_point), Some(fs_type), Some(super_options)) =
                (fields.get(3), fields.get(4), fields.get(separator + 1), fields.get(separator + 3))
            else {
                return Err(malformed());
            };
            Ok(Mount {
                root: unescape_mountinfo(root),
                mount_point: unescape_mountinfo(mount_point),
                fs_type: (*fs_type).to_owned(),
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\` and three octal digits.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes
            .get(index + 1..index + 4)
            .filter(|digits| bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit)));
        match octal.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
struct Membership {
    hierarchy_id: u32,
    controllers: Vec<String>,
    path: PathBuf,
}

fn parse_proc_cgroup(text: &str) -> Result<Vec<Membership>, CgroupError> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let malformed = || CgroupError::Layout(format!("malformed /proc/self/cgroup line {line:?}"));
            // The path is last and may itself contain colons.
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(malformed());
            };
            Ok(Membership {
                hierarchy_id: id.parse().map_err(|_| malformed())?,
                controllers: controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// Maps a cgroup path from `/proc/self/cgroup` to a directory under `mount`, or `None` when the
/// mount does not show that cgroup (e.g. it lies outside our cgroup namespace and reads `/..`).
fn own_dir_in_mount(mount: &Mount, cgroup_path: &Path) -> Option<PathBuf> {
    let relative = cgroup_path.strip_prefix(&mount.root).ok()?;
    let mut dir = mount.mount_point.clone();
    for component in relative.components() {
        match component {
            Component::Normal(part) => dir.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(dir)
}

/// Guards every path we build from a name: anything but one plain component could climb out of
/// the agent's directory.
pub fn validate_component(name: &str) -> Result<(), CgroupError> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(part)), None) if part == name && !name.contains('\0') => Ok(()),
        _ => Err(CgroupError::InvalidName(name.to_owned())),
    }
}

fn read_text(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })
}

/// `None` when the file does not exist, i.e. the controller or kernel feature is absent.
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path: path.to_owned(), source }),
    }
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim()
        .parse()
        .map_err(|_| CgroupError::Parse { path: path.to_owned(), detail: format!("{:?} is not a number", text.trim()) })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read_text(path)?)
}

/// The value of `key` in a flat-keyed file (`key value` per line), `None` if the key is absent.
fn keyed_u64(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(name, _)| *name == key)
        .map(|(_, value)| parse_u64(path, value))
        .transpose()
}

/// Writes in a single write(2), as cgroup files require, and without O_CREAT so a missing
/// control file is reported instead of silently created.
fn write_raw(path: &Path, value: &str) -> io::Result<()> {
    fs::OpenOptions::new().write(true).truncate(true).open(path)?.write_all(value.as_bytes())
}

fn write_value(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_raw(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Returns whether the file existed.
fn write_if_present(path: &Path, value: &str) -> Result<bool, CgroupError> {
    match write_raw(path, value) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CgroupError::Write { path: path.to_owned(), value: value.to_owned(), source }),
    }
}

/// Creates a directory that may already exist.
fn ensure_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create { path: path.to_owned(), source }),
    }
}

fn create_new_dir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|source| CgroupError::Create { path: path.to_owned(), source })
}

/// Names of the child directories; an absent directory has none.
fn child_dirs(dir: &Path) -> Result<Vec<OsString>, CgroupError> {
    let read_error = |source| CgroupError::Read { path: dir.to_owned(), source };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(read_error(source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error)?;
        if entry.file_type().map_err(read_error)?.is_dir() {
            names.push(entry.file_name());
        }
    }
    Ok(names)
}

/// Pids in the given cgroups and their descendants, sorted and deduplicated. Cgroups that are
/// gone contribute nothing.
fn pids_in(dirs: &[PathBuf]) -> Result<Vec<i32>, CgroupError> {
    fn collect(dir: &Path, pids: &mut Vec<i32>) -> Result<(), CgroupError> {
        let procs = dir.join("cgroup.procs");
        let Some(text) = read_optional(&procs)? else {
            return Ok(());
        };
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let pid = line
                .trim()
                .parse()
                .map_err(|_| CgroupError::Parse { path: procs.clone(), detail: format!("{line:?} is not a pid") })?;
            pids.push(pid);
        }
        for child in child_dirs(dir)? {
            collect(&dir.join(child), pids)?;
        }
        Ok(())
    }
    let mut pids = Vec::new();
    for dir in dirs {
        collect(dir, &mut pids)?;
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Sends SIGKILL once to every process in `dirs` (and below).
///
/// A pid read from cgroup.procs may be recycled before we signal it, so each one is first pinned
/// with a pidfd and the cgroups are listed again: a pid still listed after pinning means the
/// pidfd refers either to that member or to a process that has already died, which the kernel
/// refuses to signal. Only on kernels without pidfds (< 5.3) is the pid signalled directly.
fn kill_members(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let listed = pids_in(dirs)?;
    for batch in listed.chunks(KILL_BATCH) {
        let mut pinned = Vec::with_capacity(batch.len());
        for &pid in batch {
            match super::pidfd_open(pid) {
                Ok(pidfd) => pinned.push((pid, Some(pidfd))),
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => pinned.push((pid, None)),
                Err(source) => return Err(CgroupError::Signal { pid, source }),
            }
        }
        let still_listed = pids_in(dirs)?;
        for (pid, pidfd) in pinned {
            if still_listed.binary_search(&pid).is_err() {
                continue;
            }
            let sent = match &pidfd {
                Some(pidfd) => pidfd_send_sigkill(pidfd),
                None => kill_pid(pid),
            };
            match sent {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => return Err(CgroupError::Signal { pid, source }),
            }
        }
    }
    Ok(())
}

fn pidfd_send_sigkill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) accepts a null siginfo (meaning "as kill(2) would"); the fd
    // stays open for the duration of the call because we hold a borrow of it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            libc::c_long::from(pidfd.as_raw_fd()),
            libc::c_long::from(libc::SIGKILL),
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn kill_pid(pid: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches none of our memory.
    if unsafe { libc::kill(pid, libc::SIGKILL) } < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Repeats `kill_round` until no process is left in `dirs`, for at most [`DRAIN_TIMEOUT`].
fn kill_until_empty(
    dirs: &[PathBuf],
    mut kill_round: impl FnMut() -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        kill_round()?;
        let left = pids_in(dirs)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let path = dirs.first().cloned().unwrap_or_default();
            return Err(CgroupError::KillTimeout { path, timeout: DRAIN_TIMEOUT });
        }
        wait_for_exits(&left, deadline);
    }
}

/// Waits until the processes `pids` (a batch of them) have ended, or until `deadline`. Each is
/// pinned with a pidfd, which becomes readable once its process has exited, and so has left its
/// cgroup. Where pidfds are missing (Linux < 5.3) this falls back to one short sleep.
fn wait_for_exits(pids: &[i32], deadline: Instant) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut pinned = Vec::with_capacity(pids.len().min(KILL_BATCH));
    for &pid in pids.iter().take(KILL_BATCH) {
        match super::pidfd_open(pid) {
            Ok(pidfd) => pinned.push(pidfd),
            Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
                thread::sleep(DRAIN_POLL);
                return;
            }
            // Already gone (ESRCH), or not ours to wait for: the caller lists again.
            Err(_) => {}
        }
    }
    while !pinned.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(timeout) = PollTimeout::try_from(left) else { return };
        let mut fds: Vec<PollFd<'_>> =
            pinned.iter().map(|pidfd| PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, timeout) {
            Ok(0) => return,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                thread::sleep(DRAIN_POLL);
                return;
            }
        }
        let exited: Vec<bool> = fds.iter().map(|fd| fd.revents().is_some_and(|revents| !revents.is_empty())).collect();
        drop(fds);
        let mut exited = exited.into_iter();
        pinned.retain(|_| !exited.next().unwrap_or(false));
    }
}

/// Removes a cgroup directory and any cgroups below it, children first. rmdir fails with EBUSY
/// until exiting tasks have fully left, so that is retried for a bounded time.
fn remove_cgroup_tree(dir: &Path) -> Result<(), CgroupError> {
    fn remove(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
        for child in child_dirs(dir)? {
            remove(&dir.join(child), deadline)?;
        }
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(DRAIN_POLL);
                }
                Err(source) => {
                    return Err(CgroupError::Remove { path: dir.to_owned(), source });
                }
            }
        }
    }
    remove(dir, Instant::now() + DRAIN_TIMEOUT)
}

/// Kills what is still in `cgroup` (a safety net: its processes should be gone by now) and removes
/// it. Blocking: it waits for the freezer and for dying tasks, so callers keep it off the async
/// workers.
pub fn empty_and_remove(cgroup: &dyn RunCgroup) -> Result<(), CgroupError> {
    if !cgroup.pids().unwrap_or_default().is_empty() {
        cgroup.kill_all()?;
    }
    cgroup.remove()
}

/// Kills and removes every run cgroup in `names`, continuing past failures so one stuck cgroup
/// does not keep the others around. Returns how many were removed, or the first failure.
fn remove_stale_runs(names: Vec<OsString>, open: impl Fn(&OsStr) -> Box<dyn RunCgroup>) -> Result<usize, CgroupError> {
    let mut removed = 0;
    let mut first_error = None;
    for name in names {
        let run = open(&name);
        match run.kill_all().and_then(|()| run.remove()) {
            Ok(()) => removed += 1,
            Err(error) => {
                tracing::warn!(cgroup = ?name, %error, "cannot remove a stale run cgroup");
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(removed),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};
    use std::slice;

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    /// This machine: v1 controllers, each in its own hierarchy, plus a controller-less cgroup2
    /// at /sys/fs/cgroup/unified; the agent sits in a memory sub-cgroup only.
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/8551b
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";
    const HYBRID_MOUNTINFO: &str = "\
24 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
22 24 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    fn own_dir_of<'a>(hierarchies: &'a [V1Hierarchy], controller: &str) -> Option<&'a Path> {
        hierarchies
            .iter()
            .find(|hierarchy| hierarchy.controllers.iter().any(|name| name == controller))
            .map(|hierarchy| hierarchy.own_dir.as_path())
    }

    #[test]
    fn hybrid_layout_is_v1_and_ignores_the_unified_mount() -> TestResult {
        let CgroupLayout::Legacy { hierarchies } = detect_layout(HYBRID_CGROUP, HYBRID_MOUNTINFO)? else {
            return Err("hybrid layout detected as v2".into());
        };
        assert_eq!(hierarchies.len(), 9);
        assert_eq!(own_dir_of(&hierarchies, "memory"), Some(Path::new("/sys/fs/cgroup/memory/process_api/8551b")));
        assert_eq!(own_dir_of(&hierarchies, "cpu"), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(own_dir_of(&hierarchies, "cpuacct"), Some(Path::new("/sys/fs/cgroup/cpuacct")));
        assert_eq!(own_dir_of(&hierarchies, "name=systemd"), Some(Path::new("/sys/fs/cgroup/systemd")));
        assert!(hierarchies.iter().all(|hierarchy| !hierarchy.own_dir.starts_with("/sys/fs/cgroup/unified")));
        V1Driver::new(hierarchies, "bkg")?;
        Ok(())
    }

    #[test]
    fn pure_v2_layout_is_unified() -> TestResult {
        let cgroup = "0::/system.slice/bkg.service\n";
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        let own_dir = PathBuf::from("/sys/fs/cgroup/system.slice/bkg.service");
        assert_eq!(detect_layout(cgroup, mountinfo)?, CgroupLayout::Unified { own_dir });
        Ok(())
    }

    #[test]
    fn cgroup2_mounted_over_the_tmpfs_counts_as_unified() -> TestResult {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
50 31 0:40 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
";
        let own_dir = PathBuf::from("/sys/fs/cgroup/user.slice");
        assert_eq!(detect_layout("0::/user.slice\n", mountinfo)?, CgroupLayout::Unified { own_dir });
        Ok(())
    }

    /// A container: cgroupfs mounted with the container's cgroup as root (mountinfo field 4),
    /// cpu and cpuacct co-mounted, and a mount point with a space in it.
    #[test]
    fn co_mounted_v1_with_non_root_mounts_and_escapes() -> TestResult {
        let cgroup = "\
12:pids:/docker/abc
11:cpu,cpuacct:/docker/abc/job
10:memory:/docker/abc
9:freezer:/docker/abc
1:name=systemd:/docker/abc
0::/
";
        let mountinfo = "\
700 699 0:50 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
701 700 0:27 /docker/abc /sys/fs/cgroup/systemd ro,nosuid master:11 - cgroup cgroup rw,xattr,name=systemd
702 700 0:31 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,nosuid master:16 master:17 - cgroup cgroup rw,cpu,cpuacct
703 700 0:33 /docker/abc /sys/fs/cgroup/memory rw,nosuid master:18 - cgroup cgroup rw,memory
704 700 0:35 /docker/abc /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
705 700 0:36 /docker/abc /srv/cgroup\\040freezer rw - cgroup cgroup rw,freezer
";
        let CgroupLayout::Legacy { hierarchies } = detect_layout(cgroup, mountinfo)? else {
            return Err("v1 layout detected as v2".into());
        };
        let cpu = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/job");
        assert!(hierarchies.contains(&V1Hierarchy { controllers: vec!["cpu".into(), "cpuacct".into()], own_dir: cpu }));
        assert_eq!(own_dir_of(&hierarchies, "memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        assert_eq!(own_dir_of(&hierarchies, "freezer"), Some(Path::new("/srv/cgroup freezer")));
        V1Driver::new(hierarchies, "bkg")?;
        Ok(())
    }

    #[test]
    fn cgroups_outside_the_mounted_root_are_not_used() -> TestResult {
        let cgroup = "4:memory:/../other\n3:pids:/elsewhere\n";
        let mountinfo = "\
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 /mine /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        assert!(matches!(detect_layout(cgroup, mountinfo), Err(CgroupError::Layout(_))));
        Ok(())
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c\134d\012e"), PathBuf::from("/a b\tc\\d\ne"));
        assert_eq!(unescape_mountinfo(r"/trailing\04"), PathBuf::from(r"/trailing\04"));
        assert_eq!(unescape_mountinfo(r"/not\999octal"), PathBuf::from(r"/not\999octal"));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(detect_layout("x:memory:/\n", HYBRID_MOUNTINFO).is_err());
        assert!(detect_layout(HYBRID_CGROUP, "1 2 3:4 / /sys rw\n").is_err());
    }

    #[test]
    fn names_must_be_one_plain_component() {
        for good in ["bkg", "bkg-test-42", "run.1", "..x"] {
            assert!(validate_component(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/a", "a/", "a\0b"] {
            assert!(validate_component(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_the_kernel_would_refuse_are_rejected() {
        let valid = CgroupLimits { cpu_millis: 10, memory_bytes: 1, pids_max: 1 };
        assert!(valid.validate().is_ok());
        assert_eq!(valid.cpu_quota_us(), 1000);
        for invalid in [
            CgroupLimits { cpu_millis: 9, ..valid },
            CgroupLimits { cpu_millis: u64::MAX, ..valid },
            CgroupLimits { memory_bytes: 0, ..valid },
            CgroupLimits { pids_max: 0, ..valid },
        ] {
            assert!(matches!(invalid.validate(), Err(CgroupError::InvalidLimits(_))), "{invalid:?}");
        }
    }

    const REAL_LIMITS: CgroupLimits = CgroupLimits { cpu_millis: 500, memory_bytes: 256 << 20, pids_max: 32 };

    /// Kills and removes a test agent's directories even when the test fails halfway.
    struct AgentDirCleanup {
        dirs: Vec<PathBuf>,
    }

    impl AgentDirCleanup {
        fn for_detected_layout(agent_dir: &str) -> Result<Self, Box<dyn Error>> {
            let layout =
                detect_layout(&fs::read_to_string("/proc/self/cgroup")?, &fs::read_to_string("/proc/self/mountinfo")?)?;
            let dirs = match layout {
                CgroupLayout::Unified { own_dir } => vec![own_dir.join(agent_dir)],
                CgroupLayout::Legacy { hierarchies } => {
                    hierarchies.into_iter().map(|hierarchy| hierarchy.own_dir.join(agent_dir)).collect()
                }
            };
            Ok(Self { dirs })
        }
    }

    impl Drop for AgentDirCleanup {
        fn drop(&mut self) {
            for dir in &self.dirs {
                if let Err(error) = kill_members(slice::from_ref(dir)).and_then(|()| remove_cgroup_tree(dir)) {
                    eprintln!("cleanup of {} failed: {error}", dir.display());
                }
            }
        }
    }

    /// A child we started; killed and reaped on drop unless the test reaped it already.
    struct TestChild(Child);

    impl TestChild {
        fn spawn_sleep() -> Result<Self, Box<dyn Error>> {
            Ok(Self(Command::new("sleep").arg("30").spawn()?))
        }

        fn pid(&self) -> Result<i32, Box<dyn Error>> {
            Ok(i32::try_from(self.0.id())?)
        }

        fn join(&self, run: &dyn RunCgroup) -> TestResult {
            for path in run.procs_paths() {
                fs::write(&path, self.pid()?.to_string())?;
            }
            Ok(())
        }

        fn assert_killed(&mut self) -> TestResult {
            assert_eq!(self.0.wait()?.signal(), Some(libc::SIGKILL));
            Ok(())
        }
    }

    impl Drop for TestChild {
        fn drop(&mut self) {
            // Child::kill does not signal once the child has been reaped.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn run_dirs(run: &dyn RunCgroup) -> Vec<PathBuf> {
        run.procs_paths().iter().filter_map(|path| path.parent().map(Path::to_path_buf)).collect()
    }

    #[test]
    fn real_run_cgroup_lifecycle() -> TestResult {
        let agent_dir = format!("bkg-test-{}-lifecycle", std::process::id());
        let cleanup = AgentDirCleanup::for_detected_layout(&agent_dir)?;
        let driver = detect(&agent_dir)?;
        eprintln!("detected {}", driver.version());
        let run = driver.create("run-1", &REAL_LIMITS)?;
        let dirs = run_dirs(run.as_ref());
        assert!(dirs.iter().all(|dir| dir.is_dir() && cleanup.dirs.iter().any(|agent| dir.starts_with(agent))));

        let mut child = TestChild::spawn_sleep()?;
        child.join(run.as_ref())?;
        assert!(run.pids()?.contains(&child.pid()?));
        let usage = run.usage()?;
        assert_eq!(usage.oom_kills, 0);

        run.set_limits(&CgroupLimits { memory_bytes: 64 << 20, ..REAL_LIMITS })?;
        let memory_file = match driver.version() {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        let limit =
            dirs.iter().find_map(|dir| fs::read_to_string(dir.join(memory_file)).ok()).ok_or("no memory limit file")?;
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
        // Raising takes the opposite write order to lowering on v1 (memsw before memory).
        run.set_limits(&CgroupLimits { memory_bytes: 512 << 20, ..REAL_LIMITS })?;
        let limit =
            dirs.iter().find_map(|dir| fs::read_to_string(dir.join(memory_file)).ok()).ok_or("no memory limit file")?;
        assert_eq!(limit.trim(), (512u64 << 20).to_string());

        let (weight_file, lowest, default) = match driver.version() {
            CgroupVersion::V1 => ("cpu.shares", "2", "1024"),
            CgroupVersion::V2 => ("cpu.weight", "1", "100"),
        };
        let weight = || dirs.iter().find_map(|dir| fs::read_to_string(dir.join(weight_file)).ok());
        for (background, expected) in [(true, lowest), (false, default)] {
            run.set_background(background)?;
            assert_eq!(weight().ok_or("no CPU weight file")?.trim(), expected, "background: {background}");
        }

        run.kill_all()?;
        child.assert_killed()?;
        assert!(run.pids()?.is_empty());
        run.remove()?;
        for dir in &dirs {
            assert!(!dir.exists(), "{} is left behind", dir.display());
        }
        Ok(())
    }

    #[test]
    fn real_kill_all_kills_processes_forked_inside() -> TestResult {
        let agent_dir = format!("bkg-test-{}-forks", std::process::id());
        let _cleanup = AgentDirCleanup::for_detected_layout(&agent_dir)?;
        let driver = detect(&agent_dir)?;
        let run = driver.create("run-1", &REAL_LIMITS)?;
        // The shell forks only after it has joined, so its children start inside the cgroup.
        let mut shell = TestChild(
            Command::new("sh")
                .args(["-c", "read go; for i in 1 2 3 4 5; do sleep 30 & done; wait"])
                .stdin(std::process::Stdio::piped())
                .spawn()?,
        );
        shell.join(run.as_ref())?;
        shell.0.stdin.take().ok_or("no stdin")?.write_all(b"go\n")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while run.pids()?.len() < 6 {
            if Instant::now() > deadline {
                return Err(format!("the shell did not fork: {:?}", run.pids()?).into());
            }
            thread::sleep(DRAIN_POLL);
        }
        run.kill_all()?;
        shell.assert_killed()?;
        assert!(run.pids()?.is_empty());
        run.remove()?;
        Ok(())
    }

    /// What the sandbox init does (engine/init.rs `outer`): a single-threaded process writes `0`
    /// into each join file, then forks; both must be in every hierarchy of `run`.
    fn assert_a_shell_joins_itself(run: &dyn RunCgroup) -> TestResult {
        let mut script = String::new();
        for join in run.join_files() {
            script.push_str(&format!("echo 0 > '{}' || exit 1; ", join.display()));
        }
        script.push_str("sleep 30 & echo forked; wait");
        let mut shell =
            TestChild(Command::new("sh").args(["-c", &script]).stdout(std::process::Stdio::piped()).spawn()?);
        let mut forked = String::new();
        let stdout = shell.0.stdout.take().ok_or("no stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut forked)?;
        assert_eq!(forked.trim(), "forked", "the shell could not join");
        let shell_pid = shell.pid()?.to_string();
        for procs in run.procs_paths() {
            let listed = fs::read_to_string(&procs)?;
            assert_eq!(listed.lines().count(), 2, "{}: {listed}", procs.display());
            assert!(listed.lines().any(|pid| pid == shell_pid), "{}: {listed}", procs.display());
        }
        run.kill_all()?;
        shell.assert_killed()?;
        Ok(())
    }

    #[test]
    fn real_a_single_threaded_process_joins_itself_through_the_join_files() -> TestResult {
        let agent_dir = format!("bkg-test-{}-self-join", std::process::id());
        let _cleanup = AgentDirCleanup::for_detected_layout(&agent_dir)?;
        let driver = detect(&agent_dir)?;
        let run = driver.create("run-1", &REAL_LIMITS)?;
        assert_a_shell_joins_itself(run.as_ref())?;
        run.remove()?;
        Ok(())
    }

    #[test]
    fn real_remove_stale_kills_and_removes_a_previous_agents_runs() -> TestResult {
        let agent_dir = format!("bkg-test-{}-stale", std::process::id());
        let _cleanup = AgentDirCleanup::for_detected_layout(&agent_dir)?;
        let mut child = TestChild::spawn_sleep()?;
        let dirs = {
            let previous_agent = detect(&agent_dir)?;
            let left_behind = previous_agent.create("left-behind", &REAL_LIMITS)?;
            child.join(left_behind.as_ref())?;
            run_dirs(left_behind.as_ref())
        };

        let agent = detect(&agent_dir)?;
        assert_eq!(agent.remove_stale()?, 1);
        child.assert_killed()?;
        for dir in &dirs {
            assert!(!dir.exists(), "{} is left behind", dir.display());
        }
        assert_eq!(agent.remove_stale()?, 0);
        Ok(())
    }

    /// The hybrid layout's controller-less cgroup2 still offers cgroup.procs and cgroup.kill.
    #[test]
    fn real_v2_without_controllers_on_the_hybrid_unified_mount() -> TestResult {
        let unified = Path::new("/sys/fs/cgroup/unified");
        let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo")?)?;
        let Some(mount) = mounts.iter().find(|mount| mount.fs_type == "cgroup2" && mount.mount_point == unified) else {
            crate::engine::test_support::feature_missing(&format!("no cgroup2 is mounted at {}", unified.display()));
            return Ok(());
        };
        let memberships = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup")?)?;
        let membership = memberships.iter().find(|membership| membership.hierarchy_id == 0).ok_or("no 0:: line")?;
        let own_dir = own_dir_in_mount(mount, &membership.path).ok_or("our cgroup is not under the mount")?;

        let agent_dir = format!("bkg-test-{}-unified", std::process::id());
        let _cleanup = AgentDirCleanup { dirs: vec![own_dir.join(&agent_dir)] };
        let driver = V2Driver::new(own_dir.clone(), &agent_dir)?;
        let run = driver.create("run-1", &REAL_LIMITS)?;
        let dir = own_dir.join(&agent_dir).join("run-1");
        assert_eq!(run.procs_paths(), vec![dir.join("cgroup.procs")]);
        assert!(dir.join("cgroup.kill").exists());

        let mut child = TestChild::spawn_sleep()?;
        child.join(run.as_ref())?;
        assert_eq!(run.pids()?, vec![child.pid()?]);
        run.usage()?;
        run.kill_all()?;
        child.assert_killed()?;
        run.remove()?;
        assert!(!dir.exists());

        let run = driver.create("run-2", &REAL_LIMITS)?;
        assert_eq!(run.join_files(), run.procs_paths());
        assert_a_shell_joins_itself(run.as_ref())?;
        run.remove()?;
        Ok(())
    }
}
