//! The agent itself over HTTP: health, metrics, its description, shutdown and the bkg_db sync.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::health::{Health, HealthStatus};
use bkg_schema::sync::{Migrated, Retried, RetryRequest, SyncView};
use bkg_schema::{AgentInfo, ApiError};

use super::AppState;
use super::failure::{ApiResult, Failure};
use crate::auth::Principal;
use crate::service::{HealthVerdict, MetricsText};

/// Without a key (TCP only): 200 `{"status":"ok"}` or 503 `{"status":"unavailable","reason":WORD}`,
/// for load balancers and probes. With a key or on the socket: 200, or 503 with the reason in
/// full (the API's error shape). Healthy means the store can be written and runs work: one
/// succeeded recently, or the probe's own empty script did.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "agent",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "Not healthy: without a key the reason word (`Health`), with one the \
            API's error whose message says why", body = Health),
    ),
)]
pub async fn healthz(State(state): State<AppState>, principal: Option<Extension<Principal>>) -> Response {
    let principal = principal.map(|Extension(principal)| principal);
    let security_level = state.service.health_security_level(principal.as_ref());
    match state.service.health(principal.as_ref()).await {
        Ok(HealthVerdict::Healthy) => {
            Json(Health { status: HealthStatus::Ok, reason: None, security_level }).into_response()
        }
        Ok(HealthVerdict::Degraded(reason)) => {
            Json(Health { status: HealthStatus::Degraded, reason: Some(reason), security_level }).into_response()
        }
        Ok(HealthVerdict::Unavailable { detail: Some(detail), .. }) => Failure::unavailable(detail).into_response(),
        Ok(HealthVerdict::Unavailable { reason, detail: None }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: HealthStatus::Unavailable, reason: Some(reason), security_level }),
        )
            .into_response(),
        Err(error) => Failure::from(error).into_response(),
    }
}

/// This API's OpenAPI 3.1 document, as JSON (`bkg-agent --print-openapi` prints it as YAML), for
/// any caller the agent knows: generated from the same handlers and types that serve.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "agent",
    responses((status = 200, description = "The OpenAPI document", body = serde_json::Value)),
)]
pub async fn openapi() -> ApiResult<Response> {
    let document = crate::api_doc::json().map_err(|error| Failure::internal(error.to_string()))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], document).into_response())
}

/// Prometheus metrics, OpenMetrics text (admins only).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "agent",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String)),
)]
pub async fn metrics(State(state): State<AppState>, Extension(principal): Extension<Principal>) -> ApiResult<Response> {
    let MetricsText(text) = state.service.metrics_text(&principal).await?;
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    Ok(response)
}

/// The agent: version, paths, load and limits (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/agent",
    tag = "agent",
    responses((status = 200, description = "The agent", body = AgentInfo)),
)]
pub async fn agent_info(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<AgentInfo>> {
    Ok(Json(state.service.agent_info(&principal)?))
}

/// Stop the agent: warm sandboxes are removed, running ones get 5 s (admins only).
#[utoipa::path(
    post,
    path = "/api/v1/agent/shutdown",
    tag = "agent",
    responses((status = 202, description = "Shutting down")),
)]
pub async fn shutdown(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<StatusCode> {
    state.service.shut_down(&principal).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The sync's backlog, last success and last error (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/sync",
    tag = "agent",
    responses((status = 200, description = "The sync's state", body = SyncView)),
)]
pub async fn sync_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<SyncView>> {
    Ok(Json(state.service.sync_status(&principal).await?))
}

/// Ship parked events again, once what bkg_db refused is fixed (admins only). They go back into
/// the backlog with their attempts reset; one that fails again is parked again.
#[utoipa::path(
    post,
    path = "/api/v1/sync/retry",
    tag = "agent",
    request_body(content = Option<RetryRequest>, description = "Optional; an empty body retries every parked event"),
    responses(
        (status = 200, description = "Queued again (none when nothing was parked)", body = Retried),
        (status = 404, description = "The event named is not parked", body = ApiError),
    ),
)]
pub async fn sync_retry(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Body,
) -> ApiResult<Json<Retried>> {
    let request: RetryRequest = super::input::optional_json(body, super::input::SMALL_BODY_BYTES).await?;
    Ok(Json(state.service.retry_sync(&principal, request).await?))
}

/// Apply bkg_db's migrations now (admins only; the sync also applies them when it connects).
#[utoipa::path(
    post,
    path = "/api/v1/sync/migrate",
    tag = "agent",
    responses(
        (status = 200, description = "Migrated", body = Migrated),
        (status = 409, description = "No bkg_db is configured", body = ApiError),
        (status = 503, description = "bkg_db cannot be reached", body = ApiError),
    ),
)]
pub async fn sync_migrate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Migrated>> {
    Ok(Json(state.service.migrate_db(&principal).await?))
}

/// An agent's audit lines as bkg_db holds them, in order, one per line (admins only): what
/// `bkg audit verify --from-db` checks.
#[utoipa::path(
    get,
    path = "/api/v1/sync/audit/{agent_id}",
    tag = "agent",
    params(("agent_id" = String, Path, description = "The agent whose chain to read")),
    responses(
        (status = 200, description = "The lines", content_type = "text/plain"),
        (status = 409, description = "No bkg_db is configured, or the agent's login reads only some of its rows", body = ApiError),
        (status = 503, description = "bkg_db cannot be reached", body = ApiError),
    ),
)]
pub async fn sync_audit_lines(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    super::input::PathParam(agent_id): super::input::PathParam<String>,
) -> ApiResult<Response> {
    let text = state.service.db_audit_lines(&principal, &agent_id).await?;
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(response)
}
