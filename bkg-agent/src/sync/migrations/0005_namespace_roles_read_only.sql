-- bkg_db version 5: a namespace role reads its namespace's rows and writes none. Released: never
-- edit, add a new file.
--
-- Version 1 let it write its namespace's state rows. The rows are the agents' records: a role
-- that could write them could, for instance, raise a key row's seq so that the agent's later
-- revocation never lands, and an admin reading `keys` would see the key as live. Reading only is
-- what the namespace roles are for (the change feed, a team's own queries).
REVOKE INSERT, UPDATE, DELETE ON namespaces, agents, sandboxes, runs, keys FROM bkg_namespace;
