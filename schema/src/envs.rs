//! Dependency environments (`bkg envs`) and secrets (`bkg secrets`) as the API shows them.

use serde::{Deserialize, Serialize};

/// One Python environment the agent built: the packages of one requirement set, installed once
/// and mounted read-only into every run that asks for the same set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvInfo {
    /// The hash of the requirement set, the interpreter and the package index (lowercase hex).
    pub id: String,
    /// The requirement lines it was built from, as given.
    pub requirements: Vec<String>,
    /// What it takes on disk.
    pub bytes: u64,
    pub created_at_ms: u64,
    /// When a run last used it (or its creation).
    pub last_used_at_ms: u64,
}

/// `POST /api/v1/envs/prune`: what to remove.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Remove only environments no run has used for this many milliseconds; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_for_ms: Option<u64>,
}

/// What a prune removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PruneResult {
    pub removed: Vec<String>,
    pub freed_bytes: u64,
}

/// `PUT /api/v1/secrets/{name}`: a secret's value. It is never sent back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    pub value: String,
    /// The namespace the secret belongs to; only an admin may name one. Default: the key's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A secret as listed: its name and when it was set, never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    pub name: String,
    pub namespace: String,
    pub created_at_ms: u64,
}
