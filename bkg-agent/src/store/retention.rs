//! Expiring runs: their rows and their files' rows go, the audit log and the outbox (its
//! mirror) stay.

use rusqlite::params;

use super::{Store, StoreError};

/// A run retention removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredRun {
    pub id: String,
    pub namespace: String,
    pub sandbox_id: Option<String>,
}

/// What one pass of retention removed from the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    pub runs: Vec<ExpiredRun>,
    /// Objects (namespace, sha256) no run in the store refers to any more.
    pub orphans: Vec<(String, String)>,
}

impl Store {
    /// Deletes the runs finished before the cutoff `cutoff_ms(namespace)` gives their namespace,
    /// with their files' rows, and returns them and the objects nothing refers to any more. Runs
    /// still going are never expired.
    pub async fn expire_runs(&self, cutoff_ms: impl Fn(&str) -> u64 + Send + 'static) -> Result<Expired, StoreError> {
        self.with(move |db| {
            let transaction = db.transaction()?;
            let namespaces = {
                let mut statement = transaction.prepare("SELECT DISTINCT namespace FROM runs")?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let mut expired = Vec::new();
            {
                let mut delete = transaction.prepare(
                    "DELETE FROM runs WHERE namespace = ?1 AND finished_at_ms < ?2 RETURNING id, sandbox_id",
                )?;
                for namespace in namespaces {
                    let cutoff = i64::try_from(cutoff_ms(&namespace)).unwrap_or(i64::MAX);
                    let rows = delete.query_map(params![namespace, cutoff], |row| {
                        Ok(ExpiredRun { id: row.get(0)?, namespace: namespace.clone(), sandbox_id: row.get(1)? })
                    })?;
                    expired.extend(rows.collect::<Result<Vec<_>, _>>()?);
                }
            }
            let ids: Vec<String> = expired.iter().map(|run| run.id.clone()).collect();
            let orphans = super::run_files::delete_for_runs(&transaction, &ids)?;
            transaction.commit()?;
            Ok(Expired { runs: expired, orphans })
        })
        .await
    }
}
