//! The sandbox's init: `bkg-sandbox-init` (bkg-agent/src/bin), or the agent's binary started
//! again as `bkg-agent __sandbox-init` where that is not installed. It applies a
//! `SandboxPlan` without making decisions of its own, waits for a `GoOrder`, runs the code as an
//! unprivileged user in its own user namespace, and reports how it ended.
//!
//! Process tree: the agent spawns this (the "outer" init, in the host pid namespace), which joins
//! the run's cgroups, unshares every namespace but the user one, starts the sandbox's pid 1 as
//! the agent's own child, reports its pid and exits. Pid 1 builds the root, waits for the order,
//! forks the code (pid 2) and reaps. When pid 1 exits the kernel kills everything left in the
//! pid namespace, so no daemon outlives a run.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork};
use serde::{Deserialize, Serialize};

use super::control::{self, CONTROL_FD, FromInit, GoOrder, ToInit};
use super::plan::{CPU_DIR, IdMap, KEPT_FILES_OWNER, MountStep, Owner, SandboxPlan, id_map_text};
use super::seccomp_notify::{self, Supervisor};
use super::{landlock, loopdev, seccomp};

/// A failed step of building or starting the sandbox.
#[derive(Debug)]
pub(super) struct StageError {
    stage: String,
    message: String,
}

impl StageError {
    fn new(stage: impl Into<String>, error: impl std::fmt::Display) -> Self {
        Self { stage: stage.into(), message: error.to_string() }
    }
}

trait Stage<T> {
    fn stage(self, stage: &str) -> Result<T, StageError>;
}

impl<T, E: std::fmt::Display> Stage<T> for Result<T, E> {
    fn stage(self, stage: &str) -> Result<T, StageError> {
        self.map_err(|error| StageError::new(stage, error))
    }
}

/// The namespaces the outer init makes for a sandbox, besides its pid namespace (pid 1's) and the
/// code's own user namespace; the zygote's forks join these and the pid namespace.
pub(super) const SANDBOX_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// The umask of the init, and so of the code (which the zygote's forks take as well).
pub(super) const SANDBOX_UMASK: libc::mode_t = 0o022;

/// Entry point of `bkg-sandbox-init` and `bkg-agent __sandbox-init`. Never returns.
pub fn main() -> ! {
    // What the init makes in the new root (directories, mount points, files) is for the
    // sandbox to read; the agent's private umask must not leak into it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(SANDBOX_UMASK));
    // Our stdin is the control socket, and the sandbox's stdin comes with the plan
    // (engine/sandbox.rs, `spawn_init`). The socket moves to CONTROL_FD, where the code's
    // process closes it with every other descriptor of ours.
    // SAFETY: dup2 takes two descriptor numbers and no pointer; CONTROL_FD is no descriptor of
    // this process's own (the agent's are close-on-exec).
    if unsafe { libc::dup2(libc::STDIN_FILENO, CONTROL_FD) } != CONTROL_FD {
        // Without the socket there is no one to tell; the agent reads the end of the stream.
        std::process::exit(1);
    }
    // SAFETY: CONTROL_FD is the duplicate just made, and nothing else owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let outcome = match control::read_with_fd_blocking::<ToInit>(&control) {
        Ok((ToInit::Prepare(plan), Some(stdin))) => take_stdin(stdin).and_then(|()| outer(&plan, &mut control)),
        Ok((ToInit::Prepare(_), None)) => {
            Err(StageError::new("handshake", "the plan came without the sandbox's stdin"))
        }
        Ok((ToInit::Go(_), _)) => Err(StageError::new("handshake", "expected a plan first")),
        Err(error) => Err(StageError::new("handshake", error)),
    };
    if let Err(error) = outcome {
        // The agent may be gone already; nothing more can be done then.
        let _ = control::write_blocking(&mut control, &FromInit::Failed { stage: error.stage, message: error.message });
    }
    std::process::exit(1)
}

/// Puts the sandbox's stdin, which came with the plan, where the code will find it.
fn take_stdin(stdin: OwnedFd) -> Result<(), StageError> {
    nix::unistd::dup2_stdin(&stdin).stage("take the sandbox's stdin")
}

fn outer(plan: &SandboxPlan, control: &mut UnixStream) -> Result<(), StageError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).stage("set parent-death signal")?;
    if nix::unistd::getppid().as_raw() as u32 != plan.agent_pid {
        return Err(StageError::new("check parent", "the agent that started this sandbox is gone"));
    }
    // Connected here, while the host's files are still in view; without it the interpreter
    // is started in the sandbox.
    let zygote = plan.zygote.as_deref().and_then(|path| super::zygote::connect(path).ok());
    // Joining writes `0` (the writer itself) into files that move the calling thread alone on
    // v1 (RunCgroup::join_files): with a second thread the process would be half inside.
    if own_thread_count()? != 1 {
        return Err(StageError::new("join cgroup", "the sandbox init has more than one thread"));
    }
    // A pool sandbox goes to idle priority only once it has joined its cgroup: on v2 the move
    // holds a lock that every fork on the host waits for.
    for join in &plan.cgroup_joins {
        fs::write(join, "0").stage(&format!("join cgroup {}", join.display()))?;
    }
    if plan.background {
        set_scheduling(libc::SCHED_IDLE).stage("lower priority")?;
    }
    unshare(SANDBOX_NAMESPACES).stage("create namespaces")?;
    // Made here, where /proc still shows host pids, for pid 1 to use as it builds the root.
    let idmaps = plan
        .idmaps()
        .into_iter()
        .map(|idmap| Ok((idmap, idmap_user_namespace(idmap)?)))
        .collect::<Result<BTreeMap<_, _>, StageError>>()?;

    // Pid 1 waits on this pipe until its host pid has been reported, so that report is always
    // the first message the agent reads.
    let (go_ahead_read, go_ahead_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage("create start pipe")?;
    // Pid 1 becomes the agent's own child (CLONE_PARENT): the agent reaps it, so its pid stays
    // reserved until then and the agent can always kill it safely, whatever becomes of us.
    let flags = (libc::CLONE_PARENT | libc::CLONE_NEWPID) as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and a null stack duplicates this single-threaded process
    // like fork does; the child only runs code of this function before exiting.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => Err(StageError::new("start pid 1", std::io::Error::last_os_error())),
        0 => {
            drop(go_ahead_write);
            let mut wait = [0u8; 1];
            let _ = File::from(go_ahead_read).read(&mut wait);
            if let Err(error) = pid_one(plan, idmaps, zygote, control) {
                let _ =
                    control::write_blocking(control, &FromInit::Failed { stage: error.stage, message: error.message });
            }
            std::process::exit(0)
        }
        pid => {
            let reported = control::write_blocking(control, &FromInit::Forked { pid: pid as i32 });
            drop(go_ahead_write);
            reported.stage("report pid 1")?;
            std::process::exit(0)
        }
    }
}

/// The user namespaces of the idmapped mounts, one per mapping, held only while the root is built.
type IdmapNamespaces = BTreeMap<IdMap, OwnedFd>;

/// A user namespace whose only mapping is `idmap`, as a descriptor for `mount_setattr`. A
/// process cannot write the full id map of a namespace it is in itself, so a throwaway child
/// enters it and waits while we write its maps and open it.
fn idmap_user_namespace(idmap: IdMap) -> Result<OwnedFd, StageError> {
    let stage = "create the user namespace of an idmapped mount";
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
    let (hold_read, hold_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
    // SAFETY: the outer init is single-threaded; the child only makes system calls and exits.
    match unsafe { fork() }.stage(stage)? {
        ForkResult::Child => {
            drop(ready_read);
            drop(hold_write);
            let entered = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_write, &[u8::from(entered)]);
            // Until the parent is done with us (or gone): its end closing wakes this read.
            let _ = nix::unistd::read(&hold_read, &mut [0u8; 1]);
            // SAFETY: _exit ends this forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_write);
            drop(hold_read);
            let opened = (|| {
                let mut entered = [0u8; 1];
                File::from(ready_read).read_exact(&mut entered)?;
                if entered[0] != 1 {
                    return Err(std::io::Error::other("the kernel refused a new user namespace"));
                }
                let proc_dir = PathBuf::from(format!("/proc/{child}"));
                fs::write(proc_dir.join("uid_map"), id_map_text(&idmap.uid_ranges()))?;
                fs::write(proc_dir.join("gid_map"), id_map_text(&idmap.gid_ranges()))?;
                File::open(proc_dir.join("ns/user")).map(OwnedFd::from)
            })();
            drop(hold_write);
            let _ = waitpid(child, None);
            opened.stage(stage)
        }
    }
}

fn pid_one(
    plan: &SandboxPlan,
    idmaps: IdmapNamespaces,
    zygote: Option<OwnedFd>,
    control: &mut UnixStream,
) -> Result<(), StageError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).stage("set parent-death signal")?;
    // Asked before the root is built, which the zygote's fork waits for (`AskedZygote`); a
    // zygote that cannot be asked leaves pid 1 to start the interpreter itself.
    let mut asked = match (&plan.prestart, zygote) {
        (Some(_), Some(connection)) => AskedZygote::ask(plan, connection).ok(),
        _ => None,
    };
    let disk_device = build_root(plan, &idmaps)?;
    drop(idmaps);
    nix::unistd::sethostname(&plan.hostname).stage("set hostname")?;
    bring_up_loopback().stage("bring up loopback")?;
    // The fork locks down while the filter is compiled.
    if let Some(asked) = asked.as_mut() {
        asked.root_is_built();
    }
    // Compiled while the sandbox waits in the pool, not once the caller is waiting.
    let seccomp = seccomp::compile(&seccomp::sandbox_policy()).stage("compile seccomp filter")?;
    let prestarted = match &plan.prestart {
        Some(prestart) => match prestart_code(plan, prestart, seccomp.clone(), asked) {
            Ok(prestarted) => Some(prestarted),
            Err(error) if error.stage == ZYGOTE_SILENT => return Err(error),
            // A sandbox whose interpreter cannot be started ahead still serves: its run starts cold.
            Err(_) => None,
        },
        None => None,
    };
    control::write_blocking(control, &FromInit::Ready { disk_device }).stage("report ready")?;

    let order = match control::read_blocking::<ToInit>(control) {
        Ok(ToInit::Go(order)) => order,
        Ok(ToInit::Prepare(_)) => {
            return Err(StageError::new("wait for order", "unexpected second plan"));
        }
        // The agent dropped this prepared sandbox (shutdown, pool trimmed): end quietly.
        Err(_) => std::process::exit(0),
    };
    if plan.background {
        // A run waits for everything from here on; the code inherits this priority.
        set_scheduling(libc::SCHED_OTHER).stage("restore priority")?;
    }
    for dir in &order.clear {
        empty_dir(Path::new(dir)).stage(&format!("empty {dir}"))?;
    }
    place_files(&order, plan.ids.sandbox)?;
    pin_cpus(order.cpus)?;
    let fits = plan.prestart.as_ref().is_some_and(|prestart| prestart.fits(&order));
    // The prestarted process takes the run if it fits and takes its order; else it goes.
    let given = prestarted.and_then(|prestarted| match fits {
        true => prestarted.give(plan, &order).map_err(Prestarted::discard).ok(),
        false => {
            prestarted.discard();
            None
        }
    });
    match given {
        Some(given) => watch_code(plan, given.pid, given.supervisor, (true, given.from_zygote), control)?,
        None => run_code(plan, Launch::new(&order, seccomp)?, control)?,
    }
    if order.hold_after_exit {
        // The agent reads the sandbox's files after the code (`return_out_dir`): the mounts
        // stay until it is done and kills pid 1 (or drops the socket, which ends this read).
        let _ = control::read_blocking::<ToInit>(control);
    }
    Ok(())
}

/// Threads of this process (`/proc/self/stat` field 20).
fn own_thread_count() -> Result<u64, StageError> {
    let stat = fs::read_to_string("/proc/self/stat").stage("read /proc/self/stat")?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|threads| threads.parse().ok())
        .ok_or_else(|| StageError::new("read /proc/self/stat", "no thread count in it"))
}

/// Sets this process's scheduling policy (`SCHED_IDLE` or `SCHED_OTHER`, priority 0); the
/// processes it starts afterwards inherit it. Async-signal-safe: the agent calls it between
/// fork and exec (engine/sandbox.rs).
pub(super) fn set_scheduling(policy: libc::c_int) -> std::io::Result<()> {
    set_scheduling_of(Pid::from_raw(0), policy)
}

/// Sets the scheduling policy of `pid` (0: this process), priority 0.
fn set_scheduling_of(pid: Pid, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, valid for the call.
    if unsafe { libc::sched_setscheduler(pid.as_raw(), policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins pid 1, and so the code it forks, to `count` of the CPUs the agent may use, and shows
/// just those as online in [`CPU_DIR`], where glibc's `get_nprocs` (Python's `os.cpu_count()`)
/// counts them; `nproc`, `os.sched_getaffinity` and Node's `os.availableParallelism()` read the
/// mask. The CFS quota bounds the CPU time either way: this makes the count the code sees match
/// its limit, so thread pools are not sized for the whole host. The CPUs start at the one pid 1
/// runs on as it takes its order: the scheduler has just woken it there, on a CPU it found
/// idle if one was, so the code does not start pinned beside the agent's work or another
/// sandbox's preparation while a CPU is free (a fixed choice by sandbox made a one-CPU run
/// wait behind those on a two-CPU host).
fn pin_cpus(count: usize) -> Result<(), StageError> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let own = sched_getaffinity(Pid::from_raw(0)).stage("read the CPU affinity")?;
    let allowed: Vec<usize> = (0..CpuSet::count()).filter(|cpu| own.is_set(*cpu).unwrap_or(false)).collect();
    // SAFETY: sched_getcpu takes no arguments and only reads which CPU this thread is on.
    let current = usize::try_from(unsafe { libc::sched_getcpu() }).ok();
    let chosen = choose_cpus(&allowed, count, current);
    let mut set = CpuSet::new();
    for cpu in &chosen {
        set.set(*cpu).stage("build the CPU set")?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).stage("set the CPU affinity")?;
    mount(
        Some("tmpfs"),
        CPU_DIR,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=16k,mode=0755"),
    )
    .stage("mount the CPU directory")?;
    let list = format!("{}\n", cpu_list(&chosen));
    for name in ["online", "possible", "present"] {
        fs::write(Path::new(CPU_DIR).join(name), &list).stage("write the online CPUs")?;
    }
    mount(
        None::<&str>,
        CPU_DIR,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .stage("make the CPU directory read-only")
}

/// `count` of the `allowed` CPUs (at least one, at most all), taken in turn from `current` (the
/// first allowed one if it is unknown or not allowed).
fn choose_cpus(allowed: &[usize], count: usize, current: Option<usize>) -> Vec<usize> {
    if allowed.is_empty() {
        return Vec::new();
    }
    let count = count.clamp(1, allowed.len());
    let first = current.and_then(|cpu| allowed.iter().position(|allowed| *allowed == cpu)).unwrap_or(0);
    let mut chosen: Vec<usize> = (0..count).map(|index| allowed[(first + index) % allowed.len()]).collect();
    chosen.sort_unstable();
    chosen
}

/// A CPU list as sysfs writes it: `0-3,6`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &cpu in cpus {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == cpu => *end = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    ranges
        .iter()
        .map(|(start, end)| if start == end { start.to_string() } else { format!("{start}-{end}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds the sandbox's root; returns the loop device its disk is attached to.
fn build_root(plan: &SandboxPlan, idmaps: &IdmapNamespaces) -> Result<PathBuf, StageError> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .stage("make mounts private")?;

    let device = loopdev::attach(&plan.disk_image).stage("attach disk image")?;
    mount(
        Some(&device.path),
        &plan.disk_mount_dir,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        // The image's inode tables were left unwritten by mkfs (lazy_itable_init); without
        // this the kernel would start zeroing them in the background, megabytes per sandbox.
        Some(match plan.disk_barriers {
            true => "noinit_itable",
            false => "noinit_itable,nobarrier",
        }),
    )
    .stage("mount disk image")?;
    let disk_device = device.path.clone();
    drop(device);

    let root = &plan.root_dir;
    let tmpfs_options = format!("size={},mode=0755", plan.root_tmpfs_bytes);
    mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(tmpfs_options.as_str()))
        .stage("mount root tmpfs")?;

    for step in &plan.steps {
        apply_step(plan, step, idmaps)?;
    }

    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .stage("make root read-only")?;

    nix::unistd::chdir(root).stage("enter new root")?;
    // Stacking the old root under the new one and detaching it leaves no path back to the host.
    nix::unistd::pivot_root(".", ".").stage("pivot root")?;
    umount2(".", MntFlags::MNT_DETACH).stage("detach old root")?;
    nix::unistd::chdir("/").stage("enter /")?;
    Ok(disk_device)
}

/// The sandbox's network namespace has only `lo`, down; up, code can serve and connect on its
/// own private loopback, which is not the host's.
fn bring_up_loopback() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket, used only for the interface-flag ioctls below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `socket` is a descriptor we just opened and own.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the interface named in `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `path` (absolute, inside the sandbox) under the root being built.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn apply_step(plan: &SandboxPlan, step: &MountStep, idmaps: &IdmapNamespaces) -> Result<(), StageError> {
    let root = &plan.root_dir;
    match step {
        MountStep::BindReadOnly { source, target } => {
            let target = inside(root, target);
            make_mount_point(source, &target)?;
            bind(source, &target, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        }
        MountStep::BindDevice { source, target } => {
            let target = inside(root, target);
            make_mount_point(source, &target)?;
            bind(source, &target, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
        }
        MountStep::DiskDir { name, target, mode, shared } => {
            let source = plan.disk_mount_dir.join(name);
            fs::create_dir_all(&source).stage(&format!("create disk directory {name}"))?;
            let owner = if *shared { plan.ids.root } else { plan.ids.sandbox };
            chown(&source, Some(owner), Some(owner)).stage("hand the disk directory to its owner")?;
            fs::set_permissions(&source, fs::Permissions::from_mode(*mode)).stage("set disk directory mode")?;
            let target = inside(root, target);
            fs::create_dir_all(&target).stage(&format!("create {}", target.display()))?;
            bind(&source, &target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        }
        MountStep::KeptDiskDir { name, target, mode, idmap } => {
            let source = plan.disk_mount_dir.join(name);
            let stage = format!("hand disk directory {name} to its owner");
            match fs::symlink_metadata(&source) {
                Ok(meta) if (meta.uid(), meta.gid()) == (KEPT_FILES_OWNER.uid, KEPT_FILES_OWNER.gid) => {}
                Ok(_) => hand_tree_to(&source, KEPT_FILES_OWNER).stage(&stage)?,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir(&source).stage(&format!("create disk directory {name}"))?;
                    chown(&source, Some(KEPT_FILES_OWNER.uid), Some(KEPT_FILES_OWNER.gid)).stage(&stage)?;
                }
                Err(error) => return Err(StageError::new(stage, error.to_string())),
            }
            fs::set_permissions(&source, fs::Permissions::from_mode(*mode)).stage("set disk directory mode")?;
            let stage = format!("show disk directory {name} at {}", target.display());
            let userns = idmaps.get(idmap).ok_or_else(|| StageError::new(&stage, "its idmap was not made"))?;
            let mount_point =
                open_mount_point(root, target, true, None).map_err(|message| StageError::new(&stage, message))?;
            let opened = open_source(&source, false).map_err(|message| StageError::new(&stage, message))?;
            bind_as_owner((&opened, &source), &mount_point, false, userns)
                .map_err(|message| StageError::new(stage, message))
        }
        MountStep::Symlink { link, points_to } => {
            let link = inside(root, link);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).stage("create symlink parent")?;
            }
            symlink(points_to, &link).stage(&format!("create symlink {}", link.display()))
        }
        MountStep::Dir { path, mode } => {
            let path = inside(root, path);
            fs::create_dir_all(&path).stage(&format!("create {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).stage("set directory mode")
        }
        MountStep::File { path, contents, mode } => {
            let path = inside(root, path);
            fs::write(&path, contents).stage(&format!("write {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).stage("set file mode")
        }
        MountStep::BindAsOwner { source, target, read_only, idmap, no_links } => {
            let stage = format!("show {} at {}", source.display(), target.display());
            let userns = idmaps.get(idmap).ok_or_else(|| StageError::new(&stage, "its idmap was not made"))?;
            let opened = open_source(source, *no_links).map_err(|message| StageError::new(&stage, message))?;
            let is_dir = nix::sys::stat::fstat(&opened).stage(&stage)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let mount_point = open_mount_point(root, target, is_dir, plan.mount_point_owner(target))
                .map_err(|message| StageError::new(&stage, message))?;
            bind_as_owner((&opened, source), &mount_point, *read_only, userns)
                .map_err(|message| StageError::new(stage, message))
        }
        MountStep::Mask { target } => {
            let target = inside(root, target);
            if !target.exists() {
                return Ok(());
            }
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=4k,mode=0555"),
            )
            .stage(&format!("hide {}", target.display()))
        }
        MountStep::MaskFile { target } => {
            let target = inside(root, target);
            if !target.exists() {
                return Ok(());
            }
            bind(
                &inside(root, Path::new("/dev/null")),
                &target,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            )
        }
        MountStep::Proc { target } => {
            let target = inside(root, target);
            fs::create_dir_all(&target).stage("create /proc")?;
            mount(
                Some("proc"),
                &target,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .stage("mount proc")?;
            // Kernel knobs stay read-only even for a process that somehow regains privilege.
            for knob in ["sys", "sysrq-trigger", "irq", "bus"] {
                let knob = target.join(knob);
                if knob.exists() {
                    bind(
                        &knob,
                        &knob,
                        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    )?;
                }
            }
            Ok(())
        }
        MountStep::PtyInstance { target, max_ptys } => {
            let target = inside(root, target);
            fs::create_dir_all(&target).stage(&format!("create {}", target.display()))?;
            // No `gid=`: a pty belongs to the group of the process that opens it, so the code's
            // own are shown as its group instead of the host's unmapped `tty`.
            let options = format!("newinstance,ptmxmode=0666,mode=0620,max={max_ptys}");
            mount(
                Some("devpts"),
                &target,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some(options.as_str()),
            )
            .stage("mount the sandbox's own devpts")
        }
    }
}

fn make_mount_point(source: &Path, target: &Path) -> Result<(), StageError> {
    let is_dir = fs::metadata(source).stage(&format!("inspect {}", source.display()))?.is_dir();
    if is_dir {
        fs::create_dir_all(target).stage(&format!("create {}", target.display()))
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).stage(&format!("create {}", parent.display()))?;
        }
        File::create(target).map(drop).stage(&format!("create {}", target.display()))
    }
}

/// Bind-mounts `source` on `target`, then applies `flags` (a bind takes them only on remount).
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<(), StageError> {
    let stage = format!("bind {} on {}", source.display(), target.display());
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).stage(&stage)?;
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags, None::<&str>)
        .stage(&stage)
}

/// Opens the mount point `target` (a path inside the root being built at `root`), making what is
/// missing of it: directories, given to `owner` when it has one, and for a file's mount point
/// (`is_dir` false) an empty file. No symbolic link is followed on the way: a volume may be
/// mounted inside a persistent /workspace, which holds what earlier runs' code made, and pid 1
/// builds the root as root before `pivot_root`, where a link would lead into the host's files.
fn open_mount_point(root: &Path, target: &Path, is_dir: bool, owner: Option<u32>) -> Result<OwnedFd, String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;
    // Mounts may be crossed (/workspace is one), links and `..` never.
    let no_links = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
    let path_only = OFlag::O_PATH | OFlag::O_CLOEXEC;
    let refused = |errno: nix::errno::Errno, seen: &Path| match errno {
        nix::errno::Errno::ELOOP => {
            format!("{} is a symbolic link, which a mount point may not go through", seen.display())
        }
        nix::errno::Errno::ENOTDIR => format!("{} is not a directory", seen.display()),
        other => format!("{}: {}", seen.display(), other.desc()),
    };
    let mut dir: OwnedFd = nix::fcntl::open(root, OFlag::O_DIRECTORY | path_only, Mode::empty())
        .map_err(|errno| refused(errno, Path::new("/")))?;
    let mut seen = PathBuf::from("/");
    let names = target
        .components()
        .filter_map(|part| match part {
            Component::RootDir => None,
            Component::Normal(name) => Some(Ok(name)),
            _ => Some(Err(format!("{} is not a plain absolute path", target.display()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, name) in names.iter().enumerate() {
        seen.push(name);
        // What is made here is `owner`'s, when it has one.
        let give = |made: &OwnedFd| match owner {
            Some(owner) => {
                let (uid, gid) = (Some(Uid::from_raw(owner)), Some(Gid::from_raw(owner)));
                nix::unistd::fchownat(made.as_fd(), "", uid, gid, nix::fcntl::AtFlags::AT_EMPTY_PATH)
                    .map_err(|errno| refused(errno, &seen))
            }
            None => Ok(()),
        };
        let open = |flags: OFlag| {
            // openat2 takes a mode only with O_CREAT.
            let mode = Mode::from_bits_truncate(if flags.contains(OFlag::O_CREAT) { 0o644 } else { 0 });
            openat2(dir.as_fd(), *name, OpenHow::new().flags(flags).mode(mode).resolve(no_links))
        };
        let found = if index + 1 == names.len() && !is_dir {
            // A file's mount point: made empty if missing, never opened for writing (a named
            // pipe there would wait for a reader), and only a file.
            let file = match open(path_only) {
                Err(nix::errno::Errno::ENOENT) => {
                    let made = open(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC)
                        .map_err(|errno| refused(errno, &seen))?;
                    give(&made)?;
                    made
                }
                other => other.map_err(|errno| refused(errno, &seen))?,
            };
            match nix::sys::stat::fstat(&file).map_err(|errno| refused(errno, &seen))?.st_mode & libc::S_IFMT {
                libc::S_IFREG => file,
                // A volume whose folder on the host was made a file meets the directory its
                // earlier runs had here (found by a trial: "/workspace/m is not a file").
                libc::S_IFDIR => {
                    return Err(format!(
                        "{} is a directory in the sandbox where a file is to be shown (its source was a \
                         directory before): make the source a directory again, or give the volume another \
                         path in the sandbox",
                        seen.display()
                    ));
                }
                _ => return Err(format!("{} is not a file", seen.display())),
            }
        } else {
            match open(path_only | OFlag::O_DIRECTORY) {
                Ok(found) => found,
                Err(nix::errno::Errno::ENOENT) => {
                    nix::sys::stat::mkdirat(dir.as_fd(), *name, Mode::from_bits_truncate(0o755))
                        .map_err(|errno| refused(errno, &seen))?;
                    let made = open(path_only | OFlag::O_DIRECTORY).map_err(|errno| refused(errno, &seen))?;
                    give(&made)?;
                    made
                }
                Err(errno) => return Err(refused(errno, &seen)),
            }
        };
        dir = found;
    }
    Ok(dir)
}

/// Opens the host path `source` of a mount (`O_PATH`); with `no_links`, none of its components
/// may be a symbolic link (`RESOLVE_NO_SYMLINKS`): what the mount shows is what was opened.
fn open_source(source: &Path, no_links: bool) -> Result<OwnedFd, String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let resolve = if no_links { ResolveFlag::RESOLVE_NO_SYMLINKS } else { ResolveFlag::empty() };
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(resolve);
    openat2(nix::fcntl::AT_FDCWD, source, how).map_err(|errno| match errno {
        nix::errno::Errno::ELOOP => format!(
            "{} is reached through a symbolic link now, which a volume's source may not be (the sandbox's \
             code could make one in the project through a :rw volume): give the volume the path it leads to, \
             or remove the link",
            source.display()
        ),
        other => format!("{}: {}", source.display(), other.desc()),
    })
}

/// Binds `source` (a descriptor) on the mount point `target` (a descriptor) through an
/// idmapped mount: a detached copy of the tree (`open_tree`), its ids mapped by `userns`
/// (`mount_setattr`), then attached (`move_mount`).
/// `shown` names the source in an error.
fn bind_as_owner(
    (source, shown): (&OwnedFd, &Path),
    target: &OwnedFd,
    read_only: bool,
    userns: &OwnedFd,
) -> Result<(), String> {
    let clone_flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_RECURSIVE as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree reads an empty NUL-terminated path relative to the source's descriptor
    // and returns a new descriptor or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, source.as_raw_fd(), c"".as_ptr(), clone_flags) };
    if tree < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attributes = libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if read_only {
        attributes |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr =
        libc::mount_attr { attr_set: attributes, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    // SAFETY: mount_setattr reads `attr` (valid for the call, its size passed along) and an
    // empty NUL-terminated path relative to the detached tree's descriptor.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        return Err(idmap_refused(shown, std::io::Error::last_os_error()));
    }
    // SAFETY: move_mount reads two empty NUL-terminated paths: the source is the detached tree
    // itself, the target the mount point's descriptor.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// Why the kernel would not idmap `source`, and what the user can do about it, in one line.
fn idmap_refused(source: &Path, error: std::io::Error) -> String {
    let path = source.display();
    match error.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "this kernel cannot show {path} to the sandbox as its owner sees it (idmapped mounts need Linux 5.12 or \
             later): upgrade the kernel"
        ),
        Some(libc::EINVAL | libc::EOPNOTSUPP) => format!(
            "the filesystem of {path} (or of a mount inside it) cannot show its files to the sandbox as their \
             owner's (no idmapped mounts): move it to a local filesystem such as ext4, xfs, btrfs or tmpfs"
        ),
        _ => format!("cannot show {path} to the sandbox as its owner's: {error}"),
    }
}

/// Removes everything in `dir` (a persistent sandbox's /tmp from its previous run).
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Gives `dir` and everything in it to `owner`, never following a symlink: a kept directory of
/// a disk an earlier agent left owned by the uid of its last run (each run has its own). `dir`
/// itself goes last, so a walk cut short is done again whole by the next sandbox.
fn hand_tree_to(dir: &Path, owner: Owner) -> std::io::Result<()> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if fs::symlink_metadata(&path)?.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
        found.push(path);
    }
    // Every path was found after its directory: backwards, each comes before its directory.
    for path in found.iter().rev() {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))?;
    }
    Ok(())
}

/// Writes the script and uploads. Runs as root before any code of the run exists, in a
/// workspace that is still empty (a prestarted interpreter's loader, waiting for its order, has
/// deleted its own file there already), so no path in it can be a planted link.
fn place_files(order: &GoOrder, sandbox_id: u32) -> Result<(), StageError> {
    for dir in &order.dirs {
        let path = Path::new(dir);
        if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(StageError::new("place files", format!("refusing directory {dir}")));
        }
        create_owned_dirs(path, sandbox_id)?;
    }
    for file in &order.files {
        let path = Path::new(&file.path);
        if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(StageError::new("place files", format!("refusing path {}", file.path)));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(&file.content_base64)
            .stage(&format!("decode {}", file.path))?;
        if let Some(parent) = path.parent() {
            create_owned_dirs(parent, sandbox_id)?;
        }
        fs::write(path, content).stage(&format!("write {}", file.path))?;
        chown(path, Some(sandbox_id), Some(sandbox_id)).stage(&format!("chown {}", file.path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(file.mode)).stage(&format!("chmod {}", file.path))?;
    }
    Ok(())
}

fn create_owned_dirs(dir: &Path, owner: u32) -> Result<(), StageError> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_owned_dirs(parent, owner)?;
    }
    fs::create_dir(dir).stage(&format!("create {}", dir.display()))?;
    chown(dir, Some(owner), Some(owner)).stage(&format!("chown {}", dir.display()))
}

/// Everything the code's process needs, made before fork so the child only makes system calls.
struct Launch {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    setup: CodeSetup,
    terminal: Option<bkg_schema::terminal::TerminalSize>,
    /// Descriptors the program keeps across exec (a prestarted interpreter's order and report).
    inherit: Vec<i32>,
    /// Its stderr is its stdout's pipe (`GoOrder::stderr_to_stdout`).
    stderr_to_stdout: bool,
}

/// What the code's process applies to itself as it locks down, besides its `Confinement`.
pub(super) struct CodeSetup {
    cwd: CString,
    seccomp: Vec<seccompiler::BpfProgram>,
    /// The policy as one program (seccomp_notify.rs), as pid 1 evaluates it and, with its
    /// refusals turned into notifications, as the code installs it; `None` if it does not fit.
    counted_seccomp: Option<seccomp_notify::CountedPolicy>,
}

impl CodeSetup {
    pub(super) fn new(cwd: &str, seccomp: Vec<seccompiler::BpfProgram>) -> Result<Self, StageError> {
        let cwd = CString::new(cwd).stage("argument with a NUL byte")?;
        let counted_seccomp = seccomp_notify::counted(&seccomp);
        Ok(Self { cwd, seccomp, counted_seccomp })
    }
}

/// Who the code runs as and what it may touch: the part of the plan that the code's process
/// applies to itself, whether pid 1 forked it or the zygote did (engine/zygote.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Confinement {
    pub sandbox_id: u32,
    pub process_limits: super::plan::ProcessLimits,
    pub landlock_read_exec: Vec<PathBuf>,
    pub landlock_read_write: Vec<PathBuf>,
}

impl Confinement {
    pub(super) fn of(plan: &SandboxPlan) -> Self {
        Self {
            sandbox_id: plan.ids.sandbox,
            process_limits: plan.process_limits,
            landlock_read_exec: plan.landlock_read_exec.clone(),
            landlock_read_write: plan.landlock_read_write.clone(),
        }
    }
}

impl Launch {
    fn new(order: &GoOrder, seccomp: Vec<seccompiler::BpfProgram>) -> Result<Self, StageError> {
        let launch = Self::of(&order.argv, &order.env, &order.cwd, order.terminal, seccomp)?;
        Ok(Self { stderr_to_stdout: order.stderr_to_stdout, ..launch })
    }

    fn of(
        argv: &[String],
        env: &[(String, String)],
        cwd: &str,
        terminal: Option<bkg_schema::terminal::TerminalSize>,
        seccomp: Vec<seccompiler::BpfProgram>,
    ) -> Result<Self, StageError> {
        let cstring = |text: &str| CString::new(text).stage("argument with a NUL byte");
        let argv = argv.iter().map(|arg| cstring(arg)).collect::<Result<Vec<_>, _>>()?;
        let program = argv.first().cloned().ok_or_else(|| StageError::new("start code", "empty command"))?;
        let env = env.iter().map(|(key, value)| cstring(&format!("{key}={value}"))).collect::<Result<Vec<_>, _>>()?;
        let setup = CodeSetup::new(cwd, seccomp)?;
        Ok(Self { program, argv, env, setup, terminal, inherit: Vec::new(), stderr_to_stdout: false })
    }
}

fn run_code(plan: &SandboxPlan, launch: Launch, control: &mut UnixStream) -> Result<(), StageError> {
    let terminal = match launch.terminal {
        Some(size) => Some(open_terminal(plan, size, control)?),
        None => None,
    };
    match start_code(plan, &launch, terminal)? {
        Started::Running { pid, listener } => {
            // The code holds the stdio pipes now; ours would keep them open past its end.
            redirect_stdio_to_null();
            let supervisor = match (listener, launch.setup.counted_seccomp) {
                (Some(listener), Some(policy)) => Some(Supervisor::new(listener, policy.evaluated)),
                _ => None,
            };
            watch_code(plan, pid, supervisor, (false, false), control)
        }
        Started::ExecFailed(errno) => {
            control::write_blocking(control, &FromInit::ExecFailed { errno }).stage("report exec failure")
        }
    }
}

/// How starting the code's process ended.
enum Started {
    /// It has exec'd; with the seccomp listener it sent, if its kernel has them.
    Running { pid: Pid, listener: Option<OwnedFd> },
    /// Its program could not be executed (`errno` of execve).
    ExecFailed(i32),
}

/// Pid 1's ends of the pipes over which a code process being made reports until it runs; the
/// code's ends are an `IdMapHandshake` and the write end of `exec_error`.
struct StartingCode {
    exec_error: OwnedFd,
    unshared: OwnedFd,
    mapped: OwnedFd,
    listener: UnixStream,
}

impl StartingCode {
    fn pipes() -> Result<(Self, IdMapHandshake, OwnedFd), StageError> {
        let (exec_error_read, exec_error_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage("create exec-error pipe")?;
        let (unshared_read, unshared_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage("create id-map pipe")?;
        let (mapped_read, mapped_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage("create id-map pipe")?;
        // The code hands pid 1 its seccomp listener over this pair (std's are close-on-exec).
        let (listener_read, listener_write) = UnixStream::pair().stage("create the seccomp listener's socket pair")?;
        let ours = Self {
            exec_error: exec_error_read,
            unshared: unshared_read,
            mapped: mapped_write,
            listener: listener_read,
        };
        let code = IdMapHandshake { unshared: unshared_write, mapped: mapped_read, listener: listener_write };
        Ok((ours, code, exec_error_write))
    }

    /// Maps the code's ids when it asks and waits until it has exec'd (or, a fork of the zygote,
    /// is locked down) or failed. `forked` is the code's pid if pid 1 made it; the zygote's fork
    /// says its own.
    fn started(self, plan: &SandboxPlan, forked: Option<Pid>) -> Result<Started, StageError> {
        let mapped = map_code_ids(plan, self.unshared, self.mapped);
        let mut report = Vec::new();
        let _ = File::from(self.exec_error).read_to_end(&mut report);
        let code = forked.or_else(|| mapped.as_ref().ok().copied().flatten());
        let end = |code: Option<Pid>| {
            if let Some(code) = code {
                reap(code);
            }
        };
        if let Err(error) = mapped {
            end(code);
            return Err(error);
        }
        if report.len() >= 4 {
            let errno = i32::from_be_bytes([report[0], report[1], report[2], report[3]]);
            end(code);
            if errno >= 0 {
                return Ok(Started::ExecFailed(errno));
            }
            let message = String::from_utf8_lossy(&report[4..]).into_owned();
            return Err(StageError::new("start code", message));
        }
        let Some(pid) = code else {
            return Err(StageError::new("start code", "the zygote's fork ended before it made the code"));
        };
        // The code has exec'd (or is locked down): the listener it sent, if its kernel has them, is waiting.
        Ok(Started::Running { pid, listener: receive_listener(&self.listener) })
    }
}

/// Forks the code's process, which locks itself down and execs `launch`; returns once it has.
fn start_code(plan: &SandboxPlan, launch: &Launch, terminal: Option<OwnedFd>) -> Result<Started, StageError> {
    let (ours, handshake, exec_error) = StartingCode::pipes()?;
    // SAFETY: pid 1 is single-threaded, so the child may run arbitrary code after fork.
    let child = match unsafe { fork() }.stage("fork code")? {
        ForkResult::Child => {
            drop(ours);
            let error = become_code(plan, launch, &handshake, terminal.as_ref());
            let errno = match &error {
                CodeError::Exec(errno) => *errno,
                CodeError::Setup(..) => -1,
            };
            let message = match error {
                CodeError::Exec(_) => String::new(),
                CodeError::Setup(stage, message) => format!("{stage}: {message}"),
            };
            report_start_failure(&exec_error, errno, &message);
            // SAFETY: _exit ends this forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((handshake, exec_error));
    // The code holds the terminal now: ours would keep the agent's master from its end.
    drop(terminal);
    ours.started(plan, Some(child))
}

/// How the code's process says on its exec-error pipe that it could not start: the errno of its
/// exec (-1 for a step before it), then what failed; `StartingCode::started` reads it.
pub(super) fn report_start_failure(pipe: &OwnedFd, errno: i32, message: &str) {
    let mut report = errno.to_be_bytes().to_vec();
    report.extend_from_slice(message.as_bytes());
    let _ = nix::unistd::write(pipe, &report);
}

/// Pid 1's part once the code runs: give up root, report, reap the code, report its end.
fn watch_code(
    plan: &SandboxPlan,
    code: Pid,
    mut supervisor: Option<Supervisor>,
    (prestarted, from_zygote): (bool, bool),
    control: &mut UnixStream,
) -> Result<(), StageError> {
    drop_privileges(plan.ids.init)?;
    control::write_blocking(control, &FromInit::Running { prestarted, from_zygote }).stage("report running")?;
    let (exit_code, signal) = reap_while_the_agent_lives(code, control, supervisor.as_mut())?;
    let disk = super::disk::usage_at(super::plan::WORKSPACE).unwrap_or_default();
    let (disk_used_bytes, disk_full) = (disk.used_bytes, disk.full);
    let denied_syscalls = supervisor.map(|supervisor| supervisor.counts()).unwrap_or_default();
    control::write_blocking(
        control,
        &FromInit::Exited { exit_code, signal, disk_used_bytes, disk_full, denied_syscalls },
    )
    .stage("report exit")
}

/// The code's process started ahead (engine/prestart.rs): locked down, its interpreter
/// initialised, waiting for the run's order.
struct Prestarted {
    pid: Pid,
    order: File,
    listener: Option<OwnedFd>,
    policy: Option<seccomp_notify::CountedPolicy>,
    /// The loader's file, which the loader deletes once loaded (Node's).
    loader: Option<&'static str>,
    /// Forked by the zygote (engine/zygote.rs), not started by pid 1.
    from_zygote: bool,
}

/// Deletes a loader's file that its interpreter did not (it ended first).
fn remove_loader(loader: Option<&str>) {
    if let Some(path) = loader {
        let _ = fs::remove_file(path);
    }
}

/// A prestarted process handed its order: it runs the run's code.
struct Given {
    pid: Pid,
    supervisor: Option<Supervisor>,
    from_zygote: bool,
}

/// Starts the interpreter of `prestart` as the code's process and waits until its loader says
/// it waits for the order: the zygote's fork pid 1 asked for, if it comes, else a process of
/// pid 1's own, started as `run_code` starts the code.
fn prestart_code(
    plan: &SandboxPlan,
    prestart: &super::prestart::PrestartPlan,
    seccomp: Vec<seccompiler::BpfProgram>,
    asked: Option<AskedZygote>,
) -> Result<Prestarted, StageError> {
    if let Some(asked) = asked {
        match asked.answer(plan, &seccomp) {
            Ok(prestarted) => return Ok(prestarted),
            Err(error) if error.stage == ZYGOTE_SILENT => return Err(error),
            // It said no, or ended: no fork of it can come any more.
            Err(_) => {}
        }
    }
    let stage = PRESTART_STAGE;
    let (order_read, order_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
    let (order_fd, ready_fd) = (order_read.as_raw_fd(), ready_write.as_raw_fd());
    let loader = prestart.loader_file(order_fd, ready_fd);
    if let Some((path, contents)) = &loader {
        fs::write(path, contents).stage(stage)?;
    }
    let argv = prestart.argv(order_fd, ready_fd);
    let mut launch = Launch::of(&argv, &prestart.start_env(), "/", None, seccomp)?;
    launch.inherit = vec![order_fd, ready_fd];
    let loader = loader.map(|(path, _)| path);
    let started = start_code(plan, &launch, None);
    drop((order_read, ready_write));
    let Ok(Started::Running { pid, listener }) = started else {
        remove_loader(loader);
        return Err(StageError::new(stage, "the interpreter could not be started"));
    };
    let prestarted = Prestarted {
        pid,
        order: File::from(order_write),
        listener,
        policy: launch.setup.counted_seccomp,
        loader,
        from_zygote: false,
    };
    prestarted.when_ready(ready_read)
}

const PRESTART_STAGE: &str = "start the interpreter ahead";

/// How long pid 1 waits, once its root is built, for the zygote's fork to say its pid (it
/// takes about a millisecond from there).
const ZYGOTE_ANSWER_MS: libc::c_int = 5000;
/// The stage of a preparation that failed because the zygote did not answer in time; the agent
/// replaces that zygote (engine/zygote.rs, `keep`).
pub const ZYGOTE_SILENT: &str = "wait for the zygote";

/// A fork of the zygote (engine/zygote.rs) that pid 1 asked for as its prestarted code process
/// before it built the root, so that the fork, its cgroup join and its page copies overlap the
/// root's building. The fork waits, before it enters the sandbox's mount namespace and locks
/// down, until `root_built` says the root is done.
struct AskedZygote {
    /// Held until the fork answers, so that the request is read from an open connection.
    connection: OwnedFd,
    ours: StartingCode,
    order: OwnedFd,
    ready: OwnedFd,
    /// Until `root_is_built`.
    root_built: Option<OwnedFd>,
}

impl AskedZygote {
    fn ask(plan: &SandboxPlan, connection: OwnedFd) -> Result<Self, StageError> {
        let stage = "ask the zygote";
        let (order_read, order_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
        let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
        let (root_built_read, root_built_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).stage(stage)?;
        let (ours, handshake, exec_error) = StartingCode::pipes()?;
        // Pid 1's own, for the zygote's fork to enter its namespaces.
        let pidfd = super::pidfd_open(1).stage(stage)?;
        let request = super::zygote::ForkRequest {
            cgroup_joins: plan.cgroup_joins.clone(),
            background: plan.background,
            confinement: Confinement::of(plan),
        };
        let fds = super::zygote::RequestFds {
            pid_one: pidfd.as_raw_fd(),
            root_built: root_built_read.as_raw_fd(),
            stdio: [0, 1, 2],
            order: order_read.as_raw_fd(),
            ready: ready_write.as_raw_fd(),
            unshared: handshake.unshared.as_raw_fd(),
            mapped: handshake.mapped.as_raw_fd(),
            listener: handshake.listener.as_raw_fd(),
            setup_error: exec_error.as_raw_fd(),
        };
        super::zygote::ask(&connection, &request, &fds).stage(stage)?;
        // The fork's ends go from here at once: a zygote that ends without forking (its
        // generation over, or killed) is then an end of file on ours.
        Ok(Self { connection, ours, order: order_write, ready: ready_read, root_built: Some(root_built_write) })
    }

    /// Tells the fork that the root is built.
    fn root_is_built(&mut self) {
        if let Some(root_built) = self.root_built.take() {
            // A write to a fork that is gone fails, and its end of file in `answer` says so.
            let _ = nix::unistd::write(&root_built, &[1]);
        }
    }

    /// Waits, the root built, until the fork is locked down and its loader waits for the order.
    fn answer(mut self, plan: &SandboxPlan, seccomp: &[seccompiler::BpfProgram]) -> Result<Prestarted, StageError> {
        self.root_is_built();
        let Self { connection, ours, order, ready, root_built: _ } = self;
        let mut waiting = [libc::pollfd { fd: ours.unshared.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: `waiting` is a valid array of one pollfd for the call.
        if unsafe { libc::poll(waiting.as_mut_ptr(), 1, ZYGOTE_ANSWER_MS) } <= 0 {
            // Silent (stopped, or overwhelmed): its fork may still come, so this sandbox is
            // given up whole rather than given a second code process (`ZYGOTE_SILENT`).
            return Err(StageError::new(ZYGOTE_SILENT, format!("no answer within {} s", ZYGOTE_ANSWER_MS / 1000)));
        }
        let started = ours.started(plan, None);
        drop(connection);
        let Ok(Started::Running { pid, listener }) = started else {
            return Err(StageError::new(PRESTART_STAGE, "the zygote's fork could not be started"));
        };
        let prestarted = Prestarted {
            pid,
            order: File::from(order),
            listener,
            policy: seccomp_notify::counted(seccomp),
            loader: None,
            from_zygote: true,
        };
        prestarted.when_ready(ready)
    }
}

impl Prestarted {
    /// Waits until the loader says on `ready` that it waits for the order; a process that ends
    /// first is discarded.
    fn when_ready(self, ready: OwnedFd) -> Result<Self, StageError> {
        match File::from(ready).read(&mut [0u8; 1]) {
            Ok(1) => Ok(self),
            _ => {
                self.discard();
                Err(StageError::new(PRESTART_STAGE, "the interpreter ended before it was ready"))
            }
        }
    }

    /// Gives the process `order` (pid 1 has placed its files and pinned its own CPUs); on
    /// failure the process is handed back, to be discarded.
    fn give(mut self, plan: &SandboxPlan, order: &GoOrder) -> Result<Given, Self> {
        // It was forked before pid 1 took the run's CPUs and priority: they are made its own.
        let adjusted = nix::sched::sched_getaffinity(Pid::from_raw(0))
            .is_ok_and(|cpus| schedule_every_thread_as_the_run(self.pid, &cpus, plan.background).is_ok());
        if !adjusted || self.order.write_all(&super::prestart::encode(order)).is_err() {
            return Err(self);
        }
        // The end of the order: the loader reads to it.
        drop(self.order);
        redirect_stdio_to_null();
        let supervisor = match (self.listener, self.policy) {
            (Some(listener), Some(policy)) => Some(Supervisor::new(listener, policy.evaluated)),
            _ => None,
        };
        Ok(Given { pid: self.pid, supervisor, from_zygote: self.from_zygote })
    }

    /// Ends the process unused.
    fn discard(self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        reap(self.pid);
        remove_loader(self.loader);
    }
}

/// Gives every thread of `pid` the run's CPUs and, for a sandbox prepared in the background,
/// normal priority. Both are kept per thread, and an interpreter started ahead already has
/// threads of its own (Node's V8 workers: left as they were, they ran at `SCHED_IDLE` on every
/// CPU through the run, and its exit waited for them). A thread started meanwhile inherits
/// from its creator, perhaps before that one was set, so passes go on until one finds no
/// thread it had not seen; the process waits for its order, so the first pass normally does.
fn schedule_every_thread_as_the_run(pid: Pid, cpus: &nix::sched::CpuSet, background: bool) -> std::io::Result<()> {
    const MAX_PASSES: usize = 8;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..MAX_PASSES {
        let threads: Vec<Pid> = fs::read_dir(format!("/proc/{pid}/task"))?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|tid| seen.insert(*tid))
            .map(Pid::from_raw)
            .collect();
        if threads.is_empty() {
            return Ok(());
        }
        for thread in threads {
            let set = nix::sched::sched_setaffinity(thread, cpus)
                .map_err(std::io::Error::from)
                .and_then(|()| if background { set_scheduling_of(thread, libc::SCHED_OTHER) } else { Ok(()) });
            match set {
                // The thread ended since it was listed.
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
                other => other?,
            }
        }
    }
    Err(std::io::Error::other("its threads kept multiplying"))
}

/// Opens a pseudo-terminal of `size` in the sandbox's own devpts, gives its slave to the
/// sandbox user (so `tty` and `ls -l /dev/pts` show the code's own) and its master to the agent,
/// which relays it; returns the slave, for the code.
fn open_terminal(
    plan: &SandboxPlan,
    size: bkg_schema::terminal::TerminalSize,
    control: &mut UnixStream,
) -> Result<OwnedFd, StageError> {
    let winsize = nix::pty::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&winsize), None).stage("open a pseudo-terminal")?;
    let id = plan.ids.sandbox;
    nix::unistd::fchown(&pty.slave, Some(Uid::from_raw(id)), Some(Gid::from_raw(id)))
        .stage("give the terminal to the sandbox user")?;
    control::write_with_fd_blocking(control, &FromInit::Terminal, pty.master.as_raw_fd())
        .stage("hand the terminal to the agent")?;
    Ok(pty.slave)
}

/// How the code's process and pid 1 hand over the id map of the code's user namespace: an
/// unprivileged process may map only its own id, so pid 1, still root on the host, writes the
/// map (root, the sandbox user and nobody, `HostIds::code_id_map`) once the namespace exists.
pub(super) struct IdMapHandshake {
    /// The code's process writes its pid here (4 bytes, big-endian) once it is in its new user
    /// namespace.
    pub unshared: OwnedFd,
    /// Pid 1 writes a byte here once the map is written; end of file means it could not.
    pub mapped: OwnedFd,
    /// The code sends its seccomp listener here, just before it execs.
    pub listener: UnixStream,
}

/// The seccomp listener the code sent before its exec, if it sent one (a kernel without user
/// notification gives none). Never waits: the code has exec'd, so it was sent already.
fn receive_listener(socket: &UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut listener = None;
    for control in message.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                listener.get_or_insert(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    listener
}

/// The code's last step before exec: the seccomp policy, counted when the kernel can (the
/// listener goes to pid 1), else as it is.
fn apply_seccomp(setup: &CodeSetup, handshake: &IdMapHandshake) -> Result<(), (&'static str, String)> {
    if let Some(policy) = &setup.counted_seccomp
        && let Ok(listener) = seccomp_notify::install_with_listener(&policy.installed)
    {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let fds = [listener.as_raw_fd()];
        sendmsg::<()>(
            handshake.listener.as_raw_fd(),
            &[std::io::IoSlice::new(&[1])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|error| ("hand the seccomp listener over", error.to_string()))?;
        return Ok(());
    }
    seccomp::install(&setup.seccomp).map_err(|error| ("apply seccomp", error.to_string()))
}

/// Pid 1's side of `IdMapHandshake`: returns the code's pid, which it sent. When the code's
/// process ends before it unshares, there is nothing to map and its own report says why.
fn map_code_ids(plan: &SandboxPlan, unshared: OwnedFd, mapped: OwnedFd) -> Result<Option<Pid>, StageError> {
    let mut pid = [0u8; 4];
    if File::from(unshared).read_exact(&mut pid).is_err() {
        return Ok(None);
    }
    let code = Pid::from_raw(i32::from_be_bytes(pid));
    let proc_dir = PathBuf::from(format!("/proc/{code}"));
    let map = id_map_text(&plan.ids.code_id_map());
    // Nothing inside may drop or gain supplementary groups: `deny` before the gid map.
    fs::write(proc_dir.join("setgroups"), "deny").stage("deny setgroups")?;
    fs::write(proc_dir.join("uid_map"), &map).stage("map uids")?;
    fs::write(proc_dir.join("gid_map"), &map).stage("map gids")?;
    File::from(mapped).write_all(&[1]).stage("hand the id map over")?;
    Ok(Some(code))
}

/// Waits for the code's process like `reap`, but gives up, ending the whole sandbox, as soon as
/// the agent is gone (its end of the control socket hangs up): a run must never outlive the
/// agent that enforces its timeout.
fn reap_while_the_agent_lives(
    code: Pid,
    control: &UnixStream,
    mut supervisor: Option<&mut Supervisor>,
) -> Result<(Option<i32>, Option<i32>), StageError> {
    let pidfd = super::pidfd_open(code.as_raw()).stage("watch the code")?;
    loop {
        // A negative descriptor is skipped by poll: no listener, or one nobody can notify any more.
        let listener = supervisor.as_ref().map_or(-1, |supervisor| supervisor.listener());
        let mut watched = [
            libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: control.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 },
            libc::pollfd { fd: listener, events: libc::POLLIN, revents: 0 },
        ];
        // Wake at least every second to reap orphans that pid 1 inherited.
        // SAFETY: `watched` is a valid array of three pollfd structs for the duration of the call.
        let ready = unsafe { libc::poll(watched.as_mut_ptr(), 3, 1000) };
        if ready < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(StageError::new("watch the code", std::io::Error::last_os_error()));
        }
        if watched[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            // The agent is gone: ending pid 1 ends every process of the sandbox.
            std::process::exit(1);
        }
        if watched[2].revents & libc::POLLIN != 0
            && let Some(supervisor) = supervisor.as_mut()
        {
            supervisor.answer_one();
        } else if watched[2].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            // Every process of the filter is gone: nothing more will come.
            supervisor = None;
        }
        loop {
            match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code_value)) if pid == code => return Ok((Some(code_value), None)),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == code => return Ok((None, Some(signal as i32))),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => return Err(StageError::new("reap", error)),
            }
        }
    }
}

/// Waits for the code's process, reaping every orphan that pid 1 inherits meanwhile.
fn reap(code: Pid) -> (Option<i32>, Option<i32>) {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code_value)) if pid == code => {
                return (Some(code_value), None);
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == code => {
                return (None, Some(signal as i32));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return (None, None),
        }
    }
}

fn drop_privileges(id: u32) -> Result<(), StageError> {
    nix::unistd::setgroups(&[]).stage("drop groups")?;
    nix::unistd::setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id)).stage("drop gid")?;
    nix::unistd::setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id)).stage("drop uid")?;
    // Changing credentials cleared the parent-death signal; the control socket covers the
    // moment in between.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).stage("set parent-death signal")?;
    nix::sys::prctl::set_dumpable(false).stage("forbid tracing")
}

fn redirect_stdio_to_null() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open for the call.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

enum CodeError {
    Exec(i32),
    Setup(&'static str, String),
}

/// The kernel's `struct sigaction` for rt_sigaction(2) on x86_64 and aarch64.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Every signal's disposition back to the default, none blocked, as a shell starts a program:
/// what the agent was started with (`nohup` ignores SIGHUP, a shell without job control
/// SIGQUIT) and what posix_spawn sets (glibc's internal signals 32 and 33 ignored) must not reach
/// the code (found by a new-user trial: under `nohup`, code could not be ended by SIGHUP).
/// Only system calls, so it may run between fork and exec; glibc's sigaction refuses its
/// internal signals, so the system call is made directly.
pub(super) fn default_signal_dispositions() -> std::io::Result<()> {
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    for signal in 1..=SIGNALS {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct of the kernel's layout and its mask's size,
        // and no old action asked for.
        let set = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let none: u64 = 0;
    // SAFETY: rt_sigprocmask with a valid mask of the kernel's size, and no old mask asked for.
    let set = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null::<u64>(),
            std::mem::size_of::<u64>(),
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's signals, 1 to 64 on x86_64 and aarch64.
const SIGNALS: libc::c_int = 64;

/// In the forked child: become the unprivileged sandbox user in a fresh user namespace, lock
/// everything down, and exec the code. Returns only on failure.
fn become_code(
    plan: &SandboxPlan,
    launch: &Launch,
    handshake: &IdMapHandshake,
    terminal: Option<&OwnedFd>,
) -> CodeError {
    if let Err(error) = default_signal_dispositions() {
        return CodeError::Setup("give the signals their defaults", error.to_string());
    }
    match lock_down(&Confinement::of(plan), &launch.setup, handshake, terminal) {
        Ok(()) => {}
        Err((stage, error)) => return CodeError::Setup(stage, error),
    }
    // SAFETY: dup2 of one standard descriptor onto another; no pointer is involved.
    if launch.stderr_to_stdout && unsafe { libc::dup2(libc::STDOUT_FILENO, libc::STDERR_FILENO) } < 0 {
        return CodeError::Setup("join stderr to stdout", std::io::Error::last_os_error().to_string());
    }
    for fd in &launch.inherit {
        // SAFETY: F_SETFD with 0 only clears this descriptor's close-on-exec flag.
        if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } < 0 {
            return CodeError::Setup("keep the order's descriptors", std::io::Error::last_os_error().to_string());
        }
    }
    let error = nix::unistd::execve(&launch.program, &launch.argv, &launch.env);
    CodeError::Exec(error.map_or_else(|errno| errno as i32, |never| match never {}))
}

/// The code's process locks itself down: its own session, limits, the sandbox user in a user
/// namespace of its own, no capabilities, Landlock and seccomp. Shared by code forked by pid 1
/// and by the zygote (engine/zygote.rs).
pub(super) fn lock_down(
    confinement: &Confinement,
    setup: &CodeSetup,
    handshake: &IdMapHandshake,
    terminal: Option<&OwnedFd>,
) -> Result<(), (&'static str, String)> {
    fn step<T, E: std::fmt::Display>(stage: &'static str, result: Result<T, E>) -> Result<T, (&'static str, String)> {
        result.map_err(|error| (stage, error.to_string()))
    }
    step("new session", nix::unistd::setsid())?;
    if let Some(slave) = terminal {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors; `slave` stays open for the call.
            if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
                return Err(("attach the terminal", std::io::Error::last_os_error().to_string()));
            }
        }
        // The session leader takes the terminal as its controlling one: Ctrl-C, job control and
        // SIGWINCH reach its foreground process group.
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal) and no pointer.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(("take the controlling terminal", std::io::Error::last_os_error().to_string()));
        }
    }
    // Everything but stdio closes at exec; the exec-error pipe must stay open until then.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    // The OOM killer must pick the code, never the init that reports on it. Raising the score
    // needs no privilege (lowering the init's would need CAP_SYS_RESOURCE, which root may lack).
    step("raise OOM score", fs::write("/proc/self/oom_score_adj", "1000"))?;
    let limits = confinement.process_limits;
    step(
        "limit open files",
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            limits.open_files,
            limits.open_files,
        ),
    )?;
    step(
        "limit core dumps",
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, limits.core_bytes, limits.core_bytes),
    )?;
    step("enter working directory", nix::unistd::chdir(setup.cwd.as_c_str()))?;

    let id = confinement.sandbox_id;
    step("drop groups", nix::unistd::setgroups(&[]))?;
    step("drop gid", nix::unistd::setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id)))?;
    step("drop uid", nix::unistd::setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id)))?;
    // Changing uid made us non-dumpable, which would leave /proc/self owned by root.
    step("own /proc/self", nix::sys::prctl::set_dumpable(true))?;
    // Unprivileged now, so the namespace is owned by our host id; pid 1 writes its map.
    step("create user namespace", unshare(CloneFlags::CLONE_NEWUSER))?;
    step("ask for the id map", nix::unistd::write(&handshake.unshared, &nix::unistd::getpid().as_raw().to_be_bytes()))?;
    match nix::unistd::read(&handshake.mapped, &mut [0u8; 1]) {
        Ok(1) => {}
        Ok(_) => return Err(("wait for the id map", "pid 1 could not write it".into())),
        Err(error) => return Err(("wait for the id map", error.to_string())),
    }

    step("set no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    drop_capabilities().map_err(|error| ("drop capabilities", error.to_string()))?;
    step(
        "apply landlock",
        landlock::restrict_self(&landlock::LandlockPaths {
            read_exec: confinement.landlock_read_exec.clone(),
            read_write: confinement.landlock_read_write.clone(),
        }),
    )?;
    apply_seccomp(setup, handshake)?;
    Ok(())
}

/// Empties the bounding, ambient, effective, permitted and inheritable sets: the code has no
/// capability even inside its own user namespace.
fn drop_capabilities() -> std::io::Result<()> {
    let last_cap: u64 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; unknown ones fail harmlessly.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer arguments.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads a v3 header and two data structs, both valid for the call.
    let result = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_cpus_are_as_many_as_its_limit_and_start_at_the_current_one() {
        assert_eq!(choose_cpus(&[0, 1, 2, 3], 1, Some(0)), [0]);
        assert_eq!(choose_cpus(&[0, 1, 2, 3], 1, Some(2)), [2]);
        assert_eq!(choose_cpus(&[0, 1, 2, 3], 2, Some(3)), [0, 3]);
        assert_eq!(choose_cpus(&[2, 5], 8, Some(5)), [2, 5]);
        assert_eq!(choose_cpus(&[2, 5], 0, Some(5)), [5]);
        assert_eq!(choose_cpus(&[2, 5], 1, Some(3)), [2], "a CPU the agent may not use is not taken");
        assert_eq!(choose_cpus(&[2, 5], 1, None), [2]);
        assert!(choose_cpus(&[], 1, Some(0)).is_empty());
    }

    #[test]
    fn cpu_lists_are_written_as_sysfs_writes_them() {
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpu_list(&[1, 3, 4]), "1,3-4");
    }
}
