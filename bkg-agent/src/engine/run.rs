//! One run, start to end (its request was checked in `request.rs`): wait for its turn, claim a
//! prepared sandbox, apply limits, give it the code, relay stdin and output, enforce the
//! timeout and the limits whatever the caller does, account, and clean up.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bkg_schema::artefacts::RunFileKind;
use bkg_schema::{KilledBy, LimitOverrides, OUTPUT_CAP_BYTES, RunRequest, RunResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::capacity::{Capacity, CapacityError, Turn};
use super::cgroup::CgroupUsage as Usage;
use super::control::{FromInit, ToInit};
use super::egress::{EgressError, NetworkSession};
use super::handle::{RunPhase, RunTicket, RunTracker};
use super::request::Place;
use super::sandbox::{PreparedSandbox, cgroup_limits};
use super::terminal::TerminalMaster;
use super::{Engine, EngineError};
use crate::artefacts::Kept;
use crate::artefacts::spool::OutputSpool;
use crate::ids::new_id;

pub use super::request::{RunError, ValidatedRun};

/// What the caller sends into a run while it goes on.
#[derive(Debug)]
pub enum RunInput {
    Stdin(Vec<u8>),
    StdinEnd,
    Cancel,
    /// The caller's terminal has a new size (a run on a terminal only; others ignore it).
    Resize(bkg_schema::terminal::TerminalSize),
    /// The caller's own stdout is closed: the code's is closed too (`FrameKind::StdoutClosed`).
    StdoutClosed,
}

/// What the caller asks of the code while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerAsks {
    /// To end (Ctrl-C, or the caller went away).
    End,
    /// To have its stdout closed.
    CloseStdout,
}

/// What a run reports while it goes on.
#[derive(Debug)]
pub enum RunOutput {
    Started(String),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// A line from a step before the code runs (installing its packages).
    Progress(String),
    /// A piece of the tar stream of /workspace/out/, once the code has ended.
    Archive(Vec<u8>),
}

impl Engine {
    /// Runs a validated request to its end. `input` carries stdin and cancellation; `output`,
    /// when given, receives the output as it is written. Whatever the caller does (reads slowly,
    /// stops reading, hangs up), the timeout, the limits and cancellation are enforced. Returns
    /// the result and what the run left to keep (its files, its long output), spooled.
    pub async fn run(
        self: &Arc<Self>,
        ticket: RunTicket,
        run: ValidatedRun,
        input: mpsc::Receiver<RunInput>,
        output: Option<mpsc::Sender<RunOutput>>,
    ) -> Result<(RunResult, Kept), RunError> {
        let result = self.run_to_end(ticket, run, input, output).await;
        // What the health probe goes by: a run failed by its sandbox or its runtime says runs
        // may not work (one whose code ran says they do, below).
        if let Err(RunError::Engine(_) | RunError::RuntimeNotExecutable(_)) = &result {
            self.capacity.note_run(false);
        }
        result
    }

    /// The result of a run cancelled before it had a sandbox (while its packages were being
    /// installed), whose ticket ends here.
    pub fn cancelled_before_its_sandbox(&self, ticket: RunTicket, run: &ValidatedRun) -> RunResult {
        ended_in_queue(ticket.run_id().to_owned(), run, KilledBy::Cancelled)
    }

    async fn run_to_end(
        self: &Arc<Self>,
        ticket: RunTicket,
        run: ValidatedRun,
        mut input: mpsc::Receiver<RunInput>,
        output: Option<mpsc::Sender<RunOutput>>,
    ) -> Result<(RunResult, Kept), RunError> {
        if self.is_closing() {
            return Err(EngineError::ShuttingDown.into());
        }
        let must_end = self.runs_must_end();
        let closing = self.closing();
        self.active_runs.fetch_add(1, Ordering::Relaxed);
        let _active = ActiveRun(Arc::clone(self));
        let run_id = ticket.run_id().to_owned();
        let tracker = ticket.tracker();
        let waiting = async {
            match run.place {
                Place::OneShot | Place::LongLived => self.capacity.wait_turn(&run.namespace).await,
                Place::BesideTheQueue => Ok(self.capacity.turn_beside_the_queue(&run.namespace)),
            }
        };
        let notice = output.as_ref().map(|output| (output, &*self.capacity));
        tracker.set_waiting_for_place(true);
        let queued = wait_in_queue(waiting, &tracker, &mut input, notice).await;
        tracker.set_waiting_for_place(false);
        let (turn, early_input) = match queued? {
            Queued::Turn(turn, early_input) => (turn, early_input),
            Queued::Cancelled => return Ok((ended_in_queue(run_id, &run, KilledBy::Cancelled), Kept::default())),
        };
        // A place freed by the stop's own ending of runs is no start for one that waited (found
        // by a new-user trial: it got a sandbox after the stop began, killed 7 ms later).
        if self.is_closing() {
            drop(turn);
            return Ok((ended_in_queue(run_id, &run, KilledBy::Shutdown), Kept::default()));
        }
        let mut log = match run.persistent.as_ref().and_then(|persistent| persistent.log_dir.as_deref()) {
            Some(log_dir) => Some(open_run_log(log_dir, &run_id).await?),
            None => None,
        };

        let persistent = run.persistent.as_ref().map(|p| &p.disk);
        let disk_hold = match persistent {
            Some(disk) => Some(self.hold_disk(&disk.image).await?),
            None => None,
        };
        let mut sandbox =
            self.claim(run.language, run.limits.disk_bytes, persistent, &run.additions, &run.order).await?;
        sandbox.keep_disk_hold(disk_hold);
        tracker.set_holds_sandbox(true);
        // Held until the run ends: the install sandbox's way to its package index.
        let _relay = match run.relay.as_slice() {
            [] => None,
            targets => match super::relay::open(nix::unistd::Pid::from_raw(sandbox.pid_one()), targets, output.clone())
            {
                Ok(relay) => Some(relay),
                Err(error) => {
                    self.dispose_later(&tracker, sandbox);
                    return Err(error.into());
                }
            },
        };
        let limits = cgroup_limits(&run.limits);
        let cgroup_result = sandbox.apply_limits(&limits);
        if let Err(error) = cgroup_result {
            self.dispose_later(&tracker, sandbox);
            return Err(EngineError::from(error).into());
        }
        let before = sandbox.cgroup.usage().unwrap_or_default();
        let spool_dir = crate::artefacts::spool_root(&self.config.state_dir).join(&run_id);
        // Opened while only pid 1 is in the sandbox: the files are taken through it at the end.
        let workspace = match run.keep.is_empty() {
            true => None,
            false => match sandbox.open_workspace() {
                Ok(workspace) => Some(workspace),
                Err(error) => {
                    tracing::warn!(%error, run = %run_id, "cannot open the sandbox's workspace: its files will not be kept");
                    None
                }
            },
        };
        let network = match &run.network {
            Some(plan) => match NetworkSession::open(plan, sandbox.pid_one()).await {
                Ok(session) => {
                    self.track_network(&run_id, Some(session.worker()));
                    Some(session)
                }
                Err(error) => {
                    self.dispose_later(&tracker, sandbox);
                    return Err(match error {
                        EgressError::PortTaken { .. } => RunError::PortUnusable(error.to_string()),
                        EgressError::Netns(_) => {
                            EngineError::Prepare { stage: "network".into(), message: error.to_string() }.into()
                        }
                    });
                }
            },
            None => None,
        };
        tracker.set_access(Some((sandbox.access(), sandbox.disk_use())));

        let mut relay = Relay::default();
        relay.offer(&output, RunOutput::Started(run_id.clone()));
        let started = Instant::now();
        tracker.advance(RunPhase::Started);
        let wants_terminal = run.order.terminal.is_some();
        if let Err(error) = sandbox.control.write(&ToInit::Go(run.order)).await {
            self.track_network(&run_id, None);
            self.dispose_later(&tracker, sandbox);
            return Err(EngineError::from(error).into());
        }
        let terminal = if wants_terminal {
            match receive_terminal(&mut sandbox).await {
                Ok(master) => Some(master),
                Err(error) => {
                    self.dispose_later(&tracker, sandbox);
                    return Err(error.into());
                }
            }
        } else {
            None
        };

        let (asks_tx, asks_rx) = mpsc::channel::<CallerAsks>(2);
        let sink = match &terminal {
            Some(master) => StdinSink::Terminal(master.clone()),
            None => StdinSink::Pipe(sandbox.stdin.take()),
        };
        let stdin_task = tokio::spawn(feed_stdin(sink, run.stdin, early_input, input, asks_tx));
        let mut watched = Watch {
            sandbox: &mut sandbox,
            started,
            timeout: timeout_of(&run.limits),
            pids_hits_before: before.pids_limit_hits,
            stop: &tracker,
            caller_asks: asks_rx,
            must_end,
            closing,
            output: &output,
            relay: &mut relay,
            log: log.as_mut(),
            terminal,
            spool_dir: &spool_dir,
            host_room: run.limits.disk_bytes,
        }
        .until_the_end()
        .await;
        if watched.prestarted {
            self.note_prestarted_run(watched.from_zygote);
        }
        stdin_task.abort();
        if run.return_out_dir
            && let Some(output) = &output
        {
            send_out_dir(sandbox.access(), output).await;
        }

        let usage = sandbox.cgroup.usage().unwrap_or_default();
        let mut kept = Kept { dir: Some(spool_dir.clone()), files: Vec::new(), not_kept: Vec::new() };
        if let Some(workspace) = workspace {
            let (keep, files_dir) = (run.keep.clone(), spool_dir.join("files"));
            let collected = tokio::task::spawn_blocking(move || {
                (crate::artefacts::collect::collect(&workspace, &keep, &files_dir), workspace)
            });
            match collected.await {
                Ok(((files, left_out), workspace)) => {
                    (kept.files, kept.not_kept) = (files, left_out);
                    // Once pid 1 is gone the workspace's descriptor is the disk's last user, and
                    // closing it unmounts the disk, the filesystem's sync with it: 1 to 2 ms that
                    // the result need not wait for. It is closed beside it, holding the disk's
                    // use, so the disposal still waits for the disk to be released.
                    let disk_use = sandbox.disk_use();
                    tokio::task::spawn_blocking(move || drop((workspace, disk_use)));
                }
                Err(_) => kept.not_kept.push("taking the files out of the sandbox failed".into()),
            }
        }
        self.track_network(&run_id, None);
        let network_denials = network.map(NetworkSession::finish).unwrap_or_default();
        self.dispose_later(&tracker, sandbox);
        // The next queued run need not wait for this one's output to drain.
        drop(turn);
        if matches!(watched.ending, Ending::Exited { .. }) || watched.killed_by.is_some() {
            self.capacity.note_run(true);
        }
        // The sandbox is gone; what the caller has not taken yet gets a short grace, then is
        // dropped and counted.
        let undelivered_bytes = relay.finish(&output).await;
        // A stream the caller did not get all of is kept even when it is short: the result's
        // text of it is not exact when it is not UTF-8, and bkg writes the end from the copy.
        if undelivered_bytes > 0 {
            for (captured, spool) in
                [(&watched.stdout, &mut watched.stdout_spool), (&watched.stderr, &mut watched.stderr_spool)]
            {
                if let Some(spool) = spool.as_mut().filter(|spool| !spool.is_open() && captured.total > 0) {
                    spool.write(&captured.kept, &[]).await;
                }
            }
        }
        for spool in [watched.stdout_spool.take(), watched.stderr_spool.take()].into_iter().flatten() {
            match spool.finish().await {
                Some(Ok(spooled)) => kept.files.push(spooled),
                Some(Err(reason)) => kept.not_kept.push(reason),
                None => {}
            }
        }
        let result = watched.into_result(run_id, run.language, run.limits, &before, &usage, undelivered_bytes);
        result.map(|result| {
            (RunResult { security_level: Some(self.config.security_level), network_denials, ..result }, kept)
        })
    }

    /// Runs an empty script in a default sandbox (the warm pool's, when it has one), the way a
    /// caller's run goes: what a health check needs to know is whether runs work, not whether a
    /// sandbox can be prepared. `Err` says why not.
    pub async fn probe(self: &Arc<Self>) -> Result<(), String> {
        let language = [bkg_schema::Language::Python, bkg_schema::Language::Node]
            .into_iter()
            .find(|language| self.interpreter(*language).is_ok())
            .ok_or("no runtime is executable (--python, --node)")?;
        let request = RunRequest {
            language,
            code: String::new(),
            script_name: None,
            args: Vec::new(),
            env: Default::default(),
            files: Vec::new(),
            limits: LimitOverrides { timeout_ms: Some(PROBE_TIMEOUT.as_millis() as u64), ..Default::default() },
            stdin_base64: None,
            namespace: None,
            keep: Vec::new(),
            network: Vec::new(),
            ports: Vec::new(),
            requirements: Vec::new(),
            requires_python: None,
            node_packages: None,
            secrets: Vec::new(),
            return_out_dir: false,
            stderr_to_stdout: false,
        };
        let mut validated = self.validate(request).map_err(|error| error.to_string())?;
        validated.beside_the_queue();
        let (_input, input_rx) = mpsc::channel(1);
        let ticket = self.accept(new_id("probe"), &validated).map_err(|error| error.to_string())?;
        let (result, _kept) = self.run(ticket, validated, input_rx, None).await.map_err(|error| error.to_string())?;
        match (result.exit_code, result.killed_by) {
            (Some(0), None) => Ok(()),
            (_, Some(killed_by)) => Err(format!("an empty script was killed by {}", killed_by.as_str())),
            (code, None) => Err(format!(
                "an empty script ended with exit code {code:?}, signal {:?}: {}",
                result.signal,
                result.stderr.lines().last().unwrap_or_default()
            )),
        }
    }

    /// Persistent disk `image` once nothing holds it: the sandbox of the run before may still be
    /// disposed of, or a file transfer may still have its files open (`disk::DiskHold`).
    async fn hold_disk(&self, image: &std::path::Path) -> Result<super::disk::DiskHold, RunError> {
        self.disk_locks.hold(image, DISK_PATIENCE).await.ok_or_else(|| {
            RunError::Busy(format!(
                "the sandbox's disk is still in use after {}s (a file transfer that began in its last run goes on); try again once it is done",
                DISK_PATIENCE.as_secs()
            ))
        })
    }

    /// Disposes of a used sandbox in the background: the caller has its result already.
    fn dispose_later(self: &Arc<Self>, tracker: &Arc<RunTracker>, sandbox: PreparedSandbox) {
        tracker.set_access(None);
        self.dispose_in_background(sandbox, Some(Arc::clone(tracker)));
    }
}

/// How long a run waits for its persistent disk to be let go of (`Engine::hold_disk`).
const DISK_PATIENCE: Duration = Duration::from_secs(30);

/// How long a run may take: `timeout: none` is far enough away never to come.
fn timeout_of(limits: &bkg_schema::Limits) -> Duration {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    if limits.timeout_ms == bkg_schema::NO_TIMEOUT_MS { CENTURY } else { Duration::from_millis(limits.timeout_ms) }
}

/// Sends /workspace/out/ of the ended run's sandbox as a tar stream of its contents, at the
/// caller's pace: the sandbox is held until the caller has it (or has hung up).
async fn send_out_dir(access: super::handle::SandboxAccess, output: &mpsc::Sender<RunOutput>) {
    let (sender, mut chunks) = bkg_schema::chunks::channel();
    let packing = tokio::task::spawn_blocking(move || -> Result<(), super::files::FilesError> {
        let workspace = super::files::Workspace::open(access.pid_one, access.owner, None)?;
        let mut writer = bkg_schema::chunks::ChunkWriter::new(sender, "the caller stopped reading");
        workspace.pack_contents(Path::new(OUT_DIR), &mut writer)?;
        std::io::Write::flush(&mut writer).map_err(|error| super::files::FilesError::Io(error.to_string()))
    });
    // The writer sends no errors: its own failures end the packing, reported below.
    while let Some(Ok(chunk)) = chunks.recv().await {
        if output.send(RunOutput::Archive(chunk)).await.is_err() {
            break;
        }
    }
    drop(chunks);
    match packing.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "/workspace/out/ not sent back"),
        Err(_) => tracing::warn!("sending /workspace/out/ back failed"),
    }
}

/// The directory of /workspace whose files `return_out_dir` sends back.
pub const OUT_DIR: &str = "out";

/// Output waiting for a caller that reads slower than the code writes, at most this much. Past
/// it the sandbox's pipes are not read (the code waits on its writes, as on a slow terminal),
/// while the deadline, the limits and cancellation keep being watched.
const RELAY_BUFFER_BYTES: usize = 1024 * 1024;

/// Once the run has ended, how long the caller may take nothing of the output still waiting
/// before the rest is dropped (and counted in `undelivered_bytes`). A caller that keeps
/// taking it gets all of it: at most `RELAY_BUFFER_BYTES` wait, so that takes a bounded time.
const RELAY_FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Once pid 1 has reported, how long to wait for pipes that a leftover process may hold open.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// How many run logs a persistent sandbox keeps.
const KEPT_LOGS: usize = 20;

/// How long the health probe's empty script may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the cgroup's process counter and the disk are looked at.
const LIMIT_POLL: Duration = Duration::from_millis(100);

/// How much stdin a queued run keeps for its code; past it the caller's stdin waits.
const QUEUED_STDIN_BYTES: usize = 1024 * 1024;

/// How long a run waits for its place before its caller is told why nothing happens yet.
const QUEUE_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// How a run's wait in the queue ended.
enum Queued<'a> {
    /// Its turn came; with the stdin the caller sent meanwhile.
    Turn(Turn<'a>, Vec<RunInput>),
    /// The caller cancelled (or the sandbox was stopped) before it came.
    Cancelled,
}

/// Waits for the run's turn while listening to the caller: a run cancelled in the queue leaves
/// it at once rather than taking a sandbox when its turn comes. A caller that streams the
/// output is told why it waits (`Capacity::queue_notice`) as progress once the wait has lasted `QUEUE_NOTICE_AFTER`.
async fn wait_in_queue<'a>(
    waiting: impl std::future::Future<Output = Result<Turn<'a>, CapacityError>>,
    stop: &RunTracker,
    input: &mut mpsc::Receiver<RunInput>,
    mut notice: Option<(&mpsc::Sender<RunOutput>, &Capacity)>,
) -> Result<Queued<'a>, RunError> {
    tokio::pin!(waiting);
    let mut early = Vec::new();
    let mut early_bytes = 0;
    let mut listening = true;
    let notice_due = tokio::time::sleep(QUEUE_NOTICE_AFTER);
    tokio::pin!(notice_due);
    loop {
        tokio::select! {
            turn = &mut waiting => return Ok(Queued::Turn(turn?, early)),
            _ = stop.stopped() => return Ok(Queued::Cancelled),
            () = &mut notice_due, if notice.is_some() => {
                if let Some((output, capacity)) = notice.take() {
                    // A caller too slow to take it loses only the notice.
                    let _ = output.try_send(RunOutput::Progress(capacity.queue_notice()));
                }
            }
            event = input.recv(), if listening => match event {
                Some(RunInput::Cancel) => return Ok(Queued::Cancelled),
                Some(event) => {
                    if let RunInput::Stdin(bytes) = &event {
                        early_bytes += bytes.len();
                    }
                    early.push(event);
                    listening = early_bytes < QUEUED_STDIN_BYTES;
                }
                None => listening = false,
            },
        }
    }
}

/// The result of a run ended before it had a sandbox: cancelled, or by the agent's stop.
fn ended_in_queue(id: String, run: &ValidatedRun, killed_by: KilledBy) -> RunResult {
    RunResult {
        id,
        language: run.language,
        exit_code: None,
        signal: None,
        killed_by: Some(killed_by),
        wall_ms: 0,
        cpu_ms: 0,
        peak_memory_bytes: 0,
        disk_bytes_used: 0,
        stdout: String::new(),
        stderr: String::new(),
        stdout_bytes: 0,
        stderr_bytes: 0,
        truncated: false,
        undelivered_bytes: 0,
        limits: run.limits,
        security_level: None,
        denials: Vec::new(),
        files: Vec::new(),
        files_not_kept: None,
        network_denials: Vec::new(),
    }
}

/// Pid 1's first answer to a `Go` on a terminal: the terminal's master, or why it has none.
async fn receive_terminal(sandbox: &mut PreparedSandbox) -> Result<TerminalMaster, EngineError> {
    let failed = |message: String| EngineError::Prepare { stage: "open the terminal".into(), message };
    match sandbox.control.read_with_fd::<FromInit>().await? {
        (FromInit::Terminal, Some(master)) => TerminalMaster::new(master).map_err(|error| failed(error.to_string())),
        (FromInit::Failed { stage, message }, _) => Err(EngineError::Prepare { stage, message }),
        (other, _) => Err(failed(format!("pid 1 answered {other:?} instead of the terminal"))),
    }
}

/// Where the caller's input goes: the code's stdin pipe, or its terminal.
enum StdinSink {
    Pipe(Option<tokio::net::unix::pipe::Sender>),
    Terminal(TerminalMaster),
}

impl StdinSink {
    /// Writes `bytes`; false once the code can take no more (its stdin closed).
    async fn write(&mut self, bytes: &[u8]) -> bool {
        match self {
            Self::Pipe(pipe) => {
                if let Some(open) = pipe.as_mut()
                    && open.write_all(bytes).await.is_err()
                {
                    *pipe = None;
                }
                pipe.is_some()
            }
            Self::Terminal(master) => master.write_all(bytes).await.is_ok(),
        }
    }

    /// The end of the caller's input: a pipe closes. A terminal has no end of input of its own
    /// (Ctrl-D is a key), so it stays open.
    fn end(&mut self) {
        if let Self::Pipe(pipe) = self {
            *pipe = None;
        }
    }

    fn resize(&self, size: bkg_schema::terminal::TerminalSize) {
        if let Self::Terminal(master) = self
            && let Err(error) = master.resize(size)
        {
            tracing::debug!(%error, "could not resize a run's terminal");
        }
    }
}

/// Writes stdin for the code in its own task (a script that never reads must not stall the run)
/// and passes on what the caller asks of the run (its end, its stdout closed).
async fn feed_stdin(
    mut sink: StdinSink,
    preset: Option<Vec<u8>>,
    early: Vec<RunInput>,
    mut input: mpsc::Receiver<RunInput>,
    caller_asks: mpsc::Sender<CallerAsks>,
) {
    if let Some(bytes) = preset {
        sink.write(&bytes).await;
        sink.end();
    }
    let mut early = early.into_iter();
    loop {
        let event = match early.next() {
            Some(event) => event,
            None => match input.recv().await {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            RunInput::Stdin(bytes) => {
                sink.write(&bytes).await;
            }
            RunInput::StdinEnd => sink.end(),
            RunInput::Resize(size) => sink.resize(size),
            RunInput::Cancel => {
                let _ = caller_asks.send(CallerAsks::End).await;
                return;
            }
            RunInput::StdoutClosed => {
                let _ = caller_asks.send(CallerAsks::CloseStdout).await;
            }
        }
    }
}

/// Output on its way to a streaming caller: sent at once when the caller keeps up, else kept
/// (up to `RELAY_BUFFER_BYTES`) and sent as the caller takes it. The run never waits on it.
#[derive(Default)]
struct Relay {
    waiting: VecDeque<RunOutput>,
    waiting_bytes: usize,
    /// The caller hung up: nothing more is sent.
    closed: bool,
    undelivered: u64,
}

fn output_len(output: &RunOutput) -> usize {
    match output {
        RunOutput::Started(_) => 0,
        RunOutput::Progress(line) => line.len(),
        RunOutput::Stdout(bytes) | RunOutput::Stderr(bytes) | RunOutput::Archive(bytes) => bytes.len(),
    }
}

impl Relay {
    fn has_room(&self) -> bool {
        self.waiting_bytes < RELAY_BUFFER_BYTES
    }

    fn has_waiting(&self) -> bool {
        !self.closed && !self.waiting.is_empty()
    }

    fn offer(&mut self, to: &Option<mpsc::Sender<RunOutput>>, output: RunOutput) {
        let Some(to) = to else { return };
        if self.closed {
            self.undelivered += output_len(&output) as u64;
            return;
        }
        let output = if self.waiting.is_empty() {
            match to.try_send(output) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(output)) => output,
                Err(mpsc::error::TrySendError::Closed(output)) => {
                    self.close();
                    self.undelivered += output_len(&output) as u64;
                    return;
                }
            }
        } else {
            output
        };
        self.waiting_bytes += output_len(&output);
        self.waiting.push_back(output);
    }

    /// Sends the oldest waiting output with room the caller made, or notes that it hung up.
    fn deliver(&mut self, permit: Option<mpsc::Permit<'_, RunOutput>>) {
        let Some(permit) = permit else {
            self.close();
            return;
        };
        if let Some(output) = self.waiting.pop_front() {
            self.waiting_bytes -= output_len(&output);
            permit.send(output);
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.undelivered += self.waiting_bytes as u64;
        self.waiting.clear();
        self.waiting_bytes = 0;
    }

    /// Sends what is still waiting for as long as the caller keeps taking it, with at most
    /// `RELAY_FLUSH_GRACE` between two takes; returns the bytes that never reached the caller.
    async fn finish(mut self, to: &Option<mpsc::Sender<RunOutput>>) -> u64 {
        while self.has_waiting() {
            match tokio::time::timeout(RELAY_FLUSH_GRACE, reserve(to)).await {
                Ok(permit) => self.deliver(permit),
                Err(_) => break,
            }
        }
        self.close();
        self.undelivered
    }
}

/// Room for one output in the caller's channel; `None` once the caller hung up.
async fn reserve(to: &Option<mpsc::Sender<RunOutput>>) -> Option<mpsc::Permit<'_, RunOutput>> {
    match to {
        Some(to) => to.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// How the code's process ended, as far as the agent learnt.
enum Ending {
    /// Pid 1 reported the code's end.
    Exited { exit_code: Option<i32>, signal: Option<i32>, disk_used_bytes: u64, disk_full: bool },
    /// The runtime could not be executed (errno of execve).
    ExecFailed(i32),
    /// Pid 1 failed to start the code.
    InitFailed(String),
    /// Pid 1 went without a report: killed by the agent, the OOM killer or from outside.
    Vanished,
}

/// Where a run being watched stands.
#[derive(PartialEq)]
enum Phase {
    /// The code runs; pid 1 will report its end.
    Running,
    /// Pid 1 has reported or is gone; the pipes are read to their end, for `PIPE_GRACE` at most.
    Draining,
}

/// Everything watching one run needs: its sandbox, its limits, the caller's channels.
struct Watch<'a> {
    sandbox: &'a mut PreparedSandbox,
    started: Instant,
    timeout: Duration,
    pids_hits_before: u64,
    stop: &'a RunTracker,
    caller_asks: mpsc::Receiver<CallerAsks>,
    /// Turns true when the agent shuts down and its grace for runs is over.
    must_end: tokio::sync::watch::Receiver<bool>,
    /// Turns true when the agent begins to stop: the code is asked to end (SIGTERM).
    closing: tokio::sync::watch::Receiver<bool>,
    output: &'a Option<mpsc::Sender<RunOutput>>,
    relay: &'a mut Relay,
    log: Option<&'a mut tokio::fs::File>,
    /// The code's terminal, when it runs on one: its output comes from here, as stdout.
    terminal: Option<TerminalMaster>,
    /// Where output longer than a result keeps is spooled whole.
    spool_dir: &'a Path,
    /// How much more of the run's output the host keeps (its log and its spools): the run's disk
    /// limit in all, so that a run printing for an hour cannot fill the host's disk whatever its
    /// own disk's size. Past it the output is still relayed to the caller, not kept.
    host_room: u64,
}

/// What watching a run found.
struct Watched {
    /// Pid 1 reported the code started (`FromInit::Running`).
    code_running: bool,
    /// The code was started by the interpreter pid 1 had started ahead (engine/prestart.rs).
    prestarted: bool,
    /// That interpreter was a fork of the zygote (engine/zygote.rs).
    from_zygote: bool,
    /// System call numbers the seccomp policy refused, with how often (pid 1's count).
    denied_syscalls: Vec<(i64, u64)>,
    ending: Ending,
    killed_by: Option<KilledBy>,
    wall: Duration,
    /// The agent saw the sandbox's disk out of blocks or inodes while the code ran.
    disk_seen_full: bool,
    /// What the disk held when the agent ended the run (pid 1 then reports nothing).
    disk_used_at_kill: Option<u64>,
    stdout: Captured,
    stderr: Captured,
    stdout_spool: Option<OutputSpool>,
    stderr_spool: Option<OutputSpool>,
    /// Output past `Watch::host_room` was relayed and not kept on the host.
    host_copy_cut: bool,
}

/// Reads the run's terminal, if it has one (the branch reading it is off otherwise).
async fn read_terminal(terminal: &Option<TerminalMaster>, buffer: &mut [u8]) -> std::io::Result<usize> {
    match terminal {
        Some(master) => master.read(buffer).await,
        None => std::future::pending().await,
    }
}

/// One of the two output pipes, while it is open.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Watch<'_> {
    /// Watches the run until it has ended and its output is read: every wait here is in one
    /// `select!`, so no caller and no quiet pipe can hold off the deadline or a kill.
    async fn until_the_end(mut self) -> Watched {
        let mut watched = Watched {
            code_running: false,
            prestarted: false,
            from_zygote: false,
            denied_syscalls: Vec::new(),
            ending: Ending::Vanished,
            killed_by: None,
            wall: Duration::ZERO,
            disk_seen_full: false,
            disk_used_at_kill: None,
            stdout: Captured::default(),
            stderr: Captured::default(),
            stdout_spool: Some(OutputSpool::new(self.spool_dir.to_owned(), RunFileKind::Stdout)),
            stderr_spool: Some(OutputSpool::new(self.spool_dir.to_owned(), RunFileKind::Stderr)),
            host_copy_cut: false,
        };
        let mut phase = Phase::Running;
        let mut shutdown_seen = false;
        let mut must_end = self.must_end.clone();
        let mut closing = self.closing.clone();
        let mut asked_to_end = false;
        let mut closing_seen = false;
        let mut ended_at = None;
        let (mut stdout_open, mut stderr_open) = (true, true);
        let mut terminal_open = self.terminal.is_some();
        let terminal = self.terminal.take();
        let mut stdout_buf = vec![0u8; 64 * 1024];
        let mut stderr_buf = vec![0u8; 64 * 1024];
        let mut terminal_buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        // Armed when the run is asked to end (`ask_to_end`): then the code is killed.
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let mut limit_poll = tokio::time::interval(LIMIT_POLL);
        limit_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        while phase == Phase::Running || stdout_open || stderr_open || terminal_open {
            let room = self.relay.has_room();
            let mut kill_for = None;
            tokio::select! {
                message = self.sandbox.control.read::<FromInit>(), if phase == Phase::Running => {
                    let ending = match message {
                        Ok(FromInit::Running { prestarted, from_zygote }) => {
                            watched.prestarted = prestarted;
                            watched.from_zygote = from_zygote;
                            watched.code_running = true;
                            // Asked to end before the code ran: the signal goes now, to it.
                            if watched.killed_by == Some(KilledBy::Cancelled) || asked_to_end {
                                self.ask_code_to_end(terminal.as_ref());
                            }
                            continue;
                        }
                        Ok(FromInit::Ready { .. } | FromInit::Forked { .. } | FromInit::Terminal) => continue,
                        Ok(FromInit::Exited { exit_code, signal, disk_used_bytes, disk_full, denied_syscalls }) => {
                            watched.denied_syscalls = denied_syscalls;
                            Ending::Exited { exit_code, signal, disk_used_bytes, disk_full }
                        }
                        Ok(FromInit::ExecFailed { errno }) => Ending::ExecFailed(errno),
                        Ok(FromInit::Failed { stage, message }) => Ending::InitFailed(format!("{stage}: {message}")),
                        Err(_) => Ending::Vanished,
                    };
                    ended_at.get_or_insert(self.started.elapsed());
                    watched.ending = ending;
                    // Pid 1 is gone or going: the rest of the sandbox dies with it.
                    phase = Phase::Draining;
                    deadline.as_mut().reset(tokio::time::Instant::now() + PIPE_GRACE);
                }
                read = self.sandbox.stdout.read(&mut stdout_buf), if stdout_open && room => {
                    match read {
                        Ok(0) | Err(_) => stdout_open = false,
                        Ok(n) => self.take(Stream::Stdout, &stdout_buf[..n], &mut watched).await,
                    }
                }
                read = self.sandbox.stderr.read(&mut stderr_buf), if stderr_open && room => {
                    match read {
                        Ok(0) | Err(_) => stderr_open = false,
                        Ok(n) => self.take(Stream::Stderr, &stderr_buf[..n], &mut watched).await,
                    }
                }
                read = read_terminal(&terminal, &mut terminal_buf), if terminal_open && room => {
                    match read {
                        Ok(0) | Err(_) => terminal_open = false,
                        Ok(n) => self.take(Stream::Stdout, &terminal_buf[..n], &mut watched).await,
                    }
                }
                permit = reserve(self.output), if self.relay.has_waiting() => self.relay.deliver(permit),
                () = &mut deadline => {
                    if phase == Phase::Draining {
                        // The grace for the pipes is over: whatever still holds them goes.
                        self.sandbox.kill();
                        break;
                    }
                    kill_for = Some(KilledBy::Timeout);
                }
                graceful = self.stop.stopped(), if phase == Phase::Running => match graceful {
                    true => self.ask_to_end(&mut watched, grace.as_mut(), terminal.as_ref()),
                    false => kill_for = Some(KilledBy::Cancelled),
                },
                // The caller's Ctrl-C (or its going away) asks, as `bkg stop` does.
                Some(asks) = self.caller_asks.recv(), if phase == Phase::Running => match asks {
                    CallerAsks::End => self.ask_to_end(&mut watched, grace.as_mut(), terminal.as_ref()),
                    CallerAsks::CloseStdout if stdout_open => match self.sandbox.close_stdout() {
                        Ok(()) => stdout_open = false,
                        Err(error) => tracing::warn!(%error, "could not close a run's stdout"),
                    },
                    CallerAsks::CloseStdout => {}
                },
                () = &mut grace, if phase == Phase::Running && watched.killed_by == Some(KilledBy::Cancelled) => {
                    kill_for = Some(KilledBy::Cancelled);
                }
                stopping = async { closing.wait_for(|closing| *closing).await.is_ok() }, if phase == Phase::Running && !closing_seen => {
                    // Once: a closed channel (the engine gone) is no order either.
                    closing_seen = true;
                    if stopping {
                        asked_to_end = true;
                        if watched.code_running {
                            self.ask_code_to_end(terminal.as_ref());
                        }
                    }
                }
                ended = async { must_end.wait_for(|end| *end).await.is_ok() }, if phase == Phase::Running && !shutdown_seen => {
                    // Once is enough: pid 1 is killed, and the loop ends as its pipes close. A
                    // closed channel (the engine gone) is no order to end.
                    shutdown_seen = true;
                    if ended {
                        kill_for = Some(KilledBy::Shutdown);
                    }
                }
                _ = limit_poll.tick(), if phase == Phase::Running => {
                    let hits = self.sandbox.cgroup.usage().map(|usage| usage.pids_limit_hits).unwrap_or(0);
                    if hits > self.pids_hits_before {
                        kill_for = Some(KilledBy::Pids);
                    }
                    if !watched.disk_seen_full && self.sandbox.workspace_usage().is_some_and(|disk| disk.full) {
                        watched.disk_seen_full = true;
                    }
                }
            }
            if let Some(limit) = kill_for {
                ended_at.get_or_insert(self.started.elapsed());
                watched.killed_by.get_or_insert(limit);
                // Pid 1 dies with the sandbox and reports nothing: what its disk holds is read now.
                if let Some(disk) = self.sandbox.workspace_usage() {
                    watched.disk_used_at_kill.get_or_insert(disk.used_bytes);
                }
                self.sandbox.kill();
                // At the deadline nothing more is waited for, not even pid 1's end.
                if limit == KilledBy::Timeout {
                    break;
                }
            }
        }
        watched.wall = ended_at.unwrap_or_else(|| self.started.elapsed());
        // However it ended after the agent asked it to, the agent's stop ended it: a service is
        // started again by the next agent, and its caller is told why.
        if asked_to_end && watched.killed_by.is_none() {
            watched.killed_by = Some(KilledBy::Shutdown);
        }
        watched
    }

    /// A stop or a cancel: the code is sent SIGTERM (on a terminal, hung up: `ask_code_to_end`) and
    /// has `bkg_schema::STOP_GRACE` to end (a service saves its work), then it is killed; asked
    /// again meanwhile, nothing more happens.
    fn ask_to_end(
        &mut self,
        watched: &mut Watched,
        grace: std::pin::Pin<&mut tokio::time::Sleep>,
        terminal: Option<&TerminalMaster>,
    ) {
        if watched.killed_by.is_some() {
            return;
        }
        watched.killed_by = Some(KilledBy::Cancelled);
        // Before pid 1 reports the code running there may be no code to signal yet, or only the
        // interpreter it started ahead, which dies of it and leaves pid 1 to start the code
        // afresh: the signal waits for the report (found by a new-user trial: a Ctrl-C in a run's
        // first few tens of milliseconds was lost, and the script ran to its end).
        if watched.code_running {
            self.ask_code_to_end(terminal);
        }
        grace.reset(tokio::time::Instant::now() + bkg_schema::STOP_GRACE);
    }

    /// Signals the code's group (`PreparedSandbox::ask_code_to_end`) and hangs its terminal up,
    /// if it has one (`TerminalMaster::hang_up`).
    fn ask_code_to_end(&self, terminal: Option<&TerminalMaster>) {
        self.sandbox.ask_code_to_end(terminal.is_some());
        if let Some(terminal) = terminal
            && let Err(error) = terminal.hang_up()
        {
            tracing::warn!(%error, "could not hang up a run's terminal");
        }
    }

    /// Output read from the sandbox: kept (up to the cap, and whole in a spool past it), logged,
    /// and relayed; past the host's room for it (`host_room`), only relayed.
    async fn take(&mut self, stream: Stream, bytes: &[u8], watched: &mut Watched) {
        let (captured, spool) = match stream {
            Stream::Stdout => (&mut watched.stdout, &mut watched.stdout_spool),
            Stream::Stderr => (&mut watched.stderr, &mut watched.stderr_spool),
        };
        // Each copy counts: a sandbox's log and a long stream's spool hold the same bytes twice.
        let len = bytes.len() as u64;
        let spooled = match spool {
            Some(spool) if spool.is_open() => len,
            // Until now the stream was kept whole: that goes first.
            Some(_) if captured.total + len > OUTPUT_CAP_BYTES as u64 => captured.kept.len() as u64 + len,
            _ => 0,
        };
        let logged = if self.log.is_some() { len } else { 0 };
        let kept_on_host = spooled + logged <= self.host_room;
        self.host_room = if kept_on_host { self.host_room - spooled - logged } else { 0 };
        if kept_on_host
            && spooled > 0
            && let Some(spool) = spool
        {
            match spool.is_open() {
                true => spool.write(&[], bytes).await,
                false => spool.write(&captured.kept, bytes).await,
            }
        }
        // Counted whatever the host keeps (and the result's first MiB kept, in memory).
        captured.push(bytes);
        if let Some(log) = self.log.as_mut() {
            if kept_on_host {
                let _ = log.write_all(bytes).await;
            } else if !watched.host_copy_cut {
                let said = "\n[bkg: the rest of this run's output was not kept: it passed the run's disk limit]\n";
                let _ = log.write_all(said.as_bytes()).await;
            }
        }
        watched.host_copy_cut |= !kept_on_host;
        let output = match stream {
            Stream::Stdout => RunOutput::Stdout(bytes.to_vec()),
            Stream::Stderr => RunOutput::Stderr(bytes.to_vec()),
        };
        self.relay.offer(self.output, output);
    }
}

impl Watched {
    fn into_result(
        self,
        id: String,
        language: bkg_schema::Language,
        limits: bkg_schema::Limits,
        before: &Usage,
        usage: &Usage,
        undelivered_bytes: u64,
    ) -> Result<RunResult, RunError> {
        let (exit_code, signal, disk_used_bytes, disk_full) = match self.ending {
            Ending::Exited { exit_code, signal, disk_used_bytes, disk_full } => {
                (exit_code, signal, disk_used_bytes, disk_full)
            }
            // Too long is the run's own command line or environment, whatever program it starts
            // (found by a new-user trial: `bkgr` arguments over 128 KiB blamed the runtime).
            Ending::ExecFailed(libc::E2BIG) => {
                return Err(RunError::RuntimeNotExecutable(format!(
                    "the run's command line and environment are too long to start ({}): the kernel takes at most \
                     128KiB in one argument, and its stack's quarter in all",
                    std::io::Error::from_raw_os_error(libc::E2BIG)
                )));
            }
            Ending::ExecFailed(errno) => {
                return Err(RunError::RuntimeNotExecutable(format!(
                    "the {} runtime could not be executed: {}",
                    language.as_str(),
                    std::io::Error::from_raw_os_error(errno)
                )));
            }
            Ending::InitFailed(failure) => {
                return Err(EngineError::Prepare { stage: "start".into(), message: failure }.into());
            }
            Ending::Vanished => (None, None, self.disk_used_at_kill.unwrap_or(0), false),
        };
        let reported = matches!(self.ending, Ending::Exited { .. });
        let mut killed_by = self.killed_by;
        // The OOM killer picks the biggest process, which may be a child of the script (a shell
        // script's python): a run that failed after one in its cgroup met its memory limit.
        let failed = signal.is_some() || exit_code.is_some_and(|code| code != 0) || !reported;
        let oom_kills = usage.oom_kills.saturating_sub(before.oom_kills);
        if killed_by.is_none() && oom_kills > 0 && failed {
            killed_by = Some(KilledBy::Memory);
        }
        if killed_by.is_none() && (disk_full || self.disk_seen_full) && exit_code.is_some_and(|code| code != 0) {
            killed_by = Some(KilledBy::Disk);
        }
        if !reported && killed_by.is_none() {
            // Pid 1 ended without reporting the script's exit and no limit or caller ended it:
            // something outside killed the sandbox. That is the agent's failure, not a result.
            return Err(EngineError::Prepare {
                stage: "run".into(),
                message: "the sandbox ended before the script did (killed from outside the agent)".into(),
            }
            .into());
        }
        // A pid 1 killed by the OOM killer or by the agent leaves no exit report.
        let signal = if !reported && killed_by.is_some() { Some(libc::SIGKILL) } else { signal };
        Ok(RunResult {
            id,
            language,
            exit_code: if signal.is_some() { None } else { exit_code },
            signal,
            killed_by,
            wall_ms: self.wall.as_millis() as u64,
            cpu_ms: usage.cpu_nanos.saturating_sub(before.cpu_nanos) / 1_000_000,
            peak_memory_bytes: usage.peak_memory_bytes,
            disk_bytes_used: disk_used_bytes,
            truncated: self.stdout.truncated || self.stderr.truncated || self.host_copy_cut,
            undelivered_bytes,
            stdout_bytes: self.stdout.total,
            stderr_bytes: self.stderr.total,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            limits,
            security_level: None,
            denials: super::denials::of_run(
                &self.denied_syscalls,
                killed_by,
                (oom_kills, usage.pids_limit_hits.saturating_sub(before.pids_limit_hits)),
            ),
            files: Vec::new(),
            files_not_kept: None,
            network_denials: Vec::new(),
        })
    }
}

/// Opens `<log_dir>/<run_id>.log`, keeping only the newest `KEPT_LOGS` logs.
async fn open_run_log(log_dir: &Path, run_id: &str) -> Result<tokio::fs::File, RunError> {
    tokio::fs::create_dir_all(log_dir).await.map_err(EngineError::io(format!("create {}", log_dir.display())))?;
    if let Ok(mut entries) = tokio::fs::read_dir(log_dir).await {
        let mut logs = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            logs.push(entry.path());
        }
        logs.sort();
        let excess = (logs.len() + 1).saturating_sub(KEPT_LOGS);
        for old in logs.into_iter().take(excess) {
            let _ = tokio::fs::remove_file(old).await;
        }
    }
    let path = log_dir.join(format!("{run_id}.log"));
    Ok(tokio::fs::File::create(&path).await.map_err(EngineError::io(format!("create {}", path.display())))?)
}

struct ActiveRun(Arc<Engine>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.active_runs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One output stream: every byte counted, the first `OUTPUT_CAP_BYTES` kept.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
    truncated: bool,
}

impl Captured {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = OUTPUT_CAP_BYTES.saturating_sub(self.kept.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// What was kept, as text: a character the cap cut in two is left out rather than shown as
    /// U+FFFD (found by a new-user trial); other bytes that are not UTF-8 are U+FFFD.
    fn text(&self) -> String {
        let whole = match std::str::from_utf8(&self.kept) {
            Err(error) if self.truncated && error.error_len().is_none() => &self.kept[..error.valid_up_to()],
            _ => &self.kept[..],
        };
        String::from_utf8_lossy(whole).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_is_capped_and_counted() {
        let mut captured = Captured::default();
        captured.push(&vec![b'a'; OUTPUT_CAP_BYTES - 1]);
        assert!(!captured.truncated);
        captured.push(b"bcd");
        assert!(captured.truncated);
        assert_eq!(captured.kept.len(), OUTPUT_CAP_BYTES);
        assert_eq!(captured.total, OUTPUT_CAP_BYTES as u64 + 2);
    }

    #[test]
    fn a_character_the_cap_cuts_is_left_out_of_the_text() {
        let mut captured = Captured::default();
        captured.push(&vec![b'a'; OUTPUT_CAP_BYTES - 1]);
        captured.push("é".as_bytes());
        assert!(captured.truncated);
        assert_eq!(captured.text().len(), OUTPUT_CAP_BYTES - 1);
        assert!(captured.text().ends_with('a'));
        let mut broken = Captured::default();
        broken.push(b"a\xffb");
        assert_eq!(broken.text(), "a\u{fffd}b");
    }
}
