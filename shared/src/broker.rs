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

use std::time::Duration;

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

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
    Connection::connect(config.url.expose_secret(), props).await
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
