//! The sandbox engine. Preparing a sandbox (disk image, cgroup, namespaces, root filesystem) and
//! running code in a prepared sandbox are separate steps, so a warm pool can prepare ahead.

pub mod capacity;
pub mod cgroup;
pub mod control;
pub mod denials;
pub mod disk;
pub mod egress;
pub mod files;
pub mod handle;
pub mod host_check;
pub mod init;
pub mod install;
pub mod landlock;
pub mod lock;
pub mod loopdev;
pub mod netns;
pub mod plan;
pub mod pool;
pub mod prestart;
pub mod relay;
pub mod request;
pub mod run;
pub mod sandbox;
pub mod seccomp;
pub mod seccomp_dispatch;
pub mod seccomp_notify;
pub mod terminal;
#[cfg(test)]
mod test_support;
pub mod workspace;
pub mod zygote;

/// A pidfd of process `pid` (in the caller's pid namespace).
pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open(2) takes a pid and flags by value and touches none of our memory.
    let result = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::c_long::from(pid), 0 as libc::c_long) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = std::os::fd::RawFd::try_from(result).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, watch};

use bkg_schema::Limits;

use self::cgroup::CgroupDriver;
use self::plan::HostLayout;
use self::sandbox::{Preparation, PreparedSandbox};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub state_dir: PathBuf,
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub python: PathBuf,
    pub node: PathBuf,
    /// npm's command line script, run by `node` in an install sandbox (`install.rs`).
    pub npm: PathBuf,
    /// How many default-sized sandboxes to keep prepared when idle (see `pool.rs`).
    pub warm_pool: usize,
    /// Memory the prepared sandboxes together may take when the pool grows with demand.
    pub warm_pool_memory: u64,
    /// `--zygote`: warm sandboxes' Python interpreters are forks of the zygote (`zygote.rs`).
    pub zygote: bool,
    /// `--zygote-memory`: the memory limit of each zygote generation's cgroup.
    pub zygote_memory: u64,
    /// First host uid handed to sandboxes; each live sandbox takes `IDS_PER_SANDBOX`.
    pub uid_base: u32,
    /// Name of this agent's directory beneath its own cgroup.
    pub cgroup_dir: String,
    /// Queue and disk bounds (see `capacity.rs`).
    pub capacity: capacity::CapacityConfig,
    /// What the host gives, as checked at start (see `host_check.rs`).
    pub security_level: bkg_schema::host::SecurityLevel,
    pub runtimes: Vec<bkg_schema::host::Runtime>,
    /// `--egress-allow`: what runs may ask to reach, at most (docs/security.md, "Egress").
    pub egress_policy: Arc<Vec<bkg_schema::egress::NetRule>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cgroups: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error("all {0} sandbox user ids are in use")]
    NoFreeIds(u32),
    #[error("preparing the sandbox failed at `{stage}`: {message}")]
    Prepare { stage: String, message: String },
    #[error("sandbox control channel: {0}")]
    Control(#[from] control::ControlError),
    #[error("making the disk image failed: {0}")]
    Disk(#[from] disk::DiskError),
    #[error(transparent)]
    Capacity(#[from] capacity::CapacityError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl EngineError {
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let action = action.into();
        move |source| EngineError::Io { action, source }
    }
}

/// Host uid slots: each live sandbox gets its own ids, released when it is cleaned up.
pub struct IdSlots {
    base: u32,
    in_use: Mutex<BTreeSet<u32>>,
    next: AtomicUsize,
}

/// Host ids of one sandbox: the code's, its pid 1's, its nobody's and its root's (see
/// `plan::HostIds`).
pub const IDS_PER_SANDBOX: u32 = 4;

/// How many sandboxes can be alive at once: the agent's ids stay within its locked uid range.
const ID_SLOTS: u32 = lock::UID_RANGE / IDS_PER_SANDBOX;

impl IdSlots {
    fn new(base: u32) -> Self {
        Self { base, in_use: Mutex::new(BTreeSet::new()), next: AtomicUsize::new(0) }
    }

    fn allocate(self: &Arc<Self>) -> Result<IdSlot, EngineError> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for _ in 0..ID_SLOTS {
            let slot = (self.next.fetch_add(1, Ordering::Relaxed) % ID_SLOTS as usize) as u32;
            if in_use.insert(slot) {
                return Ok(IdSlot { slots: Arc::clone(self), slot });
            }
        }
        Err(EngineError::NoFreeIds(ID_SLOTS))
    }
}

/// The host ids owned by one sandbox until dropped.
pub struct IdSlot {
    slots: Arc<IdSlots>,
    slot: u32,
}

impl IdSlot {
    pub fn ids(&self) -> plan::HostIds {
        let sandbox = self.slots.base + IDS_PER_SANDBOX * self.slot;
        plan::HostIds { sandbox, init: sandbox + 1, nobody: sandbox + 2, root: sandbox + 3 }
    }
}

impl Drop for IdSlot {
    fn drop(&mut self) {
        let mut in_use = self.slots.in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        in_use.remove(&self.slot);
    }
}

pub struct Engine {
    pub config: EngineConfig,
    /// `bkg-sandbox-init` (bkg-agent/src/bin), the sandbox init alone: a binary of about 1 MB
    /// whose start costs a sandbox less than the agent's own 25 MB (docs/testing.md). Without
    /// it each init is the agent's binary again.
    sandbox_init: Option<std::path::PathBuf>,
    init_spawner: sandbox::InitSpawner,
    host: HostLayout,
    cgroups: Box<dyn CgroupDriver>,
    disks: Arc<disk::DiskTemplates>,
    /// Persistent disk images in use (`disk::DiskHold`).
    disk_locks: disk::DiskLocks,
    ids: Arc<IdSlots>,
    pool: pool::WarmPool<PreparedSandbox>,
    /// Whether the task that shrinks an idle pool has been started.
    pool_keeper: AtomicBool,
    /// Whether the zygote's keeper was started (`start_zygote_keeper`).
    zygote_kept: AtomicBool,
    /// Set when the agent begins to stop: new runs are refused, and the code of each run going
    /// on is sent SIGTERM (engine/run.rs), to end within the grace.
    closing: watch::Sender<bool>,
    active_runs: AtomicUsize,
    /// Runs whose code was started by a prestarted interpreter (engine/prestart.rs).
    prestarted_runs: AtomicU64,
    /// Of those, the ones whose interpreter the zygote forked (engine/zygote.rs).
    zygote_runs: AtomicU64,
    /// The zygote generation serving now, or why none does.
    zygote: watch::Sender<zygote::ZygoteStatus>,
    /// Tells the zygote's keeper to replace the generation serving now (it did not answer).
    zygote_replace: Arc<tokio::sync::Notify>,
    /// The zygote's keeper (`zygote::keep`), awaited at shutdown: it removes the last
    /// generation's cgroup before the agent's own cgroup directories go.
    zygote_keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The interpreters the pool's sandboxes start ahead, following the latest runs'
    /// (`prestart_language`).
    language_mix: Mutex<pool::LanguageMix>,
    /// Sandboxes being disposed of; shutdown waits for 0 before removing the cgroup directories.
    cleanups: watch::Sender<usize>,
    /// Runs from acceptance until their result was handed to the caller; shutdown waits for 0.
    in_flight: watch::Sender<usize>,
    /// Set when the shutdown grace is over: every run still going is killed (`killed_by: shutdown`).
    kill_runs: watch::Sender<bool>,
    /// Warm sandboxes found broken when claimed, disposed of instead of handed to a run.
    pub warm_replaced: Counter,
    /// Persistent sandboxes with a run going on, each with its run's handle.
    registry: handle::Registry,
    /// Told when a run's sandbox has been cleaned up.
    cleanup_listener: OnceLock<mpsc::UnboundedSender<CleanedUp>>,
    agent_pid: u32,
    pub capacity: Arc<capacity::Capacity>,
    /// Held until the cgroup directories are removed at shutdown: they are ours alone (see
    /// `lock`). Released there, not when the engine is dropped: tasks may hold it until exit.
    cgroup_locks: Mutex<Vec<lock::DirLock>>,
    /// Held for the agent's life: no other agent's sandboxes get these host ids (see `lock`).
    _uid_lock: lock::UidRangeLock,
    /// The netns worker of each run with a network or ports, by run id, for health probes.
    networks: Mutex<std::collections::HashMap<String, Arc<netns::NetnsWorker>>>,
}

/// A run's sandbox is disposed of: `confirmed` when nothing of it is left. The cleanup counts as
/// pending (shutdown waits for it) until the listener drops this, having recorded it.
pub struct CleanedUp {
    pub run_id: String,
    pub confirmed: bool,
    pub pending: Busy,
}

/// Counts one unit of work in a `watch` counter until dropped.
pub struct Busy(watch::Sender<usize>);

impl Busy {
    fn new(counter: &watch::Sender<usize>) -> Self {
        counter.send_modify(|count| *count += 1);
        Self(counter.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// How long a pool sandbox that starts Python waits for a zygote generation being started.
const ZYGOTE_START_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The sandbox init's own binary (bkg-agent/src/bin/bkg-sandbox-init.rs).
const SANDBOX_INIT: &str = "bkg-sandbox-init";

/// A file installed with the agent: beside its binary (as in target/), or in `../lib/bkg` from
/// it (a package's `/usr/lib/bkg`): the zygote's library, the sandbox init.
pub fn installed_beside_agent(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let installed = dir.parent().map(|prefix| prefix.join("lib/bkg").join(name));
    std::iter::once(dir.join(name)).chain(installed).find(|path| path.is_file())
}

/// The host's share an agent makes its own before anything of it is written (its state
/// directory's files, cgroup directories): its uid range and cgroup directories, locked. A
/// refused agent has then left nothing behind.
pub struct HostClaim {
    cgroups: Box<dyn cgroup::CgroupDriver>,
    cgroup_locks: Vec<lock::DirLock>,
    uid_lock: lock::UidRangeLock,
}

impl Engine {
    /// Locks the uid range and cgroup directories `config` names for this agent, recording
    /// `owner` (`paths::lock_holder_record`) in them.
    pub fn claim_host(config: &EngineConfig, owner: &str) -> Result<HostClaim, EngineError> {
        let uid_lock = lock::lock_uid_range(std::path::Path::new(lock::LOCK_DIR), config.uid_base, owner)?;
        let cgroups = cgroup::detect(&config.cgroup_dir)?;
        let cgroup_locks = cgroups
            .agent_dirs()
            .iter()
            .map(|dir| lock::lock_cgroup_dir(std::path::Path::new(lock::LOCK_DIR), dir, owner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostClaim { cgroups, cgroup_locks, uid_lock })
    }

    /// Sets the engine up on what `claim_host` locked and removes whatever a previous holder of it
    /// (with the same state directory) left behind. Returns whether all of it is gone.
    pub fn new(config: EngineConfig, claim: HostClaim) -> Result<(Arc<Self>, bool), EngineError> {
        let HostClaim { cgroups, cgroup_locks, uid_lock } = claim;
        let disks = Arc::new(disk::DiskTemplates::new(config.state_dir.join("disk-templates"))?);
        let capacity = Arc::new(capacity::Capacity::new(config.capacity.clone()));
        // Read once: the pool's bound by disk need not follow the free space as grants do.
        let disk_budget = capacity.disk_budget()?;
        let sandbox_init = installed_beside_agent(SANDBOX_INIT);
        if sandbox_init.is_none() {
            tracing::warn!(
                "no {SANDBOX_INIT} beside the agent or in ../lib/bkg from it: each sandbox's init starts the \
                 agent's own binary again, which costs every sandbox more"
            );
        }
        let init_spawner = sandbox::InitSpawner::start()?;
        let engine = Arc::new(Self {
            sandbox_init,
            init_spawner,
            host: HostLayout::discover(),
            cgroups,
            disks,
            disk_locks: disk::DiskLocks::default(),
            ids: Arc::new(IdSlots::new(config.uid_base)),
            pool: pool::WarmPool::new(pool::PoolConfig {
                base: config.warm_pool,
                memory_bytes: config.warm_pool_memory,
                // A quarter of the budget at most: the rest stays for runs of any disk size.
                max_by_disk: usize::try_from(disk_budget / 4 / config.default_limits.disk_bytes.max(1))
                    .unwrap_or(usize::MAX),
            }),
            pool_keeper: AtomicBool::new(false),
            zygote_kept: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            active_runs: AtomicUsize::new(0),
            prestarted_runs: AtomicU64::new(0),
            zygote_runs: AtomicU64::new(0),
            zygote: watch::Sender::new(match (config.zygote, config.warm_pool) {
                (false, _) => zygote::ZygoteStatus::Off("--zygote false".into()),
                (true, 0) => zygote::ZygoteStatus::Starting("at the first Python run (no warm pool)".into()),
                (true, _) => zygote::ZygoteStatus::Starting("its first generation".into()),
            }),
            zygote_replace: Arc::new(tokio::sync::Notify::new()),
            zygote_keeper: Mutex::new(None),
            language_mix: Mutex::new(pool::LanguageMix::default()),
            cleanups: watch::Sender::new(0),
            in_flight: watch::Sender::new(0),
            kill_runs: watch::Sender::new(false),
            warm_replaced: Counter::default(),
            registry: handle::Registry::default(),
            cleanup_listener: OnceLock::new(),
            agent_pid: std::process::id(),
            capacity,
            config,
            cgroup_locks: Mutex::new(cgroup_locks),
            _uid_lock: uid_lock,
            networks: Mutex::new(std::collections::HashMap::new()),
        });
        let clean = engine.remove_leftovers()?;
        Ok((engine, clean))
    }

    /// Whether run `run_id`'s sandbox accepts connections on `port` now; `None` when the run
    /// has no network session (it ended, or has no ports).
    pub async fn sandbox_accepts(&self, run_id: &str, port: u16) -> Option<bool> {
        let worker = self.networks.lock().ok()?.get(run_id).cloned()?;
        Some(egress::accepts(&worker, port).await)
    }

    fn track_network(&self, run_id: &str, worker: Option<Arc<netns::NetnsWorker>>) {
        if let Ok(mut networks) = self.networks.lock() {
            match worker {
                Some(worker) => networks.insert(run_id.to_owned(), worker),
                None => networks.remove(run_id),
            };
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.config.state_dir.join("sandboxes")
    }

    pub fn cgroup_version(&self) -> String {
        format!("{:?}", self.cgroups.version())
    }

    pub fn warm_count(&self) -> usize {
        self.pool.ready()
    }

    /// How many prepared sandboxes the pool aims to hold now (it grows with demand).
    pub fn warm_target(&self) -> usize {
        self.pool.target()
    }

    /// The prepared sandboxes waiting in the pool, oldest first, with the memory each holds now.
    /// The warm sandboxes that can take a run: one broken from outside is replaced when a run
    /// claims it, and is not listed meanwhile (found by a new-user trial).
    pub fn warm_pool(&self) -> Vec<bkg_schema::WarmSandbox> {
        let described = self.pool.describe_ready(|sandbox| {
            sandbox.broken().is_none().then(|| bkg_schema::WarmSandbox {
                id: sandbox.id.clone(),
                memory_bytes: sandbox.cgroup.memory_now().unwrap_or(0),
                started_ahead: sandbox.started_ahead,
            })
        });
        described.into_iter().flatten().collect()
    }

    pub fn prestarted_runs(&self) -> u64 {
        self.prestarted_runs.load(Ordering::Relaxed)
    }

    /// The interpreter a sandbox prepared as `preparation` starts ahead (`Preparation::Plain`:
    /// none), counted as being prepared until `prepared` is told.
    pub(crate) fn prestart_language(&self, preparation: Preparation) -> Option<bkg_schema::Language> {
        let ready = match preparation {
            Preparation::Ahead => self.pool.describe_ready(|sandbox| sandbox.started_ahead),
            _ => Vec::new(),
        };
        let mut mix = self.language_mix.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match preparation {
            Preparation::Ahead => Some(mix.choose(&ready)),
            Preparation::ForWaitingRun(language) => {
                mix.preparing(language);
                Some(language)
            }
            Preparation::Plain => None,
        }
    }

    /// Ends the count `prestart_language` began.
    pub(crate) fn prepared(&self, language: bkg_schema::Language) {
        self.language_mix.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).prepared(language);
    }

    pub(crate) fn note_prestarted_run(&self, from_zygote: bool) {
        self.prestarted_runs.fetch_add(1, Ordering::Relaxed);
        if from_zygote {
            self.zygote_runs.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn zygote_runs(&self) -> u64 {
        self.zygote_runs.load(Ordering::Relaxed)
    }

    /// The zygote: the generation serving now with its memory, or why none does.
    pub fn zygote(&self) -> Option<bkg_schema::ZygoteInfo> {
        let status = self.zygote.borrow().clone();
        Some(status.describe(self.config.zygote_memory))
    }

    /// The socket of the zygote serving now, for a pool sandbox that starts Python ahead.
    fn zygote_socket(&self) -> Option<PathBuf> {
        match &*self.zygote.borrow() {
            zygote::ZygoteStatus::Serving(generation) => Some(generation.socket.clone()),
            _ => None,
        }
    }

    /// Waits, `ZYGOTE_START_PATIENCE` at most, while a zygote generation is being started: a
    /// pool sandbox prepared meanwhile would start a Python of its own (found flaky in the
    /// tests: one fresh agent in eight prepared its first warm sandbox before its zygote served).
    pub(crate) async fn zygote_settled(&self) {
        let mut status = self.zygote.subscribe();
        let settled = status.wait_for(|status| !matches!(status, zygote::ZygoteStatus::Starting(_)));
        let _ = tokio::time::timeout(ZYGOTE_START_PATIENCE, settled).await;
    }

    /// A pool sandbox's pid 1 had no answer from the zygote at `socket`: if that generation
    /// still serves, it is taken out of service at once and replaced.
    fn zygote_did_not_answer(&self, socket: &std::path::Path) {
        self.zygote.send_if_modified(|current| {
            let zygote::ZygoteStatus::Serving(generation) = &*current else { return false };
            if generation.socket != socket {
                return false;
            }
            tracing::warn!(generation = generation.number, "the zygote did not answer a sandbox; replacing it");
            *current = zygote::ZygoteStatus::Starting(format!(
                "generation {} did not answer a sandbox; the next one",
                generation.number
            ));
            self.zygote_replace.notify_one();
            true
        });
    }

    pub(crate) fn zygote_replacements(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.zygote_replace)
    }

    pub(crate) fn set_zygote(&self, status: zygote::ZygoteStatus) {
        self.zygote.send_replace(status);
    }

    pub fn active_runs(&self) -> usize {
        self.active_runs.load(Ordering::Relaxed)
    }

    /// Sandboxes whose cleanup is still under way.
    pub fn cleanups_pending(&self) -> usize {
        *self.cleanups.borrow()
    }

    /// Counts a sandbox's disposal until the guard is dropped.
    pub fn cleanup_started(&self) -> Busy {
        Busy::new(&self.cleanups)
    }

    /// Counts a run until the guard is dropped: hold it until the caller has the result.
    pub fn run_in_flight(&self) -> Busy {
        Busy::new(&self.in_flight)
    }

    /// Whether new runs are refused (the agent is stopping).
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Turns true when the agent begins to stop (see `close`).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Resolves once the shutdown grace is over and runs must end (see `kill_runs`).
    pub fn runs_must_end(&self) -> watch::Receiver<bool> {
        self.kill_runs.subscribe()
    }

    /// Refuses new runs, stops refilling the warm pool and asks the runs going on to end (their
    /// code gets SIGTERM): the first step of a shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Ends every run still going, each with `killed_by: shutdown` (the grace is over).
    pub fn kill_runs(&self) {
        self.kill_runs.send_replace(true);
    }

    /// Resolves when no run is in flight and no sandbox is being disposed of.
    pub async fn idle(&self) {
        let mut in_flight = self.in_flight.subscribe();
        let mut cleanups = self.cleanups.subscribe();
        loop {
            let _ = in_flight.wait_for(|count| *count == 0).await;
            let _ = cleanups.wait_for(|count| *count == 0).await;
            if *self.in_flight.borrow() == 0 {
                return;
            }
        }
    }

    pub fn on_cleanup(&self, listener: mpsc::UnboundedSender<CleanedUp>) {
        let _ = self.cleanup_listener.set(listener);
    }

    /// Cleans what a killed agent left: processes and cgroups under our cgroup directory, loop
    /// devices backed by our images, and sandbox directories. The cgroup directory is locked, so
    /// whatever is in it was an earlier holder's. Returns whether every loop device went too.
    fn remove_leftovers(&self) -> Result<bool, EngineError> {
        let removed = self.cgroups.remove_stale()?;
        let runs_dir = self.runs_dir();
        let mut devices = loopdev::devices_backed_under(&runs_dir);
        // Auto-clear releases a device once its namespace is gone; give the kernel a moment.
        for _ in 0..50 {
            if devices.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            devices = loopdev::devices_backed_under(&runs_dir);
        }
        for device in &devices {
            if let Err(error) = loopdev::detach(device) {
                tracing::warn!(%error, "could not detach a leftover loop device");
            }
        }
        let mut dirs = 0;
        if runs_dir.exists() {
            for entry in std::fs::read_dir(&runs_dir).map_err(EngineError::io("read sandboxes directory"))?.flatten() {
                // A file too (a health check's probe, which a crash can leave): found by a
                // new-user trial, where one kept every later agent from starting.
                let removed = match entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    true => std::fs::remove_dir_all(entry.path()),
                    false => std::fs::remove_file(entry.path()),
                };
                removed.map_err(EngineError::io(format!("remove {}", entry.path().display())))?;
                dirs += 1;
            }
        }
        std::fs::create_dir_all(&runs_dir).map_err(EngineError::io("create sandboxes directory"))?;
        if removed + dirs + devices.len() > 0 {
            tracing::info!(
                cgroups = removed,
                directories = dirs,
                loop_devices = devices.len(),
                "removed what a previous agent left behind"
            );
        }
        Ok(loopdev::devices_backed_under(&runs_dir).is_empty())
    }

    /// A prepared sandbox with room for `disk_bytes`: from the warm pool when it fits and the run
    /// adds nothing to the common root, else new. `order` is the run's, which a sandbox prepared
    /// for it starts an interpreter ahead for only if it can take it (`PrestartPlan::fits`).
    pub async fn claim(
        self: &Arc<Self>,
        language: bkg_schema::Language,
        disk_bytes: u64,
        persistent: Option<&sandbox::PersistentDisk>,
        additions: &plan::Additions,
        order: &control::GoOrder,
    ) -> Result<PreparedSandbox, EngineError> {
        if persistent.is_some() || !additions.is_empty() {
            return PreparedSandbox::prepare(self, disk_bytes, persistent, additions).await;
        }
        if disk_bytes == self.config.default_limits.disk_bytes {
            // The pool's next sandboxes start the interpreters of the latest runs ahead.
            self.language_mix.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).note_run(language);
            loop {
                let warm = self.pool.take(self.active_runs(), |sandbox| sandbox.started_ahead == Some(language));
                self.refill();
                let Some(sandbox) = warm else { break };
                // A broken one is replaced and the next one (or a new one) is tried.
                if let Some(sandbox) = self.unbroken(sandbox) {
                    return Ok(sandbox);
                }
            }
            if !self.pool.is_off() {
                return self.first_prepared(self.pool.wait_for_next(), language, disk_bytes).await;
            }
            // No pool: the run's sandbox is prepared now, and a Python run's interpreter is a
            // fork of the zygote once one serves (the first runs start their own meanwhile),
            // unless the run could not take it (a terminal's, say), which would only throw the
            // fork away and start its code as pid 3 (found by a new-user trial).
            if language == bkg_schema::Language::Python {
                self.start_zygote_keeper();
                let takes_it = self.prestart_plan(language).is_ok_and(|prestart| prestart.fits(order));
                if takes_it && self.zygote_socket().is_some() {
                    return self.prepare_for_waiting_run(disk_bytes, language).await;
                }
            }
        }
        PreparedSandbox::prepare(self, disk_bytes, None, &plan::Additions::default()).await
    }

    /// A sandbox for a run that waits for it, its interpreter started ahead; prepared once more if
    /// the zygote did not answer it (`zygote_did_not_answer` has begun its replacement, so the
    /// second takes the next generation or starts an interpreter of its own). Given up whole, the
    /// first would have failed the run (found by a new-user trial of `--warm-pool 0`, with the
    /// zygote stopped).
    async fn prepare_for_waiting_run(
        self: &Arc<Self>,
        disk_bytes: u64,
        language: bkg_schema::Language,
    ) -> Result<PreparedSandbox, EngineError> {
        let waiting = Preparation::ForWaitingRun(language);
        match PreparedSandbox::prepare_default(self, disk_bytes, waiting).await {
            Err(EngineError::Prepare { stage, .. }) if stage == init::ZYGOTE_SILENT => {
                PreparedSandbox::prepare_default(self, disk_bytes, waiting).await
            }
            prepared => prepared,
        }
    }

    /// For a run that found the pool empty: a sandbox of its own, prepared now at normal
    /// priority with its interpreter started ahead as the pool's are (so the run still takes a
    /// fork of the zygote, not a cold start), or the pool's `next` one (if one is being
    /// prepared that no other waiting run will take first), whichever is ready first. The
    /// pool's was begun earlier, so runs one after another wait for it rather than for a whole
    /// preparation; the one not taken goes to the pool.
    async fn first_prepared(
        self: &Arc<Self>,
        next: Option<tokio::sync::oneshot::Receiver<PreparedSandbox>>,
        language: bkg_schema::Language,
        disk_bytes: u64,
    ) -> Result<PreparedSandbox, EngineError> {
        let (own_sender, own) = tokio::sync::oneshot::channel();
        let engine = Arc::clone(self);
        // It may outlive the run that asked for it: a stopping agent waits for it as for a run,
        // or it would leave its half-made sandbox behind.
        let in_flight = self.run_in_flight();
        tokio::spawn(async move {
            let prepared = engine.prepare_for_waiting_run(disk_bytes, language).await;
            if let Err(Ok(unwanted)) = own_sender.send(prepared) {
                engine.return_to_pool(unwanted);
            }
            drop(in_flight);
        });
        let mut own = OnItsWay { receiver: own, engine: Arc::clone(self) };
        if let Some(next) = next {
            let mut next = OnItsWay { receiver: next, engine: Arc::clone(self) };
            tokio::select! {
                prepared = &mut own.receiver => return prepared.unwrap_or(Err(EngineError::ShuttingDown)),
                Ok(sandbox) = &mut next.receiver => if let Some(sandbox) = self.unbroken(sandbox) {
                    // The other language's interpreter would be thrown away: the run's own,
                    // with its own, is waited for instead.
                    match sandbox.started_ahead == Some(language) {
                        true => return Ok(sandbox),
                        false => self.return_to_pool(sandbox),
                    }
                },
            }
        }
        (&mut own.receiver).await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    /// A warm sandbox, unless something outside killed it or removed its cgroup: a run given it
    /// would fail, so it is disposed of (and counted) instead.
    fn unbroken(self: &Arc<Self>, sandbox: PreparedSandbox) -> Option<PreparedSandbox> {
        let Some(reason) = sandbox.broken() else { return Some(sandbox) };
        tracing::warn!(sandbox = %sandbox.id, reason, "replacing a broken warm sandbox");
        self.warm_replaced.inc();
        self.dispose_in_background(sandbox, None);
        None
    }

    /// A prepared sandbox no run took goes to the warm pool, or is disposed of when the pool
    /// has no room for it or the agent is stopping.
    fn return_to_pool(self: &Arc<Self>, sandbox: PreparedSandbox) {
        let surplus = match self.is_closing() {
            true => Some(sandbox),
            false => self.pool.put_back(sandbox),
        };
        if let Some(surplus) = surplus {
            self.dispose_in_background(surplus, None);
        }
    }

    /// Disposes of a sandbox in the background; for a run's sandbox, tells its handle and the
    /// cleanup listener.
    pub fn dispose_in_background(self: &Arc<Self>, sandbox: PreparedSandbox, run: Option<Arc<handle::RunTracker>>) {
        let engine = Arc::clone(self);
        let busy = self.cleanup_started();
        tokio::spawn(async move {
            let id = sandbox.id.clone();
            let clean = sandbox.dispose().await;
            let run_id = run.as_ref().map(|run| run.run_id.clone());
            if clean {
                tracing::debug!(sandbox = %id, run = ?run_id, "cleanup confirmed");
            } else {
                tracing::error!(sandbox = %id, run = ?run_id, "cleanup incomplete");
            }
            if let Some(run) = run {
                run.set_holds_sandbox(false);
            }
            if let (Some(run_id), Some(listener)) = (run_id, engine.cleanup_listener.get()) {
                let _ = listener.send(CleanedUp { run_id, confirmed: clean, pending: busy });
            }
        });
    }

    /// Tops the warm pool up in the background, preparing sandboxes in parallel.
    pub fn refill(self: &Arc<Self>) {
        if self.pool.is_off() || self.is_closing() {
            return;
        }
        self.start_pool_keeper();
        for _ in 0..self.pool.plan_refill().start {
            let engine = Arc::clone(self);
            tokio::spawn(async move {
                let disk_bytes = engine.config.default_limits.disk_bytes;
                match PreparedSandbox::prepare_default(&engine, disk_bytes, Preparation::Ahead).await {
                    Ok(sandbox) => {
                        let bytes = sandbox.cgroup.usage().ok().map(|usage| usage.peak_memory_bytes);
                        if engine.is_closing() {
                            sandbox.dispose().await;
                            engine.pool.preparation_ended();
                            return;
                        }
                        if let Some(surplus) = engine.pool.add(sandbox, bytes) {
                            engine.dispose_in_background(surplus, None);
                        }
                        // The next one, if the pool is still short (runs took some meanwhile).
                        engine.refill();
                    }
                    Err(error) => {
                        // Not retried at once: the next run's claim tries again.
                        tracing::error!(%error, "could not prepare a warm sandbox");
                        engine.pool.preparation_ended();
                    }
                }
            });
        }
    }

    /// Starts (once) the task that steps an idle pool back to its base size, and the zygote's
    /// keeper.
    fn start_pool_keeper(self: &Arc<Self>) {
        if self.pool_keeper.swap(true, Ordering::AcqRel) {
            return;
        }
        self.start_zygote_keeper();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(pool::SHRINK_AFTER / 2);
            loop {
                ticks.tick().await;
                let Some(engine) = engine.upgrade() else { return };
                if engine.is_closing() {
                    return;
                }
                for surplus in engine.pool.shrink_if_idle(std::time::Instant::now()) {
                    engine.dispose_in_background(surplus, None);
                }
            }
        });
    }

    /// Starts (once, with `--zygote`) the task that keeps a zygote serving the Python sandboxes
    /// (`zygote::keep`): at the pool's first refill, or at the first Python run without a pool.
    fn start_zygote_keeper(self: &Arc<Self>) {
        if !self.config.zygote || self.zygote_kept.swap(true, Ordering::AcqRel) || self.is_closing() {
            return;
        }
        match zygote::library() {
            Some(library) => {
                let keeper = tokio::spawn(zygote::keep(Arc::downgrade(self), library));
                if let Ok(mut held) = self.zygote_keeper.lock() {
                    *held = Some(keeper);
                }
            }
            None => {
                let reason = "no libbkg_zygote.so beside the agent or in ../lib/bkg from it";
                tracing::warn!("{reason}: each sandbox starts its own interpreter");
                self.set_zygote(zygote::ZygoteStatus::Unavailable(reason.into()));
            }
        }
    }

    /// Removes the agent's own cgroup directories, their locks and the disk templates; the last
    /// step of a clean shutdown.
    pub fn remove_own_dirs(&self) {
        if let Err(error) = self.cgroups.remove_agent_dirs() {
            tracing::warn!(%error, "could not remove the agent's cgroup directories");
        }
        // Each lock file goes with its lock: nothing of this agent stays in the lock directory.
        self.cgroup_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        if let Err(error) = self.disks.remove() {
            tracing::warn!(%error, "could not remove the disk templates");
        }
    }

    /// Stops refilling and disposes of every warm sandbox (agent shutdown).
    pub async fn drain(&self) {
        self.close();
        self.pool.preparations_done().await;
        for sandbox in self.pool.take_all() {
            sandbox.dispose().await;
        }
        let keeper = self.zygote_keeper.lock().ok().and_then(|mut held| held.take());
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
    }
}

/// A prepared sandbox on its way to a run that may stop waiting for it (it took another, or its
/// caller went away): one that arrives after that goes back to the pool, for a prepared sandbox
/// dropped would leave its processes, cgroup and disk behind.
struct OnItsWay<T: Arrival> {
    receiver: tokio::sync::oneshot::Receiver<T>,
    engine: Arc<Engine>,
}

impl<T: Arrival> Drop for OnItsWay<T> {
    fn drop(&mut self) {
        self.receiver.close();
        if let Some(sandbox) = self.receiver.try_recv().ok().and_then(Arrival::sandbox) {
            self.engine.return_to_pool(sandbox);
        }
    }
}

/// What comes down an `OnItsWay`: a sandbox, or the outcome of preparing one.
trait Arrival {
    fn sandbox(self) -> Option<PreparedSandbox>;
}

impl Arrival for PreparedSandbox {
    fn sandbox(self) -> Option<PreparedSandbox> {
        Some(self)
    }
}

impl Arrival for Result<PreparedSandbox, EngineError> {
    fn sandbox(self) -> Option<PreparedSandbox> {
        self.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sandbox_has_host_ids_of_its_own_within_the_agents_range() {
        let slots = Arc::new(IdSlots::new(100_000));
        let first = slots.allocate().map(|slot| slot.ids());
        let second = slots.allocate().map(|slot| slot.ids());
        let (Ok(first), Ok(second)) = (first, second) else { panic!("two slots must be free") };
        let mut all = Vec::new();
        for ids in [first, second] {
            all.extend([ids.sandbox, ids.init, ids.nobody, ids.root]);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 8, "{first:?} {second:?}");
        let last = IdSlot { slots: Arc::clone(&slots), slot: ID_SLOTS - 1 }.ids();
        assert!(last.root < 100_000 + 65_536, "{last:?}");
    }
}
