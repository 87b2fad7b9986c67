//! Listing jobs against a large backlog: a page reads about a page, for every shape of filter,
//! with the plans Postgres made while the tables were empty (and keeps: see
//! `worker_plans.rs`) and with the plans it makes once it has statistics. A running job is
//! stored `queued` with a lease (`job_leases`), so "the running jobs" must be read from the
//! leases: read from the stored state, a page of running jobs would walk the whole backlog of
//! `queued` ones.

mod support;

use conveyor_shared::job::{JobFilter, JobId, JobState, list::list_sql};
use support::{TestApp, explain_analyze, replan_with_statistics, rows_scanned, run_all};
use uuid::Uuid;

/// A filter shape to list by, and the size of the page it must return.
struct Case {
    name: &'static str,
    filter: JobFilter,
    expected: u64,
}

/// Every shape [`list_sql`] distinguishes; the second pages start below `job_cursor` (among
/// all jobs) and `lease_cursor` (among the running ones).
fn cases(schedule: Uuid, job_cursor: Uuid, lease_cursor: Uuid) -> Vec<Case> {
    let filter = |state: Option<JobState>, queue: Option<&str>, kind: Option<&str>| JobFilter {
        state,
        queue: queue.map(Into::into),
        kind: kind.map(Into::into),
        limit: 50,
        ..Default::default()
    };
    let case = |name, filter, expected| Case {
        name,
        filter,
        expected,
    };
    let running = Some(JobState::Running);
    let dead = Some(JobState::Dead);
    vec![
        case("all", filter(None, None, None), 50),
        case("running", filter(running, None, None), 50),
        case("dead", filter(dead, None, None), 20),
        case("queued", filter(Some(JobState::Queued), None, None), 50),
        case("a queue", filter(None, Some("default"), None), 50),
        case("a kind", filter(None, None, Some("noop")), 50),
        case("dead in a queue", filter(dead, Some("default"), None), 20),
        case(
            "a schedule",
            JobFilter {
                schedule_id: Some(schedule),
                ..filter(None, None, None)
            },
            10,
        ),
        case(
            "all, a later page",
            JobFilter {
                before: Some(JobId(job_cursor)),
                ..filter(None, None, None)
            },
            50,
        ),
        case(
            "running, a later page",
            JobFilter {
                before: Some(JobId(lease_cursor)),
                ..filter(running, None, None)
            },
            50,
        ),
    ]
}

/// `EXECUTE`'s arguments for `filter`, in [`list_sql`]'s parameter order.
fn arguments(filter: &JobFilter) -> String {
    let quoted = |v: Option<String>| v.map_or("NULL".into(), |v| format!("'{v}'"));
    format!(
        "'default', {}, {}, {}, {}, {}, {}",
        quoted(filter.queue.clone()),
        quoted(filter.state.map(|s| s.as_str().to_owned())),
        quoted(filter.kind.clone()),
        quoted(filter.schedule_id.map(|s| s.to_string())),
        quoted(filter.before.map(|b| b.0.to_string())),
        filter.limit
    )
}

/// Prepares each case's statement on `conn` as `list_<i>` and runs it once (which plans it).
async fn prepare(conn: &mut sqlx::PgConnection, cases: &[Case]) {
    let prepare = |(i, case): (usize, &Case)| {
        format!(
            "PREPARE list_{i}(text, text, job_state, text, uuid, uuid, int8) AS {}",
            list_sql(&case.filter)
        )
    };
    run_all(&mut *conn, cases.iter().enumerate().map(prepare)).await;
    run_each(conn, cases).await;
}

/// Runs each case's prepared statement once.
async fn run_each(conn: &mut sqlx::PgConnection, cases: &[Case]) {
    let execute =
        |(i, case): (usize, &Case)| format!("EXECUTE list_{i}({})", arguments(&case.filter));
    run_all(conn, cases.iter().enumerate().map(execute)).await;
}

/// Runs each case's prepared statement and checks the page it returns and the rows it reads.
async fn check(conn: &mut sqlx::PgConnection, cases: &[Case], plans: &str) {
    for (i, case) in cases.iter().enumerate() {
        let statement = format!("EXECUTE list_{i}({})", arguments(&case.filter));
        let plan = explain_analyze(&mut *conn, &statement).await;
        let (name, root) = (case.name, &plan[0]["Plan"]);
        assert_eq!(
            root["Actual Rows"], case.expected,
            "{name}, {plans}: {plan:#}"
        );
        let scanned = rows_scanned(root);
        // At most seven pages (the list of all jobs merges one per state), where a walk of the
        // backlog reads 50,000 rows or more.
        assert!(
            scanned <= 1_000.0,
            "a page of {name} ({plans}) read {scanned} rows: {plan:#}"
        );
    }
}

#[tokio::test]
async fn a_page_of_jobs_reads_about_a_page_for_every_filter_whatever_the_plan() {
    let app = TestApp::without_worker_or_relay().await;
    let schedule = Uuid::now_v7();
    let mut conn = app.pool.acquire().await.unwrap();
    // Planned on the empty tables and kept: the generic plan at once (Postgres would switch to
    // it after five runs whose custom plans cost no less). The cursors' values do not matter
    // to a generic plan.
    run_all(&mut conn, ["SET plan_cache_mode = force_generic_plan"]).await;
    prepare(&mut conn, &cases(schedule, Uuid::nil(), Uuid::nil())).await;

    // 50,000 queued jobs, 300 of them running, 50,000 succeeded and 20 dead; 10 of them
    // emitted by a schedule.
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, finished_at, schedule_id, tick)
         SELECT gen_random_uuid(), 'default', 'noop', 'default',
                CASE WHEN i <= 50000 THEN 'queued'
                     WHEN i <= 100000 THEN 'succeeded' ELSE 'dead' END::job_state,
                '{}', 25, 60, now(), CASE WHEN i > 50000 THEN now() END,
                CASE WHEN i % 10000 = 0 THEN $1::uuid END,
                CASE WHEN i % 10000 = 0 THEN now() + i * interval '1 s' END
         FROM generate_series(1, 100020) AS i",
    )
    .bind(schedule)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_leases (job_id, attempt, worker, started_at, lease_expires_at)
         SELECT id, 1, 'w-1', now(), now() + interval '1 hour'
         FROM jobs WHERE state = 'queued' ORDER BY random() LIMIT 300",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let job_cursor: Uuid =
        sqlx::query_scalar("SELECT id FROM jobs ORDER BY id DESC OFFSET 100 LIMIT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let lease_cursor: Uuid =
        sqlx::query_scalar("SELECT job_id FROM job_leases ORDER BY job_id DESC OFFSET 100 LIMIT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let cases = cases(schedule, job_cursor, lease_cursor);
    check(&mut conn, &cases, "plans kept from empty tables").await;

    // With statistics, as autovacuum keeps them, and Postgres choosing its plans.
    replan_with_statistics(
        &mut conn,
        "jobs, job_leases",
        (0..cases.len()).map(|i| format!("list_{i}")),
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
