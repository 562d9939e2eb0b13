//! The HTTP/JSON API on the agent's unix socket. Callers are checked by their peer credentials:
//! only root and the agent's own user may connect.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bkg_schema::frame::{self, FrameKind, STREAM_PROTOCOL};
use bkg_schema::sandbox::{
    DetachedRun, ExecRequest, SandboxDefinition, SandboxInfo, SandboxState, is_dns_label, sandbox_id,
};
use bkg_schema::{AgentInfo, ApiError, ErrorCode, RunRequest};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc};

use crate::engine::Engine;
use crate::engine::run::{RunError, RunInput, RunOutput};
use crate::ids::{new_id, now_ms};
use crate::store::{Store, StoredSandbox};

/// Largest request body: the code and its uploads, base64.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub socket: PathBuf,
    pub shutdown: Arc<Notify>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/agent", get(agent_info))
        .route("/api/v1/agent/shutdown", post(shutdown))
        .route("/api/v1/runs", post(create_run).get(list_runs))
        .route("/api/v1/runs/{id}", get(get_run))
        .route("/api/v1/sandboxes", get(list_sandboxes))
        .route("/api/v1/sandboxes/{id}", get(get_sandbox).put(put_sandbox).delete(delete_sandbox))
        .route("/api/v1/sandboxes/{id}/exec", post(exec_sandbox))
        .route("/api/v1/sandboxes/{id}/stop", post(stop_sandbox))
        .route("/api/v1/sandboxes/{id}/logs", get(sandbox_logs))
        .fallback(not_found)
        .with_state(state)
}

fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError::new(code, message))).into_response()
}

fn run_error_response(error: &RunError) -> Response {
    let status = match error {
        RunError::BadRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RunError::LimitAboveMaximum { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        RunError::RuntimeNotExecutable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RunError::Busy(_) => StatusCode::CONFLICT,
        RunError::Engine(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_response(status, error.code(), error.to_string())
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint")
}

async fn healthz(State(state): State<AppState>) -> Response {
    if let Err(error) = state.store.check_writable().await {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            format!("store not writable: {error}"),
        );
    }
    (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
}

async fn agent_info(State(state): State<AppState>) -> Json<AgentInfo> {
    let engine = &state.engine;
    Json(AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        socket: state.socket.display().to_string(),
        state_dir: engine.config.state_dir.display().to_string(),
        cgroup_version: engine.cgroup_version(),
        warm_sandboxes: engine.warm_count(),
        active_runs: engine.active_runs(),
        pending_cleanups: engine.cleanups_pending(),
        default_limits: engine.config.default_limits,
        max_limits: engine.config.max_limits,
    })
}

async fn shutdown(State(state): State<AppState>) -> StatusCode {
    state.shutdown.notify_one();
    StatusCode::ACCEPTED
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list_runs(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Response {
    match state.store.list_runs(query.limit.unwrap_or(50).min(1000)).await {
        Ok(runs) => Json(runs).into_response(),
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, error.to_string()),
    }
}

async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.get_run(&id).await {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("no run {id}")),
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, error.to_string()),
    }
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|value| value.to_str().ok()) == Some(STREAM_PROTOCOL)
}

/// Reads a JSON body of at most `MAX_BODY_BYTES`.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("request body is over {} MiB", MAX_BODY_BYTES >> 20),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|error| {
        // Broken JSON is a bad request; well-formed JSON with wrong values cannot be processed.
        let status = match error.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        error_response(status, ErrorCode::BadRequest, format!("invalid request body: {error}"))
    })
}

/// `POST /api/v1/runs`: a plain JSON request returns the result when the run ends; with
/// `Upgrade: bkg-stream/1` the connection switches to frames (stdin in, output out, live).
async fn create_run(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let run_request: RunRequest = match json_body(body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match state.engine.validate(run_request) {
        Ok(validated) => dispatch(state, parts, validated).await,
        Err(error) => run_error_response(&error),
    }
}

/// Starts a validated run the way the caller asked: streamed over an upgraded connection, or
/// answered with the result when it ends.
async fn dispatch(
    state: AppState,
    mut parts: axum::http::request::Parts,
    validated: crate::engine::run::ValidatedRun,
) -> Response {
    let run_id = new_id("run");
    if !wants_stream(&parts.headers) {
        let (input_tx, input_rx) = mpsc::channel(1);
        drop(input_tx);
        // The run is its own task: a caller that hangs up must not leave a sandbox half-done.
        let task = tokio::spawn(execute(state, run_id, validated, input_rx, None));
        return match task.await {
            Ok(Ok(result)) => Json(result).into_response(),
            Ok(Err(error)) => run_error_response(&error),
            Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "run task failed"),
        };
    }

    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "this connection cannot be upgraded");
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => stream_run(state, run_id, validated, TokioIo::new(upgraded)).await,
            Err(error) => tracing::warn!(%error, "stream upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(STREAM_PROTOCOL));
    response
}

fn store_error(error: crate::store::StoreError) -> Response {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, error.to_string())
}

fn no_sandbox(id: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("no sandbox {id}"))
}

async fn sandbox_info(state: &AppState, stored: StoredSandbox) -> Result<SandboxInfo, Response> {
    let definition = stored.definition;
    let id = sandbox_id(&definition.project_dir, &definition.name);
    let last_run = state.store.last_run_of(&id).await.map_err(store_error)?;
    let current_run = state.engine.current_run(&id);
    let limits = state.engine.config.default_limits.with(&definition.limits);
    let image = std::path::Path::new(&definition.project_dir).join(".bkg/sandboxes").join(&definition.name).join("disk.img");
    let disk_bytes_allocated = std::fs::metadata(image).map(|meta| std::os::unix::fs::MetadataExt::blocks(&meta) * 512).unwrap_or(0);
    Ok(SandboxInfo {
        state: if current_run.is_some() { SandboxState::Running } else { SandboxState::Idle },
        id,
        name: definition.name,
        namespace: definition.namespace,
        project_dir: definition.project_dir,
        language: definition.language,
        limits,
        current_run,
        last_run,
        created_at_ms: stored.created_at_ms,
        disk_bytes_allocated,
    })
}

#[derive(Deserialize)]
struct SandboxQuery {
    project_dir: Option<String>,
}

async fn list_sandboxes(State(state): State<AppState>, Query(query): Query<SandboxQuery>) -> Response {
    let stored = match state.store.list_sandboxes(query.project_dir).await {
        Ok(stored) => stored,
        Err(error) => return store_error(error),
    };
    let mut infos = Vec::with_capacity(stored.len());
    for sandbox in stored {
        match sandbox_info(&state, sandbox).await {
            Ok(info) => infos.push(info),
            Err(response) => return response,
        }
    }
    Json(infos).into_response()
}

async fn get_sandbox(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.get_sandbox(&id).await {
        Ok(Some(stored)) => match sandbox_info(&state, stored).await {
            Ok(info) => Json(info).into_response(),
            Err(response) => response,
        },
        Ok(None) => no_sandbox(&id),
        Err(error) => store_error(error),
    }
}

/// `PUT /api/v1/sandboxes/{id}`: defines (or redefines) a persistent sandbox.
async fn put_sandbox(State(state): State<AppState>, Path(id): Path<String>, body: Body) -> Response {
    let definition: SandboxDefinition = match json_body(body).await {
        Ok(definition) => definition,
        Err(response) => return response,
    };
    let invalid = |message: String| error_response(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::BadRequest, message);
    if !is_dns_label(&definition.name) {
        return invalid(format!("sandbox name `{}` must be a DNS label (a-z, 0-9, -)", definition.name));
    }
    if !is_dns_label(&definition.namespace) {
        return invalid(format!("namespace `{}` must be a DNS label (a-z, 0-9, -)", definition.namespace));
    }
    let project = std::path::Path::new(&definition.project_dir);
    if !project.is_absolute() || !project.is_dir() {
        return invalid(format!("project directory {} must be an existing absolute path", definition.project_dir));
    }
    if id != sandbox_id(&definition.project_dir, &definition.name) {
        return invalid(format!("sandbox id {id} does not belong to {} in {}", definition.name, definition.project_dir));
    }
    if let Err(error) = state.engine.resolve_limits(&definition.limits) {
        return run_error_response(&error);
    }
    match state.store.put_sandbox(&id, &definition, now_ms()).await {
        Ok(stored) => match sandbox_info(&state, stored).await {
            Ok(info) => Json(info).into_response(),
            Err(response) => response,
        },
        Err(error) => store_error(error),
    }
}

/// `POST /api/v1/sandboxes/{id}/exec`: a command in a persistent sandbox, streamed, plain, or
/// detached (202 with the run's id; the output goes to the sandbox's log).
async fn exec_sandbox(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let exec: ExecRequest = match json_body(body).await {
        Ok(exec) => exec,
        Err(response) => return response,
    };
    let stored = match state.store.get_sandbox(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return no_sandbox(&id),
        Err(error) => return store_error(error),
    };
    let detach = exec.detach;
    let validated = match state.engine.validate_exec(&stored.definition, exec) {
        Ok(validated) => validated,
        Err(error) => return run_error_response(&error),
    };
    if state.engine.current_run(&id).is_some() {
        return run_error_response(&RunError::Busy(format!("sandbox {} is already running; stop it first", stored.definition.name)));
    }
    if !detach {
        return dispatch(state, parts, validated).await;
    }
    let run_id = new_id("run");
    let (input_tx, input_rx) = mpsc::channel(1);
    drop(input_tx);
    tokio::spawn(execute(state.clone(), run_id.clone(), validated, input_rx, None));
    // The run registers itself before its first await point that matters to a follow-up stop;
    // give it that moment so `bkg stop` right after a detach finds it.
    for _ in 0..100 {
        if state.engine.current_run(&id).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (StatusCode::ACCEPTED, Json(DetachedRun { sandbox_id: id, run_id })).into_response()
}

async fn stop_sandbox(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.store.get_sandbox(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_sandbox(&id),
        Err(error) => return store_error(error),
    }
    let stopping = state.engine.stop_sandbox(&id);
    if stopping {
        for _ in 0..400 {
            if state.engine.current_run(&id).is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    Json(serde_json::json!({ "stopped": stopping })).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// `GET /api/v1/sandboxes/{id}/logs[?follow=true]`: the newest run's output as text; with
/// follow, the response goes on until that run ends.
async fn sandbox_logs(State(state): State<AppState>, Path(id): Path<String>, Query(query): Query<LogsQuery>) -> Response {
    let stored = match state.store.get_sandbox(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return no_sandbox(&id),
        Err(error) => return store_error(error),
    };
    let definition = stored.definition;
    let log_dir = std::path::Path::new(&definition.project_dir).join(".bkg/sandboxes").join(&definition.name).join("logs");
    let newest = std::fs::read_dir(&log_dir)
        .map(|entries| entries.flatten().map(|entry| entry.path()).max())
        .ok()
        .flatten();
    let Some(path) = newest else {
        return error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("sandbox {} has not run yet", definition.name));
    };
    let run_id = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let (sender, receiver) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let engine = Arc::clone(&state.engine);
    tokio::spawn(async move {
        let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buffer).await {
                Ok(0) => {
                    let still_running = engine.current_run(&id).as_deref() == Some(run_id.as_str());
                    if !query.follow || !still_running {
                        // One more read: the run may have written its last bytes as it ended.
                        if let Ok(n) = file.read(&mut buffer).await
                            && n > 0
                        {
                            let _ = sender.send(Ok(buffer[..n].to_vec())).await;
                        }
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Ok(n) => {
                    if sender.send(Ok(buffer[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
        }
    });
    let stream = futures_stream(receiver);
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// An mpsc receiver as the `Stream` axum's body wants.
fn futures_stream(
    mut receiver: mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
}

/// `DELETE /api/v1/sandboxes/{id}`: stops the sandbox and removes it with its disk and logs.
async fn delete_sandbox(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let stored = match state.store.get_sandbox(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return no_sandbox(&id),
        Err(error) => return store_error(error),
    };
    if state.engine.stop_sandbox(&id) {
        for _ in 0..400 {
            if state.engine.current_run(&id).is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    if state.engine.current_run(&id).is_some() {
        return run_error_response(&RunError::Busy(format!("sandbox {id} did not stop")));
    }
    let definition = stored.definition;
    let dir = std::path::Path::new(&definition.project_dir).join(".bkg/sandboxes").join(&definition.name);
    // Its last run's cleanup may still hold the disk image; it is released within moments.
    if let Err(error) = tokio::fs::remove_dir_all(&dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, format!("remove {}: {error}", dir.display()));
    }
    match state.store.delete_sandbox(&id).await {
        Ok(_) => Json(serde_json::json!({ "deleted": id })).into_response(),
        Err(error) => store_error(error),
    }
}

/// Runs and records a run (see `records::execute`).
async fn execute(
    state: AppState,
    run_id: String,
    validated: crate::engine::run::ValidatedRun,
    input: mpsc::Receiver<RunInput>,
    output: Option<mpsc::Sender<RunOutput>>,
) -> Result<bkg_schema::RunResult, RunError> {
    crate::records::execute(&state.engine, &state.store, run_id, validated, input, output).await
}

async fn write_frame(
    writer: &mut (impl AsyncWriteExt + Unpin),
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let header = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    writer.write_all(&header).await?;
    writer.write_all(payload).await
}

async fn stream_run<S>(state: AppState, run_id: String, validated: crate::engine::run::ValidatedRun, connection: S)
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

    let run = tokio::spawn(execute(state, run_id, validated, input_rx, Some(output_tx)));
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
        // Keep draining so the run is never blocked by a caller that stopped reading.
        caller_gone = written.is_err();
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

/// A unix listener that hands axum only connections from root or the agent's own user.
pub struct PeerCheckedListener {
    listener: UnixListener,
    agent_uid: u32,
}

impl PeerCheckedListener {
    pub fn new(listener: UnixListener) -> Self {
        Self { listener, agent_uid: nix::unistd::geteuid().as_raw() }
    }
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = UnixStream;
    type Addr = u32;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(credentials) if credentials.uid() == 0 || credentials.uid() == self.agent_uid => {
                        return (stream, credentials.uid());
                    }
                    Ok(credentials) => {
                        tracing::warn!(uid = credentials.uid(), "refused a connection from another user")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "refused a connection without peer credentials")
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.agent_uid)
    }
}
