//! Local users on the unix socket: who a peer is (its account, its groups) and the namespace a
//! member of the socket's group acts in. What that allows is decided in service/access.rs.

use std::ffi::CString;

use nix::sys::inotify::AddWatchFlags;
use nix::unistd::{Gid, Group, Uid, User};

/// The default of `--user-namespace`: `{name}` is the user's login name, made a DNS label.
pub const DEFAULT_NAMESPACE_TEMPLATE: &str = "user-{name}";

/// The default of `--socket-group`, used when a group of that name exists.
pub const DEFAULT_SOCKET_GROUP: &str = "bkg";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no group named `{0}` exists")]
    NoSuchGroup(String),
    #[error("cannot read the group database: {0}")]
    Database(nix::Error),
    #[error("--user-namespace {0:?} must contain `{{name}}`")]
    Template(String),
    #[error("--user-limit {0:?}: {1}")]
    Limit(String, String),
}

/// What the agent's policy lets one local user ask for (`--user-limit KEY=VALUE`), apart from
/// the agent-wide maxima and from namespaces of TCP keys: each run's limits, how many persistent
/// sandboxes they keep, and the disk those sandboxes may be given together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPolicy {
    /// Per-run caps (`cpus`, `memory`, `timeout`, `disk`); an unset one is the agent's maximum.
    pub max: bkg_schema::LimitOverrides,
    /// Persistent sandboxes one user may keep (`sandboxes`).
    pub max_sandboxes: Option<u64>,
    /// The disk limits of one user's persistent sandboxes, summed (`disk-budget`).
    pub disk_budget: Option<u64>,
}

impl UserPolicy {
    pub fn parse(items: &[String]) -> Result<Self, LocalError> {
        let mut policy = Self::default();
        for item in items {
            let bad = |why: &str| LocalError::Limit(item.clone(), why.to_owned());
            let (key, value) = item.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
            let value = value.trim();
            match key.trim() {
                "cpus" => policy.max.cpu_millis = Some(bkg_schema::parse_cpus(value).map_err(|e| bad(&e.to_string()))?),
                "memory" => {
                    policy.max.memory_bytes = Some(bkg_schema::parse_size(value).map_err(|e| bad(&e.to_string()))?)
                }
                "timeout" => {
                    policy.max.timeout_ms = Some(bkg_schema::parse_duration_ms(value).map_err(|e| bad(&e.to_string()))?)
                }
                "disk" => policy.max.disk_bytes = Some(bkg_schema::parse_size(value).map_err(|e| bad(&e.to_string()))?),
                "sandboxes" => policy.max_sandboxes = Some(value.parse().map_err(|_| bad("not a number"))?),
                "disk-budget" => {
                    policy.disk_budget = Some(bkg_schema::parse_size(value).map_err(|e| bad(&e.to_string()))?)
                }
                _ => return Err(bad("keys are cpus, memory, timeout, disk, sandboxes, disk-budget")),
            }
        }
        Ok(policy)
    }
}

/// A named group of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedGroup {
    pub name: String,
    pub gid: u32,
}

impl NamedGroup {
    /// The group called `name`; `None` if there is none.
    pub fn find(name: &str) -> Result<Option<Self>, LocalError> {
        let group = Group::from_name(name).map_err(LocalError::Database)?;
        Ok(group.map(|group| Self { name: group.name, gid: group.gid.as_raw() }))
    }

    pub fn require(name: &str) -> Result<Self, LocalError> {
        Self::find(name)?.ok_or_else(|| LocalError::NoSuchGroup(name.to_owned()))
    }
}

/// Who may use the socket, from the agent's flags: the socket's group (its members are local
/// users with a namespace each), the admin group, the agent's own uid (an admin, like root).
#[derive(Debug, Clone)]
pub struct LocalAccess {
    pub agent_uid: u32,
    pub socket_group: Option<NamedGroup>,
    pub admin_group: Option<NamedGroup>,
    namespace_template: String,
}

impl LocalAccess {
    pub fn new(
        socket_group: Option<NamedGroup>,
        admin_group: Option<NamedGroup>,
        namespace_template: &str,
    ) -> Result<Self, LocalError> {
        if !namespace_template.contains("{name}") {
            return Err(LocalError::Template(namespace_template.to_owned()));
        }
        Ok(Self {
            agent_uid: nix::unistd::geteuid().as_raw(),
            socket_group,
            admin_group,
            namespace_template: namespace_template.to_owned(),
        })
    }

    /// Root and the agent's own user only: the socket stays 0600 (no group flag, no `bkg` group).
    pub fn owner_only() -> Self {
        Self {
            agent_uid: nix::unistd::geteuid().as_raw(),
            socket_group: None,
            admin_group: None,
            namespace_template: DEFAULT_NAMESPACE_TEMPLATE.to_owned(),
        }
    }

    /// The namespace of the user called `name` with uid `uid`: the template with the name in it.
    /// A name that is not a DNS label as it stands (capitals, `_`, `.`, too long) is made one
    /// (lowercase; anything but a-z, 0-9 and `-` becomes `-`) and given `-u<uid>`, so two users
    /// never share a namespace: `tc_x`, `tc.x` and `tc-x` had shared `user-tc-x` (found by a
    /// new-user trial). A name that already ends like that suffix gets one too.
    pub fn namespace_of(&self, name: &str, uid: u32) -> String {
        let fixed_part =
            self.namespace_template.len() - "{name}".len() * self.namespace_template.matches("{name}").count();
        let room = bkg_schema::sandbox::MAX_NAMESPACE_LEN.saturating_sub(fixed_part);
        let full = self.namespace_template.replace("{name}", &user_label(name, uid, room));
        let cut: String = full.chars().take(bkg_schema::sandbox::MAX_NAMESPACE_LEN).collect();
        cut.trim_matches('-').to_owned()
    }
}

/// `name` as a DNS label of at most `room` characters, the same for one user only (see
/// [`LocalAccess::namespace_of`]): kept as it is when it is one and is neither `u<digits>` nor
/// ends in `-u<digits>`, otherwise made one and suffixed `-u<uid>` (`u<uid>` when nothing of it is
/// left). A suffixed label's digits after its last `-u` are its uid, so it cannot equal another
/// uid's, nor a name kept as it is.
fn user_label(name: &str, uid: u32, room: usize) -> String {
    let is_label_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ends_like_a_suffix = name
        .rsplit_once("-u")
        .map(|(_, digits)| digits)
        .or_else(|| name.strip_prefix('u'))
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()));
    let kept_as_it_is = !name.is_empty()
        && name.len() <= room
        && name.chars().all(is_label_char)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !ends_like_a_suffix;
    if kept_as_it_is {
        return name.to_owned();
    }
    let suffix = format!("u{uid}");
    let made: String =
        name.chars().map(|c| c.to_ascii_lowercase()).map(|c| if is_label_char(c) { c } else { '-' }).collect();
    let made: String = made.trim_matches('-').chars().take(room.saturating_sub(suffix.len() + 1)).collect();
    match made.trim_end_matches('-') {
        "" => suffix,
        made => format!("{made}-{suffix}"),
    }
}

/// A peer's account as the user database has it: its name, primary group and every group it
/// belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub groups: Vec<u32>,
}

impl Account {
    /// The account of `uid`; `None` when the user database does not know it.
    pub fn of(uid: u32) -> Option<Self> {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten()?;
        let name = CString::new(user.name.clone()).ok()?;
        let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]);
        Some(Self {
            uid,
            gid: user.gid.as_raw(),
            name: user.name,
            groups: groups.into_iter().map(Gid::as_raw).collect(),
        })
    }

    pub fn is_in(&self, group: Option<&NamedGroup>) -> bool {
        group.is_some_and(|group| self.groups.contains(&group.gid))
    }
}

/// A local user acting through the socket: a member of its group, confined to a namespace of
/// their own, whose rights (not the agent's) open what they name (crate::caller_fs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub namespace: String,
}

/// The files of the user database that say who is in which group.
const USER_DATABASE_FILES: [&str; 2] = ["group", "passwd"];

/// A receiver that moves each time `/etc/group` or `/etc/passwd` is written or replaced (as
/// `gpasswd`, `usermod` and `userdel` do), for what must follow a local user's membership while
/// it lasts: a run of a member whom an administrator takes out of the socket's group ends (found
/// by a new-user trial: it ran on to its end). A user database served from elsewhere (LDAP, sssd)
/// changes no file here: its members are judged at each connection only. When the directory
/// cannot be watched the agent says so and the receiver never moves.
pub fn watch_user_database() -> tokio::sync::watch::Receiver<u64> {
    let (moved, receiver) = tokio::sync::watch::channel(0);
    let flags = AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE;
    let watched = crate::local_socket::WatchedDir::new().and_then(|watched| {
        watched.get_ref().0.add_watch("/etc", flags)?;
        Ok(watched)
    });
    let watched = match watched {
        Ok(watched) => watched,
        Err(error) => {
            tracing::warn!(%error, "cannot watch /etc: a member taken out of the socket's group keeps the runs going");
            return receiver;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = watched.readable().await else { return };
            match ready.get_inner().0.read_events() {
                Ok(events) => {
                    let of_the_database = events.iter().any(|event| {
                        event
                            .name
                            .as_deref()
                            .and_then(|name| name.to_str())
                            .is_some_and(|name| USER_DATABASE_FILES.contains(&name))
                    });
                    if of_the_database {
                        moved.send_modify(|count| *count = count.wrapping_add(1));
                    }
                    if moved.is_closed() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch /etc any more: a member taken out of the socket's group keeps the runs going");
                    return;
                }
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_namespace_is_a_dns_label_from_the_template() {
        let access = LocalAccess::owner_only();
        assert_eq!(access.namespace_of("alice", 1001), "user-alice");
        assert_eq!(access.namespace_of("bob-smith-2", 1002), "user-bob-smith-2");
        assert_eq!(access.namespace_of("Bob_Smith.2", 1003), "user-bob-smith-2-u1003");
        let long = access.namespace_of(&"x".repeat(80), 4_000_000_000);
        assert_eq!(long.len(), bkg_schema::sandbox::MAX_NAMESPACE_LEN);
        assert!(long.ends_with("-u4000000000"), "{long}");
        assert_eq!(access.namespace_of("_", 7), "user-u7");
        let team = LocalAccess::new(None, None, "dev-{name}").map(|access| access.namespace_of("carol", 1004)).ok();
        assert_eq!(team.as_deref(), Some("dev-carol"));
        assert!(LocalAccess::new(None, None, "fixed").is_err(), "a template must name the user");
    }

    #[test]
    fn no_two_users_share_a_namespace() {
        let access = LocalAccess::owner_only();
        // Names useradd accepts that one rule of characters would make alike, and names shaped
        // like the suffix that tells them apart.
        let names = ["tc_x", "tc-x", "tc.x", "TC-x", "tc-x-u1001", "tc-x-u1006", "tc-x-u", "u1009", "_"];
        let long = ["x".repeat(51), "x".repeat(52), "x".repeat(80)];
        let mut seen = std::collections::HashMap::new();
        for (name, uid) in names.into_iter().chain(long.iter().map(String::as_str)).zip(1001..) {
            let namespace = access.namespace_of(name, uid);
            assert!(bkg_schema::sandbox::is_namespace_name(&namespace), "{name}: {namespace}");
            if let Some(other) = seen.insert(namespace.clone(), name) {
                panic!("{name} and {other} share {namespace}");
            }
        }
    }

    #[test]
    fn a_user_policy_is_read_from_its_flags() {
        let items = ["memory=256MiB", "sandboxes=3", "disk-budget=1GiB", "cpus=0.5"].map(String::from);
        let Ok(policy) = UserPolicy::parse(&items) else { panic!("a valid policy") };
        assert_eq!(policy.max.memory_bytes, Some(256 * 1024 * 1024));
        assert_eq!(policy.max.cpu_millis, Some(500));
        assert_eq!(policy.max_sandboxes, Some(3));
        assert_eq!(policy.disk_budget, Some(1024 * 1024 * 1024));
        assert!(UserPolicy::parse(&["memory".to_owned()]).is_err());
        assert!(UserPolicy::parse(&["ram=1GiB".to_owned()]).is_err());
    }
}
