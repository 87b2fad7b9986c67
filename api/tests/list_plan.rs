//! Listing jobs by state against a large backlog. A running job is stored `queued` with a lease
//! (`job_leases`), so "the running jobs" must be read from the leases: read from the stored
//! state, a page of running jobs would walk the whole backlog of `queued` ones.

mod support;

use conveyor_shared::job::LIST_SQL;
use serde_json::Value;
use support::{Options, TestApp, rows_scanned};

#[tokio::test]
async fn a_page_of_running_or_dead_jobs_reads_about_a_page_however_long_the_backlog() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        run_relay: false,
        ..Default::default()
    })
    .await;
    // 50,000 queued jobs, 300 of them running, 50,000 succeeded and 20 dead.
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, finished_at)
         SELECT gen_random_uuid(), 'default', 'noop', 'default',
                CASE WHEN i <= 50000 THEN 'queued'
                     WHEN i <= 100000 THEN 'succeeded' ELSE 'dead' END::job_state,
                '{}', 25, 60, now(), CASE WHEN i > 50000 THEN now() END
         FROM generate_series(1, 100020) AS i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
         SELECT id, 1, 'w-1', now(), now() + interval '1 hour'
         FROM jobs WHERE state = 'queued' ORDER BY random() LIMIT 300",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs, job_leases")
        .execute(&app.pool)
        .await
        .unwrap();

    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("PREPARE list AS {LIST_SQL}")))
        .execute(&mut *conn)
        .await
        .unwrap();
    for (state, expected) in [("running", 50), ("dead", 20), ("queued", 50)] {
        // Plans are cached per statement; run each a few times so a generic plan, if Postgres
        // switches to one, is the one checked.
        for _ in 0..6 {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXECUTE list('default', NULL, '{state}', NULL, NULL, NULL, 50)"
            )))
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON)
             EXECUTE list('default', NULL, '{state}', NULL, NULL, NULL, 50)"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let root = &plan[0]["Plan"];
        assert_eq!(root["Actual Rows"], expected, "{state}: {plan:#}");
        let scanned = rows_scanned(root);
        assert!(
            scanned <= 1_000.0,
            "a page of {state} jobs read {scanned} rows: {plan:#}"
        );
    }
    drop(conn);
    app.stop().await;
}
