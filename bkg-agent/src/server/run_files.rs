//! A run's kept files (`/api/v1/runs/{id}/files`): the list, and each file's content streamed
//! from the object store as it arrives, never whole in memory.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::artefacts::RunFiles;

use super::AppState;
use super::failure::ApiResult;
use super::input::PathParam;
use crate::api_doc::Binary;
use crate::auth::Principal;

/// The files a run kept.
#[utoipa::path(
    get,
    path = "/api/v1/runs/{id}/files",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "What the run kept: its files and long output", body = RunFiles)),
)]
pub async fn list_run_files(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<RunFiles>> {
    Ok(Json(state.service.list_run_files(&principal, &id).await?))
}

/// One file a run kept, streamed (`ETag` and `X-Bkg-Sha256`: its SHA-256).
#[utoipa::path(
    get,
    path = "/api/v1/runs/{id}/files/{path}",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run's id"),
        ("path" = String, Path, description = "The file's path as listed (`out/report.csv`, `stdout`)"),
    ),
    responses((
        status = 200,
        description = "The file's content",
        content_type = "application/octet-stream",
        body = inline(Binary),
        headers(
            ("X-Bkg-Sha256" = String, description = "The content's SHA-256, lowercase hex"),
            ("ETag" = String, description = "The content's SHA-256, quoted"),
        ),
    )),
)]
pub async fn get_run_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam((id, path)): PathParam<(String, String)>,
) -> ApiResult<Response> {
    let download = state.service.open_run_file(&principal, &id, &path).await?;
    let mut response = Body::from_stream(download.content).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.file.bytes));
    if let Ok(digest) = HeaderValue::from_str(&download.file.sha256) {
        headers.insert("x-bkg-sha256", digest.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", download.file.sha256)) {
            headers.insert(header::ETAG, etag);
        }
    }
    Ok(response)
}
