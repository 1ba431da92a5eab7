-- Connection strings for the AMQP publishing gateway (USE_DB,true).
--
-- Idempotent: safe to apply again (`make schema`, or psql -f config/schema.sql);
-- it never drops or rewrites rows. Every change to the table (INSERT, UPDATE,
-- DELETE, TRUNCATE) sends NOTIFY rmq_connections_changed, and each gateway
-- worker, listening on that channel, re-reads the enabled rows at once.

BEGIN;
SET LOCAL client_min_messages = warning;  -- no NOTICE for "does not exist, skipping"

-- Two gateways (or init containers) applying this at once wait for each other.
SELECT pg_advisory_xact_lock(hashtext('rmq_connections schema'));

CREATE TABLE IF NOT EXISTS rmq_connections (
    connection_id text PRIMARY KEY,   -- 1-64 of A-Z a-z 0-9 _ . - (checked by the gateway)
    primary_url   text NOT NULL,      -- user:pass@host:port/vhost or an amqp:// / amqps:// URI
    backup_url    text,               -- null or empty: no backup
    enabled       boolean NOT NULL DEFAULT true
);

CREATE OR REPLACE FUNCTION rmq_connections_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The payload is informative only: the gateway re-reads the whole table.
    PERFORM pg_notify('rmq_connections_changed', TG_OP);
    RETURN NULL;
END;
$$;

-- Per statement, not per row: a bulk change costs one notification, and
-- TRUNCATE (which fires no row triggers) is covered too.
DROP TRIGGER IF EXISTS rmq_connections_notify ON rmq_connections;
CREATE TRIGGER rmq_connections_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rmq_connections
    FOR EACH STATEMENT EXECUTE FUNCTION rmq_connections_notify();

COMMIT;
