//! W3C `traceparent` from enqueue to the worker's outgoing calls: stored with the job, put in
//! the RabbitMQ message headers by the relay, sent by the worker to the payment provider with
//! the same trace id and a parent id of its own.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::HeaderMap};
use conveyor_shared::broker;
use lapin::{options::BasicGetOptions, types::AMQPValue};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Options, TestApp, noop};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn post_traced(app: &TestApp, path: &str, traceparent: &str, body: Value) -> Value {
    let r = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.token)
        .header("traceparent", traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_relay_puts_the_stored_traceparent_in_the_message_headers() {
    let app = TestApp::without_worker().await;
    let job = post_traced(&app, "/v1/jobs", TRACEPARENT, noop(json!({}))).await;
    assert_eq!(job["traceparent"], TRACEPARENT, "{job:#}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_json(&format!("/v1/jobs/{id}")).await["traceparent"],
        TRACEPARENT
    );

    // An invalid header is ignored (the trace restarts), never a reason to refuse the job.
    let untraced = post_traced(&app, "/v1/jobs", "00-nonsense-01", noop(json!({}))).await;
    assert!(untraced.get("traceparent").is_none(), "{untraced:#}");

    let conn = lapin::Connection::connect(&support::amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = broker::queue_name(&app.broker, "default");
    let mut headers_by_id = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while headers_by_id.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both messages should reach RabbitMQ; got {headers_by_id:?}"
        );
        let Some(message) = channel
            .basic_get(queue.clone().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        };
        let id = message
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        let traceparent = message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("traceparent").cloned());
        headers_by_id.insert(id, traceparent);
    }
    match &headers_by_id[&id] {
        Some(AMQPValue::LongString(s)) => assert_eq!(s.to_string(), TRACEPARENT),
        other => panic!("expected a traceparent header, got {other:?}"),
    }
    let untraced_id = untraced["id"].as_str().unwrap();
    assert!(headers_by_id[untraced_id].is_none());
    let _ = conn.close(200, "bye".into()).await;
    app.stop().await;
}

/// A payment provider that records the headers of every call and approves it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<HeaderMap>>>);

async fn approve(State(seen): State<Recorder>, headers: HeaderMap) -> Json<Value> {
    let n = {
        let mut seen = seen.0.lock().unwrap();
        seen.push(headers);
        seen.len()
    };
    Json(json!({"id": format!("ch_{n}")}))
}

#[tokio::test]
async fn the_worker_sends_the_trace_to_the_payment_provider() {
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_url = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new().fallback(approve).with_state(recorder.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let app = TestApp::spawn_with(Options {
        configure_worker: Some(Arc::new(move |c| c.payment_url = provider_url.clone())),
        ..Default::default()
    })
    .await;
    let r = app
        .post_as(
            &app.token,
            "/v1/accounts",
            json!({"name": "wallet", "currency": "EUR"}),
        )
        .await;
    let account: Value = r.json().await.unwrap();
    let charge = json!({"kind": "payment.charge",
        "payload": {"account_id": account["id"], "amount_minor": 500, "currency": "EUR"}});
    let batch = post_traced(
        &app,
        "/v1/jobs/batch",
        TRACEPARENT,
        json!({"jobs": [charge]}),
    )
    .await;
    let id = batch["jobs"][0]["id"].as_str().unwrap();
    assert_eq!(batch["jobs"][0]["traceparent"], TRACEPARENT);
    app.wait_for_state(id, "succeeded", Duration::from_secs(10))
        .await;

    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let sent = seen[0]["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the same trace: {sent}");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the worker's own span: {sent}"
    );
    assert_eq!(parts[3], "01", "flags kept: {sent}");
    assert_eq!(seen[0]["idempotency-key"], id);
    app.stop().await;
    server.abort();
}
