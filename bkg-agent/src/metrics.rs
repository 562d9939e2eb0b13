//! The agent's Prometheus metrics (OpenMetrics text at `/metrics`). Every metric here is fed by
//! real events: runs as they end, HTTP answers as they leave, gauges read at scrape time.

use std::sync::Mutex;

use bkg_schema::auth::Role;
use bkg_schema::{KilledBy, RunResult};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabel, Counter>,
    run_duration: Histogram,
    limit_kills: Family<LimitLabel, Counter>,
    active_sandboxes: Gauge,
    warm_sandboxes: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    rate_limited: Family<RoleLabel, Counter>,
    connections_refused: Family<ListenerLabel, Counter>,
    webhook_deliveries: Family<OutcomeLabel, Counter>,
    sync_backlog: Gauge,
    sync_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    sync_parked: Gauge,
    /// Encoding reads the metrics; one scrape at a time keeps the gauges it sets consistent.
    scrape: Mutex<()>,
}

/// The role label of requests refused before any key was looked at (login, notices).
pub const ANONYMOUS: &str = "anonymous";

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bkg");
        let runs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "runs",
            "Runs that ended, by outcome: ok (exit 0), error (other exit or signal), a limit that killed it, cancelled, shutdown (killed when the agent stopped), or failed (the agent could not run it)",
            runs.clone(),
        );
        // 10 ms to about 11 min.
        let run_duration = Histogram::new(exponential_buckets(0.01, 4.0, 9));
        registry.register("run_duration_seconds", "Wall time of runs that ran", run_duration.clone());
        let limit_kills = Family::<LimitLabel, Counter>::default();
        registry.register("limit_kills", "Runs ended by a limit, by limit", limit_kills.clone());
        let active_sandboxes = Gauge::default();
        registry.register("active_sandboxes", "Sandboxes running code now", active_sandboxes.clone());
        let warm_sandboxes = Gauge::default();
        registry.register("warm_sandboxes", "Prepared sandboxes waiting in the warm pool", warm_sandboxes.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let rate_limited = Family::<RoleLabel, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused with 429, by the key's role",
            rate_limited.clone(),
        );
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed on arrival because their listener was at its cap, by listener",
            connections_refused.clone(),
        );
        for listener in ["unix", "tcp"] {
            connections_refused.get_or_create(&ListenerLabel { listener: listener.into() }).inc_by(0);
        }
        let webhook_deliveries = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "rotation_webhook_deliveries",
            "Key-rotation notices sent to webhooks, by outcome (delivered, failed)",
            webhook_deliveries.clone(),
        );
        // Every known series starts at zero, so a rate over it exists before the first event.
        for outcome in ["ok", "error", "cancelled", "shutdown", "failed"] {
            runs.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc_by(0);
        }
        for limit in [KilledBy::Timeout, KilledBy::Memory, KilledBy::Pids, KilledBy::Disk] {
            runs.get_or_create(&OutcomeLabel { outcome: limit.as_str().into() }).inc_by(0);
            limit_kills.get_or_create(&LimitLabel { limit: limit.as_str().into() }).inc_by(0);
        }
        for role in Role::ALL {
            rate_limited.get_or_create(&RoleLabel { role: role.as_str().into() }).inc_by(0);
        }
        rate_limited.get_or_create(&RoleLabel { role: ANONYMOUS.into() }).inc_by(0);
        for outcome in ["delivered", "failed"] {
            webhook_deliveries.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc_by(0);
        }
        let sync_backlog = Gauge::default();
        registry.register(
            "sync_backlog_events",
            "Events in the outbox that the shared bkg_db does not have yet",
            sync_backlog.clone(),
        );
        let sync_lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "sync_lag",
            "Age of the oldest event not yet in bkg_db (0 when none waits)",
            prometheus_client::registry::Unit::Seconds,
            sync_lag.clone(),
        );
        let sync_parked = Gauge::default();
        registry.register(
            "sync_parked_events",
            "Outbox events parked after bkg_db refused them too often; `bkg sync retry` ships them again",
            sync_parked.clone(),
        );
        Self {
            registry,
            sync_backlog,
            sync_lag,
            sync_parked,
            runs,
            run_duration,
            limit_kills,
            active_sandboxes,
            warm_sandboxes,
            http_requests,
            rate_limited,
            connections_refused,
            webhook_deliveries,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Exposes the engine's count of broken warm sandboxes it replaced.
    pub fn count_warm_replacements(&mut self, replaced: Counter) {
        self.registry.register(
            "warm_sandboxes_replaced",
            "Warm sandboxes found broken (pid 1 gone, cgroup removed) when claimed, disposed of and replaced",
            replaced,
        );
    }

    pub fn run_ended(&self, outcome: Result<&RunResult, ()>) {
        let outcome = match outcome {
            Err(()) => "failed",
            Ok(result) => {
                self.run_duration.observe(result.wall_ms as f64 / 1000.0);
                match result.killed_by {
                    Some(KilledBy::Cancelled) => "cancelled",
                    Some(KilledBy::Shutdown) => "shutdown",
                    Some(limit) => {
                        self.limit_kills.get_or_create(&LimitLabel { limit: limit.as_str().into() }).inc();
                        limit.as_str()
                    }
                    None if result.exit_code == Some(0) => "ok",
                    None => "error",
                }
            }
        };
        self.runs.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    pub fn http_answered(&self, route: &str, method: &str, status: u16) {
        // A method is whatever word a client sends: one series each would grow without bound
        // (found by a new-user trial: 3,000 made-up methods, 800 KB more of /metrics).
        const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
        let method = if METHODS.contains(&method) { method } else { "other" };
        self.http_requests.get_or_create(&HttpLabels { route: route.into(), method: method.into(), status }).inc();
    }

    pub fn rate_limited(&self, role: &str) {
        self.rate_limited.get_or_create(&RoleLabel { role: role.into() }).inc();
    }

    pub fn connection_refused(&self, listener: &str) {
        self.connections_refused.get_or_create(&ListenerLabel { listener: listener.into() }).inc();
    }

    pub fn webhook_delivery(&self, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.webhook_deliveries.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// The text of `/metrics`, with the gauges read now.
    pub fn encode(
        &self,
        active_sandboxes: usize,
        warm_sandboxes: usize,
        sync_backlog: u64,
        sync_lag_ms: Option<u64>,
        sync_parked: u64,
    ) -> Result<String, std::fmt::Error> {
        let _scrape = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.active_sandboxes.set(i64::try_from(active_sandboxes).unwrap_or(i64::MAX));
        self.warm_sandboxes.set(i64::try_from(warm_sandboxes).unwrap_or(i64::MAX));
        self.sync_backlog.set(i64::try_from(sync_backlog).unwrap_or(i64::MAX));
        self.sync_lag.set(sync_lag_ms.unwrap_or(0) as f64 / 1000.0);
        self.sync_parked.set(i64::try_from(sync_parked).unwrap_or(i64::MAX));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_by_outcome_and_limit() -> Result<(), std::fmt::Error> {
        let metrics = Metrics::default();
        let result = RunResult {
            id: "run_1".into(),
            language: bkg_schema::Language::Python,
            exit_code: None,
            signal: Some(9),
            killed_by: Some(KilledBy::Memory),
            wall_ms: 1500,
            cpu_ms: 1,
            peak_memory_bytes: 1,
            disk_bytes_used: 0,
            stdout: String::new(),
            stderr: String::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            truncated: false,
            undelivered_bytes: 0,
            limits: bkg_schema::Limits::DEFAULT,
            security_level: None,
            denials: Vec::new(),
            files: Vec::new(),
            files_not_kept: None,
            network_denials: Vec::new(),
        };
        metrics.run_ended(Ok(&result));
        metrics.run_ended(Err(()));
        metrics.http_answered("/healthz", "GET", 200);
        let text = metrics.encode(2, 1, 7, Some(1500), 3)?;
        assert!(text.contains("bkg_runs_total{outcome=\"memory\"} 1"), "{text}");
        assert!(text.contains("bkg_runs_total{outcome=\"failed\"} 1"), "{text}");
        assert!(text.contains("bkg_limit_kills_total{limit=\"memory\"} 1"), "{text}");
        assert!(text.contains("bkg_run_duration_seconds_count 1"), "{text}");
        assert!(text.contains("bkg_active_sandboxes 2"), "{text}");
        assert!(text.contains("bkg_sync_backlog_events 7"), "{text}");
        assert!(text.contains("bkg_sync_lag_seconds 1.5"), "{text}");
        assert!(text.contains("bkg_sync_parked_events 3"), "{text}");
        assert!(text.contains("bkg_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        Ok(())
    }
}
