//! Steering jobs by hand: `POST /v1/jobs/{id}/cancel` stops a waiting job for good, and
//! `POST /v1/jobs/{id}/retry` runs a dead or cancelled one again with a fresh attempt budget.

mod support;

use std::time::Duration;

use conveyor_shared::{broker, keys::Scope};
use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use support::{Options, TestApp, amqp_url, eventually, message_count, noop, problem};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn cancel_as(app: &TestApp, token: &str, id: &str) -> Response {
    app.post_empty_as(token, &format!("/v1/jobs/{id}/cancel"))
        .await
}

async fn retry_as(app: &TestApp, token: &str, id: &str) -> Response {
    app.post_empty_as(token, &format!("/v1/jobs/{id}/retry"))
        .await
}

/// Cancels `id` and expects a 200 with the cancelled job.
async fn cancel(app: &TestApp, id: &str) -> Value {
    let r = cancel_as(app, &app.token, id).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["id"], id);
    assert_eq!(job["state"], "cancelled", "{job:#}");
    assert!(job["finished_at"].is_string(), "{job:#}");
    job
}

/// Retries `id` and expects a 200 with the job queued again.
async fn retry(app: &TestApp, id: &str) -> Value {
    let r = retry_as(app, &app.token, id).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["id"], id);
    assert_eq!(job["state"], "queued", "{job:#}");
    assert!(job.get("finished_at").is_none(), "{job:#}");
    assert!(job.get("result").is_none(), "{job:#}");
    job
}

/// Expects a 409 `job_not_cancellable` whose detail names `state`.
async fn not_cancellable(app: &TestApp, id: &str, state: &str) -> Value {
    let body = problem(
        cancel_as(app, &app.token, id).await,
        StatusCode::CONFLICT,
        "job_not_cancellable",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains(state), "{body:#}");
    body
}

/// Expects a 409 `job_not_retryable` whose detail names `state`.
async fn not_retryable(app: &TestApp, id: &str, state: &str) -> Value {
    let body = problem(
        retry_as(app, &app.token, id).await,
        StatusCode::CONFLICT,
        "job_not_retryable",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains(state), "{body:#}");
    body
}

fn in_future(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339()
}

async fn attempt_rows(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Ready messages in one of the test's RabbitMQ queues.
async fn ready_messages(app: &TestApp, queue: &str) -> u32 {
    message_count(&broker::queue_name(&app.broker, queue)).await
}

fn outcomes(job: &Value) -> Vec<(i64, String)> {
    job["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap_or("running").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_cancelled_scheduled_job_never_runs() {
    let app = TestApp::spawn().await;
    let later = app
        .enqueue(json!({"kind": "noop", "run_at": in_future(3_600_000)}))
        .await;
    let job = cancel(&app, &later).await;
    assert_eq!(job["attempts"], 0);
    let seen = app.get_json(&format!("/v1/jobs/{later}")).await;
    assert_eq!(seen["state"], "cancelled");
    assert_eq!(seen["finished_at"], job["finished_at"]);
    assert_eq!(seen["attempts_log"], json!([]));

    // Due in a second, next to a twin that is not cancelled: once the twin has run, the
    // cancelled one was due too, and it must stay cancelled past its run_at.
    let run_at = in_future(1000);
    let soon = app.enqueue(json!({"kind": "noop", "run_at": run_at})).await;
    let twin = app.enqueue(json!({"kind": "noop", "run_at": run_at})).await;
    cancel(&app, &soon).await;
    app.wait_for_state(&twin, "succeeded", Duration::from_secs(10))
        .await;
    let ran = eventually(Duration::from_secs(2), || async {
        let job = app.get_json(&format!("/v1/jobs/{soon}")).await;
        (job["state"] != "cancelled" || job["attempts"] != 0).then_some(job)
    })
    .await;
    assert!(ran.is_none(), "the cancelled job moved: {ran:#?}");
    let job = app.get_json(&format!("/v1/jobs/{soon}")).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["attempts_log"], json!([]));
    assert_eq!(attempt_rows(&app, &soon).await, 0);

    // Counted by queue.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("conveyor_jobs_cancelled_total{queue=\"default\"}")),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_whose_message_is_in_rabbitmq_is_skipped() {
    let app = TestApp::without_worker().await;
    let id = app.enqueue(noop(json!({}))).await;
    let published = eventually(Duration::from_secs(5), || async {
        let published: bool =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE job_id = $1)")
                .bind(Uuid::parse_str(&id).unwrap())
                .fetch_one(&app.pool)
                .await
                .unwrap();
        published.then_some(())
    })
    .await;
    assert!(published.is_some(), "the relay never published the job");
    assert_eq!(ready_messages(&app, "default").await, 1);
    let job = cancel(&app, &id).await;
    assert_eq!(job["attempts"], 0);

    // Now a worker comes: the cancelled job's message is first in the queue.
    let worker_shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let config = worker_config(&app);
        let shutdown = worker_shutdown.clone();
        async move { conveyor_worker::run(config, shutdown).await }
    });
    let next = app.enqueue(noop(json!({}))).await;
    app.wait_for_state(&next, "succeeded", Duration::from_secs(10))
        .await;
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["attempts_log"], json!([]));
    assert_eq!(attempt_rows(&app, &id).await, 0);

    // The worker consumed the stale message and acked it: with the worker gone (unacked
    // messages would be back in the queue), nothing is left.
    worker_shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .expect("the worker did not stop")
        .unwrap()
        .expect("worker failed");
    assert_eq!(ready_messages(&app, "default").await, 0);
    app.stop().await;
}

/// A worker for `app`'s database and queues, built like `TestApp` builds its own.
fn worker_config(app: &TestApp) -> conveyor_worker::Config {
    let id = Uuid::new_v4().simple().to_string();
    support::worker_config(
        &app.db_name,
        &app.broker,
        &format!("lifecycle-worker-{}", &id[..8]),
    )
}

#[tokio::test]
async fn running_and_finished_jobs_cannot_be_cancelled() {
    let app = TestApp::spawn().await;
    let running = app.enqueue(noop(json!({"sleep_ms": 3000}))).await;
    let dead = app
        .enqueue(json!({"kind": "noop", "payload": {"fail_times": 1}, "max_attempts": 1}))
        .await;
    let succeeded = app.enqueue(noop(json!({}))).await;

    app.wait_for_state(&running, "running", Duration::from_secs(5))
        .await;
    let body = not_cancellable(&app, &running, "running").await;
    assert!(
        body["detail"].as_str().unwrap().contains("interrupt"),
        "{body:#}"
    );
    app.wait_for_state(&succeeded, "succeeded", Duration::from_secs(5))
        .await;
    not_cancellable(&app, &succeeded, "succeeded").await;
    app.wait_for_state(&dead, "dead", Duration::from_secs(5))
        .await;
    not_cancellable(&app, &dead, "dead").await;

    // Cancelling twice: the second finds it already cancelled.
    let later = app
        .enqueue(json!({"kind": "noop", "run_at": in_future(3_600_000)}))
        .await;
    let first = cancel(&app, &later).await;
    not_cancellable(&app, &later, "cancelled").await;
    let after = app.get_json(&format!("/v1/jobs/{later}")).await;
    assert_eq!(
        after["finished_at"], first["finished_at"],
        "a refused cancel changed the job"
    );

    // The refused cancel did not disturb the running job.
    let done = app
        .wait_for_state(&running, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["attempts"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_retried_dead_job_gets_a_fresh_attempt_budget() {
    let app = TestApp::spawn().await;
    let id = app
        .enqueue(json!({"kind": "noop", "payload": {"fail_times": 1}, "max_attempts": 1}))
        .await;
    let dead = app
        .wait_for_state(&id, "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts"], 1);
    let job = retry(&app, &id).await;
    assert_eq!(job["attempts"], 1, "attempts keep counting");
    assert_eq!(
        job["last_error"], dead["last_error"],
        "the last error stays as history"
    );
    let run_at: chrono::DateTime<chrono::Utc> = job["run_at"].as_str().unwrap().parse().unwrap();
    assert!(run_at > chrono::Utc::now() - chrono::Duration::seconds(5));
    let done = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["attempt"], 2);
    assert_eq!(
        outcomes(&done),
        [(1, "failed".to_owned()), (2, "succeeded".to_owned())]
    );

    // Two attempts, both failed, dead; a retry grants two more, not zero.
    let id = app
        .enqueue(json!({"kind": "noop", "payload": {"fail_times": 5}, "max_attempts": 2}))
        .await;
    let dead = app
        .wait_for_state(&id, "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts"], 2);
    retry(&app, &id).await;
    let dead = app
        .wait_for_state(&id, "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts"], 4, "{dead:#}");
    assert_eq!(
        outcomes(&dead),
        (1..=4)
            .map(|n| (n, "failed".to_owned()))
            .collect::<Vec<_>>()
    );
    // Dead for good this time: no fifth attempt follows.
    let more = eventually(Duration::from_millis(500), || async {
        let job = app.get_json(&format!("/v1/jobs/{id}")).await;
        (job["attempts"] != 4 || job["state"] != "dead").then_some(job)
    })
    .await;
    assert!(more.is_none(), "{more:#?}");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("conveyor_jobs_retried_total{queue=\"default\"}")),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retried_cancelled_job_runs() {
    let app = TestApp::spawn().await;
    let id = app
        .enqueue(json!({"kind": "noop", "run_at": in_future(3_600_000)}))
        .await;
    cancel(&app, &id).await;
    // Due at once, not an hour from now.
    retry(&app, &id).await;
    let done = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["attempts"], 1);
    assert!(done["finished_at"].is_string());
    assert_eq!(outcomes(&done), [(1, "succeeded".to_owned())]);
    not_retryable(&app, &id, "succeeded").await;

    let running = app.enqueue(noop(json!({"sleep_ms": 2000}))).await;
    app.wait_for_state(&running, "running", Duration::from_secs(5))
        .await;
    not_retryable(&app, &running, "running").await;
    app.stop().await;
}

#[tokio::test]
async fn only_dead_or_cancelled_jobs_can_be_retried() {
    let app = TestApp::without_worker().await;
    let queued = app.enqueue(noop(json!({}))).await;
    not_retryable(&app, &queued, "queued").await;
    let scheduled = app
        .enqueue(json!({"kind": "noop", "run_at": in_future(3_600_000)}))
        .await;
    let body = not_retryable(&app, &scheduled, "scheduled").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("dead or cancelled"),
        "{body:#}"
    );
    // Retrying twice: the second finds it queued.
    cancel(&app, &scheduled).await;
    retry(&app, &scheduled).await;
    not_retryable(&app, &scheduled, "queued").await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_foreign_and_malformed_ids_are_404_and_scope_is_jobs_write() {
    let app = TestApp::without_worker().await;
    let id = app
        .enqueue(json!({"kind": "noop", "run_at": in_future(3_600_000)}))
        .await;
    let other = app.key("other", &[Scope::JobsWrite, Scope::JobsRead]).await;
    let reader = app.key("default", &[Scope::JobsRead]).await;
    let unknown = Uuid::now_v7().to_string();
    for action in ["cancel", "retry"] {
        for (token, target) in [
            (app.token.as_str(), unknown.as_str()),
            (app.token.as_str(), "nope"),
            (app.token.as_str(), "00000000-0000-0000-0000-00000000000g"),
            (other.as_str(), id.as_str()),
        ] {
            let path = format!("/v1/jobs/{target}/{action}");
            let body = problem(
                app.post_empty_as(token, &path).await,
                StatusCode::NOT_FOUND,
                "not_found",
            )
            .await;
            assert_eq!(body["detail"], "job not found", "{path}");
            assert!(!body.to_string().contains(&id), "{body:#}");
        }
        let path = format!("/v1/jobs/{id}/{action}");
        let body = problem(
            app.post_empty_as(&reader, &path).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains("jobs:write"),
            "{body:#}"
        );
        let r = app.client.post(app.url(&path)).send().await.unwrap();
        problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // None of that touched the job.
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "scheduled");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_cancels_and_retries_have_one_winner() {
    let app = TestApp::without_worker().await;
    let id = app
        .enqueue(json!({"kind": "noop", "run_at": in_future(3_600_000)}))
        .await;

    let statuses = |responses: Vec<Response>| {
        let mut ok = 0;
        let mut conflict = 0;
        for r in responses {
            match r.status() {
                StatusCode::OK => ok += 1,
                StatusCode::CONFLICT => conflict += 1,
                other => panic!("unexpected {other}"),
            }
        }
        (ok, conflict)
    };
    let cancels = join_all((0..10).map(|_| cancel_as(&app, &app.token, &id))).await;
    assert_eq!(statuses(cancels), (1, 9));
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "cancelled");

    let retries = join_all((0..10).map(|_| retry_as(&app, &app.token, &id))).await;
    assert_eq!(statuses(retries), (1, 9));
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "queued");
    app.stop().await;
}

/// RabbitMQ can lose a confirmed message (a purged or deleted queue, a broker restored from an
/// old disk), and the relay can die between marking a batch and sending it. Either way the job
/// sits `queued` with no message: the relay notices once its queue is empty and publishes it
/// again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_message_was_lost_is_published_again() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        republish_after: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    let id = app.enqueue(noop(json!({}))).await;
    let published = eventually(Duration::from_secs(10), || async {
        (ready_messages(&app, "default").await == 1).then_some(())
    })
    .await;
    assert!(published.is_some(), "the job was never published");

    // The broker loses the message.
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let purged = channel
        .queue_purge(
            broker::queue_name(&app.broker, "default").into(),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(purged, 1);
    conn.close(200, "done".into()).await.unwrap();
    assert_eq!(ready_messages(&app, "default").await, 0);

    let again = eventually(Duration::from_secs(10), || async {
        (ready_messages(&app, "default").await == 1).then_some(())
    })
    .await;
    assert!(again.is_some(), "the lost job {id} was not published again");
    // Its queue holds a message now, so the relay sends no further copies, however long the
    // job waits: several republish periods pass here on purpose.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        ready_messages(&app, "default").await,
        1,
        "a waiting job must not be published again while its queue is not empty"
    );
    let state: String = sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "queued");
    app.stop().await;
}

/// Acks go out in bulk (one `multiple` ack up to the highest delivery below which every outcome
/// is committed; single acks above a gap). Jobs of uneven length finish out of order; afterwards
/// no delivery may be left unacked, and none acked twice (RabbitMQ would have closed the
/// channel, and the jobs behind it would not all have succeeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_is_acked_once_when_jobs_finish_out_of_order() {
    let app = TestApp::spawn().await;
    let jobs: Vec<Value> = (0..300)
        .map(|i| noop(json!({"sleep_ms": (i * 7) % 23})))
        .collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({ "jobs": jobs }))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    for job in body["jobs"].as_array().unwrap() {
        app.wait_for_state(
            job["id"].as_str().unwrap(),
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
    }
    let api = conveyor_shared::management::ManagementApi::from_config(&app.broker)
        .expect("the management API is configured for tests");
    let name = broker::queue_name(&app.broker, "default");
    // The management API refreshes its figures every few seconds.
    let settled = eventually(Duration::from_secs(30), || async {
        (api.unacked(std::slice::from_ref(&name)).await == Some(vec![0])).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "deliveries left unacked: {:?} (is the management plugin on? scripts/ensure-services.sh)",
        api.unacked(std::slice::from_ref(&name)).await
    );
    assert_eq!(ready_messages(&app, "default").await, 0);
    app.stop().await;
}
