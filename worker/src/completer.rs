//! Records finished attempts in Postgres in batches, then acks their deliveries.
//!
//! The order is the guarantee: a delivery is acked only after its outcome is committed. If the
//! worker dies in between, RabbitMQ redelivers the message and the claim, finding the job no
//! longer `queued`, skips it. A failed write is retried (with backoff) rather than dropped.

use std::time::Duration;

use conveyor_shared::{
    broker::Backoff,
    job::lifecycle::{self, Completion},
};
use lapin::{Acker, options::BasicAckOptions};
use sqlx::PgPool;
use tokio::sync::mpsc;

/// Most completions written in one statement.
const MAX_BATCH: usize = 512;

/// A finished attempt waiting to be recorded and acked.
pub struct Finished {
    pub completion: Completion,
    pub acker: Acker,
}

/// Runs until every sender is dropped and the queue is drained.
pub async fn run(pool: PgPool, mut rx: mpsc::Receiver<Finished>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut batch: Vec<Finished> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let completions: Vec<Completion> = batch.iter().map(|f| f.completion.clone()).collect();
        loop {
            match lifecycle::complete_batch(&pool, &completions).await {
                Ok(changed) => {
                    if (changed as usize) < completions.len() {
                        // The job moved on without us (e.g. a lease reaper took it back).
                        tracing::warn!(
                            stale = completions.len() - changed as usize,
                            "some completions no longer matched a running attempt"
                        );
                    }
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, jobs = completions.len(), retry_in_ms = delay.as_millis() as u64,
                        "cannot record job outcomes; retrying");
                    metrics::counter!("conveyor_completion_write_errors_total").increment(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        for finished in batch.drain(..) {
            ack(&finished.acker, finished.completion.id).await;
        }
    }
}

/// Acks a delivery. Failure is harmless (the channel is gone; the redelivery will be skipped),
/// so it is logged rather than propagated.
pub async fn ack(acker: &Acker, job: conveyor_shared::JobId) {
    match acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(job_id = %job, "delivery was already acked"),
        Err(e) => {
            tracing::debug!(job_id = %job, error = %e, "ack failed; RabbitMQ will redeliver and the worker will skip it")
        }
    }
}
