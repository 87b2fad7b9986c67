//! Leases: how a job that was running on a worker that died gets back on the retry path.
//!
//! A claim gives the job a short lease; the worker renews the leases of everything it runs
//! ([`renew`]) every third of the lease. A worker that crashes, hangs or loses its network stops
//! renewing, and any worker's reaper ([`reap_expired`]) takes the job back: the attempt is
//! recorded as `lost`, and the job goes to `retrying` (due at once) or, out of attempts, `dead`.
//! A late completion from the lost attempt is ignored: completions only apply to the attempt
//! that is still running.
//!
//! Leases are rows of `job_leases`, one per running attempt. The reaper reads them in expiry
//! order from `job_leases_expiry`; a renewal scans the table, whose live rows are the running
//! jobs (a few hundred).

use sqlx::PgPool;

use super::{JobId, JobState};

/// Extends the leases of the jobs `worker` is running; returns how many.
pub async fn renew(pool: &PgPool, worker: &str, lease_secs: f64) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE job_leases SET lease_expires_at = now() + make_interval(secs => $2)
         WHERE worker = $1",
    )
    .bind(worker)
    .bind(lease_secs)
    .execute(pool)
    .await?
    .rows_affected())
}

/// A job taken back from a worker that stopped renewing its lease.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reaped {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub attempt: i32,
    /// The worker that lost it.
    pub worker: Option<String>,
    /// `Retrying` or `Dead`.
    pub state: JobState,
}

/// Takes back up to `limit` running jobs whose lease expired. Safe to run in every worker at
/// once: leases are locked with `SKIP LOCKED`, and a lease deleted meanwhile (its attempt
/// completed) is not taken back.
pub async fn reap_expired(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Reaped>> {
    // Planned anew on every run (an unnamed statement), not once per connection: it runs every
    // few seconds, so planning costs nothing here, and a plan kept from when the tables were
    // small joined the expired leases to a sequential scan of `jobs` (see [`REAP_SQL`]).
    sqlx::query_as(REAP_SQL)
        .persistent(false)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// [`reap_expired`]'s statement (public so that a test can check its plan). `$1`: the limit.
///
/// The expired leases, and then their jobs, are found by primary key through one array of
/// their ids (`picked`). Joined instead (`job_id IN (SELECT ...)`, `FROM expired` alone), the
/// plan Postgres made while the tables were small, and kept (see
/// [`super::lifecycle::CLAIM_SQL`]), read the whole of `job_leases`, dead rows included, and
/// even with the array it still hashed the expired leases against a sequential scan of `jobs`,
/// which is why [`reap_expired`] has it planned on every run.
pub const REAP_SQL: &str = "WITH picked AS (
         SELECT ARRAY(
             SELECT job_id FROM job_leases
             WHERE lease_expires_at < now()
             ORDER BY lease_expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED) AS ids
     ), expired AS (
         DELETE FROM job_leases WHERE job_id = ANY((SELECT ids FROM picked)::uuid[])
         RETURNING *
     ), lost AS (
         UPDATE jobs j
         SET state = CASE WHEN e.attempt - j.attempts_base >= j.max_attempts
                          THEN 'dead'::job_state ELSE 'retrying'::job_state END,
             finished_at = CASE WHEN e.attempt - j.attempts_base >= j.max_attempts
                                THEN now() END,
             attempts = e.attempt,
             started_at = e.started_at,
             last_error = 'lease expired: worker ' || e.worker
                          || ' stopped renewing it (crashed, hung or cut off)',
             run_at = now(),
             updated_at = now()
         FROM expired e
         WHERE j.id = ANY((SELECT ids FROM picked)::uuid[]) AND j.id = e.job_id
         RETURNING j.id, j.queue, j.kind, e.attempt, e.worker, j.state, j.last_error,
                   e.started_at
     ), log AS (
         INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                   outcome, error)
         SELECT id, attempt, worker, started_at, now(), 'lost', last_error
         FROM lost
         ON CONFLICT (job_id, attempt) DO NOTHING
     )
     SELECT id, queue, kind, attempt, worker, state FROM lost";
