-- bkg_db version 1: roles, tables, row-level security. Released: never edit, add a new file.
--
-- Group roles (NOLOGIN; operators grant them to login roles):
--   bkg_admin      sees and writes every row;
--   bkg_agent      what agents log in as (through membership): reads, inserts and updates every
--                  namespace's rows, never deletes;
--   bkg_namespace  the group of the per-namespace login roles `bkg_ns_<namespace>`; each sees and
--                  writes only the rows of the namespace that bkg_namespace_roles maps it to.
-- Roles are cluster-wide: an existing one is reused.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bkg_admin') THEN
        CREATE ROLE bkg_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bkg_agent') THEN
        CREATE ROLE bkg_agent NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bkg_namespace') THEN
        CREATE ROLE bkg_namespace NOLOGIN;
    END IF;
    -- RLS is forced on the owner too, so a migrating role that is not a superuser reaches its own
    -- bookkeeping (bkg_schema_migrations, bkg_namespace_roles) as a bkg_admin.
    IF NOT pg_has_role(current_user, 'bkg_admin', 'MEMBER') THEN
        EXECUTE format('GRANT bkg_admin TO %I', current_user);
    END IF;
END
$$;

CREATE TABLE namespaces (
    namespace text PRIMARY KEY,
    first_seen_ms bigint NOT NULL,
    last_seen_ms bigint NOT NULL
);

-- One row per agent and namespace it has written to ('' for the agent's own records).
CREATE TABLE agents (
    agent_id text NOT NULL,
    namespace text NOT NULL,
    first_seen_ms bigint NOT NULL,
    last_seen_ms bigint NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (agent_id, namespace)
);

-- State tables: one row per object, keyed by the agent that owns it; `seq` is the audit record
-- that last changed it, so a replayed older event never overwrites a newer state.
CREATE TABLE sandboxes (
    agent_id text NOT NULL,
    id text NOT NULL,
    namespace text NOT NULL,
    seq bigint NOT NULL,
    name text,
    project_dir text,
    language text,
    created_at_ms bigint,
    updated_at_ms bigint NOT NULL,
    deleted_at_ms bigint,
    state jsonb NOT NULL,
    PRIMARY KEY (agent_id, id)
);
CREATE INDEX sandboxes_namespace ON sandboxes (namespace, name);

CREATE TABLE runs (
    agent_id text NOT NULL,
    id text NOT NULL,
    namespace text NOT NULL,
    seq bigint NOT NULL,
    sandbox_id text,
    language text,
    limits jsonb,
    exit_code integer,
    signal integer,
    killed_by text,
    wall_ms bigint,
    cpu_ms bigint,
    peak_memory_bytes bigint,
    started_at_ms bigint,
    finished_at_ms bigint,
    state jsonb NOT NULL,
    PRIMARY KEY (agent_id, id)
);
CREATE INDEX runs_namespace ON runs (namespace, started_at_ms);

-- API keys: hashes and metadata only; the worker copies an allow-list of fields, never a secret.
CREATE TABLE keys (
    agent_id text NOT NULL,
    id text NOT NULL,
    namespace text NOT NULL,
    seq bigint NOT NULL,
    role text,
    hash text,
    created_at_ms bigint,
    expires_at_ms bigint,
    rotated_at_ms bigint,
    revoked_at_ms bigint,
    metadata jsonb NOT NULL,
    PRIMARY KEY (agent_id, id)
);
CREATE INDEX keys_namespace ON keys (namespace);

-- Every signed audit line, verbatim: an agent's chain verifies from here (ORDER BY seq).
CREATE TABLE audit_events (
    agent_id text NOT NULL,
    seq bigint NOT NULL,
    namespace text NOT NULL,
    action text NOT NULL,
    ts_ms bigint NOT NULL,
    line text NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX audit_events_namespace ON audit_events (namespace, ts_ms);

-- Which namespace each namespace role may see. Only bkg_admin writes it: a namespace role can
-- neither pick nor change its namespace (unlike a settable GUC).
CREATE TABLE bkg_namespace_roles (
    role name PRIMARY KEY,
    namespace text NOT NULL UNIQUE
);

DO $$
DECLARE
    t text;
    own_namespace constant text :=
        'namespace = (SELECT r.namespace FROM bkg_namespace_roles r WHERE r.role = current_user)';
BEGIN
    FOREACH t IN ARRAY ARRAY['namespaces', 'agents', 'sandboxes', 'runs', 'keys', 'audit_events',
                             'bkg_namespace_roles', 'bkg_schema_migrations'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO bkg_admin', t);
        EXECUTE format('CREATE POLICY bkg_admin_all ON %I FOR ALL TO bkg_admin USING (true) WITH CHECK (true)', t);
    END LOOP;

    FOREACH t IN ARRAY ARRAY['namespaces', 'agents', 'sandboxes', 'runs', 'keys', 'audit_events'] LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I TO bkg_agent', t);
        EXECUTE format('CREATE POLICY bkg_agent_all ON %I FOR ALL TO bkg_agent USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY bkg_namespace_own ON %I FOR ALL TO bkg_namespace USING (%s) WITH CHECK (%s)',
                       t, own_namespace, own_namespace);
    END LOOP;
    -- The audit trail is the agents' signed record: a namespace reads its own, changes none.
    GRANT SELECT, INSERT, UPDATE, DELETE ON namespaces, agents, sandboxes, runs, keys TO bkg_namespace;
    GRANT SELECT ON audit_events TO bkg_namespace;
END
$$;

-- The policies above read bkg_namespace_roles as the namespace role itself: it sees its own row.
GRANT SELECT ON bkg_namespace_roles TO bkg_namespace;
CREATE POLICY bkg_namespace_self ON bkg_namespace_roles FOR SELECT TO bkg_namespace USING (role = current_user);

-- Any role may ask which version the schema is at (an agent's start-up does).
GRANT SELECT ON bkg_schema_migrations TO PUBLIC;
CREATE POLICY bkg_read_versions ON bkg_schema_migrations FOR SELECT TO PUBLIC USING (true);
