//! The Web UI (docs/ui.md): pages rendered on the server under `/ui`, for the users of a
//! namespace and for admins. It is a caller of the agent's operations like HTTP and MCP, through
//! one door (ops.rs), never a side door: what a page shows and does is what the caller's key may
//! see and do over the API.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles only from
//! `/ui/assets`, no inline script, no framing); every state-changing request must carry the
//! session's CSRF token (login forms: the token of the login cookie), checked here in one place.

mod admin;
mod ansi;
mod assets;
mod auth_pages;
pub mod launch;
mod notebook;
mod ops;
mod session;
mod terminal;
mod user;
mod view;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};

pub use session::UiState;

use crate::auth::Principal;
use crate::server::{AppState, Failure};

/// The policy of every answer under /ui: nothing inline, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The header state-changing `fetch` requests carry their CSRF token in (forms use a field).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field of the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// Whether the gatekeeper's route (a matched path) belongs to the UI.
pub fn is_ui_route(route: &str) -> bool {
    route == "/ui" || route.starts_with("/ui/") || route == FAVICON_ROUTE || route == SITE_ROOT
}

/// The agent's address as a person types it into a browser: sent to the UI (found by a trial:
/// the API's 401 JSON, "needs Authorization: Bearer"). The API has nothing there.
pub const SITE_ROOT: &str = "/";

pub async fn site_root() -> Redirect {
    Redirect::to("/ui/")
}

/// Where browsers look for a site's icon when a page names none (a bookmark, a tab opened on
/// an API URL): sent to the UI's own (found by a new-user trial: the API's 401 JSON).
pub const FAVICON_ROUTE: &str = "/favicon.ico";

pub async fn favicon() -> Redirect {
    Redirect::permanent("/ui/assets/favicon.svg")
}

/// Routes that log in: their CSRF token is the login cookie's, there being no session yet.
/// (Paths within /ui: the router is nested there.)
const LOGIN_ROUTES: [&str; 3] = ["/login", "/login/key", "/login/token"];
/// The socket-only route of `bkg ui`: no browser reaches it, and it takes no cookie.
const LAUNCH_ROUTE: &str = "/launch";

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(to_sandboxes))
        .route("/assets/{name}", get(assets::asset))
        .route("/launch", post(launch::launch))
        .route("/login", get(auth_pages::login_page).post(auth_pages::login_password))
        .route("/login/key", post(auth_pages::login_key))
        .route("/login/token", post(auth_pages::login_token))
        .route("/logout", post(auth_pages::logout))
        .route("/sandboxes", get(user::sandboxes).post(user::create_sandbox))
        .route("/sandboxes/{id}", get(user::sandbox))
        .route("/sandboxes/{id}/delete", post(user::delete_sandbox))
        .route("/sandboxes/{id}/run", post(user::run_code))
        .route("/sandboxes/{id}/notebook", get(notebook::notebook))
        .route("/sandboxes/{id}/notebook/start", post(notebook::start))
        .route("/sandboxes/{id}/notebook/execute", post(notebook::execute))
        .route("/sandboxes/{id}/notebook/interrupt", post(notebook::interrupt))
        .route("/sandboxes/{id}/notebook/restart", post(notebook::restart))
        .route("/sandboxes/{id}/notebook/end", post(notebook::end))
        .route("/sandboxes/{id}/terminal", get(terminal::terminal))
        .route("/sandboxes/{id}/terminal/socket", get(terminal::socket))
        .route("/runs", get(user::runs))
        .route("/runs/{id}", get(user::run))
        .route("/runs/{id}/cancel", post(user::cancel_run))
        .route("/keys", get(user::keys).post(user::create_key))
        .route("/keys/{id}/rotate", post(user::rotate_key))
        .route("/keys/{id}/revoke", post(user::revoke_key))
        .route("/admin", get(admin::overview))
        .route("/admin/namespaces", get(admin::namespaces))
        .route("/admin/audit", get(admin::audit))
        .route("/admin/sync", get(admin::sync))
        .route("/admin/sync/retry", post(admin::sync_retry))
        // A route, not a fallback: the gatekeeper lets only matched UI routes through keyless.
        // Whatever the method (found by a new-user trial: a POST was told it was a form's action).
        .route("/{*unknown}", any(no_such_page))
        // A visit to a form's address (a bookmarked or reloaded POST) gets a page, not the API's JSON.
        .method_not_allowed_fallback(not_a_page)
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// An error page with the navigation of the viewer's session when there is one (found by a
/// new-user trial: a mistyped address left a signed-in user with no way on but "Back").
async fn error_for(state: &AppState, parts: &mut Parts, status: StatusCode, message: &str) -> Response {
    let viewer = Viewer::from_request_parts(parts, state).await.ok();
    view::error_page(viewer.as_ref(), status, message)
}

async fn no_such_page(State(state): State<AppState>, mut parts: Parts) -> Response {
    error_for(&state, &mut parts, StatusCode::NOT_FOUND, "There is no such page.").await
}

async fn not_a_page(State(state): State<AppState>, mut parts: Parts) -> Response {
    let message = "This address is a form's action: use its button on the page it belongs to.";
    error_for(&state, &mut parts, StatusCode::METHOD_NOT_ALLOWED, message).await
}

/// `/ui/`, which the nested router's "/" (`/ui` alone) does not match: the same redirect, behind
/// the same guard (its headers, its session check).
pub fn slash_root(state: AppState) -> axum::routing::MethodRouter<AppState> {
    get(to_sandboxes).layer(axum::middleware::from_fn_with_state(state, guard))
}

/// The UI's root, `/ui` or `/ui/`: a user's sandboxes.
async fn to_sandboxes() -> Redirect {
    Redirect::to("/ui/sandboxes")
}

/// The value of cookie `name` in the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Security headers on every answer, and the CSRF check before every state-changing request.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request = match check_csrf(&state, request).await {
        Ok(request) => request,
        Err(response) => return with_security_headers(response),
    };
    with_security_headers(next.run(request).await)
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A POST must bring the token of its session (or, to log in, of its login cookie) in the
/// `x-csrf-token` header or the `csrf` form field. The body was read whole by the gatekeeper.
async fn check_csrf(state: &AppState, request: Request) -> Result<Request, Response> {
    let path = request.uri().path().to_owned();
    if matches!(*request.method(), Method::GET | Method::HEAD) || path == LAUNCH_ROUTE {
        return Ok(request);
    }
    let expected = if LOGIN_ROUTES.contains(&path.as_str()) {
        cookie(request.headers(), session::LOGIN_COOKIE)
    } else {
        // A session the agent does not know cannot have sent this form: its page is from before
        // the agent restarted (or the session was signed out), which the login page says.
        match cookie(request.headers(), session::SESSION_COOKIE) {
            Some(id) => Some(state.ui.session(&id).ok_or_else(to_login_unknown)?.csrf),
            None => None,
        }
    };
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, crate::server::MAX_BODY_BYTES)
        .await
        .map_err(|_| view::error_page(None, StatusCode::BAD_REQUEST, "The request could not be read."))?;
    let from_header = parts.headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let given = from_header.or_else(|| form_urlencoded_field(&bytes, CSRF_FIELD));
    match (expected, given) {
        (Some(expected), Some(given)) if session::same_secret(&expected, &given) => {
            Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
        }
        _ => Err(view::error_page(
            None,
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site. Reload the page and try again.",
        )),
    }
}

fn form_urlencoded_field(bytes: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .ok()?
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The login page's query when a session ended with its key (`Viewer`, `auth_pages::login_page`).
const KEY_ENDED_QUERY: &str = "ended=key";
/// The login page's query when a session cookie names no session this agent has: it restarted
/// (sessions live in its memory), or the session was signed out elsewhere.
const UNKNOWN_SESSION_QUERY: &str = "ended=unknown";

/// The login page, saying the session the request named is not known to this agent.
fn to_login_unknown() -> Response {
    Redirect::to(&format!("/ui/login?{UNKNOWN_SESSION_QUERY}")).into_response()
}

/// The signed-in caller of a page: the principal its session speaks for, and the session's
/// CSRF token for the forms it renders. A request without a working session is sent to login.
pub struct Viewer {
    pub principal: Principal,
    pub session_id: String,
    pub csrf: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/ui/login").into_response();
        let Some(session_id) = cookie(&parts.headers, session::SESSION_COOKIE) else {
            return Err(to_login());
        };
        let Some(session) = state.ui.session(&session_id) else {
            return Err(to_login_unknown());
        };
        let Some(principal) = session::principal(state, &session).await else {
            // The key behind it was revoked or expired: the session ends with it, and the login
            // page says so rather than only asking again.
            state.ui.close(&session_id);
            // Its cookie goes too: the next page would say the session was not known (found by
            // a new-user trial: every page after the first said the agent had restarted).
            let mut response = Redirect::to(&format!("/ui/login?{KEY_ENDED_QUERY}")).into_response();
            let cleared = auth_pages::cookie_header(state, session::SESSION_COOKIE, "", Some(0));
            response.headers_mut().append(header::SET_COOKIE, cleared);
            return Err(response);
        };
        Ok(Viewer { principal, session_id, csrf: session.csrf })
    }
}

/// A form of the UI's own pages. One it cannot read (a field missing or of the wrong kind: sent
/// by hand, or from a page of another version) gets the error page rather than axum's plain text.
pub struct UiForm<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for UiForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(form)) => Ok(Self(form)),
            Err(rejection) => {
                let said = rejection.body_text();
                let what = said.strip_prefix("Failed to deserialize form body: ").unwrap_or(&said);
                Err(view::error_page(
                    None,
                    rejection.status(),
                    &format!(
                        "This form came without a value it needs, or with one it cannot read ({what}): send it from its page."
                    ),
                ))
            }
        }
    }
}

/// An operation's refusal as a page: 404 for what the caller may not see, the message else.
pub fn refusal(viewer: Option<&Viewer>, failure: Failure) -> Response {
    let status = failure.status;
    let message = match status {
        StatusCode::NOT_FOUND => "Not found: it does not exist, or it is not yours to see.".to_owned(),
        _ => failure.message,
    };
    view::error_page(viewer, status, &message)
}
