//! `GET /v1/queues` and `GET /v1/queues/{name}`: counts by state, backlog, throughput and
//! latency from Postgres (tenant-scoped), `ready` / `consumers` from RabbitMQ.

mod support;

use std::time::Duration;

use conveyor_shared::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Options, TestApp, eventually, noop, problem, proxy::Proxy};

async fn queue(app: &TestApp, name: &str) -> Value {
    app.get_json(&format!("/v1/queues/{name}")).await
}

#[tokio::test]
async fn backlog_shows_while_no_worker_runs() {
    let app = TestApp::without_worker().await;
    for _ in 0..3 {
        app.enqueue(noop(json!({}))).await;
    }
    app.enqueue(json!({"kind": "noop", "queue": "integrations"}))
        .await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    app.enqueue(json!({"kind": "noop", "run_at": later})).await;

    // The relay publishes the three due jobs; nobody consumes them.
    let default = eventually(Duration::from_secs(10), || async {
        let q = queue(&app, "default").await;
        (q["ready"] == 3).then_some(q)
    })
    .await
    .expect("RabbitMQ never showed 3 ready messages");
    assert_eq!(default["name"], "default");
    assert_eq!(default["consumers"], 0, "{default:#}");
    assert_eq!(
        default["counts"],
        json!({"scheduled": 1, "queued": 3, "running": 0, "succeeded": 0,
               "retrying": 0, "dead": 0, "cancelled": 0}),
        "{default:#}"
    );
    assert_eq!(
        default["backlog"], 3,
        "the scheduled job is not due: {default:#}"
    );
    assert_eq!(default["dead"], 0);
    let age = default["oldest_waiting_age_seconds"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&age), "{default:#}");
    assert_eq!(default["throughput"]["finished_5m"], 0);
    assert_eq!(default["queue_wait_seconds"]["samples"], 0);
    assert!(
        default["queue_wait_seconds"]["p50"].is_null(),
        "{default:#}"
    );
    assert!(default["run_seconds"]["p99"].is_null(), "{default:#}");

    let all = app.get_json("/v1/queues").await;
    let names: Vec<&str> = all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "transactions", "integrations"]);
    assert_eq!(all["queues"][1]["backlog"], 0);
    assert!(all["queues"][1]["oldest_waiting_age_seconds"].is_null());
    assert_eq!(all["queues"][2]["counts"]["queued"], 1);
    app.stop().await;
}

#[tokio::test]
async fn counts_throughput_and_latency_after_jobs_succeed_and_die() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.enqueue(noop(json!({"sleep_ms": 50}))).await);
    }
    let dead = app.enqueue(noop(json!({"fail_permanently": true}))).await;
    for id in &ids {
        app.wait_for_state(id, "succeeded", Duration::from_secs(10))
            .await;
    }
    app.wait_for_state(&dead, "dead", Duration::from_secs(10))
        .await;

    let q = eventually(Duration::from_secs(10), || async {
        let q = queue(&app, "default").await;
        (q["consumers"].as_u64() >= Some(1)).then_some(q)
    })
    .await
    .expect("the worker never showed as a consumer");
    assert_eq!(q["counts"]["succeeded"], 4, "{q:#}");
    assert_eq!(q["counts"]["dead"], 1, "{q:#}");
    assert_eq!(q["dead"], 1, "{q:#}");
    assert_eq!(q["backlog"], 0, "{q:#}");
    assert!(q["oldest_waiting_age_seconds"].is_null(), "{q:#}");
    assert_eq!(q["ready"], 0, "{q:#}");
    assert_eq!(q["throughput"]["finished_1m"], 5, "{q:#}");
    assert_eq!(q["throughput"]["finished_5m"], 5, "{q:#}");
    assert_eq!(
        q["throughput"]["per_second_5m"], 0.017,
        "5 / 300, to the millisecond"
    );
    assert_eq!(q["queue_wait_seconds"]["samples"], 5, "{q:#}");
    assert_eq!(q["run_seconds"]["samples"], 5, "{q:#}");
    let (p50, p95, p99) = (
        q["run_seconds"]["p50"].as_f64().unwrap(),
        q["run_seconds"]["p95"].as_f64().unwrap(),
        q["run_seconds"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 >= 0.04, "four of five jobs slept 50 ms: {q:#}");
    assert!(p50 <= p95 && p95 <= p99, "{q:#}");
    let wait = q["queue_wait_seconds"]["p99"].as_f64().unwrap();
    assert!((0.0..10.0).contains(&wait), "{q:#}");

    // A retried dead job leaves the dead count.
    let r = app
        .post_empty_as(&app.token, &format!("/v1/jobs/{dead}/retry"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.wait_for_state(&dead, "dead", Duration::from_secs(10))
        .await;
    let q = queue(&app, "default").await;
    assert_eq!(q["counts"]["dead"], 1, "{q:#}");
    assert_eq!(q["throughput"]["finished_1m"], 5, "{q:#}");
    app.stop().await;
}

#[tokio::test]
async fn unknown_queue_is_404_and_scopes_apply() {
    let app = TestApp::without_worker().await;
    problem(
        app.get_as(&app.token, "/v1/queues/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        app.get_as(&app.token, "/v1/queues/DEFAULT").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let writer = app.key("default", &[Scope::JobsWrite]).await;
    problem(
        app.get_as(&writer, "/v1/queues").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    problem(
        app.get_as("nonsense", "/v1/queues/default").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_jobs() {
    let app = TestApp::without_worker().await;
    let other = app.key("acme", &[Scope::JobsRead, Scope::JobsWrite]).await;
    for _ in 0..2 {
        app.enqueue(noop(json!({}))).await;
    }
    let r = app.post_as(&other, "/v1/jobs", noop(json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let mine = queue(&app, "default").await;
    assert_eq!(mine["counts"]["queued"], 2, "{mine:#}");
    assert_eq!(mine["backlog"], 2, "{mine:#}");
    let r = app.get_as(&other, "/v1/queues/default").await;
    assert_eq!(r.status(), StatusCode::OK);
    let theirs: Value = r.json().await.unwrap();
    assert_eq!(theirs["counts"]["queued"], 1, "{theirs:#}");
    assert_eq!(theirs["backlog"], 1, "{theirs:#}");
    let r = app.get_as(&other, "/v1/queues").await;
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["queues"][0]["counts"]["queued"], 1, "{all:#}");
    app.stop().await;
}

#[tokio::test]
async fn broker_figures_are_null_when_rabbitmq_is_unreachable() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = TestApp::spawn_with(Options {
        worker: false,
        api_amqp_url: Some(format!("amqp://guest:guest@{}/%2f", proxy.addr)),
        ..Default::default()
    })
    .await;
    app.enqueue(noop(json!({}))).await;
    let q = eventually(Duration::from_secs(10), || async {
        let q = queue(&app, "default").await;
        (q["ready"] == 1).then_some(q)
    })
    .await
    .expect("RabbitMQ never showed the message");
    assert_eq!(q["consumers"], 0);

    proxy.cut();
    app.enqueue(noop(json!({}))).await;
    let q = eventually(Duration::from_secs(10), || async {
        let q = queue(&app, "default").await;
        q["ready"].is_null().then_some(q)
    })
    .await
    .expect("ready stayed non-null with RabbitMQ unreachable");
    assert!(q["consumers"].is_null(), "{q:#}");
    assert_eq!(
        q["counts"]["queued"], 2,
        "Postgres figures still answer: {q:#}"
    );

    proxy.restore();
    eventually(Duration::from_secs(15), || async {
        let q = queue(&app, "default").await;
        (q["ready"] == 2).then_some(())
    })
    .await
    .expect("broker figures never came back after RabbitMQ did");
    app.stop().await;
}

#[tokio::test]
async fn unacked_counts_the_deliveries_workers_hold() {
    // Needs RabbitMQ's management plugin (scripts/ensure-services.sh enables it).
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.enqueue(json!({"kind": "noop", "payload": {"sleep_ms": 20000}}))
            .await;
    }
    // The management API refreshes its figures every few seconds: poll.
    let seen = eventually(Duration::from_secs(18), || async {
        let q = queue(&app, "default").await;
        (q["unacked"].as_u64()? >= 3).then_some(q)
    })
    .await;
    let Some(q) = seen else {
        panic!(
            "unacked never reached 3: {:#}",
            queue(&app, "default").await
        );
    };
    assert!(q["unacked"].as_u64().unwrap() >= q["counts"]["running"].as_u64().unwrap());
    app.stop().await;
}
