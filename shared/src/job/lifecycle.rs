//! Claiming and completing jobs: the worker's two writes, each batched across deliveries.
//!
//! A claim inserts a lease (`job_leases`) for each job still `queued` and not leased; a
//! delivery for a job that is already running, finished or cancelled claims nothing and is
//! acked and skipped. The job row is not written: it keeps its stored state `queued` until the
//! attempt ends (readers see `running`, see [`super::job_columns!`]). A completion applies only
//! to the attempt that holds the lease (`job_leases.attempt = $attempt`), so a late or
//! duplicate completion cannot overwrite a newer state: it deletes the lease and writes the
//! outcome to the job row and the attempts log in one statement.
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{Job, JobId, JobState, job_columns};

/// How an attempt ended, as recorded in the attempts log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Lost,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The result of one attempt, ready to be written.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: JobId,
    pub attempt: i32,
    /// `Succeeded`, `Retrying` or `Dead`.
    pub next_state: JobState,
    pub outcome: Outcome,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// When a `Retrying` job is due again.
    pub retry_at: Option<DateTime<Utc>>,
}

/// Claims the still-`queued`, unleased jobs among `ids` for `worker`. The lease runs for
/// `lease_secs`; the worker renews it while the job runs (see [`super::lease`]).
///
/// The claim writes a lease row and nothing else: the attempt's number, start and worker are
/// in it, and [`complete_batch`] (or the reaper) moves them to the job row and the attempts log
/// once the attempt ends. Each job row is locked `FOR SHARE` until the claim commits, so that
/// a cancel (which locks the row before looking for a lease) either sees the lease or is seen
/// by the claim, never neither.
///
/// A job whose lease this statement can see is left out before its row is locked, even when
/// that lease is being deleted by a completion (or the reaper) that has not committed yet: a
/// redelivery arriving while the outcome is written. Without that check the claim would lock
/// the job row, then wait on the lease's primary key for the completion, which in turn waits
/// on the row lock to write the outcome: a deadlock that Postgres breaks after a second by
/// aborting one of them.
pub async fn claim_batch(
    db: impl sqlx::PgExecutor<'_>,
    ids: &[JobId],
    worker: &str,
    lease_secs: f64,
) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(CLAIM_SQL)
        .bind(ids)
        .bind(worker)
        .bind(lease_secs)
        .fetch_all(db)
        .await
}

/// [`claim_batch`]'s statement (public so that a test can check its plan). `$1`: the job ids,
/// `$2`: the worker, `$3`: the lease in seconds.
///
/// The jobs must be found by primary key, whatever the planner believes of the table. A plan
/// made while `jobs` is small, as on a new deployment (and kept: sqlx prepares every statement,
/// and Postgres reuses a generic plan until an ANALYZE tells it the table grew), read
/// `state = 'queued'` from an index instead, `jobs_tenant_state_id` or the partial
/// `jobs_tenant_queue_waiting`, and then filtered the ids out of every waiting job: 40-100 ms
/// per claim with a backlog of 100,000-200,000, so a backlog drained slower the longer it was.
/// Compared as text, the state matches no index and implies no partial index's predicate,
/// which leaves the primary key as the only way in.
pub const CLAIM_SQL: &str = concat!(
    "WITH l AS (
         INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
         SELECT id, attempts + 1, $2, now(), now() + make_interval(secs => $3)
         FROM jobs WHERE id = ANY($1) AND state::text = 'queued'
           AND NOT EXISTS (SELECT 1 FROM job_leases WHERE job_id = jobs.id)
         FOR SHARE
         ON CONFLICT (job_id) DO NOTHING
         RETURNING *
     )
     SELECT ",
    job_columns!(),
    " FROM l JOIN jobs j ON j.id = l.job_id"
);

/// Records a batch of attempt results of `worker`, each job's state and its finished attempt
/// in one statement; returns how many jobs changed (attempts `worker` no longer holds the lease
/// of are ignored).
pub async fn complete_batch(
    pool: &PgPool,
    worker: &str,
    completions: &[Completion],
) -> sqlx::Result<u64> {
    if completions.is_empty() {
        return Ok(0);
    }
    let n = completions.len();
    let mut ids = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut retry_ats = Vec::with_capacity(n);
    for c in completions {
        ids.push(c.id);
        attempts.push(c.attempt);
        states.push(c.next_state.as_str());
        outcomes.push(c.outcome.as_str());
        results.push(c.result.clone());
        errors.push(c.error.clone());
        retry_ats.push(c.retry_at);
    }
    let changed: i64 = sqlx::query_scalar(COMPLETE_SQL)
        .bind(&ids)
        .bind(&attempts)
        .bind(&states)
        .bind(&outcomes)
        .bind(&results)
        .bind(&errors)
        .bind(&retry_ats)
        .bind(worker)
        .fetch_one(pool)
        .await?;
    Ok(changed as u64)
}

/// [`complete_batch`]'s statement (public so that a test can check its plan). `$1`..`$7`: the
/// completions as arrays (id, attempt, next state, outcome, result, error, retry time), `$8`:
/// the worker.
///
/// The leases are looked up by their ids (`= ANY($1)`, the primary key) and each one's outcome
/// is read from the arrays at its id's position, with no join between the outcomes and the
/// leases for the planner to hash against a scan of `job_leases`, whose dead rows (a row in and
/// out per job) stay until vacuum (`api/tests/worker_plans.rs` checks the plan). The join this
/// replaced
/// (`DELETE ... USING unnest(...)`) was hashed against a sequential scan of the table when
/// planned while the table was small, a plan kept (see [`CLAIM_SQL`]) as the table grew with
/// every job ever run; and joined by key instead, it rescanned the unnested outcomes once per
/// lease (4.8 ms against 1.5 ms for 69 outcomes, `EXPLAIN ANALYZE`). `array_position` is linear,
/// so a batch of n costs n²/2 comparisons of ids: about 8,000 for 128.
pub const COMPLETE_SQL: &str = "WITH ended AS (
         DELETE FROM job_leases l
         WHERE l.job_id = ANY($1) AND l.worker = $8
           AND l.attempt = ($2::int4[])[array_position($1::uuid[], l.job_id)]
         RETURNING l.job_id, l.attempt, l.worker, l.started_at,
                   array_position($1::uuid[], l.job_id) AS i
     ), job AS (
         UPDATE jobs j
         SET state = ($3::text[])[e.i]::job_state,
             attempts = e.attempt,
             started_at = e.started_at,
             updated_at = now(),
             finished_at = CASE WHEN ($3::text[])[e.i] IN ('succeeded', 'dead') THEN now() END,
             result = ($5::jsonb[])[e.i],
             last_error = ($6::text[])[e.i],
             run_at = COALESCE(($7::timestamptz[])[e.i], j.run_at)
         FROM ended e
         WHERE j.id = e.job_id
         RETURNING j.id, e.attempt, e.worker, e.started_at, ($4::text[])[e.i] AS outcome,
                   j.last_error AS error
     ), log AS (
         INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                   outcome, error)
         SELECT id, attempt, worker, started_at, now(), outcome, error FROM job
     )
     SELECT count(*) FROM job";
