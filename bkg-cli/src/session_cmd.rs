//! `bkg exec NAME --session S` and `bkg repl NAME`: code run in a session of a persistent
//! sandbox (`/api/v1/sandboxes/{id}/sessions…`), whose state stays between executions. Output
//! is printed as it comes; the last expression's value goes to stdout like a prompt shows it;
//! an error's traceback to stderr; images and other rich output are named on stderr.

use std::io::{IsTerminal, Read};

use bkg_schema::Language;
use bkg_schema::files::{ExecuteRequest, ExecutionStatus, NewSession, SessionEvent, SessionInfo, StreamName};

use crate::args::{ExecArgs, ProjectArgs, ReplArgs};
use crate::client::{AgentClient, api_error};
use crate::exit::{CANCELLED, CliError, NEGATIVE, SUCCESS};
use crate::out::Printer;
use crate::settings::Settings;

fn language(name: Option<&str>) -> Result<Option<Language>, CliError> {
    name.map(|name| {
        Language::parse(name)
            .ok_or_else(|| CliError::usage(format!("unknown type `{name}`: use --type python or --type node")))
    })
    .transpose()
}

/// The session `name` of sandbox `id`, made if it does not exist yet. An existing session of
/// another language than `language` is refused: its interpreter would run the code as its own.
async fn ensure_session(
    client: &AgentClient,
    id: &str,
    name: &str,
    language: Option<Language>,
) -> Result<SessionInfo, CliError> {
    if let Some(info) = client.get_found::<SessionInfo>(&format!("/api/v1/sandboxes/{id}/sessions/{name}")).await? {
        return match language {
            Some(language) if language != info.language => Err(CliError::usage(format!(
                "session `{name}` runs {}, not {}: leave out --type, or end the session first (`bkg stop NAME`)",
                info.language.as_str(),
                language.as_str()
            ))),
            _ => Ok(info),
        };
    }
    let new = NewSession { name: Some(name.to_owned()), language };
    client.post_json(&format!("/api/v1/sandboxes/{id}/sessions"), &new).await
}

/// The agent and sandbox `name`'s id, the sandbox given as cave.yaml has it now.
async fn connect(settings: &Settings, project: &ProjectArgs, name: &str) -> Result<(AgentClient, String), CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let found = crate::files_cmd::find_sandbox(&client, project, name).await?;
    if let Some((dir, cave)) = &found.own {
        crate::define::refresh(&client, dir, cave, name, settings.out).await?;
    }
    Ok((client, found.id))
}

pub async fn exec(settings: &Settings, args: ExecArgs) -> Result<i32, CliError> {
    let (client, id) = connect(settings, &args.project, &args.name).await?;
    let session = &args.session;
    if args.interrupt || args.restart {
        let action = if args.interrupt { "interrupt" } else { "restart" };
        let info: SessionInfo = client.post(&format!("/api/v1/sandboxes/{id}/sessions/{session}/{action}")).await?;
        if settings.out.is_json() {
            settings.out.json(&info)?;
        } else {
            settings.out.note(format_args!("{action}ed session {session} of {}", args.name));
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
    ensure_session(&client, &id, session, language(args.language.as_deref())?).await?;
    let status = execute(&client, &id, session, &code, settings.out).await?;
    Ok(exit_code(status))
}

fn exit_code(status: ExecutionStatus) -> i32 {
    match status {
        ExecutionStatus::Ok => SUCCESS,
        ExecutionStatus::Error | ExecutionStatus::Died => NEGATIVE,
        ExecutionStatus::Interrupted => CANCELLED,
    }
}

/// Runs `code` in the session and prints its events as they come; Ctrl-C interrupts it.
async fn execute(
    client: &AgentClient,
    id: &str,
    session: &str,
    code: &str,
    out: Printer,
) -> Result<ExecutionStatus, CliError> {
    let path = format!("/api/v1/sandboxes/{id}/sessions/{session}/execute");
    let request = client.http().post(client.url(&path)).json(&ExecuteRequest { code: code.to_owned() });
    // An execution may rightly run long: no patience bound on its answer.
    let response = request.send().await.map_err(|error| client.unreachable(error))?;
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    let mut stream = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    use futures_util::StreamExt as _;
    loop {
        // Every Ctrl-C is an interrupt, as at the interpreter's own prompt: code that catches
        // one gets the next.
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            _ = tokio::signal::ctrl_c() => {
                let _: Result<SessionInfo, CliError> =
                    client.post(&format!("/api/v1/sandboxes/{id}/sessions/{session}/interrupt")).await;
                continue;
            }
        };
        let Some(chunk) = chunk else {
            return Err(CliError::usage("the agent ended the execution without its end"));
        };
        pending.extend_from_slice(&chunk.map_err(|error| client.unreachable(error))?);
        while let Some(newline) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            let event: SessionEvent = serde_json::from_slice(&line)
                .map_err(|error| CliError::internal(format!("the agent sent an event bkg cannot read: {error}")))?;
            if let Some(status) = show(&event, out)? {
                return Ok(status);
            }
        }
    }
}

/// Prints one event; the execution's status when it is the end.
fn show(event: &SessionEvent, out: Printer) -> Result<Option<ExecutionStatus>, CliError> {
    if out.is_json() {
        out.json(event)?;
        return Ok(match event {
            SessionEvent::End { status, .. } => Some(*status),
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
        SessionEvent::End { status, killed_by, .. } => {
            match status {
                ExecutionStatus::Interrupted => out.note(format_args!("interrupted")),
                ExecutionStatus::Died => out.note(format_args!(
                    "the session's interpreter {}; the next `bkg exec` starts a fresh one",
                    died_of(*killed_by)
                )),
                ExecutionStatus::Ok | ExecutionStatus::Error => {}
            }
            return Ok(Some(*status));
        }
    }
    Ok(None)
}

pub async fn repl(settings: &Settings, args: ReplArgs) -> Result<i32, CliError> {
    let (client, id) = connect(settings, &args.project, &args.name).await?;
    let info = ensure_session(&client, &id, &args.session, language(args.language.as_deref())?).await?;
    let out = settings.out;
    out.note(format_args!(
        "{} session `{}` in {} (Ctrl-C interrupts, Ctrl-D leaves; the session stays)",
        info.language.as_str(),
        info.name,
        args.name
    ));
    let mut prompt = Prompt::new()?;
    loop {
        let Some(code) = prompt.read_cell(info.language)? else {
            return Ok(SUCCESS);
        };
        if code.trim().is_empty() {
            continue;
        }
        execute(&client, &id, &args.session, &code, out).await?;
    }
}

/// Where `bkg repl` reads its cells: a line editor with history on a terminal, else stdin's lines.
enum Prompt {
    Terminal(Box<rustyline::DefaultEditor>),
    Lines,
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
        Ok(Self::Terminal(Box::new(editor)))
    }

    fn read_line(&mut self, prompt: &str) -> Result<Line, CliError> {
        let Self::Terminal(editor) = self else {
            let mut line = String::new();
            let read = std::io::stdin()
                .read_line(&mut line)
                .map_err(|error| CliError::usage(format!("cannot read stdin: {error}")))?;
            return Ok(if read == 0 { Line::End } else { Line::Text(line.trim_end_matches('\n').to_owned()) });
        };
        match editor.readline(&format!("{prompt} ")) {
            Ok(line) => Ok(Line::Text(line)),
            Err(rustyline::error::ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(rustyline::error::ReadlineError::Eof) => Ok(Line::End),
            Err(error) => Err(CliError::usage(format!("cannot read the prompt: {error}"))),
        }
    }

    /// One cell: a line, or, after a line ending in `:`, `{`, `(`, `[` or `\`, the lines up to
    /// an empty one. `None` at the end of input.
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
                Line::End if matches!(self, Self::Lines) && !cell.is_empty() => return Ok(Some(cell)),
                Line::End => return Ok(None),
            };
            let continues = line.trim_end().ends_with([':', '{', '(', '[', '\\']);
            if cell.is_empty() && !continues {
                return Ok(Some(line));
            }
            if !cell.is_empty() && line.trim().is_empty() {
                return Ok(Some(cell));
            }
            cell.push_str(&line);
            cell.push('\n');
        }
    }
}

/// What ended a session's interpreter, as the end of "the session's interpreter …".
fn died_of(killed_by: Option<bkg_schema::KilledBy>) -> &'static str {
    use bkg_schema::KilledBy;
    match killed_by {
        Some(KilledBy::Memory) => "was killed at its memory limit (limits.memory in cave.yaml)",
        Some(KilledBy::Timeout) => "reached its time limit",
        Some(KilledBy::Pids) => "was killed at its process limit",
        Some(KilledBy::Disk) => "failed with its disk full (limits.disk in cave.yaml)",
        Some(KilledBy::Cancelled) => "was stopped (`bkg stop`)",
        Some(KilledBy::Shutdown | KilledBy::Interrupted) => "ended with the agent",
        None => "ended",
    }
}
