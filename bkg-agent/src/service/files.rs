//! Files into and out of a persistent sandbox, as tar streams: upload, download, list. They
//! work on the sandbox as it lives: in the run going on in it (a session, a started script, an
//! exec), or, when it is idle, in a run of its own that holds the sandbox for the transfer and
//! ends with it. Neither direction holds more than a few buffers of the stream in memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bkg_schema::chunks::{self, Chunk, ChunkReader, ChunkWriter};
use bkg_schema::files::{FileEntry, UploadResult};
use bkg_schema::sandbox::{ExecRequest, SandboxDefinition};
use tokio::sync::mpsc;

use super::keys::KeyHold;
use super::{OpError, OpResult, RunInput, Service};
use crate::auth::Principal;
use crate::engine::files::{FilesError, Workspace, relative};
use crate::engine::handle::{RunPhase, RunTracker, wait_until};
use crate::engine::run::RunError;

/// How long a transfer waits for the sandbox it starts to be ready, and for it to be gone after.
const HOLDER_PATIENCE: Duration = Duration::from_secs(30);

/// The code of a transfer's own run: it holds the sandbox until its stdin ends, and its exit
/// code is the transfer's outcome (0 when stdin ends empty, 1 when the agent says it failed).
const HOLDER_COMMAND: &str = "read outcome; test -z \"$outcome\"";

/// Chunks of a streamed body, in either direction.
pub type Chunks = mpsc::Receiver<Chunk>;

/// Refuses a path a transfer may not name (absolute, `..`), naming it whole: for a transport
/// that splits it before the operation sees it (MCP's one-file upload).
pub fn check_workspace_path(path: &str) -> OpResult<()> {
    relative(path).map(drop).map_err(OpError::from)
}

impl From<FilesError> for OpError {
    fn from(error: FilesError) -> Self {
        match error {
            FilesError::NotFound(message) => OpError::NotFound(message),
            FilesError::Refused(_) | FilesError::DiskFull(_) | FilesError::BadArchive(_) => {
                OpError::Invalid(error.to_string())
            }
            FilesError::Ended => OpError::Unavailable(error.to_string()),
            FilesError::Io(message) => OpError::Internal(message),
        }
    }
}

/// A sandbox held for a transfer: the run going on in it, or one started for the transfer.
struct Held {
    workspace: Workspace,
    release: Release,
}

/// The transfer's own run, if it started one: its stdin (the run ends when it closes) and its
/// progress.
struct Release {
    own: Option<(mpsc::Sender<RunInput>, Arc<RunTracker>)>,
}

impl Release {
    /// Ends the transfer's own run, as a success or not like the transfer, and waits until the
    /// sandbox is free for the next one.
    async fn release(self, succeeded: bool) {
        let Some((stdin, tracker)) = self.own else { return };
        if !succeeded {
            // The holder's code (`HOLDER_COMMAND`) ends with 1 when it reads a line.
            let _ = stdin.send(RunInput::Stdin(b"failed\n".to_vec())).await;
        }
        drop(stdin);
        if !wait_until(tracker.watch(), HOLDER_PATIENCE, |progress| progress.is_settled()).await {
            tracing::warn!(run = %tracker.run_id, "a file transfer's run did not end in time");
        }
    }
}

/// A transfer's own run that ended before it held the sandbox, with its record's error.
struct NotHeld {
    error: Option<String>,
}

impl Service {
    /// Sandbox `id`'s /workspace, live: in its current run, or in a run started for this. A run
    /// found going on may end before its sandbox is held, and a sandbox found idle may be taken
    /// by a run starting meanwhile (a service restarting, say): either way the transfer looks
    /// again, for up to `HOLDER_PATIENCE`, instead of failing a caller who only met the gap
    /// between two runs. Past that the sandbox is busy: a conflict, not the agent's failure.
    /// `name` is the sandbox's as `visible_sandbox` gave it: the caller may see it (a run found
    /// going on is not asked again).
    async fn hold_workspace(self: &Arc<Self>, principal: &Principal, id: &str, name: &str) -> OpResult<Held> {
        let deadline = tokio::time::Instant::now() + HOLDER_PATIENCE;
        loop {
            if let Some(run) = self.engine.current_run(id) {
                if let Some(held) = self.workspace_of(&run, None).await? {
                    return Ok(held);
                }
                if run.watch().borrow().phase < RunPhase::Started {
                    return Err(OpError::Conflict(format!(
                        "the run going on in sandbox {name} has not started in {}s; try again later",
                        HOLDER_PATIENCE.as_secs()
                    )));
                }
                // Ended meanwhile: once it has let go of the sandbox, the transfer takes it.
                wait_until(run.watch(), HOLDER_PATIENCE, |progress| progress.phase >= RunPhase::Ended).await;
            }
            match self.start_holder(principal, id).await {
                Ok(Ok(held)) => return Ok(held),
                Ok(Err(NotHeld { error })) => {
                    // A key's revocation ends the runs made with it, the transfer's own among them:
                    // one revoked before that run had started is the answer, not the sandbox (found
                    // by a test on a loaded machine).
                    if let Some(reason) = self.key_no_longer_speaks(principal).await {
                        return Err(OpError::Unauthorized(reason.to_owned()));
                    }
                    // Its run's error says why (found by a trial: a volume's folder made a file,
                    // and the copy said only that the sandbox did not start).
                    let why = error.map(|error| format!(": {error}")).unwrap_or_default();
                    return Err(OpError::Unavailable(format!("sandbox {name} did not start for the transfer{why}")));
                }
                Err(OpError::Run(RunError::Busy(_))) if tokio::time::Instant::now() < deadline => {}
                Err(OpError::Run(RunError::Busy(_))) => {
                    return Err(OpError::Conflict(format!(
                        "sandbox {name}'s runs kept it busy for {}s: try the transfer again",
                        HOLDER_PATIENCE.as_secs()
                    )));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Why the key `principal` came with no longer speaks for it (revoked, rotated, deleted,
    /// expired), if it was a key's and it does not.
    async fn key_no_longer_speaks(&self, principal: &Principal) -> Option<&'static str> {
        KeyHold::of(&self.store, principal)?.check().await
    }

    /// Starts a run in idle sandbox `id` whose code waits on its stdin, holding the sandbox
    /// until the transfer is done; `None` if it ended before it could be held.
    async fn start_holder(self: &Arc<Self>, principal: &Principal, id: &str) -> OpResult<Result<Held, NotHeld>> {
        let exec = ExecRequest::command(HOLDER_COMMAND);
        let (definition, mut validated) = self.validate_sandbox_exec(principal, id, exec, None).await?;
        // A big transfer may take longer than the sandbox's code may run.
        validated.limits.timeout_ms = self.engine.config.max_limits.timeout_ms;
        validated.for_transfer();
        // A transfer's own run needs none of the sandbox's packages.
        let bare = SandboxDefinition { requirements: Vec::new(), node_packages: None, ..definition };
        let accepted = self.accept_in_sandbox(principal, &bare, validated)?;
        let (stdin, input) = mpsc::channel(1);
        let tracker = accepted.tracker();
        drop(self.start(accepted, input, None));
        match self.workspace_of(&tracker, Some(stdin)).await? {
            Some(held) => Ok(Ok(held)),
            None => {
                // Why it ended is in its record, once it is made.
                wait_until(tracker.watch(), HOLDER_PATIENCE, |progress| progress.phase >= RunPhase::Recorded).await;
                let record = self.store.get_run(&tracker.run_id).await.ok().flatten();
                Ok(Err(NotHeld { error: record.and_then(|record| record.error) }))
            }
        }
    }

    /// The sandbox of `run` held for a transfer, once the run has started; `None` if the run
    /// ended (or never started) first.
    async fn workspace_of(&self, run: &Arc<RunTracker>, own: Option<mpsc::Sender<RunInput>>) -> OpResult<Option<Held>> {
        wait_until(run.watch(), HOLDER_PATIENCE, |progress| progress.phase >= RunPhase::Started).await;
        let access = match run.access() {
            Some(access) if run.watch().borrow().phase == RunPhase::Started => access,
            _ => return Ok(None),
        };
        // The transfer may outlast the run: its open files keep the disk's filesystem mounted,
        // so it holds the disk until it closes them, and the sandbox's next run waits for that.
        let workspace = match Workspace::open(access.pid_one, access.owner, run.disk_use()) {
            Ok(workspace) => workspace,
            Err(FilesError::Ended) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        // A run lets go of its sandbox's access before its pid 1 is reaped (engine/run.rs
        // `dispose_later`), so access still given after the open means the pid was still the
        // sandbox's when it was opened, not a reused one.
        if run.access() != Some(access) {
            return Ok(None);
        }
        Ok(Some(Held { workspace, release: Release { own: own.map(|stdin| (stdin, Arc::clone(run))) } }))
    }

    /// Writes the tar stream `body` into `dest` (relative to /workspace, made if missing).
    pub async fn upload_files(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        dest: &str,
        body: Chunks,
    ) -> OpResult<UploadResult> {
        let dest = relative(dest)?;
        // Into a volume: the host's folder is named, which the sandbox cannot say (found by a
        // new-user trial: the refusal was the same for a volume and for a link).
        let definition = self.visible_sandbox(principal, id).await?.definition;
        let into = in_workspace(&dest);
        if let Some(volume) = definition.volumes.iter().find(|volume| into.starts_with(&volume.guest)) {
            return Err(OpError::Invalid(format!(
                "{} is in volume {}, this host's folder {}: copy into that folder instead",
                into.display(),
                volume.guest,
                volume.host
            )));
        }
        let body = KeyHold::hold_chunks(KeyHold::of(&self.store, principal), body);
        let held = self.hold_workspace(principal, id, &definition.name).await?;
        let Held { workspace, release } = held;
        let target = dest.clone();
        let unpacked = tokio::task::spawn_blocking(move || workspace.unpack(&target, ChunkReader::new(body))).await;
        release.release(matches!(unpacked, Ok(Ok(_)))).await;
        let unpacked = unpacked.map_err(|_| OpError::Internal("the upload's task failed".into()))??;
        Ok(UploadResult { path: shown(&dest), files: unpacked.files, bytes: unpacked.bytes, links: unpacked.links })
    }

    /// `path` (relative to /workspace) as a tar stream, its entries named from its last part.
    pub async fn download_files(self: &Arc<Self>, principal: &Principal, id: &str, path: &str) -> OpResult<Chunks> {
        let source = relative(path)?;
        let hold = KeyHold::of(&self.store, principal);
        let name = self.visible_sandbox(principal, id).await?.definition.name;
        let held = self.hold_workspace(principal, id, &name).await?;
        let Held { workspace, release } = held;
        // A missing or escaping path is an answer of its own, not a broken stream; so is a file
        // named as a directory (`a.txt/`). `link/` is the directory the link leads to.
        let follow = path.ends_with('/');
        let checked = match follow {
            true => workspace.require_directory(&source),
            false => Ok(()),
        };
        if let Err(error) = checked.and_then(|()| workspace.list(&source, false).map(drop)) {
            // The sandbox's disk can go only once nothing of the agent holds it open.
            drop(workspace);
            release.release(false).await;
            return Err(error.into());
        }
        let (sender, chunks) = chunks::channel();
        let held_open = sender.clone();
        let packing = tokio::task::spawn_blocking(move || {
            let mut writer = ChunkWriter::new(sender.clone(), "the download's reader hung up");
            let packed = workspace
                .pack(&source, follow, &mut writer)
                .and_then(|()| writer.flush().map_err(|error| FilesError::Io(error.to_string())));
            if let Err(error) = &packed {
                // A reader that stopped reading (a client gone, MCP's size bound) is its own doing,
                // not a fault of the agent's (found by a new-user trial: a warning per refused
                // download over MCP).
                match sender.is_closed() {
                    true => tracing::debug!(%error, "a download's reader stopped reading"),
                    false => tracing::warn!(%error, "a download ended early"),
                }
                let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
            }
            packed.is_ok()
        });
        // The stream ends only once the sandbox is free again, so a caller who read all of it
        // can go on with the sandbox at once.
        tokio::spawn(async move {
            let packed = packing.await.unwrap_or(false);
            release.release(packed).await;
            drop(held_open);
        });
        Ok(KeyHold::hold_chunks(hold, chunks))
    }

    /// What is in `path` (relative to /workspace), or the file itself.
    pub async fn list_files(self: &Arc<Self>, principal: &Principal, id: &str, path: &str) -> OpResult<Vec<FileEntry>> {
        let dir = relative(path)?;
        // `link/` asks for the directory the link leads to, as `ls link/` does.
        let follow = path.ends_with('/');
        let name = self.visible_sandbox(principal, id).await?.definition.name;
        let held = self.hold_workspace(principal, id, &name).await?;
        let Held { workspace, release } = held;
        let listed = tokio::task::spawn_blocking(move || workspace.list(&dir, follow)).await;
        release.release(matches!(listed, Ok(Ok(_)))).await;
        Ok(listed.map_err(|_| OpError::Internal("the listing's task failed".into()))??)
    }
}

/// `path`, relative to /workspace, as the sandbox names it.
fn in_workspace(path: &Path) -> PathBuf {
    PathBuf::from(crate::engine::plan::WORKSPACE).join(path)
}

fn shown(path: &Path) -> String {
    in_workspace(path).to_string_lossy().into_owned()
}
