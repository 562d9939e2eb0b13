//! bkg_db's versioned migrations and its namespace roles.

use bkg_schema::sync::Migrated;
use tokio_postgres::Client;

use super::SyncError;

/// Each entry upgrades bkg_db by one version, recorded in `bkg_schema_migrations`. Never edit a
/// released entry: add a new one. Entries must stay additive, since agents of an older version
/// keep writing to a database that a newer one has migrated.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "changes", include_str!("migrations/0002_changes.sql")),
    (3, "retention", include_str!("migrations/0003_retention.sql")),
    (4, "run_files", include_str!("migrations/0004_run_files.sql")),
    (5, "namespace_roles_read_only", include_str!("migrations/0005_namespace_roles_read_only.sql")),
    (6, "agent_logins", include_str!("migrations/0006_agent_logins.sql")),
    (7, "feed_and_namespaces_guarded", include_str!("migrations/0007_feed_and_namespaces_guarded.sql")),
];

/// Serializes migrations (and role changes) of one database: every agent migrates at start-up,
/// and several may start at once. Advisory locks are per database, which is all that's needed.
const MIGRATION_LOCK: i64 = 0x626b_675f_6d69_6772; // "bkg_migr"

/// The schema version this agent brings.
pub fn latest_version() -> i32 {
    MIGRATIONS.iter().map(|(version, ..)| *version).max().unwrap_or(0)
}

/// Brings bkg_db up to [`latest_version`]: the versions it applied (none when it was there
/// already) and the version it is at now. Run as a superuser or as the database's owner with
/// CREATEROLE; a role that may not create tables (an agent's `bkg_agent` login) succeeds only
/// when nothing is left to apply.
pub async fn migrate(client: &mut Client) -> Result<Migrated, SyncError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    // Checked first because CREATE TABLE IF NOT EXISTS still needs CREATE on the schema.
    let bootstrapped: bool =
        transaction.query_one("SELECT to_regclass('bkg_schema_migrations') IS NOT NULL", &[]).await?.get(0);
    if !bootstrapped {
        transaction
            .batch_execute(
                "CREATE TABLE bkg_schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
    }
    let current: i32 =
        transaction.query_one("SELECT coalesce(max(version), 0) FROM bkg_schema_migrations", &[]).await?.get(0);
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(version, ..)| *version > current) {
        transaction.batch_execute(sql).await?;
        transaction
            .execute("INSERT INTO bkg_schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .await?;
        applied.push(*version);
    }
    transaction.commit().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "bkg_db migrated");
    }
    let latest = latest_version();
    Ok(Migrated { applied, latest, version: current.max(latest) })
}

/// The login role of `namespace` in bkg_db, `bkg_ns_NAMESPACE`; none when the name would be
/// longer than PostgreSQL's 63 bytes, which it would cut silently (two namespaces could then
/// share a role).
pub fn namespace_role_name(namespace: &str) -> Option<String> {
    let role = format!("bkg_ns_{namespace}");
    (role.len() <= 63).then_some(role)
}

/// Creates (or updates) the login role of `namespace`, `bkg_ns_<namespace>`, with `password`, and
/// maps it to the namespace; returns the role's name. Calling it again with another password
/// rotates the password. Needs CREATEROLE and `bkg_admin` (the migrating role has both).
///
/// The password reaches the server only as a SCRAM-SHA-256 verifier, never in clear (so never in
/// its logs).
pub async fn ensure_namespace_role(client: &mut Client, namespace: &str, password: &str) -> Result<String, SyncError> {
    if namespace.is_empty() || namespace.chars().any(char::is_control) {
        return Err(SyncError::Namespace(format!("{namespace:?} is not a namespace name")));
    }
    let Some(role) = namespace_role_name(namespace) else {
        return Err(SyncError::Namespace(format!(
            "role \"bkg_ns_{namespace}\" would be longer than PostgreSQL's 63 bytes"
        )));
    };
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());

    // Said as what to do (found by a new-user trial: PostgreSQL's "permission denied to create
    // role" came with advice about migrations and bkg_agent).
    let (login, may_create): (String, bool) = {
        let row = client
            .query_one(
                "SELECT current_user::text, rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    if !may_create {
        return Err(SyncError::Namespace(format!(
            "login `{login}` may not create roles: run it as the schema's owner, which has CREATEROLE \
             (`BKG_DB_URL=OWNER_URL bkg-agent --namespace-role {namespace}`, docs/operations.md)"
        )));
    }
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    let existing = transaction
        .query_opt("SELECT rolsuper OR rolbypassrls OR rolcreaterole FROM pg_roles WHERE rolname = $1", &[&role])
        .await?;
    let statement = match existing {
        Some(row) if row.get::<_, bool>(0) => {
            return Err(SyncError::Namespace(format!("role {role:?} exists with privileges beyond a namespace's")));
        }
        Some(_) => "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
        None => "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
    };
    // format() quotes the name and the verifier: neither is spliced into SQL by hand.
    let sql: String = transaction.query_one(statement, &[&role, &verifier]).await?.get(0);
    transaction.batch_execute(&sql).await?;
    let grant: String =
        transaction.query_one("SELECT format('GRANT bkg_namespace TO %I', $1::text)", &[&role]).await?.get(0);
    transaction.batch_execute(&grant).await?;
    // The agents' change feed reads a namespace's changes as its role (SET ROLE), so that RLS
    // filters them exactly as it filters the namespace's own connections.
    let agents_may_become: String =
        transaction.query_one("SELECT format('GRANT %I TO bkg_agent', $1::text)", &[&role]).await?.get(0);
    transaction.batch_execute(&agents_may_become).await?;
    transaction
        .execute(
            "INSERT INTO bkg_namespace_roles (role, namespace) VALUES ($1, $2)
             ON CONFLICT (role) DO UPDATE SET namespace = EXCLUDED.namespace",
            &[&role, &namespace],
        )
        .await?;
    transaction.commit().await?;
    Ok(role)
}
