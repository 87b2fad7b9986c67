//! Automatic retention: every hour, delete succeeded and cancelled jobs that finished more than
//! `CONVEYOR_RETENTION_DAYS` ago (0 turns it off). Dead jobs are kept for an operator to look
//! at; `conveyor-api jobs purge --include-dead` removes them by hand.

use std::time::Duration;

use conveyor_shared::job::retention;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(3600);

pub async fn retention_loop(pool: PgPool, days: u32, shutdown: CancellationToken) {
    if days == 0 {
        return;
    }
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let cutoff = chrono::Utc::now() - chrono::Duration::days(days.into());
        match retention::purge_finished(&pool, cutoff, false, 1_000, None).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, days, "retention removed finished jobs");
                metrics::counter!("conveyor_jobs_purged_total").increment(n);
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}
