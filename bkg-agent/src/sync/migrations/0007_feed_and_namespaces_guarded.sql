-- bkg_db version 7: an agent's login moves the change feed's head only forward, writes changes only
-- at positions it took, and widens a namespace's row only. Released: never edit, add a new file.
--
-- Until version 6 any member of bkg_agent could set `bkg_change_head` back (every other agent's
-- next batch then clashed on a position and was parked), write a change at a position no one had
-- taken yet (the same clash for the agent that takes it), or rename or rewrite a namespace's row.
-- Row-level security cannot compare a row with its old value, so triggers hold these rules. A
-- login in bkg_admin (the schema's owner) is not held by them: it may repair anything.
CREATE FUNCTION bkg_head_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_has_role(current_user, 'bkg_admin', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    -- One batch's positions: bkg-agent/src/sync/ship.rs takes as many as the batch has events.
    IF NEW.position <= OLD.position OR NEW.position - OLD.position > 100000 THEN
        RAISE EXCEPTION 'bkg_change_head moves forward only, by at most 100000 positions (from % to %)',
            OLD.position, NEW.position
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER bkg_head_moves_forward BEFORE UPDATE ON bkg_change_head
    FOR EACH ROW EXECUTE FUNCTION bkg_head_moves_forward();

CREATE FUNCTION bkg_change_at_a_taken_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_has_role(current_user, 'bkg_admin', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    -- The head as this transaction sees it: the positions it took itself are below it, and a
    -- position below the committed head is either used already or a hole no one will fill.
    IF NEW.position > (SELECT position FROM bkg_change_head) OR NEW.position < 1 THEN
        RAISE EXCEPTION 'change position % was not taken from bkg_change_head', NEW.position
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER bkg_change_at_a_taken_position BEFORE INSERT ON changes
    FOR EACH ROW EXECUTE FUNCTION bkg_change_at_a_taken_position();

CREATE FUNCTION bkg_namespace_widens_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_has_role(current_user, 'bkg_admin', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    IF NEW.namespace IS DISTINCT FROM OLD.namespace
        OR NEW.first_seen_ms > OLD.first_seen_ms
        OR NEW.last_seen_ms < OLD.last_seen_ms THEN
        RAISE EXCEPTION 'a namespace row keeps its name and only widens the time it was seen in'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER bkg_namespace_widens_only BEFORE UPDATE ON namespaces
    FOR EACH ROW EXECUTE FUNCTION bkg_namespace_widens_only();

-- The triggers run as the login that writes, whose own temporary tables would come first on the
-- default search_path: a temporary `bkg_change_head` would answer the check. Each function looks
-- in the catalog and bkg_db's schema only, and in pg_temp last.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['bkg_head_moves_forward', 'bkg_change_at_a_taken_position', 'bkg_namespace_widens_only'] LOOP
        EXECUTE format('ALTER FUNCTION %I() SET search_path = pg_catalog, %I, pg_temp', f, current_schema());
    END LOOP;
END
$$;
