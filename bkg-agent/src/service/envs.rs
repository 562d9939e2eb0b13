//! Dependency environments: a run's packages installed once (in an install sandbox whose only
//! network is the package index) and mounted read-only into the run; listing and pruning them.

use std::collections::VecDeque;
use std::sync::Arc;

use bkg_schema::audit::ConfigChanged;
use bkg_schema::envs::{EnvInfo, PruneRequest, PruneResult};
use tokio::sync::mpsc;

use super::access::{AdminTask, require_admin, require_code_runner};
use super::{OpError, OpResult, RunOutput, Service};
use crate::auth::Principal;
use crate::engine::run::{RunError, ValidatedRun};
use crate::envs::{EnvError, Environments, InUse};
use crate::ids::{new_id, now_ms};

/// How many of the installer's last lines a failure shows.
const ERROR_LINES: usize = 25;

impl From<EnvError> for OpError {
    fn from(error: EnvError) -> Self {
        match error {
            EnvError::Invalid(message) => Self::Invalid(message),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl Service {
    /// The requirement set a run asks for, checked: what `provide_env` will install.
    pub(super) fn requirement_set(&self, lines: &[String]) -> OpResult<Vec<String>> {
        Ok(Environments::requirement_set(lines)?)
    }

    /// Gives a run its Python environment: the built one for its set, else one built now, its
    /// installer's output sent to `output` as progress. The guard keeps the environment from
    /// being pruned while the run uses it.
    pub(super) async fn provide_env(
        &self,
        run: &mut ValidatedRun,
        set: &[String],
        actor: &str,
        output: &Option<mpsc::Sender<RunOutput>>,
    ) -> Result<InUse, RunError> {
        let envs = &self.envs;
        let id = envs.id_of(set);
        let held = envs.hold(&id);
        if let Some(site) = envs.ready(&id) {
            run.use_python_env(site);
            return Ok(held);
        }
        let _turn = envs.build_turn(&id).await;
        // Another run may have built it while this one waited.
        if let Some(site) = envs.ready(&id) {
            run.use_python_env(site);
            return Ok(held);
        }
        let site = self.install(&id, set, &run.namespace, actor, output).await?;
        // Marked used now that it exists.
        drop(held);
        let held = envs.hold(&id);
        run.use_python_env(site);
        Ok(held)
    }

    async fn install(
        &self,
        id: &str,
        set: &[String],
        namespace: &str,
        actor: &str,
        output: &Option<mpsc::Sender<RunOutput>>,
    ) -> Result<std::path::PathBuf, RunError> {
        let envs = &self.envs;
        let failed = |message: String| RunError::InstallFailed(message);
        let progress = |line: String| {
            if let Some(output) = output {
                // Progress is for people watching: a caller slower than the installer misses lines.
                let _ = output.try_send(RunOutput::Progress(line));
            }
        };
        let packages =
            if set.len() == 1 { "1 Python package".to_owned() } else { format!("{} Python packages", set.len()) };
        progress(format!("installing {packages} into environment {id} from {}", envs.index.url));
        let dirs = envs.begin_build(id, set).map_err(|error| failed(error.to_string()))?;
        let install = self.engine.install_run(&dirs, &envs.index, namespace, &format!("install-{id}"))?;
        let ticket = self.engine.accept(new_id("install"), &install)?;
        let (_no_input, input) = mpsc::channel(1);
        let (lines_tx, mut lines_rx) = mpsc::channel::<RunOutput>(64);
        let engine = Arc::clone(&self.engine);
        let running = tokio::spawn(async move { engine.run(ticket, install, input, Some(lines_tx)).await });
        let mut tail = VecDeque::new();
        let mut partial = Vec::new();
        while let Some(event) = lines_rx.recv().await {
            let (RunOutput::Stdout(bytes) | RunOutput::Stderr(bytes)) = event else { continue };
            partial.extend_from_slice(&bytes);
            while let Some(end) = partial.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if line.is_empty() {
                    continue;
                }
                progress(line.clone());
                tail.push_back(line);
                if tail.len() > ERROR_LINES {
                    tail.pop_front();
                }
            }
        }
        let result = match running.await {
            Ok(result) => result,
            Err(_) => Err(failed("the install's task failed".into())),
        };
        let ended = match result {
            Ok((result, _nothing_kept)) if result.exit_code == Some(0) && result.killed_by.is_none() => None,
            Ok((result, _nothing_kept)) => Some(match (result.killed_by, result.exit_code) {
                (Some(limit), _) => format!("it was stopped by its {} limit", limit.as_str()),
                (None, Some(code)) => format!("pip exited with code {code}"),
                (None, None) => format!("pip was ended by signal {}", result.signal.unwrap_or_default()),
            }),
            Err(error) => Some(error.to_string()),
        };
        match ended {
            None => {
                let site = envs.finish_build(id, dirs, set, now_ms()).map_err(|error| failed(error.to_string()))?;
                progress(format!("environment {id} is ready"));
                let built = ConfigChanged::EnvBuilt { env_built: id.to_owned(), requirements: set.to_vec() };
                if let Err(error) = self.note_config(actor.to_owned(), Some(namespace), built).await {
                    // The environment is there and the run may use it; only its line is missing.
                    tracing::error!(%error, env = %id, "could not record the environment's build");
                }
                Ok(site)
            }
            Some(reason) => {
                envs.abandon_build(dirs);
                let installer: Vec<String> = tail.into_iter().collect();
                Err(failed(format!(
                    "installing {packages} failed ({reason}); the installer said:\n{}",
                    installer.join("\n")
                )))
            }
        }
    }

    /// Every environment the agent has built.
    pub fn list_envs(&self, principal: &Principal) -> OpResult<Vec<EnvInfo>> {
        require_code_runner(principal)?;
        Ok(self.envs.list()?)
    }

    /// Removes environments no run is using (those unused for a while, when asked).
    pub async fn prune_envs(&self, principal: &Principal, request: PruneRequest) -> OpResult<PruneResult> {
        require_admin(principal, AdminTask::PruneEnvs)?;
        // Times are kept as SQLite's and PostgreSQL's signed 64-bit integers.
        if request.unused_for_ms.is_some_and(|ms| i64::try_from(ms).is_err()) {
            return Err(OpError::BadRequest("unused_for_ms must be at most 2^63-1".into()));
        }
        let before = now_ms().saturating_sub(request.unused_for_ms.unwrap_or(0));
        let (removed, freed_bytes) = self.envs.prune(before)?;
        if !removed.is_empty() {
            let pruned = ConfigChanged::EnvsPruned { envs_pruned: removed.clone() };
            self.note_config(principal.actor(), None, pruned).await?;
        }
        Ok(PruneResult { removed, freed_bytes })
    }
}
