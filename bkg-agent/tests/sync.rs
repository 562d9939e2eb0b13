//! The sync of an agent's outbox to bkg_db, against a real PostgreSQL: row-level security per
//! namespace, idempotent replays, an outage and a restart, two agents at once, and concurrent
//! migrations.
//!
//! The tests start their own throwaway clusters with `scripts/postgres.sh` (PostgreSQL must be
//! installed: `scripts/setup.sh`): one shared by all test processes (one under `cargo test`, one
//! per test under nextest), each test in a database of its own, and one more for the outage test,
//! which stops and restarts its server. A watcher stops the clusters and deletes them once the
//! processes using them have exited. The outbox is an in-memory stand-in for the agent's SQLite
//! one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bkg_agent::sync::{
    self, Backlog, Outbox, OutboxEvent, ParkedEvent, SyncConfig, SyncError, SyncHandle, SyncStatus, SyncWorker,
};
use bkg_schema::audit::{
    AuditEvent, AuditSigner, ChainHead, Details, KeyChange, RunEnd, RunFinished, RunFinishedDetails, RunOutcome,
    RunStarted, SandboxCreated,
};
use bkg_schema::auth::Role;
use bkg_schema::sandbox::SandboxDefinition;
use bkg_schema::{Language, Limits};
use tokio::sync::OnceCell;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres.sh");
/// Login roles of the tests, members of the group roles the migration creates.
const AGENT_ROLE: (&str, &str) = ("bkg_test_agent", "agent-secret");
const ADMIN_ROLE: (&str, &str) = ("bkg_test_admin", "admin-secret");
/// Every table a namespace's rows live in.
const DATA_TABLES: &[&str] = &["namespaces", "agents", "sandboxes", "runs", "keys", "audit_events"];

// ---------------------------------------------------------------------------------------------
// Clusters and databases

struct Cluster {
    dir: PathBuf,
    port: u16,
    password: String,
}

impl Cluster {
    /// Starts the cluster in the temp dir's `name` (or joins it, when another test process
    /// started it); it is gone once every process that joined has exited.
    fn start(name: &str) -> Result<Self, BoxError> {
        let dir = std::env::temp_dir().join(name);
        script("start", &dir)?;
        let url = script("url", &dir)?;
        let config = tokio_postgres::Config::from_str(&url)?;
        let port = *config.get_ports().first().ok_or("no port in the cluster's URL")?;
        let password = String::from_utf8(config.get_password().ok_or("no password in the cluster's URL")?.to_vec())?;
        Ok(Self { dir, port, password })
    }

    fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{}?sslmode=disable", self.port, database_name(database))
    }

    fn superuser(&self, database: &str) -> String {
        self.url("postgres", &self.password, database)
    }

    fn stop(&self) -> Result<(), BoxError> {
        script("stop", &self.dir).map(drop)
    }

    fn restart(&self) -> Result<(), BoxError> {
        script("start", &self.dir).map(drop)
    }

    /// Serializes, across test processes, what changes roles: roles belong to the cluster, and
    /// the advisory locks of migrations and of `ensure_namespace_role` are per database. Held
    /// until the returned connection is dropped.
    async fn lock(&self) -> Result<Client, BoxError> {
        let client = sync::connect(&self.superuser("postgres")).await?;
        client.execute("SELECT pg_advisory_lock(7)", &[]).await?;
        Ok(client)
    }

    /// Creates, once per cluster, the group roles (by migrating a database for the purpose) and
    /// the login roles of the tests.
    async fn create_test_roles(&self) -> TestResult {
        let lock = self.lock().await?;
        if count(&lock, "SELECT count(*) FROM pg_roles WHERE rolname = 'bkg_test_agent'").await? > 0 {
            return Ok(());
        }
        let mut client = self.create_database("bkg_roles").await?;
        sync::migrate(&mut client).await?;
        for (role, password) in [AGENT_ROLE, ADMIN_ROLE] {
            let group = if role == AGENT_ROLE.0 { "bkg_agent" } else { "bkg_admin" };
            client.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE {group}")).await?;
        }
        Ok(())
    }

    /// Creates an empty database and returns a superuser connection to it.
    async fn create_database(&self, name: &str) -> Result<Client, BoxError> {
        let postgres = sync::connect(&self.superuser("postgres")).await?;
        postgres.batch_execute(&format!("CREATE DATABASE {}", database_name(name))).await?;
        Ok(sync::connect(&self.superuser(name)).await?)
    }

    /// A new database, migrated by the superuser.
    async fn migrated_database(&self, name: &str) -> Result<Client, BoxError> {
        let mut client = self.create_database(name).await?;
        sync::migrate(&mut client).await?;
        Ok(client)
    }
}

/// Test processes share a cluster (nextest runs each test in a process of its own): each names
/// its databases after itself.
fn database_name(name: &str) -> String {
    if name == "postgres" { name.to_owned() } else { format!("{name}_{}", std::process::id()) }
}

fn script(command: &str, dir: &std::path::Path) -> Result<String, BoxError> {
    let output = Command::new("bash")
        .arg(SCRIPT)
        .arg(command)
        .arg(dir)
        .env("BKG_PG_OWNER_PID", std::process::id().to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "scripts/postgres.sh {command} failed (is PostgreSQL installed? scripts/setup.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

static SHARED: OnceCell<Cluster> = OnceCell::const_new();

/// The cluster most tests share, each in a database of its own.
async fn shared() -> Result<&'static Cluster, BoxError> {
    SHARED
        .get_or_try_init(|| async {
            let cluster = Cluster::start("bkg-sync-tests")?;
            cluster.create_test_roles().await?;
            Ok::<_, BoxError>(cluster)
        })
        .await
}

async fn count(client: &Client, sql: &str) -> Result<i64, BoxError> {
    Ok(client.query_one(sql, &[]).await?.try_get(0)?)
}

// ---------------------------------------------------------------------------------------------
// An in-memory outbox and the histories it holds

#[derive(Default)]
struct State {
    events: Vec<OutboxEvent>,
    synced: BTreeSet<u64>,
    /// Failed attempts per seq, and the parked events with their reasons.
    attempts: BTreeMap<u64, u32>,
    parked: BTreeMap<u64, String>,
    /// The next this many `mark_synced` calls fail, as if the agent's store had.
    failing_marks: u32,
    /// The highest seq of every batch marked, in call order.
    marks: Vec<u64>,
}

impl State {
    fn waiting(&self) -> impl Iterator<Item = &OutboxEvent> {
        self.events.iter().filter(|event| !self.synced.contains(&event.seq) && !self.parked.contains_key(&event.seq))
    }
}

#[derive(Clone, Default)]
struct MemOutbox(Arc<Mutex<State>>);

impl MemOutbox {
    fn with(events: Vec<OutboxEvent>) -> Self {
        Self(Arc::new(Mutex::new(State { events, ..State::default() })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, events: Vec<OutboxEvent>) {
        self.state().events.extend(events);
    }
}

impl Outbox for MemOutbox {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEvent>, SyncError> {
        Ok(self.state().waiting().take(limit).cloned().collect())
    }

    async fn mark_synced(&self, seqs: Vec<u64>, _at_ms: u64) -> Result<(), SyncError> {
        let mut state = self.state();
        if state.failing_marks > 0 {
            state.failing_marks -= 1;
            return Err(SyncError::Outbox("the store is busy (injected)".into()));
        }
        state.marks.push(seqs.iter().copied().max().unwrap_or(0));
        state.synced.extend(seqs);
        Ok(())
    }

    async fn requeue_after(&self, seq: u64) -> Result<u64, SyncError> {
        let mut state = self.state();
        let before = state.synced.len();
        state.synced.retain(|synced| *synced <= seq);
        Ok((before - state.synced.len()) as u64)
    }

    async fn newest_synced(&self) -> Result<Option<(String, u64)>, SyncError> {
        let state = self.state();
        let newest = state.synced.iter().copied().max();
        Ok(newest.and_then(|seq| {
            state.events.iter().find(|event| event.seq == seq).map(|event| (event.agent_id.clone(), seq))
        }))
    }

    async fn backlog(&self) -> Result<Backlog, SyncError> {
        let state = self.state();
        let waiting: Vec<_> = state.waiting().collect();
        Ok(Backlog {
            events: waiting.len() as u64,
            oldest_ts_ms: waiting.first().map(|event| event.ts_ms),
            parked: state.parked.len() as u64,
        })
    }

    /// Kept only as long as the test's outbox lives: no earlier worker shipped from it.
    async fn last_synced_ms(&self) -> Result<Option<u64>, SyncError> {
        Ok(None)
    }

    async fn attempt_failed(&self, seq: u64, reason: &str, max_attempts: u32) -> Result<bool, SyncError> {
        let mut state = self.state();
        let attempts = state.attempts.entry(seq).or_insert(0);
        *attempts += 1;
        if *attempts < max_attempts {
            return Ok(false);
        }
        state.parked.insert(seq, reason.to_owned());
        Ok(true)
    }

    async fn parked(&self) -> Result<Vec<ParkedEvent>, SyncError> {
        let state = self.state();
        Ok(state
            .parked
            .iter()
            .map(|(seq, reason)| ParkedEvent {
                seq: *seq,
                action: String::new(),
                attempts: state.attempts.get(seq).copied().unwrap_or(0),
                reason: reason.clone(),
                parked_at_ms: 0,
            })
            .collect())
    }
}

/// An agent's history as its audit log writes it: signed lines of typed records.
struct History {
    signer: AuditSigner,
    head: ChainHead,
    agent_id: String,
    events: Vec<OutboxEvent>,
}

impl History {
    /// A history signed by a key of its own, made from `name`.
    fn new(name: &str) -> Self {
        let mut seed = [7u8; 32];
        for (index, byte) in name.bytes().enumerate() {
            seed[index % 32] = seed[index % 32].wrapping_mul(31).wrapping_add(byte);
        }
        let signer = AuditSigner::from_secret(&seed);
        let agent_id = signer.agent_id().to_owned();
        let mut history = Self { signer, head: ChainHead::GENESIS, agent_id, events: Vec::new() };
        let opened = AuditEvent::log_opened(history.signer.public_key(), None);
        history.push(opened);
        history
    }

    fn push(&mut self, event: AuditEvent) {
        let seq = self.head.next_seq;
        // Recent, so that the lag the status reports is small but not zero.
        let ts_ms = bkg_agent::ids::now_ms() - 60_000 + seq;
        let signed = self.signer.sign(self.head, ts_ms, &event).expect("a record signs");
        self.head = signed.next();
        self.events.push(OutboxEvent {
            seq,
            agent_id: self.agent_id.clone(),
            namespace: event.namespace.clone().unwrap_or_default(),
            action: event.action().as_str().to_owned(),
            ts_ms,
            line: String::from_utf8_lossy(signed.line()).into_owned(),
        });
    }

    fn key(&mut self, namespace: &str, kind: fn(KeyChange) -> Details) {
        let change = KeyChange {
            key_id: format!("key-{namespace}"),
            role: Role::Namespace,
            expires_at_ms: 1 << 40,
            deleted: false,
        };
        self.push(AuditEvent { namespace: Some(namespace.into()), ..AuditEvent::new("uid:0", kind(change)) });
    }

    /// A sandbox and a key per namespace, `runs` runs spread over the namespaces, then the keys
    /// revoked and a login each.
    fn with_runs(name: &str, namespaces: &[&str], runs: usize) -> Self {
        let mut history = Self::new(name);
        for namespace in namespaces {
            let definition = SandboxDefinition {
                env: BTreeMap::from([("TOKEN".into(), "do-not-ship".into())]),
                ..SandboxDefinition::new("api".into(), (*namespace).into(), "/srv/app".into(), Language::Python)
            };
            history.push(AuditEvent {
                namespace: Some((*namespace).into()),
                sandbox: Some(format!("sb-{namespace}")),
                ..AuditEvent::new("uid:0", Details::SandboxCreated(SandboxCreated::from(&definition)))
            });
            history.key(namespace, Details::KeyCreated);
        }
        history.add_runs(namespaces, 0..runs);
        for namespace in namespaces {
            history.key(namespace, Details::KeyRevoked);
            history.key(namespace, Details::Login);
        }
        history
    }

    fn add_runs(&mut self, namespaces: &[&str], runs: std::ops::Range<usize>) {
        for index in runs {
            let namespace = namespaces[index % namespaces.len()];
            let run = AuditEvent {
                namespace: Some(namespace.into()),
                sandbox: Some(format!("sb-{namespace}")),
                run: Some(format!("run-{}-{index}", self.agent_id)),
                limits: Some(Limits::DEFAULT),
                ..AuditEvent::new(
                    "uid:0",
                    Details::RunStarted(RunStarted { language: Language::Python, started_at_ms: index as u64 }),
                )
            };
            self.push(run.clone());
            let end = RunEnd {
                exit_code: Some(0),
                signal: None,
                killed_by: None,
                wall_ms: 12,
                cpu_ms: 5,
                peak_memory_bytes: 1 << 20,
                disk_bytes_used: 0,
                stdout_bytes: 2,
                stderr_bytes: 0,
                truncated: false,
                files: Vec::new(),
            };
            let finished = RunFinished {
                outcome: RunOutcome::Ended(end),
                details: RunFinishedDetails {
                    language: Some(Language::Python),
                    finished_at_ms: index as u64 + 12,
                    denials: Vec::new(),
                    network_denials: Vec::new(),
                },
            };
            self.push(AuditEvent { details: Details::RunFinished(finished), ..run });
        }
    }

    fn runs(&self) -> i64 {
        self.events.iter().filter(|event| event.action == "run.started").count() as i64
    }
}

fn fast(db_url: String) -> SyncConfig {
    SyncConfig {
        batch: 25,
        idle_poll: Duration::from_millis(50),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        timeout: Duration::from_secs(10),
        ..SyncConfig::new(db_url)
    }
}

/// Waits until `check` holds, at most `limit`.
async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Result<bool, BoxError>) -> TestResult {
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drained(handle: &SyncHandle<MemOutbox>) -> TestResult {
    eventually("the outbox is drained", Duration::from_secs(30), async || Ok(handle.status().await?.backlog == 0)).await
}

/// What bkg_db holds of an agent's audit trail: every `(seq, line)`, in seq order.
async fn audit_trail(client: &Client, agent_id: &str) -> Result<Vec<(i64, String)>, BoxError> {
    let rows =
        client.query("SELECT seq, line FROM audit_events WHERE agent_id = $1 ORDER BY seq", &[&agent_id]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

fn expected_trail(events: &[OutboxEvent]) -> Vec<(i64, String)> {
    events.iter().map(|event| (event.seq as i64, event.line.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// Row-level security: a database with the rows of two namespaces, and a role for each

struct RlsDb {
    superuser: String,
    admin: String,
    namespace_a: String,
    namespace_b: String,
}

const NS_A: &str = "rls-a";
const NS_B: &str = "rls-b";

static RLS: OnceCell<RlsDb> = OnceCell::const_new();

async fn rls_db() -> Result<&'static RlsDb, BoxError> {
    RLS.get_or_try_init(|| async {
        let cluster = shared().await?;
        let mut superuser = cluster.migrated_database("t_rls").await?;
        let history = History::with_runs("agent-rls", &[NS_A, NS_B], 6);
        let handle =
            SyncWorker::spawn(MemOutbox::with(history.events), fast(cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_rls")));
        drained(&handle).await?;
        handle.stop().await;
        let lock = cluster.lock().await?;
        let role_a = sync::ensure_namespace_role(&mut superuser, NS_A, "password-a").await?;
        let role_b = sync::ensure_namespace_role(&mut superuser, NS_B, "password-b").await?;
        drop(lock);
        Ok::<_, BoxError>(RlsDb {
            superuser: cluster.superuser("t_rls"),
            admin: cluster.url(ADMIN_ROLE.0, ADMIN_ROLE.1, "t_rls"),
            namespace_a: cluster.url(&role_a, "password-a", "t_rls"),
            namespace_b: cluster.url(&role_b, "password-b", "t_rls"),
        })
    })
    .await
}

/// A row of `table` in `namespace`, as an INSERT.
fn insert_row(table: &str, namespace: &str) -> String {
    match table {
        // The namespace is the key: its own row exists, so this updates it; another's is refused
        // before the conflict is looked at.
        "namespaces" => {
            format!(
                "INSERT INTO namespaces VALUES ('{namespace}', 1, 1) ON CONFLICT (namespace) DO UPDATE SET first_seen_ms = 1"
            )
        }
        "agents" => format!("INSERT INTO agents VALUES ('agent-new', '{namespace}', 1, 1, 1)"),
        "sandboxes" => format!(
            "INSERT INTO sandboxes (agent_id, id, namespace, seq, updated_at_ms, state) VALUES ('agent-new', 'x', '{namespace}', 1, 1, '{{}}')"
        ),
        "runs" => format!(
            "INSERT INTO runs (agent_id, id, namespace, seq, state) VALUES ('agent-new', 'x', '{namespace}', 1, '{{}}')"
        ),
        "keys" => format!(
            "INSERT INTO keys (agent_id, id, namespace, seq, metadata) VALUES ('agent-new', 'x', '{namespace}', 1, '{{}}')"
        ),
        _ => format!("INSERT INTO audit_events VALUES ('agent-new', 1, '{namespace}', 'login', 1, '{{}}')"),
    }
}

fn is_denied(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
}

#[tokio::test]
async fn a_namespace_role_selects_only_its_own_rows_in_every_table() -> TestResult {
    let db = rls_db().await?;
    let superuser = sync::connect(&db.superuser).await?;
    for (url, own, other) in [(&db.namespace_a, NS_A, NS_B), (&db.namespace_b, NS_B, NS_A)] {
        let client = sync::connect(url).await?;
        for table in DATA_TABLES {
            let theirs = count(&client, &format!("SELECT count(*) FROM {table} WHERE namespace <> '{own}'")).await?;
            assert_eq!(theirs, 0, "{own} sees rows of others in {table}");
            let asked = count(&client, &format!("SELECT count(*) FROM {table} WHERE namespace = '{other}'")).await?;
            assert_eq!(asked, 0, "{own} sees {other}'s rows in {table} when it asks for them");
            let mine = count(&client, &format!("SELECT count(*) FROM {table}")).await?;
            let all_mine =
                count(&superuser, &format!("SELECT count(*) FROM {table} WHERE namespace = '{own}'")).await?;
            assert!(mine > 0 && mine == all_mine, "{own} sees {mine} of its {all_mine} rows in {table}");
        }
        // The mapping table shows a role its own namespace only.
        let mapped: Vec<String> = client
            .query("SELECT namespace FROM bkg_namespace_roles", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(mapped, [own]);
    }
    Ok(())
}

/// A namespace role reads its rows and writes none, its own namespace's included (migration 5):
/// the rows are the agents' records, and one it could write it could freeze (a key row whose seq
/// it raised would never take the agent's revocation).
#[tokio::test]
async fn a_namespace_role_writes_no_row_of_any_namespace() -> TestResult {
    let db = rls_db().await?;
    let client = sync::connect(&db.namespace_a).await?;
    for table in DATA_TABLES {
        for namespace in [NS_A, NS_B] {
            let writes = [
                insert_row(table, namespace),
                format!("UPDATE {table} SET namespace = namespace WHERE namespace = '{namespace}'"),
                format!("DELETE FROM {table} WHERE namespace = '{namespace}'"),
            ];
            for write in writes {
                let result = client.execute(&write, &[]).await;
                assert!(result.as_ref().is_err_and(is_denied), "{table}, {namespace}: {write}: {result:?}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_namespace_role_cannot_pick_another_namespace() -> TestResult {
    let db = rls_db().await?;
    let client = sync::connect(&db.namespace_a).await?;
    let remap = client.execute(&format!("UPDATE bkg_namespace_roles SET namespace = '{NS_B}'"), &[]).await;
    assert!(remap.as_ref().is_err_and(is_denied), "remapped itself: {remap:?}");
    let add =
        client.execute(&format!("INSERT INTO bkg_namespace_roles VALUES ('bkg_ns_{NS_A}x', '{NS_B}')"), &[]).await;
    assert!(add.as_ref().is_err_and(is_denied), "added a mapping: {add:?}");
    let become_b = client.batch_execute(&format!("SET ROLE \"bkg_ns_{NS_B}\"")).await;
    assert!(become_b.as_ref().is_err_and(is_denied), "became {NS_B}: {become_b:?}");
    // A session setting means nothing to the policies.
    client.batch_execute(&format!("SET bkg.namespace = '{NS_B}'")).await?;
    assert_eq!(count(&client, &format!("SELECT count(*) FROM runs WHERE namespace = '{NS_B}'")).await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_admin_role_sees_every_row() -> TestResult {
    let db = rls_db().await?;
    let admin = sync::connect(&db.admin).await?;
    let superuser = sync::connect(&db.superuser).await?;
    for table in DATA_TABLES {
        let sql = format!("SELECT count(DISTINCT namespace) * 1000000 + count(*) FROM {table}");
        let (seen, all) = (count(&admin, &sql).await?, count(&superuser, &sql).await?);
        assert_eq!(seen, all, "{table}");
    }
    // Both namespaces and the agent's own records (namespace '').
    let namespaces = count(&admin, "SELECT count(DISTINCT namespace) FROM audit_events").await?;
    assert_eq!(namespaces, 3);
    Ok(())
}

#[tokio::test]
async fn namespace_role_passwords_rotate() -> TestResult {
    let cluster = shared().await?;
    let mut superuser = cluster.migrated_database("t_rotate").await?;
    let namespace = format!("rotate-{}", std::process::id());
    let role = sync::ensure_namespace_role(&mut superuser, &namespace, "first").await?;
    assert_eq!(role, format!("bkg_ns_{namespace}"));
    sync::connect(&cluster.url(&role, "first", "t_rotate")).await?;
    assert_eq!(sync::ensure_namespace_role(&mut superuser, &namespace, "second").await?, role);
    assert!(sync::connect(&cluster.url(&role, "first", "t_rotate")).await.is_err());
    sync::connect(&cluster.url(&role, "second", "t_rotate")).await?;
    // Still one mapping, still a plain login role.
    let mapped = format!("SELECT count(*) FROM bkg_namespace_roles WHERE namespace = '{namespace}'");
    assert_eq!(count(&superuser, &mapped).await?, 1);
    let plain = format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = '{role}' AND NOT (rolsuper OR rolcreaterole OR rolbypassrls)"
    );
    assert_eq!(count(&superuser, &plain).await?, 1);

    for bad in ["", &"n".repeat(60)] {
        let result = sync::ensure_namespace_role(&mut superuser, bad, "x").await;
        assert!(matches!(result, Err(SyncError::Namespace(_))), "{bad:?}: {result:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Migrations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_run_at_once() -> TestResult {
    let cluster = shared().await?;
    let mut first = cluster.create_database("t_migrate").await?;
    let mut second = sync::connect(&cluster.superuser("t_migrate")).await?;
    let (one, two) = tokio::join!(sync::migrate(&mut first), sync::migrate(&mut second));
    let (mut one, mut two) = (one?.applied, two?.applied);
    let all: Vec<i32> = (1..=sync::latest_version()).collect();
    one.append(&mut two);
    one.sort_unstable();
    assert_eq!(one, all, "every version applied exactly once between the two");
    assert!(sync::migrate(&mut first).await?.applied.is_empty());

    let versions = count(&first, "SELECT count(*) * 1000 + max(version) FROM bkg_schema_migrations").await?;
    assert_eq!(versions, all.len() as i64 * 1000 + i64::from(sync::latest_version()));
    // Row-level security is enabled and forced on every table of the schema.
    let unprotected: Vec<String> = first
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
             AND NOT (relrowsecurity AND relforcerowsecurity)",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(unprotected.is_empty(), "without forced RLS: {unprotected:?}");
    Ok(())
}

#[tokio::test]
async fn a_database_owner_that_is_not_a_superuser_can_migrate() -> TestResult {
    let cluster = shared().await?;
    let (owner_role, namespace) = (database_name("bkg_test_owner"), database_name("owned"));
    let lock = cluster.lock().await?;
    lock.batch_execute(&format!("CREATE ROLE {owner_role} LOGIN CREATEROLE PASSWORD 'owner-secret'")).await?;
    lock.batch_execute(&format!("CREATE DATABASE {} OWNER {owner_role}", database_name("t_owner"))).await?;
    let mut owner = sync::connect(&cluster.url(&owner_role, "owner-secret", "t_owner")).await?;
    assert_eq!(sync::migrate(&mut owner).await?.applied, (1..=sync::latest_version()).collect::<Vec<_>>());
    let role = sync::ensure_namespace_role(&mut owner, &namespace, "pw").await?;
    drop(lock);
    // An agent then ships through it, migrations already in place.
    let history = History::with_runs("agent-owned", &[&namespace], 2);
    let handle = SyncWorker::spawn(
        MemOutbox::with(history.events.clone()),
        fast(cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_owner")),
    );
    drained(&handle).await?;
    handle.stop().await;
    assert_eq!(audit_trail(&owner, &history.agent_id).await?, expected_trail(&history.events));
    let namespace = sync::connect(&cluster.url(&role, "pw", "t_owner")).await?;
    assert_eq!(count(&namespace, "SELECT count(*) FROM runs").await?, 2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shipping

#[tokio::test]
async fn replayed_events_create_no_duplicates_and_never_roll_state_back() -> TestResult {
    let cluster = shared().await?;
    let client = cluster.create_database("t_replay").await?;
    let history = History::with_runs("agent-replay", &["alpha", "beta"], 20);
    let outbox = MemOutbox::with(history.events.clone());
    // mark_synced fails now and then, so batches already committed are shipped again.
    outbox.state().failing_marks = 3;
    // As a superuser the worker migrates the empty database itself.
    let handle = SyncWorker::spawn(outbox.clone(), SyncConfig { batch: 7, ..fast(cluster.superuser("t_replay")) });
    drained(&handle).await?;
    let status = handle.status().await?;
    assert_eq!(status.failures, 0);
    assert!(status.last_error.as_deref().is_some_and(|error| error.contains("injected")), "{status:?}");
    handle.stop().await;
    assert_eq!(
        count(&client, "SELECT max(version)::bigint FROM bkg_schema_migrations").await?,
        i64::from(sync::latest_version())
    );

    // And the whole outbox once more, as after a restore of the agent's state.
    outbox.state().synced.clear();
    let handle = SyncWorker::spawn(outbox.clone(), fast(cluster.superuser("t_replay")));
    drained(&handle).await?;
    handle.stop().await;

    assert_eq!(audit_trail(&client, &history.agent_id).await?, expected_trail(&history.events));
    assert_eq!(count(&client, "SELECT count(*) FROM runs").await?, history.runs());
    // Every run kept what run.started said and what run.finished added.
    let complete =
        "SELECT count(*) FROM runs WHERE language = 'python' AND exit_code = 0 AND finished_at_ms IS NOT NULL
        AND limits IS NOT NULL AND state ? 'started_at_ms' AND state ? 'wall_ms'";
    assert_eq!(count(&client, complete).await?, history.runs());
    assert_eq!(
        count(&client, "SELECT count(*) FROM keys WHERE revoked_at_ms IS NOT NULL AND role = 'namespace'").await?,
        2
    );
    // What must not leave the agent did not: a sandbox's env values (its names do).
    assert_eq!(count(&client, "SELECT count(*) FROM sandboxes WHERE state::text LIKE '%do-not-ship%'").await?, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM sandboxes WHERE state->'env' = '[\"TOKEN\"]'").await?, 2);
    let last = history.events.len() as i64;
    let agent = format!("SELECT max(last_seq) FROM agents WHERE agent_id = '{}'", history.agent_id);
    assert_eq!(count(&client, &agent).await?, last);
    assert_eq!(count(&client, "SELECT count(*) FROM namespaces").await?, 2);
    Ok(())
}

#[tokio::test]
async fn an_outbox_with_a_hole_is_not_shipped_past_it() -> TestResult {
    let cluster = shared().await?;
    let client = cluster.migrated_database("t_gap").await?;
    let mut history = History::with_runs("agent-gap", &["gap"], 3);
    let shipped = history.events.clone();
    let outbox = MemOutbox::with(shipped.clone());
    let handle = SyncWorker::spawn(outbox.clone(), fast(cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_gap")));
    drained(&handle).await?;
    // Two events are lost before they reach the outbox: the worker stops short of the hole.
    history.add_runs(&["gap"], 3..5);
    outbox.push(history.events[history.events.len() - 2..].to_vec());
    handle.wake();
    eventually("the hole is reported", Duration::from_secs(10), async || {
        let status: SyncStatus = handle.status().await?;
        Ok(status.failures > 0 && status.last_error.as_deref().is_some_and(|error| error.contains("missing")))
    })
    .await?;
    handle.stop().await;
    assert_eq!(audit_trail(&client, &history.agent_id).await?, expected_trail(&shipped));
    Ok(())
}

/// bkg_db is restored from a backup older than what the agent has marked synced: the agent
/// sends again what bkg_db lacks, from its outbox.
#[tokio::test]
async fn after_a_restore_of_bkg_db_the_agent_sends_again_what_it_lacks() -> TestResult {
    let cluster = shared().await?;
    let client = cluster.migrated_database("t_restore").await?;
    let mut history = History::with_runs("agent-restore", &["restore"], 5);
    let outbox = MemOutbox::with(history.events.clone());
    let handle = SyncWorker::spawn(outbox.clone(), fast(cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_restore")));
    drained(&handle).await?;
    // The backup was taken after event 6.
    client.batch_execute("DELETE FROM audit_events WHERE seq > 6").await?;
    let shipped = history.events.len();
    history.add_runs(&["restore"], 5..8);
    outbox.push(history.events[shipped..].to_vec());
    handle.wake();
    eventually("bkg_db holds the whole history again", Duration::from_secs(20), async || {
        Ok(audit_trail(&client, &history.agent_id).await? == expected_trail(&history.events))
    })
    .await?;
    // Sending again is not a failure (an outbox with a hole of its own is, above).
    let status = handle.status().await?;
    assert_eq!((status.failures, status.last_error.as_deref()), (0, None), "{status:?}");
    handle.stop().await;
    assert_eq!(count(&client, "SELECT count(*) FROM runs WHERE exit_code = 0").await?, 8);
    Ok(())
}

/// Another line under a seq bkg_db already holds is a second history of the agent, not a replay.
#[tokio::test]
async fn a_different_line_under_a_synced_seq_is_refused() -> TestResult {
    let cluster = shared().await?;
    let client = cluster.migrated_database("t_fork").await?;
    let history = History::with_runs("agent-fork", &["fork"], 2);
    let outbox = MemOutbox::with(history.events.clone());
    let handle = SyncWorker::spawn(outbox.clone(), fast(cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_fork")));
    drained(&handle).await?;
    {
        let mut state = outbox.state();
        state.events[3].line.push(' ');
        state.synced.clear();
    }
    handle.wake();
    eventually("the fork is reported", Duration::from_secs(10), async || {
        let status = handle.status().await?;
        Ok(status.failures > 0 && status.last_error.as_deref().is_some_and(|error| error.contains("different")))
    })
    .await?;
    handle.stop().await;
    assert_eq!(audit_trail(&client, &history.agent_id).await?, expected_trail(&history.events));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_writing_at_once_both_end_complete() -> TestResult {
    let cluster = shared().await?;
    let client = cluster.migrated_database("t_two").await?;
    let agent_url = cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_two");
    let one = History::with_runs("agent-one", &["shared", "own-1"], 120);
    let two = History::with_runs("agent-two", &["own-2", "shared"], 120);
    let handles = [
        SyncWorker::spawn(MemOutbox::with(one.events.clone()), SyncConfig { batch: 10, ..fast(agent_url.clone()) }),
        SyncWorker::spawn(MemOutbox::with(two.events.clone()), SyncConfig { batch: 10, ..fast(agent_url) }),
    ];
    for handle in &handles {
        drained(handle).await?;
    }
    for handle in handles {
        handle.stop().await;
    }
    for history in [&one, &two] {
        assert_eq!(
            audit_trail(&client, &history.agent_id).await?,
            expected_trail(&history.events),
            "{}",
            history.agent_id
        );
        let runs = format!("SELECT count(*) FROM runs WHERE agent_id = '{}' AND exit_code = 0", history.agent_id);
        assert_eq!(count(&client, &runs).await?, history.runs());
    }
    let namespaces: BTreeSet<String> =
        client.query("SELECT namespace FROM namespaces", &[]).await?.iter().map(|row| row.get(0)).collect();
    assert_eq!(namespaces, BTreeSet::from(["own-1".into(), "own-2".into(), "shared".into()]));
    assert_eq!(count(&client, "SELECT count(*) FROM agents WHERE namespace = 'shared'").await?, 2);
    Ok(())
}

/// PostgreSQL goes down with the worker running; the agent restarts while it is down; it comes
/// back and the backlog drains, in order, with nothing lost.
#[tokio::test]
async fn while_postgres_is_down_the_worker_backs_off_and_then_drains_in_order() -> TestResult {
    let cluster = Cluster::start(&format!("bkg-sync-test-{}-outage", std::process::id()))?;
    cluster.create_test_roles().await?;
    let client = cluster.migrated_database("t_outage").await?;
    drop(client);
    let agent_url = cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_outage");
    let mut history = History::with_runs("agent-outage", &["outage"], 5);
    let outbox = MemOutbox::with(history.events.clone());
    let handle = SyncWorker::spawn(outbox.clone(), fast(agent_url.clone()));
    drained(&handle).await?;

    cluster.stop()?;
    let shipped = history.events.len();
    history.add_runs(&["outage"], 5..30);
    outbox.push(history.events[shipped..].to_vec());
    handle.wake();
    eventually("the outage is reported", Duration::from_secs(10), async || {
        let status = handle.status().await?;
        Ok(status.failures >= 2 && status.last_error.is_some())
    })
    .await?;
    // Backing off: a few attempts in two seconds, not a busy loop (pauses of 50–800 ms).
    let before = handle.status().await?.failures;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = handle.status().await?;
    let attempts = status.failures - before;
    assert!((1..=20).contains(&attempts), "{attempts} attempts in 2 s");
    assert_eq!(status.backlog, 50);
    assert!(status.lag_ms.is_some_and(|lag| lag >= 50_000), "{status:?}");

    // The agent restarts, with nothing but its outbox, while bkg_db is still down.
    handle.stop().await;
    let handle = SyncWorker::spawn(outbox.clone(), fast(agent_url));
    eventually("the restarted worker reports the outage", Duration::from_secs(10), async || {
        Ok(handle.status().await?.failures >= 1)
    })
    .await?;
    cluster.restart()?;
    drained(&handle).await?;
    let status = handle.status().await?;
    assert_eq!((status.failures, status.backlog, status.lag_ms), (0, 0, None));
    assert!(status.last_success_ms.is_some());
    handle.stop().await;

    let client = sync::connect(&cluster.superuser("t_outage")).await?;
    assert_eq!(audit_trail(&client, &history.agent_id).await?, expected_trail(&history.events));
    assert_eq!(count(&client, "SELECT count(*) FROM runs WHERE exit_code = 0").await?, 30);
    // Batches were marked in seq order, each continuing the one before.
    let marks = outbox.state().marks.clone();
    assert!(marks.windows(2).all(|pair| pair[0] < pair[1]), "{marks:?}");
    assert_eq!(marks.last().copied(), Some(history.events.len() as u64));
    cluster.stop()?;
    Ok(())
}

/// An event whose line cannot be read is tried `max_attempts` times, then parked; the events
/// after it go on, past that one hole only; once the line is fixed, a retry ships it.
#[tokio::test]
async fn a_malformed_event_is_parked_and_the_rest_goes_on() -> TestResult {
    let cluster = shared().await?;
    let client = cluster.migrated_database("t_parked").await?;
    let history = History::with_runs("agent-parked", &["parked"], 6);
    let outbox = MemOutbox::with(history.events.clone());
    let bad = 5;
    let good_line = {
        let mut state = outbox.state();
        let event = &mut state.events[bad as usize - 1];
        let line = event.line.clone();
        event.line.truncate(line.len() / 2);
        line
    };
    let config = SyncConfig { max_attempts: 3, ..fast(cluster.url(AGENT_ROLE.0, AGENT_ROLE.1, "t_parked")) };
    let handle = SyncWorker::spawn(outbox.clone(), config);
    drained(&handle).await?;
    let status = handle.status().await?;
    assert_eq!((status.backlog, status.parked, status.failures), (0, 1, 0), "{status:?}");
    assert_eq!(outbox.state().attempts.get(&bad), Some(&3));
    assert!(outbox.state().parked.get(&bad).is_some_and(|reason| reason.contains("not an audit record")));
    let without_bad: Vec<_> = history.events.iter().filter(|event| event.seq != bad).cloned().collect();
    assert_eq!(audit_trail(&client, &history.agent_id).await?, expected_trail(&without_bad));

    // Fixed and retried, it fills its hole.
    {
        let mut state = outbox.state();
        state.events[bad as usize - 1].line = good_line;
        state.parked.clear();
        state.attempts.clear();
    }
    handle.wake();
    drained(&handle).await?;
    assert_eq!(handle.status().await?.parked, 0);
    handle.stop().await;
    assert_eq!(audit_trail(&client, &history.agent_id).await?, expected_trail(&history.events));
    Ok(())
}
