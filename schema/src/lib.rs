//! The contract between bkg processes: what the CLI sends the agent, what comes back, and the
//! framing of a streamed run. Everything here is plain data so both sides agree by construction.

pub mod artefacts;
#[cfg(feature = "audit")]
pub mod audit;
pub mod auth;
#[cfg(feature = "cave")]
pub mod cave;
pub mod changes;
#[cfg(feature = "chunks")]
pub mod chunks;
pub mod egress;
pub mod environment;
pub mod envs;
pub mod files;
pub mod frame;
pub mod health;
pub mod host;
pub mod paths;
pub mod requirements;
pub mod sandbox;
pub mod shape;
pub mod sync;
pub mod terminal;
pub mod units;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use units::{UnitError, parse_cpus, parse_duration_ms, parse_size};

/// The interpreters a sandbox can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Node,
}

impl Language {
    /// Picks the language from a script's file name, as `bkg exe FILE` does without `--type`.
    pub fn from_file_name(name: &str) -> Option<Self> {
        // In any case, as `--type` is taken: `SCRIPT.PY` is Python to python3 too.
        let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match extension.as_str() {
            "py" => Some(Self::Python),
            "js" | "mjs" | "cjs" => Some(Self::Node),
            _ => None,
        }
    }

    /// Picks the language from a script's `#!` line, as the kernel would run it without bkg:
    /// the interpreter named there, or the program after `/usr/bin/env` (and its options),
    /// `python`, `python3`, `python3.11`, `node` or `nodejs`.
    pub fn from_shebang(code: &str) -> Option<Self> {
        let name = shebang_program(code)?;
        let version_free = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        match version_free {
            "python" => Some(Self::Python),
            "node" | "nodejs" => Some(Self::Node),
            _ => None,
        }
    }

    /// A language by its name or an alias, in any case: `python` (`py`, `python3`), `node`
    /// (`nodejs`, `js`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Self::Python),
            "node" | "nodejs" | "js" => Some(Self::Node),
            _ => None,
        }
    }

    /// The script name used when the code has no file name of its own (`-c`, stdin).
    pub fn default_script_name(self) -> &'static str {
        match self {
            Self::Python => "main.py",
            Self::Node => "main.js",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Node => "node",
        }
    }
}

/// The program a `#!` line on `code`'s first line runs (`python3` of `#!/usr/bin/env python3`,
/// `ruby` of `#!/usr/bin/ruby -w`), if it has one.
pub fn shebang_program(code: &str) -> Option<&str> {
    let line = code.lines().next()?.strip_prefix("#!")?;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let program = match first.rsplit('/').next()? {
        "env" => words.find(|word| !word.starts_with('-'))?,
        program => program,
    };
    program.rsplit('/').next()
}

/// Resource limits of one run, fully resolved (no defaults left to apply).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    /// CPU bandwidth in thousandths of a CPU: 1000 is one vCPU.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// `null`: no timeout (`timeout: none`).
    #[serde(with = "timeout_or_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, required = true))]
    pub timeout_ms: u64,
    pub disk_bytes: u64,
    /// Most processes and threads alive at once.
    pub pids: u64,
}

/// A resolved timeout on the wire: `null` for [`NO_TIMEOUT_MS`], which as a JSON number is
/// beyond what JavaScript reads exactly (it parses as 18446744073709552000). The number itself
/// is still read, as records written before were.
mod timeout_or_none {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(timeout_ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        match *timeout_ms {
            crate::NO_TIMEOUT_MS => serializer.serialize_none(),
            ms => serializer.serialize_u64(ms),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or(crate::NO_TIMEOUT_MS))
    }
}

/// One limit of `Limits::named`: its name, its value and how it is written.
pub type NamedLimit = (&'static str, u64, fn(u64) -> String);

impl Limits {
    /// The product's defaults: 1 vCPU, 512 MiB memory, 60 s, 500 MiB disk.
    pub const DEFAULT: Limits =
        Limits { cpu_millis: 1000, memory_bytes: 512 * MIB, timeout_ms: 60_000, disk_bytes: 500 * MIB, pids: 256 };

    /// The least each limit may be: ext4 needs room for its own metadata on the disk, the
    /// kernel's CFS quota cannot go below 1 ms per 100 ms period, and the sandbox's init and the
    /// code need a few processes before the code can do anything.
    pub const LEAST: Limits =
        Limits { cpu_millis: 10, memory_bytes: 16 * MIB, timeout_ms: 1, disk_bytes: 16 * MIB, pids: 8 };

    /// Applies the caller's overrides on top of `self`.
    pub fn with(self, overrides: &LimitOverrides) -> Limits {
        Limits {
            cpu_millis: overrides.cpu_millis.unwrap_or(self.cpu_millis),
            memory_bytes: overrides.memory_bytes.unwrap_or(self.memory_bytes),
            timeout_ms: overrides.timeout_ms.unwrap_or(self.timeout_ms),
            disk_bytes: overrides.disk_bytes.unwrap_or(self.disk_bytes),
            pids: overrides.pids.unwrap_or(self.pids),
        }
    }

    /// Each limit no higher than `max`'s.
    pub fn at_most(&self, max: &Limits) -> Limits {
        Limits {
            cpu_millis: self.cpu_millis.min(max.cpu_millis),
            memory_bytes: self.memory_bytes.min(max.memory_bytes),
            timeout_ms: self.timeout_ms.min(max.timeout_ms),
            disk_bytes: self.disk_bytes.min(max.disk_bytes),
            pids: self.pids.min(max.pids),
        }
    }

    /// Names the first limit of `self` that is above `max`, for a refusal message.
    pub fn first_above(&self, max: &Limits) -> Option<(&'static str, String, String)> {
        self.all_above(max).into_iter().next()
    }

    /// Names every limit of `self` that is above `max`, in the order of `named`, so that one
    /// refusal says them all (found by a new-user trial: fixed one at a time, run after run).
    pub fn all_above(&self, max: &Limits) -> Vec<(&'static str, String, String)> {
        self.all_where(max, |asked, bound| asked > bound)
    }

    /// Names the first limit of `self` that is below `least` (`Limits::LEAST`), for a refusal
    /// message.
    pub fn first_below(&self, least: &Limits) -> Option<(&'static str, String, String)> {
        self.first_where(least, |asked, bound| asked < bound)
    }

    fn first_where(&self, bound: &Limits, beyond: fn(u64, u64) -> bool) -> Option<(&'static str, String, String)> {
        self.all_where(bound, beyond).into_iter().next()
    }

    fn all_where(&self, bound: &Limits, beyond: fn(u64, u64) -> bool) -> Vec<(&'static str, String, String)> {
        self.named()
            .into_iter()
            .zip(bound.named())
            .filter(|((_, asked, _), (_, bound, _))| beyond(*asked, *bound))
            .map(|((name, asked, format), (_, bound, _))| {
                // A size shown to one decimal may read as its bound (8.0GiB against 8GiB): then
                // it is said in bytes, as it was asked (found by a new-user trial).
                let shown = format(asked);
                let reads_as_bound = matches!(name, "memory" | "disk") && units::parse_size(&shown).ok() == Some(bound);
                let shown = if reads_as_bound && asked != bound { format!("{asked}B") } else { shown };
                (name, shown, format(bound))
            })
            .collect()
    }

    /// Each limit by its name (as cave.yaml's `limits` and the refusals call it), with how it
    /// is written.
    pub fn named(&self) -> [NamedLimit; 5] {
        [
            ("cpus", self.cpu_millis, units::format_cpus),
            ("memory", self.memory_bytes, units::format_size),
            ("timeout", self.timeout_ms, units::format_duration_ms),
            ("disk", self.disk_bytes, units::format_size),
            ("pids", self.pids, |n: u64| n.to_string()),
        ]
    }
}

/// What an environment variable's name may be, for messages.
pub const ENV_KEY_RULE: &str = "letters, digits and '_', not starting with a digit";

/// `text` as a refusal repeats it: escaped, and cut after its first 64 characters, so that a
/// pasted file or a runaway variable refused for its form is not echoed whole.
pub fn shown_briefly(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", text[..cut].escape_debug()),
        None => text.escape_debug().to_string(),
    }
}

/// `text` with its control characters (C0, DEL, C1) escaped as Rust writes them (`\n`,
/// `\u{1b}`): for a name the code chose (a file it wrote) shown on one line of a terminal, where
/// a newline would fake a line of bkg's own and an escape sequence drive the terminal.
pub fn without_controls(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().any(char::is_control) {
        false => std::borrow::Cow::Borrowed(text),
        true => std::borrow::Cow::Owned(
            text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
        ),
    }
}

/// Whether `name` may name an environment variable a run is given (`ENV_KEY_RULE`).
pub fn is_env_key(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub const MIB: u64 = 1024 * 1024;

/// How long a run asked to end (a stop, a cancel, Ctrl-C on its `bkg exe`) has after its code is
/// sent SIGTERM before it is killed with SIGKILL.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `timeout: none`: a run that only ends by itself or by a stop; only persistent sandboxes may
/// ask for it, and only from an agent started with `--max-timeout none`.
pub const NO_TIMEOUT_MS: u64 = u64::MAX;

/// Limits a caller asks for; the agent fills the gaps with its defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// At least 10 (a hundredth of a CPU): the kernel's smallest CPU quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 10))]
    pub cpu_millis: Option<u64>,
    /// At least 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16777216))]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub timeout_ms: Option<u64>,
    /// At least 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16777216))]
    pub disk_bytes: Option<u64>,
    /// At least 8 (`Limits::LEAST`): the sandbox's own init takes two, and the code needs a
    /// few before it can do anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 8))]
    pub pids: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These overrides over `base`'s: each limit this one sets wins.
    pub fn over(self, base: LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            cpu_millis: self.cpu_millis.or(base.cpu_millis),
            memory_bytes: self.memory_bytes.or(base.memory_bytes),
            timeout_ms: self.timeout_ms.or(base.timeout_ms),
            disk_bytes: self.disk_bytes.or(base.disk_bytes),
            pids: self.pids.or(base.pids),
        }
    }
}

/// A file placed in the sandbox before the code starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileUpload {
    /// Where it goes: relative to /workspace, or absolute under /workspace or /tmp.
    pub path: String,
    /// The content, base64 (standard alphabet, padded).
    pub content_base64: String,
    #[serde(default)]
    pub executable: bool,
}

/// `POST /api/v1/runs`: run code once in a temporary sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub language: Language,
    /// The script's source.
    pub code: String,
    /// The script's file name inside /workspace (defaults to main.py / main.js).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "shape::objects")]
    pub files: Vec<FileUpload>,
    #[serde(default, deserialize_with = "shape::object")]
    pub limits: LimitOverrides,
    /// Standard input for a non-streamed run, base64. A streamed run sends stdin as frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// The namespace the run belongs to. Only an admin may name one; a namespace or session
    /// key's runs are always in its own namespace. Default: the key's namespace, or `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// Files or directories under /workspace to keep as the run's files, besides
    /// `/workspace/out`, which is always kept (`bkg exe --keep`, cave.yaml's `keep:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// Hosts the run may reach through its proxy, `HOST[:PORT]` each (docs/security.md,
    /// "Egress"); within the agent's `--egress-allow`. Empty: no network at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    /// Host ports forwarded into the sandbox, `[ADDRESS:]HOST_PORT:SANDBOX_PORT` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Python packages the run needs, as requirement lines (`numpy==2.1.3`, `requests>=2`):
    /// the agent installs them once per distinct set into an environment it mounts read-only
    /// (docs/cli.md, "Dependencies"). Options (lines starting with `-`) are refused: the index
    /// is the agent's to choose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// The Python versions the code runs on, a PEP 440 specifier set (`>=3.11`; a script's
    /// `requires-python`, PEP 723): code asking for versions the agent's Python is not is
    /// refused before it runs. Python runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub requires_python: Option<String>,
    /// Node.js packages the run needs: installed with `npm ci` once per distinct package.json
    /// and lockfile into an environment mounted read-only, on `NODE_PATH` (docs/cli.md,
    /// "Dependencies").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_packages: Option<envs::NodePackages>,
    /// Names of secrets (`bkg secrets set`) given to the code as environment variables of the
    /// same name. Their values never enter a record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Make /workspace/out/ before the code starts and, when it ends, send what it holds back as
    /// a tar stream in `Archive` frames before the result (streamed runs only; `bkg exe -o`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub return_out_dir: bool,
    /// Give the code one pipe for its stdout and its stderr, so that what it writes to both
    /// comes in the order it wrote it, all as stdout (its stderr stays empty): for a caller that
    /// shows or keeps the two as one stream (`bkg exe` whose stdout and stderr are one file, as
    /// after `2>&1`). Node started ahead cannot take it: such a run starts its own interpreter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_to_stdout: bool,
}

/// Which limit ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum KilledBy {
    Timeout,
    Memory,
    Pids,
    /// The script failed while its disk was full.
    Disk,
    /// The caller cancelled the run (Ctrl-C, a closed connection).
    Cancelled,
    /// The agent was asked to stop (SIGTERM, `bkg agent stop`) and the run outlived the grace
    /// period it is given.
    Shutdown,
    /// The agent stopped without closing the run (a crash, SIGKILL, power loss); set on the run's
    /// record when the agent next starts. Never in a result a client receives.
    Interrupted,
}

impl KilledBy {
    pub const ALL: [KilledBy; 7] =
        [Self::Timeout, Self::Memory, Self::Pids, Self::Disk, Self::Cancelled, Self::Shutdown, Self::Interrupted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Disk => "disk",
            Self::Cancelled => "cancelled",
            Self::Shutdown => "shutdown",
            Self::Interrupted => "interrupted",
        }
    }
}

/// A run's end in a word or two, as run lists, the audit log and the Web UI show it: the limit
/// that killed it, named by `limit` (with the exit code the script still gave, as after a full
/// disk or a child killed for its memory: found by a new-user trial), its exit code, or the
/// signal; none when its record has neither.
pub fn run_ending(
    killed_by: Option<KilledBy>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    limit: fn(KilledBy) -> &'static str,
) -> Option<String> {
    match (killed_by, exit_code, signal) {
        (Some(killed), Some(code), _) => Some(format!("{}, exit {code}", limit(killed))),
        (Some(killed), _, _) => Some(limit(killed).into()),
        (None, Some(code), _) => Some(format!("exit {code}")),
        (None, None, Some(signal)) => Some(format!("signal {signal}")),
        (None, None, None) => None,
    }
}

/// The outcome and accounting of one run. Stable: `bkg exe --json` prints it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunResult {
    pub id: String,
    pub language: Language,
    /// The script's exit code; null when a signal ended it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub killed_by: Option<KilledBy>,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    /// Bytes in use on the sandbox's disk when its script ended, as the sandbox measured them, or,
    /// for a run the agent ended (timeout, process limit, cancel), as the agent read them just
    /// before it ended the run.
    pub disk_bytes_used: u64,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// True when stdout or stderr was longer than the retained cap (see `OUTPUT_CAP_BYTES`).
    pub truncated: bool,
    /// Output bytes a streaming caller never received because it stopped reading (they are
    /// still counted in `stdout_bytes`/`stderr_bytes`, and kept up to the cap).
    #[serde(default)]
    pub undelivered_bytes: u64,
    pub limits: Limits,
    /// The security level of the agent that ran it (docs/compatibility.md, "Hosts"); absent for
    /// a run that never had a sandbox, and in results of agents older than the levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<host::SecurityLevel>,
    /// What the sandbox refused the code, as the kernel reported it (docs/security.md,
    /// "Denials"): each kind and thing once, with how often.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Denial>,
    /// The files the run kept (`GET /api/v1/runs/{id}/files`): what it wrote under
    /// /workspace/out or a `keep` path, and stdout/stderr when longer than the cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<artefacts::RunFile>,
    /// Why some of them were not kept with the run (the namespace's quota, the store failing, a
    /// name that is not UTF-8), when so: `not kept with the run: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_not_kept: Option<String>,
    /// Connections the sandbox tried and was refused (only for runs given network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_denials: Vec<egress::NetworkDenial>,
}

/// Something the sandbox refused a run's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Denial {
    pub kind: DenialKind,
    /// What was refused: a system call's name (`seccomp`), a limit's name (`limit`).
    pub what: String,
    /// How many times.
    pub count: u64,
}

/// Which protection refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DenialKind {
    /// A system call the seccomp policy refuses (it failed with an errno).
    Seccomp,
    /// A resource limit the run reached (`pids`, `memory`, `disk`, `timeout`).
    Limit,
}

impl DenialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seccomp => "seccomp",
            Self::Limit => "limit",
        }
    }
}

/// How much of each output stream a result keeps; the rest is streamed live but not retained.
pub const OUTPUT_CAP_BYTES: usize = 1024 * 1024;

/// Largest request body the agent takes: a run's code and its uploads, base64. Bigger files go
/// into a persistent sandbox with `bkg cp`, streamed.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Largest body of the small JSON requests: keys, logins, sessions.
pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;

/// Largest body of a sandbox's definition: its variables (`MAX_ENV_BYTES`, which JSON may
/// write six times as long, `\u0001` for a control character), scripts and package lists.
pub const MAX_DEFINITION_BODY_BYTES: usize = 1024 * 1024;

/// Environment a run may bring, names and values together (each counted with its `=` and NUL):
/// the kernel refuses an exec whose environment is too large, which would fail every run of a
/// sandbox defined with it.
pub const MAX_ENV_BYTES: usize = 128 * 1024;

/// What `env` takes of `MAX_ENV_BYTES`.
pub fn env_bytes<'a>(env: impl IntoIterator<Item = (&'a String, &'a String)>) -> usize {
    env.into_iter().map(|(key, value)| key.len() + value.len() + 2).sum()
}

/// One server-sent event as a client reads it (`text/event-stream`): the event's name, its id
/// when it has one (a position to resume after), and its data. What each endpoint's events carry
/// in `data` its documentation says (`bkg_schema::changes` for the change feed, a line of output
/// for a sandbox's log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerSentEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub data: String,
}

/// Every API error has this shape: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Machine-readable error codes; the CLI maps them to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    LimitAboveMaximum,
    RuntimeNotExecutable,
    NotFound,
    Forbidden,
    PayloadTooLarge,
    /// The request's body did not arrive within the agent's body timeout.
    RequestTimeout,
    /// The target is busy: a persistent sandbox that is already running.
    Conflict,
    SandboxFailed,
    Internal,
    /// No credentials, or a key that is unknown, expired or revoked.
    Unauthorized,
    /// Over the key's request rate; retry after the `Retry-After` seconds.
    RateLimited,
    /// A signed notice that was already accepted once.
    Replayed,
    /// The agent cannot serve this now (see `/healthz`).
    Unavailable,
    MethodNotAllowed,
    /// The run's packages could not be installed; the message carries the installer's error.
    InstallFailed,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { error: ApiErrorBody { code, message: message.into() } }
    }
}

/// The most runs one listing returns (`GET /api/v1/runs?limit=`, `bkg runs ls -n`).
pub const MAX_LISTED_RUNS: u32 = 1000;

/// One run as the agent's store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunRecord {
    pub id: String,
    /// The namespace of whoever asked for the run (or of its persistent sandbox).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The persistent sandbox the run was in; null for a temporary run.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// A temporary run's language; for a command in a persistent sandbox, the language its
    /// request names (`ExecRequest::language`: MCP's `sandbox_run_code`, the Web UI's code),
    /// else the sandbox's main language, whichever program the command starts.
    pub language: Language,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub limits: Limits,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub killed_by: Option<KilledBy>,
    pub wall_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub stdout_bytes: Option<u64>,
    pub stderr_bytes: Option<u64>,
    /// Set once the agent has confirmed nothing of the run is left on the host.
    pub cleaned_up: bool,
    pub error: Option<String>,
    /// What the sandbox refused the run (as in its result).
    #[serde(default)]
    pub denials: Vec<Denial>,
    /// Connections its network refused (as in its result).
    #[serde(default)]
    pub network_denials: Vec<egress::NetworkDenial>,
    /// The run only held its idle sandbox for a file transfer (`bkg cp`, the files API): no
    /// code of the user's ran, and it is never the sandbox's last run.
    #[serde(default)]
    pub file_transfer: bool,
    /// It waits for a place among the runs going on (`--max-running-runs`): queued, not
    /// started. Said by the agent that has it, while it waits; never stored.
    #[serde(default)]
    pub queued: bool,
}

/// The namespace of everything made without naming one.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// A prepared sandbox waiting in the warm pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WarmSandbox {
    pub id: String,
    /// Memory charged to its cgroup now: its pid 1, the interpreter it started ahead, the tmpfs
    /// of its root.
    pub memory_bytes: u64,
    /// The runtime whose interpreter it started ahead, for a run of that runtime to take
    /// (docs/testing.md, "The zygote"); absent when it started none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ahead: Option<Language>,
}

/// `GET /api/v1/agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentInfo {
    pub version: String,
    /// The commit the agent was built from (`unknown` outside a git checkout).
    #[serde(default)]
    pub commit: String,
    /// The build date, `YYYY-MM-DD`: SOURCE_DATE_EPOCH's or the commit's.
    #[serde(default)]
    pub build_date: String,
    /// The protections every sandbox of this agent gets.
    #[serde(default)]
    pub protections: Vec<String>,
    /// The isolation this agent gives every sandbox, as computed from the host at start
    /// (docs/compatibility.md, "Hosts"); absent from agents older than the levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<host::SecurityLevel>,
    /// The interpreters found at start, with their versions.
    #[serde(default)]
    pub runtimes: Vec<host::Runtime>,
    pub pid: u32,
    pub socket: String,
    /// Whether systemd made the socket and keeps it (socket activation). An agent that made its
    /// socket file removes it when it ends in any way but a crash or a kill.
    #[serde(default)]
    pub socket_activated: bool,
    pub state_dir: String,
    pub cgroup_version: String,
    pub warm_sandboxes: usize,
    /// How many prepared sandboxes the elastic warm pool aims to hold now: `--warm-pool` when
    /// idle, more while runs find it empty.
    #[serde(default)]
    pub warm_target: usize,
    /// Memory the warm pool's prepared sandboxes take together now (the sum of `warm_pool`'s);
    /// bounded by `--warm-pool-memory` as the pool grows.
    #[serde(default)]
    pub warm_memory_bytes: u64,
    /// Each prepared sandbox of the warm pool, oldest first.
    #[serde(default)]
    pub warm_pool: Vec<WarmSandbox>,
    /// `--warm-pool-memory`: the memory the warm pool may hold before it stops growing.
    #[serde(default)]
    pub warm_memory_limit_bytes: u64,
    /// Runs waiting for a place now; at most `max_queued_runs` wait, `max_running_runs` run.
    #[serde(default)]
    pub queued_runs: usize,
    #[serde(default)]
    pub max_running_runs: usize,
    #[serde(default)]
    pub max_queued_runs: usize,
    /// Sessions, services and terminals accepted and not ended (queued or going on), and how
    /// many places of `max_running_runs` they may hold together (more are refused).
    #[serde(default)]
    pub long_lived_runs: usize,
    #[serde(default)]
    pub max_long_lived_runs: usize,
    /// The disk limits of the live sandboxes (warm ones too), summed, and `--disk-budget`.
    #[serde(default)]
    pub disk_in_use_bytes: u64,
    #[serde(default)]
    pub disk_budget_bytes: u64,
    /// Runs, since the agent started, whose script was given to an interpreter started ahead in
    /// a warm sandbox instead of a fresh one (docs/testing.md, "The zygote").
    #[serde(default)]
    pub prestarted_runs: u64,
    /// Of `prestarted_runs`, those whose interpreter was a fork of a zygote (any generation).
    #[serde(default)]
    pub zygote_runs: u64,
    /// The zygote: serving, off or unavailable, and why. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zygote: Option<ZygoteInfo>,
    /// Runs going on now, not those waiting for a place (`queued_runs`).
    pub active_runs: usize,
    /// Sandboxes whose cleanup is still under way.
    pub pending_cleanups: usize,
    pub default_limits: Limits,
    pub max_limits: Limits,
    /// The TCP listeners serving the API (and the Web UI), which take API keys: `--listen`'s, and
    /// the loopback one `bkg ui` starts when there is none. Absent from older agents.
    #[serde(default)]
    pub listeners: Vec<TcpListenerInfo>,
    /// How long finished runs are kept (`--retention`, `--retention-for`). Absent from older
    /// agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// The zygote: one interpreter initialised once whose forks become the prestarted Python
/// interpreters of warm sandboxes (docs/security.md, "the zygote").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ZygoteInfo {
    pub state: ZygoteState,
    /// The generation serving (`serving`): a new one starts after 100 forks or 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Its host pid (`serving`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its memory now as its cgroup counts it, which `memory_limit_bytes` bounds; its forks share
    /// it until they write to it (`serving`).
    #[serde(default)]
    pub memory_bytes: u64,
    /// The memory its cgroup lets it take (`--zygote-memory`): a generation that reaches it is
    /// ended, and the next starts. 0 from older agents.
    #[serde(default)]
    pub memory_limit_bytes: u64,
    /// Why it does not serve (`off`, `starting`, `unavailable`), in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ZygoteState {
    /// Sandboxes' Python interpreters are its forks.
    Serving,
    /// Turned off (`--zygote false`): each sandbox starts its own.
    Off,
    /// Being started: its first generation, the next one after a generation ended, or, without
    /// a warm pool, at the first Python run. Sandboxes start their own interpreters meanwhile.
    Starting,
    /// Meant to serve but cannot (its library is missing, or it kept failing to start): each
    /// sandbox starts its own interpreter.
    Unavailable,
}

/// How long the agent keeps finished runs, in ms: by default, and for namespaces of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Retention {
    pub default_ms: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub per_namespace: std::collections::BTreeMap<String, u64>,
}

/// One TCP listener of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TcpListenerInfo {
    /// `http://ADDR:PORT` or `https://ADDR:PORT`.
    pub url: String,
    /// `--listen`, or `bkg ui` (a loopback listener it started, which lives as long as the agent).
    pub started_by: String,
}

#[cfg(test)]
mod tests {
    use super::{Language, Limits, NO_TIMEOUT_MS, shown_briefly};

    #[test]
    fn a_long_value_is_shown_cut_and_a_short_one_whole() {
        assert_eq!(shown_briefly("bad name\n"), "bad name\\n");
        let long = "é".repeat(100);
        assert_eq!(shown_briefly(&long), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn a_limit_above_its_bound_never_reads_as_the_bound() {
        const GIB: u64 = 1 << 30;
        let bound = Limits { memory_bytes: 8 * GIB, ..Limits::DEFAULT };
        let just_over = Limits { memory_bytes: 8 * GIB + 1, ..Limits::DEFAULT };
        assert_eq!(just_over.first_above(&bound), Some(("memory", "8589934593B".into(), "8GiB".into())));
        let clearly_over = Limits { memory_bytes: 8 * GIB + GIB / 10, ..Limits::DEFAULT };
        assert_eq!(clearly_over.first_above(&bound), Some(("memory", "8.1GiB".into(), "8GiB".into())));
    }

    #[test]
    fn every_limit_above_its_bound_is_named_in_order() {
        let bound = Limits::DEFAULT;
        let over = Limits { memory_bytes: bound.memory_bytes * 2, pids: bound.pids + 1, ..Limits::DEFAULT };
        let names: Vec<&str> = over.all_above(&bound).into_iter().map(|(name, _, _)| name).collect();
        assert_eq!(names, ["memory", "pids"]);
        assert!(Limits::DEFAULT.all_above(&bound).is_empty());
    }

    #[test]
    fn no_timeout_is_null_in_json_and_the_old_number_still_reads() -> Result<(), serde_json::Error> {
        let none = Limits { timeout_ms: NO_TIMEOUT_MS, ..Limits::DEFAULT };
        let json = serde_json::to_value(none)?;
        assert!(json["timeout_ms"].is_null(), "{json}");
        assert_eq!(serde_json::from_value::<Limits>(json)?, none);
        let mut old = serde_json::to_value(Limits::DEFAULT)?;
        old["timeout_ms"] = serde_json::json!(u64::MAX);
        assert_eq!(serde_json::from_value::<Limits>(old)?, none);
        assert_eq!(serde_json::to_value(Limits::DEFAULT)?["timeout_ms"], 60_000);
        Ok(())
    }

    #[test]
    fn a_script_s_language_is_known_by_its_extension_in_any_case() {
        for (name, language) in [
            ("a.py", Some(Language::Python)),
            ("A.PY", Some(Language::Python)),
            ("b.Js", Some(Language::Node)),
            ("c.mjs", Some(Language::Node)),
            ("d.txt", None),
            ("py", None),
        ] {
            assert_eq!(Language::from_file_name(name), language, "{name}");
        }
    }

    #[test]
    fn a_script_s_language_is_known_by_its_shebang() {
        for (code, language) in [
            ("#!/usr/bin/env python3\nprint(1)\n", Some(Language::Python)),
            ("#!/usr/bin/python3.11 -u\n", Some(Language::Python)),
            ("#! /usr/bin/env -S python -X dev\n", Some(Language::Python)),
            ("#!/usr/bin/env node\nconsole.log(1)\n", Some(Language::Node)),
            ("#!/usr/local/bin/nodejs\n", Some(Language::Node)),
            ("#!/bin/sh\n", None),
            ("#!/usr/bin/env ruby\n", None),
            ("#!/usr/bin/env pythonista\n", None),
            ("print(1)\n#!/usr/bin/env python3\n", None),
            ("", None),
        ] {
            assert_eq!(Language::from_shebang(code), language, "{code:?}");
        }
        assert_eq!(super::shebang_program("#!/usr/bin/env -S ruby -w\n"), Some("ruby"));
        assert_eq!(super::shebang_program("#!/bin/bash\n"), Some("bash"));
        assert_eq!(super::shebang_program("print(1)\n"), None);
    }

    #[test]
    fn a_language_is_known_by_its_aliases_in_any_case() {
        for (name, language) in [
            ("python", Language::Python),
            ("Python", Language::Python),
            ("PY", Language::Python),
            ("python3", Language::Python),
            ("node", Language::Node),
            ("NodeJS", Language::Node),
            ("js", Language::Node),
        ] {
            assert_eq!(Language::parse(name), Some(language), "{name}");
        }
        assert_eq!(Language::parse("ruby"), None);
    }
}
