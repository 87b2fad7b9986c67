//! Steering a job by hand: cancel one that is waiting, retry one that is dead or cancelled.
//!
//! Each change is one guarded UPDATE (`WHERE state IN (...) AND tenant = $1 AND id = $2`), so a
//! race with a relay, a worker or another request is decided by Postgres: a worker's claim only
//! takes `queued` rows, so a cancelled job's message still in RabbitMQ is skipped, and of two
//! concurrent cancels exactly one wins. Only when the UPDATE matches nothing is the row read
//! again, to tell "no such job" (404) from "not in a state this applies to" (409).
//!
//! Both run in the caller's transaction, so the audit entry of the change commits with it; the
//! caller reports the change ([`report_cancelled`], [`report_retried`]) once it has committed.
//! Under READ COMMITTED each statement still sees the latest committed rows, so the race
//! handling works the same inside it.

use sqlx::PgConnection;

use super::{Job, JobId, JobState, from_jobs};
use crate::{
    outbox::{into_outbox, out_of_outbox},
    relay::notify_relays,
};

/// The `SET` list of a retry: due at once, with a fresh attempt budget (attempts keep counting,
/// only those after `attempts_base` count against `max_attempts`), and the last run's result
/// cleared. One text for the single retry here and the bulk one in `retention`.
macro_rules! retry_set {
    () => {
        "SET state = 'queued', attempts_base = attempts, run_at = now(),
             finished_at = NULL, result = NULL, updated_at = now()"
    };
}
pub(crate) use retry_set;

/// The states a job can be cancelled from: waiting, with no attempt running.
pub const CANCELLABLE: [JobState; 3] = [JobState::Scheduled, JobState::Queued, JobState::Retrying];

/// The states a job can be retried from.
pub const RETRYABLE: [JobState; 2] = [JobState::Dead, JobState::Cancelled];

/// How many times a refused transition is tried again when the job moved into a state it
/// applies to between the UPDATE and the read that explains the refusal (say a running job
/// failed and became `retrying` while we were cancelling it). Three misses in a row would take
/// three such moves timed exactly between two statements.
const RACE_TRIES: usize = 3;

/// Why a job was not cancelled or retried.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// No job with this id belongs to the tenant.
    #[error("job not found")]
    NotFound,
    #[error("a {0} job cannot be cancelled")]
    NotCancellable(JobState),
    #[error("a {0} job cannot be retried")]
    NotRetryable(JobState),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Cancels a waiting (`scheduled`, `queued` or `retrying`) job. A waiting job has no open
/// attempt, so the attempts log is left as it is.
///
/// The job leaves the outbox in the same statement, so no relay publishes it afterwards. If a
/// relay is publishing it right now, the delete waits for the relay's transaction; the job row,
/// already changed by then, keeps any worker from claiming the job before the cancel commits,
/// and once it has, the claim finds the job `cancelled` and skips the message.
///
/// A running job is a stored `queued` one with a lease, so the UPDATE also asks for no lease.
/// A claim in flight holds the job row `FOR SHARE` until its lease commits, and its lease is
/// invisible to a statement that started before that commit; so the row is locked first, in a
/// statement of its own, which waits for any such claim: the UPDATE after it then sees the lease.
#[tracing::instrument(name = "job.cancel", skip(tx), fields(job_id = %id))]
pub async fn cancel(
    tx: &mut PgConnection,
    tenant: &str,
    id: JobId,
) -> Result<Job, TransitionError> {
    let mut tries = 0;
    loop {
        sqlx::query("SELECT FROM jobs WHERE tenant = $1 AND id = $2 FOR UPDATE")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let cancelled: Option<Job> = sqlx::query_as(concat!(
            "WITH cancelled AS (
                 UPDATE jobs
                 SET state = 'cancelled', finished_at = now(), updated_at = now()
                 WHERE state IN ('scheduled', 'queued', 'retrying') AND tenant = $1 AND id = $2
                   AND NOT EXISTS (SELECT FROM job_leases WHERE job_leases.job_id = jobs.id)
                 RETURNING *
             ), unsent AS (",
            out_of_outbox!("cancelled"),
            ")
             SELECT * FROM cancelled"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = cancelled {
            return Ok(job);
        }
        tries += 1;
        match state_of(tx, tenant, id).await? {
            None => return Err(TransitionError::NotFound),
            Some(state) if CANCELLABLE.contains(&state) && tries < RACE_TRIES => continue,
            Some(state) => return Err(TransitionError::NotCancellable(state)),
        }
    }
}

/// Runs a `dead` or `cancelled` job again with a fresh attempt budget: attempts keep counting
/// (so attempt numbers stay unique in the log) but only those after `attempts_base` count
/// against `max_attempts`. The job is due at once: it goes into the outbox in the same
/// statement, and the relay is woken when `tx` commits. `last_error` is kept as history until
/// the next attempt overwrites it.
#[tracing::instrument(name = "job.retry", skip(tx), fields(job_id = %id))]
pub async fn retry(tx: &mut PgConnection, tenant: &str, id: JobId) -> Result<Job, TransitionError> {
    let mut tries = 0;
    loop {
        let retried: Option<Job> = sqlx::query_as(concat!(
            "WITH retried AS (
                 UPDATE jobs ",
            retry_set!(),
            "
                 WHERE state IN ('dead', 'cancelled') AND tenant = $1 AND id = $2
                 RETURNING *
             ), due AS (",
            into_outbox!("retried"),
            ")
             SELECT * FROM retried"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = retried {
            notify_relays(&mut *tx).await?;
            return Ok(job);
        }
        tries += 1;
        match state_of(tx, tenant, id).await? {
            None => return Err(TransitionError::NotFound),
            Some(state) if RETRYABLE.contains(&state) && tries < RACE_TRIES => continue,
            Some(state) => return Err(TransitionError::NotRetryable(state)),
        }
    }
}

/// Logs and counts a cancel once the caller's transaction committed: one that rolls back
/// (its audit entry failed, say) cancelled nothing.
pub fn report_cancelled(job: &Job) {
    tracing::info!(job_id = %job.id, queue = %job.queue, "job cancelled");
    metrics::counter!("conveyor_jobs_cancelled_total", "queue" => job.queue.clone()).increment(1);
}

/// Logs and counts a retry once the caller's transaction committed.
pub fn report_retried(job: &Job) {
    tracing::info!(job_id = %job.id, queue = %job.queue, attempts = job.attempts, "job retried");
    metrics::counter!("conveyor_jobs_retried_total", "queue" => job.queue.clone()).increment(1);
}

/// The job's state as readers see it (`running` while leased), if the tenant has such a job.
pub async fn state_of(
    tx: &mut PgConnection,
    tenant: &str,
    id: JobId,
) -> sqlx::Result<Option<JobState>> {
    sqlx::query_scalar(concat!(
        "SELECT CASE WHEN l.job_id IS NULL THEN j.state ELSE 'running' END ",
        from_jobs!(),
        " WHERE j.tenant = $1 AND j.id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(tx)
    .await
}
