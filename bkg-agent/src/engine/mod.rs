//! The sandbox engine. Preparing a sandbox (disk image, cgroup, namespaces, root filesystem) and
//! running code in a prepared sandbox are separate steps, so a warm pool can prepare ahead.

pub mod capacity;
pub mod cgroup;
pub mod control;
pub mod init;
pub mod landlock;
pub mod loopdev;
pub mod plan;
pub mod request;
pub mod run;
pub mod sandbox;
pub mod seccomp;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use bkg_schema::Limits;

use self::cgroup::CgroupDriver;
use self::plan::HostLayout;
use self::sandbox::PreparedSandbox;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub state_dir: PathBuf,
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub python: PathBuf,
    pub node: PathBuf,
    /// How many default-sized sandboxes to keep prepared.
    pub warm_pool: usize,
    /// First host uid handed to sandboxes; each live sandbox takes two.
    pub uid_base: u32,
    /// Name of this agent's directory beneath its own cgroup.
    pub cgroup_dir: String,
    /// Queue and disk bounds (see `capacity.rs`).
    pub capacity: capacity::CapacityConfig,
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
    DiskImage(String),
    #[error(transparent)]
    Capacity(#[from] capacity::CapacityError),
}

impl EngineError {
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let action = action.into();
        move |source| EngineError::Io { action, source }
    }
}

/// Host uid slots: each live sandbox gets its own pair, released when it is cleaned up.
pub struct IdSlots {
    base: u32,
    in_use: Mutex<BTreeSet<u32>>,
    next: AtomicUsize,
}

/// How many sandboxes can be alive at once.
const ID_SLOTS: u32 = 32_768;

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

/// A pair of host ids owned by one sandbox until dropped.
pub struct IdSlot {
    slots: Arc<IdSlots>,
    slot: u32,
}

impl IdSlot {
    pub fn ids(&self) -> plan::HostIds {
        let sandbox = self.slots.base + 2 * self.slot;
        plan::HostIds { sandbox, init: sandbox + 1 }
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
    host: HostLayout,
    cgroups: Box<dyn CgroupDriver>,
    ids: Arc<IdSlots>,
    warm: Mutex<Vec<PreparedSandbox>>,
    refilling: AtomicBool,
    closing: AtomicBool,
    active_runs: AtomicUsize,
    cleanups_pending: AtomicUsize,
    /// Persistent sandboxes with a run going on: sandbox id → (run id, stop signal).
    persistent_runs: Mutex<HashMap<String, (String, Arc<tokio::sync::Notify>)>>,
    /// Told `(run id, confirmed)` when a run's sandbox has been cleaned up.
    cleanup_listener: OnceLock<mpsc::UnboundedSender<(String, bool)>>,
    agent_pid: u32,
    pub capacity: Arc<capacity::Capacity>,
}

impl Engine {
    /// Sets the engine up and removes whatever a previous agent with the same state directory
    /// and cgroup directory left behind.
    pub fn new(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let cgroups = cgroup::detect(&config.cgroup_dir)?;
        let engine = Arc::new(Self {
            host: HostLayout::discover(),
            cgroups,
            ids: Arc::new(IdSlots::new(config.uid_base)),
            warm: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            active_runs: AtomicUsize::new(0),
            cleanups_pending: AtomicUsize::new(0),
            persistent_runs: Mutex::new(HashMap::new()),
            cleanup_listener: OnceLock::new(),
            agent_pid: std::process::id(),
            capacity: Arc::new(capacity::Capacity::new(config.capacity)),
            config,
        });
        engine.remove_leftovers()?;
        Ok(engine)
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.config.state_dir.join("sandboxes")
    }

    pub fn cgroup_version(&self) -> String {
        format!("{:?}", self.cgroups.version())
    }

    pub fn warm_count(&self) -> usize {
        self.warm.lock().map(|warm| warm.len()).unwrap_or(0)
    }

    pub fn active_runs(&self) -> usize {
        self.active_runs.load(Ordering::Relaxed)
    }

    /// Sandboxes whose cleanup is still under way.
    pub fn cleanups_pending(&self) -> usize {
        self.cleanups_pending.load(Ordering::Acquire)
    }

    pub fn on_cleanup(&self, listener: mpsc::UnboundedSender<(String, bool)>) {
        let _ = self.cleanup_listener.set(listener);
    }

    /// Cleans what a killed agent left: processes and cgroups under our cgroup directory, loop
    /// devices backed by our images, and sandbox directories.
    fn remove_leftovers(&self) -> Result<(), EngineError> {
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
                std::fs::remove_dir_all(entry.path())
                    .map_err(EngineError::io(format!("remove {}", entry.path().display())))?;
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
        Ok(())
    }

    /// A prepared sandbox with room for `disk_bytes`: from the warm pool when it fits, else new.
    pub async fn claim(
        self: &Arc<Self>,
        disk_bytes: u64,
        persistent: Option<&sandbox::PersistentDisk>,
    ) -> Result<PreparedSandbox, EngineError> {
        if persistent.is_some() {
            return PreparedSandbox::prepare(self, disk_bytes, persistent).await;
        }
        if disk_bytes == self.config.default_limits.disk_bytes {
            let warm = self.warm.lock().ok().and_then(|mut warm| warm.pop());
            self.refill();
            if let Some(sandbox) = warm {
                return Ok(sandbox);
            }
        }
        PreparedSandbox::prepare(self, disk_bytes, None).await
    }

    /// Tops the warm pool up in the background.
    pub fn refill(self: &Arc<Self>) {
        if self.config.warm_pool == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            while engine.warm_count() < engine.config.warm_pool && !engine.closing.load(Ordering::Acquire) {
                match PreparedSandbox::prepare(&engine, engine.config.default_limits.disk_bytes, None).await {
                    Ok(sandbox) => match engine.warm.lock() {
                        Ok(mut warm) => warm.push(sandbox),
                        Err(_) => break,
                    },
                    Err(error) => {
                        tracing::error!(%error, "could not prepare a warm sandbox");
                        break;
                    }
                }
            }
            engine.refilling.store(false, Ordering::Release);
        });
    }

    /// Removes the agent's own cgroup directories; the last step of a clean shutdown.
    pub fn remove_cgroup_dirs(&self) {
        if let Err(error) = self.cgroups.remove_agent_dirs() {
            tracing::warn!(%error, "could not remove the agent's cgroup directories");
        }
    }

    /// Stops refilling and disposes of every warm sandbox (agent shutdown).
    pub async fn drain(&self) {
        self.closing.store(true, Ordering::Release);
        while self.refilling.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let warm: Vec<_> = self.warm.lock().map(|mut warm| warm.drain(..).collect()).unwrap_or_default();
        for sandbox in warm {
            sandbox.dispose().await;
        }
    }
}
