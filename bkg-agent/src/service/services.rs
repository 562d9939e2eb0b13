//! A persistent sandbox's detached run as a service (`bkgr -d`): its health for `bkg status`,
//! and, when its definition says `restart: on-failure`, started again after a failure (with a
//! growing pause) until a stop ends it (`bkg stop`, a delete, the agent's shutdown). Such a
//! service that the agent's stop or crash ended is started again by the next agent
//! (`resume_services`, store/services.rs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bkg_schema::KilledBy;
use bkg_schema::egress::{PortHealth, PortMapping, RestartPolicy, ServiceHealth, ServiceState};
use bkg_schema::sandbox::{DetachedRun, ExecRequest, SandboxDefinition};
use tokio::sync::{mpsc, watch};

use super::runs::{Accepted, RunTask};
use super::sandboxes::Holder;
use super::{OpError, OpResult, Service};
use crate::auth::Principal;
use crate::engine::run::RunError;

/// The first pause before a failed service is started again; it doubles up to `LONGEST_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// The pause before a failed service is started again, given the one it was to wait and how
/// long its run went on: a run that went on at least as long as the longest pause was a healthy
/// one, and its failure starts the pauses over (was: a service that failed twice at its start
/// waited 30 s after a crash hours later; found by a new-user trial).
fn pause_after(pause: Duration, ran_for: Duration) -> Duration {
    if ran_for >= LONGEST_PAUSE { FIRST_PAUSE } else { pause }
}

/// Every sandbox's service since this agent started it, by sandbox id.
#[derive(Default)]
pub struct Services(Mutex<HashMap<String, Supervised>>);

struct Supervised {
    /// Watched by followers of its log (`sandbox_log`), which go on into each restart's run.
    health: watch::Sender<ServiceHealth>,
    /// Turns true when the service is stopped: no restart after that.
    stopped: watch::Sender<bool>,
}

impl Services {
    /// A new service in sandbox `id`, replacing what an earlier one left; one the last agent left
    /// (`resumed`) goes on with its restarts and last failure.
    fn begin(
        &self,
        id: &str,
        run_id: Option<&str>,
        restart: RestartPolicy,
        resumed: Option<&ServiceHealth>,
    ) -> watch::Receiver<bool> {
        let (stopped, receiver) = watch::channel(false);
        let health = ServiceHealth {
            state: ServiceState::Running,
            restart,
            run_id: run_id.map(str::to_owned).or_else(|| resumed.and_then(|earlier| earlier.run_id.clone())),
            restarts: resumed.map_or(0, |earlier| earlier.restarts),
            last_exit_code: resumed.and_then(|earlier| earlier.last_exit_code),
            last_killed_by: resumed.and_then(|earlier| earlier.last_killed_by),
            ports: Vec::new(),
            not_restarted: None,
        };
        if let Ok(mut services) = self.0.lock() {
            services.insert(id.to_owned(), Supervised { health: watch::Sender::new(health), stopped });
        }
        receiver
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut ServiceHealth)) {
        if let Ok(mut services) = self.0.lock()
            && let Some(supervised) = services.get_mut(id)
        {
            supervised.health.send_modify(change);
        }
    }

    /// Marks the service of sandbox `id` stopped, so that it is not started again.
    /// Whether a restart was pending (the service was waiting out its pause after a failure),
    /// which is now called off.
    pub fn stop(&self, id: &str) -> bool {
        if let Ok(mut services) = self.0.lock()
            && let Some(supervised) = services.get_mut(id)
        {
            supervised.stopped.send_replace(true);
            let pending = supervised.health.borrow().state == ServiceState::Restarting;
            // What it waited for is no longer why it does not run (found by a trial of this stop).
            supervised.health.send_modify(|health| {
                health.state = ServiceState::Stopped;
                health.not_restarted = None;
            });
            return pending;
        }
        false
    }

    pub(super) fn health(&self, id: &str) -> Option<ServiceHealth> {
        self.0.lock().ok()?.get(id).map(|supervised| supervised.health.borrow().clone())
    }

    /// The health of sandbox `id`'s service as it changes.
    pub(super) fn watch(&self, id: &str) -> Option<watch::Receiver<ServiceHealth>> {
        self.0.lock().ok()?.get(id).map(|supervised| supervised.health.subscribe())
    }
}

/// How the pause before a restart ended.
enum Pause {
    Over,
    /// The service was stopped (`bkg stop`, a delete, the agent's shutdown).
    Stopped,
    /// The sandbox's service was started anew meanwhile.
    Superseded,
}

/// How a service's run ended, as far as restarting goes.
enum Ending {
    Success,
    /// Stopped by a caller: never restarted.
    Stopped,
    /// Ended by the agent's stop: not restarted by this agent, but by the next.
    AgentStopped,
    /// Its exit code, and the limit that ended it, if one did.
    Failure(Option<i32>, Option<KilledBy>),
}

fn ending_of(outcome: &Result<OpResult<bkg_schema::RunResult>, tokio::task::JoinError>) -> Ending {
    match outcome {
        Ok(Ok(result)) => match result.killed_by {
            Some(KilledBy::Cancelled) => Ending::Stopped,
            Some(KilledBy::Shutdown | KilledBy::Interrupted) => Ending::AgentStopped,
            Some(limit) => Ending::Failure(result.exit_code, Some(limit)),
            None if result.exit_code == Some(0) => Ending::Success,
            None => Ending::Failure(result.exit_code, None),
        },
        _ => Ending::Failure(None, None),
    }
}

impl Service {
    /// Starts an accepted exec of sandbox `id` and returns at once; its output goes to the
    /// sandbox's log, and it is supervised as the sandbox's service.
    pub async fn detach(self: &Arc<Self>, sandbox_id: &str, accepted: Accepted) -> DetachedRun {
        self.detach_resumed(sandbox_id, accepted, None).await
    }

    /// `detach`, for a service the last agent left as `resumed` stood.
    async fn detach_resumed(
        self: &Arc<Self>,
        sandbox_id: &str,
        accepted: Accepted,
        resumed: Option<&ServiceHealth>,
    ) -> DetachedRun {
        let run_id = accepted.run_id().to_owned();
        let principal = accepted.principal().clone();
        let exec = accepted.exec().cloned();
        let restart = accepted.restart();
        // Before it can be stopped, so a stop's forgetting comes after.
        self.remember_service(sandbox_id, &principal, exec.as_ref().filter(|_| restart == RestartPolicy::OnFailure))
            .await;
        let stopped = self.services.begin(sandbox_id, Some(&run_id), restart, resumed);
        self.keep_service_health(sandbox_id).await;
        let task = self.start(accepted, mpsc::channel(1).1, None);
        let service = Arc::clone(self);
        let id = sandbox_id.to_owned();
        tokio::spawn(async move {
            Arc::clone(&service).supervise(id.clone(), principal, exec, task, stopped).await;
            service.keep_service_health(&id).await;
        });
        DetachedRun { sandbox_id: sandbox_id.to_owned(), run_id }
    }

    /// Keeps how sandbox `id`'s service stands now, for `bkg status` after the agent restarts.
    async fn keep_service_health(&self, id: &str) {
        let Some(health) = self.services.health(id) else { return };
        if let Err(error) = self.store.keep_service_health(id, &health).await {
            tracing::warn!(sandbox = %id, %error, "could not keep the service's state");
        }
    }

    async fn supervise(
        self: Arc<Self>,
        id: String,
        principal: Principal,
        exec: Option<ExecRequest>,
        mut task: RunTask,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut pause = FIRST_PAUSE;
        let mut started = tokio::time::Instant::now();
        loop {
            let ending = ending_of(&(&mut task).await);
            pause = pause_after(pause, started.elapsed());
            // The definition as it is now: an edited cave.yaml applies from the next start.
            let restart = match self.store.get_sandbox(&id).await {
                Ok(Some(stored)) => stored.definition.restart,
                _ => RestartPolicy::No,
            };
            let (exit_code, killed_by) = match ending {
                Ending::Failure(code, killed_by) => (code, killed_by),
                Ending::AgentStopped => {
                    self.services.update(&id, |health| health.state = ServiceState::Stopped);
                    return;
                }
                Ending::Success | Ending::Stopped => {
                    let state =
                        if matches!(ending, Ending::Stopped) { ServiceState::Stopped } else { ServiceState::Exited };
                    self.services.update(&id, |health| health.state = state);
                    self.forget_service(&id).await;
                    return;
                }
            };
            let Some(exec) = exec.clone().filter(|_| restart == RestartPolicy::OnFailure && !*stopped.borrow()) else {
                self.services.update(&id, |health| {
                    health.state = if *stopped.borrow() { ServiceState::Stopped } else { ServiceState::Exited };
                    health.last_exit_code = exit_code;
                    health.last_killed_by = killed_by;
                });
                self.forget_service(&id).await;
                return;
            };
            if self.engine.is_closing() {
                // It failed as the agent stopped: the next agent starts it again.
                self.services.update(&id, |health| health.state = ServiceState::Stopped);
                return;
            }
            self.services.update(&id, |health| {
                health.state = ServiceState::Restarting;
                health.last_exit_code = exit_code;
                health.last_killed_by = killed_by;
            });
            // Kept as it changes, not only when the service ends: an agent killed (or stopped
            // before this task ends) would leave the next agent the state of its start.
            self.keep_service_health(&id).await;
            tracing::info!(sandbox = %id, ?exit_code, pause_ms = pause.as_millis() as u64, "service failed; restarting");
            // A sandbox held meanwhile (`bkg exec`, `bkg shell`, `bkg cp`) is waited for, pause
            // after pause: the service starts again once it is free (found by a new-user trial:
            // a `bkg exec` during the pause switched the service off for good, without a word).
            let accepted = loop {
                let paused = tokio::select! {
                    () = tokio::time::sleep(pause) => Pause::Over,
                    stop = stopped.wait_for(|stopped| *stopped) => match stop {
                        Ok(_) => Pause::Stopped,
                        // A new start of the sandbox's service (`bkgr -d`) took its place, and its
                        // record for the next agent: that is the new one's to keep or forget.
                        Err(_) => Pause::Superseded,
                    },
                };
                match paused {
                    Pause::Over => {}
                    Pause::Stopped => {
                        if !self.engine.is_closing() {
                            self.forget_service(&id).await;
                        }
                        return;
                    }
                    Pause::Superseded => return,
                }
                if self.engine.is_closing() {
                    // The agent began to stop during the pause: the next agent starts it again.
                    self.services.update(&id, |health| health.state = ServiceState::Stopped);
                    return;
                }
                pause = (pause * 2).min(LONGEST_PAUSE);
                match self.accept_exec(&principal, &id, exec.clone()).await {
                    Ok(accepted) => break accepted,
                    Err(_) if self.engine.is_closing() => {
                        self.services.update(&id, |health| health.state = ServiceState::Stopped);
                        return;
                    }
                    Err(OpError::Run(RunError::Busy(_))) => {
                        // Said without the refusal's hint to `bkg stop`, which would stop the
                        // service too (found by a trial of this stop); by what holds it (found by
                        // a new-user trial: a run of its own was said to be a file transfer).
                        let waits_for = match self.holder_of(&id) {
                            Holder::Session(session) => {
                                format!("session `{session}` holds its sandbox; it starts again once the session ends")
                            }
                            Holder::Transfer => {
                                "its sandbox is busy (a file transfer); it starts again once that is done".to_owned()
                            }
                            Holder::Run => "a run of its own holds its sandbox (`bkgr`, `bkg shell`); it starts \
                                            again once that ends"
                                .to_owned(),
                        };
                        self.waits_to_start_again(&id, waits_for).await;
                    }
                    // Another process took a host port it forwards during the pause: tried again,
                    // pause after pause, since that process may let it go.
                    Err(OpError::Run(RunError::PortUnusable(why))) => {
                        self.waits_to_start_again(&id, format!("{why}; it is tried again after each pause")).await;
                    }
                    // A bound of the agent's (its places, its queue, its disk budget) frees as
                    // runs end: tried again, pause after pause (found by a new-user trial: a
                    // `bkg exec` that took the last place during the pause switched it off).
                    Err(OpError::Run(RunError::Overloaded { reason, .. })) => {
                        self.waits_to_start_again(&id, waits_for_room(&reason)).await;
                    }
                    Err(error) => {
                        self.gives_up_on(&id, ServiceState::Exited, &error).await;
                        return;
                    }
                }
            };
            let run_id = accepted.run_id().to_owned();
            task = self.start(accepted, mpsc::channel(1).1, None);
            started = tokio::time::Instant::now();
            self.services.update(&id, |health| {
                health.run_id = Some(run_id);
                health.state = ServiceState::Running;
                health.restarts += 1;
                health.not_restarted = None;
            });
            self.keep_service_health(&id).await;
            // A stop that came while it was being started again ends the new run at once.
            if *stopped.borrow()
                && let Some(run) = self.engine.current_run(&id)
            {
                run.stop();
            }
        }
    }

    /// Records sandbox `id`'s service for the next agent, given the `exec` of one its sandbox
    /// restarts on failure, when nothing of its command goes unstored (one-off environment
    /// values are never stored); otherwise forgets an earlier one of the sandbox.
    async fn remember_service(&self, id: &str, principal: &Principal, exec: Option<&ExecRequest>) {
        let recorded = match exec.filter(|exec| exec.env.is_empty()) {
            Some(exec) => self.store.service_started(id, exec, &principal.actor()).await,
            None => self.store.service_ended(id).await,
        };
        if let Err(error) = recorded {
            tracing::warn!(sandbox = %id, %error, "could not record the service for the next agent");
        }
    }

    /// Says why sandbox `id`'s service waits to start again (`bkg status`).
    async fn waits_to_start_again(&self, id: &str, waits_for: String) {
        tracing::info!(sandbox = %id, %waits_for, "the service waits to start again");
        self.services.update(id, |health| health.not_restarted = Some(waits_for));
        self.keep_service_health(id).await;
    }

    /// Ends sandbox `id`'s service for good, as `state`, since `error` keeps it from starting.
    async fn gives_up_on(&self, id: &str, state: ServiceState, error: &OpError) {
        tracing::warn!(sandbox = %id, %error, "the service could not be started again");
        self.services.update(id, |health| {
            health.state = state;
            health.not_restarted = Some(error.to_string());
        });
        self.keep_service_health(id).await;
        self.forget_service(id).await;
    }

    pub(super) async fn forget_service(&self, id: &str) {
        if let Err(error) = self.store.service_ended(id).await {
            tracing::warn!(sandbox = %id, %error, "could not forget the service");
        }
    }

    /// Starts again the services the last agent left running (its stop or crash ended them), each
    /// as the caller who started it, if that caller may still: a local user still in the
    /// socket's group, a key still valid. One that cannot start is forgotten, with a warning.
    pub async fn resume_services(self: &Arc<Self>, access: &crate::auth::local::LocalAccess) {
        let left = match self.store.left_services().await {
            Ok(left) => left,
            Err(error) => {
                tracing::error!(%error, "could not read the services to start again");
                return;
            }
        };
        tracing::info!(services = left.len(), "services the last agent left");
        for service in left {
            // cave.yaml may have changed since, as the last `bkgr` gave it.
            let restarts = match self.store.get_sandbox(&service.sandbox_id).await {
                Ok(Some(stored)) => stored.definition.restart == RestartPolicy::OnFailure,
                _ => false,
            };
            // How it stood when the last agent left it: its restarts and last failure go on
            // being its own (a service in a crash loop must not look healthy after a restart).
            let earlier = self.store.kept_service_health(&service.sandbox_id).await.ok().flatten();
            let started = match (restarts, self.principal_of(access, &service.actor).await) {
                (false, _) => Err("its sandbox no longer says `restart: on-failure`".to_owned()),
                (true, None) => Err(no_longer_theirs(&service.actor, &service.sandbox_id)),
                (true, Some(principal)) => {
                    match self.accept_exec(&principal, &service.sandbox_id, service.exec.clone()).await {
                        Ok(accepted) => Ok(self.detach_resumed(&service.sandbox_id, accepted, earlier.as_ref()).await),
                        // This agent may have fewer places than the last (found by a new-user
                        // trial: such services stayed off for good, through later agents too).
                        Err(OpError::Run(RunError::Overloaded { reason, .. })) => {
                            let waits = waits_for_room(&reason);
                            tokio::spawn(Arc::clone(self).resume_with_room(service, principal, earlier, waits));
                            continue;
                        }
                        Err(error) => Err(error.to_string()),
                    }
                }
            };
            match started {
                Ok(run) => tracing::info!(sandbox = %service.sandbox_id, run = %run.run_id, "service started again"),
                Err(error) => {
                    tracing::warn!(sandbox = %service.sandbox_id, %error, "the service could not be started again");
                    // Said where its user looks (`bkg status`), not only in this log.
                    if let Ok(Some(mut kept)) = self.store.kept_service_health(&service.sandbox_id).await {
                        kept.state = ServiceState::Stopped;
                        kept.not_restarted = Some(error);
                        if let Err(error) = self.store.keep_service_health(&service.sandbox_id, &kept).await {
                            tracing::warn!(sandbox = %service.sandbox_id, %error, "could not keep the service's state");
                        }
                    }
                    self.forget_service(&service.sandbox_id).await;
                }
            }
        }
    }

    /// Starts a service the last agent left once this one has room for it, tried pause after
    /// pause. It is this agent's meanwhile, shown as restarting with what it waits for; a stop
    /// calls it off, and an agent's stop leaves it to the next agent.
    async fn resume_with_room(
        self: Arc<Self>,
        service: crate::store::LeftService,
        principal: Principal,
        earlier: Option<ServiceHealth>,
        waits: String,
    ) {
        let id = service.sandbox_id.clone();
        let mut stopped = self.services.begin(&id, None, RestartPolicy::OnFailure, earlier.as_ref());
        self.services.update(&id, |health| health.state = ServiceState::Restarting);
        self.waits_to_start_again(&id, waits).await;
        let mut pause = FIRST_PAUSE;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Stopped (its record is forgotten by the stop), or started anew by its user.
                _ = stopped.wait_for(|stopped| *stopped) => return,
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
            if self.engine.is_closing() {
                self.services.update(&id, |health| health.state = ServiceState::Stopped);
                return;
            }
            match self.accept_exec(&principal, &id, service.exec.clone()).await {
                Ok(accepted) => {
                    let resumed = self.services.health(&id);
                    let run = self.detach_resumed(&id, accepted, resumed.as_ref()).await;
                    tracing::info!(sandbox = %id, run = %run.run_id, "service started again");
                    return;
                }
                // Still no room, or its sandbox held meanwhile (`bkg exec`): tried again.
                Err(OpError::Run(RunError::Overloaded { .. } | RunError::Busy(_) | RunError::PortUnusable(_))) => {}
                Err(error) => {
                    self.gives_up_on(&id, ServiceState::Stopped, &error).await;
                    return;
                }
            }
        }
    }

    /// The caller an audit actor (`uid:N`, `key:ID`) names, as the agent would let them in now.
    async fn principal_of(&self, access: &crate::auth::local::LocalAccess, actor: &str) -> Option<Principal> {
        if let Some(uid) = actor.strip_prefix("uid:") {
            return super::access::socket_principal(access, uid.parse().ok()?);
        }
        let key = self.store.get_key(actor.strip_prefix("key:")?).await.ok()??;
        self.usable_key(key).ok()
    }

    /// The health of sandbox `id`'s service, with whether its forwarded ports accept connections.
    pub(super) async fn service_health(&self, id: &str, definition: &SandboxDefinition) -> Option<ServiceHealth> {
        let mut health = match self.services.health(id) {
            Some(health) => health,
            // Not this agent's: as the last agent left it. One that was going on then ended with
            // that agent (unless it was started again, and so is this agent's).
            None => {
                let mut kept = self.store.kept_service_health(id).await.ok()??;
                if matches!(kept.state, ServiceState::Running | ServiceState::Restarting) {
                    kept.state = ServiceState::Stopped;
                }
                kept
            }
        };
        let current = self.engine.current_run(id).map(|run| run.run_id.clone());
        for text in &definition.ports {
            let Ok(mapping) = PortMapping::parse(text) else { continue };
            let accepting = match &current {
                Some(run_id) => self.engine.sandbox_accepts(run_id, mapping.sandbox_port).await.unwrap_or(false),
                None => false,
            };
            health.ports.push(PortHealth { mapping: mapping.to_string(), accepting });
        }
        Some(health)
    }
}

/// What a service that finds no room to start in waits for: the agent's bound, `reason`.
fn waits_for_room(reason: &str) -> String {
    format!("it starts again once the agent has room: {reason}")
}

/// Why a service the last agent left is not started again when `actor`, who started it, may no
/// longer: who that is and what to do (found by a new-user trial: "uid:1001 may no longer
/// start it").
fn no_longer_theirs(actor: &str, sandbox_id: &str) -> String {
    let again = format!("`bkgr {} -d` starts it again", bkg_schema::sandbox::sandbox_name_of(sandbox_id));
    if let Some(uid) = actor.strip_prefix("uid:") {
        let user = uid
            .parse()
            .ok()
            .and_then(crate::auth::local::Account::of)
            .map_or_else(|| format!("uid {uid}, no longer a user here"), |user| format!("{} (uid {uid})", user.name));
        return format!("its user, {user}, may no longer use the agent (not in its socket's group); {again}");
    }
    match actor.strip_prefix("key:") {
        Some(key) => {
            format!("the key it was started with, {key}, was revoked, rotated, deleted or has expired; {again}")
        }
        None => format!("{actor} may no longer start it; {again}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_after_a_healthy_run_starts_the_pauses_over() {
        assert_eq!(pause_after(Duration::from_secs(8), Duration::from_secs(2)), Duration::from_secs(8));
        assert_eq!(pause_after(LONGEST_PAUSE, Duration::from_secs(29)), LONGEST_PAUSE);
        assert_eq!(pause_after(Duration::from_secs(8), LONGEST_PAUSE), FIRST_PAUSE);
        assert_eq!(pause_after(LONGEST_PAUSE, Duration::from_secs(3600)), FIRST_PAUSE);
    }
}
