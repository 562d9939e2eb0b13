//! The files runs kept (bkg-agent/src/artefacts/): their rows, what each namespace's objects
//! take (its quota), and the objects retention may delete once no run refers to them.

use std::collections::BTreeSet;

use bkg_schema::RunResult;
use bkg_schema::artefacts::{RunFile, RunFileKind};
use rusqlite::params;

use super::{Store, StoreError};

/// What a namespace's stored objects take: their bytes (each digest once) and their digests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespaceObjects {
    pub bytes: u64,
    pub digests: BTreeSet<String>,
}

/// Records a finished run's files, in the transaction that records its end.
pub(super) fn insert(db: &rusqlite::Transaction<'_>, result: &RunResult) -> Result<(), StoreError> {
    if result.files.is_empty() {
        return Ok(());
    }
    let mut insert = db.prepare_cached(
        "INSERT OR REPLACE INTO run_files (run_id, path, kind, namespace, sha256, bytes)
         SELECT ?1, ?2, ?3, namespace, ?4, ?5 FROM runs WHERE id = ?1",
    )?;
    for file in &result.files {
        insert.execute(params![result.id, file.path, file.kind.as_str(), file.sha256, file.bytes as i64])?;
    }
    Ok(())
}

/// Deletes the files of runs being expired; returns the objects (namespace, sha256) that no
/// other run refers to any more.
pub(super) fn delete_for_runs(
    db: &rusqlite::Transaction<'_>,
    run_ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    let mut objects = BTreeSet::new();
    {
        let mut select = db.prepare("SELECT namespace, sha256 FROM run_files WHERE run_id = ?1")?;
        let mut delete = db.prepare("DELETE FROM run_files WHERE run_id = ?1")?;
        for id in run_ids {
            let rows = select.query_map(params![id], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            for row in rows {
                objects.insert(row?);
            }
            delete.execute(params![id])?;
        }
    }
    let mut still_used = db.prepare("SELECT 1 FROM run_files WHERE namespace = ?1 AND sha256 = ?2 LIMIT 1")?;
    let mut orphans = Vec::new();
    for (namespace, sha256) in objects {
        if !still_used.exists(params![namespace, sha256])? {
            orphans.push((namespace, sha256));
        }
    }
    Ok(orphans)
}

impl Store {
    /// The files a run kept, in the order it kept them.
    pub async fn run_files(&self, run_id: &str) -> Result<Vec<RunFile>, StoreError> {
        let run_id = run_id.to_owned();
        self.with(move |db| {
            let mut statement =
                db.prepare("SELECT path, kind, bytes, sha256 FROM run_files WHERE run_id = ?1 ORDER BY rowid")?;
            let rows = statement.query_map(params![run_id], |row| {
                let kind: String = row.get(1)?;
                Ok(RunFile {
                    path: row.get(0)?,
                    kind: RunFileKind::parse(&kind).unwrap_or(RunFileKind::File),
                    bytes: row.get::<_, i64>(2)?.max(0) as u64,
                    sha256: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// What `namespace`'s objects take, each digest counted once.
    pub async fn namespace_objects(&self, namespace: &str) -> Result<NamespaceObjects, StoreError> {
        let namespace = namespace.to_owned();
        self.with(move |db| {
            let mut statement =
                db.prepare("SELECT sha256, max(bytes) FROM run_files WHERE namespace = ?1 GROUP BY sha256")?;
            let rows =
                statement.query_map(params![namespace], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            let mut objects = NamespaceObjects::default();
            for row in rows {
                let (digest, bytes) = row?;
                objects.bytes += bytes.max(0) as u64;
                objects.digests.insert(digest);
            }
            Ok(objects)
        })
        .await
    }
}
