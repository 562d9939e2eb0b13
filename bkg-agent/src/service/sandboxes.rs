//! Persistent sandboxes: define, create, list, get, exec, start, stop, logs and delete. Every
//! sandbox has a namespace; a caller confined to a namespace sees only its own (others are "not
//! found"), and a key may only use its namespace's project directory on the agent, without host
//! volumes; a local user may use their own, opened with their rights (crate::caller_fs).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bkg_schema::RunRecord;
use bkg_schema::egress::{ServiceHealth, ServiceState};
use bkg_schema::sandbox::{
    DetachedRun, ExecRequest, NewSandbox, SandboxDefinition, SandboxInfo, SandboxState, StartRequest, is_dns_label,
    sandbox_id,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::access::{
    HostPaths, check_namespace_name, definition_namespace, host_paths, listing_namespace, may_forward_ports,
    may_keep_sandbox, namespace_for, reaches, require_code_runner, user_limit_defaults, within_user_limits,
};
use super::keys::KeyHold;
use super::runs::Accepted;
use super::secrets::check_secret_names;
use super::{OpError, OpResult, Service};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::engine::handle::{RunPhase, RunProgress, wait_until};
use crate::engine::request::ValidatedRun;
use crate::engine::run::RunError;
use crate::ids::now_ms;
use crate::store::StoredSandbox;

/// How long an operation waits on a run's progress: a stopped run's recorded end (so what the
/// caller reads next shows it; the kill itself takes far less), or a queued run's start.
const RUN_PATIENCE: Duration = Duration::from_secs(10);

/// How long a removal waits for the last run's sandbox to let go of the disk image.
const RELEASE_PATIENCE: Duration = Duration::from_secs(10);

/// How often a followed log is read again while its run goes on and writes nothing.
const LOG_POLL: Duration = Duration::from_millis(100);

/// A log as it is read: the run it belongs to and its bytes, in order, as they come.
pub struct LogTail {
    pub run_id: String,
    pub chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
}

fn no_sandbox(id: &str) -> OpError {
    OpError::NotFound(format!("no sandbox {id}"))
}

/// Whether `principal` is a user on this machine who may read the project directory of
/// `definition` (opened with their own rights).
fn shares_project(principal: &Principal, definition: &SandboxDefinition) -> bool {
    principal.local_user().is_some_and(|user| {
        crate::caller_fs::open_as(user, Path::new(&definition.project_dir), "project directory")
            .is_ok_and(|opened| opened.is_dir)
    })
}

/// Refuses a run (or a file transfer) in a sandbox whose project directory is gone, moved or
/// deleted, with the way back to its files (found by a new-user trial: `project directory … does
/// not exist`, and the only command that still worked, `bkg rm`, deletes them). `bkg rm` is
/// given the sandbox's id, not its name: in another project the name is that project's sandbox
/// (found by a new-user trial).
fn project_still_there(id: &str, definition: &SandboxDefinition) -> OpResult<()> {
    let project = Path::new(&definition.project_dir);
    match std::fs::symlink_metadata(project) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(OpError::Invalid(format!(
            "sandbox `{}`'s project directory {} is gone (moved or deleted): put the project back there to run \
             the sandbox or copy its files; its workspace is kept until `bkg rm {id}`",
            definition.name,
            project.display(),
        ))),
        _ => Ok(()),
    }
}

/// A sandbox of another namespace, refused to a user on this machine who shares its project.
fn not_yours(definition: &SandboxDefinition) -> OpError {
    let (name, project) = (&definition.name, &definition.project_dir);
    OpError::Forbidden(format!(
        "sandbox `{name}` of {project} belongs to another namespace: give yours another name in cave.yaml, or ask \
         its owner to remove it (`bkg rm {name}`)"
    ))
}

/// The sandboxes being removed: each one's removal holds a sender, and whoever waits for the
/// removal to end waits for that sender to go.
#[derive(Default, Clone)]
pub(super) struct Removals(Arc<std::sync::Mutex<std::collections::HashMap<String, watch::Receiver<()>>>>);

/// A removal going on; it ends when this is dropped.
struct Removing<'a> {
    removals: &'a Removals,
    id: String,
    _going_on: watch::Sender<()>,
}

impl Removals {
    fn begin(&self, id: &str) -> Removing<'_> {
        let (going_on, seen) = watch::channel(());
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id.to_owned(), seen);
        Removing { removals: self, id: id.to_owned(), _going_on: going_on }
    }

    /// Waits until the removal of sandbox `id` going on, if one is, has ended.
    async fn ended(&self, id: &str) {
        let seen = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(id).cloned();
        if let Some(mut seen) = seen {
            // Only the sender's end is ever seen: nothing is sent.
            while seen.changed().await.is_ok() {}
        }
    }
}

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.removals.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.id);
    }
}

/// How a sandbox's run is stopped.
#[derive(Clone, Copy)]
enum Stopping {
    /// SIGTERM first, a kill after the grace (`bkg stop`).
    Gracefully,
    /// A kill at once (`bkg rm`).
    AtOnce,
}

/// What holds a sandbox when a run of it is refused.
pub(super) enum Holder {
    /// A run that only holds it for a file transfer.
    Transfer,
    /// A session (`bkg exec`), by its name.
    Session(String),
    /// A run of its own.
    Run,
}

/// Sandbox `name` has a run going on, which `holder` is.
fn busy(name: &str, holder: Holder) -> OpError {
    OpError::Run(RunError::Busy(match holder {
        Holder::Transfer => {
            format!("sandbox {name} is busy with a file transfer (`bkg cp`); run it again once that is done")
        }
        Holder::Session(session) => format!(
            "sandbox {name} is held by session `{session}` (`bkg exec`): run code in it with `bkg exec {name}{}`, or end it with `bkg stop {name}`",
            bkg_schema::files::session_flag(&session)
        ),
        Holder::Run => format!("sandbox `{name}` is already running: stop it first (`bkg stop {name}`)"),
    }))
}

impl Service {
    /// The project directory on the agent where the sandboxes of `namespace` live when their
    /// caller has no project of its own here (`POST /api/v1/sandboxes`, MCP).
    fn scratch_project_dir(&self, namespace: &str) -> std::path::PathBuf {
        self.engine.scratch_project_dir(namespace)
    }

    /// What `principal` is shown of a sandbox: its limits as the caller's runs of it get them
    /// (a local user's under their policy's caps).
    async fn sandbox_info(&self, principal: &Principal, stored: StoredSandbox) -> OpResult<SandboxInfo> {
        let (definition, since_ms) = (stored.definition, stored.created_at_ms);
        let id = sandbox_id(&definition.project_dir, &definition.name);
        let service = self.service_health(&id, &definition).await;
        let last_run = self.store.last_run_of(&id, since_ms).await?;
        let previous_run = match &last_run {
            Some(run) if run.finished_at_ms.is_none() => self.store.last_ended_run_of(&id, since_ms).await?,
            _ => None,
        };
        let current_run = self.engine.current_run(&id).map(|run| run.run_id.clone());
        let session = self.sessions.info_of(&id);
        let limits = self.limits_of(principal, &definition);
        let image = self.engine.sandbox_home(&definition.namespace, &id).disk_image();
        let disk_bytes_allocated = crate::engine::disk::written_bytes(&image);
        let has_project =
            std::path::Path::new(&definition.project_dir) != self.engine.scratch_project_dir(&definition.namespace);
        Ok(SandboxInfo {
            state: if current_run.is_some() { SandboxState::Running } else { SandboxState::Idle },
            id,
            name: definition.name,
            namespace: definition.namespace,
            project_dir: definition.project_dir,
            has_project,
            language: definition.language,
            limits,
            current_run,
            last_run,
            previous_run,
            created_at_ms: stored.created_at_ms,
            disk_bytes_allocated,
            session,
            service,
        })
    }

    /// The sandbox `id` if the caller may reach it; another namespace's is "not found".
    pub(super) async fn visible_sandbox(&self, principal: &Principal, id: &str) -> OpResult<StoredSandbox> {
        require_code_runner(principal)?;
        match self.store.get_sandbox(id).await? {
            Some(stored) if reaches(principal, &stored.definition.namespace) => Ok(stored),
            // A user on this machine who shares the project directory with its owner reads the
            // same cave.yaml (and so the id): "no sandbox" would send them to make one, and
            // `bkg rm` would take its entry out of cave.yaml. Anyone else learns nothing of it.
            Some(stored) if shares_project(principal, &stored.definition) => Err(not_yours(&stored.definition)),
            _ => Err(no_sandbox(id)),
        }
    }

    /// The sandboxes the caller may see, by project and name; optionally of one project
    /// directory or one namespace.
    pub async fn list_sandboxes(
        &self,
        principal: &Principal,
        project_dir: Option<String>,
        namespace: Option<String>,
    ) -> OpResult<Vec<SandboxInfo>> {
        require_code_runner(principal)?;
        // Naming another namespace is refused, as for runs and the change feed.
        let namespace = if namespace.is_some() { listing_namespace(principal, namespace)? } else { None };
        let stored = self.store.list_sandboxes(project_dir).await?;
        let mut infos = Vec::with_capacity(stored.len());
        for sandbox in stored {
            let own = &sandbox.definition.namespace;
            if reaches(principal, own) && namespace.as_ref().is_none_or(|wanted| wanted == own) {
                infos.push(self.sandbox_info(principal, sandbox).await?);
            }
        }
        Ok(infos)
    }

    pub async fn get_sandbox(&self, principal: &Principal, id: &str) -> OpResult<SandboxInfo> {
        let stored = self.visible_sandbox(principal, id).await?;
        self.sandbox_info(principal, stored).await
    }

    /// Checks a definition and stores it; `id` must be the one it computes to.
    pub async fn define_sandbox(
        &self,
        principal: &Principal,
        id: &str,
        mut definition: SandboxDefinition,
    ) -> OpResult<SandboxInfo> {
        require_code_runner(principal)?;
        definition.namespace = definition_namespace(principal, &definition.namespace);
        if !is_dns_label(&definition.name) {
            return Err(OpError::Invalid(format!(
                "sandbox name `{}` must be a DNS label (a-z, 0-9, -)",
                definition.name
            )));
        }
        check_namespace_name(&definition.namespace)?;
        if !reaches(principal, &definition.namespace) {
            // `namespace: default` is where a local user's project lands in their own.
            let hint = match principal.local_user() {
                Some(_) => ": make cave.yaml's `namespace:` `default` (as `bkg init` writes it) to use their own",
                None => "",
            };
            return Err(OpError::Forbidden(format!(
                "{} cannot define sandboxes in namespace `{}`{hint}",
                principal.named(),
                definition.namespace
            )));
        }
        let project = Path::new(&definition.project_dir);
        if !project.is_absolute() {
            return Err(OpError::Invalid(format!(
                "project directory {} must be an existing absolute path",
                definition.project_dir
            )));
        }
        // The namespace's own project directory on the agent, the one a key without host paths
        // may name, is made at its first sandbox, whichever way that comes (found by a new-user
        // trial: a PUT before any POST was refused, its directory not there yet).
        let own_dir = self.scratch_project_dir(&definition.namespace);
        if project == own_dir && is_dns_label(&definition.namespace) {
            tokio::fs::create_dir_all(&own_dir)
                .await
                .map_err(|error| OpError::Internal(format!("create {}: {error}", own_dir.display())))?;
        }
        // What the caller could not open is refused here already, with the reason.
        self.open_host_paths(principal, &definition)?;
        may_forward_ports(principal, &definition.ports)?;
        if !project.is_dir() {
            return Err(OpError::Invalid(format!(
                "project directory {} must be an existing absolute path",
                definition.project_dir
            )));
        }
        let own_id = sandbox_id(&definition.project_dir, &definition.name);
        if id != own_id {
            return Err(OpError::Invalid(format!(
                "sandbox id {id} does not belong to {} in {}: its id is {own_id}",
                definition.name, definition.project_dir
            )));
        }
        let existing = self.store.get_sandbox(id).await?;
        // A sandbox stays in its namespace: its disk lives there (engine/workspace.rs), so a
        // definition naming another one would leave the disk behind and hand the sandbox over.
        if let Some(existing) = &existing
            && existing.definition.namespace != definition.namespace
        {
            let name = &definition.name;
            let project = &definition.project_dir;
            // The caller names this project directory and could open it (`open_host_paths`).
            if !reaches(principal, &existing.definition.namespace) {
                return Err(not_yours(&existing.definition));
            }
            return Err(OpError::Conflict(format!(
                "`{name}` of {project} is in namespace `{existing}`, not `{new}`, where this definition would put \
                 it: a sandbox keeps its namespace. Run it as a caller of `{existing}` (the one who made it), give \
                 this one another name, or, if cave.yaml's `namespace:` was changed, put it back (`bkg rm {name}` \
                 by a caller of `{existing}` removes the sandbox with its data and its cave.yaml entry)",
                existing = existing.definition.namespace,
                new = definition.namespace
            )));
        }
        if principal.local_user().is_some() {
            self.check_user_policy(principal, id, &definition).await?;
        }
        self.engine.check_definition(&definition)?;
        self.environment_of(definition.language, &definition.requirements, definition.node_packages.as_ref())?;
        check_secret_names(&definition.secrets)?;
        // No sandbox is made whose runs could not start (was: a `bkgr` refused for a secret not
        // set left one that never ran; found by a new-user trial).
        if existing.is_none() {
            self.refuse_missing_secrets(&definition.namespace, &definition.secrets)?;
        }
        // bkgr gives the definition before every run, bkg exec and bkg shell before they start:
        // an unchanged one is neither stored again nor audited again.
        let replaces = existing.is_some();
        if let Some(existing) = existing {
            if existing.definition == definition {
                return self.sandbox_info(principal, existing).await;
            }
            self.refuse_redefining_while_running(id, &definition.name)?;
        }
        let caller = principal.audit_caller(&definition.namespace);
        let stored = self.store.put_sandbox(&caller, id, &definition, replaces, now_ms()).await?;
        self.sandbox_info(principal, stored).await
    }

    /// A running sandbox keeps the definition it started with until it stops, its service's
    /// restarts included: a new one stored now would have the next restart run the old command
    /// with the new environment, ports and limits.
    fn refuse_redefining_while_running(&self, id: &str, name: &str) -> OpResult<()> {
        let restarting = self.services.health(id).is_some_and(|health| health.state == ServiceState::Restarting);
        if self.engine.current_run(id).is_none() && !restarting {
            return Ok(());
        }
        Err(OpError::Conflict(format!(
            "sandbox `{name}` is running and keeps the definition it started with: stop it first \
             (`bkg stop {name}`), then give the new one"
        )))
    }

    /// The size of sandbox `id`'s disk image, once it has one. An image of no bytes is one being
    /// made (engine/disk.rs sizes it just after creating it): no disk yet, not a disk of none,
    /// which a run beside it was refused for ("disk limit must be greater than zero").
    fn disk_image_size(&self, namespace: &str, id: &str) -> Option<u64> {
        let image = std::fs::metadata(self.engine.sandbox_home(namespace, id).disk_image()).ok();
        image.map(|meta| meta.len()).filter(|bytes| *bytes > 0)
    }

    /// The limits the runs of `definition` get for `principal`: the agent's defaults, under a
    /// local user's policy defaults, under the definition's own.
    /// A sandbox whose disk is larger than the definition's disk limit, or than the default when
    /// it names none, gets its disk as it is (`grown_disk`).
    fn limits_of(&self, principal: &Principal, definition: &SandboxDefinition) -> bkg_schema::Limits {
        let defaults = &self.engine.config.default_limits;
        let mut named = definition.limits;
        // None is below any size: the larger of the two, or whichever there is.
        named.disk_bytes = named.disk_bytes.max(self.grown_disk(definition));
        defaults.with(&user_limit_defaults(principal, &self.auth.policy.user, &named, defaults))
    }

    /// The size of the disk `definition`'s sandbox has, if it has one: a disk only grows (`bkgr
    /// --disk 1GiB` for good), so a definition that names a smaller disk limit, or none, runs on
    /// the disk as it is and is shown with it (a smaller one was refused, and then so was every
    /// plain `bkgr` after `bkgr --disk` had grown cave.yaml's disk: found by a new-user trial).
    fn grown_disk(&self, definition: &SandboxDefinition) -> Option<u64> {
        self.disk_image_size(&definition.namespace, &sandbox_id(&definition.project_dir, &definition.name))
    }

    /// A local user's sandboxes against what the policy lets one user keep: their number and
    /// their disk limits summed, this definition counted in place of the one it replaces.
    async fn check_user_policy(&self, principal: &Principal, id: &str, definition: &SandboxDefinition) -> OpResult<()> {
        let policy = &self.auth.policy.user;
        let limits_of = |definition: &SandboxDefinition| self.limits_of(principal, definition);
        within_user_limits(principal, policy, &limits_of(definition))?;
        let others: Vec<StoredSandbox> = self
            .store
            .list_sandboxes(None)
            .await?
            .into_iter()
            .filter(|stored| stored.definition.namespace == definition.namespace)
            .filter(|stored| sandbox_id(&stored.definition.project_dir, &stored.definition.name) != id)
            .collect();
        let kept_disk = others.iter().map(|stored| limits_of(&stored.definition).disk_bytes).sum();
        may_keep_sandbox(principal, policy, others.len() as u64, kept_disk, limits_of(definition).disk_bytes)
    }

    /// Creates a sandbox in the caller's (or, for admins, the named) namespace's project
    /// directory on the agent.
    pub async fn create_sandbox(&self, principal: &Principal, new: NewSandbox) -> OpResult<SandboxInfo> {
        require_code_runner(principal)?;
        let namespace = namespace_for(principal, new.namespace.as_deref())?;
        let project_dir = self.scratch_project_dir(&namespace);
        let project = project_dir.to_string_lossy().into_owned();
        let id = sandbox_id(&project, &new.name);
        if self.store.get_sandbox(&id).await?.is_some() {
            return Err(OpError::Conflict(format!("sandbox `{}` already exists in namespace `{namespace}`", new.name)));
        }
        if is_dns_label(&new.name) {
            tokio::fs::create_dir_all(&project_dir)
                .await
                .map_err(|error| OpError::Internal(format!("create {}: {error}", project_dir.display())))?;
        }
        let definition = SandboxDefinition {
            limits: new.limits,
            env: new.env,
            scripts: new.scripts,
            restart: new.restart,
            ..SandboxDefinition::new(new.name, namespace, project, new.language)
        };
        self.define_sandbox(principal, &id, definition).await
    }

    /// Opens the definition's project directory and volume sources with the rights the caller
    /// acts with (service/access.rs decides whose): for a local user, as that user, none of the
    /// volumes reached through a link. Returns the ids to show as the sandbox user's, if not each
    /// path's owner.
    fn open_host_paths(
        &self,
        principal: &Principal,
        definition: &SandboxDefinition,
    ) -> OpResult<Option<crate::engine::plan::Owner>> {
        let own_dir = self.scratch_project_dir(&definition.namespace);
        let project = Path::new(&definition.project_dir);
        let HostPaths::User(user) = host_paths(principal, project, !definition.volumes.is_empty(), &own_dir)? else {
            return Ok(None);
        };
        let refused = |error: crate::caller_fs::CallerFsError| OpError::Invalid(error.to_string());
        if project != own_dir {
            let dir = crate::caller_fs::open_as(user, project, "project directory").map_err(refused)?;
            if !dir.is_dir {
                return Err(OpError::Invalid(format!("project directory {} is not a directory", project.display())));
            }
        }
        for volume in &definition.volumes {
            let source = crate::caller_fs::open_as(user, Path::new(&volume.host), "volume source").map_err(refused)?;
            // As pid 1 refuses it for every caller (engine/init.rs, `open_source`): the
            // sandbox's code could make the link in the project through a :rw volume.
            if source.resolved != Path::new(&volume.host) {
                return Err(OpError::Invalid(format!(
                    "volume source {} is reached through a symbolic link now (it leads to {}), which a volume's \
                     source may not be: give the volume the path it leads to, or remove the link",
                    volume.host,
                    source.resolved.display()
                )));
            }
        }
        Ok(Some(crate::engine::plan::Owner { uid: user.uid, gid: user.gid }))
    }

    /// Checks a command for sandbox `id` and takes it on; the sandbox is the run's until it ends.
    pub async fn accept_exec(&self, principal: &Principal, id: &str, exec: ExecRequest) -> OpResult<Accepted> {
        let (definition, validated) = self.validate_sandbox_exec(principal, id, exec.clone(), None).await?;
        // A running sandbox holds its own ports: it is refused as busy below, not for them.
        if exec.detach && self.engine.current_run(id).is_none() {
            validated.check_ports_free()?;
        }
        let mut accepted = self.accept_in_sandbox(principal, &definition, validated)?;
        // Kept to start it again when it fails and its sandbox says `restart: on-failure`.
        accepted.exec = Some((exec, definition.restart));
        Ok(accepted)
    }

    /// Checks a command for sandbox `id` (with its timeout replaced by `timeout_ms` when given):
    /// the sandbox's definition and the run.
    pub(super) async fn validate_sandbox_exec(
        &self,
        principal: &Principal,
        id: &str,
        exec: ExecRequest,
        timeout_ms: Option<u64>,
    ) -> OpResult<(SandboxDefinition, ValidatedRun)> {
        let stored = self.visible_sandbox(principal, id).await?;
        if Path::new(&stored.definition.project_dir) != self.scratch_project_dir(&stored.definition.namespace) {
            project_still_there(id, &stored.definition)?;
        }
        // The paths are opened again for every run: they may have changed since the definition.
        let mapped_owner = self.open_host_paths(principal, &stored.definition)?;
        let mut opened = stored.definition.clone();
        may_forward_ports(principal, &stored.definition.ports)?;
        opened.limits = exec.limits.over(opened.limits);
        if timeout_ms.is_some() {
            opened.limits.timeout_ms = timeout_ms;
        }
        if exec.limits.disk_bytes.is_none() {
            // Unless this run's own flag asks for a disk, the disk as it is (`limits_of`).
            opened.limits.disk_bytes = opened.limits.disk_bytes.max(self.grown_disk(&stored.definition));
        }
        let defaults = &self.engine.config.default_limits;
        opened.limits = user_limit_defaults(principal, &self.auth.policy.user, &opened.limits, defaults);
        Self::refuse_secret_clash(&stored.definition.secrets, stored.definition.env.keys().chain(exec.env.keys()))?;
        let mut validated = self.engine.validate_exec(&opened, exec, mapped_owner)?;
        within_user_limits(principal, &self.auth.policy.user, &validated.limits)?;
        self.give_secrets(&mut validated, &stored.definition.secrets)?;
        Ok((stored.definition, validated))
    }

    /// What holds sandbox `id` now that a run of it was refused as busy.
    pub(super) fn holder_of(&self, id: &str) -> Holder {
        match (self.engine.current_run(id), self.session_holding(id)) {
            (Some(run), _) if run.is_for_transfer() => Holder::Transfer,
            (_, Some(session)) => Holder::Session(session),
            _ => Holder::Run,
        }
    }

    /// Takes on a run in the persistent sandbox of `definition`, with its Python packages; the
    /// sandbox is the run's until it ends.
    pub(super) fn accept_in_sandbox(
        &self,
        principal: &Principal,
        definition: &SandboxDefinition,
        validated: ValidatedRun,
    ) -> OpResult<Accepted> {
        let environment =
            self.environment_of(definition.language, &definition.requirements, definition.node_packages.as_ref())?;
        let mut accepted = self.accept(principal, validated).map_err(|error| match error {
            OpError::Run(RunError::Busy(_)) => {
                busy(&definition.name, self.holder_of(&sandbox_id(&definition.project_dir, &definition.name)))
            }
            other => other,
        })?;
        accepted.needs(environment);
        Ok(accepted)
    }

    /// Runs one of the sandbox's scripts (default `start`), detached; its output goes to the
    /// sandbox's log.
    pub async fn start_script(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        start: StartRequest,
    ) -> OpResult<DetachedRun> {
        let stored = self.visible_sandbox(principal, id).await?;
        let script = start.script.unwrap_or_else(|| "start".to_owned());
        let Some(command) = stored.definition.scripts.get(&script).cloned() else {
            return Err(OpError::Invalid(format!("sandbox {} has no script `{script}`", stored.definition.name)));
        };
        let exec = ExecRequest { detach: true, env: start.env, ..ExecRequest::command(command) };
        let accepted = self.accept_exec(principal, id, exec).await?;
        Ok(self.detach(id, accepted).await)
    }

    /// Stops the run going on in sandbox `id` (`killed_by: cancelled`) and waits until its end
    /// is recorded, so what the caller reads next shows it. False when none was going on.
    pub async fn stop_sandbox(&self, principal: &Principal, id: &str) -> OpResult<bool> {
        self.visible_sandbox(principal, id).await?;
        Ok(self.stop_and_wait(id, Stopping::Gracefully).await)
    }

    /// Stops the sandbox's service (no restart after this) and its run, if one goes on: whether
    /// there was either to stop.
    async fn stop_and_wait(&self, id: &str, how: Stopping) -> bool {
        let restart_called_off = self.services.stop(id);
        // At once, not when the run's end is seen: an agent stopped right after would leave it.
        self.forget_service(id).await;
        let Some(run) = self.engine.current_run(id) else {
            return restart_called_off;
        };
        match how {
            Stopping::Gracefully => run.stop_gracefully(),
            Stopping::AtOnce => run.stop(),
        }
        if !wait_until(run.watch(), RUN_PATIENCE, |progress| progress.phase == RunPhase::Recorded).await {
            tracing::warn!(sandbox = %id, run = %run.run_id, "the stopped run was not recorded in time");
        }
        true
    }

    /// Stops the sandbox's run and removes the sandbox with its disk and logs.
    pub async fn delete_sandbox(&self, principal: &Principal, id: &str) -> OpResult<()> {
        let stored = self.visible_sandbox(principal, id).await?;
        let last_run = self.engine.current_run(id);
        let _removing = self.removals.begin(id);
        // Its files go with it: there is nothing for the code to save.
        self.stop_and_wait(id, Stopping::AtOnce).await;
        if self.engine.current_run(id).is_some() {
            return Err(OpError::Run(RunError::Busy(format!("sandbox {id} did not stop"))));
        }
        // The last run's cleanup releases the disk image moments after the run ends.
        if let Some(run) = last_run
            && !wait_until(run.watch(), RELEASE_PATIENCE, |progress| !progress.holds_sandbox).await
        {
            tracing::warn!(sandbox = %id, run = %run.run_id, "the last run's sandbox still holds the disk");
        }
        let definition = stored.definition;
        let home = self.engine.sandbox_home(&definition.namespace, id);
        let dir = home.dir();
        if let Err(error) = tokio::fs::remove_dir_all(dir).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(OpError::Internal(format!("remove {}: {error}", dir.display())));
        }
        let caller = principal.audit_caller(&definition.namespace);
        self.store.delete_sandbox(&caller, id).await?;
        Ok(())
    }

    /// The sandbox's newest run as recorded, if it has run.
    pub async fn last_run_of(&self, principal: &Principal, id: &str) -> OpResult<Option<RunRecord>> {
        let stored = self.visible_sandbox(principal, id).await?;
        Ok(self.store.last_run_of(id, stored.created_at_ms).await?)
    }

    /// The newest run's log, read from its start; with `follow`, until that run ends, or, for
    /// a service its sandbox starts again after a failure, on into each restart's run until the
    /// service ends.
    pub async fn sandbox_log(&self, principal: &Principal, id: &str, follow: bool) -> OpResult<LogTail> {
        let definition = self.visible_sandbox(principal, id).await?.definition;
        let log_dir = self.engine.sandbox_home(&definition.namespace, id).logs_dir();
        // Read first: a restart after this one is followed, the run below may be its.
        let service = self.services.watch(id).filter(|_| follow);
        let mut restarts = service.as_ref().map(|service| service.borrow().restarts).unwrap_or_default();
        let Some((path, run_id, going_on)) = newest_log(&self.engine, id, &log_dir).await else {
            return Err(OpError::NotFound(format!("sandbox {} has not run yet", definition.name)));
        };
        // The run's progress while it goes on; a log of a run that has ended is read once.
        let going_on = going_on.filter(|_| follow);
        let (sender, chunks) = mpsc::channel(16);
        let engine = Arc::clone(&self.engine);
        let id = id.to_owned();
        let mut followed = run_id.clone();
        let removals = follow.then(|| self.removals.clone());
        tokio::spawn(async move {
            read_log(path, going_on, &sender).await;
            if let Some(mut service) = service {
                loop {
                    let ended = |health: &ServiceHealth| {
                        health.restarts > restarts
                            || matches!(health.state, ServiceState::Stopped | ServiceState::Exited)
                    };
                    let restarted = tokio::select! {
                        changed = service.wait_for(ended) => changed.is_ok_and(|health| health.restarts > restarts),
                        () = sender.closed() => false,
                    };
                    if !restarted {
                        break;
                    }
                    restarts = service.borrow().restarts;
                    let Some((path, run_id, going_on)) = newest_log(&engine, &id, &log_dir).await else { break };
                    // Already sent: the restart was counted after its run opened this log.
                    if run_id != followed {
                        read_log(path, going_on, &sender).await;
                        followed = run_id;
                    }
                }
            }
            // A log that ends because its sandbox is being removed ends once the sandbox is
            // gone, so that its follower, asking why it ended, hears it was removed (bkg logs -f).
            if let Some(removals) = removals {
                tokio::select! {
                    () = removals.ended(&id) => {}
                    () = sender.closed() => {}
                }
            }
        });
        // Opened with a key, a followed log is held to it, as the change feed is.
        Ok(LogTail { run_id, chunks: KeyHold::hold_chunks(KeyHold::of(&self.store, principal), chunks) })
    }

    /// The log of run `run` of sandbox `id`, read once: one of the runs before the newest (a
    /// service's failed run, since started again), whose logs are kept (the last 20).
    pub async fn run_log(&self, principal: &Principal, id: &str, run: &str, follow: bool) -> OpResult<LogTail> {
        if follow {
            return Err(OpError::Invalid("follow reads the newest run's log: give it without run".into()));
        }
        let definition = self.visible_sandbox(principal, id).await?.definition;
        // A run id names a file in the sandbox's log directory: nothing else may.
        if !bkg_schema::sandbox::is_run_id(run) {
            return Err(OpError::Invalid(format!("`{run}` is not a run id (bkg runs ls --sandbox NAME lists them)")));
        }
        let path = self.engine.sandbox_home(&definition.namespace, id).logs_dir().join(format!("{run}.log"));
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            // A run of another sandbox (or none of a sandbox) is said to be that, not a log
            // no longer kept (found by a new-user trial). Only what this caller may see is named.
            let elsewhere = match self.store.get_run(run).await? {
                Some(record) if record.file_transfer && reaches(principal, &record.namespace) => Some(format!(
                    "run {run} was a file transfer (`bkg cp`), which keeps no log: `bkg runs show {run}` shows it"
                )),
                Some(record) if record.sandbox_id.as_deref() != Some(id) && reaches(principal, &record.namespace) => {
                    Some(match record.sandbox_id.as_deref() {
                        Some(other) => format!(
                            "run {run} is one of sandbox {}'s, not {}'s: `bkg logs {} --run {run}` shows it",
                            bkg_schema::sandbox::sandbox_name_of(other),
                            definition.name,
                            bkg_schema::sandbox::sandbox_name_of(other)
                        ),
                        None => format!(
                            "run {run} was a `bkg exe` run, not one of sandbox {}'s: `bkg runs show {run}` shows it",
                            definition.name
                        ),
                    })
                }
                _ => None,
            };
            return Err(OpError::NotFound(elsewhere.unwrap_or_else(|| {
                format!(
                    "no log of run {run} in sandbox {}: the logs of its last 20 runs are kept, and a session's \
                     interpreter (`bkg exec`, `bkg repl`) keeps none (bkg runs ls --sandbox {} lists its runs)",
                    definition.name, definition.name
                )
            })));
        }
        let (sender, chunks) = mpsc::channel(16);
        tokio::spawn(async move { read_log(path, None, &sender).await });
        Ok(LogTail {
            run_id: run.to_owned(),
            chunks: KeyHold::hold_chunks(KeyHold::of(&self.store, principal), chunks),
        })
    }
}

/// The newest log of sandbox `id` (in `log_dir`), its run's id, and that run's progress if it
/// goes on. A run just accepted opens its log before it starts: the newest log is the one it
/// opens.
async fn newest_log(
    engine: &Engine,
    id: &str,
    log_dir: &std::path::Path,
) -> Option<(std::path::PathBuf, String, Option<watch::Receiver<RunProgress>>)> {
    let current = engine.current_run(id);
    if let Some(run) = &current {
        wait_until(run.watch(), RUN_PATIENCE, |progress| progress.phase >= RunPhase::Started).await;
    }
    let newest = std::fs::read_dir(log_dir).ok()?.flatten().map(|entry| entry.path()).max()?;
    let run_id = newest.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let going_on = current.filter(|run| run.run_id == run_id).map(|run| run.watch());
    Some((newest, run_id, going_on))
}

/// Sends the log file at `path` as it grows, until its run (if `going_on`) has ended.
async fn read_log(
    path: std::path::PathBuf,
    mut going_on: Option<watch::Receiver<RunProgress>>,
    sender: &mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buffer).await {
            Ok(0) => {
                let Some(progress) = going_on.as_mut().filter(|progress| progress.borrow().phase < RunPhase::Ended)
                else {
                    // One more read: the run may have written its last bytes as it ended.
                    let last = file.read(&mut buffer).await.unwrap_or(0);
                    if last > 0 {
                        let _ = sender.send(Ok(buffer[..last].to_vec())).await;
                    }
                    return;
                };
                // A file has no way to say it grew: read again shortly, or as soon as the run ends.
                tokio::select! {
                    () = tokio::time::sleep(LOG_POLL) => {}
                    _ = progress.wait_for(|progress| progress.phase >= RunPhase::Ended) => {}
                    () = sender.closed() => return,
                }
            }
            Ok(read) => {
                if sender.send(Ok(buffer[..read].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        }
    }
}
