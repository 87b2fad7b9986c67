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
    sqlx::query_as(concat!(
        "WITH l AS (
             INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
             SELECT id, attempts + 1, $2, now(), now() + make_interval(secs => $3)
             FROM jobs WHERE id = ANY($1) AND state = 'queued'
               AND NOT EXISTS (SELECT 1 FROM job_leases WHERE job_id = jobs.id)
             FOR SHARE
             ON CONFLICT (job_id) DO NOTHING
             RETURNING *
         )
         SELECT ",
        job_columns!(),
        " FROM l JOIN jobs j ON j.id = l.job_id"
    ))
    .bind(ids)
    .bind(worker)
    .bind(lease_secs)
    .fetch_all(db)
    .await
}

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
    let changed: i64 = sqlx::query_scalar(
        "WITH c AS (
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::text[], $7::timestamptz[])
                 AS c(id, attempt, state, outcome, result, error, retry_at)
         ), ended AS (
             DELETE FROM job_leases l USING c
             WHERE l.job_id = c.id AND l.attempt = c.attempt AND l.worker = $8
             RETURNING l.job_id, l.attempt, l.worker, l.started_at, c.state, c.outcome, c.result,
                       c.error, c.retry_at
         ), job AS (
             UPDATE jobs j
             SET state = e.state::job_state,
                 attempts = e.attempt,
                 started_at = e.started_at,
                 updated_at = now(),
                 finished_at = CASE WHEN e.state IN ('succeeded', 'dead') THEN now() END,
                 result = e.result,
                 last_error = e.error,
                 run_at = COALESCE(e.retry_at, j.run_at)
             FROM ended e
             WHERE j.id = e.job_id
             RETURNING j.id, e.attempt, e.worker, e.started_at, e.outcome, e.error
         ), log AS (
             INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                       outcome, error)
             SELECT id, attempt, worker, started_at, now(), outcome, error FROM job
         )
         SELECT count(*) FROM job",
    )
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
