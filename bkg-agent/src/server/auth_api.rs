//! `/api/v1/auth`: users (signup by an admin, login with a password), API keys (create, list,
//! get, rotate, revoke, delete) and signed rotation notices from peers.
//!
//! Who may manage which key: an admin, every key; a namespace key, the keys of its namespace
//! (and it may create session and model-access keys there); a session or model-access key, only
//! itself. A key the caller may not manage is answered 404, as if it did not exist.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use bkg_schema::ApiError;
use bkg_schema::audit::Details;
use bkg_schema::auth::{
    CreateKeyRequest, IssuedKey, KEY_ROTATED_EVENT, KeyInfo, LoginRequest, NoticeAccepted, Principal as PrincipalInfo,
    Role, RotationNotice, SIGNATURE_HEADER, SignupRequest, UserInfo,
};
use bkg_schema::sandbox::{Deleted, is_dns_label};

use super::AppState;
use super::failure::{ApiResult, Failure};
use super::input::{self, PathParam, SMALL_BODY_BYTES};
use crate::auth::notice::{Delivery, MAX_SKEW};
use crate::auth::{Principal, keys, password};
use crate::ids::{new_id, now_ms};
use crate::store::{Caller, KeyKind, NewKey};

fn require_admin(principal: &Principal) -> ApiResult<()> {
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may do this"));
    }
    Ok(())
}

/// Whether `principal` may see and manage `key`.
fn manages(principal: &Principal, key: &KeyInfo) -> bool {
    match principal.role() {
        Role::Admin => true,
        Role::Namespace => {
            key.role != Role::Admin && key.namespace.is_some() && key.namespace.as_deref() == principal.namespace()
        }
        Role::Session | Role::ModelAccess => principal.key_id() == Some(key.id.as_str()),
    }
}

async fn managed_key(state: &AppState, principal: &Principal, id: &str) -> ApiResult<KeyInfo> {
    match state.store.get_key(id).await? {
        Some(key) if manages(principal, &key) => Ok(key),
        _ => Err(Failure::not_found(format!("no key {id}"))),
    }
}

/// A key to issue.
struct Wanted {
    role: Role,
    namespace: Option<String>,
    name: Option<String>,
    user: Option<String>,
    ttl_ms: u64,
}

/// Makes and stores a new key, recorded as `kind`; the secret is returned once and never kept.
async fn issue(state: &AppState, caller: &Caller, kind: KeyKind, wanted: Wanted) -> ApiResult<IssuedKey> {
    let Wanted { role, namespace, name, user, ttl_ms } = wanted;
    let secret = keys::generate(role).map_err(|error| Failure::internal(error.to_string()))?;
    let now = now_ms();
    let info = state
        .store
        .insert_key(
            caller,
            kind,
            NewKey {
                id: new_id("key"),
                hash: keys::hash(&secret),
                role,
                namespace,
                name,
                user,
                created_at_ms: now,
                expires_at_ms: now.saturating_add(ttl_ms),
            },
        )
        .await?;
    Ok(IssuedKey { key: secret, info })
}

fn ttl_ms(state: &AppState, role: Role) -> u64 {
    u64::try_from(state.auth.policy.ttl.get(role).as_millis()).unwrap_or(u64::MAX)
}

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
    require_admin(&principal)?;
    let request: SignupRequest = input::json(body, SMALL_BODY_BYTES).await?;
    if !is_dns_label(&request.username) {
        return Err(Failure::invalid("the username must be a DNS label (a-z, 0-9, -)"));
    }
    if !is_dns_label(&request.namespace) {
        return Err(Failure::invalid("the namespace must be a DNS label (a-z, 0-9, -)"));
    }
    if request.password.chars().count() < password::MIN_PASSWORD_CHARS {
        return Err(Failure::invalid(format!(
            "the password must have at least {} characters",
            password::MIN_PASSWORD_CHARS
        )));
    }
    let secret = request.password;
    // argon2id takes tens of milliseconds of CPU: not on the async workers.
    let hash = tokio::task::spawn_blocking(move || password::hash(&secret))
        .await
        .map_err(|_| Failure::internal("the hashing task failed"))?
        .map_err(|error| Failure::internal(error.to_string()))?;
    let user = UserInfo { username: request.username, namespace: request.namespace, created_at_ms: now_ms() };
    let caller = principal.audit_caller(&user.namespace);
    if !state.store.insert_user(&caller, &user, hash).await? {
        return Err(Failure::conflict(format!("user `{}` exists", user.username)));
    }
    Ok((StatusCode::CREATED, Json(user)))
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
pub async fn login(State(state): State<AppState>, body: Body) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    let request: LoginRequest = input::json(body, SMALL_BODY_BYTES).await?;
    let user = state.store.user(&request.username).await?;
    let stored_hash = user.as_ref().map(|(_, hash)| hash.clone());
    let secret = request.password;
    let matches = tokio::task::spawn_blocking(move || password::verify(&secret, stored_hash.as_deref()))
        .await
        .map_err(|_| Failure::internal("the hashing task failed"))?;
    let Some((user, _)) = user.filter(|_| matches) else {
        return Err(Failure::unauthorized("wrong username or password"));
    };
    let caller = Caller { actor: format!("user:{}", user.username), namespace: user.namespace.clone() };
    let ttl = ttl_ms(&state, Role::Session);
    let wanted = Wanted {
        role: Role::Session,
        namespace: Some(user.namespace),
        name: None,
        user: Some(user.username),
        ttl_ms: ttl,
    };
    let issued = issue(&state, &caller, Details::Login, wanted).await?;
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
    let Principal::Key(current) = &principal else {
        return Err(Failure::forbidden("refresh needs the session key to refresh; a socket peer has none"));
    };
    if current.role != Role::Session {
        return Err(Failure::forbidden("only session keys are refreshed; rotate other keys"));
    }
    let namespace = current.namespace.clone().unwrap_or_default();
    let caller = principal.audit_caller(&namespace);
    let ttl = ttl_ms(&state, Role::Session);
    let wanted = Wanted {
        role: Role::Session,
        namespace: current.namespace.clone(),
        name: current.name.clone(),
        user: current.user.clone(),
        ttl_ms: ttl,
    };
    let issued = issue(&state, &caller, Details::KeyCreated, wanted).await?;
    state.store.revoke_key(&caller, &current.id, now_ms()).await?;
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
    match principal.role() {
        Role::Admin => {}
        Role::Namespace if matches!(request.role, Role::Session | Role::ModelAccess) => {}
        Role::Namespace => {
            return Err(Failure::forbidden("a namespace key may create only session and model-access keys"));
        }
        Role::Session | Role::ModelAccess => {
            return Err(Failure::forbidden(format!("a {} key cannot create keys", principal.role().as_str())));
        }
    }
    let namespace = match (request.role, request.namespace) {
        (Role::Admin, None) => None,
        (Role::Admin, Some(_)) => return Err(Failure::invalid("admin keys reach every namespace; give none")),
        (_, asked) => {
            if let Some(asked) = &asked
                && !is_dns_label(asked)
            {
                return Err(Failure::invalid(format!("namespace `{asked}` must be a DNS label (a-z, 0-9, -)")));
            }
            if principal.is_admin() && asked.is_none() {
                return Err(Failure::invalid(format!("a {} key needs a namespace", request.role.as_str())));
            }
            Some(principal.namespace_for(asked.as_deref()).map_err(Failure::forbidden)?)
        }
    };
    let role_ttl = ttl_ms(&state, request.role);
    let ttl = match request.ttl_seconds {
        None => role_ttl,
        Some(0) => return Err(Failure::invalid("ttl_seconds must be above zero")),
        Some(seconds) if seconds.saturating_mul(1000) > role_ttl => {
            return Err(Failure::invalid(format!(
                "ttl_seconds {seconds} is above the {} role's lifetime of {} s",
                request.role.as_str(),
                role_ttl / 1000
            )));
        }
        Some(seconds) => seconds * 1000,
    };
    if let Some(name) = &request.name
        && (name.is_empty() || name.chars().count() > 200)
    {
        return Err(Failure::invalid("a key's name has 1 to 200 characters"));
    }
    let caller = principal.audit_caller(namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
    let wanted = Wanted { role: request.role, namespace, name: request.name, user: None, ttl_ms: ttl };
    let issued = issue(&state, &caller, Details::KeyCreated, wanted).await?;
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
    let keys = state.store.list_keys(principal.namespace().map(str::to_owned)).await?;
    Ok(Json(keys.into_iter().filter(|key| manages(&principal, key)).collect()))
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
    Ok(Json(managed_key(&state, &principal, &id).await?))
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
    let key = managed_key(&state, &principal, &id).await?;
    if key.revoked_at_ms.is_some() {
        return Err(Failure::conflict(format!("key {id} is revoked; a revoked key cannot be rotated")));
    }
    let secret = keys::generate(key.role).map_err(|error| Failure::internal(error.to_string()))?;
    let now = now_ms();
    // The key's own lifetime (what it was issued or last rotated with), within its role's.
    let own_ttl = key.expires_at_ms.saturating_sub(key.rotated_at_ms.unwrap_or(key.created_at_ms));
    let expires = now.saturating_add(own_ttl.clamp(1, ttl_ms(&state, key.role)));
    let caller = principal.audit_caller(key.namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
    let Some(info) = state.store.rotate_key(&caller, &id, &keys::hash(&secret), now, expires).await? else {
        return Err(Failure::conflict(format!("key {id} was revoked meanwhile")));
    };
    let notice = RotationNotice {
        event: KEY_ROTATED_EVENT.into(),
        key_id: info.id.clone(),
        role: info.role,
        namespace: info.namespace.clone(),
        rotated_at_ms: now,
        expires_at_ms: info.expires_at_ms,
        agent: agent_name(),
    };
    let metrics = std::sync::Arc::clone(&state.metrics);
    state.auth.notifier.send(&notice, move |delivery| metrics.webhook_delivery(delivery == Delivery::Delivered));
    Ok(Json(IssuedKey { key: secret, info }))
}

fn agent_name() -> String {
    let host = nix::unistd::gethostname().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{host}/{}", std::process::id())
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
    let key = managed_key(&state, &principal, &id).await?;
    let caller = principal.audit_caller(key.namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
    match state.store.revoke_key(&caller, &id, now_ms()).await? {
        Some(revoked) => Ok(Json(revoked)),
        None => Err(Failure::not_found(format!("no key {id}"))),
    }
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
    let key = managed_key(&state, &principal, &id).await?;
    let caller = principal.audit_caller(key.namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
    if !state.store.delete_key(&caller, &id).await? {
        return Err(Failure::not_found(format!("no key {id}")));
    }
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
    let Some(key) = state.auth.notifier.key() else {
        return Err(Failure::unauthorized("this agent has no webhook secret, so it cannot check notices"));
    };
    let bytes = input::bytes(body, SMALL_BODY_BYTES).await?;
    let header = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let now = now_ms();
    let signature = key.verify(header, &bytes, now / 1000).map_err(|error| Failure::unauthorized(error.to_string()))?;
    let notice: RotationNotice = input::parse(&bytes)?;
    if notice.event != KEY_ROTATED_EVENT {
        return Err(Failure::invalid(format!("unknown event `{}`", notice.event)));
    }
    let forget_before = now.saturating_sub(2 * MAX_SKEW.as_millis() as u64);
    let body_text = String::from_utf8_lossy(&bytes);
    if !state.store.remember_notice(&signature, &body_text, now, forget_before).await? {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            bkg_schema::ErrorCode::Replayed,
            "this notice was already accepted",
        ));
    }
    tracing::info!(key = %notice.key_id, agent = %notice.agent, role = notice.role.as_str(), "a peer rotated a key");
    Ok((StatusCode::ACCEPTED, Json(NoticeAccepted { accepted: true, key_id: notice.key_id })))
}
