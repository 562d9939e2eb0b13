//! Runs: accepting one (checked, permitted, and for a persistent sandbox holding it), running it
//! to its end in a task of its own with what the agent remembers of it (the store and the audit
//! log hear of its start, its end and its cleanup, whoever asked for it), and reading runs back.

use std::sync::Arc;

use bkg_schema::egress::RestartPolicy;
use bkg_schema::sandbox::ExecRequest;
use bkg_schema::{RunRecord, RunRequest, RunResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::access::{
    listing_namespace, may_forward_ports, namespace_for, reaches, require_code_runner, user_caps, user_limit_defaults,
    within_user_limits,
};
use super::keys::KeyHold;
use super::{OpError, OpResult, RunInput, RunOutput, Service};
use crate::auth::Principal;
use crate::engine::handle::{RunPhase, RunTicket, RunTracker, wait_until};
use crate::engine::run::ValidatedRun;
use crate::envs::EnvRequest;
use crate::ids::{new_id, now_ms};
use crate::store::RunStart;

/// A run the agent has taken on: checked, permitted, with its id and its place (a persistent
/// sandbox is held for it from now on, so a stop or a second exec sees it at once).
pub struct Accepted {
    principal: Principal,
    ticket: RunTicket,
    validated: ValidatedRun,
    /// For an exec of a persistent sandbox: the request and its sandbox's restart policy, so
    /// that its service can be started again (`services.rs`).
    pub(super) exec: Option<(ExecRequest, RestartPolicy)>,
    /// The environment to build (or find built) before the code runs.
    environment: Option<EnvRequest>,
}

impl Accepted {
    pub fn run_id(&self) -> &str {
        self.ticket.run_id()
    }

    pub(super) fn principal(&self) -> &Principal {
        &self.principal
    }

    pub(super) fn exec(&self) -> Option<&ExecRequest> {
        self.exec.as_ref().map(|(exec, _)| exec)
    }

    pub(super) fn restart(&self) -> RestartPolicy {
        self.exec.as_ref().map(|(_, restart)| *restart).unwrap_or_default()
    }

    pub(super) fn tracker(&self) -> Arc<RunTracker> {
        self.ticket.tracker()
    }

    /// The environment to provide before the code runs.
    pub(super) fn needs(&mut self, environment: Option<EnvRequest>) {
        self.environment = environment;
    }
}

/// Cancels a run when its waiting caller goes away first (the future holding this is dropped
/// when an HTTP client hangs up).
struct CancelOnDrop(Option<mpsc::Sender<RunInput>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            // The channel holds one message and nothing else sends on it.
            let _ = cancel.try_send(RunInput::Cancel);
        }
    }
}

/// How long a cancel waits for the run's end to be recorded: its code's grace and a little more,
/// and less than a client waits for an answer (10 s).
const CANCEL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(bkg_schema::STOP_GRACE.as_secs() + 3);

/// A run going on in a task of its own; its result when awaited.
pub type RunTask = JoinHandle<OpResult<RunResult>>;

pub use bkg_schema::MAX_LISTED_RUNS;

impl Service {
    /// Checks a run in a temporary sandbox and takes it on.
    pub fn accept_run(&self, principal: &Principal, request: RunRequest) -> OpResult<Accepted> {
        let environment =
            self.environment_of(request.language, &request.requirements, request.node_packages.as_ref())?;
        let validated = self.validate_run(principal, request)?;
        let mut accepted = self.accept(principal, validated)?;
        accepted.needs(environment);
        Ok(accepted)
    }

    /// Checks a run in a temporary sandbox: whether the caller may run code, in which namespace,
    /// within the caller's limits.
    pub(super) fn validate_run(&self, principal: &Principal, request: RunRequest) -> OpResult<ValidatedRun> {
        require_code_runner(principal)?;
        let namespace = namespace_for(principal, request.namespace.as_deref())?;
        may_forward_ports(principal, &request.ports)?;
        let secrets = request.secrets.clone();
        Self::refuse_secret_clash(&secrets, request.env.keys())?;
        let mut request = request;
        let policy = &self.auth.policy.user;
        request.limits = user_limit_defaults(principal, policy, &request.limits, &self.engine.config.default_limits);
        let mut validated = self.engine.validate(request)?;
        within_user_limits(principal, &self.auth.policy.user, &validated.limits)?;
        validated.namespace = namespace;
        self.give_secrets(&mut validated, &secrets)?;
        Ok(validated)
    }

    pub(super) fn accept(&self, principal: &Principal, validated: ValidatedRun) -> OpResult<Accepted> {
        let ticket = self.engine.accept(new_id("run"), &validated)?;
        Ok(Accepted { principal: principal.clone(), ticket, validated, exec: None, environment: None })
    }

    /// Starts an accepted run in a task of its own, with the caller's stdin and cancellation on
    /// `input` and its output, as it is written, on `output`. Whatever the caller does (reads
    /// slowly, stops reading, hangs up), the run keeps its limits and is recorded.
    pub fn start(
        self: &Arc<Self>,
        accepted: Accepted,
        input: mpsc::Receiver<RunInput>,
        output: Option<mpsc::Sender<RunOutput>>,
    ) -> RunTask {
        tokio::spawn(Arc::clone(self).execute(accepted, input, output))
    }

    /// Runs with no stdin but what the request carries, and returns the result when it ends.
    /// The run is its own task, so a caller that hangs up leaves no sandbox half-done; it is
    /// cancelled then (`killed_by: cancelled`, recorded), as nobody is left to read its result.
    pub async fn run_to_end(self: &Arc<Self>, accepted: Accepted) -> OpResult<RunResult> {
        let (cancel, input) = mpsc::channel(1);
        let mut hang_up = CancelOnDrop(Some(cancel));
        let outcome = self.start(accepted, input, None).await;
        hang_up.0 = None;
        match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(OpError::Internal("the run's task failed".into())),
        }
    }

    /// Runs an accepted run to its end and records it. Recording failures are logged, never
    /// turned into a failed run: the caller's code did run.
    async fn execute(
        self: Arc<Self>,
        accepted: Accepted,
        input: mpsc::Receiver<RunInput>,
        output: Option<mpsc::Sender<RunOutput>>,
    ) -> OpResult<RunResult> {
        let Accepted { principal, ticket, mut validated, exec, environment } = accepted;
        // Shutdown waits for this: a run's end is recorded before the agent stops.
        let _in_flight = self.engine.run_in_flight();
        let caller = principal.audit_caller(&validated.namespace);
        let tracker = ticket.tracker();
        // A service belongs to its sandbox and outlives the key that started it; any other run
        // started with a key ends with it (docs/governance.md).
        let service = exec.as_ref().is_some_and(|(exec, _)| exec.detach);
        if let Some(hold) = KeyHold::of(&self.store, &principal).filter(|_| !service) {
            tokio::spawn(end_with_key(hold, Arc::clone(&tracker)));
        }
        // And one of a local user with their membership of the socket's group.
        if let Principal::User(user) = &principal
            && !service
        {
            let (access, changes) = self.auth.local.clone();
            tokio::spawn(end_with_membership(access, changes, user.uid, Arc::clone(&tracker)));
        }
        let run_id = tracker.run_id.clone();
        let sandbox_id = validated.sandbox_id().map(str::to_owned);
        let namespace = validated.namespace.clone();
        // The start is recorded before the code runs, so that a crash at any moment after leaves
        // a record the next agent closes as interrupted. Its audit line's fsync stays off this
        // path (`Store::record`); the write itself is a SQLite commit in WAL mode.
        let start = RunStart {
            id: &run_id,
            sandbox_id: sandbox_id.as_deref(),
            language: validated.language,
            limits: validated.limits,
            started_at_ms: now_ms(),
            for_transfer: validated.is_for_transfer(),
        };
        let started = self.store.run_started(&caller, start).await;
        if let Err(error) = started {
            tracing::error!(%error, run = %run_id, "could not record the run's start");
        }
        // A cancel while its packages install ends the run at once; the install goes on, for
        // the next run that needs them (found by a new-user trial: a Ctrl-C waited for all of
        // it, 17 s, under a note that the code had SIGTERM).
        let environment = match environment {
            None => Some(Ok(None)),
            Some(request) => {
                let service = Arc::clone(&self);
                let progress = output.as_ref().map(mpsc::Sender::downgrade);
                let (namespace, actor) = (validated.namespace.clone(), principal.actor());
                // The install's disk is at least the run's (`Engine::install_run`), its limits
                // within the caller's caps.
                let disk_bytes = validated.limits.disk_bytes;
                let caps = user_caps(&principal, &self.auth.policy.user);
                let mut provided = tokio::spawn(async move {
                    service.provide_env(&request, (&namespace, disk_bytes, &caps), &actor, &progress).await
                });
                tokio::select! {
                    provided = &mut provided => Some(match provided {
                        Ok(provided) => provided.map(|env| Some(env.give_to(&mut validated))),
                        Err(_) => Err(crate::service::RunError::InstallFailed("the install's task failed".into())),
                    }),
                    () = tracker.stop_asked() => None,
                }
            }
        };
        let outcome = match environment {
            Some(Ok(_held_until_the_run_ends)) => self.engine.run(ticket, validated, input, output).await,
            Some(Err(error)) => Err(error),
            None => Ok((self.engine.cancelled_before_its_sandbox(ticket, &validated), Default::default())),
        };
        // What the run kept is stored and recorded under one guard: the quota counts what the
        // store records, and another run's files must not slip in between.
        let mut keeping = None;
        let outcome = match outcome {
            Ok((mut result, kept)) => {
                if !kept.files.is_empty() || !kept.not_kept.is_empty() {
                    keeping = Some(self.artefacts.keeping().await);
                    self.keep_files(&namespace, &kept, &mut result).await;
                }
                Ok(result)
            }
            Err(error) => Err(error),
        };
        let recorded = match &outcome {
            Ok(result) => self.store.run_finished(&caller, sandbox_id.as_deref(), result, now_ms()).await,
            Err(error) => {
                self.store.run_failed(&caller, sandbox_id.as_deref(), &run_id, &error.to_string(), now_ms()).await
            }
        };
        drop(keeping);
        if let Err(error) = recorded {
            tracing::error!(%error, run = %run_id, "could not record the run's end");
        }
        // A run that never held a sandbox left nothing on the host; the cleanup listener, which
        // hears of disposed sandboxes, never hears of it.
        if !tracker.held_a_sandbox()
            && let Err(error) = self.store.run_cleaned_up(&run_id, true).await
        {
            tracing::error!(%error, run = %run_id, "could not record the cleanup");
        }
        tracker.advance(RunPhase::Recorded);
        self.metrics.run_ended(outcome.as_ref().map_err(|_| ()));
        Ok(outcome?)
    }

    /// The newest runs the caller may see, newest first.
    pub async fn list_runs(
        &self,
        principal: &Principal,
        limit: u32,
        namespace: Option<String>,
        sandbox: Option<String>,
        before: Option<String>,
    ) -> OpResult<Vec<RunRecord>> {
        require_code_runner(principal)?;
        if !(1..=MAX_LISTED_RUNS).contains(&limit) {
            return Err(OpError::Invalid(format!("limit must be from 1 to {MAX_LISTED_RUNS}, not {limit}")));
        }
        // An empty filter is a mistake, said as one for each of them alike (found by a new-user
        // trial: `sandbox=` listed nothing, `namespace=` was no DNS label, `before=` no run).
        for (name, value) in [("namespace", &namespace), ("sandbox", &sandbox), ("before", &before)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(OpError::Invalid(format!("{name} is empty: give a value, or leave it out")));
            }
        }
        let namespace = listing_namespace(principal, namespace)?;
        if let Some(before) = &before {
            // A run the caller may not see is no place to page from, as if it did not exist.
            match self.store.get_run(before).await? {
                Some(run) if reaches(principal, &run.namespace) => {}
                _ => {
                    return Err(OpError::Invalid(format!(
                        "before: there is no run {} here to list older runs from",
                        bkg_schema::auth::shown_as_id(before)
                    )));
                }
            }
        }
        // A sandbox's runs since it was made: one of the same name and project removed before
        // had the same id (found by a new-user trial: a sandbox made again listed the removed
        // one's runs). A removed sandbox's id lists all its runs, its history.
        let sandbox = match sandbox {
            Some(id) => {
                let since_ms = self.store.get_sandbox(&id).await?.map_or(0, |stored| stored.created_at_ms);
                Some((id, since_ms))
            }
            None => None,
        };
        let runs = self.store.list_runs(namespace, sandbox, before, limit).await?;
        Ok(runs.into_iter().map(|run| self.with_queue_state(run)).collect())
    }

    /// `run` as the agent knows it now: whether it waits for a place, which the store does not
    /// keep.
    fn with_queue_state(&self, mut run: RunRecord) -> RunRecord {
        run.queued = run.finished_at_ms.is_none()
            && self.engine.going_run(&run.id).is_some_and(|going| going.is_waiting_for_place());
        run
    }

    /// One run, if the caller may see it.
    pub async fn get_run(&self, principal: &Principal, id: &str) -> OpResult<RunRecord> {
        require_code_runner(principal)?;
        match self.store.get_run(id).await? {
            Some(run) if reaches(principal, &run.namespace) => Ok(self.with_queue_state(run)),
            // Another namespace's run is answered as missing: its existence is not ours to tell.
            _ => Err(OpError::NotFound(format!("no run {}", bkg_schema::auth::shown_as_id(id)))),
        }
    }

    /// The sandbox id and session name of the session whose interpreter is run `id`, if it is
    /// one: a run that cancelling would take its variables from.
    pub fn session_of_run(&self, id: &str) -> Option<(String, String)> {
        self.sessions.holding_run(id)
    }

    /// Asks a queued or running run to end, as its caller's Ctrl-C does (`killed_by: cancelled`:
    /// its code gets SIGTERM, and SIGKILL after its grace), and returns it as recorded once it has
    /// ended. Its caller's own stream may be the one thing it cannot hear on: stdin that the code
    /// does not read holds up every frame behind it, the cancel too.
    pub async fn cancel_run(&self, principal: &Principal, id: &str) -> OpResult<RunRecord> {
        self.get_run(principal, id).await?;
        // A session's interpreter holds the state of its executions: ending it is for `bkg stop`
        // (found by a new-user trial: the session's variables were gone, and `bkg exec` blamed
        // `bkg stop`).
        if let Some((sandbox_id, session)) = self.session_of_run(id) {
            let sandbox = bkg_schema::sandbox::sandbox_name_of(&sandbox_id);
            return Err(OpError::Conflict(format!(
                "run {id} is the interpreter of session `{session}` of sandbox {sandbox}, which holds its \
                 variables: interrupt its execution (Ctrl-C on `bkg exec`), or end the session with `bkg stop {sandbox}`"
            )));
        }
        let Some(going) = self.engine.going_run(id) else {
            return Err(OpError::Conflict(format!("run {id} has already ended: `bkg runs show {id}` shows how")));
        };
        going.stop_gracefully();
        if !wait_until(going.watch(), CANCEL_PATIENCE, |progress| progress.phase >= RunPhase::Recorded).await {
            // Still installing its packages, say, which it ends only after: as it is now.
            tracing::warn!(run = %id, "the cancelled run was not recorded in time");
        }
        self.get_run(principal, id).await
    }
}

/// Cancels the run (`killed_by: cancelled`) of local user `uid` once the user database no longer
/// lets them use the socket (an administrator took them out of its group, or removed them), as
/// a revoked key's runs end. Ends with the run.
async fn end_with_membership(
    access: crate::auth::local::LocalAccess,
    mut changes: tokio::sync::watch::Receiver<u64>,
    uid: u32,
    run: Arc<RunTracker>,
) {
    let mut progress = run.watch();
    let ended = async move { progress.wait_for(|progress| progress.phase >= RunPhase::Ended).await.map(drop) };
    tokio::pin!(ended);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                // A watch that ended: the run ends as it will.
                if changed.is_err() {
                    let _ = ended.await;
                    return;
                }
                if super::access::socket_principal(&access, uid).is_none() {
                    tracing::info!(run = %run.run_id, uid, "cancelling a run: its user may no longer use the agent");
                    run.stop();
                    return;
                }
            }
            _ = &mut ended => return,
        }
    }
}

/// Cancels the run (`killed_by: cancelled`) once the key it was started with no longer speaks
/// for it: revoked, rotated, deleted or expired. Ends with the run.
async fn end_with_key(hold: KeyHold, run: Arc<RunTracker>) {
    let mut progress = run.watch();
    tokio::select! {
        reason = hold.lost() => {
            tracing::info!(run = %run.run_id, key = %hold.key().id, reason, "cancelling a run: its key no longer speaks for it");
            run.stop();
        }
        _ = progress.wait_for(|progress| progress.phase >= RunPhase::Ended) => {}
    }
}
