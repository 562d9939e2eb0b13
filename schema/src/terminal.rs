//! A run on a pseudo-terminal, carried over a WebSocket (`GET /api/v1/runs/terminal`,
//! `GET /api/v1/sandboxes/{id}/terminal`). Binary messages are the terminal's bytes: keys from
//! the client, the screen's output from the agent. Text messages are JSON: the client's first is a
//! [`TerminalOpen`], later ones [`TerminalControl`]; the agent's are [`TerminalEvent`], the last
//! one a result or an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ApiError, RunRequest, RunResult};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub cols: u16,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub rows: u16,
}

impl TerminalSize {
    /// What a terminal that cannot tell its size is taken to be.
    pub const DEFAULT: TerminalSize = TerminalSize { cols: 80, rows: 24 };
}

/// The client's first message: what to run and on what terminal. `R` is the endpoint's request:
/// a [`RunRequest`] on `/api/v1/runs/terminal`, a [`ShellRequest`] on a sandbox's terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalOpen<R> {
    pub size: TerminalSize,
    /// `TERM` inside the sandbox (default `xterm-256color`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    pub request: R,
}

/// The first message on `/api/v1/runs/terminal`.
pub type RunTerminalOpen = TerminalOpen<RunRequest>;

/// The first message on `/api/v1/sandboxes/{id}/terminal`.
pub type ShellTerminalOpen = TerminalOpen<ShellRequest>;

/// The first message on the Web UI's terminal (`/ui/sandboxes/{id}/terminal/socket`): the
/// page's CSRF token, which proves the socket was opened by the agent's own page (a WebSocket
/// is not bound by the same-origin policy), and the size of the page's terminal. The shell is
/// the sandbox's default one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageTerminalOpen {
    pub csrf: String,
    pub size: TerminalSize,
}

/// What a sandbox's terminal runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShellRequest {
    /// A command line for `/bin/sh -c`; default: an interactive shell (bash when the sandbox has
    /// it, else sh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How long this run may last, instead of the sandbox's timeout (up to the agent's maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub timeout_ms: Option<u64>,
}

/// The client's later text messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TerminalControl {
    /// The client's terminal has a new size; the sandbox's programs get `SIGWINCH`.
    Resize { cols: u16, rows: u16 },
    /// End the run now (its result says `killed_by: cancelled`). Ctrl-C is a key, not this.
    Cancel,
}

/// The agent's text messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalEvent {
    /// The run started; the terminal's output follows as binary messages.
    Started { run_id: String },
    /// The run ended: its result (its output is not repeated: `stdout` holds it, capped). The
    /// last message.
    Result { result: Box<RunResult> },
    /// The run failed before it had a result. The last message.
    Error { error: ApiError },
}

/// The interactive shell a sandbox's terminal runs when no command is given.
pub const DEFAULT_SHELL_COMMAND: &str = "if command -v bash >/dev/null 2>&1; then exec bash -i; fi; exec sh -i";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_tagged() {
        let resize: TerminalControl =
            serde_json::from_str(r#"{"type":"resize","cols":100,"rows":30}"#).unwrap_or(TerminalControl::Cancel);
        assert_eq!(resize, TerminalControl::Resize { cols: 100, rows: 30 });
        assert!(serde_json::from_str::<TerminalControl>(r#"{"type":"resize","cols":1}"#).is_err());
    }

    #[test]
    fn a_shell_open_needs_only_a_size() {
        let open: Result<ShellTerminalOpen, _> = serde_json::from_str(r#"{"size":{"cols":80,"rows":24},"request":{}}"#);
        assert_eq!(open.ok().map(|open| open.size), Some(TerminalSize::DEFAULT));
    }
}
