//! The agent itself: health, metrics, its description and shutdown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::health::{Health, HealthReason, HealthStatus};
use bkg_schema::sync::{Migrated, Retried, RetryRequest, SyncView};
use bkg_schema::{AgentInfo, ApiError};

use super::AppState;
use super::failure::{ApiResult, Failure};
use crate::auth::Principal;
use crate::engine::Engine;

/// Whether runs work, remembered between health checks: a successful run within `interval`
/// (a caller's or the probe's own) proves it; without one, the probe runs an empty script.
pub struct HealthProbe {
    interval: Duration,
    verdict: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Only one probe file at a time.
    writing: Mutex<()>,
    /// The keyless view's last verdict and when it was reached.
    anonymous: tokio::sync::Mutex<Option<(Instant, Option<HealthReason>)>>,
}

impl HealthProbe {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            verdict: tokio::sync::Mutex::new(None),
            writing: Mutex::new(()),
            anonymous: tokio::sync::Mutex::new(None),
        }
    }

    /// Writes and removes a file where the sandboxes' state lives.
    fn check_sandbox_dir(&self, engine: &Engine) -> Result<(), String> {
        let _one = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let probe = engine.runs_dir().join(format!(".healthz-{}", std::process::id()));
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|error| format!("cannot write the sandboxes' directory {}: {error}", engine.runs_dir().display()))
    }

    async fn check_runs(&self, engine: &std::sync::Arc<Engine>) -> Result<(), String> {
        // Evidence stands for `interval`, unless a run failed after it.
        let stands = |at: Option<Instant>| {
            let failure = engine.capacity.last_runs().failure;
            at.is_some_and(|at| at.elapsed() < self.interval && failure.is_none_or(|failure| failure < at))
        };
        if stands(engine.capacity.last_runs().success) {
            return Ok(());
        }
        let mut cached = self.verdict.lock().await;
        // A probe that finished while this check waited for the lock counts.
        if stands(engine.capacity.last_runs().success) {
            return Ok(());
        }
        if let Some((at, verdict)) = cached.as_ref()
            && (verdict.is_err() || stands(Some(*at)))
            && at.elapsed() < self.interval
        {
            return verdict.clone();
        }
        let verdict = engine.probe().await.map_err(|reason| format!("runs fail: {reason}"));
        if let Err(reason) = &verdict {
            tracing::warn!(%reason, "the health probe's run failed");
        }
        *cached = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

/// How long the keyless view's verdict stands: probes from load balancers must not each cost
/// a write to the store and the disk.
const ANONYMOUS_VERDICT_TTL: Duration = Duration::from_secs(1);

impl HealthProbe {
    /// The first check that fails: its reason word, and the detail only a caller with a key sees.
    /// A new check goes here, with a new `HealthReason`.
    async fn sickness(&self, state: &AppState) -> Option<(HealthReason, String)> {
        if let Err(error) = state.store.check_writable().await {
            return Some((HealthReason::Store, format!("store not writable: {error}")));
        }
        if let Err(detail) = self.check_sandbox_dir(&state.engine) {
            return Some((HealthReason::SandboxDir, detail));
        }
        if let Err(detail) = self.check_runs(&state.engine).await {
            return Some((HealthReason::Runs, detail));
        }
        None
    }

    /// The reason word alone, checked at most once per `ANONYMOUS_VERDICT_TTL`.
    async fn anonymous_verdict(&self, state: &AppState) -> Option<HealthReason> {
        let mut cached = self.anonymous.lock().await;
        if let Some((at, verdict)) = *cached
            && at.elapsed() < ANONYMOUS_VERDICT_TTL
        {
            return verdict;
        }
        let verdict = self.sickness(state).await.map(|(reason, _)| reason);
        *cached = Some((Instant::now(), verdict));
        verdict
    }
}

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
    let sick = if principal.is_none() {
        state.health.anonymous_verdict(&state).await.map(|reason| (reason, None))
    } else {
        state.health.sickness(&state).await.map(|(reason, detail)| (reason, Some(detail)))
    };
    match sick {
        Some((reason, None)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: HealthStatus::Unavailable, reason: Some(reason) }))
                .into_response()
        }
        Some((_, Some(detail))) => Failure::unavailable(detail).into_response(),
        // Parked events stop nothing from running: the agent stays in service, flagged.
        None => match state.store.outbox_backlog().await {
            Ok(backlog) if backlog.parked > 0 => {
                Json(Health { status: HealthStatus::Degraded, reason: Some(HealthReason::SyncParked) }).into_response()
            }
            Ok(_) => Json(Health { status: HealthStatus::Ok, reason: None }).into_response(),
            Err(error) => Failure::from(error).into_response(),
        },
    }
}

/// Prometheus metrics, OpenMetrics text (admins only).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "agent",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String)),
)]
pub async fn metrics(State(state): State<AppState>, Extension(principal): Extension<Principal>) -> ApiResult<Response> {
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may read the metrics"));
    }
    let backlog = state.store.outbox_backlog().await?;
    let lag_ms = backlog.oldest_ts_ms.map(|oldest| crate::ids::now_ms().saturating_sub(oldest));
    let text = state
        .metrics
        .encode(state.engine.active_runs(), state.engine.warm_count(), backlog.events, lag_ms, backlog.parked)
        .map_err(|_| Failure::internal("could not encode the metrics"))?;
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
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may read the agent's configuration"));
    }
    let engine = &state.engine;
    Ok(Json(AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("BKG_COMMIT").to_owned(),
        build_date: env!("BKG_BUILD_DATE").to_owned(),
        protections: protections(&engine.cgroup_version()),
        pid: std::process::id(),
        socket: state.socket.display().to_string(),
        state_dir: engine.config.state_dir.display().to_string(),
        cgroup_version: engine.cgroup_version(),
        warm_sandboxes: engine.warm_count(),
        warm_target: engine.warm_target(),
        warm_memory_bytes: engine.warm_memory_bytes(),
        active_runs: engine.active_runs(),
        pending_cleanups: engine.cleanups_pending(),
        default_limits: engine.config.default_limits,
        max_limits: engine.config.max_limits,
    }))
}

/// What confines every sandbox here: fixed by the engine, but for Landlock, which depends on
/// the kernel (see docs/security.md).
fn protections(cgroup_version: &str) -> Vec<String> {
    let landlock = match crate::engine::landlock::kernel_abi() {
        Some(abi) => format!("landlock ABI {abi}"),
        None => "landlock unavailable".to_owned(),
    };
    vec![
        "user, pid, mount, network, ipc, uts and cgroup namespaces".to_owned(),
        "seccomp filter".to_owned(),
        landlock,
        format!("cgroup {cgroup_version} limits"),
        "capabilities dropped".to_owned(),
        "own disk per sandbox".to_owned(),
    ]
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
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may stop the agent"));
    }
    state.shutdown.notify_one();
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
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may read the sync's state"));
    }
    let (configured, status) = match &state.sync {
        Some((handle, _)) => (true, handle.status().await.map_err(|error| Failure::internal(error.to_string()))?),
        // Without a bkg_db the outbox still holds what one would get.
        None => {
            let backlog = state.store.outbox_backlog().await?;
            let lag_ms = backlog.oldest_ts_ms.map(|oldest| crate::ids::now_ms().saturating_sub(oldest));
            let status = bkg_schema::sync::SyncStatus {
                backlog: backlog.events,
                parked: backlog.parked,
                lag_ms,
                last_success_ms: None,
                last_error: None,
                last_error_ms: None,
                failures: 0,
            };
            (false, status)
        }
    };
    Ok(Json(SyncView { configured, status, parked_events: state.store.outbox_parked().await? }))
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
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may retry parked events"));
    }
    let request: RetryRequest = super::input::optional_json(body, super::input::SMALL_BODY_BYTES).await?;
    let caller = principal.audit_caller(bkg_schema::DEFAULT_NAMESPACE);
    let retried = state.store.outbox_retry(&caller, request.seq).await?;
    if let Some(seq) = request.seq
        && retried.is_empty()
    {
        return Err(Failure::not_found(format!("outbox event {seq} is not parked")));
    }
    Ok(Json(Retried { retried }))
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
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may migrate bkg_db"));
    }
    let Some((_, url)) = &state.sync else {
        return Err(Failure::conflict("no bkg_db is configured: start the agent with --db-url or BKG_DB_URL"));
    };
    let mut client = crate::sync::connect(url).await.map_err(|error| Failure::unavailable(error.to_string()))?;
    let applied = crate::sync::migrate(&mut client).await.map_err(|error| Failure::unavailable(error.to_string()))?;
    Ok(Json(Migrated { applied, latest: crate::sync::latest_version() }))
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
        (status = 409, description = "No bkg_db is configured", body = ApiError),
        (status = 503, description = "bkg_db cannot be reached", body = ApiError),
    ),
)]
pub async fn sync_audit_lines(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path(agent_id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may read the audit lines in bkg_db"));
    }
    let Some((_, url)) = &state.sync else {
        return Err(Failure::conflict("no bkg_db is configured: start the agent with --db-url or BKG_DB_URL"));
    };
    let client = crate::sync::connect(url).await.map_err(|error| Failure::unavailable(error.to_string()))?;
    let rows = client
        .query("SELECT line FROM audit_events WHERE agent_id = $1 ORDER BY seq", &[&agent_id])
        .await
        .map_err(|error| Failure::unavailable(format!("bkg_db: {error}")))?;
    let mut text = String::new();
    for row in rows {
        text.push_str(row.get::<_, &str>(0));
        text.push('\n');
    }
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(response)
}
