//! Run artefacts (docs/bkg-db.md, "Object storage"): the files a run keeps, stored as objects
//! named by their SHA-256 in their namespace's part of an object store (`object_store`): the
//! local filesystem under the state directory by default, or an S3-compatible bucket
//! (`--object-store s3://bucket/prefix`). `collect.rs` takes the files out of a finished
//! sandbox and `spool.rs` keeps long output, both into spool files under the state directory;
//! this module puts those into the store (within the namespace's quota), reads them back as
//! streams, and deletes what retention expired.

pub mod collect;
pub mod spool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bkg_schema::artefacts::{RunFile, RunFileKind};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

/// The default quota of each namespace's kept files (`--artefact-quota`).
pub const DEFAULT_QUOTA: &str = "10GiB";

/// What a spool file is read in when it is uploaded; the multipart upload sends parts of
/// `object_store`'s default 5 MiB, at most `UPLOAD_CONCURRENCY` at a time: the memory one upload
/// takes, whatever the file's size.
const READ_CHUNK: usize = 1024 * 1024;
const UPLOAD_CONCURRENCY: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    #[error("--object-store {0}: only s3://BUCKET[/PREFIX] or a directory path are supported")]
    Url(String),
    #[error("--artefact-quota-for wants NAMESPACE=SIZE, not {0:?}")]
    QuotaShape(String),
    #[error("{0}: {1}")]
    QuotaSize(&'static str, bkg_schema::UnitError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl ArtefactError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |error| Self::Io(what, error)
    }
}

/// How many bytes of kept files each namespace may hold (distinct objects, counted once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPolicy {
    pub default: u64,
    pub per_namespace: BTreeMap<String, u64>,
}

impl QuotaPolicy {
    /// From the agent's flags: `--artefact-quota SIZE` and `--artefact-quota-for NS=SIZE`.
    pub fn parse(default: &str, per_namespace: &[String]) -> Result<Self, ArtefactError> {
        let size = |flag: &'static str, text: &str| {
            bkg_schema::parse_size(text).map_err(|error| ArtefactError::QuotaSize(flag, error))
        };
        let mut policy = Self { default: size("--artefact-quota", default)?, per_namespace: BTreeMap::new() };
        for entry in per_namespace {
            let (namespace, text) = entry
                .split_once('=')
                .filter(|(namespace, _)| !namespace.is_empty())
                .ok_or_else(|| ArtefactError::QuotaShape(entry.clone()))?;
            policy.per_namespace.insert(namespace.to_owned(), size("--artefact-quota-for", text)?);
        }
        Ok(policy)
    }

    pub fn of(&self, namespace: &str) -> u64 {
        self.per_namespace.get(namespace).copied().unwrap_or(self.default)
    }
}

/// A file taken out of a sandbox (or a stream spooled), waiting to be stored.
#[derive(Debug)]
pub struct Spooled {
    pub path: String,
    pub kind: RunFileKind,
    pub spool: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// What a run left to keep: its spool directory (removed when this is dropped), the files in
/// it, and what could not be taken.
#[derive(Debug, Default)]
pub struct Kept {
    pub dir: Option<PathBuf>,
    pub files: Vec<Spooled>,
    pub not_kept: Vec<String>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir
            && let Err(error) = std::fs::remove_dir_all(dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %dir.display(), "could not remove a run's spool");
        }
    }
}

/// The object store and its policy.
pub struct Artefacts {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every object's name (the `/prefix` of `s3://bucket/prefix`).
    prefix: String,
    /// Where the objects are, for people (`s3://bucket/prefix`, a directory).
    pub location: String,
    pub quota: QuotaPolicy,
    /// Runs keep their files one at a time: the quota check and the record of what was kept
    /// must not interleave with another run's.
    keeping: tokio::sync::Mutex<()>,
}

/// A stored file's content as a stream of chunks, never whole in memory.
pub type FileStream = BoxStream<'static, std::io::Result<Bytes>>;

impl Artefacts {
    /// `url`: `s3://bucket[/prefix]` (credentials, region and endpoint from the usual `AWS_*`
    /// variables), a directory, or none for `<state_dir>/objects`.
    pub fn open(url: Option<&str>, state_dir: &Path, quota: QuotaPolicy) -> Result<Self, ArtefactError> {
        let spool_root = spool_root(state_dir);
        if let Err(error) = std::fs::remove_dir_all(&spool_root)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ArtefactError::Io(format!("remove the old spool {}", spool_root.display()), error));
        }
        let (store, prefix, location): (Arc<dyn ObjectStore>, String, String) = match url {
            Some(url) if url.starts_with("s3://") => {
                let rest = &url["s3://".len()..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(ArtefactError::Url(url.to_owned()));
                }
                let store = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
                (Arc::new(store), prefix.trim_matches('/').to_owned(), url.to_owned())
            }
            Some(url) if url.contains("://") => return Err(ArtefactError::Url(url.to_owned())),
            other => {
                let dir = other.map_or_else(|| state_dir.join("objects"), PathBuf::from);
                std::fs::create_dir_all(&dir).map_err(ArtefactError::io(format!("create {}", dir.display())))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                (Arc::new(store), String::new(), dir.display().to_string())
            }
        };
        Ok(Self { store, prefix, location, quota, keeping: tokio::sync::Mutex::new(()) })
    }

    /// Where a namespace's object of this digest lives: `[prefix/]NS/sha256/ab/abcdef…`.
    fn object(&self, namespace: &str, sha256: &str) -> ObjectPath {
        let shard = sha256.get(..2).unwrap_or("00");
        let name = format!("{namespace}/sha256/{shard}/{sha256}");
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Held while one run's files are stored and recorded.
    pub async fn keeping(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.keeping.lock().await
    }

    /// Stores what a run kept in `namespace`, as far as its quota goes (`used`: what its
    /// objects take already, as the store counts them; `present`: digests it holds already, which
    /// cost nothing more). Returns the files stored and, when some were not, why.
    pub async fn store(
        &self,
        namespace: &str,
        kept: &Kept,
        used: u64,
        present: &std::collections::BTreeSet<String>,
    ) -> (Vec<RunFile>, Vec<String>) {
        let quota = self.quota.of(namespace);
        let mut used = used;
        let mut counted: std::collections::BTreeSet<String> = present.clone();
        let mut files = Vec::new();
        let mut not_kept = kept.not_kept.clone();
        for spooled in &kept.files {
            let new = !counted.contains(&spooled.sha256);
            if new && used.saturating_add(spooled.bytes) > quota {
                not_kept.push(format!(
                    "{} ({} bytes): namespace {namespace}'s artefact quota of {quota} bytes is full",
                    spooled.path, spooled.bytes
                ));
                continue;
            }
            match self.put(namespace, spooled).await {
                Ok(()) => {
                    if new {
                        used += spooled.bytes;
                        counted.insert(spooled.sha256.clone());
                    }
                    files.push(RunFile {
                        path: spooled.path.clone(),
                        kind: spooled.kind,
                        bytes: spooled.bytes,
                        sha256: spooled.sha256.clone(),
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, path = %spooled.path, "could not store a run's file");
                    not_kept.push(format!("{}: {error}", spooled.path));
                }
            }
        }
        (files, not_kept)
    }

    /// Uploads one spool file, unless its object is there already (same content, same name).
    async fn put(&self, namespace: &str, spooled: &Spooled) -> Result<(), ArtefactError> {
        let object = self.object(namespace, &spooled.sha256);
        if let Ok(meta) = self.store.head(&object).await
            && meta.size == spooled.bytes
        {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(&spooled.spool)
            .await
            .map_err(ArtefactError::io(format!("open {}", spooled.spool.display())))?;
        let mut upload = WriteMultipart::new(self.store.put_multipart(&object).await?);
        let mut buffer = vec![0u8; READ_CHUNK];
        loop {
            let read = match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    let _ = upload.abort().await;
                    return Err(ArtefactError::Io(format!("read {}", spooled.spool.display()), error));
                }
            };
            if let Err(error) = upload.wait_for_capacity(UPLOAD_CONCURRENCY).await {
                return Err(error.into());
            }
            upload.write(&buffer[..read]);
        }
        upload.finish().await?;
        Ok(())
    }

    /// A stored file's content, streamed.
    pub async fn open_file(&self, namespace: &str, sha256: &str) -> Result<FileStream, ArtefactError> {
        let got = self.store.get(&self.object(namespace, sha256)).await?;
        Ok(got.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed())
    }

    /// Deletes objects nothing refers to any more (retention).
    pub async fn delete(&self, namespace: &str, sha256: &str) -> Result<(), ArtefactError> {
        match self.store.delete(&self.object(namespace, sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Where runs spool their files before they are stored: `<state_dir>/spool/<run id>/`.
pub fn spool_root(state_dir: &Path) -> PathBuf {
    state_dir.join("spool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_may_have_a_quota_of_its_own() -> Result<(), ArtefactError> {
        let policy = QuotaPolicy::parse("1GiB", &["ci=10MiB".into()])?;
        assert_eq!(policy.of("ci"), 10 * 1024 * 1024);
        assert_eq!(policy.of("other"), 1024 * 1024 * 1024);
        assert!(matches!(QuotaPolicy::parse("1GiB", &["ci".into()]), Err(ArtefactError::QuotaShape(_))));
        assert!(matches!(QuotaPolicy::parse("lots", &[]), Err(ArtefactError::QuotaSize(..))));
        Ok(())
    }

    #[test]
    fn objects_are_named_by_namespace_and_digest() -> Result<(), ArtefactError> {
        let dir = tempfile::tempdir().map_err(ArtefactError::io("temp dir"))?;
        let artefacts = Artefacts::open(None, dir.path(), QuotaPolicy::parse("1GiB", &[])?)?;
        assert_eq!(artefacts.object("ci", "abcdef").as_ref(), "ci/sha256/ab/abcdef");
        assert!(matches!(
            Artefacts::open(Some("gs://bucket"), dir.path(), artefacts.quota.clone()),
            Err(ArtefactError::Url(_))
        ));
        Ok(())
    }
}
