-- Performance (#8): the outbox gets a table of its own, so that publishing a job deletes a small
-- row here instead of rewriting the wide job row. `jobs.published_at` appeared in the predicate of
-- `jobs_outbox_due`, so marking a job published was a non-HOT update of `jobs`: a new row version
-- and an entry in every index of the table, for each job.
--
-- A row here means "this job became `queued` and no relay has had RabbitMQ confirm it since".
-- It is written in the same statement that makes the job `queued` (enqueue, promotion of due
-- `scheduled` / `retrying` jobs, manual retry, redrive, lost-message sweep) and deleted by the
-- relay in the transaction that published it, after the confirms, or with the job (cancel,
-- retention). `scheduled` and `retrying` jobs have no row: they are found by
-- `jobs_promote_due` when due and get one when promoted.
--
-- It carries what the relay sends and orders by, so publishing reads no job row. There is no
-- foreign key to `jobs` on purpose: its check would lock (and so write to) the job row on every
-- insert; the statements that delete jobs delete their rows here.
CREATE TABLE outbox (
    job_id      uuid        PRIMARY KEY,
    queue       text        NOT NULL,
    kind        text        NOT NULL,
    priority    smallint    NOT NULL,
    run_at      timestamptz NOT NULL,
    traceparent text
);

-- The relay's order: higher priority first, then oldest due first, so that each batch is the
-- first rows of this index. (Ordered by due time alone, as `jobs_outbox_due` was, every batch
-- read and sorted the whole backlog: 134 ms per batch with 80,000 jobs waiting.)
CREATE INDEX outbox_order ON outbox (priority DESC, run_at);

-- Jobs waiting to be published now get their row; those already published need none.
INSERT INTO outbox (job_id, queue, kind, priority, run_at, traceparent)
SELECT id, queue, kind, priority, run_at, traceparent FROM jobs
WHERE published_at IS NULL AND state = 'queued';

-- The relay's promotion work list: jobs waiting for their time, by due time.
CREATE INDEX jobs_promote_due ON jobs (run_at) WHERE state IN ('scheduled', 'retrying');

DROP INDEX jobs_outbox_due;
-- Nothing writes it any more; a column left NULL would say every job waits to be published.
ALTER TABLE jobs DROP COLUMN published_at;
