//! The outbox relay: moves due jobs from Postgres to RabbitMQ.
//!
//! Guarantee: a job leaves the outbox only after RabbitMQ confirmed it (persistent message,
//! publisher confirms, mandatory routing). If anything fails in between, the transaction rolls
//! back and the job is published again later; if RabbitMQ loses a confirmed message, the job is
//! found still `queued` and published again ([`crate::outbox::republish_stale`]). A duplicate
//! message is harmless because the worker's claim only succeeds on a `queued` job. While
//! RabbitMQ is away, jobs simply wait in Postgres and the relay reconnects with backoff.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use lapin::{
    BasicProperties, Channel, Connection,
    options::*,
    types::{AMQPValue, FieldTable},
};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, Backoff, JobMessage},
    config::{self, BrokerConfig, ConfigError},
    health::Health,
    outbox, trace,
};

/// The Postgres NOTIFY channel that wakes relays when jobs become due: used by rare operations
/// (manual retries, redrives) and by [`RelayWaker::forward`], never by each enqueue.
pub const OUTBOX_CHANNEL: &str = "conveyor_outbox";

/// Wakes the relay of this process when it has stored due jobs.
///
/// Enqueues used to `NOTIFY` in their INSERT instead. But Postgres makes every transaction that
/// notifies take one database-wide lock at commit and hold it through the WAL flush
/// (`PreCommit_Notify` in async.c, so that notifications arrive in commit order): concurrent
/// enqueues committed one fsync at a time. On the 2-core bench machine, pgbench with 32
/// clients ran 550 such inserts a second against 11,000 without the NOTIFY. An in-process wake
/// costs nothing; a relay in another process learns of the jobs by polling
/// (`CONVEYOR_RELAY_POLL_MS`), or from [`RelayWaker::forward`] where this process runs none.
#[derive(Clone, Debug, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// Call after committing due jobs. Wakes that arrive while the relay is busy fold into one.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }

    /// For a process that enqueues but runs no relay: passes its wakes on to the relays of
    /// other processes as a NOTIFY of its own, one statement at a time, so no more than one
    /// transaction of this process ever waits on Postgres's notify lock and enqueues never do.
    pub async fn forward(self, pool: PgPool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.woken() => {}
            }
            if let Err(e) = notify_relays(&pool).await {
                // The relays will still find the jobs by polling.
                tracing::warn!(error = %e, "cannot notify the relays");
            }
        }
    }
}

/// Wakes every relay listening on [`OUTBOX_CHANNEL`], when the transaction this runs in commits.
pub async fn notify_relays(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
}

/// Relay tuning, from `CONVEYOR_RELAY_*`.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Jobs published per transaction.
    pub batch_size: i64,
    /// How often to look for due jobs without a notification (scheduled jobs, retries).
    pub poll_interval: Duration,
    /// How long to wait for RabbitMQ to confirm a batch before giving up on the connection.
    pub confirm_timeout: Duration,
    /// After a notification, how long to gather more jobs before publishing.
    pub coalesce: Duration,
    /// A job still `queued` this long after it was handed to RabbitMQ (counted from when it
    /// became `queued`, see [`outbox::republish_stale`]), while its RabbitMQ queue holds no
    /// ready message, is published again (its message was lost).
    pub republish_after: Duration,
}

impl RelayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            batch_size: config::parse_or("CONVEYOR_RELAY_BATCH", 500)?,
            poll_interval: config::millis_or("CONVEYOR_RELAY_POLL_MS", 250)?,
            confirm_timeout: config::millis_or("CONVEYOR_RELAY_CONFIRM_TIMEOUT_MS", 10_000)?,
            coalesce: config::millis_or("CONVEYOR_RELAY_COALESCE_MS", 2)?,
            republish_after: Duration::from_secs(config::parse_or(
                "CONVEYOR_RELAY_REPUBLISH_AFTER_SECS",
                300,
            )?),
        })
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
            confirm_timeout: Duration::from_secs(10),
            coalesce: Duration::from_millis(2),
            republish_after: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("RabbitMQ refused (nacked) a message")]
    Nacked,
    #[error("RabbitMQ could not route a message to {0} (queue missing?)")]
    Unroutable(String),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("broker connection closed")]
    Disconnected,
}

pub struct Relay {
    pub pool: PgPool,
    pub broker: BrokerConfig,
    pub queues: Vec<String>,
    pub config: RelayConfig,
    pub health: Health,
    /// Woken by this process's enqueues (see [`RelayWaker`]).
    pub waker: RelayWaker,
}

struct Session {
    connection: Connection,
    channel: Channel,
}

impl Relay {
    /// Runs until `shutdown` is cancelled. Never returns early: broker and database failures
    /// are logged and retried.
    pub async fn run(self, shutdown: CancellationToken) {
        let backlog = tokio::spawn(report_backlog(self.pool.clone(), shutdown.clone()));
        let mut backoff = Backoff::new(self.broker.reconnect_min, self.broker.reconnect_max);
        while !shutdown.is_cancelled() {
            let session = match self.open().await {
                Ok(session) => session,
                Err(e) => {
                    self.health.set_broker_connected(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "relay cannot reach RabbitMQ");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            self.health.set_broker_connected(true);
            backoff.reset();
            tracing::info!("relay connected to RabbitMQ");
            let outcome = self.pump(&session, &shutdown).await;
            self.health.set_broker_connected(false);
            let _ = session.connection.close(200, "relay stopping".into()).await;
            match outcome {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "relay lost RabbitMQ; reconnecting"),
            }
        }
        let _ = backlog.await;
        tracing::info!("relay stopped");
    }

    async fn open(&self) -> Result<Session, lapin::Error> {
        let connection = broker::connect(&self.broker, "relay").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        broker::declare_queues(&channel, &self.broker, &self.queues).await?;
        Ok(Session {
            connection,
            channel,
        })
    }

    /// Publishes batches until the broker fails (Err) or shutdown (Ok).
    async fn pump(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(OUTBOX_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot LISTEN; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot LISTEN; polling only");
                None
            }
        };
        let mut sweep = tokio::time::interval(
            (self.config.republish_after / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Scheduled jobs and retries come due with time, not with enqueues: they are promoted
        // once a poll interval, not on every wake (a busy api wakes the relay hundreds of
        // times a second).
        let mut promoted_at: Option<Instant> = None;
        loop {
            if sweep.tick().now_or_never().is_some() {
                self.republish_lost(&session.channel).await?;
            }
            let promote = promoted_at.is_none_or(|at| at.elapsed() >= self.config.poll_interval);
            if promote {
                promoted_at = Some(Instant::now());
            }
            match self.publish_batch(&session.channel, promote).await {
                // A full batch: there is probably more, go again at once.
                Ok(n) if n as i64 >= self.config.batch_size => continue,
                Ok(_) => {}
                Err(RelayError::Database(e)) => {
                    tracing::warn!(error = %e, "relay cannot read the outbox; will retry");
                }
                Err(e) => return Err(e),
            }
            if !session.connection.status().connected() {
                return Err(RelayError::Disconnected);
            }
            let wake = async {
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => {
                            if l.recv().await.is_err() {
                                // The LISTEN connection broke: fall back to the poll.
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = self.waker.woken() => {}
                    _ = notified => {}
                }
                // One batch for every job that arrives within the window, and for every
                // notification already waiting: a stream of single-job requests would
                // otherwise cost one relay round per job.
                tokio::time::sleep(self.config.coalesce).await;
                if let Some(l) = listener.as_mut() {
                    while l.next_buffered().is_some() {}
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = wake => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Publishes one batch of due jobs in one transaction, after promoting the scheduled and
    /// retrying jobs whose time has come when `promote`; returns how many went out.
    #[tracing::instrument(name = "relay.publish_batch", skip_all, fields(jobs))]
    async fn publish_batch(&self, channel: &Channel, promote: bool) -> Result<usize, RelayError> {
        let started = Instant::now();
        if promote {
            // Committed on its own before anything is published (see `promote_due`).
            outbox::promote_due(&self.pool).await?;
        }
        let mut tx = self.pool.begin().await?;
        let due = outbox::lock_due(&mut tx, self.config.batch_size).await?;
        if due.is_empty() {
            return Ok(0);
        }
        tracing::Span::current().record("jobs", due.len());
        // On failure the transaction rolls back: the jobs stay in the outbox and go out later.
        self.send(channel, &due).await?;
        let ids: Vec<_> = due.iter().map(|j| j.id).collect();
        outbox::remove_published(&mut tx, &ids).await?;
        tx.commit().await?;
        for job in &due {
            metrics::counter!("conveyor_relay_published_total", "queue" => job.queue.clone())
                .increment(1);
        }
        metrics::histogram!("conveyor_relay_batch_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(
            jobs = due.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "published batch"
        );
        Ok(due.len())
    }

    /// Sends `due` and waits for every confirm.
    async fn send(&self, channel: &Channel, due: &[outbox::DueJob]) -> Result<(), RelayError> {
        // Send everything first, then wait for the confirms together: the broker confirms a
        // pipelined batch about as fast as a single message.
        let mut confirms = Vec::with_capacity(due.len());
        for job in due {
            let body = serde_json::to_vec(&JobMessage {
                id: job.id,
                kind: job.kind.clone(),
            })
            .expect("a JobMessage always serialises");
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(job.id.to_string().into())
                .with_type(job.kind.clone().into());
            if let Some(traceparent) = &job.traceparent {
                let mut headers = FieldTable::default();
                headers.insert(
                    trace::HEADER.into(),
                    AMQPValue::LongString(traceparent.clone().into()),
                );
                props = props.with_headers(headers);
            }
            let queue = broker::queue_name(&self.broker, &job.queue);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.clone().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await?;
            confirms.push((queue, confirm));
        }
        for (queue, confirm) in confirms {
            let confirmation = tokio::time::timeout(self.config.confirm_timeout, confirm)
                .await
                .map_err(|_| RelayError::ConfirmTimeout(self.config.confirm_timeout))??;
            if !confirmation.is_ack() {
                return Err(RelayError::Nacked);
            }
            if confirmation.take_message().is_some() {
                return Err(RelayError::Unroutable(queue));
            }
        }
        Ok(())
    }

    /// Publishes again the jobs of each queue whose RabbitMQ queue is empty but which are
    /// still `queued` long after they left the outbox: their messages were lost.
    async fn republish_lost(&self, channel: &Channel) -> Result<(), RelayError> {
        for queue in &self.queues {
            let declared = channel
                .queue_declare(
                    broker::queue_name(&self.broker, queue).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            if declared.message_count() > 0 {
                continue;
            }
            match outbox::republish_stale(&self.pool, queue, self.config.republish_after).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(queue = %queue, jobs = n, "jobs published long ago are still queued and their RabbitMQ queue is empty; publishing them again");
                    metrics::counter!("conveyor_relay_republished_total", "queue" => queue.clone())
                        .increment(n);
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for lost messages; will retry"),
            }
        }
        Ok(())
    }
}

/// Every few seconds, sets `conveyor_relay_backlog` to the number of due jobs not yet
/// published, whether or not RabbitMQ is reachable (that is when it matters most).
async fn report_backlog(pool: PgPool, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Ok(n) = outbox::count_due(&pool).await {
            metrics::gauge!("conveyor_relay_backlog").set(n as f64);
        }
    }
}
