//! Dependency environments: a run's packages installed once (in an install sandbox whose only
//! network is the package index) and mounted read-only into the run; listing and pruning them.

use std::collections::VecDeque;
use std::sync::Arc;

use bkg_schema::audit::ConfigChanged;
use bkg_schema::envs::{EnvInfo, PruneRequest, PruneResult};
use bkg_schema::{KilledBy, Language};
use tokio::sync::mpsc;

use super::access::{AdminTask, require_admin};
use super::{OpError, OpResult, RunOutput, Service};
use crate::auth::Principal;
use crate::engine::run::{RunError, ValidatedRun};
use crate::envs::{EnvError, EnvRequest, Environments, InUse};
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

/// A run's environment, ready: where it is, held from removal until the run ends.
pub(super) struct ProvidedEnv {
    language: Language,
    site: std::path::PathBuf,
    held: InUse,
}

impl ProvidedEnv {
    /// Gives `run` the environment; what is returned holds it until the run ends.
    pub(super) fn give_to(self, run: &mut ValidatedRun) -> InUse {
        match self.language {
            Language::Python => run.use_python_env(self.site),
            Language::Node => run.use_node_env(self.site),
        }
        self.held
    }
}

impl Service {
    /// The Python requirement set a run asks for, checked: what `provide_env` will install.
    pub(super) fn requirement_set(&self, lines: &[String]) -> OpResult<Vec<String>> {
        let set = Environments::requirement_set(lines)?;
        self.envs.check_reachable(&set)?;
        Ok(set)
    }

    /// The environment a run asks for, checked: its Python requirements, or its Node packages;
    /// none when it asks for neither.
    pub(super) fn environment_of(
        &self,
        language: Language,
        requirements: &[String],
        node_packages: Option<&bkg_schema::envs::NodePackages>,
    ) -> OpResult<Option<EnvRequest>> {
        let python = self.requirement_set(requirements)?;
        match (language, node_packages) {
            (Language::Python, None) if python.is_empty() => Ok(None),
            (Language::Python, None) => Ok(Some(EnvRequest::python(python))),
            (Language::Node, Some(packages)) if python.is_empty() => {
                let request = EnvRequest::node(packages)?;
                self.node_envs.check_lock_reachable(&packages.package_lock)?;
                Ok(Some(request))
            }
            (Language::Node, None) if python.is_empty() => Ok(None),
            (Language::Node, _) => Err(OpError::Invalid("Python requirements are for python runs".into())),
            (Language::Python, Some(_)) => Err(OpError::Invalid("Node packages are for node runs".into())),
        }
    }

    /// The environments of `language`.
    fn envs_of(&self, language: Language) -> &Environments {
        match language {
            Language::Python => &self.envs,
            Language::Node => &self.node_envs,
        }
    }

    /// The environment `request` names: the built one, else one built now (one build of it at a
    /// time), its installer's output sent to `output` as progress. What it returns keeps the
    /// environment from being pruned while the run uses it.
    pub(super) async fn provide_env(
        &self,
        request: &EnvRequest,
        (namespace, disk_bytes, caps): (&str, u64, &bkg_schema::LimitOverrides),
        actor: &str,
        output: &Option<mpsc::WeakSender<RunOutput>>,
    ) -> Result<ProvidedEnv, RunError> {
        let envs = self.envs_of(request.language);
        let id = envs.id_of(&request.set);
        let mut held = envs.hold(&id);
        let site = match envs.ready(&id) {
            Some(site) => site,
            None => {
                let _turn = match envs.try_build_turn(&id) {
                    Some(turn) => turn,
                    // Found by a new-user trial: a run waiting for another's install said nothing
                    // for as long as it took.
                    None => {
                        send_progress(output, format!("waiting for environment {id}, which another run is installing"));
                        envs.build_turn(&id).await
                    }
                };
                // Another run may have built it while this one waited.
                match envs.ready(&id) {
                    Some(site) => site,
                    None => {
                        let site = self.install(&id, request, (namespace, disk_bytes, caps), actor, output).await?;
                        // Marked used now that it exists: the first mark found no directory.
                        held = envs.hold(&id);
                        site
                    }
                }
            }
        };
        Ok(ProvidedEnv { language: request.language, site, held })
    }

    async fn install(
        &self,
        id: &str,
        request: &EnvRequest,
        (namespace, disk_bytes, caps): (&str, u64, &bkg_schema::LimitOverrides),
        actor: &str,
        output: &Option<mpsc::WeakSender<RunOutput>>,
    ) -> Result<std::path::PathBuf, RunError> {
        let envs = self.envs_of(request.language);
        let failed = |message: String| RunError::InstallFailed(message);
        let progress = |line: String| send_progress(output, line);
        let packages = request.described();
        let installer = match request.language {
            Language::Python => "pip",
            Language::Node => "npm",
        };
        progress(format!("installing {packages} into environment {id} from {}", envs.index.shown()));
        let dirs = envs.begin_build(id, &request.files).map_err(|error| failed(error.to_string()))?;
        let install = self.engine.install_run(
            request.language,
            &dirs,
            &envs.index,
            namespace,
            &format!("install-{id}"),
            (disk_bytes, caps),
        )?;
        let ticket = self.engine.accept(new_id("install"), &install)?;
        let (_no_input, input) = mpsc::channel(1);
        let (lines_tx, mut lines_rx) = mpsc::channel::<RunOutput>(64);
        let engine = Arc::clone(&self.engine);
        let running = tokio::spawn(async move { engine.run(ticket, install, input, Some(lines_tx)).await });
        let mut tail = VecDeque::new();
        let mut noise = InstallerNoise::default();
        // The file pip reads is the install sandbox's, made from the requirements sent: pip names
        // it in either form.
        let file = crate::engine::install::REQUIREMENTS_FILE;
        let pip_option = format!("-r {file}");
        let mut partial = Vec::new();
        // The agent's own word on the install (its index unreachable): what explains the rest.
        let mut unreachable = None;
        while let Some(event) = lines_rx.recv().await {
            let bytes = match event {
                RunOutput::Stdout(bytes) | RunOutput::Stderr(bytes) => bytes,
                RunOutput::Progress(line) => {
                    progress(line.clone());
                    unreachable = Some(line);
                    continue;
                }
                _ => continue,
            };
            partial.extend_from_slice(&bytes);
            while let Some(end) = partial.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if line.is_empty() || !noise.keeps(&line) {
                    continue;
                }
                // pip names a requirement's URL as given, password and all: what the caller sees,
                // and what the run's error keeps in the audit log, never holds one.
                let line = crate::envs::without_credentials(
                    &line.replace(&pip_option, file).replace(file, "the requirements"),
                );
                // Once the agent has said it cannot reach where packages come from, the
                // installer's retries and their TLS errors say nothing more (found by a new-user
                // trial: ten lines of them sent the user after certificates).
                if unreachable.is_some() {
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
            // Not the packages' fault: the run waiting for them is refused as the agent's stop.
            Ok((result, _)) if matches!(result.killed_by, Some(KilledBy::Shutdown | KilledBy::Interrupted)) => {
                envs.abandon_build(dirs);
                return Err(RunError::Engine(crate::engine::EngineError::ShuttingDown));
            }
            Ok((result, _nothing_kept)) => Some(match (result.killed_by, result.exit_code) {
                (Some(KilledBy::Cancelled), _) => "it was cancelled".to_owned(),
                (Some(KilledBy::Disk), _) => format!(
                    "it was stopped by its disk limit, {}: a run given a larger disk (`--disk`, `limits: {{disk: …}}` in cave.yaml) installs with it",
                    bkg_schema::units::format_size(result.limits.disk_bytes)
                ),
                (Some(limit), _) => format!("it was stopped by its {} limit", limit.as_str()),
                (None, Some(code)) => format!("{installer} exited with code {code}"),
                (None, None) => format!("{installer} was ended by signal {}", result.signal.unwrap_or_default()),
            }),
            Err(error) => Some(error.to_string()),
        };
        match ended {
            None => {
                let site =
                    envs.finish_build(id, dirs, &request.shown, now_ms()).map_err(|error| failed(error.to_string()))?;
                progress(format!("environment {id} is ready"));
                let built = ConfigChanged::EnvBuilt { env_built: id.to_owned(), requirements: request.shown.clone() };
                if let Err(error) = self.note_config(actor.to_owned(), Some(namespace), built).await {
                    // The environment is there and the run may use it; only its line is missing.
                    tracing::error!(%error, env = %id, "could not record the environment's build");
                }
                Ok(site)
            }
            Some(reason) => {
                envs.abandon_build(dirs);
                let said: Vec<String> = tail.into_iter().collect();
                Err(failed(match unreachable {
                    Some(unreachable) => format!("installing {packages} failed ({reason}): {unreachable}"),
                    None => {
                        format!("installing {packages} failed ({reason}); the installer said:\n{}", said.join("\n"))
                    }
                }))
            }
        }
    }

    /// Every environment the agent has built.
    pub fn list_envs(&self, principal: &Principal) -> OpResult<Vec<EnvInfo>> {
        require_admin(principal, AdminTask::ListEnvs)?;
        let mut listed = self.envs.list()?;
        listed.extend(self.node_envs.list()?);
        Ok(listed)
    }

    /// Removes environments no run is using (those unused for a while, when asked).
    pub async fn prune_envs(&self, principal: &Principal, request: PruneRequest) -> OpResult<PruneResult> {
        require_admin(principal, AdminTask::PruneEnvs)?;
        // Times are kept as SQLite's and PostgreSQL's signed 64-bit integers.
        if request.unused_for_ms.is_some_and(|ms| i64::try_from(ms).is_err()) {
            return Err(OpError::BadRequest("unused_for_ms must be at most 2^63-1".into()));
        }
        let before = now_ms().saturating_sub(request.unused_for_ms.unwrap_or(0));
        let (mut removed, mut freed_bytes) = self.envs.prune(before)?;
        let (node_removed, node_freed) = self.node_envs.prune(before)?;
        removed.extend(node_removed);
        freed_bytes += node_freed;
        if !removed.is_empty() {
            let pruned = ConfigChanged::EnvsPruned { envs_pruned: removed.clone() };
            self.note_config(principal.actor(), None, pruned).await?;
        }
        Ok(PruneResult { removed, freed_bytes })
    }
}

/// What bkg shows of an installer's output, which keeps its last lines: of a Python traceback
/// (pip prints one for a requirement it cannot parse) the exception it ends with, not its
/// frames; of npm's error, not the usage of the command that follows it (`npm ci`'s is longer
/// than the lines kept, and pushed out the reason, such as a package-lock.json out of sync),
/// its bare `npm error` lines or where its log went inside the install sandbox.
#[derive(Default)]
struct InstallerNoise {
    in_traceback: bool,
    in_npm_usage: bool,
}

impl InstallerNoise {
    fn keeps(&mut self, line: &str) -> bool {
        if self.in_npm_usage {
            self.in_npm_usage = !line.starts_with("npm error Run \"npm help");
            return false;
        }
        if line == "npm error Usage:" {
            self.in_npm_usage = true;
            return false;
        }
        // The title of `npm ci`'s usage (the one npm command installs run), printed before it.
        if line == "npm error"
            || line == "npm error Clean install a project"
            || line.starts_with("npm error A complete log of this run can be found in")
        {
            return false;
        }
        if line.starts_with("Traceback (most recent call last):")
            || line.starts_with("During handling of the above exception")
            || line.starts_with("The above exception was the direct cause")
        {
            self.in_traceback = true;
            return false;
        }
        if self.in_traceback && line.starts_with(char::is_whitespace) {
            return false;
        }
        self.in_traceback = false;
        true
    }
}

/// A line of an install's progress for the run's caller. Weak: an install whose run was
/// cancelled goes on for the next run, without keeping the cancelled run's output, and so its
/// caller's stream, open.
fn send_progress(output: &Option<mpsc::WeakSender<RunOutput>>, line: String) {
    if let Some(output) = output.as_ref().and_then(mpsc::WeakSender::upgrade) {
        // Progress is for people watching: a caller slower than the installer misses lines.
        let _ = output.try_send(RunOutput::Progress(line));
    }
}

#[cfg(test)]
mod tests {
    use super::InstallerNoise;

    #[test]
    fn a_traceback_is_shown_as_the_exception_it_ends_with() {
        let pip = [
            "ERROR: Exception:",
            "Traceback (most recent call last):",
            "  File \"/usr/lib/python3/dist-packages/pip/_internal/req/constructors.py\", line 297, in parse",
            "    markers = Marker(markers_as_string)",
            "              ^^^^^^^^^^^^^^^^^^^^^^^^^",
            "pip._vendor.packaging.markers.InvalidMarker: Invalid marker: 'rm'",
            "During handling of the above exception, another exception occurred:",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 1, in <module>",
            "ValueError: no",
            "  indented, but no longer a frame",
        ];
        let mut noise = InstallerNoise::default();
        let kept: Vec<&str> = pip.into_iter().filter(|line| noise.keeps(line)).collect();
        assert_eq!(
            kept,
            [
                "ERROR: Exception:",
                "pip._vendor.packaging.markers.InvalidMarker: Invalid marker: 'rm'",
                "ValueError: no",
                "  indented, but no longer a frame"
            ]
        );
    }

    /// npm 10's own output for a package-lock.json out of sync with its package.json (cut in
    /// the middle of its option list).
    #[test]
    fn npm_s_reason_is_kept_and_the_usage_after_it_is_not() {
        let npm = [
            "npm error code EUSAGE",
            "npm error",
            "npm error `npm ci` can only install packages when your package.json and package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install` before continuing.",
            "npm error",
            "npm error Invalid: lock file's ms@2.1.2 does not satisfy ms@2.1.3",
            "npm error",
            "npm error Clean install a project",
            "npm error",
            "npm error Usage:",
            "npm error npm ci",
            "npm error",
            "npm error Options:",
            "npm error [--install-strategy <hoisted|nested|shallow|linked>] [--legacy-bundling]",
            "npm error   --install-links",
            "npm error     When set file: protocol dependencies will be packed and installed as",
            "npm error",
            "npm error aliases: clean-install, ic, install-clean, isntall-clean",
            "npm error",
            "npm error Run \"npm help ci\" for more info",
            "npm error A complete log of this run can be found in: /tmp/npm-cache/_logs/2026-12-03T12_11_25_286Z-debug-0.log",
        ];
        let mut noise = InstallerNoise::default();
        let kept: Vec<&str> = npm.into_iter().filter(|line| noise.keeps(line)).collect();
        assert_eq!(
            kept,
            [
                "npm error code EUSAGE",
                "npm error `npm ci` can only install packages when your package.json and package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install` before continuing.",
                "npm error Invalid: lock file's ms@2.1.2 does not satisfy ms@2.1.3",
            ]
        );
    }
}
