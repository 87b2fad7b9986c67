//! Abuse limits: per-key rate limits (a batch counts its jobs), request timeouts and the payload
//! size limit per job, on the single and batch routes alike.

mod support;

use std::time::Duration;

use conveyor_shared::keys::Scope;
use reqwest::{StatusCode, header};
use serde_json::json;
use support::{Options, TestApp, noop, problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn spawn(options: Options) -> TestApp {
    TestApp::spawn_with(Options {
        worker: false,
        ..options
    })
    .await
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_then_recovers() {
    // 2 per second, 5 at once.
    let app = spawn(Options {
        rate_limit: (2, 5),
        ..Default::default()
    })
    .await;
    let token = app.key("default", &[Scope::JobsRead]).await;
    for i in 0..5 {
        let r = app.get_as(&token, "/v1/jobs").await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "request {i} is within the burst"
        );
    }
    let r = app.get_as(&token, "/v1/jobs").await;
    let retry_after: u64 = r.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body = problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("retry in"),
        "{body:#}"
    );

    // Another key of the same tenant has its own budget.
    let other = app.key("default", &[Scope::JobsRead]).await;
    assert_eq!(
        app.get_as(&other, "/v1/jobs").await.status(),
        StatusCode::OK
    );

    // After the advertised wait, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_of_n_jobs_costs_n_requests() {
    let app = spawn(Options {
        rate_limit: (1, 5),
        ..Default::default()
    })
    .await;
    let token = app.key("default", &[Scope::JobsWrite]).await;
    let batch = |n: usize| json!({"jobs": vec![noop(json!({})); n]});
    let r = app.post_as(&token, "/v1/jobs/batch", batch(5)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // The batch spent the whole burst: the next single enqueue must wait.
    let r = app.post_as(&token, "/v1/jobs", noop(json!({}))).await;
    problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.count_jobs().await, 5);

    // A batch larger than the burst can never pass; it is refused as such, not with a wait.
    let fresh = app.key("default", &[Scope::JobsWrite]).await;
    let r = app.post_as(&fresh, "/v1/jobs/batch", batch(6)).await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "jobs", "{body:#}");
    assert_eq!(app.count_jobs().await, 5);
    app.stop().await;
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused_by_name_in_a_batch_too() {
    let app = spawn(Options {
        max_payload_bytes: 1024,
        ..Default::default()
    })
    .await;
    let big = noop(json!({"pad": "x".repeat(2000)}));
    let r = app.post_job(big.clone()).await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "payload", "{body:#}");

    let r = app
        .post_as(
            &app.token,
            "/v1/jobs/batch",
            json!({"jobs": [noop(json!({})), big]}),
        )
        .await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "jobs[1].payload", "{body:#}");
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_outlasts_the_timeout_is_answered_503() {
    let app = spawn(Options {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    // A client that announces a body and never sends it (slowloris) holds no handler forever.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\":",
        app.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered within the timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
    app.stop().await;
}
