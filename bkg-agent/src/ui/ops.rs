//! The one door from the Web UI to the agent's operations. Every page reads and changes things
//! only through these functions, which apply the same checks as the HTTP API (most call its
//! handlers or their helpers as they are), so a namespace user sees in the browser exactly what
//! its key sees over HTTP, and another namespace's sandbox or run is "not found".

use std::path::Path;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use bkg_schema::auth::{CreateKeyRequest, IssuedKey, KeyInfo, LoginRequest};
use bkg_schema::sandbox::{ExecRequest, NewSandbox, SandboxInfo};
use bkg_schema::sync::{Retried, SyncView};
use bkg_schema::{AgentInfo, Language, RunRecord, RunResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Principal;
use crate::engine::run::{RunError, RunOutput};
use crate::ids::new_id;
use crate::server::input::PathParam;
use crate::server::{AppState, Failure, auth_api, runs, sandboxes, system};

/// What an operation refused, with the HTTP status the API would answer.
pub type OpError = Failure;
pub type OpResult<T> = Result<T, OpError>;

/// Most output a run page shows of a run's log.
pub const MAX_SHOWN_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The principal of an API key, given the hash of its secret; refused when it is unknown,
/// revoked or expired.
pub async fn key_principal(state: &AppState, key_hash: &str) -> OpResult<Principal> {
    crate::server::principal_of_key_hash(state, key_hash).await
}

/// A user's password exchanged for a session key of their namespace, as `POST /api/v1/auth/login`.
pub async fn login(state: &AppState, username: String, password: String) -> OpResult<IssuedKey> {
    let body =
        serde_json::to_vec(&LoginRequest { username, password }).map_err(|e| Failure::internal(e.to_string()))?;
    let (_, Json(issued)) = auth_api::login(State(state.clone()), Body::from(body)).await?;
    Ok(issued)
}

/// Ends a session key when its browser session ends.
pub async fn revoke_own_key(state: &AppState, principal: &Principal) -> OpResult<()> {
    if let Some(id) = principal.key_id() {
        let Json(_revoked) =
            auth_api::revoke_key(State(state.clone()), Extension(principal.clone()), PathParam(id.to_owned())).await?;
    }
    Ok(())
}

pub async fn list_sandboxes(state: &AppState, principal: &Principal) -> OpResult<Vec<SandboxInfo>> {
    runs::require_code_runner(principal)?;
    let mut infos = Vec::new();
    for sandbox in state.store.list_sandboxes(None).await? {
        if principal.reaches(&sandbox.definition.namespace) {
            infos.push(sandboxes::sandbox_info(state, sandbox).await?);
        }
    }
    Ok(infos)
}

pub async fn get_sandbox(state: &AppState, principal: &Principal, id: &str) -> OpResult<SandboxInfo> {
    let stored = sandboxes::visible_sandbox(state, principal, id).await?;
    sandboxes::sandbox_info(state, stored).await
}

pub async fn create_sandbox(state: &AppState, principal: &Principal, new: NewSandbox) -> OpResult<SandboxInfo> {
    runs::require_code_runner(principal)?;
    sandboxes::create_in_namespace(state, principal, new).await
}

pub async fn delete_sandbox(state: &AppState, principal: &Principal, id: &str) -> OpResult<()> {
    let stored = sandboxes::visible_sandbox(state, principal, id).await?;
    sandboxes::remove(state, principal, id, stored).await
}

/// A run of `code` in sandbox `id` that has begun: its output as it comes, and its result.
pub struct CodeRun {
    pub output: mpsc::Receiver<RunOutput>,
    pub result: JoinHandle<Result<RunResult, RunError>>,
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
    let stored = sandboxes::visible_sandbox(state, principal, id).await?;
    let interpreter = match language {
        Language::Python => &state.engine.config.python,
        Language::Node => &state.engine.config.node,
    };
    let exec = ExecRequest {
        command: format!("exec {} -", interpreter.display()),
        detach: false,
        env: Default::default(),
        stdin_base64: Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, code)),
    };
    let validated = state.engine.validate_exec(&stored.definition, exec)?;
    if state.engine.current_run(id).is_some() {
        return Err(Failure::from(RunError::Busy(format!(
            "sandbox {} is already running; stop it first",
            stored.definition.name
        ))));
    }
    let (input_tx, input_rx) = mpsc::channel(1);
    drop(input_tx);
    let (output_tx, output) = mpsc::channel(64);
    let result = tokio::spawn(runs::execute(
        state.clone(),
        principal.clone(),
        new_id("run"),
        validated,
        input_rx,
        Some(output_tx),
    ));
    Ok(CodeRun { output, result })
}

/// Which runs a history page lists.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub namespace: Option<String>,
    pub sandbox: Option<String>,
    pub limit: u32,
}

/// The newest runs the caller may see, as `GET /api/v1/runs`.
pub async fn list_runs(state: &AppState, principal: &Principal, filter: RunFilter) -> OpResult<Vec<RunRecord>> {
    runs::require_code_runner(principal)?;
    let namespace = match (principal.namespace(), filter.namespace) {
        (Some(own), Some(asked)) if own != asked => return Ok(Vec::new()),
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked,
    };
    Ok(state.store.list_runs(namespace, filter.sandbox, filter.limit.clamp(1, 1000)).await?)
}

/// One run, as `GET /api/v1/runs/{id}`: another namespace's is "not found".
pub async fn get_run(state: &AppState, principal: &Principal, id: &str) -> OpResult<RunRecord> {
    runs::require_code_runner(principal)?;
    match state.store.get_run(id).await? {
        Some(run) if principal.reaches(&run.namespace) => Ok(run),
        _ => Err(Failure::not_found(format!("no run {id}"))),
    }
}

/// A run's output as its sandbox's log kept it (stdout and stderr as they came), up to
/// `MAX_SHOWN_OUTPUT_BYTES`; `None` for a temporary run or a log the sandbox no longer keeps.
pub async fn run_output(state: &AppState, principal: &Principal, run: &RunRecord) -> OpResult<Option<Vec<u8>>> {
    let Some(sandbox_id) = &run.sandbox_id else { return Ok(None) };
    let Ok(stored) = sandboxes::visible_sandbox(state, principal, sandbox_id).await else { return Ok(None) };
    let definition = stored.definition;
    let log = Path::new(&definition.project_dir)
        .join(".bkg/sandboxes")
        .join(&definition.name)
        .join("logs")
        .join(format!("{}.log", run.id));
    let Ok(file) = tokio::fs::File::open(&log).await else { return Ok(None) };
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::AsyncReadExt::take(file, MAX_SHOWN_OUTPUT_BYTES), &mut bytes)
        .await
        .map_err(|error| Failure::internal(format!("read {}: {error}", log.display())))?;
    Ok(Some(bytes))
}

/// The keys the caller may manage, as `GET /api/v1/auth/keys`.
pub async fn list_keys(state: &AppState, principal: &Principal) -> OpResult<Vec<KeyInfo>> {
    let Json(keys) = auth_api::list_keys(State(state.clone()), Extension(principal.clone())).await?;
    Ok(keys)
}

pub async fn create_key(state: &AppState, principal: &Principal, request: CreateKeyRequest) -> OpResult<IssuedKey> {
    let body = serde_json::to_vec(&request).map_err(|e| Failure::internal(e.to_string()))?;
    let (_, Json(issued)) =
        auth_api::create_key(State(state.clone()), Extension(principal.clone()), Body::from(body)).await?;
    Ok(issued)
}

pub async fn rotate_key(state: &AppState, principal: &Principal, id: &str) -> OpResult<IssuedKey> {
    let Json(issued) =
        auth_api::rotate_key(State(state.clone()), Extension(principal.clone()), PathParam(id.to_owned())).await?;
    Ok(issued)
}

pub async fn revoke_key(state: &AppState, principal: &Principal, id: &str) -> OpResult<KeyInfo> {
    let Json(key) =
        auth_api::revoke_key(State(state.clone()), Extension(principal.clone()), PathParam(id.to_owned())).await?;
    Ok(key)
}

/// The agent's version, load, limits and policy (admins only).
pub async fn agent_info(state: &AppState, principal: &Principal) -> OpResult<AgentInfo> {
    let Json(info) = system::agent_info(State(state.clone()), Extension(principal.clone())).await?;
    Ok(info)
}

/// The bkg_db sync: backlog, lag, parked events (admins only).
pub async fn sync_status(state: &AppState, principal: &Principal) -> OpResult<SyncView> {
    let Json(view) = system::sync_status(State(state.clone()), Extension(principal.clone())).await?;
    Ok(view)
}

/// Ships parked events again: one (`seq`) or all (admins only).
pub async fn sync_retry(state: &AppState, principal: &Principal, seq: Option<u64>) -> OpResult<Retried> {
    let body =
        serde_json::to_vec(&bkg_schema::sync::RetryRequest { seq }).map_err(|e| Failure::internal(e.to_string()))?;
    let Json(retried) =
        system::sync_retry(State(state.clone()), Extension(principal.clone()), Body::from(body)).await?;
    Ok(retried)
}

/// The agent's health as `GET /healthz` answers a key: `ok`, `degraded (reason)`, or why it
/// cannot run code (admins only).
pub async fn health(state: &AppState, principal: &Principal) -> OpResult<(bool, String)> {
    if !principal.is_admin() {
        return Err(Failure::forbidden("only an admin may read the agent's health"));
    }
    let response = system::healthz(State(state.clone()), Some(Extension(principal.clone()))).await;
    let healthy = response.status().is_success();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map_err(|_| Failure::internal("could not read the health answer"))?;
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let said = if healthy {
        match value["reason"].as_str() {
            Some(reason) => format!("{} ({reason})", value["status"].as_str().unwrap_or("ok")),
            None => value["status"].as_str().unwrap_or("ok").to_owned(),
        }
    } else {
        value["error"]["message"].as_str().unwrap_or("unavailable").to_owned()
    };
    Ok((healthy, said))
}

/// Which audit records a page lists.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub namespace: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

fn audit_dir(state: &AppState) -> std::path::PathBuf {
    state.engine.config.state_dir.join("audit")
}

fn require_admin(principal: &Principal, what: &str) -> OpResult<()> {
    if !principal.is_admin() {
        return Err(Failure::forbidden(format!("only an admin may {what}")));
    }
    Ok(())
}

/// The newest audit records that match `filter`, newest first, as the log holds them (admins
/// only). Listing does not check signatures: `audit_verify` does, on demand.
pub async fn audit_records(
    state: &AppState,
    principal: &Principal,
    filter: AuditFilter,
) -> OpResult<Vec<bkg_schema::audit::SignedRecord>> {
    require_admin(principal, "read the audit log")?;
    let dir = audit_dir(state);
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<bkg_schema::audit::SignedRecord>> {
        let mut kept = std::collections::VecDeque::new();
        for (_, path) in bkg_schema::audit::log_files(&dir)? {
            let text = std::fs::read(&path)?;
            for line in text.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
                let Ok(record) = serde_json::from_slice::<bkg_schema::audit::SignedRecord>(line) else { continue };
                let wanted = filter.namespace.as_ref().is_none_or(|wanted| record.namespace.as_ref() == Some(wanted))
                    && filter.actor.as_ref().is_none_or(|wanted| &record.actor == wanted)
                    && filter.action.as_ref().is_none_or(|wanted| &record.action == wanted);
                if wanted {
                    if kept.len() == filter.limit.max(1) {
                        kept.pop_front();
                    }
                    kept.push_back(record);
                }
            }
        }
        Ok(kept.into_iter().rev().collect())
    });
    read.await
        .map_err(|_| Failure::internal("the audit reader failed"))?
        .map_err(|error| Failure::internal(format!("read the audit log: {error}")))
}

/// Checks the audit log's hash chain and signatures with the agent's public key (admins only).
pub async fn audit_verify(state: &AppState, principal: &Principal) -> OpResult<bkg_schema::audit::VerifyReport> {
    require_admin(principal, "verify the audit log")?;
    let (dir, key_file) = (audit_dir(state), state.engine.config.state_dir.join("audit.pub"));
    let verified = tokio::task::spawn_blocking(move || -> Result<bkg_schema::audit::VerifyReport, String> {
        let text =
            std::fs::read_to_string(&key_file).map_err(|error| format!("read {}: {error}", key_file.display()))?;
        let key = bkg_schema::audit::PublicKey::from_hex(text.trim()).map_err(|error| error.to_string())?;
        let files: Vec<_> = bkg_schema::audit::log_files(&dir)
            .map_err(|error| error.to_string())?
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        bkg_schema::audit::verify(&files, &key).map_err(|error| error.to_string())
    });
    verified.await.map_err(|_| Failure::internal("the audit verifier failed"))?.map_err(Failure::internal)
}
