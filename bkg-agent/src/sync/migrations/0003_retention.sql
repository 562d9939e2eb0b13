-- bkg_db version 3: retention. Released: never edit, add a new file.
--
-- An agent deletes its own expired runs (bkg-agent/src/retention.rs): bkg_agent may now delete
-- rows of `runs`. The audit trail (audit_events) and the change feed (changes) are never deleted.
GRANT DELETE ON runs TO bkg_agent;
