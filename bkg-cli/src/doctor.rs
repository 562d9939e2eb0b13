//! `bkg doctor [--json]`: where this host and its agent stand. The host's pieces come from the
//! agent binary itself (`bkg-agent --check-host`, so bkg and the agent judge a host alike); the
//! agent, its socket, its state directory and bkg_db are checked from here. Each check passes,
//! warns or fails, with what was found and the narrowest fix (docs/compatibility.md, "Hosts").

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bkg_schema::AgentInfo;
use bkg_schema::host::{Check, CheckStatus, DoctorReport, HostReport};
use bkg_schema::sync::SyncView;
use bkg_schema::units::format_size;

use crate::args::DoctorArgs;
use crate::client::{AgentClient, AgentView};
use crate::exit::{BKG_FAILED, CliError};
use crate::settings::{Place, Settings};

/// Free space, whole MiB below 1 GiB and whole GiB above (rounded down): `format_size` is exact,
/// and a measured size is rarely a round number of anything but KiB.
fn format_free(bytes: u64) -> String {
    let unit = if bytes >= 1 << 30 { 1 << 30 } else { 1 << 20 };
    format_size(bytes / unit * unit)
}

/// Exit code of `bkg doctor` when a check failed (0 when all pass or only warn).
pub const CHECK_FAILED: i32 = 1;
/// Below this much free space the state directory cannot hold many sandbox disks.
const LOW_FREE_SPACE: u64 = 2 * 1024 * 1024 * 1024;

pub async fn run(settings: &Settings, args: DoctorArgs) -> Result<i32, CliError> {
    let report = examine(settings, &args).await?;
    if settings.out.is_json() {
        let json = serde_json::to_string_pretty(&report).map_err(|error| CliError::internal(error.to_string()))?;
        settings.out.line(format_args!("{json}"));
    } else {
        settings.out.text(&describe(&report));
    }
    Ok(if report.status == CheckStatus::Fail { CHECK_FAILED } else { 0 })
}

async fn examine(settings: &Settings, args: &DoctorArgs) -> Result<DoctorReport, CliError> {
    let remote = settings.remote_url()?;
    if remote.is_some() && args.state_dir.is_some() {
        return Err(CliError::usage(
            "--state-dir names a directory of this host; with --remote the agent's is on its own host",
        ));
    }
    let (client, local_socket) = match settings.endpoint() {
        Ok(endpoint) => {
            let local_socket = match &endpoint.place {
                Place::Socket(socket) => Some(socket.clone()),
                Place::Remote { .. } => None,
            };
            (Ok(AgentClient::new(&endpoint)?), local_socket)
        }
        // No key kept for the remote agent: a finding of doctor's, not a reason to stop.
        Err(error) if remote.is_some() => (Err(error.message), None),
        Err(error) => return Err(error),
    };
    let (agent_check, seen) = match &client {
        Ok(client) => agent(client, local_socket.as_deref()).await,
        Err(no_key) => (
            Check::fail("agent", no_key, "bkg login --remote URL (--user NAME, or --key-stdin), or set BKG_API_KEY"),
            Seen::Not,
        ),
    };
    let agent_hidden = matches!(seen, Seen::AdminsOnly);
    let info = match seen {
        Seen::Shown(info) => Some(*info),
        Seen::AdminsOnly | Seen::Not => None,
    };
    // With --remote the agent is on another host: this host's kernel and state directory say
    // nothing about it, and the agent's own level is in its check.
    // An agent that answers but does not show its configuration (to a member of its socket's
    // group) keeps its state directory to itself: this user's default is not it.
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| info.as_ref().map(|info| PathBuf::from(&info.state_dir)))
        // Only root starts an agent: another user's own default is no agent's (found by a new-user
        // trial: it was said the agent would create it).
        .or_else(|| (!agent_hidden && nix::unistd::geteuid().is_root()).then(bkg_schema::paths::default_state_dir));
    let (mut checks, host_level) = match &local_socket {
        Some(_) => {
            let host = host_report(args, state_dir.as_deref()).await?;
            (host.checks, host.level)
        }
        None => (Vec::new(), None),
    };
    checks.push(agent_check);
    if let Some(socket_path) = &local_socket {
        checks.push(socket(socket_path));
        checks.push(match &state_dir {
            Some(state_dir) => {
                // The one given, when the agent running has another (found by a new-user trial:
                // nothing said the two differed).
                let running =
                    info.as_ref().map(|info| PathBuf::from(&info.state_dir)).filter(|running| running != state_dir);
                state_dir_check(state_dir, args.state_dir.is_some(), running.as_deref())
            }
            // Root is an admin: the agent did not say (it did not answer).
            None if nix::unistd::geteuid().is_root() => Check::warn(
                "state_dir",
                "the agent did not say its state directory",
                "give --state-dir DIR to check it",
            ),
            None if agent_hidden => Check::warn(
                "state_dir",
                "the agent's state directory is shown to its admins only",
                "run `sudo bkg doctor` (or give --state-dir DIR)",
            ),
            // Nothing answered, or the agent refused this user: what it shows was never learnt
            // (found by a new-user trial: it was said to be shown to admins only).
            None => Check::warn(
                "state_dir",
                "the agent could not be asked for its state directory (see the agent check)",
                "give --state-dir DIR to check it",
            ),
        });
    }
    if let Some(cert) = &args.tls_cert {
        checks.push(tls_cert(cert, std::time::SystemTime::now()));
    }
    if info.is_some()
        && let Ok(client) = &client
        && let Some(check) = bkg_db(client).await
    {
        checks.push(check);
    }
    let status = checks.iter().map(|check| check.status).max().unwrap_or(CheckStatus::Pass);
    Ok(DoctorReport { status, host_level, agent_level: info.and_then(|info| info.security_level), checks })
}

/// The agent binary beside this bkg, else the one on PATH (as `bkg agent start` finds it).
async fn host_report(args: &DoctorArgs, state_dir: Option<&Path>) -> Result<HostReport, CliError> {
    let mut command = tokio::process::Command::new(crate::client::agent_program());
    command.arg("--check-host");
    // The agent reads its flags from BKG_* too; those of a running agent's listener or TLS (or
    // any a user exported) would make it refuse, or check something else. Only the runtimes and
    // the state directory matter to the report, and doctor's own flags name them.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("BKG_") && name != "BKG_PYTHON" && name != "BKG_NODE") {
            command.env_remove(name);
        }
    }
    if let Some(python) = &args.python {
        command.arg("--python").arg(python);
    }
    if let Some(node) = &args.node {
        command.arg("--node").arg(node);
    }
    if let Some(state_dir) = state_dir {
        command.arg("--state-dir").arg(state_dir);
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| CliError::new(BKG_FAILED, format!("cannot run bkg-agent --check-host: {error}")))?;
    if !output.status.success() {
        let reason = String::from_utf8_lossy(&output.stderr);
        return Err(CliError::new(
            BKG_FAILED,
            format!("bkg-agent --check-host failed ({}): {}", output.status, reason.lines().next().unwrap_or("")),
        ));
    }
    let mut report: HostReport = serde_json::from_slice(&output.stdout)
        .map_err(|error| CliError::new(BKG_FAILED, format!("bkg-agent --check-host printed no report: {error}")))?;
    // Without the agent's state directory the probe looked at its own default, not the agent's.
    if state_dir.is_none() {
        report.checks.retain(|check| check.name != "state_dir_fs");
    }
    Ok(report)
}

/// How root starts the agent on `socket`: sudo does not keep BKG_SOCKET, so a socket other than
/// the machine's is given as a flag.
fn start_command(socket: &Path) -> String {
    if socket == Path::new(bkg_schema::paths::MACHINE_SOCKET) {
        "sudo bkg agent start".to_owned()
    } else {
        format!("sudo bkg --socket {} agent start", socket.display())
    }
}

/// What the agent check saw of the agent's configuration.
enum Seen {
    Shown(Box<AgentInfo>),
    /// The agent answers this caller but shows its configuration to its admins only.
    AdminsOnly,
    /// Nothing answered, or the agent refused this caller.
    Not,
}

async fn agent(client: &AgentClient, socket: Option<&Path>) -> (Check, Seen) {
    let name = "agent";
    let up = match client.is_up() {
        Ok(up) => up,
        // Every command this user runs fails the same way: a failure, not a warning.
        Err(error) => {
            let check = match socket {
                Some(socket) => {
                    let (problem, fix) = crate::client::access_refusal(socket);
                    Check::fail(name, problem, fix)
                }
                None => Check::fail(name, error.message, "check --remote and the agent's host"),
            };
            return (check, Seen::Not);
        }
    };
    if !up {
        let found = format!("no agent answers on {}", client.location());
        // A local agent not started yet is started on first use; a remote one is the point.
        let check = match socket {
            Some(socket) => Check::warn(name, found, start_command(socket)),
            None => Check::fail(name, found, "check --remote and the agent's host"),
        };
        return (check, Seen::Not);
    }
    match client.agent_view().await {
        Ok(AgentView::Shown(info)) => {
            let level = info.security_level.map(|level| format!(", security level {level}")).unwrap_or_default();
            let found = format!("version {} (commit {}) on {}{level}", info.version, info.commit, client.location());
            let check = if info.version == env!("CARGO_PKG_VERSION") {
                Check::pass(name, found)
            } else {
                Check::warn(
                    name,
                    format!("{found}; bkg is version {}", env!("CARGO_PKG_VERSION")),
                    "restart the agent from the same release as bkg (`sudo bkg agent stop; sudo bkg agent start`)",
                )
            };
            (check, Seen::Shown(info))
        }
        // Its version and level are an admin's to read: a member of the socket's group, who
        // brought no key.
        Ok(AgentView::AdminsOnly(caller)) if caller.key_id.is_none() => (
            Check::warn(
                name,
                format!(
                    "the agent on {} answers you in namespace {}; its version and level are shown to its admins only",
                    client.location(),
                    caller.namespace.as_deref().unwrap_or("-")
                ),
                "run `sudo bkg doctor` for the agent's view",
            ),
            Seen::AdminsOnly,
        ),
        Ok(AgentView::AdminsOnly(caller)) => (
            Check::warn(
                name,
                format!(
                    "the agent on {} answers; a {} key cannot read its version and level",
                    client.location(),
                    caller.role.as_str()
                ),
                "use an admin key for the agent's view",
            ),
            Seen::AdminsOnly,
        ),
        // Its socket takes connections, but nothing comes back within the wait.
        Err(error) if client.is_not_answering(&error) => (
            Check::fail(
                name,
                error.message,
                "the agent's process may be stopped (SIGSTOP, a debugger) or overloaded: look at it with `ps`, \
                 or restart it (`sudo bkg agent stop; sudo bkg agent start`)",
            ),
            Seen::Not,
        ),
        // Whether the key works at all is whoami's to say: it did not.
        Err(error) => (
            Check::fail(
                name,
                format!("the agent on {} answers, but: {}", client.location(), error.message),
                match socket {
                    Some(_) => "see the agent's log (agent.log in its state directory)",
                    None => "bkg login --remote URL (--user NAME, or --key-stdin), or set BKG_API_KEY",
                },
            ),
            Seen::Not,
        ),
    }
}

/// The socket lets whoever can open it use the agent: mode 0600, owned by root (or the agent's
/// user), or 0660 for the socket's group, whose members act as themselves (docs/cli.md, setup).
fn socket(path: &Path) -> Check {
    let name = "socket";
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Check::warn(name, format!("no socket at {}", path.display()), start_command(path))
        }
        Err(error) => Check::warn(name, format!("cannot inspect {}: {error}", path.display()), "run `sudo bkg doctor`"),
        // Found by a new-user trial: a regular file was judged by its mode as a socket.
        Ok(metadata) if !metadata.file_type().is_socket() => Check::fail(
            name,
            format!("{} is not a socket", path.display()),
            "name the agent's socket with BKG_SOCKET (or --socket)",
        ),
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o7777;
            let found = format!("{} has mode {mode:04o}, owner uid {}", path.display(), metadata.uid());
            // Found by a new-user trial: "pass" beside the agent's check failing for that mode.
            let usable = nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok();
            let stale = std::os::unix::net::UnixStream::connect(path)
                .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionRefused);
            if !usable {
                Check::fail(
                    name,
                    format!("{found}: uid {} may not use it", nix::unistd::geteuid()),
                    "the agent check's fix",
                )
            } else if stale {
                Check::warn(
                    name,
                    format!("{} is stale: nothing listens on it", path.display()),
                    format!("start the agent (it replaces the file): `{}`", start_command(path)),
                )
            // Connecting to a unix socket takes write permission: only that lets others in.
            } else if mode & 0o002 != 0 {
                Check::fail(
                    name,
                    format!("{found}: every local user can reach it"),
                    "stop the agent and start it again: it binds its socket with mode 0600 (0660 for --socket-group)",
                )
            } else if mode & 0o020 != 0 {
                let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(metadata.gid()))
                    .ok()
                    .flatten()
                    .map_or_else(|| metadata.gid().to_string(), |group| group.name);
                Check::pass(name, format!("{found}: members of group {group} use it as themselves"))
            } else {
                Check::pass(name, found)
            }
        }
    }
}

/// `dir`, `given` with --state-dir or else the agent's own; `running`, the running agent's when
/// it is another.
fn state_dir_check(dir: &Path, given: bool, running: Option<&Path>) -> Check {
    let name = "state_dir";
    let writable = tempfile::Builder::new().prefix(".bkg-doctor-").tempfile_in(dir).map(drop);
    let free = nix::sys::statvfs::statvfs(dir).map(|stats| stats.blocks_available() * stats.fragment_size());
    let not_the_running_one =
        running.map(|running| format!(" (the running agent's is {})", running.display())).unwrap_or_default();
    match writable {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Check::warn(
            name,
            format!("{} does not exist yet{not_the_running_one}", dir.display()),
            match given {
                true => "an agent started with it creates it at start",
                false => "the agent creates it at start; pass --state-dir to check another",
            },
        ),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root() => {
            Check::warn(
                name,
                format!("{} cannot be checked as uid {}: {error}", dir.display(), nix::unistd::geteuid()),
                "run `sudo bkg doctor`: the agent's state directory is root's",
            )
        }
        Err(error) => Check::fail(
            name,
            format!("{} is not writable: {error}", dir.display()),
            "give the agent a writable --state-dir (BKG_STATE_DIR) on a local file system",
        ),
        // The agent refuses one another user owns (bkg-agent's daemon.rs), whatever its mode.
        Ok(())
            if nix::unistd::geteuid().is_root()
                && std::fs::metadata(dir).is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) != 0) =>
        {
            Check::fail(
                name,
                format!("{} does not belong to root, the agent's user", dir.display()),
                format!("chown root {} (the agent refuses it), or give another --state-dir", dir.display()),
            )
        }
        Ok(()) => match free {
            Ok(free) if free < LOW_FREE_SPACE => Check::warn(
                name,
                format!("{} is writable, {} free", dir.display(), format_free(free)),
                format!(
                    "free space there, or move --state-dir: sandbox disks need {} or more",
                    format_size(LOW_FREE_SPACE)
                ),
            ),
            Ok(free) => Check::pass(name, format!("{} is writable, {} free", dir.display(), format_free(free))),
            Err(error) => {
                Check::warn(name, format!("{} is writable; free space unknown: {error}", dir.display()), "check `df`")
            }
        },
    }
}

/// Renewing this long before the end leaves room for a failed renewal.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

fn tls_cert(path: &Path, now: std::time::SystemTime) -> Check {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_cert::der::Decode;
    let name = "tls_cert";
    let not_after = CertificateDer::pem_file_iter(path)
        .map_err(|error| error.to_string())
        .and_then(|mut certs| certs.next().ok_or_else(|| "no certificate in it".to_owned()))
        .and_then(|leaf| leaf.map_err(|error| error.to_string()))
        .and_then(|leaf| x509_cert::Certificate::from_der(leaf.as_ref()).map_err(|error| error.to_string()))
        .map(|cert| std::time::SystemTime::UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration());
    match not_after {
        Ok(not_after) => expiry_check(path, not_after, now),
        Err(error) => Check::fail(
            name,
            format!("cannot read {}: {error}", path.display()),
            "point --tls-cert (BKG_TLS_CERT) at the PEM chain the agent serves, leaf first",
        ),
    }
}

/// Fails once the certificate has expired, warns in its last two weeks.
pub fn expiry_check(path: &Path, not_after: std::time::SystemTime, now: std::time::SystemTime) -> Check {
    let name = "tls_cert";
    let until = humantime::format_rfc3339_seconds(not_after);
    let renew = "renew it, then `kill -HUP` the agent: it re-reads its certificate";
    match not_after.duration_since(now) {
        Err(_) => Check::fail(name, format!("{} expired at {until}", path.display()), renew),
        Ok(left) if left < EXPIRY_WARNING => Check::warn(
            name,
            format!("{} expires at {until}, in {} days", path.display(), left.as_secs() / 86_400),
            renew,
        ),
        Ok(left) => {
            Check::pass(name, format!("{} is valid until {until} ({} days)", path.display(), left.as_secs() / 86_400))
        }
    }
}

/// bkg_db, only when the agent has one configured: reachable, its schema migrated, nothing parked.
async fn bkg_db(client: &AgentClient) -> Option<Check> {
    let name = "bkg_db";
    let view = match client.get::<SyncView>("/api/v1/sync").await {
        Ok(view) => view,
        Err(error) => {
            return Some(Check::warn(
                name,
                format!("cannot read the sync status: {}", error.message),
                "bkg sync status",
            ));
        }
    };
    if !view.configured {
        return None;
    }
    let status = &view.status;
    Some(if status.failures > 0 {
        Check::fail(
            name,
            format!(
                "bkg_db is configured but {} attempts failed: {}",
                status.failures,
                status.last_error.as_deref().unwrap_or("unknown error")
            ),
            // The agent's error names the fix of the usual causes (a migration, the login, the
            // server down, TLS): `bkg db migrate` for all of them was wrong for most (found by a
            // new-user trial: it fails the same way for an agent's login refused the schema).
            "do what the error says; else check the agent's --db-url and that bkg_db answers (`bkg sync status`)",
        )
    } else if status.parked > 0 {
        Check::warn(
            name,
            format!(
                "bkg_db is reachable and migrated; {} parked",
                crate::out::count(status.parked as usize, "event is", "events are")
            ),
            "see `bkg sync status`, then `bkg sync retry`",
        )
    } else if status.last_success_ms.is_some() {
        Check::pass(name, format!("bkg_db is reachable and migrated; backlog {}", status.backlog))
    } else {
        Check::warn(name, "bkg_db is configured; no sync has completed yet", "run `bkg doctor` again in a moment")
    })
}

/// The report as people read it: one line per check, the fix beneath it.
pub fn describe(report: &DoctorReport) -> String {
    let width = report.checks.iter().map(|check| check.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for check in &report.checks {
        text.push_str(&format!("{:<4}  {:<width$}  {}\n", check.status.as_str(), check.name, check.found));
        if let Some(fix) = &check.fix {
            text.push_str(&format!("{:<4}  {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let level = |level: Option<bkg_schema::host::SecurityLevel>, none: &str| {
        level.map(|level| level.to_string()).unwrap_or_else(|| none.to_owned())
    };
    // No host checks: the agent is remote (`examine`); an agent check that is not "no agent
    // answers" found one it could not ask for its level.
    let host_checked = report.checks.iter().any(|check| check.name == bkg_schema::host::KERNEL_CHECK);
    let agent_answered =
        report.checks.iter().any(|check| check.name == "agent" && !check.found.starts_with("no agent answers"));
    text.push_str(&format!(
        "\nhost level: {} · agent level: {} · overall: {}\n",
        if host_checked {
            level(report.host_level, "none (a piece every level needs is missing)")
        } else {
            "not checked (the agent is remote)".to_owned()
        },
        level(report.agent_level, if agent_answered { "unknown (see the agent check)" } else { "no agent answers" }),
        report.status.as_str()
    ));
    text
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn free_space_is_shown_in_whole_mib_or_gib() {
        assert_eq!(format_free(61_357_240 * 1024), "58GiB");
        assert_eq!(format_free(1536 * 1024 + 7), "1MiB");
        assert_eq!(format_free(1 << 30), "1GiB");
    }

    #[test]
    fn a_certificate_fails_once_expired_and_warns_in_its_last_two_weeks() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let path = Path::new("/etc/bkg/cert.pem");
        assert_eq!(expiry_check(path, now - day, now).status, CheckStatus::Fail);
        let soon = expiry_check(path, now + 3 * day, now);
        assert_eq!(soon.status, CheckStatus::Warn);
        assert!(soon.found.contains("in 3 days"), "{soon:?}");
        assert_eq!(expiry_check(path, now + 90 * day, now).status, CheckStatus::Pass);
    }
}
