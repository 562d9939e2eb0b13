-- bkg_db version 6: an agent's rows are written only by the login it writes with. Released:
-- never edit, add a new file.
--
-- Until version 5 any member of bkg_agent could insert, change or delete every agent's rows: a
-- host's login could, for instance, mark another agent's key row revoked or rewrite its runs.
-- Now each agent id is bound to the login that first writes for it (`bkg_agent_logins`, claimed
-- by the agent itself, bkg-agent/src/sync/ship.rs), and bkg_agent writes only the rows of the
-- agent ids bound to its login; it still reads every row. A login in bkg_admin (the schema's
-- owner) writes every row and binds nothing. To move an agent to another login, an admin deletes
-- its row here; the next login to write for it is bound then.
CREATE TABLE bkg_agent_logins (
    agent_id text PRIMARY KEY,
    role name NOT NULL,
    claimed_ms bigint NOT NULL
);
ALTER TABLE bkg_agent_logins ENABLE ROW LEVEL SECURITY;
ALTER TABLE bkg_agent_logins FORCE ROW LEVEL SECURITY;
REVOKE ALL ON bkg_agent_logins FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON bkg_agent_logins TO bkg_admin;
CREATE POLICY bkg_admin_all ON bkg_agent_logins FOR ALL TO bkg_admin USING (true) WITH CHECK (true);
GRANT SELECT, INSERT ON bkg_agent_logins TO bkg_agent;
CREATE POLICY bkg_agent_read ON bkg_agent_logins FOR SELECT TO bkg_agent USING (true);
CREATE POLICY bkg_agent_claim ON bkg_agent_logins FOR INSERT TO bkg_agent WITH CHECK (role = current_user);

DO $$
DECLARE
    t text;
    bound constant text :=
        'EXISTS (SELECT 1 FROM bkg_agent_logins l WHERE l.agent_id = %I.agent_id AND l.role = current_user)';
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'sandboxes', 'runs', 'keys', 'audit_events', 'changes', 'run_files'] LOOP
        EXECUTE format('DROP POLICY bkg_agent_all ON %I', t);
        EXECUTE format('CREATE POLICY bkg_agent_read ON %I FOR SELECT TO bkg_agent USING (true)', t);
        EXECUTE format('CREATE POLICY bkg_agent_insert ON %I FOR INSERT TO bkg_agent WITH CHECK (%s)',
                       t, format(bound, t));
        EXECUTE format('CREATE POLICY bkg_agent_update ON %I FOR UPDATE TO bkg_agent USING (%s) WITH CHECK (%s)',
                       t, format(bound, t), format(bound, t));
        EXECUTE format('CREATE POLICY bkg_agent_delete ON %I FOR DELETE TO bkg_agent USING (%s)',
                       t, format(bound, t));
    END LOOP;
END
$$;
