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
