//! Single-job enqueues that coincide share one INSERT and one commit (`conveyor_api::group_commit`),
//! and a group that fails still gives each request its own outcome.
//!
//! Rows written by one transaction share its `xmin`, which is how the tests see the groups.

mod support;

use std::collections::HashSet;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TestApp, noop};

const REQUESTS: usize = 200;

/// An api alone: no worker runs the jobs, so their rows keep the `xmin` of the transaction
/// that wrote them.
async fn spawn() -> TestApp {
    TestApp::without_worker().await
}

async fn burst(app: &TestApp, payloads: Vec<Value>) -> Vec<(StatusCode, Value)> {
    join_all(payloads.into_iter().map(|payload| async move {
        let r = app.post_job(noop(payload)).await;
        let status = r.status();
        (status, r.json::<Value>().await.unwrap())
    }))
    .await
}

async fn transactions_of(app: &TestApp, ids: &[String]) -> usize {
    let xmins: Vec<String> =
        sqlx::query_scalar("SELECT xmin::text FROM jobs WHERE id::text = ANY($1)")
            .bind(ids)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(xmins.len(), ids.len(), "every created job is stored");
    xmins.into_iter().collect::<HashSet<_>>().len()
}

#[tokio::test]
async fn coinciding_single_enqueues_share_a_commit() {
    let app = spawn().await;
    let answers = burst(
        &app,
        (0..REQUESTS).map(|i| json!({ "sleep_ms": i })).collect(),
    )
    .await;
    let mut ids = Vec::new();
    for (i, (status, job)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::CREATED, "{job:#}");
        // Each request gets its own job back, not a neighbour's.
        assert_eq!(job["payload"]["sleep_ms"], i, "{job:#}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let transactions = transactions_of(&app, &ids).await;
    eprintln!("{REQUESTS} concurrent requests were written in {transactions} transactions");
    assert!(
        transactions < REQUESTS,
        "{REQUESTS} concurrent requests took {transactions} transactions: none were grouped"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_group_gives_each_request_its_own_outcome() {
    let app = spawn().await;
    // One poisoned job (sleep_ms 4242) fails its INSERT, and with it any group it is in.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.payload->>'sleep_ms' = '4242' THEN RAISE EXCEPTION 'poisoned job'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON jobs
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let poisoned = REQUESTS / 2;
    let payloads = (0..REQUESTS)
        .map(|i| json!({ "sleep_ms": if i == poisoned { 4242 } else { i } }))
        .collect();
    let answers = burst(&app, payloads).await;
    let mut ids = Vec::new();
    for (i, (status, job)) in answers.iter().enumerate() {
        if i == poisoned {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR, "{job:#}");
        } else {
            assert_eq!(*status, StatusCode::CREATED, "request {i}: {job:#}");
            ids.push(job["id"].as_str().unwrap().to_owned());
        }
    }
    transactions_of(&app, &ids).await;
    assert_eq!(app.count_jobs().await, (REQUESTS - 1) as i64);
    app.stop().await;
}
