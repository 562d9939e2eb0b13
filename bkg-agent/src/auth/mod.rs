//! Who is calling and what they may do: API keys (roles, namespaces, TTLs), user passwords,
//! per-key rate limits and signed key-rotation notices.

pub mod keys;
pub mod local;
pub mod notice;
pub mod password;
pub mod rate;

use std::time::Duration;

use bkg_schema::auth::{KeyInfo, Principal as PrincipalInfo, Role};

use crate::store::Caller;

pub use local::LocalUser;

/// Lifetimes and request rates per role, from the agent's flags (whose defaults are SPEC
/// section 6's: admin 90 d and 1000/min, namespace 30 d and 100/min, session 1 h and 50/min,
/// model-access 1 h and 200/min).
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub ttl: RoleTable<Duration>,
    /// Requests per minute.
    pub rate_per_minute: RoleTable<u32>,
    /// What one local user may ask for (`--user-limit`).
    pub user: local::UserPolicy,
}

/// One value per role.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleTable<T> {
    pub admin: T,
    pub namespace: T,
    pub session: T,
    pub model_access: T,
}

impl<T: Copy> RoleTable<T> {
    pub fn get(&self, role: Role) -> T {
        match role {
            Role::Admin => self.admin,
            Role::Namespace => self.namespace,
            Role::Session => self.session,
            Role::ModelAccess => self.model_access,
        }
    }
}

/// The caller of one request, once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// A peer on the unix socket (root, the agent's user or a member of the admin group): an
    /// admin, never rate limited.
    Local { uid: u32 },
    /// A member of the socket's group on the unix socket: confined to their own namespace
    /// (`user-<name>`), never rate limited, their files opened with their rights.
    User(LocalUser),
    /// A valid (known, unexpired, unrevoked) API key.
    Key(KeyInfo),
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Self::Local { .. } => Role::Admin,
            Self::User(_) => Role::Namespace,
            Self::Key(key) => key.role,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Role::Admin
    }

    /// The one namespace this caller is confined to; `None` for admins, who reach them all.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Key(key) if key.role != Role::Admin => key.namespace.as_deref(),
            Self::User(user) => Some(&user.namespace),
            _ => None,
        }
    }

    /// The local user whose rights open what this caller names; `None` for admins and keys.
    pub fn local_user(&self) -> Option<&LocalUser> {
        match self {
            Self::User(user) => Some(user),
            _ => None,
        }
    }

    /// The caller as a refusal names them: `a namespace key`, or `local user alice` for a
    /// member of the socket's group, who holds no key.
    pub fn named(&self) -> String {
        match self {
            Self::Local { .. } => "an admin".into(),
            Self::User(user) => format!("local user {}", user.name),
            Self::Key(key) => format!("a {} key", key.role.as_str()),
        }
    }

    /// Who the audit log names: `uid:<uid>` or `key:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Self::Local { uid } | Self::User(LocalUser { uid, .. }) => format!("uid:{uid}"),
            Self::Key(key) => format!("key:{}", key.id),
        }
    }

    /// The audit log's view of this caller acting in `namespace`.
    pub fn audit_caller(&self, namespace: &str) -> Caller {
        Caller { actor: self.actor(), namespace: namespace.to_owned() }
    }

    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::Local { .. } | Self::User(_) => None,
            Self::Key(key) => Some(&key.id),
        }
    }

    pub fn describe(&self) -> PrincipalInfo {
        match self {
            Self::Local { .. } => PrincipalInfo {
                role: Role::Admin,
                namespace: None,
                key_id: None,
                expires_at_ms: None,
                via: "unix".into(),
            },
            Self::User(user) => PrincipalInfo {
                role: Role::Namespace,
                namespace: Some(user.namespace.clone()),
                key_id: None,
                expires_at_ms: None,
                via: "unix".into(),
            },
            Self::Key(key) => PrincipalInfo {
                role: key.role,
                namespace: self.namespace().map(str::to_owned),
                key_id: Some(key.id.clone()),
                expires_at_ms: Some(key.expires_at_ms),
                via: "key".into(),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key as the store would hand it back, for tests of what its role and namespace allow.
    pub(crate) fn key_info(id: &str, role: Role, namespace: Option<&str>) -> KeyInfo {
        KeyInfo {
            id: id.into(),
            role,
            namespace: namespace.map(str::to_owned),
            name: None,
            user: None,
            created_at_ms: 0,
            expires_at_ms: 1,
            rotated_at_ms: None,
            revoked_at_ms: None,
            last_used_at_ms: None,
            created_by_key: None,
        }
    }

    fn key(role: Role, namespace: Option<&str>) -> Principal {
        Principal::Key(key_info("key_1", role, namespace))
    }

    #[test]
    fn a_key_is_confined_to_its_namespace_and_named_by_its_id() {
        let team = key(Role::Namespace, Some("team"));
        assert_eq!(team.namespace(), Some("team"));
        assert_eq!(team.actor(), "key:key_1");
        assert_eq!(key(Role::Admin, Some("ignored")).namespace(), None, "an admin key reaches every namespace");
        assert_eq!(Principal::Local { uid: 0 }.actor(), "uid:0");
    }
}
