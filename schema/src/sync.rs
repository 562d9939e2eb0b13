//! The agent's link to the shared bkg_db, as `GET /api/v1/sync`, `POST /api/v1/sync/retry` and
//! `POST /api/v1/sync/migrate` answer it (`bkg sync status|retry`, `bkg db migrate`).

use serde::{Deserialize, Serialize};

/// Where the sync worker stands: what `/metrics` and `bkg sync status` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncStatus {
    /// Events in the outbox not yet in bkg_db, parked ones apart.
    pub backlog: u64,
    /// Events parked after too many refusals: they wait for `bkg sync retry`.
    pub parked: u64,
    /// Now minus the time of the oldest unsynced event; absent when nothing waits.
    pub lag_ms: Option<u64>,
    /// When a batch last reached bkg_db (and was marked synced).
    pub last_success_ms: Option<u64>,
    /// The most recent failure, kept after recovery; `failures` says whether it is current.
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Failed attempts since the last successful one: 0 when the sync is healthy.
    pub failures: u32,
}

/// An event bkg_db refused too often: kept in the outbox with its reason, passed over so that the
/// events after it go on, until it is retried (`bkg sync retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkedEvent {
    pub seq: u64,
    pub action: String,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub reason: String,
    pub parked_at_ms: u64,
}

/// `GET /api/v1/sync`: the worker's status, whether a bkg_db is configured, and the parked events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncView {
    /// Whether a bkg_db is configured (`--db-url` / `BKG_DB_URL`). Without one the outbox still
    /// holds what one would get.
    pub configured: bool,
    #[serde(flatten)]
    pub status: SyncStatus,
    /// The parked events with their reasons, in seq order.
    pub parked_events: Vec<ParkedEvent>,
}

/// How long the oldest event may wait before the sync counts as behind though no attempt has
/// failed yet: a healthy agent ships within a second or two, and an attempt bkg_db hangs up
/// fails only at the worker's timeout (30 s).
pub const BEHIND_AFTER_MS: u64 = 10_000;

impl SyncStatus {
    /// Whether events have waited longer than `BEHIND_AFTER_MS` with no failed attempt yet
    /// (found by a new-user trial: with PostgreSQL hung, status said "in sync" for 30 s).
    pub fn is_behind(&self) -> bool {
        self.failures == 0 && self.lag_ms.is_some_and(|lag| lag >= BEHIND_AFTER_MS)
    }
}

impl SyncView {
    /// Whether an operator should look: the last attempt failed, events are parked, or they wait
    /// too long.
    pub fn needs_attention(&self) -> bool {
        self.status.failures > 0 || self.status.parked > 0 || (self.configured && self.status.is_behind())
    }
}

/// `POST /api/v1/sync/retry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// The parked event to ship again; all of them when absent.
    #[serde(default)]
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Retried {
    /// The events queued again, in seq order.
    pub retried: Vec<u64>,
}

/// `POST /api/v1/sync/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Migrated {
    /// Versions applied now (empty when bkg_db was current).
    pub applied: Vec<i32>,
    /// The newest version this agent brings.
    pub latest: i32,
    /// The version bkg_db is at now: above `latest` when a newer agent migrated it (migrations
    /// only add, so this agent keeps working).
    pub version: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_waiting_ten_seconds_with_no_failure_yet_are_behind_and_need_attention() {
        let view = |lag_ms: Option<u64>, failures: u32, configured: bool| SyncView {
            configured,
            status: SyncStatus {
                backlog: 2,
                parked: 0,
                lag_ms,
                last_success_ms: None,
                last_error: None,
                last_error_ms: None,
                failures,
            },
            parked_events: Vec::new(),
        };
        assert!(!view(Some(BEHIND_AFTER_MS - 1), 0, true).needs_attention(), "shipping as usual");
        assert!(view(Some(BEHIND_AFTER_MS), 0, true).status.is_behind());
        assert!(view(Some(BEHIND_AFTER_MS), 0, true).needs_attention());
        assert!(!view(Some(BEHIND_AFTER_MS), 1, true).status.is_behind(), "failing, not behind");
        assert!(!view(Some(60_000), 0, false).needs_attention(), "kept for a bkg_db not configured");
    }
}
