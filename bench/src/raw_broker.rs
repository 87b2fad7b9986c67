//! The reference the end-to-end figures are read against: how fast this RabbitMQ moves
//! messages shaped like Conveyor's (persistent, mandatory, ~70-byte JSON body) into a durable
//! queue of the same type and out again, with nothing else in the way.
//!
//! Publishing keeps a window of unconfirmed messages in flight (pipelined confirms, as the
//! relay does); the consumer, running at the same time, acks with `multiple` every
//! `--raw-ack-every` deliveries (100 by default, the cheapest acking a consumer can do; 1 shows
//! what acking one by one costs).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::*,
    types::{AMQPValue, FieldTable},
};

use crate::Args;

const CONFIRM_WINDOW: usize = 1000;
const PREFETCH: u16 = 1000;

#[derive(Debug, Clone)]
pub struct RawBroker {
    pub messages: usize,
    pub queue_type: String,
    pub ack_every: usize,
    /// Until the last publish was confirmed.
    pub publish: Duration,
    /// Until the last message was consumed and acked (publishing and consuming overlap).
    pub round_trip: Duration,
}

pub async fn run(args: &Args) -> anyhow::Result<RawBroker> {
    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach RabbitMQ (AMQP_URL): {e}"))?;
    let publisher = connection.create_channel().await?;
    let consumer = connection.create_channel().await?;
    let queue = format!("conveyor-bench.raw.{}", uuid::Uuid::new_v4().simple());
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(args.queue_type.clone().into()),
    );
    publisher
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args,
        )
        .await?;
    let outcome = measure(
        args.raw_messages,
        args.raw_ack_every.max(1),
        &queue,
        &publisher,
        &consumer,
    )
    .await;
    let _ = publisher
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bench done".into()).await;
    let (publish, round_trip) = outcome?;
    Ok(RawBroker {
        messages: args.raw_messages,
        queue_type: args.queue_type.clone(),
        ack_every: args.raw_ack_every.max(1),
        publish,
        round_trip,
    })
}

async fn measure(
    n: usize,
    ack_every: usize,
    queue: &str,
    publisher: &lapin::Channel,
    consumer: &lapin::Channel,
) -> anyhow::Result<(Duration, Duration)> {
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    consumer
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = consumer
        .basic_consume(
            queue.into(),
            "conveyor-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut seen = 0usize;
        while let Some(delivery) = deliveries.next().await {
            let delivery = delivery?;
            seen += 1;
            if seen.is_multiple_of(ack_every) || seen == n {
                delivery
                    .acker
                    .ack(BasicAckOptions {
                        multiple: ack_every > 1,
                    })
                    .await?;
            }
            if seen == n {
                return Ok::<_, anyhow::Error>(start.elapsed());
            }
        }
        anyhow::bail!("the consumer stopped after {seen} of {n} messages")
    });
    let mut in_flight = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..n {
        let body = format!(
            r#"{{"id":"{}","kind":"noop","seq":{i}}}"#,
            uuid::Uuid::now_v7()
        );
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        in_flight.push_back(confirm);
        if in_flight.len() >= CONFIRM_WINDOW {
            let confirmation = in_flight.pop_front().expect("window is full").await?;
            anyhow::ensure!(confirmation.is_ack(), "RabbitMQ nacked a message");
        }
    }
    for confirm in in_flight {
        anyhow::ensure!(confirm.await?.is_ack(), "RabbitMQ nacked a message");
    }
    let publish = start.elapsed();
    let round_trip = tokio::time::timeout(Duration::from_secs(300), consuming)
        .await
        .map_err(|_| anyhow::anyhow!("consumer did not receive every message within 300 s"))???;
    Ok((publish, round_trip))
}
