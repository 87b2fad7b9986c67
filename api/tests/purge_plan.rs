//! Retention deletes old finished jobs a batch at a time, and a batch reads about the rows it
//! deletes however many newer jobs the table holds, with the plan Postgres made while the
//! tables were empty (and keeps: see `worker_plans.rs`) and with the plans it makes once it
//! has statistics. The worker sweeps every hour, so a batch that scanned the table would make
//! each sweep as long as the table times the batches in it.

mod support;

use conveyor_shared::job::retention::PURGE_SQL;
use serde_json::Value;
use support::{TestApp, explain_analyze, rows_scanned, run_all};

/// Jobs finished a day ago (kept), written first so that they lie ahead of the old ones in
/// the table, as rows written into space freed by earlier purges do.
const RECENT: i64 = 30_000;
/// Jobs finished 40 days ago, per tenant and queue, and the dead ones among them (kept unless
/// asked for).
const OLD: i64 = 1_000;
const OLD_DEAD: i64 = 100;
const BATCH: i64 = 500;
const PAIRS: i64 = 4;

/// Runs one batch under `EXPLAIN ANALYZE` in a transaction it rolls back; returns the rows it
/// read and the plan.
async fn one_batch(conn: &mut sqlx::PgConnection) -> (f64, Value) {
    run_all(&mut *conn, ["BEGIN"]).await;
    let plan = explain_analyze(
        &mut *conn,
        &format!("EXECUTE purge(now() - interval '30 days', false, {BATCH})"),
    )
    .await;
    run_all(&mut *conn, ["ROLLBACK"]).await;
    (rows_scanned(&plan[0]["Plan"]), plan)
}

async fn check(conn: &mut sqlx::PgConnection, plans: &str) {
    let (scanned, plan) = one_batch(conn).await;
    // The batch, read once by each of the few scans that carry it, and the kept dead jobs of
    // the pairs it went through; a scan of the table reads the 30,000 recent jobs.
    let most = 4.0 * BATCH as f64 + (PAIRS * OLD_DEAD) as f64 + 200.0;
    assert!(
        scanned <= most,
        "a purge batch ({plans}) read {scanned} rows, at most {most} expected: {plan:#}"
    );
}

#[tokio::test]
async fn a_purge_batch_reads_about_what_it_deletes_whatever_the_plan() {
    let app = TestApp::without_worker_or_relay().await;
    let mut conn = app.pool.acquire().await.unwrap();
    let prepare = format!("PREPARE purge(timestamptz, bool, int8) AS {PURGE_SQL}");
    // Planned on the empty tables by its first run, and kept.
    run_all(
        &mut conn,
        [
            "SET plan_cache_mode = force_generic_plan",
            &prepare,
            "EXECUTE purge(now() - interval '30 days', false, 1)",
        ],
    )
    .await;

    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, finished_at)
         SELECT gen_random_uuid(), 'default', 'noop', 'default', 'succeeded', '{}', 25, 60,
                now(), now() - interval '1 day'
         FROM generate_series(1, $1)",
    )
    .bind(RECENT)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, finished_at)
         SELECT gen_random_uuid(), t, 'noop', q,
                CASE WHEN i <= $2 THEN 'dead' ELSE 'succeeded' END::job_state, '{}', 25, 60,
                now(), now() - interval '40 days' - i * interval '1 s'
         FROM unnest(ARRAY['default', 'other']) AS t,
              unnest(ARRAY['default', 'transactions']) AS q,
              generate_series(1, $1) AS i",
    )
    .bind(OLD)
    .bind(OLD_DEAD)
    .execute(&mut *conn)
    .await
    .unwrap();
    check(&mut conn, "the plan kept from empty tables").await;

    // With statistics, as autovacuum keeps them, and Postgres choosing its plans.
    run_all(
        &mut conn,
        [
            "ANALYZE jobs",
            "RESET plan_cache_mode",
            "DEALLOCATE purge",
            &prepare,
        ],
    )
    .await;
    // Six runs, so that a generic plan, if Postgres switches to one, is checked.
    for _ in 0..6 {
        one_batch(&mut conn).await;
    }
    check(&mut conn, "plans made with statistics").await;

    // And the sweep itself: every old job that is not dead goes, nothing else.
    drop(conn);
    let purged = conveyor_shared::job::retention::purge_finished(
        &app.pool,
        chrono::Utc::now() - chrono::Duration::days(30),
        false,
        BATCH,
        None,
    )
    .await
    .unwrap();
    assert_eq!(purged as i64, PAIRS * (OLD - OLD_DEAD));
    let left: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'dead'), count(*) FILTER (WHERE state <> 'dead')
         FROM jobs",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, (PAIRS * OLD_DEAD, RECENT));
    app.stop().await;
}
