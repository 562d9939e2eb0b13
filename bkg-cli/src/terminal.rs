//! `bkg shell` and `bkg exe --tty`: a run on a pseudo-terminal in the sandbox, over the agent's
//! terminal WebSocket (`bkg_schema::terminal`). Our terminal is put in raw mode, so every key
//! (Ctrl-C, Ctrl-D, arrows) goes to the sandbox's terminal as it is typed, and its size follows
//! ours (SIGWINCH). The WebSocket is opened through the same HTTP client as every other call, so
//! the socket, `--remote`, TLS and the API key are the same.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use bkg_schema::RunResult;
use bkg_schema::terminal::{ShellRequest, ShellTerminalOpen, TerminalControl, TerminalEvent, TerminalSize};
use futures_util::{SinkExt, StreamExt};
use reqwest::header::{CONNECTION, UPGRADE};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::args::ShellArgs;
use crate::client::{AgentClient, api_error, from_api_error};
use crate::exit::{BKG_FAILED, CliError};
use crate::settings::Settings;

/// `bkg shell NAME`.
pub async fn shell(settings: &Settings, args: ShellArgs) -> Result<i32, CliError> {
    require_terminal("bkg shell")?;
    let mut env = BTreeMap::new();
    for pair in &args.env {
        if let Some((key, value)) = crate::exe::env_entry(pair, "--env")? {
            env.insert(key, value);
        }
    }
    let timeout_ms = args
        .timeout
        .as_deref()
        .map(|text| bkg_schema::parse_duration_ms(text).map_err(|error| CliError::usage(format!("--timeout: {error}"))))
        .transpose()?;
    // `bkg shell NAME -- PROGRAM ARGS…` runs as `-c` does, each word quoted for /bin/sh.
    let command = match args.command {
        Some(line) => Some(line),
        None if args.program.is_empty() => None,
        None => Some(shlex::try_join(args.program.iter().map(String::as_str)).map_err(|_| {
            CliError::usage("bkg shell: an argument after `--` holds a NUL byte, which no program can be given")
        })?),
    };
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    // Found as `bkg exec` finds it: the project's, else one the agent shows this caller from
    // elsewhere (made through the API: found by a new-user trial, `--remote` had no project).
    let id = crate::files_cmd::find_sandbox(&client, &args.project, &args.name, settings.out).await?;
    let open =
        ShellTerminalOpen { size: own_size(), term: own_term(), request: ShellRequest { command, env, timeout_ms } };
    let path = format!("/api/v1/sandboxes/{id}/terminal");
    let missing = format!("the agent does not know sandbox `{}` yet: run it once with `bkgr {}`", args.name, args.name);
    let result = run(&client, &path, &open, Some(missing), settings.out).await?;
    // A sandbox's run: its limits are cave.yaml's but the timeout given, and it is ended by
    // `bkg stop` or `bkg rm` as bkgr's runs are (found by a new-user trial: `bkg stop` of a shell
    // was said to be `bkg runs cancel` or the API).
    let given = bkg_schema::LimitOverrides { timeout_ms, ..Default::default() };
    finish(settings, &result, crate::stream::LimitsFrom::CaveOrFlags(given, &["timeout"]))
}

/// `bkg exe --tty`: `open` is the run's first message.
pub async fn exe(settings: &Settings, open: &bkg_schema::terminal::RunTerminalOpen) -> Result<i32, CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let result = run(&client, "/api/v1/runs/terminal", open, None, settings.out).await?;
    finish(settings, &result, crate::stream::LimitsFrom::Flags)
}

/// What ended the run, when it was not its own doing, and its exit code.
fn finish(settings: &Settings, result: &RunResult, limits: crate::stream::LimitsFrom) -> Result<i32, CliError> {
    if let Some(reason) = crate::stream::reason_line(result, limits) {
        settings.out.note(format_args!("{reason}"));
    }
    Ok(crate::exit::of_run(result))
}

/// Refuses to go on without a terminal on stdin and stdout: raw keys need one.
pub fn require_terminal(command: &str) -> Result<(), CliError> {
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "{command} needs a terminal on stdin and stdout: run it from one (without pipes or redirections)"
    )))
}

/// Our terminal's size (the default when it cannot be read).
pub fn own_size() -> TerminalSize {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills one winsize struct, valid for the call, at the pointer.
    let read = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if read < 0 || size.ws_col == 0 || size.ws_row == 0 {
        return TerminalSize::DEFAULT;
    }
    TerminalSize { cols: size.ws_col, rows: size.ws_row }
}

/// `TERM` for the sandbox: ours, when we have one, `dumb` too (found by a new-user trial: it
/// was replaced by the agent's default, whose colours a dumb terminal cannot show).
pub fn own_term() -> Option<String> {
    std::env::var("TERM").ok().filter(|term| !term.is_empty())
}

/// Opens the terminal WebSocket at `path`, sends `open`, and relays until the run's result.
/// `missing`: what to say when the agent has nothing at `path` (404).
async fn run(
    client: &AgentClient,
    path: &str,
    open: &impl serde::Serialize,
    missing: Option<String>,
    out: crate::out::Printer,
) -> Result<RunResult, CliError> {
    let mut socket = connect(client, path, missing).await?;
    let first = serde_json::to_string(open).map_err(|error| CliError::internal(error.to_string()))?;
    socket.send(Message::text(first)).await.map_err(lost)?;

    let (raw, typed_ahead) = RawMode::enter()?;
    let (mut sender, mut receiver) = socket.split();
    if !typed_ahead.is_empty() {
        sender.send(Message::binary(typed_ahead)).await.map_err(lost)?;
    }
    let (keys_tx, mut keys_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let keys_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(read) = stdin.read(&mut buffer).await {
            if read == 0 || keys_tx.send(buffer[..read].to_vec()).await.is_err() {
                return;
            }
        }
    });
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|error| CliError::internal(format!("cannot watch the terminal's size: {error}")))?;
    // On a raw terminal Ctrl-C is a key; these come from elsewhere (`kill`, `timeout`, a closed
    // terminal). The run is ended as `bkg exe`'s is, and our terminal put back before bkg exits
    // (found by a new-user trial: bkg died of the signal and left it raw).
    let mut stop_signals = crate::stream::StopSignals::listen()?;
    let mut keys_open = true;
    let outcome = loop {
        tokio::select! {
            message = receiver.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes).and_then(|()| out.flush());
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<TerminalEvent>(text.as_str()) {
                    Ok(TerminalEvent::Started { .. }) => {}
                    Ok(TerminalEvent::Result { result }) => break Ok(*result),
                    Ok(TerminalEvent::Error { error }) => break Err(from_api_error(&error)),
                    Err(error) => break Err(CliError::new(BKG_FAILED, format!("garbled message from the agent: {error}"))),
                },
                Some(Ok(_)) => {}
                Some(Err(error)) => break Err(lost(error)),
                None => break Err(CliError::new(BKG_FAILED, "the agent closed the terminal before the run ended")),
            },
            keys = keys_rx.recv(), if keys_open => match keys {
                Some(keys) => {
                    if let Err(error) = sender.send(Message::binary(keys)).await {
                        break Err(lost(error));
                    }
                }
                None => keys_open = false,
            },
            Some(signal) = stop_signals.next() => {
                // The second: the first cancelled the run.
                if crate::stream::cancelled_by_signal().is_some() {
                    drop(raw);
                    out.note(format_args!("stopped without waiting for the run's end"));
                    std::process::exit(crate::exit::SIGNALLED + signal);
                }
                crate::stream::cancelled_on(signal);
                if let Err(error) = send_control(&mut sender, &TerminalControl::Cancel).await {
                    break Err(error);
                }
            }
            Some(()) = resized.recv() => {
                let TerminalSize { cols, rows } = own_size();
                if let Err(error) = send_control(&mut sender, &TerminalControl::Resize { cols, rows }).await {
                    break Err(error);
                }
            }
        }
    };
    keys_task.abort();
    drop(raw);
    outcome
}

/// `control` to the agent as the text message it reads.
async fn send_control(
    sender: &mut (impl futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    control: &TerminalControl,
) -> Result<(), CliError> {
    let text = serde_json::to_string(control).map_err(|error| CliError::internal(error.to_string()))?;
    sender.send(Message::text(text)).await.map_err(lost)
}

fn lost(error: impl std::fmt::Display) -> CliError {
    CliError::new(BKG_FAILED, format!("the terminal's connection to the agent failed: {error}"))
}

/// A WebSocket handshake over the HTTP client's own connection, then the socket on top of it.
async fn connect(
    client: &AgentClient,
    path: &str,
    missing: Option<String>,
) -> Result<WebSocketStream<reqwest::Upgraded>, CliError> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = client
        .http()
        .get(client.url(path))
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", &key);
    let response = client.send(request).await?;
    if let (reqwest::StatusCode::NOT_FOUND, Some(missing)) = (response.status(), missing) {
        return Err(CliError::new(BKG_FAILED, missing));
    }
    if response.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return Err(api_error(response).await);
    }
    let accepted = response.headers().get("sec-websocket-accept").and_then(|value| value.to_str().ok());
    if accepted != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(CliError::new(BKG_FAILED, "the agent answered the terminal's handshake wrongly"));
    }
    let upgraded = client
        .bounded(async {
            response
                .upgrade()
                .await
                .map_err(|error| CliError::new(BKG_FAILED, format!("the agent did not open the terminal: {error}")))
        })
        .await?;
    Ok(WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await)
}

/// Our terminal in raw mode while this lives; put back as it was when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Puts the terminal in raw mode; with it, what was typed before (see [`typed_before_raw`]).
    fn enter() -> Result<(Self, Vec<u8>), CliError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd())
            .map_err(|error| CliError::new(BKG_FAILED, format!("cannot read the terminal's mode: {error}")))?;
        let typed = typed_before_raw(stdin.as_fd());
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|error| CliError::new(BKG_FAILED, format!("cannot put the terminal in raw mode: {error}")))?;
        Ok((Self { saved }, typed))
    }
}

/// The end-of-file character of a terminal as the sandbox's is set up (Ctrl-D).
const END_OF_FILE: u8 = 0x04;

/// What the line discipline holds complete before the terminal goes raw: whole lines, and each
/// end of file (Ctrl-D) as the end-of-file character. Left there, an end of file becomes a NUL
/// byte once the terminal is raw, and the code read `\0` (found by a new-user trial: Ctrl-D typed
/// as a session started, or `script` with stdin /dev/null, reached the program as NUL).
fn typed_before_raw(stdin: std::os::fd::BorrowedFd<'_>) -> Vec<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut typed = Vec::new();
    let mut buffer = [0u8; 4096];
    // Bounded: a terminal that hung up reads as end of file for ever.
    for _ in 0..64 {
        let mut ready = [PollFd::new(stdin, PollFlags::POLLIN)];
        let readable = matches!(poll(&mut ready, PollTimeout::ZERO), Ok(1))
            && ready[0].revents().is_some_and(|events| events == PollFlags::POLLIN);
        if !readable {
            break;
        }
        match nix::unistd::read(stdin, &mut buffer) {
            Ok(0) => typed.push(END_OF_FILE),
            Ok(read) => typed.extend_from_slice(&buffer[..read]),
            Err(_) => break,
        }
    }
    typed
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSADRAIN, &self.saved);
    }
}
