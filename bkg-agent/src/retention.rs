//! Retention: runs, their logs and their kept files expire after a time per namespace (default
//! 30 days), in the local store, the object store and bkg_db, where each agent deletes its own
//! runs. The audit log, its outbox
//! and bkg_db's audit_events and changes are never deleted: they are the signed record.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::artefacts::Artefacts;
use crate::store::{ExpiredRun, Store, StoreError};

/// The default retention (docs/bkg-db.md).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often expired runs are looked for (and once at start-up).
const EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("--retention-for wants NAMESPACE=DURATION, not {0:?}")]
    Shape(String),
    #[error("--retention-for {0:?}: `{1}` is no namespace's name (a DNS label: a-z, 0-9, -, at most 56 characters)")]
    Namespace(String, String),
    #[error("--retention-for names namespace `{0}` twice: give each namespace one duration")]
    Twice(String),
    #[error("retention {0:?}: {1}")]
    Duration(String, bkg_schema::UnitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Says `bkg_db` itself.
    #[error(transparent)]
    Db(#[from] crate::sync::SyncError),
    #[error("bkg_db: {}", crate::sync::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// How long each namespace's runs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub default: Duration,
    pub per_namespace: BTreeMap<String, Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self { default: DEFAULT_RETENTION, per_namespace: BTreeMap::new() }
    }
}

impl RetentionPolicy {
    /// From the agent's flags: `--retention DURATION` and `--retention-for NS=DURATION`.
    pub fn parse(default: &str, per_namespace: &[String]) -> Result<Self, RetentionError> {
        let duration = |text: &str| {
            bkg_schema::parse_duration_ms(text)
                .map(Duration::from_millis)
                .map_err(|error| RetentionError::Duration(text.to_owned(), error))
        };
        let mut policy = Self { default: duration(default)?, per_namespace: BTreeMap::new() };
        for entry in per_namespace {
            let (namespace, text) = entry
                .split_once('=')
                .filter(|(namespace, _)| !namespace.is_empty())
                .ok_or_else(|| RetentionError::Shape(entry.clone()))?;
            // A typo would hold for no namespace, without a word (found by a new-user trial).
            if !bkg_schema::sandbox::is_namespace_name(namespace) {
                return Err(RetentionError::Namespace(entry.clone(), namespace.to_owned()));
            }
            if policy.per_namespace.insert(namespace.to_owned(), duration(text)?).is_some() {
                return Err(RetentionError::Twice(namespace.to_owned()));
            }
        }
        Ok(policy)
    }

    /// The policy as the audit log's start record keeps it.
    pub fn recorded(&self) -> bkg_schema::Retention {
        let millis = |duration: &Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        bkg_schema::Retention {
            default_ms: millis(&self.default),
            per_namespace: self
                .per_namespace
                .iter()
                .map(|(namespace, kept)| (namespace.clone(), millis(kept)))
                .collect(),
        }
    }

    pub fn of(&self, namespace: &str) -> Duration {
        self.per_namespace.get(namespace).copied().unwrap_or(self.default)
    }

    /// Runs of `namespace` that finished before this time (ms) have expired.
    pub fn cutoff_ms(&self, namespace: &str, now_ms: u64) -> u64 {
        now_ms.saturating_sub(u64::try_from(self.of(namespace).as_millis()).unwrap_or(u64::MAX))
    }
}

/// bkg_db for retention: its URL, this agent's id, and whether the sync worker has brought its
/// schema up to date (`SyncHandle::migrated`): before that its tables may not be there yet.
pub type RetentionDb = (String, String, tokio::sync::watch::Receiver<bool>);

/// How long the first pass waits for bkg_db's schema before it expires the local store alone.
const FIRST_PASS_PATIENCE: Duration = Duration::from_secs(60);

/// Expires runs now and then every hour, until the runtime ends.
pub fn spawn(store: Store, policy: RetentionPolicy, db: Option<RetentionDb>, artefacts: Arc<Artefacts>) {
    let policy = Arc::new(policy);
    tokio::spawn(async move {
        if let Some((_, _, migrated)) = &db {
            let mut migrated = migrated.clone();
            let _ = tokio::time::timeout(FIRST_PASS_PATIENCE, migrated.wait_for(|migrated| *migrated)).await;
        }
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            ticks.tick().await;
            // bkg_db's rows wait for a pass after its schema is there; the local store does not.
            let ready = db.as_ref().filter(|(_, _, migrated)| *migrated.borrow());
            let ready = ready.map(|(url, agent_id, _)| (url.clone(), agent_id.clone()));
            if let Err(error) = expire(&store, &policy, ready.as_ref(), &artefacts, crate::ids::now_ms()).await {
                tracing::warn!(%error, "retention could not expire runs");
            }
        }
    });
}

/// One pass: the local store, the sandboxes' run logs, then (with `db`: its URL and this agent's
/// id) this agent's rows in bkg_db, then the objects no run refers to any more. Returns the runs
/// expired locally.
pub async fn expire(
    store: &Store,
    policy: &Arc<RetentionPolicy>,
    db: Option<&(String, String)>,
    artefacts: &Artefacts,
    now_ms: u64,
) -> Result<Vec<ExpiredRun>, RetentionError> {
    let cutoffs = Arc::clone(policy);
    let crate::store::Expired { runs: expired, orphans } =
        store.expire_runs(move |namespace| cutoffs.cutoff_ms(namespace, now_ms)).await?;
    for run in &expired {
        let Some(sandbox_id) = &run.sandbox_id else { continue };
        let Some(sandbox) = store.get_sandbox(sandbox_id).await? else { continue };
        let log = Path::new(&sandbox.definition.project_dir)
            .join(".bkg/sandboxes")
            .join(&sandbox.definition.name)
            .join("logs")
            .join(format!("{}.log", run.id));
        if let Err(error) = std::fs::remove_file(&log)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, log = %log.display(), "could not remove an expired run's log");
        }
    }
    if !expired.is_empty() {
        tracing::info!(runs = expired.len(), "retention expired runs");
    }
    let db_client = match db {
        Some((url, agent_id)) => {
            let client = crate::sync::connect(url).await?;
            expire_in_db(&client, agent_id, policy, now_ms).await?;
            Some(client)
        }
        None => None,
    };
    delete_objects(artefacts, db_client.as_ref(), &orphans).await?;
    Ok(expired)
}

/// Deletes the objects of expired runs that no run refers to any more: none in this agent's
/// store, and, with bkg_db, none of any agent there (agents may share a bucket).
async fn delete_objects(
    artefacts: &Artefacts,
    db: Option<&tokio_postgres::Client>,
    orphans: &[(String, String)],
) -> Result<(), RetentionError> {
    for (namespace, sha256) in orphans {
        if let Some(client) = db {
            let used = client
                .query_opt("SELECT 1 FROM run_files WHERE namespace = $1 AND sha256 = $2 LIMIT 1", &[namespace, sha256])
                .await?;
            if used.is_some() {
                continue;
            }
        }
        if let Err(error) = artefacts.delete(namespace, sha256).await {
            tracing::warn!(%error, %namespace, %sha256, "could not delete an expired run's file");
        }
    }
    Ok(())
}

/// Deletes this agent's expired runs and their files' rows from bkg_db, namespace by namespace.
async fn expire_in_db(
    client: &tokio_postgres::Client,
    agent_id: &str,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<u64, RetentionError> {
    let namespaces = client.query("SELECT DISTINCT namespace FROM runs WHERE agent_id = $1", &[&agent_id]).await?;
    let mut deleted = 0;
    for row in namespaces {
        let namespace: String = row.try_get(0)?;
        let cutoff = i64::try_from(policy.cutoff_ms(&namespace, now_ms)).unwrap_or(i64::MAX);
        client
            .execute(
                "DELETE FROM run_files f USING runs r WHERE f.agent_id = r.agent_id AND f.run_id = r.id
                 AND r.agent_id = $1 AND r.namespace = $2 AND r.finished_at_ms < $3",
                &[&agent_id, &namespace, &cutoff],
            )
            .await?;
        deleted += client
            .execute(
                "DELETE FROM runs WHERE agent_id = $1 AND namespace = $2 AND finished_at_ms < $3",
                &[&agent_id, &namespace, &cutoff],
            )
            .await?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_may_keep_its_runs_for_another_time() -> Result<(), RetentionError> {
        let policy = RetentionPolicy::parse("30d", &["ci=1h".into(), "audit=365d".into()])?;
        assert_eq!(policy.of("ci"), Duration::from_secs(3600));
        assert_eq!(policy.of("other"), DEFAULT_RETENTION);
        assert_eq!(policy.cutoff_ms("ci", 10_000_000), 10_000_000 - 3_600_000);
        assert_eq!(policy.cutoff_ms("audit", 5), 0);
        assert!(matches!(RetentionPolicy::parse("30d", &["=1h".into()]), Err(RetentionError::Shape(_))));
        assert!(matches!(RetentionPolicy::parse("soon", &[]), Err(RetentionError::Duration(..))));
        let typo = RetentionPolicy::parse("30d", &["Team=1d".into()]).err().map(|error| error.to_string());
        assert_eq!(
            typo.as_deref(),
            Some(
                "--retention-for \"Team=1d\": `Team` is no namespace's name (a DNS label: a-z, 0-9, -, at most 56 characters)"
            )
        );
        let twice = RetentionPolicy::parse("30d", &["ci=1h".into(), "ci=2h".into()]);
        assert!(matches!(twice, Err(RetentionError::Twice(namespace)) if namespace == "ci"));
        Ok(())
    }
}
