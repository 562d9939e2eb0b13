//! `bkg audit verify` and `bkg audit tail`: read the agent's signed audit log straight from its state
//! directory, so neither needs the agent running (nor trusts it: verification is the CLI's own).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bkg_schema::audit::{self, ConfigChanged, Details, PublicKey, RunFinished, RunOutcome, SignedRecord, VerifyReport};
use serde::Serialize;

use crate::args::{AuditTailArgs, AuditVerifyArgs};
use crate::exit::{CliError, NEGATIVE, SUCCESS};
use crate::settings::Settings;

/// How often `tail -f` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `bkg audit verify`: 0 when the chain is intact, 1 at the first bad line, 125 on bad input.
pub async fn verify(settings: &Settings, mut args: AuditVerifyArgs) -> Result<i32, CliError> {
    if !args.from_db {
        refuse_remote(settings, "bkg audit verify", " (--from-db --key HEX verifies bkg_db's copy through it)")?;
        if args.files.is_empty() {
            args.state_dir = Some(audit_state_dir(settings, args.state_dir).await?);
        }
        return verify_to(&args, &mut io::stdout().lock(), &mut io::stderr().lock());
    }
    // This host's key is not a remote agent's (found by a new-user trial: the machine agent's
    // audit.pub was used, for an agent bkg_db holds nothing of, and said "ok").
    if args.key.is_none() && settings.remote.is_some() {
        return Err(CliError::usage(
            // Read on its host, not asked of the agent whose log is checked (found by a new-user
            // trial: `bkg agent status` was named, which does not show it).
            "with --remote, give --key HEX or FILE: the remote agent's public key, the file STATE_DIR/audit.pub on its host (`sudo cat /var/lib/bkg/audit.pub` for the default state directory)",
        ));
    }
    if args.key.is_none() {
        args.state_dir = Some(audit_state_dir(settings, args.state_dir).await?);
    }
    // bkg_db holds the agent's lines in seq order: verify them as one file, with the agent's key.
    let state_dir = state_dir(args.state_dir.as_deref());
    let key = load_key(args.key.as_deref(), &state_dir.join("audit.pub"))?;
    let client = crate::client::AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;
    let lines: String = client.get_text(&format!("/api/v1/sync/audit/{}", key.agent_id())).await?;
    let copy = tempfile::Builder::new()
        .prefix("bkg-audit-from-db-")
        .suffix(".jsonl")
        .tempfile()
        .map_err(|error| CliError::internal(format!("cannot make a temporary file: {error}")))?;
    std::fs::write(copy.path(), lines).map_err(|error| CliError::internal(error.to_string()))?;
    let mut report =
        audit::verify(&[copy.path().to_path_buf()], &key).map_err(|error| CliError::usage(error.to_string()))?;
    // The copy is gone when this returns: a bad line is named where it is, bkg_db's copy of the
    // agent's log, in seq order.
    if let Some(bad) = &mut report.first_bad {
        bad.file = PathBuf::from(format!("bkg_db (agent {}, line in seq order)", key.agent_id()));
    }
    // Nothing to check is no "ok" (found by a new-user trial: a wrong --key named an agent bkg_db
    // holds nothing of).
    if report.records == 0 && report.first_bad.is_none() {
        return Err(CliError::new(
            NEGATIVE,
            format!(
                "bkg_db holds no records of agent {}: is the key this agent's, and has it synced (`bkg sync status`)?",
                key.agent_id()
            ),
        ));
    }
    // What is not in the copy is said, so that "intact" is not read as "complete" (found by a
    // new-user trial): what the agent has not shipped yet, and what bkg_db lost (a restore from
    // an older backup, which the agent sends again). Counted from this agent's own log, the
    // copy's records being its seqs from the first.
    if args.key.is_none()
        && report.first_bad.is_none()
        && let Some(newest) = newest_local_seq(&state_dir)
        && newest > report.records
    {
        settings.out.note(format_args!(
            "{} not in bkg_db yet: the copy checked ends at seq {}, the agent's log at {newest} (`bkg sync status`)",
            crate::out::count(
                (newest - report.records) as usize,
                "of this agent's events is",
                "of this agent's events are"
            ),
            report.records
        ));
    }
    let from = format!("bkg_db's copy of agent {}", key.agent_id());
    print_report(&report, Some(&from), args.json, &mut io::stdout().lock(), &mut io::stderr().lock())
}

/// The state directory whose audit log is meant: `--state-dir` when given, else that of the
/// agent on the socket when it answers (as `bkg doctor` finds it), else, only when the socket
/// is the machine's, the default (`BKG_STATE_DIR`, then the user's), said since it is a guess:
/// another socket's agent keeps its log elsewhere (found by a new-user trial: with a stopped
/// agent on a socket of its own, the machine agent's log was verified in its stead). An agent
/// that answers but keeps its configuration from this caller (a member of its socket's group)
/// keeps its audit log from them too: that is the error, not this user's own missing directory.
async fn audit_state_dir(settings: &Settings, given: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(given) = given {
        return Ok(given);
    }
    let default = bkg_schema::paths::default_state_dir();
    let client = match settings.endpoint().and_then(|endpoint| crate::client::AgentClient::new(&endpoint)) {
        Ok(client) if settings.remote.is_none() => client,
        _ => return Ok(default),
    };
    let guess = |why: String| match client.location() == bkg_schema::paths::MACHINE_SOCKET {
        true => {
            settings.out.note(format_args!("{why}: reading the log of {}", default.display()));
            Ok(default.clone())
        }
        false => Err(CliError::usage(format!(
            "{why} to say where its audit log is: give --state-dir DIR (its state directory)"
        ))),
    };
    if !client.is_up()? {
        return guess(format!("no agent answers on {}", client.location()));
    }
    match client.get::<bkg_schema::AgentInfo>("/api/v1/agent").await {
        Ok(info) => Ok(PathBuf::from(info.state_dir)),
        Err(_) if !nix::unistd::geteuid().is_root() => Err(CliError::new(
            crate::exit::BKG_FAILED,
            "the agent's audit log is its admins' to read: run `sudo bkg audit …`, or give --state-dir DIR of a log you may read",
        )),
        Err(error) => guess(format!(
            "the agent on {} did not answer ({})",
            client.location(),
            error.message.lines().next().unwrap_or_default()
        )),
    }
}

/// The log files are this host's: a remote agent's are on its own host, out of reach.
fn refuse_remote(settings: &Settings, command: &str, instead: &str) -> Result<(), CliError> {
    match settings.remote {
        Some(_) => Err(CliError::usage(format!(
            "{command} reads the audit log on this host; run it on the remote agent's host{instead}"
        ))),
        None => Ok(()),
    }
}

pub fn verify_to(args: &AuditVerifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<i32, CliError> {
    // A file that is not there is the mistake to name, not the key that would sit beside it.
    if let Some((file, error)) = args.files.iter().find_map(|file| File::open(file).err().map(|error| (file, error))) {
        return Err(CliError::usage(format!("cannot read {}: {error}", file.display())));
    }
    // A directory given stands for its log files (`bkg audit verify STATE_DIR/audit`).
    let mut given = Vec::new();
    for file in &args.files {
        if file.is_dir() {
            given.extend(list_log(file)?.into_iter().map(|(_, path)| path));
        } else {
            given.push(file.clone());
        }
    }
    let (files, default_key) = match given.first() {
        Some(first) => (given.clone(), key_beside(first)),
        None => {
            let state_dir = state_dir(args.state_dir.as_deref());
            let files = list_log(&state_dir.join("audit"))?.into_iter().map(|(_, path)| path).collect();
            (files, state_dir.join("audit.pub"))
        }
    };
    let key = load_key(args.key.as_deref(), &default_key)?;
    let report = audit::verify(&files, &key).map_err(|error| CliError::usage(error.to_string()))?;
    print_report(&report, None, args.json, out, err)
}

/// The verdict, as JSON on `out` or a line on `err`; 0 when intact, 1 at a bad line. `from` names
/// where the records came from when not from the log's files.
fn print_report(
    report: &VerifyReport,
    from: Option<&str>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    if json {
        emit(out, &report_json(report)?)?;
    } else {
        emit(err, &report_line(report, from))?;
    }
    Ok(if report.first_bad.is_some() { NEGATIVE } else { SUCCESS })
}

fn report_line(report: &VerifyReport, from: Option<&str>) -> String {
    let records = crate::out::count(report.records as usize, "record", "records");
    match (&report.first_bad, from) {
        (None, Some(from)) => format!("audit: ok, {records} in {from}, chain intact"),
        (None, None) => {
            format!("audit: ok, {records} in {}, chain intact", crate::out::count(report.files, "file", "files"))
        }
        (Some(bad), _) => format!("audit: {}:{}: {}: {}", bad.file.display(), bad.line, bad.reason, bad.detail),
    }
}

/// `--json`: a struct, so the fields keep their documented order.
#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    records: u64,
    files: usize,
    first_bad: Option<JsonBadLine<'a>>,
}

#[derive(Serialize)]
struct JsonBadLine<'a> {
    file: String,
    line: u64,
    reason: &'static str,
    detail: &'a str,
}

fn report_json(report: &VerifyReport) -> Result<String, CliError> {
    let first_bad = report.first_bad.as_ref().map(|bad| JsonBadLine {
        file: bad.file.display().to_string(),
        line: bad.line,
        reason: bad.reason.as_str(),
        detail: &bad.detail,
    });
    let json = JsonReport { ok: first_bad.is_none(), records: report.records, files: report.files, first_bad };
    crate::out::json_text(&json)
}

/// Where `audit.pub` is for a log given as files: its directory sits in the state directory,
/// named without `..` (found by a new-user trial: `cannot read the audit key ./../audit.pub`).
fn key_beside(file: &Path) -> PathBuf {
    let dir = match std::fs::canonicalize(file) {
        Ok(file) => file.parent().and_then(Path::parent).map(Path::to_path_buf),
        Err(_) => None,
    };
    dir.unwrap_or_else(|| file.parent().unwrap_or(Path::new(".")).join("..")).join("audit.pub")
}

/// `--key` as a file holding the key's hex, else as the hex itself; without it, `default`.
fn load_key(given: Option<&str>, default: &Path) -> Result<PublicKey, CliError> {
    let (text, source) = match given {
        Some(given) if !Path::new(given).exists() => (given.to_owned(), "--key".to_owned()),
        _ => {
            let path = given.map_or(default, Path::new);
            let text = std::fs::read_to_string(path).map_err(|error| {
                let hint = root_only_hint(&error).unwrap_or(match error.kind() {
                    // audit.key is the agent's secret key, 32 raw bytes: the public one is its hex.
                    std::io::ErrorKind::InvalidData => {
                        " (not text: give the agent's public key, audit.pub, not its secret audit.key)"
                    }
                    _ if given.is_none() => " (give the agent's public key with --key)",
                    _ => "",
                });
                CliError::usage(format!("cannot read the audit key {}: {error}{hint}", path.display()))
            })?;
            (text, path.display().to_string())
        }
    };
    PublicKey::from_hex(text.trim()).map_err(|error| {
        // A path that is not there reads as the hex itself: say it is neither (found by a
        // new-user trial: `--key /nonexistent` was told about hex digits only).
        let neither = match given {
            Some(given) if source == "--key" && given.contains('/') => {
                format!(" ({given} is no file either)")
            }
            _ => String::new(),
        };
        CliError::usage(format!("bad audit key in {source}: {error}{neither}"))
    })
}

fn state_dir(given: Option<&Path>) -> PathBuf {
    given.map_or_else(bkg_schema::paths::default_state_dir, Path::to_owned)
}

/// The hint for a file of the agent's this user may not read: they are root's.
fn root_only_hint(error: &std::io::Error) -> Option<&'static str> {
    (error.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root())
        .then_some(" (the agent's files are root's: run `sudo bkg audit …`)")
}

fn list_log(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CliError> {
    let files = audit::log_files(dir).map_err(|error| {
        let hint = root_only_hint(&error).unwrap_or_default();
        CliError::usage(format!("cannot read the audit log {}: {error}{hint}", dir.display()))
    })?;
    if files.is_empty() {
        return Err(CliError::usage(format!("no audit log in {}", dir.display())));
    }
    Ok(files)
}

fn emit(out: &mut dyn Write, text: &str) -> Result<(), CliError> {
    writeln!(out, "{text}").map_err(|error| {
        crate::exit::reader_gone(&error)
            .unwrap_or_else(|| CliError::usage(crate::out::incomplete_stdout(&error.to_string())))
    })
}

/// `bkg audit tail`: the last records, then (with `-f`) new ones as they come, until interrupted.
pub async fn tail(settings: &Settings, args: AuditTailArgs) -> Result<i32, CliError> {
    refuse_remote(settings, "bkg audit tail", "")?;
    let dir = audit_state_dir(settings, args.state_dir).await?.join("audit");
    let mut tail = Tail::start(&dir, args.lines, args.json, &mut io::stdout().lock())?;
    if !args.follow {
        return Ok(SUCCESS);
    }
    let reader_gone = crate::out::stdout_closed();
    tokio::pin!(reader_gone);
    loop {
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => tail.poll(&mut io::stdout().lock())?,
            () = &mut reader_gone => return Ok(SUCCESS),
        }
    }
}

/// A reader of the log that has printed everything up to `offset` in file `index`.
pub struct Tail {
    dir: PathBuf,
    index: u64,
    /// Always at the end of a whole line: a line still being written waits for its `\n`.
    offset: u64,
    json: bool,
    /// The columns' widths of the table printed first, which later rows keep to.
    widths: Vec<u16>,
}

impl Tail {
    /// Prints the last `count` records (and, in human form, the column names).
    pub fn start(dir: &Path, count: usize, json: bool, out: &mut dyn Write) -> Result<Self, CliError> {
        let files = list_log(dir)?;
        let newest = files.last().map_or(0, |(index, _)| *index);
        let mut tail = Tail { dir: dir.to_owned(), index: newest, offset: 0, json, widths: Vec::new() };
        let mut last: Vec<Vec<u8>> = Vec::new();
        for (index, path) in files.iter().rev() {
            let bytes = read_from(path, 0)?;
            let whole = whole_lines(&bytes);
            if *index == newest {
                tail.offset = whole.len() as u64;
            }
            let mut lines: Vec<Vec<u8>> = whole.split_inclusive(|&byte| byte == b'\n').map(<[u8]>::to_vec).collect();
            let wanted = count - last.len();
            lines.drain(..lines.len().saturating_sub(wanted));
            lines.append(&mut last);
            last = lines;
            if last.len() >= count {
                break;
            }
        }
        if json {
            for line in &last {
                tail.print(line, out)?;
            }
            return Ok(tail);
        }
        // One table of the records, its column widths kept for the rows that follow; a line
        // that is not a record (a damaged log) is shown as it is, in its place.
        let rows: Vec<Option<Vec<String>>> =
            last.iter().map(|line| record_of(line).map(|record| cells(&record))).collect();
        // At least as wide as the columns' usual cells: the rows that follow, written later, line
        // up under it too (found by a new-user trial: a run id after a backlog without one did not).
        tail.widths = crate::table::widths(&AUDIT_COLUMNS, rows.iter().flatten())
            .into_iter()
            .zip(AUDIT_WIDTHS)
            .map(|(widest, least)| widest.max(least))
            .collect();
        let header = AUDIT_COLUMNS.map(str::to_owned).to_vec();
        emit(out, &crate::table::row(&tail.widths, &[0], header))?;
        for (line, row) in last.iter().zip(rows) {
            match row {
                Some(cells) => emit(out, &crate::table::row(&tail.widths, &[0], cells))?,
                None => emit(out, &not_a_record(line))?,
            }
        }
        Ok(tail)
    }

    /// Prints what was written since the last call, moving on to newer files as the log rotates.
    pub fn poll(&mut self, out: &mut dyn Write) -> Result<(), CliError> {
        loop {
            // Looked at before reading: once the next file exists, this one takes no more lines.
            let rotated = self.dir.join(audit::file_name(self.index + 1)).exists();
            let bytes = read_from(&self.dir.join(audit::file_name(self.index)), self.offset)?;
            let whole = whole_lines(&bytes);
            for line in whole.split_inclusive(|&byte| byte == b'\n') {
                self.print(line, out)?;
            }
            self.offset += whole.len() as u64;
            if !rotated {
                return Ok(());
            }
            (self.index, self.offset) = (self.index + 1, 0);
        }
    }

    fn print(&self, line: &[u8], out: &mut dyn Write) -> Result<(), CliError> {
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line));
        if self.json {
            return emit(out, &text);
        }
        match record_of(line) {
            Some(record) => emit(out, crate::table::row(&self.widths, &[0], cells(&record)).trim_end()),
            None => emit(out, &not_a_record(line)),
        }
    }
}

const AUDIT_COLUMNS: [&str; 8] = ["SEQ", "TIME", "ACTION", "ACTOR", "NAMESPACE", "SANDBOX", "RUN", "OUTCOME"];
/// The least width of each column: a run id (`run_` and 23 hex digits), the longer actions and
/// a sandbox name of some length fit.
const AUDIT_WIDTHS: [u16; 8] = [3, 19, 16, 8, 9, 24, 27, 0];

/// A line of a damaged log in the table: marked as no record, with `bkg audit verify` for why,
/// its control characters escaped (found by a new-user trial: a cut line joined to the next one
/// read as a row like the others).
fn not_a_record(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line));
    format!("(not a record; `bkg audit verify` says why) {}", bkg_schema::without_controls(&text))
}

fn record_of(line: &[u8]) -> Option<SignedRecord> {
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line)).ok()
}

fn cells(record: &SignedRecord) -> Vec<String> {
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    vec![
        record.seq.to_string(),
        format_time(record.ts_ms),
        record.action.clone(),
        bkg_schema::without_controls(&record.actor).into_owned(),
        text(&record.namespace),
        text(&record.sandbox),
        text(&record.run),
        outcome(record),
    ]
}

/// How a run ended, as `bkg runs ls` says it (`exit 0`, `timeout`, `signal 9`, `failed`) and
/// in how long; `-` for records without an outcome. The whole of it is in `--json`.
fn outcome(record: &SignedRecord) -> String {
    match record.details() {
        Ok(Details::RunFinished(RunFinished { outcome: RunOutcome::Ended(end), .. })) => {
            let how =
                crate::runs_cmd::ending(end.killed_by, end.exit_code, end.signal).unwrap_or_else(|| "ended".to_owned());
            format!("{how} in {}", bkg_schema::units::format_duration_ms(end.wall_ms))
        }
        // A row is one line: an install's error quotes pip's or npm's lines.
        Ok(Details::RunFinished(RunFinished { outcome: RunOutcome::Failed { error }, .. })) => {
            format!("failed: {}", error.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        // A run the agent's end cut short, closed by the next agent at its start.
        Ok(Details::RunInterrupted(interrupted)) => format!("interrupted: {}", interrupted.reason),
        // A key removed for good is recorded as revoked (it is, and more): the row says which.
        Ok(Details::KeyRevoked(change)) if change.deleted => format!("deleted key {}", change.key_id),
        Ok(Details::KeyRevoked(change)) => format!("revoked key {}", change.key_id),
        // Which key (found by a new-user trial: a refresh read as an anonymous `key.created`
        // beside a named `key.revoked`).
        Ok(Details::KeyCreated(change)) => format!("created {} key {}", change.role.as_str(), change.key_id),
        Ok(Details::KeyRotated(change)) => format!("rotated key {}", change.key_id),
        Ok(Details::Login(change)) => format!("session key {}", change.key_id),
        Ok(Details::LoginRefused(refused)) => {
            let who =
                refused.username.as_deref().map_or_else(|| "no such user".to_owned(), |name| format!("user {name}"));
            let from = refused.address.as_deref().map(|address| format!(" from {address}")).unwrap_or_default();
            bkg_schema::without_controls(&format!("login refused: {who}{from}")).into_owned()
        }
        // Which change (found by a new-user trial: a member's package install read as a change
        // of the agent's configuration).
        Ok(Details::ConfigChanged(change)) => bkg_schema::without_controls(&match change {
            ConfigChanged::AgentStarted(_) => "agent started".to_owned(),
            ConfigChanged::AgentStopped { agent_stopped } => format!("agent stopped: {agent_stopped}"),
            ConfigChanged::UserCreated { user_created } => format!("user created: {user_created}"),
            ConfigChanged::UserRemoved { user_removed } => format!("user removed: {user_removed}"),
            ConfigChanged::SecretSet { secret_set } => format!("secret set: {secret_set}"),
            ConfigChanged::SecretRemoved { secret_removed } => format!("secret removed: {secret_removed}"),
            ConfigChanged::EnvBuilt { requirements, .. } => format!("environment built: {}", requirements.join(" ")),
            ConfigChanged::EnvsPruned { envs_pruned } => format!("environments pruned: {}", envs_pruned.len()),
        })
        .into_owned(),
        _ => "-".to_owned(),
    }
}

/// The seq of the newest record of the audit log in `state_dir`, when it can be read.
fn newest_local_seq(state_dir: &Path) -> Option<u64> {
    let (_, newest) = list_log(&state_dir.join("audit")).ok()?.pop()?;
    let length = std::fs::metadata(&newest).ok()?.len();
    // A record is a line of a few hundred bytes: the last one is in the file's tail.
    let tail = read_from(&newest, length.saturating_sub(64 * 1024)).ok()?;
    let last = whole_lines(&tail).strip_suffix(b"\n")?.rsplit(|byte| *byte == b'\n').next()?;
    record_of(last).map(|record| record.seq)
}

/// The bytes of `path` from `offset` on.
fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, CliError> {
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read().map_err(|error| CliError::usage(format!("cannot read {}: {error}", path.display())))
}

/// `bytes` up to and with its last `\n`.
fn whole_lines(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&byte| byte == b'\n').map_or(0, |at| at + 1);
    &bytes[..end]
}

/// `2024-05-01T12:00:00.000Z` from milliseconds since the epoch, in UTC.
fn format_time(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string()
}
