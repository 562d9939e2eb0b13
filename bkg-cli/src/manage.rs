//! `bkg ls`, `bkg status`, `bkg logs`, `bkg stop`, `bkg rm`: the persistent sandboxes of the
//! project around the current directory.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use bkg_schema::sandbox::{SandboxInfo, SandboxState, sandbox_id};
use bkg_schema::units::format_size;
use clap::Args;

use crate::args::GlobalArgs;
use crate::client::{AgentClient, api_error};
use crate::exit::{BKG_FAILED, CliError};

/// The cave.yaml in `start` or the nearest directory above it.
pub fn find_cave_file(start: &Path) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join("cave.yaml")).find(|candidate| candidate.is_file())
}

/// The project around the current directory (or `--dir`): its absolute directory.
pub fn project_dir(dir: Option<&Path>) -> Result<PathBuf, CliError> {
    let start = match dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_dir()
            .map_err(|error| CliError::usage(format!("cannot read the current directory: {error}")))?,
    };
    let start = start.canonicalize().map_err(|error| CliError::usage(format!("{}: {error}", start.display())))?;
    let cave = find_cave_file(&start).ok_or_else(|| {
        CliError::usage(format!("no cave.yaml in {} or above: run `bkg init` first", start.display()))
    })?;
    Ok(cave.parent().map(Path::to_path_buf).unwrap_or(start))
}

#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// The project directory [default: the nearest with a cave.yaml, from the current one up]
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Every sandbox the agent knows, of every project.
    #[arg(long)]
    pub all: bool,
    /// Print JSON: an array of sandboxes.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The sandbox's name in cave.yaml.
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The sandbox's name in cave.yaml.
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Keep printing while the run goes on.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Start with the last N lines of the output.
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// Lead each line with the time bkg read it (RFC 3339, UTC): when it was written, for lines that arrive with -f.
    #[arg(short = 't', long)]
    pub timestamps: bool,
}

/// One sandbox to remove (`bkg rm NAME...` removes each in turn).
#[derive(Debug)]
pub struct RmArgs {
    pub name: String,
    pub project: ProjectArgs,
    pub force: bool,
    pub json: bool,
}

fn id_of(project: &Path, name: &str) -> String {
    sandbox_id(&project.to_string_lossy(), name)
}

async fn fetch(client: &AgentClient, id: &str) -> Result<Option<SandboxInfo>, CliError> {
    let response = client.send(client.http().get(client.url(&format!("/api/v1/sandboxes/{id}")))).await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    response.json().await.map(Some).map_err(|error| CliError::internal(format!("unexpected answer: {error}")))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let json = serde_json::to_string(value).map_err(|error| CliError::internal(error.to_string()))?;
    println!("{json}");
    Ok(())
}

fn last_exit(info: &SandboxInfo) -> String {
    match &info.last_run {
        None => "-".into(),
        Some(run) if run.finished_at_ms.is_none() => "running".into(),
        Some(run) => match (run.killed_by, run.exit_code, run.signal) {
            (Some(killed), _, _) => killed.as_str().into(),
            (None, Some(code), _) => code.to_string(),
            (None, None, Some(signal)) => format!("signal {signal}"),
            (None, None, None) => run.error.clone().map_or_else(|| "-".into(), |_| "error".into()),
        },
    }
}

pub async fn ls(global: &GlobalArgs, args: LsArgs) -> Result<i32, CliError> {
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    let query = if args.all {
        String::new()
    } else {
        let project = checked_project(args.project.dir.as_deref())?;
        format!("?project_dir={}", percent_encode(&project.to_string_lossy()))
    };
    let sandboxes: Vec<SandboxInfo> = client.get(&format!("/api/v1/sandboxes{query}")).await?;
    if args.json {
        print_json(&sandboxes)?;
        return Ok(0);
    }
    if sandboxes.is_empty() {
        eprintln!("bkg: no sandbox has run yet (`bkgr` runs them)");
        return Ok(0);
    }
    print!("{}", sandbox_table(&sandboxes, crate::table::width()));
    Ok(0)
}

/// The `bkg ls` table.
pub fn sandbox_table(sandboxes: &[SandboxInfo], width: Option<u16>) -> String {
    let rows = sandboxes.iter().map(|info| {
        let state = match info.state {
            SandboxState::Running => "running",
            SandboxState::Idle => "idle",
        };
        vec![
            info.name.clone(),
            info.language.as_str().to_owned(),
            state.to_owned(),
            last_exit(info),
            format_size(info.disk_bytes_allocated),
            info.project_dir.clone(),
        ]
    });
    crate::table::render(&["NAME", "TYPE", "STATE", "LAST EXIT", "DISK", "PROJECT"], &[4], &[5], rows, width)
}

/// The project around the current directory (or `--dir`), its cave.yaml checked: an invalid
/// file is refused with its problems rather than listing the sandboxes of a file bkgr cannot run.
pub fn checked_project(dir: Option<&Path>) -> Result<PathBuf, CliError> {
    let project = project_dir(dir)?;
    bkg_schema::cave::load(&project.join("cave.yaml"))
        .map_err(|errors| CliError::usage(errors.to_string().trim_end().to_owned()))?;
    Ok(project)
}

pub async fn status(global: &GlobalArgs, args: NameArgs) -> Result<i32, CliError> {
    let project = project_dir(args.project.dir.as_deref())?;
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    let Some(info) = fetch(&client, &id_of(&project, &args.name)).await? else {
        return Err(CliError::new(
            BKG_FAILED,
            format!("sandbox `{}` has not run yet in {}", args.name, project.display()),
        ));
    };
    if args.json {
        print_json(&info)?;
        return Ok(0);
    }
    let limits = &info.limits;
    println!("name       {} ({})", info.name, info.id);
    println!("type       {}", info.language.as_str());
    println!("namespace  {}", info.namespace);
    println!("project    {}", info.project_dir);
    println!("state      {}", if info.state == SandboxState::Running { "running" } else { "idle" });
    if let Some(run) = &info.current_run {
        println!("run        {run}");
    }
    println!("last exit  {}", last_exit(&info));
    println!(
        "limits     cpus {} · memory {} · timeout {} · disk {}",
        bkg_schema::units::format_cpus(limits.cpu_millis),
        format_size(limits.memory_bytes),
        bkg_schema::units::format_duration_ms(limits.timeout_ms),
        format_size(limits.disk_bytes)
    );
    println!("disk used  {}", format_size(info.disk_bytes_allocated));
    Ok(0)
}

pub async fn logs(global: &GlobalArgs, args: LogsArgs) -> Result<i32, CliError> {
    let project = project_dir(args.project.dir.as_deref())?;
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    let id = id_of(&project, &args.name);
    let open = |follow: bool| {
        let url = client.url(&format!("/api/v1/sandboxes/{id}/logs?follow={follow}"));
        let (client, name, project) = (&client, &args.name, &project);
        async move {
            let response = client.send(client.http().get(url)).await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(CliError::usage(format!(
                    "sandbox `{name}` has no output yet in {}: `bkgr {name}` runs it",
                    project.display()
                )));
            }
            if !response.status().is_success() {
                return Err(api_error(response).await);
            }
            Ok(response)
        }
    };
    let mut out = std::io::stdout().lock();
    let mut lines = LogLines::new(args.tail, args.timestamps);
    if !args.follow {
        let all = open(false).await?.bytes().await.map_err(|error| client.unreachable(error))?;
        let _ = out.write_all(&lines.backlog(&all, true));
        return Ok(0);
    }
    // Following from the last N lines: what is there now is read first, and skipped when the
    // followed answer repeats it.
    let mut skip = 0;
    if args.tail.is_some() {
        let backlog = open(false).await?.bytes().await.map_err(|error| client.unreachable(error))?;
        if out.write_all(&lines.backlog(&backlog, false)).and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
        skip = backlog.len();
    }
    let mut response = open(true).await?;
    while let Some(chunk) = response.chunk().await.map_err(|error| client.unreachable(error))? {
        let skipped = skip.min(chunk.len());
        skip -= skipped;
        if out.write_all(&lines.live(&chunk[skipped..])).and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    let _ = out.write_all(&lines.finish()).and_then(|()| out.flush());
    Ok(0)
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
pub async fn stop_many(global: &GlobalArgs, args: crate::args::StopArgs) -> Result<i32, CliError> {
    let project = project_dir(args.project.dir.as_deref())?;
    let names = if args.all {
        let client = AgentClient::new(global)?;
        client.ensure_running().await?;
        let query = format!("?project_dir={}", percent_encode(&project.to_string_lossy()));
        let sandboxes: Vec<SandboxInfo> = client.get(&format!("/api/v1/sandboxes{query}")).await?;
        let running: Vec<String> =
            sandboxes.into_iter().filter(|info| info.state == SandboxState::Running).map(|info| info.name).collect();
        if running.is_empty() && !args.json {
            eprintln!("bkg: no sandbox of {} is running", project.display());
        }
        running
    } else {
        args.names
    };
    let mut answers = Vec::new();
    for name in names {
        let one = NameArgs { name, project: ProjectArgs { dir: Some(project.clone()) }, json: args.json };
        answers.push(stop(global, one).await?);
    }
    if args.json {
        print_json(&answers)?;
    }
    Ok(0)
}

/// Stops the run of one sandbox; the agent's answer, `{"stopped": bool}`, with the name added.
async fn stop(global: &GlobalArgs, args: NameArgs) -> Result<serde_json::Value, CliError> {
    let project = project_dir(args.project.dir.as_deref())?;
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    let id = id_of(&project, &args.name);
    let response = client.send(client.http().post(client.url(&format!("/api/v1/sandboxes/{id}/stop")))).await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(CliError::new(BKG_FAILED, format!("sandbox `{}` has not run yet", args.name)));
    }
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    let mut answer: serde_json::Value =
        response.json().await.map_err(|error| CliError::internal(format!("unexpected answer: {error}")))?;
    if args.json {
        answer["name"] = serde_json::Value::String(args.name);
    } else if answer["stopped"] == true {
        eprintln!("bkg: stopped {}", args.name);
    } else {
        eprintln!("bkg: {} was not running", args.name);
    }
    Ok(answer)
}

pub async fn rm(global: &GlobalArgs, args: RmArgs) -> Result<i32, CliError> {
    let project = project_dir(args.project.dir.as_deref())?;
    let cave_path = project.join("cave.yaml");
    let cave_text = std::fs::read_to_string(&cave_path)
        .map_err(|error| CliError::usage(format!("{}: {error}", cave_path.display())))?;
    let edited = remove_sandbox_block(&cave_text, &args.name);
    let client = AgentClient::new(global)?;
    client.ensure_running().await?;
    let id = id_of(&project, &args.name);
    let known = fetch(&client, &id).await?;
    if edited.is_none() && known.is_none() {
        return Err(CliError::usage(format!("no sandbox `{}` in {}", args.name, cave_path.display())));
    }

    if !args.force {
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            return Err(CliError::usage(format!(
                "removing `{}` deletes its workspace; add --force to do it without a terminal",
                args.name
            )));
        }
        eprint!("bkg: remove sandbox `{}` with its workspace and logs? [y/N] ", args.name);
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map_err(|error| CliError::usage(error.to_string()))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("bkg: kept {}", args.name);
            return Ok(1);
        }
    }

    if known.is_some() {
        let response = client.send(client.http().delete(client.url(&format!("/api/v1/sandboxes/{id}")))).await?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
    }
    if let Some(edited) = &edited {
        let temporary = cave_path.with_extension("yaml.tmp");
        std::fs::write(&temporary, edited)
            .and_then(|()| std::fs::rename(&temporary, &cave_path))
            .map_err(|error| CliError::new(BKG_FAILED, format!("cannot update {}: {error}", cave_path.display())))?;
    }
    if args.json {
        print_json(&serde_json::json!({ "removed": args.name, "id": id }))?;
    } else {
        eprintln!("bkg: removed {}", args.name);
    }
    Ok(0)
}

/// cave.yaml without the block of sandbox `name` (its key line and every more-indented line
/// after it), keeping everything else byte for byte. None when the file has no such block.
fn remove_sandbox_block(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent_of = |line: &str| line.len() - line.trim_start().len();
    let sandboxes = lines.iter().position(|line| line.trim_end() == "sandboxes:" && indent_of(line) == 0)?;
    let block_end = (sandboxes + 1..lines.len())
        .find(|&index| !lines[index].trim().is_empty() && indent_of(lines[index]) == 0)
        .unwrap_or(lines.len());
    let is_content = |line: &&&str| !line.trim().is_empty() && !line.trim_start().starts_with('#');
    let level = lines[sandboxes + 1..block_end].iter().find(is_content).map(|line| indent_of(line))?;
    let start = (sandboxes + 1..block_end).find(|&index| {
        let line = lines[index];
        let key = line.trim();
        indent_of(line) == level && (key == format!("{name}:") || key.starts_with(&format!("{name}: ")))
    })?;
    let indent = indent_of(lines[start]);
    let end = (start + 1..lines.len())
        .find(|&index| {
            let line = lines[index];
            !line.trim().is_empty() && indent_of(line) <= indent
        })
        .unwrap_or(lines.len());
    let mut kept: Vec<String> = lines[..start].iter().map(|line| (*line).to_owned()).collect();
    kept.extend(lines[end..].iter().map(|line| (*line).to_owned()));
    // Without entries the key alone would read as null, which no command accepts: the last
    // sandbox leaves an empty mapping behind.
    let entries_left = kept[sandboxes + 1..]
        .iter()
        .take_while(|line| line.trim().is_empty() || indent_of(line) > 0)
        .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'));
    if !entries_left {
        let key = &lines[sandboxes];
        kept[sandboxes] = format!("sandboxes: {{}}{}", &key[key.trim_end().len()..]);
    }
    Some(kept.concat())
}

/// Percent-encodes a query value (paths may hold spaces and `&`).
fn percent_encode(value: &str) -> String {
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
            Some("# my project\nversion: 1\nsandboxes: {}\r\n  # the only one\n# end\nnamespace: x\n")
        );
        let two = remove_sandbox_block(CAVE, "api").unwrap_or_default();
        assert_eq!(
            remove_sandbox_block(&two, "worker").as_deref(),
            Some("# my project\nversion: 1\nnamespace: default\nsandboxes: {}\n")
        );
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
