//! What a host gives a sandbox: the named security levels, the agent's host report
//! (`bkg-agent --check-host`) and `bkg doctor --json`. docs/compatibility.md ("Hosts") explains
//! the levels and each check.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How strongly the agent can confine a sandbox on this host, weakest first (so levels compare).
/// Every level has the user, pid, mount, network, ipc, uts and cgroup namespaces, the seccomp
/// filter, cgroup limits on CPU, memory and pids, and a disk of its own; a host without one of
/// those has no level at all and the agent refuses to start there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SecurityLevel {
    /// No Landlock: the file system is confined by the mount namespace and the sandbox's uids only.
    Degraded,
    /// Landlock ABI 1 to 5: file system rules, but no scoping of abstract unix sockets and signals.
    Standard,
    /// Landlock ABI 6 or later on top of everything else: all protections the engine has.
    Strict,
}

impl SecurityLevel {
    pub const ALL: [SecurityLevel; 3] = [Self::Strict, Self::Standard, Self::Degraded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Degraded => "degraded",
            Self::Standard => "standard",
            Self::Strict => "strict",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str() == name)
    }
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    /// Works, but weaker or less certain than it could be; `fix` says how to do better.
    Warn,
    /// The agent cannot work (or cannot be reached) until this is fixed.
    Fail,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One thing checked: what was found and, when it is not a pass, the narrowest fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable name: `kernel`, `namespace.net`, `cgroups`, `runtime.python`, `state_dir`, …
    pub name: String,
    pub status: CheckStatus,
    pub found: String,
    /// The narrowest fix; null when the check passes (the key is always there: stable JSON).
    #[serde(default)]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, found: impl Into<String>) -> Self {
        Self { name: name.into(), status: CheckStatus::Pass, found: found.into(), fix: None }
    }

    pub fn warn(name: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: CheckStatus::Warn, found: found.into(), fix: Some(fix.into()) }
    }

    pub fn fail(name: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: CheckStatus::Fail, found: found.into(), fix: Some(fix.into()) }
    }
}

/// An interpreter the agent runs code with, as found at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Runtime {
    pub language: crate::Language,
    pub path: String,
    /// What `PATH --version` printed, e.g. `Python 3.11.2` or `v20.19.2`.
    pub version: String,
}

/// `bkg-agent --check-host --json`: the host as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The level this host gives; absent when a piece every level needs is missing.
    pub level: Option<SecurityLevel>,
    pub checks: Vec<Check>,
    pub runtimes: Vec<Runtime>,
}

/// The host report's first check, there whenever `bkg-agent --check-host` ran.
pub const KERNEL_CHECK: &str = "kernel";
/// The check of the filesystem under the agent's state directory (warns when it is in memory).
pub const STATE_DIR_FS_CHECK: &str = "state_dir_fs";

/// `bkg doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// The worst status of all checks.
    pub status: CheckStatus,
    /// The level this host gives (from the host report), absent when it gives none.
    pub host_level: Option<SecurityLevel>,
    /// The level the running agent reports, absent when none answers.
    pub agent_level: Option<SecurityLevel>,
    pub checks: Vec<Check>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_weakest_first_and_parse_their_own_names() {
        assert!(SecurityLevel::Degraded < SecurityLevel::Standard);
        assert!(SecurityLevel::Standard < SecurityLevel::Strict);
        for level in SecurityLevel::ALL {
            assert_eq!(SecurityLevel::parse(level.as_str()), Some(level));
            assert_eq!(serde_json::to_value(level).ok(), Some(serde_json::Value::from(level.as_str())));
        }
        assert_eq!(SecurityLevel::parse("paranoid"), None);
    }
}
