//! The agent's local store: SQLite in the state directory, with versioned migrations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bkg_schema::audit::{
    AuditEvent, Details, RunEnd, RunFinished, RunFinishedDetails, RunInterrupted, RunOutcome, RunStarted,
    SandboxCreated, SyncParked, SyncRetried,
};
use bkg_schema::sandbox::SandboxDefinition;
use bkg_schema::{KilledBy, Language, Limits, RunRecord, RunResult};
use rusqlite::{Connection, OptionalExtension, params};

use crate::audit::{AuditError, AuditLog, PendingSync, WrittenLine};

mod auth_tables;
mod changes;
mod retention;
mod run_files;
mod sandbox_env;
mod services;
pub use auth_tables::{KeyKind, NewKey};
pub use retention::{Expired, ExpiredRun};
pub use run_files::NamespaceObjects;
pub use services::LeftService;

/// Each entry upgrades the schema by one version; `PRAGMA user_version` records how far a
/// database has come. Never edit a released entry: add a new one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        language TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        limits TEXT NOT NULL,
        exit_code INTEGER,
        signal INTEGER,
        killed_by TEXT,
        wall_ms INTEGER,
        cpu_ms INTEGER,
        peak_memory_bytes INTEGER,
        stdout_bytes INTEGER,
        stderr_bytes INTEGER,
        cleaned_up INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX runs_started ON runs (started_at_ms);",
    "CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        namespace TEXT NOT NULL,
        project_dir TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );
    ALTER TABLE runs ADD COLUMN sandbox_id TEXT;
    CREATE INDEX runs_sandbox ON runs (sandbox_id, started_at_ms);",
    "CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        namespace TEXT,
        action TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        line TEXT NOT NULL,
        synced INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_pending ON outbox (synced, seq);",
    // The API's keys, users and the rotation notices already accepted (replay protection);
    // every run belongs to a namespace.
    "ALTER TABLE runs ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX runs_namespace ON runs (namespace, started_at_ms);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        namespace TEXT,
        name TEXT,
        user TEXT,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        rotated_at_ms INTEGER,
        revoked_at_ms INTEGER,
        last_used_at_ms INTEGER
    );
    CREATE INDEX api_keys_namespace ON api_keys (namespace, created_at_ms);
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE rotation_notices (
        signature TEXT PRIMARY KEY,
        received_at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );",
    // Outbox events bkg_db refused: failed attempts and the last reason; a parked event (after
    // too many) is passed over until `bkg sync retry`. Nothing is deleted.
    "ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN last_error TEXT;
    ALTER TABLE outbox ADD COLUMN parked_at_ms INTEGER;
    CREATE INDEX outbox_parked ON outbox (parked_at_ms) WHERE parked_at_ms IS NOT NULL;",
    // What the sandbox refused each run (`RunResult::denials`), as JSON; null when nothing.
    "ALTER TABLE runs ADD COLUMN denials TEXT;",
    // The files runs kept (bkg-agent/src/artefacts/): one row per file, the object named by its
    // namespace and sha256; rows go with their run (retention).
    "CREATE TABLE run_files (
        run_id TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (run_id, path)
    );
    CREATE INDEX run_files_objects ON run_files (namespace, sha256);",
    // Connections each run's network refused (`RunResult::network_denials`), as JSON; null when
    // nothing.
    "ALTER TABLE runs ADD COLUMN network_denials TEXT;",
    // Runs a file transfer held an idle sandbox with (`RunStart::for_transfer`): 1.
    "ALTER TABLE runs ADD COLUMN for_transfer INTEGER NOT NULL DEFAULT 0;",
    // Services the next agent starts again (store/services.rs): the command as JSON, never
    // with environment values, and the actor who started it.
    "CREATE TABLE services (
        sandbox_id TEXT PRIMARY KEY,
        exec TEXT NOT NULL,
        actor TEXT NOT NULL
    );",
    // A sandbox's service as it last stood (`ServiceHealth` as JSON), for `bkg status` after an
    // agent restart; it goes with the sandbox.
    "ALTER TABLE sandboxes ADD COLUMN last_service TEXT;",
    // The key that made a key (a namespace key's session keys): revoking it revokes them.
    "ALTER TABLE api_keys ADD COLUMN created_by_key TEXT;
    CREATE INDEX api_keys_created_by_key ON api_keys (created_by_key);",
    // When a batch last reached bkg_db, for `bkg sync status` after an agent restart (it said
    // "never" until the next batch).
    "CREATE TABLE sync_state (id INTEGER PRIMARY KEY CHECK (id = 1), last_success_ms INTEGER NOT NULL);",
];

/// A run as it starts (`Store::run_started`).
#[derive(Debug, Clone, Copy)]
pub struct RunStart<'a> {
    pub id: &'a str,
    pub sandbox_id: Option<&'a str>,
    pub language: Language,
    pub limits: Limits,
    pub started_at_ms: u64,
    /// The run a file transfer holds an idle sandbox with: listed with the runs, but never its
    /// sandbox's last run.
    pub for_transfer: bool,
}

/// A persistent sandbox as stored: its definition and when it was first defined.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSandbox {
    pub definition: SandboxDefinition,
    pub created_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Json(#[from] serde_json::Error),
    #[error("store: the database is at schema version {found}, newer than this agent's {known}")]
    TooNew { found: i64, known: i64 },
    #[error("store: background task failed")]
    Task,
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("store: cannot {action} {path}: {source}")]
    SandboxEnv { action: &'static str, path: String, source: std::io::Error },
    #[error(
        "store: {} is empty, but the audit log beside it holds {records} records: restore state.db (from a \
         backup of the state directory), or move the audit directory aside too to start anew",
        path.display()
    )]
    EmptyWithHistory { path: PathBuf, records: u64 },
    #[error(
        "store: {} has audit events up to seq {stored}, but the audit log beside it ends at seq {logged} (it was \
         moved aside or cut): restore the audit directory and audit.key (from a backup of the state directory), or \
         move state.db aside too to start anew; a log that began again would reuse seqs the change feed and bkg_db \
         already have, and its events would be lost",
        path.display()
    )]
    LogBehind { path: PathBuf, stored: u64, logged: u64 },
    #[error(
        "store: {} is not a SQLite database (damaged, or another file put there): restore it from a backup of the \
         state directory, or move it, audit.key and the audit directory aside to start anew",
        path.display()
    )]
    NotADatabase { path: PathBuf },
}

#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
    audit: Arc<Mutex<AuditLog>>,
    /// Told after every commit that added to the outbox, so the sync worker need not poll.
    committed: Arc<tokio::sync::Notify>,
    /// Bumped after every such commit too, for any number of change feeds (store/changes.rs).
    outbox_bumped: Arc<tokio::sync::watch::Sender<u64>>,
    /// Audit-log syncs started after a commit and not finished yet (see `durable`).
    syncing: Arc<tokio::sync::watch::Sender<usize>>,
    /// Bumped after a key is rotated, revoked or deleted, for the streams and runs held to
    /// their key (service/keys.rs `KeyHold`).
    keys_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The agent's state dir, where each sandbox's env file lives.
    state_dir: Arc<PathBuf>,
}

/// Who asked for a change, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `uid:<uid>` for a peer on the unix socket, `key:<id>` for an API key.
    pub actor: String,
    pub namespace: String,
}

/// One event of the outbox, waiting to be synced (or synced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: u64,
    pub agent_id: String,
    pub namespace: Option<String>,
    pub action: String,
    pub ts_ms: u64,
    pub line: String,
}

impl OutboxRow {
    /// A row of a query that selects `seq, agent_id, namespace, action, ts_ms, line`, in that order.
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: row.get::<_, i64>(0)?.max(0) as u64,
            agent_id: row.get(1)?,
            namespace: row.get(2)?,
            action: row.get(3)?,
            ts_ms: row.get::<_, i64>(4)?.max(0) as u64,
            line: row.get(5)?,
        })
    }
}

impl Store {
    /// Opens the store and brings its outbox level with the audit log: a line a crash wrote
    /// without its state change still reaches the outbox.
    pub fn open(path: &Path, audit: AuditLog) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
        let not_a_database = |error: rusqlite::Error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => StoreError::NotADatabase { path: path.to_owned() },
            _ => StoreError::from(error),
        };
        connection.pragma_update(None, "journal_mode", "WAL").map_err(not_a_database)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // A store never made beside a log that tells of runs, keys and sandboxes was lost (cut to
        // nothing, deleted): taking it as new would forget them all without a word. A new log
        // holds its header alone.
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == 0 && audit.records() > 1 {
            return Err(StoreError::EmptyWithHistory { path: path.to_owned(), records: audit.records() });
        }
        migrate(&mut connection)?;
        // The env files live beside the store, in the sandboxes' homes (bkg_schema::paths::SandboxHome).
        let state_dir = Arc::new(path.parent().map(Path::to_path_buf).unwrap_or_default());
        move_env_values_out(&connection, &state_dir)?;
        let mut audit = audit;
        let mut lines = audit.take_written();
        let last: Option<i64> = connection.query_row("SELECT max(seq) FROM outbox", [], |row| row.get(0))?;
        let last = last.map_or(0, |seq| seq.max(0) as u64);
        if last > audit.records() {
            return Err(StoreError::LogBehind { path: path.to_owned(), stored: last, logged: audit.records() });
        }
        lines.retain(|line| line.seq > last);
        if lines.first().is_none_or(|first| first.seq > last + 1) {
            lines = audit.lines_after(last)?;
        }
        let transaction = connection.transaction()?;
        insert_outbox(&transaction, &lines)?;
        transaction.commit()?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            audit: Arc::new(Mutex::new(audit)),
            committed: Arc::new(tokio::sync::Notify::new()),
            outbox_bumped: Arc::new(tokio::sync::watch::Sender::new(0)),
            syncing: Arc::new(tokio::sync::watch::Sender::new(0)),
            keys_changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            state_dir,
        })
    }

    /// Appends `event` to the audit log (durably, first), then makes `change` and puts every line
    /// just written into the outbox, in one SQLite transaction. A crash in between leaves a line
    /// without its change, never a change without its line; `open` moves such lines to the outbox.
    /// A transaction that fails (a full disk) takes its line back off the log.
    async fn record<T: Send + 'static>(
        &self,
        event: AuditEvent,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.record_kept(event, change, |_| true).await
    }

    /// As `record`, for a change that may find nothing to do (a row another caller removed or
    /// added a moment before): then its record is taken back with it and the answer is false
    /// (found by a new-user trial: four removals of one user at once wrote four `user removed`
    /// records, three of them for requests that were told "no user").
    async fn record_if_changed(
        &self,
        event: AuditEvent,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<bool, StoreError> + Send + 'static,
    ) -> Result<bool, StoreError> {
        self.record_kept(event, change, |changed| *changed).await
    }

    async fn record_kept<T: Send + 'static>(
        &self,
        event: AuditEvent,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        kept: fn(&T) -> bool,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        let audit = Arc::clone(&self.audit);
        let value = tokio::task::spawn_blocking(move || {
            let mut audit = audit.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            audit.append(&event)?;
            let lines = audit.take_written();
            let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let committed = connection.transaction().map_err(StoreError::from).and_then(|transaction| {
                let value = change(&transaction)?;
                if !kept(&value) {
                    // Dropped, the transaction rolls back.
                    return Ok::<_, StoreError>((value, false));
                }
                insert_outbox(&transaction, &lines)?;
                transaction.commit()?;
                Ok((value, true))
            });
            // The change was not made: its line goes too (the log's lock is still held, so it is
            // the newest), or the chain would record it forever and the outbox miss it for good.
            if !matches!(committed, Ok((_, true)))
                && let Err(error) = audit.retract_last_write(lines)
            {
                tracing::error!(%error, "a record whose change failed could not be taken back");
            }
            committed.map(|(value, _)| value)
        })
        .await
        .map_err(|_| StoreError::Task)??;
        self.committed.notify_one();
        self.outbox_bumped.send_modify(|bumps| *bumps = bumps.wrapping_add(1));
        // Durable shortly after, not before the caller hears back: see `audit`.
        let (audit, syncing) = (Arc::clone(&self.audit), Arc::clone(&self.syncing));
        syncing.send_modify(|count| *count += 1);
        tokio::task::spawn_blocking(move || {
            // The log's lock is not held while the disk works: the next record need not wait.
            let lock = || audit.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let pending = lock().begin_sync();
            let synced = pending.and_then(|pending| pending.map_or(Ok(()), PendingSync::finish));
            if let Err(error) = synced {
                lock().poison();
                tracing::error!(%error, "the audit log could not be made durable");
            }
            // The task's hold on the log ends here: a store opened next finds it unlocked.
            drop(audit);
            syncing.send_modify(|count| *count = count.saturating_sub(1));
        });
        Ok(value)
    }

    /// Resolves once every record written so far is durable in the audit log and no sync task
    /// holds the log any more.
    pub async fn durable(&self) {
        let _ = self.syncing.subscribe().wait_for(|count| *count == 0).await;
    }

    /// Resolves after the next commit that added events to the outbox.
    pub async fn outbox_grew(&self) {
        self.committed.notified().await;
    }

    /// Hands out again every synced event after `seq` (bkg_db was restored from an older backup);
    /// returns how many.
    pub async fn outbox_requeue_after(&self, seq: u64) -> Result<u64, StoreError> {
        self.with(move |db| {
            let requeued =
                db.execute("UPDATE outbox SET synced = 0 WHERE seq > ?1 AND synced = 1", params![seq as i64])?;
            Ok(requeued as u64)
        })
        .await
    }

    /// The agent id and seq of the newest event marked synced.
    pub async fn outbox_newest_synced(&self) -> Result<Option<(String, u64)>, StoreError> {
        self.with(|db| {
            let newest: Option<(String, i64)> = db
                .query_row("SELECT agent_id, seq FROM outbox WHERE synced = 1 ORDER BY seq DESC LIMIT 1", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            Ok(newest.map(|(agent_id, seq)| (agent_id, seq.max(0) as u64)))
        })
        .await
    }

    /// The oldest events neither synced nor parked, in order.
    pub async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(move |db| {
            let mut statement = db.prepare(
                "SELECT seq, agent_id, namespace, action, ts_ms, line FROM outbox
                 WHERE synced = 0 AND parked_at_ms IS NULL ORDER BY seq LIMIT ?1",
            )?;
            let rows = statement.query_map(params![limit as i64], OutboxRow::read)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The events `seqs` are in bkg_db. Only those: an event retried meanwhile, between two
    /// of them, was not shipped with them.
    pub async fn outbox_mark_synced(&self, seqs: Vec<u64>, at_ms: u64) -> Result<(), StoreError> {
        self.with(move |db| {
            let transaction = db.transaction()?;
            {
                let mut statement =
                    transaction.prepare("UPDATE outbox SET synced = 1 WHERE seq = ?1 AND parked_at_ms IS NULL")?;
                for seq in &seqs {
                    statement.execute(params![*seq as i64])?;
                }
            }
            if !seqs.is_empty() {
                transaction.execute(
                    "INSERT INTO sync_state (id, last_success_ms) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET last_success_ms = excluded.last_success_ms",
                    params![at_ms as i64],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// How many events wait to be synced (parked ones apart), the time of the oldest, and how
    /// many are parked.
    /// When a batch last reached bkg_db, if one ever did.
    pub async fn outbox_last_synced_ms(&self) -> Result<Option<u64>, StoreError> {
        self.with(|db| {
            let last: Option<i64> =
                db.query_row("SELECT last_success_ms FROM sync_state WHERE id = 1", [], |row| row.get(0)).optional()?;
            Ok(last.map(|ms| ms.max(0) as u64))
        })
        .await
    }

    pub async fn outbox_backlog(&self) -> Result<crate::sync::Backlog, StoreError> {
        self.with(|db| {
            let (count, oldest, parked): (i64, Option<i64>, i64) = db.query_row(
                "SELECT count(*) FILTER (WHERE parked_at_ms IS NULL),
                        min(ts_ms) FILTER (WHERE parked_at_ms IS NULL),
                        count(*) FILTER (WHERE parked_at_ms IS NOT NULL)
                 FROM outbox WHERE synced = 0",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            Ok(crate::sync::Backlog {
                events: count.max(0) as u64,
                oldest_ts_ms: oldest.map(|ts| ts.max(0) as u64),
                parked: parked.max(0) as u64,
            })
        })
        .await
    }

    /// The parked events, in seq order.
    pub async fn outbox_parked(&self) -> Result<Vec<crate::sync::ParkedEvent>, StoreError> {
        self.with(|db| {
            let mut statement = db.prepare(
                "SELECT seq, action, attempts, coalesce(last_error, ''), parked_at_ms FROM outbox
                 WHERE synced = 0 AND parked_at_ms IS NOT NULL ORDER BY seq",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(crate::sync::ParkedEvent {
                    seq: row.get::<_, i64>(0)?.max(0) as u64,
                    action: row.get(1)?,
                    attempts: row.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
                    reason: row.get(3)?,
                    parked_at_ms: row.get::<_, i64>(4)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Counts a failed attempt at event `seq`; at `max_attempts` the event is parked, with its
    /// own audit record. Returns whether it was parked now.
    pub async fn outbox_attempt_failed(&self, seq: u64, reason: &str, max_attempts: u32) -> Result<bool, StoreError> {
        let reason_text = reason.to_owned();
        let counted = self
            .with(move |db| {
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2
                     WHERE seq = ?1 AND synced = 0 AND parked_at_ms IS NULL",
                    params![seq as i64, reason_text],
                )?;
                Ok(db
                    .query_row(
                        "SELECT attempts, action FROM outbox WHERE seq = ?1 AND synced = 0 AND parked_at_ms IS NULL",
                        params![seq as i64],
                        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
                    )
                    .optional()?)
            })
            .await?;
        let Some((attempts, action)) = counted else { return Ok(false) };
        let attempts = attempts.clamp(0, i64::from(u32::MAX)) as u32;
        if attempts < max_attempts {
            return Ok(false);
        }
        let parked = SyncParked { seq, action, attempts, reason: reason.to_owned() };
        let event = AuditEvent::new(bkg_schema::audit::AGENT_ACTOR, Details::SyncParked(parked));
        self.record(event, move |db| {
            db.execute(
                "UPDATE outbox SET parked_at_ms = ?2 WHERE seq = ?1 AND synced = 0",
                params![seq as i64, crate::ids::now_ms() as i64],
            )?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Queues parked events to be shipped again: `seq`, or all of them. Returns their seqs
    /// (none when nothing was parked, which records nothing).
    pub async fn outbox_retry(&self, caller: &Caller, seq: Option<u64>) -> Result<Vec<u64>, StoreError> {
        let parked: Vec<u64> = self
            .outbox_parked()
            .await?
            .into_iter()
            .map(|event| event.seq)
            .filter(|parked| seq.is_none_or(|wanted| wanted == *parked))
            .collect();
        if parked.is_empty() {
            return Ok(parked);
        }
        let event = AuditEvent::new(caller.actor.clone(), Details::SyncRetried(SyncRetried { seqs: parked.clone() }));
        let seqs = parked.clone();
        self.record(event, move |db| {
            let mut statement =
                db.prepare("UPDATE outbox SET parked_at_ms = NULL, attempts = 0 WHERE seq = ?1 AND synced = 0")?;
            for seq in seqs {
                statement.execute(params![seq as i64])?;
            }
            Ok(())
        })
        .await?;
        Ok(parked)
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|_| StoreError::Task)?
    }

    pub async fn run_started(&self, caller: &Caller, run: RunStart<'_>) -> Result<(), StoreError> {
        let RunStart { id, sandbox_id, language, limits, started_at_ms, for_transfer } = run;
        let event = AuditEvent {
            namespace: Some(caller.namespace.clone()),
            sandbox: sandbox_id.map(str::to_owned),
            run: Some(id.to_owned()),
            limits: Some(limits),
            ..AuditEvent::new(caller.actor.clone(), Details::RunStarted(RunStarted { language, started_at_ms }))
        };
        let id = id.to_owned();
        let sandbox_id = sandbox_id.map(str::to_owned);
        let limits = serde_json::to_string(&limits)?;
        let namespace = caller.namespace.clone();
        self.record(event, move |db| {
            db.prepare_cached(
                "INSERT INTO runs (id, sandbox_id, language, started_at_ms, limits, namespace, for_transfer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id,
                sandbox_id,
                language.as_str(),
                started_at_ms as i64,
                limits,
                namespace,
                for_transfer
            ])?;
            Ok(())
        })
        .await
    }

    /// Stores sandbox `id`'s definition, recorded as `sandbox.created`, or as `sandbox.updated`
    /// when it `replaces` one the store has.
    pub async fn put_sandbox(
        &self,
        caller: &Caller,
        id: &str,
        definition: &SandboxDefinition,
        replaces: bool,
        now_ms: u64,
    ) -> Result<StoredSandbox, StoreError> {
        let shown = SandboxCreated::from(definition);
        let details = if replaces { Details::SandboxUpdated(shown) } else { Details::SandboxCreated(shown) };
        let event = AuditEvent {
            namespace: Some(definition.namespace.clone()),
            sandbox: Some(id.to_owned()),
            ..AuditEvent::new(caller.actor.clone(), details)
        };
        let id = id.to_owned();
        let definition = definition.clone();
        let state_dir = Arc::clone(&self.state_dir);
        self.record(event, move |db| {
            let json = serde_json::to_string(&sandbox_env::save(&state_dir, &definition)?)?;
            db.execute(
                "INSERT INTO sandboxes (id, name, namespace, project_dir, definition, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (id) DO UPDATE SET namespace = ?3, definition = ?5, updated_at_ms = ?6",
                params![id, definition.name, definition.namespace, definition.project_dir, json, now_ms as i64],
            )?;
            let created: i64 =
                db.query_row("SELECT created_at_ms FROM sandboxes WHERE id = ?1", params![id], |row| row.get(0))?;
            Ok(StoredSandbox { definition, created_at_ms: created.max(0) as u64 })
        })
        .await
    }

    pub async fn get_sandbox(&self, id: &str) -> Result<Option<StoredSandbox>, StoreError> {
        let id = id.to_owned();
        let state_dir = Arc::clone(&self.state_dir);
        self.with(move |db| {
            let row = db
                .query_row("SELECT definition, created_at_ms FROM sandboxes WHERE id = ?1", params![id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            row.map(|(json, created)| stored_sandbox(&state_dir, &json, created)).transpose()
        })
        .await
    }

    /// Every persistent sandbox, or those of one project.
    pub async fn list_sandboxes(&self, project_dir: Option<String>) -> Result<Vec<StoredSandbox>, StoreError> {
        let state_dir = Arc::clone(&self.state_dir);
        self.with(move |db| {
            let mut statement = db.prepare(
                "SELECT definition, created_at_ms FROM sandboxes WHERE ?1 IS NULL OR project_dir = ?1 ORDER BY project_dir, name",
            )?;
            let rows = statement
                .query_map(params![project_dir], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            rows.map(|row| {
                let (json, created) = row?;
                stored_sandbox(&state_dir, &json, created)
            })
            .collect()
        })
        .await
    }

    pub async fn delete_sandbox(&self, caller: &Caller, id: &str) -> Result<bool, StoreError> {
        let event = AuditEvent {
            namespace: Some(caller.namespace.clone()),
            sandbox: Some(id.to_owned()),
            ..AuditEvent::new(caller.actor.clone(), Details::SandboxDeleted(Default::default()))
        };
        let id = id.to_owned();
        self.record_if_changed(event, move |db| Ok(db.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])? > 0))
            .await
    }

    /// The newest run of a persistent sandbox, not counting the runs file transfers held it with.
    pub async fn last_run_of(&self, sandbox_id: &str, since_ms: u64) -> Result<Option<RunRecord>, StoreError> {
        self.newest_run_of(sandbox_id, since_ms, "").await
    }

    /// The newest run of a persistent sandbox that has ended, as `last_run_of` counts them.
    pub async fn last_ended_run_of(&self, sandbox_id: &str, since_ms: u64) -> Result<Option<RunRecord>, StoreError> {
        self.newest_run_of(sandbox_id, since_ms, "AND finished_at_ms IS NOT NULL").await
    }

    /// `since_ms`: the sandbox's creation; a sandbox of the same name and project removed before
    /// it had the same id, and its runs are not this one's.
    async fn newest_run_of(
        &self,
        sandbox_id: &str,
        since_ms: u64,
        and: &'static str,
    ) -> Result<Option<RunRecord>, StoreError> {
        let sandbox_id = sandbox_id.to_owned();
        let since_ms = i64::try_from(since_ms).unwrap_or(i64::MAX);
        self.with(move |db| {
            let row = db
                .query_row(
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM runs WHERE sandbox_id = ?1 AND for_transfer = 0 \
                         AND started_at_ms >= ?2 {and} ORDER BY started_at_ms DESC, id DESC LIMIT 1"
                    ),
                    params![sandbox_id, since_ms],
                    raw_record,
                )
                .optional()?;
            row.map(RawRecord::into_record).transpose()
        })
        .await
    }

    pub async fn run_finished(
        &self,
        caller: &Caller,
        sandbox_id: Option<&str>,
        result: &RunResult,
        finished_at_ms: u64,
    ) -> Result<(), StoreError> {
        let event = AuditEvent {
            namespace: Some(caller.namespace.clone()),
            sandbox: sandbox_id.map(str::to_owned),
            run: Some(result.id.clone()),
            limits: Some(result.limits),
            ..AuditEvent::new(
                caller.actor.clone(),
                Details::RunFinished(RunFinished {
                    outcome: RunOutcome::Ended(RunEnd::from(result)),
                    details: RunFinishedDetails {
                        language: Some(result.language),
                        finished_at_ms,
                        denials: result.denials.clone(),
                        network_denials: result.network_denials.clone(),
                    },
                }),
            )
        };
        let result = result.clone();
        let denials = match result.denials.is_empty() {
            true => None,
            false => Some(serde_json::to_string(&result.denials)?),
        };
        let network_denials = match result.network_denials.is_empty() {
            true => None,
            false => Some(serde_json::to_string(&result.network_denials)?),
        };
        self.record(event, move |db| {
            db.prepare_cached(
                "UPDATE runs SET finished_at_ms = ?2, exit_code = ?3, signal = ?4, killed_by = ?5, wall_ms = ?6,
                 cpu_ms = ?7, peak_memory_bytes = ?8, stdout_bytes = ?9, stderr_bytes = ?10, denials = ?11,
                 network_denials = ?12
                 WHERE id = ?1",
            )?
            .execute(params![
                result.id,
                finished_at_ms as i64,
                result.exit_code,
                result.signal,
                result.killed_by.map(KilledBy::as_str),
                result.wall_ms as i64,
                result.cpu_ms as i64,
                result.peak_memory_bytes as i64,
                result.stdout_bytes as i64,
                result.stderr_bytes as i64,
                denials,
                network_denials,
            ])?;
            run_files::insert(db, &result)?;
            Ok(())
        })
        .await
    }

    pub async fn run_failed(
        &self,
        caller: &Caller,
        sandbox_id: Option<&str>,
        id: &str,
        error: &str,
        finished_at_ms: u64,
    ) -> Result<(), StoreError> {
        let event = AuditEvent {
            namespace: Some(caller.namespace.clone()),
            sandbox: sandbox_id.map(str::to_owned),
            run: Some(id.to_owned()),
            ..AuditEvent::new(
                caller.actor.clone(),
                Details::RunFinished(RunFinished {
                    outcome: RunOutcome::Failed { error: error.to_owned() },
                    details: RunFinishedDetails {
                        language: None,
                        finished_at_ms,
                        denials: Vec::new(),
                        network_denials: Vec::new(),
                    },
                }),
            )
        };
        let (id, error) = (id.to_owned(), error.to_owned());
        self.record(event, move |db| {
            db.prepare_cached("UPDATE runs SET finished_at_ms = ?2, error = ?3 WHERE id = ?1")?.execute(params![
                id,
                finished_at_ms as i64,
                error
            ])?;
            Ok(())
        })
        .await
    }

    /// Closes every run a previous agent left unfinished (it crashed or was killed), each with a
    /// `run.interrupted` audit line: `killed_by: interrupted`, finished now. Called at start,
    /// before any run of this agent begins. `cleaned_up` says whether the agent has just removed
    /// everything such runs left on the host. Returns the ids closed.
    pub async fn close_interrupted_runs(&self, cleaned_up: bool, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let open = self
            .with(|db| {
                let mut statement = db.prepare(
                    "SELECT id, sandbox_id, namespace, language, started_at_ms FROM runs
                     WHERE finished_at_ms IS NULL ORDER BY started_at_ms, id",
                )?;
                let rows = statement.query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let mut closed = Vec::with_capacity(open.len());
        for (id, sandbox_id, namespace, language, started_at_ms) in open {
            let event = AuditEvent {
                namespace: Some(namespace),
                sandbox: sandbox_id,
                run: Some(id.clone()),
                ..AuditEvent::new(
                    bkg_schema::audit::AGENT_ACTOR,
                    Details::RunInterrupted(RunInterrupted {
                        language: Language::parse(&language),
                        started_at_ms: started_at_ms.max(0) as u64,
                        finished_at_ms: now_ms,
                        reason: "the agent stopped before the run ended".into(),
                    }),
                )
            };
            let run_id = id.clone();
            self.record(event, move |db| {
                db.execute(
                    "UPDATE runs SET finished_at_ms = ?2, killed_by = ?3, cleaned_up = ?4
                     WHERE id = ?1 AND finished_at_ms IS NULL",
                    params![run_id, now_ms as i64, KilledBy::Interrupted.as_str(), cleaned_up],
                )?;
                Ok(())
            })
            .await?;
            closed.push(id);
        }
        if cleaned_up {
            // Runs that ended but whose cleanup the crash kept from being recorded: the start-up
            // cleanup just removed what was left of them.
            self.with(|db| {
                db.execute("UPDATE runs SET cleaned_up = 1 WHERE cleaned_up = 0", [])?;
                Ok(())
            })
            .await?;
        }
        Ok(closed)
    }

    /// Records an event that changes no state of the store (the agent's configuration, a sync
    /// failure): it still goes through the audit log and the outbox.
    pub async fn note(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.record(event, |_| Ok(())).await
    }

    pub async fn run_cleaned_up(&self, id: &str, confirmed: bool) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |db| {
            db.prepare_cached("UPDATE runs SET cleaned_up = ?2 WHERE id = ?1")?.execute(params![id, confirmed])?;
            Ok(())
        })
        .await
    }

    pub async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |db| {
            let row = db
                .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), params![id], raw_record)
                .optional()?;
            row.map(RawRecord::into_record).transpose()
        })
        .await
    }

    /// The newest runs, of every namespace or of one, of every sandbox or of one; with `before`
    /// (a run's id) those that come after it in this order, the next page.
    /// Runs, newest first; of one sandbox, those since `since_ms` (its creation, see
    /// `newest_run_of`).
    pub async fn list_runs(
        &self,
        namespace: Option<String>,
        sandbox: Option<(String, u64)>,
        before: Option<String>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (sandbox_id, since_ms) = match sandbox {
            Some((id, since_ms)) => (Some(id), i64::try_from(since_ms).unwrap_or(i64::MAX)),
            None => (None, 0),
        };
        self.with(move |db| {
            let mut statement = db.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR sandbox_id = ?3) \
                 AND started_at_ms >= ?5 \
                 AND (?4 IS NULL OR (started_at_ms, id) < (SELECT started_at_ms, id FROM runs WHERE id = ?4)) \
                 ORDER BY started_at_ms DESC, id DESC LIMIT ?1"
            ))?;
            let rows = statement.query_map(params![limit, namespace, sandbox_id, before, since_ms], raw_record)?;
            rows.map(|row| row.map_err(StoreError::from).and_then(RawRecord::into_record)).collect()
        })
        .await
    }

    /// Proves the store is writable (for /healthz) without changing it.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.with(|db| {
            // A health check must answer quickly: a lock held by someone else for this long
            // already means the store cannot take the agent's writes.
            db.busy_timeout(std::time::Duration::from_millis(250))?;
            let probe = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .and_then(|transaction| transaction.rollback());
            db.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(probe?)
        })
        .await
    }
}

/// Moves the env values a store written by an older agent kept in its sandbox rows to the
/// sandboxes' own `env.json`. A sandbox whose project is gone keeps its row as it was.
fn move_env_values_out(connection: &Connection, state_dir: &Path) -> Result<(), StoreError> {
    let mut statement = connection.prepare("SELECT id, definition FROM sandboxes")?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, json) in rows {
        let definition: SandboxDefinition = serde_json::from_str(&json)?;
        if definition.env.values().all(String::is_empty) {
            continue;
        }
        match sandbox_env::save(state_dir, &definition) {
            Ok(kept) => {
                let json = serde_json::to_string(&kept)?;
                connection.execute("UPDATE sandboxes SET definition = ?2 WHERE id = ?1", params![id, json])?;
            }
            Err(error) => tracing::warn!(sandbox = %id, %error, "could not move its env values out of the store"),
        }
    }
    Ok(())
}

/// A sandbox row with its environment's values put back.
fn stored_sandbox(state_dir: &Path, json: &str, created_at_ms: i64) -> Result<StoredSandbox, StoreError> {
    let mut definition: SandboxDefinition = serde_json::from_str(json)?;
    sandbox_env::load(state_dir, &mut definition)?;
    Ok(StoredSandbox { definition, created_at_ms: created_at_ms.max(0) as u64 })
}

impl crate::sync::Outbox for Store {
    async fn pending(&self, limit: usize) -> Result<Vec<crate::sync::OutboxEvent>, crate::sync::SyncError> {
        let rows = self.outbox_pending(limit).await.map_err(outbox_error)?;
        Ok(rows.into_iter().map(outbox_event).collect())
    }

    async fn mark_synced(&self, seqs: Vec<u64>, at_ms: u64) -> Result<(), crate::sync::SyncError> {
        self.outbox_mark_synced(seqs, at_ms).await.map_err(outbox_error)
    }

    async fn backlog(&self) -> Result<crate::sync::Backlog, crate::sync::SyncError> {
        self.outbox_backlog().await.map_err(outbox_error)
    }

    async fn last_synced_ms(&self) -> Result<Option<u64>, crate::sync::SyncError> {
        self.outbox_last_synced_ms().await.map_err(outbox_error)
    }

    async fn requeue_after(&self, seq: u64) -> Result<u64, crate::sync::SyncError> {
        self.outbox_requeue_after(seq).await.map_err(outbox_error)
    }

    async fn newest_synced(&self) -> Result<Option<(String, u64)>, crate::sync::SyncError> {
        self.outbox_newest_synced().await.map_err(outbox_error)
    }

    async fn attempt_failed(&self, seq: u64, reason: &str, max_attempts: u32) -> Result<bool, crate::sync::SyncError> {
        self.outbox_attempt_failed(seq, reason, max_attempts).await.map_err(outbox_error)
    }

    async fn parked(&self) -> Result<Vec<crate::sync::ParkedEvent>, crate::sync::SyncError> {
        self.outbox_parked().await.map_err(outbox_error)
    }
}

fn outbox_error(error: StoreError) -> crate::sync::SyncError {
    crate::sync::SyncError::Outbox(Box::new(error))
}

fn outbox_event(row: OutboxRow) -> crate::sync::OutboxEvent {
    crate::sync::OutboxEvent {
        seq: row.seq,
        agent_id: row.agent_id,
        namespace: row.namespace.unwrap_or_default(),
        action: row.action,
        ts_ms: row.ts_ms,
        line: row.line,
    }
}

fn insert_outbox(transaction: &rusqlite::Transaction<'_>, lines: &[WrittenLine]) -> Result<(), StoreError> {
    let mut statement = transaction.prepare_cached(
        "INSERT OR IGNORE INTO outbox (seq, agent_id, namespace, action, ts_ms, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for line in lines {
        statement.execute(params![
            line.seq as i64,
            line.agent_id,
            line.namespace,
            line.action,
            line.ts_ms as i64,
            line.line
        ])?;
    }
    Ok(())
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > known {
        return Err(StoreError::TooNew { found: version, known });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

const RUN_COLUMNS: &str = "id, language, started_at_ms, finished_at_ms, limits, exit_code, signal, killed_by, wall_ms, \
    cpu_ms, peak_memory_bytes, stdout_bytes, stderr_bytes, cleaned_up, error, namespace, sandbox_id, denials, \
    network_denials, for_transfer";

struct RawRecord {
    id: String,
    language: String,
    started_at_ms: i64,
    finished_at_ms: Option<i64>,
    limits: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    killed_by: Option<String>,
    wall_ms: Option<i64>,
    cpu_ms: Option<i64>,
    peak_memory_bytes: Option<i64>,
    stdout_bytes: Option<i64>,
    stderr_bytes: Option<i64>,
    cleaned_up: bool,
    error: Option<String>,
    namespace: String,
    sandbox_id: Option<String>,
    denials: Option<String>,
    network_denials: Option<String>,
    for_transfer: bool,
}

fn raw_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: row.get(0)?,
        language: row.get(1)?,
        started_at_ms: row.get(2)?,
        finished_at_ms: row.get(3)?,
        limits: row.get(4)?,
        exit_code: row.get(5)?,
        signal: row.get(6)?,
        killed_by: row.get(7)?,
        wall_ms: row.get(8)?,
        cpu_ms: row.get(9)?,
        peak_memory_bytes: row.get(10)?,
        stdout_bytes: row.get(11)?,
        stderr_bytes: row.get(12)?,
        cleaned_up: row.get(13)?,
        error: row.get(14)?,
        namespace: row.get(15)?,
        sandbox_id: row.get(16)?,
        denials: row.get(17)?,
        network_denials: row.get(18)?,
        for_transfer: row.get(19)?,
    })
}

impl RawRecord {
    fn into_record(self) -> Result<RunRecord, StoreError> {
        let to_u64 = |value: Option<i64>| value.map(|v| v.max(0) as u64);
        Ok(RunRecord {
            language: serde_json::from_value(serde_json::Value::String(self.language))?,
            killed_by: self.killed_by.map(|k| serde_json::from_value(serde_json::Value::String(k))).transpose()?,
            limits: serde_json::from_str(&self.limits)?,
            id: self.id,
            namespace: self.namespace,
            sandbox_id: self.sandbox_id,
            started_at_ms: self.started_at_ms.max(0) as u64,
            finished_at_ms: to_u64(self.finished_at_ms),
            exit_code: self.exit_code,
            signal: self.signal,
            wall_ms: to_u64(self.wall_ms),
            cpu_ms: to_u64(self.cpu_ms),
            peak_memory_bytes: to_u64(self.peak_memory_bytes),
            stdout_bytes: to_u64(self.stdout_bytes),
            stderr_bytes: to_u64(self.stderr_bytes),
            cleaned_up: self.cleaned_up,
            error: self.error,
            denials: self.denials.map(|text| serde_json::from_str(&text)).transpose()?.unwrap_or_default(),
            network_denials: self
                .network_denials
                .map(|text| serde_json::from_str(&text))
                .transpose()?
                .unwrap_or_default(),
            file_transfer: self.for_transfer,
            queued: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn caller() -> Caller {
        Caller { actor: "uid:0".into(), namespace: "default".into() }
    }

    fn started(id: &'static str, sandbox_id: Option<&'static str>, started_at_ms: u64) -> RunStart<'static> {
        RunStart {
            id,
            sandbox_id,
            language: Language::Python,
            limits: Limits::DEFAULT,
            started_at_ms,
            for_transfer: false,
        }
    }

    #[tokio::test]
    async fn a_transfer_run_is_listed_but_is_not_its_sandbox_last_run() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("state.db"), AuditLog::open(dir.path())?)?;
        store.run_started(&caller(), started("run_code", Some("sbx_1"), 10)).await?;
        let transfer = RunStart { for_transfer: true, ..started("run_transfer", Some("sbx_1"), 20) };
        store.run_started(&caller(), transfer).await?;
        let last = store.last_run_of("sbx_1", 0).await?;
        assert_eq!(last.map(|run| run.id), Some("run_code".to_owned()));
        let listed: Vec<(String, bool)> = store
            .list_runs(None, Some(("sbx_1".into(), 0)), None, 10)
            .await?
            .into_iter()
            .map(|run| (run.id, run.file_transfer))
            .collect();
        assert_eq!(listed, [("run_transfer".to_owned(), true), ("run_code".to_owned(), false)]);
        Ok(())
    }

    #[tokio::test]
    async fn runs_round_trip_and_migrations_are_idempotent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let store = Store::open(&path, AuditLog::open(dir.path())?)?;
        store.run_started(&caller(), started("run_1", None, 10)).await?;
        let record = store.get_run("run_1").await?;
        assert_eq!(record.as_ref().map(|r| r.finished_at_ms), Some(None));
        store.run_cleaned_up("run_1", true).await?;
        store.durable().await;
        drop(store);

        let reopened = Store::open(&path, AuditLog::open(dir.path())?)?;
        let runs = reopened.list_runs(None, None, None, 10).await?;
        assert_eq!(runs.len(), 1);
        assert!(runs[0].cleaned_up);
        assert_eq!(runs[0].limits, Limits::DEFAULT);
        reopened.check_writable().await?;
        Ok(())
    }

    /// A file that is not a database where state.db belongs is named, with what to do.
    /// Two removals of one user at once: one removes it and is recorded; the other finds nothing
    /// and leaves no record, in the log or the outbox (found by a new-user trial).
    #[tokio::test]
    async fn a_change_that_finds_nothing_to_do_leaves_no_record() -> TestResult {
        use bkg_schema::auth::UserInfo;
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("state.db"), AuditLog::open(dir.path())?)?;
        let user = UserInfo { username: "ada".into(), namespace: "lab".into(), created_at_ms: 1 };
        assert!(store.insert_user(&caller(), &user, "hash".into()).await?);
        let remover = caller();
        let (first, second) = tokio::join!(store.delete_user(&remover, &user), store.delete_user(&remover, &user));
        assert_eq!([first?, second?].iter().filter(|removed| **removed).count(), 1);
        assert!(!store.delete_user(&caller(), &user).await?, "nothing left to remove");
        store.durable().await;
        let removals = |text: &str| text.matches("user_removed").count();
        let logged: String = bkg_schema::audit::log_files(&dir.path().join("audit"))?
            .iter()
            .map(|(_, path)| std::fs::read_to_string(path).unwrap_or_default())
            .collect();
        assert_eq!(removals(&logged), 1, "{logged}");
        let outbox: Vec<String> = store
            .with(|db| {
                let mut statement = db.prepare("SELECT line FROM outbox")?;
                let lines = statement.query_map([], |row| row.get::<_, String>(0))?;
                Ok(lines.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        assert_eq!(removals(&outbox.concat()), 1, "{outbox:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_damaged_store_is_named_with_what_to_do() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        std::fs::write(&path, vec![b'x'; 8192])?;
        let refused = Store::open(&path, AuditLog::open(dir.path())?).err().ok_or("a damaged store was taken")?;
        assert!(matches!(refused, StoreError::NotADatabase { .. }), "{refused}");
        Ok(())
    }

    /// A state directory whose store (its `state.db`, closed) and log hold one run's start.
    async fn a_closed_store_with_one_run() -> Result<(tempfile::TempDir, std::path::PathBuf), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let store = Store::open(&path, AuditLog::open(dir.path())?)?;
        store.run_started(&caller(), started("run_1", None, 10)).await?;
        store.durable().await;
        drop(store);
        Ok((dir, path))
    }

    /// A log begun again beside a store whose outbox holds later events is refused: its seqs
    /// would be those the outbox has, and its events never reach the change feed or bkg_db (found
    /// by a new-user trial who moved the audit directory aside, as the agent's advice said then).
    #[tokio::test]
    async fn a_log_begun_again_beside_a_store_with_later_events_is_refused() -> TestResult {
        let (dir, path) = a_closed_store_with_one_run().await?;
        std::fs::rename(dir.path().join("audit"), dir.path().join("audit.old"))?;
        std::fs::rename(dir.path().join("audit.key"), dir.path().join("audit.key.old"))?;
        let refused = Store::open(&path, AuditLog::open(dir.path())?).err().ok_or("a log begun again was taken")?;
        assert!(matches!(refused, StoreError::LogBehind { stored: 2, logged: 1, .. }), "{refused}");
        Ok(())
    }

    /// A store cut to nothing beside a log with history is refused, not started anew: it would
    /// forget every run, key and sandbox without a word (found by a new-user trial).
    #[tokio::test]
    async fn an_empty_store_beside_a_log_with_history_is_refused() -> TestResult {
        let (dir, path) = a_closed_store_with_one_run().await?;
        std::fs::write(&path, b"")?;
        for extra in ["state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(extra));
        }
        let refused = Store::open(&path, AuditLog::open(dir.path())?).err().ok_or("an empty store was taken")?;
        assert!(matches!(refused, StoreError::EmptyWithHistory { records: 2, .. }), "{refused}");
        // Refused again: the refusal made no store of it.
        assert!(Store::open(&path, AuditLog::open(dir.path())?).is_err());
        Ok(())
    }

    /// A change whose transaction fails (a full disk) takes its line back: the signed chain never
    /// tells of it, and the outbox has no hole that the sync would stop at (found by a new-user
    /// trial with a full state directory).
    #[tokio::test]
    async fn a_change_that_fails_leaves_no_line_and_no_hole() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let log = AuditLog::open(dir.path())?;
        let key = *log.public_key();
        let store = Store::open(&path, log)?;
        store.run_started(&caller(), started("run_1", None, 10)).await?;
        let failed = store
            .record(
                AuditEvent::new(
                    "uid:0",
                    Details::ConfigChanged(bkg_schema::audit::ConfigChanged::UserCreated {
                        user_created: "ann".into(),
                    }),
                ),
                |db| Ok(db.execute("INSERT INTO no_such_table VALUES (1)", []).map(drop)?),
            )
            .await;
        assert!(failed.is_err());
        store.run_started(&caller(), started("run_2", None, 11)).await?;
        store.durable().await;
        let pending = store.outbox_pending(100).await?;
        let seqs: Vec<u64> = pending.iter().map(|row| row.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
        assert!(!pending.iter().any(|row| row.action == "config.changed"), "{seqs:?}");
        let files: Vec<PathBuf> =
            bkg_schema::audit::log_files(&dir.path().join("audit"))?.into_iter().map(|(_, file)| file).collect();
        let text: String = files.iter().map(std::fs::read_to_string).collect::<Result<_, _>>()?;
        assert!(!text.contains("config.changed"), "{text}");
        assert_eq!(text.lines().count(), seqs.len(), "the log holds what the outbox does");
        let report = bkg_schema::audit::verify(&files, &key)?;
        assert!(report.first_bad.is_none(), "the chain verifies");
        Ok(())
    }

    #[tokio::test]
    async fn every_audit_line_reaches_the_outbox_in_order_even_after_a_crash() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let store = Store::open(&path, AuditLog::open(dir.path())?)?;
        store.run_started(&caller(), started("run_1", None, 10)).await?;
        store.durable().await;
        drop(store);
        // A crash between the audit line and its SQLite transaction: the line is on disk only.
        let mut log = AuditLog::open(dir.path())?;
        log.append(&AuditEvent::new(
            "uid:0",
            Details::ConfigChanged(bkg_schema::audit::ConfigChanged::UserCreated { user_created: "ann".into() }),
        ))?;
        drop(log);

        let store = Store::open(&path, AuditLog::open(dir.path())?)?;
        let pending = store.outbox_pending(100).await?;
        let seqs: Vec<u64> = pending.iter().map(|row| row.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap, no duplicate");
        assert!(pending.iter().any(|row| row.action == "run.started"));
        assert!(pending.iter().any(|row| row.action == "config.changed"), "the crash's line was recovered");
        store.outbox_mark_synced(vec![1, 2], crate::ids::now_ms()).await?;
        assert_eq!(store.outbox_backlog().await?.events, seqs.len() as u64 - 2);
        Ok(())
    }

    #[tokio::test]
    async fn an_event_refused_too_often_is_parked_with_its_record_and_retried() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("state.db"), AuditLog::open(dir.path())?)?;
        store.run_started(&caller(), started("run_1", None, 10)).await?;
        let seq = store.outbox_pending(100).await?.last().map(|row| row.seq).ok_or("no event")?;
        assert!(!store.outbox_attempt_failed(seq, "first", 2).await?);
        assert!(store.outbox_attempt_failed(seq, "second", 2).await?);
        assert!(store.outbox_pending(100).await?.iter().all(|row| row.seq != seq), "parked events are not pending");
        let parked = store.outbox_parked().await?;
        assert_eq!((parked.len(), parked[0].seq, parked[0].attempts, parked[0].reason.as_str()), (1, seq, 2, "second"));
        assert_eq!(store.outbox_backlog().await?.parked, 1);
        let pending = store.outbox_pending(100).await?;
        assert!(pending.iter().any(|row| row.action == "sync.parked"), "parking has its audit record");

        assert!(store.outbox_retry(&caller(), Some(seq + 100)).await?.is_empty());
        assert_eq!(store.outbox_retry(&caller(), None).await?, [seq]);
        assert_eq!(store.outbox_backlog().await?.parked, 0);
        let pending = store.outbox_pending(100).await?;
        assert!(pending.iter().any(|row| row.seq == seq) && pending.iter().any(|row| row.action == "sync.retried"));
        Ok(())
    }

    #[tokio::test]
    async fn a_sandboxs_env_values_stay_out_of_the_store_and_come_back_to_run_it() -> TestResult {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir()?;
        let project = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("state.db"), AuditLog::open(dir.path())?)?;
        let definition = SandboxDefinition {
            env: [("TOKEN".to_owned(), "value-kept-apart".to_owned())].into(),
            ..SandboxDefinition::new(
                "api".into(),
                "default".into(),
                project.path().display().to_string(),
                Language::Python,
            )
        };
        store.put_sandbox(&caller(), "api-1", &definition, false, 5).await?;
        let stored: String =
            store.with(|db| Ok(db.query_row("SELECT definition FROM sandboxes", [], |row| row.get(0))?)).await?;
        assert!(stored.contains("TOKEN") && !stored.contains("value-kept-apart"), "{stored}");
        let lines = store.outbox_pending(100).await?;
        assert!(lines.iter().all(|row| !row.line.contains("value-kept-apart")));
        assert_eq!(store.get_sandbox("api-1").await?.map(|stored| stored.definition), Some(definition.clone()));
        // In the sandbox's home in the state dir, never in the project.
        let id = bkg_schema::sandbox::sandbox_id(&definition.project_dir, "api");
        let file = bkg_schema::paths::SandboxHome::new(dir.path(), "default", &id).env_file();
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
        assert!(!project.path().join(".bkg").exists());
        // A row an older agent wrote, values inside, has them moved out at the next open.
        let legacy = serde_json::to_string(&definition)?;
        store.with(move |db| Ok(db.execute("UPDATE sandboxes SET definition = ?1", params![legacy])?)).await?;
        std::fs::remove_file(&file)?;
        store.durable().await;
        drop(store);
        let store = Store::open(&dir.path().join("state.db"), AuditLog::open(dir.path())?)?;
        assert_eq!(store.get_sandbox("api-1").await?.map(|stored| stored.definition), Some(definition.clone()));
        assert!(file.exists());
        let stored: String =
            store.with(|db| Ok(db.query_row("SELECT definition FROM sandboxes", [], |row| row.get(0))?)).await?;
        assert!(!stored.contains("value-kept-apart"), "{stored}");
        // Defined again without env: the file goes.
        store
            .put_sandbox(&caller(), "api-1", &SandboxDefinition { env: Default::default(), ..definition }, true, 6)
            .await?;
        assert!(!file.exists());
        Ok(())
    }

    #[tokio::test]
    async fn unfinished_runs_are_closed_as_interrupted_with_an_audit_line() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let store = Store::open(&path, AuditLog::open(dir.path())?)?;
        store.run_started(&caller(), started("run_open", Some("api-1"), 10)).await?;
        store.run_started(&caller(), started("run_done", None, 11)).await?;
        store.run_failed(&caller(), None, "run_done", "boom", 12).await?;
        assert_eq!(store.close_interrupted_runs(true, 99).await?, vec!["run_open".to_owned()]);
        let record = store.get_run("run_open").await?.ok_or("run_open is gone")?;
        assert_eq!(record.finished_at_ms, Some(99));
        assert_eq!(record.killed_by, Some(KilledBy::Interrupted));
        assert!(record.cleaned_up);
        assert_eq!(store.get_run("run_done").await?.and_then(|run| run.killed_by), None);
        let pending = store.outbox_pending(100).await?;
        let interrupted = pending.iter().find(|row| row.action == "run.interrupted").ok_or("no audit line")?;
        let line: serde_json::Value = serde_json::from_str(&interrupted.line)?;
        assert_eq!(line["run"], "run_open", "{line}");
        assert_eq!(line["details"]["finished_at_ms"], 99, "{line}");
        assert_eq!(line["details"]["language"], "python", "{line}");
        assert!(store.close_interrupted_runs(true, 100).await?.is_empty(), "closed only once");
        Ok(())
    }

    #[test]
    fn a_newer_database_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        Connection::open(&path)?.pragma_update(None, "user_version", 99)?;
        assert!(matches!(Store::open(&path, AuditLog::open(dir.path())?), Err(StoreError::TooNew { found: 99, .. })));
        Ok(())
    }
}
