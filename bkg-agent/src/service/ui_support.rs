//! Operations the Web UI (`ui/`) needs beyond the API's: a script run from a page, a run's
//! output read back, every namespace at a glance, the key policy, the audit log listed and
//! verified, and the socket peer's right to a one-time login URL. Who may do each is decided in
//! `access.rs`, as for every operation.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use bkg_schema::audit::{PublicKey, SignedRecord, VerifyReport, log_files};
use bkg_schema::auth::Role;
use bkg_schema::sandbox::ExecRequest;
use bkg_schema::{Language, RunRecord};
use tokio::io::AsyncReadExt;

use super::access::{AdminTask, require_admin, require_socket_peer};
use super::runs::{Accepted, MAX_LISTED_RUNS};
use super::{OpError, OpResult, Service};
use crate::auth::Principal;

/// The audit log's directory and its public key, under the agent's state directory (audit.rs).
const AUDIT_DIR: &str = "audit";
const AUDIT_PUBLIC_KEY: &str = "audit.pub";

/// Which audit records a listing returns.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub namespace: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

/// What one namespace holds; runs counted among the newest `MAX_LISTED_RUNS`.
#[derive(Debug, Default, Clone)]
pub struct NamespaceSummary {
    pub sandboxes: usize,
    pub keys: usize,
    pub recent_runs: usize,
    pub last_run_ms: Option<u64>,
}

/// A role's key lifetime and request allowance.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    pub role: Role,
    pub ttl_ms: u64,
    pub rate_per_minute: u32,
}

impl Service {
    /// Checks `code` for sandbox `id`, to be run by the sandbox's Python or Node reading it from
    /// standard input, and takes it on (start it with [`Service::start`]).
    pub async fn accept_code(
        &self,
        principal: &Principal,
        id: &str,
        language: Language,
        code: &str,
    ) -> OpResult<Accepted> {
        let interpreter = match language {
            Language::Python => &self.engine.config.python,
            Language::Node => &self.engine.config.node,
        };
        let exec = ExecRequest {
            stdin_base64: Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, code)),
            language: Some(language),
            ..ExecRequest::command(format!("exec {} -", interpreter.display()))
        };
        self.accept_exec(principal, id, exec).await
    }

    /// A run's output as its sandbox's log kept it (stdout and stderr as they came), up to
    /// `max_bytes`; `None` for a temporary run or a log the sandbox no longer keeps.
    pub async fn run_output(
        &self,
        principal: &Principal,
        run: &RunRecord,
        max_bytes: u64,
    ) -> OpResult<Option<Vec<u8>>> {
        let run = self.get_run(principal, &run.id).await?;
        let Some(sandbox_id) = &run.sandbox_id else { return Ok(None) };
        let Ok(stored) = self.visible_sandbox(principal, sandbox_id).await else { return Ok(None) };
        let definition = stored.definition;
        let log =
            self.engine.sandbox_home(&definition.namespace, sandbox_id).logs_dir().join(format!("{}.log", run.id));
        let Ok(file) = tokio::fs::File::open(&log).await else { return Ok(None) };
        let mut bytes = Vec::new();
        file.take(max_bytes)
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| OpError::Internal(format!("read {}: {error}", log.display())))?;
        Ok(Some(bytes))
    }

    /// Every namespace with what it holds: sandboxes, keys and recent runs (admins only).
    pub async fn namespaces(&self, principal: &Principal) -> OpResult<BTreeMap<String, NamespaceSummary>> {
        require_admin(principal, AdminTask::ReadNamespaces)?;
        let mut namespaces: BTreeMap<String, NamespaceSummary> = BTreeMap::new();
        for sandbox in self.store.list_sandboxes(None).await? {
            namespaces.entry(sandbox.definition.namespace).or_default().sandboxes += 1;
        }
        for key in self.store.list_keys(None).await? {
            if let Some(namespace) = key.namespace {
                namespaces.entry(namespace).or_default().keys += 1;
            }
        }
        for run in self.store.list_runs(None, None, None, MAX_LISTED_RUNS).await? {
            let entry = namespaces.entry(run.namespace).or_default();
            entry.recent_runs += 1;
            entry.last_run_ms = entry.last_run_ms.max(Some(run.started_at_ms));
        }
        Ok(namespaces)
    }

    /// Each role's key lifetime and request allowance (admins only).
    pub fn key_policy(&self, principal: &Principal) -> OpResult<Vec<KeyPolicy>> {
        require_admin(principal, AdminTask::ReadAgent)?;
        let policy = &self.auth.policy;
        Ok([Role::Admin, Role::Namespace, Role::Session, Role::ModelAccess]
            .into_iter()
            .map(|role| KeyPolicy {
                role,
                ttl_ms: u64::try_from(policy.ttl.get(role).as_millis()).unwrap_or(u64::MAX),
                rate_per_minute: policy.rate_per_minute.get(role),
            })
            .collect())
    }

    fn audit_dir(&self) -> PathBuf {
        self.engine.config.state_dir.join(AUDIT_DIR)
    }

    /// The newest audit records that match `filter`, newest first, as the log holds them (admins
    /// only). Listing does not check signatures: [`Service::verify_audit`] does.
    pub async fn audit_records(&self, principal: &Principal, filter: AuditFilter) -> OpResult<Vec<SignedRecord>> {
        require_admin(principal, AdminTask::ReadAudit)?;
        let dir = self.audit_dir();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<SignedRecord>> {
            let mut kept = VecDeque::new();
            for (_, path) in log_files(&dir)? {
                let text = std::fs::read(&path)?;
                for line in text.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
                    let Ok(record) = serde_json::from_slice::<SignedRecord>(line) else { continue };
                    let wanted =
                        filter.namespace.as_ref().is_none_or(|wanted| record.namespace.as_ref() == Some(wanted))
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
            .map_err(|_| OpError::Internal("the audit reader failed".into()))?
            .map_err(|error| OpError::Internal(format!("read the audit log: {error}")))
    }

    /// Checks the audit log's hash chain and signatures with the agent's public key (admins only).
    pub async fn verify_audit(&self, principal: &Principal) -> OpResult<VerifyReport> {
        require_admin(principal, AdminTask::VerifyAudit)?;
        let (dir, key_file) = (self.audit_dir(), self.engine.config.state_dir.join(AUDIT_PUBLIC_KEY));
        let verified = tokio::task::spawn_blocking(move || -> Result<VerifyReport, String> {
            let text =
                std::fs::read_to_string(&key_file).map_err(|error| format!("read {}: {error}", key_file.display()))?;
            let key = PublicKey::from_hex(text.trim()).map_err(|error| error.to_string())?;
            let files: Vec<_> =
                log_files(&dir).map_err(|error| error.to_string())?.into_iter().map(|(_, path)| path).collect();
            bkg_schema::audit::verify(&files, &key).map_err(|error| error.to_string())
        });
        verified.await.map_err(|_| OpError::Internal("the audit verifier failed".into()))?.map_err(OpError::Internal)
    }

    /// The uid a one-time login URL of the Web UI is issued for: the socket peer's.
    pub fn ui_login_grant(&self, principal: &Principal) -> OpResult<u32> {
        let listeners = self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        require_socket_peer(principal, &listeners)
    }
}
