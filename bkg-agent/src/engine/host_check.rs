//! What this host gives a sandbox, found before the agent starts: each piece the engine uses
//! (namespaces, cgroup controllers, Landlock, seccomp, loop devices, the runtimes), the named
//! security level they add up to, and whether the agent may start at it. `probe` reads the
//! host; everything after it is pure over the `HostFacts` it returns, so each outcome is tested
//! without a host that lacks the piece. The levels are explained in docs/compatibility.md.

use std::path::{Path, PathBuf};

use bkg_schema::Language;
use bkg_schema::host::{Check, CheckStatus, HostReport, Runtime, SecurityLevel};

use super::cgroup::{self, CgroupLayout};

/// Idmapped mounts (how host paths are shown to the sandbox user) arrived in Linux 5.12.
const MIN_KERNEL: (u32, u32) = (5, 12);
/// From this Landlock ABI on, abstract unix sockets and signals are scoped to the sandbox.
const STRICT_LANDLOCK_ABI: i64 = 6;
/// The cgroup v1 controllers the engine's v1 driver uses (cgroup/v1.rs, `V1Driver::new`).
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];
/// Where the engine looks for mkfs.ext4 (engine/disk.rs).
pub const MKFS_EXT4_PATHS: [&str; 2] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"];

/// The namespace kinds every sandbox gets (engine/init.rs unshares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    User,
    Pid,
    Mount,
    Net,
    Ipc,
    Uts,
    Cgroup,
}

impl NamespaceKind {
    pub const ALL: [NamespaceKind; 7] =
        [Self::User, Self::Pid, Self::Mount, Self::Net, Self::Ipc, Self::Uts, Self::Cgroup];

    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Pid => "pid",
            Self::Mount => "mount",
            Self::Net => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::Cgroup => "cgroup",
        }
    }

    fn clone_flag(self) -> libc::c_int {
        match self {
            Self::User => libc::CLONE_NEWUSER,
            Self::Pid => libc::CLONE_NEWPID,
            Self::Mount => libc::CLONE_NEWNS,
            Self::Net => libc::CLONE_NEWNET,
            Self::Ipc => libc::CLONE_NEWIPC,
            Self::Uts => libc::CLONE_NEWUTS,
            Self::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The `user.max_*_namespaces` sysctl that bounds this kind.
    fn max_sysctl(self) -> &'static str {
        match self {
            Self::User => "user.max_user_namespaces",
            Self::Pid => "user.max_pid_namespaces",
            Self::Mount => "user.max_mnt_namespaces",
            Self::Net => "user.max_net_namespaces",
            Self::Ipc => "user.max_ipc_namespaces",
            Self::Uts => "user.max_uts_namespaces",
            Self::Cgroup => "user.max_cgroup_namespaces",
        }
    }
}

/// The sysctls that restrict user namespaces, `None` where the kernel has no such file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsernsSysctls {
    pub max_user_namespaces: Option<u64>,
    /// Debian's and older Ubuntu's `kernel.unprivileged_userns_clone`.
    pub unprivileged_userns_clone: Option<u64>,
    /// Ubuntu 23.10+: `kernel.apparmor_restrict_unprivileged_userns`.
    pub apparmor_restrict_unprivileged_userns: Option<u64>,
}

/// The cgroup controllers the engine can use, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFacts {
    /// cgroup2 at /sys/fs/cgroup; `offered` is the agent's own `cgroup.controllers`.
    V2 {
        own_dir: PathBuf,
        offered: Vec<String>,
    },
    /// cgroup v1: the controllers of each hierarchy we are in; `unified` lists the controllers
    /// of a hybrid host's cgroup2 side hierarchy when there is one.
    V1 {
        controllers: Vec<String>,
        unified: Option<Vec<String>>,
    },
    Unusable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompFacts {
    /// `/proc/sys/kernel/seccomp/actions_avail`, `None` without seccomp filters.
    pub actions: Option<Vec<String>>,
    /// This process's own `Seccomp:` mode (2: already filtered, e.g. inside a container).
    pub own_mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// Whether /dev/loop-control could be opened (or, probing without root, exists).
    pub loop_control: Result<(), String>,
    pub mkfs_ext4: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFacts {
    pub language: Language,
    pub path: PathBuf,
    /// The version line, or why the runtime cannot be used.
    pub version: Result<String, String>,
}

/// Everything `probe` found; the checks and the level are computed from it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub kernel_release: String,
    pub is_root: bool,
    /// Each kind, with the errno that refused it.
    pub namespaces: Vec<(NamespaceKind, Result<(), i32>)>,
    pub userns: UsernsSysctls,
    pub cgroups: CgroupFacts,
    pub landlock_abi: Option<i64>,
    pub seccomp: SeccompFacts,
    pub disk: DiskFacts,
    pub runtimes: Vec<RuntimeFacts>,
    pub state_dir: StateDirFacts,
}

/// The filesystem that holds the state directory, where every sandbox's disk image lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDirFacts {
    pub path: PathBuf,
    /// The name of the filesystem when it keeps its files in memory (`tmpfs`, `ramfs`).
    pub memory_backed: Option<&'static str>,
    /// The name of the filesystem when it is the kernel's view of itself (`proc`, `sysfs`), where
    /// no directory can be made.
    pub holds_no_files: Option<&'static str>,
    /// Whether the directory exists: the facts of one not made yet are its nearest ancestor's.
    pub exists: bool,
}

/// The state directory's facts, from the filesystem that holds it (or, before it is made, its
/// nearest ancestor), read once.
fn state_dir_facts(dir: &Path) -> StateDirFacts {
    let filesystem =
        dir.ancestors().find_map(|dir| nix::sys::statfs::statfs(dir).ok()).map(|stats| stats.filesystem_type());
    StateDirFacts {
        path: dir.to_path_buf(),
        memory_backed: filesystem.and_then(memory_backed),
        holds_no_files: filesystem.and_then(kernel_filesystem),
        exists: dir.is_dir(),
    }
}

/// The name of `filesystem` when it is one of the kernel's own, where nothing can be stored.
fn kernel_filesystem(filesystem: nix::sys::statfs::FsType) -> Option<&'static str> {
    use nix::sys::statfs::{
        CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, DEBUGFS_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SYSFS_MAGIC,
    };
    [
        (PROC_SUPER_MAGIC, "proc"),
        (SYSFS_MAGIC, "sysfs"),
        (CGROUP_SUPER_MAGIC, "cgroup"),
        (CGROUP2_SUPER_MAGIC, "cgroup2"),
        (DEBUGFS_MAGIC, "debugfs"),
        (SECURITYFS_MAGIC, "securityfs"),
    ]
    .into_iter()
    .find_map(|(magic, name)| (filesystem == magic).then_some(name))
}

/// The name of `filesystem` when it keeps its files in memory.
fn memory_backed(filesystem: nix::sys::statfs::FsType) -> Option<&'static str> {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC};
    // Neither nix nor libc names ramfs's magic number; statfs(2) lists it.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    match filesystem {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    }
}

/// Reads the host. Forks a short-lived child per namespace kind: call it before threads hold
/// locks a child could need (the child only exits, so any process is fine in practice).
pub fn probe(python: &Path, node: &Path, state_dir: &Path) -> HostFacts {
    let is_root = nix::unistd::geteuid().is_root();
    HostFacts {
        kernel_release: nix::sys::utsname::uname()
            .map(|uts| uts.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        is_root,
        namespaces: NamespaceKind::ALL.into_iter().map(|kind| (kind, probe_namespace(kind, !is_root))).collect(),
        userns: UsernsSysctls {
            max_user_namespaces: read_number("/proc/sys/user/max_user_namespaces"),
            unprivileged_userns_clone: read_number("/proc/sys/kernel/unprivileged_userns_clone"),
            apparmor_restrict_unprivileged_userns: read_number(
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            ),
        },
        cgroups: probe_cgroups(),
        landlock_abi: super::landlock::kernel_abi(),
        seccomp: SeccompFacts {
            actions: std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
                .ok()
                .map(|text| text.split_whitespace().map(str::to_owned).collect()),
            own_mode: std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
                status.lines().find_map(|line| line.strip_prefix("Seccomp:")).and_then(|mode| mode.trim().parse().ok())
            }),
        },
        disk: DiskFacts {
            loop_control: probe_loop_control(is_root),
            mkfs_ext4: MKFS_EXT4_PATHS.into_iter().map(PathBuf::from).find(|path| path.exists()),
        },
        runtimes: vec![probe_runtime(Language::Python, python), probe_runtime(Language::Node, node)],
        state_dir: state_dir_facts(state_dir),
    }
}

/// Whether a child can be started in a new namespace of `kind`; without root, inside a new user
/// namespace, as an unprivileged sandbox tool would.
pub fn probe_namespace(kind: NamespaceKind, via_user_namespace: bool) -> Result<(), i32> {
    let mut flags = kind.clone_flag();
    if via_user_namespace {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: clone without CLONE_VM and a null stack duplicates the process like fork; the
    // child does nothing but `_exit`, which is async-signal-safe.
    let pid = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize) };
    match pid {
        -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)),
        0 => {
            // SAFETY: ends the child at once, without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        child => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
            Ok(())
        }
    }
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn probe_cgroups() -> CgroupFacts {
    let read = |path: &str| std::fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"));
    let (proc_self_cgroup, mountinfo) = match (read("/proc/self/cgroup"), read("/proc/self/mountinfo")) {
        (Ok(cgroup), Ok(mountinfo)) => (cgroup, mountinfo),
        (Err(error), _) | (_, Err(error)) => return CgroupFacts::Unusable(error),
    };
    match cgroup::detect_layout(&proc_self_cgroup, &mountinfo) {
        Ok(CgroupLayout::Unified { own_dir }) => match std::fs::read_to_string(own_dir.join("cgroup.controllers")) {
            Ok(text) => CgroupFacts::V2 { offered: text.split_whitespace().map(str::to_owned).collect(), own_dir },
            Err(error) => {
                CgroupFacts::Unusable(format!("cannot read {}/cgroup.controllers: {error}", own_dir.display()))
            }
        },
        Ok(CgroupLayout::Legacy { hierarchies }) => CgroupFacts::V1 {
            controllers: hierarchies.into_iter().flat_map(|hierarchy| hierarchy.controllers).collect(),
            unified: std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
                .ok()
                .map(|text| text.split_whitespace().map(str::to_owned).collect()),
        },
        Err(error) => CgroupFacts::Unusable(error.to_string()),
    }
}

fn probe_loop_control(is_root: bool) -> Result<(), String> {
    const LOOP_CONTROL: &str = "/dev/loop-control";
    let opened = if is_root {
        std::fs::OpenOptions::new().read(true).write(true).open(LOOP_CONTROL).map(drop)
    } else {
        std::fs::metadata(LOOP_CONTROL).map(drop)
    };
    opened.map_err(|error| format!("{LOOP_CONTROL}: {error}"))
}

/// How long an interpreter may take to say its version.
const RUNTIME_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks that `path` is an executable file and asks it for its version.
pub fn probe_runtime(language: Language, path: &Path) -> RuntimeFacts {
    let version = (|| {
        let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_owned(),
            _ => error.to_string(),
        })?;
        if !metadata.is_file() || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() {
            return Err("is not an executable file".to_owned());
        }
        // One pipe for both streams (Python 2 says its version on stderr), read on a thread of
        // its own; the answer is bounded: the agent's start and `bkg doctor` wait on it (found by
        // a new-user trial: a `--python` that never answered held the start for good).
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|error| format!("cannot be started: {error}"))?;
        let stderr_end = write_end.try_clone().map_err(|error| format!("cannot be started: {error}"))?;
        let mut child = std::process::Command::new(path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(write_end)
            .stderr(stderr_end)
            .env_clear()
            .spawn()
            .map_err(|error| format!("cannot be started: {error}"))?;
        let (answered, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(read_end), &mut text);
            let _ = answered.send(text);
        });
        let status = match answer.recv_timeout(RUNTIME_ANSWER_WITHIN) {
            Ok(text) => child.wait().map(|status| (status, text)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not answer `--version` within {} s", RUNTIME_ANSWER_WITHIN.as_secs()));
            }
        };
        let (status, text) = status.map_err(|error| format!("cannot be started: {error}"))?;
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        let line = text.lines().next().unwrap_or("");
        if !status.success() {
            return Err(format!("`--version` failed ({status}): {line}"));
        }
        // Anything answers `--version`: the answer must be the interpreter's own (found by a
        // new-user trial: `--python /usr/bin/node` passed as "v20.20.2").
        let (looks_right, like) = match language {
            Language::Python => (line.starts_with("Python 3."), "`Python 3.…`"),
            Language::Node => {
                (line.strip_prefix('v').is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())), "`v20.…`")
            }
        };
        if !looks_right {
            return Err(format!(
                "is not a {} interpreter: its `--version` says `{line}`, not {like}",
                language.as_str()
            ));
        }
        Ok(line.to_owned())
    })();
    RuntimeFacts { language, path: path.to_owned(), version }
}

/// `(major, minor)` of a release such as `6.18.44-fc-v857` or `5.15.0-105-generic`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter(|part| !part.is_empty());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

fn errno_text(errno: i32) -> String {
    format!("{} ({})", nix::errno::Errno::from_raw(errno).desc(), nix::errno::Errno::from_raw(errno))
}

/// The checks, in the order `bkg doctor` prints them.
pub fn checks(facts: &HostFacts) -> Vec<Check> {
    let mut checks = vec![kernel_check(&facts.kernel_release)];
    checks.extend(facts.namespaces.iter().map(|(kind, outcome)| namespace_check(*kind, *outcome, facts.is_root)));
    checks.push(userns_check(&facts.userns, facts.is_root));
    checks.push(cgroup_check(&facts.cgroups));
    checks.push(landlock_check(facts.landlock_abi));
    checks.push(seccomp_check(&facts.seccomp));
    checks.push(disk_check(&facts.disk));
    checks.push(state_dir_check(&facts.state_dir));
    checks.extend(facts.runtimes.iter().map(runtime_check));
    checks
}

fn kernel_check(release: &str) -> Check {
    let name = bkg_schema::host::KERNEL_CHECK;
    match kernel_version(release) {
        Some(version) if version >= MIN_KERNEL => Check::pass(name, format!("Linux {release}")),
        Some(_) => Check::fail(
            name,
            format!("Linux {release} is older than {}.{}, which idmapped mounts need", MIN_KERNEL.0, MIN_KERNEL.1),
            format!(
                "upgrade to a kernel of {}.{} or later (6.12 or later for the strict level)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => Check::warn(name, format!("cannot read the kernel version from {release:?}"), "check `uname -r`"),
    }
}

fn namespace_check(kind: NamespaceKind, outcome: Result<(), i32>, is_root: bool) -> Check {
    let name = format!("namespace.{}", kind.name());
    let how = if is_root || kind == NamespaceKind::User { "" } else { " inside a new user namespace" };
    match outcome {
        Ok(()) => Check::pass(name, format!("a new {} namespace can be created{how}", kind.name())),
        Err(errno) => {
            let found = format!("cannot create a new {} namespace{how}: {}", kind.name(), errno_text(errno));
            let fix = match errno {
                libc::ENOSPC => format!("raise the sysctl {} above 0 (in /etc/sysctl.d/)", kind.max_sysctl()),
                libc::EINVAL => format!("use a kernel built with {} namespaces", kind.name()),
                _ if !is_root => "run `sudo bkg doctor` for the agent's view: the agent runs as root, which \
                                  unprivileged restrictions do not bind"
                    .to_owned(),
                _ => "inside a container, run it privileged (or with CAP_SYS_ADMIN and a seccomp profile that allows \
                      clone/unshare of namespaces); else check the security module's log (dmesg)"
                    .to_owned(),
            };
            Check::fail(name, found, fix)
        }
    }
}

fn userns_check(sysctls: &UsernsSysctls, is_root: bool) -> Check {
    let name = "userns_restrictions";
    if sysctls.max_user_namespaces == Some(0) {
        return Check::fail(
            name,
            "user.max_user_namespaces is 0: nobody, root included, may create a user namespace",
            "set user.max_user_namespaces to a positive number (e.g. 10000) in /etc/sysctl.d/",
        );
    }
    let mut restrictions = Vec::new();
    if sysctls.apparmor_restrict_unprivileged_userns == Some(1) {
        restrictions
            .push("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)");
    }
    if sysctls.unprivileged_userns_clone == Some(0) {
        restrictions.push("unprivileged user namespaces are off (kernel.unprivileged_userns_clone=0)");
    }
    if restrictions.is_empty() {
        return Check::pass(name, "no restriction of user namespaces");
    }
    let found = restrictions.join("; ");
    if is_root {
        Check::pass(name, format!("{found}; the agent runs as root, which these do not bind"))
    } else {
        // The narrow fix: the agent, as root, is not bound; nothing system-wide needs turning off.
        Check::warn(
            name,
            format!("{found}; this applies to unprivileged users only"),
            "start the agent as root (`sudo bkg agent start`); do not turn the restriction off system-wide",
        )
    }
}

fn cgroup_check(facts: &CgroupFacts) -> Check {
    let name = "cgroups";
    match facts {
        CgroupFacts::V2 { own_dir, offered } => {
            let missing: Vec<&str> =
                cgroup::V2_CONTROLLERS.into_iter().filter(|wanted| !offered.iter().any(|c| c == wanted)).collect();
            if missing.is_empty() {
                Check::pass(name, format!("cgroup v2, {} has {}", own_dir.display(), offered.join(" ")))
            } else {
                Check::fail(
                    name,
                    format!("cgroup v2, but {} lacks the {} controllers", own_dir.display(), missing.join(", ")),
                    "delegate them to the agent's cgroup: run it as a systemd service with Delegate=yes \
                     (docs/compatibility.md, \"Hosts\"), or in a container with its own cgroup namespace",
                )
            }
        }
        CgroupFacts::V1 { controllers, unified } => {
            let missing: Vec<&str> =
                V1_CONTROLLERS.into_iter().filter(|wanted| !controllers.iter().any(|c| c == wanted)).collect();
            let side = match unified {
                Some(unified) if unified.is_empty() => "; the cgroup2 side hierarchy has no controllers".to_owned(),
                Some(unified) => format!("; the cgroup2 side hierarchy has only {}", unified.join(" ")),
                None => String::new(),
            };
            if missing.is_empty() {
                Check::pass(name, format!("cgroup v1 with {}{side}", V1_CONTROLLERS.join(" ")))
            } else {
                Check::fail(
                    name,
                    format!("cgroup v1 without the {} controllers", missing.join(", ")),
                    "mount the missing v1 controllers, or boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2",
                )
            }
        }
        CgroupFacts::Unusable(reason) => Check::fail(
            name,
            reason.clone(),
            "mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies); inside a container, give it its own cgroup namespace",
        ),
    }
}

fn landlock_check(abi: Option<i64>) -> Check {
    let name = "landlock";
    match abi {
        Some(abi) if abi >= STRICT_LANDLOCK_ABI => Check::pass(name, format!("Landlock ABI {abi}")),
        Some(abi) => Check::warn(
            name,
            format!(
                "Landlock ABI {abi}: file system rules only, abstract unix sockets and signals are not scoped \
                 (level standard)"
            ),
            "a kernel of 6.12 or later (Landlock ABI 6) gives the strict level",
        ),
        None => Check::warn(
            name,
            "Landlock is not enabled: the file system is confined by the mount namespace only (level degraded)",
            "boot with landlock in the lsm= list (see /sys/kernel/security/lsm), on a kernel built with \
             CONFIG_SECURITY_LANDLOCK",
        ),
    }
}

fn seccomp_check(facts: &SeccompFacts) -> Check {
    let name = "seccomp";
    let needed = ["kill_process", "errno"];
    let Some(actions) = &facts.actions else {
        return Check::fail(name, "seccomp filters are not available", "use a kernel built with CONFIG_SECCOMP_FILTER");
    };
    let missing: Vec<&str> = needed.into_iter().filter(|wanted| !actions.iter().any(|a| a == wanted)).collect();
    if !missing.is_empty() {
        return Check::fail(
            name,
            format!("seccomp lacks the {} actions", missing.join(", ")),
            "use a kernel of 4.14 or later with CONFIG_SECCOMP_FILTER",
        );
    }
    let filtered = if facts.own_mode == Some(2) {
        " (this process is already filtered, e.g. by a container's profile: the sandbox's filter stacks on it)"
    } else {
        ""
    };
    Check::pass(name, format!("seccomp filters with {}{filtered}", needed.join(", ")))
}

fn disk_check(facts: &DiskFacts) -> Check {
    let name = "disk_quota";
    match (&facts.loop_control, &facts.mkfs_ext4) {
        (Ok(()), Some(mkfs)) => Check::pass(name, format!("loop devices and {}", mkfs.display())),
        (Err(error), _) => Check::fail(
            name,
            format!("no loop devices: {error}"),
            "load the loop module (`modprobe loop`); in a container, pass --device /dev/loop-control and the /dev/loopN devices",
        ),
        (Ok(()), None) => Check::fail(
            name,
            "mkfs.ext4 not found in /usr/sbin or /sbin",
            "install e2fsprogs (apt-get install e2fsprogs)",
        ),
    }
}

/// A sandbox's disk image takes its blocks when it is made (engine/disk.rs): on a filesystem in
/// memory that is the host's memory, outside every sandbox's limit.
fn state_dir_check(facts: &StateDirFacts) -> Check {
    let name = bkg_schema::host::STATE_DIR_FS_CHECK;
    let dir = facts.path.display();
    if let Some(filesystem) = facts.holds_no_files {
        return Check::fail(
            name,
            format!("{dir} is on {filesystem}, the kernel's own filesystem, where the agent can keep nothing"),
            "start the agent with --state-dir (BKG_STATE_DIR) on a filesystem on disk, such as the default /var/lib/bkg",
        );
    }
    match facts.memory_backed {
        // Found by a new-user trial: a directory not made yet "is on" nothing.
        None if !facts.exists => {
            Check::pass(name, format!("{dir} does not exist yet; it would be on a filesystem on disk"))
        }
        None => Check::pass(name, format!("{dir} is on a filesystem on disk")),
        Some(filesystem) => Check::warn(
            name,
            format!(
                "{dir} is on {filesystem}: every sandbox's disk (500MiB by default, warm ones too) would take that much of the host's memory"
            ),
            "start the agent with --state-dir (BKG_STATE_DIR) on a filesystem on disk, such as the default /var/lib/bkg",
        ),
    }
}

fn runtime_check(runtime: &RuntimeFacts) -> Check {
    let language = runtime.language.as_str();
    let name = format!("runtime.{language}");
    let flag = format!("--{language}");
    match &runtime.version {
        Ok(version) => Check::pass(name, format!("{} is {version}", runtime.path.display())),
        Err(reason) => Check::fail(
            name,
            format!("{flag} {} {reason}", runtime.path.display()),
            // Not "install it there" over another program (found by a new-user trial).
            match reason.starts_with("is not a ") {
                true => format!("start the agent with {flag} PATH to a {language} interpreter"),
                false => format!("install {language} there, or start the agent with {flag} PATH to an interpreter"),
            },
        ),
    }
}

/// The checks whose failure leaves the engine without a piece every level needs.
fn is_core(check: &Check) -> bool {
    !check.name.starts_with("runtime.")
}

/// The level the host gives, `None` when a piece every level needs is missing.
pub fn level(facts: &HostFacts) -> Option<SecurityLevel> {
    if checks(facts).iter().any(|check| is_core(check) && check.status == CheckStatus::Fail) {
        return None;
    }
    Some(match facts.landlock_abi {
        Some(abi) if abi >= STRICT_LANDLOCK_ABI => SecurityLevel::Strict,
        Some(_) => SecurityLevel::Standard,
        None => SecurityLevel::Degraded,
    })
}

pub fn report(facts: &HostFacts) -> HostReport {
    HostReport {
        level: level(facts),
        checks: checks(facts),
        runtimes: facts
            .runtimes
            .iter()
            .filter_map(|runtime| {
                Some(Runtime {
                    language: runtime.language,
                    path: runtime.path.display().to_string(),
                    version: runtime.version.clone().ok()?,
                })
            })
            .collect(),
    }
}

/// Why the agent refuses to start here: one line with the fix.
#[derive(Debug, thiserror::Error)]
pub enum HostCheckError {
    #[error("{name}: {found}; fix: {fix}")]
    Missing { name: String, found: String, fix: String },
    #[error(
        "this host gives security level {level}, below {minimum}: {reasons}; fix that, or pass \
         --allow-degraded {level} to run at it"
    )]
    BelowMinimum { level: SecurityLevel, minimum: SecurityLevel, reasons: String },
}

/// The level the agent runs at, or why it must not start: every failed check refuses, and a
/// level below `minimum` (strict unless the operator passed `--allow-degraded`) does too.
pub fn admit(report: &HostReport, minimum: SecurityLevel) -> Result<SecurityLevel, HostCheckError> {
    if let Some(failed) = report.checks.iter().find(|check| check.status == CheckStatus::Fail) {
        return Err(HostCheckError::Missing {
            name: failed.name.clone(),
            found: failed.found.clone(),
            fix: failed.fix.clone().unwrap_or_default(),
        });
    }
    // Without failed checks there is a level: only runtime checks are outside `is_core`.
    let level = report.level.unwrap_or(SecurityLevel::Degraded);
    if level < minimum {
        let reasons = report
            .checks
            .iter()
            .filter(|check| check.status == CheckStatus::Warn && check.name == "landlock")
            .map(|check| check.found.clone())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(HostCheckError::BelowMinimum { level, minimum, reasons });
    }
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HostFacts {
        HostFacts {
            kernel_release: "6.18.44-fc-v857".into(),
            is_root: true,
            namespaces: NamespaceKind::ALL.into_iter().map(|kind| (kind, Ok(()))).collect(),
            userns: UsernsSysctls { max_user_namespaces: Some(96_364), ..UsernsSysctls::default() },
            cgroups: CgroupFacts::V1 {
                controllers: ["cpu", "cpuacct", "memory", "pids", "freezer", "blkio"].map(String::from).to_vec(),
                unified: Some(vec!["hugetlb".into()]),
            },
            landlock_abi: Some(7),
            seccomp: SeccompFacts {
                actions: Some(["kill_process", "kill_thread", "errno", "allow"].map(String::from).to_vec()),
                own_mode: Some(0),
            },
            disk: DiskFacts { loop_control: Ok(()), mkfs_ext4: Some("/usr/sbin/mkfs.ext4".into()) },
            runtimes: vec![
                RuntimeFacts {
                    language: Language::Python,
                    path: "/usr/bin/python3".into(),
                    version: Ok("Python 3.11.2".into()),
                },
                RuntimeFacts { language: Language::Node, path: "/usr/bin/node".into(), version: Ok("v20.20.2".into()) },
            ],
            state_dir: StateDirFacts {
                path: "/var/lib/bkg".into(),
                memory_backed: None,
                holds_no_files: None,
                exists: true,
            },
        }
    }

    #[test]
    fn a_state_directory_in_memory_warns_without_lowering_the_level() {
        let mut facts = healthy();
        facts.state_dir.memory_backed = Some("tmpfs");
        assert_eq!(status_of(&facts, bkg_schema::host::STATE_DIR_FS_CHECK), CheckStatus::Warn);
        assert_eq!(admit(&report(&facts), SecurityLevel::Strict).ok(), Some(SecurityLevel::Strict));
    }

    /// Found by a new-user trial: `bkg doctor --state-dir /proc/nope` passed the check.
    #[test]
    fn a_state_directory_on_the_kernels_filesystems_fails_before_it_exists() {
        let on = |dir: &Path| state_dir_facts(dir).holds_no_files;
        assert_eq!(on(Path::new("/proc/bkg-not-made/state")), Some("proc"));
        assert_eq!(on(Path::new("/sys/kernel/bkg-not-made")), Some("sysfs"));
        assert_eq!(on(&Path::new(env!("CARGO_MANIFEST_DIR")).join("not-made/state")), None);
        let mut facts = healthy();
        facts.state_dir.holds_no_files = Some("proc");
        assert_eq!(status_of(&facts, bkg_schema::host::STATE_DIR_FS_CHECK), CheckStatus::Fail);
    }

    #[test]
    fn a_memory_backed_filesystem_is_recognised_before_the_directory_exists() {
        // Under /dev/shm (tmpfs on Debian) and under the source tree (on disk), neither made yet.
        let on = |dir: &Path| state_dir_facts(dir).memory_backed;
        assert_eq!(on(Path::new("/dev/shm/bkg-not-made/state")), Some("tmpfs"));
        assert_eq!(on(&Path::new(env!("CARGO_MANIFEST_DIR")).join("not-made/state")), None);
    }

    fn status_of(facts: &HostFacts, name: &str) -> CheckStatus {
        checks(facts).into_iter().find(|check| check.name == name).map(|check| check.status).unwrap_or_else(|| {
            panic!("no check named {name}");
        })
    }

    #[test]
    fn a_host_with_every_piece_is_strict_and_passes_every_check() {
        let facts = healthy();
        assert_eq!(level(&facts), Some(SecurityLevel::Strict));
        assert!(checks(&facts).iter().all(|check| check.status == CheckStatus::Pass), "{:#?}", checks(&facts));
        assert_eq!(admit(&report(&facts), SecurityLevel::Strict).ok(), Some(SecurityLevel::Strict));
    }

    #[test]
    fn an_older_landlock_is_standard_and_no_landlock_degraded_and_each_needs_the_operators_consent() {
        let mut facts = healthy();
        facts.landlock_abi = Some(3);
        assert_eq!(level(&facts), Some(SecurityLevel::Standard));
        assert_eq!(status_of(&facts, "landlock"), CheckStatus::Warn);
        let refused = admit(&report(&facts), SecurityLevel::Strict).err().map(|error| error.to_string());
        assert!(refused.as_deref().is_some_and(|line| line.contains("--allow-degraded standard")), "{refused:?}");
        assert_eq!(admit(&report(&facts), SecurityLevel::Standard).ok(), Some(SecurityLevel::Standard));
        assert_eq!(admit(&report(&facts), SecurityLevel::Degraded).ok(), Some(SecurityLevel::Standard));

        facts.landlock_abi = None;
        assert_eq!(level(&facts), Some(SecurityLevel::Degraded));
        assert!(admit(&report(&facts), SecurityLevel::Standard).is_err());
        assert_eq!(admit(&report(&facts), SecurityLevel::Degraded).ok(), Some(SecurityLevel::Degraded));
    }

    #[test]
    fn a_missing_core_piece_leaves_no_level_and_refuses_even_a_degraded_start() {
        type Breakage = fn(&mut HostFacts);
        let breakages: Vec<(&str, Breakage)> = vec![
            ("namespace.net", |facts| facts.namespaces[3].1 = Err(libc::ENOSPC)),
            ("cgroups", |facts| {
                facts.cgroups = CgroupFacts::V2 { own_dir: "/sys/fs/cgroup/x".into(), offered: vec!["cpu".into()] }
            }),
            ("cgroups", |facts| facts.cgroups = CgroupFacts::Unusable("no cgroup mounts".into())),
            ("seccomp", |facts| facts.seccomp.actions = None),
            ("disk_quota", |facts| facts.disk.loop_control = Err("/dev/loop-control: No such file".into())),
            ("disk_quota", |facts| facts.disk.mkfs_ext4 = None),
            ("kernel", |facts| facts.kernel_release = "5.10.0-28-amd64".into()),
            ("userns_restrictions", |facts| facts.userns.max_user_namespaces = Some(0)),
        ];
        for (name, breakage) in breakages {
            let mut facts = healthy();
            breakage(&mut facts);
            assert_eq!(status_of(&facts, name), CheckStatus::Fail, "{name}");
            assert_eq!(level(&facts), None, "{name}");
            let refused = admit(&report(&facts), SecurityLevel::Degraded).err().map(|error| error.to_string());
            assert!(
                refused.as_deref().is_some_and(|line| line.starts_with(name) && !line.contains('\n')),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_runtime_that_is_missing_refuses_the_start_but_keeps_the_hosts_level() {
        let mut facts = healthy();
        facts.runtimes[1].version = Err("does not exist".into());
        assert_eq!(level(&facts), Some(SecurityLevel::Strict));
        let refused = admit(&report(&facts), SecurityLevel::Degraded).err().map(|error| error.to_string());
        assert_eq!(
            refused.as_deref(),
            Some(
                "runtime.node: --node /usr/bin/node does not exist; fix: install node there, or start the agent \
                 with --node PATH to an interpreter"
            )
        );
        assert_eq!(report(&facts).runtimes.len(), 1);
    }

    #[test]
    fn apparmors_restriction_binds_unprivileged_users_only_and_the_fix_keeps_it_on() {
        let mut facts = healthy();
        facts.userns.apparmor_restrict_unprivileged_userns = Some(1);
        assert_eq!(status_of(&facts, "userns_restrictions"), CheckStatus::Pass);
        facts.is_root = false;
        let check = checks(&facts).into_iter().find(|check| check.name == "userns_restrictions");
        let check = check.unwrap_or_else(|| panic!("no userns check"));
        assert_eq!(check.status, CheckStatus::Warn);
        assert!(check.fix.as_deref().is_some_and(|fix| fix.contains("do not turn the restriction off")));
    }

    #[test]
    fn kernel_versions_are_read_from_distribution_release_strings() {
        assert_eq!(kernel_version("6.18.44-fc-v857"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-105-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.6.87.2-microsoft-standard-WSL2"), Some((6, 6)));
        assert_eq!(kernel_version("garbage"), None);
    }

    /// The probe itself, on this host (root, every namespace kind) and with a kind blocked in a
    /// user namespace of the test's own: `user.max_net_namespaces` is per user namespace, so
    /// setting it to 0 there blocks network namespaces for this child alone.
    #[test]
    fn a_namespace_kind_blocked_in_the_tests_own_user_namespace_is_found_missing() {
        for kind in NamespaceKind::ALL {
            assert_eq!(probe_namespace(kind, false), Ok(()), "{kind:?}");
        }
        let status = crate::engine::test_support::in_child(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|error| error.to_string())?;
            std::fs::write("/proc/sys/user/max_net_namespaces", "0").map_err(|error| error.to_string())?;
            let facts_net = probe_namespace(NamespaceKind::Net, false);
            if facts_net != Err(libc::ENOSPC) {
                return Err(format!("net namespace probe gave {facts_net:?}, expected ENOSPC"));
            }
            if probe_namespace(NamespaceKind::Uts, false).is_err() {
                return Err("the uts namespace was blocked too".into());
            }
            let check = namespace_check(NamespaceKind::Net, facts_net, false);
            if check.status != CheckStatus::Fail || !check.fix.is_some_and(|fix| fix.contains("max_net_namespaces")) {
                return Err("the check did not name user.max_net_namespaces".into());
            }
            Ok(())
        });
        assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), "child ended with {status:?}");
    }

    #[test]
    fn a_runtime_path_that_does_not_exist_or_cannot_run_is_named() -> Result<(), String> {
        let missing = probe_runtime(Language::Python, Path::new("/nonexistent/python3"));
        assert_eq!(missing.version, Err("does not exist".into()));
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let plain_file = dir.path().join("node");
        std::fs::write(&plain_file, "#!/bin/sh\n").map_err(|error| error.to_string())?;
        let not_executable = probe_runtime(Language::Node, &plain_file);
        assert_eq!(not_executable.version, Err("is not an executable file".into()));
        let failing = dir.path().join("python3");
        std::fs::write(&failing, "#!/bin/sh\necho broken >&2\nexit 3\n").map_err(|error| error.to_string())?;
        std::fs::set_permissions(&failing, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|error| error.to_string())?;
        let broken = probe_runtime(Language::Python, &failing);
        assert_eq!(broken.version, Err("`--version` failed (exit status: 3): broken".into()));
        let silent = dir.path().join("silent-python3");
        std::fs::write(&silent, "#!/bin/sh\nexec sleep 600\n").map_err(|error| error.to_string())?;
        std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|error| error.to_string())?;
        let hung = probe_runtime(Language::Python, &silent);
        assert_eq!(hung.version, Err("did not answer `--version` within 10 s".into()));
        let python = probe_runtime(Language::Python, Path::new("/usr/bin/python3"));
        assert!(python.version.as_deref().is_ok_and(|version| version.starts_with("Python 3")), "{python:?}");
        let node_as_python = probe_runtime(Language::Python, Path::new("/usr/bin/node"));
        assert!(
            node_as_python
                .version
                .as_ref()
                .is_err_and(|reason| reason.starts_with("is not a python interpreter: its `--version` says `v")),
            "{node_as_python:?}"
        );
        let true_as_node = probe_runtime(Language::Node, Path::new("/bin/true"));
        assert!(
            true_as_node.version.as_ref().is_err_and(|reason| reason.starts_with("is not a node interpreter")),
            "{true_as_node:?}"
        );
        let node = probe_runtime(Language::Node, Path::new("/usr/bin/node"));
        assert!(node.version.as_deref().is_ok_and(|version| version.starts_with('v')), "{node:?}");
        Ok(())
    }
}
