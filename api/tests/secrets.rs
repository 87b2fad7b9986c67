//! Secrets never reach logs or metrics: a full flow (enqueue, a payment with a provider API
//! key, a signed webhook, the bootstrap token, a second key, a refused token) runs with every
//! log line of this test binary captured at DEBUG, then the capture and both `/metrics` pages
//! are searched for each secret. Configuration `Debug` output is checked for redaction too.

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::StatusCode as AxumStatus, routing::post};
use conveyor_sandbox::FaultConfig;
use conveyor_shared::{
    config::{BrokerConfig, DatabaseConfig},
    keys::Scope,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Options, TestApp, sandbox};

const PAYMENT_KEY: &str = "sk_live_PAYMENTKEYnotForLogs4242";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DB_PASSWORD: &str = "pgPASSWORDnotForLogs";
const AMQP_PASSWORD: &str = "amqpPASSWORDnotForLogs";

/// Everything this test binary logs.
static CAPTURE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> String {
    String::from_utf8_lossy(&CAPTURE.lock().unwrap()).into_owned()
}

/// A webhook endpoint that accepts everything.
async fn receiver() -> std::net::SocketAddr {
    let app = Router::new().route("/hooks/in", post(|| async { AxumStatus::OK }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn no_secret_appears_in_logs_or_metrics() {
    // Installed before TestApp's own subscriber, which then stands aside (try_init).
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(|| Capture)
        .init();

    let provider = sandbox(FaultConfig::default()).await;
    let hooks = receiver().await;
    let payment_url = format!("http://{}", provider.addr);
    let app = TestApp::spawn_with(Options {
        configure_worker: Some(Arc::new(move |c| {
            c.payment_url = payment_url.clone();
            c.payment_api_key = Some(PAYMENT_KEY.into());
            c.webhook_secret = Some(WEBHOOK_SECRET.into());
            c.egress_allow = vec!["127.0.0.0/8".parse().unwrap()];
        })),
        ..Default::default()
    })
    .await;

    // A second key, used; a wrong token, refused.
    let reader = app.key("default", &[Scope::JobsRead]).await;
    assert_eq!(
        app.get_as(&reader, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    let wrong = "cvy_WRONGtokenNotForLogs0000000000000000000";
    assert_eq!(
        app.get_as(wrong, "/v1/jobs").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let r = app
        .post_as(
            &app.token,
            "/v1/accounts",
            json!({"name": "wallet", "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let account = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let charge = app
        .enqueue(json!({"kind": "payment.charge",
                        "payload": {"account_id": account, "amount_minor": 500, "currency": "EUR"}}))
        .await;
    let webhook = app
        .enqueue(json!({"kind": "webhook.deliver",
                        "payload": {"url": format!("http://localhost:{}/hooks/in", hooks.port()),
                                    "event": "invoice.paid", "data": {"n": 1}}}))
        .await;
    let noop = app.enqueue(json!({"kind": "noop"})).await;
    for id in [&charge, &webhook, &noop] {
        app.wait_for_state(id, "succeeded", Duration::from_secs(30))
            .await;
    }

    let mut pages = String::new();
    for addr in [app.addr, app.worker_addr.unwrap()] {
        let page = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        pages.push_str(&page);
    }
    let token = app.token.clone();
    app.stop().await;

    let logs = captured();
    if let Ok(path) = std::env::var("CONVEYOR_SECRETS_TEST_DUMP") {
        std::fs::write(path, &logs).unwrap();
    }
    // The capture works: the flow is in it.
    assert!(logs.contains(&charge), "the capture missed the flow");
    assert!(pages.contains("conveyor_http_requests_total"));
    let webhook_key = WEBHOOK_SECRET.trim_start_matches("whsec_");
    for (name, secret) in [
        ("bootstrap token", token.as_str()),
        ("second key's token", reader.as_str()),
        ("refused token", wrong),
        ("payment API key", PAYMENT_KEY),
        ("webhook secret", webhook_key),
    ] {
        assert!(!logs.contains(secret), "the {name} appears in the logs");
        assert!(!pages.contains(secret), "the {name} appears in /metrics");
    }
}

#[test]
fn configuration_debug_output_redacts_secrets() {
    let db = DatabaseConfig::with_url(format!("postgres://app:{DB_PASSWORD}@db:5432/conveyor"));
    let broker = BrokerConfig::with_url(
        format!("amqp://app:{AMQP_PASSWORD}@mq:5672/%2f"),
        "conveyor",
    );
    let mut worker = conveyor_worker::Config::defaults(db.clone(), broker.clone());
    worker.payment_api_key = Some(PAYMENT_KEY.into());
    worker.webhook_secret = Some(WEBHOOK_SECRET.into());
    let api = conveyor_api::Config {
        database: db.clone(),
        broker: broker.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        queues: vec!["default".into()],
        bootstrap_token: Some("cvy_BOOTSTRAPnotForLogs".into()),
        relay: Default::default(),
        max_body_bytes: 1,
        max_batch_body_bytes: 1,
        max_batch_jobs: 1,
        max_payload_bytes: 1,
        rate_limit_rps: 0,
        rate_limit_burst: 0,
        request_timeout: Duration::from_secs(1),
        auth_fail_rps: 0,
        auth_fail_burst: 0,
        max_connections: 1,
        header_read_timeout: Duration::from_secs(1),
        auth_cache_ttl: Duration::ZERO,
        run_relay: false,
    };
    for text in [
        format!("{worker:?}"),
        format!("{api:?}"),
        format!("{api:#?}"),
    ] {
        for secret in [
            DB_PASSWORD,
            AMQP_PASSWORD,
            PAYMENT_KEY,
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "BOOTSTRAPnotForLogs",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
