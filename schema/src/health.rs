//! `GET /healthz`: what a load balancer or a kubelet probe reads without a key.

use serde::{Deserialize, Serialize};

/// The agent's health. Without a key it carries the status and, when not healthy, one reason
/// word: never versions, paths or counts. With a key it also names the agent's security level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: HealthStatus,
    /// Why the agent is degraded or unavailable; absent when it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<HealthReason>,
    /// The isolation the agent gives on this host (docs/compatibility.md, "Hosts"); only for a
    /// caller with a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<crate::host::SecurityLevel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    /// The agent runs code (200) but something needs an operator; `reason` says what.
    Degraded,
    Unavailable,
}

/// What made the agent unhealthy: one word each, added to as the agent checks more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthReason {
    /// The run store cannot be written.
    Store,
    /// The sandboxes' directory cannot be written.
    SandboxDir,
    /// Runs fail: none succeeded within the health interval and the probe's own run failed.
    Runs,
    /// Outbox events are parked (degraded, not unavailable): see `bkg sync status`.
    SyncParked,
}
