//! Persistent sandboxes: define, create, list, get, start, exec, stop, logs and delete. Every
//! sandbox has a namespace; a namespace or session key sees only its own (others are answered
//! 404, as if they did not exist), and may only use its namespace's project directory on the
//! agent, without host volumes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::sandbox::{
    Deleted, DetachedRun, ExecRequest, NewSandbox, SandboxDefinition, SandboxInfo, SandboxState, StartRequest, Stopped,
    is_dns_label, sandbox_id,
};
use bkg_schema::{ApiError, RunResult};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::failure::{ApiResult, Failure};
use super::input::{self, PathParam, QueryParams, SMALL_BODY_BYTES};
use super::runs::{dispatch, execute, require_code_runner};
use super::{AppState, MAX_BODY_BYTES};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::engine::run::RunError;
use crate::ids::{new_id, now_ms};
use crate::store::StoredSandbox;

/// The project directory on the agent where the sandboxes of `namespace` live when their
/// caller has no project of its own here (`POST /api/v1/sandboxes`, MCP).
pub fn scratch_project_dir(engine: &Engine, namespace: &str) -> PathBuf {
    engine.scratch_project_dir(namespace)
}

fn sandbox_dir(definition: &SandboxDefinition) -> PathBuf {
    Path::new(&definition.project_dir).join(".bkg/sandboxes").join(&definition.name)
}

fn no_sandbox(id: &str) -> Failure {
    Failure::not_found(format!("no sandbox {id}"))
}

pub async fn sandbox_info(state: &AppState, stored: StoredSandbox) -> ApiResult<SandboxInfo> {
    let definition = stored.definition;
    let id = sandbox_id(&definition.project_dir, &definition.name);
    let last_run = state.store.last_run_of(&id).await?;
    let current_run = state.engine.current_run(&id);
    let limits = state.engine.config.default_limits.with(&definition.limits);
    let image = sandbox_dir(&definition).join("disk.img");
    let disk_bytes_allocated =
        std::fs::metadata(image).map(|meta| std::os::unix::fs::MetadataExt::blocks(&meta) * 512).unwrap_or(0);
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

/// The sandbox `id` if the caller may reach it; another namespace's is "not found".
pub async fn visible_sandbox(state: &AppState, principal: &Principal, id: &str) -> ApiResult<StoredSandbox> {
    require_code_runner(principal)?;
    match state.store.get_sandbox(id).await? {
        Some(stored) if principal.reaches(&stored.definition.namespace) => Ok(stored),
        _ => Err(no_sandbox(id)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SandboxListQuery {
    /// Only the sandboxes of this project directory.
    project_dir: Option<String>,
    /// Only the sandboxes of this namespace (other keys than admin see only their own anyway).
    namespace: Option<String>,
}

/// The sandboxes the caller may see.
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes",
    tag = "sandboxes",
    params(SandboxListQuery),
    responses((status = 200, description = "Sandboxes, by project and name", body = Vec<SandboxInfo>)),
)]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    QueryParams(query): QueryParams<SandboxListQuery>,
) -> ApiResult<Json<Vec<SandboxInfo>>> {
    require_code_runner(&principal)?;
    let stored = state.store.list_sandboxes(query.project_dir).await?;
    let mut infos = Vec::with_capacity(stored.len());
    for sandbox in stored {
        let namespace = &sandbox.definition.namespace;
        if principal.reaches(namespace) && query.namespace.as_ref().is_none_or(|wanted| wanted == namespace) {
            infos.push(sandbox_info(&state, sandbox).await?);
        }
    }
    Ok(Json(infos))
}

/// One sandbox.
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id: NAME-<hash of its project directory>")),
    responses((status = 200, description = "The sandbox", body = SandboxInfo)),
)]
pub async fn get_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<SandboxInfo>> {
    let stored = visible_sandbox(&state, &principal, &id).await?;
    Ok(Json(sandbox_info(&state, stored).await?))
}

/// Checks a definition and stores it; `id` must be the one it computes to.
async fn define(
    state: &AppState,
    principal: &Principal,
    id: &str,
    definition: SandboxDefinition,
) -> ApiResult<SandboxInfo> {
    require_code_runner(principal)?;
    if !is_dns_label(&definition.name) {
        return Err(Failure::invalid(format!("sandbox name `{}` must be a DNS label (a-z, 0-9, -)", definition.name)));
    }
    if !is_dns_label(&definition.namespace) {
        return Err(Failure::invalid(format!(
            "namespace `{}` must be a DNS label (a-z, 0-9, -)",
            definition.namespace
        )));
    }
    if !principal.reaches(&definition.namespace) {
        return Err(Failure::forbidden(format!(
            "this key cannot define sandboxes in namespace `{}`",
            definition.namespace
        )));
    }
    if !principal.is_admin() {
        // Only the machine's administrators may mount host paths into a sandbox.
        let own_dir = scratch_project_dir(&state.engine, &definition.namespace);
        if Path::new(&definition.project_dir) != own_dir {
            return Err(Failure::forbidden(format!(
                "a {} key may only use its namespace's project directory {}",
                principal.role().as_str(),
                own_dir.display()
            )));
        }
        if !definition.volumes.is_empty() {
            return Err(Failure::forbidden("only an admin may bind host volumes into a sandbox"));
        }
    }
    let project = Path::new(&definition.project_dir);
    if !project.is_absolute() || !project.is_dir() {
        return Err(Failure::invalid(format!(
            "project directory {} must be an existing absolute path",
            definition.project_dir
        )));
    }
    if id != sandbox_id(&definition.project_dir, &definition.name) {
        return Err(Failure::invalid(format!(
            "sandbox id {id} does not belong to {} in {}",
            definition.name, definition.project_dir
        )));
    }
    if let Some(existing) = state.store.get_sandbox(id).await?
        && !principal.reaches(&existing.definition.namespace)
    {
        return Err(Failure::forbidden(format!("sandbox {id} belongs to another namespace")));
    }
    state.engine.check_definition(&definition)?;
    let caller = principal.audit_caller(&definition.namespace);
    let stored = state.store.put_sandbox(&caller, id, &definition, now_ms()).await?;
    sandbox_info(state, stored).await
}

/// Define (or redefine) a persistent sandbox of a project on the agent's host.
#[utoipa::path(
    put,
    path = "/api/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "NAME-<hash of the project directory>, as `sandbox_id` computes it")),
    request_body = SandboxDefinition,
    responses((status = 200, description = "The sandbox as defined", body = SandboxInfo)),
)]
pub async fn put_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    body: Body,
) -> ApiResult<Json<SandboxInfo>> {
    let definition: SandboxDefinition = input::json(body, SMALL_BODY_BYTES).await?;
    Ok(Json(define(&state, &principal, &id, definition).await?))
}

/// Create a sandbox in the namespace's own project directory on the agent.
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes",
    tag = "sandboxes",
    request_body = NewSandbox,
    responses(
        (status = 201, description = "Created", body = SandboxInfo),
        (status = 409, description = "A sandbox of that name exists in the namespace", body = ApiError),
    ),
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> ApiResult<(StatusCode, Json<SandboxInfo>)> {
    require_code_runner(&principal)?;
    let new: NewSandbox = input::json(body, SMALL_BODY_BYTES).await?;
    let info = create_in_namespace(&state, &principal, new).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Creates a sandbox in the caller's (or, for admins, the named) namespace's project directory.
pub async fn create_in_namespace(state: &AppState, principal: &Principal, new: NewSandbox) -> ApiResult<SandboxInfo> {
    if let Some(namespace) = &new.namespace
        && !is_dns_label(namespace)
    {
        return Err(Failure::invalid(format!("namespace `{namespace}` must be a DNS label (a-z, 0-9, -)")));
    }
    let namespace = principal.namespace_for(new.namespace.as_deref()).map_err(Failure::forbidden)?;
    let project_dir = scratch_project_dir(&state.engine, &namespace);
    let project = project_dir.to_string_lossy().into_owned();
    let id = sandbox_id(&project, &new.name);
    if state.store.get_sandbox(&id).await?.is_some() {
        return Err(Failure::conflict(format!("sandbox `{}` already exists in namespace `{namespace}`", new.name)));
    }
    if is_dns_label(&new.name) {
        tokio::fs::create_dir_all(&project_dir)
            .await
            .map_err(|error| Failure::internal(format!("create {}: {error}", project_dir.display())))?;
    }
    let definition = SandboxDefinition {
        name: new.name,
        namespace,
        project_dir: project,
        language: new.language,
        limits: new.limits,
        env: new.env,
        volumes: Vec::new(),
        scripts: new.scripts,
    };
    define(state, principal, &id, definition).await
}

/// Run one of the sandbox's scripts (default `start`), detached: 202 with the run's id; its
/// output goes to the sandbox's log.
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/start",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body(content = Option<StartRequest>, description = "Optional; an empty body starts `start`"),
    responses(
        (status = 202, description = "Started", body = DetachedRun),
        (status = 409, description = "The sandbox is already running", body = ApiError),
    ),
)]
pub async fn start_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<DetachedRun>)> {
    let start: StartRequest = input::optional_json(body, SMALL_BODY_BYTES).await?;
    let stored = visible_sandbox(&state, &principal, &id).await?;
    let script = start.script.unwrap_or_else(|| "start".to_owned());
    let Some(command) = stored.definition.scripts.get(&script).cloned() else {
        return Err(Failure::invalid(format!("sandbox {} has no script `{script}`", stored.definition.name)));
    };
    let exec = ExecRequest { command, detach: true, env: start.env, stdin_base64: None };
    let run = detach(&state, &principal, &id, &stored, exec).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

async fn detach(
    state: &AppState,
    principal: &Principal,
    id: &str,
    stored: &StoredSandbox,
    exec: ExecRequest,
) -> ApiResult<DetachedRun> {
    let validated = state.engine.validate_exec(&stored.definition, exec)?;
    if state.engine.current_run(id).is_some() {
        return Err(busy(&stored.definition.name));
    }
    let run_id = new_id("run");
    let (input_tx, input_rx) = mpsc::channel(1);
    drop(input_tx);
    tokio::spawn(execute(state.clone(), principal.clone(), run_id.clone(), validated, input_rx, None));
    // The run registers itself before its first await point that matters to a follow-up stop;
    // give it that moment so a stop right after a detach finds it.
    for _ in 0..100 {
        if state.engine.current_run(id).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(DetachedRun { sandbox_id: id.to_owned(), run_id })
}

fn busy(name: &str) -> Failure {
    Failure::from(RunError::Busy(format!("sandbox {name} is already running; stop it first")))
}

/// Run a command in the sandbox: plain (the result when it ends), streamed (`Upgrade:
/// bkg-stream/1`), or detached (`"detach": true`, 202 with the run's id).
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/exec",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The run ended", body = RunResult),
        (status = 202, description = "Detached: the run goes on", body = DetachedRun),
        (status = 101, description = "Switched to the bkg-stream/1 framing"),
        (status = 409, description = "The sandbox is already running", body = ApiError),
        (status = 503, description = "The sandbox could not be made", body = ApiError),
    ),
)]
pub async fn exec_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let outcome = async {
        let exec: ExecRequest = input::json(body, MAX_BODY_BYTES).await?;
        let stored = visible_sandbox(&state, &principal, &id).await?;
        if exec.detach {
            let run = detach(&state, &principal, &id, &stored, exec).await?;
            return Ok((StatusCode::ACCEPTED, Json(run)).into_response());
        }
        let validated = state.engine.validate_exec(&stored.definition, exec)?;
        if state.engine.current_run(&id).is_some() {
            return Err(busy(&stored.definition.name));
        }
        Ok(dispatch(state.clone(), principal.clone(), parts, validated).await)
    }
    .await;
    outcome.unwrap_or_else(IntoResponse::into_response)
}

/// Stops the run going on in sandbox `id`, if any, and waits (up to 10 s) until it has ended
/// and its end is recorded, so what the caller reads next shows it. False when none was going on.
async fn stop_and_wait(state: &AppState, id: &str) -> bool {
    let Some(run_id) = state.engine.current_run(id) else {
        return false;
    };
    if !state.engine.stop_sandbox(id) {
        return false;
    }
    for _ in 0..400 {
        let ended = state.engine.current_run(id).as_deref() != Some(run_id.as_str());
        let recorded =
            ended && state.store.get_run(&run_id).await.ok().flatten().is_none_or(|run| run.finished_at_ms.is_some());
        if recorded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Stop the run going on in the sandbox (`killed_by: cancelled`).
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/stop",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, description = "Whether a run was stopped", body = Stopped)),
)]
pub async fn stop_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Stopped>> {
    visible_sandbox(&state, &principal, &id).await?;
    let stopped = stop_and_wait(&state, &id).await;
    Ok(Json(Stopped { stopped }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the answer open until the run ends.
    #[serde(default)]
    follow: bool,
}

/// The newest run's output: plain text, or server-sent events with `Accept: text/event-stream`
/// (one `log` event per line, then an `end` event naming the run).
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}/logs",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id"), LogsQuery),
    responses((
        status = 200,
        description = "The output of the newest run",
        content(
            (String = "text/plain"),
            (String = "text/event-stream"),
        ),
    )),
)]
pub async fn sandbox_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<LogsQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let stored = visible_sandbox(&state, &principal, &id).await?;
    let definition = stored.definition;
    let log_dir = sandbox_dir(&definition).join("logs");
    let newest =
        std::fs::read_dir(&log_dir).map(|entries| entries.flatten().map(|entry| entry.path()).max()).ok().flatten();
    let Some(path) = newest else {
        return Err(Failure::not_found(format!("sandbox {} has not run yet", definition.name)));
    };
    let run_id = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let (sender, receiver) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(follow_log(Arc::clone(&state.engine), id, run_id, path, query.follow, sse, sender));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let content_type = if sse { "text/event-stream" } else { "text/plain; charset=utf-8" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if sse {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(response)
}

/// Sends the log file at `path` as it grows: raw, or as SSE `log` events, one per line.
async fn follow_log(
    engine: Arc<Engine>,
    sandbox_id: String,
    run_id: String,
    path: PathBuf,
    follow: bool,
    sse: bool,
    sender: mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
    let mut buffer = vec![0u8; 64 * 1024];
    let mut lines = SseLines::default();
    loop {
        let read = match file.read(&mut buffer).await {
            Ok(0) => {
                let still_running = engine.current_run(&sandbox_id).as_deref() == Some(run_id.as_str());
                if follow && still_running {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // One more read: the run may have written its last bytes as it ended.
                let last = file.read(&mut buffer).await.unwrap_or(0);
                let mut tail = if sse { lines.events(&buffer[..last]) } else { buffer[..last].to_vec() };
                if sse {
                    tail.extend(lines.finish(&run_id));
                }
                if !tail.is_empty() {
                    let _ = sender.send(Ok(tail)).await;
                }
                return;
            }
            Ok(n) => n,
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        let chunk = if sse { lines.events(&buffer[..read]) } else { buffer[..read].to_vec() };
        if !chunk.is_empty() && sender.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
}

/// Turns output into SSE `log` events, one per complete line; a partial line waits for its end.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn events(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            push_event(&mut out, "log", &line[..line.len() - 1]);
        }
        out
    }

    fn finish(&mut self, run_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            push_event(&mut out, "log", &rest);
        }
        push_event(&mut out, "end", serde_json::json!({ "run_id": run_id }).to_string().as_bytes());
        out
    }
}

fn push_event(out: &mut Vec<u8>, event: &str, data: &[u8]) {
    out.extend_from_slice(format!("event: {event}\ndata: ").as_bytes());
    // A stray carriage return would end the SSE line early.
    out.extend(data.iter().map(|byte| if *byte == b'\r' { b' ' } else { *byte }));
    out.extend_from_slice(b"\n\n");
}

/// Stop the sandbox and remove it with its disk and logs.
#[utoipa::path(
    delete,
    path = "/api/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "Removed", body = Deleted),
        (status = 409, description = "Its run did not stop", body = ApiError),
    ),
)]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Deleted>> {
    let stored = visible_sandbox(&state, &principal, &id).await?;
    remove(&state, &principal, &id, stored).await?;
    Ok(Json(Deleted { deleted: id }))
}

/// Stops a sandbox's run and removes it, its disk and logs.
pub async fn remove(state: &AppState, principal: &Principal, id: &str, stored: StoredSandbox) -> ApiResult<()> {
    stop_and_wait(state, id).await;
    if state.engine.current_run(id).is_some() {
        return Err(Failure::from(RunError::Busy(format!("sandbox {id} did not stop"))));
    }
    let definition = stored.definition;
    let dir = sandbox_dir(&definition);
    // Its last run's cleanup may still hold the disk image; it is released within moments.
    if let Err(error) = tokio::fs::remove_dir_all(&dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Failure::internal(format!("remove {}: {error}", dir.display())));
    }
    let caller = principal.audit_caller(&definition.namespace);
    state.store.delete_sandbox(&caller, id).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_carry_whole_lines_and_end_with_the_run() {
        let mut lines = SseLines::default();
        assert_eq!(lines.events(b"one\ntw"), b"event: log\ndata: one\n\n".to_vec());
        assert_eq!(lines.events(b"o\r\n"), b"event: log\ndata: two \n\n".to_vec());
        lines.events(b"tail");
        let end = String::from_utf8(lines.finish("run_1")).unwrap_or_default();
        assert_eq!(end, "event: log\ndata: tail\n\nevent: end\ndata: {\"run_id\":\"run_1\"}\n\n");
    }
}
