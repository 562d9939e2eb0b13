//! Files into and out of a persistent sandbox (`/api/v1/sandboxes/{id}/files…`), and sessions:
//! interpreter contexts that keep their state between executions
//! (`/api/v1/sandboxes/{id}/sessions…`).

use serde::{Deserialize, Serialize};

use crate::Language;

/// What a directory entry is. Symbolic links are shown, never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of `GET /api/v1/sandboxes/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, e.g. 420 (0o644).
    pub mode: u32,
    pub modified_ms: u64,
}

/// The PAX key of an empty directory entry in a download's tar stream that stands for a mount
/// in the sandbox's /workspace (a cave.yaml volume), whose files are not sent: they are the
/// host's.
pub const MOUNT_MARK: &str = "BKG.mount";

/// The answer of an upload (`PUT /api/v1/sandboxes/{id}/files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadResult {
    /// Where the entries went, e.g. `/workspace/data`.
    pub path: String,
    /// The regular files written (`bytes` is theirs).
    pub files: u64,
    pub bytes: u64,
    /// The symbolic links written, besides the files.
    #[serde(default)]
    pub links: u64,
}

/// The name of a session that is given none.
pub const DEFAULT_SESSION: &str = "default";

/// What `bkg exec NAME` needs after it to reach session `session`: nothing for the default one.
pub fn session_flag(session: &str) -> String {
    match session {
        DEFAULT_SESSION => String::new(),
        named => format!(" --session {named}"),
    }
}

/// `POST /api/v1/sandboxes/{id}/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// The session's name, a DNS label [default: `default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// python or node [default: the sandbox's language].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
}

/// A session as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub name: String,
    pub sandbox_id: String,
    pub language: Language,
    /// The run that hosts the session's interpreter (it holds the sandbox while the session lives).
    pub run_id: String,
    /// How many executions it has had.
    pub executions: u64,
    /// Whether an execution is going on.
    pub busy: bool,
}

/// `POST /api/v1/sandboxes/{id}/sessions/{name}/execute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub code: String,
}

/// One event of an execution, streamed as a line of JSON (`application/x-ndjson`); the last
/// event is `end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    /// Text the code wrote to stdout or stderr, as it wrote it.
    Stream { name: StreamName, text: String },
    /// Rich output: a figure, an image, HTML or JSON. `data` maps a MIME type
    /// (`image/png` and `image/svg+xml` base64 or text, `text/html`, `application/json`,
    /// `text/plain`) to its content.
    Display { data: serde_json::Map<String, serde_json::Value> },
    /// The value of the cell's last expression, by MIME type like `display`.
    Result { data: serde_json::Map<String, serde_json::Value> },
    /// The cell raised: its type, message and the traceback of the user's cells only
    /// (`File "<cell 3>", line 2`).
    Error { name: String, message: String, traceback: Vec<String> },
    /// The execution is over. `status` is `ok`, `error` or `interrupted`; `execution` counts
    /// the session's executions from 1. When the interpreter died (`died`), `killed_by` is the
    /// limit or stop that ended its run, if one did; an execution `interrupted` because the key
    /// that sent it was revoked, rotated, deleted or expired has `killed_by: cancelled`. `error`
    /// says why the session's interpreter could not start, when it could not (its packages
    /// failed to install, say): the same words a run's `error` has.
    End {
        status: ExecutionStatus,
        execution: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        killed_by: Option<crate::KilledBy>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl SessionEvent {
    /// About the memory the event takes: the text it carries. What bounds the events held for
    /// a slow reader, by the agent and by bkg.
    pub fn footprint(&self) -> usize {
        fn of_value(value: &serde_json::Value) -> usize {
            match value {
                serde_json::Value::String(text) => text.len(),
                serde_json::Value::Array(items) => items.iter().map(of_value).sum(),
                serde_json::Value::Object(fields) => {
                    fields.iter().map(|(key, value)| key.len() + of_value(value)).sum()
                }
                _ => 8,
            }
        }
        match self {
            SessionEvent::Stream { text, .. } => text.len(),
            SessionEvent::Display { data } | SessionEvent::Result { data } => {
                data.iter().map(|(key, value)| key.len() + of_value(value)).sum()
            }
            SessionEvent::Error { name, message, traceback } => {
                name.len() + message.len() + traceback.iter().map(String::len).sum::<usize>()
            }
            SessionEvent::End { .. } => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    Ok,
    Error,
    Interrupted,
    /// The interpreter ended (it exited, was killed or the sandbox stopped); restart the session.
    Died,
}
