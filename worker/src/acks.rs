//! Acking deliveries in bulk: one `basic.ack` with `multiple` for every delivery settled so far,
//! instead of one frame per job. Acking one by one costs RabbitMQ about a third of its throughput
//! (`conveyor-bench --only raw-broker --raw-ack-every 1` against the default).
//!
//! The invariant: a delivery is acked only after its outcome is committed (or it was skipped,
//! rejected or returned). `multiple` acks *every* unacked delivery up to a tag on the channel,
//! including ones still running or not yet even taken off the consumer stream (a channel's tags
//! are consecutive, shared by all its consumers, and the streams are polled in any order). So a
//! multiple ack only ever goes up to the *settled prefix*: the highest tag below which every tag
//! has been settled. A delivery settled above a gap (a slow job further down) is acked on its
//! own at once, so that one long job never holds back the acks, and with them the prefetch
//! window, of everything delivered after it.
//!
//! lapin has no such batching; RabbitMQ's Java and Go clients leave it to the application too.

use std::collections::BTreeSet;

use conveyor_shared::JobId;
use lapin::{
    Acker,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};
use tokio::sync::Mutex;

/// The delivery tags of one channel that are settled, i.e. safe to ack.
///
/// Every ack, reject and requeue of the channel goes through it, and the lock is held while the
/// frame is sent, so frames leave in the order the prefix was computed: otherwise a single ack of
/// tag 7 could follow a multiple ack that already covered it, and RabbitMQ closes a channel that
/// acks an unknown tag.
#[derive(Debug, Default)]
pub struct AckTracker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every tag up to and including this one is settled (tags start at 1).
    prefix: u64,
    /// Settled tags above `prefix + 1`, waiting for the gap below them to close.
    above: BTreeSet<u64>,
}

/// A delivery whose outcome is settled, with what it takes to ack it.
pub struct Settled {
    pub tag: u64,
    pub acker: Acker,
    pub job: JobId,
}

impl AckTracker {
    /// Dead-letters a delivery (reject, no requeue): settled, so a later multiple ack may
    /// cover its tag.
    pub async fn reject(&self, delivery: &Delivery) {
        let mut state = self.state.lock().await;
        let _ = delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await;
        state.settle(delivery.delivery_tag);
    }

    /// Returns deliveries to their queue one by one (nack, requeue), settling their tags.
    pub async fn requeue(&self, deliveries: Vec<Delivery>) {
        let mut state = self.state.lock().await;
        for delivery in deliveries {
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
            state.settle(delivery.delivery_tag);
        }
    }

    /// Acks `done`: everything inside the settled prefix with one multiple ack, the rest one by
    /// one. Failures are logged, never returned: the channel is gone, RabbitMQ redelivers, and
    /// the claim skips jobs already finished.
    pub async fn ack(&self, done: Vec<Settled>) {
        if done.is_empty() {
            return;
        }
        let mut state = self.state.lock().await;
        for d in &done {
            state.settle(d.tag);
        }
        let prefix = state.prefix;
        let (inside, outside): (Vec<_>, Vec<_>) = done.into_iter().partition(|d| d.tag <= prefix);
        if let Some(last) = inside.iter().max_by_key(|d| d.tag) {
            metrics::counter!("conveyor_acks_total", "mode" => "multiple").increment(1);
            send(&last.acker, last.job, true).await;
        }
        // The other ackers of `inside` are covered by the multiple ack and simply dropped
        // (acking a tag twice would close the channel).
        for d in outside {
            metrics::counter!("conveyor_acks_total", "mode" => "single").increment(1);
            send(&d.acker, d.job, false).await;
        }
        drop(state);
    }
}

impl State {
    fn settle(&mut self, tag: u64) {
        if tag <= self.prefix {
            return;
        }
        self.above.insert(tag);
        while self.above.remove(&(self.prefix + 1)) {
            self.prefix += 1;
        }
    }
}

async fn send(acker: &Acker, job: JobId, multiple: bool) {
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(job_id = %job, "delivery was already acked"),
        Err(e) => {
            tracing::debug!(job_id = %job, error = %e, "ack failed; RabbitMQ will redeliver and the worker will skip it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_after(tags: &[u64]) -> u64 {
        let mut s = State::default();
        for t in tags {
            s.settle(*t);
        }
        s.prefix
    }

    #[test]
    fn the_prefix_stops_at_the_first_gap() {
        assert_eq!(prefix_after(&[]), 0);
        assert_eq!(prefix_after(&[1, 2, 3]), 3);
        assert_eq!(prefix_after(&[3, 1, 2]), 3);
        // 2 is still running (or not yet taken off its stream): nothing above 1 is covered.
        assert_eq!(prefix_after(&[1, 3, 4, 5]), 1);
        assert_eq!(prefix_after(&[2, 3]), 0);
        // Settling twice changes nothing.
        assert_eq!(prefix_after(&[1, 1, 2, 2]), 2);
    }

    #[test]
    fn closing_the_gap_releases_everything_above_it() {
        let mut s = State::default();
        for t in [1, 3, 4, 6] {
            s.settle(t);
        }
        assert_eq!(s.prefix, 1);
        s.settle(2);
        assert_eq!(s.prefix, 4);
        assert_eq!(s.above.iter().copied().collect::<Vec<_>>(), vec![6]);
    }
}
