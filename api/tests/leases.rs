//! A worker that dies mid-job stops renewing its lease; a reaper takes the job back, records the
//! attempt as `lost`, and the job runs again elsewhere. The dead worker's late answer is ignored.

mod support;

use std::time::Duration;

use conveyor_shared::{
    JobId, JobState,
    job::lifecycle::{self, Completion, Outcome},
};
use serde_json::json;
use support::TestApp;

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
