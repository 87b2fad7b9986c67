//! RabbitMQ unreachable from the api: enqueue keeps answering 201, the jobs wait in Postgres,
//! readiness reports the outage, and everything goes out once the broker is back.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{Options, TestApp, eventually, noop, proxy::Proxy};

#[tokio::test]
async fn enqueue_survives_a_broker_outage_and_jobs_run_when_it_returns() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = TestApp::spawn_with(Options {
        api_amqp_url: Some(format!("amqp://guest:guest@{}/%2f", proxy.addr)),
        ..Default::default()
    })
    .await;
    // Sanity: the path through the proxy works.
    let before = app.enqueue(noop(json!({}))).await;
    app.wait_for_state(&before, "succeeded", Duration::from_secs(5))
        .await;

    proxy.cut();
    let not_ready = eventually(Duration::from_secs(10), || async {
        let r = app.client.get(app.url("/readyz")).send().await.ok()?;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(
        not_ready.is_some(),
        "readiness should report the broker outage"
    );
    let body: serde_json::Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"postgres": true, "rabbitmq": false}));

    let mut ids = Vec::new();
    for i in 0..20 {
        let r = app.post_job(noop(json!({"sleep_ms": i % 3}))).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "enqueue must not depend on RabbitMQ"
        );
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let batch: Vec<_> = (0..10).map(|_| noop(json!({}))).collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": batch}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let batch: serde_json::Value = r.json().await.unwrap();
    ids.extend(
        batch["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned()),
    );

    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox JOIN jobs ON jobs.id = outbox.job_id
         WHERE jobs.state = 'queued'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        waiting, 30,
        "jobs wait in Postgres, unpublished, while the broker is away"
    );

    // The relay reports its backlog while it cannot publish.
    let backlog = eventually(Duration::from_secs(15), || async {
        let page = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        page.lines()
            .find(|l| l.starts_with("conveyor_relay_backlog "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 30.0)
    })
    .await;
    assert!(
        backlog.is_some(),
        "conveyor_relay_backlog should show the 30 waiting jobs"
    );

    proxy.restore();
    for id in &ids {
        app.wait_for_state(id, "succeeded", Duration::from_secs(20))
            .await;
    }
    app.wait_ready().await;
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 31, "each job ran exactly once");
    app.stop().await;
}
