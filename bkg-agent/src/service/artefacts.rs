//! The files runs keep (bkg-agent/src/artefacts/): storing what a run left within its
//! namespace's quota, listing a run's files, and reading one back as a stream.

use bkg_schema::RunResult;
use bkg_schema::artefacts::{RunFile, RunFiles};

use super::{OpError, OpResult, Service};
use crate::artefacts::{FileStream, Kept};
use crate::auth::Principal;

/// One kept file on its way to a caller: what it is, and its content as a stream.
pub struct FileDownload {
    pub file: RunFile,
    pub content: FileStream,
}

impl Service {
    /// Stores what a run kept and notes it in its result: the files stored, and why any were not.
    pub(super) async fn keep_files(&self, namespace: &str, kept: &Kept, result: &mut RunResult) {
        let objects = match self.store.namespace_objects(namespace).await {
            Ok(objects) => objects,
            Err(error) => {
                result.files_not_kept = Some(format!("the run's files were not kept: {error}"));
                return;
            }
        };
        let (files, not_kept) = self.artefacts.store(namespace, kept, objects.bytes, &objects.digests).await;
        result.files = files;
        if !not_kept.is_empty() {
            result.files_not_kept = Some(not_kept_line(&not_kept));
        }
    }

    /// The files a run kept, if the caller may see the run.
    pub async fn list_run_files(&self, principal: &Principal, run_id: &str) -> OpResult<RunFiles> {
        let run = self.get_run(principal, run_id).await?;
        let files = self.store.run_files(&run.id).await?;
        Ok(RunFiles { run_id: run.id, files })
    }

    /// One kept file of a run, streamed from the object store.
    pub async fn open_run_file(&self, principal: &Principal, run_id: &str, path: &str) -> OpResult<FileDownload> {
        let run = self.get_run(principal, run_id).await?;
        let files = self.store.run_files(&run.id).await?;
        let file = files
            .into_iter()
            .find(|file| file.path == path)
            .ok_or_else(|| OpError::NotFound(format!("run {run_id} kept no file {path}")))?;
        let content = self
            .artefacts
            .open_file(&run.namespace, &file.sha256)
            .await
            .map_err(|error| OpError::Unavailable(format!("the object store cannot give {path}: {error}")))?;
        Ok(FileDownload { file, content })
    }
}

/// How many paths the line of what was not kept names; it counts the rest.
const NOT_KEPT_NAMED: usize = 10;

/// Why paths were not kept, each named up to `NOT_KEPT_NAMED`, in one line.
/// Each entry names a path the code chose: its control characters are escaped (found by a
/// new-user trial: a file named `a\nbkg: killed: …` printed a fake line of bkg's own).
fn not_kept_line(not_kept: &[String]) -> String {
    let named = not_kept
        .iter()
        .take(NOT_KEPT_NAMED)
        .map(|entry| bkg_schema::without_controls(entry))
        .collect::<Vec<_>>()
        .join("; ");
    match not_kept.len().saturating_sub(NOT_KEPT_NAMED) {
        0 => format!("not kept with the run: {named}"),
        more => format!("not kept with the run: {named} (and {more} more)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_not_kept_is_named_up_to_ten() {
        let reasons = |count: usize| (0..count).map(|index| format!("p{index}: gone")).collect::<Vec<_>>();
        assert_eq!(not_kept_line(&reasons(2)), "not kept with the run: p0: gone; p1: gone");
        let line = not_kept_line(&reasons(12));
        assert!(
            line.starts_with("not kept with the run: p0: gone; ") && line.ends_with("p9: gone (and 2 more)"),
            "{line}"
        );
        let named = not_kept_line(&["out/a\nbkg: killed\u{1b}[2J\u{9b}: a symbolic link".to_owned()]);
        assert_eq!(named, "not kept with the run: out/a\\nbkg: killed\\u{1b}[2J\\u{9b}: a symbolic link");
    }
}
