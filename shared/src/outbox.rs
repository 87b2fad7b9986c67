//! The outbox queries: which due jobs go to RabbitMQ next, and forgetting them once sent.
//!
//! The outbox is a table of its own (`outbox`, one small row per job waiting to be published),
//! not a mark on the job row: publishing deletes that row and never rewrites the wide job row
//! and its indexes. A row is written in the same statement that makes its job `queued` (the
//! enqueue, [`promote_due`], a manual retry or redrive, [`republish_stale`]), so a committed
//! `queued` job always has either a row here or a message RabbitMQ confirmed after it became
//! `queued`. A cancel or a retention purge deletes the job's row in its own statement.
//!
//! [`lock_due`] is the one place that decides dispatch order; priorities, fairness, per-queue
//! limits and pauses belong here when they come. Rows stay locked (`FOR UPDATE SKIP LOCKED`)
//! until the relay's transaction ends, so relay replicas never publish the same job at once, and
//! a relay that dies mid-batch leaves nothing behind: its transaction rolls back and another
//! relay (or itself, restarted) takes the jobs at once.
//!
//! Writers that may find a row already there (a leftover of a relay whose commit failed after
//! the confirms, possibly locked by a relay publishing it right now) upsert with `ON CONFLICT
//! DO UPDATE`, never `DO NOTHING`: `DO UPDATE` waits for the relay's lock and, if the relay
//! deletes the row, inserts a fresh one; `DO NOTHING` would see the live row, do nothing, and
//! the relay's delete would then leave a `queued` job without a row.
//!
//! A confirmed message can still be lost afterwards (a purged or deleted queue, a broker restored
//! from an old disk). [`republish_stale`] finds jobs still `queued` long after they were handed
//! to RabbitMQ while their RabbitMQ queue is empty, and puts them back in the outbox. A duplicate
//! message is harmless: the worker's claim only takes a `queued` job.

use sqlx::PgConnection;

use crate::job::JobId;

/// The statement that puts the jobs a CTE returned (`$rows`: the CTE's name, with a `WHERE` if
/// need be) into the outbox, for the data-modifying CTEs of every writer that makes jobs
/// `queued`: one text for the columns and for the conflict rule (`DO UPDATE`, see above).
/// A macro so that queries stay literals.
macro_rules! into_outbox {
    ($rows:literal) => {
        concat!(
            "INSERT INTO outbox (job_id, queue, kind, priority, run_at, traceparent)
             SELECT id, queue, kind, priority, run_at, traceparent FROM ",
            $rows,
            " ON CONFLICT (job_id) DO UPDATE SET run_at = EXCLUDED.run_at"
        )
    };
}

/// The statement that takes the jobs a CTE returned (`$rows`, with an `id` column) out of the
/// outbox, for the writers that end or delete waiting jobs.
macro_rules! out_of_outbox {
    ($rows:literal) => {
        concat!(
            "DELETE FROM outbox USING ",
            $rows,
            " AS gone WHERE outbox.job_id = gone.id"
        )
    };
}

pub(crate) use {into_outbox, out_of_outbox};

/// Turns due `scheduled` and `retrying` jobs into `queued` and puts them in the outbox,
/// committed on its own before they are published. The order matters: a worker's claim only
/// takes `queued` rows, and Postgres evaluates that against the last *committed* version of the
/// row. Were the relay to change the state in the same transaction that publishes, a fast worker
/// could see the old state, claim nothing and drop the message. (The outbox rows are written in
/// this statement, so [`lock_due`] only ever sees jobs whose `queued` state is committed.)
pub async fn promote_due(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<u64> {
    Ok(sqlx::query(concat!(
        "WITH promoted AS (
             UPDATE jobs SET state = 'queued', updated_at = now()
             WHERE state IN ('scheduled', 'retrying') AND run_at <= now()
             RETURNING id, queue, kind, priority, run_at, traceparent
         ) ",
        into_outbox!("promoted")
    ))
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

/// The next batch to publish, in dispatch order: the first rows of `outbox_order`, however long
/// the backlog (public so that a test can check its plan). `$1`: the batch size.
pub const LOCK_DUE_SQL: &str = "SELECT job_id AS id, kind, queue, traceparent FROM outbox
         ORDER BY priority DESC, run_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED";

/// Locks up to `limit` rows of the outbox: higher priority first, then oldest due first.
///
/// Every row is due (rows are written when their job becomes `queued`), and the job's state is
/// not read again: a row whose job has moved on since (claimed through an earlier copy of its
/// message, say) costs one message the worker's claim skips, which is cheaper than reading every
/// job row of every batch to avoid it.
pub async fn lock_due(tx: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<DueJob>> {
    sqlx::query_as(LOCK_DUE_SQL).bind(limit).fetch_all(tx).await
}

/// Takes jobs out of the outbox once RabbitMQ confirmed them, in the transaction that locked
/// them with [`lock_due`]. The job rows are not touched.
pub async fn remove_published(tx: &mut PgConnection, ids: &[JobId]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM outbox WHERE job_id = ANY($1)")
        .bind(ids)
        .execute(tx)
        .await?;
    Ok(())
}

/// Puts back in the outbox the jobs of `queue` that are still `queued`, out of the outbox, not
/// running (leased), and unchanged for more than `after`: their message was lost by RabbitMQ. Call it only when the
/// queue's RabbitMQ queue has no ready messages, so that jobs merely waiting behind a backlog are
/// not sent twice (and a long outage of the workers cannot multiply the backlog).
///
/// Publishing leaves the job row alone, so the time a job was sent is not stored; its
/// `updated_at`, the time it became `queued` (or was last put back here), stands in for it, and
/// is set anew here so each lost job goes out again at most once per `after`. The two differ only
/// for a job that waited in the outbox itself (RabbitMQ away, a relay backlog): if the sweep runs
/// while such a job's message sits in a worker's prefetch window, not yet claimed, the job is
/// sent once more. The duplicate is skipped by the worker's claim, which only takes `queued`
/// jobs.
pub async fn republish_stale(
    db: impl sqlx::PgExecutor<'_>,
    queue: &str,
    after: std::time::Duration,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(concat!(
        "WITH stale AS (
             UPDATE jobs SET updated_at = now()
             WHERE state = 'queued' AND queue = $1
               AND updated_at < now() - make_interval(secs => $2)
               AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.job_id = jobs.id)
               AND NOT EXISTS (SELECT 1 FROM job_leases WHERE job_leases.job_id = jobs.id)
             RETURNING id, queue, kind, priority, run_at, traceparent
         ) ",
        into_outbox!("stale")
    ))
    .bind(queue)
    .bind(after.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected())
}

/// How many due jobs wait to be published: the relay's backlog (grows while RabbitMQ is away).
/// The outbox, plus the `scheduled` and `retrying` jobs whose time has come and which the
/// relay has not promoted yet.
pub async fn count_due(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM outbox)
              + (SELECT count(*) FROM jobs
                 WHERE state IN ('scheduled', 'retrying') AND run_at <= now())",
    )
    .fetch_one(db)
    .await
}
