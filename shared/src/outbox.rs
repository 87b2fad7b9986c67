//! The outbox queries: which due jobs go to RabbitMQ next, and marking them sent.
//!
//! [`fetch_due`] is the one place that decides dispatch order; priorities, fairness, per-queue
//! limits and pauses belong here when they come. Rows stay locked (`FOR UPDATE SKIP LOCKED`)
//! until the relay's transaction ends, so relay replicas never publish the same job at once.

use sqlx::PgConnection;

use crate::job::JobId;

/// A job waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
}

/// Locks up to `limit` due, unpublished jobs: higher priority first, then oldest due first.
pub async fn fetch_due(tx: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<DueJob>> {
    sqlx::query_as(
        "SELECT id, kind, queue FROM jobs
         WHERE published_at IS NULL
           AND state IN ('scheduled', 'queued', 'retrying')
           AND run_at <= now()
         ORDER BY priority DESC, run_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Marks jobs as handed to the broker; waiting states become `queued`. A job a worker already
/// claimed (its row was locked by us, so that cannot happen before we commit) keeps its state.
pub async fn mark_published(tx: &mut PgConnection, ids: &[JobId]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs
         SET published_at = now(), updated_at = now(),
             state = CASE WHEN state IN ('scheduled', 'retrying') THEN 'queued' ELSE state END
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(tx)
    .await?;
    Ok(())
}
