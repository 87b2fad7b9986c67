-- Performance (#8) and the job list's plans: one index fewer on `jobs`, whose every row version
-- (enqueued, finished) pays an entry in each.
--
-- The list (`shared/src/job/list.rs`) now has a statement per shape of filter. Each reads its
-- page in id order from an index whose leading columns are exactly its filters, so no plan
-- (a generic one kept from empty tables included) walks a range that the filter then thins:
--
-- - by state, and by state in a queue: `jobs_tenant_state_id` and the index below;
-- - by queue: the newest page of each state from the index below, merged;
-- - unfiltered: the newest page of each state from `jobs_tenant_state_id`, merged. This is what
--   `jobs_tenant_id` served; it goes.
--
-- `jobs_tenant_queue_id (tenant, queue, id) INCLUDE (state)` served the queue list and the
-- per-queue counts by state (`GET /v1/queues`, an index-only scan grouped by state); the index
-- below serves both, and a state in a queue without reading the queue's other states.
DROP INDEX jobs_tenant_id;
DROP INDEX jobs_tenant_queue_id;
CREATE INDEX jobs_tenant_queue_state_id ON jobs (tenant, queue, state, id DESC);
