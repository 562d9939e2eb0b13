//! `GET /api/v1/changes`: the change feed as server-sent events (the logic is in feed/).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bkg_schema::ServerSentEvent;
use bkg_schema::changes::{CHANGE_EVENT, RESUME_EVENT};
use futures_util::StreamExt;
use serde::Deserialize;

use super::AppState;
use super::failure::ApiResult;
use super::input::QueryParams;
use crate::auth::Principal;
use crate::service::FeedItem;

/// A comment line now and then keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Deliver the changes after this position (default 0, from the start); the
    /// `Last-Event-ID` header an SSE client sends when it reconnects wins over it.
    #[param(maximum = 9223372036854775807_u64)]
    since: Option<u64>,
    /// Only these kinds, comma-separated: runs, sandboxes, keys, audit (default all).
    #[param(pattern = "^((runs|sandboxes|keys|audit)(,(runs|sandboxes|keys|audit))*)?$")]
    kinds: Option<String>,
    /// Only this namespace (an admin's filter; other keys see only their own).
    namespace: Option<String>,
    /// Whether to keep the stream open for new changes (default true); with false it ends with a
    /// `resume` event once every change so far has been sent.
    follow: Option<bool>,
}

/// Inserts and updates of runs, sandboxes and keys, and the other audit events, as they happen:
/// `event: change` (`id:` its position, `data:` a Change), and `event: resume` (a Resume) when
/// the agent ends the stream (it is stopping, or `follow=false` has caught up). Each caller sees what RLS shows its namespace; an admin sees all.
#[utoipa::path(
    get,
    path = "/api/v1/changes",
    tag = "changes",
    // The `Last-Event-ID` header an SSE client resends is said in `since`'s description, not
    // listed as a parameter: OpenAPI 3.1 would make it nullable, and `null` is no position.
    params(ChangesQuery),
    responses((
        status = 200,
        description = "Server-sent events: `change` (a Change) and a last `resume` (a Resume)",
        content((ServerSentEvent = "text/event-stream")),
    )),
)]
pub async fn changes(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    QueryParams(query): QueryParams<ChangesQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let last_event_id = headers.get("last-event-id").and_then(|value| value.to_str().ok());
    let stream = state
        .service
        .changes(
            &principal,
            query.since.map(|since| since.to_string()).as_deref(),
            last_event_id,
            query.kinds.as_deref(),
            query.namespace,
            query.follow.unwrap_or(true),
        )
        .await?;
    let events = stream.map(|item| {
        let event = match item {
            FeedItem::Change(change) => {
                Event::default().event(CHANGE_EVENT).id(change.position.to_string()).json_data(&*change)
            }
            FeedItem::Resume(resume) => Event::default().event(RESUME_EVENT).json_data(&resume),
        };
        // Serializing plain data cannot fail; an event that did is left out rather than torn.
        Ok::<_, Infallible>(event.unwrap_or_else(|_| Event::default().comment("unserializable change")))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}
