//! Where the agent's socket and state live unless told otherwise, shared so the CLI finds the
//! agent it would start.

use std::path::PathBuf;

pub const SOCKET_ENV: &str = "BKG_SOCKET";
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

fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// `$BKG_SOCKET`, else `/run/bkg/agent.sock` for root, else `$XDG_RUNTIME_DIR/bkg/agent.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if is_root() { PathBuf::from("/run/bkg/agent.sock") } else { runtime_dir().join("bkg/agent.sock") }
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

/// Where a project keeps bkg's files: `PROJECT/.bkg/` (ignored by git), with one directory per
/// persistent sandbox holding its disk image, its environment and its run logs. The agent and
/// the CLI both go by this, and nothing else spells these paths.
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

    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.state_dir().join("sandboxes").join(name)
    }

    /// The sandbox's `/workspace`, an ext4 image.
    pub fn disk_image(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("disk.img")
    }

    /// The sandbox's environment variables, kept apart from the store (mode 0600).
    pub fn env_file(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("env.json")
    }

    /// One log per run, `RUN_ID.log`, the newest kept.
    pub fn logs_dir(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("logs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_lives_beneath_its_projects_state_dir() {
        let layout = ProjectLayout::new("/srv/app");
        assert_eq!(layout.state_dir(), PathBuf::from("/srv/app/.bkg"));
        assert_eq!(layout.disk_image("api"), PathBuf::from("/srv/app/.bkg/sandboxes/api/disk.img"));
        assert_eq!(layout.env_file("api"), PathBuf::from("/srv/app/.bkg/sandboxes/api/env.json"));
        assert_eq!(layout.logs_dir("api"), PathBuf::from("/srv/app/.bkg/sandboxes/api/logs"));
    }
}
