//! `/api/v1/sandboxes/{id}/sessions`: interpreter sessions over HTTP (the operations are in
//! service/sessions.rs). An execution's events stream back as lines of JSON.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::ApiError;
use bkg_schema::files::{ExecuteRequest, NewSession, SessionEvent, SessionInfo};
use bkg_schema::sandbox::Deleted;

use super::AppState;
use super::MAX_BODY_BYTES;
use super::failure::ApiResult;
use super::input::{self, PathParam, SMALL_BODY_BYTES};
use crate::auth::Principal;

/// Starts a session (an interpreter that keeps its state) in an idle sandbox; it holds the
/// sandbox until it is deleted. One session per sandbox.
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/sessions",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body(content = Option<NewSession>, description = "Optional; an empty body makes the session `default` in the sandbox's language"),
    responses(
        (status = 201, description = "The session", body = SessionInfo),
        (status = 409, description = "The sandbox has a session already (one per sandbox)", body = ApiError),
    ),
)]
pub async fn create_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    request: Request,
) -> ApiResult<Response> {
    let new: NewSession = input::optional_json(request.into_body(), SMALL_BODY_BYTES).await?;
    let info = state.service.create_session(&principal, &id, new).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// The sandbox's session, if it has one.
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}/sessions",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, description = "Its sessions (none or one)", body = Vec<SessionInfo>)),
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    Ok(Json(state.service.list_sessions(&principal, &id).await?))
}

/// One session.
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}/sessions/{name}",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id"), ("name" = String, Path, description = "The session's name")),
    responses((status = 200, description = "The session", body = SessionInfo)),
)]
pub async fn get_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam((id, name)): PathParam<(String, String)>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.service.get_session(&principal, &id, &name).await?))
}

/// Ends the session's interpreter; the sandbox is free again.
#[utoipa::path(
    delete,
    path = "/api/v1/sandboxes/{id}/sessions/{name}",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id"), ("name" = String, Path, description = "The session's name")),
    responses((status = 200, description = "Deleted", body = Deleted)),
)]
pub async fn delete_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam((id, name)): PathParam<(String, String)>,
) -> ApiResult<Json<Deleted>> {
    state.service.delete_session(&principal, &id, &name).await?;
    Ok(Json(Deleted { deleted: name }))
}

/// Runs code in the session. The answer is `application/x-ndjson`: one `SessionEvent` a line as
/// it happens (`stream`, `display`, `result`, `error`), the last one `end`. A second execution
/// while one goes on is a 409.
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/sessions/{name}/execute",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id"), ("name" = String, Path, description = "The session's name")),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The execution's events, one JSON object a line", content((SessionEvent = "application/x-ndjson"))),
        (status = 409, description = "The session is running an execution already", body = ApiError),
    ),
)]
pub async fn execute(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam((id, name)): PathParam<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let ExecuteRequest { code } = input::json(request.into_body(), MAX_BODY_BYTES).await?;
    let events = state.service.execute_in_session(&principal, &id, &name, code).await?;
    // The events queued together go out as one piece of the body.
    let lines = futures_util::stream::unfold(events, |mut events| async move {
        let mut lines = Vec::new();
        let mut next = Some(events.recv().await?);
        while let Some(event) = next {
            lines.extend(serde_json::to_vec(&event).unwrap_or_default());
            lines.push(b'\n');
            next = match lines.len() < super::GATHERED_BYTES {
                true => events.try_recv(),
                false => None,
            };
        }
        Some((Ok::<_, std::convert::Infallible>(lines), events))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// Interrupts the execution going on (like Ctrl-C); the session and its state stay.
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/sessions/{name}/interrupt",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id"), ("name" = String, Path, description = "The session's name")),
    responses((status = 200, description = "The session", body = SessionInfo)),
)]
pub async fn interrupt(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam((id, name)): PathParam<(String, String)>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.service.interrupt_session(&principal, &id, &name).await?))
}

/// A fresh interpreter for the session (same name and language); its state is gone.
#[utoipa::path(
    post,
    path = "/api/v1/sandboxes/{id}/sessions/{name}/restart",
    tag = "sessions",
    params(("id" = String, Path, description = "The sandbox's id"), ("name" = String, Path, description = "The session's name")),
    responses((status = 200, description = "The new session", body = SessionInfo)),
)]
pub async fn restart(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam((id, name)): PathParam<(String, String)>,
) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(state.service.restart_session(&principal, &id, &name).await?))
}
