//! Writing one batch of outbox events into bkg_db, in one transaction, idempotently.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{OutboxEvent, SyncError};

/// Of a key's payload only these fields reach bkg_db: whatever else the agent's key record holds
/// (the key itself, above all) stays on the agent.
const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "role",
    "namespace",
    "prefix",
    "hash",
    "created_at_ms",
    "expires_at_ms",
    "rotated_at_ms",
    "revoked_at_ms",
    "rotated_from",
    "replaced_by",
    "last_used_at_ms",
];

/// Sandbox definitions may carry credentials in their environment; the shared database gets
/// everything else.
const SANDBOX_PRIVATE_FIELDS: &[&str] = &["env"];

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

// `deleted_at_ms` is set by sandbox.deleted and cleared by a later sandbox.created of the same id.
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

/// Writes `events` (one agent's, in seq order) in one transaction. Every statement is an
/// idempotent upsert, so shipping a batch twice leaves bkg_db as shipping it once.
pub(crate) async fn ship(client: &mut Client, events: &[OutboxEvent]) -> Result<(), SyncError> {
    check_contiguous(events)?;
    let transaction = client.transaction().await?;

    // The first event of each agent in the batch must continue what bkg_db holds (or replay it):
    // anything else means the outbox lost events, and shipping on would hide the hole.
    let mut firsts: BTreeMap<&str, u64> = BTreeMap::new();
    for event in events {
        firsts.entry(&event.agent_id).or_insert(event.seq);
    }
    for (agent_id, first) in &firsts {
        let row = transaction.query_one("SELECT max(seq) FROM audit_events WHERE agent_id = $1", &[agent_id]).await?;
        if let Some(last) = row.try_get::<_, Option<i64>>(0)?.map(|last| last.max(0) as u64)
            && *first > last + 1
        {
            return Err(SyncError::Gap { agent_id: (*agent_id).to_owned(), after: last, found: *first });
        }
    }

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
    for event in events {
        let (seq, ts_ms) = (int(event.seq, event.seq)?, int(event.seq, event.ts_ms)?);
        let inserted = transaction
            .execute(&insert_audit, &[&event.agent_id, &seq, &event.namespace, &event.action, &ts_ms, &event.line])
            .await?;
        // A replay brings the very same line; another line under the same seq is a second history
        // of the agent (its log reset with the key kept), and must not vanish in DO NOTHING.
        if inserted == 0 {
            let row = transaction
                .query_one("SELECT line FROM audit_events WHERE agent_id = $1 AND seq = $2", &[&event.agent_id, &seq])
                .await?;
            if row.try_get::<_, &str>(0)? != event.line {
                return Err(SyncError::Event {
                    seq: event.seq,
                    reason: "bkg_db holds a different audit line under this seq".into(),
                });
            }
        }
        if let Some((kind, params)) = state_upsert(event)? {
            let statement = match kind {
                Kind::Run => &upsert_run,
                Kind::Sandbox => &upsert_sandbox,
                Kind::Key => &upsert_key,
            };
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|param| param.as_ref() as &(dyn ToSql + Sync)).collect();
            transaction.execute(statement, &params).await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

fn check_contiguous(events: &[OutboxEvent]) -> Result<(), SyncError> {
    for pair in events.windows(2) {
        if pair[0].agent_id == pair[1].agent_id && pair[1].seq != pair[0].seq + 1 {
            return Err(SyncError::Gap { agent_id: pair[1].agent_id.clone(), after: pair[0].seq, found: pair[1].seq });
        }
    }
    Ok(())
}

type Param = Box<dyn ToSql + Sync + Send>;

/// The upsert of the state an event carries, if its action carries any.
fn state_upsert(event: &OutboxEvent) -> Result<Option<(Kind, Vec<Param>)>, SyncError> {
    let kind = match event.action.split_once('.') {
        Some(("run", _)) => Kind::Run,
        Some(("sandbox", _)) => Kind::Sandbox,
        Some(("key", _)) => Kind::Key,
        _ => return Ok(None),
    };
    let payload = Payload::new(event)?;
    let seq = int(event.seq, event.seq)?;
    let ts_ms = int(event.seq, event.ts_ms)?;
    let head: Vec<Param> = vec![
        Box::new(event.agent_id.clone()),
        Box::new(payload.id()?),
        Box::new(event.namespace.clone()),
        Box::new(seq),
    ];
    let rest: Vec<Param> = match kind {
        Kind::Run => vec![
            Box::new(payload.text("sandbox_id")?),
            Box::new(payload.text("language")?),
            Box::new(payload.json("limits")),
            Box::new(payload.int32("exit_code")?),
            Box::new(payload.int32("signal")?),
            Box::new(payload.text("killed_by")?),
            Box::new(payload.int("wall_ms")?),
            Box::new(payload.int("cpu_ms")?),
            Box::new(payload.int("peak_memory_bytes")?),
            Box::new(payload.int("started_at_ms")?),
            Box::new(payload.int("finished_at_ms")?),
            Box::new(payload.object(|_| true)),
        ],
        Kind::Sandbox => {
            let deleted_at_ms = match event.action.as_str() {
                "sandbox.deleted" => Some(payload.int("deleted_at_ms")?.unwrap_or(ts_ms)),
                _ => None,
            };
            vec![
                Box::new(payload.text("name")?),
                Box::new(payload.text("project_dir")?),
                Box::new(payload.text("language")?),
                Box::new(payload.int("created_at_ms")?),
                Box::new(ts_ms),
                Box::new(deleted_at_ms),
                Box::new(payload.object(|field| !SANDBOX_PRIVATE_FIELDS.contains(&field))),
            ]
        }
        Kind::Key => {
            let revoked_at_ms = match (event.action.as_str(), payload.int("revoked_at_ms")?) {
                ("key.revoked", None) => Some(ts_ms),
                (_, revoked) => revoked,
            };
            vec![
                Box::new(payload.text("role")?),
                Box::new(payload.text("hash")?),
                Box::new(payload.int("created_at_ms")?),
                Box::new(payload.int("expires_at_ms")?),
                Box::new(payload.int("rotated_at_ms")?),
                Box::new(revoked_at_ms),
                Box::new(payload.object(|field| KEY_FIELDS.contains(&field))),
            ]
        }
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

/// An event's payload, read leniently: a missing or null field is `None`, a field of the wrong
/// type an error naming the event.
struct Payload<'a> {
    seq: u64,
    fields: &'a Map<String, Value>,
}

impl<'a> Payload<'a> {
    fn new(event: &'a OutboxEvent) -> Result<Self, SyncError> {
        match &event.payload {
            Value::Object(fields) => Ok(Self { seq: event.seq, fields }),
            _ => Err(SyncError::Event { seq: event.seq, reason: format!("{} needs an object payload", event.action) }),
        }
    }

    fn invalid(&self, field: &str, expected: &str) -> SyncError {
        SyncError::Event { seq: self.seq, reason: format!("payload field {field:?} is not {expected}") }
    }

    fn id(&self) -> Result<String, SyncError> {
        self.text("id")?.ok_or_else(|| self.invalid("id", "a string"))
    }

    fn text(&self, field: &str) -> Result<Option<String>, SyncError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(self.invalid(field, "a string")),
        }
    }

    fn int(&self, field: &str) -> Result<Option<i64>, SyncError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or_else(|| self.invalid(field, "a 64-bit integer")),
        }
    }

    fn int32(&self, field: &str) -> Result<Option<i32>, SyncError> {
        self.int(field)?
            .map(|value| i32::try_from(value).map_err(|_| self.invalid(field, "a 32-bit integer")))
            .transpose()
    }

    fn json(&self, field: &str) -> Option<Value> {
        self.fields.get(field).filter(|value| !value.is_null()).cloned()
    }

    fn object(&self, keep: impl Fn(&str) -> bool) -> Value {
        Value::Object(
            self.fields.iter().filter(|(field, _)| keep(field)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        )
    }
}

/// PostgreSQL has no unsigned integers; a value beyond i64 is a corrupt event, not a wrap-around.
fn int(seq: u64, value: u64) -> Result<i64, SyncError> {
    i64::try_from(value).map_err(|_| SyncError::Event { seq, reason: format!("{value} does not fit a bigint") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, action: &str, payload: Value) -> OutboxEvent {
        OutboxEvent {
            seq,
            agent_id: "a1".into(),
            namespace: "ns".into(),
            action: action.into(),
            ts_ms: 1000 + seq,
            line: "{}".into(),
            payload,
        }
    }

    #[test]
    fn gaps_inside_a_batch_are_refused() {
        let events = [event(1, "login", Value::Null), event(3, "login", Value::Null)];
        assert!(matches!(check_contiguous(&events), Err(SyncError::Gap { after: 1, found: 3, .. })));
        assert!(check_contiguous(&events[..1]).is_ok());
    }

    #[test]
    fn only_state_actions_upsert_and_bad_payloads_name_their_event() -> Result<(), SyncError> {
        assert!(state_upsert(&event(1, "login", Value::Null))?.is_none());
        assert!(state_upsert(&event(2, "run.started", serde_json::json!({"id": "run_1"})))?.is_some());
        for bad in [Value::Null, serde_json::json!({"id": 7}), serde_json::json!({"id": "r", "exit_code": 1u64 << 40})]
        {
            assert!(matches!(state_upsert(&event(9, "run.finished", bad)), Err(SyncError::Event { seq: 9, .. })));
        }
        Ok(())
    }

    #[test]
    fn keys_keep_metadata_only() -> Result<(), SyncError> {
        let key = event(1, "key.created", serde_json::json!({"id": "k", "hash": "ab", "secret": "s", "key": "bkg_x"}));
        let payload = Payload::new(&key)?;
        assert_eq!(payload.object(|field| KEY_FIELDS.contains(&field)), serde_json::json!({"id": "k", "hash": "ab"}));
        Ok(())
    }
}
