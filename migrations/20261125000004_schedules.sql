-- Cron schedules, and the guarantee that each of their ticks becomes exactly one job.

-- What a schedule does about ticks that passed while no scheduler ran (or it was stalled).
CREATE TYPE misfire_policy AS ENUM ('skip', 'run_once', 'catch_up');

CREATE TABLE schedules (
    id          uuid PRIMARY KEY,                 -- UUIDv7: also the list cursor
    tenant      text           NOT NULL,
    name        text           NOT NULL,
    cron        text           NOT NULL,          -- 5 fields, or 6 with leading seconds
    timezone    text           NOT NULL,          -- IANA name; cron fields are wall clock there
    job         jsonb          NOT NULL,          -- the job template: {kind, payload, queue?, ...}
    misfire     misfire_policy NOT NULL DEFAULT 'skip',
    paused      boolean        NOT NULL DEFAULT false,
    -- The first tick not yet emitted. NULL while paused (resuming recomputes it from the
    -- present, so a pause never ends in a burst) or when the cron has no future occurrence.
    next_run_at timestamptz,
    -- The latest tick a job was emitted for.
    last_tick   timestamptz,
    created_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT schedules_tenant_name UNIQUE (tenant, name),
    CONSTRAINT schedules_paused_no_next CHECK (NOT paused OR next_run_at IS NULL)
);

-- The scheduler's work list: running schedules by their next tick.
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE NOT paused AND next_run_at IS NOT NULL;
-- Listing a tenant's schedules newest first.
CREATE INDEX schedules_tenant_id ON schedules (tenant, id DESC);

-- Exactly one job per (schedule, tick), whatever the number of scheduler replicas: the
-- scheduler inserts with ON CONFLICT DO NOTHING. jobs.schedule_id has no foreign key on
-- purpose: deleting a schedule keeps the jobs it emitted (and their history) as they are.
CREATE UNIQUE INDEX jobs_schedule_tick ON jobs (schedule_id, tick) WHERE schedule_id IS NOT NULL;
