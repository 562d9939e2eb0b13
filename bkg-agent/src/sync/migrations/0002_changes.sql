-- bkg_db version 2: the change feed. Released: never edit, add a new file.
--
-- `changes` gives every audit event a global position, gap-free across every agent: the sync
-- takes the next positions from `bkg_change_head` (a single row, locked by its UPDATE until the
-- shipping transaction commits) in the same transaction that writes the events. Positions are
-- therefore committed in order: once a reader sees position P, every position below P is
-- committed and visible too. docs/bkg-db.md spells out the argument.
CREATE TABLE changes (
    position bigint PRIMARY KEY,
    agent_id text NOT NULL,
    seq bigint NOT NULL,
    namespace text NOT NULL,
    -- runs | sandboxes | keys | audit: the table the event changed (bkg_schema::changes::ChangeKind).
    kind text NOT NULL,
    action text NOT NULL,
    -- The run, sandbox or key the event changed.
    object_id text,
    ts_ms bigint NOT NULL,
    UNIQUE (agent_id, seq)
);
CREATE INDEX changes_namespace ON changes (namespace, position);

CREATE TABLE bkg_change_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint NOT NULL
);

-- The events shipped before this version, in the order they happened.
INSERT INTO changes (position, agent_id, seq, namespace, kind, action, object_id, ts_ms)
SELECT row_number() OVER (ORDER BY ts_ms, agent_id, seq), agent_id, seq, namespace,
       CASE split_part(action, '.', 1)
           WHEN 'run' THEN 'runs' WHEN 'sandbox' THEN 'sandboxes' WHEN 'key' THEN 'keys' WHEN 'login' THEN 'keys'
           ELSE 'audit' END,
       action,
       coalesce(line::jsonb ->> 'run', line::jsonb ->> 'sandbox', line::jsonb -> 'details' ->> 'key_id'),
       ts_ms
FROM audit_events;
INSERT INTO bkg_change_head (only_row, position) SELECT true, coalesce(max(position), 0) FROM changes;

DO $$
DECLARE
    t text;
    own_namespace constant text :=
        'namespace = (SELECT r.namespace FROM bkg_namespace_roles r WHERE r.role = current_user)';
BEGIN
    FOREACH t IN ARRAY ARRAY['changes', 'bkg_change_head'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO bkg_admin', t);
        EXECUTE format('CREATE POLICY bkg_admin_all ON %I FOR ALL TO bkg_admin USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY bkg_agent_all ON %I FOR ALL TO bkg_agent USING (true) WITH CHECK (true)', t);
    END LOOP;
    -- Agents append to the feed and move its head.
    GRANT SELECT, INSERT ON changes TO bkg_agent;
    GRANT SELECT, UPDATE ON bkg_change_head TO bkg_agent;
    -- A namespace reads its own changes, writes none.
    EXECUTE format('CREATE POLICY bkg_namespace_own ON changes FOR SELECT TO bkg_namespace USING (%s)', own_namespace);
    GRANT SELECT ON changes TO bkg_namespace;
END
$$;
