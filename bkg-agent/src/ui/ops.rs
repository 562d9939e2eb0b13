//! The one door from the Web UI to the agent's operations (`service/`). Every page reads and
//! changes things only through these functions, which call the same operations as the HTTP API
//! and MCP, so a namespace user sees in the browser exactly what its key sees over HTTP, and
//! another namespace's sandbox or run is "not found". Refusals come back as the API's `Failure`
//! (its status and message), which the pages show.

use std::collections::BTreeMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use bkg_schema::audit::{SignedRecord, VerifyReport};
use bkg_schema::auth::{CreateKeyRequest, IssuedKey, KeyInfo, LoginRequest};
use bkg_schema::files::{NewSession, SessionInfo};
use bkg_schema::health::HealthReason;
use bkg_schema::sandbox::{NewSandbox, SandboxInfo};
use bkg_schema::sync::{Retried, RetryRequest, SyncView};
use bkg_schema::terminal::{ShellRequest, ShellTerminalOpen, TerminalSize};
use bkg_schema::{AgentInfo, ApiError, Language, RunRecord};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub use crate::service::{AuditFilter, KeyPolicy, NamespaceSummary, RunOutput, RunTask};

use crate::auth::Principal;
use crate::server::{AppState, Failure};
use crate::service::{Accepted, HealthVerdict, OpError, RunInput};

pub type OpResult<T> = Result<T, Failure>;

/// Most output a run page shows of a run's log.
pub const MAX_SHOWN_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The principal of an API key, given the hash of its secret; refused when it is unknown,
/// revoked or expired.
pub async fn key_principal(state: &AppState, key_hash: &str) -> OpResult<Principal> {
    Ok(state.service.authenticate_key_hash(key_hash).await?)
}

/// A listener the UI started (`bkg ui`'s loopback one), for the agent's description of itself.
pub fn note_listener(state: &AppState, url: String, started_by: &str) {
    state.service.note_listener(bkg_schema::TcpListenerInfo { url, started_by: started_by.to_owned() });
}

/// Whether the key's caller may sign in at all (a model-access key opens no page).
pub fn admit(state: &AppState, principal: &Principal) -> OpResult<()> {
    Ok(state.service.admit_ui(principal)?)
}

/// A user's password exchanged for a session key of their namespace, as `POST /api/v1/auth/login`.
pub async fn login(
    state: &AppState,
    username: String,
    password: String,
    address: Option<std::net::SocketAddr>,
) -> OpResult<IssuedKey> {
    Ok(state.service.log_in(LoginRequest { username, password }, address).await?)
}

/// Ends a session key when its browser session ends.
pub async fn revoke_own_key(state: &AppState, principal: &Principal) -> OpResult<()> {
    if let Some(id) = principal.key_id() {
        state.service.revoke_key(principal, id).await?;
    }
    Ok(())
}

/// The uid a one-time login URL is issued for: only the socket's peer may have one.
pub fn ui_login_grant(state: &AppState, principal: &Principal) -> OpResult<u32> {
    Ok(state.service.ui_login_grant(principal)?)
}

pub async fn list_sandboxes(state: &AppState, principal: &Principal) -> OpResult<Vec<SandboxInfo>> {
    Ok(state.service.list_sandboxes(principal, None, None).await?)
}

pub async fn get_sandbox(state: &AppState, principal: &Principal, id: &str) -> OpResult<SandboxInfo> {
    Ok(state.service.get_sandbox(principal, id).await?)
}

pub async fn create_sandbox(state: &AppState, principal: &Principal, new: NewSandbox) -> OpResult<SandboxInfo> {
    // The service's fix names cave.yaml and the agent's flags; here it is the form's field.
    state.service.create_sandbox(principal, new).await.map_err(|error| {
        let field = |name: &str| match name {
            "cpus" => Some("CPUs"),
            "memory" => Some("Memory"),
            "timeout" => Some("Timeout"),
            "disk" => Some("Disk"),
            _ => None,
        };
        error
            .with_limit_fix(|name| field(name).map(|field| format!("ask for at most that in the {field} field")))
            .into()
    })
}

pub async fn delete_sandbox(state: &AppState, principal: &Principal, id: &str) -> OpResult<()> {
    Ok(state.service.delete_sandbox(principal, id).await?)
}

/// A run of code in a sandbox that has begun: its output as it comes, and its result.
pub struct CodeRun {
    pub output: mpsc::Receiver<RunOutput>,
    pub result: RunTask,
}

/// Runs `code` with the sandbox's Python or Node, the script read from standard input. The
/// run is a task of its own: a browser that goes away does not cut it short.
pub async fn run_code(
    state: &AppState,
    principal: &Principal,
    id: &str,
    language: Language,
    code: &str,
) -> OpResult<CodeRun> {
    let accepted = match state.service.accept_code(principal, id, language, code).await {
        Ok(accepted) => accepted,
        Err(error) if error.is_busy() => return Err(busy(state, principal, id).await.into()),
        Err(error) => return Err(error.into()),
    };
    // No input but the script: the closed channel is the end of stdin.
    let (_, input) = mpsc::channel::<RunInput>(1);
    let (output_tx, output) = mpsc::channel(64);
    let result = state.service.start(accepted, input, Some(output_tx));
    Ok(CodeRun { output, result })
}

/// Why a sandbox cannot take a run now, in the UI's terms: the service's refusal names the
/// CLI's commands (`bkg exec`, `bkg stop`), which a page's user has not got (found by a new-user
/// trial).
async fn busy(state: &AppState, principal: &Principal, id: &str) -> OpError {
    OpError::Conflict(match sandbox_session(state, principal, id).await {
        Ok(Some(session)) => format!(
            "this sandbox's {} session holds it: run code in its Notebook, or end the session there first",
            session.language.as_str()
        ),
        _ => "this sandbox is busy with another run or a file transfer: run this again once that has ended".to_owned(),
    })
}

/// The sandbox's interpreter session, if it has one (one per sandbox; `bkg repl`'s too).
pub async fn sandbox_session(state: &AppState, principal: &Principal, id: &str) -> OpResult<Option<SessionInfo>> {
    Ok(state.service.sandbox_session(principal, id).await?)
}

/// Starts the sandbox's session (named `default`) in `language`, as `POST …/sessions`.
pub async fn create_session(
    state: &AppState,
    principal: &Principal,
    id: &str,
    language: Language,
) -> OpResult<SessionInfo> {
    let new = NewSession { name: None, language: Some(language) };
    Ok(state.service.create_session(principal, id, new).await?)
}

/// Runs a cell in session `name`; its events come as they happen, the last one `end`.
pub async fn execute_in_session(
    state: &AppState,
    principal: &Principal,
    id: &str,
    name: &str,
    code: String,
) -> OpResult<crate::service::SessionEvents> {
    Ok(state.service.execute_in_session(principal, id, name, code).await?)
}

/// Interrupts the cell going on (SIGINT); the session and its variables stay.
pub async fn interrupt_session(state: &AppState, principal: &Principal, id: &str, name: &str) -> OpResult<()> {
    state.service.interrupt_session(principal, id, name).await?;
    Ok(())
}

/// A fresh interpreter for the session: its variables are gone.
pub async fn restart_session(state: &AppState, principal: &Principal, id: &str, name: &str) -> OpResult<()> {
    state.service.restart_session(principal, id, name).await?;
    Ok(())
}

/// Ends the session; the sandbox is free for runs and terminals again.
pub async fn delete_session(state: &AppState, principal: &Principal, id: &str, name: &str) -> OpResult<()> {
    Ok(state.service.delete_session(principal, id, name).await?)
}

/// What the terminal page's shell is told it runs on: the page draws text, colours and line
/// edits (carriage return, backspace, erase line) and nothing that moves the cursor around, so
/// programs are asked not to try.
const PAGE_TERM: &str = "dumb";

/// Checks a shell on a terminal of `size` in sandbox `id` and takes it on, as `bkg shell`'s
/// WebSocket does (the same operation, so the same access rules and the sandbox's timeout).
pub async fn accept_shell(
    state: &AppState,
    principal: &Principal,
    id: &str,
    size: TerminalSize,
) -> Result<Accepted, ApiError> {
    let open = ShellTerminalOpen { size, term: Some(PAGE_TERM.to_owned()), request: ShellRequest::default() };
    state
        .service
        .accept_shell(principal, id, open)
        .await
        .map_err(|error| ApiError::new(error.code(), error.to_string()))
}

/// Serves a terminal over the WebSocket `upgrade` with the API's terminal protocol, its first
/// message `O` taken on by `accept` (which calls `accept_shell`).
pub fn serve_terminal<O, A, F>(state: &AppState, upgrade: WebSocketUpgrade, accept: A) -> Response
where
    O: DeserializeOwned + Send + 'static,
    A: FnOnce(O) -> F + Send + 'static,
    F: std::future::Future<Output = Result<Accepted, ApiError>> + Send,
{
    crate::server::terminal::upgrade_to_terminal(upgrade, std::sync::Arc::clone(&state.service), accept)
}

/// Which runs a history page lists.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub namespace: Option<String>,
    pub sandbox: Option<String>,
    /// The runs older than this one (the next page).
    pub before: Option<String>,
    pub limit: u32,
}

/// The newest runs the caller may see, as `GET /api/v1/runs` (a namespace user asking for
/// another namespace is refused, as there).
pub async fn list_runs(state: &AppState, principal: &Principal, filter: RunFilter) -> OpResult<Vec<RunRecord>> {
    let limit = filter.limit.clamp(1, 1000);
    Ok(state.service.list_runs(principal, limit, filter.namespace, filter.sandbox, filter.before).await?)
}

/// One run, as `GET /api/v1/runs/{id}`: another namespace's is "not found".
pub async fn get_run(state: &AppState, principal: &Principal, id: &str) -> OpResult<RunRecord> {
    Ok(state.service.get_run(principal, id).await?)
}

/// Ends a queued or running run, as `POST /api/v1/runs/{id}/cancel`.
pub async fn cancel_run(state: &AppState, principal: &Principal, id: &str) -> OpResult<RunRecord> {
    Ok(state.service.cancel_run(principal, id).await?)
}

/// A run's output as its sandbox's log kept it, up to `MAX_SHOWN_OUTPUT_BYTES`.
pub async fn run_output(state: &AppState, principal: &Principal, run: &RunRecord) -> OpResult<Option<Vec<u8>>> {
    Ok(state.service.run_output(principal, run, MAX_SHOWN_OUTPUT_BYTES).await?)
}

/// The keys the caller may manage, as `GET /api/v1/auth/keys`.
pub async fn list_keys(state: &AppState, principal: &Principal) -> OpResult<Vec<KeyInfo>> {
    Ok(state.service.list_keys(principal).await?)
}

pub async fn create_key(state: &AppState, principal: &Principal, request: CreateKeyRequest) -> OpResult<IssuedKey> {
    Ok(state.service.create_key(principal, request).await?)
}

pub async fn rotate_key(state: &AppState, principal: &Principal, id: &str) -> OpResult<IssuedKey> {
    Ok(state.service.rotate_key(principal, id).await?)
}

pub async fn revoke_key(state: &AppState, principal: &Principal, id: &str) -> OpResult<KeyInfo> {
    Ok(state.service.revoke_key(principal, id).await?)
}

/// The agent's version, load, limits and policy (admins only).
pub async fn agent_info(state: &AppState, principal: &Principal) -> OpResult<AgentInfo> {
    Ok(state.service.agent_info(principal)?)
}

/// Each role's key lifetime and request allowance (admins only).
pub fn key_policy(state: &AppState, principal: &Principal) -> OpResult<Vec<KeyPolicy>> {
    Ok(state.service.key_policy(principal)?)
}

/// The bkg_db sync: backlog, lag, parked events (admins only).
pub async fn sync_status(state: &AppState, principal: &Principal) -> OpResult<SyncView> {
    Ok(state.service.sync_status(principal).await?)
}

/// Ships parked events again: one (`seq`) or all (admins only).
pub async fn sync_retry(state: &AppState, principal: &Principal, seq: Option<u64>) -> OpResult<Retried> {
    Ok(state.service.retry_sync(principal, RetryRequest { seq }).await?)
}

fn reason_word(reason: HealthReason) -> String {
    serde_json::to_value(reason).ok().and_then(|value| value.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The agent's health as `GET /healthz` answers a key: whether it is in service, and `ok`,
/// `degraded (reason)` or why it cannot run code.
pub async fn health(state: &AppState, principal: &Principal) -> OpResult<(bool, String)> {
    Ok(match state.service.health(Some(principal)).await? {
        HealthVerdict::Healthy => (true, "ok".to_owned()),
        HealthVerdict::Degraded(reason) => (true, format!("degraded ({})", reason_word(reason))),
        HealthVerdict::Unavailable { reason, detail } => (false, detail.unwrap_or_else(|| reason_word(reason))),
    })
}

/// Every namespace with what it holds (admins only).
pub async fn namespaces(state: &AppState, principal: &Principal) -> OpResult<BTreeMap<String, NamespaceSummary>> {
    Ok(state.service.namespaces(principal).await?)
}

/// The newest audit records that match `filter`, newest first (admins only).
pub async fn audit_records(
    state: &AppState,
    principal: &Principal,
    filter: AuditFilter,
) -> OpResult<Vec<SignedRecord>> {
    Ok(state.service.audit_records(principal, filter).await?)
}

/// Checks the audit log's hash chain and signatures (admins only).
pub async fn audit_verify(state: &AppState, principal: &Principal) -> OpResult<VerifyReport> {
    Ok(state.service.verify_audit(principal).await?)
}

/// Whether the pages offer the caller the admin pages (the operations refuse everyone else).
pub fn administers(principal: &Principal) -> bool {
    crate::service::access::administers(principal)
}
