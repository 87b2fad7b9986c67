//! The outbox queries: which due jobs go to RabbitMQ next, and marking them sent.
//!
//! [`lock_due`] is the one place that decides dispatch order; priorities, fairness, per-queue
//! limits and pauses belong here when they come. Rows stay locked (`FOR UPDATE SKIP LOCKED`)
//! until the relay's transaction ends, so relay replicas never publish the same job at once, and
//! a relay that dies mid-batch leaves nothing behind: its transaction rolls back and another
//! relay (or itself, restarted) takes the jobs at once.
//!
//! A confirmed message can still be lost afterwards (a purged or deleted queue, a broker restored
//! from an old disk). [`republish_stale`] finds jobs still `queued` long after they were
//! published while their RabbitMQ queue is empty, and clears their mark so they go out again. A
//! duplicate message is harmless: the worker's claim only takes a `queued` job.

use sqlx::PgConnection;

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

/// A job waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    /// Sent as the `traceparent` message header when present.
    pub traceparent: Option<String>,
}

/// The next batch to publish, in dispatch order: the first rows of `jobs_outbox_queued`, however
/// long the backlog (public so that a test can check its plan). `$1`: the batch size.
pub const LOCK_DUE_SQL: &str = "SELECT id, kind, queue, traceparent FROM jobs
         WHERE published_at IS NULL
           AND state = 'queued'
           AND run_at <= now()
         ORDER BY priority DESC, run_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED";

/// Locks up to `limit` due, unpublished jobs: higher priority first, then oldest due first.
pub async fn lock_due(tx: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<DueJob>> {
    sqlx::query_as(LOCK_DUE_SQL).bind(limit).fetch_all(tx).await
}

/// Marks jobs as handed to the broker (after RabbitMQ confirmed them).
pub async fn mark_published(tx: &mut PgConnection, ids: &[JobId]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs
         SET published_at = now(), updated_at = now()
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(tx)
    .await?;
    Ok(())
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
/// Two counts, one per outbox index (`jobs_outbox_queued`, `jobs_outbox_later`), so neither
/// becomes a scan of the whole table.
pub async fn count_due(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM jobs
                 WHERE published_at IS NULL AND state = 'queued' AND run_at <= now())
              + (SELECT count(*) FROM jobs
                 WHERE published_at IS NULL AND state IN ('scheduled', 'retrying')
                   AND run_at <= now())",
    )
    .fetch_one(db)
    .await
}
