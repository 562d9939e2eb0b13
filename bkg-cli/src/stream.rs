//! A streamed run: the request goes up, the connection is upgraded, stdin flows in as frames and
//! output flows back live until the result frame. Shared by `bkg exe` and `bkgr`.

use std::io::Write;
use std::sync::Arc;

use bkg_schema::artefacts::RunFileKind;
use bkg_schema::frame::{self, FrameKind, RUN_ID_HEADER, STREAM_PROTOCOL};
use bkg_schema::units::{format_duration_ms, format_size};
use bkg_schema::{ApiError, KilledBy, RunRecord, RunResult};
use reqwest::header::{CONNECTION, UPGRADE};
use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::SignalKind;
use tokio::sync::Mutex;

use crate::client::{AgentClient, api_error, from_api_error};
use crate::exit::{BKG_FAILED, CliError};

/// Where the run's output goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Our stdout and stderr, byte for byte.
    Raw,
    /// Nowhere: the caller prints the result instead (`--json`, detached).
    Quiet,
    /// Line by line, each line after `PREFIX | ` (several sandboxes at once).
    Prefixed(String),
}

/// What the run's stdin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// Our own stdin.
    Relay,
    /// Nothing: the script reads end-of-file at once.
    Empty,
}

impl Stdin {
    /// Our own stdin, or `Empty` when it is `/dev/null` or closed: the script reads end-of-file
    /// at once either way, and nothing needs relaying (reading it takes a thread of its own).
    /// `Empty` too for a terminal of which we are not the foreground job (`bkg exe job.py &`, or
    /// under `timeout`): reading it would stop bkg (SIGTTIN) whether or not the script reads
    /// anything, where `python3 job.py &` runs to its end (found by a new-user trial).
    pub fn ours() -> Self {
        let stdin = std::io::stdin();
        match nix::sys::stat::fstat(&stdin) {
            Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFCHR && stat.st_rdev == libc::makedev(1, 3) => {
                Stdin::Empty
            }
            Ok(_) if nix::unistd::tcgetpgrp(&stdin).is_ok_and(|foreground| foreground != nix::unistd::getpgrp()) => {
                Stdin::Empty
            }
            Ok(_) => Stdin::Relay,
            Err(_) => Stdin::Empty,
        }
    }
}

/// How long a Ctrl-C waits for the agent to say whether the run has ended already.
const ASKED_IF_ENDED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How long after a Ctrl-C a run still going is said to be ending within its grace.
const GRACE_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `body` at `path` (which must accept `Upgrade: bkg-stream/1`) and returns its result.
/// Ctrl-C (or SIGTERM, SIGHUP) cancels the run; the agent still answers with a result
/// (`killed_by: cancelled`); a second one ends bkg without waiting for it.
pub async fn run(
    client: &AgentClient,
    path: &str,
    body: &impl serde::Serialize,
    (output, out): (Output, crate::out::Printer),
    stdin: Stdin,
) -> Result<RunResult, CliError> {
    run_keeping_out_dir(client, path, body, (output, out), stdin, None).await.map(|(result, _)| result)
}

/// `run`, writing the `Archive` frames (the run's /workspace/out/, `return_out_dir`) into the
/// host directory `out_dir` as they come.
pub async fn run_keeping_out_dir(
    client: &AgentClient,
    path: &str,
    body: &impl serde::Serialize,
    (output, out): (Output, crate::out::Printer),
    stdin: Stdin,
    out_dir: Option<&std::path::Path>,
) -> Result<(RunResult, Option<CliError>), CliError> {
    // DEST is made, or found unusable, before the run is asked for: a bad one runs nothing.
    let archive = out_dir
        .map(|dir| crate::files_cmd::Unpacker::start(dir, crate::files_cmd::Links::LeftOut))
        .transpose()
        .map_err(|error| CliError::new(error.code, format!("--output {}", error.message)))?;
    // The first run of a persistent sandbox makes its disk; a busy agent prepares one afresh.
    let spinner = match output {
        Output::Raw => crate::progress::Spinner::start("preparing the sandbox"),
        Output::Quiet | Output::Prefixed(_) => None,
    };
    let request =
        client.http().post(client.url(path)).header(CONNECTION, "upgrade").header(UPGRADE, STREAM_PROTOCOL).json(body);
    let response = client.send(request).await?;
    if response.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return Err(api_error(response).await);
    }
    let run_id = response.headers().get(RUN_ID_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let upgraded = client
        .bounded(async {
            response
                .upgrade()
                .await
                .map_err(|error| CliError::new(BKG_FAILED, format!("the agent did not open the run stream: {error}")))
        })
        .await?;
    let (reader, writer) = tokio::io::split(upgraded);
    // The agent writes the frames it has queued at once (bkg-agent/src/server.rs,
    // `GATHERED_BYTES`): read so, a script's output printed line by line costs one read for
    // many frames, not two per frame.
    let mut reader = tokio::io::BufReader::with_capacity(256 << 10, reader);
    let writer = Arc::new(Mutex::new(writer));

    let stdin_task = tokio::spawn(relay_stdin(Arc::clone(&writer), stdin));
    // Our stdout closed (`bkg exe gen.py | head`): the code's is closed too, so that it ends as
    // it would in that pipeline, instead of running on to its timeout with nobody reading.
    let stdout_closed = Arc::new(tokio::sync::Notify::new());
    let close_writer = Arc::clone(&writer);
    let closing = Arc::clone(&stdout_closed);
    // As soon as the reader has gone, not only at our next write: the code's next write fails
    // then, as in the pipeline (found by a new-user trial: a script that printed once more after
    // `| head -1` had read its first line exited 0, where bare it dies of the broken pipe).
    let watch_reader = !matches!(output, Output::Quiet) && crate::out::stdout_has_a_reader();
    let close_task = tokio::spawn(async move {
        tokio::select! {
            () = closing.notified() => {}
            () = crate::out::stdout_closed(), if watch_reader => {}
        }
        let _ = send_frame(&mut *close_writer.lock().await, FrameKind::StdoutClosed, &[]).await;
    });
    let cancel_writer = Arc::clone(&writer);
    let canceller = client.clone();
    let run_path = run_id.as_ref().map(|id| format!("/api/v1/runs/{id}"));
    // Several sandboxes' runs at once each say what became of theirs, after its name.
    // The second signal ends them all.
    let (whose, runs, they) = match &output {
        Output::Prefixed(name) => (format!("{}: ", name.trim_end()), "runs'", "they"),
        Output::Raw | Output::Quiet => (String::new(), "run's", "the run"),
    };
    let mut stop_signals = StopSignals::listen()?;
    let printer = out;
    // Whether this run's result has come: what is left is writing its output. Its own, not the
    // process's: bkgr streams several runs at once.
    let result_came = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result_came_in_task = Arc::clone(&result_came);
    let cancel_task = tokio::spawn(async move {
        let Some(signal) = stop_signals.next().await else { return };
        use std::sync::atomic::Ordering::Relaxed;
        // A run that has ended, whose output only waits for its reader, has nothing to cancel
        // (found by a new-user trial: bkg said it was cancelling a run that had exited 0). Its
        // result may still be queued behind that output: the agent says.
        let ended = result_came_in_task.load(Relaxed)
            || (waiting_for_reader()
                && match &run_path {
                    // Asked briefly: a second Ctrl-C must not wait for an agent that is slow to answer.
                    Some(path) => tokio::time::timeout(ASKED_IF_ENDED_FOR, canceller.get::<RunRecord>(path))
                        .await
                        .is_ok_and(|answer| {
                            answer.is_ok_and(|run| {
                                run.finished_at_ms.is_some() && run.killed_by != Some(KilledBy::Cancelled)
                            })
                        }),
                    None => false,
                });
        let second = if ended {
            printer.note(format_args!(
                "{whose}the run has ended; its output waits for a reader that takes none (Ctrl-C again to quit without it)"
            ));
            stop_signals.next().await
        } else {
            cancelled_on(signal);
            // On the stream, the cancel waits behind the stdin frames sent before it, which wait
            // for code that may never read them (`yes | bkg exe x.py`): the agent is also asked on
            // a call of its own. Neither send holds up a second signal.
            tokio::spawn(async move {
                let mut writer = cancel_writer.lock().await;
                let _ = send_frame(&mut *writer, FrameKind::Cancel, &[]).await;
            });
            if let Some(path) = run_path {
                tokio::spawn(async move {
                    let _ = canceller.post::<RunRecord>(&format!("{path}/cancel")).await;
                });
            }
            let stuck =
                "cancelling the run; its output waits for a reader that takes none (Ctrl-C again to quit without it)";
            if waiting_for_reader() {
                printer.note(format_args!("{whose}{stuck}"));
                stop_signals.next().await
            } else {
                // Code that takes its time to end, or ignores SIGTERM, keeps the caller waiting up
                // to the grace: said once the run is not over soon (this task ends with the run).
                // Output that comes meanwhile may fill a reader that takes none: said when it does.
                tokio::select! {
                    second = stop_signals.next() => second,
                    () = output_stuck() => {
                        printer.note(format_args!("{whose}{stuck}"));
                        stop_signals.next().await
                    }
                    () = tokio::time::sleep(GRACE_NOTE_AFTER) => {
                        printer.note(format_args!(
                            "{whose}cancelling the run: its code has SIGTERM, and SIGKILL if still going {} s after it (Ctrl-C again to stop waiting)",
                            bkg_schema::STOP_GRACE.as_secs()
                        ));
                        stop_signals.next().await
                    }
                }
            }
        };
        // The run's end is awaited for its result; a second signal is a caller who will not wait.
        if let Some(signal) = second {
            // Output waiting for its reader holds up the result behind it too (an ended run's
            // is all that is left of it).
            match ended || waiting_for_reader() {
                false => printer.note(format_args!("stopped without waiting for the {runs} end")),
                true => printer.note(format_args!(
                    "stopped with the {runs} output unwritten: `bkg runs ls` shows how {they} ended"
                )),
            }
            std::process::exit(crate::exit::SIGNALLED + signal);
        }
    });

    let outcome = receive(
        client,
        &mut reader,
        (output, out),
        spinner,
        (archive.as_ref(), run_id.as_deref()),
        (&result_came, stdout_closed),
    )
    .await;
    stdin_task.abort();
    close_task.abort();
    cancel_task.abort();
    let unpacked = match archive {
        Some(archive) => archive.finish().await.map(drop),
        None => Ok(()),
    };
    // The run's result is the caller's whatever became of its files: a file DIR could not take
    // is a failure beside it, not instead of it.
    let result = outcome?;
    let written = match (unpacked, out_dir) {
        (Ok(()), Some(dir)) => crate::runs_cmd::fetch_kept_out_files(client, &result, dir).await,
        (unpacked, _) => unpacked,
    };
    Ok((result, written.err()))
}

/// One line per destination the run was refused (`--net`), for stderr.
pub fn denial_lines(result: &RunResult) -> Vec<String> {
    result
        .network_denials
        .iter()
        .map(|denial| {
            let times = if denial.count > 1 { format!(" ({}×)", denial.count) } else { String::new() };
            format!("network: refused {} {}{times}: {}", denial.transport.as_str(), denial.destination, denial.reason)
        })
        .collect()
}

/// Writes the end of each stream that the agent dropped (it keeps waiting output for a reader
/// that takes none of it for 2 s after the run ended), from the result itself when it holds the
/// whole stream (up to 1 MiB), else from the run's kept copy of the stream (past 1 MiB); returns
/// the bytes still missing (a failed fetch, or output the result only holds lossily).
async fn write_what_did_not_arrive(client: &AgentClient, result: &RunResult, written: [u64; 2]) -> u64 {
    if result.undelivered_bytes == 0 {
        return 0;
    }
    let streams = [
        (RunFileKind::Stdout, result.stdout_bytes, &result.stdout),
        (RunFileKind::Stderr, result.stderr_bytes, &result.stderr),
    ];
    let mut missing = 0;
    for ((kind, total, inline), written) in streams.into_iter().zip(written) {
        if written >= total {
            continue;
        }
        let to_stderr = kind == RunFileKind::Stderr;
        let kept = result.files.iter().find(|file| file.kind == kind);
        let fetched = match (whole_stream(inline, total), kept) {
            (Some(bytes), _) => {
                let _ = write_ours(
                    to_stderr,
                    bytes.get(usize::try_from(written).unwrap_or(usize::MAX)..).unwrap_or_default(),
                );
                total
            }
            (None, Some(file)) => write_kept_stream_from(client, &result.id, &file.path, to_stderr, written).await,
            (None, None) => written,
        };
        missing += total.saturating_sub(fetched);
    }
    missing
}

/// A stream's bytes from the result's text of it, when that is all of it and exact: the result
/// holds the first 1 MiB, with bytes that are not UTF-8 replaced by U+FFFD (so text that holds
/// U+FFFD cannot be told from a replacement and is not used).
fn whole_stream(inline: &str, total: u64) -> Option<&[u8]> {
    (inline.len() as u64 == total && !inline.contains(char::REPLACEMENT_CHARACTER)).then_some(inline.as_bytes())
}

/// Writes the kept stream `path` of run `run_id` from byte `from` on to our stdout (or stderr);
/// returns how far it got.
async fn write_kept_stream_from(client: &AgentClient, run_id: &str, path: &str, to_stderr: bool, from: u64) -> u64 {
    let Ok(Some(mut response)) = client.open_found(&format!("/api/v1/runs/{run_id}/files/{path}")).await else {
        return from;
    };
    let mut at = 0u64;
    while let Ok(Some(chunk)) = response.chunk().await {
        let skip = from.saturating_sub(at).min(chunk.len() as u64) as usize;
        let _ = write_ours(to_stderr, chunk.get(skip..).unwrap_or_default());
        at += chunk.len() as u64;
    }
    at.max(from)
}

/// Writes the run's output to our stderr (`to_stderr`) or stdout, as it is, remembering whether
/// it left a line unfinished there.
fn write_ours(to_stderr: bool, bytes: &[u8]) -> std::io::Result<()> {
    let Some(last) = bytes.last() else { return Ok(()) };
    let written = match to_stderr {
        true => write_through(&mut std::io::stderr().lock(), bytes),
        false => crate::out::stdout_bytes(bytes),
    };
    MID_LINE[usize::from(to_stderr)].store(*last != b'\n', std::sync::atomic::Ordering::Relaxed);
    let mut tail = OUTPUT_TAIL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tail.extend_from_slice(&bytes[bytes.len().saturating_sub(OUTPUT_TAIL_BYTES)..]);
    let over = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
    tail.drain(..over);
    written
}

/// The end of what the run wrote to us, both streams (one pipe, with `2>&1`), for what bkg says
/// after it (`bkg exe`'s hint for a file that was not sent): a streamed run's result does not
/// repeat its output.
static OUTPUT_TAIL: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const OUTPUT_TAIL_BYTES: usize = 4096;

/// The last lines the run wrote to us (up to `OUTPUT_TAIL_BYTES`).
pub fn output_tail() -> String {
    let tail = OUTPUT_TAIL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    String::from_utf8_lossy(&tail).into_owned()
}

/// Whether the run's output last left our stdout, and our stderr, in the middle of a line.
static MID_LINE: [std::sync::atomic::AtomicBool; 2] =
    [std::sync::atomic::AtomicBool::new(false), std::sync::atomic::AtomicBool::new(false)];

/// Ends the line the run's output left unfinished where bkg's own lines go next (stderr, and
/// stdout too when both show on one terminal), so that `bkg: timed out …` starts a line of its
/// own instead of ending the script's `progress 50%`.
pub fn start_own_line() {
    use std::io::IsTerminal as _;
    use std::sync::atomic::Ordering::Relaxed;
    let on_one_screen = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    if MID_LINE[1].swap(false, Relaxed) || (on_one_screen && MID_LINE[0].swap(false, Relaxed)) {
        let _ = write_through(&mut std::io::stderr().lock(), b"\n");
    }
}

/// Whether the run kept a copy of its stdout or stderr: the files the code wrote are not its
/// output.
fn keeps_a_stream(files: &[bkg_schema::artefacts::RunFile]) -> bool {
    files.iter().any(|file| file.kind != RunFileKind::File)
}

/// What of the output never reached us, and where the run keeps it, for stderr.
fn undelivered_line(result: &RunResult, missing: u64) -> Option<String> {
    if missing == 0 {
        return None;
    }
    let kept = match keeps_a_stream(&result.files) {
        false => "it is not kept".to_owned(),
        true => format!("the whole output is kept: bkg runs files {} --output DIR", result.id),
    };
    Some(format!(
        "{} of the output did not reach you: nothing read it for 2s after the run ended; {kept}",
        format_size(missing)
    ))
}

/// Where the user sets a run's limits, for the reason line's hint.
#[derive(Debug, Clone, Copy)]
pub enum LimitsFrom {
    /// `bkg exe`'s flags.
    Flags,
    /// cave.yaml's `limits`, under the flags the command offers (bkgr all four, `bkg shell`
    /// `timeout`): those given (`Some`) were the flags'.
    CaveOrFlags(bkg_schema::LimitOverrides, &'static [&'static str]),
}

impl LimitsFrom {
    fn hint(self, limit: &str) -> String {
        let (flagged, offered) = match self {
            Self::Flags => (true, true),
            Self::CaveOrFlags(given, offered) => (
                match limit {
                    "timeout" => given.timeout_ms.is_some(),
                    "memory" => given.memory_bytes.is_some(),
                    "disk" => given.disk_bytes.is_some(),
                    _ => given.cpu_millis.is_some(),
                },
                // Found by a new-user trial: `bkg shell` was pointed at a --memory it has not.
                offered.contains(&limit),
            ),
        };
        match (flagged, offered) {
            (true, _) => format!("--{limit}"),
            (false, true) => format!("limits.{limit} in cave.yaml, or --{limit}"),
            (false, false) => format!("limits.{limit} in cave.yaml"),
        }
    }
}

/// The signal on which this process sent the run a cancel (Ctrl-C's SIGINT, SIGTERM, SIGHUP),
/// 0 for none: a cancelled run it did not cancel was cancelled by the agent.
static CANCELLED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Whether the run's output now waits for a reader that takes none (`| less`): the writer's
/// queue is full, or the result has come and what is queued is not written yet. A Ctrl-C's
/// cancel cannot show at once then.
static WAITING_FOR_READER: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);

fn waiting_for_reader() -> bool {
    *WAITING_FOR_READER.borrow()
}

fn set_waiting_for_reader(waiting: bool) {
    WAITING_FOR_READER.send_replace(waiting);
}

/// How long the output must have waited for its reader before a cancel that came meanwhile
/// says so: a live reader that is only slow makes the writer wait for moments too.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Once the output waits for its reader, and still does `STUCK_AFTER` later.
async fn output_stuck() {
    let mut waiting = WAITING_FOR_READER.subscribe();
    loop {
        if waiting.wait_for(|waiting| *waiting).await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(STUCK_AFTER).await;
        if waiting_for_reader() {
            return;
        }
    }
}

/// The signal on which this process cancelled its runs, if it did.
pub fn cancelled_by_signal() -> Option<i32> {
    Some(CANCELLED_BY.load(std::sync::atomic::Ordering::Relaxed)).filter(|signal| *signal != 0)
}

/// Records that this process cancelled what it ran on `signal`: its exit code says the signal.
pub fn cancelled_on(signal: i32) {
    CANCELLED_BY.store(signal, std::sync::atomic::Ordering::Relaxed);
}

/// The signals that stop a run: Ctrl-C, and the ones a service manager, `timeout` or a closed
/// terminal send. Listening replaces their default action (ending bkg at once) for the process.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    /// SIGTERM's and SIGHUP's, unless only Ctrl-C is heard.
    terminate_and_hangup: Option<[tokio::signal::unix::Signal; 2]>,
    /// Another signal that came while the echoes of one were taken, for the next call.
    held: Option<i32>,
    /// The signal whose echoes are being taken, and until when: kept across a `next` dropped
    /// midway (in a `select!`), so that the signal is not lost with it.
    taking_echoes: Option<(i32, tokio::time::Instant)>,
}

/// The same signal again this soon after one is that one sent twice, not a second stop: GNU
/// `timeout` signals its child and then its own process group, bkg in it (found by a new-user
/// trial: `timeout 1 bkgr s` quit without waiting for the run, which then held its sandbox, in
/// two tries of five). `timeout`'s two sends are microseconds apart, a person's second Ctrl-C a
/// tenth of a second or more; short, as the first signal is acted on only after it (a download
/// that ended meanwhile would not be interrupted).
const ECHO_WITHIN: std::time::Duration = std::time::Duration::from_millis(20);

impl StopSignals {
    pub fn listen() -> Result<Self, CliError> {
        let mut signals = Self::interrupt_only()?;
        signals.terminate_and_hangup = Some([listen(SignalKind::terminate())?, listen(SignalKind::hangup())?]);
        Ok(signals)
    }

    /// Ctrl-C alone, for a process that must still end at once on SIGTERM once nothing of its
    /// runs is going on (`bkg repl` at its prompt): a signal listened for stays caught.
    pub fn interrupt_only() -> Result<Self, CliError> {
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate_and_hangup: None,
            held: None,
            taking_echoes: None,
        })
    }

    /// The next of them to arrive, as its number, once its echoes (`ECHO_WITHIN`) are taken.
    /// Cancel-safe, as `select!` needs.
    pub async fn next(&mut self) -> Option<i32> {
        if self.taking_echoes.is_none() {
            let signal = match self.held.take() {
                Some(held) => held,
                None => self.next_delivered().await?,
            };
            self.taking_echoes = Some((signal, tokio::time::Instant::now() + ECHO_WITHIN));
        }
        let (signal, echoes_end) = self.taking_echoes?;
        while self.held.is_none() {
            match tokio::time::timeout_at(echoes_end, self.next_delivered()).await {
                Ok(Some(again)) if again == signal => {}
                Ok(Some(other)) => self.held = Some(other),
                Ok(None) | Err(_) => break,
            }
        }
        self.taking_echoes = None;
        Some(signal)
    }

    async fn next_delivered(&mut self) -> Option<i32> {
        let Some([terminate, hangup]) = &mut self.terminate_and_hangup else {
            return self.interrupt.recv().await.map(|()| libc::SIGINT);
        };
        tokio::select! {
            got = self.interrupt.recv() => got.map(|()| libc::SIGINT),
            got = terminate.recv() => got.map(|()| libc::SIGTERM),
            got = hangup.recv() => got.map(|()| libc::SIGHUP),
        }
    }
}

fn listen(kind: SignalKind) -> Result<tokio::signal::unix::Signal, CliError> {
    tokio::signal::unix::signal(kind)
        .map_err(|error| CliError::new(BKG_FAILED, format!("cannot listen for signals: {error}")))
}

/// Why the run ended, when it was not the script's own doing; the limit it met says where it is
/// set (`from`).
pub fn reason_line(result: &RunResult, from: LimitsFrom) -> Option<String> {
    let limits = &result.limits;
    match result.killed_by {
        Some(KilledBy::Timeout) => {
            Some(format!("timed out after {} ({})", format_duration_ms(limits.timeout_ms), from.hint("timeout")))
        }
        Some(KilledBy::Memory) => Some(match result.exit_code {
            Some(code) => format!(
                "the script exited with {code} after a process of it was killed at the memory limit of {} ({})",
                format_size(limits.memory_bytes),
                from.hint("memory")
            ),
            None => format!(
                "killed: memory limit of {} reached ({})",
                format_size(limits.memory_bytes),
                from.hint("memory")
            ),
        }),
        Some(KilledBy::Pids) => Some(format!("killed: process limit of {} reached", limits.pids)),
        Some(KilledBy::Disk) => Some(format!(
            "the script failed with its disk full ({} limit, {})",
            format_size(limits.disk_bytes),
            from.hint("disk")
        )),
        // Not by this terminal's Ctrl-C: from elsewhere, or by the agent, which cancels a run
        // when its key stops working (docs/governance.md).
        Some(KilledBy::Cancelled) if cancelled_by_signal().is_none() => Some(match from {
            LimitsFrom::Flags => {
                "cancelled (by `bkg runs cancel`, the API or the Web UI, as the API key it ran with was revoked, \
                 rotated, deleted or expired, or as its user was taken out of the agent's group)"
                    .into()
            }
            LimitsFrom::CaveOrFlags(..) => "stopped (`bkg stop`, `bkg rm` or `bkg runs cancel`, its API key was \
                                           revoked, rotated, deleted or expired, or its user was taken out of the \
                                           agent's group)"
                .into(),
        }),
        Some(KilledBy::Cancelled) => Some(match from {
            LimitsFrom::Flags => "cancelled".into(),
            // Another terminal may have stopped or removed the sandbox.
            LimitsFrom::CaveOrFlags(..) => {
                let here = match cancelled_by_signal() {
                    Some(libc::SIGTERM) => "SIGTERM",
                    Some(libc::SIGHUP) => "SIGHUP",
                    _ => "Ctrl-C",
                };
                format!("stopped ({here}, or `bkg stop` or `bkg rm` of the sandbox)")
            }
        }),
        Some(KilledBy::Shutdown) => Some(match (result.exit_code, result.signal) {
            (Some(code), _) => format!("the agent's stop asked the script to end (SIGTERM); it exited with {code}"),
            (None, Some(libc::SIGKILL)) => "ended by the agent's stop: SIGKILL after the script's 5 s grace".into(),
            (None, _) => "ended by the agent's stop (SIGTERM to the script)".into(),
        }),
        Some(KilledBy::Interrupted) => Some("interrupted: the agent stopped before the run ended".into()),
        None => result.signal.map(|signal| format!("the script was killed by signal {signal}")).or_else(|| {
            let limit = |what: &str| {
                result.denials.iter().find(|denial| denial.kind == bkg_schema::DenialKind::Limit && denial.what == what)
            };
            // A child the kernel killed for the memory limit, in a run that went on.
            if let Some(killed) = limit("memory") {
                let processes =
                    if killed.count == 1 { "a process".to_owned() } else { format!("{} processes", killed.count) };
                return Some(format!(
                    "{processes} of the run killed: memory limit of {} reached ({})",
                    format_size(limits.memory_bytes),
                    from.hint("memory")
                ));
            }
            // Forks refused at the process limit, in a run that ended before the agent ended it.
            let refused = limit("pids")?;
            let forks = if refused.count == 1 { "a fork".to_owned() } else { format!("{} forks", refused.count) };
            Some(format!("{forks} of the run refused: process limit of {} reached", limits.pids))
        }),
    }
}

async fn send_frame(writer: &mut (impl AsyncWriteExt + Unpin), kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
    let header = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    writer.write_all(&header).await?;
    writer.write_all(payload).await?;
    writer.flush().await
}

async fn relay_stdin<W: AsyncWriteExt + Unpin>(writer: Arc<Mutex<W>>, stdin: Stdin) {
    if stdin == Stdin::Relay {
        let mut source = tokio::io::stdin();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match source.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut writer = writer.lock().await;
                    if send_frame(&mut *writer, FrameKind::Stdin, &buffer[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let mut writer = writer.lock().await;
    let _ = send_frame(&mut *writer, FrameKind::StdinEnd, &[]).await;
}

/// Splits output into lines for `Output::Prefixed`, keeping a partial line until it ends.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    fn complete_lines(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
            lines.push(self.pending.drain(..=end).collect());
        }
        lines
    }

    fn rest(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| {
            let mut rest = std::mem::take(&mut self.pending);
            rest.push(b'\n');
            rest
        })
    }
}

/// Writes to stderr; a failed write drops the bytes (stdout's go through `out::stdout_bytes`).
fn write_through(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).and_then(|()| out.flush())
}

fn prefixed(prefix: &str, line: &[u8]) -> Vec<u8> {
    let mut prefixed = Vec::with_capacity(prefix.len() + 3 + line.len());
    prefixed.extend_from_slice(prefix.as_bytes());
    prefixed.extend_from_slice(b" | ");
    prefixed.extend_from_slice(line);
    prefixed
}

/// Waits for `read` however long the run takes, as long as the agent answers: each time the
/// stream has been silent for the client's patience, the agent is asked on a call of its own, and
/// one that does not answer that either ends the wait. A run's own timeout is the agent's to keep.
async fn watched<T>(client: &AgentClient, read: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    tokio::pin!(read);
    loop {
        tokio::select! {
            done = &mut read => return Ok(done),
            () = tokio::time::sleep(client.patience()) => client.check_alive().await?,
        }
    }
}

/// The run's output writer, telling `WAITING_FOR_READER` while it waits for its reader.
struct Watched(crate::out::WriterThread<(bool, Vec<u8>), ()>);

impl Watched {
    async fn write(&self, item: (bool, Vec<u8>)) {
        if let Some(room) = self.0.room_now(&item) {
            room.send(item);
            return;
        }
        set_waiting_for_reader(true);
        self.0.write(item).await;
        set_waiting_for_reader(false);
    }

    async fn finish(&mut self) {
        set_waiting_for_reader(true);
        self.0.finish().await;
        set_waiting_for_reader(false);
    }
}

/// How the agent's own progress lines begin (a run waiting for its place, installing its
/// packages or waiting for another run's install of them, making its environment); the others
/// are the installer's.
const AGENT_PROGRESS: [&str; 4] = ["waiting for a place", "waiting for environment ", "installing ", "environment "];

/// Output frames of `kind` buffered right behind one just read, their payloads added to
/// `payload` (up to `MERGED_BYTES`): output printed line by line reaches our stdout in one
/// write per read from the agent, not one per line.
fn merge_buffered_frames<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut tokio::io::BufReader<R>,
    kind: FrameKind,
    payload: &mut Vec<u8>,
) {
    const MERGED_BYTES: usize = 1 << 20;
    loop {
        let buffered = reader.buffer();
        let Some(Ok(header)) = buffered.get(..frame::HEADER_LEN).map(<[u8; frame::HEADER_LEN]>::try_from) else {
            return;
        };
        let Ok((next_kind, len)) = frame::decode_header(header) else { return };
        let Some(next) = buffered.get(frame::HEADER_LEN..frame::HEADER_LEN + len) else { return };
        if next_kind != kind || payload.len() + len > MERGED_BYTES {
            return;
        }
        payload.extend_from_slice(next);
        std::pin::Pin::new(&mut *reader).consume(frame::HEADER_LEN + len);
    }
}

async fn receive<R: tokio::io::AsyncRead + Unpin>(
    client: &AgentClient,
    reader: &mut tokio::io::BufReader<R>,
    (output, out): (Output, crate::out::Printer),
    mut spinner: Option<crate::progress::Spinner>,
    (archive, run_id): (Option<&crate::files_cmd::Unpacker>, Option<&str>),
    (result_came, stdout_closed): (&std::sync::atomic::AtomicBool, Arc<tokio::sync::Notify>),
) -> Result<RunResult, CliError> {
    // Which run, so that it can be looked up once the agent is back (found by a new-user trial:
    // an agent that crashed mid-run left no way to it).
    let lost = |_| {
        CliError::new(
            BKG_FAILED,
            match run_id {
                Some(id) => format!(
                    "the agent closed the connection before run {id} ended: `bkg runs show {id}` says how it ended"
                ),
                None => "the agent closed the connection before the run ended".to_owned(),
            },
        )
    };
    let mut stdout_lines = LineBuffer::default();
    let mut stderr_lines = LineBuffer::default();
    // What reached our stdout and stderr: the result may hold what the agent could not send.
    let mut written = [0u64; 2];
    // The packages' install before the code runs: its latest line on a spinner.
    let mut installing: Option<crate::progress::Spinner> = None;
    // Our stdout and stderr, in the order the run wrote them.
    let writer = crate::out::WriterThread::start(
        "run-output",
        |(_, bytes): &(bool, Vec<u8>)| bytes.len(),
        move |(to_stderr, bytes): (bool, Vec<u8>)| {
            if let Err(error) = write_ours(to_stderr, &bytes)
                && error.kind() == std::io::ErrorKind::BrokenPipe
                && !to_stderr
            {
                stdout_closed.notify_one();
            }
            None::<()>
        },
    )?;
    let mut writer = Watched(writer);
    loop {
        let mut header = [0u8; frame::HEADER_LEN];
        watched(client, reader.read_exact(&mut header)).await?.map_err(lost)?;
        // The run has started (or ended): from here on the output speaks for itself.
        drop(spinner.take());
        let (kind, len) = frame::decode_header(header)
            .map_err(|error| CliError::new(BKG_FAILED, format!("garbled stream from the agent: {error}")))?;
        let mut payload = vec![0u8; len];
        watched(client, reader.read_exact(&mut payload)).await?.map_err(lost)?;
        if matches!(kind, FrameKind::Stdout | FrameKind::Stderr) {
            merge_buffered_frames(reader, kind, &mut payload);
        }
        if kind != FrameKind::Progress {
            drop(installing.take());
        }
        match (kind, &output) {
            (FrameKind::Progress, _) => {
                let line = String::from_utf8_lossy(&payload);
                match (&installing, &output) {
                    // `--json`: stderr is for people still, but a spinner would be noise there.
                    (_, Output::Quiet) => {}
                    (Some(spinner), _) => spinner.say(&line),
                    (None, _) => installing = crate::progress::Spinner::start(&line),
                }
                // Without a spinner only the agent's own lines are shown, not the installer's.
                if installing.is_none() && AGENT_PROGRESS.iter().any(|prefix| line.starts_with(prefix)) {
                    out.note(format_args!("{line}"));
                }
            }
            (FrameKind::Stdout, Output::Raw) => {
                written[0] += payload.len() as u64;
                writer.write((false, payload)).await;
            }
            (FrameKind::Stderr, Output::Raw) => {
                written[1] += payload.len() as u64;
                writer.write((true, payload)).await;
            }
            (FrameKind::Stdout, Output::Prefixed(prefix)) => {
                for line in stdout_lines.complete_lines(&payload) {
                    writer.write((false, prefixed(prefix, &line))).await;
                }
            }
            (FrameKind::Stderr, Output::Prefixed(prefix)) => {
                for line in stderr_lines.complete_lines(&payload) {
                    writer.write((true, prefixed(prefix, &line))).await;
                }
            }
            (FrameKind::Archive, _) => {
                if let Some(archive) = archive {
                    archive.push(payload).await;
                }
            }
            (FrameKind::Result, _) => {
                result_came.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Output::Prefixed(prefix) = &output {
                    if let Some(rest) = stdout_lines.rest() {
                        writer.write((false, prefixed(prefix, &rest))).await;
                    }
                    if let Some(rest) = stderr_lines.rest() {
                        writer.write((true, prefixed(prefix, &rest))).await;
                    }
                }
                writer.finish().await;
                let result: RunResult = serde_json::from_slice(&payload)
                    .map_err(|error| CliError::new(BKG_FAILED, format!("unreadable result from the agent: {error}")))?;
                let missing = match output {
                    Output::Raw => write_what_did_not_arrive(client, &result, written).await,
                    Output::Quiet => 0,
                    Output::Prefixed(_) => result.undelivered_bytes,
                };
                if let Some(line) = undelivered_line(&result, missing) {
                    out.note(format_args!("{line}"));
                }
                return Ok(result);
            }
            (FrameKind::Error, _) => {
                writer.finish().await;
                let error: ApiError = serde_json::from_slice(&payload)
                    .map_err(|error| CliError::new(BKG_FAILED, format!("unreadable error from the agent: {error}")))?;
                return Err(from_api_error(&error));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_of_one_stream_buffered_behind_one_are_merged_into_it_and_no_others() {
        let mut wire = Vec::new();
        for (kind, payload) in [
            (FrameKind::Stdout, &b"one\n"[..]),
            (FrameKind::Stdout, b"two\n"),
            (FrameKind::Stderr, b"oops\n"),
            (FrameKind::Stdout, b"three\n"),
        ] {
            wire.extend_from_slice(&frame::encode_header(kind, payload.len()).unwrap_or_default());
            wire.extend_from_slice(payload);
        }
        let mut reader = tokio::io::BufReader::new(&wire[..]);
        let mut next = async || {
            let mut header = [0u8; frame::HEADER_LEN];
            reader.read_exact(&mut header).await.unwrap_or_default();
            let (kind, len) = frame::decode_header(header).unwrap_or((FrameKind::Error, 0));
            let mut payload = vec![0u8; len];
            reader.read_exact(&mut payload).await.unwrap_or_default();
            merge_buffered_frames(&mut reader, kind, &mut payload);
            (kind, String::from_utf8_lossy(&payload).into_owned())
        };
        assert_eq!(next().await, (FrameKind::Stdout, "one\ntwo\n".to_owned()));
        assert_eq!(next().await, (FrameKind::Stderr, "oops\n".to_owned()));
        assert_eq!(next().await, (FrameKind::Stdout, "three\n".to_owned()));
    }

    #[test]
    fn a_limits_hint_names_only_the_flags_the_command_has() {
        let none = bkg_schema::LimitOverrides::default();
        let timeout_given = bkg_schema::LimitOverrides { timeout_ms: Some(1000), ..none };
        assert_eq!(LimitsFrom::Flags.hint("memory"), "--memory");
        let bkgr = LimitsFrom::CaveOrFlags(none, &["cpus", "memory", "timeout", "disk"]);
        assert_eq!(bkgr.hint("memory"), "limits.memory in cave.yaml, or --memory");
        let shell = LimitsFrom::CaveOrFlags(timeout_given, &["timeout"]);
        assert_eq!(shell.hint("memory"), "limits.memory in cave.yaml");
        assert_eq!(shell.hint("timeout"), "--timeout");
        assert_eq!(
            LimitsFrom::CaveOrFlags(none, &["timeout"]).hint("timeout"),
            "limits.timeout in cave.yaml, or --timeout"
        );
    }

    #[test]
    fn lines_are_split_and_partial_lines_kept() {
        let mut buffer = LineBuffer::default();
        assert_eq!(buffer.complete_lines(b"one\ntw"), vec![b"one\n".to_vec()]);
        assert_eq!(buffer.complete_lines(b"o\nthree\nfo"), vec![b"two\n".to_vec(), b"three\n".to_vec()]);
        assert_eq!(buffer.rest(), Some(b"fo\n".to_vec()));
        assert_eq!(buffer.rest(), None);
    }

    #[test]
    fn only_a_kept_stream_is_kept_output() {
        let file = |path: &str, kind| bkg_schema::artefacts::RunFile {
            path: path.into(),
            kind,
            bytes: 1,
            sha256: String::new(),
        };
        assert!(!keeps_a_stream(&[file("out/report.csv", RunFileKind::File)]));
        assert!(keeps_a_stream(&[file("out/report.csv", RunFileKind::File), file("stderr", RunFileKind::Stderr)]));
    }

    #[test]
    fn the_results_text_serves_as_the_stream_only_when_it_is_all_of_it_and_exact() {
        assert_eq!(whole_stream("héllo\n", 7), Some("héllo\n".as_bytes()));
        // Cut at the cap, or replaced bytes that happen to keep the length.
        assert_eq!(whole_stream("hello", 1024 * 1024 + 5), None);
        assert_eq!(whole_stream("\u{FFFD}", 3), None);
    }
}
