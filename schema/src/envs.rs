//! Dependency environments (`bkg envs`) and secrets (`bkg secrets`) as the API shows them.

use serde::{Deserialize, Serialize};

use crate::Language;

fn python() -> Language {
    Language::Python
}

/// A Node.js run's packages, as `npm ci` installs them: its package.json and package-lock.json,
/// as text (`bkg exe` sends the two beside the script).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodePackages {
    pub package_json: String,
    pub package_lock: String,
}

/// One environment the agent built: the packages of one Python requirement set, or of one
/// Node.js package.json and lockfile, installed once and mounted read-only into every run that
/// asks for the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvInfo {
    /// The hash of what it is built from, the interpreter and the package index (lowercase hex).
    pub id: String,
    /// Whose packages: Python's or Node's (absent in listings of older agents: Python).
    #[serde(default = "python")]
    pub language: Language,
    /// Python: the requirement lines it was built from. Node: its package.json's dependencies,
    /// `NAME@RANGE` each.
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

/// Why `name` cannot name a secret, if it cannot: it becomes an environment variable of the
/// runs that open it, so it must be one's name. The agent's rule, checked by bkg too before it
/// asks for the value.
/// The largest value a secret may have: it goes into an environment, which the kernel bounds.
pub const MAX_SECRET_BYTES: usize = 32 * 1024;

/// Why a secret's value is refused, if it is.
pub fn secret_value_error(value: &str) -> Option<String> {
    (value.len() > MAX_SECRET_BYTES || value.contains('\0'))
        .then(|| format!("a secret's value must be at most {MAX_SECRET_BYTES} bytes, without NUL bytes"))
}

pub fn secret_name_error(name: &str) -> Option<String> {
    let is_variable_name = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    (!is_variable_name).then(|| {
        format!(
            "secret name `{}` must be an environment variable name (letters, digits and '_', not starting with a digit; at most 255)",
            crate::shown_briefly(name)
        )
    })
}

/// A secret as listed: its name and when it was set, never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    pub name: String,
    pub namespace: String,
    pub created_at_ms: u64,
}
