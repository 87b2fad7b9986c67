//! A worker that receives a message for a job that is already finished skips it: the job does
//! not run again. A message it cannot decode, or that names no job, goes to the dead-letter
//! queue rather than being redelivered forever.
//! (Its own test binary, so the worker's process-wide counters move only because of it.)

mod support;

use std::time::Duration;

use conveyor_shared::broker::{self, JobMessage};
use lapin::{BasicProperties, options::BasicPublishOptions};
use serde_json::json;
use support::{TestApp, amqp_url, eventually, message_count, noop};

/// Reads one counter from a Prometheus text page (0 when absent).
fn counter(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn worker_metric(app: &TestApp, name: &str) -> f64 {
    let url = format!("http://{}/metrics", app.worker_addr.unwrap());
    counter(
        &app.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        name,
    )
}

async fn publish(app: &TestApp, body: Vec<u8>) {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            broker::queue_name(&app.broker, "default").into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn deliveries_for_finished_jobs_are_skipped_and_poison_is_dead_lettered() {
    let app = TestApp::spawn().await;
    let id = app.enqueue(noop(json!({}))).await;
    let done = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(5))
        .await;
    assert_eq!(done["attempts"], 1);

    // RabbitMQ delivers the job again (as after a lost ack): it must not run twice.
    let skipped_before = worker_metric(&app, "conveyor_deliveries_skipped_total").await;
    let message = JobMessage {
        id: id.parse().unwrap(),
        kind: "noop".into(),
    };
    publish(&app, serde_json::to_vec(&message).unwrap()).await;
    publish(&app, serde_json::to_vec(&message).unwrap()).await;
    let skipped = eventually(Duration::from_secs(5), || async {
        let now = worker_metric(&app, "conveyor_deliveries_skipped_total").await;
        (now >= skipped_before + 2.0).then_some(now)
    })
    .await;
    assert!(
        skipped.is_some(),
        "the worker should have skipped both redeliveries"
    );
    let after = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(after["state"], "succeeded");
    assert_eq!(after["attempts"], 1);
    assert_eq!(after["attempts_log"].as_array().unwrap().len(), 1);
    assert_eq!(
        after["finished_at"], done["finished_at"],
        "the finished job was not touched"
    );

    // A message naming no job, and a message that is not even JSON, are poison: rejected to
    // the dead-letter queue, counted, and the worker keeps working.
    let poison_before = worker_metric(&app, "conveyor_poison_messages_total").await;
    let ghost = JobMessage {
        id: conveyor_shared::JobId::new(),
        kind: "noop".into(),
    };
    publish(&app, serde_json::to_vec(&ghost).unwrap()).await;
    publish(&app, b"not json at all".to_vec()).await;
    let rejected = eventually(Duration::from_secs(5), || async {
        let now = worker_metric(&app, "conveyor_poison_messages_total").await;
        (now >= poison_before + 2.0).then_some(())
    })
    .await;
    assert!(rejected.is_some(), "both poison messages should be counted");
    let dead_letters = eventually(Duration::from_secs(5), || async {
        let n = message_count(&broker::dead_letter_queue_name(&app.broker)).await;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(
        dead_letters,
        Some(2),
        "both poison messages should be in the dead-letter queue"
    );
    let next = app.enqueue(noop(json!({}))).await;
    app.wait_for_state(&next, "succeeded", Duration::from_secs(5))
        .await;

    // Nothing is left in the work queue: every message was acked or dead-lettered.
    assert_eq!(
        message_count(&broker::queue_name(&app.broker, "default")).await,
        0
    );
    app.stop().await;
}
