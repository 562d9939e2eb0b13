//! The sync of the agent's outbox to a shared bkg_db on PostgreSQL.
//!
//! The agent writes every state change and its signed audit line into its SQLite outbox in one
//! transaction; [`SyncWorker`] ships the outbox to PostgreSQL in seq order, one PostgreSQL
//! transaction per batch, with idempotent upserts, and only then marks the batch synced. A crash
//! between the commit and `mark_synced` replays the batch, which changes nothing. The worker keeps
//! no state of its own: after a restart it resumes from whatever the outbox still holds.
//!
//! An event bkg_db refuses (its line cannot be read, a value does not fit) is tried again, and
//! after `SyncConfig::max_attempts` parked: kept in the outbox with its reason and recorded in the
//! audit log (`sync.parked`), while the events after it go on. bkg_db then lacks that one seq, the
//! one hole the worker ships past; `bkg sync retry` ships it again.
//!
//! [`migrate`] creates the schema and its row-level security (see `docs/operations.md`), and
//! [`ensure_namespace_role`] gives a namespace a login role that sees only its own rows.

mod connect;
mod schema;
mod ship;
mod worker;

use std::future::Future;

pub use bkg_schema::sync::{ParkedEvent, SyncStatus};
pub use connect::{check_url, connect, connect_notified, describe_target, has_password};
pub use schema::{ensure_namespace_role, latest_version, migrate, namespace_role_name};
pub(crate) use ship::CHANGES_CHANNEL;
pub use worker::{SyncConfig, SyncHandle, SyncWorker, jitter};

/// One event waiting in the agent's outbox, in seq order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEvent {
    /// The agent's audit sequence number: strictly increasing, no gaps.
    pub seq: u64,
    pub agent_id: String,
    /// Empty for the agent's own records (`log.opened`, `config.changed`…): only `bkg_admin` and
    /// `bkg_agent` see those rows.
    pub namespace: String,
    /// One of `bkg_schema::audit::AuditAction`.
    pub action: String,
    pub ts_ms: u64,
    /// The exact signed audit line (JSON), stored verbatim so the chain verifies from PostgreSQL.
    /// The state it carries (a run, a sandbox, a key) is read from it with the types that wrote
    /// it (`bkg_schema::audit::Details`).
    pub line: String,
}

/// How much of the outbox is waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backlog {
    /// Events to ship, parked ones apart.
    pub events: u64,
    /// `ts_ms` of the oldest of them.
    pub oldest_ts_ms: Option<u64>,
    /// Events set aside after too many failed attempts (see [`ParkedEvent`]).
    pub parked: u64,
}

/// The agent's outbox as the worker sees it.
pub trait Outbox: Send + Sync + 'static {
    /// The oldest `limit` events neither synced nor parked, in seq order. Events already handed
    /// out come again until `mark_synced` covers them.
    fn pending(&self, limit: usize) -> impl Future<Output = Result<Vec<OutboxEvent>, SyncError>> + Send;
    /// The events `seqs` (one shipped batch) are in PostgreSQL, as of `at_ms`: kept as the last
    /// success, the same time the worker shows (`last_synced_ms` after a restart is never
    /// earlier than what was shown before it).
    fn mark_synced(&self, seqs: Vec<u64>, at_ms: u64) -> impl Future<Output = Result<(), SyncError>> + Send;
    fn backlog(&self) -> impl Future<Output = Result<Backlog, SyncError>> + Send;
    /// When `mark_synced` last marked a batch, kept across agent restarts.
    fn last_synced_ms(&self) -> impl Future<Output = Result<Option<u64>, SyncError>> + Send;
    /// bkg_db holds this agent's events only up to `seq` (it was restored from an older backup):
    /// hand out again, from `pending`, every event after `seq` the outbox still has. The worker
    /// calls it when the next pending event does not follow what bkg_db holds. Returns how many
    /// it handed out again: none when the outbox itself lacks them.
    fn requeue_after(&self, seq: u64) -> impl Future<Output = Result<u64, SyncError>> + Send;
    /// The agent id and seq of the newest event marked synced, if the outbox still has one: what
    /// bkg_db must hold at least, checked while there is nothing to ship.
    fn newest_synced(&self) -> impl Future<Output = Result<Option<(String, u64)>, SyncError>> + Send;
    /// bkg_db refused event `seq` for `reason`: count the attempt, and park the event when it has
    /// had `max_attempts`. Returns whether it was parked now.
    fn attempt_failed(
        &self,
        seq: u64,
        reason: &str,
        max_attempts: u32,
    ) -> impl Future<Output = Result<bool, SyncError>> + Send;
    /// The parked events, in seq order.
    fn parked(&self) -> impl Future<Output = Result<Vec<ParkedEvent>, SyncError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The outbox (the agent's store) failed; its error is the source.
    #[error("outbox: {0}")]
    Outbox(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("bkg_db: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("bkg_db: timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("bkg_db URL: {0}")]
    Config(String),
    #[error("bkg_db TLS: {0}")]
    Tls(String),
    /// An event bkg_db cannot take as it is; after `SyncConfig::max_attempts` it is parked.
    #[error("outbox event {seq}: {reason}")]
    Event { seq: u64, reason: String },
    /// bkg_db holds another line under this seq: a second history of the agent. Never parked:
    /// what follows would conflict too.
    #[error("outbox event {seq}: bkg_db holds a different audit line under this seq")]
    Fork { seq: u64 },
    /// The outbox would leave a hole in an agent's history in PostgreSQL.
    #[error("outbox of agent {agent_id}: event {found} follows {after}, events in between are missing")]
    Gap { agent_id: String, after: u64, found: u64 },
    #[error("namespace role: {0}")]
    Namespace(String),
    /// A login that row-level security shows only some rows to.
    #[error(
        "bkg_db login `{login}` reads only the rows row-level security gives it, not every agent's audit lines: \
         the agent's --db-url needs a login in bkg_agent or bkg_admin (docs/operations.md)"
    )]
    Restricted { login: String },
    /// The agent's id is bound to another login (migration 6): its rows are that login's to write.
    #[error(
        "agent {agent_id} writes to bkg_db as login `{bound}`, not `{login}`: give it that login again in --db-url, \
         or have an admin move it (DELETE FROM bkg_agent_logins WHERE agent_id = '{agent_id}')"
    )]
    OtherLogin { agent_id: String, bound: String, login: String },
}

/// tokio-postgres keeps the server's message in the error's source, not in its `Display`; the
/// usual causes get what to do.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    use tokio_postgres::error::SqlState;
    if let Some(db) = error.as_db_error() {
        let fix = match db.code() {
            code if *code == SqlState::INSUFFICIENT_PRIVILEGE => {
                ": the login lacks the right: migrations need the schema's owner (`BKG_DB_URL=OWNER_URL \
                 bkg-agent --migrate-db`), and an agent's login must be a member of bkg_agent \
                 (docs/operations.md)"
            }
            code if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                ": check the user and password in the bkg_db URL (BKG_DB_URL or --db-url)"
            }
            code if *code == SqlState::INVALID_CATALOG_NAME => {
                ": create that database, or fix its name in the bkg_db URL (BKG_DB_URL or --db-url)"
            }
            // A database made anew, or restored from before a migration (found by a new-user
            // trial: `relation "bkg_agent_logins" does not exist`, with no word of the fix).
            code if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_FUNCTION => {
                ": bkg_db's schema is missing or older than this agent: migrate it as its owner \
                 (`BKG_DB_URL=OWNER_URL bkg-agent --migrate-db`, docs/operations.md)"
            }
            _ => "",
        };
        return format!("{} {}: {}{fix}", db.severity(), db.code().code(), db.message());
    }
    if let Some(fix) = tls_fix(error) {
        let source = std::error::Error::source(error).map(|source| format!(": {source}")).unwrap_or_default();
        return format!("{error}{source}: {fix}");
    }
    match std::error::Error::source(error) {
        Some(source)
            if source
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) =>
        {
            format!("{error}: {source}: is PostgreSQL up, at the host and port the bkg_db URL names?")
        }
        // The server asked for a password the URL does not hold (found by a new-user trial: the
        // error alone did not say where it goes).
        Some(source) if source.to_string() == "password missing" => format!(
            "{error}: {source}: the server wants the login's password: give it in the bkg_db URL \
             (postgres://USER:PASSWORD@HOST/DB, in BKG_DB_URL rather than --db-url, which every local user can read)"
        ),
        // The resolver's words alone (found by a new-user trial: a password with an `@` made the
        // rest of it the host).
        Some(source) if source.to_string().contains("failed to lookup address") => format!(
            "{error}: the host of the bkg_db URL does not resolve: check its name (in a password, `@`, `:`, `/` \
             and `%` must be percent-encoded, `@` as `%40`)"
        ),
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// What to do about a TLS handshake rustls refused, found down `error`'s sources (tokio-postgres
/// wraps it, sometimes in an `io::Error`).
fn tls_fix(error: &tokio_postgres::Error) -> Option<&'static str> {
    use rustls::{CertificateError, Error as Tls};
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = next {
        let tls = current.downcast_ref::<Tls>().or_else(|| {
            current
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Tls>())
        });
        if let Some(Tls::InvalidCertificate(certificate)) = tls {
            return Some(match certificate {
                CertificateError::UnknownIssuer => {
                    "the server's certificate is not signed by a CA trusted here (the URL's `sslrootcert=PATH`, \
                     else the host's trust store): give the certificate of the CA that signed it as \
                     `sslrootcert=PATH` (or add it to the host's trust store); `sslmode=disable` only for a server \
                     on loopback"
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "the server's certificate is not for the host the URL names: use a name (or address) its \
                     certificate has"
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired: renew it on the server"
                }
                _ => "the server's certificate was refused: check it and the CA given as `sslrootcert=PATH`",
            });
        }
        next = current.source();
    }
    None
}

/// Whether this login reads every row of `audit_events`, as bkg_agent and bkg_admin do, and
/// its name. The roles are looked up first: an unmigrated bkg_db has none, and pg_has_role
/// fails on a role that does not exist.
const SEES_EVERY_AUDIT_LINE: &str =
    "SELECT coalesce((SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user), false)
        OR EXISTS (SELECT FROM pg_roles r WHERE r.rolname IN ('bkg_agent', 'bkg_admin')
                   AND pg_has_role(current_user, r.oid, 'MEMBER')),
    current_user::text";

/// An agent's audit lines as bkg_db holds them, in order: what `bkg audit verify --from-db`
/// checks against the agent's public key.
pub async fn audit_lines(client: &tokio_postgres::Client, agent_id: &str) -> Result<Vec<String>, SyncError> {
    // Row-level security would hand a narrower login (a namespace's role) only some of the
    // lines, and the chain's holes would read as tampering (found by a new-user trial).
    let row = client.query_one(SEES_EVERY_AUDIT_LINE, &[]).await?;
    let (sees_all, login): (bool, String) = (row.try_get(0)?, row.try_get(1)?);
    if !sees_all {
        return Err(SyncError::Restricted { login });
    }
    let rows = client.query("SELECT line FROM audit_events WHERE agent_id = $1 ORDER BY seq", &[&agent_id]).await?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}
