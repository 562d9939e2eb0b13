//! One run, start to end: validate the request, claim a prepared sandbox, apply limits, give it
//! the code, relay stdin and output, enforce the timeout, account, and clean up.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bkg_schema::sandbox::{ExecRequest, SandboxDefinition};
use bkg_schema::{ErrorCode, FileUpload, KilledBy, Limits, OUTPUT_CAP_BYTES, RunRequest, RunResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use super::control::{self, FromInit, GoOrder, PlacedFile, ToInit};
use super::plan::{ProjectMounts, SHIM_DIR, TMP, Volume, WORKSPACE};
use super::sandbox::{PersistentDisk, PreparedSandbox, cgroup_limits};
use super::{Engine, EngineError};

/// What the caller sends into a run while it goes on.
#[derive(Debug)]
pub enum RunInput {
    Stdin(Vec<u8>),
    StdinEnd,
    Cancel,
}

/// What a run reports while it goes on.
#[derive(Debug)]
pub enum RunOutput {
    Started(String),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{name} {asked} is above this agent's maximum of {allowed}")]
    LimitAboveMaximum { name: &'static str, asked: String, allowed: String },
    #[error("{0}")]
    RuntimeNotExecutable(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RunError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::LimitAboveMaximum { .. } => ErrorCode::LimitAboveMaximum,
            Self::RuntimeNotExecutable(_) => ErrorCode::RuntimeNotExecutable,
            Self::Busy(_) => ErrorCode::Conflict,
            Self::Engine(_) => ErrorCode::SandboxFailed,
        }
    }
}

/// A request that passed every check, ready to be given to a sandbox.
#[derive(Debug)]
pub struct ValidatedRun {
    pub language: bkg_schema::Language,
    pub limits: Limits,
    /// The namespace the run belongs to: its sandbox's, or `default` for a temporary run.
    pub namespace: String,
    order: GoOrder,
    stdin: Option<Vec<u8>>,
    persistent: Option<PersistentRun>,
}

/// What a run in a persistent sandbox adds: the sandbox it belongs to, its disk and its log.
#[derive(Debug)]
struct PersistentRun {
    sandbox_id: String,
    disk: PersistentDisk,
    log_dir: PathBuf,
}

impl ValidatedRun {
    pub fn sandbox_id(&self) -> Option<&str> {
        self.persistent.as_ref().map(|persistent| persistent.sandbox_id.as_str())
    }
}

/// Total size of files a request may place in the sandbox (they must also fit its disk).
const MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// The smallest process limit a run may have.
const MIN_PIDS: u64 = 8;

/// How many run logs a persistent sandbox keeps.
const KEPT_LOGS: usize = 20;

impl Engine {
    /// The caller's limits on top of the defaults, refused (not clipped) above the maximum.
    pub fn resolve_limits(&self, overrides: &bkg_schema::LimitOverrides) -> Result<Limits, RunError> {
        let limits = self.config.default_limits.with(overrides);
        for (name, value) in [
            ("cpus", limits.cpu_millis),
            ("memory", limits.memory_bytes),
            ("timeout", limits.timeout_ms),
            ("disk", limits.disk_bytes),
            ("pids", limits.pids),
        ] {
            if value == 0 {
                return Err(RunError::BadRequest(format!("{name} limit must be greater than zero")));
            }
        }
        if let Some((name, asked, allowed)) = limits.first_above(&self.config.max_limits) {
            return Err(RunError::LimitAboveMaximum { name, asked, allowed });
        }
        // ext4 needs room for its own metadata.
        if limits.disk_bytes < 16 * bkg_schema::MIB {
            return Err(RunError::BadRequest("disk limit must be at least 16MiB".into()));
        }
        if limits.memory_bytes < 16 * bkg_schema::MIB {
            return Err(RunError::BadRequest("memory limit must be at least 16MiB".into()));
        }
        // The kernel's CFS quota cannot go below 1 ms per 100 ms period.
        if limits.cpu_millis < 10 {
            return Err(RunError::BadRequest("cpus must be at least 0.01".into()));
        }
        // The sandbox's init and the code need a few processes before the code can do anything.
        if limits.pids < MIN_PIDS {
            return Err(RunError::BadRequest(format!("the process limit must be at least {MIN_PIDS}")));
        }
        Ok(limits)
    }

    fn interpreter(&self, language: bkg_schema::Language) -> Result<&Path, RunError> {
        let interpreter = match language {
            bkg_schema::Language::Python => &self.config.python,
            bkg_schema::Language::Node => &self.config.node,
        };
        if nix::unistd::access(interpreter, nix::unistd::AccessFlags::X_OK).is_err() {
            return Err(RunError::RuntimeNotExecutable(format!(
                "the {} runtime {} is not executable on this host",
                language.as_str(),
                interpreter.display()
            )));
        }
        Ok(interpreter)
    }

    pub fn validate(&self, request: RunRequest) -> Result<ValidatedRun, RunError> {
        let limits = self.resolve_limits(&request.limits)?;
        let interpreter = self.interpreter(request.language)?;

        let script_name =
            request.script_name.clone().unwrap_or_else(|| request.language.default_script_name().to_owned());
        if script_name.is_empty()
            || script_name.contains('/')
            || script_name == "."
            || script_name == ".."
            || script_name.contains('\0')
        {
            return Err(RunError::BadRequest(format!("script name `{script_name}` must be a plain file name")));
        }
        let script_path = format!("{WORKSPACE}/{script_name}");
        let mut files = vec![PlacedFile {
            path: script_path.clone(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(request.code.as_bytes()),
            mode: 0o644,
        }];
        let mut upload_bytes = request.code.len() as u64;
        for upload in &request.files {
            let (file, size) = place_upload(upload)?;
            if file.path == script_path {
                return Err(RunError::BadRequest(format!("file {} would replace the script", file.path)));
            }
            upload_bytes += size;
            files.push(file);
        }
        if upload_bytes > MAX_UPLOAD_BYTES.min(limits.disk_bytes) {
            return Err(RunError::BadRequest("uploaded files do not fit the sandbox's disk".into()));
        }

        let mut argv = vec![interpreter.to_string_lossy().into_owned(), script_path];
        for arg in &request.args {
            if arg.contains('\0') {
                return Err(RunError::BadRequest("arguments cannot contain NUL bytes".into()));
            }
            argv.push(arg.clone());
        }

        Ok(ValidatedRun {
            language: request.language,
            limits,
            namespace: "default".into(),
            order: GoOrder {
                argv,
                env: sandbox_env(&request.env)?,
                cwd: WORKSPACE.into(),
                files,
                clear: Vec::new(),
                reown: Vec::new(),
            },
            stdin: decode_stdin(request.stdin_base64.as_deref())?,
            persistent: None,
        })
    }

    /// A command in a persistent sandbox: `/bin/sh -c COMMAND` in its kept /workspace, with the
    /// project read-only at /project and the project's volumes bound in.
    pub fn validate_exec(&self, definition: &SandboxDefinition, exec: ExecRequest) -> Result<ValidatedRun, RunError> {
        let limits = self.resolve_limits(&definition.limits)?;
        self.interpreter(definition.language)?;
        if exec.command.trim().is_empty() || exec.command.contains('\0') {
            return Err(RunError::BadRequest("the command is empty or contains a NUL byte".into()));
        }
        let project_dir = PathBuf::from(&definition.project_dir);
        let state_dir = project_dir.join(".bkg");
        let sandbox_dir = state_dir.join("sandboxes").join(&definition.name);
        let volumes = definition
            .volumes
            .iter()
            .map(|volume| {
                let guest = Path::new(&volume.guest);
                let inside_workspace = guest.starts_with(WORKSPACE) && guest != Path::new(WORKSPACE);
                if !Path::new(&volume.host).is_absolute() || !inside_workspace || has_parent_dir(guest) {
                    return Err(RunError::BadRequest(format!(
                        "volume {}:{} must bind an absolute host path under /workspace",
                        volume.host, volume.guest
                    )));
                }
                if !Path::new(&volume.host).exists() {
                    return Err(RunError::BadRequest(format!("volume source {} does not exist", volume.host)));
                }
                Ok(Volume { host: volume.host.clone().into(), guest: guest.to_path_buf(), read_only: volume.read_only })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = definition.env.clone();
        env.extend(exec.env);
        Ok(ValidatedRun {
            language: definition.language,
            limits,
            namespace: definition.namespace.clone(),
            order: GoOrder {
                argv: vec!["/bin/sh".into(), "-c".into(), exec.command],
                env: sandbox_env(&env)?,
                cwd: WORKSPACE.into(),
                files: Vec::new(),
                clear: vec![TMP.into(), "/dev/shm".into()],
                reown: vec![WORKSPACE.into()],
            },
            stdin: decode_stdin(exec.stdin_base64.as_deref())?,
            persistent: Some(PersistentRun {
                sandbox_id: bkg_schema::sandbox::sandbox_id(&definition.project_dir, &definition.name),
                disk: PersistentDisk {
                    image: sandbox_dir.join("disk.img"),
                    project: ProjectMounts { dir: project_dir, state_dir, volumes },
                },
                log_dir: sandbox_dir.join("logs"),
            }),
        })
    }

    /// Asks the run going on in persistent sandbox `sandbox_id` to stop; false when none is.
    pub fn stop_sandbox(&self, sandbox_id: &str) -> bool {
        let running = self.persistent_runs.lock().ok().and_then(|runs| runs.get(sandbox_id).cloned());
        match running {
            Some((_, stop)) => {
                stop.notify_one();
                true
            }
            None => false,
        }
    }

    /// The run going on in persistent sandbox `sandbox_id`, if any.
    pub fn current_run(&self, sandbox_id: &str) -> Option<String> {
        self.persistent_runs.lock().ok().and_then(|runs| runs.get(sandbox_id).map(|(run_id, _)| run_id.clone()))
    }

    /// Runs a validated request to its end. `input` carries stdin and cancellation; `output`,
    /// when given, receives the output as it is written.
    pub async fn run(
        self: &Arc<Self>,
        run_id: String,
        run: ValidatedRun,
        mut input: mpsc::Receiver<RunInput>,
        output: Option<mpsc::Sender<RunOutput>>,
    ) -> Result<RunResult, RunError> {
        if self.is_closing() {
            return Err(EngineError::ShuttingDown.into());
        }
        let mut must_end = self.runs_must_end();
        let mut ending_for_shutdown = false;
        self.active_runs.fetch_add(1, Ordering::Relaxed);
        let _active = ActiveRun(Arc::clone(self));
        let stop = Arc::new(Notify::new());
        let _registered = match &run.persistent {
            Some(persistent) => Some(self.register_persistent(&persistent.sandbox_id, &run_id, &stop)?),
            None => None,
        };
        let mut log = match &run.persistent {
            Some(persistent) => Some(open_run_log(&persistent.log_dir, &run_id).await?),
            None => None,
        };

        let mut sandbox = self.claim(run.limits.disk_bytes, run.persistent.as_ref().map(|p| &p.disk)).await?;
        let limits = cgroup_limits(&run.limits);
        let cgroup_result = sandbox.cgroup.set_limits(&limits);
        if let Err(error) = cgroup_result {
            self.dispose_later(&run_id, sandbox);
            return Err(EngineError::from(error).into());
        }
        let cpu_before = sandbox.cgroup.usage().map(|usage| usage.cpu_nanos).unwrap_or(0);
        let pids_hits_before = sandbox.cgroup.usage().map(|usage| usage.pids_limit_hits).unwrap_or(0);

        if let Some(output) = &output {
            let _ = output.send(RunOutput::Started(run_id.clone())).await;
        }
        let started = Instant::now();
        if let Err(error) = control::write_async(&mut sandbox.control, &ToInit::Go(run.order)).await {
            self.dispose_later(&run_id, sandbox);
            return Err(EngineError::from(error).into());
        }

        // stdin is written by its own task: a script that never reads must not stall the run.
        let mut stdin_pipe = sandbox.stdin.take();
        let (cancel_tx, mut cancel_rx) = mpsc::channel::<()>(1);
        let preset_stdin = run.stdin;
        let stdin_task = tokio::spawn(async move {
            if let Some(bytes) = preset_stdin {
                if let Some(pipe) = stdin_pipe.as_mut() {
                    let _ = pipe.write_all(&bytes).await;
                }
                stdin_pipe = None;
            }
            while let Some(event) = input.recv().await {
                match event {
                    RunInput::Stdin(bytes) => {
                        if let Some(pipe) = stdin_pipe.as_mut()
                            && pipe.write_all(&bytes).await.is_err()
                        {
                            stdin_pipe = None;
                        }
                    }
                    RunInput::StdinEnd => stdin_pipe = None,
                    RunInput::Cancel => {
                        let _ = cancel_tx.send(()).await;
                        return;
                    }
                }
            }
        });

        let mut stdout = Captured::default();
        let mut stderr = Captured::default();
        let mut stdout_open = true;
        let mut stderr_open = true;
        let mut stdout_buf = vec![0u8; 64 * 1024];
        let mut stderr_buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::sleep(Duration::from_millis(run.limits.timeout_ms));
        tokio::pin!(deadline);
        let mut limit_poll = tokio::time::interval(Duration::from_millis(100));
        limit_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        let mut killed_by: Option<KilledBy> = None;
        let mut exit: Option<(Option<i32>, Option<i32>, u64, bool)> = None;
        let mut exec_errno: Option<i32> = None;
        let mut init_failure: Option<String> = None;
        let mut control_open = true;
        let mut wall = None;

        while control_open || stdout_open || stderr_open {
            tokio::select! {
                message = control::read_async::<FromInit>(&mut sandbox.control), if control_open => {
                    match message {
                        Ok(FromInit::Running | FromInit::Ready | FromInit::Forked { .. }) => {}
                        Ok(FromInit::Exited { exit_code, signal, disk_used_bytes, disk_full }) => {
                            wall.get_or_insert(started.elapsed());
                            exit = Some((exit_code, signal, disk_used_bytes, disk_full));
                            control_open = false;
                        }
                        Ok(FromInit::ExecFailed { errno }) => {
                            wall.get_or_insert(started.elapsed());
                            exec_errno = Some(errno);
                            control_open = false;
                        }
                        Ok(FromInit::Failed { stage, message }) => {
                            wall.get_or_insert(started.elapsed());
                            init_failure = Some(format!("{stage}: {message}"));
                            control_open = false;
                        }
                        Err(_) => {
                            wall.get_or_insert(started.elapsed());
                            control_open = false;
                        }
                    }
                    if !control_open {
                        // Pid 1 is gone or going: the rest of the sandbox dies with it. Wait only
                        // briefly for the pipes, in case a process held them open.
                        deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                }
                read = sandbox.stdout.read(&mut stdout_buf), if stdout_open => {
                    match read {
                        Ok(0) | Err(_) => stdout_open = false,
                        Ok(n) => {
                            stdout.push(&stdout_buf[..n]);
                            if let Some(log) = log.as_mut() {
                                let _ = log.write_all(&stdout_buf[..n]).await;
                            }
                            if let Some(output) = &output {
                                let _ = output.send(RunOutput::Stdout(stdout_buf[..n].to_vec())).await;
                            }
                        }
                    }
                }
                read = sandbox.stderr.read(&mut stderr_buf), if stderr_open => {
                    match read {
                        Ok(0) | Err(_) => stderr_open = false,
                        Ok(n) => {
                            stderr.push(&stderr_buf[..n]);
                            if let Some(log) = log.as_mut() {
                                let _ = log.write_all(&stderr_buf[..n]).await;
                            }
                            if let Some(output) = &output {
                                let _ = output.send(RunOutput::Stderr(stderr_buf[..n].to_vec())).await;
                            }
                        }
                    }
                }
                () = &mut deadline => {
                    if control_open {
                        wall.get_or_insert(started.elapsed());
                        killed_by.get_or_insert(KilledBy::Timeout);
                    }
                    sandbox.kill();
                    control_open = false;
                    stdout_open = false;
                    stderr_open = false;
                }
                () = stop.notified() => {
                    wall.get_or_insert(started.elapsed());
                    killed_by.get_or_insert(KilledBy::Cancelled);
                    sandbox.kill();
                }
                ended = async { must_end.wait_for(|end| *end).await.is_ok() }, if !ending_for_shutdown => {
                    // Once is enough: pid 1 is killed, and the loop ends as its pipes close.
                    ending_for_shutdown = true;
                    if ended {
                        wall.get_or_insert(started.elapsed());
                        killed_by.get_or_insert(KilledBy::Shutdown);
                        sandbox.kill();
                    }
                }
                Some(()) = cancel_rx.recv() => {
                    wall.get_or_insert(started.elapsed());
                    killed_by.get_or_insert(KilledBy::Cancelled);
                    sandbox.kill();
                }
                _ = limit_poll.tick(), if control_open => {
                    let hits = sandbox.cgroup.usage().map(|usage| usage.pids_limit_hits).unwrap_or(0);
                    if hits > pids_hits_before {
                        wall.get_or_insert(started.elapsed());
                        killed_by.get_or_insert(KilledBy::Pids);
                        sandbox.kill();
                    }
                }
            }
        }
        stdin_task.abort();
        let wall = wall.unwrap_or_else(|| started.elapsed());

        let usage = sandbox.cgroup.usage().unwrap_or_default();
        let (exit_code, signal, disk_used_bytes, disk_full) = exit.unwrap_or((None, None, 0, false));
        if killed_by.is_none() && usage.oom_kills > 0 && (signal == Some(libc::SIGKILL) || exit.is_none()) {
            killed_by = Some(KilledBy::Memory);
        }
        if killed_by.is_none() && disk_full && exit_code.is_some_and(|code| code != 0) {
            killed_by = Some(KilledBy::Disk);
        }
        // A pid 1 killed by the OOM killer or a kill from outside leaves no exit report.
        let signal = if exit.is_none() && killed_by.is_some() { Some(libc::SIGKILL) } else { signal };
        self.dispose_later(&run_id, sandbox);

        if let Some(errno) = exec_errno {
            return Err(RunError::RuntimeNotExecutable(format!(
                "the {} runtime could not be executed: {}",
                run.language.as_str(),
                std::io::Error::from_raw_os_error(errno)
            )));
        }
        if let Some(failure) = init_failure {
            return Err(EngineError::Prepare { stage: "start".into(), message: failure }.into());
        }
        if exit.is_none() && killed_by.is_none() {
            // Pid 1 ended without reporting the script's exit and no limit or caller ended it:
            // something outside killed the sandbox. That is the agent's failure, not a result.
            return Err(EngineError::Prepare {
                stage: "run".into(),
                message: "the sandbox ended before the script did (killed from outside the agent)".into(),
            }
            .into());
        }

        Ok(RunResult {
            id: run_id,
            language: run.language,
            exit_code: if signal.is_some() { None } else { exit_code },
            signal,
            killed_by,
            wall_ms: wall.as_millis() as u64,
            cpu_ms: usage.cpu_nanos.saturating_sub(cpu_before) / 1_000_000,
            peak_memory_bytes: usage.peak_memory_bytes,
            disk_bytes_used: disk_used_bytes,
            truncated: stdout.truncated || stderr.truncated,
            stdout_bytes: stdout.total,
            stderr_bytes: stderr.total,
            stdout: String::from_utf8_lossy(&stdout.kept).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.kept).into_owned(),
            limits: run.limits,
        })
    }

    /// Disposes of a used sandbox in the background: the caller has its result already.
    fn dispose_later(self: &Arc<Self>, run_id: &str, sandbox: PreparedSandbox) {
        self.dispose_in_background(sandbox, Some(run_id.to_owned()));
    }
}

/// Removes a persistent sandbox's run from the registry when the run ends.
struct RegisteredRun {
    engine: Arc<Engine>,
    sandbox_id: String,
}

impl Drop for RegisteredRun {
    fn drop(&mut self) {
        if let Ok(mut runs) = self.engine.persistent_runs.lock() {
            runs.remove(&self.sandbox_id);
        }
    }
}

impl Engine {
    /// One run at a time per persistent sandbox: two would mount the same disk twice.
    fn register_persistent(
        self: &Arc<Self>,
        sandbox_id: &str,
        run_id: &str,
        stop: &Arc<Notify>,
    ) -> Result<RegisteredRun, RunError> {
        let mut runs = self.persistent_runs.lock().map_err(|_| RunError::BadRequest("engine state poisoned".into()))?;
        if let Some((running, _)) = runs.get(sandbox_id) {
            return Err(RunError::Busy(format!("sandbox {sandbox_id} is already running ({running}); stop it first")));
        }
        runs.insert(sandbox_id.to_owned(), (run_id.to_owned(), Arc::clone(stop)));
        Ok(RegisteredRun { engine: Arc::clone(self), sandbox_id: sandbox_id.to_owned() })
    }
}

/// Opens `<log_dir>/<run_id>.log`, keeping only the newest `KEPT_LOGS` logs.
async fn open_run_log(log_dir: &Path, run_id: &str) -> Result<tokio::fs::File, RunError> {
    tokio::fs::create_dir_all(log_dir).await.map_err(EngineError::io(format!("create {}", log_dir.display())))?;
    if let Ok(mut entries) = tokio::fs::read_dir(log_dir).await {
        let mut logs = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            logs.push(entry.path());
        }
        logs.sort();
        let excess = (logs.len() + 1).saturating_sub(KEPT_LOGS);
        for old in logs.into_iter().take(excess) {
            let _ = tokio::fs::remove_file(old).await;
        }
    }
    let path = log_dir.join(format!("{run_id}.log"));
    Ok(tokio::fs::File::create(&path).await.map_err(EngineError::io(format!("create {}", path.display())))?)
}

/// The scrubbed environment every sandbox starts from, plus the caller's variables.
fn sandbox_env(extra: &std::collections::BTreeMap<String, String>) -> Result<Vec<(String, String)>, RunError> {
    let path = format!("{SHIM_DIR}:/usr/local/bin:/usr/bin:/bin");
    let mut env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("HOME", WORKSPACE),
        ("TMPDIR", TMP),
        ("LANG", "C.UTF-8"),
        ("USER", "sandbox"),
        // Output must reach the caller as it is written, not when a buffer fills.
        ("PYTHONUNBUFFERED", "1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    for (key, value) in extra {
        let valid_key = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        if !valid_key || value.contains('\0') {
            return Err(RunError::BadRequest(format!("environment variable `{key}` is not a valid NAME=VALUE")));
        }
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.clone()));
    }
    Ok(env)
}

fn decode_stdin(encoded: Option<&str>) -> Result<Option<Vec<u8>>, RunError> {
    encoded
        .map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| RunError::BadRequest("stdin_base64 is not valid base64".into()))
        })
        .transpose()
}

fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|component| matches!(component, Component::ParentDir))
}

struct ActiveRun(Arc<Engine>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.active_runs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One output stream: every byte counted, the first `OUTPUT_CAP_BYTES` kept.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
    truncated: bool,
}

impl Captured {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = OUTPUT_CAP_BYTES.saturating_sub(self.kept.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Checks an upload's destination and content; returns where it goes and its size.
fn place_upload(upload: &FileUpload) -> Result<(PlacedFile, u64), RunError> {
    let requested = Path::new(&upload.path);
    let absolute = if requested.is_absolute() { requested.to_path_buf() } else { Path::new(WORKSPACE).join(requested) };
    let escapes = has_parent_dir(&absolute);
    let allowed_root = [WORKSPACE, TMP].iter().any(|root| absolute.starts_with(root) && absolute != Path::new(root));
    if escapes || !allowed_root || upload.path.contains('\0') {
        return Err(RunError::BadRequest(format!(
            "file destination `{}` must be inside /workspace or /tmp, without `..`",
            upload.path
        )));
    }
    let content = base64::engine::general_purpose::STANDARD
        .decode(&upload.content_base64)
        .map_err(|_| RunError::BadRequest(format!("content of `{}` is not valid base64", upload.path)))?;
    let mode = if upload.executable { 0o755 } else { 0o644 };
    Ok((
        PlacedFile {
            path: absolute.to_string_lossy().into_owned(),
            content_base64: upload.content_base64.clone(),
            mode,
        },
        content.len() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(path: &str) -> FileUpload {
        FileUpload { path: path.into(), content_base64: "aGk=".into(), executable: false }
    }

    #[test]
    fn uploads_land_in_workspace_or_tmp_only() {
        let placed = place_upload(&upload("data/in.csv")).map(|(file, _)| file.path).ok();
        assert_eq!(placed.as_deref(), Some("/workspace/data/in.csv"));
        let placed = place_upload(&upload("/tmp/x")).map(|(file, _)| file.path).ok();
        assert_eq!(placed.as_deref(), Some("/tmp/x"));
        for bad in ["../etc/passwd", "/etc/passwd", "/workspace/../etc/x", "/workspace", "/tmpfoo/x", "a/../../b"] {
            assert!(place_upload(&upload(bad)).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        let bad = FileUpload { path: "x".into(), content_base64: "!!".into(), executable: false };
        assert!(place_upload(&bad).is_err());
    }

    #[test]
    fn captured_output_is_capped_and_counted() {
        let mut captured = Captured::default();
        captured.push(&vec![b'a'; OUTPUT_CAP_BYTES - 1]);
        assert!(!captured.truncated);
        captured.push(b"bcd");
        assert!(captured.truncated);
        assert_eq!(captured.kept.len(), OUTPUT_CAP_BYTES);
        assert_eq!(captured.total, OUTPUT_CAP_BYTES as u64 + 2);
    }
}
