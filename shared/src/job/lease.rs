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
    sqlx::query_as(REAP_SQL).bind(limit).fetch_all(pool).await
}

/// [`reap_expired`]'s statement (public so that a test can check its plan). `$1`: the limit.
///
/// The expired leases are found by primary key through the array of their ids (`picked`), and
/// their jobs through the array of those deleted (`e`, one row), each job's attempt read at
/// its id's position, with no join between leases and jobs: whatever plan Postgres kept (see
/// [`super::lifecycle::CLAIM_SQL`]). Written as `job_id IN (SELECT ...)` and
/// `UPDATE jobs ... FROM expired`, the plan made while the tables were empty read `job_leases`
/// from its start, dead rows included, on every sweep, and hashed the expired leases against a
/// sequential scan of `jobs`.
pub const REAP_SQL: &str = "WITH picked AS (
         SELECT ARRAY(
             SELECT job_id FROM job_leases
             WHERE lease_expires_at < now()
             ORDER BY lease_expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED) AS ids
     ), expired AS (
         DELETE FROM job_leases WHERE job_id = ANY((SELECT ids FROM picked)::uuid[])
         RETURNING job_id, attempt, worker, started_at
     ), e AS (
         SELECT array_agg(job_id) AS ids, array_agg(attempt) AS attempts,
                array_agg(worker) AS workers, array_agg(started_at) AS starts
         FROM expired
     ), lost AS (
         UPDATE jobs j
         SET state = CASE WHEN e.attempts[array_position(e.ids, j.id)] - j.attempts_base
                               >= j.max_attempts
                          THEN 'dead'::job_state ELSE 'retrying'::job_state END,
             finished_at = CASE WHEN e.attempts[array_position(e.ids, j.id)] - j.attempts_base
                                     >= j.max_attempts
                                THEN now() END,
             attempts = e.attempts[array_position(e.ids, j.id)],
             started_at = e.starts[array_position(e.ids, j.id)],
             last_error = 'lease expired: worker ' || e.workers[array_position(e.ids, j.id)]
                          || ' stopped renewing it (crashed, hung or cut off)',
             run_at = now(),
             updated_at = now()
         FROM e
         WHERE j.id = ANY(e.ids)
         RETURNING j.id, j.queue, j.kind, j.attempts AS attempt,
                   e.workers[array_position(e.ids, j.id)] AS worker, j.state, j.last_error,
                   j.started_at
     ), log AS (
         INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                   outcome, error)
         SELECT id, attempt, worker, started_at, now(), 'lost', last_error
         FROM lost
         ON CONFLICT (job_id, attempt) DO NOTHING
     )
     SELECT id, queue, kind, attempt, worker, state FROM lost";
