//! Where the agent's socket and state live unless told otherwise, shared so the CLI finds the
//! agent it would start.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const SOCKET_ENV: &str = "BKG_SOCKET";
/// The socket of the machine's one agent, when `BKG_SOCKET` names no other.
pub const MACHINE_SOCKET: &str = "/run/bkg/agent.sock";
pub const STATE_DIR_ENV: &str = "BKG_STATE_DIR";

fn is_root() -> bool {
    // Reading the effective uid from /proc keeps this crate free of libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Where agents keep their locks: per boot (a tmpfs), like the cgroups and sockets they guard,
/// and shared by every agent of the host whatever its state directory.
pub const LOCK_DIR: &str = "/run/bkg/locks";

/// The lock file in `lock_dir` of the `what` (`cgroup`, `socket`) at `path`: named by a hash of
/// the path, which may be long. An agent holds it for its whole life, with `pid N, state
/// directory DIR` in it, so that another (or `bkg agent stop`) can tell who holds the path.
pub fn lock_file(lock_dir: &Path, what: &str, path: &Path) -> PathBuf {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    lock_dir.join(format!("{what}-{}.lock", hex::encode(&digest[..12])))
}

/// The lock file of the agent socket `socket`, as the agent (by its `--socket`) and the CLI (by
/// its `BKG_SOCKET`) both name it, relative or not.
pub fn socket_lock_file(lock_dir: &Path, socket: &Path) -> PathBuf {
    lock_file(lock_dir, "socket", &std::path::absolute(socket).unwrap_or_else(|_| socket.to_owned()))
}

/// What an agent writes into the lock files it holds: `pid N, state directory DIR`.
pub fn lock_holder_record(pid: u32, state_dir: &Path) -> String {
    format!("pid {pid}, state directory {}", state_dir.display())
}

/// The pid of another process that holds a `flock` on the file of `metadata`, from /proc/locks
/// (which names the inode locked and the process that locked it), if one does.
pub fn flock_holder(metadata: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let device = metadata.dev();
    // /proc/locks writes the device as MAJOR:MINOR in hex, then the inode in decimal; the
    // numbers are split out of dev_t as glibc's major() and minor() do.
    let major = ((device >> 8) & 0xfff) | ((device >> 32) & !0xfff);
    let minor = (device & 0xff) | ((device >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{}", metadata.ino());
    let own = std::process::id();
    std::fs::read_to_string("/proc/locks").ok()?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; a blocked waiter's line has `->`.
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, inode, ..] if *inode == wanted => pid.parse().ok().filter(|pid| *pid != own),
            _ => None,
        }
    })
}

/// `$BKG_SOCKET`, else `/run/bkg/agent.sock`: the one agent of the machine, which runs as root
/// and serves its users through the socket's group.
pub fn default_socket() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    PathBuf::from(MACHINE_SOCKET)
}

/// `$BKG_STATE_DIR`, else `/var/lib/bkg` for root, else `$XDG_STATE_HOME/bkg` (`~/.local/state/bkg`).
pub fn default_state_dir() -> PathBuf {
    if let Some(path) = std::env::var_os(STATE_DIR_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if is_root() {
        return PathBuf::from("/var/lib/bkg");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(state).join("bkg");
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".local/state/bkg"))
        .unwrap_or_else(|| std::env::temp_dir().join("bkg-state"))
}

/// Where the agent keeps a persistent sandbox's own files: `STATE_DIR/workspaces/NAMESPACE/ID/`
/// (the id names the project and the sandbox, the namespace its user) with its disk image, its
/// environment and its run logs. Never beneath the project, which its user can write: the root
/// agent mounts no image a user could have made, and writes nothing where a user's symlink
/// could send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxHome {
    dir: PathBuf,
}

impl SandboxHome {
    pub fn new(state_dir: &std::path::Path, namespace: &str, sandbox_id: &str) -> Self {
        Self { dir: state_dir.join("workspaces").join(namespace).join(sandbox_id) }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The sandbox's `/workspace`, an ext4 image.
    pub fn disk_image(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// The sandbox's environment variables, kept apart from the store (mode 0600).
    pub fn env_file(&self) -> PathBuf {
        self.dir.join("env.json")
    }

    /// One log per run, `RUN_ID.log`, the newest kept.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// Where a project keeps bkg's files: `PROJECT/.bkg/` (ignored by git). Sandboxes made before
/// their files moved to the agent's state dir (`SandboxHome`) kept their disk image, environment
/// and logs in `.bkg/sandboxes/NAME/`; the agent moves an image it made from there once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectLayout {
    project_dir: PathBuf,
}

impl ProjectLayout {
    pub fn new(project_dir: impl Into<PathBuf>) -> Self {
        Self { project_dir: project_dir.into() }
    }

    pub fn project_dir(&self) -> &std::path::Path {
        &self.project_dir
    }

    /// `PROJECT/.bkg`: mounted read-only into the project's sandboxes' view, never writable by them.
    pub fn state_dir(&self) -> PathBuf {
        self.project_dir.join(".bkg")
    }

    /// Where an earlier agent kept sandbox `name`'s files.
    pub fn legacy_sandbox_dir(&self, name: &str) -> PathBuf {
        self.state_dir().join("sandboxes").join(name)
    }

    /// Where an earlier agent kept sandbox `name`'s disk image.
    pub fn legacy_disk_image(&self, name: &str) -> PathBuf {
        self.legacy_sandbox_dir(name).join("disk.img")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_lives_in_the_agents_state_dir_keyed_by_namespace_and_id() {
        let home = SandboxHome::new(std::path::Path::new("/var/lib/bkg"), "user-alice", "api-0123");
        assert_eq!(home.disk_image(), PathBuf::from("/var/lib/bkg/workspaces/user-alice/api-0123/disk.img"));
        assert_eq!(home.env_file(), PathBuf::from("/var/lib/bkg/workspaces/user-alice/api-0123/env.json"));
        assert_eq!(home.logs_dir(), PathBuf::from("/var/lib/bkg/workspaces/user-alice/api-0123/logs"));
        let layout = ProjectLayout::new("/srv/app");
        assert_eq!(layout.state_dir(), PathBuf::from("/srv/app/.bkg"));
        assert_eq!(layout.legacy_disk_image("api"), PathBuf::from("/srv/app/.bkg/sandboxes/api/disk.img"));
    }
}
