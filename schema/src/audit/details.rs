//! What each kind of audit record carries, as types. The agent writes records only through
//! [`Details`], and the sync to bkg_db reads them back through the same types, so the writer of a
//! record and its reader cannot disagree on its shape (`key_id` written, `id` looked for).
//!
//! Reading accepts the records older agents wrote: fields added since are optional, and a
//! sandbox's `env` is read from a map (before env values were kept out of records) as well as
//! from a list of names.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::auth::Role;
use crate::sandbox::{SandboxDefinition, VolumeSpec};
use crate::{KilledBy, Language, LimitOverrides, Limits, RunResult};

/// The two free-form fields of a record, as JSON: `outcome` and `details`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parts {
    pub outcome: Option<Value>,
    pub details: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum DetailsError {
    #[error("unknown action {0:?} (written by a newer agent?)")]
    UnknownAction(String),
    #[error("{action}: {source}")]
    Shape { action: &'static str, source: serde_json::Error },
}

/// How one kind's content maps onto a record's `outcome` and `details`.
pub trait Payload: Sized {
    fn encode(&self) -> Result<Parts, serde_json::Error>;
    fn decode(parts: Parts) -> Result<Self, serde_json::Error>;
}

/// Kinds whose content is all in `details`.
macro_rules! in_details {
    ($($payload:ty),* $(,)?) => {$(
        impl Payload for $payload {
            fn encode(&self) -> Result<Parts, serde_json::Error> {
                Ok(Parts { outcome: None, details: Some(serde_json::to_value(self)?) })
            }
            fn decode(parts: Parts) -> Result<Self, serde_json::Error> {
                serde_json::from_value(parts.details.unwrap_or(Value::Null))
            }
        }
    )*};
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal, )*) => {
        /// What an audit record is about.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AuditAction {
            $( $(#[$doc])* $variant, )*
        }

        impl AuditAction {
            /// Every action, generated with the enum: a test that must see each kind iterates this.
            pub const ALL: &[AuditAction] = &[$(Self::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        /// The content of a record, typed by its action.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Details {
            $( $(#[$doc])* $variant($payload), )*
        }

        impl Details {
            pub fn action(&self) -> AuditAction {
                match self {
                    $(Self::$variant(_) => AuditAction::$variant,)*
                }
            }

            pub fn encode(&self) -> Result<Parts, serde_json::Error> {
                match self {
                    $(Self::$variant(payload) => payload.encode(),)*
                }
            }

            /// The content of a record of `action` from its `outcome` and `details`.
            pub fn decode(action: &str, parts: Parts) -> Result<Self, DetailsError> {
                match AuditAction::parse(action) {
                    $(Some(AuditAction::$variant) => <$payload as Payload>::decode(parts)
                        .map(Self::$variant)
                        .map_err(|source| DetailsError::Shape { action: $name, source }),)*
                    None => Err(DetailsError::UnknownAction(action.to_owned())),
                }
            }
        }
    };
}

kinds! {
    RunStarted(RunStarted) = "run.started",
    RunFinished(RunFinished) = "run.finished",
    /// A run the agent found unfinished when it started: the agent before it stopped (crashed,
    /// was killed) without closing it.
    RunInterrupted(RunInterrupted) = "run.interrupted",
    SandboxCreated(SandboxCreated) = "sandbox.created",
    /// A sandbox given another definition: the new one, as `sandbox.created` shows it.
    SandboxUpdated(SandboxCreated) = "sandbox.updated",
    SandboxDeleted(Nothing) = "sandbox.deleted",
    KeyCreated(KeyChange) = "key.created",
    KeyRotated(KeyChange) = "key.rotated",
    KeyRevoked(KeyChange) = "key.revoked",
    /// A user traded their password for a session key: the key is the one issued.
    Login(KeyChange) = "login",
    /// A login refused: a wrong password, or a name no user has (the caller is told neither).
    LoginRefused(LoginRefused) = "auth.login_refused",
    ConfigChanged(ConfigChanged) = "config.changed",
    SyncError(SyncFailed) = "sync.error",
    /// An outbox event bkg_db could not take, tried the allowed number of times, was set aside
    /// so that the events after it go on.
    SyncParked(SyncParked) = "sync.parked",
    /// Parked events were queued to be shipped again (`bkg sync retry`).
    SyncRetried(SyncRetried) = "sync.retried",
    /// Written by the log itself at the top of each file.
    LogOpened(LogOpened) = "log.opened",
    /// Written by the log itself after it discarded a torn line left by a crash.
    LogRecovered(LogRecovered) = "log.recovered",
}

/// No content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nothing;

impl Payload for Nothing {
    fn encode(&self) -> Result<Parts, serde_json::Error> {
        Ok(Parts::default())
    }

    fn decode(_: Parts) -> Result<Self, serde_json::Error> {
        Ok(Nothing)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub language: Language,
    pub started_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInterrupted {
    /// Absent when the store held a language this agent does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinishedDetails {
    /// Absent when the agent could not run the code at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    pub finished_at_ms: u64,
    /// What the sandbox refused the run's code (`RunResult::denials`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<crate::Denial>,
    /// Connections the run's network refused (`RunResult::network_denials`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_denials: Vec<crate::egress::NetworkDenial>,
}

/// How a run ended: it ran (and how), or the agent could not run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunOutcome {
    Failed { error: String },
    Ended(RunEnd),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub killed_by: Option<KilledBy>,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    pub disk_bytes_used: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
    /// The files it kept (bkg_db's `run_files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::artefacts::RunFile>,
}

impl From<&RunResult> for RunEnd {
    fn from(result: &RunResult) -> Self {
        Self {
            exit_code: result.exit_code,
            signal: result.signal,
            killed_by: result.killed_by,
            wall_ms: result.wall_ms,
            cpu_ms: result.cpu_ms,
            peak_memory_bytes: result.peak_memory_bytes,
            disk_bytes_used: result.disk_bytes_used,
            stdout_bytes: result.stdout_bytes,
            stderr_bytes: result.stderr_bytes,
            truncated: result.truncated,
            files: result.files.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunFinished {
    pub outcome: RunOutcome,
    pub details: RunFinishedDetails,
}

impl Payload for RunFinished {
    fn encode(&self) -> Result<Parts, serde_json::Error> {
        Ok(Parts {
            outcome: Some(serde_json::to_value(&self.outcome)?),
            details: Some(serde_json::to_value(&self.details)?),
        })
    }

    fn decode(parts: Parts) -> Result<Self, serde_json::Error> {
        Ok(Self {
            outcome: serde_json::from_value(parts.outcome.unwrap_or(Value::Null))?,
            details: serde_json::from_value(parts.details.unwrap_or(Value::Null))?,
        })
    }
}

/// A sandbox's definition as records show it: everything but the values of its environment,
/// which may be credentials. Only the names are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxCreated {
    pub name: String,
    pub namespace: String,
    pub project_dir: String,
    pub language: Language,
    #[serde(default)]
    pub limits: LimitOverrides,
    /// The names of its environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "env_names")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scripts: BTreeMap<String, String>,
    /// The hosts its runs may reach, the host ports it listens on and the names of the secrets
    /// it is given: what it opens, for the record (found by a new-user trial: a namespace key
    /// opened a host port and the signed record did not say so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl From<&SandboxDefinition> for SandboxCreated {
    fn from(definition: &SandboxDefinition) -> Self {
        Self {
            name: definition.name.clone(),
            namespace: definition.namespace.clone(),
            project_dir: definition.project_dir.clone(),
            language: definition.language,
            limits: definition.limits,
            env: definition.env.keys().cloned().collect(),
            volumes: definition.volumes.clone(),
            scripts: definition.scripts.clone(),
            network: definition.network.clone(),
            ports: definition.ports.clone(),
            secrets: definition.secrets.clone(),
        }
    }
}

/// Names from a list, or the keys of a map (records written before values were left out).
fn env_names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Env {
        Names(Vec<String>),
        Map(BTreeMap<String, Value>),
    }
    Ok(match Env::deserialize(deserializer)? {
        Env::Names(names) => names,
        Env::Map(map) => map.into_keys().collect(),
    })
}

/// A key as its records show it: metadata only, never the secret nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key_id: String,
    pub role: Role,
    pub expires_at_ms: u64,
    /// The key was removed for good (`DELETE`), not only revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigChanged {
    /// The configuration an agent started with.
    AgentStarted(Box<AgentConfig>),
    /// The agent began to stop, and why: `SIGTERM`, `SIGINT` or `asked through the API` (the
    /// record's actor then says by whom). Its runs' own records follow (`killed_by: shutdown`
    /// for those that outlive the grace); a crash leaves no such line.
    AgentStopped { agent_stopped: String },
    /// An admin added a user.
    UserCreated { user_created: String },
    /// An admin removed a user: their password went with them, and each key of theirs still
    /// active has its own `key.revoked` line.
    UserRemoved { user_removed: String },
    /// A secret of the record's namespace was set (its name; never its value).
    SecretSet { secret_set: String },
    /// A secret of the record's namespace was removed.
    SecretRemoved { secret_removed: String },
    /// A Python environment was built for a run: its id and requirement set.
    EnvBuilt { env_built: String, requirements: Vec<String> },
    /// Environments were pruned: their ids.
    EnvsPruned { envs_pruned: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub warm_pool: u64,
    /// Runs at once, runs waiting, and the disk all sandboxes may take (absent in lines of
    /// agents older than these limits).
    #[serde(default)]
    pub max_running_runs: Option<u64>,
    #[serde(default)]
    pub max_queued_runs: Option<u64>,
    #[serde(default)]
    pub disk_budget: Option<u64>,
    pub cgroups: String,
    pub listen: Option<String>,
    pub bkg_db: bool,
    pub version: String,
    /// The security level the agent runs at (absent in lines of agents older than the levels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<crate::host::SecurityLevel>,
    /// How long runs are kept (`--retention`, `--retention-for`): a shorter one deletes history
    /// at the agent's next pass, which this line traces (absent in lines of older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

pub use crate::Retention;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncFailed {
    pub error: Option<String>,
    pub backlog: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncParked {
    /// The parked event's seq and action.
    pub seq: u64,
    pub action: String,
    pub attempts: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginRefused {
    /// The user whose password was wrong; `None` when no user has the name given. A name that is
    /// no user's is not kept: it may be a password typed into the wrong field.
    pub username: Option<String>,
    /// The client's address, for a login over TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRetried {
    pub seqs: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOpened {
    pub public_key: String,
    pub previous_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecovered {
    pub file: Option<String>,
    pub torn_bytes: u64,
    pub saved_to: Option<String>,
}

in_details!(
    RunStarted,
    RunInterrupted,
    SandboxCreated,
    KeyChange,
    LoginRefused,
    ConfigChanged,
    SyncFailed,
    SyncParked,
    SyncRetried,
    LogOpened,
    LogRecovered
);

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn every_action_round_trips_through_its_name() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(*action));
        }
        assert_eq!(AuditAction::parse("run.paused"), None);
    }

    #[test]
    fn records_of_older_agents_still_read() -> TestResult {
        // What agents wrote before the details were typed: a key's id as `key_id`, a sandbox's
        // whole definition with its env values.
        let key = Parts {
            details: Some(serde_json::json!({"key_id": "k1", "role": "admin", "expires_at_ms": 9})),
            ..Parts::default()
        };
        let Details::KeyCreated(change) = Details::decode("key.created", key)? else { return Err("not a key".into()) };
        assert_eq!((change.key_id.as_str(), change.deleted), ("k1", false));
        let sandbox = Parts {
            details: Some(serde_json::json!({"name": "api", "namespace": "default", "project_dir": "/srv",
                "language": "python", "limits": {}, "env": {"TOKEN": "secret"}})),
            ..Parts::default()
        };
        let Details::SandboxCreated(created) = Details::decode("sandbox.created", sandbox)? else {
            return Err("not a sandbox".into());
        };
        assert_eq!(created.env, ["TOKEN"]);
        assert!(!serde_json::to_string(&created)?.contains("secret"));
        Ok(())
    }

    #[test]
    fn a_run_outcome_is_an_end_or_a_failure() -> TestResult {
        let failed = Parts {
            outcome: Some(serde_json::json!({"error": "no sandbox"})),
            details: Some(serde_json::json!({"finished_at_ms": 3})),
        };
        let decoded = Details::decode("run.finished", failed.clone())?;
        assert!(matches!(&decoded, Details::RunFinished(RunFinished { outcome: RunOutcome::Failed { .. }, .. })));
        assert_eq!(decoded.encode()?, failed);
        assert!(matches!(Details::decode("key.created", Parts::default()), Err(DetailsError::Shape { .. })));
        assert!(matches!(Details::decode("key.melted", Parts::default()), Err(DetailsError::UnknownAction(_))));
        Ok(())
    }
}
