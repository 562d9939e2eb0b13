//! The agent itself: health, metrics, its description, shutdown, and its link to bkg_db.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bkg_schema::AgentInfo;
use bkg_schema::health::HealthReason;
use bkg_schema::sync::{Migrated, Retried, RetryRequest, SyncStatus, SyncView};

use super::access::{AdminTask, require_admin, require_mcp_client, require_ui_user};
use super::{OpError, OpResult, Service};
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

/// How long the keyless view's verdict stands: probes from load balancers must not each cost
/// a write to the store and the disk.
const ANONYMOUS_VERDICT_TTL: Duration = Duration::from_secs(1);

impl HealthProbe {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            verdict: tokio::sync::Mutex::new(None),
            writing: Mutex::new(()),
            anonymous: tokio::sync::Mutex::new(None),
        }
    }

    /// Writes and removes a file where the sandboxes' state lives. Removed also when the write
    /// failed: a full disk fails the write after the file is made (found by a new-user trial: the
    /// empty file stayed behind).
    fn check_sandbox_dir(&self, engine: &Engine) -> Result<(), String> {
        let _one = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let probe = engine.runs_dir().join(format!(".healthz-{}", std::process::id()));
        let written = std::fs::write(&probe, b"ok");
        let removed = std::fs::remove_file(&probe);
        written
            .and(removed)
            .map_err(|error| format!("cannot write the sandboxes' directory {}: {error}", engine.runs_dir().display()))
    }

    async fn check_runs(&self, engine: &Arc<Engine>) -> Result<(), String> {
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

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthVerdict {
    Healthy,
    /// The agent runs code, but something needs an operator.
    Degraded(HealthReason),
    /// Not healthy: the reason word, and the detail for a caller with a key.
    Unavailable {
        reason: HealthReason,
        detail: Option<String>,
    },
}

/// The metrics, in the OpenMetrics text format.
pub struct MetricsText(pub String);

impl Service {
    /// Whether `principal` may open MCP at all (`/mcp`, every method of it).
    pub fn admit_mcp(&self, principal: &Principal) -> OpResult<()> {
        require_mcp_client(principal)
    }

    /// Whether `principal` may sign in to the Web UI at all.
    pub fn admit_ui(&self, principal: &Principal) -> OpResult<()> {
        require_ui_user(principal)
    }

    /// The first check that fails: its reason word, and the detail only a caller with a key sees.
    /// A new check goes here, with a new `HealthReason`.
    async fn sickness(&self) -> Option<(HealthReason, String)> {
        if let Err(error) = self.store.check_writable().await {
            return Some((HealthReason::Store, format!("store not writable: {error}")));
        }
        if let Err(detail) = self.health.check_sandbox_dir(&self.engine) {
            return Some((HealthReason::SandboxDir, detail));
        }
        if let Err(detail) = self.health.check_runs(&self.engine).await {
            return Some((HealthReason::Runs, detail));
        }
        None
    }

    /// The reason word alone, checked at most once per `ANONYMOUS_VERDICT_TTL`.
    async fn anonymous_sickness(&self) -> Option<HealthReason> {
        let mut cached = self.health.anonymous.lock().await;
        if let Some((at, verdict)) = *cached
            && at.elapsed() < ANONYMOUS_VERDICT_TTL
        {
            return verdict;
        }
        let verdict = self.sickness().await.map(|(reason, _)| reason);
        *cached = Some((Instant::now(), verdict));
        verdict
    }

    /// Healthy means the store can be written and runs work: one succeeded recently, or the
    /// probe's own empty script did. A caller without a key (`None`) learns the reason word only.
    pub async fn health(&self, principal: Option<&Principal>) -> OpResult<HealthVerdict> {
        let sick = match principal {
            None => self.anonymous_sickness().await.map(|reason| (reason, None)),
            Some(_) => self.sickness().await.map(|(reason, detail)| (reason, Some(detail))),
        };
        if let Some((reason, detail)) = sick {
            return Ok(HealthVerdict::Unavailable { reason, detail });
        }
        // Parked events stop nothing from running: the agent stays in service, flagged.
        if self.store.outbox_backlog().await?.parked > 0 {
            return Ok(HealthVerdict::Degraded(HealthReason::SyncParked));
        }
        Ok(HealthVerdict::Healthy)
    }

    /// The security level `/healthz` names: to callers with a key only, since a keyless probe
    /// learns nothing about the host.
    pub fn health_security_level(&self, principal: Option<&Principal>) -> Option<bkg_schema::host::SecurityLevel> {
        principal.map(|_| self.engine.config.security_level)
    }

    pub async fn metrics_text(&self, principal: &Principal) -> OpResult<MetricsText> {
        require_admin(principal, AdminTask::ReadMetrics)?;
        let backlog = self.store.outbox_backlog().await?;
        // Without a bkg_db nothing waits to be sent: no lag (sync_status).
        let lag_ms = backlog
            .oldest_ts_ms
            .filter(|_| self.sync.is_some())
            .map(|oldest| crate::ids::now_ms().saturating_sub(oldest));
        let text = self
            .metrics
            .encode(self.engine.active_runs(), self.engine.warm_count(), backlog.events, lag_ms, backlog.parked)
            .map_err(|_| OpError::Internal("could not encode the metrics".into()))?;
        Ok(MetricsText(text))
    }

    /// The agent: version, paths, load and limits.
    pub fn agent_info(&self, principal: &Principal) -> OpResult<AgentInfo> {
        require_admin(principal, AdminTask::ReadAgent)?;
        let engine = &self.engine;
        let warm_pool = engine.warm_pool();
        let (queued_runs, disk_in_use_bytes) = engine.capacity.load();
        let bounds = engine.capacity.config();
        Ok(AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: env!("BKG_COMMIT").to_owned(),
            build_date: env!("BKG_BUILD_DATE").to_owned(),
            protections: protections(&engine.cgroup_version()),
            security_level: Some(engine.config.security_level),
            runtimes: engine.config.runtimes.clone(),
            pid: std::process::id(),
            socket: self.socket.display().to_string(),
            socket_activated: self.socket_activated,
            state_dir: engine.config.state_dir.display().to_string(),
            cgroup_version: engine.cgroup_version(),
            warm_sandboxes: warm_pool.len(),
            warm_target: engine.warm_target(),
            warm_memory_bytes: warm_pool.iter().map(|sandbox| sandbox.memory_bytes).sum(),
            warm_pool,
            warm_memory_limit_bytes: engine.config.warm_pool_memory,
            queued_runs,
            max_running_runs: bounds.max_running,
            max_queued_runs: bounds.max_queued,
            long_lived_runs: engine.capacity.long_lived_held(),
            max_long_lived_runs: bounds.long_lived_max(),
            disk_in_use_bytes,
            disk_budget_bytes: engine.capacity.disk_budget().unwrap_or(0),
            prestarted_runs: engine.prestarted_runs(),
            zygote_runs: engine.zygote_runs(),
            zygote: engine.zygote(),
            // The engine counts a run from its acceptance; one waiting for a place is not going on.
            active_runs: engine.active_runs().saturating_sub(queued_runs),
            pending_cleanups: engine.cleanups_pending(),
            default_limits: engine.config.default_limits,
            max_limits: engine.config.max_limits,
            listeners: self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
            retention: Some(self.retention.clone()),
        })
    }

    /// Stops the agent: warm sandboxes are removed, running ones get the shutdown grace.
    pub async fn shut_down(&self, principal: &Principal) -> OpResult<()> {
        require_admin(principal, AdminTask::StopAgent)?;
        // In a task of its own: a caller who hangs up drops this future, which must not fall
        // between the audit line and the stop (the log said the agent stopped when it did not).
        let (store, shutdown) = (self.store.clone(), Arc::clone(&self.shutdown));
        let event = stop_event(principal.actor(), "asked through the API");
        // A stop that cannot be written (a full state disk) still stops, as SIGTERM's does: it
        // was refused, and only a signal stopped the agent (found by a new-user trial).
        let stopping = tokio::spawn(async move {
            if let Err(error) = store.note(event).await {
                tracing::error!(%error, "the stop could not be written to the audit log: stopping without its line");
            }
            shutdown.notify_one();
        });
        stopping.await.map_err(|error| OpError::Internal(format!("the stop failed: {error}")))
    }

    /// The audit line of a stop beginning: by whom (`actor`) and why.
    pub async fn note_stop(&self, actor: String, reason: &str) -> OpResult<()> {
        Ok(self.store.note(stop_event(actor, reason)).await?)
    }

    fn sync_url(&self) -> OpResult<&str> {
        match &self.sync {
            Some((_, url)) => Ok(url),
            None => {
                Err(OpError::Conflict("no bkg_db is configured: start the agent with --db-url or BKG_DB_URL".into()))
            }
        }
    }

    /// The sync's backlog, parked events, last success and last error.
    pub async fn sync_status(&self, principal: &Principal) -> OpResult<SyncView> {
        require_admin(principal, AdminTask::ReadSync)?;
        let (configured, status) = match &self.sync {
            Some((handle, _)) => (true, handle.status().await.map_err(|error| OpError::Internal(error.to_string()))?),
            // Without a bkg_db the outbox still holds what one would get; nothing waits to be
            // sent, so no lag grows (an alert on a growing lag would fire on every such agent).
            None => {
                let backlog = self.store.outbox_backlog().await?;
                let status = SyncStatus {
                    backlog: backlog.events,
                    parked: backlog.parked,
                    lag_ms: None,
                    last_success_ms: None,
                    last_error: None,
                    last_error_ms: None,
                    failures: 0,
                };
                (false, status)
            }
        };
        Ok(SyncView { configured, status, parked_events: self.store.outbox_parked().await? })
    }

    /// Ships parked events again: back into the backlog with their attempts reset.
    pub async fn retry_sync(&self, principal: &Principal, request: RetryRequest) -> OpResult<Retried> {
        require_admin(principal, AdminTask::RetrySync)?;
        let caller = principal.audit_caller(bkg_schema::DEFAULT_NAMESPACE);
        let retried = self.store.outbox_retry(&caller, request.seq).await?;
        if let Some(seq) = request.seq
            && retried.is_empty()
        {
            return Err(OpError::NotFound(format!("outbox event {seq} is not parked")));
        }
        Ok(Retried { retried })
    }

    /// Applies bkg_db's migrations now (the sync also applies them when it connects).
    pub async fn migrate_db(&self, principal: &Principal) -> OpResult<Migrated> {
        require_admin(principal, AdminTask::MigrateDb)?;
        let mut client =
            crate::sync::connect(self.sync_url()?).await.map_err(|error| OpError::Unavailable(error.to_string()))?;
        crate::sync::migrate(&mut client).await.map_err(|error| OpError::Unavailable(error.to_string()))
    }

    /// An agent's audit lines as bkg_db holds them, in order, one per line.
    pub async fn db_audit_lines(&self, principal: &Principal, agent_id: &str) -> OpResult<String> {
        require_admin(principal, AdminTask::ReadDbAudit)?;
        let client =
            crate::sync::connect(self.sync_url()?).await.map_err(|error| OpError::Unavailable(error.to_string()))?;
        let lines = crate::sync::audit_lines(&client, agent_id).await.map_err(|error| match error {
            crate::sync::SyncError::Restricted { .. } => OpError::Conflict(error.to_string()),
            error => OpError::Unavailable(error.to_string()),
        })?;
        Ok(lines.into_iter().flat_map(|line| [line, "\n".to_owned()]).collect())
    }
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

/// The audit line of a stop beginning: by whom (`actor`) and why.
fn stop_event(actor: String, reason: &str) -> bkg_schema::audit::AuditEvent {
    let stopped = bkg_schema::audit::ConfigChanged::AgentStopped { agent_stopped: reason.to_owned() };
    bkg_schema::audit::AuditEvent::new(actor, bkg_schema::audit::Details::ConfigChanged(stopped))
}
