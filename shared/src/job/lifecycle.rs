//! Claiming and completing jobs: the worker's two writes, each batched across deliveries.
//!
//! A claim moves `queued → running` only for jobs still `queued`; a delivery for a job that is
//! already running, finished or cancelled claims nothing and is acked and skipped. A completion
//! applies only to the attempt that claimed it (`attempts = $attempt AND state = 'running'`),
//! so a late or duplicate completion cannot overwrite a newer state. The attempts log gets its
//! row when an attempt ends; the running attempt is read off the job row.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{Job, JobId, JobState};

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

/// Claims the still-`queued` jobs among `ids` for `worker`. The lease runs for `lease_secs`;
/// the worker renews it while the job runs (see [`super::lease`]).
///
/// The attempt is not written to `job_attempts` here: the job row itself says which attempt
/// is running, where and since when, and [`complete_batch`] (or the reaper) writes the attempt
/// once, finished. One insert per attempt instead of an insert now and an update later: a
/// fifth less written per job on the hot path.
pub async fn claim_batch(
    pool: &PgPool,
    ids: &[JobId],
    worker: &str,
    lease_secs: f64,
) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(
        "UPDATE jobs
         SET state = 'running', attempts = attempts + 1, started_at = now(),
             updated_at = now(), worker = $2,
             lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = ANY($1) AND state = 'queued'
         RETURNING *",
    )
    .bind(ids)
    .bind(worker)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
}

/// Records a batch of attempt results of `worker`, each job's state and its finished attempt
/// in one statement; returns how many jobs changed (stale ones are ignored).
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
         ), job AS (
             UPDATE jobs j
             SET state = c.state::job_state,
                 updated_at = now(),
                 finished_at = CASE WHEN c.state IN ('succeeded', 'dead') THEN now() END,
                 result = c.result,
                 last_error = c.error,
                 run_at = COALESCE(c.retry_at, j.run_at),
                 worker = NULL,
                 lease_expires_at = NULL
             FROM c
             WHERE j.id = c.id AND j.state = 'running' AND j.attempts = c.attempt
             RETURNING j.id, c.attempt, j.started_at, c.outcome, c.error
         ), log AS (
             INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                       outcome, error)
             SELECT id, attempt, $8, started_at, now(), outcome, error FROM job
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
