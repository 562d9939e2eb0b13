//! Temporary runs (`/api/v1/runs`) and the run machinery shared with persistent sandboxes and
//! MCP: plain (the result when the run ends) or streamed over an upgraded connection.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::auth::Role;
use bkg_schema::frame::{self, FrameKind, STREAM_PROTOCOL};
use bkg_schema::{ApiError, ErrorCode, RunRecord, RunRequest, RunResult};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::failure::{ApiResult, Failure};
use super::input::{self, PathParam, QueryParams};
use super::{AppState, MAX_BODY_BYTES};
use crate::auth::Principal;
use crate::engine::run::{RunError, RunInput, RunOutput, ValidatedRun};
use crate::ids::new_id;

/// Model-access keys reach model endpoints only; everything that runs code is refused to them.
pub fn require_code_runner(principal: &Principal) -> ApiResult<()> {
    if principal.role() == Role::ModelAccess {
        return Err(Failure::forbidden("a model-access key cannot run code or manage sandboxes"));
    }
    Ok(())
}

/// Runs a validated run to its end, records it (store, audit log) and counts it.
pub async fn execute(
    state: AppState,
    principal: Principal,
    run_id: String,
    validated: ValidatedRun,
    input: mpsc::Receiver<RunInput>,
    output: Option<mpsc::Sender<RunOutput>>,
) -> Result<RunResult, RunError> {
    let caller = principal.audit_caller(&validated.namespace);
    let outcome = crate::records::execute(&state.engine, &state.store, &caller, run_id, validated, input, output).await;
    state.metrics.run_ended(outcome.as_ref().map_err(|_| ()));
    outcome
}

/// Runs with no stdin but what the request carries, and returns the result when it ends. The
/// run is its own task: a caller that hangs up must not leave a sandbox half-done.
pub async fn run_to_end(state: AppState, principal: Principal, validated: ValidatedRun) -> Result<RunResult, Failure> {
    let (input_tx, input_rx) = mpsc::channel(1);
    drop(input_tx);
    let task = tokio::spawn(execute(state, principal, new_id("run"), validated, input_rx, None));
    match task.await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(error)) => Err(Failure::from(&error)),
        Err(_) => Err(Failure::internal("the run's task failed")),
    }
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|value| value.to_str().ok()) == Some(STREAM_PROTOCOL)
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
    require_code_runner(&principal)?;
    let (parts, body) = request.into_parts();
    let run_request: RunRequest = input::json(body, MAX_BODY_BYTES).await?;
    if let Some(namespace) = &run_request.namespace
        && !bkg_schema::sandbox::is_dns_label(namespace)
    {
        return Err(Failure::invalid(format!("namespace `{namespace}` must be a DNS label (a-z, 0-9, -)")));
    }
    let namespace = principal.namespace_for(run_request.namespace.as_deref()).map_err(Failure::forbidden)?;
    let mut validated = state.engine.validate(run_request)?;
    validated.namespace = namespace;
    Ok(dispatch(state, principal, parts, validated).await)
}

/// Starts a validated run the way the caller asked: streamed over an upgraded connection, or
/// answered with the result when it ends.
pub async fn dispatch(
    state: AppState,
    principal: Principal,
    mut parts: axum::http::request::Parts,
    validated: ValidatedRun,
) -> Response {
    if !wants_stream(&parts.headers) {
        return match run_to_end(state, principal, validated).await {
            Ok(result) => Json(result).into_response(),
            Err(failure) => failure.into_response(),
        };
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Failure::bad_request("this connection cannot be upgraded").into_response();
    };
    let run_id = new_id("run");
    // Shutdown waits until the caller has been sent the result frame.
    let in_flight = state.engine.run_in_flight();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        match on_upgrade.await {
            Ok(upgraded) => stream_run(state, principal, run_id, validated, TokioIo::new(upgraded)).await,
            Err(error) => tracing::warn!(%error, "stream upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(STREAM_PROTOCOL));
    response
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunListQuery {
    /// How many runs, newest first (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only runs of this namespace (an admin's filter; other keys see only their own).
    namespace: Option<String>,
    /// Only runs of this persistent sandbox (its id).
    sandbox: Option<String>,
}

/// The newest runs the caller may see.
#[utoipa::path(
    get,
    path = "/api/v1/runs",
    tag = "runs",
    params(RunListQuery),
    responses((status = 200, description = "Runs, newest first", body = Vec<RunRecord>)),
)]
pub async fn list_runs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    QueryParams(query): QueryParams<RunListQuery>,
) -> ApiResult<Json<Vec<RunRecord>>> {
    require_code_runner(&principal)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(Failure::bad_request(format!("limit must be from 1 to 1000, not {limit}")));
    }
    let namespace = match (principal.namespace(), query.namespace) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(Failure::forbidden(format!("this key sees only namespace `{own}`")));
        }
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked,
    };
    Ok(Json(state.store.list_runs(namespace, query.sandbox, limit).await?))
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
    require_code_runner(&principal)?;
    match state.store.get_run(&id).await? {
        Some(run) if principal.reaches(&run.namespace) => Ok(Json(run)),
        // Another namespace's run is answered as missing: its existence is not ours to tell.
        _ => Err(Failure::not_found(format!("no run {id}"))),
    }
}

/// How long one frame may take to reach a streaming caller. One that takes no bytes for this
/// long has stopped reading: its connection is closed (the run itself never waits on it).
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn write_frame(
    writer: &mut (impl AsyncWriteExt + Unpin),
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let header = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    let write = async {
        writer.write_all(&header).await?;
        writer.write_all(payload).await
    };
    tokio::time::timeout(STREAM_WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the caller stopped reading")))
}

async fn stream_run<S>(state: AppState, principal: Principal, run_id: String, validated: ValidatedRun, connection: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(connection);
    let (input_tx, input_rx) = mpsc::channel::<RunInput>(16);
    let (output_tx, mut output_rx) = mpsc::channel::<RunOutput>(64);

    // Frames from the caller: stdin, its end, or cancellation. A caller that goes away cancels.
    let reader_task = tokio::spawn(async move {
        loop {
            let mut header = [0u8; frame::HEADER_LEN];
            if reader.read_exact(&mut header).await.is_err() {
                let _ = input_tx.send(RunInput::Cancel).await;
                return;
            }
            let Ok((kind, len)) = frame::decode_header(header) else {
                let _ = input_tx.send(RunInput::Cancel).await;
                return;
            };
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                let _ = input_tx.send(RunInput::Cancel).await;
                return;
            }
            let event = match kind {
                FrameKind::Stdin => RunInput::Stdin(payload),
                FrameKind::StdinEnd => RunInput::StdinEnd,
                _ => RunInput::Cancel,
            };
            let cancel = matches!(event, RunInput::Cancel);
            if input_tx.send(event).await.is_err() || cancel {
                return;
            }
        }
    });

    let run = tokio::spawn(execute(state, principal, run_id, validated, input_rx, Some(output_tx)));
    let mut caller_gone = false;
    while let Some(event) = output_rx.recv().await {
        if caller_gone {
            continue;
        }
        let written = match event {
            RunOutput::Started(id) => write_frame(&mut writer, FrameKind::Started, id.as_bytes()).await,
            RunOutput::Stdout(bytes) => write_frame(&mut writer, FrameKind::Stdout, &bytes).await,
            RunOutput::Stderr(bytes) => write_frame(&mut writer, FrameKind::Stderr, &bytes).await,
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
    let (kind, payload) = match run.await {
        Ok(Ok(result)) => (FrameKind::Result, serde_json::to_vec(&result)),
        Ok(Err(error)) => (FrameKind::Error, serde_json::to_vec(&ApiError::new(error.code(), error.to_string()))),
        Err(_) => (FrameKind::Error, serde_json::to_vec(&ApiError::new(ErrorCode::Internal, "run task failed"))),
    };
    if let Ok(payload) = payload {
        let _ = write_frame(&mut writer, kind, &payload).await;
    }
    let _ = writer.shutdown().await;
    reader_task.abort();
}
