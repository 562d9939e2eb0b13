//! Writing to stdout and stderr without panicking when the reader has gone.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and std's `println!` and
//! `eprintln!` panic on any failed write; with the release profile's `panic = "abort"` that ended
//! `bkg exe x.py 2>&1 | head -1` with 134. bkg's rule instead (docs/cli.md): output that cannot
//! be written is dropped, and the command ends with the exit code it would have had anyway. A
//! run goes on when its caller's stdout closes; only the caller decides when to stop it.
//!
//! The macros below shadow std's `println!`, `eprint!` and `eprintln!` in every module
//! of this crate declared after this one (`lib.rs` declares it first), so no call site can reach
//! the panicking versions; other crates (`bkgr`) call the functions directly.

use std::fmt;
use std::io::Write;

/// Writes to stdout, dropping what a closed or failing stdout cannot take.
pub fn stdout(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.flush());
}

/// Writes to stderr, dropping what a closed or failing stderr cannot take.
pub fn stderr(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// How a command that writes until stopped (`bkg audit tail -f | head -3`) ends when its reader
/// has gone: quietly, with 0, as `head` leaves it. `None` for any other write failure.
pub fn reader_gone(error: &std::io::Error) -> Option<crate::exit::CliError> {
    (error.kind() == std::io::ErrorKind::BrokenPipe).then(|| crate::exit::CliError::new(0, ""))
}

/// A line on stdout; see [`stdout`].
pub fn stdout_line(args: fmt::Arguments<'_>) {
    stdout(format_args!("{args}\n"));
}

/// A line on stderr; see [`stderr`].
pub fn stderr_line(args: fmt::Arguments<'_>) {
    stderr(format_args!("{args}\n"));
}

macro_rules! println {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout_line(format_args!($($arg)*)) };
}

macro_rules! eprint {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!($($arg)*)) };
}

macro_rules! eprintln {
    () => { $crate::out::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stderr_line(format_args!($($arg)*)) };
}
