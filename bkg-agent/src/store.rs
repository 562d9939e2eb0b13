//! The agent's local store: SQLite in the state directory, with versioned migrations.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bkg_schema::sandbox::SandboxDefinition;
use bkg_schema::{KilledBy, Language, Limits, RunRecord, RunResult};
use rusqlite::{Connection, OptionalExtension, params};

/// Each entry upgrades the schema by one version; `PRAGMA user_version` records how far a
/// database has come. Never edit a released entry: add a new one.
const MIGRATIONS: &[&str] = &["CREATE TABLE runs (
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
];

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
}

#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut connection)?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
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

    pub async fn run_started(
        &self,
        id: &str,
        sandbox_id: Option<&str>,
        language: Language,
        limits: Limits,
        started_at_ms: u64,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let sandbox_id = sandbox_id.map(str::to_owned);
        let limits = serde_json::to_string(&limits)?;
        self.with(move |db| {
            db.execute(
                "INSERT INTO runs (id, sandbox_id, language, started_at_ms, limits) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, sandbox_id, language.as_str(), started_at_ms as i64, limits],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn put_sandbox(
        &self,
        id: &str,
        definition: &SandboxDefinition,
        now_ms: u64,
    ) -> Result<StoredSandbox, StoreError> {
        let id = id.to_owned();
        let definition = definition.clone();
        self.with(move |db| {
            let json = serde_json::to_string(&definition)?;
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
        self.with(move |db| {
            let row = db
                .query_row("SELECT definition, created_at_ms FROM sandboxes WHERE id = ?1", params![id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            row.map(|(json, created)| {
                Ok(StoredSandbox { definition: serde_json::from_str(&json)?, created_at_ms: created.max(0) as u64 })
            })
            .transpose()
        })
        .await
    }

    /// Every persistent sandbox, or those of one project.
    pub async fn list_sandboxes(&self, project_dir: Option<String>) -> Result<Vec<StoredSandbox>, StoreError> {
        self.with(move |db| {
            let mut statement = db.prepare(
                "SELECT definition, created_at_ms FROM sandboxes WHERE ?1 IS NULL OR project_dir = ?1 ORDER BY project_dir, name",
            )?;
            let rows = statement
                .query_map(params![project_dir], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            rows.map(|row| {
                let (json, created) = row?;
                Ok(StoredSandbox { definition: serde_json::from_str(&json)?, created_at_ms: created.max(0) as u64 })
            })
            .collect()
        })
        .await
    }

    pub async fn delete_sandbox(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |db| Ok(db.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])? > 0)).await
    }

    /// The newest run of a persistent sandbox.
    pub async fn last_run_of(&self, sandbox_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let sandbox_id = sandbox_id.to_owned();
        self.with(move |db| {
            let row = db
                .query_row(
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM runs WHERE sandbox_id = ?1 ORDER BY started_at_ms DESC, id DESC LIMIT 1"
                    ),
                    params![sandbox_id],
                    raw_record,
                )
                .optional()?;
            row.map(RawRecord::into_record).transpose()
        })
        .await
    }

    pub async fn run_finished(&self, result: &RunResult, finished_at_ms: u64) -> Result<(), StoreError> {
        let result = result.clone();
        self.with(move |db| {
            db.execute(
                "UPDATE runs SET finished_at_ms = ?2, exit_code = ?3, signal = ?4, killed_by = ?5, wall_ms = ?6,
                 cpu_ms = ?7, peak_memory_bytes = ?8, stdout_bytes = ?9, stderr_bytes = ?10 WHERE id = ?1",
                params![
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
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn run_failed(&self, id: &str, error: &str, finished_at_ms: u64) -> Result<(), StoreError> {
        let (id, error) = (id.to_owned(), error.to_owned());
        self.with(move |db| {
            db.execute(
                "UPDATE runs SET finished_at_ms = ?2, error = ?3 WHERE id = ?1",
                params![id, finished_at_ms as i64, error],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn run_cleaned_up(&self, id: &str, confirmed: bool) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |db| {
            db.execute("UPDATE runs SET cleaned_up = ?2 WHERE id = ?1", params![id, confirmed])?;
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

    pub async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        self.with(move |db| {
            let mut statement =
                db.prepare(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at_ms DESC, id DESC LIMIT ?1"))?;
            let rows = statement.query_map(params![limit], raw_record)?;
            rows.map(|row| row.map_err(StoreError::from).and_then(RawRecord::into_record)).collect()
        })
        .await
    }

    /// Proves the store is writable (for /healthz) without changing it.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.with(|db| {
            let transaction = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            transaction.rollback()?;
            Ok(())
        })
        .await
    }
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
    cpu_ms, peak_memory_bytes, stdout_bytes, stderr_bytes, cleaned_up, error";

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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_round_trip_and_migrations_are_idempotent() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|_| StoreError::Task)?;
        let path = dir.path().join("state.db");
        let store = Store::open(&path)?;
        store.run_started("run_1", None, Language::Python, Limits::DEFAULT, 10).await?;
        let record = store.get_run("run_1").await?;
        assert_eq!(record.as_ref().map(|r| r.finished_at_ms), Some(None));
        store.run_cleaned_up("run_1", true).await?;
        drop(store);

        let reopened = Store::open(&path)?;
        let runs = reopened.list_runs(10).await?;
        assert_eq!(runs.len(), 1);
        assert!(runs[0].cleaned_up);
        assert_eq!(runs[0].limits, Limits::DEFAULT);
        reopened.check_writable().await?;
        Ok(())
    }

    #[test]
    fn a_newer_database_is_refused() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|_| StoreError::Task)?;
        let path = dir.path().join("state.db");
        Connection::open(&path)?.pragma_update(None, "user_version", 99)?;
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { found: 99, .. })));
        Ok(())
    }
}
