//! Runs on a pseudo-terminal over a WebSocket: `GET /api/v1/runs/terminal` (a script in a
//! temporary sandbox) and `GET /api/v1/sandboxes/{id}/terminal` (a shell in a persistent one).
//! The protocol's messages are `bkg_schema::terminal`'s; the operations are service/terminals.rs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use bkg_schema::terminal::{RunTerminalOpen, ShellTerminalOpen, TerminalControl, TerminalEvent};
use bkg_schema::{ApiError, ErrorCode};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::failure::Failure;
use super::input::PathParam;
use super::{AppState, MAX_BODY_BYTES};
use crate::auth::Principal;
use crate::service::{Accepted, OpError, RunInput, RunOutput, Service};

/// How long the client may take to send its first message (what to run) after the upgrade.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one message may take to reach the client. One that takes nothing for this long has
/// stopped reading: its connection is closed (the run itself never waits on it).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a script in a temporary sandbox on a terminal.
///
/// A WebSocket: the first text message is a `RunTerminalOpen` (the run and the terminal's size);
/// binary messages carry the terminal's bytes both ways; `TerminalControl` resizes or cancels;
/// the agent ends with a `TerminalEvent` result or error (docs/api.md, "Terminals").
#[utoipa::path(
    get,
    path = "/api/v1/runs/terminal",
    tag = "runs",
    responses((status = 101, description = "Switched to the WebSocket")),
)]
pub async fn run_terminal(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(error) = state.service.may_open_run_terminal(&principal) {
        return Failure::from(error).into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return not_a_websocket(rejection),
    };
    let service = Arc::clone(&state.service);
    upgrade_to_terminal(upgrade, service.clone(), move |open: RunTerminalOpen| async move {
        service.accept_run_terminal(&principal, open).map_err(api_error)
    })
}

/// A shell (or a command) in a persistent sandbox on a terminal.
///
/// A WebSocket like `/api/v1/runs/terminal`'s; its first message is a `ShellTerminalOpen`.
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}/terminal",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 101, description = "Switched to the WebSocket"),
        (status = 404, description = "No such sandbox", body = ApiError),
    ),
)]
pub async fn sandbox_terminal(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A wrong name is a plain 404, before any upgrade.
    if let Err(error) = state.service.get_sandbox(&principal, &id).await {
        return Failure::from(error).into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return not_a_websocket(rejection),
    };
    let service = Arc::clone(&state.service);
    upgrade_to_terminal(upgrade, service.clone(), move |open: ShellTerminalOpen| async move {
        service.accept_shell(&principal, &id, open).await.map_err(api_error)
    })
}

/// A plain request to a terminal's address: refused in the API's error shape, with axum's reason
/// (no `Upgrade` header, no `Sec-WebSocket-Key`, …) and status.
fn not_a_websocket(rejection: WebSocketUpgradeRejection) -> Response {
    let message = format!("this address is a WebSocket (a terminal): {}", rejection.body_text());
    Failure::new(rejection.status(), bkg_schema::ErrorCode::BadRequest, message).into_response()
}

/// An operation's refusal as the terminal's last message carries it.
fn api_error(error: OpError) -> ApiError {
    ApiError::new(error.code(), error.to_string())
}

/// Switches to the WebSocket and serves a run on a terminal: the first text message (`O`) is
/// handed to `accept`, which checks it and takes the run on (or refuses it; the refusal is the
/// last message). The Web UI's terminal page (ui/terminal.rs) is served by this too.
pub(crate) fn upgrade_to_terminal<O, A, F>(upgrade: WebSocketUpgrade, service: Arc<Service>, accept: A) -> Response
where
    O: DeserializeOwned + Send + 'static,
    A: FnOnce(O) -> F + Send + 'static,
    F: std::future::Future<Output = Result<Accepted, ApiError>> + Send,
{
    // Shutdown waits until the caller has been sent the result.
    let in_flight = service.run_in_flight();
    upgrade.max_message_size(MAX_BODY_BYTES).on_upgrade(move |socket| async move {
        let _in_flight = in_flight;
        serve(socket, service, accept).await;
    })
}

async fn serve<O, A, F>(mut socket: WebSocket, service: Arc<Service>, accept: A)
where
    O: DeserializeOwned,
    A: FnOnce(O) -> F,
    F: std::future::Future<Output = Result<Accepted, ApiError>>,
{
    let open = match tokio::time::timeout(OPEN_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<O>(text.as_str())
            .map_err(|error| ApiError::new(ErrorCode::BadRequest, format!("the terminal's first message: {error}"))),
        Ok(Some(Ok(_))) => Err(ApiError::new(ErrorCode::BadRequest, "the terminal's first message must be JSON text")),
        Ok(_) => return,
        Err(_) => Err(ApiError::new(ErrorCode::RequestTimeout, "no first message on the terminal in time")),
    };
    let accepted = match open {
        Ok(open) => accept(open).await,
        Err(error) => Err(error),
    };
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            let _ = send_event(&mut socket, &TerminalEvent::Error { error }).await;
            let _ = socket.close().await;
            return;
        }
    };

    let (mut sender, mut receiver) = socket.split();
    let (input_tx, input_rx) = mpsc::channel::<RunInput>(16);
    let (output_tx, mut output_rx) = mpsc::channel::<RunOutput>(64);
    // The client's keys, resizes and cancellation. A client that goes away cancels.
    let reader_task = tokio::spawn(async move {
        while let Some(Ok(message)) = receiver.next().await {
            let event = match message {
                Message::Binary(bytes) => RunInput::Stdin(bytes.to_vec()),
                Message::Text(text) => match serde_json::from_str::<TerminalControl>(text.as_str()) {
                    Ok(TerminalControl::Resize { cols, rows }) => {
                        RunInput::Resize(bkg_schema::terminal::TerminalSize { cols, rows })
                    }
                    Ok(TerminalControl::Cancel) | Err(_) => RunInput::Cancel,
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            let cancel = matches!(event, RunInput::Cancel);
            if input_tx.send(event).await.is_err() || cancel {
                return;
            }
        }
        let _ = input_tx.send(RunInput::Cancel).await;
    });

    let run = service.start(accepted, input_rx, Some(output_tx));
    let mut client_gone = false;
    while let Some(output) = output_rx.recv().await {
        if client_gone {
            continue;
        }
        let message = match output {
            RunOutput::Started(run_id) => event_message(&TerminalEvent::Started { run_id }),
            RunOutput::Stdout(bytes) | RunOutput::Stderr(bytes) => Some(Message::binary(bytes)),
            // Terminal runs install no packages and ask for no /workspace/out/ back.
            RunOutput::Progress(_) | RunOutput::Archive(_) => None,
        };
        let Some(message) = message else { continue };
        // Keep draining, so the run's output buffer empties, but send nothing more.
        client_gone = !matches!(tokio::time::timeout(SEND_TIMEOUT, sender.send(message)).await, Ok(Ok(())));
    }
    let last = match run.await {
        Ok(Ok(result)) => TerminalEvent::Result { result: Box::new(result) },
        Ok(Err(error)) => TerminalEvent::Error { error: api_error(error) },
        Err(_) => TerminalEvent::Error { error: ApiError::new(ErrorCode::Internal, "run task failed") },
    };
    if !client_gone && let Some(message) = event_message(&last) {
        let _ = tokio::time::timeout(SEND_TIMEOUT, async {
            let _ = sender.send(message).await;
            let _ = sender.close().await;
        })
        .await;
    }
    reader_task.abort();
}

fn event_message(event: &TerminalEvent) -> Option<Message> {
    serde_json::to_string(event).ok().map(Message::text)
}

async fn send_event(socket: &mut WebSocket, event: &TerminalEvent) -> Result<(), axum::Error> {
    match event_message(event) {
        Some(message) => socket.send(message).await,
        None => Ok(()),
    }
}
