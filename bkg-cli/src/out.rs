//! The one way `bkg` and `bkgr` print: data on stdout (a command's answer, its table, its JSON
//! with `--json`), words for people on stderr (`bkg: stopped web`), and never a panic when the
//! reader has gone.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and std's `println!` and
//! `eprintln!` panic on any failed write; with the release profile's `panic = "abort"` that ended
//! `bkg exe x.py 2>&1 | head -1` with 134. bkg's rule instead (docs/cli.md): output that cannot
//! be written is dropped, and the command ends with the exit code it would have had anyway,
//! unless stdout failed for another reason than a closed pipe (a full disk): then it says so
//! and exits 125 (when it would have exited 0), as what it wrote is incomplete. A
//! run's code has its own stdout closed when bkg's closes (bkg-cli/src/stream.rs, `receive`),
//! and decides itself how to end, as in a pipeline. The crate denies std's print macros
//! (`lib.rs`), so every write but a run's output comes through here (that one goes through
//! stream.rs, `write_ours`, which must hear of a closed stdout).
//!
//! bkg's own output has no colour; clap's help and errors and `bkg init`'s prompts honour
//! `NO_COLOR` themselves (anstream, console), and spinners are plain text.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use crate::exit::CliError;

/// Writes to stdout, dropping what a closed or failing stdout cannot take.
fn stdout(args: fmt::Arguments<'_>) {
    let _ = write_stdout(|out| out.write_fmt(args));
}

/// Writes `bytes` to stdout as they are (a run's output, a log), as `stdout` writes text: the
/// error is the caller's to act on (a closed pipe ends a follow), a failure is noted too.
pub fn stdout_bytes(bytes: &[u8]) -> std::io::Result<()> {
    write_stdout(|out| out.write_all(bytes))
}

/// Every write to stdout but clap's: none once it has failed, each flushed and its failure noted.
fn write_stdout(write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) -> std::io::Result<()> {
    if let Some(failure) = stdout_failure() {
        return Err(std::io::Error::other(failure));
    }
    let mut out = std::io::stdout().lock();
    let written = write(&mut out).and_then(|()| out.flush());
    note_stdout_write(&written);
    written
}

/// Why a write to stdout failed other than by its reader's going (a full disk, an I/O error):
/// what stdout holds is then incomplete, and the command says so and fails
/// (`shared::run_to_exit`), where a closed pipe is no failure. Nothing more is written after it,
/// so that what stdout holds has no hole.
static STDOUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Takes note of how a write to stdout went.
pub fn note_stdout_write(written: &std::io::Result<()>) {
    if let Err(error) = written
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = STDOUT_FAILED.set(error.to_string());
    }
}

/// What bkg says when stdout failed so (`note_stdout_write`).
pub fn incomplete_stdout(failure: &str) -> String {
    format!("cannot write to stdout ({failure}): what it holds is incomplete")
}

/// Why stdout could not take what was written to it, if it could not (`note_stdout_write`).
pub fn stdout_failure() -> Option<&'static str> {
    STDOUT_FAILED.get().map(String::as_str)
}

/// Resolves once stdout's reader has gone (the reading end of its pipe or socket closed), so
/// that a command that follows something quiet (`bkg watch | head -1`) ends as `head` leaves it,
/// not at its next write; never for a terminal or a file. A thread of its own waits in poll(2)
/// for the error a closed pipe raises, and is left behind when the command ends first.
pub async fn stdout_closed() {
    let (closed, heard) = tokio::sync::oneshot::channel();
    let watcher = std::thread::Builder::new().name("stdout-reader".into()).spawn(move || {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let stdout = std::io::stdout();
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&stdout), PollFlags::empty())];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(_)
                    if fds[0].revents().is_some_and(|got| got.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)) =>
                {
                    let _ = closed.send(());
                    return;
                }
                // Nothing else ends a poll for no events; an error is no reason to end the command.
                _ => return,
            }
        }
    });
    if watcher.is_err() || heard.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether stdout is a pipe or a socket, whose reader can go away before we write again
/// (`stdout_closed` waits for that; a terminal, a file or `/dev/null` has no such reader).
pub fn stdout_has_a_reader() -> bool {
    use nix::sys::stat::{SFlag, fstat};
    fstat(std::io::stdout()).is_ok_and(|stat| {
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        kind == SFlag::S_IFIFO || kind == SFlag::S_IFSOCK
    })
}

/// Whether this process's stdout and stderr are one file whose reader sees what both take in
/// order (`2>&1` into a file, a pipe or a socket; one terminal): a run's two streams are then
/// best written as one (`RunRequest::stderr_to_stdout`). A device that is not a terminal
/// (`/dev/null`) keeps nothing to order.
pub fn stdout_and_stderr_are_one() -> bool {
    use nix::sys::stat::{SFlag, fstat};
    use std::io::IsTerminal;
    let (Ok(out), Ok(err)) = (fstat(std::io::stdout()), fstat(std::io::stderr())) else { return false };
    let is_device = SFlag::from_bits_truncate(out.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino) && (!is_device || std::io::stdout().is_terminal())
}

/// Writes to stderr, dropping what a closed or failing stderr cannot take.
/// bkg's own lines start where the run's output left off on a line of its own
/// (`stream::start_own_line`), and only when a line of ours follows: the output itself is
/// passed on as the code wrote it, byte for byte.
pub fn stderr(args: fmt::Arguments<'_>) {
    crate::stream::start_own_line();
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Where a command's output goes, and in which form: made once per command (`Settings`).
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// What leads a note: `bkg` or `bkgr`.
    tool: &'static str,
    /// `--json`: the answer is one JSON value on stdout.
    json: bool,
}

impl Printer {
    pub fn new(tool: &'static str, json: bool) -> Self {
        Self { tool, json }
    }

    /// Whether the command's answer is JSON (`--json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A line of data on stdout.
    pub fn line(&self, args: fmt::Arguments<'_>) {
        stdout(format_args!("{args}\n"));
    }

    /// Output for people on stderr as it is (a session's stderr, a traceback), without a lead.
    pub fn error_text(&self, text: &str) {
        stderr(format_args!("{text}"));
    }

    /// Data on stdout as it is (a table, a description of several lines).
    pub fn text(&self, text: &str) {
        stdout(format_args!("{text}"));
    }

    /// `value` as one line of JSON on stdout.
    pub fn json(&self, value: &impl serde::Serialize) -> Result<(), CliError> {
        let json = json_text(value)?;
        self.line(format_args!("{json}"));
        Ok(())
    }

    /// A command's answer: `value` as JSON with `--json`, else as `human` writes it for people.
    pub fn answer<T: serde::Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
        if self.json {
            return self.json(value);
        }
        self.text(&human(value));
        Ok(())
    }

    /// A note for people on stderr, after the tool's name: `bkg: stopped web`.
    pub fn note(&self, args: fmt::Arguments<'_>) {
        stderr(format_args!("{}: {args}\n", self.tool));
    }

    /// A question on stderr; the answer is typed on the same line.
    pub fn ask(&self, args: fmt::Arguments<'_>) {
        stderr(format_args!("{}: {args}", self.tool));
    }

    /// Lines for people on stderr as they are (a report that names its own source).
    pub fn human(&self, args: fmt::Arguments<'_>) {
        stderr(format_args!("{args}\n"));
    }

    /// Ends the command with `error`: `TOOL: message` on stderr, a line per line of the message,
    /// and its exit code.
    pub fn error(&self, error: &CliError) -> ExitCode {
        for line in error.message.lines() {
            stderr(format_args!("{}: {line}\n", self.tool));
        }
        crate::exit::code(error.code)
    }
}

pub use bkg_schema::units::count;

/// A stream's output, written on a thread of its own in the order given: a reader that takes
/// none of it (`bkg exe job.py | less`) blocks that thread, not the runtime, so a Ctrl-C is still
/// heard and acted on while the output waits (stream.rs, session_cmd.rs). Not one of the runtime's
/// blocking threads: those are waited for when it ends, and a second Ctrl-C must end bkg while
/// this one may still wait for its reader. `write` takes each item until it returns the last
/// word (`Some`); the thread then ends with it. What waits for the reader is bounded by count
/// and by bytes (`weight`): a session's figure may be 16 MiB, and 16 of them held for a stalled
/// reader grew bkg by 190 MB (found by a new-user trial).
pub struct WriterThread<T, R> {
    queue: Option<tokio::sync::mpsc::Sender<(T, tokio::sync::OwnedSemaphorePermit)>>,
    bytes: std::sync::Arc<tokio::sync::Semaphore>,
    weight: fn(&T) -> usize,
    done: tokio::sync::oneshot::Receiver<Option<R>>,
}

/// Room for one item in a `WriterThread`'s queue, its bytes counted until it is written.
pub struct Room<'a, T> {
    slot: tokio::sync::mpsc::Permit<'a, (T, tokio::sync::OwnedSemaphorePermit)>,
    bytes: tokio::sync::OwnedSemaphorePermit,
}

impl<T> Room<'_, T> {
    pub fn send(self, item: T) {
        self.slot.send((item, self.bytes));
    }
}

impl<T: Send + 'static, R: Send + 'static> WriterThread<T, R> {
    /// Items the thread may hold beyond what the reader has taken.
    const QUEUED: usize = 16;
    /// Their bytes at most; a larger item waits for the queue to be empty.
    const QUEUED_BYTES: usize = 16 << 20;

    pub fn start(
        name: &str,
        weight: fn(&T) -> usize,
        mut write: impl FnMut(T) -> Option<R> + Send + 'static,
    ) -> Result<Self, CliError> {
        let (queue, mut queued) = tokio::sync::mpsc::channel::<(T, tokio::sync::OwnedSemaphorePermit)>(Self::QUEUED);
        let (finished, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut last = None;
                // The item's bytes are given back once it is written.
                while let Some((item, _bytes)) = queued.blocking_recv() {
                    last = write(item);
                    if last.is_some() {
                        break;
                    }
                }
                let _ = finished.send(last);
            })
            .map_err(|error| CliError::internal(format!("cannot start the output's writer: {error}")))?;
        let bytes = std::sync::Arc::new(tokio::sync::Semaphore::new(Self::QUEUED_BYTES));
        Ok(Self { queue: Some(queue), bytes, weight, done })
    }

    /// The permits `item` takes: its bytes, at least one, at most all.
    fn permits(&self, item: &T) -> u32 {
        (self.weight)(item).clamp(1, Self::QUEUED_BYTES) as u32
    }

    /// Room for `item`, waited for without holding the runtime; none once the thread has
    /// ended (it had its last word).
    pub async fn room(&self, item: &T) -> Option<Room<'_, T>> {
        let bytes = std::sync::Arc::clone(&self.bytes).acquire_many_owned(self.permits(item)).await.ok()?;
        let slot = self.queue.as_ref()?.reserve().await.ok()?;
        Some(Room { slot, bytes })
    }

    /// Room for `item` now, if there is: none while the thread waits for its reader with its
    /// queue full (or has ended).
    pub fn room_now(&self, item: &T) -> Option<Room<'_, T>> {
        let bytes = std::sync::Arc::clone(&self.bytes).try_acquire_many_owned(self.permits(item)).ok()?;
        let slot = self.queue.as_ref()?.try_reserve().ok()?;
        Some(Room { slot, bytes })
    }

    /// Whether items wait in the queue: the thread has not written all it was given.
    pub fn is_behind(&self) -> bool {
        self.queue.as_ref().is_some_and(|queue| queue.capacity() < queue.max_capacity())
            || self.bytes.available_permits() < Self::QUEUED_BYTES
    }

    /// `item`, once there is room for it.
    pub async fn write(&self, item: T) {
        if let Some(room) = self.room(&item).await {
            room.send(item);
        }
    }

    /// Once everything queued has been written: the thread's last word, if it had one.
    pub async fn finish(&mut self) -> Option<R> {
        drop(self.queue.take());
        (&mut self.done).await.ok().flatten()
    }
}

/// The time now in milliseconds since the epoch, as the agent's records give times (0 before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// How long ago something was, `elapsed_ms` ago, in its largest whole unit: "just now" under a
/// second, then "42s ago", "5m ago", "3h ago", "2d ago".
pub fn ago(elapsed_ms: u64) -> String {
    let seconds = elapsed_ms / 1000;
    match seconds {
        0 => "just now".to_owned(),
        1..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// Ends `TOOL` on one of clap's own errors. Help and version print as usual; a usage error keeps
/// clap's whole message, with its tips and the usage line, under `TOOL: ` instead of clap's
/// `error: `. The exit code is `exit::of_clap`'s.
pub fn clap_error(error: clap::Error, tool: &str) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            note_stdout_write(&error.print());
            if let Some(failure) = stdout_failure() {
                stderr(format_args!("{tool}: {}\n", incomplete_stdout(failure)));
                return crate::exit::code(crate::exit::BKG_FAILED);
            }
        }
        // Ours too (args.rs `parse`), made raw, which clap renders after `error: `.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let rendered = error.render().to_string();
            stderr(format_args!("{}", rendered.strip_prefix("error: ").unwrap_or(&rendered)));
        }
        _ => stderr(format_args!("{tool}: {}", clap_error_text(&error))),
    }
    crate::exit::code(crate::exit::of_clap(&error))
}

/// What a usage error of clap's says after `TOOL: `, ending in a newline: clap's whole message,
/// with its tips and the usage line, but a flag's bad value in one line, as the values bkg checks
/// itself say it (`--memory: ...`).
pub fn clap_error_text(error: &clap::Error) -> String {
    if let (clap::error::ErrorKind::ValueValidation, Some(reason)) = (error.kind(), std::error::Error::source(error)) {
        let flag = match error.get(clap::error::ContextKind::InvalidArg) {
            // A positional argument is named as clap shows it in usage (`[SEQ]`), bare here.
            Some(clap::error::ContextValue::String(arg)) => {
                arg.split(' ').next().unwrap_or(arg).trim_matches(['[', ']', '<', '>']).to_owned()
            }
            _ => "a flag".to_owned(),
        };
        return format!("{flag}: {reason}\n");
    }
    let rendered = error.render().to_string();
    rendered.strip_prefix("error: ").unwrap_or(&rendered).to_owned()
}

/// `value` as one line of JSON, with the characters a terminal acts on but JSON lets through
/// as they are (DEL and the C1 controls, U+0080 to U+009F: `\u{9b}` starts an escape sequence
/// on terminals that read UTF-8) written as escapes, as JSON writes the C0 ones: what the code
/// printed cannot drive the terminal of whoever reads the JSON (found by a new-user trial).
pub fn json_text(value: &impl serde::Serialize) -> Result<String, CliError> {
    let json = serde_json::to_string(value).map_err(|error| CliError::internal(error.to_string()))?;
    if !json.chars().any(is_raw_control) {
        return Ok(json);
    }
    // Only inside strings can they be: every other character of JSON is ASCII and printable.
    Ok(json.chars().fold(String::with_capacity(json.len() + 16), |mut escaped, c| {
        match is_raw_control(c) {
            true => escaped.push_str(&format!("\\u{:04x}", u32::from(c))),
            false => escaped.push(c),
        }
        escaped
    }))
}

fn is_raw_control(c: char) -> bool {
    c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_age_is_said_in_its_largest_whole_unit() {
        let said: Vec<String> =
            [0, 999, 1_000, 59_999, 60_000, 3_599_999, 3_600_000, 86_400_000 * 3].map(super::ago).into();
        assert_eq!(said, ["just now", "just now", "1s ago", "59s ago", "1m ago", "59m ago", "1h ago", "3d ago"]);
    }

    #[test]
    fn json_escapes_what_a_terminal_acts_on() -> Result<(), crate::exit::CliError> {
        let printed = "\u{9b}6n \u{1b}[2J \u{7f} é \u{a0}";
        let json = super::json_text(&printed)?;
        assert_eq!(json, "\"\\u009b6n \\u001b[2J \\u007f é \u{a0}\"");
        assert_eq!(serde_json::from_str::<String>(&json).ok().as_deref(), Some(printed));
        Ok(())
    }
}
