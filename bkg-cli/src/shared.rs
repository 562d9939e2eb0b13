//! What `bkgr` shares with `bkg`, and nothing more: its grammar, the agent's endpoint and
//! client, a streamed run, the project lookup, the printer and exit codes, and the two steps
//! both binaries take alike (running to an exit code, reading the limit flags). `bkg` uses the
//! same items; `bkgr` reaches nothing else of this crate.

use std::future::Future;
use std::process::ExitCode;

use bkg_schema::LimitOverrides;

pub use crate::args::{Bkgr, LimitArgs, bkgr_command, parse};
pub use crate::client::AgentClient;
pub use crate::define::{Outside, define, definition};
pub use crate::exit::{CliError, SUCCESS, of_run as exit_code_of_run, of_runs as exit_code_of_runs};
pub use crate::out::{Printer, clap_error};
pub use crate::project::{load_cave, load_cave_for, project_dir, unknown_sandbox};
pub use crate::runs_cmd::note_kept_files;
pub use crate::settings::Endpoint;
pub use crate::stream::{LimitsFrom, Output, Stdin, denial_lines, reason_line, run as run_streamed};

/// Runs `work` to its end and makes its outcome the process's exit code; an error is reported
/// as `TOOL: message`.
pub fn run_to_exit(tool: &'static str, work: impl Future<Output = Result<i32, CliError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            return Printer::new(tool, false)
                .error(&CliError::internal(format!("cannot start the async runtime: {error}")));
        }
    };
    let outcome = runtime.block_on(work);
    // A read of our stdin may still be pending on a blocking thread (stdin is a terminal or a
    // pipe that stays open); it must not keep the process alive after the run.
    runtime.shutdown_background();
    let printer = Printer::new(tool, false);
    // A command that failed says why in its own one line, stdout's failure included.
    if let (Some(failure), Ok(_)) = (crate::out::stdout_failure(), &outcome) {
        printer.note(format_args!("{}", crate::out::incomplete_stdout(failure)));
    }
    match outcome {
        // A command that did its work but could not write all of its answer has failed.
        Ok(crate::exit::SUCCESS) if crate::out::stdout_failure().is_some() => {
            crate::exit::code(crate::exit::BKG_FAILED)
        }
        Ok(code) => crate::exit::code(code),
        Err(error) => printer.error(&error),
    }
}

/// A limit flag's value refused, with the limit it was given for (`memory` for `--memory`): `bkg
/// exe` adds the `--` way out when that flag took a word meant for the script.
pub struct LimitFlagError {
    pub limit: &'static str,
    pub error: CliError,
}

impl From<LimitFlagError> for CliError {
    fn from(refused: LimitFlagError) -> Self {
        refused.error
    }
}

/// The limit flags that were given, checked: `--cpus`, `--memory`, `--timeout`, `--disk`.
pub fn limit_overrides(flags: &LimitArgs) -> Result<LimitOverrides, LimitFlagError> {
    type Parse = fn(&str) -> Result<u64, bkg_schema::UnitError>;
    // Below the agent's least (`Limits::LEAST`) is refused here already, with that least.
    let checked = |value: &Option<String>, (limit, least, shown): bkg_schema::NamedLimit, parse: Parse| {
        let too_small = |text: &str| {
            // A bare number is bytes (or seconds), which is seldom what was meant by `512`.
            // The number with MiB is suggested only where it would do: `0MiB` is refused in turn
            // (found by a new-user trial).
            let unit = match (limit, text.parse::<u64>()) {
                ("memory" | "disk", Ok(number)) if number.saturating_mul(1 << 20) >= least => {
                    format!(" (a number without a unit is bytes: `{text}MiB`?)")
                }
                ("memory" | "disk", Ok(_)) => " (a number without a unit is bytes)".to_owned(),
                _ => String::new(),
            };
            CliError::usage(format!("--{limit}: `{text}` is too small: the least is {}{unit}", shown(least)))
        };
        let refused = |error: CliError| LimitFlagError { limit, error };
        value
            .as_deref()
            .map(|text| match parse(text) {
                Ok(value) if value < least => Err(refused(too_small(text))),
                Ok(value) => Ok(value),
                Err(bkg_schema::UnitError::Zero { .. }) => Err(refused(too_small(text))),
                Err(error) => Err(refused(CliError::usage(format!("--{limit}: {error}")))),
            })
            .transpose()
    };
    let [cpus, memory, timeout, disk, _pids] = bkg_schema::Limits::LEAST.named();
    Ok(LimitOverrides {
        cpu_millis: checked(&flags.cpus, cpus, bkg_schema::parse_cpus)?,
        memory_bytes: checked(&flags.memory, memory, bkg_schema::parse_size)?,
        timeout_ms: checked(&flags.timeout, timeout, bkg_schema::parse_duration_ms)?,
        disk_bytes: checked(&flags.disk, disk, bkg_schema::parse_size)?,
        pids: None,
    })
}
