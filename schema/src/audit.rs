//! The audit log: its line format, the core of its writer (building, chaining and signing records)
//! and its verifier. The agent wraps the writer with file handling (`bkg_agent::audit`); `bkg audit`
//! verifies and tails without the agent. Both sides use this module so they agree by construction.
//!
//! # Format
//!
//! A log is a directory of files `audit-NNNNNN.jsonl` (numbered from 1, read in numeric order), one
//! record per line, `\n`-terminated, compact JSON with the fields in this fixed order:
//!
//! ```text
//! {"seq":7,"ts_ms":…,"agent_id":"…","namespace":"…","actor":"uid:0","action":"run.started",
//!  "sandbox":"…","run":"…","limits":{…},"outcome":{…},"details":{…},"prev_hash":"<64 hex>","sig":"<128 hex>"}
//! ```
//!
//! `namespace`, `sandbox`, `run`, `limits`, `outcome` and `details` are left out when empty.
//!
//! - `seq` counts records from 1 across all files, with no gap.
//! - `prev_hash` is the SHA-256 of the previous line's bytes (without its `\n`), 64 zeros for the
//!   first record. The chain runs across files: the first record of a file hashes the last line
//!   of the file before it.
//! - `sig` is the ed25519 signature, by the agent's key, of exactly the bytes of the line without
//!   `,"sig":"…"`, that is: the line up to the comma before `"sig"`, followed by `}`. `sig` is
//!   always the last field, so a verifier re-derives the signed bytes from the line's text and
//!   never re-serializes: what was signed does not depend on any JSON library's formatting.
//! - `agent_id` is the first 16 hex digits of the SHA-256 of the agent's public key.
//! - Every file begins with a `log.opened` record whose `details` are
//!   `{"public_key":"<hex>","previous_file":"audit-NNNNNN.jsonl"|null}`, signed and chained like any
//!   other, so each file names the key that signs it and the file it continues.
//! - A `log.recovered` record follows the discarding of a torn line left by a crash (see the agent).
//!
//! # Verification
//!
//! [`verify`] walks the files in order and stops at the first bad line, naming its file, line number
//! (from 1) and one [`BadReason`]:
//! - `edited`: the signature, by the trusted key, does not match the line's content;
//! - `forged`: the line is well formed but was not signed by the trusted key: it names another
//!   agent, or its signature verifies under another key (one declared by a `log.opened` record);
//! - `removed`: records are missing inside a file (a `seq` gap, reported at the line after the gap),
//!   the log does not start at seq 1, a whole file is missing, or `prev_hash` does not match;
//! - `reordered`: a line's `seq` is lower than expected, or higher while the expected record comes
//!   further on;
//! - `truncated`: a line has no final `\n` (cut in the middle), or a file ends before the record
//!   that the next file continues from (reported at the line after the file's last one);
//! - `malformed`: not a JSON audit record at all.
//!
//! Limits: records cut off the end of the newest file leave no trace in the log itself; the chain
//! proves order and integrity of what is there, and the public key must be pinned (`--key`) for a
//! log whose `audit.pub` could have been replaced along with it.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Limits;

mod details;
pub use details::*;

/// The actor of the records the log writes about itself.
pub const AGENT_ACTOR: &str = "agent";

/// The actor of a record of a caller who proved no identity (a refused login).
pub const ANONYMOUS_ACTOR: &str = "anonymous";

const LOG_OPENED: &str = "log.opened";
/// The text between a record's signed body and its signature.
const SIG_FIELD: &[u8] = b",\"sig\":\"";
const SIG_HEX_LEN: usize = 128;
const SIG_SUFFIX_LEN: usize = SIG_FIELD.len() + SIG_HEX_LEN + 2;

/// The name of the log file with this number: `audit-000001.jsonl`.
pub fn file_name(index: u64) -> String {
    format!("audit-{index:06}.jsonl")
}

/// The number of a log file from its name; `None` for anything else in the directory.
pub fn file_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() < 6 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files of a directory with their numbers, in the order they were written.
pub fn log_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(index) = entry.file_name().to_str().and_then(file_index) {
            files.push((index, entry.path()));
        }
    }
    files.sort_unstable_by_key(|(index, _)| *index);
    Ok(files)
}

/// What a caller records: the log adds `seq`, `ts_ms`, `agent_id`, `prev_hash` and `sig`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// `uid:<uid>` for a local caller, `key:<id>` for an API key, `agent` for the agent itself.
    pub actor: String,
    /// `None` for events of the whole agent (configuration, sync, the log itself).
    pub namespace: Option<String>,
    pub sandbox: Option<String>,
    pub run: Option<String>,
    pub limits: Option<Limits>,
    /// The action and what it carries in `outcome` and `details`.
    pub details: Details,
}

impl AuditEvent {
    pub fn new(actor: impl Into<String>, details: Details) -> Self {
        Self { actor: actor.into(), namespace: None, sandbox: None, run: None, limits: None, details }
    }

    pub fn action(&self) -> AuditAction {
        self.details.action()
    }

    /// The record at the top of every file: the key that signs it and the file it continues.
    pub fn log_opened(public_key: &PublicKey, previous_file: Option<&str>) -> Self {
        let opened = LogOpened { public_key: public_key.to_hex(), previous_file: previous_file.map(str::to_owned) };
        Self::new(AGENT_ACTOR, Details::LogOpened(opened))
    }
}

/// The body that is signed: a struct, so the field order is fixed.
#[derive(Serialize)]
struct UnsignedRecord<'a> {
    seq: u64,
    ts_ms: u64,
    agent_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    actor: &'a str,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<&'a Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
    prev_hash: String,
}

/// A record as written. Reading is lenient (`action` is text, `limits` any JSON) so that a
/// verifier keeps working on logs written by a newer agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedRecord {
    pub seq: u64,
    pub ts_ms: u64,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub prev_hash: String,
    pub sig: String,
}

impl SignedRecord {
    /// What the record carries, typed by its action: the same types the writer used.
    pub fn details(&self) -> Result<Details, DetailsError> {
        Details::decode(&self.action, Parts { outcome: self.outcome.clone(), details: self.details.clone() })
    }

    /// What the record is about: the key of a key or login record, else its run or sandbox. The
    /// one rule for bkg_db's `changes.object_id`, the change feed's `object_id` and the Web UI's
    /// audit page (which showed nothing for key records).
    pub fn subject(&self) -> Option<String> {
        self.subject_given(self.details().ok().as_ref())
    }

    /// [`Self::subject`] when the details are decoded already.
    pub fn subject_given(&self, details: Option<&Details>) -> Option<String> {
        match details {
            Some(
                Details::KeyCreated(key) | Details::Login(key) | Details::KeyRotated(key) | Details::KeyRevoked(key),
            ) => Some(key.key_id.clone()),
            _ => self.run.clone().or_else(|| self.sandbox.clone()),
        }
    }

    /// The key a `log.opened` record declares.
    fn declared_key(&self) -> Option<PublicKey> {
        if self.action != LOG_OPENED {
            return None;
        }
        let hex = self.details.as_ref()?.get("public_key")?.as_str()?;
        PublicKey::from_hex(hex).ok()
    }

    /// The file a `log.opened` record continues.
    fn previous_file(&self) -> Option<&str> {
        if self.action != LOG_OPENED {
            return None;
        }
        self.details.as_ref()?.get("previous_file")?.as_str()
    }
}

/// Where the next record goes: its `seq` and the hash of the line before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub next_seq: u64,
    pub prev_hash: [u8; 32],
}

impl ChainHead {
    /// The head of an empty log.
    pub const GENESIS: ChainHead = ChainHead { next_seq: 1, prev_hash: [0; 32] };

    /// The head after `line` (without its `\n`), the line of record `seq`.
    pub fn after(line: &[u8], seq: u64) -> ChainHead {
        ChainHead { next_seq: seq + 1, prev_hash: Sha256::digest(line).into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("an audit public key is 64 hex digits")]
    NotHex,
    #[error("not an ed25519 public key")]
    NotOnCurve,
}

/// The agent's public key: what a verifier trusts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| KeyError::NotHex)?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| KeyError::NotOnCurve)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The first 16 hex digits of the SHA-256 of the key: short enough for every record.
    pub fn agent_id(&self) -> String {
        let mut id = hex::encode(Sha256::digest(self.0.as_bytes()));
        id.truncate(16);
        id
    }

    fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "PublicKey({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("audit record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("audit record: the serialized record is not a JSON object")]
    NotAnObject,
}

/// Builds, chains and signs records. Holds the secret key, which it wipes when dropped.
pub struct AuditSigner {
    key: SigningKey,
    public: PublicKey,
    agent_id: String,
}

impl AuditSigner {
    /// The signer for a 32-byte ed25519 secret key (seed).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let public = PublicKey(key.verifying_key());
        let agent_id = public.agent_id();
        Self { key, public, agent_id }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The signed line of `event` at `head`. Nothing advances here: the caller moves its head to
    /// [`SignedLine::next`] only once the line is safely written.
    pub fn sign(&self, head: ChainHead, ts_ms: u64, event: &AuditEvent) -> Result<SignedLine, RecordError> {
        let prev_hash = hex::encode(head.prev_hash);
        let parts = event.details.encode()?;
        let unsigned = UnsignedRecord {
            seq: head.next_seq,
            ts_ms,
            agent_id: &self.agent_id,
            namespace: event.namespace.as_deref(),
            actor: &event.actor,
            action: event.action().as_str(),
            sandbox: event.sandbox.as_deref(),
            run: event.run.as_deref(),
            limits: event.limits.as_ref(),
            outcome: parts.outcome.as_ref(),
            details: parts.details.as_ref(),
            prev_hash: prev_hash.clone(),
        };
        let mut line = serde_json::to_vec(&unsigned)?;
        let sig = hex::encode(self.key.sign(&line).to_bytes());
        if line.pop() != Some(b'}') {
            return Err(RecordError::NotAnObject);
        }
        line.extend_from_slice(SIG_FIELD);
        line.extend_from_slice(sig.as_bytes());
        line.extend_from_slice(b"\"}");
        let record = SignedRecord {
            seq: head.next_seq,
            ts_ms,
            agent_id: self.agent_id.clone(),
            namespace: event.namespace.clone(),
            actor: event.actor.clone(),
            action: event.action().as_str().to_owned(),
            sandbox: event.sandbox.clone(),
            run: event.run.clone(),
            limits: event.limits.as_ref().map(serde_json::to_value).transpose()?,
            outcome: parts.outcome,
            details: parts.details,
            prev_hash,
            sig,
        };
        let next = ChainHead::after(&line, record.seq);
        Ok(SignedLine { record, line, next })
    }
}

/// A signed record and its line, ready to be written.
#[derive(Debug, Clone)]
pub struct SignedLine {
    pub record: SignedRecord,
    line: Vec<u8>,
    next: ChainHead,
}

impl SignedLine {
    /// The line's bytes, without the `\n`.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The head once this line is written.
    pub fn next(&self) -> ChainHead {
        self.next
    }
}

/// Why a line is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReason {
    Edited,
    Removed,
    Reordered,
    Truncated,
    Forged,
    Malformed,
}

impl BadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Removed => "removed",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::Forged => "forged",
            Self::Malformed => "malformed",
        }
    }
}

impl fmt::Display for BadReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What is wrong with one line on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFault {
    pub reason: BadReason,
    pub detail: String,
}

impl LineFault {
    fn new(reason: BadReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// Parses one line (without its `\n`) and checks its signature by `key`.
pub fn check_line(line: &[u8], key: &PublicKey) -> Result<SignedRecord, LineFault> {
    check(line, key, &mut Vec::new())
}

/// As [`check_line`]; `others` gathers the foreign keys declared by `log.opened` records, so that
/// later lines signed by them are told apart from edited ones.
fn check(line: &[u8], key: &PublicKey, others: &mut Vec<PublicKey>) -> Result<SignedRecord, LineFault> {
    let record: SignedRecord = serde_json::from_slice(line)
        .map_err(|error| LineFault::new(BadReason::Malformed, format!("not an audit record: {error}")))?;
    let (body, suffix) = line.split_at(line.len().saturating_sub(SIG_SUFFIX_LEN));
    if !(suffix.starts_with(SIG_FIELD) && suffix.ends_with(b"\"}")) {
        return Err(LineFault::new(BadReason::Edited, "the line is not as signed: `sig` is not its last field"));
    }
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&record.sig, &mut signature)
        .map_err(|_| LineFault::new(BadReason::Malformed, "`sig` is not 128 hex digits"))?;
    let signature = Signature::from_bytes(&signature);
    let mut signed = Vec::with_capacity(body.len() + 1);
    signed.extend_from_slice(body);
    signed.push(b'}');
    if key.verifies(&signed, &signature) {
        return Ok(record);
    }
    if let Some(declared) = record.declared_key().filter(|declared| declared != key)
        && declared.verifies(&signed, &signature)
    {
        others.push(declared);
        return Err(LineFault::new(
            BadReason::Forged,
            format!("the file is signed by another key (agent {}), not agent {}", declared.agent_id(), key.agent_id()),
        ));
    }
    if let Some(other) = others.iter().find(|other| other.verifies(&signed, &signature)) {
        return Err(LineFault::new(
            BadReason::Forged,
            format!("signed by another key (agent {}), not agent {}", other.agent_id(), key.agent_id()),
        ));
    }
    if record.agent_id != key.agent_id() {
        return Err(LineFault::new(
            BadReason::Forged,
            format!("signed as agent {}, not by this log's key (agent {})", record.agent_id, key.agent_id()),
        ));
    }
    Err(LineFault::new(BadReason::Edited, "the signature does not match the line: it was changed after signing"))
}

/// The first bad line of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub file: PathBuf,
    /// From 1.
    pub line: u64,
    pub reason: BadReason,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    /// The records found good (all of them when `first_bad` is `None`).
    pub records: u64,
    pub first_bad: Option<BadLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Verifies `files`, in this order, as one log signed by `key`, from its first record.
pub fn verify(files: &[PathBuf], key: &PublicKey) -> Result<VerifyReport, VerifyError> {
    let present = present_seqs(files)?;
    let mut others = Vec::new();
    let mut head = ChainHead::GENESIS;
    let mut records = 0;
    let mut previous: Option<(&PathBuf, u64)> = None;
    let mut buffer = Vec::new();
    for path in files {
        let io_error = |source| VerifyError::Io { path: path.clone(), source };
        let mut reader = BufReader::new(File::open(path).map_err(io_error)?);
        let mut line_number = 0;
        loop {
            buffer.clear();
            if reader.read_until(b'\n', &mut buffer).map_err(io_error)? == 0 {
                break;
            }
            line_number += 1;
            let bad = |reason, detail| BadLine { file: path.clone(), line: line_number, reason, detail };
            let Some(line) = buffer.strip_suffix(b"\n") else {
                let detail = format!("the line is cut short: {} bytes and no newline", buffer.len());
                return Ok(VerifyReport {
                    files: files.len(),
                    records,
                    first_bad: Some(bad(BadReason::Truncated, detail)),
                });
            };
            let checked = check(line, key, &mut others)
                .map_err(|fault| bad(fault.reason, fault.detail))
                .and_then(|record| place(&record, head, &present, line_number, path, previous).map(|()| record));
            match checked {
                Ok(record) => {
                    head = ChainHead::after(line, record.seq);
                    records += 1;
                }
                Err(first_bad) => return Ok(VerifyReport { files: files.len(), records, first_bad: Some(first_bad) }),
            }
        }
        previous = Some((path, line_number));
    }
    Ok(VerifyReport { files: files.len(), records, first_bad: None })
}

/// Checks that a well-signed `record`, line `line_number` of `path`, is the one expected at `head`.
fn place(
    record: &SignedRecord,
    head: ChainHead,
    present: &[u64],
    line_number: u64,
    path: &Path,
    previous: Option<(&PathBuf, u64)>,
) -> Result<(), BadLine> {
    let bad = |reason, detail| BadLine { file: path.to_owned(), line: line_number, reason, detail };
    let expected = head.next_seq;
    let last = expected - 1;
    if record.seq < expected {
        return Err(bad(BadReason::Reordered, format!("seq {} comes after seq {last}", record.seq)));
    }
    if record.seq > expected {
        let missing = record.seq - expected;
        if present.binary_search(&expected).is_ok() {
            return Err(bad(
                BadReason::Reordered,
                format!("seq {} comes before seq {expected}, which is further on", record.seq),
            ));
        }
        let previous_name = previous.and_then(|(previous, _)| previous.file_name()).and_then(|name| name.to_str());
        if line_number == 1 && previous.is_some() && record.action != LOG_OPENED {
            return Err(bad(
                BadReason::Removed,
                format!("the file's top is missing: it begins at seq {} without its {LOG_OPENED} record", record.seq),
            ));
        }
        if line_number == 1
            && let Some(wanted) = record.previous_file()
            && previous_name != Some(wanted)
        {
            return Err(bad(
                BadReason::Removed,
                format!("the file before this one, {wanted}, is missing ({missing} records from seq {expected})"),
            ));
        }
        // The file continues the one before, which stops short of it: the end of that file is gone.
        if line_number == 1
            && let Some((previous, lines)) = previous
        {
            let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
            return Err(BadLine {
                file: previous.clone(),
                line: lines + 1,
                reason: BadReason::Truncated,
                detail: format!(
                    "the file ends at seq {last} but {name} continues from seq {}: {missing} records cut off",
                    record.seq
                ),
            });
        }
        let (records, are) = if missing == 1 { ("record", "is") } else { ("records", "are") };
        let detail = if last == 0 {
            format!("the log begins at seq {}: {missing} earlier {records} {are} missing", record.seq)
        } else {
            format!("seq {} follows seq {last}: {missing} {records} {are} missing", record.seq)
        };
        return Err(bad(BadReason::Removed, detail));
    }
    if record.prev_hash != hex::encode(head.prev_hash) {
        let detail = if last == 0 {
            "the first record does not start the chain (prev_hash is not zeros)".to_owned()
        } else {
            format!("prev_hash is not the hash of seq {last}'s line: the record it followed was replaced")
        };
        return Err(bad(BadReason::Removed, detail));
    }
    Ok(())
}

/// Every `seq` in `files`, sorted: tells a record that is out of place from one that is gone.
fn present_seqs(files: &[PathBuf]) -> Result<Vec<u64>, VerifyError> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let mut seqs = Vec::new();
    let mut buffer = Vec::new();
    for path in files {
        let io_error = |source| VerifyError::Io { path: path.clone(), source };
        let mut reader = BufReader::new(File::open(path).map_err(io_error)?);
        loop {
            buffer.clear();
            if reader.read_until(b'\n', &mut buffer).map_err(io_error)? == 0 {
                break;
            }
            if let Ok(record) = serde_json::from_slice::<SeqOnly>(buffer.trim_ascii_end()) {
                seqs.push(record.seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn signer(seed: u8) -> AuditSigner {
        AuditSigner::from_secret(&[seed; 32])
    }

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            namespace: Some(format!("ns{n}")),
            sandbox: Some("sbx_1".to_owned()),
            run: Some(format!("run_{n}")),
            limits: Some(Limits::DEFAULT),
            ..AuditEvent::new(
                "uid:0",
                Details::RunStarted(RunStarted { language: crate::Language::Python, started_at_ms: n }),
            )
        }
    }

    /// Signs `events` into files of `per_file` records each (after each file's header).
    fn write_log(
        dir: &Path,
        signer: &AuditSigner,
        events: u64,
        per_file: u64,
    ) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
        let mut head = ChainHead::GENESIS;
        let mut files: Vec<PathBuf> = Vec::new();
        let mut n = 0;
        while n < events {
            let previous = files.last().and_then(|path| path.file_name()).and_then(|name| name.to_str());
            let opened = signer.sign(head, 1000, &AuditEvent::log_opened(signer.public_key(), previous))?;
            let mut lines = vec![opened];
            for _ in 0..per_file.min(events - n) {
                n += 1;
                let next = lines.last().map_or(head, SignedLine::next);
                lines.push(signer.sign(next, 1000 + n, &event(n))?);
            }
            head = lines.last().map_or(head, SignedLine::next);
            let path = dir.join(file_name(files.len() as u64 + 1));
            let mut file = File::create(&path)?;
            for line in &lines {
                file.write_all(line.line())?;
                file.write_all(b"\n")?;
            }
            files.push(path);
        }
        Ok(files)
    }

    fn lines_of(path: &Path) -> Result<Vec<String>, io::Error> {
        Ok(std::fs::read_to_string(path)?.lines().map(str::to_owned).collect())
    }

    fn write_lines(path: &Path, lines: &[String]) -> io::Result<()> {
        std::fs::write(path, lines.iter().map(|line| format!("{line}\n")).collect::<String>())
    }

    fn first_bad(files: &[PathBuf], key: &PublicKey) -> Result<Option<(PathBuf, u64, BadReason)>, VerifyError> {
        Ok(verify(files, key)?.first_bad.map(|bad| (bad.file, bad.line, bad.reason)))
    }

    #[test]
    fn a_line_is_its_signed_body_with_sig_last() -> TestResult {
        let signer = signer(1);
        let signed = signer.sign(ChainHead::GENESIS, 5, &event(1))?;
        let text = std::str::from_utf8(signed.line())?;
        assert!(text.starts_with(&format!(
            "{{\"seq\":1,\"ts_ms\":5,\"agent_id\":\"{}\",\"namespace\":\"ns1\"",
            signer.agent_id()
        )));
        assert!(text.contains(&format!("\"prev_hash\":\"{}\",\"sig\":\"{}\"}}", "0".repeat(64), signed.record.sig)));
        assert_eq!(check_line(signed.line(), signer.public_key()), Ok(signed.record.clone()));
        assert_eq!(serde_json::from_slice::<SignedRecord>(signed.line())?, signed.record);
        assert_eq!(signed.next().next_seq, 2);
        assert_eq!(signer.agent_id().len(), 16);
        Ok(())
    }

    #[test]
    fn public_keys_round_trip_through_hex() -> TestResult {
        let key = *signer(2).public_key();
        assert_eq!(PublicKey::from_hex(&key.to_hex())?, key);
        assert!(matches!(PublicKey::from_hex("abc"), Err(KeyError::NotHex)));
        assert!(matches!(PublicKey::from_hex(&"zz".repeat(32)), Err(KeyError::NotHex)));
        assert_eq!(format!("{key:?}"), format!("PublicKey({})", key.to_hex()));
        Ok(())
    }

    #[test]
    fn file_names_sort_by_number() -> TestResult {
        assert_eq!(file_name(7), "audit-000007.jsonl");
        assert_eq!(file_index("audit-1234567.jsonl"), Some(1_234_567));
        assert_eq!(file_index("audit-000003.jsonl.torn-17"), None);
        assert_eq!(file_index("audit-12.jsonl"), None);
        let dir = tempfile::tempdir()?;
        for index in [10, 2, 1_000_000] {
            File::create(dir.path().join(file_name(index)))?;
        }
        File::create(dir.path().join("audit.pub"))?;
        let indexes: Vec<u64> = log_files(dir.path())?.into_iter().map(|(index, _)| index).collect();
        assert_eq!(indexes, [2, 10, 1_000_000]);
        Ok(())
    }

    #[test]
    fn a_clean_log_verifies_across_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let signer = signer(3);
        let files = write_log(dir.path(), &signer, 7, 3)?;
        let report = verify(&files, signer.public_key())?;
        assert_eq!(report, VerifyReport { files: 3, records: 10, first_bad: None });
        Ok(())
    }

    #[test]
    fn a_missing_file_is_removed_and_a_missing_tail_is_truncated() -> TestResult {
        let dir = tempfile::tempdir()?;
        let signer = signer(4);
        let files = write_log(dir.path(), &signer, 9, 3)?;
        let key = signer.public_key();
        let without_middle = [files[0].clone(), files[2].clone()];
        assert_eq!(first_bad(&without_middle, key)?, Some((files[2].clone(), 1, BadReason::Removed)));
        assert_eq!(first_bad(&files[1..], key)?, Some((files[1].clone(), 1, BadReason::Removed)));
        let mut first = lines_of(&files[0])?;
        first.pop();
        write_lines(&files[0], &first)?;
        assert_eq!(first_bad(&files, key)?, Some((files[0].clone(), 4, BadReason::Truncated)));
        Ok(())
    }

    #[test]
    fn a_duplicated_line_is_out_of_order_and_garbage_is_malformed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let signer = signer(5);
        let files = write_log(dir.path(), &signer, 4, 4)?;
        let mut lines = lines_of(&files[0])?;
        let replayed = lines[2].clone();
        lines.push(replayed);
        write_lines(&files[0], &lines)?;
        assert_eq!(first_bad(&files, signer.public_key())?, Some((files[0].clone(), 6, BadReason::Reordered)));
        lines[1] = "{\"seq\":".to_owned();
        write_lines(&files[0], &lines)?;
        assert_eq!(first_bad(&files, signer.public_key())?, Some((files[0].clone(), 2, BadReason::Malformed)));
        Ok(())
    }

    #[test]
    fn a_file_signed_by_another_key_is_forged_from_its_header() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (ours, theirs) = (signer(6), signer(7));
        let files = write_log(dir.path(), &ours, 6, 3)?;
        // The intruder continues the chain correctly, but with its own key and agent id.
        let last = lines_of(&files[1])?.pop().unwrap_or_default();
        let record = check_line(last.as_bytes(), ours.public_key()).map_err(|fault| fault.detail)?;
        let opened = AuditEvent::log_opened(theirs.public_key(), Some("audit-000002.jsonl"));
        let header = theirs.sign(ChainHead::after(last.as_bytes(), record.seq), 9, &opened)?;
        let forged = theirs.sign(header.next(), 9, &event(99))?;
        let path = dir.path().join(file_name(3));
        write_lines(&path, &[String::from_utf8(header.line().to_vec())?, String::from_utf8(forged.line().to_vec())?])?;
        let mut all = files.clone();
        all.push(path.clone());
        assert_eq!(first_bad(&all, ours.public_key())?, Some((path, 1, BadReason::Forged)));
        Ok(())
    }

    #[test]
    fn a_line_signed_by_another_key_under_our_agent_id_is_edited() -> TestResult {
        let (ours, theirs) = (signer(8), signer(9));
        let mut line = theirs.sign(ChainHead::GENESIS, 1, &event(1))?.line().to_vec();
        let text = String::from_utf8(line.clone())?.replace(theirs.agent_id(), ours.agent_id());
        line = text.into_bytes();
        let fault = check_line(&line, ours.public_key()).err().map(|fault| fault.reason);
        assert_eq!(fault, Some(BadReason::Edited));
        let reformatted = String::from_utf8(ours.sign(ChainHead::GENESIS, 1, &event(1))?.line().to_vec())?
            .replace(",\"sig\"", ", \"sig\"");
        let fault = check_line(reformatted.as_bytes(), ours.public_key()).err().map(|fault| fault.reason);
        assert_eq!(fault, Some(BadReason::Edited));
        Ok(())
    }
}
