//! The warm pool: default-sized sandboxes prepared ahead, so a run starts in one instead of
//! building its own. It is elastic: `--warm-pool N` is its size when idle; each run that finds
//! it empty raises its target by one, up to what `--warm-pool-memory` holds (at the memory a
//! prepared sandbox was measured to take), to a quarter of the disk budget and to N more than
//! the runs going on. Each run's caller may send its next run while the sandbox taken for this
//! one is still being prepared again (at idle priority, with its interpreter, that takes longer
//! than a short run), so N more than the runs covers a burst of runs one after another as well
//! as runs side by side; more would be prepared for nobody and disposed of unused at the next
//! shrink (docs/testing.md, "Three more cuts"). Every `SHRINK_AFTER` without such a miss
//! it halves back towards N, disposing of what is over.
//! Sandboxes are prepared in parallel, at most one per CPU at a time. `--warm-pool 0` turns all
//! of it off (runs still fork the zygote: engine/mod.rs, `claim`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bkg_schema::Language;
use tokio::sync::{oneshot, watch};

/// The pool's bounds, from the agent's flags.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Sandboxes kept prepared when idle; 0 turns the pool off.
    pub base: usize,
    /// Memory all prepared sandboxes together may take when the pool grows beyond `base`.
    pub memory_bytes: u64,
    /// The most the pool may grow to by disk: each prepared sandbox holds its disk limit of the
    /// agent's disk budget, and growth must leave runs most of it.
    pub max_by_disk: usize,
}

/// How long the pool keeps a grown target without a run finding it empty.
pub const SHRINK_AFTER: Duration = Duration::from_secs(10);

/// What a prepared sandbox is assumed to take until one has been measured: its init process
/// and the tmpfs of its root (docs/testing.md: about 3 MiB).
const FIRST_ESTIMATE_BYTES: u64 = 4 * 1024 * 1024;

/// Generic over what it holds so its rules can be tested without real sandboxes.
pub struct WarmPool<T> {
    config: PoolConfig,
    state: Mutex<State<T>>,
    /// Preparations going on; shutdown waits for 0.
    preparing: watch::Sender<usize>,
    /// How many preparations may run at once.
    parallel: usize,
}

struct State<T> {
    /// Oldest first: runs take the newest (of those that fit), shrinking drops the oldest.
    ready: Vec<T>,
    /// How many the pool aims to hold (ready and being prepared).
    target: usize,
    /// When a run last found the pool empty (or the target last shrank).
    last_miss: Instant,
    /// Memory of the most recently measured prepared sandbox.
    sandbox_bytes: u64,
    /// Runs that found the pool empty and wait for the next sandbox it prepares (each also
    /// has one prepared for itself, and takes whichever is ready first), oldest first.
    waiting: VecDeque<oneshot::Sender<T>>,
}

/// What `WarmPool::plan_refill` decided.
pub struct Refill {
    /// How many preparations to start now (each already counted as going on).
    pub start: usize,
}

impl<T> WarmPool<T> {
    pub fn new(config: PoolConfig) -> Self {
        let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
        Self {
            config,
            state: Mutex::new(State {
                ready: Vec::new(),
                target: config.base,
                last_miss: Instant::now(),
                sandbox_bytes: FIRST_ESTIMATE_BYTES,
                waiting: VecDeque::new(),
            }),
            preparing: watch::Sender::new(0),
            parallel,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_off(&self) -> bool {
        self.config.base == 0
    }

    pub fn ready(&self) -> usize {
        self.state().ready.len()
    }

    pub fn target(&self) -> usize {
        self.state().target
    }

    /// `describe` of every ready sandbox, oldest first.
    pub fn describe_ready<R>(&self, describe: impl Fn(&T) -> R) -> Vec<R> {
        self.state().ready.iter().map(describe).collect()
    }

    /// The largest target the memory and disk bounds allow (never below `base`).
    fn ceiling(&self, state: &State<T>) -> usize {
        let by_memory = self.config.memory_bytes / state.sandbox_bytes.max(1);
        (by_memory as usize).min(self.config.max_by_disk).max(self.config.base)
    }

    /// A prepared sandbox, if one is ready. Finding none is demand: the target grows by one, up
    /// to `runs` (the runs going on or waiting, this one included) more than the base.
    /// The newest that `fits` is taken before any other.
    pub fn take(&self, runs: usize, fits: impl Fn(&T) -> bool) -> Option<T> {
        if self.is_off() {
            return None;
        }
        let mut state = self.state();
        let taken = match state.ready.iter().rposition(fits) {
            Some(at) => Some(state.ready.remove(at)),
            None => state.ready.pop(),
        };
        if taken.is_none() {
            let grown = (state.target + 1).min(self.config.base + runs).min(self.ceiling(&state));
            state.target = state.target.max(grown);
            state.last_miss = Instant::now();
        }
        taken
    }

    /// How many preparations to start to reach the target, counting them as started.
    pub fn plan_refill(&self) -> Refill {
        if self.is_off() {
            return Refill { start: 0 };
        }
        let state = self.state();
        let mut start = 0;
        self.preparing.send_modify(|preparing| {
            let have = state.ready.len() + *preparing;
            let room = self.parallel.saturating_sub(*preparing);
            start = state.target.saturating_sub(have).min(room);
            *preparing += start;
        });
        Refill { start }
    }

    /// Adds a freshly prepared sandbox, measured at `bytes`, and ends its preparation's count:
    /// a run waiting for the next one takes it (`wait_for_next`). Returns it when the pool has no
    /// room for it any more (it shrank meanwhile).
    pub fn add(&self, sandbox: T, bytes: Option<u64>) -> Option<T> {
        let mut state = self.state();
        if let Some(bytes) = bytes.filter(|bytes| *bytes > 0) {
            state.sandbox_bytes = bytes;
        }
        let surplus = Self::offer(&mut state, sandbox);
        drop(state);
        self.preparation_ended();
        surplus
    }

    /// Takes back a prepared sandbox no run took: one a run prepared for itself while it
    /// waited for the pool's next one, and did not need (it too has its interpreter started
    /// ahead), or the pool's next one that arrived after its run stopped waiting. Returns it
    /// when there is no room.
    pub fn put_back(&self, sandbox: T) -> Option<T> {
        Self::offer(&mut self.state(), sandbox)
    }

    /// To the oldest run still waiting, else into the pool as its newest if it has room.
    fn offer(state: &mut State<T>, mut sandbox: T) -> Option<T> {
        while let Some(run) = state.waiting.pop_front() {
            match run.send(sandbox) {
                Ok(()) => return None,
                // That run took its own meanwhile.
                Err(back) => sandbox = back,
            }
        }
        if state.ready.len() >= state.target {
            return Some(sandbox);
        }
        state.ready.push(sandbox);
        None
    }

    /// For a run that found the pool empty: the next sandbox the pool prepares, if one is
    /// being prepared that no other waiting run will take first. What the run does not take
    /// must go back (`put_back`), or it is lost.
    pub fn wait_for_next(&self) -> Option<oneshot::Receiver<T>> {
        let mut state = self.state();
        state.waiting.retain(|run| !run.is_closed());
        if *self.preparing.borrow() <= state.waiting.len() {
            return None;
        }
        let (run, next) = oneshot::channel();
        state.waiting.push_back(run);
        Some(next)
    }

    /// Ends the count of a preparation that did not add a sandbox.
    pub fn preparation_ended(&self) {
        self.preparing.send_modify(|preparing| *preparing = preparing.saturating_sub(1));
    }

    /// Steps the target back towards `base` when no run found the pool empty for
    /// `SHRINK_AFTER`; returns the sandboxes over the new target, to be disposed of.
    pub fn shrink_if_idle(&self, now: Instant) -> Vec<T> {
        let mut state = self.state();
        if state.target > self.config.base && now.duration_since(state.last_miss) >= SHRINK_AFTER {
            state.target = (state.target / 2).max(self.config.base);
            state.last_miss = now;
        }
        let keep = state.target;
        if state.ready.len() > keep {
            // The oldest go first: they have waited longest.
            let over = state.ready.len() - keep;
            state.ready.drain(..over).collect()
        } else {
            Vec::new()
        }
    }

    /// Resolves once no preparation is going on.
    pub async fn preparations_done(&self) {
        let _ = self.preparing.subscribe().wait_for(|preparing| *preparing == 0).await;
    }

    /// Every ready sandbox, taken out of the pool (shutdown); runs still waiting for the next
    /// one stop waiting.
    pub fn take_all(&self) -> Vec<T> {
        let mut state = self.state();
        state.waiting.clear();
        state.ready.drain(..).collect()
    }
}

/// How many of the latest runs the pool's mix of interpreters follows.
const RECENT_RUNS: usize = 16;

/// Which interpreter the pool's next sandbox starts ahead: the last run's, if no sandbox ready
/// or being prepared has it (so a switch to the other language is followed at once, as when the
/// last run alone decided), else the one whose share of those sandboxes is furthest below its
/// share of the latest runs (Python before any run). With the last run's alone, runs of both
/// languages one after another each found the other's interpreter started (found by a new-user
/// trial: 111 of 160 mixed runs prestarted).
#[derive(Default)]
pub struct LanguageMix {
    recent: VecDeque<Language>,
    /// Sandboxes being prepared with each language's interpreter, by `index`.
    preparing: [usize; 2],
}

fn index(language: Language) -> usize {
    match language {
        Language::Python => 0,
        Language::Node => 1,
    }
}

impl LanguageMix {
    pub fn note_run(&mut self, language: Language) {
        if self.recent.len() == RECENT_RUNS {
            self.recent.pop_front();
        }
        self.recent.push_back(language);
    }

    /// The language for a pool sandbox about to be prepared, counted as being prepared, given
    /// what the ready ones started ahead.
    pub fn choose(&mut self, ready: &[Option<Language>]) -> Language {
        let mut have = self.preparing;
        for language in ready.iter().flatten() {
            have[index(*language)] += 1;
        }
        let total = have.iter().sum::<usize>() + 1;
        let runs = self.recent.len().max(1);
        let wanted = |language: Language| {
            let share = self.recent.iter().filter(|recent| **recent == language).count();
            // Wanted minus had, in units of 1/runs, exact in integers.
            (share * total) as i64 - (have[index(language)] * runs) as i64
        };
        let chosen = match self.recent.back() {
            None => Language::Python,
            Some(last) if have[index(*last)] == 0 => *last,
            Some(_) if wanted(Language::Python) >= wanted(Language::Node) => Language::Python,
            Some(_) => Language::Node,
        };
        self.preparing[index(chosen)] += 1;
        chosen
    }

    /// Counts a sandbox prepared for a run waiting with `language` as being prepared.
    pub fn preparing(&mut self, language: Language) {
        self.preparing[index(language)] += 1;
    }

    /// Ends the count of a preparation with `language`, made or failed.
    pub fn prepared(&mut self, language: Language) {
        self.preparing[index(language)] = self.preparing[index(language)].saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pools_interpreters_follow_the_latest_runs() {
        let mut mix = LanguageMix::default();
        assert_eq!(mix.choose(&[]), Language::Python, "before any run");
        mix.prepared(Language::Python);
        mix.note_run(Language::Node);
        // One Python ready and one Node run: the next starts Node.
        assert_eq!(mix.choose(&[Some(Language::Python)]), Language::Node);
        // Half and half: preparations at once (counted as preparing) alternate.
        for language in [Language::Python, Language::Node, Language::Python] {
            mix.note_run(language);
        }
        let mut mix = LanguageMix { recent: mix.recent, preparing: [0, 0] };
        let chosen: Vec<Language> = (0..4).map(|_| mix.choose(&[])).collect();
        assert_eq!(chosen.iter().filter(|language| **language == Language::Node).count(), 2, "{chosen:?}");
        // A switch to the other language is followed at once, whatever the latest runs were.
        let mut switched = LanguageMix { recent: mix.recent.clone(), preparing: [0, 0] };
        for _ in 0..RECENT_RUNS {
            switched.note_run(Language::Python);
        }
        switched.note_run(Language::Node);
        assert_eq!(switched.choose(&[Some(Language::Python), Some(Language::Python)]), Language::Node);
        assert_eq!(switched.choose(&[Some(Language::Python)]), Language::Python, "one of each is there now");
        // Only the latest RECENT_RUNS count.
        for _ in 0..RECENT_RUNS {
            mix.note_run(Language::Python);
        }
        let ready = vec![Some(Language::Python); 3];
        assert_eq!(LanguageMix { recent: mix.recent, preparing: [0, 0] }.choose(&ready), Language::Python);
    }

    const MIB: u64 = 1024 * 1024;
    /// More runs going on than any bound of these tests' pools.
    const MANY_RUNS: usize = 1000;

    fn pool(base: usize, memory_bytes: u64) -> WarmPool<u32> {
        WarmPool::new(PoolConfig { base, memory_bytes, max_by_disk: usize::MAX })
    }

    /// Prepares what `plan_refill` asks for, numbering the sandboxes from `next`.
    fn fill(pool: &WarmPool<u32>, next: &mut u32) {
        loop {
            let Refill { start } = pool.plan_refill();
            if start == 0 {
                return;
            }
            for _ in 0..start {
                *next += 1;
                assert_eq!(pool.add(*next, Some(3 * MIB)), None);
            }
        }
    }

    #[test]
    fn off_means_nothing_is_prepared_and_nothing_grows() {
        let pool = pool(0, 64 * MIB);
        assert_eq!(pool.take(MANY_RUNS, |_| false), None);
        assert_eq!(pool.plan_refill().start, 0);
        assert_eq!(pool.target(), 0);
    }

    #[test]
    fn an_idle_pool_fills_to_its_base() {
        let pool = pool(2, 64 * MIB);
        let mut next = 0;
        fill(&pool, &mut next);
        assert_eq!(pool.describe_ready(|sandbox| *sandbox), vec![1, 2]);
    }

    #[test]
    fn refills_run_in_parallel_but_no_more_than_one_per_cpu() {
        let pool = pool(64, 1024 * MIB);
        let started = pool.plan_refill().start;
        assert_eq!(started, pool.parallel.min(64));
        assert_eq!(pool.plan_refill().start, 0, "nothing more starts while all CPUs prepare");
        pool.preparation_ended();
        assert_eq!(pool.plan_refill().start, 1);
    }

    #[test]
    fn each_run_that_finds_it_empty_raises_the_target_up_to_the_memory_bound() {
        let pool = pool(1, 12 * MIB);
        let mut next = 0;
        fill(&pool, &mut next);
        assert!(pool.take(MANY_RUNS, |_| false).is_some());
        assert_eq!(pool.target(), 1, "taking a ready sandbox is no miss");
        for _ in 0..10 {
            assert_eq!(pool.take(MANY_RUNS, |_| false), None);
        }
        // 12 MiB at the measured 3 MiB per sandbox.
        assert_eq!(pool.target(), 4);
        fill(&pool, &mut next);
        assert_eq!(pool.ready(), 4);
    }

    #[test]
    fn the_pool_grows_to_its_base_more_than_the_runs_going_on() {
        let pool = pool(2, 64 * MIB);
        for _ in 0..10 {
            assert_eq!(pool.take(4, |_| false), None);
        }
        assert_eq!(pool.target(), 6, "four runs, and a sandbox being prepared again behind each of two");
        assert_eq!(pool.take(1, |_| false), None);
        assert_eq!(pool.target(), 6, "fewer runs later do not shrink it: only idle time does");
        assert_eq!(pool.take(6, |_| false), None);
        assert_eq!(pool.target(), 7, "one step per miss");
    }

    #[test]
    fn runs_one_after_another_grow_the_pool_by_one() {
        let pool = pool(2, 64 * MIB);
        let mut next = 0;
        fill(&pool, &mut next);
        assert!(pool.take(1, |_| false).is_some() && pool.take(1, |_| false).is_some());
        assert_eq!(pool.target(), 2, "taking ready sandboxes is no miss");
        for _ in 0..3 {
            assert_eq!(pool.take(1, |_| false), None);
        }
        assert_eq!(pool.target(), 3);
    }

    #[test]
    fn growth_leaves_runs_most_of_the_disk_budget() {
        let pool = WarmPool::<u32>::new(PoolConfig { base: 1, memory_bytes: 64 * MIB, max_by_disk: 3 });
        for _ in 0..10 {
            assert_eq!(pool.take(MANY_RUNS, |_| false), None);
        }
        assert_eq!(pool.target(), 3);
    }

    #[test]
    fn the_memory_bound_never_takes_the_pool_below_its_base() {
        let pool = pool(3, MIB);
        assert_eq!(pool.take(MANY_RUNS, |_| false), None);
        assert_eq!(pool.target(), 3);
    }

    #[test]
    fn an_idle_pool_shrinks_back_to_its_base_and_hands_back_the_surplus() {
        let pool = pool(2, 64 * MIB);
        for _ in 0..6 {
            assert_eq!(pool.take(MANY_RUNS, |_| false), None);
        }
        assert_eq!(pool.target(), 8);
        let mut next = 0;
        fill(&pool, &mut next);
        assert_eq!(pool.ready(), 8);
        let now = Instant::now();
        assert!(pool.shrink_if_idle(now).is_empty(), "not idle long enough yet");
        let surplus = pool.shrink_if_idle(now + SHRINK_AFTER);
        assert_eq!((pool.target(), surplus.len()), (4, 4));
        assert_eq!(surplus, [1, 2, 3, 4], "the oldest go first");
        let surplus = pool.shrink_if_idle(now + 2 * SHRINK_AFTER);
        assert_eq!((pool.target(), surplus.len(), pool.ready()), (2, 2, 2));
        assert!(pool.shrink_if_idle(now + 3 * SHRINK_AFTER).is_empty());
    }

    #[test]
    fn a_run_that_found_it_empty_takes_the_next_sandbox_prepared_before_the_pool_does() {
        let pool = pool(1, 64 * MIB);
        assert_eq!(pool.take(1, |_| false), None);
        assert!(pool.wait_for_next().is_none(), "nothing is being prepared yet: nothing to wait for");
        let started = pool.plan_refill().start;
        let mut waiting: Vec<_> = std::iter::from_fn(|| pool.wait_for_next()).take(10).collect();
        assert_eq!(waiting.len(), started, "one preparation serves one waiting run");
        assert_eq!(pool.add(7, None), None);
        assert_eq!(waiting[0].try_recv(), Ok(7), "the oldest waiting run takes it");
        assert_eq!(pool.ready(), 0, "the waiting run took it, not the pool");
        assert_eq!(*pool.preparing.borrow(), started - 1);
    }

    #[test]
    fn a_run_that_stopped_waiting_leaves_the_next_sandbox_to_the_pool() {
        let pool = pool(2, 64 * MIB);
        assert_eq!(pool.plan_refill().start, 2);
        drop(pool.wait_for_next());
        assert_eq!(pool.add(7, None), None);
        assert_eq!(pool.describe_ready(|sandbox| *sandbox), vec![7]);
        // What a run prepared for itself and did not need goes to the pool while it has room.
        assert_eq!(pool.put_back(8), None);
        assert_eq!(pool.put_back(9), Some(9), "the pool is at its target");
        assert_eq!(pool.describe_ready(|sandbox| *sandbox), vec![7, 8], "oldest first");
        assert_eq!(pool.take(1, |sandbox| *sandbox == 7), Some(7), "the newest that fits, first");
        assert_eq!(pool.take(1, |sandbox| *sandbox == 7), Some(8), "else the newest");
    }

    #[test]
    fn a_sandbox_prepared_after_the_pool_shrank_is_handed_back() {
        let pool = pool(1, 64 * MIB);
        let mut next = 0;
        fill(&pool, &mut next);
        assert_eq!(pool.plan_refill().start, 0);
        // A preparation counted before the pool was full ends with no room left.
        pool.preparing.send_modify(|preparing| *preparing += 1);
        assert_eq!(pool.add(99, None), Some(99));
        assert_eq!(*pool.preparing.borrow(), 0);
    }
}
