//! Temporary runs (`/api/v1/runs`), and how HTTP hands any accepted run its caller: plain (the
//! result when the run ends) or streamed over an upgraded connection (bkg-stream/1 frames).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::frame::{self, FrameKind, RUN_ID_HEADER, STREAM_PROTOCOL};
use bkg_schema::{ApiError, ErrorCode, RunRecord, RunRequest, RunResult};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::failure::{ApiResult, Failure};
use super::input::{self, PathParam, QueryParams};
use super::{AppState, MAX_BODY_BYTES};
use crate::auth::Principal;
use crate::service::{Accepted, RunInput, RunOutput, Service};

/// Whether the caller asked for the stream: `Upgrade: bkg-stream/1` counts only with the
/// `upgrade` option of `Connection`, as RFC 9110 (7.8) has a server ignore it otherwise (found by
/// a new-user trial: `Upgrade` alone switched protocols). Without it the request is a plain one.
fn wants_stream(headers: &HeaderMap) -> bool {
    let upgrade_option = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case("upgrade"));
    upgrade_option && headers.get(header::UPGRADE).and_then(|value| value.to_str().ok()) == Some(STREAM_PROTOCOL)
}

/// Start a run in a temporary sandbox.
///
/// A plain JSON request is answered with the result when the run ends. With `Connection:
/// upgrade` and `Upgrade: bkg-stream/1` the answer is 101 and the connection carries frames:
/// stdin in, output out, live (see docs/api.md).
#[utoipa::path(
    post,
    path = "/api/v1/runs",
    tag = "runs",
    request_body = RunRequest,
    responses(
        (status = 200, description = "The run ended; its output and accounting", body = RunResult),
        (status = 101, description = "Switched to the bkg-stream/1 framing"),
        (status = 503, description = "The sandbox could not be made", body = ApiError),
    ),
)]
pub async fn create_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    request: Request,
) -> Response {
    match start_run(state, principal, request).await {
        Ok(response) => response,
        Err(failure) => failure.into_response(),
    }
}

async fn start_run(state: AppState, principal: Principal, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let run_request: RunRequest = input::json(body, MAX_BODY_BYTES).await?;
    let accepted = state.service.accept_run(&principal, run_request)?;
    Ok(dispatch(state.service, parts, accepted).await)
}

/// Hands an accepted run its caller the way they asked: streamed over an upgraded connection,
/// or answered with the result when it ends.
pub async fn dispatch(service: Arc<Service>, mut parts: axum::http::request::Parts, accepted: Accepted) -> Response {
    if !wants_stream(&parts.headers) {
        return match service.run_to_end(accepted).await {
            Ok(result) => Json(result).into_response(),
            Err(error) => Failure::from(error).into_response(),
        };
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Failure::bad_request("this connection cannot be upgraded").into_response();
    };
    let run_id = HeaderValue::from_str(accepted.run_id()).ok();
    // Shutdown waits until the caller has been sent the result frame.
    let in_flight = service.run_in_flight();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        match on_upgrade.await {
            Ok(upgraded) => stream_run(service, accepted, TokioIo::new(upgraded)).await,
            Err(error) => tracing::warn!(%error, "stream upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(STREAM_PROTOCOL));
    if let Some(run_id) = run_id {
        response.headers_mut().insert(RUN_ID_HEADER, run_id);
    }
    response
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunListQuery {
    /// How many runs, newest first (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only runs of this namespace (an admin's filter; other keys see only their own).
    namespace: Option<String>,
    /// Only runs of this persistent sandbox (its id).
    sandbox: Option<String>,
    /// Only runs older than this one (its id): the next page after a listing's last run.
    before: Option<String>,
}

/// The newest runs the caller may see.
#[utoipa::path(
    get,
    path = "/api/v1/runs",
    tag = "runs",
    params(RunListQuery),
    responses(
        (status = 200, description = "Runs, newest first", body = Vec<RunRecord>),
        (status = 422, description = "A limit out of range, an empty filter, or a `before` that names no run the key may see", body = ApiError),
    ),
)]
pub async fn list_runs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    QueryParams(query): QueryParams<RunListQuery>,
) -> ApiResult<Json<Vec<RunRecord>>> {
    let limit = query.limit.unwrap_or(50);
    Ok(Json(state.service.list_runs(&principal, limit, query.namespace, query.sandbox, query.before).await?))
}

/// One run.
#[utoipa::path(
    get,
    path = "/api/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "The run as recorded", body = RunRecord)),
)]
pub async fn get_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(state.service.get_run(&principal, &id).await?))
}

/// Asks a queued or running run to end, as its caller's Ctrl-C does: its code gets SIGTERM,
/// and SIGKILL after a 5 s grace. Answers once the run's end is recorded.
#[utoipa::path(
    post,
    path = "/api/v1/runs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run as recorded after its end (`killed_by: cancelled`, unless it ended first)", body = RunRecord),
        (status = 404, description = "No run of this id that the key may see", body = ApiError),
        (status = 409, description = "The run has already ended, or it is a session's interpreter", body = ApiError),
    ),
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(state.service.cancel_run(&principal, &id).await?))
}

/// How long, once the run has ended, a streaming caller may take nothing of what is still to
/// reach it: then it has stopped reading, and its connection is closed. While the run goes on,
/// a caller that takes nothing only makes the code wait on its writes, as a paused terminal
/// does, within its timeout (found by a new-user trial: `bkg exe job.py | less` paused for 30 s
/// lost the rest of the output and exited 125, though the run ended well).
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `payload` as one frame at the end of `frames`.
fn push_frame(frames: &mut Vec<u8>, kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
    frames.extend_from_slice(&frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?);
    frames.extend_from_slice(payload);
    Ok(())
}

fn push_output(frames: &mut Vec<u8>, event: RunOutput) -> std::io::Result<()> {
    match event {
        RunOutput::Started(id) => push_frame(frames, FrameKind::Started, id.as_bytes()),
        RunOutput::Stdout(bytes) => push_frame(frames, FrameKind::Stdout, &bytes),
        RunOutput::Stderr(bytes) => push_frame(frames, FrameKind::Stderr, &bytes),
        RunOutput::Progress(line) => push_frame(frames, FrameKind::Progress, line.as_bytes()),
        RunOutput::Archive(bytes) => push_frame(frames, FrameKind::Archive, &bytes),
    }
}

/// Writes `frames`, unless `STREAM_WRITE_TIMEOUT` passes after the run has ended (`ended`)
/// before they are taken.
async fn write_frames(
    writer: &mut (impl AsyncWriteExt + Unpin),
    frames: &[u8],
    mut ended: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let patience = async {
        // A run task gone without saying so has ended too.
        let _ = ended.wait_for(|ended| *ended).await;
        tokio::time::sleep(STREAM_WRITE_TIMEOUT).await;
    };
    tokio::select! {
        written = writer.write_all(frames) => written,
        () = patience => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the caller stopped reading")),
    }
}

async fn stream_run<S>(service: Arc<Service>, accepted: Accepted, connection: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(connection);
    let (input_tx, input_rx) = mpsc::channel::<RunInput>(16);
    let (output_tx, mut output_rx) = mpsc::channel::<RunOutput>(64);

    // Frames from the caller: stdin, its end, or cancellation. A caller that goes away cancels;
    // one that breaks the protocol cancels too, and is told what it sent (the task's answer).
    let mut reader_task = tokio::spawn(async move {
        loop {
            let mut header = [0u8; frame::HEADER_LEN];
            if reader.read_exact(&mut header).await.is_err() {
                let _ = input_tx.send(RunInput::Cancel).await;
                return None;
            }
            let (kind, len) = match frame::decode_header(header) {
                Ok(decoded) => decoded,
                Err(error) => {
                    let _ = input_tx.send(RunInput::Cancel).await;
                    return Some(format!("the stream broke its protocol: {error}; the run was cancelled"));
                }
            };
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                let _ = input_tx.send(RunInput::Cancel).await;
                return None;
            }
            let event = match kind {
                FrameKind::Stdin => RunInput::Stdin(payload),
                FrameKind::StdinEnd => RunInput::StdinEnd,
                FrameKind::Cancel => RunInput::Cancel,
                FrameKind::StdoutClosed => RunInput::StdoutClosed,
                other => {
                    let _ = input_tx.send(RunInput::Cancel).await;
                    return Some(format!(
                        "the stream broke its protocol: a {other:?} frame is the agent's to send, not the caller's; \
                         the run was cancelled"
                    ));
                }
            };
            let cancel = matches!(event, RunInput::Cancel);
            if input_tx.send(event).await.is_err() || cancel {
                return None;
            }
        }
    });

    let started = service.start(accepted, input_rx, Some(output_tx));
    let (ended_tx, ended) = watch::channel(false);
    let run = tokio::spawn(async move {
        let outcome = started.await;
        let _ = ended_tx.send(true);
        outcome
    });
    let mut caller_gone = false;
    while let Some(event) = output_rx.recv().await {
        if caller_gone {
            continue;
        }
        let mut frames = Vec::new();
        let mut gathered = push_output(&mut frames, event);
        while gathered.is_ok()
            && frames.len() < super::GATHERED_BYTES
            && let Ok(next) = output_rx.try_recv()
        {
            gathered = push_output(&mut frames, next);
        }
        let written = match gathered {
            Ok(()) => write_frames(&mut writer, &frames, ended.clone()).await,
            Err(error) => Err(error),
        };
        // Keep draining, so the run's output buffer empties, but write nothing more.
        caller_gone = written.is_err();
    }
    if caller_gone {
        // A caller that stopped reading (or went away) gets no result; the run is recorded.
        let _ = run.await;
        reader_task.abort();
        return;
    }
    let outcome = run.await.and_then(|outcome| outcome);
    // A broken stream has cancelled the run: its reader has ended with what was wrong.
    let broken = match reader_task.is_finished() {
        true => (&mut reader_task).await.ok().flatten(),
        false => None,
    };
    let (kind, payload) = match outcome {
        Ok(Ok(_)) if let Some(broken) = broken => {
            (FrameKind::Error, serde_json::to_vec(&ApiError::new(ErrorCode::BadRequest, broken)))
        }
        Ok(Ok(result)) => (FrameKind::Result, serde_json::to_vec(&result)),
        Ok(Err(error)) => (FrameKind::Error, serde_json::to_vec(&ApiError::new(error.code(), error.to_string()))),
        Err(_) => (FrameKind::Error, serde_json::to_vec(&ApiError::new(ErrorCode::Internal, "run task failed"))),
    };
    let mut frames = Vec::new();
    if let Ok(payload) = payload
        && push_frame(&mut frames, kind, &payload).is_ok()
    {
        let _ = write_frames(&mut writer, &frames, ended).await;
    }
    let _ = writer.shutdown().await;
    reader_task.abort();
}
