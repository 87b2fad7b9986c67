//! What operators and tooling rely on: probes, Prometheus metrics, the OpenAPI document, and
//! the same probes on the worker and the scheduler.
//!
//! Every `TestApp` in this binary shares one process-wide metrics recorder, so metrics are
//! checked by name and label, never by count.

mod support;

use std::{net::SocketAddr, time::Duration};

use conveyor_shared::{config::DatabaseConfig, probe};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use support::{TestApp, eventually, noop};
use tokio_util::sync::CancellationToken;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// GETs `url` and returns its status, content type and body text.
async fn get(app: &TestApp, url: &str) -> (StatusCode, String, String) {
    let r = app.client.get(url).send().await.unwrap();
    let status = r.status();
    let content_type = r
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, r.text().await.unwrap())
}

/// The sample lines (not `# HELP` / `# TYPE`) of metric `name`.
fn samples<'a>(metrics: &'a str, name: &str) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .collect()
}

/// Asserts `body` is Prometheus text exposition: every line a comment or `name{labels} value`.
fn assert_prometheus_text(content_type: &str, body: &str) {
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
        assert!(
            line.starts_with("conveyor_"),
            "metric outside the conveyor_ namespace: {line}"
        );
    }
}

/// A server that answers every connection with 503, as a process that is up but not ready.
async fn unready_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    addr
}

#[tokio::test]
async fn the_api_is_live_and_ready() {
    let app = TestApp::without_worker().await;
    let (status, _, body) = get(&app, &app.url("/healthz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, content_type, body) = get(&app, &app.url("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let readiness: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness, json!({"postgres": true, "rabbitmq": true}));

    // Probes need no token (orchestrators call them), the job routes do.
    let r = app.client.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn metrics_cover_enqueue_relay_and_worker() {
    let app = TestApp::spawn().await;
    let worker = app.worker_addr.unwrap();
    // Nothing has asked for /metrics yet: what follows must be counted all the same.
    let id = app.enqueue(noop(json!({}))).await;
    app.wait_for_state(&id, "succeeded", Duration::from_secs(10))
        .await;

    let (status, content_type, metrics) = get(&app, &app.url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_prometheus_text(&content_type, &metrics);
    let enqueued = samples(&metrics, "conveyor_jobs_enqueued_total");
    assert!(
        enqueued
            .iter()
            .any(|l| l.contains(r#"kind="noop""#) && l.contains(r#"queue="default""#)),
        "{metrics}"
    );
    assert!(
        !samples(&metrics, "conveyor_relay_published_total").is_empty(),
        "{metrics}"
    );
    let http = samples(&metrics, "conveyor_http_requests_total");
    assert!(
        http.iter().any(|l| l.contains(r#"method="POST""#)
            && l.contains(r#"route="/v1/jobs""#)
            && l.contains(r#"status="201""#)),
        "{metrics}"
    );
    // Requests are labelled by route template, never by the raw path with its id.
    assert!(
        http.iter().any(|l| l.contains(r#"route="/v1/jobs/{id}""#)),
        "{metrics}"
    );
    assert!(!metrics.contains(&id), "a job id leaked into metric labels");
    assert!(
        !samples(&metrics, "conveyor_http_request_duration_seconds_count").is_empty(),
        "{metrics}"
    );

    let (status, content_type, metrics) = get(&app, &format!("http://{worker}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_prometheus_text(&content_type, &metrics);
    let finished = samples(&metrics, "conveyor_jobs_finished_total");
    assert!(
        finished
            .iter()
            .any(|l| l.contains(r#"kind="noop""#) && l.contains(r#"outcome="succeeded""#)),
        "{metrics}"
    );
    assert!(
        !samples(&metrics, "conveyor_job_duration_seconds_count").is_empty(),
        "{metrics}"
    );

    let (status, _, body) = get(&app, &format!("http://{worker}/healthz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get(&app, &format!("http://{worker}/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"postgres": true, "rabbitmq": true})
    );
    assert!(probe::healthcheck(worker).await);
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_job_routes() {
    let app = TestApp::without_worker().await;
    let (status, content_type, body) = get(&app, &app.url("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let spec: Value = serde_json::from_str(&body).expect("openapi.json is JSON");
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        spec["openapi"]
    );
    assert!(spec["info"]["title"].is_string());

    let paths = &spec["paths"];
    for (path, method) in [
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/batch", "post"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/jobs/{id}/cancel", "post"),
        ("/v1/jobs/{id}/retry", "post"),
    ] {
        let operation = &paths[path][method];
        assert!(
            operation.is_object(),
            "{method} {path} missing from {paths:#}"
        );
        assert!(
            operation["security"].to_string().contains("bearer"),
            "{method} {path} has no bearer security"
        );
    }
    let create = &paths["/v1/jobs"]["post"];
    for status in ["200", "201", "409", "422"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /v1/jobs lacks {status}"
        );
    }
    assert!(create["parameters"].to_string().contains("Idempotency-Key"));

    let components = &spec["components"];
    let bearer = &components["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer:#}");
    assert_eq!(
        bearer["scheme"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer"),
        "{bearer:#}"
    );
    for schema in [
        "Job",
        "Problem",
        "EnqueueRequest",
        "BatchRequest",
        "JobList",
        "FieldError",
    ] {
        assert!(
            components["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    let problem = components["schemas"]["Problem"]["properties"]
        .as_object()
        .unwrap();
    for field in ["type", "title", "status", "detail", "code", "errors"] {
        assert!(problem.contains_key(field), "Problem lacks {field}");
    }
    let job = components["schemas"]["Job"]["properties"]
        .as_object()
        .unwrap();
    for field in [
        "id",
        "kind",
        "queue",
        "state",
        "payload",
        "attempts",
        "max_attempts",
        "run_at",
    ] {
        assert!(job.contains_key(field), "Job lacks {field}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_scheduler_serves_probes_and_stops_on_cancel() {
    let app = TestApp::without_worker().await;
    let addr = free_addr();
    let config = conveyor_scheduler::Config {
        addr,
        ..conveyor_scheduler::Config::defaults(
            DatabaseConfig::with_url(format!(
                "postgres://postgres@127.0.0.1:5432/{}",
                app.db_name
            )),
            app.broker.clone(),
        )
    };
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(conveyor_scheduler::run(config, shutdown.clone()));

    let base = format!("http://{addr}");
    let ready = eventually(Duration::from_secs(20), || async {
        let r = app.client.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await
    .expect("the scheduler never became ready");
    assert_eq!(ready, json!({"postgres": true, "rabbitmq": true}));
    let (status, _, body) = get(&app, &format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, content_type, metrics) = get(&app, &format!("{base}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_prometheus_text(&content_type, &metrics);
    assert!(metrics.contains("conveyor_broker_connected"), "{metrics}");

    assert!(
        probe::healthcheck(addr).await,
        "healthcheck against a ready scheduler"
    );
    let wildcard = SocketAddr::from(([0, 0, 0, 0], addr.port()));
    assert!(
        probe::healthcheck(wildcard).await,
        "a wildcard bind address is asked on loopback"
    );
    assert!(
        !probe::healthcheck(free_addr()).await,
        "healthcheck against a closed port"
    );
    assert!(
        !probe::healthcheck(unready_server().await).await,
        "a 503 is not healthy"
    );

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(15), scheduler)
        .await
        .expect("the scheduler did not stop within 15s after cancel");
    stopped.unwrap().expect("the scheduler failed");
    assert!(
        !probe::healthcheck(addr).await,
        "the probe server is gone after shutdown"
    );
    app.stop().await;
}
