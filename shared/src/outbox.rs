//! The outbox queries: which due jobs go to RabbitMQ next, and marking them sent.
//!
//! [`take_due`] is the one place that decides dispatch order; priorities, fairness, per-queue
//! limits and pauses belong here when they come.
//!
//! The relay marks a batch published *before* sending it, in a short transaction of its own
//! (`FOR UPDATE SKIP LOCKED`, so replicas never take the same job). The job rows are therefore
//! not locked while their messages are out, and a worker claims a job the moment its message
//! arrives. (Marking after the confirms, in the publishing transaction, held every row of the
//! batch locked for the whole round trip to RabbitMQ, and each worker's claim waited on it: that
//! was the worker's main stall under load.) If publishing then fails, [`release`] clears the
//! mark at once. If the relay dies in between, or RabbitMQ loses a confirmed message (a purged
//! or deleted queue), [`republish_stale`] clears the marks of jobs still `queued` long after
//! they were sent, and they go out again. A duplicate message is harmless: the worker's claim
//! only takes a `queued` job.

use chrono::{DateTime, Utc};

use crate::job::JobId;

/// Turns due `scheduled` and `retrying` jobs into `queued`, committed on its own before they
/// are published. The order matters: a worker's claim only takes `queued` rows, and Postgres
/// evaluates that against the last *committed* version of the row. Were the relay to change the
/// state in the same transaction that publishes, a fast worker could see the old state, claim
/// nothing and drop the message.
pub async fn promote_due(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE jobs SET state = 'queued', updated_at = now()
         WHERE published_at IS NULL
           AND state IN ('scheduled', 'retrying')
           AND run_at <= now()",
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// A job taken for publishing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueJob {
    pub id: JobId,
    /// The attempt count when taken: [`release`] clears the mark only if it is unchanged.
    pub attempts: i32,
    pub kind: String,
    pub queue: String,
    /// Sent as the `traceparent` message header when present.
    pub traceparent: Option<String>,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
}

/// Takes up to `limit` due, unpublished jobs, higher priority first and then oldest due first,
/// and marks them published (committed by the caller before it sends them).
pub async fn take_due(db: impl sqlx::PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<DueJob>> {
    let mut due: Vec<DueJob> = sqlx::query_as(
        "UPDATE jobs SET published_at = now(), updated_at = now()
         WHERE id IN (
             SELECT id FROM jobs
             WHERE published_at IS NULL
               AND state = 'queued'
               AND run_at <= now()
             ORDER BY priority DESC, run_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         RETURNING id, attempts, kind, queue, traceparent, priority, run_at",
    )
    .bind(limit)
    .fetch_all(db)
    .await?;
    // RETURNING comes in no particular order; send in dispatch order.
    due.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)));
    Ok(due)
}

/// Clears the mark of jobs whose publishing failed, so the next batch takes them again; only
/// of those still `queued` at the attempt they were taken at (one claimed meanwhile, through a
/// message that did get out, is left alone).
pub async fn release(db: impl sqlx::PgExecutor<'_>, jobs: &[DueJob]) -> sqlx::Result<u64> {
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempts).collect();
    Ok(sqlx::query(
        "UPDATE jobs j
         SET published_at = NULL, updated_at = now()
         FROM unnest($1::uuid[], $2::int4[]) AS t(id, attempts)
         -- `id = ANY` as well as the join, so the rows are found through the primary key.
         WHERE j.id = ANY($1) AND j.id = t.id AND j.attempts = t.attempts
           AND j.state = 'queued'",
    )
    .bind(&ids)
    .bind(&attempts)
    .execute(db)
    .await?
    .rows_affected())
}

/// Clears the mark of jobs of `queue` still `queued` more than `after` since they were
/// published: their message was never sent (the relay died between marking and sending) or
/// RabbitMQ lost it. They are published again. Call it only when the queue's RabbitMQ queue has
/// no ready messages, so that jobs merely waiting behind a backlog are not sent twice (and a
/// long outage of the workers cannot multiply the backlog).
pub async fn republish_stale(
    db: impl sqlx::PgExecutor<'_>,
    queue: &str,
    after: std::time::Duration,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE jobs SET published_at = NULL, updated_at = now()
         WHERE state = 'queued' AND queue = $1
           AND published_at < now() - make_interval(secs => $2)",
    )
    .bind(queue)
    .bind(after.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected())
}

/// How many due jobs wait to be published: the relay's backlog (grows while RabbitMQ is away).
pub async fn count_due(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs
         WHERE published_at IS NULL
           AND state IN ('scheduled', 'queued', 'retrying')
           AND run_at <= now()",
    )
    .fetch_one(db)
    .await
}
