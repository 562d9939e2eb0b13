//! What the agent takes on at once: a bounded queue of runs with per-namespace fairness, a disk
//! budget shared by every live sandbox (warm ones too), and when a run last succeeded (for the
//! health probe). Over a bound a run is refused at once with the reason, never left to pile up.
//!
//! Runs that last as long as someone keeps them (sessions, services, terminals) may hold at most
//! `CapacityConfig::long_lived_max` places: the rest stay for runs that end by themselves, so
//! idle sessions cannot keep every other run waiting for their hour (found by a new-user trial).
//! One over that bound is refused at once, with what holds the places, rather than queued. One
//! namespace may hold all of them but one, which stays for the others' (when there are two).
//!
//! The default disk budget is a share of the free space read at each grant, not once at start:
//! every sandbox's image has its blocks reserved on the host (engine/disk.rs), so another agent
//! on the same filesystem, or anything else writing there, shrinks what this one may give, and
//! two agents together never give away the whole disk.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

/// The bounds, from the agent's flags.
#[derive(Debug, Clone)]
pub struct CapacityConfig {
    /// Runs going on at once; more wait in the queue.
    pub max_running: usize,
    /// Runs waiting for a place; more are refused.
    pub max_queued: usize,
    /// Disk all live sandboxes together may be given (their disk limits summed).
    pub disk_budget: DiskBudget,
}

impl CapacityConfig {
    /// How many places sessions, services and terminals may hold together: all but a quarter of
    /// them (at least one kept for runs that end by themselves, when there are two or more).
    pub fn long_lived_max(&self) -> usize {
        self.max_running - kept_for_one_shot_runs(self.max_running)
    }
}

/// Of `max_running` places, those sessions, services and terminals may not take. An agent of
/// one place keeps none: its sessions would otherwise never start.
fn kept_for_one_shot_runs(max_running: usize) -> usize {
    match max_running {
        0 | 1 => 0,
        many => (many / 4).max(1),
    }
}

/// What ends a session, service or terminal, for the refusals of one more.
const END_ONE: &str = "`bkg stop NAME`, or `bkg runs cancel ID` for a terminal";

/// The refusal of one more session, service or terminal, with what ends one.
fn long_lived_full(held: usize, max_running: usize) -> String {
    match kept_for_one_shot_runs(max_running) {
        0 => format!(
            "a session, service or terminal already holds this agent's only place (--max-running-runs {max_running}): end it ({END_ONE}) or try again later"
        ),
        kept => format!(
            "sessions, services and terminals already hold {held} of this agent's {max_running} places (--max-running-runs), all they may: {kept} kept for runs that end by themselves; end one ({END_ONE}) or try again later"
        ),
    }
}

/// How much disk the live sandboxes together may be given.
#[derive(Debug, Clone)]
pub enum DiskBudget {
    /// Bytes named with `--disk-budget`.
    Fixed(u64),
    /// The default: `FREE_SHARE_PERCENT` of what the filesystem holding this directory has for
    /// sandboxes, its free space now and what this agent's sandboxes hold, read at each grant.
    FreeShare(PathBuf),
}

/// The part of the free space the default disk budget gives to sandboxes.
const FREE_SHARE_PERCENT: u64 = 80;

/// The default budget when `free` bytes are free and this agent's sandboxes hold `in_use`: their
/// images' blocks are reserved, so they are no longer counted free.
fn share_of_free(free: u64, in_use: u64) -> u64 {
    let share = u128::from(free.saturating_add(in_use)) * u128::from(FREE_SHARE_PERCENT) / 100;
    u64::try_from(share).unwrap_or(u64::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("{queued} runs are already waiting (this agent's --max-queued-runs); try again shortly")]
    QueueFull { queued: usize },
    #[error(
        "the agent's disk budget is spent: {asked} asked, {in_use} of {budget} given to live sandboxes ({bound}); try again when runs end"
    )]
    DiskBudget { asked: String, in_use: String, budget: String, bound: &'static str },
    #[error("{}", long_lived_full(*held, *max_running))]
    LongLivedFull { held: usize, max_running: usize },
    #[error(
        "sessions, services and terminals of namespace `{namespace}` already hold {held} places, all one namespace may: one more is kept for other namespaces'; end one ({END_ONE}) or try again later"
    )]
    LongLivedOfNamespace { namespace: String, held: usize },
    #[error("cannot read the free space of {dir}: {error}")]
    FreeSpace { dir: String, error: nix::errno::Errno },
}

impl CapacityError {
    /// When the caller may try again, in seconds: a queue moves quickly, disk frees as runs end.
    pub fn retry_after_secs(&self) -> u32 {
        match self {
            Self::QueueFull { .. } => 1,
            Self::LongLivedFull { .. } | Self::LongLivedOfNamespace { .. } => 10,
            Self::DiskBudget { .. } | Self::FreeSpace { .. } => 5,
        }
    }
}

pub struct Capacity {
    config: CapacityConfig,
    queue: Mutex<Queue>,
    disk_in_use: Mutex<u64>,
    last_runs: Mutex<LastRuns>,
    /// Long-lived runs accepted and not yet ended, queued or going on, by namespace.
    long_lived: Mutex<HashMap<String, usize>>,
}

#[derive(Default)]
struct Queue {
    running: usize,
    running_by_namespace: HashMap<String, usize>,
    /// Waiting runs by namespace, each with its ticket (arrival order) and its wake-up.
    waiting: BTreeMap<String, VecDeque<(u64, oneshot::Sender<()>)>>,
    queued: usize,
    next_ticket: u64,
}

impl Queue {
    fn start(&mut self, namespace: &str) {
        self.running += 1;
        *self.running_by_namespace.entry(namespace.to_owned()).or_default() += 1;
    }

    fn end(&mut self, namespace: &str) {
        self.running -= 1;
        if let Some(count) = self.running_by_namespace.get_mut(namespace) {
            *count -= 1;
            if *count == 0 {
                self.running_by_namespace.remove(namespace);
            }
        }
    }

    /// The waiting run to go next: of the namespaces waiting, the one with the fewest runs going
    /// (the one waiting longest among equals).
    fn next(&mut self) -> Option<(String, oneshot::Sender<()>)> {
        let namespace = self
            .waiting
            .iter()
            .filter_map(|(namespace, queue)| queue.front().map(|(ticket, _)| (namespace, *ticket)))
            .min_by_key(|(namespace, ticket)| {
                (self.running_by_namespace.get(namespace.as_str()).copied().unwrap_or(0), *ticket)
            })
            .map(|(namespace, _)| namespace.clone())?;
        let queue = self.waiting.get_mut(&namespace)?;
        let (_, wake) = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&namespace);
        }
        self.queued -= 1;
        Some((namespace, wake))
    }
}

/// A run's place among those going on; the next waiting run gets it when this is dropped.
pub struct Turn<'a> {
    capacity: &'a Capacity,
    namespace: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut queue = self.capacity.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.end(&self.namespace);
        self.capacity.hand_on(&mut queue);
    }
}

/// A run waiting for its place. Dropped unreceived (its caller gave up), it takes its entry out
/// of the queue, so that it no longer counts against `--max-queued-runs`, or, if a place was
/// handed to it meanwhile, gives that place on.
struct Waiting<'a> {
    capacity: &'a Capacity,
    namespace: String,
    ticket: u64,
    woken: oneshot::Receiver<()>,
    received: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.received {
            return;
        }
        let mut queue = self.capacity.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(waiting) = queue.waiting.get_mut(&self.namespace)
            && let Some(position) = waiting.iter().position(|(ticket, _)| *ticket == self.ticket)
        {
            waiting.remove(position);
            if waiting.is_empty() {
                queue.waiting.remove(&self.namespace);
            }
            queue.queued -= 1;
            return;
        }
        // Out of the queue: `hand_on` started it under the lock held here and sent the word,
        // which this receiver, alive until now, holds.
        if self.woken.try_recv().is_ok() {
            queue.end(&self.namespace);
            self.capacity.hand_on(&mut queue);
        }
    }
}

/// One of the `long_lived_max` places a session, service or terminal may hold, from its
/// acceptance to its end (`RunTicket`), given back when dropped.
pub struct LongLivedHold {
    capacity: Arc<Capacity>,
    namespace: String,
}

impl Drop for LongLivedHold {
    fn drop(&mut self) {
        let mut held = self.capacity.long_lived.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = held.get_mut(&self.namespace) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.namespace);
            }
        }
    }
}

/// Disk given to one live sandbox, returned to the budget when the sandbox is gone.
pub struct DiskGrant {
    capacity: Arc<Capacity>,
    bytes: u64,
}

impl Drop for DiskGrant {
    fn drop(&mut self) {
        let mut in_use = self.capacity.disk_in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *in_use = in_use.saturating_sub(self.bytes);
    }
}

impl Capacity {
    pub fn new(config: CapacityConfig) -> Self {
        Self {
            config,
            queue: Mutex::new(Queue::default()),
            disk_in_use: Mutex::new(0),
            last_runs: Mutex::new(LastRuns::default()),
            long_lived: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &CapacityConfig {
        &self.config
    }

    /// The disk budget now (it moves with the free space when it is the default share of it).
    pub fn disk_budget(&self) -> Result<u64, CapacityError> {
        let in_use = *self.disk_in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.budget_with(in_use)
    }

    /// What a run waiting for its place is told.
    pub fn queue_notice(&self) -> String {
        let queued = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).queued;
        let wait = if queued == 1 { "waits" } else { "wait" };
        format!(
            "waiting for a place: this agent runs {} at once (--max-running-runs) and {queued} {wait} for one",
            self.config.max_running
        )
    }

    /// Where the disk budget comes from, for messages.
    pub fn budget_source(&self) -> &'static str {
        match self.config.disk_budget {
            DiskBudget::Fixed(_) => "--disk-budget",
            DiskBudget::FreeShare(_) => "80% of the free space now, which other writers shrink; see --disk-budget",
        }
    }

    /// Whether the budget follows the host's free space (which space held elsewhere shrinks),
    /// not a fixed `--disk-budget`.
    pub fn budget_follows_free_space(&self) -> bool {
        matches!(self.config.disk_budget, DiskBudget::FreeShare(_))
    }

    /// How to give the sandboxes more disk, for messages.
    pub fn budget_fix(&self) -> &'static str {
        match self.config.disk_budget {
            DiskBudget::Fixed(_) => "start the agent with a larger --disk-budget",
            DiskBudget::FreeShare(_) => "free space on the filesystem of the agent's state directory",
        }
    }

    fn budget_with(&self, in_use: u64) -> Result<u64, CapacityError> {
        match &self.config.disk_budget {
            DiskBudget::Fixed(bytes) => Ok(*bytes),
            DiskBudget::FreeShare(dir) => {
                let stats = nix::sys::statvfs::statvfs(dir)
                    .map_err(|error| CapacityError::FreeSpace { dir: dir.display().to_string(), error })?;
                Ok(share_of_free(stats.blocks_available() * stats.fragment_size(), in_use))
            }
        }
    }

    /// Runs waiting for a place now, and the disk given to live sandboxes now.
    pub fn load(&self) -> (usize, u64) {
        let queued = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).queued;
        (queued, *self.disk_in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Waits for a place for a run of `namespace`; refused at once when the queue is full.
    pub async fn wait_turn(&self, namespace: &str) -> Result<Turn<'_>, CapacityError> {
        let mut waiting = {
            let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if queue.running < self.config.max_running && queue.queued == 0 {
                queue.start(namespace);
                return Ok(Turn { capacity: self, namespace: namespace.to_owned() });
            }
            if queue.queued >= self.config.max_queued {
                tracing::warn!(queued = queue.queued, namespace, "run refused: the queue is full");
                return Err(CapacityError::QueueFull { queued: queue.queued });
            }
            let (wake, woken) = oneshot::channel();
            let ticket = queue.next_ticket;
            queue.next_ticket += 1;
            queue.waiting.entry(namespace.to_owned()).or_default().push_back((ticket, wake));
            queue.queued += 1;
            Waiting { capacity: self, namespace: namespace.to_owned(), ticket, woken, received: false }
        };
        // The place was counted as ours by whoever woke us; a wait dropped before (its caller
        // gave up) leaves the queue, or gives back the place it was just handed (`Waiting`).
        let _ = (&mut waiting.woken).await;
        waiting.received = true;
        Ok(Turn { capacity: self, namespace: namespace.to_owned() })
    }

    /// A place for a run of `namespace` now, over the bound if need be: the health probe's
    /// (`ValidatedRun::beside_the_queue`). It counts among the runs going on while it lasts, so a
    /// waiting run gets the next place only once the probe's has been given back too.
    pub fn turn_beside_the_queue(&self, namespace: &str) -> Turn<'_> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).start(namespace);
        Turn { capacity: self, namespace: namespace.to_owned() }
    }

    /// Gives free places to waiting runs.
    fn hand_on(&self, queue: &mut Queue) {
        while queue.running < self.config.max_running {
            let Some((namespace, wake)) = queue.next() else { return };
            queue.start(&namespace);
            if wake.send(()).is_err() {
                queue.end(&namespace);
            }
        }
    }

    /// A place for a long-lived run, refused at once when they hold all they may: such a run
    /// would otherwise wait for one of them to end, which may be in an hour.
    pub fn hold_long_lived(self: &Arc<Self>, namespace: &str) -> Result<LongLivedHold, CapacityError> {
        let mut held = self.long_lived.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let all: usize = held.values().sum();
        let max = self.config.long_lived_max();
        if all >= max {
            tracing::warn!(held = all, namespace, "long-lived run refused: they hold every place they may");
            return Err(CapacityError::LongLivedFull { held: all, max_running: self.config.max_running });
        }
        let of_namespace = held.get(namespace).copied().unwrap_or(0);
        if max >= 2 && of_namespace >= max - 1 {
            tracing::warn!(held = of_namespace, namespace, "long-lived run refused: its namespace holds all it may");
            return Err(CapacityError::LongLivedOfNamespace { namespace: namespace.to_owned(), held: of_namespace });
        }
        *held.entry(namespace.to_owned()).or_default() += 1;
        Ok(LongLivedHold { capacity: Arc::clone(self), namespace: namespace.to_owned() })
    }

    /// Long-lived runs accepted and not ended now.
    pub fn long_lived_held(&self) -> usize {
        self.long_lived.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).values().sum()
    }

    /// Takes `bytes` of the disk budget for a sandbox about to be made.
    pub fn grant_disk(self: &Arc<Self>, bytes: u64) -> Result<DiskGrant, CapacityError> {
        let mut in_use = self.disk_in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let budget = self.budget_with(*in_use)?;
        if in_use.saturating_add(bytes) > budget {
            let size = bkg_schema::units::format_size;
            tracing::warn!(asked = bytes, in_use = *in_use, budget, "disk budget spent");
            return Err(CapacityError::DiskBudget {
                asked: size(bytes),
                in_use: size(*in_use),
                budget: size(budget),
                bound: self.budget_source(),
            });
        }
        *in_use += bytes;
        Ok(DiskGrant { capacity: Arc::clone(self), bytes })
    }

    /// Notes that a run ended with a result (`true`) or was failed by its sandbox or runtime.
    pub fn note_run(&self, succeeded: bool) {
        let mut last = self.last_runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = Some(Instant::now());
        if succeeded { last.success = at } else { last.failure = at }
    }

    /// When a run last ended with a result, and when one was last failed by its sandbox.
    pub fn last_runs(&self) -> LastRuns {
        *self.last_runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct LastRuns {
    pub success: Option<Instant>,
    pub failure: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(max_running: usize, max_queued: usize) -> Arc<Capacity> {
        Arc::new(Capacity::new(CapacityConfig { max_running, max_queued, disk_budget: DiskBudget::Fixed(100) }))
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_freed_place_goes_to_the_quietest_namespace() {
        let capacity = capacity(1, 2);
        let first = capacity.wait_turn("busy").await;
        assert!(first.is_ok());
        let busy = capacity.wait_turn("busy");
        let quiet = capacity.wait_turn("quiet");
        tokio::pin!(busy);
        tokio::pin!(quiet);
        // Both queue up (polled once each), a third is refused.
        assert!(futures_poll(&mut busy).is_none());
        assert!(futures_poll(&mut quiet).is_none());
        assert!(matches!(capacity.wait_turn("other").await, Err(CapacityError::QueueFull { queued: 2 })));
        drop(first);
        // Neither namespace has a run going once `first` ended: the older ticket wins.
        let second = futures_poll(&mut busy);
        assert!(matches!(second, Some(Ok(_))));
        assert!(futures_poll(&mut quiet).is_none());
        drop(second);
        assert!(matches!(futures_poll(&mut quiet), Some(Ok(_))));
    }

    #[test]
    fn long_lived_runs_leave_a_quarter_of_the_places_and_one_at_least() {
        let max = |max_running| capacity(max_running, 1).config().long_lived_max();
        assert_eq!([1, 2, 3, 4, 8, 16].map(max), [1, 1, 2, 3, 6, 12]);
        let capacity = capacity(4, 1);
        let mut held: Vec<_> = (0..2).map(|_| capacity.hold_long_lived("a")).collect();
        assert!(held.iter().all(Result::is_ok));
        // One namespace holds all but one: the last is another namespace's.
        let refused = capacity.hold_long_lived("a");
        assert!(matches!(refused, Err(CapacityError::LongLivedOfNamespace { held: 2, .. })));
        held.push(capacity.hold_long_lived("b"));
        assert!(held.iter().all(Result::is_ok));
        let refused = capacity.hold_long_lived("c");
        assert!(matches!(refused, Err(CapacityError::LongLivedFull { held: 3, max_running: 4 })));
        drop(held);
        assert!(capacity.hold_long_lived("c").is_ok(), "the places were given back");
        // With one place for them, one namespace may take it.
        let two_places = self::capacity(2, 1);
        assert!(two_places.hold_long_lived("a").is_ok());
    }

    #[tokio::test]
    async fn fairness_prefers_the_namespace_with_fewer_runs_going() {
        let capacity = capacity(2, 8);
        let a1 = capacity.wait_turn("a").await;
        let _a2 = capacity.wait_turn("a").await;
        let a3 = capacity.wait_turn("a");
        let b1 = capacity.wait_turn("b");
        tokio::pin!(a3);
        tokio::pin!(b1);
        assert!(futures_poll(&mut a3).is_none());
        assert!(futures_poll(&mut b1).is_none());
        drop(a1);
        // "a" still has one going, "b" none: "b" goes first although "a" waited longer.
        let b_going = futures_poll(&mut b1);
        assert!(matches!(b_going, Some(Ok(_))));
        assert!(futures_poll(&mut a3).is_none());
    }

    /// The health probe's run takes a place at once when every place is taken and the queue is
    /// full, and a waiting run goes next only once both places ahead of it are given back.
    #[tokio::test]
    async fn a_turn_beside_the_queue_never_waits_and_holds_its_place_while_it_lasts() {
        let capacity = capacity(1, 1);
        let first = capacity.wait_turn("a").await;
        assert!(first.is_ok());
        let waiting = capacity.wait_turn("b");
        tokio::pin!(waiting);
        assert!(futures_poll(&mut waiting).is_none());
        let probe = capacity.turn_beside_the_queue("default");
        drop(first);
        assert!(futures_poll(&mut waiting).is_none(), "the probe's run still holds a place");
        drop(probe);
        assert!(matches!(futures_poll(&mut waiting), Some(Ok(_))));
    }

    /// A caller that gives up while waiting leaves the queue at once: it no longer counts
    /// against the bound (it stayed counted until a place freed), and one that gives up just
    /// after it was handed a place gives the place on.
    #[tokio::test]
    async fn a_wait_given_up_leaves_the_queue_and_gives_on_a_place_it_was_handed() {
        let capacity = capacity(1, 1);
        let first = capacity.wait_turn("a").await;
        assert!(first.is_ok());
        {
            let given_up = capacity.wait_turn("a");
            tokio::pin!(given_up);
            assert!(futures_poll(&mut given_up).is_none());
            assert_eq!(capacity.load().0, 1);
        }
        assert_eq!(capacity.load().0, 0, "the wait given up left the queue");
        {
            let handed = capacity.wait_turn("a");
            tokio::pin!(handed);
            assert!(futures_poll(&mut handed).is_none(), "queued, not refused: the queue has room again");
            // The place is handed on (under the lock) as `first` ends; the wait is never polled again.
            drop(first);
        }
        let next = capacity.wait_turn("a");
        tokio::pin!(next);
        assert!(matches!(futures_poll(&mut next), Some(Ok(_))), "the place handed to the wait given up came back");
    }

    #[test]
    fn the_disk_budget_is_shared_and_returned() {
        let capacity = capacity(1, 1);
        let grant = capacity.grant_disk(60);
        assert!(grant.is_ok());
        assert!(matches!(capacity.grant_disk(50), Err(CapacityError::DiskBudget { .. })));
        drop(grant);
        assert!(capacity.grant_disk(100).is_ok());
    }

    #[test]
    fn the_default_budget_is_a_share_of_the_free_space_and_of_what_this_agent_holds() {
        const GIB: u64 = 1024 * 1024 * 1024;
        assert_eq!(share_of_free(10 * GIB, 0), 8 * GIB);
        // What this agent's sandboxes reserved is no longer free but is still its own to give.
        assert_eq!(share_of_free(8 * GIB, 2 * GIB), 8 * GIB);
        // Another writer's 5 GiB is gone from it.
        assert_eq!(share_of_free(3 * GIB, 2 * GIB), 4 * GIB);
        // Two agents that each give out their whole share leave part of the disk free.
        let total = 100 * GIB;
        let first = share_of_free(total, 0);
        let second = share_of_free(total - first, 0);
        assert!(first + second < total, "{first} + {second}");
        assert_eq!(share_of_free(u64::MAX, 1), 14_757_395_258_967_641_292);
    }

    #[test]
    fn the_default_budget_reads_the_free_space_at_each_grant() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let capacity = Arc::new(Capacity::new(CapacityConfig {
            max_running: 1,
            max_queued: 1,
            disk_budget: DiskBudget::FreeShare(dir.path().to_path_buf()),
        }));
        let budget = capacity.disk_budget().expect("budget");
        assert!(budget > 0);
        let grant = capacity.grant_disk(budget / 2).expect("half the budget");
        let refused = capacity.grant_disk(budget).err().map(|error| error.to_string()).unwrap_or_default();
        assert!(refused.contains("80% of the free space"), "{refused}");
        drop(grant);
        let gone = Capacity::new(CapacityConfig {
            max_running: 1,
            max_queued: 1,
            disk_budget: DiskBudget::FreeShare(dir.path().join("gone")),
        });
        assert!(matches!(gone.disk_budget(), Err(CapacityError::FreeSpace { .. })));
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(future).poll(&mut context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
