-- Operations: indexes that keep the per-queue statistics (GET /v1/queues) to range scans however
-- many finished jobs the table holds, and the W3C trace context a job was enqueued with.

-- Counts by state: an index-only scan per (tenant, queue), grouped by state.
CREATE INDEX jobs_tenant_queue_state ON jobs (tenant, queue, state);
-- Throughput and latency over recent windows: only the rows finished in the window are read.
CREATE INDEX jobs_tenant_queue_finished ON jobs (tenant, queue, finished_at)
    WHERE finished_at IS NOT NULL;
-- Backlog and the oldest waiting job: waiting jobs only, by due time.
CREATE INDEX jobs_tenant_queue_waiting ON jobs (tenant, queue, run_at)
    WHERE state IN ('scheduled', 'queued', 'retrying');

-- The `traceparent` header (W3C Trace Context) the job was enqueued with, if any; the relay
-- puts it in the message headers and the worker logs its trace id and forwards it.
ALTER TABLE jobs ADD COLUMN traceparent text;
