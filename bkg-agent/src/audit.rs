//! The agent's side of the audit log: its key and its files. The format, the signing and the
//! verification live in `bkg_schema::audit`, shared with `bkg audit`.
//!
//! Decisions:
//! - The key is a 32-byte ed25519 secret (raw bytes) at `STATE_DIR/audit.key`, made on first open
//!   from `getrandom(2)` (`ids::fill_random`). It is written to a temporary file created with
//!   `O_EXCL` and mode 0600, synced, then hard-linked into place, so a crash never leaves a half-written key and two
//!   agents racing agree on one. A key file that is a symlink, not owned by the agent's uid, open
//!   to group or others, or not 32 bytes is refused with an error that says how to fix it.
//! - `STATE_DIR/audit.pub` holds the public key in hex, rewritten from the secret on every open
//!   that finds the log going on with it. A key missing beside an existing log is refused, and
//!   nothing is written: a new key would make the intact log read as forged.
//!   Each log file also names the key in its `log.opened` record.
//! - One writer per log: the open log holds an exclusive `flock` on the key file.
//! - An append writes its lines with one `write` on an `O_APPEND` descriptor, and the agent appends
//!   BEFORE it changes state: a crash of the agent can leave a line for a change that never
//!   happened (the next lines tell), never a change without its line. `sync` makes the lines
//!   durable (`fdatasync`); the agent calls it right after each change, off the caller's path,
//!   so a run's result does not wait for the disk. Like the SQLite store beside it (WAL,
//!   `synchronous=NORMAL`), a power cut may lose what the last moments wrote.
//! - A crash in the middle of a write leaves a last line without `\n`. No caller was told that
//!   line was written, so on open it is moved to `audit-NNNNNN.jsonl.torn-<ms>`, the file is cut
//!   back to its last whole line, and a signed `log.recovered` record says so in the chain.
//! - A record whose state change then fails (its transaction: a full disk) is cut back off the
//!   file while the log's lock is still held (`retract_last_write`), so the chain never tells of a
//!   change that was refused and the outbox has no hole.
//! - A failed write is cut back off the file. A failed `fdatasync` (after which the page cache
//!   cannot be trusted) or a failure that could not be undone poisons the log: every later append
//!   fails until the agent reopens it, which runs the recovery above.
//! - A file is rotated when the next write would take it past `max_bytes` (64 MiB by default); a
//!   file holding only its header takes any write, so one large record cannot rotate forever, and a
//!   batch is never split across files.
//! - The key belongs to this log forever: if the newest record is not signed by it (the key was
//!   replaced), opening fails rather than start a chain no verifier could follow.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bkg_schema::MIB;
use bkg_schema::audit::{
    AuditAction, AuditEvent, AuditSigner, BadReason, ChainHead, Details, LogRecovered, PublicKey, RecordError,
    SignedLine, SignedRecord, check_line, file_name, log_files,
};
use nix::fcntl::{Flock, FlockArg};
use zeroize::Zeroizing;

use crate::ids::now_ms;

pub const DEFAULT_MAX_BYTES: u64 = 64 * MIB;
const KEY_FILE: &str = "audit.key";
const PUBLIC_KEY_FILE: &str = "audit.pub";
const LOG_DIR: &str = "audit";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit: cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "audit: the key {} is mode {mode:04o}: it must be readable by its owner only (chmod 600 {})",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("audit: the key {} belongs to uid {owner}, not to the agent's uid {uid}", path.display())]
    KeyOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("audit: the key {} is {len} bytes, not a 32-byte ed25519 secret key", path.display())]
    KeyLength { path: PathBuf, len: u64 },
    #[error(
        "audit: the log of {} is open in another agent{}: give this agent a state directory of its own with --state-dir DIR (or BKG_STATE_DIR), or stop that one first",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("audit: cannot read random bytes for a new key: {0}")]
    Random(io::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(
        "audit: the last record of {} does not continue with this agent's key ({reason}: {detail}); \
         restore this agent's audit directory and audit.key, or move them and state.db aside to start anew",
        path.display()
    )]
    ForeignLog { path: PathBuf, reason: BadReason, detail: String },
    #[error("audit: an earlier write failed and could not be undone; the log must be reopened")]
    Poisoned,
    #[error(
        "audit: the key {} is missing, but {} holds a log signed with it: restore the key (from a backup \
         of the state directory), or move the audit directory and state.db aside to start anew",
        key.display(),
        log.display()
    )]
    KeyMissing { key: PathBuf, log: PathBuf },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Io { action, path, source }
}

/// A torn last line found on open, and where it was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub bytes: u64,
    pub saved_to: PathBuf,
}

/// One line of the log with the fields the outbox indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenLine {
    pub seq: u64,
    pub ts_ms: u64,
    pub agent_id: String,
    pub namespace: Option<String>,
    pub action: String,
    pub line: String,
}

impl WrittenLine {
    fn of(signed: &SignedLine) -> Self {
        Self::from_record(&signed.record, &String::from_utf8_lossy(signed.line()))
    }

    fn from_record(record: &SignedRecord, line: &str) -> Self {
        Self {
            seq: record.seq,
            ts_ms: record.ts_ms,
            agent_id: record.agent_id.clone(),
            namespace: record.namespace.clone(),
            action: record.action.clone(),
            line: line.to_owned(),
        }
    }
}

/// The open, writable audit log of one agent.
pub struct AuditLog {
    dir: PathBuf,
    signer: AuditSigner,
    head: ChainHead,
    file: File,
    index: u64,
    /// Bytes of whole lines in the current file: where a failed write is cut back to.
    len: u64,
    /// The current file holds only its `log.opened` record.
    only_header: bool,
    max_bytes: u64,
    poisoned: bool,
    recovered: Option<TornTail>,
    /// Lines written since the last `take_written`, headers included: what the outbox must get.
    written: Vec<WrittenLine>,
    /// Lines were written since the last `sync`.
    unsynced: bool,
    /// Where the newest record's write began, for [`retract_last_write`](Self::retract_last_write).
    last_write: Option<LastWrite>,
    /// Held, never read: the lock is what keeps a second writer out.
    _lock: Flock<File>,
}

/// The log as it stood before its newest write of records.
struct LastWrite {
    len: u64,
    head: ChainHead,
    only_header: bool,
    lines: usize,
}

/// Lines written to the log, made durable by [`finish`](Self::finish) outside its lock.
pub struct PendingSync {
    file: File,
    path: PathBuf,
}

impl PendingSync {
    pub fn finish(self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(io_error("sync", &self.path))
    }
}

impl AuditLog {
    /// Opens the log of `state_dir` (creating its key and first file if need be).
    pub fn open(state_dir: &Path) -> Result<Self, AuditError> {
        Self::open_with_max_bytes(state_dir, DEFAULT_MAX_BYTES)
    }

    pub fn open_with_max_bytes(state_dir: &Path, max_bytes: u64) -> Result<Self, AuditError> {
        // A new key for an existing log would be refused below as a foreign key, after it had
        // been written and audit.pub rewritten with it: nothing is written then.
        let key = state_dir.join(KEY_FILE);
        let log = state_dir.join(LOG_DIR);
        if matches!(key.symlink_metadata(), Err(error) if error.kind() == io::ErrorKind::NotFound)
            && log_files(&log).is_ok_and(|files| !files.is_empty())
        {
            return Err(AuditError::KeyMissing { key, log });
        }
        let (lock, secret) = load_or_create_key(&key)?;
        let signer = AuditSigner::from_secret(&secret);
        let dir = state_dir.join(LOG_DIR);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_error("create", &dir)(error));
            }
            _ => {}
        }
        let files = log_files(&dir).map_err(io_error("list", &dir))?;
        let (index, path, file) = match files.last() {
            Some((index, path)) => {
                let file = OpenOptions::new().read(true).append(true).open(path).map_err(io_error("open", path))?;
                (*index, path.clone(), file)
            }
            None => {
                let path = dir.join(file_name(1));
                let file = create_log_file(&path)?;
                sync_dir(&dir)?;
                (1, path, file)
            }
        };
        let FileEnd { len, last_line, torn } = recover_tail(&file, &path)?;
        let previous = files.iter().rev().nth(1);
        let (head, last_action) = match &last_line {
            Some(line) => {
                let record = check_line(line, signer.public_key()).map_err(|fault| AuditError::ForeignLog {
                    path: path.clone(),
                    reason: fault.reason,
                    detail: fault.detail,
                })?;
                (ChainHead::after(line, record.seq), Some(record.action))
            }
            None => match previous {
                Some((_, previous)) => (head_of_previous(previous, signer.public_key())?, None),
                None => (ChainHead::GENESIS, None),
            },
        };
        // Only once the log is known to go on with this key.
        write_public_key(&state_dir.join(PUBLIC_KEY_FILE), signer.public_key())?;
        let mut log = AuditLog {
            dir,
            signer,
            head,
            file,
            index,
            len,
            only_header: last_action.as_deref() == Some(AuditAction::LogOpened.as_str()),
            max_bytes,
            poisoned: false,
            recovered: None,
            written: Vec::new(),
            unsynced: false,
            last_write: None,
            _lock: lock,
        };
        if last_line.is_none() {
            // A new log, or a file whose header never made it (a crash while rotating).
            log.write_header(previous.map(|(index, _)| file_name(*index)).as_deref())?;
        }
        if let Some(torn) = torn {
            tracing::warn!(file = %torn.file.display(), bytes = torn.bytes, saved_to = %torn.saved_to.display(),
                "audit: discarded the torn last line a crash left");
            let name = |path: &Path| path.file_name().map(|name| name.to_string_lossy().into_owned());
            let recovered =
                LogRecovered { file: name(&torn.file), torn_bytes: torn.bytes, saved_to: name(&torn.saved_to) };
            let event = AuditEvent::new(bkg_schema::audit::AGENT_ACTOR, Details::LogRecovered(recovered));
            log.append(&event)?;
            log.recovered = Some(torn);
        }
        log.sync()?;
        Ok(log)
    }

    pub fn public_key(&self) -> &PublicKey {
        self.signer.public_key()
    }

    /// How many records the log holds, its files' headers included.
    pub fn records(&self) -> u64 {
        self.head.next_seq.saturating_sub(1)
    }

    /// Every line written since the last call, in order: the agent puts them in its outbox in
    /// the same transaction as the state change they describe.
    pub fn take_written(&mut self) -> Vec<WrittenLine> {
        std::mem::take(&mut self.written)
    }

    /// The lines on disk after `seq`, in order: what a crash between writing a line and
    /// committing its state change kept out of the outbox.
    pub fn lines_after(&self, seq: u64) -> Result<Vec<WrittenLine>, AuditError> {
        let files = log_files(&self.dir).map_err(io_error("list", &self.dir))?;
        let mut found = Vec::new();
        // Newest file first; stop at the first file that starts at or before `seq`.
        for (_, path) in files.iter().rev() {
            let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
            let mut lines: Vec<WrittenLine> = text
                .lines()
                .filter_map(|line| {
                    let record: SignedRecord = serde_json::from_str(line).ok()?;
                    Some(WrittenLine::from_record(&record, line))
                })
                .collect();
            let reaches_back = lines.first().is_some_and(|first| first.seq <= seq + 1);
            lines.retain(|line| line.seq > seq);
            found.splice(0..0, lines);
            if reaches_back {
                break;
            }
        }
        Ok(found)
    }

    /// The torn line this open discarded, if a crash had left one.
    pub fn recovered(&self) -> Option<&TornTail> {
        self.recovered.as_ref()
    }

    /// Signs and durably writes one record. Call it BEFORE the state change it records.
    pub fn append(&mut self, event: &AuditEvent) -> Result<SignedRecord, AuditError> {
        Ok(self.commit(event, &[])?.0)
    }

    /// Signs and writes several records with one write and one `fdatasync`, in one file.
    pub fn append_batch(&mut self, events: &[AuditEvent]) -> Result<Vec<SignedRecord>, AuditError> {
        let Some((first, rest)) = events.split_first() else { return Ok(Vec::new()) };
        let (first, rest) = self.commit(first, rest)?;
        Ok(std::iter::once(first).chain(rest).collect())
    }

    fn commit(
        &mut self,
        first: &AuditEvent,
        rest: &[AuditEvent],
    ) -> Result<(SignedRecord, Vec<SignedRecord>), AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        let ts_ms = now_ms();
        let (mut first_line, mut rest_lines) = self.sign_all(first, rest, ts_ms)?;
        let bytes: u64 = std::iter::once(&first_line).chain(&rest_lines).map(|line| line.line().len() as u64 + 1).sum();
        if !self.only_header && self.len + bytes > self.max_bytes {
            self.rotate()?;
            // The header moved the chain on: sign again at the new head.
            (first_line, rest_lines) = self.sign_all(first, rest, ts_ms)?;
        }
        if let Some(change) = self.changed_by_another() {
            // Not written into a file someone removed (the records would be lost with it) or
            // changed (they would be joined to a cut line): the chain goes on in a new file,
            // and `bkg audit verify` shows what was done to the old one (found by a new-user
            // trial: records went into a deleted file unsaid).
            tracing::error!(
                file = %self.dir.join(file_name(self.index)).display(),
                "audit: the log's file was {change} while the agent wrote it; the log goes on in a new file"
            );
            self.rotate()?;
            (first_line, rest_lines) = self.sign_all(first, rest, ts_ms)?;
        }
        let before = LastWrite { len: self.len, head: self.head, only_header: self.only_header, lines: 1 + rest.len() };
        self.write(&first_line, &rest_lines)?;
        self.only_header = false;
        self.last_write = Some(before);
        Ok((first_line.record, rest_lines.into_iter().map(|line| line.record).collect()))
    }

    /// How the current file differs from what this log wrote to it, if it does: removed,
    /// replaced by another file at its path, or cut or grown by another writer.
    fn changed_by_another(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        let ours = self.file.metadata().ok()?;
        if ours.nlink() == 0 {
            return Some("removed".into());
        }
        match std::fs::symlink_metadata(self.dir.join(file_name(self.index))) {
            Ok(at_path) if at_path.ino() != ours.ino() || at_path.dev() != ours.dev() => {
                return Some("replaced by another file".into());
            }
            Ok(_) => {}
            Err(_) => return Some("removed".into()),
        }
        (ours.len() != self.len).then(|| format!("changed to {} bytes, where it had {}", ours.len(), self.len))
    }

    fn sign_all(
        &self,
        first: &AuditEvent,
        rest: &[AuditEvent],
        ts_ms: u64,
    ) -> Result<(SignedLine, Vec<SignedLine>), AuditError> {
        let first = self.signer.sign(self.head, ts_ms, first)?;
        let mut head = first.next();
        let mut lines = Vec::with_capacity(rest.len());
        for event in rest {
            let line = self.signer.sign(head, ts_ms, event)?;
            head = line.next();
            lines.push(line);
        }
        Ok((first, lines))
    }

    /// Makes every line written so far durable. A failure poisons the log.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        if !self.unsynced {
            return Ok(());
        }
        if let Err(error) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io_error("sync", &self.dir.join(file_name(self.index)))(error));
        }
        self.unsynced = false;
        Ok(())
    }

    /// What `sync` would make durable, to be synced without holding the log (appends go on
    /// meanwhile): a second handle on the current file, if lines were written since the last
    /// sync. A failed [`PendingSync::finish`] must [`poison`](Self::poison) the log.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, AuditError> {
        if !self.unsynced {
            return Ok(None);
        }
        let path = self.dir.join(file_name(self.index));
        let file = self.file.try_clone().map_err(io_error("sync", &path))?;
        self.unsynced = false;
        Ok(Some(PendingSync { file, path }))
    }

    /// Takes the newest write of records back off the file: the state change they record was not
    /// made (its transaction failed), and a line for it would stay in the signed chain forever,
    /// with the outbox missing it for good. `taken` is what [`take_written`](Self::take_written)
    /// gave since the write; what it holds besides the write's lines (a new file's header) stays
    /// written and is handed out again. A cut that fails poisons the log.
    pub fn retract_last_write(&mut self, mut taken: Vec<WrittenLine>) -> Result<(), AuditError> {
        let Some(before) = self.last_write.take() else {
            return Err(AuditError::Poisoned);
        };
        let path = self.dir.join(file_name(self.index));
        if let Err(error) = self.file.set_len(before.len) {
            self.poisoned = true;
            return Err(io_error("cut back", &path)(error));
        }
        self.len = before.len;
        self.head = before.head;
        self.only_header = before.only_header;
        taken.truncate(taken.len().saturating_sub(before.lines));
        taken.append(&mut self.written);
        self.written = taken;
        Ok(())
    }

    /// No more records: what was written may not be durable (a [`PendingSync`] failed).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        // The file left behind must hold all its lines before the next file names it.
        self.sync()?;
        let previous = file_name(self.index);
        let index = self.index + 1;
        let path = self.dir.join(file_name(index));
        self.file = create_log_file(&path)?;
        self.index = index;
        self.len = 0;
        // Until the new file is durable and has its header, no record may go anywhere; reopening
        // the log writes the header that is missing.
        sync_dir(&self.dir).and_then(|()| self.write_header(Some(&previous))).inspect_err(|_| self.poisoned = true)
    }

    fn write_header(&mut self, previous_file: Option<&str>) -> Result<(), AuditError> {
        let event = AuditEvent::log_opened(self.signer.public_key(), previous_file);
        let header = self.signer.sign(self.head, now_ms(), &event)?;
        self.write(&header, &[])?;
        self.only_header = true;
        Ok(())
    }

    fn write(&mut self, first: &SignedLine, rest: &[SignedLine]) -> Result<(), AuditError> {
        let mut buffer = Vec::new();
        for line in std::iter::once(first).chain(rest) {
            buffer.extend_from_slice(line.line());
            buffer.push(b'\n');
        }
        let path = self.dir.join(file_name(self.index));
        if let Err(error) = (&self.file).write_all(&buffer) {
            // Cut a partial line back off, so the file still ends with a whole line.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.poisoned = true;
            }
            return Err(io_error("write", &path)(error));
        }
        self.unsynced = true;
        self.len += buffer.len() as u64;
        self.head = rest.last().unwrap_or(first).next();
        self.written.extend(std::iter::once(first).chain(rest).map(WrittenLine::of));
        Ok(())
    }
}

/// Opens, checks and locks the key, creating it first if there is none.
fn load_or_create_key(path: &Path) -> Result<(Flock<File>, Zeroizing<[u8; 32]>), AuditError> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_key(path)?;
            OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io_error("open", path))?
        }
        Err(error) => return Err(io_error("open", path)(error)),
    };
    let metadata = file.metadata().map_err(io_error("inspect", path))?;
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuditError::KeyPermissions { path: path.to_owned(), mode });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != uid {
        return Err(AuditError::KeyOwner { path: path.to_owned(), owner: metadata.uid(), uid });
    }
    if metadata.len() != 32 {
        return Err(AuditError::KeyLength { path: path.to_owned(), len: metadata.len() });
    }
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(file, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => AuditError::Locked {
            path: path.parent().unwrap_or(path).to_owned(),
            holder: file.metadata().ok().and_then(|metadata| bkg_schema::paths::flock_holder(&metadata)),
        },
        errno => io_error("lock", path)(errno.into()),
    })?;
    let mut secret = Zeroizing::new([0u8; 32]);
    (&*lock).read_exact(&mut secret[..]).map_err(io_error("read", path))?;
    Ok((lock, secret))
}

/// Makes a new key at `path`, unless another process beats us to it.
fn create_key(path: &Path) -> Result<(), AuditError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    crate::ids::fill_random(&mut secret[..]).map_err(AuditError::Random)?;
    let temporary = path.with_extension(format!("key.new-{}", std::process::id()));
    // A leftover of a crash of a process with our pid would make the exclusive create fail.
    let _ = std::fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(&secret[..]).and_then(|()| file.sync_all()).map_err(io_error("write", &temporary))?;
    // A hard link, unlike a rename, never replaces a key another agent made meanwhile.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(io_error("create", path)(error)),
        _ => sync_dir(path.parent().unwrap_or(Path::new("."))),
    }
}

fn write_public_key(path: &Path, key: &PublicKey) -> Result<(), AuditError> {
    let text = format!("{}\n", key.to_hex());
    if std::fs::read_to_string(path).is_ok_and(|current| current == text) {
        return Ok(());
    }
    let temporary = path.with_extension("pub.new");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io_error("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error("replace", path))
}

fn create_log_file(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new().read(true).append(true).create_new(true).mode(0o600).open(path).map_err(io_error("create", path))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error("sync", dir))
}

/// The end of the newest file once a torn line is cut off.
struct FileEnd {
    /// The bytes of its whole lines.
    len: u64,
    last_line: Option<Vec<u8>>,
    torn: Option<TornTail>,
}

/// Cuts a torn last line off `file`, saving it beside.
fn recover_tail(file: &File, path: &Path) -> Result<FileEnd, AuditError> {
    let len = file.metadata().map_err(io_error("inspect", path))?.len();
    let good_len = last_newline(file, len).map_err(io_error("read", path))?.map_or(0, |at| at + 1);
    let mut torn = None;
    if good_len < len {
        let mut fragment = vec![0; usize::try_from(len - good_len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut fragment, good_len).map_err(io_error("read", path))?;
        let saved_to = path.with_extension(format!("jsonl.torn-{}", now_ms()));
        let mut saved = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&saved_to)
            .map_err(io_error("create", &saved_to))?;
        saved.write_all(&fragment).and_then(|()| saved.sync_all()).map_err(io_error("write", &saved_to))?;
        file.set_len(good_len).and_then(|()| file.sync_data()).map_err(io_error("truncate", path))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        torn = Some(TornTail { file: path.to_owned(), bytes: len - good_len, saved_to });
    }
    if good_len == 0 {
        return Ok(FileEnd { len: 0, last_line: None, torn });
    }
    let start = last_newline(file, good_len - 1).map_err(io_error("read", path))?.map_or(0, |at| at + 1);
    let mut line = vec![0; usize::try_from(good_len - 1 - start).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut line, start).map_err(io_error("read", path))?;
    Ok(FileEnd { len: good_len, last_line: Some(line), torn })
}

/// Where the chain stands at the end of an earlier, complete file.
fn head_of_previous(path: &Path, key: &PublicKey) -> Result<ChainHead, AuditError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let len = file.metadata().map_err(io_error("inspect", path))?.len();
    let end = last_newline(&file, len).map_err(io_error("read", path))?;
    let Some(end) = end else { return Ok(ChainHead::GENESIS) };
    let start = last_newline(&file, end).map_err(io_error("read", path))?.map_or(0, |at| at + 1);
    let mut line = vec![0; usize::try_from(end - start).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut line, start).map_err(io_error("read", path))?;
    let record = check_line(&line, key).map_err(|fault| AuditError::ForeignLog {
        path: path.to_owned(),
        reason: fault.reason,
        detail: fault.detail,
    })?;
    Ok(ChainHead::after(&line, record.seq))
}

/// The offset of the last `\n` before `end`, reading backwards so a large file costs little.
fn last_newline(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut chunk = vec![0; 64 * 1024];
    let mut end = end;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let window = &mut chunk[..usize::try_from(end - start).unwrap_or(0)];
        file.read_exact_at(window, start)?;
        if let Some(at) = window.iter().rposition(|&byte| byte == b'\n') {
            return Ok(Some(start + at as u64));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::os::unix::fs::PermissionsExt;

    use bkg_schema::Limits;
    use bkg_schema::audit::{RunStarted, VerifyReport, verify};

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    /// Small enough that ten events and their headers take three files.
    const TINY: u64 = 2600;

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            namespace: Some(format!("ns{n}")),
            sandbox: Some(format!("sbx_{n}")),
            run: Some(format!("run_{n}")),
            limits: Some(Limits::DEFAULT),
            ..AuditEvent::new(
                "uid:0",
                Details::RunStarted(RunStarted { language: bkg_schema::Language::Python, started_at_ms: 12 }),
            )
        }
    }

    fn files_of(state: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(log_files(&state.join(LOG_DIR))?.into_iter().map(|(_, path)| path).collect())
    }

    fn lines_of(path: &Path) -> io::Result<Vec<String>> {
        Ok(std::fs::read_to_string(path)?.lines().map(str::to_owned).collect())
    }

    fn write_lines(path: &Path, lines: &[String]) -> io::Result<()> {
        std::fs::write(path, lines.iter().map(|line| format!("{line}\n")).collect::<String>())
    }

    /// Where verification stopped: file, line and reason.
    type Found = Option<(PathBuf, u64, BadReason)>;

    fn first_bad(files: &[PathBuf], key: &PublicKey) -> Result<Found, Box<dyn Error>> {
        Ok(verify(files, key)?.first_bad.map(|bad| (bad.file, bad.line, bad.reason)))
    }

    /// Ten events through a log that rotates into three files.
    fn ten_events() -> Result<(tempfile::TempDir, PublicKey, Vec<PathBuf>), Box<dyn Error>> {
        let state = tempfile::tempdir()?;
        let mut log = AuditLog::open_with_max_bytes(state.path(), TINY)?;
        for n in 1..=10 {
            assert_eq!(log.append(&event(n))?.namespace, Some(format!("ns{n}")));
        }
        let key = *log.public_key();
        drop(log);
        let files = files_of(state.path())?;
        assert_eq!(files.len(), 3, "{files:?}");
        Ok((state, key, files))
    }

    #[test]
    fn a_clean_log_verifies_and_its_files_are_private() -> TestResult {
        let (state, key, files) = ten_events()?;
        assert_eq!(verify(&files, &key)?, VerifyReport { files: 3, records: 13, first_bad: None });
        for path in files.iter().chain([&state.path().join(KEY_FILE)]) {
            assert_eq!(std::fs::metadata(path)?.mode() & 0o777, 0o600, "{}", path.display());
        }
        assert_eq!(std::fs::read_to_string(state.path().join(PUBLIC_KEY_FILE))?, format!("{}\n", key.to_hex()));
        for path in &files {
            assert!(lines_of(path)?[0].contains("\"action\":\"log.opened\""));
            assert!(std::fs::metadata(path)?.len() <= TINY);
        }
        Ok(())
    }

    #[test]
    fn an_edited_line_is_found() -> TestResult {
        let (_state, key, files) = ten_events()?;
        let (file, number) = files
            .iter()
            .find_map(|path| {
                let lines = lines_of(path).ok()?;
                lines.iter().position(|line| line.contains("\"namespace\":\"ns6\"")).map(|at| (path.clone(), at))
            })
            .ok_or("no ns6")?;
        let mut lines = lines_of(&file)?;
        lines[number] = lines[number].replace("\"ns6\"", "\"ns0\"");
        write_lines(&file, &lines)?;
        assert_eq!(first_bad(&files, &key)?, Some((file, number as u64 + 1, BadReason::Edited)));
        Ok(())
    }

    #[test]
    fn a_removed_line_is_found_where_it_is_missing() -> TestResult {
        let (_state, key, files) = ten_events()?;
        let mut lines = lines_of(&files[1])?;
        assert!(lines.len() >= 4);
        lines.remove(2);
        write_lines(&files[1], &lines)?;
        assert_eq!(first_bad(&files, &key)?, Some((files[1].clone(), 3, BadReason::Removed)));
        Ok(())
    }

    /// Found by a new-user trial: a file removed or cut while the agent ran was written on
    /// (records lost with the removed file, or joined to the cut line); the log goes on in a new
    /// file instead, whole, and verification finds what was done to the old one.
    #[test]
    fn a_file_removed_or_cut_by_another_is_not_written_on() -> TestResult {
        let state = tempfile::tempdir()?;
        let mut log = AuditLog::open(state.path())?;
        log.append(&event(1))?;
        let first = files_of(state.path())?;
        std::fs::remove_file(&first[0])?;
        log.append(&event(2))?;
        let after_removal = files_of(state.path())?;
        assert_eq!(after_removal.len(), 1, "{after_removal:?}");
        assert_ne!(after_removal[0], first[0]);
        assert_eq!(lines_of(&after_removal[0])?.len(), 2, "its header and the new record");

        let len = std::fs::metadata(&after_removal[0])?.len();
        OpenOptions::new().write(true).open(&after_removal[0])?.set_len(len - 30)?;
        log.append(&event(3))?;
        log.sync()?;
        let files = files_of(state.path())?;
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(std::fs::metadata(&files[0])?.len(), len - 30, "the cut file is left as it was");
        assert_eq!(lines_of(&files[1])?.len(), 2, "a header and the record, whole");
        // The first fault is the removed file's records, missing before the next file's first.
        assert_eq!(first_bad(&files, log.public_key())?, Some((files[0].clone(), 1, BadReason::Removed)));
        assert_eq!(first_bad(&files[1..], log.public_key())?.map(|(_, _, reason)| reason), Some(BadReason::Removed));
        Ok(())
    }

    #[test]
    fn reordered_lines_are_found() -> TestResult {
        let (_state, key, files) = ten_events()?;
        let mut lines = lines_of(&files[0])?;
        lines.swap(1, 2);
        write_lines(&files[0], &lines)?;
        assert_eq!(first_bad(&files, &key)?, Some((files[0].clone(), 2, BadReason::Reordered)));
        Ok(())
    }

    #[test]
    fn a_cut_line_and_a_cut_file_are_truncated() -> TestResult {
        let (_state, key, files) = ten_events()?;
        let middle = lines_of(&files[1])?.len() as u64;
        let len = std::fs::metadata(&files[1])?.len();
        OpenOptions::new().write(true).open(&files[1])?.set_len(len - 40)?;
        assert_eq!(first_bad(&files, &key)?, Some((files[1].clone(), middle, BadReason::Truncated)));
        let mut first = lines_of(&files[0])?;
        let count = first.len() as u64;
        first.pop();
        write_lines(&files[0], &first)?;
        assert_eq!(first_bad(&files, &key)?, Some((files[0].clone(), count, BadReason::Truncated)));
        Ok(())
    }

    #[test]
    fn a_line_signed_by_another_key_is_forged() -> TestResult {
        let (_state, key, files) = ten_events()?;
        let mut lines = lines_of(&files[1])?;
        let before = check_line(lines[1].as_bytes(), &key).map_err(|fault| fault.detail)?;
        let intruder = AuditSigner::from_secret(&[7; 32]);
        let forged = intruder.sign(ChainHead::after(lines[1].as_bytes(), before.seq), 1, &event(42))?;
        lines[2] = String::from_utf8(forged.line().to_vec())?;
        write_lines(&files[1], &lines)?;
        assert_eq!(first_bad(&files, &key)?, Some((files[1].clone(), 3, BadReason::Forged)));
        Ok(())
    }

    #[test]
    fn written_lines_reach_the_caller_once_and_can_be_read_back_after_a_seq() -> TestResult {
        let state = tempfile::tempdir()?;
        let mut log = AuditLog::open_with_max_bytes(state.path(), 600)?;
        let header = log.take_written();
        assert_eq!(header.iter().map(|line| line.action.as_str()).collect::<Vec<_>>(), ["log.opened"]);
        for n in 1..=4 {
            log.append(&event(n))?;
        }
        let written = log.take_written();
        let seqs: Vec<u64> = written.iter().map(|line| line.seq).collect();
        assert_eq!(seqs, (2..2 + written.len() as u64).collect::<Vec<_>>(), "no gaps, rotation headers included");
        assert!(written.iter().filter(|line| line.action == "log.opened").count() >= 1, "the log rotated");
        assert!(log.take_written().is_empty());
        let tail = log.lines_after(3)?;
        assert_eq!(tail, written.into_iter().filter(|line| line.seq > 3).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn a_torn_last_line_is_set_aside_and_the_chain_goes_on() -> TestResult {
        let state = tempfile::tempdir()?;
        let mut log = AuditLog::open(state.path())?;
        assert_eq!(log.recovered(), None);
        let records = log.append_batch(&[event(1), event(2), event(3)])?;
        assert_eq!(records.iter().map(|record| record.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(log.append_batch(&[])?, []);
        let key = *log.public_key();
        drop(log);
        let current = files_of(state.path())?.pop().ok_or("no file")?;
        let fragment = b"{\"seq\":5,\"ts_ms\":17000";
        OpenOptions::new().append(true).open(&current)?.write_all(fragment)?;
        assert_eq!(first_bad(&files_of(state.path())?, &key)?, Some((current.clone(), 5, BadReason::Truncated)));

        let mut log = AuditLog::open(state.path())?;
        let torn = log.recovered().cloned().ok_or("nothing recovered")?;
        assert_eq!((torn.file.as_path(), torn.bytes), (current.as_path(), fragment.len() as u64));
        assert_eq!(std::fs::read(&torn.saved_to)?, fragment);
        assert_eq!(log.append(&event(4))?.seq, 6);
        drop(log);
        let lines = lines_of(&current)?;
        assert!(
            lines[4].contains("\"action\":\"log.recovered\"")
                && lines[4].contains(&format!("\"torn_bytes\":{}", fragment.len()))
        );
        assert_eq!(verify(&files_of(state.path())?, &key)?, VerifyReport { files: 1, records: 6, first_bad: None });
        Ok(())
    }

    #[test]
    fn a_file_left_empty_by_a_crash_while_rotating_gets_its_header() -> TestResult {
        let state = tempfile::tempdir()?;
        let mut log = AuditLog::open(state.path())?;
        log.append(&event(1))?;
        let key = *log.public_key();
        drop(log);
        File::create(state.path().join(LOG_DIR).join(file_name(2)))?;
        let mut log = AuditLog::open(state.path())?;
        assert_eq!(log.append(&event(2))?.seq, 4);
        drop(log);
        let files = files_of(state.path())?;
        assert!(lines_of(&files[1])?[0].contains("\"previous_file\":\"audit-000001.jsonl\""));
        assert_eq!(verify(&files, &key)?, VerifyReport { files: 2, records: 4, first_bad: None });
        Ok(())
    }

    #[test]
    fn a_key_others_can_read_or_of_the_wrong_size_is_refused() -> TestResult {
        let state = tempfile::tempdir()?;
        drop(AuditLog::open(state.path())?);
        let key = state.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
        let error = AuditLog::open(state.path()).err().ok_or("a 0644 key was accepted")?;
        assert!(matches!(error, AuditError::KeyPermissions { mode: 0o644, .. }), "{error}");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(&key, [1; 31])?;
        let error = AuditLog::open(state.path()).err().ok_or("a short key was accepted")?;
        assert!(matches!(error, AuditError::KeyLength { len: 31, .. }), "{error}");
        Ok(())
    }

    #[test]
    fn one_writer_at_a_time_and_only_with_the_logs_own_key() -> TestResult {
        let state = tempfile::tempdir()?;
        let mut log = AuditLog::open(state.path())?;
        log.append(&event(1))?;
        let second = AuditLog::open(state.path()).err().ok_or("a second writer was let in")?;
        assert!(matches!(second, AuditError::Locked { .. }), "{second}");
        drop(log);
        // The key gone: refused as missing, with nothing written (found by a new-user trial: a
        // new key and audit.pub were written, and `bkg audit verify` then called the log forged).
        let public = std::fs::read(state.path().join(PUBLIC_KEY_FILE))?;
        std::fs::rename(state.path().join(KEY_FILE), state.path().join("kept.key"))?;
        let missing = AuditLog::open(state.path()).err().ok_or("a new key took over the log")?;
        assert!(matches!(missing, AuditError::KeyMissing { .. }), "{missing}");
        assert!(!state.path().join(KEY_FILE).exists(), "no new key");
        assert_eq!(std::fs::read(state.path().join(PUBLIC_KEY_FILE))?, public, "audit.pub as it was");
        // Another key put in its place is refused as foreign.
        std::fs::write(state.path().join(KEY_FILE), [7u8; 32])?;
        std::fs::set_permissions(state.path().join(KEY_FILE), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let replaced = AuditLog::open(state.path()).err().ok_or("a new key took over the log")?;
        assert!(matches!(replaced, AuditError::ForeignLog { reason: BadReason::Forged, .. }), "{replaced}");
        assert_eq!(std::fs::read(state.path().join(PUBLIC_KEY_FILE))?, public, "audit.pub as it was");
        // The key back: the log goes on.
        std::fs::rename(state.path().join("kept.key"), state.path().join(KEY_FILE))?;
        AuditLog::open(state.path())?.append(&event(2))?;
        Ok(())
    }
}
