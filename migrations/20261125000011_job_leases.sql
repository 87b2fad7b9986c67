-- Performance (#8): the running attempt gets a narrow table of its own, so that a job row is
-- written twice in its life (enqueued, finished) instead of three times. The claim was an
-- UPDATE of the wide `jobs` row that changed `state`, a column of three of its indexes: never
-- HOT, so a new row version and an entry in each of five indexes per job, and the completion
-- then rewrote that version again. Replayed in `psql` (20,000 jobs, enqueue, publish, claim in
-- 50s, complete in 50s): 1.82-2.07 s for the old claim against 1.20-1.34 s for a lease row.
--
-- A row here means "attempt `attempt` of this job is running on `worker`". The claim inserts it
-- for a job whose stored state is `queued` (the primary key makes two claims of one job exclusive);
-- the completion, or the reaper once `lease_expires_at` passes, deletes it in the statement that
-- writes the attempt's outcome to the job row and to `job_attempts`. While it exists the job
-- row keeps its stored state `queued` and its previous attempt count: readers lay the lease over
-- the row (state `running`, the attempt, its start, worker and lease); see `job_columns!` in
-- `shared/src/job/mod.rs`.
--
-- No foreign key, as for the outbox: its check would lock the job row on every insert.
CREATE TABLE job_leases (
    job_id           uuid        PRIMARY KEY,
    attempt          integer     NOT NULL,
    worker           text        NOT NULL,
    started_at       timestamptz NOT NULL,
    lease_expires_at timestamptz NOT NULL
);

-- The reaper's order: it reads the first expired leases and stops at the first live one. The
-- table churns (a row in and out per job) and its dead rows stay until vacuum: a sequential
-- scan would grow with them (43 ms per sweep after 600,000 jobs with autovacuum off, as on the
-- CI machine), where this index scan does not. Renewals, one statement per worker every third
-- of a lease, scan the table.
CREATE INDEX job_leases_expiry ON job_leases (lease_expires_at);

-- Attempts running while this migration runs keep running: their lease moves here, and their
-- job rows go back to what a claim now leaves them as.
INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
SELECT id, attempts, coalesce(worker, '?'), coalesce(started_at, now()),
       coalesce(lease_expires_at, now())
FROM jobs WHERE state = 'running';

UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0) WHERE state = 'running';

-- Drops `jobs_running_lease` with it; the job row no longer says who runs it.
ALTER TABLE jobs DROP COLUMN lease_expires_at, DROP COLUMN worker;
