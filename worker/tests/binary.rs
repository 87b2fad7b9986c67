//! The real `conveyor-worker` binary: runs a job, exports its metrics, answers `healthcheck`,
//! and exits 0 on SIGTERM.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use conveyor_shared::{
    Job, JobState,
    config::{BrokerConfig, DatabaseConfig},
    db,
    enqueue::{self, EnqueueRequest, Limits},
    health::Health,
    relay::{Relay, RelayConfig},
};
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

async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the child if the test fails before stopping it, so no worker outlives the test.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_worker_binary_runs_jobs_reports_metrics_and_stops_cleanly() {
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("conveyor_test_{id}");
    let database = DatabaseConfig::with_url(format!("{PG}/{db_name}"));
    let broker = BrokerConfig::with_url(AMQP, format!("test-{id}"));
    let pool = db::connect_and_migrate(&database)
        .await
        .expect("Postgres must run on 127.0.0.1:5432 (scripts/ensure-services.sh)");
    let queues = vec!["default".to_owned()];

    // The relay normally runs in the api; here it runs in the test.
    let stop_relay = CancellationToken::new();
    let relay = Relay {
        pool: pool.clone(),
        broker: broker.clone(),
        queues: queues.clone(),
        config: RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
        health: Health::new(pool.clone()),
    };
    let relay = tokio::spawn(relay.run(stop_relay.clone()));

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = Command::new(env!("CARGO_BIN_EXE_conveyor-worker"))
        .env("DATABASE_URL", format!("{PG}/{db_name}"))
        .env("AMQP_URL", AMQP)
        .env("CONVEYOR_QUEUE_PREFIX", format!("test-{id}"))
        .env("CONVEYOR_QUEUES", "default")
        .env("CONVEYOR_WORKER_ADDR", &addr)
        .env("CONVEYOR_WORKER_ID", "binary-test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = Reaped(Some(worker));

    let healthcheck = || {
        Command::new(env!("CARGO_BIN_EXE_conveyor-worker"))
            .arg("healthcheck")
            .env("CONVEYOR_WORKER_ADDR", &addr)
            .status()
            .unwrap()
            .success()
    };
    until("the worker's healthcheck to pass", async || healthcheck()).await;

    let limits = Limits {
        queues,
        max_batch: 10,
    };
    let req: EnqueueRequest = serde_json::from_value(serde_json::json!({"kind": "noop"})).unwrap();
    let job = req.validate(&limits, "", chrono::Utc::now()).unwrap();
    let job_id = job.id;
    enqueue::enqueue(&pool, "default", vec![job], None)
        .await
        .unwrap();
    until("the job to succeed", async || {
        let job = Job::get(&pool, "default", job_id).await.unwrap().unwrap();
        job.state == JobState::Succeeded
    })
    .await;
    let job = Job::get(&pool, "default", job_id).await.unwrap().unwrap();
    assert_eq!(job.attempts_log.unwrap()[0].worker, "binary-test");

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
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

    let mut child = worker.0.take().unwrap();
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "worker exited with {status} after SIGTERM"
    );
    assert!(
        !healthcheck(),
        "healthcheck must fail once the worker is gone"
    );

    stop_relay.cancel();
    relay.await.unwrap();
    pool.close().await;
    let admin = sqlx::PgPool::connect(&format!("{PG}/postgres"))
        .await
        .unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{db_name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    if let Ok(conn) = lapin::Connection::connect(AMQP, Default::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        let _ = ch
            .queue_delete(format!("test-{id}.default").into(), Default::default())
            .await;
    }
}
