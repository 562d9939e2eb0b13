//! The change feed: inserts and updates of runs, sandboxes, keys and audit events, as far as the
//! caller may see them (the feed itself is in feed/).

use std::pin::Pin;

use futures_util::Stream;

use super::access::{listing_namespace, require_change_reader};
use super::{FeedItem, OpResult, Service};
use crate::auth::Principal;
use crate::feed::FeedRequest;

/// The changes of one subscription, live until the client leaves or the agent stops.
pub type ChangeStream = Pin<Box<dyn Stream<Item = FeedItem> + Send>>;

impl Service {
    /// The changes after `since` (else the `Last-Event-ID` an SSE client resends), of the
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
        let stream = self.feed.subscribe(namespace, request.since, request.kinds, follow, principal.is_admin()).await?;
        Ok(Box::pin(stream))
    }
}
