//! Integration kinds against the real api, worker, Postgres and RabbitMQ: `webhook.deliver` to a
//! local receiver (signatures checked with the independent `standardwebhooks` crate, retries,
//! permanent failures, the egress policy, the circuit breaker) and `analytics.track` through the
//! in-process sandbox under a tight rate limit.

mod support;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus},
};
use conveyor_sandbox::FaultConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Options, Sandbox as Service, TestApp, eventually, problem, sandbox};
use tokio_util::sync::CancellationToken;

/// A test secret in the scheme's format (the Standard Webhooks docs' example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------------------------------------
// A local webhook receiver: records every request and answers scripted statuses.

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Script {
    seen: Arc<Mutex<Vec<Received>>>,
    /// The n-th request gets `statuses[n]`; the last status repeats.
    statuses: Arc<Vec<u16>>,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Self {
        let script = Script {
            seen: Arc::default(),
            statuses: Arc::new(statuses.to_vec()),
        };
        let seen = script.seen.clone();
        let app = Router::new().fallback(record).with_state(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        Self { addr, seen, stop }
    }

    /// The URL by host name: the worker must resolve it and judge the address it gets.
    fn url(&self) -> String {
        format!("http://localhost:{}/hooks/in", self.addr.port())
    }

    fn host(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn record(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let n = {
        let mut seen = script.seen.lock().unwrap();
        seen.push(Received { headers, body });
        seen.len()
    };
    let status = script.statuses[(n - 1).min(script.statuses.len() - 1)];
    AxumStatus::from_u16(status).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Apps and helpers.

/// A TestApp whose worker may reach 127.0.0.0/8 (`allow`) and signs with `secret`.
async fn app(allow: bool, secret: Option<&'static str>) -> TestApp {
    app_with(move |c| {
        if allow {
            c.egress_allow = vec!["127.0.0.0/8".parse().unwrap()];
        }
        c.webhook_secret = secret.map(Into::into);
    })
    .await
}

async fn app_with(
    configure: impl Fn(&mut conveyor_worker::Config) + Send + Sync + 'static,
) -> TestApp {
    TestApp::spawn_with(Options {
        configure_worker: Some(Arc::new(configure)),
        ..Default::default()
    })
    .await
}

fn webhook(url: &str, max_attempts: i32) -> Value {
    json!({"kind": "webhook.deliver", "max_attempts": max_attempts,
           "payload": {"url": url, "event": "invoice.paid", "data": {"invoice": "in_1", "amount": 42}}})
}

fn verify(received: &Received) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&received.body, &received.headers)
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received.headers[name].to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Webhooks.

#[tokio::test]
async fn webhooks_are_signed_by_the_standard_webhooks_scheme() {
    let receiver = Receiver::start(&[204]).await;
    let app = app(true, Some(SECRET)).await;
    let id = app.enqueue(webhook(&receiver.url(), 3)).await;
    let job = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(20))
        .await;
    assert_eq!(job["result"]["status"], 204, "{job:#}");

    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    verify(request).expect("the signature verifies with an independent implementation");
    assert_eq!(header(request, "webhook-id"), id);
    assert_eq!(header(request, "content-type"), "application/json");
    let timestamp: i64 = header(request, "webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["data"], json!({"invoice": "in_1", "amount": 42}));

    // The check is meaningful: another key, or a changed body, does not verify.
    let other = standardwebhooks::Webhook::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    assert!(other.verify(&request.body, &request.headers).is_err());
    let mut tampered = request.clone();
    tampered.body = Bytes::from(request.body.to_vec().repeat(2));
    assert!(verify(&tampered).is_err());
    app.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_webhook_id() {
    let receiver = Receiver::start(&[503, 500, 200]).await;
    let app = app(true, Some(SECRET)).await;
    let id = app.enqueue(webhook(&receiver.url(), 5)).await;
    let job = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 3, "{job:#}");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(header(request, "webhook-id"), id);
        verify(request).expect("every attempt is signed");
    }
    let log = app.get_json(&format!("/v1/jobs/{id}")).await["attempts_log"].clone();
    let errors: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["error"].as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{log:#}");
    assert!(errors[0].contains("503"), "{errors:?}");
    assert!(errors[1].contains("500"), "{errors:?}");
    app.stop().await;
}

#[tokio::test]
async fn gone_is_dead_after_one_attempt() {
    let receiver = Receiver::start(&[410]).await;
    let app = app(true, Some(SECRET)).await;
    let id = app.enqueue(webhook(&receiver.url(), 5)).await;
    let job = app
        .wait_for_state(&id, "dead", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 1, "{job:#}");
    assert!(
        job["last_error"].as_str().unwrap().contains("410"),
        "{job:#}"
    );
    assert_eq!(receiver.seen().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_egress_refused_target_is_never_contacted() {
    let receiver = Receiver::start(&[200]).await;
    // No allow list: localhost resolves to loopback addresses only, which the policy refuses.
    let app = app(false, Some(SECRET)).await;
    let id = app.enqueue(webhook(&receiver.url(), 5)).await;
    let job = app
        .wait_for_state(&id, "dead", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 1, "a refusal is permanent: {job:#}");
    let error = job["last_error"].as_str().unwrap();
    assert!(error.contains("egress policy"), "{error}");
    assert!(error.contains("loopback"), "{error}");
    assert!(
        !error.contains("127.0.0.1"),
        "resolved addresses stay in the operator's log: {error}"
    );
    assert!(receiver.seen().is_empty(), "the receiver was contacted");

    // A literal loopback address is refused before anything is stored.
    let r = app
        .post_job(webhook(
            &format!("http://127.0.0.1:{}/hooks/in", receiver.addr.port()),
            5,
        ))
        .await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "payload.url", "{body:#}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("egress policy"),
        "{body:#}"
    );
    assert!(receiver.seen().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_without_a_configured_secret_is_dead_with_a_clear_error() {
    let receiver = Receiver::start(&[200]).await;
    let app = app(true, None).await;
    let id = app.enqueue(webhook(&receiver.url(), 5)).await;
    let job = app
        .wait_for_state(&id, "dead", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 1);
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("CONVEYOR_WEBHOOK_SECRET"),
        "{job:#}"
    );
    assert!(receiver.seen().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_fails_fast() {
    let receiver = Receiver::start(&[500]).await;
    let app = app_with(|c| {
        c.egress_allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhook_secret = Some(SECRET.into());
        c.breaker_failures = 2;
        c.breaker_cooldown = Duration::from_secs(120);
    })
    .await;
    let id = app.enqueue(webhook(&receiver.url(), 6)).await;
    let job = app
        .wait_for_state(&id, "dead", Duration::from_secs(30))
        .await;
    assert_eq!(job["attempts"], 6, "{job:#}");
    assert_eq!(
        receiver.seen().len(),
        2,
        "attempts after the circuit opened must not reach the host"
    );
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{job:#}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", app.worker_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("conveyor_breaker_state{{host=\"{}\"}} 1", receiver.host());
    assert!(metrics.contains(&series), "{series} not in metrics");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Validation at enqueue.

#[tokio::test]
async fn bad_urls_and_events_are_refused_at_enqueue_naming_the_field() {
    let app = TestApp::without_worker().await;
    let cases = [
        (
            json!({"kind": "webhook.deliver", "payload": {"url": "ftp://example.com/x", "event": "e"}}),
            "payload.url",
        ),
        (
            json!({"kind": "webhook.deliver", "payload": {"url": "example.com/x", "event": "e"}}),
            "payload.url",
        ),
        (
            json!({"kind": "webhook.deliver", "payload": {"url": "http://169.254.169.254/latest/meta-data", "event": "e"}}),
            "payload.url",
        ),
        (
            json!({"kind": "webhook.deliver", "payload": {"url": "http://[::ffff:10.0.0.1]/", "event": "e"}}),
            "payload.url",
        ),
        (
            json!({"kind": "webhook.deliver", "payload": {"url": format!("https://example.com/{}", "a".repeat(2100)), "event": "e"}}),
            "payload.url",
        ),
        (
            json!({"kind": "webhook.deliver", "payload": {"url": "https://example.com/", "event": ""}}),
            "payload.event",
        ),
        (
            json!({"kind": "analytics.track", "payload": {"event": ""}}),
            "payload.event",
        ),
        (
            json!({"kind": "analytics.track", "payload": {"event": "x".repeat(201)}}),
            "payload.event",
        ),
        (
            json!({"kind": "analytics.track", "payload": {"event": "ok", "properties": "plan=pro"}}),
            "payload.properties",
        ),
    ];
    for (body, field) in cases {
        let r = app.post_job(body.clone()).await;
        let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(doc["errors"][0]["field"], field, "{body}: {doc:#}");
    }
    let r = app
        .post_as(
            &app.token,
            "/v1/jobs/batch",
            json!({"jobs": [
                {"kind": "analytics.track", "payload": {"event": "fine"}},
                {"kind": "webhook.deliver", "payload": {"url": "http://10.1.2.3/", "event": "e"}},
            ]}),
        )
        .await;
    let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(doc["errors"][0]["field"], "jobs[1].payload.url", "{doc:#}");
    assert_eq!(app.count_jobs().await, 0, "a rejected batch stores nothing");

    // Good ones land on the integrations queue.
    let r = app
        .post_job(json!({"kind": "analytics.track", "payload": {"event": "signed_up", "user_id": "u1", "properties": {"plan": "pro"}}}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["queue"], "integrations");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Analytics.

async fn analytics_app(service: &Service, rps: u32, batch_size: usize) -> TestApp {
    let url = format!("http://{}", service.addr);
    app_with(move |c| {
        c.analytics_url = url.clone();
        c.analytics_rps = rps;
        c.analytics_batch_size = batch_size;
        c.analytics_linger = Duration::from_millis(100);
        // Every job in a batch waits for its verdict, so a batch is at most `concurrency` long.
        c.concurrency = 128;
        c.prefetch = 256;
    })
    .await
}

/// Enqueues `n` analytics events in one batch request; returns their job ids.
async fn track(app: &TestApp, n: usize) -> Vec<String> {
    let jobs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"kind": "analytics.track",
                        "payload": {"event": "page_viewed", "user_id": format!("u{}", i % 7),
                                    "properties": {"n": i}}})
        })
        .collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({ "jobs": jobs }))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_all_succeeded(app: &TestApp, n: i64, within: Duration) {
    let done = eventually(within, || async {
        let (succeeded, dead): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'dead')
             FROM jobs WHERE kind = 'analytics.track'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(dead, 0, "no analytics job may die");
        (succeeded == n).then_some(())
    })
    .await;
    if done.is_none() {
        let states: Vec<(String, i64)> =
            sqlx::query_as("SELECT state::text, count(*) FROM jobs GROUP BY state")
                .fetch_all(&app.pool)
                .await
                .unwrap();
        panic!("not every analytics job succeeded within {within:?}: {states:?}");
    }
}

/// The sandbox's view: event ids (asserted unique) and how many batch requests it accepted.
async fn received(service: &Service) -> (Vec<String>, u64) {
    let r: Value = reqwest::get(format!("http://{}/analytics/v1/events", service.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, r["batches"].as_u64().unwrap())
}

fn assert_exactly(ids: &[String], expected: &[String]) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event arrived twice");
    let wanted: HashSet<&String> = expected.iter().collect();
    assert_eq!(
        unique, wanted,
        "the events received are not the jobs enqueued"
    );
}

#[tokio::test]
async fn hundreds_of_events_arrive_once_each_in_few_batches_within_the_rate_limit() {
    const EVENTS: usize = 300;
    let service = sandbox(FaultConfig {
        rate_limit: 2,
        ..FaultConfig::default()
    })
    .await;
    let app = analytics_app(&service, 2, 50).await;
    let started = Instant::now();
    let ids = track(&app, EVENTS).await;
    wait_all_succeeded(&app, EVENTS as i64, Duration::from_secs(90)).await;
    let elapsed = started.elapsed();
    let (received, batches) = received(&service).await;
    assert_exactly(&received, &ids);
    eprintln!("analytics: {EVENTS} events in {batches} batch requests, {elapsed:?}, limit 2 req/s");
    assert!(
        batches <= (EVENTS / 10) as u64,
        "{batches} batches for {EVENTS} events is not batching"
    );
    // A job succeeds only once its event was accepted, so the first attempt worked for all
    // but the few that met a 429 the limiter could not foresee.
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempts > 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        retried <= (EVENTS / 10) as i64,
        "{retried} jobs needed a retry"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_429_pauses_sending_for_its_retry_after_and_nothing_is_lost() {
    const EVENTS: usize = 200;
    // The worker is configured well above the service's limit, so the service's 429s and
    // Retry-After are what keep it in line.
    let service = sandbox(FaultConfig {
        rate_limit: 2,
        ..FaultConfig::default()
    })
    .await;
    let app = analytics_app(&service, 50, 40).await;
    let started = Instant::now();
    let ids = track(&app, EVENTS).await;
    wait_all_succeeded(&app, EVENTS as i64, Duration::from_secs(90)).await;
    let (received, batches) = received(&service).await;
    assert_exactly(&received, &ids);
    eprintln!(
        "analytics over the limit: {EVENTS} events in {batches} accepted batches, {:?}",
        started.elapsed()
    );
    assert!(batches <= (EVENTS / 10) as u64, "{batches} batches");
    app.stop().await;
}

#[tokio::test]
async fn failing_batches_are_retried_until_every_event_is_accepted_once() {
    const EVENTS: usize = 100;
    let service = sandbox(FaultConfig {
        failure_rate: 0.3,
        ..FaultConfig::default()
    })
    .await;
    // Small batches, so that many requests meet the injected faults.
    let app = analytics_app(&service, 50, 5).await;
    let ids = track(&app, EVENTS).await;
    wait_all_succeeded(&app, EVENTS as i64, Duration::from_secs(90)).await;
    let (received, _) = received(&service).await;
    assert_exactly(&received, &ids);
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempts > 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        retried > 0,
        "with 30% failures some jobs must have been retried"
    );
    app.stop().await;
}
