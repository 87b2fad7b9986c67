-- Conveyor's initial schema: API keys, jobs (which double as the outbox), attempts and idempotency keys.

CREATE TYPE job_state AS ENUM (
    'scheduled', 'queued', 'running', 'succeeded', 'retrying', 'dead', 'cancelled'
);

-- Bearer tokens are stored only as SHA-256 digests: tokens are 190+ bits of randomness,
-- so a fast hash is enough and lets us look a key up by its digest.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant       text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    token_sha256 bytea       NOT NULL,
    token_prefix text        NOT NULL,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CONSTRAINT api_keys_token_sha256 UNIQUE (token_sha256)
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,           -- UUIDv7: time-ordered, so it is also the list cursor
    tenant           text        NOT NULL,
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    state            job_state   NOT NULL,
    payload          jsonb       NOT NULL,
    priority         smallint    NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    timeout_secs     integer     NOT NULL,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    result           jsonb,
    last_error       text,
    schedule_id      uuid,
    tick             timestamptz,
    -- Outbox: NULL while the job waits to be (re)published to RabbitMQ.
    published_at     timestamptz,
    -- The claim currently running the job: which worker, until when.
    worker           text,
    lease_expires_at timestamptz,
    CONSTRAINT jobs_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT jobs_timeout_positive CHECK (timeout_secs >= 1)
);

-- The relay's work list: waiting jobs not yet on the broker, by due time.
CREATE INDEX jobs_outbox_due ON jobs (run_at)
    WHERE published_at IS NULL AND state IN ('scheduled', 'queued', 'retrying');
-- Listing a tenant's jobs newest first, optionally by queue / state / kind.
CREATE INDEX jobs_tenant_id ON jobs (tenant, id DESC);
CREATE INDEX jobs_tenant_state_id ON jobs (tenant, state, id DESC);
CREATE INDEX jobs_tenant_queue_id ON jobs (tenant, queue, id DESC);
CREATE INDEX jobs_tenant_schedule_id ON jobs (tenant, schedule_id, id DESC) WHERE schedule_id IS NOT NULL;

-- One row per attempt: the attempts log shown on GET /v1/jobs/{id}.
CREATE TABLE job_attempts (
    job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    worker      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    outcome     text,
    error       text,
    PRIMARY KEY (job_id, attempt)
);

-- Idempotency-Key: one row per (tenant, key) holding a digest of the request it answered
-- and the jobs it created, so a replay returns the same jobs and a different body is a conflict.
CREATE TABLE idempotency_keys (
    tenant         text        NOT NULL,
    key            text        NOT NULL,
    request_sha256 bytea       NOT NULL,
    job_ids        uuid[]      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);
