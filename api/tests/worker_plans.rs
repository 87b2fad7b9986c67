//! The worker's statements against a large backlog, with the plans Postgres made for them while
//! the tables were empty. sqlx prepares every statement, and Postgres keeps a prepared
//! statement's generic plan until an ANALYZE or a vacuum tells it the table changed; a worker
//! that starts on a new deployment (or wherever autovacuum has not run yet, as on the CI
//! machine, where it is off) plans on empty tables. The claim planned so read every waiting job
//! of the backlog through an index and filtered its 32 ids out (40-100 ms per claim with
//! 100,000-200,000 waiting); the completion read all of `job_leases`, dead rows included, and
//! the reaper all of `jobs`.

mod support;

use conveyor_shared::job::{
    lease::REAP_SQL,
    lifecycle::{CLAIM_SQL, COMPLETE_SQL},
};
use serde_json::Value;
use support::{TestApp, rows_scanned};
use uuid::Uuid;

/// `ids` as a Postgres array literal.
fn array(items: impl IntoIterator<Item = String>) -> String {
    format!("'{{{}}}'", items.into_iter().collect::<Vec<_>>().join(","))
}

/// Rows written by the plan's `operation` (`Insert`, `Update`) nodes.
fn modified(node: &Value, operation: &str) -> f64 {
    let own = if node["Node Type"] == "ModifyTable" && node["Operation"] == operation {
        node["Actual Rows"].as_f64().unwrap_or(0.0)
    } else {
        0.0
    };
    own + node["Plans"]
        .as_array()
        .map(|plans| plans.iter().map(|p| modified(p, operation)).sum())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_workers_statements_find_their_rows_by_key_with_plans_made_on_empty_tables() {
    let app = TestApp::without_worker_or_relay().await;
    let mut conn = app.pool.acquire().await.unwrap();
    // The generic plan at once; Postgres would switch to it after five runs whose custom plans
    // cost no less.
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let statements = [
        ("claim", CLAIM_SQL, "'{}', 'w-1', 60"),
        (
            "complete",
            COMPLETE_SQL,
            "'{}', '{}', '{}', '{}', '{}', '{}', '{}', 'w-1'",
        ),
        ("reap", REAP_SQL, "100"),
    ];
    for (name, sql, empty_args) in statements {
        sqlx::query(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
            .execute(&mut *conn)
            .await
            .unwrap();
        // Planned now, on the empty tables: a statement is planned when first executed.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE {name}({empty_args})"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
    }

    // 100,000 waiting jobs; 50,000 of them lost by a worker long gone (expired leases), 32
    // running on w-1, and 32 not yet claimed among those the claim asks for.
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at)
         SELECT gen_random_uuid(), 'default', 'noop', 'default', 'queued', '{}', 25, 60, now()
         FROM generate_series(1, 100000)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
         SELECT id, 1, 'w-gone', now() - interval '1 hour', now() - interval '1 minute'
         FROM jobs LIMIT 50000",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let running: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
         SELECT id, 1, 'w-1', now(), now() + interval '1 hour'
         FROM jobs WHERE NOT EXISTS (SELECT 1 FROM job_leases WHERE job_id = jobs.id) LIMIT 32
         RETURNING job_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let unclaimed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE NOT EXISTS (SELECT 1 FROM job_leases WHERE job_id = jobs.id)
         LIMIT 32",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!((running.len(), unclaimed.len()), (32, 32));

    let ids = |ids: &[Uuid]| array(ids.iter().map(Uuid::to_string));
    let each = |value: &str| array(std::iter::repeat_n(value.to_owned(), 32));
    // Each statement with the rows it must write: leases inserted, job rows updated.
    let runs = [
        (
            "claim",
            format!("{}, 'w-1', 60", ids(&unclaimed)),
            ("Insert", 32.0),
        ),
        (
            "complete",
            format!(
                "{}, {}, {}, {}, {}::jsonb[], {}::text[], {}::timestamptz[], 'w-1'",
                ids(&running),
                each("1"),
                each("succeeded"),
                each("succeeded"),
                each("NULL"),
                each("NULL"),
                each("NULL"),
            ),
            ("Update", 32.0),
        ),
        ("reap", "100".to_owned(), ("Update", 100.0)),
    ];
    for (name, args, (operation, expected)) in runs {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({args})"
        )))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        let root = &plan[0]["Plan"];
        assert_eq!(
            modified(root, operation),
            expected,
            "{name}: {operation} of {expected} rows expected: {plan:#}"
        );
        let scanned = rows_scanned(root);
        // About the rows each statement touches (a few hundred at most, with the rescans of
        // the completion's 32 outcomes), where a walk of the backlog reads 50,000 or more.
        assert!(
            scanned <= 5_000.0,
            "{name} read {scanned} rows for {expected}: {plan:#}"
        );
    }
    drop(conn);
    app.stop().await;
}
