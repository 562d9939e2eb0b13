//! Runs on a pseudo-terminal: a script in a temporary sandbox (`bkg exe -t`) or a shell or
//! command in a persistent one (`bkg shell`). They are runs like any other (accepted, started,
//! recorded with `runs.rs`), whose code has a terminal for its stdin, stdout and stderr.

use bkg_schema::sandbox::ExecRequest;
use bkg_schema::terminal::{DEFAULT_SHELL_COMMAND, RunTerminalOpen, ShellTerminalOpen};

use super::access::{namespace_for, require_code_runner};
use super::runs::Accepted;
use super::sandboxes::busy;
use super::{OpError, OpResult, Service};
use crate::auth::Principal;
use crate::engine::run::RunError;

impl Service {
    /// Checks a run in a temporary sandbox on a terminal and takes it on.
    pub fn accept_run_terminal(&self, principal: &Principal, open: RunTerminalOpen) -> OpResult<Accepted> {
        require_code_runner(principal)?;
        let namespace = namespace_for(principal, open.request.namespace.as_deref())?;
        let mut validated = self.engine.validate(open.request)?;
        validated.namespace = namespace;
        validated.on_terminal(open.size, open.term)?;
        self.accept(principal, validated)
    }

    /// Checks a shell (or command) on a terminal in sandbox `id` and takes it on; the sandbox is
    /// the run's until it ends.
    pub async fn accept_shell(&self, principal: &Principal, id: &str, open: ShellTerminalOpen) -> OpResult<Accepted> {
        let stored = self.visible_sandbox(principal, id).await?;
        let mut definition = stored.definition;
        if let Some(timeout_ms) = open.request.timeout_ms {
            definition.limits.timeout_ms = Some(timeout_ms);
        }
        let command = open.request.command.unwrap_or_else(|| DEFAULT_SHELL_COMMAND.to_owned());
        let exec = ExecRequest { command, detach: false, env: open.request.env, stdin_base64: None };
        let mut validated = self.engine.validate_exec(&definition, exec)?;
        validated.on_terminal(open.size, open.term)?;
        self.accept(principal, validated).map_err(|error| match error {
            OpError::Run(RunError::Busy(_)) => busy(&definition.name),
            other => other,
        })
    }
}
