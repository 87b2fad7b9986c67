//! The consumer loop. For each window of deliveries: decode, claim the jobs in Postgres in
//! one statement, spawn a task per claimed job, ack and skip the rest.
//!
//! Every delivery holds a concurrency permit from the moment it is taken off the stream, so
//! the worker never claims more jobs than it can run at once; unclaimed prefetched messages
//! stay unacked in RabbitMQ's hands. On a broker failure the loop reconnects with backoff
//! while jobs already running carry on; on shutdown it stops consuming, lets in-flight jobs
//! finish within the grace period, and leaves everything else to redelivery.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use conveyor_shared::{
    Job,
    broker::{self, Backoff, JobMessage},
    health::Health,
    job::lifecycle,
    trace,
};
use futures_util::{FutureExt, StreamExt, stream::SelectAll};
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    acks::{AckTracker, Settled},
    completer::{self, Finished},
    config::Config,
    handlers::Registry,
    runner,
};

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ cancelled the consumer")]
    Cancelled,
}

pub struct Consumer {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub registry: Registry,
    pub health: Health,
}

struct Session {
    connection: Connection,
    channel: Channel,
    tags: Vec<String>,
    deliveries: SelectAll<lapin::Consumer>,
    /// Delivery tags are per channel, so is the record of which are settled.
    acks: Arc<AckTracker>,
}

impl Consumer {
    /// Consumes until `shutdown`, then drains in-flight jobs within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let tracker = TaskTracker::new();
        // Cancelled when the grace period is over: jobs still running are abandoned to lease
        // expiry and redelivery instead of holding the process open.
        let abandon = CancellationToken::new();
        let (done_tx, done_rx) = mpsc::channel::<Finished>(this.config.concurrency * 2);
        let completer = tokio::spawn(completer::run(
            this.pool.clone(),
            this.config.worker_id.clone(),
            this.config.completion_coalesce,
            done_rx,
        ));
        let permits = Arc::new(Semaphore::new(this.config.concurrency));
        let mut backoff = Backoff::new(
            this.config.broker.reconnect_min,
            this.config.broker.reconnect_max,
        );
        let mut last_session = None;
        while !shutdown.is_cancelled() {
            let mut session = match this.open().await {
                Ok(s) => s,
                Err(e) => {
                    this.health.set_broker_connected(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "worker cannot reach RabbitMQ");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            this.health.set_broker_connected(true);
            backoff.reset();
            tracing::info!(queues = ?this.config.queues, prefetch = this.config.prefetch,
                concurrency = this.config.concurrency, "worker consuming");
            match this
                .consume(
                    &mut session,
                    &shutdown,
                    &tracker,
                    &abandon,
                    &permits,
                    &done_tx,
                )
                .await
            {
                Ok(()) => {
                    last_session = Some(session);
                    break;
                }
                Err(e) => {
                    this.health.set_broker_connected(false);
                    tracing::warn!(error = %e, "worker lost RabbitMQ; reconnecting");
                    let _ = session.connection.close(200, "reconnecting".into()).await;
                }
            }
        }
        // Shutdown: stop deliveries first, then give running jobs the grace period.
        if let Some(session) = &last_session {
            for tag in &session.tags {
                let _ = session
                    .channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
            }
        }
        tracker.close();
        let in_flight = tracker.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                grace_secs = this.config.shutdown_grace.as_secs(),
                "waiting for running jobs"
            );
        }
        if tokio::time::timeout(this.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                abandoned = tracker.len(),
                "grace period over; unfinished jobs are left to redelivery"
            );
            abandon.cancel();
        }
        drop(done_tx);
        if tokio::time::timeout(Duration::from_secs(10), completer)
            .await
            .is_err()
        {
            tracing::warn!("could not record every outcome before exiting");
        }
        if let Some(session) = last_session {
            let _ = session
                .connection
                .close(200, "worker stopping".into())
                .await;
        }
        this.health.set_broker_connected(false);
        tracing::info!("worker stopped");
    }

    async fn open(&self) -> lapin::Result<Session> {
        let connection = broker::connect(&self.config.broker, "worker").await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        broker::declare_queues(&channel, &self.config.broker, &self.config.queues).await?;
        let mut deliveries = SelectAll::new();
        let mut tags = Vec::new();
        for queue in &self.config.queues {
            let tag = format!("{}:{queue}", self.config.worker_id);
            let consumer = channel
                .basic_consume(
                    broker::queue_name(&self.config.broker, queue).into(),
                    tag.clone().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(tag);
            deliveries.push(consumer);
        }
        Ok(Session {
            connection,
            channel,
            tags,
            deliveries,
            acks: Arc::default(),
        })
    }

    /// Takes windows of deliveries until shutdown (Ok) or a broker failure (Err).
    async fn consume(
        self: &Arc<Self>,
        session: &mut Session,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        abandon: &CancellationToken,
        permits: &Arc<Semaphore>,
        done: &mpsc::Sender<Finished>,
    ) -> Result<(), ConsumeError> {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                d = session.deliveries.next() => d,
            };
            let first = match first {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ConsumeError::Cancelled),
            };
            // Whatever else is already here joins the window, one permit each.
            let mut window = vec![(first, permit)];
            let mut failure = None;
            while let Ok(permit) = permits.clone().try_acquire_owned() {
                match session.deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => window.push((d, permit)),
                    Some(Some(Err(e))) => {
                        failure = Some(ConsumeError::from(e));
                        break;
                    }
                    Some(None) => {
                        failure = Some(ConsumeError::Cancelled);
                        break;
                    }
                    None => break,
                }
            }
            self.dispatch(window, &session.acks, tracker, abandon, done)
                .await;
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    /// Claims the window's jobs and starts the claimed ones.
    async fn dispatch(
        self: &Arc<Self>,
        window: Vec<(Delivery, OwnedSemaphorePermit)>,
        acks: &Arc<AckTracker>,
        tracker: &TaskTracker,
        abandon: &CancellationToken,
        done: &mpsc::Sender<Finished>,
    ) {
        let mut decoded = Vec::with_capacity(window.len());
        for (delivery, permit) in window {
            match serde_json::from_slice::<JobMessage>(&delivery.data) {
                Ok(msg) => decoded.push((msg, delivery, permit)),
                Err(e) => {
                    // Redelivering a message we cannot read would loop forever.
                    tracing::error!(error = %e, routing_key = %delivery.routing_key, "undecodable message; dead-lettering");
                    metrics::counter!("conveyor_poison_messages_total", "reason" => "undecodable")
                        .increment(1);
                    acks.reject(&delivery).await;
                }
            }
        }
        if decoded.is_empty() {
            return;
        }
        let ids: Vec<_> = decoded.iter().map(|(m, _, _)| m.id).collect();
        let claimed = match lifecycle::claim_batch(
            &self.pool,
            &ids,
            &self.config.worker_id,
            self.config.lease.as_secs_f64(),
        )
        .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, jobs = ids.len(), "cannot claim jobs; returning them to RabbitMQ");
                metrics::counter!("conveyor_claim_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let returned: Vec<Delivery> = decoded.into_iter().map(|(_, d, _)| d).collect();
                acks.requeue(returned).await;
                return;
            }
        };
        let mut claimed: HashMap<_, _> = claimed.into_iter().map(|j| (j.id, j)).collect();
        let unclaimed: Vec<_> = ids
            .iter()
            .filter(|id| !claimed.contains_key(id))
            .copied()
            .collect();
        let unknown = if unclaimed.is_empty() {
            HashSet::new()
        } else {
            match Job::missing(&self.pool, &unclaimed).await {
                Ok(missing) => missing.into_iter().collect(),
                // Cannot tell: treat as known, so nothing is dead-lettered by mistake.
                Err(_) => HashSet::new(),
            }
        };
        let mut skipped = Vec::new();
        for (msg, delivery, permit) in decoded {
            let Some(mut job) = claimed.remove(&msg.id) else {
                if unknown.contains(&msg.id) {
                    tracing::error!(job_id = %msg.id, kind = %msg.kind, "message names no known job; dead-lettering");
                    metrics::counter!("conveyor_poison_messages_total", "reason" => "unknown_job")
                        .increment(1);
                    acks.reject(&delivery).await;
                    continue;
                }
                // Already running, finished or cancelled: a redelivery, safe to drop.
                tracing::debug!(job_id = %msg.id, redelivered = delivery.redelivered, "job not queued; skipping delivery");
                metrics::counter!("conveyor_deliveries_skipped_total").increment(1);
                skipped.push(Settled {
                    tag: delivery.delivery_tag,
                    acker: delivery.acker,
                    job: msg.id,
                });
                continue;
            };
            // The message header is how the trace travels; the stored copy covers messages
            // published before the header existed.
            if let Some(traceparent) = header_traceparent(&delivery) {
                job.traceparent = Some(traceparent);
            }
            let this = Arc::clone(self);
            let done = done.clone();
            let abandon = abandon.clone();
            let acks = Arc::clone(acks);
            tracker.spawn(async move {
                tokio::select! {
                    completion = runner::run_job(&this.registry, &job, &this.config.retry) => {
                        let delivery = Settled { tag: delivery.delivery_tag, acker: delivery.acker, job: job.id };
                        let _ = done.send(Finished { completion, delivery, acks }).await;
                    }
                    // Shutdown grace is over: the claim's lease runs out and the job runs again.
                    _ = abandon.cancelled() => {}
                }
                drop(permit);
            });
        }
        acks.ack(skipped).await;
    }
}

/// The `traceparent` message header, if the relay set one.
fn header_traceparent(delivery: &Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(trace::HEADER)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
