//! `bkg ls`, `bkg status`, `bkg logs`, `bkg stop`, `bkg rm`: the persistent sandboxes of the
//! project around the current directory.

use std::io::IsTerminal;
use std::path::Path;

use bkg_schema::cave::SandboxSpec;
use bkg_schema::egress::{RestartPolicy, ServiceState};
use bkg_schema::sandbox::{Deleted, SandboxInfo, SandboxState, Stopped, sandbox_id};
use bkg_schema::units::format_size;
use bkg_schema::{Language, LimitOverrides};
use serde::Serialize;

use crate::args::{LogsArgs, LsArgs, NameArgs, RmArgs, StopArgs};
use crate::client::AgentClient;
use crate::exit::{BKG_FAILED, CliError, NEGATIVE, SUCCESS};
use crate::project::{load_cave, missing_sandbox, project_dir};
use crate::settings::Settings;

/// `bkg stop --json`: the agent's answer for one sandbox, with its name.
#[derive(Serialize)]
struct StopAnswer {
    name: String,
    stopped: bool,
}

/// One sandbox `bkg rm --json` removed, in the shape of `bkg stop --json`'s; `id` is null when
/// the agent had no sandbox of it here (it never ran in this directory): only its entry in
/// cave.yaml went.
#[derive(Serialize)]
struct Removed {
    name: String,
    id: Option<String>,
    removed: bool,
}

fn id_of(project: &Path, name: &str) -> String {
    sandbox_id(&project.to_string_lossy(), name)
}

async fn fetch(client: &AgentClient, id: &str) -> Result<Option<SandboxInfo>, CliError> {
    client.get_found(&format!("/api/v1/sandboxes/{id}")).await
}

/// The sandbox's newest run that has ended: while one goes on, the one before it (found by a
/// new-user trial: LAST EXIT said `running` for as long as a session held the sandbox).
fn last_ended_run(info: &SandboxInfo) -> Option<&bkg_schema::RunRecord> {
    let ended = info.last_run.as_ref().filter(|run| run.finished_at_ms.is_some());
    ended.or(info.previous_run.as_ref())
}

fn last_exit(info: &SandboxInfo) -> String {
    match last_ended_run(info) {
        None => "-".into(),
        Some(run) => match (run.killed_by, run.exit_code, run.signal) {
            (Some(killed), _, _) => killed.as_str().into(),
            (None, Some(code), _) => code.to_string(),
            (None, None, Some(signal)) => format!("signal {signal}"),
            (None, None, None) => run.error.clone().map_or_else(|| "-".into(), |_| "error".into()),
        },
    }
}

/// The agent's sandboxes of `project` (`None`: of every project).
async fn list(client: &AgentClient, project: Option<&Path>) -> Result<Vec<SandboxInfo>, CliError> {
    let query = match project {
        Some(project) => format!("?project_dir={}", percent_encode(&project.to_string_lossy())),
        None => String::new(),
    };
    client.get(&format!("/api/v1/sandboxes{query}")).await
}

/// A sandbox cave.yaml declares that the agent does not list to this caller: nothing has run in
/// it, or it is another namespace's (a project shared with another user, who ran it).
pub struct Declared {
    pub name: String,
    pub language: Language,
    pub project_dir: String,
    /// Another namespace's: the agent refuses it to this caller.
    pub others: bool,
}

/// Whether sandbox `id`, which the agent does not list to this caller, is another namespace's:
/// the agent says so (403) to a user who shares its project, where one never made is not found.
async fn is_others(client: &AgentClient, id: &str) -> Result<bool, CliError> {
    let path = format!("/api/v1/sandboxes/{id}");
    let response = client.send(client.http().get(client.url(&path))).await?;
    Ok(response.status() == reqwest::StatusCode::FORBIDDEN)
}

pub async fn ls(settings: &Settings, args: LsArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let project = match args.all {
        true => None,
        // Outside any project the way to every project's sandboxes is said (found by a trial).
        false => Some(project_dir(args.project.dir.as_deref()).map_err(|error| match args.project.dir {
            Some(_) => error,
            None => CliError::new(
                error.code,
                format!("{}, or `bkg ls --all` lists every project's sandboxes", error.message),
            ),
        })?),
    };
    let part = project.as_deref().map(crate::project::load_cave_in_part).transpose()?;
    if let Some(part) = &part {
        crate::project::note_left_out(out, part);
    }
    // Left out for its problems, a sandbox is still cave.yaml's: not one it no longer declares.
    let left_out = part.as_ref().map(|part| part.left_out.clone()).unwrap_or_default();
    let cave = part.map(|part| part.cave);
    let sandboxes = list(&client, project.as_deref()).await?;
    let mut declared = Vec::new();
    if let (Some(dir), Some(cave)) = (&project, &cave) {
        for (name, spec) in cave.sandboxes.iter().filter(|(name, _)| !sandboxes.iter().any(|info| &info.name == *name))
        {
            // Found by a new-user trial: another user's sandbox of a shared project was listed
            // as "not created", which `bkg status` then said belongs to another namespace.
            let others = is_others(&client, &id_of(dir, name)).await?;
            declared.push(Declared {
                name: name.clone(),
                language: spec.r#type,
                project_dir: dir.to_string_lossy().into_owned(),
                others,
            });
        }
    }
    if sandboxes.is_empty() && declared.is_empty() && !out.is_json() {
        match project {
            Some(_) => out.note(format_args!("cave.yaml declares no sandbox: `bkg add NAME --type python` adds one")),
            None => out.note(format_args!("the agent has no sandbox: `bkgr NAME` in a project makes one")),
        }
        return Ok(SUCCESS);
    }
    out.answer(&sandboxes, |sandboxes| sandbox_table(sandboxes, &declared, crate::table::width()))?;
    if project.is_some() && declared.iter().any(|sandbox| !sandbox.others) && !out.is_json() {
        let all = list(&client, None).await?;
        for sandbox in declared.iter().filter(|sandbox| !sandbox.others) {
            for info in crate::define::left_behind(&all, &sandbox.name) {
                out.note(format_args!(
                    "`{}` is not created here; {}",
                    sandbox.name,
                    crate::define::left_behind_note(info)
                ));
            }
        }
    }
    if let Some(cave) = &cave {
        for info in &sandboxes {
            match cave.sandboxes.get(&info.name) {
                Some(spec) => note_changed_definition(out, info, spec),
                // Found by a new-user trial: an invalid one was said to be gone, to `bkg rm`.
                None if left_out.contains(&info.name) => {}
                // Found by a new-user trial: after `bkg init --force`, the sandboxes of the old
                // cave.yaml were listed as if it still declared them.
                None => out.note(format_args!(
                    "{} is not in cave.yaml (any more): the agent keeps its workspace and logs until `bkg rm {}`",
                    info.name, info.name
                )),
            }
        }
    }
    Ok(SUCCESS)
}

/// The `bkg ls` table: the agent's sandboxes and those cave.yaml declares that it has not made
/// yet, by project and name; with each one's namespace when they are of more than one (an
/// admin's `bkg ls --all` shows every user's).
pub fn sandbox_table(sandboxes: &[SandboxInfo], declared: &[Declared], width: Option<u16>) -> String {
    let mixed = sandboxes.iter().any(|info| info.namespace != sandboxes[0].namespace);
    let made = sandboxes.iter().map(|info| {
        // One made through the API, MCP or the Web UI has no project: its directory is the
        // agent's (found by a new-user trial: it showed as if it were the user's project).
        let dir = if info.has_project { info.project_dir.as_str() } else { "(no project)" };
        let project = match mixed {
            true => format!("{dir} ({})", info.namespace),
            false => dir.to_owned(),
        };
        vec![
            info.name.clone(),
            info.language.as_str().to_owned(),
            state_word(info).to_owned(),
            last_exit(info),
            format_size(info.disk_bytes_allocated),
            project,
        ]
    });
    let not_made = declared.iter().map(|sandbox| {
        vec![
            sandbox.name.clone(),
            sandbox.language.as_str().to_owned(),
            if sandbox.others { "another namespace's" } else { "not created" }.to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            sandbox.project_dir.clone(),
        ]
    });
    let mut rows: Vec<Vec<String>> = made.chain(not_made).collect();
    rows.sort_by(|a, b| (&a[5], &a[0]).cmp(&(&b[5], &b[0])));
    let project = if mixed { "PROJECT (NAMESPACE)" } else { "PROJECT" };
    // The project's path is not wrapped: one cut in two cannot be copied (found by a new-user
    // trial on a narrow terminal).
    crate::table::render(&["NAME", "TYPE", "STATE", "LAST EXIT", "DISK", project], &[4], &[], rows, width)
}

/// What the sandbox is doing in a word: a service waiting to be started again after a failure
/// is `restarting`, not `idle` (it has no run, and one comes).
fn state_word(info: &SandboxInfo) -> &'static str {
    let restarting = info.service.as_ref().is_some_and(|service| service.state == ServiceState::Restarting);
    match info.state {
        SandboxState::Running => "running",
        SandboxState::Idle if restarting => "restarting",
        SandboxState::Idle => "idle",
    }
}

/// Sandbox `name`'s id: the project's (cave.yaml around the current directory, or `-C`), else,
/// with no project around, the one of that name the agent shows this caller; and the project.
pub(crate) async fn locate(
    client: &AgentClient,
    dir: Option<&Path>,
    name: &str,
    out: crate::out::Printer,
) -> Result<(String, Option<std::path::PathBuf>), CliError> {
    let project = match crate::project::project_if_any(dir)? {
        Ok(project) => project,
        Err(no_project) => return Ok((crate::files_cmd::outside_a_project(client, name, &no_project).await?, None)),
    };
    let id = id_of(&project, name);
    // One the project neither declares nor has made is looked for elsewhere, as `bkg exec` and
    // `bkg cp` look for it (said when found).
    if let Ok(cave) = load_cave(&project)
        && !cave.sandboxes.contains_key(name)
        && fetch(client, &id).await?.is_none()
    {
        return Ok((crate::files_cmd::elsewhere(client, (&cave, &project), name, out).await?, None));
    }
    Ok((id, Some(project)))
}

pub async fn status(settings: &Settings, args: NameArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let (id, project) = locate(&client, args.project.dir.as_deref(), &args.name, settings.out).await?;
    let Some(info) = fetch(&client, &id).await? else {
        let Some(project) = project else {
            return Err(CliError::usage(format!("no sandbox `{}` on the agent", args.name)));
        };
        let otherwise = |run: &str| {
            format!("sandbox `{}` has not run yet in {}: run it once with {run}", args.name, project.display())
        };
        return Err(missing_sandbox(&project, &args.name, otherwise));
    };
    settings.out.answer(&info, describe)?;
    // The status is the agent's; a cave.yaml that does not load only keeps us from comparing.
    match project.as_deref().map(load_cave).transpose() {
        Ok(cave) => {
            if let Some(spec) = cave.as_ref().and_then(|cave| cave.sandboxes.get(&args.name)) {
                note_changed_definition(settings.out, &info, spec);
            }
        }
        Err(problems) => settings.out.note(format_args!(
            "{}; shown is what the agent has, not compared with cave.yaml",
            problems.message.lines().next().unwrap_or_default()
        )),
    }
    Ok(SUCCESS)
}

/// What cave.yaml now says of `spec`'s type and limits that differs from what the agent has
/// (`info`): the definition the sandbox's last run gave, until the next one.
fn changed_since_last_run(info: &SandboxInfo, spec: &SandboxSpec, wanted: Option<&LimitOverrides>) -> Vec<String> {
    let mut changed = Vec::new();
    if spec.r#type != info.language {
        changed.push(format!("type {} → {}", info.language.as_str(), spec.r#type.as_str()));
    }
    let Some(wanted) = wanted else {
        return changed;
    };
    let had = &info.limits;
    let mut compare = |name: &str, wanted: Option<u64>, had: u64, show: fn(u64) -> String| {
        if let Some(wanted) = wanted.filter(|wanted| *wanted != had) {
            changed.push(format!("{name} {} → {}", show(had), show(wanted)));
        }
    };
    compare("cpus", wanted.cpu_millis, had.cpu_millis, bkg_schema::units::format_cpus);
    compare("memory", wanted.memory_bytes, had.memory_bytes, format_size);
    compare("timeout", wanted.timeout_ms, had.timeout_ms, bkg_schema::units::format_duration_ms);
    // A disk only grows: one larger than cave.yaml asks (grown by `bkgr --disk`) stays so.
    compare("disk", wanted.disk_bytes.filter(|wanted| *wanted > had.disk_bytes), had.disk_bytes, format_size);
    compare("pids", wanted.pids, had.pids, |pids| pids.to_string());
    changed
}

/// Says when cave.yaml has changed `info`'s sandbox since the agent was last given it, and when
/// the change takes effect: `bkg ls` and `bkg status` show the agent's definition.
fn note_changed_definition(out: crate::out::Printer, info: &SandboxInfo, spec: &SandboxSpec) {
    // A disk below the sandbox's is not a change to come: it never shrinks (found by a new-user
    // trial: `disk 500MiB` shown against cave.yaml's 300MiB without a word).
    let wanted = spec.limits.as_ref().and_then(|limits| limits.to_overrides().ok());
    if let Some(asked) =
        wanted.as_ref().and_then(|wanted| wanted.disk_bytes).filter(|asked| *asked < info.limits.disk_bytes)
    {
        out.note(format_args!(
            "{}: its disk is {}, above cave.yaml's {}: a disk only grows; `bkg rm {}` starts over with a smaller one \
             (its files go with it)",
            info.name,
            format_size(info.limits.disk_bytes),
            format_size(asked),
            info.name
        ));
    }
    let changed = changed_since_last_run(info, spec, wanted.as_ref());
    if changed.is_empty() {
        return;
    }
    let when = match info.state {
        SandboxState::Running => "once it stops, at its next run",
        SandboxState::Idle => "at its next run",
    };
    out.note(format_args!(
        "{}: changed in cave.yaml since its last run ({}); applied {when} (`bkgr {}`)",
        info.name,
        changed.join(", "),
        info.name
    ));
}

/// `bkg status`: one field a line.
pub fn describe(info: &SandboxInfo) -> String {
    let limits = &info.limits;
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<13}{value}\n"));
    line("name", format!("{} ({})", info.name, info.id));
    line("type", info.language.as_str().to_owned());
    line("namespace", info.namespace.clone());
    line("project", info.project_dir.clone());
    line("state", state_word(info).to_owned());
    if let Some(run) = &info.current_run {
        line("run", run.clone());
    }
    if let Some(session) = &info.session {
        let doing = if session.busy { "executing" } else { "idle" };
        let executions = match session.executions {
            1 => "1 execution".to_owned(),
            count => format!("{count} executions"),
        };
        line("session", format!("{} ({} · {executions} · {doing})", session.name, session.language.as_str()));
    }
    line("last exit", last_exit(info));
    // What ended a run that failed before (or instead of) its script: the log cannot say it.
    if let Some(error) = last_ended_run(info).and_then(|run| run.error.as_deref()) {
        line("last error", error.replace('\n', " "));
    }
    line(
        "limits",
        format!(
            "cpus {} · memory {} · timeout {} · disk {}",
            bkg_schema::units::format_cpus(limits.cpu_millis),
            format_size(limits.memory_bytes),
            bkg_schema::units::format_duration_ms(limits.timeout_ms),
            format_size(limits.disk_bytes)
        ),
    );
    line("disk holds", format_size(info.disk_bytes_allocated));
    if let Some(service) = &info.service {
        let mut health = service_word(service.state).to_owned();
        // The policy either way, as docs/cli.md says (was: nothing for `no`; found by a new-user trial).
        match service.restart {
            RestartPolicy::OnFailure => {
                health.push_str(&format!(" · restart on-failure · restarted {}×", service.restarts));
            }
            RestartPolicy::No => health.push_str(" · restart no"),
        }
        match (service.last_killed_by, service.last_exit_code) {
            (Some(limit), _) => health.push_str(&format!(" · last failure: {} limit", limit.as_str())),
            (None, Some(code)) => health.push_str(&format!(" · last failure exit {code}")),
            (None, None) => {}
        }
        match (&service.not_restarted, service.state) {
            (Some(why), ServiceState::Restarting) => health.push_str(&format!(" · waits to start again: {why}")),
            (Some(why), _) => health.push_str(&format!(" · not started again: {why}")),
            (None, _) => {}
        }
        line("service", health);
        for port in &service.ports {
            let state = if port.accepting { "accepting" } else { "not accepting" };
            line("port", format!("{} ({state})", port.mapping));
        }
    }
    text
}

/// How many of a sandbox's newest runs `bkg logs --policy` looks at.
const POLICY_RUNS: u32 = 50;
fn service_word(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Running => "running",
        ServiceState::Restarting => "restarting (it failed)",
        ServiceState::Exited => "exited",
        ServiceState::Stopped => "stopped",
    }
}

pub async fn logs(settings: &Settings, args: LogsArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let (id, project) = locate(&client, args.project.dir.as_deref(), &args.name, settings.out).await?;
    if args.policy {
        return policy(settings, &client, &id).await;
    }
    if let Some(run) = &args.run {
        // A service's failed run, since started again: its log is one of those kept.
        // Checked before it goes into the URL.
        crate::runs_cmd::check_run_id(run)?;
        let request = client.http().get(client.url(&format!("/api/v1/sandboxes/{id}/logs?run={run}")));
        let response = request.send().await.map_err(|error| client.unreachable(error))?;
        if !response.status().is_success() {
            return Err(crate::client::api_error(response).await);
        }
        let all = response.bytes().await.map_err(|error| client.unreachable(error))?;
        let _ = crate::out::stdout_bytes(&LogLines::new(args.tail, args.timestamps).backlog(&all, true));
        return Ok(SUCCESS);
    }
    let open = |follow: bool| {
        let path = format!("/api/v1/sandboxes/{id}/logs?follow={follow}");
        let (client, name, project, id) = (&client, &args.name, &project, &id);
        async move {
            if let Some(response) = client.open_found(&path).await? {
                return Ok(response);
            }
            // A sandbox whose only run failed before its script started (its packages did not
            // install) has no log: why is said (found by a new-user trial: "no output yet").
            if let Some(why) = last_run_failure(client, id).await {
                return Err(CliError::usage(format!("sandbox `{name}` has no output: {why}")));
            }
            Err(match project {
                Some(project) => {
                    let otherwise = |run: &str| {
                        format!("sandbox `{name}` has no output yet in {}: {run} runs it", project.display())
                    };
                    missing_sandbox(project, name, otherwise)
                }
                None => CliError::usage(format!("sandbox `{name}` has no output yet")),
            })
        }
    };
    // The log is the output of the sandbox's script, byte for byte: written as it comes, not
    // through the printer's lines.
    let mut lines = LogLines::new(args.tail, args.timestamps);
    if !args.follow {
        let all = open(false).await?.bytes().await.map_err(|error| client.unreachable(error))?;
        let _ = crate::out::stdout_bytes(&lines.backlog(&all, true));
        if let Some(why) = last_run_failure(&client, &id).await {
            settings.out.note(format_args!("{why}"));
        }
        return Ok(SUCCESS);
    }
    // Following from the last N lines: what is there now is read first, and skipped when the
    // followed answer repeats it.
    let mut skip = 0;
    if args.tail.is_some() {
        let backlog = open(false).await?.bytes().await.map_err(|error| client.unreachable(error))?;
        if crate::out::stdout_bytes(&lines.backlog(&backlog, false)).is_err() {
            return Ok(SUCCESS);
        }
        skip = backlog.len();
    }
    let mut response = open(true).await?;
    // The agent's stop ends the log cleanly or cuts its connection, as it goes.
    let agent_stopped = || {
        CliError::new(
            BKG_FAILED,
            format!(
                "the agent stopped, so following ended: once an agent runs again, `bkg logs {} -f` follows the \
                 sandbox again (a service with `restart: on-failure` is started again by that agent)",
                args.name
            ),
        )
    };
    let gone = || async { client.http().get(client.url("/healthz")).send().await.is_err() };
    let reader_gone = crate::out::stdout_closed();
    tokio::pin!(reader_gone);
    loop {
        let next = tokio::select! {
            next = response.chunk() => next,
            // As `head` leaves it: quietly, with 0, even while the sandbox prints nothing.
            () = &mut reader_gone => return Ok(SUCCESS),
        };
        let chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) if gone().await => return Err(agent_stopped()),
            Err(error) => return Err(client.unreachable(error)),
        };
        let skipped = skip.min(chunk.len());
        skip -= skipped;
        if crate::out::stdout_bytes(&lines.live(&chunk[skipped..])).is_err() {
            return Ok(SUCCESS);
        }
    }
    let _ = crate::out::stdout_bytes(&lines.finish());
    // The log ended: its run did, or the agent stopped (and ended it), which says nothing on a
    // raw log. A stopped agent no longer takes connections.
    if gone().await {
        return Err(agent_stopped());
    }
    // A service's end is said: a raw log cannot tell a stop from a removal or a failure.
    if let Some(why) = why_following_ended(&client, &id, &args.name).await {
        settings.out.note(format_args!("{why}; following ended"));
    }
    Ok(SUCCESS)
}

/// What ended the last run of sandbox `id` when it failed without its script's say (the
/// sandbox could not be prepared, its project was gone): its log holds nothing of it.
async fn last_run_failure(client: &AgentClient, id: &str) -> Option<String> {
    let info = client.get_found::<SandboxInfo>(&format!("/api/v1/sandboxes/{id}")).await.ok()??;
    let run = info.last_run?;
    let error = run.error?;
    Some(format!("{}'s last run ({}) failed: {}", info.name, run.id, error.replace('\n', " ")))
}

/// Why the log of sandbox `id` (`name`) ended, when it was a service's or the sandbox went:
/// removed, stopped, ended for good (and how), not started again (and why). Nothing for a run
/// that simply ended, nor while the agent has not yet marked the service's end.
async fn why_following_ended(client: &AgentClient, id: &str, name: &str) -> Option<String> {
    let Ok(found) = client.get_found::<SandboxInfo>(&format!("/api/v1/sandboxes/{id}")).await else {
        return None;
    };
    let Some(info) = found else {
        return Some(format!("{name} was removed"));
    };
    let service = info.service.as_ref()?;
    // The run followed is the newest: the service's own, or another (a foreground `bkgr`), of
    // whose end the service says nothing (found by a new-user trial: it was said to end with the
    // service's earlier failure). Its end may not be recorded yet when its log ends (found by a
    // new-user trial: `bkg stop` ended a follow without a word).
    let newest = info.last_run.as_ref();
    if service.run_id.is_some() && newest.map(|run| &run.id) != service.run_id.as_ref() {
        return None;
    }
    let followed = newest.filter(|run| run.finished_at_ms.is_some());
    match service.state {
        ServiceState::Stopped => Some(format!("{name}'s service was stopped")),
        ServiceState::Exited => {
            // How its last run ended, not its last failure's code: a service that failed once
            // and then succeeded ended with 0 (found by a new-user trial).
            let how = match (&service.not_restarted, followed) {
                (Some(why), _) => format!("was not started again: {why}"),
                (None, Some(run)) => match (run.killed_by, run.exit_code) {
                    (Some(limit), _) => format!("ended at its {} limit", limit.as_str()),
                    (None, Some(code)) => format!("ended with exit {code}"),
                    (None, None) => "ended".to_owned(),
                },
                (None, None) => match service.last_exit_code {
                    Some(code) => format!("ended with exit {code}"),
                    None => "ended".to_owned(),
                },
            };
            Some(format!("{name}'s service {how}"))
        }
        ServiceState::Running | ServiceState::Restarting => None,
    }
}

/// `bkg logs NAME --policy`: what the sandbox refused its newest runs, newest first, one line
/// per run and refusal.
async fn policy(settings: &Settings, client: &AgentClient, id: &str) -> Result<i32, CliError> {
    let runs: Vec<bkg_schema::RunRecord> =
        client.get(&format!("/api/v1/runs?sandbox={}&limit={POLICY_RUNS}", percent_encode(id))).await?;
    let rows: Vec<Vec<String>> = runs
        .iter()
        .flat_map(|run| {
            let refused = run.denials.iter().map(|denial| {
                vec![run.id.clone(), denial.kind.as_str().to_owned(), denial.what.clone(), denial.count.to_string()]
            });
            let network = run.network_denials.iter().map(|denial| {
                let what = format!("{} {} ({})", denial.transport.as_str(), denial.destination, denial.reason);
                vec![run.id.clone(), "network".to_owned(), what, denial.count.to_string()]
            });
            refused.chain(network)
        })
        .collect();
    if rows.is_empty() {
        settings.out.note(format_args!("nothing was refused in the last {POLICY_RUNS} runs"));
        return Ok(SUCCESS);
    }
    let table = crate::table::render(&["RUN", "KIND", "WHAT", "COUNT"], &[3], &[], rows, crate::table::width());
    settings.out.text(&table);
    Ok(SUCCESS)
}

/// `bkg logs` output shaping: the last N lines of what was there, each line after its time.
struct LogLines {
    tail: Option<usize>,
    timestamps: bool,
    /// A line not yet ended.
    partial: Vec<u8>,
}

impl LogLines {
    fn new(tail: Option<usize>, timestamps: bool) -> Self {
        Self { tail, timestamps, partial: Vec::new() }
    }

    /// Output written before `bkg logs` started, cut to `--tail` and stamped. `to_end`: this is
    /// all there is, and an unended last line counts as a line.
    fn backlog(&mut self, bytes: &[u8], to_end: bool) -> Vec<u8> {
        self.partial.extend_from_slice(bytes);
        let end = if to_end {
            self.partial.len()
        } else {
            self.partial.iter().rposition(|&byte| byte == b'\n').map_or(0, |newline| newline + 1)
        };
        let complete: Vec<u8> = self.partial.drain(..end).collect();
        let lines: Vec<&[u8]> = complete.split_inclusive(|&byte| byte == b'\n').collect();
        let skip = self.tail.map_or(0, |tail| lines.len().saturating_sub(tail));
        self.tail = None;
        lines[skip..].iter().flat_map(|line| self.stamped(line)).collect()
    }

    /// Output arriving while following: whole lines as they end.
    fn live(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.backlog(bytes, false)
    }

    /// The last line, when the output did not end with a newline.
    fn finish(&mut self) -> Vec<u8> {
        self.backlog(&[], true)
    }

    fn stamped(&self, line: &[u8]) -> Vec<u8> {
        if !self.timestamps {
            return line.to_vec();
        }
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        [format!("{now} ").as_bytes(), line].concat()
    }
}

/// `bkg stop NAME... | --all`.
pub async fn stop_many(settings: &Settings, args: StopArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let names = if args.all {
        let project = project_dir(args.project.dir.as_deref())?;
        let sandboxes = list(&client, Some(&project)).await?;
        // A service waiting to restart after a failure has no run now, but is not stopped.
        let restarting =
            |info: &SandboxInfo| info.service.as_ref().is_some_and(|service| service.state == ServiceState::Restarting);
        let running: Vec<String> = sandboxes
            .into_iter()
            .filter(|info| info.state == SandboxState::Running || restarting(info))
            .map(|info| info.name)
            .collect();
        if running.is_empty() && !out.is_json() {
            out.note(format_args!("no sandbox of {} is running", project.display()));
        }
        running
    } else {
        args.names
    };
    // Every name is found before any sandbox is stopped, as `bkg rm` does (found by a new-user
    // trial: `bkg stop api nosuch` stopped api, then failed).
    let mut located: Vec<(String, String, _)> = Vec::new();
    for name in names {
        let (id, project) = locate(&client, args.project.dir.as_deref(), &name, out).await?;
        // A sandbox named twice (by name and by id, or the same name again) is stopped once: its
        // second stop said "was not running" after the first said "stopped".
        if !located.iter().any(|(_, seen, _)| seen == &id) {
            located.push((name, id, project));
        }
    }
    let mut answers = Vec::new();
    for (name, id, project) in located {
        answers.push(stop(&client, out, name, &id, project.as_deref()).await?);
    }
    if out.is_json() {
        out.json(&answers)?;
    }
    Ok(SUCCESS)
}

/// Stops the run of one sandbox: whether one was going on.
async fn stop(
    client: &AgentClient,
    out: crate::out::Printer,
    name: String,
    id: &str,
    project: Option<&Path>,
) -> Result<StopAnswer, CliError> {
    let stopped = match (client.post_found(&format!("/api/v1/sandboxes/{id}/stop")).await?, project) {
        (Some(Stopped { stopped }), _) => stopped,
        // Declared in cave.yaml and never made: there is nothing to stop, which is what was asked.
        // A cave.yaml that does not load cannot say whether it declares the name: its problems.
        (None, Some(project)) => match crate::project::load_cave_for(project, &name, out) {
            Ok(cave) if cave.sandboxes.contains_key(&name) => false,
            Ok(cave) => return Err(crate::project::unknown_sandbox(&cave, &name)),
            Err(problems) => return Err(problems),
        },
        (None, None) => {
            return Err(CliError::usage(format!("no sandbox `{}` on the agent", bkg_schema::shown_briefly(&name))));
        }
    };
    if !out.is_json() {
        if stopped {
            out.note(format_args!("stopped {name}"));
        } else {
            out.note(format_args!("sandbox `{name}` was not running"));
        }
    }
    Ok(StopAnswer { name, stopped })
}

/// `bkg rm NAME...`: each sandbox in turn, stopping at the first that fails or is kept; a name
/// that is nowhere refuses them all before any is removed. With `--json`, one array of those
/// removed, also when one failed after them.
pub async fn rm_many(settings: &Settings, args: RmArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    // Every name is checked before any sandbox is removed.
    let mut removals = Vec::new();
    match crate::project::project_if_any(args.project.dir.as_deref())? {
        Ok(project) => {
            for name in &args.names {
                let (edited, known) = match removal_of(&client, &project, name).await {
                    Ok(found) => found,
                    // An id the agent has (a sandbox left under a directory that is gone, as `bkg
                    // rm` of a moved project names it) is removed from anywhere.
                    Err(error) => match fetch(&client, name).await? {
                        Some(info) => {
                            removals.push(Removal { name: info.name, id: info.id, known: true, edit: None });
                            continue;
                        }
                        None => return Err(error),
                    },
                };
                let edit = edited.map(|_| project.join("cave.yaml"));
                removals.push(Removal { name: name.clone(), id: id_of(&project, name), known: known.is_some(), edit });
            }
        }
        // A sandbox whose project was moved or deleted is still the agent's: found by its name
        // (or id) among this caller's sandboxes, as `bkg stop` and `bkg logs` find one.
        Err(no_project) => {
            for name in &args.names {
                let id = crate::files_cmd::outside_a_project(&client, name, &no_project).await?;
                // Given by its id (`bkg ls --all`), it is still called by its name.
                let name = bkg_schema::sandbox::sandbox_name_of(&id).to_owned();
                removals.push(Removal { name, id, known: true, edit: None });
            }
        }
    }
    // A sandbox named twice (or by its name and its id) is removed once.
    let mut seen = std::collections::HashSet::new();
    removals.retain(|removal| seen.insert(removal.id.clone()));
    let mut removed = Vec::new();
    let mut outcome = Ok(SUCCESS);
    for removal in removals {
        match rm(settings.out, &client, removal, args.force).await {
            Ok(Some(one)) => removed.push(one),
            Ok(None) => {
                outcome = Ok(NEGATIVE);
                break;
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    if settings.out.is_json() {
        settings.out.json(&removed)?;
    }
    outcome
}

/// One sandbox to remove: its id, whether the agent has it, and the cave.yaml that declares it,
/// if one does.
struct Removal {
    name: String,
    id: String,
    known: bool,
    edit: Option<std::path::PathBuf>,
}

/// What removing sandbox `name` takes: cave.yaml without it (if it declares it) and the sandbox
/// as the agent knows it (if it does). Refused when it is in neither.
async fn removal_of(
    client: &AgentClient,
    project: &Path,
    name: &str,
) -> Result<(Option<String>, Option<SandboxInfo>), CliError> {
    let cave_path = project.join("cave.yaml");
    // A cave.yaml invalid outside its sandboxes is refused with its problems, as `bkg add`
    // refuses it: it cannot say whether it declares `name`. Problems inside sandboxes do not
    // keep one from going, the invalid one itself included.
    let part = crate::project::load_cave_in_part(project)?;
    let cave_text = std::fs::read_to_string(&cave_path)
        .map_err(|error| CliError::usage(format!("{}: {error}", cave_path.display())))?;
    let edited = remove_sandbox_block(&cave_text, name);
    // Refused before anything is removed: the sandbox's data would go and cave.yaml keep it.
    if edited.is_none() && part.declares(name) {
        return Err(CliError::usage(format!(
            "cave.yaml declares `{name}` in a form bkg rm cannot edit (`sandboxes:` written inline, or a layout \
             where taking its lines out would change more than `{name}`): nothing was removed; write `sandboxes:` \
             as a block, one entry per line (as bkg add writes it), or take `{name}` out of cave.yaml yourself \
             and run `bkg rm {name}` again"
        )));
    }
    let known = fetch(client, &id_of(project, name)).await?;
    if edited.is_none() && known.is_none() {
        return Err(crate::project::unknown_sandbox(&part.cave, name));
    }
    Ok((edited, known))
}

/// Removes a sandbox; `None` when the user kept it.
async fn rm(
    out: crate::out::Printer,
    client: &AgentClient,
    Removal { name, id, known, edit }: Removal,
    force: bool,
) -> Result<Option<Removed>, CliError> {
    if !force {
        // A sandbox that never ran has no workspace: only its entry in cave.yaml goes.
        let loses = match (known, edit.is_some()) {
            (true, true) => "its workspace, its logs and its entry in cave.yaml",
            (true, false) => "its workspace and logs",
            (false, _) => "its entry in cave.yaml (it never ran)",
        };
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            return Err(CliError::usage(format!(
                "removing `{name}` deletes {loses}; add --force to do it without a terminal"
            )));
        }
        out.ask(format_args!("remove sandbox `{name}` with {loses}? [y/N] "));
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map_err(|error| CliError::usage(error.to_string()))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            out.note(format_args!("kept {name}"));
            return Ok(None);
        }
    }

    // The file as it is now, once the sandboxes before this one are out of it: an edit made
    // from the text read at the start would put them back. It is written before the sandbox is
    // deleted and put in place after: a cave.yaml bkg cannot write stops the removal while the
    // workspace is still there (found by a new-user trial: deleted, then "cannot write").
    let prepared = match &edit {
        Some(cave_path) => {
            let unreadable = |error| CliError::usage(format!("{}: {error}", cave_path.display()));
            let edit = |text: &str| Ok((remove_sandbox_block(text, &name), ()));
            crate::project::prepare_edit_locked(cave_path, unreadable, edit)
                .map(|(prepared, ())| prepared)
                .map_err(|error| CliError::new(error.code, format!("{}: nothing was removed", error.message)))?
        }
        None => None,
    };
    if known {
        let _: Deleted = client.delete(&format!("/api/v1/sandboxes/{id}")).await?;
    }
    if let Some(prepared) = prepared {
        prepared.finish()?;
    }
    if known {
        if !out.is_json() {
            out.note(format_args!("removed {name}"));
        }
        return Ok(Some(Removed { name, id: Some(id), removed: true }));
    }
    if !out.is_json() {
        out.note(format_args!("removed {name} from cave.yaml (the agent has no sandbox of it in this directory)"));
    }
    // A project moved or renamed leaves its sandboxes under the old directory: say so, with what
    // removes them, rather than let the user think they went.
    let all: Vec<SandboxInfo> = client.get("/api/v1/sandboxes").await?;
    for left in crate::define::left_behind(&all, &name) {
        out.note(format_args!(
            "`{name}` of {}, a directory that is gone, is still on the agent with its workspace: `bkg rm {}` removes it",
            left.project_dir, left.id
        ));
    }
    Ok(Some(Removed { name, id: None, removed: true }))
}

/// cave.yaml without the block of sandbox `name`, keeping everything else byte for byte. None
/// when the file has no such block, or when the text without it would not read as the same
/// file less that one sandbox: nothing is written then.
fn remove_sandbox_block(text: &str, name: &str) -> Option<String> {
    let edited = cut_sandbox_block(text, name)?;
    let before = bkg_schema::cave::parse_in_part(text, "cave.yaml").ok()?;
    let after = bkg_schema::cave::parse_in_part(&edited, "cave.yaml").ok()?;
    let removed = before.declares(name) && !after.declares(name);
    let others_left_out = |part: &bkg_schema::cave::InPart| {
        part.left_out.iter().filter(|left_out| *left_out != name).cloned().collect::<Vec<_>>()
    };
    (removed
        && others_left_out(&before) == others_left_out(&after)
        && crate::project::same_but_for(&before.cave, &after.cave, name))
    .then_some(edited)
}

/// The text cut: the block's key line, every more-indented line after it and the comments right
/// above it at its indentation. A comment is never where a block ends: YAML reads past one
/// anywhere, at the first column too (found by a new-user trial: `# b is important` at the
/// first column between two entries made the edit write `sandboxes: {}` above `b`).
fn cut_sandbox_block(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent_of = |line: &str| line.len() - line.trim_start().len();
    let is_comment = |line: &str| line.trim_start().starts_with('#');
    let is_blank = |line: &str| line.trim().is_empty();
    // `sandboxes:`, maybe with a comment after it; a value there is an inline mapping.
    let is_key_line = |line: &str| line.split('#').next().is_some_and(|key| key.trim_end() == "sandboxes:");
    let sandboxes = lines.iter().position(|line| is_key_line(line) && indent_of(line) == 0)?;
    let block_end = (sandboxes + 1..lines.len())
        .find(|&index| !is_blank(lines[index]) && !is_comment(lines[index]) && indent_of(lines[index]) == 0)
        .unwrap_or(lines.len());
    let level = lines[sandboxes + 1..block_end]
        .iter()
        .find(|line| !is_blank(line) && !is_comment(line))
        .map(|line| indent_of(line))?;
    let start = (sandboxes + 1..block_end).find(|&index| {
        let line = lines[index];
        let key = line.trim();
        indent_of(line) == level && (key == format!("{name}:") || key.starts_with(&format!("{name}: ")))
    })?;
    let indent = indent_of(lines[start]);
    // Comment lines right above it, at its indentation, are its own (`# the api`).
    let key = start;
    let start = (sandboxes + 1..key)
        .rev()
        .take_while(|&index| indent_of(lines[index]) == indent && is_comment(lines[index]))
        .last()
        .unwrap_or(key);
    let next = (key + 1..lines.len())
        .find(|&index| {
            let line = lines[index];
            !is_blank(line) && !is_comment(line) && indent_of(line) <= indent
        })
        .unwrap_or(lines.len());
    // After the entry's last line of content, comments deeper than its key are its own; from
    // the first one no deeper, they are what follows' (a trial found `# TODO` at the first
    // column cut too, when a deeper comment came after it). Blank lines before that go with it.
    let body_end = (key + 1..next).rev().find(|&index| !is_blank(lines[index]) && !is_comment(lines[index]));
    let end = (body_end.map_or(key + 1, |last| last + 1)..next)
        .find(|&index| is_comment(lines[index]) && indent_of(lines[index]) <= indent)
        .unwrap_or(next);
    let mut kept: Vec<String> = lines[..start].iter().map(|line| (*line).to_owned()).collect();
    kept.extend(lines[end..].iter().map(|line| (*line).to_owned()));
    // Without entries the key alone would read as null, which no command accepts: the last
    // sandbox leaves an empty mapping behind.
    let entries_left = kept[sandboxes + 1..]
        .iter()
        .take_while(|line| is_blank(line) || is_comment(line) || indent_of(line) > 0)
        .any(|line| !is_blank(line) && !is_comment(line));
    if !entries_left {
        let key = &lines[sandboxes];
        let ending = &key[key.trim_end().len()..];
        kept[sandboxes] = match key.find('#') {
            Some(at) => format!("sandboxes: {{}} {}{ending}", key[at..].trim_end()),
            None => format!("sandboxes: {{}}{ending}"),
        };
    }
    Some(kept.concat())
}

/// Percent-encodes a query value (paths may hold spaces and `&`).
pub(crate) fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAVE: &str = "# my project\nversion: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    # the web part\n    scripts:\n      start: python main.py\n\n  worker:\n    type: node\n";

    #[test]
    fn removing_a_sandbox_keeps_everything_else() {
        assert_eq!(
            remove_sandbox_block(CAVE, "api").as_deref(),
            Some("# my project\nversion: 1\nnamespace: default\nsandboxes:\n  worker:\n    type: node\n")
        );
        assert_eq!(
            remove_sandbox_block(CAVE, "worker").as_deref(),
            Some(
                "# my project\nversion: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    # the web part\n    scripts:\n      start: python main.py\n\n"
            )
        );
        assert_eq!(remove_sandbox_block(CAVE, "missing"), None);
        assert_eq!(remove_sandbox_block(CAVE, "start"), None, "a nested key is not a sandbox");
    }

    #[test]
    fn removing_the_last_sandbox_leaves_an_empty_mapping() {
        let one = "# my project\nversion: 1\nsandboxes:\r\n  # the only one\n  api:\n    type: python\n\n# end\nnamespace: x\n";
        assert_eq!(
            remove_sandbox_block(one, "api").as_deref(),
            Some("# my project\nversion: 1\nsandboxes: {}\r\n# end\nnamespace: x\n")
        );
        let two = remove_sandbox_block(CAVE, "api").unwrap_or_default();
        assert_eq!(
            remove_sandbox_block(&two, "worker").as_deref(),
            Some("# my project\nversion: 1\nnamespace: default\nsandboxes: {}\n")
        );
    }

    #[test]
    fn a_comment_after_sandboxes_is_read_past_and_kept() {
        let commented = "version: 1\nsandboxes:  # the boxes\n  api:\n    type: python\n";
        assert_eq!(remove_sandbox_block(commented, "api").as_deref(), Some("version: 1\nsandboxes: {} # the boxes\n"));
        let inline = "version: 1\nsandboxes: { api: { type: python } }\n";
        assert_eq!(remove_sandbox_block(inline, "api"), None, "an inline mapping is not edited");
    }

    /// A comment at the first column inside the block: the entries around it are edited as if
    /// it were not there, and it stays (found by a new-user trial: `sandboxes: {}` was written
    /// above `b`, and `bkg rm b` was refused as inline).
    #[test]
    fn a_comment_at_the_first_column_between_entries_is_kept_and_read_past() {
        let cave = "version: 1\nsandboxes:\n  a:\n    type: python\n\n# b is our important worker, keep it\n  b:\n    type: python\n";
        assert_eq!(
            remove_sandbox_block(cave, "a").as_deref(),
            Some("version: 1\nsandboxes:\n# b is our important worker, keep it\n  b:\n    type: python\n")
        );
        assert_eq!(
            remove_sandbox_block(cave, "b").as_deref(),
            Some("version: 1\nsandboxes:\n  a:\n    type: python\n\n# b is our important worker, keep it\n"),
            "a comment at another indentation than b's is not b's own: it stays"
        );
        let inside = "version: 1\nsandboxes:\n  a:\n    type: python\n# its limits\n    limits:\n      memory: 1GiB\n  b:\n    type: node\n";
        assert_eq!(
            remove_sandbox_block(inside, "a").as_deref(),
            Some("version: 1\nsandboxes:\n  b:\n    type: node\n")
        );
    }

    /// Comments after an entry: its own are deeper than its key and come before any that is no
    /// deeper; from that one on they stay, whatever follows them (found by a new-user trial).
    #[test]
    fn comments_after_an_entry_stay_from_the_first_one_no_deeper_than_its_key() {
        let cave = "version: 1\nsandboxes:\n  a:\n    type: python\n  b:\n    type: node\n# TODO: move c\n    # c needs the big box\n  c:\n    type: node\n";
        assert_eq!(
            remove_sandbox_block(cave, "b").as_deref(),
            Some(
                "version: 1\nsandboxes:\n  a:\n    type: python\n# TODO: move c\n    # c needs the big box\n  c:\n    type: node\n"
            )
        );
        let last = "version: 1\nsandboxes:\n  a:\n    type: python\n  c:\n    type: python\n    # inside c\n  # after c at 2\n# after c at 0\n    # after c at 4\n\nnamespace: x\n";
        assert_eq!(
            remove_sandbox_block(last, "c").as_deref(),
            Some(
                "version: 1\nsandboxes:\n  a:\n    type: python\n  # after c at 2\n# after c at 0\n    # after c at 4\n\nnamespace: x\n"
            )
        );
    }

    /// An edit whose text would not read as the file less that sandbox is never written: here
    /// the lines cut hold an anchor another sandbox names.
    #[test]
    fn an_edit_that_would_change_more_than_the_sandbox_is_refused() {
        let broken = "version: 1\nsandboxes:\n  a:\n    type: python\n  b: &x\n    type: node\n  c: *x\n";
        assert!(bkg_schema::cave::parse(broken, "cave.yaml").is_ok(), "the file itself is valid");
        assert!(cut_sandbox_block(broken, "b").is_some(), "its lines are found");
        assert_eq!(remove_sandbox_block(broken, "b"), None, "c names b's anchor");
    }

    #[test]
    fn logs_tail_counts_an_unended_last_line() {
        let mut lines = LogLines::new(Some(2), false);
        assert_eq!(lines.backlog(b"a\nb\nc\nd", true), b"c\nd");
        let mut lines = LogLines::new(Some(1), false);
        assert_eq!(lines.backlog(b"a\nb\npart", false), b"b\n");
        assert_eq!(lines.live(b"ial\nnext\n"), b"partial\nnext\n");
        assert_eq!(lines.finish(), b"");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("/srv/my app&x"), "/srv/my%20app%26x");
    }
}
