//! The JSON of `/api/v1/auth`: roles, API keys, users and key-rotation notices.

use serde::{Deserialize, Serialize};

/// What a key may do (docs/governance.md has the whole matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, in every namespace.
    Admin,
    /// Sandboxes, runs and keys of one namespace.
    Namespace,
    /// Sandboxes and runs of one namespace, for a short while (what `login` hands out).
    Session,
    /// Model endpoints only (phase 1); no sandboxes.
    ModelAccess,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Namespace, Role::Session, Role::ModelAccess];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Namespace => "namespace",
            Self::Session => "session",
            Self::ModelAccess => "model-access",
        }
    }

    /// The start of every key of this role, so a leaked key says what it can do.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Self::Admin => "bkg_admin_",
            Self::Namespace => "bkg_ns_",
            Self::Session => "bkg_sess_",
            Self::ModelAccess => "bkg_model_",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Self::Admin),
            "namespace" | "ns" => Some(Self::Namespace),
            "session" => Some(Self::Session),
            "model-access" | "model_access" | "model" => Some(Self::ModelAccess),
            _ => None,
        }
    }
}

/// An API key as listed: never the key itself, which is shown only once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    pub id: String,
    pub role: Role,
    /// Null for admin keys, which reach every namespace.
    pub namespace: Option<String>,
    /// A label for people.
    pub name: Option<String>,
    /// The user a session key was issued to at login.
    pub user: Option<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub rotated_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
    pub last_used_at_ms: Option<u64>,
    /// The key that made this one, if a key did (not a login, nor the agent's socket); a key
    /// that is not an admin's takes the keys it made with it when it is revoked or deleted.
    #[serde(default)]
    pub created_by_key: Option<String>,
}

impl KeyInfo {
    /// Neither revoked nor expired at `now_ms`: the key still speaks for its holder.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms > now_ms
    }
}

/// `POST /api/v1/auth/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub role: Role,
    /// Required for every role but admin; a namespace key may only name its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"))]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// Lifetime in seconds; at most (and by default) the role's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_seconds: Option<u64>,
}

/// A key together with its secret: the answer to create, rotate, login and refresh. The
/// secret is not stored and cannot be shown again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedKey {
    /// The secret to send as `Authorization: Bearer KEY`.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// `POST /api/v1/auth/signup` (admin only): a user who can log in to one namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// A DNS label (a-z, 0-9, -).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub username: String,
    /// At least 12 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 12))]
    pub password: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"))]
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserInfo {
    pub username: String,
    pub namespace: String,
    pub created_at_ms: u64,
}

/// `POST /api/v1/auth/login`: a password for a session key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// `GET /api/v1/auth/whoami`: the caller as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Principal {
    pub role: Role,
    /// Null for admins.
    pub namespace: Option<String>,
    /// The key in use; null for a peer on the unix socket.
    pub key_id: Option<String>,
    pub expires_at_ms: Option<u64>,
    /// `unix` (peer credentials) or `key`.
    pub via: String,
}

/// The body of a key-rotation notice, sent to webhooks and accepted at
/// `POST /api/v1/auth/keys/rotated`. Signed with `X-Bkg-Signature: t=UNIX,v1=HEX`, where HEX is
/// the HMAC-SHA256 of `"UNIX.BODY"` under the shared webhook secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RotationNotice {
    /// Always `key.rotated`.
    pub event: String,
    pub key_id: String,
    pub role: Role,
    pub namespace: Option<String>,
    pub rotated_at_ms: u64,
    pub expires_at_ms: u64,
    /// Which agent rotated it: its host name and pid.
    pub agent: String,
}

/// The answer to an accepted rotation notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoticeAccepted {
    pub accepted: bool,
    pub key_id: String,
}

/// The event name of a rotation notice.
pub const KEY_ROTATED_EVENT: &str = "key.rotated";

/// The header that carries a notice's signature.
pub const SIGNATURE_HEADER: &str = "x-bkg-signature";

/// Whether `text` has the shape of a key's id (`key_` and lowercase hex, as the agent makes
/// them): the CLI puts an id in a request's path, where `?` or `../` would reach another.
pub fn is_key_id(text: &str) -> bool {
    text.strip_prefix("key_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// `text`, given where an id was asked for, as an answer may repeat it: escaped and cut
/// (`shown_briefly`), or only its prefix when it is a key's secret, which a terminal's
/// scrollback or a log would otherwise keep (found by a new-user trial: `bkg runs show
/// bkg_ns_…` and `GET /api/v1/auth/keys/bkg_ns_…` said the secret back).
pub fn shown_as_id(text: &str) -> String {
    match Role::ALL.into_iter().find(|role| text.starts_with(role.key_prefix())) {
        Some(role) => format!("{}… (a key's secret, not shown)", role.key_prefix()),
        None => crate::shown_briefly(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_given_as_an_id_is_not_repeated() {
        assert_eq!(shown_as_id("bkg_ns_0123456789abcdef"), "bkg_ns_… (a key's secret, not shown)");
        assert_eq!(shown_as_id("run_1\n"), "run_1\\n");
    }

    #[test]
    fn roles_round_trip_by_name_and_json() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            let json = serde_json::to_string(&role).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert!(role.key_prefix().starts_with("bkg_"));
        }
    }
}

/// `POST /ui/launch` (the unix socket only): where `bkg ui` sends the browser. The URL carries a
/// one-time login token in its fragment, so it never reaches a server log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UiLaunch {
    pub url: String,
    /// Whether the agent started a loopback listener for it just now.
    pub started_listener: bool,
}
