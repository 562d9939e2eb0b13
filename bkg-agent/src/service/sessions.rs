//! Sessions: an interpreter (Python or Node) kept running in a persistent sandbox, whose
//! variables, imports and cwd stay between executions. A session is the sandbox's run while it
//! lives (so the sandbox takes no other exec meanwhile; file transfers use it): its code is a
//! small runner (`session/runner.py`, `session/runner.js`) that reads one request a line on
//! stdin and answers with events on stdout, each a line of JSON after `\x1e`; anything else on
//! stdout is output written past the runner (a subprocess) and passed on as it is. One session
//! per sandbox; one execution at a time in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bkg_schema::Language;
use bkg_schema::files::{ExecutionStatus, NewSession, SessionEvent, SessionInfo, StreamName};
use bkg_schema::sandbox::{ExecRequest, is_dns_label};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::access::user_timeout_cap;
use super::keys::KeyHold;
use super::{OpError, OpResult, RunInput, RunOutput, Service};
use crate::auth::Principal;
use crate::engine::handle::{RunPhase, RunTracker, wait_until};

const PYTHON_RUNNER: &str = include_str!("session/runner.py");
const NODE_RUNNER: &str = include_str!("session/runner.js");

/// What leads each event line of a runner.
const EVENT_MARK: u8 = 0x1e;

/// How long a restart or delete waits for the session's run to be over and its sandbox free.
const END_PATIENCE: Duration = Duration::from_secs(15);

/// SIGINT to the session's interpreter; `Err(None)` when it has none running.
fn interrupt(session: &Session) -> Result<(), Option<nix::errno::Errno>> {
    let code = session.tracker.access().and_then(|access| crate::engine::sandbox::code_pid(access.pid_one));
    let pid = code.ok_or(None)?;
    // The interpreter is the run's code, inside the run's own cgroup (docs/architecture.md).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT).map_err(Some)
}

/// An execution's `events` for as long as the caller's key speaks for them (docs/governance.md):
/// once it is revoked, rotated, deleted or expired the execution is interrupted and the caller's
/// stream ends with `interrupted`, `killed_by: cancelled`; no event reaches it after. What the
/// interrupted code still writes is kept for the session's next execution, as for a caller that
/// hung up. When the session was started with that key too, its interpreter ends with it, and
/// the stream ends with `died` (found by a new-user trial: `interrupted` let the caller believe
/// its variables were still there).
fn held_by_key(
    hold: KeyHold,
    session: Arc<Session>,
    execution: u64,
    events: mpsc::Receiver<MeteredEvent>,
) -> mpsc::Receiver<MeteredEvent> {
    let (sender, held) = mpsc::channel(64);
    let status = match session.started_with_key.as_deref() == Some(hold.key().id.as_str()) {
        true => ExecutionStatus::Died,
        false => ExecutionStatus::Interrupted,
    };
    let is_end = |metered: &MeteredEvent| matches!(metered.event, SessionEvent::End { .. });
    hold.forward(events, sender, is_end, move |_| {
        // Only while the execution goes on: the idle runner must not take a SIGINT.
        if session.one_at_a_time.available_permits() == 0
            && let Err(Some(errno)) = interrupt(&session)
        {
            tracing::warn!(%errno, "could not interrupt a session's execution whose key was revoked");
        }
        Some(MeteredEvent::unmetered(SessionEvent::End {
            status,
            execution,
            killed_by: Some(bkg_schema::KilledBy::Cancelled),
            error: None,
        }))
    });
    held
}

/// The sessions going on, by sandbox id.
#[derive(Default)]
pub struct SessionTable {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl SessionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // Every change is one insert or remove: the map stays consistent under a panic elsewhere.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the live session of sandbox `id` is, if one is.
    pub(super) fn info_of(&self, id: &str) -> Option<SessionInfo> {
        self.live(id).map(|session| session.info())
    }

    /// The sandbox id and session name of the session whose interpreter is run `run_id`.
    pub(super) fn holding_run(&self, run_id: &str) -> Option<(String, String)> {
        let sessions = self.lock();
        let session = sessions.values().find(|session| session.tracker.run_id == run_id)?;
        Some((session.sandbox_id.clone(), session.name.clone()))
    }

    /// The live session of sandbox `id`; one whose interpreter has ended is forgotten.
    fn live(&self, id: &str) -> Option<Arc<Session>> {
        let mut sessions = self.lock();
        let session = sessions.get(id)?;
        if session.tracker.watch().borrow().phase >= RunPhase::Ended {
            sessions.remove(id);
            return None;
        }
        Some(Arc::clone(session))
    }
}

/// The execution going on: where its events go, and the permit that keeps a second one out.
type Current = (mpsc::Sender<MeteredEvent>, OwnedSemaphorePermit);

/// How many bytes of events a session may have on their way to its caller (in the channels
/// between the runner's output and the caller's connection): events wait for room beyond it,
/// and so, through the runner's stdout, does the code. Counting events alone let a slow caller
/// make the agent hold 128 of them, a figure's each up to `MAX_EVENT_LINE_BYTES`: 2 GiB.
const EVENTS_ON_THEIR_WAY_BYTES: usize = 32 * 1024 * 1024;

/// An event with its share of its session's `EVENTS_ON_THEIR_WAY_BYTES`, given back when the
/// caller takes the event.
struct MeteredEvent {
    event: SessionEvent,
    _share: Option<OwnedSemaphorePermit>,
}

impl MeteredEvent {
    /// An event too small to count (the kept output of `KEPT_BETWEEN_BYTES` at most, an end).
    fn unmetered(event: SessionEvent) -> Self {
        Self { event, _share: None }
    }
}

/// An execution's events, as its caller takes them.
pub struct SessionEvents(mpsc::Receiver<MeteredEvent>);

impl SessionEvents {
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        self.0.recv().await.map(|metered| metered.event)
    }

    /// The next event if one is queued already.
    pub fn try_recv(&mut self) -> Option<SessionEvent> {
        self.0.try_recv().ok().map(|metered| metered.event)
    }
}

/// Output written between executions (a timer, a thread) that is kept for the next one.
const KEPT_BETWEEN_BYTES: usize = 1 << 20;

/// Where the runner's events go: to the execution going on, or, between executions, kept for
/// the next one, whose caller gets them first.
#[derive(Default)]
struct Delivery {
    current: Option<Current>,
    stdout: String,
    stderr: String,
    /// Bytes beyond `KEPT_BETWEEN_BYTES`, not kept.
    dropped: usize,
}

impl Delivery {
    /// Keeps `text` as far as the bound allows; once output is dropped, all that follows is too,
    /// so that what is kept is the output's start, whole.
    fn keep(&mut self, name: StreamName, text: String) {
        let room = KEPT_BETWEEN_BYTES.saturating_sub(self.stdout.len() + self.stderr.len());
        let mut fits = if self.dropped > 0 { 0 } else { room.min(text.len()) };
        while !text.is_char_boundary(fits) {
            fits -= 1;
        }
        self.dropped += text.len() - fits;
        let kept = match name {
            StreamName::Stdout => &mut self.stdout,
            StreamName::Stderr => &mut self.stderr,
        };
        kept.push_str(&text[..fits]);
    }

    /// What was kept since the last execution, as the events that open the next one.
    fn take_kept(&mut self) -> Vec<SessionEvent> {
        let mut events = Vec::new();
        let cut = self.dropped > 0;
        for (name, text) in [(StreamName::Stdout, &mut self.stdout), (StreamName::Stderr, &mut self.stderr)] {
            if !text.is_empty() {
                let mut text = std::mem::take(text);
                // Cut at the bound, it may end mid-line: the next execution's output starts a
                // line of its own (found by a new-user trial: `000104next`).
                if cut && !text.ends_with('\n') {
                    text.push('\n');
                }
                events.push(SessionEvent::Stream { name, text });
            }
        }
        if self.dropped > 0 {
            let text = format!(
                "\nbkg: {} more bytes of output written between executions were not kept (the first {} were)\n",
                std::mem::take(&mut self.dropped),
                bkg_schema::units::format_size(KEPT_BETWEEN_BYTES as u64)
            );
            events.push(SessionEvent::Stream { name: StreamName::Stderr, text });
        }
        events
    }
}

struct Session {
    name: String,
    sandbox_id: String,
    language: Language,
    tracker: Arc<RunTracker>,
    stdin: mpsc::Sender<RunInput>,
    executions: AtomicU64,
    one_at_a_time: Arc<Semaphore>,
    delivery: Mutex<Delivery>,
    /// `EVENTS_ON_THEIR_WAY_BYTES`, shared by the events on their way.
    events_room: Arc<Semaphore>,
    /// The key the session was started with: its interpreter's run ends with it.
    started_with_key: Option<String>,
}

impl Session {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            name: self.name.clone(),
            sandbox_id: self.sandbox_id.clone(),
            language: self.language,
            run_id: self.tracker.run_id.clone(),
            executions: self.executions.load(Ordering::Relaxed),
            busy: self.one_at_a_time.available_permits() == 0,
        }
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.delivery.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Passes an event to the execution going on; its end releases the session. Output that
    /// comes between executions, or of one whose caller went away, is kept for the next one.
    async fn deliver(&self, event: SessionEvent) {
        let sender = {
            let mut delivery = self.delivery();
            let heard = delivery.current.as_ref().is_some_and(|(sender, _)| !sender.is_closed());
            match (event, heard) {
                (SessionEvent::Stream { name, text }, false) => {
                    delivery.keep(name, text);
                    return;
                }
                (event @ SessionEvent::End { .. }, _) => {
                    delivery.current.take().map(|(sender, _permit)| (sender, event))
                }
                (event, _) => delivery.current.as_ref().map(|(sender, _)| (sender.clone(), event)),
            }
        };
        if let Some((sender, event)) = sender {
            let bytes = event.footprint().min(EVENTS_ON_THEIR_WAY_BYTES);
            // Events dropped with a caller that hung up give their shares back.
            let share = match bytes {
                0 => None,
                _ => Arc::clone(&self.events_room).acquire_many_owned(bytes as u32).await.ok(),
            };
            // A caller that hung up misses the rest; the execution still runs to its end.
            let _ = sender.send(MeteredEvent { event, _share: share }).await;
        }
    }
}

/// How much output without a newline a session holds back before passing it on.
const UNENDED_LINE_BYTES: usize = 64 * 1024;

/// The longest line an event may take (a figure's PNG, base64). A longer one (a result or figure
/// too large to show, or code writing the mark itself) is left out up to its end, with a word on
/// stderr: code that writes a mark and no newline cannot make the agent hold all it writes. The
/// runners send long output as several events (session/runner.py, session/runner.js).
const MAX_EVENT_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The runner's stdout, split into events and output as it comes.
#[derive(Default)]
struct RunnerOutput {
    /// What came after the last newline.
    pending: Vec<u8>,
    /// Where in it the last event mark is (an event whose line has not ended).
    mark: Option<usize>,
    /// A line too long for an event is being left out, up to its newline.
    skipping: bool,
}

impl RunnerOutput {
    /// The events that `bytes` completes. Each piece is searched once (found by a new-user
    /// trial: searching all of it again at every piece cost the agent CPU by the square of the
    /// output's length, 12 s for 20 MB written at once).
    fn take(&mut self, bytes: &[u8]) -> Vec<SessionEvent> {
        let mut events = Vec::new();
        let bytes = match self.skipping {
            false => bytes,
            true => match bytes.iter().position(|byte| *byte == b'\n') {
                None => return events,
                Some(end) => {
                    self.skipping = false;
                    &bytes[end + 1..]
                }
            },
        };
        let pending = &mut self.pending;
        let searched = pending.len();
        pending.extend_from_slice(bytes);
        let mut start = 0;
        let mut from = searched;
        while let Some(offset) = pending[from..].iter().position(|byte| *byte == b'\n') {
            let end = from + offset;
            for event in parse_line(pending[start..=end].to_vec()) {
                push_merged(&mut events, event);
            }
            start = end + 1;
            from = start;
        }
        let fresh = searched.max(start);
        let mark = pending[fresh..]
            .iter()
            .rposition(|byte| *byte == EVENT_MARK)
            .map(|at| fresh + at)
            .or(self.mark.filter(|at| *at >= start));
        if let Some(at) = mark
            && pending.len() - at > MAX_EVENT_LINE_BYTES
        {
            events.extend(output_events(&pending[start..at]));
            let said = format!(
                "bkg: left out a line of over {} that the session's interpreter began as an event (a result or \
                 figure too large to show)\n",
                bkg_schema::units::format_size(MAX_EVENT_LINE_BYTES as u64)
            );
            events.push(SessionEvent::Stream { name: StreamName::Stderr, text: said });
            pending.clear();
            self.mark = None;
            self.skipping = true;
            return events;
        }
        // A long stretch of output without a newline (Node's, a subprocess's) is passed on as it
        // comes, but for the event its mark may begin and a character cut.
        if pending.len() - start > UNENDED_LINE_BYTES {
            let upto = mark.unwrap_or(pending.len());
            let rest = &pending[start..upto];
            let whole = match std::str::from_utf8(rest) {
                Err(error) if error.error_len().is_none() => error.valid_up_to(),
                _ => rest.len(),
            };
            events.extend(output_events(&rest[..whole]));
            start += whole;
        }
        pending.drain(..start);
        self.mark = mark.map(|at| at - start);
        events
    }
}

/// Adds `event` to `events`, as more text of the last one when both are stdout: output the code
/// printed line by line is one event per piece the agent read, not one per line (found measuring
/// `bkg exec`: 300,000 printed lines took 3.3 s, bkg and the agent each a second or more of
/// CPU for as many events).
fn push_merged(events: &mut Vec<SessionEvent>, event: SessionEvent) {
    if let SessionEvent::Stream { name: StreamName::Stdout, text } = &event
        && let Some(SessionEvent::Stream { name: StreamName::Stdout, text: last }) = events.last_mut()
    {
        last.push_str(text);
        return;
    }
    events.push(event);
}

/// `bytes` of output as stdout events of at most `UNENDED_LINE_BYTES` each, as the runners send
/// long output, never cut inside a character.
fn output_events(bytes: &[u8]) -> Vec<SessionEvent> {
    let mut events = Vec::new();
    let mut taken = 0;
    while taken < bytes.len() {
        let mut end = (taken + UNENDED_LINE_BYTES).min(bytes.len());
        // A UTF-8 continuation byte is 0b10xxxxxx.
        while end < bytes.len() && end > taken + 1 && bytes[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let text = String::from_utf8_lossy(&bytes[taken..end]).into_owned();
        events.push(SessionEvent::Stream { name: StreamName::Stdout, text });
        taken = end;
    }
    events
}

/// Reads the runner's output for the session's whole life, turning it into events.
async fn read_output(service: Arc<Service>, session: Arc<Session>, mut output: mpsc::Receiver<RunOutput>) {
    let mut lines = RunnerOutput::default();
    while let Some(piece) = output.recv().await {
        match piece {
            RunOutput::Stdout(bytes) => {
                for event in lines.take(&bytes) {
                    session.deliver(event).await;
                }
            }
            RunOutput::Stderr(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                session.deliver(SessionEvent::Stream { name: StreamName::Stderr, text }).await;
            }
            RunOutput::Started(_) | RunOutput::Archive(_) | RunOutput::Progress(_) => {}
        }
    }
    // The interpreter is gone (it exited, was killed, or the sandbox was stopped): once its run
    // is recorded, the caller learns what ended it.
    let execution = session.executions.load(Ordering::Relaxed);
    let tracker = &session.tracker;
    let run = match wait_until(tracker.watch(), END_PATIENCE, |progress| progress.phase >= RunPhase::Recorded).await {
        true => service.store.get_run(&tracker.run_id).await.ok().flatten(),
        false => None,
    };
    // A run that never started its interpreter (its packages failed to install) says why (found
    // by a new-user trial: `bkg exec` said only that the interpreter had ended).
    let (killed_by, error) = run.map(|run| (run.killed_by, run.error)).unwrap_or_default();
    session.deliver(SessionEvent::End { status: ExecutionStatus::Died, execution, killed_by, error }).await;
}

/// A line of the runner's stdout: an event, output, or output the code wrote without a final
/// newline (`process.stdout.write("partial")`, a subprocess) followed by the runner's next event.
fn parse_line(line: Vec<u8>) -> Vec<SessionEvent> {
    let output = |bytes: &[u8]| SessionEvent::Stream {
        name: StreamName::Stdout,
        text: String::from_utf8_lossy(bytes).into_owned(),
    };
    let Some(mark) = line.iter().rposition(|byte| *byte == EVENT_MARK) else {
        return vec![output(&line)];
    };
    match serde_json::from_slice::<SessionEvent>(&line[mark + 1..]) {
        Ok(event) if mark == 0 => vec![event],
        Ok(event) => vec![output(&line[..mark]), event],
        Err(_) => vec![output(&line)],
    }
}

impl Service {
    fn session_of(&self, id: &str, name: &str) -> OpResult<Arc<Session>> {
        match self.sessions.live(id) {
            Some(session) if session.name == name => Ok(session),
            _ => Err(OpError::NotFound(format!(
                "no session `{name}` in sandbox {}: `bkg exec` (POST …/sessions) starts one",
                bkg_schema::sandbox::sandbox_name_of(id)
            ))),
        }
    }

    /// Starts a session's interpreter in sandbox `id`, which must be idle.
    pub async fn create_session(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        new: NewSession,
    ) -> OpResult<SessionInfo> {
        let stored = self.visible_sandbox(principal, id).await?;
        let name = new.name.unwrap_or_else(|| bkg_schema::files::DEFAULT_SESSION.to_owned());
        if !is_dns_label(&name) {
            return Err(OpError::Invalid(format!("session name `{name}` must be a DNS label (a-z, 0-9, -)")));
        }
        if let Some(existing) = self.sessions.live(id) {
            return Err(OpError::Conflict(format!(
                "sandbox {} already has session `{}`, and a sandbox has one session at a time: use it (`bkg exec {} --session {}`), or end it with `bkg stop {}`",
                stored.definition.name, existing.name, stored.definition.name, existing.name, stored.definition.name
            )));
        }
        let language = new.language.unwrap_or(stored.definition.language);
        let runner = match language {
            Language::Python => PYTHON_RUNNER,
            Language::Node => NODE_RUNNER,
        };
        let placeholder = ExecRequest::command("true");
        let (definition, validated) = self.validate_sandbox_exec(principal, id, placeholder, None).await?;
        let mut validated = self.engine.session_run(validated, language, runner)?;
        if let Some(cap) = user_timeout_cap(principal, &self.auth.policy.user) {
            validated.limits.timeout_ms = validated.limits.timeout_ms.min(cap);
        }
        let accepted = self.accept_in_sandbox(principal, &definition, validated)?;
        let tracker = accepted.tracker();
        let (stdin, input) = mpsc::channel(16);
        let (output_sender, output) = mpsc::channel(64);
        drop(self.start(accepted, input, Some(output_sender)));
        let session = Arc::new(Session {
            name,
            sandbox_id: id.to_owned(),
            language,
            tracker,
            stdin,
            executions: AtomicU64::new(0),
            one_at_a_time: Arc::new(Semaphore::new(1)),
            delivery: Mutex::new(Delivery::default()),
            events_room: Arc::new(Semaphore::new(EVENTS_ON_THEIR_WAY_BYTES)),
            started_with_key: match principal {
                Principal::Key(key) => Some(key.id.clone()),
                Principal::Local { .. } | Principal::User(_) => None,
            },
        });
        tokio::spawn(read_output(Arc::clone(self), Arc::clone(&session), output));
        self.sessions.lock().insert(id.to_owned(), Arc::clone(&session));
        Ok(session.info())
    }

    /// The name of the session that holds sandbox `id`, if one does.
    pub(super) fn session_holding(&self, id: &str) -> Option<String> {
        self.sessions.live(id).map(|session| session.name.clone())
    }

    pub async fn list_sessions(&self, principal: &Principal, id: &str) -> OpResult<Vec<SessionInfo>> {
        Ok(self.sandbox_session(principal, id).await?.into_iter().collect())
    }

    /// The session that holds sandbox `id`, if one does (a sandbox has one at a time): what a
    /// transport names when it refuses a run beside it (mcp.rs, ui/ops.rs).
    pub async fn sandbox_session(&self, principal: &Principal, id: &str) -> OpResult<Option<SessionInfo>> {
        self.visible_sandbox(principal, id).await?;
        Ok(self.sessions.info_of(id))
    }

    pub async fn get_session(&self, principal: &Principal, id: &str, name: &str) -> OpResult<SessionInfo> {
        self.visible_sandbox(principal, id).await?;
        Ok(self.session_of(id, name)?.info())
    }

    /// Runs `code` in the session; its events come on the receiver as they happen, the last
    /// one `end`. A second execution while one goes on is refused (interrupt it or wait).
    pub async fn execute_in_session(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
        code: String,
    ) -> OpResult<SessionEvents> {
        self.visible_sandbox(principal, id).await?;
        let session = self.session_of(id, name)?;
        let permit = Arc::clone(&session.one_at_a_time).try_acquire_owned().map_err(|_| {
            OpError::Conflict(format!(
                "session `{name}` is running an execution: interrupt it (`bkg exec {}{} --interrupt`) or wait for its end",
                bkg_schema::sandbox::sandbox_name_of(id),
                bkg_schema::files::session_flag(name)
            ))
        })?;
        let execution = session.executions.fetch_add(1, Ordering::Relaxed) + 1;
        let mut request = serde_json::to_vec(&serde_json::json!({ "code": code, "execution": execution }))
            .map_err(|error| OpError::Internal(error.to_string()))?;
        request.push(b'\n');
        // The interpreter's input is reserved before the execution is taken on, and then sent
        // with no wait: a caller that goes away while the input is full leaves no execution
        // that holds the session and was never sent.
        let Ok(input) = session.stdin.reserve().await else {
            return Err(OpError::NotFound(format!("session `{name}` has ended: create it again")));
        };
        let (sender, events) = mpsc::channel(64);
        {
            let mut delivery = session.delivery();
            // At most three events into a new channel of 64: never full. Sent under the lock, so
            // that no newer output overtakes them.
            for kept in delivery.take_kept() {
                let _ = sender.try_send(MeteredEvent::unmetered(kept));
            }
            delivery.current = Some((sender, permit));
        }
        input.send(RunInput::Stdin(request));
        match KeyHold::of(&self.store, principal) {
            Some(hold) => Ok(SessionEvents(held_by_key(hold, session, execution, events))),
            None => Ok(SessionEvents(events)),
        }
    }

    /// Interrupts the execution going on (SIGINT to the interpreter); the session stays.
    pub async fn interrupt_session(&self, principal: &Principal, id: &str, name: &str) -> OpResult<SessionInfo> {
        self.visible_sandbox(principal, id).await?;
        let session = self.session_of(id, name)?;
        if session.one_at_a_time.available_permits() > 0 {
            // Nothing is running: there is nothing to interrupt.
            return Ok(session.info());
        }
        // Its interpreter waits for a place still: the interrupt withdraws it, as a cancel does a
        // queued run's, and the session ends (found by a new-user trial: the execution ran once a
        // place freed, after its caller's Ctrl-C, and the session then held the place).
        if session.tracker.is_waiting_for_place() {
            session.tracker.stop();
            return Ok(session.info());
        }
        interrupt(&session).map_err(|error| match error {
            None => OpError::NotFound(format!("session `{name}` has no interpreter running")),
            Some(errno) => OpError::Internal(format!("interrupt the session: {errno}")),
        })?;
        Ok(session.info())
    }

    /// Ends the session's interpreter and waits until its sandbox is free.
    async fn end_session(&self, session: &Session) {
        session.tracker.stop();
        if !wait_until(session.tracker.watch(), END_PATIENCE, |progress| progress.is_settled()).await {
            tracing::warn!(run = %session.tracker.run_id, "a session's run did not end in time");
        }
        let mut sessions = self.sessions.lock();
        if sessions.get(&session.sandbox_id).is_some_and(|live| Arc::ptr_eq(&live.tracker, &session.tracker)) {
            sessions.remove(&session.sandbox_id);
        }
    }

    /// A fresh interpreter for the session: same name and language, its state gone.
    pub async fn restart_session(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> OpResult<SessionInfo> {
        self.visible_sandbox(principal, id).await?;
        let session = self.session_of(id, name)?;
        self.end_session(&session).await;
        let new = NewSession { name: Some(session.name.clone()), language: Some(session.language) };
        self.create_session(principal, id, new).await
    }

    pub async fn delete_session(&self, principal: &Principal, id: &str, name: &str) -> OpResult<()> {
        self.visible_sandbox(principal, id).await?;
        let session = self.session_of(id, name)?;
        self.end_session(&session).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_lines_are_events_and_the_rest_is_output() {
        let end = SessionEvent::End { status: ExecutionStatus::Ok, execution: 2, killed_by: None, error: None };
        let event = parse_line(b"\x1e{\"type\":\"end\",\"status\":\"ok\",\"execution\":2}\n".to_vec());
        assert_eq!(event, vec![end.clone()]);
        let raw = parse_line(b"from a subprocess\n".to_vec());
        assert_eq!(raw, vec![SessionEvent::Stream { name: StreamName::Stdout, text: "from a subprocess\n".into() }]);
        let garbled = parse_line(b"\x1enot json\n".to_vec());
        assert!(matches!(garbled[..], [SessionEvent::Stream { name: StreamName::Stdout, .. }]));
        let unended = parse_line(b"partial\x1e{\"type\":\"end\",\"status\":\"ok\",\"execution\":2}\n".to_vec());
        assert_eq!(unended, vec![SessionEvent::Stream { name: StreamName::Stdout, text: "partial".into() }, end]);
    }

    #[test]
    fn output_lines_read_together_are_one_event_up_to_the_next_event() {
        let mut lines = RunnerOutput::default();
        let end = SessionEvent::End { status: ExecutionStatus::Ok, execution: 1, killed_by: None, error: None };
        let text = |text: &str| SessionEvent::Stream { name: StreamName::Stdout, text: text.into() };
        let events = lines.take(b"one\ntwo\nthr");
        assert_eq!(events, vec![text("one\ntwo\n")]);
        let events = lines.take(b"ee\nfour\x1e{\"type\":\"end\",\"status\":\"ok\",\"execution\":1}\nfive\n");
        assert_eq!(events, vec![text("three\nfour"), end, text("five\n")]);
    }

    #[test]
    fn an_event_split_across_pieces_is_one_event_and_a_mark_without_an_end_is_output_past_its_bound() {
        let mut lines = RunnerOutput::default();
        assert_eq!(lines.take(b"before\x1e{\"type\":\"end\",\"sta"), vec![]);
        let end = SessionEvent::End { status: ExecutionStatus::Ok, execution: 2, killed_by: None, error: None };
        let text = |text: &str| SessionEvent::Stream { name: StreamName::Stdout, text: text.into() };
        assert_eq!(lines.take(b"tus\":\"ok\",\"execution\":2}\n"), vec![text("before"), end]);

        // A mark and then no newline: the agent holds the line up to the bound, then leaves it
        // out up to its end, and says so.
        let piece = vec![b'x'; 1024 * 1024];
        let mut passed = lines.take(b"\x1e").len();
        for _ in 1..MAX_EVENT_LINE_BYTES / piece.len() {
            passed += lines.take(&piece).len();
        }
        assert_eq!(passed, 0, "held while it may still be an event");
        assert_eq!(lines.pending.len(), MAX_EVENT_LINE_BYTES - piece.len() + 1);
        let past = lines.take(&piece);
        assert!(
            matches!(&past[..], [SessionEvent::Stream { name: StreamName::Stderr, text }] if text.starts_with("bkg: left out a line of over 16MiB")),
            "{past:?}"
        );
        assert!(lines.pending.is_empty() && lines.mark.is_none(), "{} bytes held", lines.pending.len());
        for _ in 0..8 {
            assert_eq!(lines.take(&piece), vec![]);
            assert!(lines.pending.is_empty(), "nothing more held: {}", lines.pending.len());
        }
        // Its end ends the leaving out.
        assert_eq!(lines.take(b"xx\nafter\n"), vec![text("after\n")]);
        // A long line of characters of several bytes is never cut inside one.
        let mut lines = RunnerOutput::default();
        let text = format!("a{}", "é".repeat(UNENDED_LINE_BYTES));
        let events = lines.take(text.as_bytes());
        let joined: String = events
            .iter()
            .map(|event| match event {
                SessionEvent::Stream { text, .. } => text.clone(),
                _ => String::new(),
            })
            .collect();
        assert!(joined == text && events.len() > 1, "{} events", events.len());
    }

    #[test]
    fn output_between_executions_is_kept_up_to_its_bound_and_what_is_not_is_counted() {
        let mut delivery = Delivery::default();
        delivery.keep(StreamName::Stdout, "a\n".into());
        delivery.keep(StreamName::Stderr, "b\n".into());
        delivery.keep(StreamName::Stdout, "c\n".into());
        delivery.keep(StreamName::Stdout, "x".repeat(KEPT_BETWEEN_BYTES));
        delivery.keep(StreamName::Stdout, "\n".into());
        let kept = delivery.take_kept();
        assert_eq!(kept.len(), 3, "{kept:?}");
        let SessionEvent::Stream { name: StreamName::Stdout, text } = &kept[0] else { panic!("{kept:?}") };
        // A newline of bkg's own ends what was cut mid-line.
        assert_eq!(text.len() + "b\n".len(), KEPT_BETWEEN_BYTES + 1, "the output's start, up to the bound");
        assert!(text.starts_with("a\nc\nxx") && text.ends_with("x\n"), "in order");
        assert_eq!(kept[1], SessionEvent::Stream { name: StreamName::Stderr, text: "b\n".into() });
        let SessionEvent::Stream { text, .. } = &kept[2] else { panic!("{kept:?}") };
        // 6 bytes of the bound went to a, b and c; the newline after the cut is dropped too.
        assert!(text.contains("bkg: 7 more bytes"), "{text}");
        assert!(delivery.take_kept().is_empty(), "taken once");
    }
}
