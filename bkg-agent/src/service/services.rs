//! A persistent sandbox's detached run as a service (`bkgr -d`): its health for `bkg status`,
//! and, when its definition says `restart: on-failure`, started again after a failure (with a
//! growing pause) until a stop ends it (`bkg stop`, a delete, the agent's shutdown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bkg_schema::KilledBy;
use bkg_schema::egress::{PortHealth, PortMapping, RestartPolicy, ServiceHealth, ServiceState};
use bkg_schema::sandbox::{DetachedRun, ExecRequest, SandboxDefinition};
use tokio::sync::{mpsc, watch};

use super::runs::{Accepted, RunTask};
use super::{OpResult, Service};
use crate::auth::Principal;

/// The first pause before a failed service is started again; it doubles up to `LONGEST_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// Every sandbox's service since this agent started it, by sandbox id.
#[derive(Default)]
pub struct Services(Mutex<HashMap<String, Supervised>>);

struct Supervised {
    health: ServiceHealth,
    /// Turns true when the service is stopped: no restart after that.
    stopped: watch::Sender<bool>,
}

impl Services {
    /// A new service in sandbox `id`, replacing what an earlier one left.
    fn begin(&self, id: &str, restart: RestartPolicy) -> watch::Receiver<bool> {
        let (stopped, receiver) = watch::channel(false);
        let health = ServiceHealth {
            state: ServiceState::Running,
            restart,
            restarts: 0,
            last_exit_code: None,
            ports: Vec::new(),
        };
        if let Ok(mut services) = self.0.lock() {
            services.insert(id.to_owned(), Supervised { health, stopped });
        }
        receiver
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut ServiceHealth)) {
        if let Ok(mut services) = self.0.lock()
            && let Some(supervised) = services.get_mut(id)
        {
            change(&mut supervised.health);
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
            let pending = supervised.health.state == ServiceState::Restarting;
            supervised.health.state = ServiceState::Stopped;
            return pending;
        }
        false
    }

    fn health(&self, id: &str) -> Option<ServiceHealth> {
        self.0.lock().ok()?.get(id).map(|supervised| supervised.health.clone())
    }
}

/// How a service's run ended, as far as restarting goes.
enum Ending {
    Success,
    /// Stopped by a caller or the agent's shutdown: never restarted.
    Stopped,
    Failure(Option<i32>),
}

fn ending_of(outcome: &Result<OpResult<bkg_schema::RunResult>, tokio::task::JoinError>) -> Ending {
    match outcome {
        Ok(Ok(result)) => match result.killed_by {
            Some(KilledBy::Cancelled | KilledBy::Shutdown | KilledBy::Interrupted) => Ending::Stopped,
            Some(_) => Ending::Failure(result.exit_code),
            None if result.exit_code == Some(0) => Ending::Success,
            None => Ending::Failure(result.exit_code),
        },
        _ => Ending::Failure(None),
    }
}

impl Service {
    /// Starts an accepted exec of sandbox `id` and returns at once; its output goes to the
    /// sandbox's log, and it is supervised as the sandbox's service.
    pub fn detach(self: &Arc<Self>, sandbox_id: &str, accepted: Accepted) -> DetachedRun {
        let run_id = accepted.run_id().to_owned();
        let principal = accepted.principal().clone();
        let exec = accepted.exec().cloned();
        let restart = accepted.restart();
        let stopped = self.services.begin(sandbox_id, restart);
        let task = self.start(accepted, mpsc::channel(1).1, None);
        tokio::spawn(Arc::clone(self).supervise(sandbox_id.to_owned(), principal, exec, task, stopped));
        DetachedRun { sandbox_id: sandbox_id.to_owned(), run_id }
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
        loop {
            let ending = ending_of(&(&mut task).await);
            // The definition as it is now: an edited cave.yaml applies from the next start.
            let restart = match self.store.get_sandbox(&id).await {
                Ok(Some(stored)) => stored.definition.restart,
                _ => RestartPolicy::No,
            };
            let exit_code = match ending {
                Ending::Failure(code) => code,
                Ending::Success | Ending::Stopped => {
                    let state =
                        if matches!(ending, Ending::Stopped) { ServiceState::Stopped } else { ServiceState::Exited };
                    self.services.update(&id, |health| health.state = state);
                    return;
                }
            };
            let Some(exec) = exec.clone().filter(|_| restart == RestartPolicy::OnFailure && !*stopped.borrow()) else {
                self.services.update(&id, |health| {
                    health.state = if *stopped.borrow() { ServiceState::Stopped } else { ServiceState::Exited };
                    health.last_exit_code = exit_code;
                });
                return;
            };
            if self.engine.is_closing() {
                self.services.update(&id, |health| health.state = ServiceState::Stopped);
                return;
            }
            self.services.update(&id, |health| {
                health.state = ServiceState::Restarting;
                health.last_exit_code = exit_code;
            });
            tracing::info!(sandbox = %id, ?exit_code, pause_ms = pause.as_millis() as u64, "service failed; restarting");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopped.wait_for(|stopped| *stopped) => return,
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
            let accepted = match self.accept_exec(&principal, &id, exec).await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(sandbox = %id, %error, "the service could not be started again");
                    self.services.update(&id, |health| health.state = ServiceState::Exited);
                    return;
                }
            };
            task = self.start(accepted, mpsc::channel(1).1, None);
            self.services.update(&id, |health| {
                health.state = ServiceState::Running;
                health.restarts += 1;
            });
            // A stop that came while it was being started again ends the new run at once.
            if *stopped.borrow()
                && let Some(run) = self.engine.current_run(&id)
            {
                run.stop();
            }
        }
    }

    /// The health of sandbox `id`'s service, with whether its forwarded ports accept connections.
    pub(super) async fn service_health(&self, id: &str, definition: &SandboxDefinition) -> Option<ServiceHealth> {
        let mut health = self.services.health(id)?;
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
