//! The benchmark harness (`conveyor-bench`) runs every section against a real stack, in
//! miniature, so it keeps working between the runs that produce docs/benchmarks.md. The figures
//! are not asserted (timing belongs to benchmarks, not tests); that every job it sent
//! succeeded and every section reported is.

mod support;

use clap::Parser;
use support::{TestApp, amqp_url, pg_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_runs_against_a_live_stack() {
    let app = TestApp::spawn().await;
    let database_url = format!("{}/{}", pg_server(), app.db_name);
    let api_url = format!("http://{}", app.addr);
    let args = conveyor_bench::Args::parse_from([
        "conveyor-bench",
        "--api-url",
        &api_url,
        "--token",
        &app.token,
        "--database-url",
        &database_url,
        "--amqp-url",
        &amqp_url(),
        "--only",
        "raw-broker,raw-postgres,batch,single,latency,start,soak",
        "--jobs",
        "300",
        "--batch",
        "100",
        "--single-jobs",
        "60",
        "--single-clients",
        "4",
        "--rate",
        "40",
        "--rate-secs",
        "1",
        "--start-samples",
        "5",
        "--raw-messages",
        "500",
        "--soak-secs",
        "2",
        "--soak-rate",
        "50",
    ]);
    let report = conveyor_bench::measure(&args)
        .await
        .expect("the harness runs against a live stack");
    let rows = report.rows();
    let find = |what: &str| {
        rows.iter()
            .find(|(w, _)| w.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} row in {rows:#?}"))
            .1
            .clone()
    };
    assert!(find("publish + consume + ack").ends_with("msg/s"));
    assert!(find("raw Postgres").ends_with("rows/s"));
    assert!(find("batch: 300 jobs").contains("jobs/s"));
    assert!(
        find("batch: 300 jobs, 100 per request, 2 in flight: end to end")
            .contains("% of raw RabbitMQ")
    );
    assert!(find("raw RabbitMQ again, right after the batch run").ends_with("msg/s"));
    let bracket = find("batch end to end against the raw rate before / after it");
    let shares: Vec<&str> = bracket.split(" / ").collect();
    assert!(
        shares.len() == 2 && shares.iter().all(|s| s.ends_with('%')),
        "{bracket:?}"
    );
    assert!(find("single: 60 jobs").contains("jobs/s"));
    assert!(find("achieved rate").ends_with(", 0 errors"), "{rows:#?}");
    assert!(find("start latency").contains(" ms / "));
    assert!(find("soak: 2 s").contains("0 failed requests"));
    assert!(
        !rows.iter().any(|(w, _)| w.contains("NOT succeeded")),
        "every job the harness sent must succeed: {rows:#?}"
    );
    // The report renders as a Markdown table.
    assert!(report.to_string().contains("| measurement | result |"));
    app.stop().await;
}
