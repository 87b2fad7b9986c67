//! RabbitMQ: the dispatch path for jobs that are due now. Never the only copy of a job.
//!
//! Each Conveyor queue is a durable RabbitMQ queue `<prefix>.<queue>` (quorum by default),
//! published to through the default exchange. A message carries only the job's id and kind;
//! the worker loads the rest from Postgres when it claims the job.
//!
//! Reconnection is done by the owner of a connection (relay, consumer): on any channel or
//! connection error it drops everything and connects afresh with [`Backoff`]. lapin's own
//! auto-recovery is not used: after recovery lapin redelivers in-flight messages anyway, and a
//! fresh connection keeps the code path single and testable (cut a proxy, watch it come back).
//!
//! `amqps://` URLs connect over TLS (rustls with the ring provider, the platform's trust store
//! plus the roots of `CONVEYOR_AMQP_CA_FILE`); the certificate is verified against the URL's host.

use std::time::{Duration, Instant};

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    tcp::OwnedTLSConfig,
    types::{AMQPValue, FieldTable},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{config::BrokerConfig, job::JobId};

/// The body of a job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub id: JobId,
    pub kind: String,
}

/// The RabbitMQ queue that carries a Conveyor queue.
pub fn queue_name(config: &BrokerConfig, queue: &str) -> String {
    format!("{}.{queue}", config.queue_prefix)
}

/// Opens a connection named after the process role (visible in the management UI).
pub async fn connect(config: &BrokerConfig, role: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("conveyor-{role}-{}", std::process::id()).into());
    // lapin's TLS connector takes the process-wide provider, falling back to one of its own.
    crate::tls::install();
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: config.ca.as_ref().map(|ca| ca.pem().to_owned()),
    };
    Connection::connect_with_config(
        config.url.expose_secret(),
        props,
        tls,
        lapin::runtime::default_runtime()?,
    )
    .await
}

/// The queue that collects messages no worker can process (undecodable, or naming an unknown
/// job), for an operator to inspect: `<prefix>.dead-letter`.
pub fn dead_letter_queue_name(config: &BrokerConfig) -> String {
    queue_name(config, "dead-letter")
}

/// Declares the dead-letter queue and the durable work queues for `queues` (idempotent).
/// A message a worker rejects without requeue goes to the dead-letter queue.
pub async fn declare_queues(
    channel: &Channel,
    config: &BrokerConfig,
    queues: &[String],
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(config.queue_type.clone().into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(dead_letter_queue_name(config).into(), durable, args.clone())
        .await?;
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead_letter_queue_name(config).into()),
    );
    for queue in queues {
        channel
            .queue_declare(queue_name(config, queue).into(), durable, args.clone())
            .await?;
    }
    Ok(())
}

/// What RabbitMQ says about one of its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages ready for delivery (not counting those delivered and not yet acked).
    pub ready: u32,
    pub consumers: u32,
    /// Delivered and not yet acked; `None` without RabbitMQ's management API.
    pub unacked: Option<u32>,
}

/// Reads queue depths with passive declares over one lazily opened connection, for the
/// statistics endpoints. Never blocks a caller for long: every broker call has a short
/// timeout, and after a failure the broker is not asked again for a while (callers get `None`).
pub struct Inspector {
    config: BrokerConfig,
    state: Mutex<InspectorState>,
    management: Option<crate::management::ManagementApi>,
}

#[derive(Default)]
struct InspectorState {
    session: Option<(Connection, Channel)>,
    failed_at: Option<Instant>,
}

impl Inspector {
    /// How long one broker call may take before the answer is "unknown".
    const TIMEOUT: Duration = Duration::from_secs(1);
    /// How long to stop asking after a failure, so a dead broker costs nothing per request.
    const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(2);

    pub fn new(config: BrokerConfig) -> Self {
        Self {
            management: crate::management::ManagementApi::from_config(&config),
            config,
            state: Mutex::new(InspectorState::default()),
        }
    }

    /// Depths of the RabbitMQ queues carrying `queues`, in order; `None` when RabbitMQ cannot
    /// be asked right now. A missing queue (not declared yet) reads as empty with no consumers.
    pub async fn depths(&self, queues: &[String]) -> Option<Vec<QueueDepth>> {
        let mut state = self.state.lock().await;
        if state
            .failed_at
            .is_some_and(|t| t.elapsed() < Self::QUIET_AFTER_FAILURE)
        {
            return None;
        }
        match tokio::time::timeout(Self::TIMEOUT * 3, self.ask(&mut state, queues)).await {
            Ok(Ok(mut depths)) => {
                state.failed_at = None;
                if let Some(api) = &self.management {
                    let names: Vec<String> =
                        queues.iter().map(|q| queue_name(&self.config, q)).collect();
                    if let Some(unacked) = api.unacked(&names).await {
                        for (depth, n) in depths.iter_mut().zip(unacked) {
                            depth.unacked = Some(n);
                        }
                    }
                }
                Some(depths)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read queue depths from RabbitMQ");
                state.session = None;
                state.failed_at = Some(Instant::now());
                None
            }
            Err(_) => {
                tracing::debug!("reading queue depths from RabbitMQ timed out");
                state.session = None;
                state.failed_at = Some(Instant::now());
                None
            }
        }
    }

    async fn ask(
        &self,
        state: &mut InspectorState,
        queues: &[String],
    ) -> lapin::Result<Vec<QueueDepth>> {
        let mut depths = Vec::with_capacity(queues.len());
        for queue in queues {
            let channel = self.channel(state).await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let name = queue_name(&self.config, queue);
            match channel
                .queue_declare(name.into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => depths.push(QueueDepth {
                    ready: q.message_count(),
                    consumers: q.consumer_count(),
                    unacked: None,
                }),
                // A passive declare of a missing queue (not declared yet) fails and closes
                // the channel; with the connection still up, that is all it means.
                Err(e) => {
                    let Some((connection, _)) = &state.session else {
                        return Err(e);
                    };
                    if !connection.status().connected() {
                        return Err(e);
                    }
                    let fresh = connection.create_channel().await?;
                    if let Some(session) = state.session.as_mut() {
                        session.1 = fresh;
                    }
                    depths.push(QueueDepth {
                        ready: 0,
                        consumers: 0,
                        unacked: None,
                    });
                }
            }
        }
        Ok(depths)
    }

    /// The open channel, connecting first if needed.
    async fn channel(&self, state: &mut InspectorState) -> lapin::Result<Channel> {
        if let Some((connection, channel)) = &state.session
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        state.session = None;
        let connection = connect(&self.config, "inspector").await?;
        let channel = connection.create_channel().await?;
        state.session = Some((connection, channel.clone()));
        Ok(channel)
    }
}

/// Exponential backoff for reconnect loops: doubles from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the following one is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
