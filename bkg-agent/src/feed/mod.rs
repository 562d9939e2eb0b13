//! The change feed (`GET /api/v1/changes`, `bkg watch`): inserts and updates of runs, sandboxes
//! and keys, and the other audit events, each at a position a reader resumes after.
//!
//! With a bkg_db the feed is bkg_db's `changes` table (positions global to every agent sharing it,
//! gap-free, committed in order: see sync/migrations/0002_changes.sql and docs/bkg-db.md), read
//! by position under the namespace's role; one LISTEN connection per agent only wakes the
//! readers. Without a bkg_db it is the local outbox, read by seq (store/changes.rs).
//!
//! A reader is pulled by its client: it reads one page when the previous one has been sent, so a
//! slow client holds at most one page in the agent and is paced by its own connection.

mod db;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bkg_schema::changes::{CAUGHT_UP, Change, ChangeKind, ChangeSource, Resume};
use futures_util::Stream;
use tokio::sync::watch;

use crate::store::{OutboxRow, Store, StoreError};

/// Changes read at once: the most a reader holds in memory.
const PAGE: usize = 100;

/// How long a reader waits before it tries bkg_db again after a failure, at most.
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    /// A cursor past the newest change: resuming there would skip what comes up to it.
    #[error("{0}")]
    PastNewest(String),
    /// A kind of change there is not (`kinds=logs`): read, and refused.
    #[error("{0}")]
    UnknownKind(String),
    /// Says `bkg_db` itself.
    #[error(transparent)]
    Db(#[from] crate::sync::SyncError),
    /// Said as the sync says it: the server's message, not tokio-postgres's bare "db error".
    #[error("bkg_db: {}", crate::sync::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a caller asks the feed for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedRequest {
    /// Deliver the changes after this position (0: from the start).
    pub since: u64,
    /// Only this namespace's changes (an admin's filter; other callers see only their own).
    pub namespace: Option<String>,
    /// Only these kinds; empty for all.
    pub kinds: BTreeSet<ChangeKind>,
}

impl FeedRequest {
    /// Reads the request's parts as the API takes them: the `Last-Event-ID` an SSE client sends
    /// when it reconnects, else `since` (an EventSource reconnects to the URL it was given, so
    /// its `?since=` is the old start), and a comma-separated list of kinds.
    pub fn parse(
        since: Option<&str>,
        last_event_id: Option<&str>,
        kinds: Option<&str>,
        namespace: Option<String>,
    ) -> Result<Self, FeedError> {
        // Both are read, so a malformed `?since=` is refused even when the header wins.
        let since = position(since)?;
        let resent = position(last_event_id)?;
        let since = resent.or(since).unwrap_or(0);
        // Exactly the documented form (an empty list is all kinds): the CLI tidies what people
        // type before it asks.
        let kinds = kinds
            .filter(|kinds| !kinds.is_empty())
            .into_iter()
            .flat_map(|kinds| kinds.split(','))
            .map(|kind| {
                ChangeKind::parse(kind).ok_or_else(|| {
                    FeedError::UnknownKind(format!("unknown kind {kind:?}: use runs, sandboxes, keys or audit"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { since, namespace, kinds })
    }
}

/// A cursor as the API takes it: none when absent or empty. Positions are PostgreSQL bigints,
/// so a larger number names no position there can be.
fn position(text: Option<&str>) -> Result<Option<u64>, FeedError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<i64>().ok().and_then(|since| u64::try_from(since).ok()).map(Some).ok_or_else(|| {
            FeedError::BadRequest(format!("the cursor must be a position (a number up to 2^63-1), not {text:?}"))
        }),
    }
}

/// What a stream delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Change(Box<Change>),
    /// The agent ends the stream; the last item.
    Resume(Resume),
}

/// The agent's feed: where it reads from and what wakes its readers.
pub struct Feed {
    store: Store,
    db_url: Option<String>,
    /// Bumped when changes may have arrived: by the outbox (local) or by bkg_db's notifications.
    wake: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
}

impl Feed {
    /// Starts the feed on the current runtime: with `db_url`, a task that LISTENs to bkg_db.
    pub fn start(store: Store, db_url: Option<String>) -> Arc<Self> {
        let stop = watch::Sender::new(false);
        let wake = match &db_url {
            Some(url) => db::listen(url.clone(), stop.subscribe()),
            None => store.outbox_bumps(),
        };
        Arc::new(Self { store, db_url, wake, stop })
    }

    /// Ends every stream (each with a [`Resume`]) and the LISTEN task: the agent is stopping.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn source(&self) -> ChangeSource {
        if self.db_url.is_some() { ChangeSource::BkgDb } else { ChangeSource::Local }
    }

    /// The changes of `namespace` (all of them for `None`: an admin's), from `since` on, live
    /// until the client leaves or the agent stops, or with `follow` false only until the reader
    /// has caught up or bkg_db fails (said as an error, never waited out). Who may read which
    /// namespace is decided by the caller (service/access.rs).
    ///
    /// A `since` past the newest change is refused: the changes up to it would be skipped
    /// when they came (a cursor of another feed, or of a state directory since reset). The
    /// newest of `namespace`'s changes for a reader confined to one namespace, whose positions
    /// never go past it: against every namespace's, probing `since` would count the others'
    /// changes. A reader who sees every namespace (`sees_every_namespace`, an admin) is held to
    /// the newest of all, even when it asks for one namespace: its cursors come from the whole
    /// feed (found by a new-user trial: an admin's position was refused for one namespace's
    /// feed), and the refusal may name that position.
    pub async fn subscribe(
        &self,
        namespace: Option<String>,
        since: u64,
        kinds: BTreeSet<ChangeKind>,
        follow: bool,
        sees_every_namespace: bool,
    ) -> Result<impl Stream<Item = FeedItem> + Send + 'static, FeedError> {
        let mut source = match &self.db_url {
            Some(url) => Source::Db(db::Reader::new(url.clone(), namespace.clone())),
            None => Source::Local(self.store.clone()),
        };
        if since > 0 {
            let newest = match (&mut source, sees_every_namespace) {
                (Source::Local(store), true) => store.outbox_newest(None).await?,
                (Source::Local(store), false) => store.outbox_newest(namespace.clone()).await?,
                (Source::Db(reader), true) => reader.newest_of_all().await?,
                (Source::Db(reader), false) => reader.newest().await?,
            };
            if since > newest {
                let shown = if sees_every_namespace { format!(" ({newest})") } else { String::new() };
                return Err(FeedError::PastNewest(format!(
                    "since {since} is past this feed's newest change{shown}: resuming there would skip the \
                     changes up to it; give a position this feed sent, or 0 for all"
                )));
            }
        }
        let mut reader = Reader {
            source,
            after: since,
            namespace,
            kinds,
            follow,
            page: VecDeque::new(),
            wake: self.wake.clone(),
            stop: self.stop.subscribe(),
            stopping: false,
            finished: false,
        };
        // A reader that will not wait (`bkg watch --no-follow`) is answered with bkg_db's failure
        // at once, as an error of the request, rather than a stream that waits for bkg_db.
        if !follow {
            reader.read().await?;
        }
        Ok(futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        }))
    }
}

enum Source {
    Local(Store),
    Db(db::Reader),
}

struct Reader {
    source: Source,
    /// The position of the last change read (delivered or filtered out).
    after: u64,
    namespace: Option<String>,
    kinds: BTreeSet<ChangeKind>,
    /// Whether to wait for new changes once caught up, or to end there.
    follow: bool,
    page: VecDeque<Change>,
    wake: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    stopping: bool,
    finished: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<FeedItem> {
        let mut retry = Duration::from_millis(250);
        loop {
            if let Some(change) = self.page.pop_front() {
                return Some(FeedItem::Change(Box::new(change)));
            }
            if self.finished {
                return None;
            }
            if self.stopping || *self.stop.borrow() {
                self.finished = true;
                return Some(FeedItem::Resume(Resume {
                    resume_from: self.after,
                    reason: "the agent is stopping".into(),
                }));
            }
            // Marked seen before reading: a wake-up during the read is not lost.
            self.wake.borrow_and_update();
            let pause = match self.read().await {
                Ok(true) => {
                    retry = Duration::from_millis(250);
                    continue;
                }
                Ok(false) if !self.follow => {
                    self.finished = true;
                    return Some(FeedItem::Resume(Resume { resume_from: self.after, reason: CAUGHT_UP.into() }));
                }
                Ok(false) => None,
                Err(error) if !self.follow => {
                    self.finished = true;
                    return Some(FeedItem::Resume(Resume {
                        resume_from: self.after,
                        reason: format!("the feed could not be read: {error}"),
                    }));
                }
                Err(error) => {
                    tracing::warn!(%error, after = self.after, "the change feed could not read; trying again");
                    let pause = crate::sync::jitter(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                    Some(pause)
                }
            };
            // A sender gone (the feed, its LISTEN task) means the agent is stopping.
            let stopping = async {
                match pause {
                    None => tokio::select! {
                        changed = self.wake.changed() => changed.is_err(),
                        changed = self.stop.changed() => changed.is_err() || *self.stop.borrow(),
                    },
                    Some(pause) => tokio::select! {
                        changed = self.stop.changed() => changed.is_err() || *self.stop.borrow(),
                        () = tokio::time::sleep(pause) => false,
                    },
                }
            };
            self.stopping = stopping.await;
        }
    }

    /// Reads the next page into `page`; whether anything was read (delivered or not).
    async fn read(&mut self) -> Result<bool, FeedError> {
        let (last, changes) = match &mut self.source {
            Source::Local(store) => {
                let rows = store.outbox_after(self.after, self.namespace.clone(), PAGE).await?;
                let last = rows.last().map(|row| row.seq);
                let changes = rows
                    .into_iter()
                    .filter(|row| self.kinds.is_empty() || self.kinds.contains(&row.kind()))
                    .map(local_change)
                    .collect();
                (last, changes)
            }
            Source::Db(reader) => {
                let changes = reader.read(self.after, &self.kinds, PAGE).await?;
                (changes.back().map(|change| change.position), changes)
            }
        };
        let Some(last) = last else { return Ok(false) };
        self.after = last;
        self.page = changes;
        Ok(true)
    }
}

fn local_change(row: OutboxRow) -> Change {
    let kind = row.kind();
    let record: serde_json::Value = serde_json::from_str(&row.line).unwrap_or(serde_json::Value::Null);
    Change {
        position: row.seq,
        source: ChangeSource::Local,
        kind,
        // Read from the record parsed above, not from the line a second time.
        object_id: <bkg_schema::audit::SignedRecord as serde::Deserialize>::deserialize(&record)
            .ok()
            .and_then(|line| line.subject()),
        action: row.action,
        namespace: row.namespace,
        agent_id: row.agent_id,
        seq: row.seq,
        ts_ms: row.ts_ms,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_with_clear_errors() -> Result<(), FeedError> {
        let request = FeedRequest::parse(None, Some("42"), Some("runs,keys"), None)?;
        assert_eq!(request.since, 42);
        assert_eq!(request.kinds, BTreeSet::from([ChangeKind::Runs, ChangeKind::Keys]));
        assert_eq!(FeedRequest::parse(Some("7"), Some("42"), None, None)?.since, 42, "a reconnect's header wins");
        assert_eq!(FeedRequest::parse(Some("7"), None, None, None)?.since, 7);
        assert!(matches!(FeedRequest::parse(Some("x"), None, None, None), Err(FeedError::BadRequest(_))));
        assert_eq!(FeedRequest::parse(Some("9223372036854775807"), None, None, None)?.since, i64::MAX as u64);
        assert!(
            matches!(
                FeedRequest::parse(Some(""), Some("9223372036854775808"), None, None),
                Err(FeedError::BadRequest(_))
            ),
            "an empty ?since= leaves the header to be read"
        );
        assert!(
            matches!(
                FeedRequest::parse(Some("0"), Some("9223372036854775808"), None, None),
                Err(FeedError::BadRequest(_))
            ),
            "a malformed header is refused whatever ?since= says"
        );
        for beyond in ["9223372036854775808", "-1"] {
            assert!(
                matches!(FeedRequest::parse(None, Some(beyond), None, None), Err(FeedError::BadRequest(_))),
                "{beyond}"
            );
        }
        assert!(matches!(FeedRequest::parse(None, None, Some("runs,logs"), None), Err(FeedError::UnknownKind(_))));
        for untidy in [" runs", "runs,", "runs,,keys"] {
            assert!(
                matches!(FeedRequest::parse(None, None, Some(untidy), None), Err(FeedError::UnknownKind(_))),
                "{untidy}"
            );
        }
        assert!(FeedRequest::parse(None, None, Some(""), None)?.kinds.is_empty(), "empty: every kind");
        Ok(())
    }
}
