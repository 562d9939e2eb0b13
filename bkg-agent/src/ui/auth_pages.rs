//! Logging in (a user's password, an API key, or the one-time token of `bkg ui`) and out.

use std::net::SocketAddr;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::UiForm;
use super::session::{self, Identity, LOGIN_COOKIE, SESSION_COOKIE};
use super::{Viewer, ops, view};
use crate::auth::keys;
use crate::server::AppState;

/// A cookie for `/ui`: never readable by scripts, never sent by another site, over TLS only
/// when the agent serves TLS.
pub(super) fn cookie_header(state: &AppState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = state.ui.listening.get().and_then(|listening| listening.tcp).is_some_and(|(_, tls)| tls);
    let mut cookie = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub async fn login_page(State(state): State<AppState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    // Sent here by `Viewer` when the key behind the session stopped speaking for it, or when
    // the agent does not know the session at all.
    let ended = match uri.query() {
        Some(super::KEY_ENDED_QUERY) => Some(
            "Your session ended: the key it was signed in with was revoked, rotated or has expired. Sign in again.",
        ),
        Some(super::UNKNOWN_SESSION_QUERY) => Some(
            "Your session is not known to this agent: it was restarted (sessions end with it), or the session was \
             signed out. Sign in again.",
        ),
        _ => None,
    };
    login_form(&state, &headers, StatusCode::OK, ended)
}

/// The login page, with a login cookie (its CSRF token) made now unless the browser has one.
fn login_form(state: &AppState, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let (token, fresh) = match super::cookie(headers, LOGIN_COOKIE) {
        Some(token) if token.len() == 64 => (token, false),
        _ => match session::random_token() {
            Ok(token) => (token, true),
            Err(error) => return view::error_page(None, StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        },
    };
    let mut response = (status, view::login(&token, error)).into_response();
    if fresh {
        response.headers_mut().append(header::SET_COOKIE, cookie_header(state, LOGIN_COOKIE, &token, Some(3600)));
    }
    response
}

/// Starts a session for `identity` and sends the browser on.
fn signed_in(state: &AppState, identity: Identity) -> Response {
    let (id, _) = match state.ui.open(identity) {
        Ok(opened) => opened,
        Err(error) => return view::error_page(None, StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    };
    let mut response = Redirect::to("/ui/sandboxes").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie_header(state, SESSION_COOKIE, &id, None));
    response.headers_mut().append(header::SET_COOKIE, cookie_header(state, LOGIN_COOKIE, "", Some(0)));
    response
}

/// Takes one attempt from the client's login allowance; over it, the answer is the login page
/// saying so.
fn over_allowance(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<&Extension<ConnectInfo<SocketAddr>>>,
) -> Option<Response> {
    let address =
        peer.map(|Extension(ConnectInfo(address))| address.ip().to_string()).unwrap_or_else(|| "unix".to_owned());
    state.ui.charge_login(&address).err().map(|wait| {
        let message =
            format!("Too many login attempts. Try again in {} s.", crate::auth::rate::retry_after_seconds(wait));
        login_form(state, headers, StatusCode::TOO_MANY_REQUESTS, Some(&message))
    })
}

#[derive(Deserialize)]
pub struct PasswordLogin {
    username: String,
    password: String,
}

pub async fn login_password(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    UiForm(form): UiForm<PasswordLogin>,
) -> Response {
    if let Some(refused) = over_allowance(&state, &headers, peer.as_ref()) {
        return refused;
    }
    let address = peer.map(|Extension(ConnectInfo(address))| address);
    match ops::login(&state, form.username, form.password, address).await {
        Ok(issued) => signed_in(&state, Identity::Key { hash: keys::hash(&issued.key), own: true }),
        Err(failure) => login_form(&state, &headers, failure.status, Some(&failure.message)),
    }
}

#[derive(Deserialize)]
pub struct KeyLogin {
    key: String,
}

pub async fn login_key(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    UiForm(form): UiForm<KeyLogin>,
) -> Response {
    if let Some(refused) = over_allowance(&state, &headers, peer.as_ref()) {
        return refused;
    }
    let hash = keys::hash(form.key.trim());
    match ops::key_principal(&state, &hash).await.and_then(|principal| ops::admit(&state, &principal)) {
        Ok(()) => signed_in(&state, Identity::Key { hash, own: false }),
        Err(failure) => login_form(&state, &headers, failure.status, Some(&failure.message)),
    }
}

#[derive(Deserialize)]
pub struct TokenLogin {
    token: String,
}

pub async fn login_token(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    UiForm(form): UiForm<TokenLogin>,
) -> Response {
    if let Some(refused) = over_allowance(&state, &headers, peer.as_ref()) {
        return refused;
    }
    match state.ui.redeem_token(form.token.trim()) {
        Some(uid) => signed_in(&state, Identity::Local { uid }),
        None => login_form(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("This login link was used already or has expired. Run `bkg ui` again for a new one."),
        ),
    }
}

/// `response` with session `session_id` ended: closed on the agent, its cookie cleared. Also
/// the session closed, if it was open.
pub fn signed_out(state: &AppState, session_id: &str, mut response: Response) -> (Option<session::Session>, Response) {
    let closed = state.ui.close(session_id);
    response.headers_mut().append(header::SET_COOKIE, cookie_header(state, SESSION_COOKIE, "", Some(0)));
    (closed, response)
}

/// Ends the session here (the cookie is worthless from now on) and, for a password login, its
/// session key.
pub async fn logout(State(state): State<AppState>, viewer: Viewer) -> Response {
    let (closed, response) = signed_out(&state, &viewer.session_id, Redirect::to("/ui/login").into_response());
    if let Some(session) = closed
        && let Identity::Key { own: true, .. } = session.identity
        && let Err(failure) = ops::revoke_own_key(&state, &viewer.principal).await
    {
        tracing::warn!(message = %failure.message, "could not revoke a logged-out session's key");
    }
    response
}
