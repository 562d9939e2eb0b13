//! The feed read from bkg_db: one LISTEN connection per agent wakes the readers; each reader
//! reads by position on a connection of its own, as its namespace's role when there is one.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use bkg_schema::changes::{Change, ChangeKind, ChangeSource};
use tokio::sync::watch;
use tokio_postgres::Client;

use super::FeedError;
use crate::sync::{CHANGES_CHANNEL, SyncError, connect, connect_notified, namespace_role_name};

/// Longest pause between two attempts to (re)connect the LISTEN connection: as the sync's, so
/// that a feed does not stay blind to the other agents' changes long after bkg_db is back.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(10);

/// The changes after `$1`, of namespace `$2` (all when null), of kinds `$3` (all when empty).
/// RLS filters the rows as the role the transaction runs as.
const READ: &str = "SELECT c.position, c.agent_id, c.seq, c.namespace, c.kind, c.action, c.object_id, c.ts_ms, a.line
    FROM changes c JOIN audit_events a ON a.agent_id = c.agent_id AND a.seq = c.seq
    WHERE c.position > $1 AND ($2::text IS NULL OR c.namespace = $2)
      AND (cardinality($3::text[]) = 0 OR c.kind = ANY($3::text[]))
    ORDER BY c.position LIMIT $4";

/// Starts the agent's LISTEN task; the receiver changes at every notification and after every
/// (re)connection, since notifications sent while it was down are lost. Ends on `stop`.
pub(super) fn listen(db_url: String, mut stop: watch::Receiver<bool>) -> watch::Receiver<u64> {
    let (bumps, wake) = watch::channel(0_u64);
    tokio::spawn(async move {
        let bumps = std::sync::Arc::new(bumps);
        let mut retry = Duration::from_millis(250);
        while !*stop.borrow() {
            let notified = std::sync::Arc::clone(&bumps);
            let bump = move || notified.send_modify(|count| *count = count.wrapping_add(1));
            let pause = match listening(&db_url, bump.clone()).await {
                Ok((client, driver)) => {
                    retry = Duration::from_millis(250);
                    bump();
                    tokio::select! {
                        _ = driver => tracing::warn!("the change feed's LISTEN connection to bkg_db ended"),
                        _ = stop.changed() => {}
                    }
                    drop(client);
                    retry
                }
                Err(error) => {
                    tracing::warn!(%error, "the change feed cannot LISTEN to bkg_db; trying again");
                    let pause = crate::sync::jitter(retry);
                    retry = (retry * 2).min(LISTEN_RETRY_MAX);
                    pause
                }
            };
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    });
    wake
}

async fn listening(
    db_url: &str,
    bump: impl Fn() + Send + 'static,
) -> Result<(Client, tokio::task::JoinHandle<()>), SyncError> {
    let (client, driver) = connect_notified(db_url, bump).await?;
    client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
    Ok((client, driver))
}

/// One stream's reads.
pub(super) struct Reader {
    db_url: String,
    namespace: Option<String>,
    client: Option<Client>,
    /// `SET LOCAL ROLE` to the namespace's role, when it has one this agent may become.
    set_role: Option<String>,
}

impl Reader {
    pub(super) fn new(db_url: String, namespace: Option<String>) -> Self {
        Self { db_url, namespace, client: None, set_role: None }
    }

    async fn client(&mut self) -> Result<&mut Client, FeedError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = connect(&self.db_url).await?;
            self.set_role = match &self.namespace {
                Some(namespace) => namespace_role(&client, namespace).await?,
                None => None,
            };
            self.client = Some(client);
        }
        match self.client.as_mut() {
            Some(client) => Ok(client),
            None => Err(FeedError::Db(SyncError::Config("no connection".into()))),
        }
    }

    /// The newest position of the feed, or of the reader's namespace when it has one: a
    /// namespace's reader must not learn how far the others' changes go.
    pub(super) async fn newest(&mut self) -> Result<u64, FeedError> {
        let Some(namespace) = self.namespace.clone() else { return self.newest_of_all().await };
        let rows = self
            .query_as_role("SELECT coalesce(max(position), 0) FROM changes WHERE namespace = $1", &[&namespace])
            .await?;
        let position: i64 = rows.first().map(|row| row.try_get(0)).transpose()?.unwrap_or(0);
        Ok(position.max(0) as u64)
    }

    /// The newest position of the whole feed, whatever the reader's namespace: for a reader who
    /// sees every namespace (an admin), whose cursors count every namespace's changes.
    pub(super) async fn newest_of_all(&mut self) -> Result<u64, FeedError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT position FROM bkg_change_head", &[]).await?;
        let position: i64 = row.map(|row| row.try_get(0)).transpose()?.unwrap_or(0);
        Ok(position.max(0) as u64)
    }

    /// The next `limit` changes after `after`, as the namespace's role sees them.
    pub(super) async fn read(
        &mut self,
        after: u64,
        kinds: &BTreeSet<ChangeKind>,
        limit: usize,
    ) -> Result<VecDeque<Change>, FeedError> {
        let after = i64::try_from(after).map_err(|_| FeedError::BadRequest(format!("no position {after}")))?;
        let kinds: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
        let namespace = self.namespace.clone();
        let rows = self.query_as_role(READ, &[&after, &namespace, &kinds, &(limit as i64)]).await?;
        rows.iter().map(change).collect()
    }

    /// `sql` in a transaction of its own, as the namespace's role when it has one.
    async fn query_as_role(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, FeedError> {
        // Connecting is what finds the role: it is read after.
        self.client().await?;
        let set_role = self.set_role.clone();
        let client = self.client().await?;
        let transaction = client.transaction().await?;
        if let Some(set_role) = &set_role {
            transaction.batch_execute(set_role).await?;
        }
        let rows = transaction.query(sql, params).await?;
        transaction.commit().await?;
        Ok(rows)
    }
}

/// `SET LOCAL ROLE` to the role `ensure_namespace_role` made for `namespace`, when it exists and
/// this agent's login is a member of it (through `bkg_agent`). Without one the reads are filtered
/// by namespace in the query alone, which is also done with the role.
async fn namespace_role(client: &Client, namespace: &str) -> Result<Option<String>, FeedError> {
    // No role has a name too long for PostgreSQL (`ensure_namespace_role` refuses one), which
    // refuses to look one up (found by a new-user trial: "identifier too long" ended the feed).
    let Some(role) = namespace_role_name(namespace) else { return Ok(None) };
    let row = client
        .query_one(
            "SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = $1)
                          AND pg_has_role(current_user, $1::text, 'MEMBER')
                     THEN format('SET LOCAL ROLE %I', $1::text) END,
                    EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await?;
    let (set_role, exists): (Option<String>, bool) = (row.try_get(0)?, row.try_get(1)?);
    match (&set_role, exists) {
        (Some(set_role), _) => {
            // Row-level security shows the role the rows of the namespace its mapping names: a
            // role without it (its INSERT forgotten, a database recreated or restored while the
            // roles, which are the cluster's, stayed) sees none (found by a new-user trial: the
            // feed was empty, and nothing said why).
            let mapped = client
                .simple_query(&format!(
                    "BEGIN; {set_role}; SELECT namespace FROM bkg_namespace_roles WHERE role = current_user; COMMIT"
                ))
                .await?
                .into_iter()
                .find_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                });
            if mapped.as_deref() != Some(namespace) {
                tracing::warn!(
                    %namespace,
                    "namespace role {role} is not mapped to namespace {namespace} in bkg_namespace_roles ({}): the \
                     change feed filters by namespace itself; `bkg-agent --namespace-role {namespace}` (docs/operations.md) \
                     maps it",
                    mapped.map_or_else(|| "no row".to_owned(), |other| format!("it is mapped to {other}"))
                );
                return Ok(None);
            }
        }
        // Found by a new-user trial: a role made without the grant was passed over in silence.
        (None, true) => tracing::warn!(
            %namespace,
            "namespace role {role} exists but this agent's login may not act as it: the change feed filters by \
             namespace itself; `GRANT \"{role}\" TO bkg_agent` (docs/operations.md) lets it read as the role"
        ),
        (None, false) => {
            tracing::debug!(%namespace, "no namespace role to read the change feed as: filtering by namespace only")
        }
    }
    Ok(set_role)
}

fn change(row: &tokio_postgres::Row) -> Result<Change, FeedError> {
    let unsigned = |value: i64| value.max(0) as u64;
    let kind: &str = row.try_get(4)?;
    let namespace: String = row.try_get(3)?;
    let line: &str = row.try_get(8)?;
    Ok(Change {
        position: unsigned(row.try_get(0)?),
        source: ChangeSource::BkgDb,
        kind: ChangeKind::parse(kind).unwrap_or(ChangeKind::Audit),
        action: row.try_get(5)?,
        namespace: Some(namespace).filter(|namespace| !namespace.is_empty()),
        agent_id: row.try_get(1)?,
        seq: unsigned(row.try_get(2)?),
        object_id: row.try_get(6)?,
        ts_ms: unsigned(row.try_get(7)?),
        record: serde_json::from_str(line).unwrap_or(serde_json::Value::Null),
    })
}
