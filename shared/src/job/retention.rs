//! Operator bulk actions and retention: retry every dead job matching a filter, and delete
//! finished jobs older than a cutoff so the jobs table does not grow forever.
//!
//! Deletion runs in bounded batches (`FOR UPDATE SKIP LOCKED`), so it never holds many locks at
//! once and several processes may run it together. Attempts go with their job, in the same
//! statement (there is no foreign key to do it: see migration 0010); ledger entries and provider
//! records do not reference jobs and are kept.
//!
//! An operator's purge is audited per batch: each batch's transaction holds its own audit
//! entry, so whatever was deleted is recorded even if a later batch fails.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::{
    audit::{self, Action, Actor},
    job::control::retry_set,
    outbox::{into_outbox, out_of_outbox},
    relay::notify_relays,
};

/// Which dead jobs to retry; `None` matches everything.
#[derive(Debug, Default, Clone)]
pub struct DeadFilter {
    pub tenant: Option<String>,
    pub queue: Option<String>,
    pub kind: Option<String>,
}

/// Retries every dead job matching `filter` with a fresh attempt budget, in the caller's
/// transaction: they go into the outbox in the same statement, and the relay is woken when it
/// commits. Returns how many.
pub async fn retry_dead(tx: &mut PgConnection, filter: &DeadFilter) -> sqlx::Result<u64> {
    let n: i64 = sqlx::query_scalar(concat!(
        "WITH retried AS (
             UPDATE jobs ",
        retry_set!(),
        "
             WHERE state = 'dead'
               AND ($1::text IS NULL OR tenant = $1)
               AND ($2::text IS NULL OR queue = $2)
               AND ($3::text IS NULL OR kind = $3)
             RETURNING id, queue, kind, priority, run_at, traceparent
         ), due AS (",
        into_outbox!("retried"),
        ")
         SELECT count(*) FROM retried"
    ))
    .bind(&filter.tenant)
    .bind(&filter.queue)
    .bind(&filter.kind)
    .fetch_one(&mut *tx)
    .await?;
    let n = n as u64;
    if n > 0 {
        notify_relays(&mut *tx).await?;
    }
    Ok(n)
}

/// Deletes jobs that finished before `cutoff` (succeeded and cancelled; dead ones too when
/// `include_dead`), `batch` at a time; returns how many were deleted. Idempotency keys older
/// than the cutoff go too (with the last batch), since the jobs they point at may be gone.
/// With `audit`, each batch's transaction records a `jobs.purge` entry by that actor with the
/// batch's number and count. A finished job normally has no outbox row, but one left behind by
/// a relay whose commit failed goes with its job: a message naming no job would be poison.
pub async fn purge_finished(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    include_dead: bool,
    batch: i64,
    audit: Option<&Actor>,
) -> sqlx::Result<u64> {
    let mut total = 0;
    for number in 1.. {
        let mut tx = pool.begin().await?;
        let n: i64 = sqlx::query_scalar(PURGE_SQL)
            .bind(cutoff)
            .bind(include_dead)
            .bind(batch)
            .fetch_one(&mut *tx)
            .await?;
        total += n as u64;
        let last = n < batch;
        if last {
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(actor) = audit {
            let detail = serde_json::json!({
                "cutoff": cutoff, "include_dead": include_dead, "batch": number, "deleted": n,
            });
            audit::record(&mut *tx, actor, Action::JobsPurge, None, detail).await?;
        }
        tx.commit().await?;
        if last {
            break;
        }
    }
    Ok(total)
}

/// One batch of [`purge_finished`] (public so that a test can check its plan). `$1`: the
/// cutoff, `$2`: whether dead jobs go too, `$3`: the batch size.
///
/// Each `(tenant, queue)` is read from the oldest end of its range of
/// `jobs_tenant_queue_finished`, up to the cutoff, so a batch reads about the rows it deletes
/// (plus any dead jobs older than the cutoff that it keeps). The pairs are found by skipping
/// from one to the next through the same index (`pairs`: Postgres 15 has no skip scan), one
/// probe per pair. Filtered on `finished_at` alone, as this was, the batch had no index whose
/// leading columns it knew: it scanned `jobs` until it had found a batch, through every
/// newer job in its way. With 300,000 recent jobs ahead of 20,000 old ones in the table, a
/// batch of 1,000 took 78-83 ms (`psql`, scanning from the table's start; a synchronized scan
/// may start elsewhere) against 6.2-6.4 ms for this statement, and the worker's hourly sweep
/// of an hour's worth of old jobs is that many batches. The jobs and their attempts are
/// deleted by key, from the array of the ids picked (`doomed`, one row), so that no plan (one
/// kept from empty tables included) joins the batch against a scan of `jobs` or
/// `job_attempts`, as the plan of `id IN (SELECT ...)` kept from empty tables did.
pub const PURGE_SQL: &str = concat!(
    "WITH RECURSIVE pairs AS (
         (SELECT tenant, queue FROM jobs WHERE finished_at IS NOT NULL
          ORDER BY tenant, queue LIMIT 1)
         UNION ALL
         SELECT next.tenant, next.queue FROM pairs p CROSS JOIN LATERAL (
             SELECT tenant, queue FROM jobs
             WHERE finished_at IS NOT NULL AND (tenant, queue) > (p.tenant, p.queue)
             ORDER BY tenant, queue LIMIT 1
         ) next
     ), doomed AS (
         SELECT ARRAY(
             SELECT d.id FROM pairs p CROSS JOIN LATERAL (
                 SELECT id FROM jobs
                 WHERE tenant = p.tenant AND queue = p.queue AND finished_at < $1
                   AND (state IN ('succeeded', 'cancelled') OR ($2 AND state = 'dead'))
                 ORDER BY finished_at
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED
             ) d
             LIMIT $3
         ) AS ids
     ), purged AS (
         DELETE FROM jobs j USING doomed WHERE j.id = ANY(doomed.ids)
         RETURNING j.id
     ), attempts AS (
         DELETE FROM job_attempts a USING doomed WHERE a.job_id = ANY(doomed.ids)
     ), unsent AS (",
    out_of_outbox!("purged"),
    ")
     SELECT count(*) FROM purged"
);
