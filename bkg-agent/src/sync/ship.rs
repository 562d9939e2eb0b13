//! Writing one batch of outbox events into bkg_db, in one transaction, idempotently.
//!
//! Each event's state is read from its signed line with the types that wrote it
//! (`bkg_schema::audit::Details`), and only those types' fields reach bkg_db: a key's secret or
//! hash, a sandbox's env values, are not in them.

use std::collections::{BTreeMap, BTreeSet};

use bkg_schema::audit::{Details, Parts, RunOutcome, SignedRecord};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};

use super::{OutboxEvent, SyncError};

/// A kept file of a finished run (migration 4). Its content never changes (it is named by its
/// digest), so a replay changes nothing.
const INSERT_RUN_FILE: &str = "INSERT INTO run_files (agent_id, run_id, path, namespace, seq, kind, sha256, bytes)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (agent_id, run_id, path) DO NOTHING";

/// Binds an agent id to the login writing for it, once (migration 6), in one round trip: a login
/// in bkg_admin binds nothing, as it writes every row anyway. Answers the login the id is bound
/// to (none for an admin's), this login, and whether it is an admin. The bound login is the one
/// just claimed or, if another was first, the one in the table (a statement's subqueries see the
/// table as it was before its own insert).
const CLAIM_AGENT: &str = "WITH admin AS (SELECT pg_has_role(current_user, 'bkg_admin', 'MEMBER') AS yes),
    claimed AS (
        INSERT INTO bkg_agent_logins (agent_id, role, claimed_ms)
        SELECT $1, current_user, $2 FROM admin WHERE NOT admin.yes
        ON CONFLICT (agent_id) DO NOTHING
        RETURNING role
    )
    SELECT coalesce((SELECT role FROM claimed), (SELECT role FROM bkg_agent_logins WHERE agent_id = $1))::text,
        current_user::text, (SELECT yes FROM admin)";

const INSERT_AUDIT: &str = "INSERT INTO audit_events (agent_id, seq, namespace, action, ts_ms, line)
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (agent_id, seq) DO NOTHING";

// State upserts: a field the event leaves out keeps its value; an older event (replayed) changes
// nothing, because only a higher seq updates the row.
const UPSERT_RUN: &str = "INSERT INTO runs (agent_id, id, namespace, seq, sandbox_id, language, limits, exit_code,
        signal, killed_by, wall_ms, cpu_ms, peak_memory_bytes, started_at_ms, finished_at_ms, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
    ON CONFLICT (agent_id, id) DO UPDATE SET
        namespace = EXCLUDED.namespace,
        seq = EXCLUDED.seq,
        sandbox_id = coalesce(EXCLUDED.sandbox_id, runs.sandbox_id),
        language = coalesce(EXCLUDED.language, runs.language),
        limits = coalesce(EXCLUDED.limits, runs.limits),
        exit_code = coalesce(EXCLUDED.exit_code, runs.exit_code),
        signal = coalesce(EXCLUDED.signal, runs.signal),
        killed_by = coalesce(EXCLUDED.killed_by, runs.killed_by),
        wall_ms = coalesce(EXCLUDED.wall_ms, runs.wall_ms),
        cpu_ms = coalesce(EXCLUDED.cpu_ms, runs.cpu_ms),
        peak_memory_bytes = coalesce(EXCLUDED.peak_memory_bytes, runs.peak_memory_bytes),
        started_at_ms = coalesce(EXCLUDED.started_at_ms, runs.started_at_ms),
        finished_at_ms = coalesce(EXCLUDED.finished_at_ms, runs.finished_at_ms),
        state = runs.state || EXCLUDED.state
    WHERE runs.seq < EXCLUDED.seq";

// `deleted_at_ms` is set by sandbox.deleted and cleared by a later sandbox.created (or .updated) of the same id.
const UPSERT_SANDBOX: &str = "INSERT INTO sandboxes (agent_id, id, namespace, seq, name, project_dir, language,
        created_at_ms, updated_at_ms, deleted_at_ms, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (agent_id, id) DO UPDATE SET
        namespace = EXCLUDED.namespace,
        seq = EXCLUDED.seq,
        name = coalesce(EXCLUDED.name, sandboxes.name),
        project_dir = coalesce(EXCLUDED.project_dir, sandboxes.project_dir),
        language = coalesce(EXCLUDED.language, sandboxes.language),
        created_at_ms = coalesce(sandboxes.created_at_ms, EXCLUDED.created_at_ms),
        updated_at_ms = EXCLUDED.updated_at_ms,
        deleted_at_ms = EXCLUDED.deleted_at_ms,
        state = sandboxes.state || EXCLUDED.state
    WHERE sandboxes.seq < EXCLUDED.seq";

const UPSERT_KEY: &str = "INSERT INTO keys (agent_id, id, namespace, seq, role, hash, created_at_ms, expires_at_ms,
        rotated_at_ms, revoked_at_ms, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (agent_id, id) DO UPDATE SET
        namespace = EXCLUDED.namespace,
        seq = EXCLUDED.seq,
        role = coalesce(EXCLUDED.role, keys.role),
        hash = coalesce(EXCLUDED.hash, keys.hash),
        created_at_ms = coalesce(EXCLUDED.created_at_ms, keys.created_at_ms),
        expires_at_ms = coalesce(EXCLUDED.expires_at_ms, keys.expires_at_ms),
        rotated_at_ms = coalesce(EXCLUDED.rotated_at_ms, keys.rotated_at_ms),
        revoked_at_ms = coalesce(EXCLUDED.revoked_at_ms, keys.revoked_at_ms),
        metadata = keys.metadata || EXCLUDED.metadata
    WHERE keys.seq < EXCLUDED.seq";

const UPSERT_AGENT: &str = "INSERT INTO agents (agent_id, namespace, first_seen_ms, last_seen_ms, last_seq)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (agent_id, namespace) DO UPDATE SET
        first_seen_ms = least(agents.first_seen_ms, EXCLUDED.first_seen_ms),
        last_seen_ms = greatest(agents.last_seen_ms, EXCLUDED.last_seen_ms),
        last_seq = greatest(agents.last_seq, EXCLUDED.last_seq)";

// The feed's positions: the UPDATE locks the head row until this transaction ends, so the
// positions of concurrent batches are taken, and committed, one batch after the other.
const TAKE_POSITIONS: &str = "UPDATE bkg_change_head SET position = position + $1 RETURNING position";

const INSERT_CHANGE: &str = "INSERT INTO changes (position, agent_id, seq, namespace, kind, action, object_id, ts_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Wakes the agents' change feeds; PostgreSQL delivers it at commit, and not at all on rollback.
pub(crate) const CHANGES_CHANNEL: &str = "bkg_changes";

const UPSERT_NAMESPACE: &str = "INSERT INTO namespaces (namespace, first_seen_ms, last_seen_ms) VALUES ($1, $2, $3)
    ON CONFLICT (namespace) DO UPDATE SET
        first_seen_ms = least(namespaces.first_seen_ms, EXCLUDED.first_seen_ms),
        last_seen_ms = greatest(namespaces.last_seen_ms, EXCLUDED.last_seen_ms)";

/// Seen range of a batch for one key (a namespace, or an agent and namespace).
#[derive(Clone, Copy)]
struct Seen {
    first_ms: i64,
    last_ms: i64,
    last_seq: i64,
}

impl Seen {
    fn new(ts_ms: i64, seq: i64) -> Self {
        Self { first_ms: ts_ms, last_ms: ts_ms, last_seq: seq }
    }

    fn add(&mut self, ts_ms: i64, seq: i64) {
        self.first_ms = self.first_ms.min(ts_ms);
        self.last_ms = self.last_ms.max(ts_ms);
        self.last_seq = self.last_seq.max(seq);
    }
}

/// An outbox event as read from its signed line.
struct Read {
    record: SignedRecord,
    details: Details,
}

fn event_error(seq: u64, reason: impl Into<String>) -> SyncError {
    SyncError::Event { seq, reason: reason.into() }
}

/// Reads the signed line of `event`, which must be the record the outbox row says it is.
fn read(event: &OutboxEvent) -> Result<Read, SyncError> {
    let record: SignedRecord = serde_json::from_str(&event.line)
        .map_err(|error| event_error(event.seq, format!("its audit line is not an audit record: {error}")))?;
    let matches = record.seq == event.seq
        && record.agent_id == event.agent_id
        && record.action == event.action
        && record.ts_ms == event.ts_ms
        && record.namespace.as_deref().unwrap_or_default() == event.namespace;
    if !matches {
        return Err(event_error(event.seq, "the outbox row does not match its audit line"));
    }
    let details = record.details().map_err(|error| event_error(event.seq, error.to_string()))?;
    Ok(Read { record, details })
}

/// A PostgreSQL error caused by one event's values (a value out of range, a byte text cannot
/// hold, a constraint) is that event's; anything else is the connection's or the server's.
fn refused(seq: u64, error: tokio_postgres::Error) -> SyncError {
    match error.code().map(|code| code.code()) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => event_error(seq, super::describe(&error)),
        _ => SyncError::Postgres(error),
    }
}

/// Binds `agent_id` to this login if no login has it yet; refuses, saying which login has it,
/// if another does: bkg_db would refuse every row of it (its row-level security, migration 6).
async fn claim(transaction: &tokio_postgres::Transaction<'_>, agent_id: &str) -> Result<(), SyncError> {
    let now = i64::try_from(crate::ids::now_ms()).unwrap_or(i64::MAX);
    let row = transaction.query_one(CLAIM_AGENT, &[&agent_id, &now]).await?;
    let (bound, login, admin): (Option<String>, String, bool) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    match bound {
        Some(bound) if bound != login && !admin => {
            Err(SyncError::OtherLogin { agent_id: agent_id.to_owned(), bound, login })
        }
        _ => Ok(()),
    }
}

/// The newest seq bkg_db holds of agent `agent_id` (0 for none): what a batch must continue,
/// and what an idle worker checks is still there.
pub(crate) async fn held_up_to(client: &impl GenericClient, agent_id: &str) -> Result<u64, SyncError> {
    let row = client.query_one("SELECT max(seq) FROM audit_events WHERE agent_id = $1", &[&agent_id]).await?;
    Ok(row.try_get::<_, Option<i64>>(0)?.map_or(0, |last| last.max(0) as u64))
}

/// Writes `events` (in seq order) in one transaction. Every statement is an idempotent upsert,
/// so shipping a batch twice leaves bkg_db as shipping it once. `parked` are the seqs of parked
/// events: the only holes the batch may leave in what bkg_db holds.
pub(crate) async fn ship(client: &mut Client, events: &[OutboxEvent], parked: &BTreeSet<u64>) -> Result<(), SyncError> {
    let reads = events.iter().map(read).collect::<Result<Vec<_>, _>>()?;
    let transaction = client.transaction().await?;

    // The events of each agent must continue what bkg_db holds (or replay it): anything else
    // means the outbox lost events, and shipping on would hide the hole.
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for event in events {
        if held.contains_key(event.agent_id.as_str()) {
            continue;
        }
        claim(&transaction, &event.agent_id).await?;
        held.insert(&event.agent_id, held_up_to(&transaction, &event.agent_id).await?);
    }
    check_holes(events, held, parked)?;

    // Rows shared between agents are locked in one order (sorted keys), so two agents' batches
    // never deadlock.
    let mut namespaces: BTreeMap<&str, Seen> = BTreeMap::new();
    let mut agents: BTreeMap<(&str, &str), Seen> = BTreeMap::new();
    for event in events {
        let (ts_ms, seq) = (int(event.seq, event.ts_ms)?, int(event.seq, event.seq)?);
        if !event.namespace.is_empty() {
            namespaces.entry(&event.namespace).and_modify(|seen| seen.add(ts_ms, seq)).or_insert(Seen::new(ts_ms, seq));
        }
        agents
            .entry((&event.agent_id, &event.namespace))
            .and_modify(|seen| seen.add(ts_ms, seq))
            .or_insert(Seen::new(ts_ms, seq));
    }
    let upsert_namespace = transaction.prepare(UPSERT_NAMESPACE).await?;
    for (namespace, seen) in &namespaces {
        transaction.execute(&upsert_namespace, &[namespace, &seen.first_ms, &seen.last_ms]).await?;
    }
    let upsert_agent = transaction.prepare(UPSERT_AGENT).await?;
    for ((agent_id, namespace), seen) in &agents {
        transaction
            .execute(&upsert_agent, &[agent_id, namespace, &seen.first_ms, &seen.last_ms, &seen.last_seq])
            .await?;
    }

    let insert_audit = transaction.prepare(INSERT_AUDIT).await?;
    let (upsert_run, upsert_sandbox, upsert_key) = (
        transaction.prepare(UPSERT_RUN).await?,
        transaction.prepare(UPSERT_SANDBOX).await?,
        transaction.prepare(UPSERT_KEY).await?,
    );
    let mut new_events = Vec::new();
    for (event, read) in events.iter().zip(&reads) {
        let (seq, ts_ms) = (int(event.seq, event.seq)?, int(event.seq, event.ts_ms)?);
        let inserted = transaction
            .execute(&insert_audit, &[&event.agent_id, &seq, &event.namespace, &event.action, &ts_ms, &event.line])
            .await
            .map_err(|error| refused(event.seq, error))?;
        // A replay brings the very same line; another line under the same seq is a second history
        // of the agent (its log reset with the key kept), and must not vanish in DO NOTHING.
        if inserted == 0 {
            let row = transaction
                .query_one("SELECT line FROM audit_events WHERE agent_id = $1 AND seq = $2", &[&event.agent_id, &seq])
                .await?;
            if row.try_get::<_, &str>(0)? != event.line {
                return Err(SyncError::Fork { seq: event.seq });
            }
        } else {
            new_events.push((event, read));
        }
        if let Some((kind, params)) = state_upsert(event, read)? {
            let statement = match kind {
                Kind::Run => &upsert_run,
                Kind::Sandbox => &upsert_sandbox,
                Kind::Key => &upsert_key,
            };
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|param| param.as_ref() as &(dyn ToSql + Sync)).collect();
            transaction.execute(statement, &params).await.map_err(|error| refused(event.seq, error))?;
        }
        insert_run_files(&transaction, event, read).await?;
    }
    append_changes(&transaction, &new_events).await?;
    transaction.commit().await?;
    Ok(())
}

/// Gives each event new to bkg_db the next position of the change feed, in seq order. Taken
/// last, the head's lock is held only while the batch commits, and never before another lock
/// (no deadlock with another agent's batch).
async fn append_changes(
    transaction: &tokio_postgres::Transaction<'_>,
    new_events: &[(&OutboxEvent, &Read)],
) -> Result<(), SyncError> {
    if new_events.is_empty() {
        return Ok(());
    }
    // An event can be new to audit_events and not to the feed: bkg_db lost the one and kept the
    // other (a partial restore). Its change stays where it was, never twice in the feed.
    let agents: Vec<&str> = new_events.iter().map(|(event, _)| event.agent_id.as_str()).collect();
    let seqs = new_events.iter().map(|(event, _)| int(event.seq, event.seq)).collect::<Result<Vec<_>, _>>()?;
    let known: BTreeSet<(String, i64)> = transaction
        .query(
            "SELECT c.agent_id, c.seq FROM changes c
             JOIN unnest($1::text[], $2::bigint[]) AS e(agent_id, seq) ON c.agent_id = e.agent_id AND c.seq = e.seq",
            &[&agents, &seqs],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let new_events: Vec<_> =
        new_events.iter().filter(|(event, _)| !known.contains(&(event.agent_id.clone(), event.seq as i64))).collect();
    if new_events.is_empty() {
        return Ok(());
    }
    let count = new_events.len() as i64;
    let last: i64 = transaction.query_one(TAKE_POSITIONS, &[&count]).await?.try_get(0)?;
    let insert = transaction.prepare(INSERT_CHANGE).await?;
    for (position, (event, read)) in (last - count + 1..).zip(new_events) {
        let (seq, ts_ms) = (int(event.seq, event.seq)?, int(event.seq, event.ts_ms)?);
        let kind = bkg_schema::changes::ChangeKind::of_action(&event.action).as_str();
        let object_id = read.record.subject_given(Some(&read.details));
        transaction
            .execute(
                &insert,
                &[&position, &event.agent_id, &seq, &event.namespace, &kind, &event.action, &object_id, &ts_ms],
            )
            .await
            .map_err(|error| refused(event.seq, error))?;
    }
    transaction.execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &last.to_string()]).await?;
    Ok(())
}

/// The rows of `run_files` a finished run's event carries.
async fn insert_run_files(
    transaction: &tokio_postgres::Transaction<'_>,
    event: &OutboxEvent,
    read: &Read,
) -> Result<(), SyncError> {
    let Details::RunFinished(finished) = &read.details else { return Ok(()) };
    let RunOutcome::Ended(end) = &finished.outcome else { return Ok(()) };
    let Some(run_id) = &read.record.run else { return Ok(()) };
    let seq = int(event.seq, event.seq)?;
    for file in &end.files {
        let bytes = int(event.seq, file.bytes)?;
        transaction
            .execute(
                INSERT_RUN_FILE,
                &[
                    &event.agent_id,
                    run_id,
                    &file.path,
                    &event.namespace,
                    &seq,
                    &file.kind.as_str(),
                    &file.sha256,
                    &bytes,
                ],
            )
            .await
            .map_err(|error| refused(event.seq, error))?;
    }
    Ok(())
}

/// Checks that, once `events` are in, bkg_db holds every seq of each agent up to the highest
/// except parked ones. `held` is the highest seq bkg_db holds per agent (0 for none).
fn check_holes<'a>(
    events: &'a [OutboxEvent],
    mut held: BTreeMap<&'a str, u64>,
    parked: &BTreeSet<u64>,
) -> Result<(), SyncError> {
    for event in events {
        let last = held.entry(&event.agent_id).or_insert(0);
        if event.seq > *last + 1 && parked.range(*last + 1..event.seq).count() as u64 != event.seq - *last - 1 {
            return Err(SyncError::Gap { agent_id: event.agent_id.clone(), after: *last, found: event.seq });
        }
        *last = (*last).max(event.seq);
    }
    Ok(())
}

type Param = Box<dyn ToSql + Sync + Send>;

/// `outcome` and `details` of the record, merged into one object: the state a run row keeps.
fn merged(parts: Parts) -> Value {
    let mut state = Map::new();
    for part in [parts.details, parts.outcome].into_iter().flatten() {
        if let Value::Object(fields) = part {
            state.extend(fields);
        }
    }
    Value::Object(state)
}

/// The upsert of the state an event carries, if its kind carries any.
fn state_upsert(event: &OutboxEvent, read: &Read) -> Result<Option<(Kind, Vec<Param>)>, SyncError> {
    let (seq, ts_ms) = (int(event.seq, event.seq)?, int(event.seq, event.ts_ms)?);
    let record = &read.record;
    let parts = read.details.encode().map_err(|error| event_error(event.seq, error.to_string()))?;
    let head = |id: Option<&String>, what: &str| -> Result<Vec<Param>, SyncError> {
        let id = id.ok_or_else(|| event_error(event.seq, format!("{} names no {what}", event.action)))?;
        Ok(vec![
            Box::new(event.agent_id.clone()),
            Box::new(id.clone()),
            Box::new(event.namespace.clone()),
            Box::new(seq),
        ])
    };
    let (kind, head, rest): (Kind, Vec<Param>, Vec<Param>) = match &read.details {
        Details::RunStarted(started) => (
            Kind::Run,
            head(record.run.as_ref(), "run")?,
            vec![
                Box::new(record.sandbox.clone()),
                Box::new(Some(started.language.as_str())),
                Box::new(record.limits.clone()),
                Box::new(None::<i32>),
                Box::new(None::<i32>),
                Box::new(None::<String>),
                Box::new(None::<i64>),
                Box::new(None::<i64>),
                Box::new(None::<i64>),
                Box::new(Some(int(event.seq, started.started_at_ms)?)),
                Box::new(None::<i64>),
                Box::new(merged(parts)),
            ],
        ),
        Details::RunFinished(finished) => {
            let end = match &finished.outcome {
                RunOutcome::Ended(end) => Some(end),
                RunOutcome::Failed { .. } => None,
            };
            let optional = |value: Option<u64>| value.map(|value| int(event.seq, value)).transpose();
            (
                Kind::Run,
                head(record.run.as_ref(), "run")?,
                vec![
                    Box::new(record.sandbox.clone()),
                    Box::new(finished.details.language.map(|language| language.as_str())),
                    Box::new(record.limits.clone()),
                    Box::new(end.and_then(|end| end.exit_code)),
                    Box::new(end.and_then(|end| end.signal)),
                    Box::new(end.and_then(|end| end.killed_by).map(|killed_by| killed_by.as_str())),
                    Box::new(optional(end.map(|end| end.wall_ms))?),
                    Box::new(optional(end.map(|end| end.cpu_ms))?),
                    Box::new(optional(end.map(|end| end.peak_memory_bytes))?),
                    Box::new(None::<i64>),
                    Box::new(Some(int(event.seq, finished.details.finished_at_ms)?)),
                    Box::new(merged(parts)),
                ],
            )
        }
        Details::RunInterrupted(interrupted) => (
            Kind::Run,
            head(record.run.as_ref(), "run")?,
            vec![
                Box::new(record.sandbox.clone()),
                Box::new(interrupted.language.map(|language| language.as_str())),
                Box::new(record.limits.clone()),
                Box::new(None::<i32>),
                Box::new(None::<i32>),
                Box::new(Some(bkg_schema::KilledBy::Interrupted.as_str())),
                Box::new(None::<i64>),
                Box::new(None::<i64>),
                Box::new(None::<i64>),
                Box::new(Some(int(event.seq, interrupted.started_at_ms)?)),
                Box::new(Some(int(event.seq, interrupted.finished_at_ms)?)),
                Box::new(merged(parts)),
            ],
        ),
        Details::SandboxCreated(created) | Details::SandboxUpdated(created) => (
            Kind::Sandbox,
            head(record.sandbox.as_ref(), "sandbox")?,
            vec![
                Box::new(Some(created.name.clone())),
                Box::new(Some(created.project_dir.clone())),
                Box::new(Some(created.language.as_str())),
                Box::new(Some(ts_ms)),
                Box::new(ts_ms),
                Box::new(None::<i64>),
                Box::new(parts.details.unwrap_or_else(|| Value::Object(Map::new()))),
            ],
        ),
        Details::SandboxDeleted(_) => (
            Kind::Sandbox,
            head(record.sandbox.as_ref(), "sandbox")?,
            vec![
                Box::new(None::<String>),
                Box::new(None::<String>),
                Box::new(None::<String>),
                Box::new(None::<i64>),
                Box::new(ts_ms),
                Box::new(Some(ts_ms)),
                Box::new(Value::Object(Map::new())),
            ],
        ),
        Details::KeyCreated(key) | Details::Login(key) | Details::KeyRotated(key) | Details::KeyRevoked(key) => {
            let (created, rotated, revoked) = match &read.details {
                Details::KeyRotated(_) => (None, Some(ts_ms), None),
                Details::KeyRevoked(_) => (None, None, Some(ts_ms)),
                _ => (Some(ts_ms), None, None),
            };
            (
                Kind::Key,
                head(Some(&key.key_id), "key")?,
                vec![
                    Box::new(Some(key.role.as_str())),
                    Box::new(None::<String>),
                    Box::new(created),
                    Box::new(Some(int(event.seq, key.expires_at_ms)?)),
                    Box::new(rotated),
                    Box::new(revoked),
                    Box::new(parts.details.unwrap_or_else(|| Value::Object(Map::new()))),
                ],
            )
        }
        Details::ConfigChanged(_)
        | Details::LoginRefused(_)
        | Details::SyncError(_)
        | Details::SyncParked(_)
        | Details::SyncRetried(_)
        | Details::LogOpened(_)
        | Details::LogRecovered(_) => return Ok(None),
    };
    Ok(Some((kind, head.into_iter().chain(rest).collect())))
}

/// Which state table an event's upsert goes to.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Run,
    Sandbox,
    Key,
}

/// PostgreSQL has no unsigned integers; a value beyond i64 is a corrupt event, not a wrap-around.
fn int(seq: u64, value: u64) -> Result<i64, SyncError> {
    i64::try_from(value).map_err(|_| event_error(seq, format!("{value} does not fit a bigint")))
}

#[cfg(test)]
mod tests {
    use bkg_schema::audit::{AuditEvent, AuditSigner, ChainHead, KeyChange};
    use bkg_schema::auth::Role;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn event(seq: u64) -> OutboxEvent {
        OutboxEvent {
            seq,
            agent_id: "a1".into(),
            namespace: "ns".into(),
            action: "login".into(),
            ts_ms: 1000 + seq,
            line: "{}".into(),
        }
    }

    #[test]
    fn holes_are_refused_unless_parked() {
        let none = BTreeSet::new();
        let held = |last: u64| BTreeMap::from([("a1", last)]);
        let events = [event(1), event(3)];
        assert!(matches!(check_holes(&events, held(0), &none), Err(SyncError::Gap { after: 1, found: 3, .. })));
        assert!(check_holes(&events, held(0), &BTreeSet::from([2])).is_ok());
        assert!(matches!(check_holes(&events[1..], held(0), &none), Err(SyncError::Gap { after: 0, found: 3, .. })));
        // A retried event below what bkg_db holds, then the next new one.
        assert!(check_holes(&[event(2), event(6)], held(5), &none).is_ok());
        assert!(matches!(check_holes(&[event(8)], held(5), &BTreeSet::from([6])), Err(SyncError::Gap { .. })));
    }

    /// A key event signed by the agent's own writer is read by the shipper as a key.
    #[test]
    fn a_key_event_is_read_with_the_types_that_wrote_it() -> TestResult {
        let signer = AuditSigner::from_secret(&[3; 32]);
        let change = KeyChange { key_id: "key_1".into(), role: Role::Namespace, expires_at_ms: 9, deleted: false };
        let written =
            AuditEvent { namespace: Some("ns".into()), ..AuditEvent::new("uid:0", Details::KeyCreated(change)) };
        let signed = signer.sign(ChainHead::GENESIS, 1001, &written)?;
        let outbox = OutboxEvent {
            seq: 1,
            agent_id: signer.agent_id().into(),
            namespace: "ns".into(),
            action: "key.created".into(),
            ts_ms: 1001,
            line: String::from_utf8(signed.line().to_vec())?,
        };
        let read = read(&outbox)?;
        assert!(matches!(state_upsert(&outbox, &read)?, Some((Kind::Key, _))));
        let torn = OutboxEvent { line: outbox.line[..40].to_owned(), ..outbox.clone() };
        assert!(matches!(read_error(&torn), Some(SyncError::Event { seq: 1, .. })));
        let mislabelled = OutboxEvent { action: "key.revoked".into(), ..outbox };
        assert!(matches!(read_error(&mislabelled), Some(SyncError::Event { seq: 1, .. })));
        Ok(())
    }

    fn read_error(event: &OutboxEvent) -> Option<SyncError> {
        read(event).err()
    }
}
