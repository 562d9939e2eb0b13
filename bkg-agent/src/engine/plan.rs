//! The sandbox plan: every mount, id and limit of one sandbox as a value. It is computed here,
//! unit-tested here, and applied by `init` inside the new namespaces without further decisions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The uid and gid the sandboxed code has inside its user namespace.
pub const INNER_ID: u32 = 1000;

/// `nobody` and `nogroup` inside: mapped too (to a host id of the sandbox's own), so that
/// dropping to nobody fails with `EPERM` as it does outside, not with the `EINVAL` of an
/// unmapped id, and files of ids the sandbox does not know are shown as this one.
pub const NOBODY_ID: u32 = 65534;

/// `root` inside: mapped to a host id of the sandbox's own for the same reason (`chown` to root
/// fails with `EPERM`). No process ever has it: the code has no capability to switch to it,
/// nothing inside is setuid, and no file is owned by its host id.
pub const ROOT_ID: u32 = 0;

/// What of a sandbox's procfs is hidden (docs/security.md, TEN-04): the host-wide lists and
/// statistics of every block device and filesystem, which show other sandboxes' disks (their loop
/// devices, what they wrote, as they write it) and the host's. Nothing a program needs at run
/// time reads them.
const PROC_HIDDEN_DIRS: &[&str] = &["fs"];
const PROC_HIDDEN_FILES: &[&str] = &["diskstats", "partitions"];

/// What a sandbox's own directory on the host holds: the mount points of its root and of its
/// disk, and a temporary sandbox's disk image. Nothing else is made in it.
pub const RUN_DIR_ROOT: &str = "root";
pub const RUN_DIR_DISK: &str = "disk";
pub const RUN_DIR_IMAGE: &str = "disk.img";

/// Directories of the new root that are writable, backed by the sandbox's own disk image.
pub const WORKSPACE: &str = "/workspace";
pub const TMP: &str = "/tmp";
/// The sysfs directory glibc reads the online CPUs from: a tmpfs of the init's in the sandbox,
/// showing the run's CPUs only (engine/init.rs, `pin_cpus`).
pub const CPU_DIR: &str = "/sys/devices/system/cpu";

/// Size of the tmpfs that holds the new root's skeleton (directories, symlinks, /etc files).
const ROOT_TMPFS_BYTES: u64 = 4 * 1024 * 1024;

/// Host directories of runtime files, bound read-only when they are directories and recreated
/// when they are symlinks (as on merged-/usr systems).
const RUNTIME_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// Host files and directories under /etc that interpreters and common libraries read.
const ETC_ENTRIES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/etc/python3",
    "/etc/python3.11",
    "/etc/nsswitch.conf",
    // getservbyname, getprotobyname and getaddrinfo with a service name read these.
    "/etc/services",
    "/etc/protocols",
    // Debian's matplotlib reads its defaults here (sessions draw figures, docs/api.md).
    "/etc/matplotlibrc",
    // What the system is, as `platform.freedesktop_os_release()` and `/etc/os-release` readers
    // ask (found by a new-user trial: it was missing, though /usr/lib/os-release was there).
    "/etc/os-release",
];

/// The only host device nodes a sandbox gets. `tty` is the caller's own controlling terminal,
/// which inside can only be a terminal of the sandbox's own pty instance (the code starts in a
/// session of its own, without one).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Where the sandbox's private devpts instance is mounted; `/dev/ptmx` points into it.
pub const PTS: &str = "/dev/pts";

/// How many pseudo-terminals one sandbox may hold open: enough for any test runner or pexpect
/// session, small beside the host-wide `kernel.pty.max` that every instance draws from.
const PTYS_PER_SANDBOX: u32 = 64;

/// One step of building the new root. Paths named `target`/`path`/`link` are inside the new root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MountStep {
    /// Bind a host path read-only, without setuid or device files.
    BindReadOnly {
        source: PathBuf,
        target: PathBuf,
    },
    /// Bind one host device node (read-write, no exec).
    BindDevice {
        source: PathBuf,
        target: PathBuf,
    },
    /// Create a directory of the sandbox's disk image and bind it writable at `target`, the
    /// code's own, or root's inside when `shared` (/tmp and /dev/shm, sticky and open to all as on
    /// the host: the code makes its files there but cannot take away those it did not make, such
    /// as Node's loader, engine/prestart.rs).
    DiskDir {
        name: String,
        target: PathBuf,
        mode: u32,
        #[serde(default)]
        shared: bool,
    },
    /// Bind a directory of a persistent sandbox's disk, whose files outlive the run, writable at
    /// `target` through an idmapped mount (`IdMap::Kept`): on the disk its files are
    /// `KEPT_FILES_OWNER`'s whichever run wrote them, and each run sees them as its own user's,
    /// so no run has to walk them to hand them over. Made on the first run; a directory an
    /// earlier agent left with its files owned by an older run's uid is handed over once.
    KeptDiskDir {
        name: String,
        target: PathBuf,
        mode: u32,
        idmap: IdMap,
    },
    Symlink {
        link: PathBuf,
        points_to: PathBuf,
    },
    Dir {
        path: PathBuf,
        mode: u32,
    },
    File {
        path: PathBuf,
        contents: String,
        mode: u32,
    },
    /// Bind a host path through an idmapped mount, without setuid or device files: the files
    /// of `idmap.owner` appear as the sandbox user's and every other id as nobody, so a private
    /// project (0700, 0600) reads inside as its owner sees it while the host keeps its modes.
    /// The project and its volumes are bound this way.
    BindAsOwner {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
        idmap: IdMap,
        /// A volume's source, resolved when its sandbox was defined: one reached through a
        /// symbolic link now is refused, as a sandbox's code may make one in the project
        /// through a `:rw` volume and so redirect another volume out of it.
        no_links: bool,
    },
    /// An empty read-only tmpfs over `target`, hiding what is beneath.
    Mask {
        target: PathBuf,
    },
    /// A fresh procfs for the sandbox's pid namespace, with kernel knobs read-only.
    Proc {
        target: PathBuf,
    },
    /// The empty device `/dev/null` of the new root, read-only, over the file `target`.
    MaskFile {
        target: PathBuf,
    },
    /// A private devpts instance (`newinstance`): the sandbox sees and makes only its own
    /// pseudo-terminals, never the host's. `ptmxmode=0666` lets the code open its `ptmx`.
    PtyInstance {
        target: PathBuf,
        max_ptys: u32,
    },
}

/// Where the interpreters' short names (`python`, `node`) are linked, first on PATH.
pub const SHIM_DIR: &str = "/opt/bkg/bin";

/// Where a persistent sandbox sees its project, read-only; its commands start there.
pub const PROJECT: &str = "/project";

/// Where a run sees its Python environment (`Additions::python_env`), read-only; it is on
/// `PYTHONPATH`, and its `bin` on `PATH`.
pub const PYTHON_ENV: &str = "/opt/bkg/python";

/// Where a run sees its Node.js environment (`Additions::node_env`), read-only: its
/// `node_modules` is on `NODE_PATH`, and `node_modules/.bin` on `PATH`.
pub const NODE_ENV: &str = "/opt/bkg/node";

/// What one sandbox adds to the common root: an environment of installed packages (Python's or
/// Node's), and host names (an install sandbox's names of its package index, `engine/relay.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Additions {
    pub python_env: Option<PathBuf>,
    pub node_env: Option<PathBuf>,
    pub hosts: Vec<(String, std::net::Ipv4Addr)>,
}

impl Additions {
    pub fn is_empty(&self) -> bool {
        self.python_env.is_none() && self.node_env.is_none() && self.hosts.is_empty()
    }
}

/// Who owns a host file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The mapping of an idmapped mount (ids inside its user namespace are the ids on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IdMap {
    /// A host directory's files: `owner`'s are shown as the sandbox user's (`shown_as`, uid and
    /// gid), and what the sandbox writes lands on disk as `owner`'s; every other id is nobody.
    Owner { owner: Owner, shown_as: u32 },
    /// A kept disk directory's files (`KeptDiskDir`), on disk under the ids the code has inside
    /// and shown as the code's host ids (`HostIds::code_id_map`): the sandbox user's as its
    /// own, and what the code may do there is what it may do on a disk of its own (a `chown` to
    /// its root or nobody fails with `EPERM`, where an id the mount does not map would fail
    /// with `EOVERFLOW`, which `cp -a` does not forgive). The code's root is its own host id on
    /// disk too (no file can be given it), as root is root: the init and the agent make
    /// files there as root before they give them to the sandbox user (uploads, volumes' mount
    /// points).
    Kept { ids: HostIds },
}

impl IdMap {
    /// The `uid_map` of the mount's user namespace.
    pub fn uid_ranges(&self) -> Vec<IdRange> {
        self.ranges(|owner| owner.uid)
    }

    /// The `gid_map`, as `uid_ranges`.
    pub fn gid_ranges(&self) -> Vec<IdRange> {
        self.ranges(|owner| owner.gid)
    }

    fn ranges(&self, id_of: impl Fn(Owner) -> u32) -> Vec<IdRange> {
        let one = |inside, host| IdRange { inside, host, count: 1 };
        match *self {
            IdMap::Owner { owner, shown_as } => vec![one(id_of(owner), shown_as)],
            IdMap::Kept { ids } => {
                vec![one(0, 0), one(INNER_ID, ids.sandbox), one(NOBODY_ID, ids.nobody), one(ids.root, ids.root)]
            }
        }
    }
}

/// Who owns a persistent sandbox's kept files on its disk: the sandbox user's ids inside, the
/// same for every run, whose own host uid the idmapped mount shows them as (`KeptDiskDir`).
pub const KEPT_FILES_OWNER: Owner = Owner { uid: INNER_ID, gid: INNER_ID };

/// The interpreters a sandbox offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtimes {
    pub python: PathBuf,
    pub node: PathBuf,
}

/// What a persistent sandbox adds: its project, read-only, and the project's volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectMounts {
    pub dir: PathBuf,
    pub owner: Owner,
    /// The project's state folder, hidden from the sandbox (it holds every sandbox's disk).
    pub state_dir: PathBuf,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: PathBuf,
    pub read_only: bool,
    pub owner: Owner,
}

/// Host ids the sandbox runs under; unique per live sandbox so sandboxes cannot signal each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostIds {
    /// The code's uid and gid on the host (mapped to `INNER_ID` inside).
    pub sandbox: u32,
    /// What the sandbox's pid 1 drops to once the code runs: not the code's uid, so the code
    /// cannot signal or trace it.
    pub init: u32,
    /// Host uid and gid of `nobody`/`nogroup` (`NOBODY_ID`) inside. No process ever runs as it:
    /// the code has no capability to switch to it.
    pub nobody: u32,
    /// Host uid and gid of `root` (`ROOT_ID`) inside; like `nobody`, never a process's.
    pub root: u32,
}

/// One line of a user namespace's `uid_map`/`gid_map`: `count` ids from `inside` are `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub host: u32,
    pub count: u32,
}

impl HostIds {
    /// The ids of the code's user namespace (uids and gids alike): root, the sandbox user and
    /// nobody, each a host id of this sandbox's own, so that switching or giving a file to any
    /// of them fails with `EPERM` as outside. Pid 1's id is never mapped.
    pub fn code_id_map(&self) -> [IdRange; 3] {
        [
            IdRange { inside: ROOT_ID, host: self.root, count: 1 },
            IdRange { inside: INNER_ID, host: self.sandbox, count: 1 },
            IdRange { inside: NOBODY_ID, host: self.nobody, count: 1 },
        ]
    }
}

/// The text of a `uid_map`/`gid_map` file for `ranges`.
pub fn id_map_text(ranges: &[IdRange]) -> String {
    ranges.iter().map(|range| format!("{} {} {}\n", range.inside, range.host, range.count)).collect()
}

/// Resource limits applied with setrlimit, beside the cgroup limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessLimits {
    pub open_files: u64,
    pub core_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxPlan {
    /// The agent's pid: the init refuses to go on when its parent is anything else.
    pub agent_pid: u32,
    /// Host path where the new root is assembled (inside the sandbox's own mount namespace).
    pub root_dir: PathBuf,
    pub root_tmpfs_bytes: u64,
    pub disk_image: PathBuf,
    /// Host path where the disk image is mounted before its directories are bound in.
    pub disk_mount_dir: PathBuf,
    /// Whether the disk's filesystem sends write barriers (cache flushes) down to the host's
    /// disk: only a persistent sandbox's, whose files must survive a crash of the host. A
    /// temporary sandbox's disk is emptied after its run whatever happens, so each flush it
    /// sent (two as it is mounted and unmounted, one per `fsync` of its code) made the run
    /// wait for the host's disk for nothing (docs/testing.md, "Temporary disks without write
    /// barriers"), and let code flush the host's disk as often as it liked.
    #[serde(default = "barriers_by_default")]
    pub disk_barriers: bool,
    pub hostname: String,
    pub ids: HostIds,
    pub cgroup_joins: Vec<PathBuf>,
    pub steps: Vec<MountStep>,
    /// Paths (inside) the code may read and execute, and those it may also write (Landlock).
    pub landlock_read_exec: Vec<PathBuf>,
    pub landlock_read_write: Vec<PathBuf>,
    pub process_limits: ProcessLimits,
    /// Prepared ahead for the warm pool, where nobody waits for it: once it has joined its
    /// cgroups the init builds the sandbox at idle priority, so runs going on come first, and
    /// pid 1 returns to normal priority when it gets its order (engine/init.rs).
    pub background: bool,
    /// The interpreter pid 1 starts ahead for the run to come (engine/prestart.rs), if any.
    pub prestart: Option<super::prestart::PrestartPlan>,
    /// The zygote's socket (engine/zygote.rs), whose fork becomes the prestarted interpreter.
    #[serde(default)]
    pub zygote: Option<PathBuf>,
}

/// A plan that does not say keeps the filesystem's safe default.
fn barriers_by_default() -> bool {
    true
}

/// What the host offers, discovered once; kept apart so the plan is a pure function of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostLayout {
    /// Runtime directories that exist, with their symlink target when they are symlinks.
    pub runtime_dirs: Vec<(PathBuf, Option<PathBuf>)>,
    /// /etc entries that exist.
    pub etc_entries: Vec<PathBuf>,
}

impl HostLayout {
    pub fn discover() -> Self {
        let runtime_dirs = RUNTIME_DIRS
            .iter()
            .map(Path::new)
            .filter_map(|dir| {
                let meta = std::fs::symlink_metadata(dir).ok()?;
                if meta.file_type().is_symlink() {
                    Some((dir.to_path_buf(), Some(std::fs::read_link(dir).ok()?)))
                } else if meta.is_dir() {
                    Some((dir.to_path_buf(), None))
                } else {
                    None
                }
            })
            .collect();
        let etc_entries = ETC_ENTRIES.iter().map(PathBuf::from).filter(|path| path.exists()).collect();
        Self { runtime_dirs, etc_entries }
    }
}

/// The per-sandbox facts the agent decides before the plan is made.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    pub agent_pid: u32,
    pub run_dir: PathBuf,
    pub disk_image: PathBuf,
    pub runtimes: Runtimes,
    pub project: Option<ProjectMounts>,
    pub hostname: String,
    pub ids: HostIds,
    pub cgroup_joins: Vec<PathBuf>,
    pub additions: Additions,
}

impl SandboxPlan {
    pub fn new(host: &HostLayout, inputs: PlanInputs) -> Self {
        let mut steps = Vec::new();
        for (dir, symlink_target) in &host.runtime_dirs {
            match symlink_target {
                Some(points_to) => steps.push(MountStep::Symlink { link: dir.clone(), points_to: points_to.clone() }),
                None => steps.push(MountStep::BindReadOnly { source: dir.clone(), target: dir.clone() }),
            }
        }

        steps.push(MountStep::Dir { path: "/etc".into(), mode: 0o755 });
        for entry in &host.etc_entries {
            steps.push(MountStep::BindReadOnly { source: entry.clone(), target: entry.clone() });
        }
        steps.extend(generated_etc_files(&inputs.hostname, &inputs.additions.hosts));

        // Where the init shows the run's CPUs as online (engine/init.rs, `pin_cpus`).
        steps.push(MountStep::Dir { path: CPU_DIR.into(), mode: 0o755 });
        steps.push(MountStep::Dir { path: "/dev".into(), mode: 0o755 });
        for device in DEVICES {
            let path = Path::new("/dev").join(device);
            steps.push(MountStep::BindDevice { source: path.clone(), target: path });
        }
        steps.push(MountStep::PtyInstance { target: PTS.into(), max_ptys: PTYS_PER_SANDBOX });
        for (name, points_to) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            steps.push(MountStep::Symlink { link: Path::new("/dev").join(name), points_to: points_to.into() });
        }
        steps.push(MountStep::DiskDir { name: "shm".into(), target: "/dev/shm".into(), mode: 0o1777, shared: true });
        steps.push(MountStep::DiskDir { name: "tmp".into(), target: TMP.into(), mode: 0o1777, shared: true });
        let (name, target, mode) = ("workspace".into(), WORKSPACE.into(), 0o755);
        steps.push(match inputs.project {
            None => MountStep::DiskDir { name, target, mode, shared: false },
            Some(_) => MountStep::KeptDiskDir { name, target, mode, idmap: IdMap::Kept { ids: inputs.ids } },
        });

        steps.push(MountStep::Dir { path: SHIM_DIR.into(), mode: 0o755 });
        for (name, runtime) in [
            ("python", &inputs.runtimes.python),
            ("python3", &inputs.runtimes.python),
            ("node", &inputs.runtimes.node),
            ("nodejs", &inputs.runtimes.node),
        ] {
            steps.push(MountStep::Symlink { link: Path::new(SHIM_DIR).join(name), points_to: runtime.clone() });
        }

        if let Some(env) = &inputs.additions.python_env {
            steps.push(MountStep::BindReadOnly { source: env.clone(), target: PYTHON_ENV.into() });
        }
        if let Some(env) = &inputs.additions.node_env {
            steps.push(MountStep::BindReadOnly { source: env.clone(), target: NODE_ENV.into() });
        }

        if let Some(project) = &inputs.project {
            // The code's host uid and gid are both `ids.sandbox` (see init's lock_down).
            let as_sandbox = |owner: Owner| IdMap::Owner { owner, shown_as: inputs.ids.sandbox };
            steps.push(MountStep::BindAsOwner {
                source: project.dir.clone(),
                target: PROJECT.into(),
                read_only: true,
                idmap: as_sandbox(project.owner),
                no_links: false,
            });
            if let Ok(hidden) = project.state_dir.strip_prefix(&project.dir) {
                steps.push(MountStep::Mask { target: Path::new(PROJECT).join(hidden) });
            }
            for volume in &project.volumes {
                steps.push(MountStep::BindAsOwner {
                    source: volume.host.clone(),
                    target: volume.guest.clone(),
                    read_only: volume.read_only,
                    idmap: as_sandbox(volume.owner),
                    no_links: true,
                });
            }
        }
        steps.push(MountStep::Proc { target: "/proc".into() });
        steps.extend(PROC_HIDDEN_DIRS.iter().map(|dir| MountStep::Mask { target: Path::new("/proc").join(dir) }));
        steps
            .extend(PROC_HIDDEN_FILES.iter().map(|file| MountStep::MaskFile { target: Path::new("/proc").join(file) }));

        // The new root holds only what the steps above put there, so all of it may be read;
        // Landlock's part is to keep every write inside the disk image and /dev.
        let read_exec = vec!["/".into()];
        let read_write = vec![WORKSPACE.into(), TMP.into(), "/dev".into()];

        SandboxPlan {
            agent_pid: inputs.agent_pid,
            root_dir: inputs.run_dir.join(RUN_DIR_ROOT),
            root_tmpfs_bytes: ROOT_TMPFS_BYTES,
            disk_image: inputs.disk_image,
            disk_mount_dir: inputs.run_dir.join(RUN_DIR_DISK),
            disk_barriers: inputs.project.is_some(),
            hostname: inputs.hostname,
            ids: inputs.ids,
            cgroup_joins: inputs.cgroup_joins,
            steps,
            landlock_read_exec: read_exec,
            landlock_read_write: read_write,
            process_limits: ProcessLimits { open_files: 4096, core_bytes: 0 },
            background: false,
            prestart: None,
            zygote: None,
        }
    }
}

impl SandboxPlan {
    /// Who is given the directories the init makes for the mount point `target`: the sandbox
    /// user, beneath a writable directory of the disk (a volume inside /workspace: the code may
    /// write there, and remove them once the volume is gone); root, in the root's own tmpfs.
    pub fn mount_point_owner(&self, target: &Path) -> Option<u32> {
        let on_disk = self.steps.iter().any(|step| match step {
            MountStep::DiskDir { target: dir, .. } | MountStep::KeptDiskDir { target: dir, .. } => {
                target.starts_with(dir) && target != dir
            }
            _ => false,
        });
        on_disk.then_some(self.ids.sandbox)
    }

    /// Every distinct id mapping the steps need, each made once as a user namespace.
    pub fn idmaps(&self) -> BTreeSet<IdMap> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                MountStep::BindAsOwner { idmap, .. } | MountStep::KeptDiskDir { idmap, .. } => Some(*idmap),
                _ => None,
            })
            .collect()
    }
}

/// The sandbox's own passwd, group and hosts: the host's are never shown.
fn generated_etc_files(hostname: &str, extra_hosts: &[(String, std::net::Ipv4Addr)]) -> Vec<MountStep> {
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{INNER_ID}:{INNER_ID}:bkg sandbox:{WORKSPACE}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nsandbox:x:{INNER_ID}:\nnogroup:x:65534:\n");
    let mut hosts = format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, address) in extra_hosts {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    vec![
        MountStep::File { path: "/etc/passwd".into(), contents: passwd, mode: 0o644 },
        MountStep::File { path: "/etc/group".into(), contents: group, mode: 0o644 },
        MountStep::File { path: "/etc/hosts".into(), contents: hosts, mode: 0o644 },
        MountStep::File { path: "/etc/hostname".into(), contents: format!("{hostname}\n"), mode: 0o644 },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_host() -> HostLayout {
        HostLayout {
            runtime_dirs: vec![
                ("/usr".into(), None),
                ("/bin".into(), Some("usr/bin".into())),
                ("/lib".into(), Some("usr/lib".into())),
                ("/lib64".into(), Some("usr/lib64".into())),
                ("/sbin".into(), Some("usr/sbin".into())),
            ],
            etc_entries: vec!["/etc/ld.so.cache".into(), "/etc/ssl".into(), "/etc/alternatives".into()],
        }
    }

    fn plan_inputs() -> PlanInputs {
        PlanInputs {
            agent_pid: 42,
            run_dir: "/var/lib/bkg/runs/r1".into(),
            disk_image: "/var/lib/bkg/runs/r1/disk.img".into(),
            runtimes: Runtimes { python: "/usr/bin/python3".into(), node: "/usr/bin/node".into() },
            project: None,
            hostname: "bkg".into(),
            ids: HostIds { sandbox: 200_000, init: 200_001, nobody: 200_002, root: 200_003 },
            cgroup_joins: vec![],
            additions: Additions::default(),
        }
    }

    fn plan() -> SandboxPlan {
        SandboxPlan::new(&debian_host(), plan_inputs())
    }

    fn bound_sources(plan: &SandboxPlan) -> Vec<&Path> {
        plan.steps
            .iter()
            .filter_map(|step| match step {
                MountStep::BindReadOnly { source, .. } | MountStep::BindDevice { source, .. } => Some(source.as_path()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn runtime_files_are_read_only_and_symlinks_are_recreated() {
        let plan = plan();
        assert!(plan.steps.contains(&MountStep::BindReadOnly { source: "/usr".into(), target: "/usr".into() }));
        assert!(plan.steps.contains(&MountStep::Symlink { link: "/bin".into(), points_to: "usr/bin".into() }));
        assert_eq!(plan.landlock_read_exec, [PathBuf::from("/")]);
        assert!(!plan.landlock_read_write.iter().any(|path| path.starts_with("/usr") || path == Path::new("/")));
    }

    #[test]
    fn no_host_secret_or_home_is_bound() {
        let plan = plan();
        for source in bound_sources(&plan) {
            for forbidden in ["/root", "/home", "/etc/shadow", "/etc/passwd", "/var", "/run", "/proc", "/sys"] {
                assert!(!source.starts_with(forbidden), "{} must not be bound", source.display());
            }
            assert_ne!(source, Path::new("/etc"), "all of /etc must not be bound");
        }
    }

    #[test]
    fn only_harmless_devices() {
        let plan = plan();
        let devices: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|step| match step {
                MountStep::BindDevice { source, .. } => Some(source.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(devices, ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]);
    }

    #[test]
    fn ptys_come_from_a_private_instance_and_ptmx_points_into_it() {
        let plan = plan();
        assert!(plan.steps.contains(&MountStep::PtyInstance { target: "/dev/pts".into(), max_ptys: 64 }));
        assert!(plan.steps.contains(&MountStep::Symlink { link: "/dev/ptmx".into(), points_to: "pts/ptmx".into() }));
        assert!(
            !bound_sources(&plan)
                .iter()
                .any(|source| source.starts_with("/dev/pts") || *source == Path::new("/dev/ptmx")),
            "the host's ptys are never bound"
        );
    }

    #[test]
    fn services_and_protocols_come_from_the_host_read_only() {
        let host = HostLayout { etc_entries: vec!["/etc/services".into(), "/etc/protocols".into()], ..debian_host() };
        let plan = SandboxPlan::new(&host, plan_inputs());
        for file in ["/etc/services", "/etc/protocols"] {
            assert!(
                plan.steps.contains(&MountStep::BindReadOnly { source: file.into(), target: file.into() }),
                "{file}"
            );
        }
        assert!(ETC_ENTRIES.contains(&"/etc/services") && ETC_ENTRIES.contains(&"/etc/protocols"));
    }

    #[test]
    fn the_code_maps_only_root_its_own_user_and_nobody_to_its_own_host_ids() {
        let ids = HostIds { sandbox: 200_000, init: 200_001, nobody: 200_002, root: 200_003 };
        assert_eq!(id_map_text(&ids.code_id_map()), "0 200003 1\n1000 200000 1\n65534 200002 1\n");
        assert!(ids.code_id_map().iter().all(|range| range.host != 0 && range.host != ids.init));
    }

    #[test]
    fn a_kept_directory_s_mount_shows_the_code_s_ids_as_its_host_ids_and_root_as_root() {
        let ids = HostIds { sandbox: 200_000, init: 200_001, nobody: 200_002, root: 200_003 };
        let kept = IdMap::Kept { ids };
        let text = "0 0 1\n1000 200000 1\n65534 200002 1\n200003 200003 1\n";
        assert_eq!((id_map_text(&kept.uid_ranges()), id_map_text(&kept.gid_ranges())), (text.into(), text.into()));
        // Every id the code has inside is mapped, so that a chown to any is refused as on its own disk.
        for IdRange { host, .. } in ids.code_id_map() {
            assert!(kept.uid_ranges().iter().any(|range| range.host == host), "{host}");
        }
        assert!(kept.uid_ranges().iter().all(|range| range.host != ids.init), "pid 1's id is never mapped");
        let project = IdMap::Owner { owner: Owner { uid: 1001, gid: 1002 }, shown_as: 200_000 };
        assert_eq!(id_map_text(&project.uid_ranges()), "1001 200000 1\n");
        assert_eq!(id_map_text(&project.gid_ranges()), "1002 200000 1\n");
    }

    #[test]
    fn writable_places_are_on_the_disk_image() {
        let plan = plan();
        for target in ["/workspace", "/tmp", "/dev/shm"] {
            assert!(
                plan.steps
                    .iter()
                    .any(|step| matches!(step, MountStep::DiskDir { target: t, .. } if t == Path::new(target))),
                "{target} must be on the disk image"
            );
        }
        // /tmp and /dev/shm are root's inside, sticky, as on the host; /workspace is the code's.
        let shared: Vec<(&str, bool)> = plan
            .steps
            .iter()
            .filter_map(|step| match step {
                MountStep::DiskDir { name, shared, .. } => Some((name.as_str(), *shared)),
                _ => None,
            })
            .collect();
        assert_eq!(shared, [("shm", true), ("tmp", true), ("workspace", false)]);
        assert_eq!(plan.disk_image, PathBuf::from("/var/lib/bkg/runs/r1/disk.img"));
        assert_eq!(plan.landlock_read_write, [PathBuf::from("/workspace"), "/tmp".into(), "/dev".into()]);
    }

    #[test]
    fn generated_passwd_names_only_the_sandbox_user() {
        let plan = plan();
        let passwd = plan.steps.iter().find_map(|step| match step {
            MountStep::File { path, contents, .. } if path == Path::new("/etc/passwd") => Some(contents.clone()),
            _ => None,
        });
        let passwd = passwd.unwrap_or_default();
        assert!(passwd.contains("sandbox:x:1000:1000"));
        assert_eq!(passwd.lines().count(), 3);
    }

    #[test]
    fn interpreters_have_their_short_names_on_path() {
        let plan = plan();
        assert!(plan.steps.contains(&MountStep::Symlink {
            link: "/opt/bkg/bin/python".into(),
            points_to: "/usr/bin/python3".into()
        }));
        assert!(
            plan.steps
                .contains(&MountStep::Symlink { link: "/opt/bkg/bin/node".into(), points_to: "/usr/bin/node".into() })
        );
    }

    #[test]
    fn a_project_is_read_only_its_state_hidden_and_its_volumes_bound_after_the_workspace() {
        let mut inputs = PlanInputs {
            agent_pid: 42,
            run_dir: "/var/lib/bkg/sandboxes/s1".into(),
            disk_image: "/srv/app/.bkg/sandboxes/api/disk.img".into(),
            runtimes: Runtimes { python: "/usr/bin/python3".into(), node: "/usr/bin/node".into() },
            project: None,
            hostname: "bkg".into(),
            ids: HostIds { sandbox: 200_000, init: 200_001, nobody: 200_002, root: 200_003 },
            cgroup_joins: vec![],
            additions: Additions::default(),
        };
        inputs.project = Some(ProjectMounts {
            dir: "/srv/app".into(),
            owner: ALICE,
            state_dir: "/srv/app/.bkg".into(),
            volumes: vec![Volume {
                host: "/srv/app/src".into(),
                guest: "/workspace/src".into(),
                read_only: true,
                owner: ALICE,
            }],
        });
        let plan = SandboxPlan::new(&debian_host(), inputs);
        let position = |wanted: &MountStep| plan.steps.iter().position(|step| step == wanted);
        let as_sandbox = IdMap::Owner { owner: ALICE, shown_as: 200_000 };
        let project = position(&MountStep::BindAsOwner {
            source: "/srv/app".into(),
            target: "/project".into(),
            read_only: true,
            idmap: as_sandbox,
            no_links: false,
        });
        let mask = position(&MountStep::Mask { target: "/project/.bkg".into() });
        let volume = position(&MountStep::BindAsOwner {
            source: "/srv/app/src".into(),
            target: "/workspace/src".into(),
            read_only: true,
            idmap: as_sandbox,
            no_links: true,
        });
        let workspace = position(&MountStep::KeptDiskDir {
            name: "workspace".into(),
            target: "/workspace".into(),
            mode: 0o755,
            idmap: IdMap::Kept { ids: HostIds { sandbox: 200_000, init: 200_001, nobody: 200_002, root: 200_003 } },
        });
        assert!(project.is_some() && mask > project && volume > workspace && workspace.is_some(), "{:#?}", plan.steps);
        assert_eq!(plan.mount_point_owner(Path::new("/workspace/src")), Some(200_000), "the code's to remove");
        assert_eq!(plan.mount_point_owner(Path::new("/workspace")), None);
        assert_eq!(plan.mount_point_owner(Path::new("/project")), None, "in the root's tmpfs");
        assert_eq!(plan.mount_point_owner(Path::new("/workspaces/x")), None);
        assert_eq!(plan.idmaps().len(), 2, "the project's and volume's owner, and the kept files' owner");
        assert_eq!(plan.disk_image, PathBuf::from("/srv/app/.bkg/sandboxes/api/disk.img"));
    }

    #[test]
    fn only_a_persistent_sandbox_s_disk_sends_write_barriers_to_the_host() {
        assert!(!plan().disk_barriers, "a temporary disk is emptied after its run whatever happens");
        let mut inputs = plan_inputs();
        inputs.project = Some(ProjectMounts {
            dir: "/srv/app".into(),
            owner: ALICE,
            state_dir: "/srv/app/.bkg".into(),
            volumes: Vec::new(),
        });
        assert!(
            SandboxPlan::new(&debian_host(), inputs).disk_barriers,
            "a persistent disk's files must survive a crash"
        );
        let mut sent = serde_json::to_value(plan()).expect("plan as JSON");
        if let Some(fields) = sent.as_object_mut() {
            fields.remove("disk_barriers");
        }
        let read: SandboxPlan = serde_json::from_value(sent).expect("a plan that does not say");
        assert!(read.disk_barriers, "a plan that does not say keeps the barriers");
    }

    const ALICE: Owner = Owner { uid: 1234, gid: 1235 };

    #[test]
    fn each_project_path_is_shown_as_the_sandbox_users_only_for_its_own_owner() {
        let root = Owner { uid: 0, gid: 0 };
        let plan = SandboxPlan::new(
            &debian_host(),
            PlanInputs {
                agent_pid: 42,
                run_dir: "/var/lib/bkg/sandboxes/s1".into(),
                disk_image: "/home/alice/app/.bkg/sandboxes/api/disk.img".into(),
                runtimes: Runtimes { python: "/usr/bin/python3".into(), node: "/usr/bin/node".into() },
                project: Some(ProjectMounts {
                    dir: "/home/alice/app".into(),
                    owner: ALICE,
                    state_dir: "/home/alice/app/.bkg".into(),
                    volumes: vec![
                        Volume {
                            host: "/srv/data".into(),
                            guest: "/workspace/data".into(),
                            read_only: false,
                            owner: root,
                        },
                        Volume {
                            host: "/home/alice/in".into(),
                            guest: "/workspace/in".into(),
                            read_only: true,
                            owner: ALICE,
                        },
                    ],
                }),
                hostname: "bkg".into(),
                ids: HostIds { sandbox: 200_004, init: 200_005, nobody: 200_006, root: 200_007 },
                cgroup_joins: vec![],
                additions: Additions::default(),
            },
        );
        let bound: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|step| match step {
                MountStep::BindAsOwner { source, read_only, idmap, .. } => Some((source.to_str(), *read_only, *idmap)),
                _ => None,
            })
            .collect();
        let alice = IdMap::Owner { owner: ALICE, shown_as: 200_004 };
        let root_files = IdMap::Owner { owner: root, shown_as: 200_004 };
        let kept = IdMap::Kept { ids: HostIds { sandbox: 200_004, init: 200_005, nobody: 200_006, root: 200_007 } };
        assert_eq!(
            bound,
            [
                (Some("/home/alice/app"), true, alice),
                (Some("/srv/data"), false, root_files),
                (Some("/home/alice/in"), true, alice)
            ]
        );
        assert_eq!(plan.idmaps().into_iter().collect::<Vec<_>>(), [root_files, alice, kept], "one user namespace each");
        assert!(
            !plan
                .steps
                .iter()
                .any(|step| matches!(step, MountStep::BindReadOnly { target, .. } if target.starts_with(PROJECT))),
            "the project is never bound without its idmap"
        );
    }

    #[test]
    fn environments_are_bound_read_only_and_index_names_go_into_hosts() {
        let inputs = PlanInputs {
            additions: Additions {
                python_env: Some("/var/lib/bkg/envs/python/ab12".into()),
                node_env: Some("/var/lib/bkg/envs/node/cd34".into()),
                hosts: vec![("pypi.org".into(), std::net::Ipv4Addr::new(127, 0, 0, 2))],
            },
            ..plan_inputs()
        };
        let plan = SandboxPlan::new(&debian_host(), inputs);
        assert!(plan.steps.contains(&MountStep::BindReadOnly {
            source: "/var/lib/bkg/envs/python/ab12".into(),
            target: PYTHON_ENV.into()
        }));
        let hosts = plan.steps.iter().find_map(|step| match step {
            MountStep::File { path, contents, .. } if path == Path::new("/etc/hosts") => Some(contents.clone()),
            _ => None,
        });
        assert!(hosts.unwrap_or_default().ends_with("127.0.0.2\tpypi.org\n"));
        assert!(plan.steps.contains(&MountStep::BindReadOnly {
            source: "/var/lib/bkg/envs/node/cd34".into(),
            target: NODE_ENV.into()
        }));
        assert!(
            !plan.landlock_read_write.iter().any(|path| path.starts_with(PYTHON_ENV) || path.starts_with(NODE_ENV))
        );
    }

    #[test]
    fn a_temporary_sandbox_needs_no_idmap() {
        assert!(plan().idmaps().is_empty());
    }

    #[test]
    fn proc_comes_after_every_bind_so_it_is_not_shadowed() {
        let plan = plan();
        let proc = plan.steps.iter().position(|step| matches!(step, MountStep::Proc { .. })).expect("a procfs");
        // Only what hides parts of it comes after it.
        let after: Vec<_> = plan.steps[proc + 1..].iter().collect();
        assert_eq!(
            after,
            [
                &MountStep::Mask { target: "/proc/fs".into() },
                &MountStep::MaskFile { target: "/proc/diskstats".into() },
                &MountStep::MaskFile { target: "/proc/partitions".into() },
            ]
        );
    }
}
