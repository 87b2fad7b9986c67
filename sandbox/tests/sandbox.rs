//! The sandbox driven over HTTP: through the router with `oneshot` for the contract, and over a real
//! socket for serving, the healthcheck and shutdown.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use conveyor_sandbox::{Application, Config, FaultConfig, healthcheck, router};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.expect("body readable");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status: parts.status,
        headers: parts.headers,
        text,
        json,
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Method::GET, uri, None, None).await
}

async fn post(app: &Router, uri: &str, key: Option<&str>, body: Value) -> Reply {
    call(app, Method::POST, uri, key, Some(body)).await
}

fn quiet() -> Router {
    router(&FaultConfig::default())
}

fn charge_body(amount_minor: i64) -> Value {
    json!({"amount_minor": amount_minor, "currency": "EUR", "reference": "order-1"})
}

fn event(id: &str) -> Value {
    json!({"id": id, "event": "signed_up", "user_id": "u1", "properties": {"plan": "pro"}, "timestamp": "2026-01-02T03:04:05Z"})
}

async fn charges(app: &Router) -> Vec<Value> {
    let reply = get(app, "/payments/v1/charges").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "listing charges failed: {}",
        reply.text
    );
    reply.json["charges"]
        .as_array()
        .expect("`charges` is an array")
        .clone()
}

#[tokio::test]
async fn health_and_readiness_answer_ok() {
    let app = quiet();
    for path in ["/healthz", "/readyz"] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.text, "ok", "{path}");
    }
}

#[tokio::test]
async fn a_charge_is_booked_once_per_idempotency_key() {
    let app = quiet();
    let first = post(
        &app,
        "/payments/v1/charges",
        Some("job-1"),
        charge_body(1250),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let charge = &first.json;
    assert!(
        charge["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("ch_")),
        "{charge}"
    );
    assert_eq!(charge["amount_minor"], 1250);
    assert_eq!(charge["currency"], "EUR");
    assert_eq!(charge["reference"], "order-1");
    assert_eq!(charge["status"], "succeeded");
    assert_eq!(charge["refunded_minor"], 0);

    let again = post(
        &app,
        "/payments/v1/charges",
        Some("job-1"),
        charge_body(1250),
    )
    .await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "a replay answers 200: {}",
        again.text
    );
    assert_eq!(
        again.json, first.json,
        "a replay returns the original charge"
    );

    let reused = post(
        &app,
        "/payments/v1/charges",
        Some("job-1"),
        charge_body(999),
    )
    .await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.text);
    assert_eq!(reused.json["error"], "idempotency_key_reused");

    let other = post(
        &app,
        "/payments/v1/charges",
        Some("job-2"),
        charge_body(1250),
    )
    .await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_ne!(other.json["id"], first.json["id"]);

    let listed = charges(&app).await;
    assert_eq!(listed.len(), 2, "one charge per key: {listed:?}");
    assert_eq!(listed[0]["id"], first.json["id"], "listed oldest first");
}

#[tokio::test]
async fn payment_posts_require_an_idempotency_key() {
    let app = quiet();
    let charge = post(&app, "/payments/v1/charges", None, charge_body(100)).await;
    assert_eq!(charge.status, StatusCode::BAD_REQUEST, "{}", charge.text);
    assert_eq!(charge.json["error"], "idempotency_key_required");
    let blank = post(&app, "/payments/v1/charges", Some("  "), charge_body(100)).await;
    assert_eq!(blank.status, StatusCode::BAD_REQUEST, "{}", blank.text);
    let refund = post(
        &app,
        "/payments/v1/refunds",
        None,
        json!({"charge_id": "ch_x"}),
    )
    .await;
    assert_eq!(refund.status, StatusCode::BAD_REQUEST, "{}", refund.text);
    assert!(charges(&app).await.is_empty());
}

#[tokio::test]
async fn a_declining_source_is_402_and_books_nothing() {
    let app = quiet();
    let mut body = charge_body(500);
    body["source"] = json!("tok_decline");
    let reply = post(&app, "/payments/v1/charges", Some("job-d"), body.clone()).await;
    assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED, "{}", reply.text);
    assert_eq!(reply.json["error"], "card_declined");
    let again = post(&app, "/payments/v1/charges", Some("job-d"), body).await;
    assert_eq!(
        again.status,
        StatusCode::PAYMENT_REQUIRED,
        "a retried decline is still a decline"
    );
    assert!(charges(&app).await.is_empty());

    let mut ok = charge_body(500);
    ok["source"] = json!("tok_visa");
    assert_eq!(
        post(&app, "/payments/v1/charges", Some("job-ok"), ok)
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn invalid_charges_are_rejected_with_a_json_error() {
    let app = quiet();
    for (body, why) in [
        (charge_body(0), "zero amount"),
        (charge_body(-5), "negative amount"),
        (
            json!({"amount_minor": 5, "currency": "eur", "reference": "r"}),
            "lowercase currency",
        ),
        (
            json!({"amount_minor": 5, "currency": "EUR", "reference": " "}),
            "blank reference",
        ),
        (
            json!({"amount_minor": 5, "currency": "EUR"}),
            "missing reference",
        ),
    ] {
        let reply = post(&app, "/payments/v1/charges", Some(why), body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{why}: {}",
            reply.text
        );
        assert_eq!(
            reply.json["error"], "invalid_request",
            "{why}: {}",
            reply.text
        );
    }
    let malformed = call(&app, Method::POST, "/payments/v1/charges", Some("k"), None).await;
    assert!(
        malformed.status.is_client_error(),
        "empty body: {}",
        malformed.status
    );
    assert_eq!(
        malformed.json["error"], "invalid_request",
        "{}",
        malformed.text
    );
    assert!(charges(&app).await.is_empty());
}

#[tokio::test]
async fn refunds_never_exceed_the_charge() {
    let app = quiet();
    let charge = post(&app, "/payments/v1/charges", Some("c1"), charge_body(1000))
        .await
        .json;
    let charge_id = charge["id"].as_str().expect("charge id").to_owned();

    let partial = post(
        &app,
        "/payments/v1/refunds",
        Some("r1"),
        json!({"charge_id": charge_id, "amount_minor": 600}),
    )
    .await;
    assert_eq!(partial.status, StatusCode::CREATED, "{}", partial.text);
    assert!(
        partial.json["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("re_")),
        "{}",
        partial.text
    );
    assert_eq!(partial.json["amount_minor"], 600);
    assert_eq!(partial.json["charge_id"], charge_id.as_str());
    assert_eq!(partial.json["status"], "succeeded");

    let replay = post(
        &app,
        "/payments/v1/refunds",
        Some("r1"),
        json!({"charge_id": charge_id, "amount_minor": 600}),
    )
    .await;
    assert_eq!(
        replay.status,
        StatusCode::OK,
        "a replayed refund answers 200: {}",
        replay.text
    );
    assert_eq!(
        replay.json, partial.json,
        "a replayed refund returns the original refund"
    );

    let too_much = post(
        &app,
        "/payments/v1/refunds",
        Some("r2"),
        json!({"charge_id": charge_id, "amount_minor": 401}),
    )
    .await;
    assert_eq!(
        too_much.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        too_much.text
    );
    assert_eq!(too_much.json["error"], "refund_exceeds_charge");

    let rest = post(
        &app,
        "/payments/v1/refunds",
        Some("r3"),
        json!({"charge_id": charge_id}),
    )
    .await;
    assert_eq!(rest.status, StatusCode::CREATED, "{}", rest.text);
    assert_eq!(
        rest.json["amount_minor"], 400,
        "no amount refunds what is left"
    );

    let nothing_left = post(
        &app,
        "/payments/v1/refunds",
        Some("r4"),
        json!({"charge_id": charge_id, "amount_minor": 1}),
    )
    .await;
    assert_eq!(
        nothing_left.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        nothing_left.text
    );

    let listed = charges(&app).await;
    assert_eq!(listed[0]["refunded_minor"], 1000, "{listed:?}");
    assert_eq!(listed[0]["status"], "succeeded");

    let unknown = post(
        &app,
        "/payments/v1/refunds",
        Some("r5"),
        json!({"charge_id": "ch_nope"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert_eq!(unknown.json["error"], "charge_not_found");
}

#[tokio::test]
async fn analytics_dedupes_events_by_id_and_counts_batches() {
    let app = quiet();
    let first = post(
        &app,
        "/analytics/v1/batch",
        None,
        json!({"events": [event("e1"), event("e2")]}),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.json, json!({"accepted": 2, "duplicates": 0}));

    // A retried batch plus a new event, and a duplicate inside one batch.
    let retry = post(
        &app,
        "/analytics/v1/batch",
        None,
        json!({"events": [event("e2"), event("e3"), event("e3")]}),
    )
    .await;
    assert_eq!(
        retry.json,
        json!({"accepted": 1, "duplicates": 2}),
        "{}",
        retry.text
    );

    let invalid = post(
        &app,
        "/analytics/v1/batch",
        None,
        json!({"events": [event("e4"), {"id": "e5"}]}),
    )
    .await;
    assert_eq!(
        invalid.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        invalid.text
    );

    let seen = get(&app, "/analytics/v1/events").await;
    assert_eq!(seen.status, StatusCode::OK);
    let ids: Vec<&str> = seen.json["events"]
        .as_array()
        .expect("events array")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["e1", "e2", "e3"],
        "unique events in arrival order; a rejected batch stores nothing"
    );
    assert_eq!(seen.json["batches"], 2, "two accepted batch requests");
    assert_eq!(seen.json["events"][0]["properties"], json!({"plan": "pro"}));
    assert_eq!(seen.json["events"][0]["user_id"], "u1");
}

#[tokio::test]
async fn failure_rate_one_answers_every_post_with_5xx_and_books_nothing() {
    let app = router(&FaultConfig {
        failure_rate: 1.0,
        ..FaultConfig::default()
    });
    for i in 0..20 {
        let key = format!("job-{i}");
        let charge = post(&app, "/payments/v1/charges", Some(&key), charge_body(100)).await;
        assert!(
            matches!(
                charge.status,
                StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE
            ),
            "charge answered {}",
            charge.status
        );
        let batch = post(
            &app,
            "/analytics/v1/batch",
            None,
            json!({"events": [event(&key)]}),
        )
        .await;
        assert!(
            batch.status.is_server_error(),
            "batch answered {}",
            batch.status
        );
    }
    assert_eq!(
        get(&app, "/healthz").await.status,
        StatusCode::OK,
        "probes are never faulted"
    );
    assert!(charges(&app).await.is_empty(), "a 5xx books nothing");
    let seen = get(&app, "/analytics/v1/events").await;
    assert_eq!(seen.json["batches"], 0, "{}", seen.text);
}

#[tokio::test]
async fn posts_above_the_rate_limit_get_429_with_retry_after() {
    let app = router(&FaultConfig {
        rate_limit: 2,
        ..FaultConfig::default()
    });
    for key in ["a", "b"] {
        assert_eq!(
            post(&app, "/payments/v1/charges", Some(key), charge_body(1))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let limited = post(&app, "/payments/v1/charges", Some("c"), charge_body(1)).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    assert_eq!(limited.json["error"], "rate_limited");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after >= 1,
        "Retry-After in whole seconds, at least 1: {retry_after}"
    );
    assert_eq!(
        charges(&app).await.len(),
        2,
        "inspection GETs are not rate limited"
    );
}

#[tokio::test]
async fn latency_is_added_to_posts() {
    let app = router(&FaultConfig {
        latency_ms: 100,
        ..FaultConfig::default()
    });
    let started = Instant::now();
    let reply = post(&app, "/payments/v1/charges", Some("slow"), charge_body(1)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_charge_is_booked_although_the_client_gave_up() {
    let app = router(&FaultConfig {
        failure_rate: 1.0,
        stall_ms: 30_000,
        ..FaultConfig::default()
    });
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..60 {
        let app = app.clone();
        requests.spawn(async move {
            let key = format!("job-{i}");
            tokio::time::timeout(
                Duration::from_secs(2),
                post(&app, "/payments/v1/charges", Some(&key), charge_body(100)),
            )
            .await
            .map(|reply| reply.status)
        });
    }
    let mut gave_up = 0;
    while let Some(outcome) = requests.join_next().await {
        match outcome.expect("request task") {
            Err(_elapsed) => gave_up += 1,
            Ok(status) => assert!(
                status.is_server_error(),
                "with failure rate 1 every answer is a 5xx, got {status}"
            ),
        }
    }
    assert!(
        gave_up > 0,
        "a third of failures should be stalls; none of 60 was"
    );
    assert_eq!(
        charges(&app).await.len(),
        gave_up,
        "every stalled charge was booked, no failed one was"
    );
}

#[tokio::test]
async fn serves_on_a_socket_answers_the_healthcheck_and_stops_on_shutdown() {
    let app = Application::bind(&Config::for_tests())
        .await
        .expect("bind 127.0.0.1:0");
    let addr = app.local_addr().expect("bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    healthcheck::probe(addr)
        .await
        .expect("a running sandbox is ready");

    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shuts down promptly")
        .expect("server task")
        .expect("served without error");
    assert!(
        healthcheck::probe(addr).await.is_err(),
        "a stopped sandbox is not ready"
    );
}
