//! The change feed: `GET /api/v1/changes` (server-sent events) and `bkg watch`.
//!
//! Every change is one signed audit record, placed at a position in the feed. With a bkg_db the
//! positions are global to every agent sharing it and gap-free; without one they are the local
//! agent's audit sequence numbers. `docs/bkg-db.md` states the guarantees.

use serde::{Deserialize, Serialize};

/// The SSE event name of a [`Change`]; its `id:` field is the change's position.
pub const CHANGE_EVENT: &str = "change";
/// The reason of the [`Resume`] that ends a stream asked not to follow (`follow=false`) once it
/// has sent every change so far.
pub const CAUGHT_UP: &str = "caught up";

/// The SSE event name of a [`Resume`]: the stream ends after it.
pub const RESUME_EVENT: &str = "resume";

/// Which table a change touched: the state tables (`runs`, `sandboxes`, `keys`), or only the
/// audit log (`audit`: configuration, sync and log records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Runs,
    Sandboxes,
    Keys,
    Audit,
}

impl ChangeKind {
    pub const ALL: [Self; 4] = [Self::Runs, Self::Sandboxes, Self::Keys, Self::Audit];

    /// The kind of change an audit action makes: the table bkg_db's sync writes it to.
    pub fn of_action(action: &str) -> Self {
        match action.split_once('.').map_or(action, |(prefix, _)| prefix) {
            "run" => Self::Runs,
            "sandbox" => Self::Sandboxes,
            // A login makes a session key.
            "key" | "login" => Self::Keys,
            _ => Self::Audit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Sandboxes => "sandboxes",
            Self::Keys => "keys",
            Self::Audit => "audit",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Where the positions of a feed come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// bkg_db's global change positions: every agent sharing the database serves the same feed.
    BkgDb,
    /// This agent's own audit sequence numbers (no bkg_db configured).
    Local,
}

/// One insert or update, as the feed delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// The change's place in the feed: resume after it with `?since=` or `Last-Event-ID`.
    pub position: u64,
    pub source: ChangeSource,
    pub kind: ChangeKind,
    /// The audit action (`run.finished`, `key.created`…).
    pub action: String,
    /// Absent for the agents' own records, which only admins see.
    pub namespace: Option<String>,
    /// The agent that made the change and its audit sequence number.
    pub agent_id: String,
    pub seq: u64,
    /// The run, sandbox or key changed.
    pub object_id: Option<String>,
    pub ts_ms: u64,
    /// The signed audit record, verbatim: what changed (never a key's secret or hash, never an
    /// environment value: the audit record carries none).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub record: serde_json::Value,
}

/// The agent ends the stream (it is stopping): the reader resumes from `resume_from` (`?since=`),
/// on this agent once it is back or on another one sharing the bkg_db, and misses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resume {
    pub resume_from: u64,
    pub reason: String,
}
