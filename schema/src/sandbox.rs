//! Persistent sandboxes: defined by a project (`cave.yaml`), kept by the agent, run many times,
//! each keeping its `/workspace` between runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::egress::{RestartPolicy, ServiceHealth};
use crate::{Language, LimitOverrides, Limits, RunRecord};

/// Whether `name` is a DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The longest name a namespace may have: its bkg_db role, `bkg_ns_NAME`, must fit PostgreSQL's
/// 63 bytes (found by a new-user trial: a namespace of 57 to 63 characters broke its change feed,
/// and two sharing their first 56 would have shared one role).
pub const MAX_NAMESPACE_LEN: usize = 63 - "bkg_ns_".len();

/// What a namespace's name may be, for messages.
pub const NAMESPACE_RULE: &str =
    "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 56 characters";

/// The same rule as a JSON Schema pattern, for the API's document (`schema(pattern = …)`).
pub const NAMESPACE_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$";

/// Whether `name` may name a namespace: a DNS label of at most [`MAX_NAMESPACE_LEN`] characters.
pub fn is_namespace_name(name: &str) -> bool {
    is_dns_label(name) && name.len() <= MAX_NAMESPACE_LEN
}

/// The id of sandbox `name` of the project in `project_dir`: stable, so every client computes
/// the same one. `NAME-<16 hex digits of FNV-1a over the directory>`.
pub fn sandbox_id(project_dir: &str, name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in project_dir.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{name}-{hash:016x}")
}

/// The sandbox's name in an id [`sandbox_id`] made; the id itself when it is not one.
pub fn sandbox_name_of(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(name, _)| name)
}

/// A host directory bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Absolute host path.
    pub host: String,
    /// Absolute path under /workspace.
    pub guest: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Each volume, by index, whose guest path is the same as an earlier one's or one is inside the
/// other, with the first such earlier one: (earlier, later). The later would hide the earlier,
/// or be made inside a volume it may not write to. Each volume needs a place of its own.
pub fn overlapping_volumes<'a>(guests: impl IntoIterator<Item = &'a str>) -> Vec<(usize, usize)> {
    let guests: Vec<&str> = guests.into_iter().map(|guest| guest.trim_end_matches('/')).collect();
    let within = |inner: &str, outer: &str| {
        inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    (1..guests.len())
        .filter_map(|later| {
            (0..later)
                .find(|&earlier| within(guests[later], guests[earlier]) || within(guests[earlier], guests[later]))
                .map(|earlier| (earlier, later))
        })
        .collect()
}

/// `PUT /api/v1/sandboxes/{id}`: create or update a persistent sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SandboxDefinition {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"))]
    pub namespace: String,
    /// Absolute host path of the project; mounted read-only at /project. The sandbox's state
    /// lives in its `.bkg/` folder.
    pub project_dir: String,
    pub language: Language,
    #[serde(default, deserialize_with = "crate::shape::object")]
    pub limits: LimitOverrides,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "crate::shape::objects")]
    pub volumes: Vec<VolumeSpec>,
    /// Named command lines (`start`, `test`, …); `POST …/start` runs `start`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scripts: BTreeMap<String, String>,
    /// Hosts its runs may reach, `HOST[:PORT]` each (as `RunRequest.network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    /// Host ports forwarded into it, `[ADDRESS:]HOST_PORT:SANDBOX_PORT` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// What a detached run does when it fails.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: RestartPolicy,
    /// Python packages its runs need, as requirement lines (as `RunRequest.requirements`):
    /// installed once per distinct set, mounted read-only into every run, session and shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// Node.js packages its runs need (as `RunRequest.node_packages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_packages: Option<crate::envs::NodePackages>,
    /// Names of secrets (`bkg secrets set`) its runs get as environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Paths under /workspace kept, with /workspace/out, as each run's files (as
    /// `RunRequest.keep`). Empty: only long output is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
}

impl SandboxDefinition {
    /// Sandbox `name` of the project in `project_dir`, running `language`, with nothing else:
    /// the agent's default limits, no env, volumes, scripts, network, ports, packages, secrets
    /// or kept paths.
    pub fn new(name: String, namespace: String, project_dir: String, language: Language) -> Self {
        Self {
            name,
            namespace,
            project_dir,
            language,
            limits: LimitOverrides::default(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            scripts: BTreeMap::new(),
            network: Vec::new(),
            ports: Vec::new(),
            restart: RestartPolicy::default(),
            requirements: Vec::new(),
            node_packages: None,
            secrets: Vec::new(),
            keep: Vec::new(),
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Idle,
    Running,
}

/// `has_project`'s default, for an answer of an agent older than the field.
fn yes() -> bool {
    true
}

/// A persistent sandbox as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub project_dir: String,
    /// False for a sandbox made through the API, MCP or the Web UI: its `project_dir` is then
    /// the agent's own directory for its namespace, not a project of the user's.
    #[serde(default = "crate::sandbox::yes")]
    pub has_project: bool,
    pub language: Language,
    pub limits: Limits,
    pub state: SandboxState,
    /// The run going on now, if any.
    pub current_run: Option<String>,
    /// The most recent run, finished or not; not a run that only held the sandbox for a file
    /// transfer (those are listed with the runs).
    pub last_run: Option<RunRecord>,
    /// While `last_run` goes on (a session holds the sandbox, a service runs), the newest run
    /// that ended before it: what `bkg ls` and `bkg status` show as the last exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run: Option<RunRecord>,
    pub created_at_ms: u64,
    /// What the sandbox's disk holds: the blocks its filesystem has written (its metadata and
    /// every block its files have used); deleting files in the sandbox does not lower it. The
    /// host keeps the disk's whole size (`limits.disk_bytes`) reserved for it.
    pub disk_bytes_allocated: u64,
    /// Its detached run's health, since this agent started one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceHealth>,
    /// The interpreter session that holds it (its run is `current_run`), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<crate::files::SessionInfo>,
}

/// `POST /api/v1/sandboxes/{id}/exec`: run a command in a persistent sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell command line, run with `/bin/sh -c` in /project (the project, read-only), or in
    /// /workspace for a sandbox made with `POST /api/v1/sandboxes`, which has no project.
    pub command: String,
    /// Return at once with the run's id; the run goes on under the agent, its output only in
    /// the sandbox's log.
    #[serde(default)]
    pub detach: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Standard input for a non-streamed run, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// The language of the program the command is, when it is one interpreter given code (MCP's
    /// `sandbox_run_code`, the Web UI's code cell): what the run's record says. Default: the
    /// sandbox's main language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    /// Limits over the sandbox's for this run only (`bkgr NAME --memory 1GiB`): the sandbox's
    /// own stay as its definition says. A service started again after a failure keeps them.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// Give the command one pipe for its stdout and its stderr, as `RunRequest`'s does
    /// (`bkgr NAME` whose stdout and stderr are one file); its log then keeps the order too. A
    /// detached run always has one: its log is all of its output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_to_stdout: bool,
}

impl ExecRequest {
    /// `command` alone: attached, with no environment, stdin, language or limits of its own.
    pub fn command(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            detach: false,
            env: BTreeMap::new(),
            stdin_base64: None,
            language: None,
            limits: LimitOverrides::default(),
            stderr_to_stdout: false,
        }
    }
}

/// `POST /api/v1/sandboxes`: a sandbox in the namespace's own project directory on the agent
/// (for callers without a project on the agent's host: API keys, MCP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSandbox {
    /// A DNS label, unique in its namespace.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Default: the key's namespace (`default` for admins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"))]
    pub namespace: Option<String>,
    pub language: Language,
    #[serde(default, deserialize_with = "crate::shape::object")]
    pub limits: LimitOverrides,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scripts: BTreeMap<String, String>,
    /// What its service (`POST …/start`) does when it fails, as cave.yaml's `restart`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: RestartPolicy,
}

/// `POST /api/v1/sandboxes/{id}/start`: run one of the sandbox's scripts, detached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Which script (default `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The answer to `POST /api/v1/sandboxes/{id}/stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stopped {
    /// Whether a run was going on (and was stopped).
    pub stopped: bool,
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    pub deleted: String,
}

/// The answer to a detached exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DetachedRun {
    pub sandbox_id: String,
    pub run_id: String,
}

/// Whether `text` can be a run's id: the agent makes them of ASCII letters, digits and `_`
/// (`run_<ms hex><random hex>`), and a run's log is the file named by it, so nothing else is one.
pub fn is_run_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_at_the_same_or_a_nested_place_overlap() {
        assert_eq!(overlapping_volumes(["/workspace/a", "/workspace/ab", "/workspace/b/c"]), []);
        assert_eq!(overlapping_volumes(["/workspace/m", "/workspace/m"]), [(0, 1)]);
        assert_eq!(overlapping_volumes(["/workspace/x", "/workspace/m", "/workspace/m/sub"]), [(1, 2)]);
        assert_eq!(overlapping_volumes(["/workspace/m/sub/", "/workspace/m"]), [(0, 1)]);
        // Every one is found, each with the first earlier one it meets.
        assert_eq!(
            overlapping_volumes(["/workspace/m", "/workspace/m/sub", "/workspace/m", "/workspace/y"]),
            [(0, 1), (0, 2)]
        );
    }

    #[test]
    fn a_run_id_is_letters_digits_and_underscores() {
        assert!(is_run_id("run_19a3f0c2b1d4e5f6a7b8c9"));
        for not_one in ["", "run-1", "../x", "run 1", "rün"] {
            assert!(!is_run_id(not_one), "{not_one:?}");
        }
    }

    #[test]
    fn a_sandbox_id_gives_back_its_name() {
        assert_eq!(sandbox_name_of(&sandbox_id("/srv/app", "web-2")), "web-2");
        assert_eq!(sandbox_name_of("plain"), "plain");
    }

    #[test]
    fn dns_labels() {
        for good in ["api", "a", "web-2", "x".repeat(63).as_str()] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "Api", "-api", "api-", "a_b", "a.b", "x".repeat(64).as_str(), "é"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn namespace_names_fit_a_postgresql_role() {
        assert!(is_namespace_name(&"n".repeat(56)));
        assert_eq!(format!("bkg_ns_{}", "n".repeat(MAX_NAMESPACE_LEN)).len(), 63);
        assert!(!is_namespace_name(&"n".repeat(57)));
        assert!(!is_namespace_name("Team_A"));
    }

    #[test]
    fn ids_are_stable_and_differ_by_project() {
        assert_eq!(sandbox_id("/srv/app", "api"), sandbox_id("/srv/app", "api"));
        assert_ne!(sandbox_id("/srv/app", "api"), sandbox_id("/srv/other", "api"));
        assert!(sandbox_id("/srv/app", "api").starts_with("api-"));
        assert_eq!(sandbox_id("/srv/app", "api").len(), "api-".len() + 16);
    }
}
