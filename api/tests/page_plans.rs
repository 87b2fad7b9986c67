//! Paging through a long audit trail or many schedules: a page reads about a page, the first
//! one and one far down, with the plans Postgres made while the tables were empty (and keeps:
//! see `worker_plans.rs`) and with the plans it makes once it has statistics. (The job list has
//! its own test, `list_plan.rs`.)

mod support;

use conveyor_shared::{audit, schedule::Schedule};
use support::{TestApp, explain_analyze, replan_with_statistics, rows_scanned, run_all};
use uuid::Uuid;

/// Rows per tenant in each table; the later page starts this far below the newest.
const ROWS: i64 = 20_000;
const DEPTH: i64 = 10_000;
const PAGE: i64 = 50;

/// A list statement and the cursor to run it with (`None`: the first page).
struct Case {
    name: String,
    sql: &'static str,
    cursor: Option<Uuid>,
}

fn cases(audit_cursor: Option<Uuid>, schedule_cursor: Option<Uuid>) -> Vec<Case> {
    let case = |table: &str, sql, cursor: Option<Uuid>| Case {
        name: format!(
            "{table}_{}",
            if cursor.is_some() { "later" } else { "first" }
        ),
        sql,
        cursor,
    };
    vec![
        case("audit", audit::list_sql(false), None),
        case("audit", audit::list_sql(true), audit_cursor),
        case("schedules", Schedule::list_sql(false), None),
        case("schedules", Schedule::list_sql(true), schedule_cursor),
    ]
}

fn execute(case: &Case) -> String {
    let cursor = case
        .cursor
        .map_or_else(|| "NULL".to_owned(), |c| format!("'{c}'"));
    format!("EXECUTE {}('default', {cursor}, {PAGE})", case.name)
}

/// Prepares every case on `conn` and runs each once (which plans it).
async fn prepare(conn: &mut sqlx::PgConnection, cases: &[Case]) {
    let prepare = |c: &Case| format!("PREPARE {}(text, uuid, int8) AS {}", c.name, c.sql);
    run_all(&mut *conn, cases.iter().map(prepare)).await;
    run_each(conn, cases).await;
}

async fn run_each(conn: &mut sqlx::PgConnection, cases: &[Case]) {
    run_all(conn, cases.iter().map(execute)).await;
}

/// Runs each case under `EXPLAIN ANALYZE`: a full page, read from about a page of rows.
async fn check(conn: &mut sqlx::PgConnection, cases: &[Case], plans: &str) {
    for case in cases {
        let plan = explain_analyze(&mut *conn, &execute(case)).await;
        let (name, root) = (&case.name, &plan[0]["Plan"]);
        assert_eq!(root["Actual Rows"], PAGE, "{name}, {plans}: {plan:#}");
        let scanned = rows_scanned(root);
        // A page, where a walk down to the cursor reads DEPTH rows.
        assert!(
            scanned <= 2.0 * PAGE as f64,
            "a page of {name} ({plans}) read {scanned} rows: {plan:#}"
        );
    }
}

#[tokio::test]
async fn a_page_of_the_audit_trail_or_of_schedules_reads_about_a_page_whatever_the_plan() {
    let app = TestApp::without_worker_or_relay().await;
    let mut conn = app.pool.acquire().await.unwrap();
    // Planned on the empty tables and kept: the generic plan at once (Postgres would switch to
    // it after five runs whose custom plans cost no less).
    run_all(&mut conn, ["SET plan_cache_mode = force_generic_plan"]).await;
    prepare(&mut conn, &cases(Some(Uuid::nil()), Some(Uuid::nil()))).await;

    // Ours and another tenant's, interleaved in id order.
    sqlx::query(
        "INSERT INTO audit_log (id, tenant, action, target, remote_addr)
         SELECT gen_random_uuid(), (ARRAY['default', 'other'])[1 + i % 2], 'job.cancel',
                'job', 'cli'
         FROM generate_series(1, 2 * $1) AS i",
    )
    .bind(ROWS)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO schedules (id, tenant, name, cron, timezone, job, next_run_at)
         SELECT gen_random_uuid(), (ARRAY['default', 'other'])[1 + i % 2], 's-' || i,
                '0 * * * *', 'UTC', '{\"kind\": \"noop\", \"payload\": {}}', now()
         FROM generate_series(1, 2 * $1) AS i",
    )
    .bind(ROWS)
    .execute(&mut *conn)
    .await
    .unwrap();
    let cursor = |table: &'static str| {
        sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {table} WHERE tenant = 'default' ORDER BY id DESC OFFSET $1 LIMIT 1"
        )))
        .bind(DEPTH)
    };
    let audit_cursor = cursor("audit_log").fetch_one(&mut *conn).await.unwrap();
    let schedule_cursor = cursor("schedules").fetch_one(&mut *conn).await.unwrap();
    let cases = cases(Some(audit_cursor), Some(schedule_cursor));
    check(&mut conn, &cases, "plans kept from empty tables").await;

    // With statistics, as autovacuum keeps them, and Postgres choosing its plans.
    replan_with_statistics(
        &mut conn,
        "audit_log, schedules",
        cases.iter().map(|c| c.name.clone()),
    )
    .await;
    prepare(&mut conn, &cases).await;
    // Five more runs each, so that a generic plan, if Postgres switches to one, is checked.
    for _ in 0..5 {
        run_each(&mut conn, &cases).await;
    }
    check(&mut conn, &cases, "plans made with statistics").await;
    drop(conn);
    app.stop().await;
}
