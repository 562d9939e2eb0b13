//! A run's stdout or stderr kept whole once it is longer than a result retains
//! (`OUTPUT_CAP_BYTES`): from the moment it overflows, everything it wrote goes to a spool
//! file, hashed as it is written, and is stored with the run's files. A shorter stream is kept
//! too when its caller did not take all of it (engine/run.rs).

use std::path::PathBuf;

use bkg_schema::artefacts::RunFileKind;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::Spooled;

/// What a spool gathers before each write to its file: each write is a hop to a blocking
/// thread, and a stream comes in pipe-sized pieces (a script's `print` to a pipe writes 8 KiB at
/// a time), so a hop each made the agent's CPU per byte spooled several times the script's.
const SPOOL_BUFFER_BYTES: usize = 1 << 20;

/// One stream's spool, opened when the stream first overflows the cap.
pub struct OutputSpool {
    kind: RunFileKind,
    path: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    hasher: Sha256,
    bytes: u64,
    /// Writing failed (disk full, …): the stream is not kept, the run goes on.
    failed: Option<String>,
}

impl OutputSpool {
    pub fn new(dir: PathBuf, kind: RunFileKind) -> Self {
        let path = dir.join(kind.as_str());
        Self { kind, path, file: None, hasher: Sha256::new(), bytes: 0, failed: None }
    }

    /// Whether the stream has overflowed (and is being spooled).
    pub fn is_open(&self) -> bool {
        self.file.is_some() || self.failed.is_some()
    }

    /// Appends output: `before` is what the stream wrote until now (given once, when it first
    /// overflows), `bytes` what it writes now.
    pub async fn write(&mut self, before: &[u8], bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.append(before, bytes).await {
            self.failed = Some(format!("{}: {error}", self.kind.as_str()));
            self.file = None;
        }
    }

    async fn append(&mut self, before: &[u8], bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                if let Some(dir) = self.path.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                let file = tokio::fs::File::create(&self.path).await?;
                self.file.insert(BufWriter::with_capacity(SPOOL_BUFFER_BYTES, file))
            }
        };
        for chunk in [before, bytes] {
            file.write_all(chunk).await?;
            self.hasher.update(chunk);
            self.bytes += chunk.len() as u64;
        }
        Ok(())
    }

    /// The spooled stream, or why it could not be kept; `None` when it never overflowed.
    pub async fn finish(self) -> Option<Result<Spooled, String>> {
        if let Some(failed) = self.failed {
            return Some(Err(failed));
        }
        let mut file = self.file?;
        if let Err(error) = file.flush().await {
            return Some(Err(format!("{}: {error}", self.kind.as_str())));
        }
        Some(Ok(Spooled {
            path: self.kind.as_str().to_owned(),
            kind: self.kind,
            spool: self.path,
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        }))
    }
}
