//! The fault suite. Apps keep enqueueing over HTTP while workers are SIGKILLed mid-job,
//! RabbitMQ is stopped and started, and Postgres is restarted. Afterwards every job that was
//! answered 201 must have succeeded, and no job may have two successful attempts.
//!
//! This binary restarts the machine's real PostgreSQL and RabbitMQ (it needs the rights to run
//! `rabbitmqctl` and `pg_ctlcluster`), so it holds a single test; cargo runs test binaries one
//! after another, so nothing else is running when it does. Workers are separate processes: this
//! same test binary, re-executed to run the ignored `worker_process` entry point.

mod support;

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;
use tokio_util::sync::CancellationToken;

/// Not a test: the body of a worker process the chaos test starts and kills. Its whole
/// configuration comes from the environment, as for the real binary.
#[tokio::test]
#[ignore = "entry point for worker processes started by the chaos test"]
async fn worker_process() {
    conveyor_shared::telemetry::init_logging();
    let config = conveyor_worker::Config::from_env().expect("worker config");
    conveyor_worker::run(config, conveyor_shared::shutdown::on_signal())
        .await
        .expect("worker failed");
}

struct Worker {
    name: String,
    /// Its probe server, for /readyz.
    addr: String,
    child: Child,
}

fn start_worker(app: &TestApp, name: &str, payment_url: &str) -> Worker {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "worker_process", "--nocapture"])
        .env(
            "DATABASE_URL",
            format!("{}/{}", support::PG_SERVER, app.db_name),
        )
        .env("AMQP_URL", support::amqp_url())
        .env("CONVEYOR_QUEUE_PREFIX", &app.broker.queue_prefix)
        .env("CONVEYOR_WORKER_ID", name)
        .env("CONVEYOR_PAYMENT_URL", payment_url)
        .env("CONVEYOR_WORKER_ADDR", &addr)
        .env("CONVEYOR_WORKER_CONCURRENCY", "16")
        .env("CONVEYOR_LEASE_SECS", "2")
        .env("CONVEYOR_REAPER_INTERVAL_MS", "500")
        .env("CONVEYOR_RETRY_BASE_MS", "50")
        .env("CONVEYOR_RETRY_MAX_MS", "1000")
        .env("CONVEYOR_RECONNECT_MAX_MS", "1000")
        .env(
            "RUST_LOG",
            "error,conveyor_worker::lease=warn,conveyor_worker::consumer=warn",
        )
        .env("CONVEYOR_LOG_FORMAT", "pretty")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a worker process");
    Worker {
        name: name.into(),
        addr,
        child,
    }
}

impl Worker {
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

fn pg_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("the chaos suite restarts a Debian PostgreSQL cluster (/etc/postgresql)")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL cluster")
}

/// Whatever happens to the test, the services come back up for whoever runs next.
struct ServicesRestored;

impl Drop for ServicesRestored {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .arg("start_app")
            .stdout(Stdio::null())
            .status();
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &pg_version(), "main", "start"])
            .status();
    }
}

/// Enqueues until `stop`: single jobs and small batches, some failing once. Returns the ids
/// answered 201 and how many requests were refused or failed.
async fn enqueue_until(
    app: Arc<TestApp>,
    stop: CancellationToken,
    accepted: Arc<Mutex<Vec<String>>>,
    wallets: Arc<Vec<String>>,
) -> usize {
    let mut refused = 0;
    let mut i = 0u64;
    while !stop.is_cancelled() {
        i += 1;
        let job = |n: u64| {
            if n.is_multiple_of(4) {
                // A quarter are payments: they must charge and book exactly once.
                let wallet = &wallets[(n / 4) as usize % wallets.len()];
                let amount = 100 + (n % 50) as i64;
                return json!({"kind": "payment.charge",
                    "payload": {"account_id": wallet, "amount_minor": amount, "currency": "EUR"}});
            }
            let sleep = rand::rng().random_range(0..150);
            let fail_times = if n.is_multiple_of(7) { 1 } else { 0 };
            json!({"kind": "noop", "payload": {"sleep_ms": sleep, "fail_times": fail_times}})
        };
        let (path, body) = if i.is_multiple_of(5) {
            (
                "/v1/jobs/batch",
                json!({"jobs": (0..10).map(|k| job(i * 100 + k)).collect::<Vec<_>>()}),
            )
        } else {
            ("/v1/jobs", job(i))
        };
        let sent = app
            .client
            .post(app.url(path))
            .bearer_auth(&app.token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::CREATED => {
                let v: Value = r.json().await.unwrap();
                let mut ids = accepted.lock().unwrap();
                match v["jobs"].as_array() {
                    Some(jobs) => {
                        ids.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()))
                    }
                    None => ids.push(v["id"].as_str().unwrap().to_owned()),
                }
            }
            // During the Postgres restart the api answers 500 (nothing stored); that is allowed.
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    refused
}

async fn count_running(app: &TestApp, worker: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_leases WHERE worker = $1")
        .bind(worker)
        .fetch_one(&app.pool)
        .await
        .unwrap_or(0)
}

/// Waits until `url` answers `status` (readiness going false, then true again).
async fn wait_status(app: &TestApp, url: &str, status: StatusCode) {
    let seen = support::eventually(Duration::from_secs(30), || async {
        let r = app.client.get(url).send().await.ok()?;
        (r.status() == status).then_some(())
    })
    .await;
    assert!(seen.is_some(), "{url} never answered {status}");
}

/// Waits until `worker` is running at least one job, so that killing it loses work.
async fn wait_busy(app: &TestApp, worker: &str) {
    let busy = support::eventually(Duration::from_secs(20), || async {
        (count_running(app, worker).await > 0).then_some(())
    })
    .await;
    assert!(busy.is_some(), "{worker} never picked up a job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_or_run_twice_through_crashes_and_restarts() {
    let _restore = ServicesRestored;
    let pg = pg_version();
    let app = Arc::new(TestApp::without_worker().await);
    // The payment provider fails a fifth of its calls on top of everything else.
    let sandbox = conveyor_sandbox::Application::bind(&conveyor_sandbox::Config {
        faults: conveyor_sandbox::FaultConfig {
            failure_rate: 0.2,
            ..Default::default()
        },
        ..conveyor_sandbox::Config::for_tests()
    })
    .await
    .unwrap();
    let payment_url = format!("http://{}", sandbox.local_addr().unwrap());
    let stop_sandbox = CancellationToken::new();
    tokio::spawn(sandbox.run_until_stopped(stop_sandbox.clone().cancelled_owned()));
    let mut wallets = Vec::new();
    for name in ["w1", "w2", "w3", "w4", "w5"] {
        let r = app
            .post_as(
                &app.token,
                "/v1/accounts",
                json!({"name": name, "currency": "EUR"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        wallets.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let wallets = Arc::new(wallets);
    let mut workers = vec![
        start_worker(&app, "chaos-w1", &payment_url),
        start_worker(&app, "chaos-w2", &payment_url),
    ];

    let stop = CancellationToken::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let enqueuer = tokio::spawn(enqueue_until(
        app.clone(),
        stop.clone(),
        accepted.clone(),
        wallets.clone(),
    ));
    let mut faults = Vec::new();
    let started = Instant::now();

    // 1. A worker dies mid-job (SIGKILL): its jobs come back through lease expiry.
    wait_busy(&app, "chaos-w1").await;
    let w1 = workers.remove(0);
    let lost_with_w1 = count_running(&app, &w1.name).await;
    w1.kill9();
    faults.push(format!("SIGKILL chaos-w1 with {lost_with_w1} jobs running"));
    workers.push(start_worker(&app, "chaos-w3", &payment_url));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. RabbitMQ goes away for a few seconds while apps keep enqueueing.
    // Readiness goes false while it is away and true once everyone has reconnected.
    let probes: Vec<String> = std::iter::once(app.url("/readyz"))
        .chain(workers.iter().map(|w| format!("http://{}/readyz", w.addr)))
        .collect();
    for url in &probes {
        wait_status(&app, url, StatusCode::OK).await;
    }
    run("rabbitmqctl", &["stop_app"]);
    let broker_down = Instant::now();
    for url in &probes {
        wait_status(&app, url, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(broker_down.elapsed())).await;
    run("rabbitmqctl", &["start_app"]);
    let broker_up = Instant::now();
    for url in &probes {
        wait_status(&app, url, StatusCode::OK).await;
    }
    faults.push(format!(
        "RabbitMQ stopped for {:.1} s (api and workers ready again {:.1} s after it started)",
        (broker_up - broker_down).as_secs_f64(),
        broker_up.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. Postgres restarts (every connection of every process is cut).
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &pg,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    );
    faults.push("PostgreSQL restarted".into());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 4. Another worker dies mid-job.
    wait_busy(&app, "chaos-w2").await;
    let w2 = workers.remove(0);
    let lost_with_w2 = count_running(&app, &w2.name).await;
    w2.kill9();
    faults.push(format!("SIGKILL chaos-w2 with {lost_with_w2} jobs running"));
    workers.push(start_worker(&app, "chaos-w4", &payment_url));
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.cancel();
    let refused = enqueuer.await.unwrap();
    let last_fault = Instant::now();
    let ids: Vec<String> = accepted.lock().unwrap().clone();
    assert!(
        ids.len() >= 300,
        "only {} jobs were accepted; the suite needs a few hundred",
        ids.len()
    );

    // Every accepted job ends succeeded.
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "the api returned a job id twice");
    let deadline = Instant::now() + Duration::from_secs(120);
    let pending = loop {
        let pending: Vec<(String, String)> = sqlx::query_as(
            "SELECT id::text, state::text FROM jobs WHERE id::text = ANY($1) AND state <> 'succeeded'",
        )
        .bind(&ids)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if pending.is_empty() || Instant::now() > deadline {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovered_in = last_fault.elapsed();
    if !pending.is_empty() {
        // Say what the database is doing, for whoever has to find out why.
        // pid, blocked by, database, state, wait event, query
        type Activity = (
            i32,
            Vec<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let activity: Vec<Activity> = sqlx::query_as(
            "SELECT pid, pg_blocking_pids(pid), datname::text, state, wait_event, left(query, 100)
             FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap_or_default();
        for row in activity {
            eprintln!("chaos: pg_stat_activity {row:?}");
        }
    }
    assert!(
        pending.is_empty(),
        "{} accepted jobs did not succeed: {:?}",
        pending.len(),
        &pending[..pending.len().min(10)]
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id::text = ANY($1)")
        .bind(&ids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored as usize,
        ids.len(),
        "an accepted job is missing from Postgres"
    );

    // No job succeeded twice, and none is left with an open attempt.
    let doubled: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id::text, count(*) FROM job_attempts WHERE outcome = 'succeeded'
         GROUP BY job_id HAVING count(*) > 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        doubled.is_empty(),
        "jobs with two successful attempts: {doubled:?}"
    );
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id
         WHERE a.finished_at IS NULL AND j.state = 'succeeded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(open, 0, "succeeded jobs with an attempt still open");
    let lost: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE outcome = 'lost'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        lost > 0,
        "killing busy workers should have produced lost attempts"
    );

    // Money: each balance is exactly the sum of its charges, and the provider saw one charge
    // per charge job.
    let drift: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.id::text, a.balance_minor,
                coalesce(sum((j.payload->>'amount_minor')::int8), 0)::int8
         FROM accounts a
         LEFT JOIN jobs j ON j.kind = 'payment.charge' AND j.state = 'succeeded'
                         AND (j.payload->>'account_id')::uuid = a.id
         WHERE a.kind = 'customer' GROUP BY a.id
         HAVING a.balance_minor <> coalesce(sum((j.payload->>'amount_minor')::int8), 0)",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        drift.is_empty(),
        "balances differ from the sum of their charges: {drift:?}"
    );
    let charge_jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'payment.charge'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let provider: Value = reqwest::get(format!("{payment_url}/payments/v1/charges"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let references: HashSet<&str> = provider["charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        provider["charges"].as_array().unwrap().len() as i64,
        charge_jobs,
        "one provider charge per charge job"
    );
    assert_eq!(references.len() as i64, charge_jobs);
    stop_sandbox.cancel();

    // The numbers for the record (printed with --nocapture).
    println!(
        "chaos: {} jobs accepted ({charge_jobs} payment charges), {refused} requests refused during faults",
        ids.len()
    );
    println!("chaos: faults: {}", faults.join("; "));
    println!("chaos: {lost} attempts lost and re-run, 0 jobs lost, 0 duplicated successes");
    println!(
        "chaos: all jobs succeeded {:.1} s after the last fault ({:.1} s in all)",
        recovered_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(workers);
    Arc::try_unwrap(app)
        .ok()
        .expect("no other owner")
        .stop()
        .await;
}
