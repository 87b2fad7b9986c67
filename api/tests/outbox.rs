//! The outbox table's promises: publishing deletes the job's outbox row and leaves the job row
//! alone, a job cancelled before it is published never reaches RabbitMQ and leaves no row behind,
//! and a job made `queued` again while a relay is publishing it keeps its place in the outbox.
//!
//! The api runs no relay here, so jobs wait in the outbox until a test starts one (or plays the
//! relay's part itself, statement by statement).

mod support;

use std::time::Duration;

use conveyor_shared::{
    JobId, broker,
    health::Health,
    job::retention,
    outbox,
    relay::{Relay, RelayConfig, RelayWaker},
};
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::json;
use support::{TestApp, amqp_url, eventually, message_count, noop};
use tokio_util::sync::CancellationToken;

/// Starts a relay for `app`'s queues; cancel the token and await the handle to stop it.
fn start_relay(app: &TestApp) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let relay = Relay {
        pool: app.pool.clone(),
        broker: app.broker.clone(),
        queues: vec![
            "default".to_owned(),
            "transactions".to_owned(),
            "integrations".to_owned(),
        ],
        config: RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
        health: Health::new(app.pool.clone()),
        waker: RelayWaker::default(),
    };
    (stop.clone(), tokio::spawn(relay.run(stop)))
}

async fn outbox_rows(app: &TestApp, id: JobId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE job_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn outbox_len(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Waits until the relay has emptied the outbox and `n` messages are ready in `default`.
async fn wait_published(app: &TestApp, n: u32) {
    let queue = broker::queue_name(&app.broker, "default");
    let done = eventually(Duration::from_secs(10), || async {
        (outbox_len(app).await == 0 && message_count(&queue).await == n).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the relay did not publish: {} outbox rows, {} ready messages",
        outbox_len(app).await,
        message_count(&queue).await
    );
}

/// The job ids of every message ready in `default`, taken off the queue.
async fn drain_default(app: &TestApp) -> Vec<JobId> {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(
            broker::queue_name(&app.broker, "default").into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let body: broker::JobMessage = serde_json::from_slice(&message.delivery.data).unwrap();
        ids.push(body.id);
    }
    conn.close(200, "done".into()).await.unwrap();
    ids
}

#[tokio::test]
async fn a_job_cancelled_before_it_is_published_never_reaches_rabbitmq() {
    let app = TestApp::without_worker_or_relay().await;
    let cancelled: JobId = app.enqueue(noop(json!({}))).await.parse().unwrap();
    let kept: JobId = app.enqueue(noop(json!({}))).await.parse().unwrap();
    assert_eq!(
        outbox_rows(&app, cancelled).await,
        1,
        "enqueued into the outbox"
    );

    let r = app
        .post_empty_as(&app.token, &format!("/v1/jobs/{cancelled}/cancel"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        outbox_rows(&app, cancelled).await,
        0,
        "the cancel must take the job out of the outbox"
    );

    // A relay now publishes whatever the outbox holds: the other job, only.
    let (stop, relay) = start_relay(&app);
    wait_published(&app, 1).await;
    assert_eq!(drain_default(&app).await, vec![kept]);
    stop.cancel();
    relay.await.unwrap();

    let job = app.get_json(&format!("/v1/jobs/{cancelled}")).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["attempts"], 0);
    app.stop().await;
}

#[tokio::test]
async fn publishing_leaves_the_job_row_untouched() {
    let app = TestApp::without_worker_or_relay().await;
    let id: JobId = app.enqueue(noop(json!({}))).await.parse().unwrap();
    // `xmin` and `ctid` change with any new version of the row, HOT or not.
    let version = || async {
        sqlx::query_as::<_, (String, String, chrono::DateTime<chrono::Utc>)>(
            "SELECT xmin::text, ctid::text, updated_at FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = version().await;

    let (stop, relay) = start_relay(&app);
    wait_published(&app, 1).await;
    stop.cancel();
    relay.await.unwrap();

    assert_eq!(
        version().await,
        before,
        "publishing must not write a new version of the job row"
    );
    assert_eq!(drain_default(&app).await, vec![id]);
    app.stop().await;
}

/// A relay has locked a job's outbox row and is publishing it; before it commits, a worker
/// claims the job through the message, the job dies, and an operator retries it. The retry's
/// outbox row must survive the relay's delete: the retry waits for the relay and writes the row
/// anew once the relay's delete has committed.
#[tokio::test]
async fn a_job_queued_again_while_a_relay_publishes_it_stays_in_the_outbox() {
    let app = TestApp::without_worker_or_relay().await;
    let id: JobId = app
        .enqueue(json!({"kind": "noop", "max_attempts": 1}))
        .await
        .parse()
        .unwrap();

    // The relay's transaction, played by hand: the row is locked until it commits.
    let mut relay = app.pool.begin().await.unwrap();
    let due = outbox::lock_due(&mut relay, 10).await.unwrap();
    assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    // The job ran and died meanwhile (written directly: no worker runs in this test).
    sqlx::query("UPDATE jobs SET state = 'dead', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();

    let retry = tokio::spawn({
        let client = app.client.clone();
        let url = app.url(&format!("/v1/jobs/{id}/retry"));
        let token = app.token.clone();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let waiting = app.wait_for_session("wait_event_type = 'Lock'").await;
    assert!(
        waiting && !retry.is_finished(),
        "the retry must wait for the relay holding the job's outbox row"
    );

    outbox::remove_published(&mut relay, &[id]).await.unwrap();
    relay.commit().await.unwrap();
    assert_eq!(retry.await.unwrap(), StatusCode::OK);
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "queued");
    assert_eq!(
        outbox_rows(&app, id).await,
        1,
        "the retried job must wait in the outbox again"
    );
    app.stop().await;
}

/// A relay whose commit failed after RabbitMQ confirmed leaves the row behind while the job
/// runs and finishes; purging the finished job takes that row too, so no message naming a
/// deleted job is ever sent.
#[tokio::test]
async fn purging_a_finished_job_takes_its_outbox_row_with_it() {
    let app = TestApp::without_worker_or_relay().await;
    let id: JobId = app.enqueue(noop(json!({}))).await.parse().unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '1 day'
         WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(outbox_rows(&app, id).await, 1);
    let purged = retention::purge_finished(&app.pool, chrono::Utc::now(), false, 100, None)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(outbox_len(&app).await, 0);
    app.stop().await;
}
