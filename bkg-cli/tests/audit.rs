//! `bkg audit verify` and `bkg audit tail` on logs written with the schema crate's writer core (the
//! CLI cannot depend on the agent). The command's module is compiled into this test as it is into
//! `bkg`, so that its output can be captured.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bkg_cli::exit;
use bkg_schema::Limits;
use bkg_schema::audit::{
    AuditEvent, AuditSigner, ChainHead, Details, RunEnd, RunFinished, RunFinishedDetails, RunOutcome, file_name,
};

use bkg_cli::args::{AuditTailArgs, AuditVerifyArgs, GlobalArgs};
use bkg_cli::audit_cmd::{self, Tail};
use bkg_cli::out::Printer;
use bkg_cli::settings::Settings;

type TestResult = Result<(), Box<dyn Error>>;

/// A log in `STATE_DIR/audit/` written the way the agent writes it, a header atop each file.
struct TestLog {
    state: tempfile::TempDir,
    signer: AuditSigner,
    head: ChainHead,
    index: u64,
}

impl TestLog {
    fn new() -> Result<Self, Box<dyn Error>> {
        let state = tempfile::tempdir()?;
        std::fs::create_dir(state.path().join("audit"))?;
        let signer = AuditSigner::from_secret(&[3; 32]);
        std::fs::write(state.path().join("audit.pub"), format!("{}\n", signer.public_key().to_hex()))?;
        let mut log = Self { state, signer, head: ChainHead::GENESIS, index: 0 };
        log.rotate()?;
        Ok(log)
    }

    fn dir(&self) -> PathBuf {
        self.state.path().join("audit")
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir().join(file_name(index))
    }

    fn write(&mut self, event: &AuditEvent) -> Result<(), Box<dyn Error>> {
        let signed = self.signer.sign(self.head, 1_714_564_800_000 + self.head.next_seq, event)?;
        let mut file = OpenOptions::new().create(true).append(true).open(self.path(self.index))?;
        file.write_all(signed.line())?;
        file.write_all(b"\n")?;
        self.head = signed.next();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), Box<dyn Error>> {
        let previous = (self.index > 0).then(|| file_name(self.index));
        self.index += 1;
        self.write(&AuditEvent::log_opened(self.signer.public_key(), previous.as_deref()))
    }

    fn event(&mut self, n: u64) -> Result<(), Box<dyn Error>> {
        self.write(&AuditEvent {
            namespace: Some(format!("ns{n}")),
            sandbox: Some(format!("sbx_{n}")),
            run: Some(format!("run_{n}")),
            limits: Some(Limits::DEFAULT),
            ..AuditEvent::new(
                "uid:0",
                Details::RunFinished(RunFinished {
                    outcome: RunOutcome::Ended(RunEnd {
                        exit_code: i32::try_from(n).ok(),
                        signal: None,
                        killed_by: None,
                        wall_ms: 1,
                        cpu_ms: 1,
                        peak_memory_bytes: 1,
                        disk_bytes_used: 0,
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                        truncated: false,
                        files: Vec::new(),
                    }),
                    details: RunFinishedDetails {
                        language: Some(bkg_schema::Language::Python),
                        finished_at_ms: n,
                        denials: Vec::new(),
                        network_denials: Vec::new(),
                    },
                }),
            )
        })
    }

    /// Ten events in three files.
    fn ten() -> Result<Self, Box<dyn Error>> {
        let mut log = Self::new()?;
        for n in 1..=10 {
            if n == 5 || n == 9 {
                log.rotate()?;
            }
            log.event(n)?;
        }
        Ok(log)
    }

    fn verify_args(&self) -> AuditVerifyArgs {
        AuditVerifyArgs {
            files: Vec::new(),
            key: None,
            state_dir: Some(self.state.path().to_owned()),
            json: false,
            from_db: false,
        }
    }
}

/// Runs `bkg audit verify` and returns its exit code, stdout and stderr.
fn run_verify(args: &AuditVerifyArgs) -> Result<(i32, String, String), exit::CliError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = audit_cmd::verify_to(args, &mut out, &mut err)?;
    Ok((code, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned()))
}

/// `CliError` is not a `std::error::Error`: tests report its message.
fn message(error: exit::CliError) -> String {
    error.message
}

fn edit_line(path: &Path, number: usize, from: &str, to: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[number - 1] = lines[number - 1].replace(from, to);
    std::fs::write(path, lines.iter().map(|line| format!("{line}\n")).collect::<String>())
}

#[test]
fn a_clean_log_is_ok_with_exit_0() -> TestResult {
    let log = TestLog::ten()?;
    let (code, out, err) = run_verify(&log.verify_args()).map_err(message)?;
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", "audit: ok, 13 records in 3 files, chain intact\n"));
    // The log's directory given stands for its files, with the key beside it.
    let by_dir = AuditVerifyArgs { files: vec![log.dir()], state_dir: None, ..log.verify_args() };
    let (code, _, err) = run_verify(&by_dir).map_err(message)?;
    assert_eq!((code, err.as_str()), (0, "audit: ok, 13 records in 3 files, chain intact\n"));
    let one = AuditVerifyArgs { files: vec![log.path(1)], state_dir: None, ..log.verify_args() };
    assert!(run_verify(&one).map_err(message)?.2.contains(" in 1 file, "), "one file is not files");
    let (code, out, err) = run_verify(&AuditVerifyArgs { json: true, ..log.verify_args() }).map_err(message)?;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "{\"ok\":true,\"records\":13,\"files\":3,\"first_bad\":null}\n");
    Ok(())
}

#[test]
fn an_edited_log_names_its_first_bad_line_with_exit_1() -> TestResult {
    let log = TestLog::ten()?;
    let file = log.path(2);
    edit_line(&file, 3, "\"exit_code\":6", "\"exit_code\":0")?;
    let (code, out, err) = run_verify(&log.verify_args()).map_err(message)?;
    assert_eq!((code, out.as_str()), (1, ""));
    let prefix = format!("audit: {}:3: edited: ", file.display());
    assert!(err.starts_with(&prefix) && err.ends_with('\n') && err.lines().count() == 1, "{err}");

    let (code, out, _) = run_verify(&AuditVerifyArgs { json: true, ..log.verify_args() }).map_err(message)?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(code, 1);
    assert_eq!((&json["ok"], &json["records"], &json["files"]), (&false.into(), &7.into(), &3.into()));
    let bad = &json["first_bad"];
    assert_eq!(
        (&bad["file"], &bad["line"], &bad["reason"]),
        (&file.display().to_string().into(), &3.into(), &"edited".into())
    );
    assert!(bad["detail"].as_str().is_some_and(|detail| !detail.is_empty()));
    Ok(())
}

#[test]
fn files_and_keys_can_be_named() -> TestResult {
    let log = TestLog::ten()?;
    let files = vec![log.path(1), log.path(2), log.path(3)];
    // audit.pub is found beside the files' directory.
    let named = AuditVerifyArgs { files: files.clone(), key: None, state_dir: None, json: false, from_db: false };
    assert_eq!(run_verify(&named).map_err(message)?.0, 0);
    let hex = log.signer.public_key().to_hex();
    let by_hex = AuditVerifyArgs { key: Some(hex), ..log.verify_args() };
    assert_eq!(run_verify(&by_hex).map_err(message)?.0, 0);
    let key_file = log.state.path().join("pinned.pub");
    std::fs::write(&key_file, format!("{}\n", AuditSigner::from_secret(&[4; 32]).public_key().to_hex()))?;
    let other = AuditVerifyArgs { key: Some(key_file.display().to_string()), ..log.verify_args() };
    let (code, _, err) = run_verify(&other).map_err(message)?;
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("audit: {}:1: forged: ", log.path(1).display())), "{err}");
    // Only part of the log: it does not start at seq 1.
    let (code, _, err) = run_verify(&AuditVerifyArgs { files: files[1..].to_vec(), ..named }).map_err(message)?;
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("audit: {}:1: removed: ", log.path(2).display())), "{err}");
    Ok(())
}

#[test]
fn bad_input_is_exit_125() -> TestResult {
    let log = TestLog::ten()?;
    let bad_key = AuditVerifyArgs { key: Some("not-a-key".to_owned()), ..log.verify_args() };
    let error = run_verify(&bad_key).err().ok_or("a bad key was accepted")?;
    assert_eq!(error.code, exit::BKG_FAILED);
    assert_eq!(error.message, "bad audit key in --key: an audit public key is 64 hex digits");
    std::fs::write(log.state.path().join("audit.pub"), "00\n")?;
    let error = run_verify(&log.verify_args()).err().ok_or("a short key was accepted")?;
    assert!(error.message.contains("64 hex digits"), "{}", error.message);
    let empty = tempfile::tempdir()?;
    let nothing = AuditVerifyArgs { state_dir: Some(empty.path().to_owned()), ..log.verify_args() };
    assert_eq!(run_verify(&nothing).err().map(|error| error.code), Some(exit::BKG_FAILED));
    let missing = AuditVerifyArgs {
        files: vec![log.dir().join("audit-000009.jsonl")],
        key: Some(log.signer.public_key().to_hex()),
        ..log.verify_args()
    };
    let error = run_verify(&missing).err().ok_or("a missing file was accepted")?;
    assert!(error.message.starts_with("cannot read "), "{}", error.message);
    Ok(())
}

#[test]
fn tail_prints_the_last_records_then_follows_across_rotation() -> TestResult {
    let mut log = TestLog::ten()?;
    let mut out = Vec::new();
    let mut tail = Tail::start(&log.dir(), 3, false, &mut out).map_err(message)?;
    let text = String::from_utf8(out)?;
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows[0].starts_with("SEQ  TIME") && rows[0].ends_with("OUTCOME"), "{text}");
    assert!(rows[1].starts_with(" 11  2024-05-01T12:00:00.011Z  log.opened  "), "{}", rows[1]);
    assert!(rows[3].starts_with(" 13  ") && rows[3].contains("sbx_10") && rows[3].ends_with("exit 10 in 1ms"));
    // Every row's columns start where the header's do.
    let run_column = rows[0].find("RUN").unwrap_or(0);
    assert!(rows[3].get(run_column..).is_some_and(|rest| rest.starts_with("run_")), "{text}");

    // Five records from the previous file on: the newest file alone has too few.
    let mut out = Vec::new();
    Tail::start(&log.dir(), 5, true, &mut out).map_err(message)?;
    let seqs: Vec<u64> = String::from_utf8(out)?
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).map(|record| record["seq"].as_u64().unwrap_or(0)))
        .collect::<Result<_, _>>()?;
    assert_eq!(seqs, [9, 10, 11, 12, 13]);

    log.event(11)?;
    log.rotate()?;
    log.event(12)?;
    // A line still being written waits for its newline.
    File::options().append(true).open(log.path(4))?.write_all(b"{\"seq\":17,")?;
    let mut out = Vec::new();
    tail.poll(&mut out).map_err(message)?;
    let text = String::from_utf8(out)?;
    let seqs: Vec<&str> = text.lines().filter_map(|row| row.split_whitespace().next()).collect();
    assert_eq!(seqs, ["14", "15", "16"], "{text}");
    assert!(text.contains("log.opened"));
    let mut out = Vec::new();
    tail.poll(&mut out).map_err(message)?;
    assert!(out.is_empty());
    Ok(())
}

/// A line that is no record (a damaged log) is marked as such in the table, its control
/// characters escaped (found by a new-user trial: a cut line joined to the next read as a row).
#[test]
fn tail_marks_a_line_that_is_no_record() -> TestResult {
    let mut log = TestLog::new()?;
    log.event(1)?;
    File::options().append(true).open(log.path(1))?.write_all(b"{\"seq\":3,\"cut\x1b[2J\n")?;
    let mut out = Vec::new();
    Tail::start(&log.dir(), 2, false, &mut out).map_err(message)?;
    let text = String::from_utf8(out)?;
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(rows[2], "(not a record; `bkg audit verify` says why) {\"seq\":3,\"cut\\u{1b}[2J", "{text}");
    Ok(())
}

#[test]
fn tail_shows_each_record_on_one_row_though_an_install_error_has_several_lines() -> TestResult {
    let mut log = TestLog::new()?;
    log.event(1)?;
    // An install's error as the agent words it, quoting the installer's lines.
    let error = "installing 1 Python package failed (pip exited with code 1); the installer said:\n\
                 ERROR: Could not find a version that satisfies the requirement six==99.0\n\
                 ERROR: No matching distribution found for six==99.0";
    log.write(&AuditEvent {
        run: Some("run_2".into()),
        ..AuditEvent::new(
            "uid:0",
            Details::RunFinished(RunFinished {
                outcome: RunOutcome::Failed { error: error.into() },
                details: RunFinishedDetails {
                    language: Some(bkg_schema::Language::Python),
                    finished_at_ms: 2,
                    denials: Vec::new(),
                    network_denials: Vec::new(),
                },
            }),
        )
    })?;
    log.event(3)?;
    let mut out = Vec::new();
    Tail::start(&log.dir(), 2, false, &mut out).map_err(message)?;
    let text = String::from_utf8(out)?;
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "a header and two records: {text}");
    assert!(rows[1].starts_with("  3  ") && rows[1].ends_with("failed: installing 1 Python package failed (pip exited with code 1); the installer said: ERROR: Could not find a version that satisfies the requirement six==99.0 ERROR: No matching distribution found for six==99.0"), "{text}");
    assert!(rows[2].starts_with("  4  ") && rows[2].ends_with("exit 3 in 1ms"), "{text}");
    Ok(())
}

#[tokio::test]
async fn the_commands_return_their_exit_codes() -> TestResult {
    let log = TestLog::ten()?;
    let settings = Settings::new(GlobalArgs::default(), Printer::new("bkg", false));
    assert_eq!(audit_cmd::verify(&settings, log.verify_args()).await.map_err(message)?, 0);
    edit_line(&log.path(1), 2, "ns1", "ns9")?;
    assert_eq!(audit_cmd::verify(&settings, log.verify_args()).await.map_err(message)?, 1);
    let tail = AuditTailArgs { lines: 1, follow: false, state_dir: Some(log.state.path().to_owned()), json: true };
    assert_eq!(audit_cmd::tail(&settings, tail).await.map_err(message)?, 0);
    Ok(())
}
