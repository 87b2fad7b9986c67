-- Reliability: manual retries get a fresh attempt budget without renumbering attempts, and the
-- reaper finds expired leases by index.

-- Attempts made before the latest manual retry; a job is out of attempts when
-- attempts - attempts_base >= max_attempts. Attempt numbers stay unique in job_attempts.
ALTER TABLE jobs ADD COLUMN attempts_base integer NOT NULL DEFAULT 0;

-- The reaper's work list: running jobs by lease expiry.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
