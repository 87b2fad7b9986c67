-- Performance: indexes on `jobs` that cost less per row and serve the relay in its order.
--
-- One index fewer: every row version of a job (insert, claim, completion)
-- pays for each index on it.
--
-- The per-queue counts by state (`GET /v1/queues`, COUNTS_SQL) group a whole (tenant, queue)
-- range by state, so they read every entry of that range whichever index serves them. The
-- per-queue list index carrying `state` as a payload column serves them with the same
-- index-only scan, and `jobs_tenant_queue_state` did nothing else.
DROP INDEX jobs_tenant_queue_state;
DROP INDEX jobs_tenant_queue_id;
CREATE INDEX jobs_tenant_queue_id ON jobs (tenant, queue, id DESC) INCLUDE (state);

-- The relay's work list in the order it dispatches (`outbox::lock_due`: priority, then due
-- time), so each batch is the first rows of an index scan. Ordered by `run_at` alone, every
-- batch read and sorted the whole backlog: 134 ms per batch with 80,000 jobs waiting, which
-- made a large backlog drain ever slower. Jobs due later (scheduled, retrying) have their own
-- index by due time, for `outbox::promote_due`.
DROP INDEX jobs_outbox_due;
CREATE INDEX jobs_outbox_queued ON jobs (priority DESC, run_at)
    WHERE published_at IS NULL AND state = 'queued';
CREATE INDEX jobs_outbox_later ON jobs (run_at)
    WHERE published_at IS NULL AND state IN ('scheduled', 'retrying');
