//! The HTTP/JSON API: it reads requests, calls the operations in `service/` and writes their
//! answers; it decides nothing itself and never touches the engine or the store. One router serves the unix socket (peers
//! known by their credentials, who they are decided in service/access.rs: admins, and local users
//! in a namespace of their own) and, opt-in, TCP, where every request carries an API
//! key. Every request passes the gatekeeper: body size, authentication, rate limit, the body read
//! whole within its timeout and the shared body budget, metrics and its trace span. The accept
//! loops (connection caps, header timeout, TLS) are in server/listen.rs. The Web UI under `/ui`
//! (ui/) passes keyless and authenticates its requests by session itself.

pub(crate) mod auth_api;
pub(crate) mod changes;
pub(crate) mod deps_api;
mod failure;
pub(crate) mod files;
mod input;
pub mod listen;
pub(crate) mod run_files;
pub(crate) mod runs;
pub(crate) mod sandboxes;
pub(crate) mod sessions;
pub(crate) mod system;
pub(crate) mod terminal;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::HttpBody;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::auth::rate::retry_after_seconds;
use crate::service::{KEYLESS_ROUTES_PER_MINUTE, Service};
use crate::telemetry::{Span, Tracer, new_span_id};

pub use failure::Failure;

/// Largest request body: the code and its uploads, base64.
pub const MAX_BODY_BYTES: usize = bkg_schema::MAX_REQUEST_BODY_BYTES;

/// The routes a TCP client may call without a key: they carry credentials of their own (a
/// password, an HMAC signature).
const OPEN_ROUTES: [&str; 2] = ["/api/v1/auth/login", "/api/v1/auth/keys/rotated"];

/// A route a TCP client may read without a key: health probes of load balancers and kubelets.
const PROBE_ROUTE: &str = "/healthz";

/// Output queued for a streaming caller is written together, up to about this many bytes: a run's
/// frames (server/runs.rs) and a session's event lines (server/sessions.rs). Code that prints line
/// by line (`PYTHONUNBUFFERED`) would otherwise cost the agent a write, and its caller a read, per
/// line.
const GATHERED_BYTES: usize = 256 << 10;

/// The `Retry-After` of a request refused because the body budget is spent: bodies in flight
/// drain within seconds.
const BODY_RETRY_AFTER_SECONDS: u64 = 1;

/// Request bodies are read whole before a handler sees them, within a timeout and out of one
/// budget of bytes shared by all requests in flight, so slow or many big bodies cannot hold the
/// agent's memory. Callers other than admins hold at most three quarters of it together, and one
/// namespace (or all callers without a key) at most a quarter, so bodies a key declares and never
/// sends starve neither the admins nor other namespaces (found by a new-user trial: four 64 MiB
/// declarations of a model-access key held the whole default budget, root's socket included).
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    tenants_bytes: Arc<Semaphore>,
    by_namespace: HeldByNamespace,
    capacity: usize,
    pub timeout: std::time::Duration,
}

/// The bytes each namespace's bodies hold.
type HeldByNamespace = Arc<Mutex<HashMap<String, usize>>>;

/// Whom a body's bytes count against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOwner {
    Admin,
    /// A namespace's caller; the empty name stands for the callers without a key.
    Namespace(String),
}

impl BodyOwner {
    fn of(principal: Option<&Principal>) -> Self {
        match principal {
            Some(principal) => {
                principal.namespace().map_or(Self::Admin, |namespace| Self::Namespace(namespace.to_owned()))
            }
            None => Self::Namespace(String::new()),
        }
    }
}

/// A body's share of the budget, given back when it is dropped.
pub struct HeldBytes {
    permits: Vec<OwnedSemaphorePermit>,
    namespace: Option<(HeldByNamespace, String)>,
    bytes: usize,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        if let Some((by_namespace, namespace)) = &self.namespace {
            let mut held = by_namespace.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(bytes) = held.get_mut(namespace) {
                *bytes = bytes.saturating_sub(self.bytes);
                if *bytes == 0 {
                    held.remove(namespace);
                }
            }
        }
    }
}

impl BodyBudget {
    pub fn new(bytes: usize, timeout: std::time::Duration) -> Self {
        let capacity = bytes.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            tenants_bytes: Arc::new(Semaphore::new(capacity / 4 * 3)),
            by_namespace: Arc::default(),
            capacity,
            timeout,
        }
    }

    /// What one namespace's bodies may hold together.
    fn namespace_share(&self) -> usize {
        self.capacity / 4
    }

    fn take(&self, owner: &BodyOwner, bytes: usize) -> Result<HeldBytes, Failure> {
        let namespace = match owner {
            BodyOwner::Admin => None,
            BodyOwner::Namespace(name) => Some((Arc::clone(&self.by_namespace), name.clone())),
        };
        let mut held = HeldBytes { permits: Vec::new(), namespace, bytes: 0 };
        self.take_more(&mut held, bytes)?;
        Ok(held)
    }

    fn take_more(&self, held: &mut HeldBytes, more: usize) -> Result<(), Failure> {
        let wanted = held.bytes.saturating_add(more);
        // A body its caller's share cannot hold would never fit: that is not worth a retry.
        let most = if held.namespace.is_some() { self.namespace_share() } else { self.capacity };
        if wanted > most {
            return Err(Failure::too_large(most));
        }
        let permits = u32::try_from(more).map_err(|_| Failure::too_large(most))?;
        let busy = || Failure::bodies_busy(BODY_RETRY_AFTER_SECONDS);
        let Some((by_namespace, namespace)) = &held.namespace else {
            held.permits.push(Arc::clone(&self.bytes).try_acquire_many_owned(permits).map_err(|_| busy())?);
            held.bytes = wanted;
            return Ok(());
        };
        let mut by_namespace = by_namespace.lock().unwrap_or_else(PoisonError::into_inner);
        let of_namespace = by_namespace.get(namespace).copied().unwrap_or(0);
        if of_namespace.saturating_add(more) > self.namespace_share() {
            return Err(busy());
        }
        let of_tenants = Arc::clone(&self.tenants_bytes).try_acquire_many_owned(permits).map_err(|_| busy())?;
        let of_all = Arc::clone(&self.bytes).try_acquire_many_owned(permits).map_err(|_| busy())?;
        held.permits.extend([of_tenants, of_all]);
        held.bytes = wanted;
        by_namespace.insert(namespace.clone(), of_namespace + more);
        Ok(())
    }
}

/// What every handler gets: the operations, and what only HTTP needs.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub tracer: Tracer,
    pub bodies: Arc<BodyBudget>,
    /// The Web UI's sessions and one-time login tokens.
    pub ui: Arc<crate::ui::UiState>,
    /// MCP tool calls under way, to cancel when their client asks or goes away.
    pub mcp_calls: Arc<crate::mcp::InFlightCalls>,
}

/// The API's routes, with the gatekeeper in front of every one of them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/api/v1/openapi.json", get(system::openapi))
        .route("/api/v1/agent", get(system::agent_info))
        .route("/api/v1/agent/shutdown", post(system::shutdown))
        .route("/api/v1/sync", get(system::sync_status))
        .route("/api/v1/sync/migrate", post(system::sync_migrate))
        .route("/api/v1/sync/retry", post(system::sync_retry))
        .route("/api/v1/sync/audit/{agent_id}", get(system::sync_audit_lines))
        .route("/api/v1/changes", get(changes::changes))
        .route("/api/v1/runs", post(runs::create_run).get(runs::list_runs))
        .route("/api/v1/runs/terminal", get(terminal::run_terminal))
        .route("/api/v1/runs/{id}", get(runs::get_run))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel_run))
        .route("/api/v1/runs/{id}/files", get(run_files::list_run_files))
        .route("/api/v1/runs/{id}/files/{*path}", get(run_files::get_run_file))
        .route("/api/v1/sandboxes", get(sandboxes::list_sandboxes).post(sandboxes::create_sandbox))
        .route(
            "/api/v1/sandboxes/{id}",
            get(sandboxes::get_sandbox).put(sandboxes::put_sandbox).delete(sandboxes::delete_sandbox),
        )
        .route("/api/v1/sandboxes/{id}/start", post(sandboxes::start_sandbox))
        .route("/api/v1/sandboxes/{id}/exec", post(sandboxes::exec_sandbox))
        .route("/api/v1/sandboxes/{id}/stop", post(sandboxes::stop_sandbox))
        .route("/api/v1/sandboxes/{id}/logs", get(sandboxes::sandbox_logs))
        .route("/api/v1/envs", get(deps_api::list_envs))
        .route("/api/v1/envs/prune", post(deps_api::prune_envs))
        .route("/api/v1/secrets", get(deps_api::list_secrets))
        .route("/api/v1/secrets/{name}", axum::routing::put(deps_api::put_secret).delete(deps_api::delete_secret))
        .route("/api/v1/sandboxes/{id}/terminal", get(terminal::sandbox_terminal))
        .route(
            files::FILES_ROUTE,
            get(files::download).put(files::upload).head(|| async { files::head_refused("GET, PUT") }),
        )
        .route("/api/v1/sandboxes/{id}/files/list", get(files::list).head(|| async { files::head_refused("GET") }))
        .route("/api/v1/sandboxes/{id}/sessions", get(sessions::list_sessions).post(sessions::create_session))
        .route("/api/v1/sandboxes/{id}/sessions/{name}", get(sessions::get_session).delete(sessions::delete_session))
        .route("/api/v1/sandboxes/{id}/sessions/{name}/execute", post(sessions::execute))
        .route("/api/v1/sandboxes/{id}/sessions/{name}/interrupt", post(sessions::interrupt))
        .route("/api/v1/sandboxes/{id}/sessions/{name}/restart", post(sessions::restart))
        .route("/api/v1/auth/signup", post(auth_api::signup))
        .route("/api/v1/auth/users", get(auth_api::list_users))
        .route("/api/v1/auth/users/{username}", axum::routing::delete(auth_api::remove_user))
        .route("/api/v1/auth/login", post(auth_api::login))
        .route("/api/v1/auth/refresh", post(auth_api::refresh))
        .route("/api/v1/auth/whoami", get(auth_api::whoami))
        .route("/api/v1/auth/keys", post(auth_api::create_key).get(auth_api::list_keys))
        .route("/api/v1/auth/keys/rotated", post(auth_api::rotation_notice))
        .route("/api/v1/auth/keys/{id}", get(auth_api::get_key).delete(auth_api::delete_key))
        .route("/api/v1/auth/keys/{id}/rotate", post(auth_api::rotate_key))
        .route("/api/v1/auth/keys/{id}/revoke", post(auth_api::revoke_key))
        .route(
            "/mcp",
            axum::routing::any_service(crate::mcp::service(Arc::clone(&state.service)))
                .layer(axum::middleware::from_fn_with_state(state.clone(), mcp_gate)),
        )
        .nest("/ui", crate::ui::router(state.clone()))
        .route("/ui/", crate::ui::slash_root(state.clone()))
        .route(crate::ui::FAVICON_ROUTE, get(crate::ui::favicon))
        .route(crate::ui::SITE_ROOT, get(crate::ui::site_root))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), gatekeeper))
        .with_state(state)
}

/// `/mcp`'s door: who may use MCP is the operations' to say, before the protocol answers
/// anything; and rmcp's own refusals (a wrong method, Accept or Content-Type, a body that is not
/// JSON), which it writes as plain text, get the API's one error shape.
async fn mcp_gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(principal) = request.extensions().get::<Principal>()
        && let Err(refusal) = state.service.admit_mcp(principal)
    {
        return Failure::from(refusal).into_response();
    }
    let (mut request, message) = match params_checked(request).await {
        Ok(checked) => checked,
        Err(answer) => return answer,
    };
    let caller = request.extensions().get::<Principal>().map(Principal::actor).unwrap_or_default();
    let call = match message.as_ref().and_then(|message| Some((message.get("method")?.as_str()?, message))) {
        Some(("tools/call", message)) => message.get("id").map(|id| state.mcp_calls.begin(caller, id)),
        Some(("notifications/cancelled", message)) => {
            if let Some(id) = message.get("params").and_then(|params| params.get("requestId")) {
                state.mcp_calls.cancel(caller, id);
            }
            None
        }
        _ => None,
    };
    if let Some(call) = &call {
        request.extensions_mut().insert(call.token());
    }
    // Dropped with this future before it ends (the client went away), `call` cancels the call.
    let response = next.run(request).await;
    if let Some(call) = call {
        call.finished();
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !response.status().is_client_error() {
        return response;
    }
    if is_json {
        return with_a_null_id(response).await;
    }
    let (parts, body) = response.into_parts();
    let said = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let failure = match parts.status {
        axum::http::StatusCode::METHOD_NOT_ALLOWED => {
            Failure::new(parts.status, bkg_schema::ErrorCode::MethodNotAllowed, "MCP takes only POST here")
        }
        // rmcp answers a body it cannot read with 415; it is a malformed request.
        _ if said.starts_with("fail to deserialize") => {
            let reason = said.strip_prefix("fail to deserialize request body").unwrap_or(&said).trim();
            Failure::bad_request(format!("the MCP request is not JSON-RPC: {reason}"))
        }
        status => Failure::new(status, bkg_schema::ErrorCode::BadRequest, said),
    };
    let mut answer = failure.into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        answer.headers_mut().insert(header::ALLOW, allow.clone());
    }
    answer
}

/// rmcp's JSON-RPC error for a message it does not take (a posted response) names no id, where
/// JSON-RPC 2.0 has `"id": null` for an error whose request's id is unknown (found by a new-user
/// trial). Any other answer goes out as it came.
async fn with_a_null_id(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Failure::new(parts.status, bkg_schema::ErrorCode::BadRequest, "the MCP request was refused")
            .into_response();
    };
    let fixed = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut message)) if message.contains_key("error") && !message.contains_key("id") => {
            message.insert("id".into(), serde_json::Value::Null);
            serde_json::to_vec(&message).ok()
        }
        _ => None,
    };
    let mut parts = parts;
    if fixed.is_some() {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    Response::from_parts(parts, axum::body::Body::from(fixed.unwrap_or_else(|| bytes.to_vec())))
}

/// A POSTed MCP request whose params its method cannot take, answered as JSON-RPC's invalid
/// params (-32602) with its id (`mcp::invalid_params`); any other request goes on to rmcp with
/// its body as it came.
async fn params_checked(request: Request) -> Result<(Request, Option<serde_json::Value>), Response> {
    if request.method() != Method::POST {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| Failure::too_large(MAX_BODY_BYTES).into_response())?;
    // A key twice is refused as the API refuses it (found by a new-user trial: rmcp said
    // "unrecognized JSON-RPC message"); what is no JSON goes on to rmcp, which says so.
    let (message, refused) = match input::json_with_keys_once(&bytes) {
        Ok(message) => {
            let refused = message.as_ref().and_then(crate::mcp::refused_request);
            (message, refused)
        }
        Err(why) => (None, Some((serde_json::Value::Null, crate::mcp::INVALID_REQUEST, why))),
    };
    if let Some((id, code, why)) = refused {
        let error = serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": why } });
        return Err(axum::Json(error).into_response());
    }
    Ok((Request::from_parts(parts, axum::body::Body::from(bytes)), message))
}

async fn not_found() -> Failure {
    Failure::not_found("no such endpoint")
}

/// A caller refused its key (401) or slowed for refused keys (429) learns nothing of which
/// routes exist: axum's method routing adds `Allow` around the gatekeeper's answer, for a path
/// that exists with another method (found by a new-user trial: `PATCH /api/v1/runs` without a
/// key named `POST,GET,HEAD`).
fn telling_nothing_of_routes_when_refused(mut response: Response) -> Response {
    if matches!(response.status(), axum::http::StatusCode::UNAUTHORIZED | axum::http::StatusCode::TOO_MANY_REQUESTS) {
        response.headers_mut().remove(header::ALLOW);
    }
    response
}

async fn method_not_allowed() -> Failure {
    Failure::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        bkg_schema::ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

/// A peer on the unix socket, as its listener saw it: who it is, from its credentials.
#[derive(Debug, Clone)]
pub struct UnixPeer {
    pub principal: Principal,
}

/// Where a request came from.
enum Origin {
    Unix(UnixPeer),
    Tcp(Option<SocketAddr>),
}

fn origin(request: &Request) -> Origin {
    match request.extensions().get::<ConnectInfo<UnixPeer>>() {
        Some(ConnectInfo(peer)) => Origin::Unix(peer.clone()),
        // Anything not known to be the socket is treated as the network: it must bring a key.
        None => Origin::Tcp(request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr)),
    }
}

fn bearer(request: &Request) -> Result<Option<String>, Failure> {
    let mut given = request.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = given.next() else {
        return Ok(None);
    };
    // Two keys leave it open which one speaks: a proxy's and the client's, say.
    if given.next().is_some() {
        return Err(Failure::unauthorized("give one Authorization header, not several"));
    }
    let text = value.to_str().map_err(|_| Failure::unauthorized("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(Some(key.trim().to_owned()))
        }
        _ => Err(Failure::unauthorized("the Authorization header must be `Bearer <key>`")),
    }
}

/// Takes one request from the allowance of a TCP client that brought no valid key.
fn charge_anonymous(state: &AppState, peer: Option<SocketAddr>) -> Result<(), Failure> {
    let address = peer.map(|addr| addr.ip().to_string()).unwrap_or_default();
    let limiter = &state.service.auth.limiter;
    limiter.check(&format!("addr:{address}"), KEYLESS_ROUTES_PER_MINUTE, Instant::now()).map_err(|wait| {
        state.service.metrics.rate_limited(crate::metrics::ANONYMOUS);
        Failure::rate_limited("this address (requests without a valid key)", retry_after_seconds(wait))
    })
}

/// Decides who the caller is and whether they may go on: over TCP a valid key (or, for the open
/// routes, no key but an allowance per address, which failed keys also use up); on the socket the
/// peer is an admin unless it presents a key, which then speaks for it.
async fn authenticate(
    state: &AppState,
    origin: Origin,
    key: Option<String>,
    method: &Method,
    route: &str,
) -> Result<Option<Principal>, Failure> {
    let principal = match (&key, &origin) {
        (Some(secret), _) => match state.service.authenticate_key(secret).await {
            Ok(principal) => principal,
            Err(error) => {
                let failure = Failure::from(error);
                if let Origin::Tcp(peer) = origin {
                    charge_anonymous(state, peer)?;
                }
                return Err(failure);
            }
        },
        (None, Origin::Unix(peer)) => return Ok(Some(peer.principal.clone())),
        // The Web UI authenticates its own requests by session (ui/session.rs).
        (None, _) if crate::ui::is_ui_route(route) => return Ok(None),
        (None, Origin::Tcp(peer)) => {
            // The probe's keyless answer is a status and a reason word (server/system.rs).
            if (*method == Method::GET || *method == Method::HEAD) && route == PROBE_ROUTE {
                return Ok(None);
            }
            if *method == Method::POST && OPEN_ROUTES.contains(&route) {
                charge_anonymous(state, *peer)?;
                return Ok(None);
            }
            return Err(Failure::unauthorized("this endpoint needs `Authorization: Bearer <key>`"));
        }
    };
    // Peers on the socket are never rate limited: they are the machine's administrators.
    if let (Origin::Tcp(_), Principal::Key(key)) = (&origin, &principal) {
        let allowance = state.service.auth.policy.rate_per_minute.get(key.role);
        if let Err(wait) = state.service.auth.limiter.check(&key.id, allowance, Instant::now()) {
            state.service.metrics.rate_limited(key.role.as_str());
            return Err(Failure::rate_limited("this key", retry_after_seconds(wait)));
        }
    }
    Ok(Some(principal))
}

async fn gatekeeper(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = SystemTime::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let trace = state.tracer.context(request.headers().get("traceparent").and_then(|value| value.to_str().ok()));

    // An upload's tar stream goes to the sandbox as it arrives, bounded by the sandbox's disk.
    let streamed = method == Method::PUT && route == files::FILES_ROUTE;
    let too_large = !streamed
        && request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length > MAX_BODY_BYTES as u64);
    // Who asks comes first: a caller without a valid key is told that, whatever it sends.
    let peer = match origin(&request) {
        Origin::Tcp(peer) => peer,
        Origin::Unix(_) => None,
    };
    let checked = match bearer(&request) {
        Ok(key) => authenticate(&state, origin(&request), key, &method, &route).await,
        Err(failure) => Err(failure),
    };
    let (response, role) = match checked {
        Ok(principal) if too_large => {
            (Failure::too_large(MAX_BODY_BYTES).into_response(), principal.as_ref().map(Principal::role))
        }
        Ok(principal) => {
            let role = principal.as_ref().map(Principal::role);
            let principal_known = principal.is_some();
            // Callers without a key (login, notices, probes) send a few hundred bytes at most.
            let limit = if principal.is_some() { MAX_BODY_BYTES } else { input::SMALL_BODY_BYTES };
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            let body = if let Err(failure) = input::check_query_names(&method, &route, request.uri().query()) {
                Err(failure)
            } else if streamed && principal_known {
                Ok((request, None))
            } else {
                let owner = BodyOwner::of(request.extensions().get::<Principal>());
                let takes_body = !input::takes_no_body(&method, &route);
                read_body(&state.bodies, &owner, request, limit, takes_body).await
            };
            match body {
                // The body's share of the budget is held until the handler has answered.
                Ok((request, _held)) => (next.run(request).await, role),
                Err(failure) => (failure.into_response(), role),
            }
        }
        Err(failure) => (failure.into_response(), None),
    };

    let status = response.status();
    state.service.metrics.http_answered(&route, method.as_str(), status.as_u16());
    // Who was refused a key or a login: the address an operator looks for (found by a new-user
    // trial: 33 guessed keys and wrong passwords left no line). The rate limiter bounds these
    // lines to what it lets through from an address.
    // A 429 goes to the debug log only: those past the allowance are not bounded by it, and
    // would fill the log. Keyless requests to the other routes are not slowed (a 401 tells them
    // what they lack), so their lines have an allowance of their own per address, past which they
    // go to the debug log too (found by a new-user trial: 3,000 keyless requests a second, as
    // many WARN lines).
    match (peer, status) {
        (Some(address), axum::http::StatusCode::UNAUTHORIZED) => {
            let logged = format!("logged:{}", address.ip());
            match state.service.auth.limiter.check(&logged, KEYLESS_ROUTES_PER_MINUTE, Instant::now()) {
                Ok(()) => tracing::warn!(%address, %method, %route, "refused a request without a valid key or login"),
                Err(_) => tracing::debug!(%address, %method, %route, "refused a request without a valid key or login"),
            }
        }
        (Some(address), axum::http::StatusCode::TOO_MANY_REQUESTS) => {
            tracing::debug!(%address, %method, %route, "slowed an address that sent too many requests without a valid key");
        }
        _ => {}
    }
    if trace.sampled {
        let mut attributes = vec![
            ("http.request.method", serde_json::json!(method.as_str())),
            ("http.route", serde_json::json!(route)),
            ("http.response.status_code", serde_json::json!(status.as_u16())),
        ];
        if let Some(role) = role {
            attributes.push(("bkg.role", serde_json::json!(role.as_str())));
        }
        state.tracer.record(Span {
            trace_id: trace.trace_id,
            span_id: new_span_id(),
            parent_span_id: trace.parent_span_id,
            name: format!("{method} {route}"),
            start: started,
            end: SystemTime::now(),
            attributes,
            error: status.is_server_error(),
        });
    }
    response
}

/// Reads the request's body whole, up to `limit` bytes, within the body timeout and out of the
/// shared budget (a declared length is taken at once, a chunked body as it arrives). A body that
/// breaks the framing (bad chunked encoding, a connection that ends early) is a 400, and so is
/// one sent to a route that takes none (`takes_body` false).
async fn read_body(
    budget: &BodyBudget,
    owner: &BodyOwner,
    request: Request,
    limit: usize,
    takes_body: bool,
) -> Result<(Request, Option<HeldBytes>), Failure> {
    if request.body().is_end_stream() {
        return Ok((request, None));
    }
    let (parts, mut body) = request.into_parts();
    let declared = body.size_hint().exact().map_or(0, |length| length as usize);
    if declared > limit {
        return Err(Failure::too_large(limit));
    }
    let mut held = budget.take(owner, declared)?;
    let read = async {
        let mut bytes = Vec::with_capacity(declared);
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|error| Failure::bad_request(format!("the request body could not be read: {error}")))?;
            let Ok(data) = frame.into_data() else { continue };
            let total = bytes.len() + data.len();
            if total > limit {
                return Err(Failure::too_large(limit));
            }
            let more = total.saturating_sub(held.bytes);
            if more > 0 {
                budget.take_more(&mut held, more)?;
            }
            bytes.extend_from_slice(&data);
        }
        Ok(bytes)
    };
    let bytes =
        tokio::time::timeout(budget.timeout, read).await.map_err(|_| Failure::body_timeout(budget.timeout))??;
    if !takes_body {
        input::no_body(&bytes)?;
    }
    Ok((Request::from_parts(parts, axum::body::Body::from(bytes)), Some(held)))
}

/// A unix listener that hands axum only connections from peers the agent serves, each with who
/// it is (service/access.rs decides).
/// With a watch on the socket's file, it listens on the file made again when that is deleted.
pub struct PeerCheckedListener {
    listener: UnixListener,
    access: crate::auth::local::LocalAccess,
    watch: Option<crate::local_socket::SocketWatch>,
    /// Refused peers being answered: bounded, so that refused peers hold few descriptors.
    refusing: Arc<Semaphore>,
}

/// Refused peers answered at once; one over this is closed unanswered.
const REFUSALS_AT_ONCE: usize = 16;
/// How long a refused peer's connection is kept: to read its request's head, write the refusal
/// and read what else the client sent, whose unread bytes would make closing reset the
/// connection before the client reads the answer (unix sockets, as TCP).
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// What of a refused peer's request is read (and dropped) at most.
const REFUSAL_READ: usize = 64 * 1024;

impl PeerCheckedListener {
    pub fn new(
        listener: UnixListener,
        access: crate::auth::local::LocalAccess,
        watch: Option<crate::local_socket::SocketWatch>,
    ) -> Self {
        Self { listener, access, watch, refusing: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)) }
    }

    /// Answers a peer the agent does not serve with the one-line refusal (403), then closes,
    /// within `REFUSAL_TIME` (found by a new-user trial: a dropped connection read as
    /// "connection reset by peer" to someone whom the filesystem let connect).
    fn refuse(&self, stream: UnixStream, uid: u32) {
        tracing::warn!(uid, "refused a connection from another user, outside the socket's group");
        let Ok(slot) = Arc::clone(&self.refusing).try_acquire_owned() else {
            return;
        };
        let answer = Failure::from(crate::service::access::socket_refusal(&self.access, uid)).http1_closing();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(REFUSAL_TIME, answer_and_close(stream, answer)).await;
        });
    }

    /// The next connection, on the socket as it is now.
    async fn next(&mut self) -> std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                return self.listener.accept().await;
            };
            tokio::select! {
                accepted = self.listener.accept() => return accepted,
                rebound = watch.rebound() => match rebound {
                    Some(listener) => self.listener = listener,
                    None => self.watch = None,
                },
            }
        }
    }
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = UnixStream;
    type Addr = Principal;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.next().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(credentials) => {
                        match crate::service::access::socket_principal(&self.access, credentials.uid()) {
                            Some(principal) => return (stream, principal),
                            None => self.refuse(stream, credentials.uid()),
                        }
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
        Ok(Principal::Local { uid: self.access.agent_uid })
    }
}

/// Reads the request's head (an HTTP client takes an answer only to a request it has sent),
/// writes `answer`, then reads what the peer sends until it closes; `REFUSAL_READ` bytes at most
/// in all.
async fn answer_and_close(mut stream: UnixStream, answer: Vec<u8>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = [0u8; 4096];
    let mut read = 0;
    // The head's last bytes so far, for an end split between reads.
    let mut tail: Vec<u8> = Vec::with_capacity(buffer.len() + 3);
    while read < REFUSAL_READ {
        let more = stream.read(&mut buffer).await?;
        if more == 0 {
            return Ok(());
        }
        read += more;
        tail.extend_from_slice(&buffer[..more]);
        if tail.windows(4).any(|window| window == b"\r\n\r\n") {
            break;
        }
        tail.drain(..tail.len().saturating_sub(3));
    }
    stream.write_all(&answer).await?;
    stream.shutdown().await?;
    while read < REFUSAL_READ {
        match stream.read(&mut buffer).await? {
            0 => break,
            more => read += more,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_is_shared_refuses_when_spent_and_is_given_back() {
        let budget = BodyBudget::new(8, std::time::Duration::from_secs(1));
        let Ok(first) = budget.take(&BodyOwner::Admin, 5) else { panic!("5 of 8 bytes are free") };
        let busy =
            budget.take(&BodyOwner::Admin, 4).err().map(|failure| (failure.status.as_u16(), failure.retry_after));
        assert_eq!(busy, Some((503, Some(BODY_RETRY_AFTER_SECONDS))));
        let never = budget.take(&BodyOwner::Admin, 9).err().map(|failure| failure.status.as_u16());
        assert_eq!(never, Some(413), "more than the whole budget is too large, not busy");
        drop(first);
        assert!(budget.take(&BodyOwner::Admin, 8).is_ok(), "a body's share comes back when it is dropped");
    }

    #[test]
    fn a_namespace_holds_a_quarter_of_the_body_budget_and_callers_but_admins_three_quarters() {
        let budget = BodyBudget::new(16, std::time::Duration::from_secs(1));
        let status = |taken: Result<HeldBytes, Failure>| taken.err().map(|failure| failure.status.as_u16());
        let team = BodyOwner::Namespace("team".into());
        let Ok(mut held) = budget.take(&team, 3) else { panic!("3 of team's 4 bytes are free") };
        assert_eq!(status(budget.take(&team, 2)), Some(503), "team's quarter is spent");
        assert_eq!(status(budget.take(&team, 5)), Some(413), "a body over a quarter never fits");
        assert!(budget.take_more(&mut held, 1).is_ok(), "a body grows within its namespace's share");
        let others: Vec<_> = ["a", "b"]
            .map(|name| budget.take(&BodyOwner::Namespace(name.into()), 4))
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|_| panic!("other namespaces have their own quarters"));
        assert_eq!(status(budget.take(&BodyOwner::Namespace(String::new()), 1)), Some(503), "three quarters are spent");
        let Ok(admin) = budget.take(&BodyOwner::Admin, 4) else { panic!("the admins' quarter is left") };
        drop((held, others, admin));
        assert!(budget.by_namespace.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
        assert!(budget.take(&team, 4).is_ok());
        assert!(budget.take(&BodyOwner::Admin, 16).is_ok());
    }
}
