//! How `GET /v1/queues` scales with finished jobs: seeds a tenant with ~1M synthetic finished
//! jobs (plus a backlog and another tenant's jobs), then prints each statistics query's plan
//! (EXPLAIN ANALYZE) and the endpoint's latency. Ignored by default; run it with
//!
//! ```sh
//! CONVEYOR_BENCH_ROWS=1000000 cargo test -p conveyor-api --release --test queues_bench -- --ignored --nocapture
//! ```

mod support;

use std::time::{Duration, Instant};

use conveyor_shared::job::stats::{COUNTS_SQL, MAX_SAMPLES, WAITING_SQL, WINDOWS_SQL};
use support::TestApp;

#[tokio::test]
#[ignore = "benchmark: seeds ~1M rows; run with --ignored --nocapture"]
async fn queue_stats_with_a_million_finished_jobs() {
    let rows: i64 = std::env::var("CONVEYOR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let app = TestApp::without_worker().await;
    let seeded = Instant::now();
    // Finished jobs spread over the last 30 days across the three queues; 1 in 50 is dead. The
    // last 5 minutes hold ~rows/8640 of them, as a steady rate would leave.
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, created_at, updated_at, started_at, finished_at, attempts)
         SELECT gen_random_uuid(), 'default', 'noop',
                (ARRAY['default', 'transactions', 'integrations'])[1 + i % 3],
                CASE WHEN i % 50 = 0 THEN 'dead' ELSE 'succeeded' END::job_state,
                '{}', 25, 60, t - interval '20 ms', t, t, t,
                t + (random() * interval '200 ms'), 1
         FROM generate_series(1, $1::bigint) AS i,
              LATERAL (SELECT now() - (i * interval '30 days' / $1::bigint) AS t) ts",
    )
    .bind(rows)
    .execute(&app.pool)
    .await
    .unwrap();
    // Another tenant's history, and a backlog of 10,000 waiting jobs for ours.
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, started_at, finished_at)
         SELECT gen_random_uuid(), 'other', 'noop', 'default', 'succeeded', '{}', 25, 60,
                now() - i * interval '1 second', now() - i * interval '1 second',
                now() - i * interval '1 second'
         FROM generate_series(1, $1::bigint / 10) AS i",
    )
    .bind(rows)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at)
         SELECT gen_random_uuid(), 'default', 'noop', 'default', 'queued', '{}', 25, 60,
                now() - i * interval '10 ms'
         FROM generate_series(1, 10000) AS i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // 200 of the backlog running, as a busy fleet's leases would have them.
    sqlx::query(
        "INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
         SELECT id, 1, 'bench', now(), now() + interval '1 hour'
         FROM jobs WHERE tenant = 'default' AND state = 'queued' LIMIT 200",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(&app.pool)
        .await
        .unwrap();
    println!(
        "seeded {rows} finished + {} other-tenant + 10000 queued jobs in {:?}",
        rows / 10,
        seeded.elapsed()
    );

    let queues = vec![
        "default".to_owned(),
        "transactions".to_owned(),
        "integrations".to_owned(),
    ];
    for (name, sql, window) in [
        ("counts", COUNTS_SQL, false),
        ("windows", WINDOWS_SQL, true),
        ("waiting", WAITING_SQL, false),
    ] {
        let explain = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}");
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(explain))
            .bind("default")
            .bind(&queues);
        if window {
            query = query.bind(300.0_f64).bind(MAX_SAMPLES);
        }
        let plan = query.fetch_all(&app.pool).await.unwrap();
        println!("\n== {name} ==\n{}", plan.join("\n"));
    }

    // The endpoint itself, warm, as a dashboard polling it would see it.
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let body = app.get_json("/v1/queues").await;
        times.push(started.elapsed());
        assert_eq!(body["queues"][0]["backlog"], 9800);
        assert_eq!(body["queues"][0]["counts"]["running"], 200);
    }
    times.sort();
    let body = app.get_json("/v1/queues/default").await;
    println!("\n/v1/queues/default: {body:#}");
    println!(
        "\nGET /v1/queues over {} rows: min {:?}, median {:?}, max {:?}",
        rows + rows / 10 + 10000,
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(
        times[times.len() / 2] < Duration::from_secs(2),
        "statistics too slow to poll"
    );
    app.stop().await;
}
