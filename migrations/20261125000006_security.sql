-- Security: the audit trail of administrative actions (who did what, when, from where).
--
-- Rows are only ever inserted. `tenant` is NULL for an operator command that spans every tenant
-- (`conveyor-api jobs purge`, `jobs retry-dead` without --tenant): such rows are for operators
-- reading the table, and no API key sees them. `key_id` is NULL when the actor is the CLI.
CREATE TABLE audit_log (
    -- UUIDv7: time-ordered, so the newest-first keyset page is an index range scan.
    id          uuid PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    tenant      text,
    key_id      uuid,
    action      text NOT NULL,
    target      text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The TCP peer of the request (no X-Forwarded-For: it is whatever the client says), or
    -- 'cli' for operator commands.
    remote_addr text NOT NULL
);

CREATE INDEX audit_log_tenant_id ON audit_log (tenant, id DESC);
