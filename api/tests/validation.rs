//! Bad input to `POST /v1/jobs` and `POST /v1/jobs/batch`: every rejection is a problem+json
//! document naming the exact field, and a rejected request stores nothing.

mod support;

use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use support::{TestApp, noop, problem};

async fn spawn() -> TestApp {
    TestApp::without_worker().await
}

/// Asserts `r` is a 422 whose `errors` name exactly `fields`, in order; returns the document.
async fn invalid(r: Response, fields: &[&str]) -> Value {
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["title"], "Validation failed");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {body:#}"));
    let named: Vec<&str> = errors
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(named, fields, "{body:#}");
    for e in errors {
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body:#}"
        );
    }
    body
}

/// POSTs `body` as-is with `content_type`.
async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(&app.token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_400_on_both_endpoints() {
    let app = spawn().await;
    for path in ["/v1/jobs", "/v1/jobs/batch"] {
        for raw in [
            r#"{"kind": "noop","#,
            "not json",
            r#"{"kind": "noop"} trailing"#,
            "",
        ] {
            let r = post_raw(&app, path, "application/json", raw).await;
            let body = problem(r, StatusCode::BAD_REQUEST, "malformed_json").await;
            assert_eq!(body["title"], "Malformed JSON");
            assert!(body.get("errors").is_none(), "{body:#}");
        }
    }
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn kind_must_be_present_and_known() {
    let app = spawn().await;
    let body = invalid(
        app.post_job(json!({"kind": "nope", "payload": {}})).await,
        &["kind"],
    )
    .await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("nope") && message.contains("noop"),
        "{message}"
    );
    assert!(
        body["detail"].as_str().unwrap().starts_with("kind: "),
        "{body:#}"
    );

    invalid(app.post_job(json!({"payload": {}})).await, &["kind"]).await;
    invalid(app.post_job(json!({"kind": 7})).await, &["kind"]).await;
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_payload_must_fit_the_kinds_schema() {
    let app = spawn().await;
    invalid(
        app.post_job(noop(json!({"sleep_ms": "soon"}))).await,
        &["payload.sleep_ms"],
    )
    .await;
    invalid(
        app.post_job(noop(json!({"sleep_ms": -1}))).await,
        &["payload.sleep_ms"],
    )
    .await;
    invalid(
        app.post_job(noop(json!({"sleep_ms": 3_600_001}))).await,
        &["payload.sleep_ms"],
    )
    .await;
    invalid(
        app.post_job(noop(json!({"fail_times": true}))).await,
        &["payload.fail_times"],
    )
    .await;

    let body = invalid(app.post_job(noop(json!({"bogus": 1}))).await, &["payload"]).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bogus"),
        "{body:#}"
    );
    // An array would fill the payload's fields by position; a payload is an object.
    for not_an_object in [json!([1, 2]), json!(null), json!("x")] {
        invalid(app.post_job(noop(not_an_object)).await, &["payload"]).await;
    }
    assert_eq!(app.count_jobs().await, 0);

    // The limits themselves are accepted, so the rejections above are about the values.
    let r = app
        .post_job(noop(json!({"sleep_ms": 3_600_000, "fail_times": 0})))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn unknown_top_level_fields_are_refused() {
    let app = spawn().await;
    // The request's own unknown keys are named as sent (the payload's are named `payload`,
    // since a payload is free-form per kind).
    let r = app.post_job(json!({"kind": "noop", "colour": "red"})).await;
    let body = invalid(r, &["colour"]).await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("unknown field `colour`"), "{body:#}");

    let batch = json!({"jobs": [noop(json!({}))], "extra": 1});
    invalid(
        app.post_as(&app.token, "/v1/jobs/batch", batch).await,
        &["extra"],
    )
    .await;
    let batch = json!({"jobs": [noop(json!({})), {"kind": "noop", "colour": "red"}]});
    invalid(
        app.post_as(&app.token, "/v1/jobs/batch", batch).await,
        &["jobs[1].colour"],
    )
    .await;
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn run_at_must_be_rfc3339_and_within_366_days() {
    let app = spawn().await;
    let r = app
        .post_job(json!({"kind": "noop", "run_at": "tomorrow"}))
        .await;
    let body = invalid(r, &["run_at"]).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("RFC 3339"),
        "{body:#}"
    );

    let too_far = (chrono::Utc::now() + chrono::Duration::days(367)).to_rfc3339();
    let body = invalid(
        app.post_job(json!({"kind": "noop", "run_at": too_far}))
            .await,
        &["run_at"],
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("366"),
        "{body:#}"
    );
    assert_eq!(app.count_jobs().await, 0);

    // Just inside the horizon is fine, and the job waits.
    let near = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339();
    let r = app.post_job(json!({"kind": "noop", "run_at": near})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "scheduled");
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn queue_must_be_one_the_deployment_serves() {
    let app = spawn().await;
    let body = invalid(
        app.post_job(json!({"kind": "noop", "queue": "nope"})).await,
        &["queue"],
    )
    .await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("nope") && message.contains("default"),
        "{message}"
    );
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn numeric_fields_must_be_in_range() {
    let app = spawn().await;
    let cases = [
        ("priority", json!(101)),
        ("priority", json!(-101)),
        ("priority", json!(40_000)), // beyond i16: a type error, still named by field
        ("priority", json!("high")),
        ("max_attempts", json!(0)),
        ("max_attempts", json!(101)),
        ("timeout_secs", json!(0)),
        ("timeout_secs", json!(86_401)),
        ("timeout_secs", json!(1.5)),
    ];
    for (field, value) in cases {
        let mut body = json!({"kind": "noop"});
        body[field] = value.clone();
        let r = app.post_job(body).await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field} = {value}"
        );
        invalid(r, &[field]).await;
    }
    assert_eq!(app.count_jobs().await, 0);

    // The bounds are inclusive.
    let edge =
        json!({"kind": "noop", "priority": -100, "max_attempts": 100, "timeout_secs": 86_400});
    assert_eq!(app.post_job(edge).await.status(), StatusCode::CREATED);
    let edge = json!({"kind": "noop", "priority": 100, "max_attempts": 1, "timeout_secs": 1});
    assert_eq!(app.post_job(edge).await.status(), StatusCode::CREATED);
    assert_eq!(app.count_jobs().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn every_bad_field_is_reported_at_once() {
    let app = spawn().await;
    let r = app
        .post_job(json!({
            "kind": "noop",
            "payload": {"sleep_ms": "soon"},
            "queue": "nope",
            "priority": 500,
            "max_attempts": 0,
            "timeout_secs": 0,
            "run_at": "tomorrow",
        }))
        .await;
    let body = invalid(
        r,
        &[
            "payload.sleep_ms",
            "queue",
            "priority",
            "max_attempts",
            "timeout_secs",
            "run_at",
        ],
    )
    .await;
    assert_eq!(body["detail"], "6 fields are invalid");
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let app = spawn().await;
    let filler = "a".repeat(1024 * 1024 + 1);
    let raw = format!(r#"{{"kind": "noop", "payload": {{"note": "{filler}"}}}}"#);
    let r = post_raw(&app, "/v1/jobs", "application/json", raw).await;
    let body = problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(
        body["detail"].as_str().unwrap().contains("1048576"),
        "{body:#}"
    );
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn().await;
    for path in ["/v1/jobs", "/v1/jobs/batch"] {
        let r = post_raw(&app, path, "text/plain", r#"{"kind": "noop"}"#).await;
        let body = problem(
            r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{body:#}"
        );
        let r = post_raw(&app, path, "application/x-www-form-urlencoded", "kind=noop").await;
        problem(
            r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    assert_eq!(app.count_jobs().await, 0);

    // Parameters and `+json` types are still JSON.
    let r = post_raw(
        &app,
        "/v1/jobs",
        "application/json; charset=utf-8",
        r#"{"kind": "noop"}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_bad_job_stores_none_of_them() {
    let app = spawn().await;
    let jobs = json!({"jobs": [
        noop(json!({})),
        noop(json!({"sleep_ms": 1})),
        noop(json!({"sleep_ms": "soon"})),
        noop(json!({})),
    ]});
    let r = app.post_as(&app.token, "/v1/jobs/batch", jobs).await;
    invalid(r, &["jobs[2].payload.sleep_ms"]).await;
    assert_eq!(app.count_jobs().await, 0);

    // Errors from several jobs are all reported, each under its index.
    let jobs = json!({"jobs": [
        json!({"kind": "nope"}),
        noop(json!({})),
        json!({"kind": "noop", "queue": "nope", "priority": 101}),
    ]});
    let r = app.post_as(&app.token, "/v1/jobs/batch", jobs).await;
    invalid(r, &["jobs[0].kind", "jobs[2].queue", "jobs[2].priority"]).await;

    // A job that does not even deserialise is named by its index too.
    let jobs = json!({"jobs": [noop(json!({})), {"payload": {}}]});
    let r = app.post_as(&app.token, "/v1/jobs/batch", jobs).await;
    invalid(r, &["jobs[1].kind"]).await;
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_empty_or_missing_batch_is_refused() {
    let app = spawn().await;
    let body = invalid(
        app.post_as(&app.token, "/v1/jobs/batch", json!({"jobs": []}))
            .await,
        &["jobs"],
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at least one"),
        "{body:#}"
    );
    invalid(
        app.post_as(&app.token, "/v1/jobs/batch", json!({})).await,
        &["jobs"],
    )
    .await;
    invalid(
        app.post_as(&app.token, "/v1/jobs/batch", json!({"jobs": {}}))
            .await,
        &["jobs"],
    )
    .await;
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_bad_idempotency_key_header_is_400() {
    let app = spawn().await;
    let long = "k".repeat(300);
    for (path, body) in [
        ("/v1/jobs", noop(json!({}))),
        ("/v1/jobs/batch", json!({"jobs": [noop(json!({}))]})),
    ] {
        for key in [long.as_str(), "", "has space", "tab\there"] {
            let r = app
                .client
                .post(app.url(path))
                .bearer_auth(&app.token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let problem = problem(r, StatusCode::BAD_REQUEST, "invalid_header").await;
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("Idempotency-Key"),
                "{key:?}: {problem:#}"
            );
        }
    }
    assert_eq!(app.count_jobs().await, 0);

    // 255 characters is the longest accepted key.
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .bearer_auth(&app.token)
        .header("Idempotency-Key", "k".repeat(255))
        .json(&noop(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.count_jobs().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_json_array_is_not_a_request() {
    let app = spawn().await;
    // serde would fill the request's fields by position from an array: it must be refused.
    let r = app.post_job(json!(["noop", {}, "transactions", 5])).await;
    invalid(r, &["body"]).await;
    let r = app
        .post_as(
            &app.token,
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "noop"}, ["noop"]]}),
        )
        .await;
    invalid(r, &["jobs[1]"]).await;
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

/// The batch route has a larger body limit than the single route (`CONVEYOR_MAX_BATCH_BODY_BYTES`,
/// 16 MiB here, against 1 MiB): a batch of jobs that are each within the per-job payload limit
/// passes even when the whole body is over the single-job limit.
#[tokio::test]
async fn a_batch_body_may_exceed_the_single_job_limit() {
    let app = TestApp::without_worker().await;
    let note = "a".repeat(30 * 1024);
    let jobs: Vec<Value> = (0..40)
        .map(|i| {
            json!({"kind": "analytics.track",
                   "payload": {"event": format!("e{i}"), "properties": {"note": note}}})
        })
        .collect();
    let body = json!({ "jobs": jobs }).to_string();
    assert!(
        body.len() > 1024 * 1024,
        "the body must exceed the single limit"
    );
    let r = post_raw(&app, "/v1/jobs/batch", "application/json", body).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(app.count_jobs().await, 40);
    app.stop().await;
}
