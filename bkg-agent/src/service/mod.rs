//! The agent's operations: one function per thing a caller can do (run code, define and drive
//! sandboxes, keys and logins, health, sync), each taking the caller's `Principal` and returning
//! a domain result or an `OpError`. Every caller goes through here — HTTP (`server/`), MCP
//! (`mcp.rs`) and any later one — and none of them touches the engine, the store or the sync
//! itself. Who may do what is decided in `access.rs`, and only there.

pub mod access;
mod artefacts;
mod changes;
mod envs;
pub mod files;
mod keys;
mod runs;
mod sandboxes;
mod secrets;
mod services;
mod sessions;
mod system;
mod terminals;
mod ui_support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bkg_schema::ErrorCode;
use tokio::sync::Notify;

use crate::auth::AuthPolicy;
use crate::auth::notice::Notifier;
use crate::auth::rate::RateLimiter;
use crate::engine::Engine;
use crate::engine::run::RunError;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use crate::engine::run::{RunInput, RunOutput};
pub use crate::feed::FeedItem;
pub use artefacts::FileDownload;
pub use changes::ChangeStream;
pub use keys::{KEYLESS_ROUTES_PER_MINUTE, SignedNotice};
pub use runs::{Accepted, RunTask};
pub use sandboxes::LogTail;
pub use sessions::SessionEvents;
pub use system::{HealthProbe, HealthVerdict, MetricsText};
pub use ui_support::{AuditFilter, KeyPolicy, NamespaceSummary};

/// Why an operation did not happen. Each transport turns it into its own shape (an HTTP status
/// and the API's error body in `server/failure.rs`, a tool error in `mcp.rs`).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Input out of the range an operation takes at all (a listing's limit).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input with values the agent will not take.
    #[error("{0}")]
    Invalid(String),
    /// Missing, or not the caller's to see: the two are answered alike.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A signed notice seen before.
    #[error("{0}")]
    Replayed(String),
    /// Something the operation needs (bkg_db, the sandboxes' directory, runs) does not work now.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type OpResult<T> = Result<T, OpError>;

impl From<crate::feed::FeedError> for OpError {
    fn from(error: crate::feed::FeedError) -> Self {
        match error {
            crate::feed::FeedError::Forbidden(message) => Self::Forbidden(message),
            crate::feed::FeedError::BadRequest(message) => Self::BadRequest(message),
            crate::feed::FeedError::PastNewest(message) | crate::feed::FeedError::UnknownKind(message) => {
                Self::Invalid(message)
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// The kind of refusal an `OpError` is, for transports to map to their own statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The input cannot be taken at all.
    BadRequest,
    /// The input is well-formed but its values are refused.
    Invalid,
    NotFound,
    Unauthorized,
    Forbidden,
    Conflict,
    /// Not now: the caller may retry (after `retry_after_secs`, when given).
    Unavailable,
    Internal,
}

impl OpError {
    /// A limit above the agent's maximum with its fix in a transport's terms: `fix` words it
    /// for the limit's name (the service's names cave.yaml and the agent's flags), or keeps the
    /// service's with None. Any other error is kept.
    pub fn with_limit_fix(self, fix: impl Fn(&str) -> Option<String>) -> Self {
        let Self::Run(RunError::LimitAboveMaximum { name, asked, allowed, others, .. }) = &self else { return self };
        match fix(name) {
            Some(fix) => {
                let also = crate::engine::request::also_above(others);
                Self::Invalid(format!("{name} {asked} is above this agent's maximum, {allowed}{also}: {fix}"))
            }
            None => self,
        }
    }

    /// The sandbox is held by another run, session or transfer.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Run(RunError::Busy(_)))
    }

    pub fn refusal(&self) -> Refusal {
        match self {
            Self::BadRequest(_) => Refusal::BadRequest,
            Self::Invalid(_) => Refusal::Invalid,
            Self::NotFound(_) => Refusal::NotFound,
            Self::Unauthorized(_) => Refusal::Unauthorized,
            Self::Forbidden(_) => Refusal::Forbidden,
            Self::Conflict(_) | Self::Replayed(_) => Refusal::Conflict,
            Self::Unavailable(_) => Refusal::Unavailable,
            Self::Run(run) => match run {
                RunError::BadRequest(_)
                | RunError::LimitAboveMaximum { .. }
                | RunError::RuntimeNotExecutable(_)
                | RunError::InstallFailed(_) => Refusal::Invalid,
                RunError::Busy(_) | RunError::PortUnusable(_) => Refusal::Conflict,
                RunError::EgressNotAllowed(_) => Refusal::Forbidden,
                RunError::Overloaded { .. } | RunError::Engine(_) => Refusal::Unavailable,
            },
            Self::Store(_) | Self::Internal(_) => Refusal::Internal,
        }
    }

    /// The API's error code (`bkg_schema::ErrorCode`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) | Self::Invalid(_) => ErrorCode::BadRequest,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Replayed(_) => ErrorCode::Replayed,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Run(run) => run.code(),
            Self::Store(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// When a refused caller may try again: a full queue or a spent disk budget drains.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Run(RunError::Overloaded { retry_after_secs, .. }) => Some(u64::from(*retry_after_secs)),
            _ => None,
        }
    }
}

/// Keys, limits and notices: the authentication half of the agent's state.
pub struct AuthState {
    pub policy: AuthPolicy,
    pub limiter: RateLimiter,
    pub notifier: Notifier,
    /// When each key's use was last written to the store.
    last_used_written: Mutex<HashMap<String, u64>>,
    /// Who may use the socket, and when the user database changed (`watch_user_database`).
    local: (crate::auth::local::LocalAccess, tokio::sync::watch::Receiver<u64>),
}

impl AuthState {
    pub fn new(policy: AuthPolicy, notifier: Notifier, local: crate::auth::local::LocalAccess) -> Self {
        Self {
            policy,
            limiter: RateLimiter::default(),
            notifier,
            last_used_written: Mutex::new(HashMap::new()),
            local: (local, crate::auth::local::watch_user_database()),
        }
    }
}

/// The bkg_db sync worker and its URL, when one is configured.
pub type SyncLink = (Arc<crate::sync::SyncHandle<Store>>, String);

/// What the operations work with. Built once by the daemon; shared by every transport.
pub struct Service {
    engine: Arc<Engine>,
    feed: Arc<crate::feed::Feed>,
    store: Store,
    artefacts: Arc<crate::artefacts::Artefacts>,
    pub metrics: Arc<Metrics>,
    pub auth: AuthState,
    health: HealthProbe,
    sync: Option<SyncLink>,
    /// Told when an admin asks the agent to stop.
    shutdown: Arc<Notify>,
    socket: PathBuf,
    /// Whether systemd made the socket (activation) and keeps it after the agent ends.
    socket_activated: bool,
    /// Detached runs of persistent sandboxes, supervised (`services.rs`).
    services: services::Services,
    envs: Arc<crate::envs::Environments>,
    node_envs: Arc<crate::envs::Environments>,
    secrets: crate::secrets::SecretStore,
    retention: bkg_schema::Retention,
    sessions: sessions::SessionTable,
    /// The sandboxes being removed, so that a log followed until one goes ends once it is gone.
    removals: sandboxes::Removals,
    /// The TCP listeners serving the API, for `agent_info` (`note_listener`).
    listeners: std::sync::Mutex<Vec<bkg_schema::TcpListenerInfo>>,
}

/// The parts a `Service` is made of.
pub struct ServiceParts {
    pub engine: Arc<Engine>,
    pub feed: Arc<crate::feed::Feed>,
    pub store: Store,
    pub artefacts: Arc<crate::artefacts::Artefacts>,
    pub metrics: Arc<Metrics>,
    pub auth: AuthState,
    pub health: HealthProbe,
    pub sync: Option<SyncLink>,
    pub shutdown: Arc<Notify>,
    pub socket: PathBuf,
    pub socket_activated: bool,
    pub envs: Arc<crate::envs::Environments>,
    pub node_envs: Arc<crate::envs::Environments>,
    pub secrets: crate::secrets::SecretStore,
    /// How long finished runs are kept, as `bkg agent status` says it.
    pub retention: bkg_schema::Retention,
}

impl Service {
    pub fn new(parts: ServiceParts) -> Arc<Self> {
        let ServiceParts {
            engine,
            feed,
            store,
            artefacts,
            metrics,
            auth,
            health,
            sync,
            shutdown,
            socket,
            socket_activated,
            envs,
            node_envs,
            secrets,
            retention,
        } = parts;
        Arc::new(Self {
            engine,
            feed,
            store,
            artefacts,
            metrics,
            auth,
            health,
            sync,
            shutdown,
            socket,
            socket_activated,
            services: Default::default(),
            envs,
            node_envs,
            secrets,
            retention,
            sessions: sessions::SessionTable::default(),
            removals: Default::default(),
            listeners: Default::default(),
        })
    }

    /// A TCP listener now serves the API: `agent_info` names it, for admins to see what takes
    /// keys from the network.
    pub fn note_listener(&self, listener: bkg_schema::TcpListenerInfo) {
        self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(listener);
    }

    /// Counts a run until the guard is dropped: shutdown waits until the caller has its result.
    pub fn run_in_flight(&self) -> crate::engine::Busy {
        self.engine.run_in_flight()
    }

    /// An audit line for a change of what runs get (a secret, an environment) by `actor`.
    async fn note_config(
        &self,
        actor: String,
        namespace: Option<&str>,
        change: bkg_schema::audit::ConfigChanged,
    ) -> OpResult<()> {
        use bkg_schema::audit::{AuditEvent, Details};
        let event = AuditEvent {
            namespace: namespace.map(str::to_owned),
            ..AuditEvent::new(actor, Details::ConfigChanged(change))
        };
        Ok(self.store.note(event).await?)
    }
}
