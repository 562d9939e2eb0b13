//! Every exit code of `bkg` and `bkgr`, and the error that ends a command with one: the one place
//! they are decided (docs/cli.md lists them). `out.rs` prints them.

use std::process::ExitCode;

use bkg_schema::files::ExecutionStatus;
use bkg_schema::{KilledBy, RunResult};

/// The command did what it was asked.
pub const SUCCESS: i32 = 0;
/// A check answered no: the audit log was tampered with, no agent runs (`bkg agent status`), the
/// sync needs attention (`bkg sync status`), a removal was declined (`bkg rm`).
pub const NEGATIVE: i32 = 1;
/// A run hit its wall-clock limit.
pub const TIMEOUT: i32 = 124;
/// bkg itself failed: bad input, agent unreachable, agent refused.
pub const BKG_FAILED: i32 = 125;
/// The runtime (python3, node) could not be executed.
pub const RUNTIME_NOT_EXECUTABLE: i32 = 126;
/// The script file does not exist.
pub const SCRIPT_NOT_FOUND: i32 = 127;
/// A run killed by signal N exits with this plus N, as a shell reports it.
pub const SIGNALLED: i32 = 128;
/// A run cancelled with Ctrl-C (128 + SIGINT); on SIGTERM or SIGHUP to bkg, 128 + that.
pub const CANCELLED: i32 = SIGNALLED + 2;
/// A run killed by its memory or process limit (128 + SIGKILL).
pub const LIMIT_KILLED: i32 = SIGNALLED + 9;
/// A run that outlived the agent's stop (128 + SIGTERM): not the script's doing nor bkg's failure.
pub const AGENT_STOPPED: i32 = SIGNALLED + 15;

/// The exit code of `bkg exe` and `bkgr` for a run that ended as `result` says: a limit's own
/// code, else the script's code, else 128 + the signal that ended it.
pub fn of_run(result: &RunResult) -> i32 {
    of_run_end(result.killed_by, result.exit_code, result.signal)
}

fn of_run_end(killed_by: Option<KilledBy>, exit_code: Option<i32>, signal: Option<i32>) -> i32 {
    match killed_by {
        Some(KilledBy::Timeout) => TIMEOUT,
        // A script that ended by itself after the limit killed one of its processes (the OOM
        // killer picks the biggest, maybe a child) has its own code, as with a full disk.
        Some(KilledBy::Memory | KilledBy::Pids) => exit_code.unwrap_or(LIMIT_KILLED),
        Some(KilledBy::Cancelled) => cancelled(),
        // A script that ended by itself when the agent's stop asked it to has its own code.
        Some(KilledBy::Shutdown) => exit_code.unwrap_or(AGENT_STOPPED),
        Some(KilledBy::Interrupted) => AGENT_STOPPED,
        Some(KilledBy::Disk) | None => match (exit_code, signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => SIGNALLED + signal,
            (None, None) => BKG_FAILED,
        },
    }
}

/// The exit code of what was cancelled: 128 + the signal on which this process cancelled it
/// (130 for Ctrl-C, 143, 129), else 130 (the agent, an API call, `bkg runs cancel`).
fn cancelled() -> i32 {
    crate::stream::cancelled_by_signal().map_or(CANCELLED, |signal| SIGNALLED + signal)
}

/// The exit code of `bkgr` running several sandboxes at once, from their codes in the order they
/// ended: a signal that stopped bkgr (Ctrl-C) is what the user did last and decides, else the
/// first failure.
pub fn of_runs(codes: &[i32]) -> i32 {
    if let Some(signal) = crate::stream::cancelled_by_signal() {
        return SIGNALLED + signal;
    }
    codes.iter().copied().find(|&code| code != SUCCESS).unwrap_or(SUCCESS)
}

/// The exit code of `bkg exec` (and of `bkg repl` fed from a pipe) for an execution that ended
/// with `status`: 0, 1 when the code raised, 130 interrupted; an interpreter that died takes
/// the code of what killed it, as a run would (137 at its memory limit), else 1.
pub fn of_execution(status: ExecutionStatus, killed_by: Option<KilledBy>) -> i32 {
    match (status, killed_by) {
        (ExecutionStatus::Ok, _) => SUCCESS,
        // Interrupted on the SIGTERM or SIGHUP bkg got: 143 or 129, as `bkg exe` cancelled on one.
        (ExecutionStatus::Interrupted, _) => cancelled(),
        (ExecutionStatus::Died, Some(killed_by)) if killed_by != KilledBy::Disk => {
            of_run_end(Some(killed_by), None, None)
        }
        (ExecutionStatus::Error | ExecutionStatus::Died, _) => NEGATIVE,
    }
}

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
}

/// How a command that writes until stopped (`bkg audit tail -f | head -3`) ends when its reader
/// has gone: quietly, with 0, as `head` leaves it. `None` for any other write failure.
pub fn reader_gone(error: &std::io::Error) -> Option<CliError> {
    (error.kind() == std::io::ErrorKind::BrokenPipe).then(|| CliError::new(SUCCESS, ""))
}

/// The process's exit code for `code` (0 to 255).
pub fn code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
}

/// The exit code of clap's own errors: 0 for `--help` and `--version`; a usage error exits 125
/// like every other bad input, and so does a bare `bkg` that prints its help.
pub fn of_clap(error: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => SUCCESS,
        _ => BKG_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_a_run_ends_has_its_documented_exit_code() {
        let cases = [
            (Some(KilledBy::Timeout), None, Some(9), 124),
            (Some(KilledBy::Memory), None, Some(9), 137),
            (Some(KilledBy::Pids), None, Some(9), 137),
            (Some(KilledBy::Memory), Some(3), None, 3),
            (Some(KilledBy::Memory), Some(137), None, 137),
            (Some(KilledBy::Cancelled), None, Some(9), 130),
            (Some(KilledBy::Shutdown), None, Some(9), 143),
            (Some(KilledBy::Shutdown), None, Some(15), 143),
            (Some(KilledBy::Shutdown), Some(0), None, 0),
            (Some(KilledBy::Interrupted), None, None, 143),
            (Some(KilledBy::Disk), Some(1), None, 1),
            (Some(KilledBy::Disk), None, Some(6), 134),
            (None, Some(0), None, 0),
            (None, Some(3), None, 3),
            (None, None, Some(15), 143),
            (None, None, None, 125),
        ];
        for (killed_by, exit_code, signal, expected) in cases {
            assert_eq!(of_run_end(killed_by, exit_code, signal), expected, "{killed_by:?} {exit_code:?} {signal:?}");
        }
    }

    #[test]
    fn every_way_an_execution_ends_has_its_documented_exit_code() {
        use ExecutionStatus::{Died, Error, Interrupted, Ok};
        let cases = [
            (Ok, None, 0),
            (Error, None, 1),
            (Interrupted, None, 130),
            (Died, Some(KilledBy::Memory), 137),
            (Died, Some(KilledBy::Pids), 137),
            (Died, Some(KilledBy::Timeout), 124),
            (Died, Some(KilledBy::Cancelled), 130),
            (Died, Some(KilledBy::Shutdown), 143),
            (Died, Some(KilledBy::Disk), 1),
            (Died, None, 1),
        ];
        for (status, killed_by, expected) in cases {
            assert_eq!(of_execution(status, killed_by), expected, "{status:?} {killed_by:?}");
        }
    }
}
