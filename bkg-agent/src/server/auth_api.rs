//! `/api/v1/auth` over HTTP: users (signup, listing and removal by an admin, login with a
//! password), API keys (create, list, get, rotate, revoke, delete) and signed rotation notices
//! from peers. The operations and who may do them are in service/keys.rs and service/access.rs.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use bkg_schema::ApiError;
use bkg_schema::auth::{
    CreateKeyRequest, IssuedKey, KeyInfo, LoginRequest, NoticeAccepted, Principal as PrincipalInfo, RotationNotice,
    SIGNATURE_HEADER, SignupRequest, UserInfo,
};
use bkg_schema::sandbox::Deleted;

use super::AppState;
use super::failure::ApiResult;
use super::input::{self, PathParam, SMALL_BODY_BYTES};
use crate::auth::Principal;
use crate::service::SignedNotice;

/// Create a user who can log in to one namespace (admins only).
#[utoipa::path(
    post,
    path = "/api/v1/auth/signup",
    tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "The user", body = UserInfo),
        (status = 409, description = "The name is taken", body = ApiError),
    ),
)]
pub async fn signup(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> ApiResult<(StatusCode, Json<UserInfo>)> {
    let request: SignupRequest = input::json(body, SMALL_BODY_BYTES).await?;
    let user = state.service.sign_up(&principal, request).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Every user, by name (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/auth/users",
    tag = "auth",
    responses((status = 200, description = "The users (never their passwords)", body = Vec<UserInfo>)),
)]
pub async fn list_users(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<UserInfo>>> {
    Ok(Json(state.service.list_users(&principal).await?))
}

/// Remove a user (admins only): their password goes with them, and every key of theirs still
/// active is revoked (their session keys, and the keys those made), ending the runs it holds.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/users/{username}",
    tag = "auth",
    params(("username" = String, Path, description = "The user's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such user", body = ApiError),
    ),
)]
pub async fn remove_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(username): PathParam<String>,
) -> ApiResult<StatusCode> {
    state.service.remove_user(&principal, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Exchange a user's password for a session key of their namespace. Needs no key.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    security(()),
    responses((status = 201, description = "A session key, shown only this once", body = IssuedKey)),
)]
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Body,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    let request: LoginRequest = input::json(body, SMALL_BODY_BYTES).await?;
    let issued = state.service.log_in(request, peer.map(|Extension(ConnectInfo(address))| address)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Trade the session key in use for a new one with a fresh lifetime; the old one is revoked.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    responses((status = 201, description = "The new session key, shown only this once", body = IssuedKey)),
)]
pub async fn refresh(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    let issued = state.service.refresh_session(&principal).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// The caller as the agent sees it: role, namespace, key.
#[utoipa::path(
    get,
    path = "/api/v1/auth/whoami",
    tag = "auth",
    responses((status = 200, description = "The caller", body = PrincipalInfo)),
)]
pub async fn whoami(Extension(principal): Extension<Principal>) -> Json<PrincipalInfo> {
    Json(principal.describe())
}

/// Create an API key. Admins create any; a namespace key creates session and model-access keys
/// of its namespace.
#[utoipa::path(
    post,
    path = "/api/v1/auth/keys",
    tag = "keys",
    request_body = CreateKeyRequest,
    responses((status = 201, description = "The key, shown only this once", body = IssuedKey)),
)]
pub async fn create_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    let request: CreateKeyRequest = input::json(body, SMALL_BODY_BYTES).await?;
    let issued = state.service.create_key(&principal, request).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// The keys the caller may manage, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/auth/keys",
    tag = "keys",
    responses((status = 200, description = "Keys (never their secrets)", body = Vec<KeyInfo>)),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<KeyInfo>>> {
    Ok(Json(state.service.list_keys(&principal).await?))
}

/// One key.
#[utoipa::path(
    get,
    path = "/api/v1/auth/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id (key_…)")),
    responses((status = 200, description = "The key (never its secret)", body = KeyInfo)),
)]
pub async fn get_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(state.service.get_key(&principal, &id).await?))
}

/// Give a key a new secret and a fresh lifetime as long as the one it was issued with (at most its
/// role's); the old secret stops working at once. Each
/// configured webhook is sent a signed rotation notice.
#[utoipa::path(
    post,
    path = "/api/v1/auth/keys/{id}/rotate",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key's new secret, shown only this once", body = IssuedKey),
        (status = 409, description = "The key is revoked", body = ApiError),
    ),
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<IssuedKey>> {
    Ok(Json(state.service.rotate_key(&principal, &id).await?))
}

/// Revoke a key: it gets 401 from its next request on. Revoking twice changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/auth/keys/{id}/revoke",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The revoked key", body = KeyInfo)),
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(state.service.revoke_key(&principal, &id).await?))
}

/// Delete a key for good (it stops working at once).
#[utoipa::path(
    delete,
    path = "/api/v1/auth/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "Deleted", body = Deleted)),
)]
pub async fn delete_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Deleted>> {
    state.service.delete_key(&principal, &id).await?;
    Ok(Json(Deleted { deleted: id }))
}

/// Accept a key-rotation notice from a peer agent. Needs no key: the `X-Bkg-Signature` header
/// (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` under the shared webhook secret) is the
/// credential. A bad signature or a timestamp more than 5 minutes off is 401; the same notice
/// a second time is 409 (`replayed`).
#[utoipa::path(
    post,
    path = "/api/v1/auth/keys/rotated",
    tag = "keys",
    request_body = RotationNotice,
    params(("X-Bkg-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">")),
    security(()),
    responses(
        (status = 202, description = "Accepted", body = NoticeAccepted),
        (status = 409, description = "Already accepted (a replay)", body = ApiError),
    ),
)]
pub async fn rotation_notice(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<NoticeAccepted>)> {
    let body = input::bytes(body, SMALL_BODY_BYTES).await?;
    let signature = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let accepted = state.service.accept_rotation_notice(SignedNotice { signature, body: &body }).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}
