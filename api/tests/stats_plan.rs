//! The queue statistics (`GET /v1/queues`, the dashboard's poll) read what they are about and
//! nothing else, with the plans Postgres made while the tables were empty (and keeps: see
//! `worker_plans.rs`) and with the plans it makes once it has statistics: another tenant's
//! jobs are never read; the throughput and latency windows read only the jobs finished within
//! them, and the backlog only the waiting jobs, not the tenant's whole history.
//! (The counts by state do read every job of the tenant's queues: see `COUNTS_SQL`.)

mod support;

use conveyor_shared::job::stats::{COUNTS_SQL, MAX_SAMPLES, WAITING_SQL, WINDOWS_SQL};
use support::{TestApp, explain_analyze, replan_with_statistics, rows_scanned, run_all};

/// Our tenant's jobs: finished an hour ago (outside every window), finished a minute ago,
/// waiting, and how many of the waiting ones run (leased). A small share of the table, as one
/// tenant among many is: a plan that reads the whole table is then the costlier one, and
/// Postgres, once it has statistics, has no reason to choose it.
const OLD_FINISHED: i64 = 5_000;
const RECENT: i64 = 100;
const WAITING: i64 = 100;
const LEASED: i64 = 20;
/// The other tenant's jobs in the same queue: finished a minute ago (inside the windows), and
/// waiting, of which some run.
const OTHER_RECENT: i64 = 50_000;
const OTHER_WAITING: i64 = 5_000;
const OTHER_LEASED: i64 = 200;

/// A statistics statement, how it is prepared and run, and the most rows it may read.
struct Case {
    name: &'static str,
    prepare: String,
    execute: &'static str,
    most_rows: f64,
}

fn cases() -> Vec<Case> {
    let case = |name, types: &str, sql: &str, execute, most_rows| Case {
        name,
        prepare: format!("PREPARE {name}({types}) AS {sql}"),
        execute,
        most_rows,
    };
    let own_jobs = (OLD_FINISHED + RECENT + WAITING) as f64;
    let leases = (LEASED + OTHER_LEASED) as f64;
    vec![
        // Every job of ours (by design; twice when read through a bitmap), and each lease
        // with its job found by key.
        case(
            "counts",
            "text, text[]",
            COUNTS_SQL,
            "EXECUTE counts('default', ARRAY['default'])",
            2.0 * own_jobs + 2.0 * leases + 100.0,
        ),
        // The jobs finished in the window, twice (throughput, then percentiles), each twice
        // when read through a bitmap.
        case(
            "windows",
            "text, text[], float8, int8",
            WINDOWS_SQL,
            "EXECUTE windows('default', ARRAY['default'], 300, 1000)",
            4.0 * RECENT as f64 + 100.0,
        ),
        // The waiting jobs (twice through a bitmap), each probed for a lease.
        case(
            "waiting",
            "text, text[]",
            WAITING_SQL,
            "EXECUTE waiting('default', ARRAY['default'])",
            3.0 * WAITING as f64 + 100.0,
        ),
    ]
}

/// Prepares every case on `conn` and runs each once (which plans it).
async fn prepare(conn: &mut sqlx::PgConnection, cases: &[Case]) {
    run_all(&mut *conn, cases.iter().map(|c| c.prepare.as_str())).await;
    run_each(conn, cases).await;
}

async fn run_each(conn: &mut sqlx::PgConnection, cases: &[Case]) {
    run_all(conn, cases.iter().map(|c| c.execute)).await;
}

/// Runs each case under `EXPLAIN ANALYZE` and checks the rows it read.
async fn check(conn: &mut sqlx::PgConnection, cases: &[Case], plans: &str) {
    for case in cases {
        let plan = explain_analyze(&mut *conn, case.execute).await;
        let scanned = rows_scanned(&plan[0]["Plan"]);
        assert!(
            scanned <= case.most_rows,
            "{} ({plans}) read {scanned} rows, at most {} expected: {plan:#}",
            case.name,
            case.most_rows
        );
    }
}

/// The figures themselves, so that a plan that reads little because it reads the wrong rows
/// fails too.
async fn check_figures(conn: &mut sqlx::PgConnection) {
    let counts: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT queue, state::text, n FROM ({COUNTS_SQL}) c"
    )))
    .bind("default")
    .bind(vec!["default".to_owned()])
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let count = |state: &str| {
        counts
            .iter()
            .filter(|(_, s, _)| s == state)
            .map(|(_, _, n)| n)
            .sum::<i64>()
    };
    assert_eq!(count("succeeded"), OLD_FINISHED + RECENT, "{counts:?}");
    assert_eq!(count("queued"), WAITING - LEASED, "{counts:?}");
    assert_eq!(count("running"), LEASED, "{counts:?}");

    let (finished_5m, samples): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT finished_5m, samples FROM ({WINDOWS_SQL}) w"
    )))
    .bind("default")
    .bind(vec!["default".to_owned()])
    .bind(300.0_f64)
    .bind(MAX_SAMPLES)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((finished_5m, samples), (RECENT, RECENT));

    let backlog: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT backlog FROM ({WAITING_SQL}) w"
    )))
    .bind("default")
    .bind(vec!["default".to_owned()])
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(backlog, WAITING - LEASED);
}

#[tokio::test]
async fn queue_statistics_read_only_their_own_rows_whatever_the_plan() {
    let app = TestApp::without_worker_or_relay().await;
    let mut conn = app.pool.acquire().await.unwrap();
    let cases = cases();
    // Planned on the empty tables and kept: the generic plan at once (Postgres would switch to
    // it after five runs whose custom plans cost no less).
    run_all(&mut conn, ["SET plan_cache_mode = force_generic_plan"]).await;
    prepare(&mut conn, &cases).await;

    for (tenant, old, recent) in [
        ("default", OLD_FINISHED, RECENT),
        ("other", 0, OTHER_RECENT),
    ] {
        sqlx::query(
            "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts,
                               timeout_secs, run_at, started_at, finished_at, attempts)
             SELECT gen_random_uuid(), $1, 'noop', 'default', 'succeeded', '{}', 25, 60,
                    t - interval '20 ms', t - interval '10 ms', t, 1
             FROM generate_series(1, $2 + $3) AS i,
                  LATERAL (SELECT CASE WHEN i <= $2 THEN now() - interval '1 hour'
                                       ELSE now() - interval '1 minute' END AS t) ts",
        )
        .bind(tenant)
        .bind(old)
        .bind(recent)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at)
         SELECT gen_random_uuid(), CASE WHEN i <= $1 THEN 'default' ELSE 'other' END, 'noop',
                'default', 'queued', '{}', 25, 60, now() - interval '1 second'
         FROM generate_series(1, $1 + $2) AS i",
    )
    .bind(WAITING)
    .bind(OTHER_WAITING)
    .execute(&mut *conn)
    .await
    .unwrap();
    for (tenant, leased) in [("default", LEASED), ("other", OTHER_LEASED)] {
        sqlx::query(
            "INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
             SELECT id, 1, 'w-1', now(), now() + interval '1 hour'
             FROM jobs WHERE tenant = $1 AND state = 'queued' ORDER BY random() LIMIT $2",
        )
        .bind(tenant)
        .bind(leased)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    check(&mut conn, &cases, "plans kept from empty tables").await;
    check_figures(&mut conn).await;

    // With statistics, as autovacuum keeps them, and Postgres choosing its plans.
    replan_with_statistics(
        &mut conn,
        "jobs, job_leases",
        cases.iter().map(|c| c.name.to_owned()),
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
