//! Cron schedules end to end: the API (CRUD, validation, tenants, scopes) and the scheduler
//! (several replicas, replicas dying, pause and resume, misfire policies, time zones and DST)
//! against real Postgres and RabbitMQ, with a worker running every emitted job.
//!
//! Scheduler replicas run in-process: each is a `conveyor_scheduler::run` task with its own
//! pool, probe port and cancellation token. Cancelling the token is a graceful stop; aborting
//! the task drops it wherever it is, mid-transaction included (a hard kill).

mod support;

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use conveyor_shared::{config::DatabaseConfig, keys::Scope, relay::RelayConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use support::{TestApp, eventually, problem};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Replica {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    fn start(app: &TestApp, configure: impl FnOnce(&mut conveyor_scheduler::Config)) -> Self {
        let mut config = conveyor_scheduler::Config {
            addr: free_addr(),
            relay: RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..Default::default()
            },
            ..conveyor_scheduler::Config::defaults(
                DatabaseConfig::with_url(db_url(app)),
                app.broker.clone(),
            )
        };
        // A replica needs few connections (one round at a time); tests run several at once.
        config.database.max_connections = 4;
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let addr = config.addr;
        let task = tokio::spawn(conveyor_scheduler::run(config, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// Graceful: the replica finishes its round and stops.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("a replica did not stop within 15s")
            .unwrap()
            .expect("a replica failed");
    }

    /// Hard: the replica is dropped at whatever await point it is.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Not a test: the body of a scheduler process that a test starts and kills. Its whole
/// configuration comes from the environment, as for the real binary.
#[tokio::test]
#[ignore = "entry point for scheduler processes started by the SIGKILL test"]
async fn scheduler_process() {
    conveyor_shared::telemetry::init_logging();
    let config = conveyor_scheduler::Config::from_env().expect("scheduler config");
    conveyor_scheduler::run(config, conveyor_shared::shutdown::on_signal())
        .await
        .expect("scheduler failed");
}

/// A scheduler replica in its own process.
struct SchedulerProcess {
    addr: SocketAddr,
    child: Child,
}

impl SchedulerProcess {
    fn start(app: &TestApp) -> Self {
        let addr = free_addr();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "scheduler_process", "--nocapture"])
            .env("DATABASE_URL", db_url(app))
            .env("AMQP_URL", support::amqp_url())
            .env("CONVEYOR_QUEUE_PREFIX", &app.broker.queue_prefix)
            .env("CONVEYOR_SCHEDULER_ADDR", addr.to_string())
            .env("CONVEYOR_DB_MAX_CONNECTIONS", "4")
            .env("RUST_LOG", "error")
            .env("CONVEYOR_LOG_FORMAT", "pretty")
            .stdout(Stdio::null())
            .spawn()
            .expect("start a scheduler process");
        Self { addr, child }
    }

    async fn wait_ready(&self, app: &TestApp) {
        let url = format!("http://{}/readyz", self.addr);
        eventually(Duration::from_secs(30), || async {
            let r = app.client.get(&url).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{url} never became ready"));
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn db_url(app: &TestApp) -> String {
    format!("{}/{}", support::pg_server(), app.db_name)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn per_second(name: &str) -> Value {
    json!({"name": name, "cron": "* * * * * *", "job": {"kind": "noop"}})
}

async fn create(app: &TestApp, body: Value) -> Value {
    let r = app.post_as(&app.token, "/v1/schedules", body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v:#}");
    v
}

async fn patch_as(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/v1/schedules/{id}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn patch(app: &TestApp, id: &str, body: Value) -> Value {
    let r = patch_as(app, &app.token, id, body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v:#}");
    v
}

async fn delete_as(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/v1/schedules/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The jobs a schedule emitted, by tick, read through `GET /v1/jobs?schedule_id=`.
async fn emitted(app: &TestApp, schedule: &str) -> Vec<Value> {
    let page = app
        .get_json(&format!("/v1/jobs?schedule_id={schedule}&limit=500"))
        .await;
    let mut jobs = page["jobs"].as_array().unwrap().clone();
    assert!(page["next_cursor"].is_null(), "more than one page of jobs");
    jobs.sort_by_key(|j| at(&j["tick"]));
    jobs
}

fn ticks(jobs: &[Value]) -> Vec<DateTime<Utc>> {
    jobs.iter().map(|j| at(&j["tick"])).collect()
}

/// Waits until the schedule emitted at least `n` jobs; returns them.
async fn wait_for_jobs(app: &TestApp, schedule: &str, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(20), || async {
        let jobs = emitted(app, schedule).await;
        (jobs.len() >= n).then_some(jobs)
    })
    .await
    .unwrap_or_else(|| panic!("schedule {schedule} did not emit {n} jobs within 20s"))
}

/// Every tick exactly `step` after the one before: unique, and no gap.
fn assert_consecutive(ticks: &[DateTime<Utc>], step: TimeDelta) {
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            step,
            "ticks {} and {} are not one step apart; all: {ticks:?}",
            pair[0],
            pair[1]
        );
    }
}

async fn wait_all_succeeded(app: &TestApp, jobs: &[Value]) {
    for job in jobs {
        app.wait_for_state(
            job["id"].as_str().unwrap(),
            "succeeded",
            Duration::from_secs(20),
        )
        .await;
    }
}

async fn set_next_run_at(app: &TestApp, id: &str, t: DateTime<Utc>) {
    sqlx::query("UPDATE schedules SET next_run_at = $2 WHERE id = $1")
        .bind(id.parse::<Uuid>().unwrap())
        .bind(t)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Waits until the schedule's `next_run_at` is after `t`: the replica handled what was due.
async fn wait_next_run_after(app: &TestApp, id: &str, t: DateTime<Utc>) -> Value {
    eventually(Duration::from_secs(20), || async {
        let s = app.get_json(&format!("/v1/schedules/{id}")).await;
        (s["next_run_at"].is_string() && at(&s["next_run_at"]) > t).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("schedule {id} was not advanced past {t} within 20s"))
}

/// The next 03:00 in Berlin after `t`, from chrono-tz alone (no cron code).
fn next_berlin_3am(t: DateTime<Utc>) -> DateTime<Utc> {
    let berlin = chrono_tz::Europe::Berlin;
    let mut day = t.with_timezone(&berlin).date_naive();
    loop {
        let candidate = berlin
            .from_local_datetime(&day.and_hms_opt(3, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        if candidate > t {
            return candidate;
        }
        day = day.succ_opt().unwrap();
    }
}

#[tokio::test]
async fn schedules_crud_round_trip_scoped_to_the_tenant() {
    let app = TestApp::spawn_with(support::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let before = Utc::now();
    let r = app
        .post_as(
            &app.token,
            "/v1/schedules",
            json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
                   "job": {"kind": "noop", "payload": {"sleep_ms": 5}, "priority": 7},
                   "misfire": "catch_up"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/schedules/{id}"));
    assert_eq!(created["name"], "nightly");
    assert_eq!(created["cron"], "0 3 * * *");
    assert_eq!(created["timezone"], "Europe/Berlin");
    assert_eq!(created["misfire"], "catch_up");
    assert_eq!(created["paused"], false);
    assert_eq!(
        created["job"],
        json!({"kind": "noop", "payload": {"sleep_ms": 5}, "priority": 7})
    );
    assert!(created["last_tick"].is_null());
    assert_eq!(at(&created["next_run_at"]), next_berlin_3am(before));

    assert_eq!(app.get_json(&location).await, created);

    // Defaults: UTC, skip, running.
    let minutely = create(
        &app,
        json!({"name": "every 5 minutes", "cron": "*/5 * * * *", "job": {"kind": "noop"}}),
    )
    .await;
    assert_eq!(minutely["timezone"], "UTC");
    assert_eq!(minutely["misfire"], "skip");
    let next = at(&minutely["next_run_at"]);
    assert!(next > before && next <= Utc::now() + TimeDelta::minutes(5));
    assert_eq!(next.timestamp() % 300, 0, "{next}");
    create(
        &app,
        json!({"name": "third", "cron": "0 0 * * *", "job": {"kind": "noop"}, "paused": true}),
    )
    .await;

    // Listing, newest first, in pages.
    let page = app.get_json("/v1/schedules?limit=2").await;
    let names: Vec<&str> = page["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["third", "every 5 minutes"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/v1/schedules?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest["schedules"][0]["name"], "nightly");
    assert!(rest["next_cursor"].is_null());
    let bad = app.get_as(&app.token, "/v1/schedules?limit=0").await;
    problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // Pausing clears next_run_at; a new cron and time zone (and resuming) recompute it.
    let paused = patch(&app, &id, json!({"paused": true})).await;
    assert_eq!(paused["paused"], true);
    assert!(paused["next_run_at"].is_null());
    let changed = patch(
        &app,
        &id,
        json!({"paused": false, "cron": "0 */2 * * * *", "timezone": "UTC", "name": "renamed",
               "misfire": "run_once", "job": {"kind": "noop"}}),
    )
    .await;
    assert_eq!(changed["name"], "renamed");
    assert_eq!(changed["cron"], "0 */2 * * * *");
    assert_eq!(changed["misfire"], "run_once");
    assert_eq!(changed["job"], json!({"kind": "noop", "payload": {}}));
    let next = at(&changed["next_run_at"]);
    assert!(next > before && next <= Utc::now() + TimeDelta::minutes(2));
    assert_eq!(next.timestamp() % 120, 0, "{next}");
    assert!(at(&changed["updated_at"]) > at(&created["updated_at"]));

    // Names are unique per tenant.
    let dup = app
        .post_as(
            &app.token,
            "/v1/schedules",
            json!({"name": "renamed", "cron": "* * * * *", "job": {"kind": "noop"}}),
        )
        .await;
    let body = problem(dup, StatusCode::CONFLICT, "schedule_name_taken").await;
    assert!(body["detail"].as_str().unwrap().contains("renamed"));
    let r = patch_as(&app, &app.token, &id, json!({"name": "third"})).await;
    problem(r, StatusCode::CONFLICT, "schedule_name_taken").await;

    // Another tenant sees none of it, and may use the same name.
    let other = app
        .key("other-tenant", &[Scope::JobsRead, Scope::JobsWrite])
        .await;
    for r in [
        app.get_as(&other, &location).await,
        patch_as(&app, &other, &id, json!({"paused": true})).await,
        delete_as(&app, &other, &id).await,
    ] {
        problem(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let theirs = app.get_as(&other, "/v1/schedules").await;
    assert_eq!(
        theirs.json::<Value>().await.unwrap()["schedules"],
        json!([])
    );
    let r = app
        .post_as(
            &other,
            "/v1/schedules",
            json!({"name": "renamed", "cron": "* * * * *", "job": {"kind": "noop"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Scopes: jobs:write to change, jobs:read to read.
    let reader = app.key("default", &[Scope::JobsRead]).await;
    let writer = app.key("default", &[Scope::JobsWrite]).await;
    for r in [
        app.post_as(&reader, "/v1/schedules", per_second("nope"))
            .await,
        patch_as(&app, &reader, &id, json!({"paused": true})).await,
        delete_as(&app, &reader, &id).await,
        app.get_as(&writer, &location).await,
        app.get_as(&writer, "/v1/schedules").await,
    ] {
        problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_eq!(
        app.get_as(&reader, &location).await.status(),
        StatusCode::OK
    );
    let anonymous = app
        .client
        .get(app.url("/v1/schedules"))
        .send()
        .await
        .unwrap();
    problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Delete: 204, then gone.
    assert_eq!(
        delete_as(&app, &app.token, &id).await.status(),
        StatusCode::NO_CONTENT
    );
    problem(
        app.get_as(&app.token, &location).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        delete_as(&app, &app.token, &id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        app.get_as(&app.token, "/v1/schedules/not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // The routes are in the OpenAPI document.
    let spec = app.get_json("/openapi.json").await;
    for (path, method) in [
        ("/v1/schedules", "post"),
        ("/v1/schedules", "get"),
        ("/v1/schedules/{id}", "get"),
        ("/v1/schedules/{id}", "patch"),
        ("/v1/schedules/{id}", "delete"),
    ] {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} not documented");
        assert!(operation["security"].to_string().contains("bearer"));
    }
    let schedule = &spec["components"]["schemas"]["Schedule"]["properties"];
    for field in [
        "id",
        "name",
        "cron",
        "timezone",
        "job",
        "misfire",
        "paused",
        "next_run_at",
    ] {
        assert!(schedule[field].is_object(), "Schedule lacks {field}");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_schedules_are_rejected_naming_each_field() {
    let app = TestApp::spawn_with(support::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let valid = json!({"name": "ok", "cron": "* * * * *", "timezone": "UTC",
                       "job": {"kind": "noop"}});
    let with = |changes: Value| {
        let mut body = valid.clone();
        for (k, v) in changes.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (with(json!({"cron": "* * * *"})), vec!["cron"]),
        (with(json!({"cron": "0 0 0 1 1 * 2030"})), vec!["cron"]),
        (with(json!({"cron": "61 * * * *"})), vec!["cron"]),
        (with(json!({"cron": "every minute"})), vec!["cron"]),
        (with(json!({"cron": "0 0 31 2 *"})), vec!["cron"]),
        (
            with(json!({"timezone": "Mars/Olympus_Mons"})),
            vec!["timezone"],
        ),
        (with(json!({"timezone": "CEST+2"})), vec!["timezone"]),
        (with(json!({"name": "  "})), vec!["name"]),
        (with(json!({"misfire": "sometimes"})), vec!["misfire"]),
        (with(json!({"job": {"kind": "nope"}})), vec!["job.kind"]),
        (
            with(json!({"job": {"kind": "noop", "payload": {"sleep_ms": "soon"}}})),
            vec!["job.payload.sleep_ms"],
        ),
        (
            with(json!({"job": {"kind": "noop", "queue": "nowhere", "priority": 500}})),
            vec!["job.queue", "job.priority"],
        ),
        (
            with(json!({"job": {"kind": "noop", "run_at": "2030-01-01T00:00:00Z"}})),
            vec!["job.run_at"],
        ),
        (
            with(json!({"job": {"kind": "payment.charge",
                "payload": {"account_id": Uuid::now_v7(), "amount_minor": 100, "currency": "EUR"}}})),
            vec!["job.payload.account_id"],
        ),
        (
            with(json!({"cron": "* *", "timezone": "Nowhere", "job": {"kind": "nope"}})),
            vec!["cron", "timezone", "job.kind"],
        ),
        (json!({"name": "x", "job": {"kind": "noop"}}), vec!["cron"]),
        (json!({"name": "x", "cron": "* * * * *"}), vec!["job"]),
    ];
    for (body, fields) in cases {
        let r = app.post_as(&app.token, "/v1/schedules", body.clone()).await;
        let problem = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields, "{body} → {problem:#}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM schedules")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a rejected schedule was stored");

    // A PATCH is checked the same way and changes nothing when rejected.
    let s = create(&app, valid.clone()).await;
    let id = s["id"].as_str().unwrap();
    for (body, field) in [
        (json!({"cron": "1 2 3"}), "cron"),
        (json!({"timezone": "Europe/Atlantis"}), "timezone"),
        (
            json!({"job": {"kind": "noop", "max_attempts": 0}}),
            "job.max_attempts",
        ),
        (json!({"paused": "yes"}), "paused"),
    ] {
        let r = patch_as(&app, &app.token, id, body).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(p["errors"][0]["field"], field, "{p:#}");
    }
    assert_eq!(app.get_json(&format!("/v1/schedules/{id}")).await, s);
    app.stop().await;
}

#[tokio::test]
async fn three_replicas_emit_one_job_per_tick_while_replicas_die() {
    let app = TestApp::spawn().await;
    let doomed = Replica::start(&app, |_| {});
    let leaving = Replica::start(&app, |_| {});
    let survivor = Replica::start(&app, |_| {});
    let schedule = create(&app, per_second("heartbeat")).await;
    let id = schedule["id"].as_str().unwrap();
    let first = at(&schedule["next_run_at"]);

    let seen = wait_for_jobs(&app, id, 2).await.len();
    doomed.kill().await;
    let seen = wait_for_jobs(&app, id, seen + 2).await.len();
    leaving.stop().await;
    wait_for_jobs(&app, id, seen + 3).await;

    let paused = patch(&app, id, json!({"paused": true})).await;
    let jobs = emitted(&app, id).await;
    let ticks = ticks(&jobs);
    assert_eq!(ticks[0], first, "the first tick is the one announced");
    assert_consecutive(&ticks, TimeDelta::seconds(1));
    assert!(ticks.len() >= 7, "{ticks:?}");
    // The pause waited for any round in flight: the last tick it reports is the last emitted.
    assert_eq!(at(&paused["last_tick"]), *ticks.last().unwrap());
    let unique: HashSet<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), jobs.len());

    // Each job is on time: created (DB clock, at emission) right after its tick.
    let mut lags: Vec<f64> = jobs
        .iter()
        .map(|j| (at(&j["created_at"]) - at(&j["tick"])).as_seconds_f64())
        .collect();
    lags.sort_by(f64::total_cmp);
    eprintln!(
        "tick lag over {} ticks (created_at - tick): min {:.3}s, median {:.3}s, max {:.3}s",
        lags.len(),
        lags[0],
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(
        lags[0] >= 0.0,
        "a job was emitted before its tick: {lags:?}"
    );
    assert!(lags[lags.len() - 1] < 2.0, "late ticks: {lags:?}");

    wait_all_succeeded(&app, &jobs).await;
    let metrics = app
        .client
        .get(format!("http://{}/metrics", survivor.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "conveyor_scheduler_ticks_emitted_total",
        "conveyor_scheduler_tick_lag_seconds_bucket",
        "conveyor_scheduler_schedules_active",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    survivor.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn sigkilled_scheduler_processes_lose_no_tick_and_emit_none_twice() {
    let app = TestApp::spawn().await;
    let processes: Vec<SchedulerProcess> = (0..3).map(|_| SchedulerProcess::start(&app)).collect();
    for p in &processes {
        p.wait_ready(&app).await;
    }
    let schedule = create(&app, per_second("killed")).await;
    let id = schedule["id"].as_str().unwrap();
    let mut processes = processes.into_iter();

    let seen = wait_for_jobs(&app, id, 2).await.len();
    processes.next().unwrap().kill9();
    let seen = wait_for_jobs(&app, id, seen + 2).await.len();
    processes.next().unwrap().kill9();
    wait_for_jobs(&app, id, seen + 3).await;
    patch(&app, id, json!({"paused": true})).await;

    let jobs = emitted(&app, id).await;
    let ticks = ticks(&jobs);
    assert_eq!(ticks[0], at(&schedule["next_run_at"]));
    assert_consecutive(&ticks, TimeDelta::seconds(1));
    wait_all_succeeded(&app, &jobs).await;
    drop(processes);
    app.stop().await;
}

#[tokio::test]
async fn a_replica_dying_mid_round_loses_no_tick() {
    replica_stalls_mid_round(Stall::Dies).await;
}

#[tokio::test]
async fn a_replica_freezing_mid_round_loses_its_claim() {
    replica_stalls_mid_round(Stall::Freezes).await;
}

enum Stall {
    /// The process is gone: its connection closes.
    Dies,
    /// The process hangs with its connection up; only the emitter's session setting
    /// (`idle_in_transaction_session_timeout`) gets its locks back.
    Freezes,
}

/// A third replica claims the schedule, writes the job of its pending tick and stalls before
/// committing; the two running replicas must neither emit that tick a second time nor lose it.
async fn replica_stalls_mid_round(stall: Stall) {
    let app = TestApp::spawn().await;
    let a = Replica::start(&app, |_| {});
    let b = Replica::start(&app, |_| {});
    let schedule = create(&app, per_second("held")).await;
    let id = schedule["id"].as_str().unwrap();
    let uuid: Uuid = id.parse().unwrap();
    wait_for_jobs(&app, id, 2).await;

    let options = db_url(&app)
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([(
            "idle_in_transaction_session_timeout",
            conveyor_scheduler::app::ROUND_IDLE_LIMIT,
        )]);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let pending: DateTime<Utc> =
        sqlx::query_scalar("SELECT next_run_at FROM schedules WHERE id = $1 FOR UPDATE")
            .bind(uuid)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant, kind, queue, state, payload, max_attempts, timeout_secs,
                           run_at, schedule_id, tick)
         VALUES ($1, 'default', 'noop', 'default', 'queued', '{}', 25, 60, now(), $2, $3)",
    )
    .bind(Uuid::now_v7())
    .bind(uuid)
    .bind(pending)
    .execute(&mut conn)
    .await
    .unwrap();
    let before = emitted(&app, id).await.len();
    // While it holds the lock, the others leave the schedule alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(emitted(&app, id).await.len(), before);
    match stall {
        Stall::Dies => drop(conn),
        Stall::Freezes => {}
    }

    let jobs = wait_for_jobs(&app, id, before + 5).await;
    let ticks = ticks(&jobs);
    assert_eq!(ticks[0], at(&schedule["next_run_at"]));
    assert_consecutive(&ticks, TimeDelta::seconds(1));
    assert!(ticks.contains(&pending));
    wait_all_succeeded(&app, &jobs).await;
    patch(&app, id, json!({"paused": true})).await;
    a.stop().await;
    b.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn pause_stops_emission_and_resume_continues_without_a_burst() {
    let app = TestApp::spawn().await;
    let a = Replica::start(&app, |_| {});
    let b = Replica::start(&app, |_| {});
    // catch_up, the policy that would burst if a pause counted as missed ticks.
    let schedule = create(
        &app,
        json!({"name": "pausable", "cron": "* * * * * *", "misfire": "catch_up",
               "job": {"kind": "noop"}}),
    )
    .await;
    let id = schedule["id"].as_str().unwrap();
    wait_for_jobs(&app, id, 2).await;

    let paused = patch(&app, id, json!({"paused": true})).await;
    let paused_at = Utc::now();
    assert_eq!(paused["paused"], true);
    assert!(paused["next_run_at"].is_null());
    let at_pause = emitted(&app, id).await;
    // Nothing can show that no tick comes but waiting for a few that would have.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = emitted(&app, id).await;
    assert_eq!(
        still.len(),
        at_pause.len(),
        "a job was emitted while paused"
    );
    assert!(*ticks(&still).last().unwrap() < paused_at);

    let resumed_at = Utc::now();
    let resumed = patch(&app, id, json!({"paused": false})).await;
    assert_eq!(resumed["paused"], false);
    let next = at(&resumed["next_run_at"]);
    // The first tick after the server's clock when it took the PATCH.
    assert!(
        next > resumed_at && next <= Utc::now() + TimeDelta::seconds(1),
        "{next}"
    );
    let jobs = wait_for_jobs(&app, id, at_pause.len() + 3).await;
    let after: Vec<DateTime<Utc>> = ticks(&jobs)
        .into_iter()
        .filter(|t| *t > paused_at)
        .collect();
    assert_eq!(after[0], next, "resuming started somewhere else: {after:?}");
    assert_consecutive(&after, TimeDelta::seconds(1));
    assert!(
        ticks(&jobs)
            .iter()
            .all(|t| *t < paused_at || *t >= resumed_at),
        "a tick of the paused span was emitted"
    );
    patch(&app, id, json!({"paused": true})).await;
    wait_all_succeeded(&app, &emitted(&app, id).await).await;
    a.stop().await;
    b.stop().await;
    app.stop().await;
}

/// What happened after all replicas were down for ten minutes under a minutely schedule.
struct AfterDowntime {
    app: TestApp,
    id: String,
    /// The first missed tick.
    t0: DateTime<Utc>,
    jobs: Vec<Value>,
    /// The schedule once a replica came back and handled it.
    schedule: Value,
}

async fn after_downtime(misfire: &str, catchup_max: usize) -> AfterDowntime {
    let app = TestApp::spawn().await;
    let s = create(
        &app,
        json!({"name": "minutely", "cron": "* * * * *", "misfire": misfire,
               "job": {"kind": "noop"}}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_owned();
    // No replica ran while the schedule's first tick and nine more passed.
    let t0: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE schedules SET next_run_at = date_trunc('minute', now()) - interval '10 minutes'
         WHERE id = $1 RETURNING next_run_at",
    )
    .bind(id.parse::<Uuid>().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let before = Utc::now();
    let replica = Replica::start(&app, |c| c.emitter.catchup_max = catchup_max);
    let schedule = wait_next_run_after(&app, &id, before).await;
    replica.stop().await;
    let jobs = emitted(&app, &id).await;
    wait_all_succeeded(&app, &jobs).await;
    let next = at(&schedule["next_run_at"]);
    assert_eq!(next.timestamp() % 60, 0, "{next}");
    assert!(
        next - before <= TimeDelta::seconds(61),
        "{next} vs {before}"
    );
    assert_eq!(
        schedule["last_tick"].as_str().map(|t| t.parse().unwrap()),
        ticks(&jobs).last().copied()
    );
    AfterDowntime {
        app,
        id,
        t0,
        jobs,
        schedule,
    }
}

/// The minutes from `from` up to the one before `next`.
fn minutes_until(from: DateTime<Utc>, next: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = from;
    while t < next {
        out.push(t);
        t += TimeDelta::minutes(1);
    }
    out
}

#[tokio::test]
async fn misfire_catch_up_emits_every_missed_tick_once() {
    let d = after_downtime("catch_up", 100).await;
    let next = at(&d.schedule["next_run_at"]);
    let expected = minutes_until(d.t0, next);
    assert!(expected.len() >= 11, "{expected:?}");
    assert_eq!(ticks(&d.jobs), expected);

    // Moving next_run_at back again (by hand) cannot emit a tick twice: the unique index on
    // (schedule_id, tick) turns the repeats into no-ops.
    set_next_run_at(&d.app, &d.id, d.t0).await;
    let before = Utc::now();
    let replica = Replica::start(&d.app, |_| {});
    let again = wait_next_run_after(&d.app, &d.id, before).await;
    replica.stop().await;
    let jobs = emitted(&d.app, &d.id).await;
    assert_eq!(ticks(&jobs), minutes_until(d.t0, at(&again["next_run_at"])));
    for old in &d.jobs {
        assert!(jobs.iter().any(|j| j["id"] == old["id"]), "{old:#}");
    }
    d.app.stop().await;
}

#[tokio::test]
async fn misfire_catch_up_is_capped_to_the_most_recent_ticks() {
    let d = after_downtime("catch_up", 4).await;
    let next = at(&d.schedule["next_run_at"]);
    let expected: Vec<DateTime<Utc>> = (1..=4)
        .rev()
        .map(|m| next - TimeDelta::minutes(m))
        .collect();
    assert_eq!(ticks(&d.jobs), expected);
    d.app.stop().await;
}

#[tokio::test]
async fn misfire_run_once_emits_one_job_for_the_missed_span() {
    let d = after_downtime("run_once", 100).await;
    let next = at(&d.schedule["next_run_at"]);
    assert_eq!(ticks(&d.jobs), [next - TimeDelta::minutes(1)]);
    d.app.stop().await;
}

#[tokio::test]
async fn misfire_skip_resumes_at_the_next_future_tick() {
    let d = after_downtime("skip", 100).await;
    // Only a tick within the 5 s grace of the replica's return may run (one at most: ticks are
    // a minute apart); the ten minutes before are dropped.
    assert!(d.jobs.len() <= 1, "{:#?}", d.jobs);
    for job in &d.jobs {
        // created_at is the emitting transaction's start, a moment after the replica's clock.
        let lag = at(&job["created_at"]) - at(&job["tick"]);
        assert!(lag <= TimeDelta::milliseconds(5500), "{job:#}");
        assert!(at(&job["tick"]) > d.t0 + TimeDelta::minutes(9));
    }
    d.app.stop().await;
}

#[tokio::test]
async fn ticks_across_dst_changes_match_hand_computed_instants() {
    let app = TestApp::spawn().await;
    // 01:00 and 01:30 New York on 2 November. On 2025-11-02 clocks go back at 02:00 EDT, so
    // both happen twice; on 2026-11-02 it is EST; on 2027-11-02 and 2028-11-02 still EDT
    // (those years fall back on 7 and 5 November).
    let new_york = create(
        &app,
        json!({"name": "ny", "cron": "*/30 1 2 11 *", "timezone": "America/New_York",
               "misfire": "catch_up", "job": {"kind": "noop"}}),
    )
    .await;
    let ny_instants = [
        "2025-11-02T05:00:00Z", // 01:00 EDT
        "2025-11-02T05:30:00Z", // 01:30 EDT
        "2025-11-02T06:00:00Z", // 01:00 EST, the repeat
        "2025-11-02T06:30:00Z", // 01:30 EST, the repeat
        "2026-11-02T06:00:00Z", // 01:00 EST
        "2026-11-02T06:30:00Z",
        "2027-11-02T05:00:00Z", // 01:00 EDT
        "2027-11-02T05:30:00Z",
        "2028-11-02T05:00:00Z",
        "2028-11-02T05:30:00Z",
    ];
    // 02:30 Berlin on 29 March: a Saturday in 2025 (CET); the spring-forward Sunday in 2026,
    // when 02:30 does not exist and the job runs right after the gap, at 03:00 CEST; CEST in
    // 2027 and 2028 (clocks went forward on 28 and 26 March).
    let berlin = create(
        &app,
        json!({"name": "berlin", "cron": "30 2 29 3 *", "timezone": "Europe/Berlin",
               "misfire": "catch_up", "job": {"kind": "noop"}}),
    )
    .await;
    let berlin_instants = [
        "2025-03-29T01:30:00Z", // 02:30 CET
        "2026-03-29T01:00:00Z", // 03:00 CEST, right after the gap
        "2027-03-29T00:30:00Z", // 02:30 CEST
        "2028-03-29T00:30:00Z",
    ];
    let ids = [
        new_york["id"].as_str().unwrap(),
        berlin["id"].as_str().unwrap(),
    ];
    // Down since the start of 2025: catch-up replays every tick since, in real time order.
    for id in ids {
        set_next_run_at(&app, id, utc("2025-01-01T00:00:00Z")).await;
    }
    let now = Utc::now();
    let replica = Replica::start(&app, |_| {});
    for (id, instants) in [(ids[0], &ny_instants[..]), (ids[1], &berlin_instants[..])] {
        let schedule = wait_next_run_after(&app, id, now).await;
        let instants: Vec<DateTime<Utc>> = instants.iter().map(|s| utc(s)).collect();
        let (past, future): (Vec<_>, Vec<_>) = instants.into_iter().partition(|t| *t <= now);
        let jobs = emitted(&app, id).await;
        assert_eq!(ticks(&jobs), past, "schedule {id}");
        assert_eq!(at(&schedule["next_run_at"]), future[0], "schedule {id}");
        wait_all_succeeded(&app, &jobs).await;
    }
    replica.stop().await;
    app.stop().await;
}
