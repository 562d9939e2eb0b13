//! Where the agent's socket and state live unless told otherwise, shared so the CLI finds the
//! agent it would start.

use std::path::PathBuf;

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
