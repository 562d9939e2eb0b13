//! `bkg exec NAME --session S` and `bkg repl NAME`: code run in a session of a persistent
//! sandbox (`/api/v1/sandboxes/{id}/sessions…`), whose state stays between executions. Output
//! is printed as it comes; the last expression's value goes to stdout like a prompt shows it;
//! an error's traceback to stderr; images and other rich output are named on stderr.

use std::io::{IsTerminal, Read};

use bkg_schema::Language;
use bkg_schema::files::{ExecuteRequest, ExecutionStatus, NewSession, SessionEvent, SessionInfo, StreamName};

use crate::args::{ExecArgs, ProjectArgs, ReplArgs};
use crate::client::{AgentClient, api_error};
use crate::exit::{CliError, SUCCESS};
use crate::out::{Printer, WriterThread};
use crate::settings::Settings;
use crate::stream::StopSignals;
use futures_util::FutureExt as _;

/// The session `name` of sandbox `id`, made if it does not exist yet (then `true`). An existing
/// session of another language than `language` is refused: its interpreter would run the code
/// as its own.
async fn ensure_session(
    client: &AgentClient,
    (sandbox, id): (&str, &str),
    name: &str,
    language: Option<Language>,
) -> Result<(SessionInfo, bool), CliError> {
    if let Some(info) = client.get_found::<SessionInfo>(&format!("/api/v1/sandboxes/{id}/sessions/{name}")).await? {
        return match language {
            Some(language) if language != info.language => Err(CliError::usage(format!(
                "session `{name}` runs {}, not {}: leave out --type, or end the session first (`bkg stop {sandbox}`)",
                info.language.as_str(),
                language.as_str()
            ))),
            _ => Ok((info, false)),
        };
    }
    let new = NewSession { name: Some(name.to_owned()), language };
    Ok((client.post_json(&format!("/api/v1/sandboxes/{id}/sessions"), &new).await?, true))
}

/// The agent and sandbox `name`'s id, the sandbox given as cave.yaml has it now.
async fn connect(settings: &Settings, project: &ProjectArgs, name: &str) -> Result<(AgentClient, String), CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let id = crate::files_cmd::find_sandbox(&client, project, name, settings.out).await?;
    Ok((client, id))
}

pub async fn exec(settings: &Settings, args: ExecArgs) -> Result<i32, CliError> {
    let (client, id) = connect(settings, &args.project, &args.name).await?;
    let session = &args.session;
    if args.restart {
        return restart(settings, &args, client, id).await;
    }
    if args.interrupt {
        let action = "interrupt";
        let found: Option<SessionInfo> =
            client.post_found(&format!("/api/v1/sandboxes/{id}/sessions/{session}/{action}")).await?;
        let Some(info) = found else {
            // The sandbox's one session under another name is the one meant, most likely: named,
            // not passed over (found by a new-user trial: "nothing to interrupt" while it ran).
            let sandbox: Option<bkg_schema::sandbox::SandboxInfo> =
                client.get_found(&format!("/api/v1/sandboxes/{id}")).await?;
            if let Some(other) = sandbox.and_then(|sandbox| sandbox.session).filter(|other| other.name != *session) {
                return Err(CliError::usage(format!(
                    "{} has no session {session}; its session is {}: `bkg exec {}{} --interrupt`",
                    args.name,
                    other.name,
                    args.name,
                    bkg_schema::files::session_flag(&other.name)
                )));
            }
            // Nothing runs in a session that is not there.
            settings.out.note(format_args!("{} has no session {session}: nothing to interrupt", args.name));
            if settings.out.is_json() {
                settings.out.json(&serde_json::Value::Null)?;
            }
            return Ok(SUCCESS);
        };
        if settings.out.is_json() {
            settings.out.json(&info)?;
        } else if !info.busy {
            settings.out.note(format_args!("session {session} of {} is idle: nothing to interrupt", args.name));
        } else {
            // Sent, not done: code that catches or ignores SIGINT goes on (found by a new-user
            // trial: "interrupted" was said of an execution that went on).
            settings.out.note(format_args!(
                "sent an interrupt (SIGINT) to the execution in session {session} of {}; code that catches or ignores \
                 it goes on: `bkg exec {}{} --restart` ends the session's interpreter",
                args.name,
                args.name,
                bkg_schema::files::session_flag(session)
            ));
        }
        return Ok(SUCCESS);
    }
    let code = match args.code {
        Some(code) => code,
        None => {
            if std::io::stdin().is_terminal() {
                return Err(CliError::usage("give the code with -c CODE or pipe it in (or use `bkg repl`)"));
            }
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .map_err(|error| CliError::usage(format!("cannot read the code from stdin: {error}")))?;
            code
        }
    };
    let (info, made) = ensure_session(&client, (&args.name, &id), session, args.language).await?;
    // Said each time one is made: after an agent's restart (its interpreters go with it) the
    // code would otherwise meet a NameError for what it set before, with no word why.
    if made {
        settings.out.note(format_args!(
            "started session {session} of {} (a fresh {} interpreter: nothing of an earlier session is in it)",
            args.name,
            info.language.as_str()
        ));
    }
    // One registration for the whole execution: a `ctrl_c()` made anew each turn of the loop
    // misses a Ctrl-C that comes while output is being printed.
    let mut signals = StopSignals::listen()?;
    let Some((ended, _)) = execute(&client, &id, session, &code, &mut signals, settings.out).await? else {
        return Err(CliError::usage(format!(
            "session {session} of {} ended before the code reached it (`bkg stop`, or the agent restarted): run it again, in a fresh session",
            args.name
        )));
    };
    Ok(crate::exit::of_execution(ended.0, ended.1))
}

/// `bkg exec NAME --restart`: the session's run ends with the sandbox's stop, and a fresh one
/// starts with cave.yaml's definition as it is now (sent when the sandbox was found), in the
/// language it had unless `--type` says otherwise; none there is a fresh start too.
async fn restart(settings: &Settings, args: &ExecArgs, client: AgentClient, id: String) -> Result<i32, CliError> {
    let session = &args.session;
    let had = client.get_found::<SessionInfo>(&format!("/api/v1/sandboxes/{id}/sessions/{session}")).await?;
    if had.is_some() {
        let _: bkg_schema::sandbox::Stopped = client.post(&format!("/api/v1/sandboxes/{id}/stop")).await?;
        // Given again now that the sandbox is stopped: a running one keeps what it started with.
        crate::files_cmd::find_sandbox(&client, &args.project, &args.name, settings.out).await?;
    }
    let language = args.language.or(had.as_ref().map(|info| info.language));
    let (info, _) = ensure_session(&client, (&args.name, &id), session, language).await?;
    if settings.out.is_json() {
        settings.out.json(&info)?;
    } else {
        let what = if had.is_some() { "restarted" } else { "started (there was none to restart)" };
        settings.out.note(format_args!(
            "{what} session {session} of {}: a fresh {} interpreter, with cave.yaml's definition as it is now",
            args.name,
            info.language.as_str()
        ));
    }
    Ok(SUCCESS)
}

/// How an execution ended: its status and, when its interpreter died, what killed it.
type Ended = (ExecutionStatus, Option<bkg_schema::KilledBy>);

/// Runs `code` in the session and prints its events as they come; Ctrl-C (each of `interrupts`)
/// interrupts it. Says too whether its printed output ended mid-line.
async fn execute(
    client: &AgentClient,
    id: &str,
    session: &str,
    code: &str,
    interrupts: &mut StopSignals,
    out: Printer,
) -> Result<Option<(Ended, bool)>, CliError> {
    let path = format!("/api/v1/sandboxes/{id}/sessions/{session}/execute");
    let request = client.http().post(client.url(&path)).json(&ExecuteRequest { code: code.to_owned() });
    // An execution may rightly run long: no patience bound on its answer.
    let response = request.send().await.map_err(|error| client.unreachable(error))?;
    // The session ended since it was found (`bkg stop`, the agent restarted): `None`.
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    let mut stream = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut mid_line = false;
    // SIGTERM or SIGHUP, when heard (`timeout`, a service manager, a closed terminal), interrupts
    // the execution as Ctrl-C does, but bkg then waits for its end only as long as a Ctrl-C's
    // note waits (was: bkg died at once and the execution went on, holding the session).
    let mut terminated_by: Option<i32> = None;
    use futures_util::StreamExt as _;
    // The events are shown on a thread of their own (out::WriterThread): Ctrl-C is heard while
    // the output waits for a reader that takes none (`| less`).
    let mut shown = WriterThread::start("execution-output", SessionEvent::footprint, move |event: SessionEvent| {
        show(&event, out).transpose()
    })?;
    // Code that catches or ignores SIGINT goes on after an interrupt: said once it has not ended
    // soon after one, with what ends it (found by a new-user trial: Ctrl-C seemed to do nothing).
    let still_going = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(still_going);
    let mut said_still_going = false;
    let mut said_unread = false;
    // Our stdout's reader gone (`bkg exec box -c '…' | head`): the execution is interrupted, as
    // a Ctrl-C would, rather than left printing for nobody until it ends by itself.
    let reader_gone = crate::out::stdout_closed();
    tokio::pin!(reader_gone);
    let mut heard_reader_gone = false;
    let restart = format!(
        "bkg exec {}{} --restart",
        bkg_schema::sandbox::sandbox_name_of(id),
        bkg_schema::files::session_flag(session)
    );
    let interrupt =
        async |still_going: std::pin::Pin<&mut tokio::time::Sleep>, said_unread: &mut bool, behind: bool| {
            let _: Result<SessionInfo, CliError> =
                client.post(&format!("/api/v1/sandboxes/{id}/sessions/{session}/interrupt")).await;
            still_going.reset(tokio::time::Instant::now() + STILL_GOING_NOTE_AFTER);
            // Said of Ctrl-C only: SIGTERM and SIGHUP leave at once then (below).
            let by_ctrl_c = crate::stream::cancelled_by_signal().is_none_or(|signal| signal == libc::SIGINT);
            if behind && by_ctrl_c && !std::mem::replace(said_unread, true) {
                out.note(format_args!(
                    "interrupting the execution; its output waits for a reader that takes none (Ctrl-C again to quit \
                 without it)"
                ));
            }
        };
    // The interrupted code's end comes after the output the reader has not taken, so it cannot
    // be waited for: a Ctrl-C after the interrupt, the output still behind, leaves, and the agent
    // keeps what the code still writes for the session's next execution, as for a caller that
    // went (found by a new-user trial: each Ctrl-C was one more interrupt, and bkg stayed until
    // the reader went).
    let quit_unwritten = |signal: i32| quit_with_output_unwritten(signal, out);
    loop {
        // Every Ctrl-C is an interrupt, as at the interpreter's own prompt: code that catches
        // one gets the next.
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            Some(signal) = interrupts.next() => {
                heard(signal, &mut terminated_by, out);
                let behind = shown.is_behind();
                if behind && said_unread {
                    quit_unwritten(signal);
                }
                interrupt(still_going.as_mut(), &mut said_unread, behind).await;
                continue;
            }
            () = &mut reader_gone, if !heard_reader_gone => {
                heard_reader_gone = true;
                let _: Result<SessionInfo, CliError> =
                    client.post(&format!("/api/v1/sandboxes/{id}/sessions/{session}/interrupt")).await;
                continue;
            }
            () = &mut still_going, if !said_still_going => {
                said_still_going = true;
                out.note(format_args!(
                    "the execution goes on after the interrupt (its code may catch or ignore SIGINT): `{restart}` ends \
                     the session's interpreter, and its variables with it"
                ));
                if let Some(signal) = terminated_by {
                    std::process::exit(crate::exit::SIGNALLED + signal);
                }
                continue;
            }
        };
        let Some(chunk) = chunk else {
            shown_to_the_end(&mut shown, interrupts, out).await?;
            return Err(CliError::usage("the agent ended the execution without its end"));
        };
        // The stream broke off: the agent stopped or crashed (found by a new-user trial: the
        // transport's own words, "unexpected EOF during chunk size line").
        let chunk = chunk.map_err(|error| {
            CliError::usage(format!(
                "the connection to the agent broke during the execution ({error}): if the agent stopped, its sessions \
                 went with it, and the next `bkg exec` starts a fresh one"
            ))
        })?;
        // Only what came since is searched for a newline: one event line may be megabytes long.
        let mut from = pending.len();
        pending.extend_from_slice(&chunk);
        // The chunk's events, text of one stream after the other merged: shown with a write
        // each, not one per line the code printed.
        let mut events: Vec<SessionEvent> = Vec::new();
        while let Some(offset) = pending[from..].iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=from + offset).collect();
            from = 0;
            let event: SessionEvent = serde_json::from_slice(&line)
                .map_err(|error| CliError::internal(format!("the agent sent an event bkg cannot read: {error}")))?;
            if let SessionEvent::Stream { name: StreamName::Stdout, text } = &event
                && !text.is_empty()
            {
                mid_line = !text.ends_with('\n');
            } else if matches!(event, SessionEvent::Result { .. } | SessionEvent::Display { .. }) {
                mid_line = false;
            }
            let is_end = matches!(event, SessionEvent::End { .. });
            match (events.last_mut(), event) {
                (Some(SessionEvent::Stream { name: last_name, text: last }), SessionEvent::Stream { name, text })
                    if *last_name == name && !out.is_json() =>
                {
                    last.push_str(&text)
                }
                (_, event) => events.push(event),
            }
            if is_end {
                break;
            }
        }
        for event in events {
            let is_end = matches!(event, SessionEvent::End { .. });
            // Room in the queue is waited for with Ctrl-C heard meanwhile; after a SIGTERM or
            // SIGHUP, only briefly: the end would wait behind output nobody takes.
            {
                let room = loop {
                    tokio::select! {
                        room = shown.room(&event) => break room,
                        Some(signal) = interrupts.next() => {
                            heard(signal, &mut terminated_by, out);
                            if said_unread {
                                quit_unwritten(signal);
                            }
                            interrupt(still_going.as_mut(), &mut said_unread, true).await;
                        }
                        () = tokio::time::sleep(OUTPUT_STUCK_AFTER), if terminated_by.is_some() => {
                            quit_unwritten(terminated_by.unwrap_or(libc::SIGTERM));
                        }
                    }
                };
                if let Some(room) = room {
                    room.send(event);
                }
            }
            if is_end {
                let ended = shown_to_the_end(&mut shown, interrupts, out).await?;
                return match ended {
                    Some(ended) => Ok(Some((ended, mid_line && !out.is_json()))),
                    None => Err(CliError::internal("the execution's end was not shown")),
                };
            }
        }
    }
}

/// Once every event queued is shown: how the execution ended, if its end was among them. The
/// execution is over by then, so a Ctrl-C while its output still waits for the reader ends bkg
/// without waiting.
async fn shown_to_the_end(
    shown: &mut WriterThread<SessionEvent, Result<Ended, CliError>>,
    interrupts: &mut StopSignals,
    out: Printer,
) -> Result<Option<Ended>, CliError> {
    // After a SIGTERM or SIGHUP the rest of the output is waited for as long as a Ctrl-C's note
    // waits, not for a reader that may never take it (found by a new-user trial: bkg stayed).
    let terminated_by = crate::stream::cancelled_by_signal().filter(|signal| *signal != libc::SIGINT);
    tokio::select! {
        last = shown.finish() => last.transpose(),
        Some(signal) = interrupts.next() => quit_with_output_unwritten(signal, out),
        () = tokio::time::sleep(STILL_GOING_NOTE_AFTER), if terminated_by.is_some() => {
            quit_with_output_unwritten(terminated_by.unwrap_or(libc::SIGTERM), out)
        }
    }
}

/// bkg leaves on `signal` with what the execution wrote still waiting for its reader.
fn quit_with_output_unwritten(signal: i32, out: Printer) -> ! {
    out.note(format_args!("stopped with the execution's output unwritten"));
    std::process::exit(crate::exit::SIGNALLED + signal)
}

/// A signal heard during an execution, which interrupts it and gives bkg's exit code. SIGTERM
/// or SIGHUP, unlike Ctrl-C, is heard once: bkg waits for the interrupted end briefly, and a
/// second ends it at once.
fn heard(signal: i32, terminated_by: &mut Option<i32>, out: Printer) {
    if signal != libc::SIGINT && terminated_by.replace(signal).is_some() {
        out.note(format_args!("stopped without waiting for the execution's end"));
        std::process::exit(crate::exit::SIGNALLED + signal);
    }
    crate::stream::cancelled_on(signal);
}

/// How long output must wait for its reader, after a SIGTERM or SIGHUP, before bkg leaves
/// without it: a live reader that is only slow makes the writer wait for moments too.
const OUTPUT_STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// How long after a Ctrl-C an execution still going is said to go on.
const STILL_GOING_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Prints one event; how the execution ended when it is the end.
fn show(event: &SessionEvent, out: Printer) -> Result<Option<Ended>, CliError> {
    if out.is_json() {
        out.json(event)?;
        return Ok(match event {
            SessionEvent::End { status, killed_by, .. } => Some((*status, *killed_by)),
            _ => None,
        });
    }
    match event {
        SessionEvent::Stream { name: StreamName::Stdout, text } => out.text(text),
        SessionEvent::Stream { name: StreamName::Stderr, text } => out.error_text(text),
        SessionEvent::Result { data } => {
            if let Some(text) = data.get("text/plain").and_then(|value| value.as_str()) {
                out.line(format_args!("{text}"));
            }
        }
        SessionEvent::Display { data } => {
            let kinds: Vec<&str> = data.keys().map(String::as_str).filter(|kind| *kind != "text/plain").collect();
            match data.get("text/plain").and_then(|value| value.as_str()) {
                Some(text) if kinds.is_empty() => out.line(format_args!("{text}")),
                _ => out.note(format_args!("display: {} (see it with --json or the Web UI)", kinds.join(", "))),
            }
        }
        SessionEvent::Error { traceback, .. } => {
            for line in traceback {
                out.error_text(line);
                if !line.ends_with('\n') {
                    out.error_text("\n");
                }
            }
        }
        SessionEvent::End { status, killed_by, error, .. } => {
            // The interpreter never started (its packages failed to install): the agent's words,
            // and exit 125, as bkgr gives them.
            if let (ExecutionStatus::Died, Some(error)) = (status, error) {
                return Err(CliError::usage(error.clone()));
            }
            match status {
                ExecutionStatus::Interrupted if *killed_by == Some(bkg_schema::KilledBy::Cancelled) => {
                    out.note(format_args!(
                        "interrupted by the agent: the API key it was sent with was revoked, rotated or expired"
                    ))
                }
                ExecutionStatus::Interrupted => out.note(format_args!("interrupted")),
                // Said alike by `bkg exec` and `bkg repl` (whose next cell is the next code): the
                // repl then says its fresh interpreter is ready (found by a new-user trial: it was
                // told the next `bkg exec` would start one).
                ExecutionStatus::Died => out.note(format_args!(
                    "the session's interpreter {}: what it held is gone, and the next code runs in a fresh one",
                    died_of(*killed_by)
                )),
                ExecutionStatus::Ok | ExecutionStatus::Error => {}
            }
            return Ok(Some((*status, *killed_by)));
        }
    }
    Ok(None)
}

pub async fn repl(settings: &Settings, args: ReplArgs) -> Result<i32, CliError> {
    let (client, id) = connect(settings, &args.project, &args.name).await?;
    let (info, _) = ensure_session(&client, (&args.name, &id), &args.session, args.language).await?;
    let out = settings.out;
    let mut prompt = Prompt::new()?;
    let piped = !matches!(prompt, Prompt::Terminal(_));
    if !piped {
        out.note(format_args!(
            "{} session `{}` in {} (Ctrl-C interrupts, Ctrl-D leaves; the session stays)",
            info.language.as_str(),
            info.name,
            args.name
        ));
    }
    // Cells read from a pipe all run; the exit code says whether one failed, as a script's would.
    // At a terminal the person saw each outcome: Ctrl-D leaves with 0.
    let mut worst = SUCCESS;
    // From a pipe, one listener for the whole feed: SIGTERM and SIGHUP too, heard between cells
    // as well (was: bkg died of them and the cell went on; found by a new-user trial). At a
    // terminal, Ctrl-C only, heard anew for each cell (at the prompt it is the line editor's
    // key), and SIGTERM ends bkg at once as by default, its cell going on as a notebook
    // kernel's does when its client goes.
    let mut fed_signals = if piped { Some(StopSignals::listen()?) } else { None };
    loop {
        let Some(code) = prompt.read_cell(info.language)? else {
            return Ok(worst);
        };
        // One heard while the cell was read stops the feed before it runs.
        if let Some(Some(signal)) = fed_signals.as_mut().and_then(|signals| signals.next().now_or_never()) {
            crate::stream::cancelled_on(signal);
        }
        if let (true, Some(signal)) = (piped, crate::stream::cancelled_by_signal()) {
            return Ok(stopped_feed(signal, out));
        }
        if code.trim().is_empty() {
            continue;
        }
        // At a terminal, the interpreter's own ways out leave the REPL, as Ctrl-D does, the
        // session kept (found by a new-user trial: `exit()` printed a SystemExit traceback).
        if !piped && leaves_the_repl(info.language, &code) {
            return Ok(worst);
        }
        // At a terminal, a session busy with an execution from elsewhere (another `bkg exec`, a
        // repl left by a signal) is said and the prompt kept, the cell in its history (found by a
        // new-user trial: the repl ended with 125).
        if !piped {
            let now: Option<SessionInfo> =
                client.get_found(&format!("/api/v1/sandboxes/{id}/sessions/{}", args.session)).await?;
            if now.is_some_and(|now| now.busy) {
                out.note(format_args!(
                    "session {} is running an execution from elsewhere; this cell was not run (↑ brings it back): \
                     interrupt that one with `bkg exec {}{} --interrupt`, or wait for its end",
                    args.session,
                    args.name,
                    bkg_schema::files::session_flag(&args.session)
                ));
                continue;
            }
        }
        let mut for_this_cell;
        let signals = match fed_signals.as_mut() {
            Some(signals) => signals,
            None => {
                for_this_cell = StopSignals::interrupt_only()?;
                &mut for_this_cell
            }
        };
        let executed = match execute(&client, &id, &args.session, &code, signals, out).await? {
            Some(executed) => executed,
            // The session was ended meanwhile (found by a new-user trial: the repl left with the
            // API's "no session" and the cell was lost): a fresh one takes the cell.
            None => {
                ensure_session(&client, (&args.name, &id), &args.session, Some(info.language)).await?;
                out.note(format_args!(
                    "session {} of {} had ended (`bkg stop`, or the agent restarted): a fresh {} interpreter runs this cell; nothing of the earlier one is in it",
                    args.session,
                    args.name,
                    info.language.as_str()
                ));
                execute(&client, &id, &args.session, &code, signals, out).await?.ok_or_else(|| {
                    CliError::usage(format!("session {} of {} ended again at once", args.session, args.name))
                })?
            }
        };
        let ((status, killed_by), mid_line) = executed;
        // Ctrl-C (or SIGTERM, SIGHUP) on cells from a pipe stops them all, as on
        // `python3 < cells.py` (was: the cell was interrupted and the rest ran on).
        if let (true, Some(signal)) = (piped, crate::stream::cancelled_by_signal()) {
            return Ok(stopped_feed(signal, out));
        }
        if piped && worst == SUCCESS {
            worst = crate::exit::of_execution(status, killed_by);
        }
        // The agent stopping ended the session: the cells after it would find no agent (found
        // by a new-user trial: exit 125 and advice for a TCP port, where `bkg exec` says 143).
        if piped && killed_by == Some(bkg_schema::KilledBy::Shutdown) {
            out.note(format_args!("the agent stopped: no more cells are run"));
            return Ok(worst);
        }
        if mid_line {
            // The prompt redraws its line: output left without a newline would be wiped.
            out.text("\n");
        }
        if status == ExecutionStatus::Died {
            ensure_session(&client, (&args.name, &id), &args.session, Some(info.language)).await?;
            out.note(format_args!("a fresh {} interpreter is ready", info.language.as_str()));
        }
    }
}

/// A piped repl stopped by `signal`: said, and its exit code (130 for Ctrl-C, 128+N).
fn stopped_feed(signal: i32, out: Printer) -> i32 {
    let what = match signal {
        libc::SIGINT => "Ctrl-C".to_owned(),
        libc::SIGTERM => "SIGTERM".to_owned(),
        libc::SIGHUP => "SIGHUP".to_owned(),
        other => format!("signal {other}"),
    };
    out.note(format_args!("stopped at {what}: no more cells are run"));
    crate::exit::SIGNALLED + signal
}

/// The terminal's settings before the line editor made it raw.
static COOKED_TERMINAL: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();

/// SIGTERM and SIGHUP end a repl at a terminal at once, as by default, but not with the terminal
/// left raw by a prompt they came during (found by a new-user trial: echo and line editing off
/// until `reset`). The loop blocks in the line editor then, so the handler is the kernel's call,
/// not a task of the runtime's.
fn put_the_terminal_back_on_a_stop_signal() {
    // SAFETY: an all-zero termios is a valid value of this plain C struct; tcgetattr fills it.
    let mut settings: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios at the pointer, valid for the call.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut settings) } != 0 || COOKED_TERMINAL.set(settings).is_err() {
        return;
    }
    extern "C" fn put_back_and_end(signal: libc::c_int) {
        if let Some(settings) = COOKED_TERMINAL.get() {
            // SAFETY: tcsetattr, signal and raise are async-signal-safe; `settings` is a value
            // set once before this handler was installed and never changed.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, settings) };
        }
        // The line editor's bracketed paste, ended as it ends it after each line.
        const PASTE_OFF: &[u8] = b"\x1b[?2004l";
        // SAFETY: write is async-signal-safe; the buffer is a static of PASTE_OFF's length.
        unsafe { libc::write(libc::STDOUT_FILENO, PASTE_OFF.as_ptr().cast(), PASTE_OFF.len()) };
        // SAFETY: as above; the default action then ends the process by this signal.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe { libc::signal(signal, put_back_and_end as *const () as libc::sighandler_t) };
    }
}

/// Where `bkg repl` reads its cells: a line editor with history on a terminal, else stdin's lines.
enum Prompt {
    Terminal(Box<rustyline::DefaultEditor>),
    Lines,
    /// Input has ended (Ctrl-D or the end of stdin) while a cell was being typed: that cell runs,
    /// and the next read must leave instead of prompting again.
    Ended,
}

/// A line from the prompt, or what ended it.
enum Line {
    Text(String),
    /// Ctrl-C: the cell being typed is dropped, and a fresh prompt comes.
    Interrupted,
    /// Ctrl-D on an empty line, or the end of stdin.
    End,
}

impl Prompt {
    fn new() -> Result<Self, CliError> {
        if !std::io::stdin().is_terminal() {
            return Ok(Self::Lines);
        }
        let config = rustyline::Config::builder()
            .max_history_size(1000)
            .and_then(|config| config.history_ignore_dups(true))
            .map(|config| config.auto_add_history(true).build())
            .map_err(|error| CliError::usage(format!("cannot set up the prompt: {error}")))?;
        let editor = rustyline::DefaultEditor::with_config(config)
            .map_err(|error| CliError::usage(format!("cannot set up the prompt: {error}")))?;
        put_the_terminal_back_on_a_stop_signal();
        Ok(Self::Terminal(Box::new(editor)))
    }

    fn read_line(&mut self, prompt: &str) -> Result<Line, CliError> {
        let editor = match self {
            Self::Terminal(editor) => editor,
            Self::Ended => return Ok(Line::End),
            Self::Lines => {
                let mut line = String::new();
                let read = std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|error| CliError::usage(format!("cannot read stdin: {error}")))?;
                return Ok(if read == 0 { Line::End } else { Line::Text(line.trim_end_matches('\n').to_owned()) });
            }
        };
        match editor.readline(&format!("{prompt} ")) {
            Ok(line) => Ok(Line::Text(line)),
            Err(rustyline::error::ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(rustyline::error::ReadlineError::Eof) => Ok(Line::End),
            Err(error) => Err(CliError::usage(format!("cannot read the prompt: {error}"))),
        }
    }

    /// One cell: lines up to the first that leaves nothing open (see [`openness`]), so a complete
    /// first line runs at once and `print(1,` waits for its `)`. A Python block (a line ending in
    /// `:`) goes on until an empty line with no bracket or string still open. Ctrl-D or the end
    /// of stdin runs the cell typed so far, then `None` leaves.
    fn read_cell(&mut self, language: Language) -> Result<Option<String>, CliError> {
        let prompt = match language {
            Language::Python => ">>>",
            Language::Node => ">",
        };
        let mut cell = String::new();
        loop {
            let line = match self.read_line(if cell.is_empty() { prompt } else { "..." })? {
                Line::Text(line) => line,
                Line::Interrupted => {
                    cell.clear();
                    continue;
                }
                Line::End => {
                    *self = Self::Ended;
                    return Ok((!cell.is_empty()).then_some(cell));
                }
            };
            if completes_cell(language, &mut cell, &line) {
                return Ok(Some(cell));
            }
        }
    }
}

/// Whether `cell` is what leaves the interpreter's own prompt: `exit()`, `quit()` (and, as
/// Python 3.13 takes them, `exit`, `quit`), Node's `.exit`.
fn leaves_the_repl(language: Language, cell: &str) -> bool {
    match language {
        Language::Python => ["exit()", "quit()", "exit", "quit"].contains(&cell.trim()),
        Language::Node => cell.trim() == ".exit",
    }
}

/// Whether `line`, typed after `cell`, makes the cell ready to run; if it belongs to the cell, it
/// is added. An empty line closing a Python block is not: it only ends the block. A cell that
/// opened a block runs at an empty line even where its text could end before (Node's
/// `if (x)`, a body, then `else`: was run at the body, and the `else` then refused; found by a
/// new-user trial).
fn completes_cell(language: Language, cell: &mut String, line: &str) -> bool {
    if line.trim().is_empty() {
        match openness(language, cell) {
            Openness::Block => return true,
            Openness::Complete if opened_a_block(language, cell) => return true,
            _ => {}
        }
    }
    cell.push_str(line);
    cell.push('\n');
    openness(language, cell) == Openness::Complete && !opened_a_block(language, cell)
}

/// Whether `cell` opened a block at the end of one of its lines.
fn opened_a_block(language: Language, cell: &str) -> bool {
    cell.match_indices('\n').any(|(at, _)| openness(language, &cell[..=at]) == Openness::Block)
}

/// Whether the text of a cell typed so far can go to its interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Openness {
    /// Nothing is left open. A syntax error the next line could not mend (an unmatched `)`, a
    /// one-line string cut by its line's end) counts too: the interpreter reports it.
    Complete,
    /// A Python block (a line ending in `:`), or a Node statement that cannot end where the
    /// text does (`if (x)`, `} else`, `a +`, `=>`): the cell ends at an empty line.
    Block,
    /// A bracket, a string or comment spanning lines, or a line ending in a backslash: the next
    /// line belongs to the cell even when empty.
    Unfinished,
}

/// What is open at a point of a cell's text, innermost last.
enum Opener {
    /// `(`, `[` or `{`, waiting for this closing character; `head`: the parentheses of a Node
    /// statement that a body must follow (`if (…)`, `function f(…)`).
    Bracket { closing: char, head: bool },
    /// A Node template literal (`` `…` ``).
    Template,
    /// `${…}` in a Node template literal: code, up to its `}`.
    Substitution,
}

/// How far `text`, the lines of a cell typed so far, is from complete in `language`. Brackets,
/// quotes and backslashes in strings and comments are text, not syntax.
fn openness(language: Language, text: &str) -> Openness {
    let mut chars: Vec<char> = text.chars().collect();
    // Every line, the last one too, ends in a newline, so "the text ends here" and "this line
    // ends here" are the same case below.
    if chars.last() != Some(&'\n') {
        chars.push('\n');
    }
    let mut openers: Vec<Opener> = Vec::new();
    let mut in_block = false;
    // The last character of code (not a comment or whitespace) so far: a Python line ending in
    // `:` opens a block, and a Node `/` after an operator starts a regular expression.
    let mut last_code: Option<char> = None;
    // A Python statement starting with `@` is a decorator, which a definition must follow.
    let mut at_statement_start = true;
    let mut decorator = false;
    // Node: the code seen last (strings as their quotes, runs of whitespace as one space), and
    // whether the last code closed a statement head's parentheses.
    let mut tail = String::new();
    let mut after_head = false;
    let mut at = 0;
    while let Some(&c) = chars.get(at) {
        at += 1;
        if openers.is_empty() && !matches!(c, '/' | '#') {
            if c.is_whitespace() {
                if !tail.ends_with(' ') {
                    tail.push(' ');
                }
            } else {
                after_head = false;
                tail.push(c);
            }
        }
        if at_statement_start && openers.is_empty() && !c.is_whitespace() && c != '#' {
            decorator = c == '@';
            at_statement_start = false;
        }
        if matches!(openers.last(), Some(Opener::Template)) {
            match c {
                '\\' => at += 1,
                '`' => {
                    openers.pop();
                    last_code = Some(c);
                }
                '$' if chars.get(at) == Some(&'{') => {
                    at += 1;
                    openers.push(Opener::Substitution);
                    last_code = Some('{');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '\n' if openers.is_empty() => {
                if language == Language::Python && (last_code == Some(':') || decorator) {
                    in_block = true;
                }
                at_statement_start = true;
            }
            '\n' => {}
            c if c.is_whitespace() => {}
            '\\' => {
                while matches!(chars.get(at), Some(' ' | '\t')) {
                    at += 1;
                }
                if chars.get(at) == Some(&'\n') {
                    at += 1;
                    if at == chars.len() {
                        return Openness::Unfinished;
                    }
                }
            }
            '#' if language == Language::Python => at = end_of_line(&chars, at),
            '/' if language == Language::Node && chars.get(at) == Some(&'/') => at = end_of_line(&chars, at),
            '/' if language == Language::Node && chars.get(at) == Some(&'*') => {
                match chars[at + 1..].windows(2).position(|pair| pair == ['*', '/']) {
                    Some(offset) => at += 1 + offset + 2,
                    None => return Openness::Unfinished,
                }
            }
            '/' if language == Language::Node && starts_regex(last_code) => {
                if let Some(end) = end_of_regex(&chars, at) {
                    at = end;
                }
                if openers.is_empty() {
                    // A value, not an operator wanting one.
                    tail.push('/');
                    after_head = false;
                }
                last_code = Some(c);
            }
            '`' if language == Language::Node => openers.push(Opener::Template),
            '\'' | '"' => {
                let triple = language == Language::Python && chars.get(at..at + 2) == Some(&[c, c][..]);
                match end_of_string(&chars, if triple { at + 2 } else { at }, c, triple) {
                    Quoted::EndsAt(end) => at = end,
                    Quoted::Cell(openness) => return openness,
                }
                last_code = Some(c);
            }
            '(' | '[' | '{' => {
                let closing = match c {
                    '(' => ')',
                    '[' => ']',
                    _ => '}',
                };
                // `tail` has this `(` already.
                let before = tail.strip_suffix('(').unwrap_or(&tail);
                let head = c == '(' && openers.is_empty() && language == Language::Node && is_statement_head(before);
                openers.push(Opener::Bracket { closing, head });
                last_code = Some(c);
            }
            ')' | ']' | '}' => {
                match openers.pop() {
                    Some(Opener::Bracket { closing, head }) if closing == c => after_head = head,
                    Some(Opener::Substitution) if c == '}' => {}
                    _ => return Openness::Complete,
                }
                if openers.is_empty() {
                    tail.push(c);
                }
                last_code = Some(c);
            }
            _ => last_code = Some(c),
        }
    }
    if !openers.is_empty() {
        Openness::Unfinished
    } else if in_block || (language == Language::Node && (after_head || node_statement_goes_on(&tail))) {
        Openness::Block
    } else {
        Openness::Complete
    }
}

/// The last word of `code` (letters, digits, `_`, `$`), if it ends in one.
fn last_word(code: &str) -> &str {
    let code = code.trim_end();
    code.rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).next().unwrap_or_default()
}

/// Whether a `(` after the Node code `tail` opens the head of a statement a body must follow:
/// `if (`, `for (`, `while (`, `switch (`, `catch (`, `with (`, `function f(`, `function (`.
fn is_statement_head(tail: &str) -> bool {
    let word = last_word(tail);
    if matches!(word, "if" | "for" | "while" | "switch" | "catch" | "with" | "function") {
        return true;
    }
    let before = tail.trim_end()[..tail.trim_end().len() - word.len()].trim_end().trim_end_matches('*');
    !word.is_empty() && last_word(before) == "function"
}

/// Whether Node code ending in `tail` (brackets all closed) cannot end there: an operator that
/// wants its right side (not `x++`, `x--`, nor a regular expression's closing `/`), or a
/// keyword a statement must follow (`} else`, `do`, `try`, `finally`).
fn node_statement_goes_on(tail: &str) -> bool {
    let code = tail.trim_end();
    let operator = code.ends_with(|c: char| "=+-*%&|^!~?:,.<>".contains(c));
    (operator && !code.ends_with("++") && !code.ends_with("--"))
        || matches!(last_word(code), "else" | "do" | "try" | "finally")
}

/// The index of the newline ending the line that `at` is in, left for the caller to see.
fn end_of_line(chars: &[char], at: usize) -> usize {
    chars[at..].iter().position(|&c| c == '\n').map_or(chars.len(), |offset| at + offset)
}

/// Where a string ends, or what its open end makes of the cell.
enum Quoted {
    /// Just past its closing quote.
    EndsAt(usize),
    Cell(Openness),
}

/// The string opened by `quote` (three of them if `triple`) just before `at`. Only a triple-quoted
/// string, or a line ending in a backslash inside one, spans lines; at any other line's end the
/// string is a syntax error that the interpreter should report.
fn end_of_string(chars: &[char], mut at: usize, quote: char, triple: bool) -> Quoted {
    while let Some(&c) = chars.get(at) {
        match c {
            '\\' => at += 2,
            '\n' if !triple => return Quoted::Cell(Openness::Complete),
            c if c == quote && (!triple || chars.get(at + 1..at + 3) == Some(&[quote, quote][..])) => {
                return Quoted::EndsAt(at + if triple { 3 } else { 1 });
            }
            _ => at += 1,
        }
    }
    Quoted::Cell(Openness::Unfinished)
}

/// Whether a Node `/` after `last_code` starts a regular expression rather than dividing: as an
/// operand, where a value and not an operator is expected.
fn starts_regex(last_code: Option<char>) -> bool {
    last_code.is_none_or(|c| "(,=:[!&|?{};+-*%<>~^".contains(c))
}

/// Just past the `/` closing the regular expression whose opening `/` is just before `at`, if
/// it has one on its line (a `/` in a `[…]` class does not close it).
fn end_of_regex(chars: &[char], mut at: usize) -> Option<usize> {
    let mut in_class = false;
    while let Some(&c) = chars.get(at) {
        at += 1;
        match c {
            '\\' => at += 1,
            '\n' => return None,
            '[' => in_class = true,
            ']' => in_class = false,
            '/' if !in_class => return Some(at),
            _ => {}
        }
    }
    None
}

/// What ended a session's interpreter, as the end of "the session's interpreter …".
fn died_of(killed_by: Option<bkg_schema::KilledBy>) -> &'static str {
    use bkg_schema::KilledBy;
    match killed_by {
        Some(KilledBy::Memory) => "was killed at its memory limit (limits.memory in cave.yaml)",
        Some(KilledBy::Timeout) => "reached its time limit",
        Some(KilledBy::Pids) => "was killed at its process limit",
        Some(KilledBy::Disk) => "failed with its disk full (limits.disk in cave.yaml)",
        // Any of them ends its run alike (found by a new-user trial: `bkg rm` was named `bkg stop`).
        Some(KilledBy::Cancelled) => {
            "was stopped (`bkg stop`, `bkg rm`, `bkg exec --restart`, a Ctrl-C while it waited for a place, or \
             the API key it was started with was revoked, rotated, deleted or expired)"
        }
        Some(KilledBy::Shutdown | KilledBy::Interrupted) => "ended with the agent",
        None => "ended",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(language: Language, expected: Openness, cells: &[&str]) {
        for cell in cells {
            assert_eq!(openness(language, cell), expected, "{language:?} cell {cell:?}");
        }
    }

    /// The cells `lines` typed one after the other make, and what is left typed when they end.
    fn cells(language: Language, lines: &[&str]) -> (Vec<String>, String) {
        let mut done = Vec::new();
        let mut cell = String::new();
        for line in lines {
            if completes_cell(language, &mut cell, line) {
                done.push(std::mem::take(&mut cell));
            }
        }
        (done, cell)
    }

    #[test]
    fn a_cell_ends_where_nothing_is_left_open() {
        assert_eq!(
            cells(Language::Python, &["print(1)", "x = 2"]),
            (vec!["print(1)\n".into(), "x = 2\n".into()], "".into())
        );
        assert_eq!(cells(Language::Python, &["print(1,", "", "2)"]), (vec!["print(1,\n\n2)\n".into()], "".into()));
        assert_eq!(
            cells(Language::Python, &["s = \"\"\"a", "", "b\"\"\"", "x"]),
            (vec!["s = \"\"\"a\n\nb\"\"\"\n".into(), "x\n".into()], "".into())
        );
        assert_eq!(
            cells(Language::Python, &["for i in range(2):", "    print(i,", "", "    i)", "", "x"]),
            (vec!["for i in range(2):\n    print(i,\n\n    i)\n".into(), "x\n".into()], "".into())
        );
        assert_eq!(
            cells(Language::Python, &["for i in range(2):", "    print(i)"]),
            (vec![], "for i in range(2):\n    print(i)\n".into())
        );
        assert_eq!(
            cells(Language::Node, &["function f() {", "", "  return `a", "", "${1}`", "}", "f()"]),
            (vec!["function f() {\n\n  return `a\n\n${1}`\n}\n".into(), "f()\n".into()], "".into())
        );
    }

    #[test]
    fn python_cells_that_run_at_once() {
        check(
            Language::Python,
            Openness::Complete,
            &[
                "",
                "print(1)",
                "m = a @ b",
                "print(\"(\")",
                "print('[', \"{\")",
                "x = 1  # (",
                "x = 1  # ends in a colon:",
                "x = 1  # \\",
                "\"\"\"done\"\"\"",
                "s = '''a ( b'''",
                "s = 'it\\'s ('",
                "s = r'\\'('",
                "d = {1: 2}",
                "a[1:]",
                "print(1,\n2)\n",
                "x = 1 + \\\n2\n",
                "x = [1,\n\n2]\n",
                "s = \"\"\"abc\n\ndef\"\"\"\n",
                "s = 'abc\\\ndef'\n",
                // Syntax errors that no next line mends: the interpreter reports them.
                "print(1))",
                "print(\"abc",
                "x = 'abc\n",
                "(]",
            ],
        );
    }

    #[test]
    fn python_cells_left_unfinished() {
        check(
            Language::Python,
            Openness::Unfinished,
            &[
                "print(1,",
                "x = [1,",
                "foo({a: 1,",
                "print(1,\n",
                "s = \"\"\"abc",
                "s = '''abc\n\n",
                "s = f\"\"\"{x}\" ''' \\\"\"\"",
                "x = 1 + \\",
                "x = 1 + \\  ",
                "s = 'abc\\",
                "if x:\n    y = (1,\n\n",
                "print(')',",
            ],
        );
    }

    #[test]
    fn python_blocks_wait_for_an_empty_line() {
        check(
            Language::Python,
            Openness::Block,
            &[
                "for i in range(2):",
                "for i in range(2):\n",
                "def f(x):  # a comment (\n",
                "for i in range(2):\n    print(i)\n",
                "if (a and\n    b):\n",
                "if x:\n    y = (1,\n\n2)\n",
                "class A:\n    s = \"\"\"\n\n\"\"\"\n",
                "@functools.cache",
                "@app.route(\n    '/')\n",
                "@property\ndef x(self): return 1\n",
            ],
        );
    }

    #[test]
    fn node_cells_that_run_at_once() {
        check(
            Language::Node,
            Openness::Complete,
            &[
                "console.log(1)",
                "console.log(\"(\")",
                "console.log('{', \"[\")",
                "`a${b}`",
                "`a${ {x: 1}.x }b`",
                "`a${`b${c}`}`",
                "// {",
                "x = 1 // (",
                "/* ( */ x",
                "x = a / b / c",
                "s.replace(/[(/]/g, '')",
                "x = /\\(/.test(s)",
                "function f() {\n  return 1\n}\n",
                "x = `a\n\nb`\n",
                "const label = 'ends in a colon:'",
                "console.log(1))",
                "x++",
                "x--",
                "if (x) y()",
                "if (x) { y() }",
                "for (const a of b) console.log(a)",
                "x = /a/",
                "somethingelse",
                "elsewhere(1)",
                "a.b",
                "f(a)",
                "const g = function () { return 1 }",
                "x = 'abc\n",
            ],
        );
    }

    #[test]
    fn node_statements_that_go_on_wait_for_an_empty_line() {
        check(
            Language::Node,
            Openness::Block,
            &[
                "if (true)",
                "if (a && (b || c))\n",
                "for (let i = 0; i < 3; i++)",
                "while (x) // a comment",
                "if (x) { y() } else",
                "if (x) y(); else",
                "x = 1 +",
                "const f = (a) =>",
                "obj.",
                "a ?",
                "do",
                "try",
                "function f(a)",
                "function (a, b)",
                "function* gen()",
                "label:",
                "switch (x)",
                "try { f() } catch (e)",
            ],
        );
    }

    #[test]
    fn a_node_block_runs_at_the_empty_line_after_its_else() {
        let lines = ["let x = 0", "if (x)", "  console.log('yes')", "else", "  console.log('no')", "", "x"];
        assert_eq!(
            cells(Language::Node, &lines),
            (
                vec![
                    "let x = 0\n".into(),
                    "if (x)\n  console.log('yes')\nelse\n  console.log('no')\n".into(),
                    "x\n".into()
                ],
                "".into()
            )
        );
        let lines = ["for (let i = 0; i < 2; i++)", "  console.log(i)", ""];
        assert_eq!(
            cells(Language::Node, &lines),
            (vec!["for (let i = 0; i < 2; i++)\n  console.log(i)\n".into()], "".into())
        );
    }

    #[test]
    fn node_cells_left_unfinished() {
        check(
            Language::Node,
            Openness::Unfinished,
            &[
                "console.log(1,",
                "x = [1,",
                "foo({a: 1,",
                "function f() {",
                "function f() {\n\n",
                "`abc",
                "`abc\n\n",
                "`a${b",
                "`a${ {x: 1",
                "`a${`b`",
                "/* (",
                "/* (\n\n",
                "x = 1 + \\",
                "s = 'abc\\",
                "s = 'abc\\\n",
                "console.log(')',",
            ],
        );
    }
}
