//! The change feed: inserts and updates of runs, sandboxes, keys and audit events, as far as the
//! caller may see them (the feed itself is in feed/).

use std::pin::Pin;
use std::time::Duration;

use bkg_schema::auth::Role;
use bkg_schema::changes::{ChangeKind, Resume};
use futures_util::{Stream, StreamExt};

use super::access::{listing_namespace, require_change_reader};
use super::keys::KeyHold;
use super::{FeedItem, OpResult, Service};
use crate::auth::Principal;
use crate::feed::FeedRequest;
use crate::ids::now_ms;

/// The changes of one subscription, live until the client leaves or the agent stops.
pub type ChangeStream = Pin<Box<dyn Stream<Item = FeedItem> + Send>>;

impl Service {
    /// The changes after the `Last-Event-ID` an SSE client resends (else `since`), of the
    /// comma-separated `kinds` (all when absent), in the caller's namespace or, for an admin,
    /// the one asked for; with `follow` false the stream ends once it has caught up.
    pub async fn changes(
        &self,
        principal: &Principal,
        since: Option<&str>,
        last_event_id: Option<&str>,
        kinds: Option<&str>,
        namespace: Option<String>,
        follow: bool,
    ) -> OpResult<ChangeStream> {
        require_change_reader(principal)?;
        let request = FeedRequest::parse(since, last_event_id, kinds, namespace)?;
        let namespace = listing_namespace(principal, request.namespace)?;
        let since = request.since;
        let stream = self.feed.subscribe(namespace, since, request.kinds, follow, principal.is_admin()).await?;
        Ok(match KeyHold::of(&self.store, principal) {
            Some(hold) => KeyGate::hold(Box::pin(stream), hold, since),
            None => Box::pin(stream),
        })
    }
}

/// What a stream opened with a key is held to while it stays open: the key must still speak for
/// it (not revoked, rotated, deleted or expired since), checked before each change goes out and
/// at its expiry, so that no change reaches a key the API already answers 401; and a session
/// key sees no other key's events, as it may see no other key (docs/governance.md).
struct KeyGate {
    changes: ChangeStream,
    hold: KeyHold,
    /// The position of the last change sent or left out: where the client resumes.
    after: u64,
    ended: bool,
}

impl KeyGate {
    fn hold(changes: ChangeStream, hold: KeyHold, since: u64) -> ChangeStream {
        let gate = KeyGate { changes, hold, after: since, ended: false };
        Box::pin(futures_util::stream::unfold(gate, |mut gate| async move {
            let item = gate.next().await?;
            Some((item, gate))
        }))
    }

    async fn next(&mut self) -> Option<FeedItem> {
        if self.ended {
            return None;
        }
        loop {
            let left = Duration::from_millis(self.hold.key().expires_at_ms.saturating_sub(now_ms()));
            let item = tokio::select! {
                item = self.changes.next() => item?,
                () = tokio::time::sleep(left) => return Some(self.end("the key has expired")),
            };
            let FeedItem::Change(change) = &item else {
                self.ended = true;
                return Some(item);
            };
            if let Some(reason) = self.hold.check().await {
                return Some(self.end(reason));
            }
            let position = change.position;
            let others_key =
                change.kind == ChangeKind::Keys && change.object_id.as_deref() != Some(self.hold.key().id.as_str());
            self.after = position;
            if self.hold.key().role == Role::Session && others_key {
                continue;
            }
            return Some(item);
        }
    }

    fn end(&mut self, reason: &str) -> FeedItem {
        self.ended = true;
        FeedItem::Resume(Resume { resume_from: self.after, reason: reason.to_owned() })
    }
}
