//! Exit codes and the one-line errors that go with them (documented in docs/cli.md).

use std::process::ExitCode;

/// bkg itself failed: bad input, agent unreachable, agent refused.
pub const BKG_FAILED: i32 = 125;
/// The runtime (python3, node) could not be executed.
pub const RUNTIME_NOT_EXECUTABLE: i32 = 126;
/// The script file does not exist.
pub const SCRIPT_NOT_FOUND: i32 = 127;

/// An error that ends the command: one line on stderr and an exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(BKG_FAILED, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(BKG_FAILED, message)
    }

    pub fn report(&self) -> ExitCode {
        self.report_as("bkg")
    }

    /// Prints the error as `TOOL: message`, one line per line of the message.
    pub fn report_as(&self, tool: &str) -> ExitCode {
        for line in self.message.lines() {
            eprintln!("{tool}: {line}");
        }
        code(self.code)
    }
}

pub fn code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
}

/// Clap's own errors. Help and version print as usual (exit 0). A usage error keeps clap's whole
/// message, with its tips and the usage line, under `TOOL: ` instead of clap's `error: `, and
/// exits 125 like every other bad input; so does a bare `bkg` that prints its help.
pub fn clap_error(error: clap::Error, tool: &str) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            code(BKG_FAILED)
        }
        _ => {
            eprint!("{}", render_usage_error(&error, tool));
            code(BKG_FAILED)
        }
    }
}

/// Clap's rendering of a usage error, plain text, led by `TOOL: `.
pub fn render_usage_error(error: &clap::Error, tool: &str) -> String {
    let rendered = error.render().to_string();
    let body = rendered.strip_prefix("error: ").unwrap_or(&rendered);
    format!("{tool}: {body}")
}
