//! Who may do what: the one place the agent decides it. Every operation in `service/` asks here
//! before it acts; nothing else in the agent checks a role or a namespace.
//!
//! | what | admin | local user | namespace key | session key | model-access key |
//! |---|---|---|---|---|---|
//! | run code (also on a terminal); define, drive, list sandboxes; read runs | all namespaces | its namespace | its namespace | its namespace | no |
//! | read the change feed | all namespaces | its namespace | its namespace | its namespace | no |
//! | bind host volumes, use another project directory | yes | with its own rights | no | no | no |
//! | forward a host port on loopback, 1024 and up | yes | yes | yes | yes | no |
//! | forward a host port below 1024 or on another address | yes | no | no | no | no |
//! | create keys | any | session and model-access keys of its namespace | session and model-access keys of its namespace | no | no |
//! | see, rotate, revoke, delete a key | any | non-admin keys of its namespace | non-admin keys of its namespace | itself | itself |
//! | refresh a key | — | — | — | itself | — |
//! | sign users up, list and remove them; agent, metrics, shutdown, sync, bkg_db audit; prune environments | yes | no | no | no | no |
//! | list environments; set, list, remove secrets of a namespace | all namespaces | its namespace | its namespace | its namespace | no |
//! | sign in to the Web UI | yes | yes | yes | yes | no |
//! | the Web UI's admin pages: every namespace, the audit log, the key policy | yes | no | no | no | no |
//! | a one-time login URL of the Web UI (`bkg ui`) | a socket peer only | no | no | no | no |
//!
//! On the unix socket, root, the agent's own user and members of the admin group
//! (`--admin-group`) are admins; members of the socket's group (`--socket-group`, `bkg`) are
//! local users, each in a namespace of their own (`--user-namespace`, `user-<name>`); nobody else
//! is served. A local user's project directory and volumes are opened with that user's rights
//! (crate::caller_fs), never the agent's. Another namespace's sandbox, run or key is answered
//! as missing (`NotFound`), never as forbidden: its existence is not the caller's to learn.

use bkg_schema::auth::{KeyInfo, Role};
use bkg_schema::egress::PortMapping;

use super::OpError;
use crate::auth::local::{Account, LocalAccess, UserPolicy};
use crate::auth::{LocalUser, Principal};

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
    ManageUsers,
    BindVolumes,
    ReadNamespaces,
    ReadAudit,
    VerifyAudit,
    PruneEnvs,
    ListEnvs,
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
            Self::ManageUsers => "only an admin may list or remove users",
            Self::BindVolumes => "only an admin may bind host volumes into a sandbox",
            Self::ReadNamespaces => "only an admin may list every namespace",
            Self::ReadAudit => "only an admin may read the audit log",
            Self::VerifyAudit => "only an admin may verify the audit log",
            Self::PruneEnvs => "only an admin may prune the dependency environments",
            Self::ListEnvs => "only an admin may list the dependency environments: every namespace's runs share them",
        }
    }
}

/// Who a peer on the unix socket is: an admin (root, the agent's user, a member of the admin
/// group), a local user (a member of the socket's group), or nobody the agent serves (`None`).
pub fn socket_principal(access: &LocalAccess, uid: u32) -> Option<Principal> {
    if uid == 0 || uid == access.agent_uid {
        return Some(Principal::Local { uid });
    }
    let account = Account::of(uid)?;
    if account.is_in(access.admin_group.as_ref()) {
        return Some(Principal::Local { uid });
    }
    if account.is_in(access.socket_group.as_ref()) {
        let namespace = access.namespace_of(&account.name, uid);
        return Some(Principal::User(LocalUser {
            uid,
            gid: account.gid,
            groups: account.groups,
            name: account.name,
            namespace,
        }));
    }
    None
}

/// What a peer `socket_principal` does not serve is told. The filesystem let it connect: it
/// holds the socket's group, yet its account is not in that group as the user database has it
/// (a session started before an administrator removed it, a uid without an account).
pub fn socket_refusal(access: &LocalAccess, uid: u32) -> OpError {
    let Some(group) = access.socket_group.as_ref() else {
        return OpError::Forbidden(format!(
            "you may not use the agent: uid {uid} is not root, and only root may, the agent having no --socket-group"
        ));
    };
    let message = match Account::of(uid) {
        Some(account) => format!(
            "you may not use the agent: uid {uid} ({}) is not a member of group `{}` as the user database has it (a \
             login session that still has the group, after an administrator removed you, does not count)",
            account.name, group.name
        ),
        None => format!(
            "you may not use the agent: uid {uid} has no account in the user database, so it is a member of no group \
             (a process holding group `{}`'s id does not count)",
            group.name
        ),
    };
    OpError::Forbidden(message)
}

/// A run's limits against what the policy lets one local user ask for; others are bound by the
/// agent's maxima only.
pub fn within_user_limits(
    principal: &Principal,
    policy: &UserPolicy,
    limits: &bkg_schema::Limits,
) -> Result<(), OpError> {
    let cap = limits.with(&user_caps(principal, policy));
    match limits.first_above(&cap) {
        Some((name, asked, allowed)) => {
            Err(OpError::Forbidden(format!("{name} {asked} is above the {allowed} a local user may ask for")))
        }
        None => Ok(()),
    }
}

/// What the policy caps for this caller: a local user's caps, nothing for others (the agent's
/// maxima bound them).
pub fn user_caps(principal: &Principal, policy: &UserPolicy) -> bkg_schema::LimitOverrides {
    match principal.local_user() {
        Some(_) => policy.max,
        None => bkg_schema::LimitOverrides::default(),
    }
}

/// How long a local user's run may take at most, when their policy caps it: a session, which
/// otherwise lives as long as the agent's longest run, ends there too.
pub fn user_timeout_cap(principal: &Principal, policy: &UserPolicy) -> Option<u64> {
    user_caps(principal, policy).timeout_ms
}

/// The limits a local user's run asks for: where it names none, the agent's default or the
/// user's cap, whichever is lower, so a cap below the defaults does not refuse a plain run.
pub fn user_limit_defaults(
    principal: &Principal,
    policy: &UserPolicy,
    asked: &bkg_schema::LimitOverrides,
    defaults: &bkg_schema::Limits,
) -> bkg_schema::LimitOverrides {
    if principal.local_user().is_none() {
        return *asked;
    }
    let lower = |asked: Option<u64>, cap: Option<u64>, default: u64| asked.or(cap.filter(|cap| *cap < default));
    bkg_schema::LimitOverrides {
        cpu_millis: lower(asked.cpu_millis, policy.max.cpu_millis, defaults.cpu_millis),
        memory_bytes: lower(asked.memory_bytes, policy.max.memory_bytes, defaults.memory_bytes),
        timeout_ms: lower(asked.timeout_ms, policy.max.timeout_ms, defaults.timeout_ms),
        disk_bytes: lower(asked.disk_bytes, policy.max.disk_bytes, defaults.disk_bytes),
        ..*asked
    }
}

/// Whether a local user may keep one more persistent sandbox with `disk` bytes, holding `kept`
/// whose disk limits sum to `kept_disk`.
pub fn may_keep_sandbox(
    principal: &Principal,
    policy: &UserPolicy,
    kept: u64,
    kept_disk: u64,
    disk: u64,
) -> Result<(), OpError> {
    if principal.local_user().is_none() {
        return Ok(());
    }
    if let Some(most) = policy.max_sandboxes
        && kept >= most
    {
        return Err(OpError::Forbidden(match most {
            // Nothing to remove (found by a new-user trial: told to remove one).
            0 => "local users may keep no persistent sandbox on this agent (--user-limit sandboxes=0)".to_owned(),
            1 => "a local user may keep 1 persistent sandbox; remove it with `bkg rm NAME` first".to_owned(),
            most => format!("a local user may keep {most} persistent sandboxes; remove one with `bkg rm NAME` first"),
        }));
    }
    if let Some(budget) = policy.disk_budget
        && kept_disk.saturating_add(disk) > budget
    {
        return Err(OpError::Forbidden(format!(
            "the disks of a local user's sandboxes may add up to {} at most; {} are given already",
            bkg_schema::units::format_size(budget),
            bkg_schema::units::format_size(kept_disk)
        )));
    }
    Ok(())
}

/// Whether the caller may forward these host ports into a sandbox: a port of 1024 and up on
/// loopback is anyone's who may run code; a privileged port, or one other hosts can reach, is
/// the host's to give (an admin's). A malformed mapping is left to the engine to name.
pub fn may_forward_ports(principal: &Principal, ports: &[String]) -> Result<(), OpError> {
    if principal.is_admin() {
        return Ok(());
    }
    let host_wide = ports
        .iter()
        .filter_map(|text| PortMapping::parse(text).ok())
        .find(|mapping| mapping.host_port < 1024 || !mapping.address.is_loopback());
    match host_wide {
        Some(mapping) => Err(OpError::Forbidden(format!(
            "host port {mapping}: only an admin may forward a port below 1024 or on an address other than loopback"
        ))),
        None => Ok(()),
    }
}

/// Whose rights open a sandbox's host paths (its project directory and volumes).
#[derive(Debug, PartialEq)]
pub enum HostPaths<'a> {
    /// An admin's, or the namespace's own project directory on the agent: the agent's.
    Agent,
    /// A local user's own: opened as that user (crate::caller_fs), shown mapped to that user only.
    User(&'a LocalUser),
}

/// Whether the caller may use `project_dir` and bind `volumes`: admins may; a local user may,
/// with their own rights; a key only its namespace's project directory on the agent (`own_dir`)
/// without volumes.
pub fn host_paths<'a>(
    principal: &'a Principal,
    project_dir: &std::path::Path,
    has_volumes: bool,
    own_dir: &std::path::Path,
) -> Result<HostPaths<'a>, OpError> {
    if principal.is_admin() {
        return Ok(HostPaths::Agent);
    }
    if let Some(user) = principal.local_user() {
        if project_dir == own_dir && !has_volumes {
            return Ok(HostPaths::Agent);
        }
        return Ok(HostPaths::User(user));
    }
    if project_dir != own_dir {
        return Err(OpError::Forbidden(format!(
            "a {} key may only use its namespace's project directory {}",
            principal.role().as_str(),
            own_dir.display()
        )));
    }
    if has_volumes {
        require_admin(principal, AdminTask::BindVolumes)?;
    }
    Ok(HostPaths::Agent)
}

pub fn require_admin(principal: &Principal, task: AdminTask) -> Result<(), OpError> {
    match principal.is_admin() {
        true => Ok(()),
        false => Err(OpError::Forbidden(format!(
            "{}: ask an admin (root, a member of the agent's admin group, or the holder of an admin key)",
            task.refusal()
        ))),
    }
}

/// Whether the caller may use what only admins may (the Web UI shows its admin pages to them).
pub fn administers(principal: &Principal) -> bool {
    principal.is_admin()
}

/// The uid of a peer on the agent's unix socket: only such a peer may have a one-time login URL
/// of the Web UI, which logs in as the machine's administrator (an admin key over TCP may not).
/// A local user is told where to sign in with a key instead: the URLs of the agent's TCP
/// listeners (`listeners`), which are no secret.
pub fn require_socket_peer(principal: &Principal, listeners: &[bkg_schema::TcpListenerInfo]) -> Result<u32, OpError> {
    match principal {
        Principal::Local { uid } => Ok(*uid),
        Principal::User(_) => {
            // Found by a new-user trial: a member was sent to "the agent's --listen address",
            // which nothing shows them.
            let sign_in = match listeners {
                [] => "at the Web UI's /ui/login once the agent listens on TCP (none does yet: an admin starts the \
                       agent with --listen ADDRESS:PORT, or runs `bkg ui`)"
                    .to_owned(),
                listeners => {
                    let urls: Vec<String> =
                        listeners.iter().map(|listener| format!("{}/ui/login", reachable(&listener.url))).collect();
                    format!("at {}", urls.join(" or "))
                }
            };
            Err(OpError::Forbidden(format!(
                "a login URL of the Web UI logs in as an admin; as a local user, make a key (`bkg keys create --role \
                 session`) and sign in with it {sign_in}"
            )))
        }
        Principal::Key(_) => {
            Err(OpError::Forbidden("only a peer on the agent's unix socket may ask for a login URL".into()))
        }
    }
}

/// A listener's URL as a browser on this machine opens it: one on every address is reached on
/// loopback.
fn reachable(url: &str) -> String {
    url.replacen("://0.0.0.0:", "://127.0.0.1:", 1).replacen("://[::]:", "://[::1]:", 1)
}

/// Model-access keys reach model endpoints only; everything that runs code is refused to them.
pub fn require_code_runner(principal: &Principal) -> Result<(), OpError> {
    if principal.role() == Role::ModelAccess {
        return Err(OpError::Forbidden(
            "a model-access key cannot run code, nor see or manage sandboxes, runs and secrets: it reaches model endpoints only"
                .into(),
        ));
    }
    Ok(())
}

/// MCP is for agents that run code: a model-access key is refused at its door, before it learns
/// the tools (initialize, tools/list), not only at each call.
pub fn require_mcp_client(principal: &Principal) -> Result<(), OpError> {
    if principal.role() == Role::ModelAccess {
        return Err(OpError::Forbidden("a model-access key cannot use MCP: its tools run code".into()));
    }
    Ok(())
}

/// Every page of the Web UI shows sandboxes, runs or keys: a model-access key is refused at its
/// login, not sent to a page that refuses it.
pub fn require_ui_user(principal: &Principal) -> Result<(), OpError> {
    if principal.role() == Role::ModelAccess {
        return Err(OpError::Forbidden(
            "a model-access key opens no page of the Web UI: it reaches model endpoints only".into(),
        ));
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

/// A namespace's name is a DNS label short enough to be a PostgreSQL role's name as well
/// (`bkg_ns_NAME`) and a directory's.
pub fn check_namespace_name(name: &str) -> Result<(), OpError> {
    if bkg_schema::sandbox::is_namespace_name(name) {
        Ok(())
    } else {
        Err(OpError::Invalid(format!("namespace `{name}` must be {}", bkg_schema::sandbox::NAMESPACE_RULE)))
    }
}

/// The namespace a new thing of this caller goes in: the one asked for (only admins may ask for
/// another than their own), else the caller's, else `default`.
pub fn namespace_for(principal: &Principal, asked: Option<&str>) -> Result<String, OpError> {
    if let Some(asked) = asked {
        check_namespace_name(asked)?;
    }
    match (principal.namespace(), asked) {
        (Some(own), Some(asked)) if own != asked => Err(OpError::Forbidden(format!(
            "{} is confined to namespace `{own}`; it cannot act in `{asked}`",
            principal.named()
        ))),
        (Some(own), _) => Ok(own.to_owned()),
        (None, Some(asked)) => Ok(asked.to_owned()),
        (None, None) => Ok(bkg_schema::DEFAULT_NAMESPACE.to_owned()),
    }
}

/// The namespace a sandbox definition goes in: the one it names; for a local user, whose
/// project's cave.yaml says `default` (as `bkg init` writes), their own namespace instead.
pub fn definition_namespace(principal: &Principal, named: &str) -> String {
    match principal.local_user() {
        Some(user) if named == bkg_schema::DEFAULT_NAMESPACE => user.namespace.clone(),
        _ => named.to_owned(),
    }
}

/// The namespace a listing is confined to: the caller's own (asking for another is refused), or
/// for an admin the one asked for, if any.
pub fn listing_namespace(principal: &Principal, asked: Option<String>) -> Result<Option<String>, OpError> {
    if let Some(asked) = &asked {
        check_namespace_name(asked)?;
    }
    match (principal.namespace(), asked) {
        (Some(own), Some(asked)) if own != asked => {
            Err(OpError::Forbidden(format!("{} sees only namespace `{own}`", principal.named())))
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
        Role::Namespace => Err(OpError::Forbidden(format!(
            "{} may create only session and model-access keys: ask an admin for a key of another role",
            principal.named()
        ))),
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
    fn only_admins_forward_privileged_ports_or_ports_on_other_addresses() {
        let team = Principal::Key(key("key_1", Role::Namespace, Some("team")));
        let admin = Principal::Key(key("key_2", Role::Admin, None));
        for ports in [&["8080:80"][..], &["127.0.0.1:1024:80", "[::1]:9000:9000"], &["not a port"]] {
            let ports: Vec<String> = ports.iter().map(|port| (*port).to_owned()).collect();
            assert!(may_forward_ports(&team, &ports).is_ok(), "{ports:?}");
        }
        for port in ["80", "127.0.0.1:1023:8000", "0.0.0.0:8080:8000", "[::]:8080:80", "192.168.1.2:9000:9000"] {
            let ports = vec!["8080:80".to_owned(), port.to_owned()];
            assert!(matches!(may_forward_ports(&team, &ports), Err(OpError::Forbidden(_))), "{port}");
            assert!(may_forward_ports(&admin, &ports).is_ok(), "{port}");
        }
    }

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
        assert!(require_admin(&team, AdminTask::ListEnvs).is_err(), "environments are every namespace's");
        assert!(require_admin(&session, AdminTask::ManageUsers).is_err(), "a user may not remove themselves or others");
        assert!(require_admin(&Principal::Local { uid: 0 }, AdminTask::ManageUsers).is_ok());
        assert!(!administers(&team));
        assert_eq!(require_socket_peer(&Principal::Local { uid: 7 }, &[]).ok(), Some(7));
        let admin_key = Principal::Key(key("key_5", Role::Admin, None));
        assert!(administers(&admin_key));
        assert!(require_socket_peer(&admin_key, &[]).is_err(), "an admin key over TCP gets no login URL");
    }

    fn alice() -> Principal {
        Principal::User(LocalUser {
            uid: 1234,
            gid: 1234,
            groups: vec![1234],
            name: "alice".into(),
            namespace: "user-alice".into(),
        })
    }

    #[test]
    fn a_local_user_is_confined_to_their_namespace_and_acts_with_their_own_rights() {
        let alice = alice();
        assert!(reaches(&alice, "user-alice"));
        assert!(!reaches(&alice, "user-bob"));
        assert!(!reaches(&alice, "default"));
        assert_eq!(namespace_for(&alice, None).ok(), Some("user-alice".into()));
        assert!(matches!(namespace_for(&alice, Some("default")), Err(OpError::Forbidden(_))));
        assert!(may_create_key(&alice, Role::Admin).is_err());
        assert!(may_create_key(&alice, Role::Namespace).is_err());
        assert!(require_admin(&alice, AdminTask::StopAgent).is_err());
        assert!(require_admin(&alice, AdminTask::ReadAudit).is_err());
        assert!(require_socket_peer(&alice, &[]).is_err(), "a login URL would log a local user in as admin");
        let listening =
            [bkg_schema::TcpListenerInfo { url: "http://0.0.0.0:8080".into(), started_by: "--listen".into() }];
        let told = require_socket_peer(&alice, &listening).err().map(|error| error.to_string()).unwrap_or_default();
        assert!(told.contains("sign in with it at http://127.0.0.1:8080/ui/login"), "{told}");
        assert_eq!(alice.actor(), "uid:1234");
        assert_eq!(definition_namespace(&alice, "default"), "user-alice", "a project's `default` is the user's own");
        assert_eq!(definition_namespace(&alice, "team"), "team", "another is kept, and refused by `reaches`");
        let own = std::path::Path::new("/var/lib/bkg/namespaces/user-alice");
        let home = std::path::Path::new("/home/alice/app");
        assert!(matches!(host_paths(&alice, home, true, own), Ok(HostPaths::User(_))));
        assert_eq!(host_paths(&alice, own, false, own).ok(), Some(HostPaths::Agent));
        let team = Principal::Key(key("key_1", Role::Namespace, Some("team")));
        assert!(host_paths(&team, home, false, own).is_err());
        assert!(host_paths(&team, own, true, own).is_err());
        assert_eq!(host_paths(&Principal::Local { uid: 0 }, home, true, own).ok(), Some(HostPaths::Agent));
    }

    #[test]
    fn the_user_policy_binds_local_users_only() {
        let policy = UserPolicy {
            max: bkg_schema::LimitOverrides { memory_bytes: Some(256), ..Default::default() },
            max_sandboxes: Some(2),
            disk_budget: Some(1000),
        };
        let limits = bkg_schema::Limits { memory_bytes: 512, ..bkg_schema::Limits::DEFAULT };
        assert!(matches!(within_user_limits(&alice(), &policy, &limits), Err(OpError::Forbidden(_))));
        let small = bkg_schema::Limits { memory_bytes: 256, ..limits };
        assert!(within_user_limits(&alice(), &policy, &small).is_ok());
        let team = Principal::Key(key("key_1", Role::Namespace, Some("team")));
        assert!(within_user_limits(&team, &policy, &limits).is_ok(), "keys are bound by the agent's maxima");
        assert!(may_keep_sandbox(&alice(), &policy, 1, 500, 500).is_ok());
        assert!(may_keep_sandbox(&alice(), &policy, 2, 0, 1).is_err(), "a third sandbox");
        assert!(may_keep_sandbox(&alice(), &policy, 1, 600, 500).is_err(), "over the disk budget");
        assert!(may_keep_sandbox(&team, &policy, 9, 9000, 9000).is_ok());
        let plain = bkg_schema::LimitOverrides::default();
        let defaults = bkg_schema::Limits { memory_bytes: 512, ..bkg_schema::Limits::DEFAULT };
        assert_eq!(user_limit_defaults(&alice(), &policy, &plain, &defaults).memory_bytes, Some(256));
        let asked = bkg_schema::LimitOverrides { memory_bytes: Some(100), ..plain };
        assert_eq!(user_limit_defaults(&alice(), &policy, &asked, &defaults).memory_bytes, Some(100));
        assert_eq!(user_limit_defaults(&team, &policy, &plain, &defaults), plain);
    }

    #[test]
    fn root_and_the_agents_user_are_admins_on_the_socket_and_strangers_are_not_served() {
        let access = LocalAccess::owner_only();
        assert_eq!(socket_principal(&access, 0), Some(Principal::Local { uid: 0 }));
        // uid 65534 (nobody) is in no group the agent names.
        assert_eq!(socket_principal(&access, 65534), None);
        assert_eq!(socket_principal(&access, 4_000_000_000), None, "an unknown uid is nobody the agent serves");
    }

    #[test]
    fn a_peer_not_served_is_told_why_in_one_line() {
        let group = crate::auth::local::NamedGroup { name: "bkgtc".into(), gid: 4_000_000_001 };
        let Ok(access) = LocalAccess::new(Some(group), None, "user-{name}") else { panic!("a valid template") };
        let told = |uid| socket_refusal(&access, uid).to_string();
        assert!(told(0).contains("uid 0 (root) is not a member of group `bkgtc`"), "{}", told(0));
        assert!(told(4_000_000_000).contains("uid 4000000000 has no account"), "{}", told(4_000_000_000));
        assert!(!told(0).contains('\n'));
        let owner_only = socket_refusal(&LocalAccess::owner_only(), 65534).to_string();
        assert!(owner_only.contains("only root may"), "{owner_only}");
    }
}
