//! The real `conveyor-worker` binary: runs jobs, exports its metrics, answers `healthcheck`,
//! shuts down gracefully on SIGTERM, and a SIGKILLed worker's job is recovered by another.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use conveyor_shared::{
    Job, JobId, JobState,
    config::{BrokerConfig, DatabaseConfig},
    db,
    enqueue::{self, EnqueueRequest, Limits},
    health::Health,
    relay::{Relay, RelayConfig, RelayWaker},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A database, queues and a relay (the api's part) for worker processes to work against.
struct Fixture {
    id: String,
    pool: PgPool,
    waker: RelayWaker,
    stop_relay: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn new() -> Self {
        conveyor_worker::tls::install();
        let id = Uuid::new_v4().simple().to_string();
        let database = DatabaseConfig::with_url(format!("{PG}/conveyor_test_{id}"));
        let pool = db::connect_and_migrate(&database)
            .await
            .expect("Postgres must run on 127.0.0.1:5432 (scripts/ensure-services.sh)");
        let stop_relay = CancellationToken::new();
        let relay = Relay {
            pool: pool.clone(),
            broker: BrokerConfig::with_url(AMQP, format!("test-{id}")),
            queues: vec!["default".to_owned()],
            config: RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..Default::default()
            },
            health: Health::new(pool.clone()),
            waker: RelayWaker::default(),
        };
        let waker = relay.waker.clone();
        let relay = tokio::spawn(relay.run(stop_relay.clone()));
        Self {
            id,
            pool,
            waker,
            stop_relay,
            relay,
        }
    }

    /// Starts a worker process named `name`; `env` overrides its settings.
    fn worker(&self, name: &str, env: &[(&str, &str)]) -> Worker {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor-worker"));
        cmd.env("DATABASE_URL", format!("{PG}/conveyor_test_{}", self.id))
            .env("AMQP_URL", AMQP)
            .env("CONVEYOR_QUEUE_PREFIX", format!("test-{}", self.id))
            .env("CONVEYOR_QUEUES", "default")
            .env("CONVEYOR_WORKER_ADDR", &addr)
            .env("CONVEYOR_WORKER_ID", name)
            .env("CONVEYOR_LEASE_SECS", "2")
            .env("CONVEYOR_REAPER_INTERVAL_MS", "200")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Worker {
            child: Some(cmd.spawn().unwrap()),
            addr,
        }
    }

    async fn enqueue(&self, body: serde_json::Value) -> JobId {
        let limits = Limits {
            queues: vec!["default".to_owned()],
            max_batch: 10,
            max_payload_bytes: conveyor_shared::enqueue::DEFAULT_MAX_PAYLOAD_BYTES,
        };
        let req: EnqueueRequest = serde_json::from_value(body).unwrap();
        let job = req.validate(&limits, "", chrono::Utc::now()).unwrap();
        let id = job.id;
        enqueue::enqueue(&self.pool, &self.waker, "default", vec![job], None)
            .await
            .unwrap();
        id
    }

    async fn job(&self, id: JobId) -> Job {
        Job::get(&self.pool, "default", id).await.unwrap().unwrap()
    }

    async fn wait_for(&self, id: JobId, state: JobState, within: Duration) -> Job {
        until(&format!("job {id} to be {state}"), within, async || {
            self.job(id).await.state == state
        })
        .await;
        self.job(id).await
    }

    async fn drop_all(self) {
        self.stop_relay.cancel();
        self.relay.await.unwrap();
        self.pool.close().await;
        let admin = PgPool::connect(&format!("{PG}/postgres")).await.unwrap();
        let sql = format!("DROP DATABASE \"conveyor_test_{}\" WITH (FORCE)", self.id);
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
        if let Ok(conn) = lapin::Connection::connect(AMQP, Default::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in ["default", "dead-letter"] {
                let _ = ch
                    .queue_delete(format!("test-{}.{q}", self.id).into(), Default::default())
                    .await;
            }
        }
    }
}

/// A worker process; killed if a test fails before stopping it.
struct Worker {
    child: Option<Child>,
    addr: String,
}

impl Worker {
    fn healthcheck(&self) -> bool {
        Command::new(env!("CARGO_BIN_EXE_conveyor-worker"))
            .arg("healthcheck")
            .env("CONVEYOR_WORKER_ADDR", &self.addr)
            .status()
            .unwrap()
            .success()
    }

    async fn ready(&self) {
        until(
            "the worker's healthcheck to pass",
            Duration::from_secs(20),
            async || self.healthcheck(),
        )
        .await;
    }

    /// Sends SIGTERM and returns the exit status and how long the worker took to exit.
    async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let started = std::time::Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        (status, started.elapsed())
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn the_worker_binary_runs_jobs_reports_metrics_and_stops_cleanly() {
    let fx = Fixture::new().await;
    let mut worker = fx.worker("binary-test", &[]);
    worker.ready().await;

    let id = fx.enqueue(serde_json::json!({"kind": "noop"})).await;
    let job = fx
        .wait_for(id, JobState::Succeeded, Duration::from_secs(20))
        .await;
    assert_eq!(job.attempts_log.unwrap()[0].worker, "binary-test");

    let metrics = reqwest::get(format!("http://{}/metrics", worker.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "conveyor_jobs_started_total",
        "conveyor_jobs_finished_total",
        "conveyor_job_duration_seconds",
        "conveyor_broker_connected 1",
    ] {
        assert!(
            metrics.contains(name),
            "worker /metrics lacks {name}:\n{metrics}"
        );
    }

    let (status, _) = worker.terminate().await;
    assert!(
        status.success(),
        "worker exited with {status} after SIGTERM"
    );
    assert!(
        !worker.healthcheck(),
        "healthcheck must fail once the worker is gone"
    );
    fx.drop_all().await;
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_within_the_grace_period() {
    let fx = Fixture::new().await;
    let mut worker = fx.worker("graceful", &[("CONVEYOR_SHUTDOWN_GRACE_SECS", "10")]);
    worker.ready().await;
    let id = fx
        .enqueue(serde_json::json!({"kind": "noop", "payload": {"sleep_ms": 1500}}))
        .await;
    fx.wait_for(id, JobState::Running, Duration::from_secs(20))
        .await;

    let (status, took) = worker.terminate().await;
    assert!(status.success(), "worker exited with {status}");
    assert!(
        took >= Duration::from_millis(500),
        "the worker did not wait for its job ({took:?})"
    );
    let job = fx.job(id).await;
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "the in-flight job should finish before exit"
    );
    assert_eq!(job.attempts, 1);
    fx.drop_all().await;
}

#[tokio::test]
async fn a_job_outliving_the_grace_period_is_left_to_another_worker() {
    let fx = Fixture::new().await;
    let mut first = fx.worker("impatient", &[("CONVEYOR_SHUTDOWN_GRACE_SECS", "1")]);
    first.ready().await;
    let id = fx
        .enqueue(serde_json::json!({"kind": "noop", "payload": {"sleep_ms": 4000}}))
        .await;
    fx.wait_for(id, JobState::Running, Duration::from_secs(20))
        .await;

    let (status, took) = first.terminate().await;
    assert!(status.success(), "worker exited with {status}");
    assert!(
        took < Duration::from_secs(4),
        "the grace period was not enforced ({took:?})"
    );

    let second = fx.worker("successor", &[]);
    second.ready().await;
    let job = fx
        .wait_for(id, JobState::Succeeded, Duration::from_secs(30))
        .await;
    let log = job.attempts_log.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].worker.as_str(), log[0].outcome.as_deref()),
        ("impatient", Some("lost"))
    );
    assert_eq!(
        (log[1].worker.as_str(), log[1].outcome.as_deref()),
        ("successor", Some("succeeded"))
    );
    drop(second);
    fx.drop_all().await;
}

#[tokio::test]
async fn a_sigkilled_workers_job_is_recovered_by_another_worker() {
    let fx = Fixture::new().await;
    let mut doomed = fx.worker("doomed", &[]);
    let survivor = fx.worker("survivor", &[]);
    doomed.ready().await;
    survivor.ready().await;
    // Enqueue until one lands on the doomed worker.
    let mut ids = Vec::new();
    until(
        "a job to run on the doomed worker",
        Duration::from_secs(20),
        async || {
            ids.push(
                fx.enqueue(serde_json::json!({"kind": "noop", "payload": {"sleep_ms": 3000}}))
                    .await,
            );
            let on_doomed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job_leases WHERE worker = 'doomed'")
                    .fetch_one(&fx.pool)
                    .await
                    .unwrap();
            on_doomed > 0
        },
    )
    .await;
    doomed.kill9();
    for id in &ids {
        let job = fx
            .wait_for(*id, JobState::Succeeded, Duration::from_secs(30))
            .await;
        let successes = job
            .attempts_log
            .unwrap()
            .iter()
            .filter(|a| a.outcome.as_deref() == Some("succeeded"))
            .count();
        assert_eq!(successes, 1, "job {id} succeeded {successes} times");
    }
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_attempts WHERE worker = 'doomed' AND outcome = 'lost'",
    )
    .fetch_one(&fx.pool)
    .await
    .unwrap();
    assert!(
        lost >= 1,
        "the killed worker's attempt should be recorded as lost"
    );
    drop(survivor);
    fx.drop_all().await;
}
