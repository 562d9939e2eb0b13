-- bkg_db version 4: the files runs kept (bkg-agent/src/artefacts/). Released: never edit, add a
-- new file.
--
-- One row per file a run kept; the object itself is in the object store, named by its namespace
-- and sha256 (docs/bkg-db.md, "Object storage"). Rows come with the run's `run.finished` event
-- and go with the run (retention): bkg_agent may delete them. A namespace role reads its own
-- namespace's rows and writes none (the agents' records are theirs).
CREATE TABLE run_files (
    agent_id text NOT NULL,
    run_id text NOT NULL,
    path text NOT NULL,
    namespace text NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    sha256 text NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (agent_id, run_id, path)
);
CREATE INDEX run_files_objects ON run_files (namespace, sha256);

ALTER TABLE run_files ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_files FORCE ROW LEVEL SECURITY;
REVOKE ALL ON run_files FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON run_files TO bkg_admin;
CREATE POLICY bkg_admin_all ON run_files FOR ALL TO bkg_admin USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON run_files TO bkg_agent;
CREATE POLICY bkg_agent_all ON run_files FOR ALL TO bkg_agent USING (true) WITH CHECK (true);
GRANT SELECT ON run_files TO bkg_namespace;
CREATE POLICY bkg_namespace_own ON run_files FOR SELECT TO bkg_namespace
    USING (namespace = (SELECT r.namespace FROM bkg_namespace_roles r WHERE r.role = current_user));
