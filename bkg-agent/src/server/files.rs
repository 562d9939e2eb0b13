//! `/api/v1/sandboxes/{id}/files`: files in and out of a persistent sandbox as tar streams (the
//! operations are in service/files.rs). The upload's body is streamed to the sandbox as it
//! arrives: the gatekeeper does not read it whole (server.rs, `STREAMED_BODY_ROUTES`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::ApiError;
use bkg_schema::files::{FileEntry, UploadResult};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::AppState;
use super::failure::{ApiResult, Failure};
use super::input::{PathParam, QueryParams};
use crate::api_doc::Binary;
use crate::auth::Principal;

/// How much of an upload's body is read and dropped once the upload has ended (refused, disk
/// full, or the tar stream's end reached), so the client hears the answer: twice a default
/// sandbox's disk. A client still sending past it sees the connection close instead.
const DRAIN_LIMIT_BYTES: usize = 1 << 30;

/// The route whose PUT body is streamed.
pub const FILES_ROUTE: &str = "/api/v1/sandboxes/{id}/files";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// A path relative to /workspace (no `..`, not absolute) [default: /workspace itself].
    #[serde(default)]
    path: String,
}

/// Uploads a tar stream (`Content-Type: application/x-tar`) into the directory `path` of the
/// sandbox's /workspace, made if missing. Files, directories and symbolic links are taken; no
/// entry may leave /workspace. Each file is written whole or not at all: one that fails (a full
/// disk is a 422 that says so) leaves nothing, and a file it was to replace stays as it was.
#[utoipa::path(
    put,
    path = "/api/v1/sandboxes/{id}/files",
    tag = "files",
    params(("id" = String, Path, description = "The sandbox's id"), FilesQuery),
    request_body(content = inline(Binary), content_type = "application/x-tar", description = "A tar stream"),
    responses(
        (status = 200, description = "What was written", body = UploadResult),
        (status = 409, description = "The sandbox stayed busy: its runs kept taking it for 30 s, or the run going on did not start", body = ApiError),
        (status = 503, description = "The sandbox could not be started for the transfer (the agent is full, or its sandbox failed)", body = ApiError),
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<FilesQuery>,
    request: Request,
) -> ApiResult<Json<UploadResult>> {
    // No Content-Length and no chunked body, or a length of 0: nothing was sent, which is no
    // tar stream (an empty archive still has its end blocks).
    let headers = request.headers();
    let length = headers.get(axum::http::header::CONTENT_LENGTH);
    if length.map_or(!headers.contains_key(axum::http::header::TRANSFER_ENCODING), |length| length == "0") {
        return Err(Failure::bad_request(
            "the body must be a tar stream (Content-Type: application/x-tar); none was sent",
        ));
    }
    let (sender, chunks) = mpsc::channel(4);
    let mut body = request.into_body().into_data_stream();
    // The body is read to its end whatever becomes of the upload (up to `DRAIN_LIMIT_BYTES`
    // past what the unpacking took): a refusal answered before the client has sent it all
    // would close the connection under the client's writes, and the client would see a broken
    // pipe instead of the refusal.
    // A client that stops sending (stalled, suspended) must not hold the sandbox for ever: a
    // streamed body may take long in all, but not `--body-timeout` without a byte.
    let patience = state.bodies.timeout;
    let pump = tokio::spawn(async move {
        let mut unpacking = Some(sender);
        let mut drained = 0usize;
        loop {
            let Ok(next) = tokio::time::timeout(patience, body.next()).await else {
                if let Some(sender) = &unpacking {
                    let stalled = std::io::Error::new(std::io::ErrorKind::TimedOut, "the upload stalled");
                    let _ = sender.send(Err(stalled)).await;
                }
                return Stalled(unpacking.is_some());
            };
            let Some(chunk) = next else { return Stalled(false) };
            match &unpacking {
                Some(sender) => {
                    let chunk = chunk.map(|bytes| bytes.to_vec()).map_err(std::io::Error::other);
                    if sender.send(chunk).await.is_err() {
                        unpacking = None;
                    }
                }
                None => {
                    drained += chunk.map_or(0, |bytes| bytes.len());
                    if drained > DRAIN_LIMIT_BYTES {
                        return Stalled(false);
                    }
                }
            }
        }
    });
    let uploaded = state.service.upload_files(&principal, &id, &query.path, chunks).await;
    if let Ok(Stalled(true)) = pump.await {
        return Err(Failure::body_timeout(patience));
    }
    Ok(Json(uploaded?))
}

/// Whether an upload's body stopped arriving for `--body-timeout`.
struct Stalled(bool);

/// Downloads `path` (a file or a directory) as a tar stream whose entries are named from its
/// last part (`out/a.txt` → `a.txt`; a directory `out` → `out/…`; /workspace → its contents).
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}/files",
    tag = "files",
    params(("id" = String, Path, description = "The sandbox's id"), FilesQuery),
    responses(
        (status = 200, description = "A tar stream", content((inline(Binary) = "application/x-tar"))),
        (status = 409, description = "The sandbox stayed busy: its runs kept taking it for 30 s, or the run going on did not start", body = ApiError),
        (status = 503, description = "The sandbox could not be started for the transfer (the agent is full, or its sandbox failed)", body = ApiError),
    ),
)]
pub async fn download(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<FilesQuery>,
) -> ApiResult<Response> {
    let chunks = state.service.download_files(&principal, &id, &query.path).await?;
    let stream =
        futures_util::stream::unfold(
            chunks,
            |mut chunks| async move { chunks.recv().await.map(|chunk| (chunk, chunks)) },
        );
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(response)
}

/// `HEAD` of a download or a listing: answering it as `GET` would start the sandbox for a
/// transfer (its run and audit records) only to drop what it read (found by a new-user trial:
/// `curl -I` ran the sandbox), and what the answer's head says (found, refused, busy) is only known
/// by doing so. `allow`: the route's methods.
pub fn head_refused(allow: &'static str) -> Response {
    let mut response = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        bkg_schema::ErrorCode::MethodNotAllowed,
        "HEAD is not answered here: it would start the sandbox for a transfer; use GET",
    )
    .into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Lists the directory `path` of /workspace (or the file itself); symbolic links are shown,
/// not followed.
#[utoipa::path(
    get,
    path = "/api/v1/sandboxes/{id}/files/list",
    tag = "files",
    params(("id" = String, Path, description = "The sandbox's id"), FilesQuery),
    responses(
        (status = 200, description = "The entries, by name", body = Vec<FileEntry>),
        (status = 409, description = "The sandbox stayed busy: its runs kept taking it for 30 s, or the run going on did not start", body = ApiError),
        (status = 503, description = "The sandbox could not be started for the transfer (the agent is full, or its sandbox failed)", body = ApiError),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<FilesQuery>,
) -> ApiResult<Json<Vec<FileEntry>>> {
    Ok(Json(state.service.list_files(&principal, &id, &query.path).await?))
}
