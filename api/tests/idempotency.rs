//! `Idempotency-Key`: the same key with the same body replays the original answer, with a
//! different body it is a conflict; keys belong to a tenant and to an endpoint.

mod support;

use conveyor_shared::keys::Scope;
use futures_util::future::join_all;
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use support::{TestApp, noop};

async fn spawn() -> TestApp {
    TestApp::without_worker().await
}

/// POSTs `body` (as raw JSON text, so key order is exactly as written) with an Idempotency-Key.
async fn post_keyed(app: &TestApp, token: &str, path: &str, key: &str, body: &str) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Asserts the status and returns the JSON body.
async fn expect(r: Response, status: StatusCode) -> Value {
    let actual = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(actual, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Asserts `r` is the 409 problem document for a reused key.
async fn conflict(r: Response) -> Value {
    let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
    let body = expect(r, StatusCode::CONFLICT).await;
    assert_eq!(content_type.unwrap(), "application/problem+json");
    assert_eq!(
        body["type"], "https://conveyor.dev/problems/idempotency-conflict",
        "{body:#}"
    );
    assert_eq!(body["title"], "Idempotency key reused", "{body:#}");
    assert_eq!(body["status"], 409, "{body:#}");
    assert_eq!(body["code"], "idempotency_conflict", "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("different request body"),
        "{body:#}"
    );
    body
}

fn ids(batch: &Value) -> Vec<String> {
    batch["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_same_key_and_body_replays_the_original_job() {
    let app = spawn().await;
    let body = r#"{"kind": "noop", "payload": {"sleep_ms": 5}, "priority": 3}"#;
    let r = post_keyed(&app, &app.token, "/v1/jobs", "order-1", body).await;
    assert!(r.headers().contains_key(header::LOCATION));
    let first = expect(r, StatusCode::CREATED).await;

    let r = post_keyed(&app, &app.token, "/v1/jobs", "order-1", body).await;
    let replay = expect(r, StatusCode::OK).await;
    assert_eq!(replay["id"], first["id"]);
    assert_eq!(replay["payload"], json!({"sleep_ms": 5}));
    assert_eq!(replay["priority"], 3);

    // Key order and whitespace are not part of the request's identity.
    let reordered = r#"{ "priority":3,"payload":{"sleep_ms":5},   "kind":"noop" }"#;
    let r = post_keyed(&app, &app.token, "/v1/jobs", "order-1", reordered).await;
    assert_eq!(expect(r, StatusCode::OK).await["id"], first["id"]);
    assert_eq!(app.count_jobs().await, 1);

    // A different key is a different request.
    let r = post_keyed(&app, &app.token, "/v1/jobs", "order-2", body).await;
    assert_ne!(expect(r, StatusCode::CREATED).await["id"], first["id"]);
    assert_eq!(app.count_jobs().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_a_conflict() {
    let app = spawn().await;
    let r = post_keyed(
        &app,
        &app.token,
        "/v1/jobs",
        "k-1",
        r#"{"kind": "noop", "payload": {"sleep_ms": 5}}"#,
    )
    .await;
    let first = expect(r, StatusCode::CREATED).await;

    for different in [
        r#"{"kind": "noop", "payload": {"sleep_ms": 6}}"#,
        r#"{"kind": "noop", "payload": {"sleep_ms": 5}, "priority": 1}"#,
        r#"{"kind": "noop", "payload": {"sleep_ms": 5}, "queue": "transactions"}"#,
    ] {
        conflict(post_keyed(&app, &app.token, "/v1/jobs", "k-1", different).await).await;
    }
    assert_eq!(app.count_jobs().await, 1);

    // The conflicts did not disturb the original: it still replays.
    let r = post_keyed(
        &app,
        &app.token,
        "/v1/jobs",
        "k-1",
        r#"{"kind": "noop", "payload": {"sleep_ms": 5}}"#,
    )
    .await;
    assert_eq!(expect(r, StatusCode::OK).await["id"], first["id"]);
    app.stop().await;
}

#[tokio::test]
async fn keys_belong_to_their_tenant() {
    let app = spawn().await;
    let other = app.key("other", &[Scope::JobsWrite, Scope::JobsRead]).await;
    let body = r#"{"kind": "noop"}"#;
    let mine = expect(
        post_keyed(&app, &app.token, "/v1/jobs", "shared-key", body).await,
        StatusCode::CREATED,
    )
    .await;
    let theirs = expect(
        post_keyed(&app, &other, "/v1/jobs", "shared-key", body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(mine["id"], theirs["id"]);
    assert_eq!(app.count_jobs().await, 2);

    // Each tenant replays its own job, and sees only its own.
    let replay = expect(
        post_keyed(&app, &other, "/v1/jobs", "shared-key", body).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(replay["id"], theirs["id"]);
    let r = app
        .get_as(
            &other,
            &format!("/v1/jobs/{}", mine["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A different body under the other tenant's key is a conflict there, not here.
    conflict(
        post_keyed(
            &app,
            &other,
            "/v1/jobs",
            "shared-key",
            r#"{"kind": "noop", "priority": 9}"#,
        )
        .await,
    )
    .await;
    let replay = expect(
        post_keyed(&app, &app.token, "/v1/jobs", "shared-key", body).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(replay["id"], mine["id"]);
    assert_eq!(app.count_jobs().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_replays_the_same_ids_in_the_same_order() {
    let app = spawn().await;
    let jobs: Vec<Value> = (0..5).map(|i| noop(json!({"sleep_ms": i}))).collect();
    let body = json!({"jobs": jobs}).to_string();
    let first = expect(
        post_keyed(&app, &app.token, "/v1/jobs/batch", "batch-1", &body).await,
        StatusCode::CREATED,
    )
    .await;
    let replay = expect(
        post_keyed(&app, &app.token, "/v1/jobs/batch", "batch-1", &body).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&first).len(), 5);
    assert_eq!(ids(&replay), ids(&first));
    for (i, job) in replay["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(job["payload"]["sleep_ms"], i);
    }
    assert_eq!(app.count_jobs().await, 5);

    // Reordering the jobs is a different request.
    let mut reversed: Vec<Value> = (0..5).map(|i| noop(json!({"sleep_ms": i}))).collect();
    reversed.reverse();
    let r = post_keyed(
        &app,
        &app.token,
        "/v1/jobs/batch",
        "batch-1",
        &json!({"jobs": reversed}).to_string(),
    )
    .await;
    conflict(r).await;
    assert_eq!(app.count_jobs().await, 5);
    app.stop().await;
}

#[tokio::test]
async fn one_key_on_both_endpoints_never_replays_the_other() {
    let app = spawn().await;
    let single = r#"{"kind": "noop"}"#;
    let batch = r#"{"jobs": [{"kind": "noop"}]}"#;

    // Used first for one job, the key then refuses a batch (keys are per tenant, not per
    // endpoint; the endpoint is part of the request digest).
    expect(
        post_keyed(&app, &app.token, "/v1/jobs", "both", single).await,
        StatusCode::CREATED,
    )
    .await;
    conflict(post_keyed(&app, &app.token, "/v1/jobs/batch", "both", batch).await).await;
    assert_eq!(app.count_jobs().await, 1);

    // And the other way round.
    expect(
        post_keyed(&app, &app.token, "/v1/jobs/batch", "both-2", batch).await,
        StatusCode::CREATED,
    )
    .await;
    conflict(post_keyed(&app, &app.token, "/v1/jobs", "both-2", single).await).await;
    assert_eq!(app.count_jobs().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_rejected_request_does_not_use_up_its_key() {
    let app = spawn().await;
    let bad = r#"{"kind": "noop", "payload": {"sleep_ms": "soon"}}"#;
    let r = post_keyed(&app, &app.token, "/v1/jobs", "retry-me", bad).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let good = r#"{"kind": "noop", "payload": {"sleep_ms": 1}}"#;
    expect(
        post_keyed(&app, &app.token, "/v1/jobs", "retry-me", good).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_job() {
    let app = spawn().await;
    let body = r#"{"kind": "noop", "payload": {"sleep_ms": 7}}"#;
    let answers = join_all((0..10).map(|_| async {
        let r = post_keyed(&app, &app.token, "/v1/jobs", "race", body).await;
        let status = r.status();
        let job: Value = r.json().await.unwrap();
        (
            status,
            job["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{job:#}"))
                .to_owned(),
        )
    }))
    .await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let replayed = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!((created, replayed), (1, 9), "{answers:?}");
    assert!(
        answers.iter().all(|(_, id)| *id == answers[0].1),
        "{answers:?}"
    );
    assert_eq!(app.count_jobs().await, 1);

    // The same for batches.
    let batch = r#"{"jobs": [{"kind": "noop"}, {"kind": "noop", "priority": 1}]}"#;
    let answers = join_all((0..10).map(|_| async {
        let r = post_keyed(&app, &app.token, "/v1/jobs/batch", "race-batch", batch).await;
        let status = r.status();
        (status, ids(&r.json().await.unwrap()))
    }))
    .await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(answers.iter().all(|(s, i)| (*s == StatusCode::CREATED || *s == StatusCode::OK) && *i == answers[0].1));
    assert_eq!(app.count_jobs().await, 3);
    app.stop().await;
}
