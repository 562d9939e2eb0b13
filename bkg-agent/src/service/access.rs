//! Who may do what: the one place the agent decides it. Every operation in `service/` asks here
//! before it acts; nothing else in the agent checks a role or a namespace.
//!
//! | what | admin | namespace key | session key | model-access key |
//! |---|---|---|---|---|
//! | run code; define, drive, list sandboxes; read runs | all namespaces | its namespace | its namespace | no |
//! | read the change feed | all namespaces | its namespace | its namespace | no |
//! | bind host volumes, use another project directory | yes | no | no | no |
//! | create keys | any | session and model-access keys of its namespace | no | no |
//! | see, rotate, revoke, delete a key | any | non-admin keys of its namespace | itself | itself |
//! | refresh a key | — | — | itself | — |
//! | sign users up; agent, metrics, shutdown, sync, bkg_db audit; prune environments | yes | no | no | no |
//! | list environments; set, list, remove secrets of a namespace | all namespaces | its namespace | its namespace | no |
//! | the Web UI's admin pages: every namespace, the audit log, the key policy | yes | no | no | no |
//! | a one-time login URL of the Web UI (`bkg ui`) | a socket peer only | no | no | no |
//!
//! A peer on the unix socket is an admin. Another namespace's sandbox, run or key is answered
//! as missing (`NotFound`), never as forbidden: its existence is not the caller's to learn.

use bkg_schema::auth::{KeyInfo, Role};

use super::OpError;
use crate::auth::Principal;

/// What an admin alone may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminTask {
    ReadAgent,
    ReadMetrics,
    StopAgent,
    ReadSync,
    RetrySync,
    MigrateDb,
    ReadDbAudit,
    SignUp,
    BindVolumes,
    ReadNamespaces,
    ReadAudit,
    VerifyAudit,
    PruneEnvs,
}

impl AdminTask {
    fn refusal(self) -> &'static str {
        match self {
            Self::ReadAgent => "only an admin may read the agent's configuration",
            Self::ReadMetrics => "only an admin may read the metrics",
            Self::StopAgent => "only an admin may stop the agent",
            Self::ReadSync => "only an admin may read the sync's state",
            Self::RetrySync => "only an admin may retry parked events",
            Self::MigrateDb => "only an admin may migrate bkg_db",
            Self::ReadDbAudit => "only an admin may read the audit lines in bkg_db",
            Self::SignUp => "only an admin may do this",
            Self::BindVolumes => "only an admin may bind host volumes into a sandbox",
            Self::ReadNamespaces => "only an admin may list every namespace",
            Self::ReadAudit => "only an admin may read the audit log",
            Self::VerifyAudit => "only an admin may verify the audit log",
            Self::PruneEnvs => "only an admin may prune the dependency environments",
        }
    }
}

pub fn require_admin(principal: &Principal, task: AdminTask) -> Result<(), OpError> {
    if principal.is_admin() { Ok(()) } else { Err(OpError::Forbidden(task.refusal().to_owned())) }
}

/// Whether the caller may use what only admins may (the Web UI shows its admin pages to them).
pub fn administers(principal: &Principal) -> bool {
    principal.is_admin()
}

/// The uid of a peer on the agent's unix socket: only such a peer may have a one-time login URL
/// of the Web UI, which logs in as the machine's administrator (an admin key over TCP may not).
pub fn require_socket_peer(principal: &Principal) -> Result<u32, OpError> {
    match principal {
        Principal::Local { uid } => Ok(*uid),
        Principal::Key(_) => {
            Err(OpError::Forbidden("only a peer on the agent's unix socket may ask for a login URL".into()))
        }
    }
}

/// Model-access keys reach model endpoints only; everything that runs code is refused to them.
pub fn require_code_runner(principal: &Principal) -> Result<(), OpError> {
    if principal.role() == Role::ModelAccess {
        return Err(OpError::Forbidden("a model-access key cannot run code or manage sandboxes".into()));
    }
    Ok(())
}

/// Model-access keys do not read the change feed either.
pub fn require_change_reader(principal: &Principal) -> Result<(), OpError> {
    if principal.role() == Role::ModelAccess {
        return Err(OpError::Forbidden("a model-access key cannot read the change feed".into()));
    }
    Ok(())
}

/// Whether the caller may see and touch things of `namespace`.
pub fn reaches(principal: &Principal, namespace: &str) -> bool {
    principal.is_admin() || principal.namespace() == Some(namespace)
}

/// The namespace a new thing of this caller goes in: the one asked for (only admins may ask for
/// another than their own), else the caller's, else `default`.
pub fn namespace_for(principal: &Principal, asked: Option<&str>) -> Result<String, OpError> {
    if let Some(asked) = asked
        && !bkg_schema::sandbox::is_dns_label(asked)
    {
        return Err(OpError::Invalid(format!("namespace `{asked}` must be a DNS label (a-z, 0-9, -)")));
    }
    match (principal.namespace(), asked) {
        (Some(own), Some(asked)) if own != asked => {
            Err(OpError::Forbidden(format!("this key is confined to namespace `{own}`; it cannot act in `{asked}`")))
        }
        (Some(own), _) => Ok(own.to_owned()),
        (None, Some(asked)) => Ok(asked.to_owned()),
        (None, None) => Ok(bkg_schema::DEFAULT_NAMESPACE.to_owned()),
    }
}

/// The namespace a listing is confined to: the caller's own (asking for another is refused), or
/// for an admin the one asked for, if any.
pub fn listing_namespace(principal: &Principal, asked: Option<String>) -> Result<Option<String>, OpError> {
    match (principal.namespace(), asked) {
        (Some(own), Some(asked)) if own != asked => {
            Err(OpError::Forbidden(format!("this key sees only namespace `{own}`")))
        }
        (Some(own), _) => Ok(Some(own.to_owned())),
        (None, asked) => Ok(asked),
    }
}

/// Which keys a caller may create.
pub fn may_create_key(principal: &Principal, role: Role) -> Result<(), OpError> {
    match principal.role() {
        Role::Admin => Ok(()),
        Role::Namespace if matches!(role, Role::Session | Role::ModelAccess) => Ok(()),
        Role::Namespace => {
            Err(OpError::Forbidden("a namespace key may create only session and model-access keys".into()))
        }
        Role::Session | Role::ModelAccess => {
            Err(OpError::Forbidden(format!("a {} key cannot create keys", principal.role().as_str())))
        }
    }
}

/// Whether `principal` may see and manage `key`.
pub fn manages(principal: &Principal, key: &KeyInfo) -> bool {
    match principal.role() {
        Role::Admin => true,
        Role::Namespace => {
            key.role != Role::Admin && key.namespace.is_some() && key.namespace.as_deref() == principal.namespace()
        }
        Role::Session | Role::ModelAccess => principal.key_id() == Some(key.id.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::key_info as key;

    #[test]
    fn namespace_keys_are_confined_and_admins_are_not() {
        let team = Principal::Key(key("key_1", Role::Namespace, Some("team")));
        assert!(reaches(&team, "team"));
        assert!(!reaches(&team, "other"));
        assert_eq!(namespace_for(&team, None).ok(), Some("team".into()));
        assert!(matches!(namespace_for(&team, Some("other")), Err(OpError::Forbidden(_))));
        assert!(matches!(namespace_for(&team, Some("Not A Label")), Err(OpError::Invalid(_))));
        assert!(matches!(listing_namespace(&team, Some("other".into())), Err(OpError::Forbidden(_))));

        let admin = Principal::Key(key("key_2", Role::Admin, None));
        assert!(reaches(&admin, "anything"));
        assert_eq!(namespace_for(&admin, Some("other")).ok(), Some("other".into()));
        assert_eq!(namespace_for(&Principal::Local { uid: 0 }, None).ok(), Some("default".into()));
        assert_eq!(listing_namespace(&admin, None).ok(), Some(None));
    }

    #[test]
    fn the_key_table_holds() {
        let team = Principal::Key(key("key_1", Role::Namespace, Some("team")));
        let session = Principal::Key(key("key_3", Role::Session, Some("team")));
        let model = Principal::Key(key("key_4", Role::ModelAccess, Some("team")));
        assert!(may_create_key(&team, Role::Session).is_ok());
        assert!(may_create_key(&team, Role::Namespace).is_err());
        assert!(may_create_key(&session, Role::Session).is_err());
        assert!(manages(&team, &key("key_9", Role::Session, Some("team"))));
        assert!(!manages(&team, &key("key_9", Role::Session, Some("other"))));
        assert!(!manages(&team, &key("key_9", Role::Admin, None)));
        assert!(manages(&session, &key("key_3", Role::Session, Some("team"))));
        assert!(!manages(&session, &key("key_9", Role::Session, Some("team"))));
        assert!(require_code_runner(&model).is_err());
        assert!(require_code_runner(&session).is_ok());
        assert!(require_admin(&team, AdminTask::ReadAgent).is_err());
        assert!(require_admin(&Principal::Local { uid: 0 }, AdminTask::StopAgent).is_ok());
        assert!(require_admin(&team, AdminTask::ReadAudit).is_err());
        assert!(!administers(&team));
        assert_eq!(require_socket_peer(&Principal::Local { uid: 7 }).ok(), Some(7));
        let admin_key = Principal::Key(key("key_5", Role::Admin, None));
        assert!(administers(&admin_key));
        assert!(require_socket_peer(&admin_key).is_err(), "an admin key over TCP gets no login URL");
    }
}
