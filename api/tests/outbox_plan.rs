//! The relay's batch query against a large backlog: it must read the first rows of an index in
//! dispatch order, not read and sort every waiting job. It once sorted (134 ms per batch with
//! 80,000 jobs waiting), so a backlog drained slower the larger it was.

mod support;

use conveyor_shared::outbox::LOCK_DUE_SQL;
use serde_json::Value;
use support::TestApp;

#[tokio::test]
async fn the_relays_batch_is_an_ordered_index_scan_however_long_the_backlog() {
    let app = TestApp::without_worker_or_relay().await;
    // 50,000 jobs waiting to be published over three priorities, plus finished history and
    // scheduled jobs.
    sqlx::query(
        "WITH waiting AS (
             INSERT INTO jobs (id, tenant, kind, queue, state, payload, priority, max_attempts,
                               timeout_secs, run_at)
             SELECT gen_random_uuid(), 'default', 'noop', 'default', 'queued', '{}', i % 3 - 1,
                    25, 60, now() - i * interval '1 ms'
             FROM generate_series(1, 50000) AS i
             RETURNING id, queue, kind, priority, run_at
         )
         INSERT INTO outbox (job_id, queue, kind, priority, run_at)
         SELECT id, queue, kind, priority, run_at FROM waiting",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, finished_at)
         SELECT gen_random_uuid(), 'default', 'noop', 'default',
                CASE WHEN i % 10 = 0 THEN 'scheduled' ELSE 'succeeded' END::job_state, '{}',
                25, 60, now() + (i % 10 - 5) * interval '1 hour', now()
         FROM generate_series(1, 50000) AS i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs, outbox")
        .execute(&app.pool)
        .await
        .unwrap();

    let mut tx = app.pool.begin().await.unwrap();
    let explain = format!(
        "EXPLAIN (FORMAT JSON) {}",
        LOCK_DUE_SQL.replace("$1", "500")
    );
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let text = plan.to_string();
    assert!(
        !text.contains("\"Sort\""),
        "the batch query sorts the backlog: {plan:#}"
    );
    assert!(
        text.contains("\"Index Name\":\"outbox_order\""),
        "the batch query does not read outbox_order: {plan:#}"
    );
    app.stop().await;
}
