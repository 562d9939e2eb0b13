//! A sandbox's terminal page: an interactive shell in the sandbox over a WebSocket, the same
//! operation and protocol as `bkg shell` (service/terminals.rs, server/terminal.rs), drawn by the
//! page's script as text in a `pre`.
//!
//! A WebSocket is not held to the same-origin policy and its handshake is a GET, which the CSRF
//! check of `mod.rs` lets by. So the socket checks for itself that the page that opened it is the
//! agent's own: the handshake's `Origin` must be the agent's (the `Host` it was asked as), and
//! the first message must carry the session's CSRF token, which a page of another site cannot
//! read. Only then is the shell started, as the session's principal.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::terminal::PageTerminalOpen;
use bkg_schema::{ApiError, ErrorCode};
use maud::html;

use super::view::{csrf_field, error_page, millis, page};
use super::{Viewer, ops, refusal, session};
use crate::server::AppState;

pub async fn terminal(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let info = match ops::get_sandbox(&state, &viewer.principal, &id).await {
        Ok(info) => info,
        Err(failure) => return refusal(Some(&viewer), failure),
    };
    let body = html! {
        p { a href={ "/ui/sandboxes/" (info.id) } { "Back to sandbox " (info.name) } }
        p.muted {
            "A shell in the sandbox on a plain terminal: text, colours and line editing; full-screen \
             programs (editors, top) do not work here. It holds the sandbox while it runs and ends \
             after the sandbox's timeout (" (millis(info.limits.timeout_ms)) ")."
        }
        section.card {
            p #term-status role="status" { "Connecting…" }
            pre #term-screen.terminal role="log" aria-label="Terminal" tabindex="0"
                data-socket={ "/ui/sandboxes/" (info.id) "/terminal/socket" }
                data-killed=(crate::ui::view::killed_words_json()) {}
            form #term-form {
                (csrf_field(&viewer))
                label for="term-input" { "Input" }
                div.term-line {
                    input #term-input autocomplete="off" autocapitalize="off" spellcheck="false"
                        aria-describedby="term-help";
                    button type="submit" { "Send" }
                }
                small #term-help.muted { "Enter sends the line; Ctrl+C and Ctrl+D in the line send themselves." }
                div.actions {
                    button #term-ctrl-c.small type="button" { "Ctrl-C" }
                    button #term-ctrl-d.small type="button" { "Ctrl-D" }
                    button #term-reconnect.small type="button" hidden { "Reconnect" }
                }
            }
        }
    };
    page(Some(&viewer), &format!("Terminal of {}", info.name), body).into_response()
}

/// Whether the handshake comes from a page of the agent's own origin: `Origin` names the host
/// and port the request was sent to. Browsers always send `Origin` on a WebSocket handshake,
/// so one without it is refused too.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// The terminal's WebSocket. A refusal before the upgrade is a plain status: 403 for another
/// origin, 404 for a sandbox the caller may not see (as `bkg shell` gets), a redirect to the
/// login page without a session.
pub async fn socket(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return error_page(Some(&viewer), StatusCode::FORBIDDEN, "This terminal was not opened by this site's page.");
    }
    if let Err(failure) = ops::get_sandbox(&state, &viewer.principal, &id).await {
        return refusal(Some(&viewer), failure);
    }
    let Viewer { principal, csrf, .. } = viewer;
    let served = state.clone();
    ops::serve_terminal(&state, upgrade, move |open: PageTerminalOpen| async move {
        if !session::same_secret(&csrf, &open.csrf) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the terminal's first message lacks this session's CSRF token: reload the page",
            ));
        }
        ops::accept_shell(&served, &principal, &id, open.size).await
    })
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn only_the_agents_own_origin_may_open_a_terminal() {
        assert!(super::same_origin(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")));
        assert!(super::same_origin(&headers(Some("https://agent.example:443"), "agent.example:443")));
        assert!(!super::same_origin(&headers(Some("http://evil.example"), "127.0.0.1:8080")));
        assert!(!super::same_origin(&headers(Some("http://127.0.0.1:8081"), "127.0.0.1:8080")));
        assert!(!super::same_origin(&headers(Some("null"), "127.0.0.1:8080")));
        assert!(!super::same_origin(&headers(None, "127.0.0.1:8080")));
    }
}
