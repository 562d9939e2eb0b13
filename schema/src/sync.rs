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

impl SyncView {
    /// Whether an operator should look: the last attempt failed or events are parked.
    pub fn needs_attention(&self) -> bool {
        self.status.failures > 0 || self.status.parked > 0
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
