//! The HTTP/JSON API. One router serves the unix socket (peers checked by credentials: root or
//! the agent's own user, who act as admin) and, opt-in, TCP, where every request carries an API
//! key. Every request passes the gatekeeper: body size, authentication, rate limit, metrics and
//! its trace span.

pub(crate) mod auth_api;
mod failure;
mod input;
pub(crate) mod runs;
pub(crate) mod sandboxes;
pub(crate) mod system;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::auth::notice::Notifier;
use crate::auth::rate::{RateLimiter, retry_after_seconds};
use crate::auth::{AuthPolicy, Principal, keys};
use crate::engine::Engine;
use crate::ids::now_ms;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::telemetry::{Span, Tracer, new_span_id};

pub use failure::Failure;
pub use runs::run_to_end;
pub use sandboxes::{create_in_namespace, remove, visible_sandbox};
pub use system::HealthProbe;

/// Largest request body: the code and its uploads, base64.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Requests without a key (login, peers' rotation notices) allowed per client address and
/// minute: enough for people and peers, too few to guess passwords.
const ANONYMOUS_PER_MINUTE: u32 = 30;

/// The routes a TCP client may call without a key: they carry credentials of their own (a
/// password, an HMAC signature).
const OPEN_ROUTES: [&str; 2] = ["/api/v1/auth/login", "/api/v1/auth/keys/rotated"];

/// How often a key's `last_used_at_ms` is written, at most.
const LAST_USED_EVERY_MS: u64 = 60_000;

/// Keys, limits and notices: the authentication half of the agent's state.
pub struct AuthState {
    pub policy: AuthPolicy,
    pub limiter: RateLimiter,
    pub notifier: Notifier,
    /// When each key's use was last written to the store.
    last_used_written: Mutex<HashMap<String, u64>>,
}

impl AuthState {
    pub fn new(policy: AuthPolicy, notifier: Notifier) -> Self {
        Self { policy, limiter: RateLimiter::default(), notifier, last_used_written: Mutex::new(HashMap::new()) }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub socket: PathBuf,
    pub shutdown: Arc<Notify>,
    pub auth: Arc<AuthState>,
    pub metrics: Arc<Metrics>,
    pub tracer: Tracer,
    pub health: Arc<HealthProbe>,
    /// The bkg_db sync worker and its URL, when one is configured.
    pub sync: Option<(Arc<crate::sync::SyncHandle<Store>>, String)>,
}

/// The API's routes, with the gatekeeper in front of every one of them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/api/v1/agent", get(system::agent_info))
        .route("/api/v1/agent/shutdown", post(system::shutdown))
        .route("/api/v1/sync", get(system::sync_status))
        .route("/api/v1/sync/migrate", post(system::sync_migrate))
        .route("/api/v1/sync/retry", post(system::sync_retry))
        .route("/api/v1/sync/audit/{agent_id}", get(system::sync_audit_lines))
        .route("/api/v1/runs", post(runs::create_run).get(runs::list_runs))
        .route("/api/v1/runs/{id}", get(runs::get_run))
        .route("/api/v1/sandboxes", get(sandboxes::list_sandboxes).post(sandboxes::create_sandbox))
        .route(
            "/api/v1/sandboxes/{id}",
            get(sandboxes::get_sandbox).put(sandboxes::put_sandbox).delete(sandboxes::delete_sandbox),
        )
        .route("/api/v1/sandboxes/{id}/start", post(sandboxes::start_sandbox))
        .route("/api/v1/sandboxes/{id}/exec", post(sandboxes::exec_sandbox))
        .route("/api/v1/sandboxes/{id}/stop", post(sandboxes::stop_sandbox))
        .route("/api/v1/sandboxes/{id}/logs", get(sandboxes::sandbox_logs))
        .route("/api/v1/auth/signup", post(auth_api::signup))
        .route("/api/v1/auth/login", post(auth_api::login))
        .route("/api/v1/auth/refresh", post(auth_api::refresh))
        .route("/api/v1/auth/whoami", get(auth_api::whoami))
        .route("/api/v1/auth/keys", post(auth_api::create_key).get(auth_api::list_keys))
        .route("/api/v1/auth/keys/rotated", post(auth_api::rotation_notice))
        .route("/api/v1/auth/keys/{id}", get(auth_api::get_key).delete(auth_api::delete_key))
        .route("/api/v1/auth/keys/{id}/rotate", post(auth_api::rotate_key))
        .route("/api/v1/auth/keys/{id}/revoke", post(auth_api::revoke_key))
        .nest_service("/mcp", crate::mcp::service(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), gatekeeper))
        .with_state(state)
}

async fn not_found() -> Failure {
    Failure::not_found("no such endpoint")
}

async fn method_not_allowed() -> Failure {
    Failure::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        bkg_schema::ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

/// A peer on the unix socket, as its listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct UnixPeer {
    pub uid: u32,
}

impl Connected<axum::serve::IncomingStream<'_, PeerCheckedListener>> for UnixPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PeerCheckedListener>) -> Self {
        Self { uid: *stream.remote_addr() }
    }
}

/// Where a request came from.
enum Origin {
    Unix(UnixPeer),
    Tcp(Option<SocketAddr>),
}

fn origin(request: &Request) -> Origin {
    match request.extensions().get::<ConnectInfo<UnixPeer>>() {
        Some(ConnectInfo(peer)) => Origin::Unix(*peer),
        // Anything not known to be the socket is treated as the network: it must bring a key.
        None => Origin::Tcp(request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr)),
    }
}

fn bearer(request: &Request) -> Result<Option<String>, Failure> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| Failure::unauthorized("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(Some(key.trim().to_owned()))
        }
        _ => Err(Failure::unauthorized("the Authorization header must be `Bearer <key>`")),
    }
}

/// The key behind `secret`, if it is known, unexpired and unrevoked.
async fn key_principal(state: &AppState, secret: &str) -> Result<Principal, Failure> {
    let Some(key) = state.store.key_by_hash(&keys::hash(secret)).await? else {
        return Err(Failure::unauthorized("unknown API key"));
    };
    let now = now_ms();
    if key.revoked_at_ms.is_some() {
        return Err(Failure::unauthorized(format!("API key {} is revoked", key.id)));
    }
    if key.expires_at_ms <= now {
        return Err(Failure::unauthorized(format!("API key {} has expired", key.id)));
    }
    note_key_use(state, &key.id, now);
    Ok(Principal::Key(key))
}

/// Records when a key was last used, at most once a minute per key, off the request's path.
fn note_key_use(state: &AppState, key_id: &str, now: u64) {
    {
        let mut written = state.auth.last_used_written.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if written.get(key_id).is_some_and(|at| now.saturating_sub(*at) < LAST_USED_EVERY_MS) {
            return;
        }
        written.insert(key_id.to_owned(), now);
    }
    let (store, key_id) = (state.store.clone(), key_id.to_owned());
    tokio::spawn(async move {
        if let Err(error) = store.key_used(&key_id, now).await {
            tracing::warn!(%error, key = %key_id, "could not record the key's use");
        }
    });
}

/// Takes one request from the allowance of a TCP client that brought no valid key.
fn charge_anonymous(state: &AppState, peer: Option<SocketAddr>) -> Result<(), Failure> {
    let address = peer.map(|addr| addr.ip().to_string()).unwrap_or_default();
    state.auth.limiter.check(&format!("addr:{address}"), ANONYMOUS_PER_MINUTE, Instant::now()).map_err(|wait| {
        state.metrics.rate_limited(crate::metrics::ANONYMOUS);
        Failure::rate_limited(retry_after_seconds(wait))
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
        (Some(secret), _) => match key_principal(state, secret).await {
            Ok(principal) => principal,
            Err(failure) => {
                if let Origin::Tcp(peer) = origin {
                    charge_anonymous(state, peer)?;
                }
                return Err(failure);
            }
        },
        (None, Origin::Unix(peer)) => return Ok(Some(Principal::Local { uid: peer.uid })),
        (None, Origin::Tcp(peer)) => {
            if *method == Method::POST && OPEN_ROUTES.contains(&route) {
                charge_anonymous(state, *peer)?;
                return Ok(None);
            }
            return Err(Failure::unauthorized("this endpoint needs `Authorization: Bearer <key>`"));
        }
    };
    // Peers on the socket are never rate limited: they are the machine's administrators.
    if let (Origin::Tcp(_), Principal::Key(key)) = (&origin, &principal) {
        let allowance = state.auth.policy.rate_per_minute.get(key.role);
        if let Err(wait) = state.auth.limiter.check(&key.id, allowance, Instant::now()) {
            state.metrics.rate_limited(key.role.as_str());
            return Err(Failure::rate_limited(retry_after_seconds(wait)));
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

    let too_large = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > MAX_BODY_BYTES as u64);
    let (response, role) = if too_large {
        (Failure::too_large(MAX_BODY_BYTES).into_response(), None)
    } else {
        let checked = match bearer(&request) {
            Ok(key) => authenticate(&state, origin(&request), key, &method, &route).await,
            Err(failure) => Err(failure),
        };
        match checked {
            Ok(principal) => {
                let role = principal.as_ref().map(Principal::role);
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                (next.run(request).await, role)
            }
            Err(failure) => (failure.into_response(), None),
        }
    };

    let status = response.status();
    state.metrics.http_answered(&route, method.as_str(), status.as_u16());
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

/// A unix listener that hands axum only connections from root or the agent's own user.
pub struct PeerCheckedListener {
    listener: UnixListener,
    agent_uid: u32,
}

impl PeerCheckedListener {
    pub fn new(listener: UnixListener) -> Self {
        Self { listener, agent_uid: nix::unistd::geteuid().as_raw() }
    }
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = UnixStream;
    type Addr = u32;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(credentials) if credentials.uid() == 0 || credentials.uid() == self.agent_uid => {
                        return (stream, credentials.uid());
                    }
                    Ok(credentials) => {
                        tracing::warn!(uid = credentials.uid(), "refused a connection from another user")
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
        Ok(self.agent_uid)
    }
}
