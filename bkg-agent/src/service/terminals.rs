//! Runs on a pseudo-terminal: a script in a temporary sandbox (`bkg exe -t`) or a shell or
//! command in a persistent one (`bkg shell`). They are runs like any other (accepted, started,
//! recorded with `runs.rs`), whose code has a terminal for its stdin, stdout and stderr.

use bkg_schema::sandbox::ExecRequest;
use bkg_schema::terminal::{DEFAULT_SHELL_COMMAND, RunTerminalOpen, ShellTerminalOpen};

use super::runs::Accepted;
use super::{OpResult, Service};
use crate::auth::Principal;

impl Service {
    /// Whether the caller may open a terminal for a run at all: answered before the WebSocket
    /// upgrade, so a caller who may not run code gets a plain refusal, as a streamed run does.
    pub fn may_open_run_terminal(&self, principal: &Principal) -> OpResult<()> {
        super::access::require_code_runner(principal)
    }

    /// Checks a run in a temporary sandbox on a terminal and takes it on.
    pub fn accept_run_terminal(&self, principal: &Principal, open: RunTerminalOpen) -> OpResult<Accepted> {
        let mut validated = self.validate_run(principal, open.request)?;
        validated.on_terminal(open.size, open.term)?;
        self.accept(principal, validated)
    }

    /// Checks a shell (or command) on a terminal in sandbox `id` and takes it on; the sandbox is
    /// the run's until it ends.
    pub async fn accept_shell(&self, principal: &Principal, id: &str, open: ShellTerminalOpen) -> OpResult<Accepted> {
        let command = open.request.command.unwrap_or_else(|| DEFAULT_SHELL_COMMAND.to_owned());
        let exec = ExecRequest { env: open.request.env, ..ExecRequest::command(command) };
        let (definition, mut validated) =
            self.validate_sandbox_exec(principal, id, exec, open.request.timeout_ms).await?;
        validated.on_terminal(open.size, open.term)?;
        self.accept_in_sandbox(principal, &definition, validated)
    }
}
