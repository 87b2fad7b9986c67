//! A worker that dies mid-job stops renewing its lease; a reaper takes the job back, records the
//! attempt as `lost`, and the job runs again elsewhere. The dead worker's late answer is ignored.
//!
//! A running attempt is a `job_leases` row laid over a job row stored `queued`: readers (get,
//! list, queue figures, cancel) must all see it as `running`.

mod support;

use std::time::Duration;

use conveyor_shared::{
    JobId, JobState,
    job::lifecycle::{self, Completion, Outcome},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TestApp, problem};

/// Enqueues a job and claims it as `ghost`, a worker that will never renew or finish it.
async fn claimed_by_ghost(app: &TestApp, body: serde_json::Value) -> JobId {
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut body = body;
    body["run_at"] = json!(future);
    let id: JobId = app.enqueue(body).await.parse().unwrap();
    // Make it claimable without publishing it (a `queued` job out of the outbox, as if its
    // message were on its way), then claim it with a half-second lease.
    sqlx::query("UPDATE jobs SET state = 'queued', run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let claimed = lifecycle::claim_batch(&app.pool, &[id], "ghost", 0.5)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    id
}

#[tokio::test]
async fn a_job_lost_with_its_worker_is_reaped_and_runs_again() {
    let app = TestApp::spawn().await;
    let id = claimed_by_ghost(&app, json!({"kind": "noop"})).await;

    let done = app
        .wait_for_state(&id.to_string(), "succeeded", Duration::from_secs(10))
        .await;
    let log = done["attempts_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{done:#}");
    assert_eq!(log[0]["worker"], "ghost");
    assert_eq!(log[0]["outcome"], "lost");
    assert!(log[0]["error"].as_str().unwrap().contains("lease expired"));
    assert_eq!(log[1]["outcome"], "succeeded");
    assert_ne!(log[1]["worker"], "ghost");

    // The ghost comes back and reports success for its attempt: ignored.
    let late = Completion {
        id,
        attempt: 1,
        next_state: JobState::Succeeded,
        outcome: Outcome::Succeeded,
        result: Some(json!({"from": "ghost"})),
        error: None,
        retry_at: None,
    };
    assert_eq!(
        lifecycle::complete_batch(&app.pool, "ghost", &[late])
            .await
            .unwrap(),
        0
    );
    let after = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(after["result"], done["result"]);
    assert_eq!(after["attempts"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_lost_job_out_of_attempts_is_dead() {
    let app = TestApp::spawn().await;
    let id = claimed_by_ghost(&app, json!({"kind": "noop", "max_attempts": 1})).await;
    let dead = app
        .wait_for_state(&id.to_string(), "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts"], 1);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("lease expired: worker ghost")
    );
    assert_eq!(dead["attempts_log"][0]["outcome"], "lost");
    app.stop().await;
}

#[tokio::test]
async fn a_live_worker_keeps_its_lease_past_the_lease_length() {
    // Leases are 2 s in tests; a 4 s job must not be reaped while its worker is alive.
    let app = TestApp::spawn().await;
    let id = app
        .enqueue(json!({"kind": "noop", "payload": {"sleep_ms": 4000}}))
        .await;
    let done = app
        .wait_for_state(&id, "succeeded", Duration::from_secs(15))
        .await;
    assert_eq!(
        done["attempts"], 1,
        "the job was reaped from a live worker: {done:#}"
    );
    app.stop().await;
}

/// The ids of `GET /v1/jobs?{query}`.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let page = app.get_json(&format!("/v1/jobs?{query}")).await;
    page["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {page:#}"))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Expects a cancel's 409 `job_not_cancellable` naming the job as running.
async fn refused_as_running(response: reqwest::Response) {
    let refused = problem(response, StatusCode::CONFLICT, "job_not_cancellable").await;
    assert!(
        refused["detail"].as_str().unwrap().contains("running"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn a_leased_job_reads_as_running_everywhere_until_its_attempt_ends() {
    let app = TestApp::without_worker().await;
    let running: JobId = app.enqueue(json!({"kind": "noop"})).await.parse().unwrap();
    let waiting = app.enqueue(json!({"kind": "noop"})).await;
    let claimed = lifecycle::claim_batch(&app.pool, &[running], "w-1", 60.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].state,
            claimed[0].attempts,
            claimed[0].worker.as_deref()
        ),
        (JobState::Running, 1, Some("w-1"))
    );
    // A second claim of a running job (a duplicate delivery) takes nothing.
    assert!(
        lifecycle::claim_batch(&app.pool, &[running], "w-2", 60.0)
            .await
            .unwrap()
            .is_empty()
    );

    let job = app.get_json(&format!("/v1/jobs/{running}")).await;
    assert_eq!(
        (&job["state"], &job["attempts"]),
        (&json!("running"), &json!(1)),
        "{job:#}"
    );
    assert!(job["started_at"].is_string(), "{job:#}");
    let log = job["attempts_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{job:#}");
    assert_eq!(
        (&log[0]["worker"], &log[0]["outcome"]),
        (&json!("w-1"), &Value::Null)
    );

    assert_eq!(listed(&app, "state=running").await, [running.to_string()]);
    assert_eq!(listed(&app, "state=queued").await, [waiting.as_str()]);
    assert_eq!(
        listed(&app, "").await,
        [waiting.clone(), running.to_string()]
    );
    let q = app.get_json("/v1/queues/default").await;
    assert_eq!(
        (&q["counts"]["running"], &q["counts"]["queued"]),
        (&json!(1), &json!(1)),
        "{q:#}"
    );
    assert_eq!(q["backlog"], 1, "the running job is not waiting: {q:#}");

    refused_as_running(
        app.post_empty_as(&app.token, &format!("/v1/jobs/{running}/cancel"))
            .await,
    )
    .await;

    let done = Completion {
        id: running,
        attempt: 1,
        next_state: JobState::Succeeded,
        outcome: Outcome::Succeeded,
        result: Some(json!({"ok": true})),
        error: None,
        retry_at: None,
    };
    // Only the worker holding the lease completes the attempt.
    assert_eq!(
        lifecycle::complete_batch(&app.pool, "w-2", std::slice::from_ref(&done))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        lifecycle::complete_batch(&app.pool, "w-1", &[done])
            .await
            .unwrap(),
        1
    );
    let job = app.get_json(&format!("/v1/jobs/{running}")).await;
    assert_eq!(
        (&job["state"], &job["attempts"]),
        (&json!("succeeded"), &json!(1)),
        "{job:#}"
    );
    assert_eq!(job["started_at"], log[0]["started_at"], "{job:#}");
    let log = job["attempts_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{job:#}");
    assert_eq!(
        (&log[0]["worker"], &log[0]["outcome"]),
        (&json!("w-1"), &json!("succeeded"))
    );
    assert!(listed(&app, "state=running").await.is_empty());
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM job_leases")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(leases, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_waits_for_a_claim_in_flight_and_then_refuses() {
    let app = TestApp::without_worker().await;
    let id: JobId = app.enqueue(json!({"kind": "noop"})).await.parse().unwrap();
    // A claim that has written its lease but not committed yet.
    let mut claim = app.pool.begin().await.unwrap();
    let claimed = lifecycle::claim_batch(&mut *claim, &[id], "w-1", 60.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let cancel = tokio::spawn({
        let client = app.client.clone();
        let url = format!("http://{}/v1/jobs/{id}/cancel", app.addr);
        let token = app.token.clone();
        async move { client.post(url).bearer_auth(token).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !cancel.is_finished(),
        "the cancel did not wait for the claim"
    );
    claim.commit().await.unwrap();

    refused_as_running(cancel.await.unwrap()).await;
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "running", "{job:#}");
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_claim_does_not_deadlock_with_the_completion_of_its_job() {
    let app = TestApp::without_worker().await;
    let id: JobId = app.enqueue(json!({"kind": "noop"})).await.parse().unwrap();
    let claimed = lifecycle::claim_batch(&app.pool, &[id], "w-1", 60.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    // The completion's statement, halfway: the lease deleted, the job row not yet written.
    let mut completion = app.pool.begin().await.unwrap();
    sqlx::query("DELETE FROM job_leases WHERE job_id = $1")
        .bind(id)
        .execute(&mut *completion)
        .await
        .unwrap();
    // Meanwhile RabbitMQ redelivers the job's message (a channel reset) and a worker claims it.
    let claim = tokio::spawn({
        let pool = app.pool.clone();
        async move { lifecycle::claim_batch(&pool, &[id], "w-2", 60.0).await }
    });
    // Let the claim get as far as it goes: done, or waiting on a lock the completion holds.
    let settled = support::eventually(Duration::from_secs(10), || async {
        (claim.is_finished() || app.count_sessions("wait_event_type = 'Lock'").await > 0)
            .then_some(())
    })
    .await;
    assert!(settled.is_some(), "the claim neither ended nor waited");

    // The completion's second half writes the outcome to the job row. Had the claim locked
    // that row and then waited for the lease, Postgres would abort one of the two.
    let written =
        sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *completion)
            .await;
    assert!(written.is_ok(), "the completion failed: {written:?}");
    completion.commit().await.unwrap();
    let reclaimed = claim.await.unwrap().expect("the claim failed");
    assert!(reclaimed.is_empty(), "a finishing job was claimed again");
    let job = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    app.stop().await;
}
