//! `/api/v1/envs` and `/api/v1/secrets` over HTTP: dependency environments (list, prune) and
//! secrets (set, list, remove). The operations are in service/envs.rs and service/secrets.rs.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use bkg_schema::envs::{EnvInfo, PruneRequest, PruneResult, SecretInfo, SecretValue};
use bkg_schema::sandbox::Deleted;
use serde::Deserialize;

use super::AppState;
use super::failure::{ApiResult, Failure};
use super::input::{self, PathParam, QueryParams, SMALL_BODY_BYTES};
use crate::auth::Principal;

/// List the Python environments the agent has built, with their size and last use.
#[utoipa::path(
    get,
    path = "/api/v1/envs",
    tag = "envs",
    responses((status = 200, description = "Every environment", body = [EnvInfo])),
)]
pub async fn list_envs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<EnvInfo>>> {
    Ok(Json(state.service.list_envs(&principal)?))
}

/// Remove environments no run is using (admins only); with `unused_for_ms`, only those unused
/// that long. A later run that needs one builds it again.
#[utoipa::path(
    post,
    path = "/api/v1/envs/prune",
    tag = "envs",
    request_body = PruneRequest,
    responses((status = 200, description = "What was removed", body = PruneResult)),
)]
pub async fn prune_envs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> ApiResult<Json<PruneResult>> {
    let request: PruneRequest = input::json(body, SMALL_BODY_BYTES).await?;
    Ok(Json(state.service.prune_envs(&principal, request).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SecretQuery {
    /// The namespace (an admin's choice; other keys act in their own).
    namespace: Option<String>,
}

/// List a namespace's secrets by name. Values are never sent back.
#[utoipa::path(
    get,
    path = "/api/v1/secrets",
    tag = "secrets",
    params(SecretQuery),
    responses((status = 200, description = "The secrets' names", body = [SecretInfo])),
)]
pub async fn list_secrets(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    QueryParams(query): QueryParams<SecretQuery>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    Ok(Json(state.service.list_secrets(&principal, query.namespace.as_deref())?))
}

/// Set a secret (replacing one of the same name). Runs get it with `secrets: [NAME]`.
#[utoipa::path(
    put,
    path = "/api/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name: an environment variable name"), SecretQuery),
    request_body = SecretValue,
    responses((status = 200, description = "Set", body = SecretInfo)),
)]
pub async fn put_secret(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(name): PathParam<String>,
    QueryParams(query): QueryParams<SecretQuery>,
    body: Body,
) -> ApiResult<Json<SecretInfo>> {
    let mut value: SecretValue = input::json(body, SMALL_BODY_BYTES).await?;
    // `?namespace=` as listing and removing take it, or `namespace` in the body; never two.
    value.namespace = match (query.namespace, value.namespace) {
        (Some(asked), Some(named)) if asked != named => {
            return Err(Failure::invalid(format!("?namespace={asked} and the body's namespace `{named}` differ")));
        }
        (asked, named) => asked.or(named),
    };
    Ok(Json(state.service.set_secret(&principal, &name, value).await?))
}

/// Remove a secret.
#[utoipa::path(
    delete,
    path = "/api/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name"), SecretQuery),
    responses((status = 200, description = "Removed", body = Deleted)),
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(name): PathParam<String>,
    QueryParams(query): QueryParams<SecretQuery>,
) -> ApiResult<Json<Deleted>> {
    state.service.remove_secret(&principal, &name, query.namespace.as_deref()).await?;
    Ok(Json(Deleted { deleted: name }))
}
