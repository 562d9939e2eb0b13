//! `bkg runs ls` and `bkg runs show`: the agent's history of runs with their accounting;
//! `bkg runs cancel`: ending one that goes on;
//! `bkg runs files`: the files a run kept, listed or fetched.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bkg_schema::artefacts::{RunFile, RunFileKind, RunFiles};
use bkg_schema::units::{format_cpus, format_duration_ms, format_size};
use bkg_schema::{KilledBy, RunRecord, RunResult};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::args::{RunsAction, RunsArgs};
use crate::client::AgentClient;
use crate::exit::{BKG_FAILED, CliError, SUCCESS};
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: RunsArgs) -> Result<i32, CliError> {
    let out = settings.out;
    match args.action {
        RunsAction::Ls { limit, sandbox, before, project, .. } => {
            // -C only says where --sandbox's project is: alone it would be ignored (found by a
            // new-user trial).
            if let (Some(dir), None) = (&project.dir, &sandbox) {
                return Err(CliError::usage(format!(
                    "-C {} says where --sandbox NAME's project is: give --sandbox NAME too (the runs of every \
                     sandbox are listed without either)",
                    dir.display()
                )));
            }
            let mut query = format!("?limit={limit}");
            if let Some(before) = &before {
                check_run_id(before)?;
                query.push_str(&format!("&before={before}"));
            }
            let client = AgentClient::new(&settings.endpoint()?)?;
            client.ensure_running().await?;
            // Found as `bkg status` finds it: the project's, else one made through the API, MCP
            // or the Web UI, by name or id (found by a new-user trial: only the project's were).
            if let Some(name) = &sandbox {
                let (id, _) = crate::manage::locate(&client, project.dir.as_deref(), name, out).await?;
                query.push_str(&format!("&sandbox={id}"));
            }
            let runs: Vec<RunRecord> = client.get(&format!("/api/v1/runs{query}")).await?;
            if runs.is_empty() && !out.is_json() {
                match &before {
                    Some(before) => out.note(format_args!("no runs before {before}")),
                    None => out.note(format_args!("no runs yet")),
                }
            } else {
                out.answer(&runs, |runs| runs_table(runs, crate::table::width()))?;
            }
        }
        RunsAction::Show { id, .. } => {
            check_run_id(&id)?;
            let client = AgentClient::new(&settings.endpoint()?)?;
            client.ensure_running().await?;
            let Some(record) = client.get_found::<RunRecord>(&format!("/api/v1/runs/{id}")).await? else {
                return Err(unknown_run(&id));
            };
            out.answer(&record, describe)?;
        }
        RunsAction::Cancel { id, .. } => {
            check_run_id(&id)?;
            let client = AgentClient::new(&settings.endpoint()?)?;
            client.ensure_running().await?;
            // The agent answers once the run's end is recorded: SIGTERM's grace is 5 s.
            let Some(record) = client.post_found::<RunRecord>(&format!("/api/v1/runs/{id}/cancel")).await? else {
                return Err(unknown_run(&id));
            };
            out.answer(&record, describe)?;
        }
        RunsAction::Files { id, output, .. } => {
            check_run_id(&id)?;
            if let Some(dir) = &output {
                crate::files_cmd::refuse_file_as_directory(dir)?;
            }
            let client = AgentClient::new(&settings.endpoint()?)?;
            client.ensure_running().await?;
            let Some(files) = client.get_found::<RunFiles>(&format!("/api/v1/runs/{id}/files")).await? else {
                return Err(unknown_run(&id));
            };
            match output {
                None if files.files.is_empty() && !out.is_json() => out.note(format_args!("run {id} kept no files")),
                None => out.answer(&files, files_table)?,
                Some(dir) => {
                    fetch_files(&client, &files, &dir).await?;
                    if out.is_json() {
                        out.json(&files)?;
                    }
                    let fetched = crate::out::count(files.files.len(), "file", "files");
                    out.note(format_args!("fetched {fetched} of run {id} into {}", dir.display()));
                }
            }
        }
    }
    Ok(SUCCESS)
}

/// What the agent's 404 for run `id` means here.
fn unknown_run(id: &str) -> CliError {
    CliError::usage(format!("no run `{}` here: `bkg runs ls` lists the runs you may see", shown_as_id(id)))
}

use bkg_schema::auth::shown_as_id;

pub(crate) fn check_run_id(id: &str) -> Result<(), CliError> {
    if !bkg_schema::sandbox::is_run_id(id) {
        return Err(CliError::usage(format!("`{}` is not a run id: `bkg runs ls` lists them", shown_as_id(id))));
    }
    Ok(())
}

/// After `bkg exe`: the files the code wrote that the run kept and how to fetch them, on
/// stderr. The kept copies of its stdout and stderr are not named: the caller got those as they
/// came (`stream.rs` says what did not arrive); nor are those of `/workspace/out` when `-o` has
/// brought them (`out_fetched`).
pub fn note_kept_files(out: crate::out::Printer, result: &RunResult, out_fetched: bool) {
    let written: Vec<_> = result
        .files
        .iter()
        .filter(|file| file.kind == RunFileKind::File && !(out_fetched && file.path.starts_with("out/")))
        .collect();
    if !written.is_empty() {
        let bytes: u64 = written.iter().map(|file| file.bytes).sum();
        out.note(format_args!(
            "kept {} ({}): bkg runs files {} --output DIR",
            crate::out::count(written.len(), "file", "files"),
            format_size(bytes),
            result.id
        ));
    }
    if let Some(reason) = &result.files_not_kept {
        out.note(format_args!("{}", bkg_schema::without_controls(reason)));
    }
}

fn files_table(files: &RunFiles) -> String {
    let rows = files.files.iter().map(|file| {
        vec![file.path.clone(), file.kind.as_str().to_owned(), format_size(file.bytes), file.sha256.clone()]
    });
    crate::table::render(&["PATH", "KIND", "SIZE", "SHA256"], &[2], &[], rows, crate::table::width())
}

/// Where a kept file goes under `dir`: its path as listed, which must stay under `dir`.
fn target(dir: &Path, path: &str) -> Result<PathBuf, CliError> {
    let relative = Path::new(path);
    if path.is_empty() || !relative.components().all(|part| matches!(part, Component::Normal(_))) {
        return Err(CliError::new(
            BKG_FAILED,
            format!("the agent listed a file path `{path}` that would leave {}", dir.display()),
        ));
    }
    Ok(dir.join(relative))
}

/// Fetches every file into `dir`, streamed to disk and checked against its SHA-256. Nothing in
/// `dir` is overwritten: an existing file stops the fetch before anything is written.
async fn fetch_files(client: &AgentClient, files: &RunFiles, dir: &Path) -> Result<(), CliError> {
    let targets = files.files.iter().map(|file| target(dir, &file.path)).collect::<Result<Vec<_>, _>>()?;
    if let Some(existing) = targets.iter().find(|target| target.exists()) {
        return Err(CliError::usage(format!(
            "{} exists; nothing was overwritten (fetch into another --output)",
            existing.display()
        )));
    }
    fetch_files_to(client, &files.run_id, files.files.iter().zip(targets)).await
}

/// After `bkg exe -o DIR`: writes into `DIR` each file of /workspace/out/ that the run kept but
/// the run's archive did not bring (one ended by its process limit takes pid 1 with it, which
/// sends the archive). Files already in `DIR` stay as they are.
pub async fn fetch_kept_out_files(client: &AgentClient, result: &RunResult, dir: &Path) -> Result<(), CliError> {
    let mut missing = Vec::new();
    for file in result.files.iter().filter(|file| file.kind == RunFileKind::File) {
        if let Some(inside) = file.path.strip_prefix("out/") {
            let target = target(dir, inside)?;
            if !target.exists() {
                missing.push((file, target));
            }
        }
    }
    fetch_files_to(client, &result.id, missing).await
}

/// Fetches each file of run `run_id` to its target, streamed to disk and checked against its
/// SHA-256.
async fn fetch_files_to(
    client: &AgentClient,
    run_id: &str,
    files: impl IntoIterator<Item = (&RunFile, PathBuf)>,
) -> Result<(), CliError> {
    for (file, target) in files {
        let target = &target;
        let path = format!("/api/v1/runs/{run_id}/files/{}", encode_path(&file.path));
        let Some(mut response) = client.open_found(&path).await? else {
            return Err(CliError::new(BKG_FAILED, format!("the agent no longer has {} of run {run_id}", file.path)));
        };
        let write_error =
            |error: std::io::Error| CliError::new(BKG_FAILED, format!("cannot write {}: {error}", target.display()));
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(write_error)?;
        }
        let partial = target.with_file_name(format!(
            ".{}.part",
            target.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let mut writer = tokio::fs::File::create(&partial).await.map_err(write_error)?;
        let mut hasher = Sha256::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(client.unreachable(error));
                }
            };
            hasher.update(&chunk);
            writer.write_all(&chunk).await.map_err(write_error)?;
        }
        writer.flush().await.map_err(write_error)?;
        drop(writer);
        let digest = hex::encode(hasher.finalize());
        if digest != file.sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(CliError::new(
                BKG_FAILED,
                format!("{} arrived with SHA-256 {digest}, not {}: not written", file.path, file.sha256),
            ));
        }
        tokio::fs::rename(&partial, target).await.map_err(write_error)?;
    }
    Ok(())
}

/// A kept file's path in a URL: each segment percent-encoded, the slashes kept.
fn encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// When, in UTC to the second (RFC 3339).
pub fn time(at_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string()
}

/// When, in UTC to the minute, for tables: `2026-11-28 01:36`.
fn short_time(at_ms: u64) -> String {
    let full = time(at_ms);
    full.get(..16).map_or(full.clone(), |minutes| minutes.replacen('T', " ", 1))
}

/// How the run ended, in a word or two.
pub fn outcome(run: &RunRecord) -> String {
    if run.finished_at_ms.is_none() {
        return if run.queued { "queued" } else { "running" }.into();
    }
    match (ending(run.killed_by, run.exit_code, run.signal), &run.error) {
        (Some(ending), _) => ending,
        (None, Some(_)) => "failed".into(),
        (None, None) => "-".into(),
    }
}

/// A run's end in a word or two (`bkg_schema::run_ending`), its limit by its JSON name.
pub fn ending(killed_by: Option<KilledBy>, exit_code: Option<i32>, signal: Option<i32>) -> Option<String> {
    bkg_schema::run_ending(killed_by, exit_code, signal, KilledBy::as_str)
}

/// The sandbox's name from its id (`NAME-HASH`), `-` for a temporary run.
fn sandbox_name(run: &RunRecord) -> String {
    run.sandbox_id
        .as_deref()
        .map(|id| bkg_schema::sandbox::sandbox_name_of(id).to_owned())
        .unwrap_or_else(|| "-".into())
}

fn or_dash(value: Option<u64>, format: fn(u64) -> String) -> String {
    value.map_or_else(|| "-".into(), format)
}

/// What ran: the interpreter, or `cp` for a run that only held its sandbox for a file transfer.
fn kind(run: &RunRecord) -> &'static str {
    if run.file_transfer { "cp" } else { run.language.as_str() }
}

/// The `bkg runs ls` table.
pub fn runs_table(runs: &[RunRecord], width: Option<u16>) -> String {
    let rows = runs.iter().map(|run| {
        vec![
            run.id.clone(),
            sandbox_name(run),
            kind(run).to_owned(),
            short_time(run.started_at_ms),
            outcome(run),
            or_dash(run.wall_ms, short_duration),
            or_dash(run.cpu_ms, short_duration),
            or_dash(run.peak_memory_bytes, format_size),
            run.namespace.clone(),
        ]
    });
    // On an 80-column terminal the whole ids fit, with what `bkg runs show ID` adds left out.
    crate::table::render_fitting(
        &["ID", "SANDBOX", "TYPE", "STARTED (UTC)", "OUTCOME", "WALL", "CPU", "MEMORY", "NAMESPACE"],
        &[5, 6, 7],
        &[1, 8],
        rows.collect(),
        width,
        &[8, 7, 6, 2],
    )
}

/// A duration in a few characters: 14ms, 2.5s, 1m05s, 2h03m.
pub fn short_duration(millis: u64) -> String {
    match millis {
        0..1_000 => format!("{millis}ms"),
        1_000..60_000 => format!("{:.1}s", millis as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", millis / 60_000, millis / 1000 % 60),
        _ => format!("{}h{:02}m", millis / 3_600_000, millis / 60_000 % 60),
    }
}

/// `bkg runs show`: one field a line.
pub fn describe(run: &RunRecord) -> String {
    let limits = &run.limits;
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<11}{value}\n"));
    line("id", run.id.clone());
    line("sandbox", run.sandbox_id.clone().unwrap_or_else(|| "- (temporary)".into()));
    line("namespace", run.namespace.clone());
    line("type", kind(run).to_owned());
    line("started", time(run.started_at_ms));
    line("finished", run.finished_at_ms.map_or_else(|| "-".into(), time));
    line("outcome", outcome(run));
    line("wall", or_dash(run.wall_ms, format_duration_ms));
    line("cpu", or_dash(run.cpu_ms, format_duration_ms));
    line("memory", run.peak_memory_bytes.map_or_else(|| "-".into(), |bytes| format!("{} peak", format_size(bytes))));
    line(
        "output",
        format!(
            "{} stdout · {} stderr",
            or_dash(run.stdout_bytes, format_size),
            or_dash(run.stderr_bytes, format_size)
        ),
    );
    line(
        "limits",
        format!(
            "cpus {} · memory {} · timeout {} · disk {} · pids {}",
            format_cpus(limits.cpu_millis),
            format_size(limits.memory_bytes),
            format_duration_ms(limits.timeout_ms),
            format_size(limits.disk_bytes),
            limits.pids
        ),
    );
    if let Some(error) = &run.error {
        // An install's error quotes pip's or npm's lines: each stays under the value column.
        line("error", error.trim_end().replace('\n', &format!("\n{:11}", "")));
    }
    line("cleaned up", if run.cleaned_up { "yes" } else { "not yet" }.to_owned());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ending_says_the_limit_and_the_exit_code_the_script_still_gave() {
        assert_eq!(ending(Some(KilledBy::Disk), Some(1), None).as_deref(), Some("disk, exit 1"));
        assert_eq!(ending(Some(KilledBy::Memory), None, Some(9)).as_deref(), Some("memory"));
        assert_eq!(ending(None, Some(3), None).as_deref(), Some("exit 3"));
        assert_eq!(ending(None, None, Some(15)).as_deref(), Some("signal 15"));
        assert_eq!(ending(None, None, None), None);
    }
}
