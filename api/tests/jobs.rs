//! The main path: enqueue over HTTP → outbox → RabbitMQ → worker → recorded outcome.

mod support;

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Options, TestApp, noop};

#[tokio::test]
async fn a_noop_job_succeeds_with_its_attempts_log() {
    let app = TestApp::spawn().await;
    let r = app.post_job(noop(json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["kind"], "noop");
    assert_eq!(job["queue"], "default");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["attempts"], 0);
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );

    let id = job["id"].as_str().unwrap();
    let done = app
        .wait_for_state(id, "succeeded", Duration::from_secs(5))
        .await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["ok"], true);
    assert!(done["finished_at"].is_string());
    let log = done["attempts_log"].as_array().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["attempt"], 1);
    assert_eq!(log[0]["outcome"], "succeeded");
    assert!(
        log[0]["worker"]
            .as_str()
            .unwrap()
            .starts_with("test-worker-")
    );
    assert!(log[0]["finished_at"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn failed_attempts_retry_then_succeed() {
    let app = TestApp::spawn().await;
    let id = app.enqueue(noop(json!({"fail_times": 2}))).await;
    let done = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["attempts"], 3);
    let outcomes: Vec<&str> = done["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "succeeded"]);
    assert!(
        done["attempts_log"][0]["error"]
            .as_str()
            .unwrap()
            .contains("failing as asked")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_and_the_job_dies_after_max_attempts() {
    let app = TestApp::spawn().await;
    let id = app
        .enqueue(json!({"kind": "noop", "payload": {"panic": true}, "max_attempts": 2}))
        .await;
    let dead = app
        .wait_for_state(&id, "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["last_error"].as_str().unwrap().contains("panicked"),
        "{dead:#}"
    );
    // The worker survived the panics: a new job still runs.
    let next = app.enqueue(noop(json!({}))).await;
    app.wait_for_state(&next, "succeeded", Duration::from_secs(5))
        .await;
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_timed_out() {
    let app = TestApp::spawn().await;
    let id = app
        .enqueue(json!({"kind": "noop", "payload": {"sleep_ms": 5000}, "timeout_secs": 1, "max_attempts": 1}))
        .await;
    let dead = app
        .wait_for_state(&id, "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts_log"][0]["outcome"], "timed_out");
    app.stop().await;
}

#[tokio::test]
async fn a_job_with_a_future_run_at_waits_until_then() {
    let app = TestApp::spawn().await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let r = app
        .post_job(json!({"kind": "noop", "run_at": run_at.to_rfc3339()}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "scheduled");
    let id = job["id"].as_str().unwrap();
    let done = app
        .wait_for_state(id, "succeeded", Duration::from_secs(10))
        .await;
    let started: chrono::DateTime<chrono::Utc> =
        done["started_at"].as_str().unwrap().parse().unwrap();
    assert!(
        started >= run_at,
        "started {started} before run_at {run_at}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_stored_in_request_order_and_runs() {
    let app = TestApp::spawn().await;
    let jobs: Vec<Value> = (0..25).map(|i| noop(json!({"sleep_ms": i}))).collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": jobs}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let created = body["jobs"].as_array().unwrap();
    assert_eq!(created.len(), 25);
    for (i, job) in created.iter().enumerate() {
        assert_eq!(
            job["payload"]["sleep_ms"], i,
            "batch answer out of request order"
        );
    }
    for job in created {
        app.wait_for_state(
            job["id"].as_str().unwrap(),
            "succeeded",
            Duration::from_secs(10),
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_of_1000_is_accepted_and_1001_is_refused() {
    let app = TestApp::spawn_with(support::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let jobs: Vec<Value> = (0..1000).map(|_| noop(json!({}))).collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": jobs}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let jobs: Vec<Value> = (0..1001).map(|_| noop(json!({}))).collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": jobs}))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "jobs");
    assert_eq!(app.count_jobs().await, 1000);
    app.stop().await;
}

#[tokio::test]
async fn listing_paginates_by_cursor_and_filters() {
    let app = TestApp::spawn_with(support::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.enqueue(json!({"kind": "noop", "queue": if i % 2 == 0 { "default" } else { "transactions" }})).await);
    }
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = app.enqueue(json!({"kind": "noop", "run_at": future})).await;
    ids.push(scheduled.clone());
    ids.reverse(); // newest first

    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=2".to_owned();
    loop {
        let page = app.get_json(&path).await;
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/jobs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages must cover every job once, newest first");

    let by_queue = app.get_json("/v1/jobs?queue=transactions").await;
    assert_eq!(by_queue["jobs"].as_array().unwrap().len(), 2);
    let by_state = app.get_json("/v1/jobs?state=scheduled").await;
    let states: Vec<&str> = by_state["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(states, [scheduled.as_str()]);
    let by_kind = app.get_json("/v1/jobs?kind=noop&limit=500").await;
    assert_eq!(by_kind["jobs"].as_array().unwrap().len(), 6);
    assert!(by_kind["next_cursor"].is_null());

    for bad in [
        "state=bogus",
        "limit=0",
        "limit=501",
        "cursor=nope",
        "schedule_id=x",
    ] {
        let r = app.get_as(&app.token, &format!("/v1/jobs?{bad}")).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let problem: Value = r.json().await.unwrap();
        let field = bad.split('=').next().unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{bad}: {problem:#}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_is_dead_after_one_attempt() {
    let app = TestApp::spawn().await;
    let id = app.enqueue(noop(json!({"fail_permanently": true}))).await;
    let dead = app
        .wait_for_state(&id, "dead", Duration::from_secs(5))
        .await;
    assert_eq!(dead["attempts"], 1, "a permanent error must not be retried");
    assert_eq!(dead["last_error"], "noop failing permanently as asked");
    assert_eq!(dead["attempts_log"][0]["outcome"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn a_handlers_requested_retry_delay_is_honoured() {
    // Test backoff is at most 20 ms for a first retry; the handler asks for 150 ms.
    let app = TestApp::spawn().await;
    let id = app
        .enqueue(noop(json!({"fail_times": 1, "retry_after_ms": 150})))
        .await;
    let done = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(5))
        .await;
    let log = done["attempts_log"].as_array().unwrap();
    let at = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    // Measured from the first attempt's start: the handler fails at once, and the retry time
    // is set from that moment, so an honoured delay puts the second start at least 150 ms
    // later. (`finished_at` is when the outcome was *written*, which under load can lag the
    // handler by tens of milliseconds, so it is not the point to measure from.)
    let gap = at(&log[1]["started_at"]) - at(&log[0]["started_at"]);
    assert!(
        gap >= chrono::Duration::milliseconds(150),
        "second attempt came after only {gap}"
    );
    app.stop().await;
}

/// Outcomes that arrive while the completer waits (`completion_coalesce`) are written in one
/// statement. Rows written by one statement share `finished_at` (`now()` is the transaction's
/// time), so the distinct values count the statements.
async fn completion_statements(coalesce: Duration) -> i64 {
    let app = TestApp::spawn_with(Options {
        configure_worker: Some(Arc::new(move |c| c.completion_coalesce = coalesce)),
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.enqueue(noop(json!({}))).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for id in &ids {
        app.wait_for_state(id, "succeeded", Duration::from_secs(10))
            .await;
    }
    let statements: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT finished_at) FROM jobs WHERE state = 'succeeded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    app.stop().await;
    statements
}

#[tokio::test]
async fn outcomes_finishing_close_together_are_written_together() {
    // Ten jobs sent 5 ms apart: written one by one without waiting, in a few statements when
    // the completer waits 200 ms for company.
    let apart = completion_statements(Duration::ZERO).await;
    let together = completion_statements(Duration::from_millis(200)).await;
    assert!(
        apart >= 6,
        "without waiting, {apart} statements for 10 jobs"
    );
    assert!(
        together <= 3,
        "waiting 200 ms, {together} statements for 10 jobs"
    );
}
