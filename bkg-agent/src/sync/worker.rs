//! The sync worker: a tokio task that ships the outbox to bkg_db batch after batch, and backs off
//! while bkg_db cannot be reached.

use bkg_schema::sync::SyncStatus;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{Outbox, SyncError, connect, migrate, ship};
use crate::ids::now_ms;

/// Where and how to sync. Build it with [`SyncConfig::new`] and adjust the fields.
#[derive(Clone)]
pub struct SyncConfig {
    /// `postgres://user:password@host:port/dbname?sslmode=…` (see [`connect`]).
    pub db_url: String,
    /// Events per PostgreSQL transaction.
    pub batch: usize,
    /// How long an empty outbox waits before it is asked again, unless [`SyncHandle::wake`] comes
    /// first.
    pub idle_poll: Duration,
    /// The first pause after a failure; each further failure doubles it, up to `backoff_max`.
    /// Each pause is drawn between half and all of that, so agents that lost the same server do
    /// not come back in step.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A connection (with its migrations) or a batch that takes longer is abandoned, its
    /// connection dropped, and retried: a server that stopped answering must not stall the sync.
    pub timeout: Duration,
    /// Attempts bkg_db may refuse one event (`SyncError::Event`) before it is parked.
    pub max_attempts: u32,
    /// How often, while there is nothing to ship, bkg_db is asked whether it still holds the
    /// newest event shipped: one restored from an older backup (or rows deleted) would otherwise
    /// be noticed only at the agent's next event, and an idle agent would say it is in sync
    /// (found by a new-user trial).
    pub head_check: Duration,
}

impl SyncConfig {
    pub fn new(db_url: impl Into<String>) -> Self {
        Self {
            db_url: db_url.into(),
            batch: 500,
            idle_poll: Duration::from_secs(1),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_attempts: 5,
            head_check: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
struct Progress {
    last_success_ms: Option<u64>,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
    failures: u32,
}

struct Shared {
    progress: Mutex<Progress>,
    wake: Notify,
    /// Whether this worker has brought bkg_db's schema up to date (retention.rs waits for it).
    migrated: watch::Sender<bool>,
    /// Whether the sync is failing now (its last attempt failed): true at an outage's start,
    /// false once an attempt succeeds again.
    failing: watch::Sender<bool>,
}

impl Shared {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why the worker waits: nothing to ship (new events end it), or a failure's backoff (they
/// do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Idle,
    Backoff,
}

pub struct SyncWorker<O> {
    outbox: Arc<O>,
    config: SyncConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    client: Option<Client>,
    migrated: bool,
    /// When bkg_db's head was last checked against the newest event shipped.
    head_checked: Option<tokio::time::Instant>,
}

impl<O: Outbox> SyncWorker<O> {
    /// Starts the worker on the current tokio runtime. It connects, applies the migrations, then
    /// ships the outbox until [`SyncHandle::stop`] (or until the handle is dropped).
    pub fn spawn(outbox: O, mut config: SyncConfig) -> SyncHandle<O> {
        config.batch = config.batch.max(1);
        config.max_attempts = config.max_attempts.max(1);
        config.backoff_max = config.backoff_max.max(config.backoff_min);
        let outbox = Arc::new(outbox);
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            wake: Notify::new(),
            migrated: watch::Sender::new(false),
            failing: watch::Sender::new(false),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = SyncWorker {
            outbox: Arc::clone(&outbox),
            config,
            shared: Arc::clone(&shared),
            stop: stop_rx,
            client: None,
            migrated: false,
            head_checked: None,
        };
        let task = tokio::spawn(worker.run());
        SyncHandle { outbox, shared, stop: stop_tx, task }
    }

    async fn run(mut self) {
        // What an earlier agent shipped counts (found by a new-user trial: "last success: never"
        // right after a restart).
        if let Ok(last) = self.outbox.last_synced_ms().await {
            self.shared.progress().last_success_ms = last;
        }
        let mut delay = self.config.backoff_min;
        loop {
            let pause = match self.step().await {
                Ok(shipped) => {
                    delay = self.config.backoff_min;
                    let mut progress = self.shared.progress();
                    if progress.failures > 0 {
                        tracing::info!(failures = progress.failures, "bkg_db sync recovered");
                    }
                    progress.failures = 0;
                    self.shared.failing.send_if_modified(|failing| std::mem::replace(failing, false));
                    // A full batch means more is probably waiting: go on at once. An idle
                    // wait ends early when new events come.
                    if shipped == self.config.batch { None } else { Some((self.config.idle_poll, Wait::Idle)) }
                }
                // bkg_db lacks this agent's earlier events (a new or restored database): they
                // are sent again at once. Not a failure, which `bkg sync status` would show as
                // its last error long after (found by a new-user trial).
                // A hole in the outbox itself (nothing to send again) is a failure, below.
                Err(SyncError::Gap { agent_id, after, found })
                    if self.outbox.requeue_after(after).await.is_ok_and(|requeued| requeued > 0) =>
                {
                    tracing::info!(
                        %agent_id,
                        after,
                        found,
                        "bkg_db lacks this agent's events after {after}: sending them again"
                    );
                    None
                }
                Err(error) => {
                    let parked = match &error {
                        SyncError::Event { seq, reason } => {
                            match self.outbox.attempt_failed(*seq, reason, self.config.max_attempts).await {
                                Ok(parked) => parked,
                                Err(count) => {
                                    tracing::warn!(error = %count, seq, "could not count a failed attempt");
                                    false
                                }
                            }
                        }
                        _ => false,
                    };
                    if self.client.as_ref().is_some_and(Client::is_closed) {
                        self.client = None;
                    }
                    let pause = jitter(delay);
                    delay = (delay * 2).min(self.config.backoff_max);
                    let message = error.to_string();
                    let mut progress = self.shared.progress();
                    progress.failures = progress.failures.saturating_add(1);
                    tracing::warn!(error = %message, failures = progress.failures, retry_in = ?pause, "bkg_db sync failed");
                    progress.last_error = Some(message);
                    progress.last_error_ms = Some(now_ms());
                    drop(progress);
                    self.shared.failing.send_if_modified(|failing| !std::mem::replace(failing, true));
                    // Set aside, the event no longer holds the others back: go on at once.
                    if parked {
                        tracing::warn!(error = %error, "parked an outbox event bkg_db keeps refusing");
                        None
                    } else {
                        Some((pause, Wait::Backoff))
                    }
                }
            };
            if *self.stop.borrow() {
                break;
            }
            let Some((pause, wait)) = pause else { continue };
            tokio::select! {
                // A dropped handle stops the worker too.
                _ = self.stop.changed() => break,
                // New events do not cut a backoff short: a busy agent would try a bkg_db that
                // is down, or refuses it, once per event instead of ever more rarely.
                _ = self.shared.wake.notified(), if wait == Wait::Idle => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One attempt: make sure of a connection, then ship one batch. Returns how many events it
    /// shipped.
    async fn step(&mut self) -> Result<usize, SyncError> {
        let limit = self.config.timeout;
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client = tokio::time::timeout(limit, connect(&self.config.db_url))
                .await
                .map_err(|_| SyncError::Timeout(limit))??;
            self.client = Some(client);
        }
        let Some(client) = self.client.as_mut() else { return Ok(0) };
        if !self.migrated {
            let migrated = tokio::time::timeout(limit, migrate(client)).await;
            match migrated {
                Ok(result) => result?,
                Err(_) => {
                    self.client = None;
                    return Err(SyncError::Timeout(limit));
                }
            };
            self.migrated = true;
            self.shared.migrated.send_replace(true);
        }

        let events = self.outbox.pending(self.config.batch).await?;
        if events.is_empty() {
            let due = self.head_checked.is_none_or(|at| at.elapsed() >= self.config.head_check);
            if due && let Some((agent_id, newest)) = self.outbox.newest_synced().await? {
                let held = match tokio::time::timeout(limit, ship::held_up_to(client, &agent_id)).await {
                    Ok(held) => held?,
                    Err(_) => {
                        self.client = None;
                        return Err(SyncError::Timeout(limit));
                    }
                };
                self.head_checked = Some(tokio::time::Instant::now());
                if held < newest {
                    return Err(SyncError::Gap { agent_id, after: held, found: newest });
                }
            }
            return Ok(0);
        }
        let parked = self.outbox.parked().await?.into_iter().map(|event| event.seq).collect();
        match tokio::time::timeout(limit, ship::ship(client, &events, &parked)).await {
            Ok(result) => result?,
            Err(_) => {
                // The transaction may still be open on the server: only a new connection is sure
                // to start clean.
                self.client = None;
                return Err(SyncError::Timeout(limit));
            }
        }
        let at = now_ms();
        self.outbox.mark_synced(events.iter().map(|event| event.seq).collect(), at).await?;
        self.shared.progress().last_success_ms = Some(at);
        Ok(events.len())
    }
}

/// Between half and all of `delay`: so that the agents (and the change feeds) that lost bkg_db
/// together do not all come back at once.
pub fn jitter(delay: Duration) -> Duration {
    let random = RandomState::new().hash_one(now_ms());
    let half = delay / 2;
    half + half.mul_f64((random % 1024) as f64 / 1024.0)
}

/// The running worker, for status and shutdown.
pub struct SyncHandle<O> {
    outbox: Arc<O>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl<O: Outbox> SyncHandle<O> {
    /// Turns true once bkg_db's schema is up to date (the worker migrates it first thing).
    pub fn migrated(&self) -> watch::Receiver<bool> {
        self.shared.migrated.subscribe()
    }

    /// True while the sync fails: it turns true as an outage begins, false once bkg_db takes
    /// events again.
    pub fn failing(&self) -> watch::Receiver<bool> {
        self.shared.failing.subscribe()
    }

    pub async fn status(&self) -> Result<SyncStatus, SyncError> {
        let backlog = self.outbox.backlog().await?;
        let progress = self.shared.progress();
        Ok(SyncStatus {
            backlog: backlog.events,
            parked: backlog.parked,
            lag_ms: backlog.oldest_ts_ms.map(|oldest| now_ms().saturating_sub(oldest)),
            last_success_ms: progress.last_success_ms,
            last_error: progress.last_error.clone(),
            last_error_ms: progress.last_error_ms,
            failures: progress.failures,
        })
    }

    /// Tells an idle worker that the outbox has news, so it ships now rather than at its next
    /// poll. Call it after committing events; it never blocks.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Stops the worker: a batch in flight is finished (within `timeout`), a pause cut short.
    /// What is not shipped stays in the outbox for the next start.
    pub async fn stop(self) {
        // An error means the worker is gone already.
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "bkg_db sync worker ended abnormally");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let pause = jitter(Duration::from_millis(800));
            assert!(pause >= Duration::from_millis(400) && pause <= Duration::from_millis(800), "{pause:?}");
        }
    }
}
