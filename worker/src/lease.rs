//! The worker's two lease duties: renew the leases of the jobs it runs, and reap the jobs of
//! workers that stopped renewing theirs (see `conveyor_shared::job::lease`).

use std::time::Duration;

use conveyor_shared::job::lease;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Jobs taken back per sweep; a sweep that fills it runs again at once.
const REAP_BATCH: i64 = 500;

/// Renews this worker's leases every third of the lease until `shutdown`.
pub async fn renew_loop(
    pool: PgPool,
    worker: String,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(lease / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = lease::renew(&pool, &worker, lease.as_secs_f64()).await {
            // If this keeps failing for a whole lease, reapers will take our jobs back; their
            // completions will then be ignored. That is the price of not running a job twice
            // at once, and it is logged loudly.
            tracing::warn!(error = %e, "cannot renew job leases");
            metrics::counter!("conveyor_lease_renew_errors_total").increment(1);
        }
    }
}

/// Sweeps expired leases every `interval` until `shutdown`.
pub async fn reaper_loop(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        loop {
            match lease::reap_expired(&pool, REAP_BATCH).await {
                Ok(reaped) => {
                    for job in &reaped {
                        tracing::warn!(
                            job_id = %job.id, kind = %job.kind, attempt = job.attempt,
                            lost_by = job.worker.as_deref().unwrap_or("?"), next_state = %job.state,
                            "lease expired; attempt recorded as lost"
                        );
                        metrics::counter!("conveyor_jobs_lost_total", "queue" => job.queue.clone())
                            .increment(1);
                    }
                    if (reaped.len() as i64) < REAP_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reaper cannot sweep expired leases");
                    break;
                }
            }
        }
    }
}
