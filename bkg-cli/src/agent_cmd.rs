//! `bkg agent start|stop|status`.

use std::time::Duration;

use bkg_schema::AgentInfo;
use bkg_schema::units::{format_cpus, format_duration_ms, format_size};
use serde::Serialize;

use crate::args::{AgentAction, AgentArgs};
use crate::client::{AgentClient, AgentView, agent_command, start_agent};
use crate::exit::{BKG_FAILED, CliError, NEGATIVE, SUCCESS};
use crate::settings::{Place, Settings};

/// `bkg agent status --json` of a running agent: what it says of itself, and that it runs.
#[derive(Serialize)]
struct Running<'a> {
    running: bool,
    #[serde(flatten)]
    info: &'a AgentInfo,
    /// The link to bkg_db, when the agent has one (`bkg sync status` has it all).
    #[serde(skip_serializing_if = "Option::is_none")]
    bkg_db: Option<bkg_schema::sync::SyncStatus>,
}

/// `bkg agent status --json` when no agent answers, or one answers that shows its configuration
/// to its admins only.
#[derive(Serialize)]
struct Answering {
    running: bool,
    socket: String,
}

pub async fn run(settings: &Settings, args: AgentArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let endpoint = settings.endpoint()?;
    let client = AgentClient::new(&endpoint)?;
    match args.action {
        AgentAction::Start { foreground, state_dir } => {
            let Place::Socket(socket) = &endpoint.place else {
                return Err(CliError::usage(format!(
                    "bkg agent start starts a local agent; it cannot start {}",
                    client.location()
                )));
            };
            if client.is_up()? {
                // The one asked for is running, or another: a state directory named that is not
                // the running agent's would be ignored without a word.
                let running = match &state_dir {
                    Some(_) => client.get::<AgentInfo>("/api/v1/agent").await.ok().map(|info| info.state_dir),
                    None => None,
                };
                let asked = state_dir.as_deref().map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
                if running.is_none() && asked.is_some() {
                    return Err(CliError::new(
                        BKG_FAILED,
                        format!(
                            "an agent is already running on {}, and its state directory is shown to its admins only: \
                             --state-dir cannot be checked against it (`sudo bkg agent start --state-dir DIR` can)",
                            socket.display()
                        ),
                    ));
                }
                if let (Some(running), Some(asked)) = (running, asked)
                    && std::path::Path::new(&running) != asked
                {
                    return Err(CliError::new(
                        BKG_FAILED,
                        format!(
                            "the agent on {} keeps its state in {running}, not {}: stop it first (`bkg agent stop`), or start this one on another socket (BKG_SOCKET)",
                            socket.display(),
                            asked.display()
                        ),
                    ));
                }
                out.note(format_args!("an agent is already running on {}", socket.display()));
                return Ok(SUCCESS);
            }
            if !nix::unistd::geteuid().is_root() {
                return Err(CliError::new(BKG_FAILED, "the agent needs root: run `sudo bkg agent start`"));
            }
            let state_dir = state_dir.unwrap_or_else(bkg_schema::paths::default_state_dir);
            if foreground {
                let error =
                    std::os::unix::process::CommandExt::exec(agent_command(socket, &state_dir).arg("--foreground"));
                return Err(CliError::new(BKG_FAILED, format!("cannot start bkg-agent: {error}")));
            }
            let pid = start_agent(socket, &state_dir).await?;
            out.note(format_args!("agent started (pid {pid}) on {}", socket.display()));
            Ok(SUCCESS)
        }
        AgentAction::Stop => {
            if !client.is_up()? {
                // One stopping already (asked by another `bkg agent stop`, a SIGTERM) is waited
                // for, as a stop asked here would be (found by a new-user trial: the second stop
                // returned at once, and an agent started then was refused the state directory).
                let Some((pid, process)) =
                    client.stopping_agent().and_then(|pid| AgentProcess::watch(pid).map(|process| (pid, process)))
                else {
                    out.note(format_args!("{}", client.not_running()));
                    return Ok(SUCCESS);
                };
                out.note(format_args!("the agent (pid {pid}) is stopping already: waiting for it to end"));
                if !process.exited_by(std::time::Instant::now() + STOP_PATIENCE).await {
                    return Err(CliError::new(BKG_FAILED, "the agent did not stop within 30 s"));
                }
                out.note(format_args!("agent stopped"));
                return Ok(SUCCESS);
            }
            // The agent stops listening first, then gives runs their grace and disposes of its
            // sandboxes: "stopped" means its process has exited, so that a new agent can start
            // on its state directory at once. A remote agent's process cannot be watched.
            let process = match client.is_remote() {
                true => None,
                false => match client.get::<AgentInfo>("/api/v1/agent").await {
                    Ok(info) => AgentProcess::watch(info.pid).map(|process| (process, info)),
                    // Silent: nothing more is asked, or a stop would wait in its socket and
                    // happen whenever it wakes, long after this command failed.
                    Err(error) if client.is_not_answering(&error) => {
                        return Err(CliError::new(
                            error.code,
                            format!(
                                "the agent at {} does not answer (nothing within {} s), so it was not asked to stop: \
                                 if its process is stopped or hung, `kill PID` stops it as `bkg agent stop` does",
                                client.location(),
                                client.patience().as_secs_f64()
                            ),
                        ));
                    }
                    // Who may not read the agent may not stop it either: the shutdown's own
                    // refusal says why.
                    Err(error) => {
                        client.post_empty("/api/v1/agent/shutdown").await?;
                        return Err(error);
                    }
                },
            };
            let asked = client.post_empty("/api/v1/agent/shutdown").await;
            let deadline = std::time::Instant::now() + STOP_PATIENCE;
            let stopped = match process {
                Some((process, info)) => {
                    // Cut off before its answer, the agent was killed or crashed as its stop began
                    // (its process is gone at once), or it could not be asked (it is still there).
                    let deadline = match asked {
                        Ok(()) => deadline,
                        Err(_) => std::time::Instant::now() + GONE_PATIENCE,
                    };
                    let exited = process.exited_by(deadline).await;
                    if let Err(error) = asked
                        && !exited
                    {
                        return Err(error);
                    }
                    // Its socket file still there after its process is gone: killed or crashed
                    // before its stop ended (a socket systemd made stays, whatever the agent did).
                    if exited && !info.socket_activated && client.socket_file_remains() {
                        return Err(CliError::new(
                            BKG_FAILED,
                            format!(
                                "the agent (pid {}) ended before its stop did, killed or crashed: the next agent on \
                                 {} removes what it left and records its runs as interrupted",
                                info.pid, info.state_dir
                            ),
                        ));
                    }
                    exited
                }
                None => {
                    asked?;
                    while client.is_up()? && std::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    !client.is_up()?
                }
            };
            if !stopped {
                return Err(CliError::new(BKG_FAILED, "the agent did not stop within 30 s"));
            }
            out.note(format_args!("agent stopped"));
            Ok(SUCCESS)
        }
        AgentAction::Status { .. } => {
            if !client.is_up()? {
                if out.is_json() {
                    out.json(&Answering { running: false, socket: client.location() })?;
                } else {
                    out.note(format_args!("{}", client.not_running()));
                }
                return Ok(NEGATIVE);
            }
            let info = match client.agent_view().await? {
                AgentView::Shown(info) => info,
                // A member of the socket's group: it runs and serves them.
                AgentView::AdminsOnly(_) => {
                    if out.is_json() {
                        out.json(&Answering { running: true, socket: client.location() })?;
                    } else {
                        out.line(format_args!(
                            "agent      running on {} (its configuration is shown to its admins only)",
                            client.location()
                        ));
                    }
                    return Ok(SUCCESS);
                }
            };
            let sync = client
                .get::<bkg_schema::sync::SyncView>("/api/v1/sync")
                .await
                .ok()
                .filter(|view| view.configured)
                .map(|view| view.status);
            let running = Running { running: true, info: &info, bkg_db: sync };
            out.answer(&running, |running| {
                let mut text = describe(running.info);
                if let Some(sync) = &running.bkg_db {
                    text.push_str(&format!("{:<11}{}\n", "bkg_db", sync_state(sync)));
                }
                text
            })?;
            Ok(SUCCESS)
        }
    }
}

/// How long `bkg agent stop` waits: the agent's 5 s grace for runs and its 20 s bound on
/// disposing of sandboxes (docs/operations.md), and a margin.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// How long a stop whose request was cut off waits to learn whether the agent's process is gone.
const GONE_PATIENCE: Duration = Duration::from_secs(2);

/// A local agent's process, held by a pidfd: it cannot be confused with a later process that
/// reuses the pid.
struct AgentProcess(std::os::fd::OwnedFd);

impl AgentProcess {
    /// None when the process cannot be watched (already gone, or a kernel without pidfds).
    fn watch(pid: u32) -> Option<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = std::os::fd::RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the descriptor was just returned to us and is owned by nothing else.
        Some(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Whether the process exits before `deadline` (a pidfd becomes readable at exit).
    async fn exited_by(self, deadline: std::time::Instant) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let millis = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        tokio::task::spawn_blocking(move || {
            let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&self.0), PollFlags::POLLIN)];
            loop {
                match poll(&mut fds, millis) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Ok(ready) => return ready > 0,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// The sync to bkg_db in a line: healthy or failing, what waits, what to run for the rest.
pub fn sync_state(sync: &bkg_schema::sync::SyncStatus) -> String {
    let waiting =
        format!("{} waiting · {} parked", crate::out::count(sync.backlog as usize, "event", "events"), sync.parked);
    match (&sync.last_error, sync.failures) {
        (Some(error), failures) if failures > 0 => {
            format!("failing ({failures} attempts): {error} · {waiting} (`bkg sync status`)")
        }
        _ if sync.is_behind() => format!(
            "behind: the oldest event has waited {}, no attempt failed yet · {waiting} (`bkg sync status`)",
            bkg_schema::units::format_duration_ms(sync.lag_ms.unwrap_or_default())
        ),
        _ if sync.parked > 0 => format!("in sync but for parked events · {waiting} (`bkg sync retry`)"),
        _ => format!("in sync · {waiting}"),
    }
}

/// What `bkg agent status` prints for a running agent.
pub fn describe(info: &AgentInfo) -> String {
    let limits = |l: &bkg_schema::Limits| {
        format!(
            "cpus {} · memory {} · timeout {} · disk {} · pids {}",
            format_cpus(l.cpu_millis),
            format_size(l.memory_bytes),
            format_duration_ms(l.timeout_ms),
            format_size(l.disk_bytes),
            l.pids
        )
    };
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<11}{value}\n"));
    line("agent", format!("running (pid {}, version {})", info.pid, info.version));
    line("socket", info.socket.clone());
    // What takes API keys from the network, `bkg ui`'s loopback listener too.
    for listener in &info.listeners {
        line("listening", format!("{} (started by {})", listener.url, listener.started_by));
    }
    line("state dir", info.state_dir.clone());
    line("cgroups", info.cgroup_version.clone());
    if let Some(level) = info.security_level {
        line("security", format!("{level} (`bkg doctor` says why)"));
    }
    // An agent older than the bound sends none.
    let long_lived = match info.max_long_lived_runs {
        0 => String::new(),
        max => format!(" · sessions, services and terminals {} of {max}", info.long_lived_runs),
    };
    line(
        "runs",
        format!(
            "{} active of {} at once{long_lived} · {} waiting of {} · {} cleanups pending",
            info.active_runs, info.max_running_runs, info.queued_runs, info.max_queued_runs, info.pending_cleanups
        ),
    );
    line(
        "disk",
        format!(
            "{} of {} given to live sandboxes (--disk-budget)",
            format_size(info.disk_in_use_bytes),
            format_size(info.disk_budget_bytes)
        ),
    );
    // How long runs are kept: a shortened retention deletes history at the agent's next pass.
    if let Some(retention) = &info.retention {
        let duration = bkg_schema::units::format_duration_ms;
        let mut kept = format!("{} (--retention)", duration(retention.default_ms));
        for (namespace, ms) in &retention.per_namespace {
            kept.push_str(&format!(" · {namespace} {}", duration(*ms)));
        }
        line("runs kept", kept);
    }
    let started_ahead = crate::out::count(info.prestarted_runs as usize, "run", "runs");
    let pool = match (info.warm_target, info.warm_sandboxes) {
        // Off: its target never moves from 0 (engine/pool.rs).
        (0, 0) => "off (--warm-pool 0)".to_owned(),
        (target, ready) => format!(
            "{ready} of {target} prepared · memory {} of {}",
            format_size(info.warm_memory_bytes),
            format_size(info.warm_memory_limit_bytes)
        ),
    };
    line("warm pool", format!("{pool} · {started_ahead} took an interpreter started ahead"));
    for sandbox in &info.warm_pool {
        let started = sandbox.started_ahead.map_or("no interpreter started ahead".to_owned(), |language| {
            format!("{} started ahead", language.as_str())
        });
        line("", format!("{} · {} · {started}", sandbox.id, format_size(sandbox.memory_bytes)));
    }
    if let Some(zygote) = &info.zygote {
        let state = match (zygote.state, zygote.generation, zygote.pid) {
            (bkg_schema::ZygoteState::Serving, Some(generation), Some(pid)) => {
                let limit = match zygote.memory_limit_bytes {
                    0 => String::new(),
                    limit => format!(" of {}", format_size(limit)),
                };
                format!(
                    "serving: generation {generation} · pid {pid} · memory {}{limit}",
                    format_size(zygote.memory_bytes)
                )
            }
            (state, ..) => {
                let state = serde_json::to_value(state).ok().and_then(|value| value.as_str().map(str::to_owned));
                format!("{}: {}", state.unwrap_or_default(), zygote.reason.as_deref().unwrap_or("no reason given"))
            }
        };
        let forked = crate::out::count(info.zygote_runs as usize, "run", "runs");
        line("zygote", format!("{state} · {forked} forked by zygotes since the agent started"));
    }
    line("defaults", limits(&info.default_limits));
    line("maximum", limits(&info.max_limits));
    text
}
