//! A run's handle: where it stands (queued → started → ended → recorded, and whether its sandbox
//! is cleaned up), as a `watch` channel that callers wait on, and its stop signal. A persistent
//! sandbox holds the handle of its run in the engine's registry from the moment the run is
//! accepted, so a stop or an exec right after finds it, and nobody sleeps to find out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Engine;
use super::capacity::LongLivedHold;
use super::disk::DiskUse;
use super::request::{Place, RunError, ValidatedRun};

/// How far a run has come. Each step comes after the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunPhase {
    /// Accepted; waiting for its turn or a sandbox.
    Queued,
    /// Its code was handed to a sandbox.
    Started,
    /// It is over (ended, killed, cancelled or failed); the sandbox is being disposed of.
    Ended,
    /// Its end is in the store and the audit log, so what a caller reads next shows it.
    Recorded,
}

/// A run's progress: its phase, and whether the sandbox it used is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunProgress {
    pub phase: RunPhase,
    /// Whether the run holds a sandbox that is not disposed of yet.
    pub holds_sandbox: bool,
}

impl RunProgress {
    /// Recorded and nothing of its sandbox left: its disk may be removed.
    pub fn is_settled(&self) -> bool {
        self.phase == RunPhase::Recorded && !self.holds_sandbox
    }
}

/// How the agent reaches a run's sandbox while the run holds it: the host pid of its pid 1
/// (whose root shows the sandbox's files) and the host uid its code runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxAccess {
    pub pid_one: i32,
    pub owner: u32,
}

/// The shared half of a run's handle.
#[derive(Debug)]
pub struct RunTracker {
    pub run_id: String,
    progress: watch::Sender<RunProgress>,
    stop: Notify,
    /// How to reach its sandbox, and the use of the sandbox's disk, while it lives.
    access: Mutex<Option<(SandboxAccess, DiskUse)>>,
    /// Whether the run only holds its sandbox for a file transfer.
    for_transfer: bool,
    /// Whether it ever held a sandbox: one that did not (cancelled in the queue, its
    /// environment not made) has nothing to clean up.
    held_a_sandbox: std::sync::atomic::AtomicBool,
    /// Whether a stop at once was asked for: a graceful one asked as well does not soften it.
    hard_stop: std::sync::atomic::AtomicBool,
    /// Whether it waits for a place among the runs going on (`--max-running-runs`).
    waiting_for_place: std::sync::atomic::AtomicBool,
}

impl RunTracker {
    fn new(run_id: String, for_transfer: bool) -> Arc<Self> {
        let progress = watch::Sender::new(RunProgress { phase: RunPhase::Queued, holds_sandbox: false });
        Arc::new(Self {
            run_id,
            progress,
            stop: Notify::new(),
            access: Mutex::new(None),
            for_transfer,
            held_a_sandbox: Default::default(),
            hard_stop: Default::default(),
            waiting_for_place: Default::default(),
        })
    }

    pub fn is_for_transfer(&self) -> bool {
        self.for_transfer
    }

    /// The sandbox this run holds, while it holds one.
    pub fn access(&self) -> Option<SandboxAccess> {
        self.access.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|(access, _)| *access)
    }

    /// The use of its sandbox's disk, while the run holds the sandbox: what keeps the disk's
    /// files open beyond the run takes it along (a file transfer's `Workspace`).
    pub fn disk_use(&self) -> Option<DiskUse> {
        self.access.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|(_, disk)| disk.clone())
    }

    pub(super) fn set_access(&self, access: Option<(SandboxAccess, DiskUse)>) {
        *self.access.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = access;
    }

    /// Moves the run forward to `phase`; never back.
    pub fn advance(&self, phase: RunPhase) {
        self.progress.send_if_modified(|progress| {
            let moved = phase > progress.phase;
            if moved {
                progress.phase = phase;
            }
            moved
        });
    }

    pub fn held_a_sandbox(&self) -> bool {
        self.held_a_sandbox.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn set_holds_sandbox(&self, holds: bool) {
        if holds {
            self.held_a_sandbox.store(true, std::sync::atomic::Ordering::Release);
        }
        self.progress.send_if_modified(|progress| std::mem::replace(&mut progress.holds_sandbox, holds) != holds);
    }

    pub(super) fn set_waiting_for_place(&self, waiting: bool) {
        self.waiting_for_place.store(waiting, std::sync::atomic::Ordering::Release);
    }

    /// Whether it waits for a place among the runs going on: queued, as `bkg runs ls` says.
    pub fn is_waiting_for_place(&self) -> bool {
        self.waiting_for_place.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn watch(&self) -> watch::Receiver<RunProgress> {
        self.progress.subscribe()
    }

    /// Ends the run at once (`killed_by: cancelled`), whether it is queued or running: for a
    /// run that must not go on (its key no longer speaks for it, its sandbox is being removed).
    pub fn stop(&self) {
        self.hard_stop.store(true, std::sync::atomic::Ordering::Release);
        self.stop.notify_one();
    }

    /// Asks the run to end (`killed_by: cancelled`): its code is sent SIGTERM and killed if it
    /// is still going after `bkg_schema::STOP_GRACE`, so a service can save its work.
    pub fn stop_gracefully(&self) {
        self.stop.notify_one();
    }

    /// Once a stop or a cancel has been asked for (it is not taken: the run sees it too).
    pub async fn stop_asked(&self) {
        self.stop.notified().await;
        // Given back for the run's own wait (`stopped`), which has not begun.
        self.stop.notify_one();
    }

    /// Waits for a stop; whether it may be graceful (no stop at once was asked for).
    pub(super) async fn stopped(&self) -> bool {
        self.stop.notified().await;
        !self.hard_stop.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Waits until `progress` satisfies `done`, at most `patience`. Returns whether it did.
pub async fn wait_until(
    mut progress: watch::Receiver<RunProgress>,
    patience: Duration,
    done: impl Fn(&RunProgress) -> bool,
) -> bool {
    tokio::time::timeout(patience, progress.wait_for(|now| done(now))).await.is_ok_and(|waited| waited.is_ok())
        || done(&progress.borrow())
}

/// An accepted run: its tracker, and its registry entry, which makes it found by its id and, for
/// a persistent sandbox, keeps a second run out until this one has ended.
pub struct RunTicket {
    pub(super) tracker: Arc<RunTracker>,
    registered: Option<Registered>,
    /// A session's, service's or terminal's place among those they may hold, until its end.
    long_lived: Option<LongLivedHold>,
}

impl RunTicket {
    pub fn run_id(&self) -> &str {
        &self.tracker.run_id
    }

    pub fn tracker(&self) -> Arc<RunTracker> {
        Arc::clone(&self.tracker)
    }
}

impl Drop for RunTicket {
    fn drop(&mut self) {
        // However the run went (ended, failed, never started), it is over once its ticket goes.
        // The sandbox and its long-lived place are free before the end is told: who waits for
        // it (`bkg exec --restart`) finds them free.
        drop(self.registered.take());
        drop(self.long_lived.take());
        self.tracker.advance(RunPhase::Ended);
    }
}

/// The runs going on: by their id, and for persistent sandboxes by the sandbox's id.
#[derive(Default)]
pub struct Registry {
    maps: Mutex<RegistryMaps>,
}

#[derive(Default)]
struct RegistryMaps {
    runs: HashMap<String, Arc<RunTracker>>,
    sandboxes: HashMap<String, Arc<RunTracker>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryMaps> {
        // Every change is one insert or remove per map: they stay consistent under a panic elsewhere.
        self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a run from the registry when dropped.
struct Registered {
    engine: Arc<Engine>,
    run_id: String,
    sandbox_id: Option<String>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut maps = self.engine.registry.lock();
        maps.runs.remove(&self.run_id);
        if let Some(sandbox_id) = &self.sandbox_id {
            maps.sandboxes.remove(sandbox_id);
        }
    }
}

impl Engine {
    /// Accepts a validated run under `run_id`. A persistent sandbox takes one run at a time (two
    /// would mount the same disk): a second is refused as busy until the first has ended.
    pub fn accept(self: &Arc<Self>, run_id: String, run: &ValidatedRun) -> Result<RunTicket, RunError> {
        let tracker = RunTracker::new(run_id.clone(), run.is_for_transfer());
        let sandbox_id = run.sandbox_id().map(str::to_owned);
        let mut maps = self.registry.lock();
        // A busy sandbox is said first: what holds it is what to end.
        if let Some(sandbox_id) = &sandbox_id
            && let Some(running) = maps.sandboxes.get(sandbox_id)
        {
            return Err(RunError::Busy(format!(
                "sandbox {sandbox_id} is already running ({}); stop it first",
                running.run_id
            )));
        }
        let long_lived = match run.place {
            Place::LongLived => Some(self.capacity.hold_long_lived(&run.namespace)?),
            Place::OneShot | Place::BesideTheQueue => None,
        };
        if let Some(sandbox_id) = &sandbox_id {
            maps.sandboxes.insert(sandbox_id.clone(), Arc::clone(&tracker));
        }
        maps.runs.insert(run_id.clone(), Arc::clone(&tracker));
        let registered = Registered { engine: Arc::clone(self), run_id, sandbox_id };
        Ok(RunTicket { tracker, registered: Some(registered), long_lived })
    }

    /// The run going on in persistent sandbox `sandbox_id`, if any.
    pub fn current_run(&self, sandbox_id: &str) -> Option<Arc<RunTracker>> {
        self.registry.lock().sandboxes.get(sandbox_id).cloned()
    }

    /// Run `run_id`, if it is queued or going on.
    pub fn going_run(&self, run_id: &str) -> Option<Arc<RunTracker>> {
        self.registry.lock().runs.get(run_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_only_moves_forward_and_waiters_see_it() {
        let tracker = RunTracker::new("run_1".into(), false);
        let waiter = tokio::spawn(wait_until(tracker.watch(), Duration::from_secs(30), RunProgress::is_settled));
        tracker.set_holds_sandbox(true);
        tracker.advance(RunPhase::Ended);
        tracker.advance(RunPhase::Started);
        assert_eq!(tracker.watch().borrow().phase, RunPhase::Ended, "a phase never goes back");
        tracker.advance(RunPhase::Recorded);
        assert!(!tracker.watch().borrow().is_settled(), "its sandbox is still held");
        tracker.set_holds_sandbox(false);
        assert!(matches!(waiter.await, Ok(true)));
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_of_patience_says_so() {
        let tracker = RunTracker::new("run_1".into(), false);
        let settled = wait_until(tracker.watch(), Duration::from_millis(1), RunProgress::is_settled).await;
        assert!(!settled);
    }
}
