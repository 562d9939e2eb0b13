//! The agent itself: health, metrics, its description and shutdown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::{AgentInfo, ApiError};
use serde::Serialize;

use super::AppState;
use super::failure::{ApiResult, Failure};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::engine::sandbox::PreparedSandbox;

/// How long a sandbox-preparation probe's verdict stands: preparing one costs a disk image and
/// an init, too much to do for every probe of a busy health checker.
const PREPARE_PROBE_TTL: Duration = Duration::from_secs(15);

/// Whether the agent can still make sandboxes, remembered between health checks.
#[derive(Default)]
pub struct HealthProbe {
    prepared: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Only one probe file at a time.
    writing: Mutex<()>,
}

impl HealthProbe {
    /// Writes and removes a file where the sandboxes' state lives.
    fn check_sandbox_dir(&self, engine: &Engine) -> Result<(), String> {
        let _one = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let probe = engine.runs_dir().join(format!(".healthz-{}", std::process::id()));
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|error| format!("cannot write the sandboxes' directory {}: {error}", engine.runs_dir().display()))
    }

    /// A warm sandbox proves one could be made; with none, one is prepared and thrown away.
    async fn check_prepare(&self, engine: &std::sync::Arc<Engine>) -> Result<(), String> {
        if engine.warm_count() > 0 {
            return Ok(());
        }
        let mut cached = self.prepared.lock().await;
        if let Some((at, verdict)) = cached.as_ref()
            && at.elapsed() < PREPARE_PROBE_TTL
        {
            return verdict.clone();
        }
        let verdict = match PreparedSandbox::prepare(engine, engine.config.default_limits.disk_bytes, None).await {
            Ok(sandbox) => {
                sandbox.dispose().await;
                Ok(())
            }
            Err(error) => Err(format!("cannot prepare a sandbox: {error}")),
        };
        *cached = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` (a sick agent answers 503 with the reason).
    pub status: String,
}

/// 200 when the agent can make sandboxes and write its store; else 503 with the reason.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "agent",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "Not healthy; the message says why", body = ApiError),
    ),
)]
pub async fn healthz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.store.check_writable().await.map_err(|error| Failure::unavailable(format!("store not writable: {error}")))?;
    state.health.check_sandbox_dir(&state.engine).map_err(Failure::unavailable)?;
    state.health.check_prepare(&state.engine).await.map_err(Failure::unavailable)?;
    Ok(Json(Health { status: "ok".into() }))
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
    let (backlog, oldest) = state.store.outbox_backlog().await?;
    let lag_ms = oldest.map(|oldest| crate::ids::now_ms().saturating_sub(oldest));
    let text = state
        .metrics
        .encode(state.engine.active_runs(), state.engine.warm_count(), backlog, lag_ms)
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

/// Where the agent's events stand with the shared bkg_db (`bkg sync status`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct SyncView {
    /// Whether a bkg_db is configured (`--db-url` / `BKG_DB_URL`).
    pub configured: bool,
    /// Events in the outbox that bkg_db does not have yet.
    pub backlog: u64,
    /// How old the oldest of them is, in milliseconds.
    pub lag_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Failed attempts since the last success (0 when the sync is healthy).
    pub failures: u32,
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
            let (backlog, oldest) = state.store.outbox_backlog().await?;
            let lag_ms = oldest.map(|oldest| crate::ids::now_ms().saturating_sub(oldest));
            let status = crate::sync::SyncStatus {
                backlog,
                lag_ms,
                last_success_ms: None,
                last_error: None,
                last_error_ms: None,
                failures: 0,
            };
            (false, status)
        }
    };
    Ok(Json(SyncView {
        configured,
        backlog: status.backlog,
        lag_ms: status.lag_ms,
        last_success_ms: status.last_success_ms,
        last_error: status.last_error,
        last_error_ms: status.last_error_ms,
        failures: status.failures,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Migrated {
    /// Versions applied now (empty when bkg_db was current).
    pub applied: Vec<i32>,
    pub latest: i32,
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
