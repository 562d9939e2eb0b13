//! `/api/v1/sandboxes`: persistent sandboxes over HTTP (the operations and their rules are in
//! service/sandboxes.rs), and the log as plain text or server-sent events.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::sandbox::{
    Deleted, DetachedRun, ExecRequest, NewSandbox, SandboxDefinition, SandboxInfo, StartRequest, Stopped,
};
use bkg_schema::{ApiError, RunResult, ServerSentEvent};
use serde::Deserialize;

use super::failure::{ApiResult, Failure};
use super::input::{self, DEFINITION_BODY_BYTES, PathParam, QueryParams, SMALL_BODY_BYTES};
use super::runs::dispatch;
use super::{AppState, MAX_BODY_BYTES};
use crate::auth::Principal;
use crate::service::LogTail;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
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
    Ok(Json(state.service.list_sandboxes(&principal, query.project_dir, query.namespace).await?))
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
    Ok(Json(state.service.get_sandbox(&principal, &id).await?))
}

/// Define (or redefine) a persistent sandbox of a project on the agent's host.
#[utoipa::path(
    put,
    path = "/api/v1/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "NAME-<hash of the project directory>, as `sandbox_id` computes it")),
    request_body = SandboxDefinition,
    responses(
        (status = 200, description = "The sandbox as defined", body = SandboxInfo),
        (status = 409, description = "Another definition of a sandbox that is running (it keeps the one it started with until it stops), or of one in another namespace", body = ApiError),
    ),
)]
pub async fn put_sandbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    body: Body,
) -> ApiResult<Json<SandboxInfo>> {
    let definition: SandboxDefinition = input::json(body, DEFINITION_BODY_BYTES).await?;
    Ok(Json(state.service.define_sandbox(&principal, &id, definition).await?))
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
    let new: NewSandbox = input::json(body, DEFINITION_BODY_BYTES).await?;
    let info = state.service.create_sandbox(&principal, new).await?;
    Ok((StatusCode::CREATED, Json(info)))
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
    let run = state.service.start_script(&principal, &id, start).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
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
        let detached = exec.detach;
        let accepted = state.service.accept_exec(&principal, &id, exec).await?;
        if detached {
            let run = state.service.detach(&id, accepted).await;
            return Ok((StatusCode::ACCEPTED, Json(run)).into_response());
        }
        Ok::<_, Failure>(dispatch(Arc::clone(&state.service), parts, accepted).await)
    }
    .await;
    outcome.unwrap_or_else(IntoResponse::into_response)
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
    let stopped = state.service.stop_sandbox(&principal, &id).await?;
    Ok(Json(Stopped { stopped }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep the answer open until the run ends.
    #[serde(default)]
    follow: bool,
    /// The log of this earlier run of the sandbox (its last 20 runs' logs are kept), not the
    /// newest: a service's run before it was started again. Not with `follow`.
    #[serde(default)]
    run: Option<String>,
}

/// The newest run's output, or that of an earlier run (`run`): plain text, or server-sent events
/// with `Accept: text/event-stream` (one `log` event per line, then an `end` event naming the run).
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
            (ServerSentEvent = "text/event-stream"),
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
    let tail = match &query.run {
        Some(run) => state.service.run_log(&principal, &id, run, query.follow).await?,
        None => state.service.sandbox_log(&principal, &id, query.follow).await?,
    };
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let stream = log_stream(tail, sse);
    let mut response = Response::new(Body::from_stream(stream));
    let content_type = if sse { "text/event-stream" } else { "text/plain; charset=utf-8" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if sse {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(response)
}

/// The log's bytes as they come: raw, or as SSE `log` events, one per line, then an `end` event.
fn log_stream(
    tail: LogTail,
    sse: bool,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let LogTail { run_id, chunks } = tail;
    futures_util::stream::unfold(
        (chunks, SseLines::default(), Some(run_id)),
        move |(mut chunks, mut lines, mut end)| async move {
            loop {
                let item = match chunks.recv().await {
                    Some(Ok(bytes)) if sse => Ok(lines.events(&bytes)),
                    // An event client hears why the log stops early (its key, say), in place of `end`.
                    Some(Err(error)) if sse => {
                        return Some((Ok(lines.failed(&error.to_string())), (chunks, lines, None)));
                    }
                    Some(chunk) => chunk,
                    None => {
                        // The end event once the log is read, naming its run.
                        let run_id = end.take().filter(|_| sse)?;
                        return Some((Ok(lines.finish(&run_id)), (chunks, lines, None)));
                    }
                };
                if item.as_ref().is_ok_and(Vec::is_empty) {
                    continue;
                }
                return Some((item, (chunks, lines, end)));
            }
        },
    )
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

    /// What is left of a partial line, then an `error` event saying why the log stops early.
    fn failed(&mut self, message: &str) -> Vec<u8> {
        self.last("error", serde_json::json!({ "message": message }))
    }

    fn finish(&mut self, run_id: &str) -> Vec<u8> {
        self.last("end", serde_json::json!({ "run_id": run_id }))
    }

    /// What is left of a partial line, then the last event.
    fn last(&mut self, event: &str, data: serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            push_event(&mut out, "log", &rest);
        }
        push_event(&mut out, event, data.to_string().as_bytes());
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
    state.service.delete_sandbox(&principal, &id).await?;
    Ok(Json(Deleted { deleted: id }))
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
