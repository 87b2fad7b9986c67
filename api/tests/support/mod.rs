//! `TestApp`: a real api (with its relay) and a real worker, on random ports, against a fresh
//! Postgres database and uniquely named RabbitMQ queues, so tests run in parallel in isolation.
//!
//! Postgres and RabbitMQ must be running (`scripts/ensure-services.sh`); when they are not,
//! tests fail at once with a message that says so.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod proxy;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use conveyor_api::{Application, Config as ApiConfig};
use conveyor_shared::{
    config::{BrokerConfig, CaCertificates, DatabaseConfig},
    keys::{ApiKey, Scope},
    relay::RelayConfig,
};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn pg_server() -> String {
    std::env::var("CONVEYOR_TEST_PG").unwrap_or_else(|_| PG_SERVER.into())
}

pub fn amqp_url() -> String {
    std::env::var("CONVEYOR_TEST_AMQP").unwrap_or_else(|_| AMQP_URL.into())
}

/// A change to the test worker's configuration.
pub type ConfigureWorker = Arc<dyn Fn(&mut conveyor_worker::Config) + Send + Sync>;

/// Options for [`TestApp::spawn_with`].
#[derive(Clone)]
pub struct Options {
    /// Start a worker next to the api.
    pub worker: bool,
    /// The AMQP URL the api's relay uses (e.g. through a cuttable proxy).
    pub api_amqp_url: Option<String>,
    /// The AMQP URL of the api and the worker, and the roots they trust for `amqps://`;
    /// the plain local broker by default.
    pub amqp: Option<(String, Option<CaCertificates>)>,
    /// Appended to the database URL of the api and the worker, e.g. `?sslmode=require`.
    pub database_params: String,
    /// Adjusts the in-process worker's configuration (service URLs, secrets, limits).
    pub configure_worker: Option<ConfigureWorker>,
    /// The api's per-key (requests per second, burst); 0 disables. Off by default: tests send
    /// bursts that are not what they test.
    pub rate_limit: (u32, u32),
    pub request_timeout: Duration,
    pub max_payload_bytes: usize,
    /// Failed authentications per address (per second, burst); 0 disables. Off by default:
    /// the auth tests send many bad tokens on purpose.
    pub auth_fail_limit: (u32, u32),
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// The relay's `republish_after`: how long a published job may stay `queued` (with its
    /// RabbitMQ queue empty) before it is published again.
    pub republish_after: Duration,
    /// The relay's poll interval (50 ms by default, so tests not about waking run fast).
    pub relay_poll: Duration,
    /// Whether the api runs a relay of its own.
    pub run_relay: bool,
    /// How long token lookups are cached (the production default unless a test changes
    /// keys behind the api's back, by hand in SQL).
    pub auth_cache_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            api_amqp_url: None,
            amqp: None,
            database_params: String::new(),
            configure_worker: None,
            rate_limit: (0, 0),
            request_timeout: conveyor_api::config::DEFAULT_REQUEST_TIMEOUT,
            max_payload_bytes: conveyor_shared::enqueue::DEFAULT_MAX_PAYLOAD_BYTES,
            auth_fail_limit: (0, 0),
            max_connections: conveyor_api::config::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: conveyor_api::config::DEFAULT_HEADER_READ_TIMEOUT,
            republish_after: RelayConfig::default().republish_after,
            relay_poll: Duration::from_millis(50),
            run_relay: true,
            auth_cache_ttl: conveyor_api::config::DEFAULT_AUTH_CACHE_TTL,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub worker_addr: Option<SocketAddr>,
    pub pool: PgPool,
    /// An admin token of tenant `default`.
    pub token: String,
    pub client: reqwest::Client,
    pub db_name: String,
    pub broker: BrokerConfig,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// An api and its relay, no worker: jobs wait in RabbitMQ (or are claimed by the test).
    pub async fn without_worker() -> Self {
        Self::spawn_with(Options {
            worker: false,
            ..Default::default()
        })
        .await
    }

    /// An api alone, without a worker or a relay: what is in the tables and the queues is the
    /// test's to put there and to move.
    pub async fn without_worker_or_relay() -> Self {
        Self::spawn_with(Options {
            worker: false,
            run_relay: false,
            ..Default::default()
        })
        .await
    }

    pub async fn spawn_with(options: Options) -> Self {
        init_test_logging();
        conveyor_worker::tls::install();
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("conveyor_test_{id}");
        let database = DatabaseConfig::with_url(format!(
            "{}/{db_name}{}",
            pg_server(),
            options.database_params
        ));
        let (broker_url, ca) = options.amqp.clone().unwrap_or_else(|| (amqp_url(), None));
        let broker = BrokerConfig {
            ca,
            ..BrokerConfig::with_url(broker_url, format!("test-{id}"))
        };
        let token = format!("cvy_test_{id}");
        let queues = vec![
            "default".to_owned(),
            "transactions".to_owned(),
            "integrations".to_owned(),
        ];
        let config = ApiConfig {
            database: database.clone(),
            broker: BrokerConfig {
                url: options
                    .api_amqp_url
                    .clone()
                    .map(Into::into)
                    .unwrap_or_else(|| broker.url.clone()),
                ..broker.clone()
            },
            addr: "127.0.0.1:0".parse().unwrap(),
            queues: queues.clone(),
            bootstrap_token: Some(token.clone().into()),
            relay: RelayConfig {
                poll_interval: options.relay_poll,
                republish_after: options.republish_after,
                ..Default::default()
            },
            max_body_bytes: 1024 * 1024,
            max_batch_body_bytes: 16 * 1024 * 1024,
            max_batch_jobs: 1000,
            max_payload_bytes: options.max_payload_bytes,
            rate_limit_rps: options.rate_limit.0,
            rate_limit_burst: options.rate_limit.1,
            request_timeout: options.request_timeout,
            auth_fail_rps: options.auth_fail_limit.0,
            auth_fail_burst: options.auth_fail_limit.1,
            max_connections: options.max_connections,
            header_read_timeout: options.header_read_timeout,
            auth_cache_ttl: options.auth_cache_ttl,
            run_relay: options.run_relay,
        };
        let app = Application::build(config).await.unwrap_or_else(|e| {
            panic!(
                "cannot start the api against Postgres at {}: {e:#}\n\
                 Is Postgres running? Start it with scripts/ensure-services.sh",
                pg_server()
            )
        });
        assert_broker_reachable().await;
        let addr = app.local_addr();
        let pool = app.pool.clone();
        let shutdown = CancellationToken::new();
        let mut tasks = vec![tokio::spawn({
            let shutdown = shutdown.clone();
            async move { app.run_until_stopped(shutdown).await.expect("api failed") }
        })];
        let mut worker_addr = None;
        if options.worker {
            let mut wconfig =
                worker_config(&db_name, &broker, &format!("test-worker-{}", &id[..8]));
            wconfig.database = database.clone();
            if let Some(configure) = &options.configure_worker {
                configure(&mut wconfig);
            }
            worker_addr = Some(wconfig.addr);
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                conveyor_worker::run(wconfig, shutdown)
                    .await
                    .expect("worker failed")
            }));
        }
        let app = Self {
            addr,
            worker_addr,
            pool,
            token,
            client: reqwest::Client::new(),
            db_name,
            broker,
            shutdown,
            tasks,
        };
        app.wait_ready().await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until the api (and worker) report ready: both reached Postgres and RabbitMQ.
    pub async fn wait_ready(&self) {
        let mut urls = vec![self.url("/readyz")];
        if let Some(w) = self.worker_addr {
            urls.push(format!("http://{w}/readyz"));
        }
        for url in urls {
            eventually(Duration::from_secs(20), || async {
                match self.client.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => Some(()),
                    _ => None,
                }
            })
            .await
            .unwrap_or_else(|| panic!("{url} never became ready"));
        }
    }

    pub async fn post_job(&self, body: Value) -> Response {
        self.post_as(&self.token, "/v1/jobs", body).await
    }

    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST path` with `token` and no body, as `curl -X POST` sends it (cancel, retry).
    pub async fn post_empty_as(&self, token: &str, path: &str) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get_as(&self.token, path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// Enqueues one job and returns its id.
    pub async fn enqueue(&self, body: Value) -> String {
        let r = self.post_job(body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let job: Value = r.json().await.unwrap();
        job["id"].as_str().unwrap().to_owned()
    }

    /// Polls the job until it reaches `state` (fails the test after `within`).
    pub async fn wait_for_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let path = format!("/v1/jobs/{id}");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let job = self.get_json(&path).await;
            if job["state"] == state {
                return job;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("job {id} did not reach {state} within {within:?}; last seen: {job:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (up to 2 s) until `token` is refused with 401, and returns that answer. The api
    /// caches valid tokens and learns of a revocation or rotation by a NOTIFY, which arrives
    /// a moment after the commit, not before the next request.
    pub async fn wait_refused(&self, token: &str) -> Response {
        eventually(Duration::from_secs(2), || async {
            let r = self.get_as(token, "/v1/jobs").await;
            (r.status() == StatusCode::UNAUTHORIZED).then_some(r)
        })
        .await
        .unwrap_or_else(|| panic!("a revoked or retired token was still accepted after 2s"))
    }

    /// Waits (up to 10 s) until a session of this test's database matches the SQL `condition`
    /// on `pg_stat_activity` (a LISTEN in place, a statement waiting on a lock); whether one did.
    pub async fn wait_for_session(&self, condition: &str) -> bool {
        eventually(Duration::from_secs(10), || async {
            (self.count_sessions(condition).await > 0).then_some(())
        })
        .await
        .is_some()
    }

    /// How many sessions of this test's database match the SQL `condition` on
    /// `pg_stat_activity` (e.g. `application_name = '...'`) right now.
    pub async fn count_sessions(&self, condition: &str) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {condition}"
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A new key for `tenant` with `scopes`; returns its token.
    pub async fn key(&self, tenant: &str, scopes: &[Scope]) -> String {
        ApiKey::create(&self.pool, tenant, "test", scopes)
            .await
            .unwrap()
            .1
    }

    pub async fn count_jobs(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Stops the api and worker, deletes the test's queues and database.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        if let Ok(conn) = lapin::Connection::connect(&amqp_url(), Default::default()).await
            && let Ok(channel) = conn.create_channel().await
        {
            for q in ["default", "transactions", "integrations", "dead-letter"] {
                let name = conveyor_shared::broker::queue_name(&self.broker, q);
                let _ = channel.queue_delete(name.into(), Default::default()).await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_server())).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
        }
    }
}

/// Logs through the test harness's capture, so only failing tests show them.
fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A worker's configuration for tests: fast retries, short leases, a free probe port.
pub fn worker_config(
    db_name: &str,
    broker: &BrokerConfig,
    worker_id: &str,
) -> conveyor_worker::Config {
    conveyor_worker::Config {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        concurrency: 16,
        prefetch: 32,
        worker_id: worker_id.to_owned(),
        retry: conveyor_worker::retry::RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        shutdown_grace: Duration::from_secs(5),
        lease: Duration::from_secs(2),
        reaper_interval: Duration::from_millis(200),
        ..conveyor_worker::Config::defaults(
            DatabaseConfig::with_url(format!("{}/{db_name}", pg_server())),
            broker.clone(),
        )
    }
}

/// Calls `probe` until it returns `Some`, or gives up after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs each of `statements` on `conn` in turn (a plan test's `SET`, `ANALYZE`, `PREPARE`,
/// `DEALLOCATE`...), panicking on the first that fails.
pub async fn run_all<S: AsRef<str>>(
    conn: &mut sqlx::PgConnection,
    statements: impl IntoIterator<Item = S>,
) {
    for statement in statements {
        let statement = statement.as_ref();
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut *conn)
            .await
        {
            panic!("{statement}: {e}");
        }
    }
}

/// A plan test's second half: gives Postgres statistics on `tables` (as autovacuum keeps
/// them) and its own choice of plan back, and drops the prepared statements `names`, so that
/// they are planned anew. (Not `DEALLOCATE ALL`, which would take sqlx's own statements too.)
pub async fn replan_with_statistics(
    conn: &mut sqlx::PgConnection,
    tables: &str,
    names: impl IntoIterator<Item = String>,
) {
    let replan = [format!("ANALYZE {tables}"), "RESET plan_cache_mode".into()];
    let deallocate = names.into_iter().map(|name| format!("DEALLOCATE {name}"));
    run_all(conn, replan.into_iter().chain(deallocate)).await;
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of `statement` on `conn` (which runs it): the whole output,
/// whose `[0]["Plan"]` is the root node.
pub async fn explain_analyze(conn: &mut sqlx::PgConnection, statement: &str) -> Value {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("EXPLAIN ANALYZE {statement}: {e}"))
}

/// Rows read by every scan of a plan's nodes, from `EXPLAIN (ANALYZE, FORMAT JSON)`: those a
/// scan returned and those it read and dropped (`Rows Removed by Filter`, by a recheck), times
/// its loops. A statement that finds its rows by key reads about as many as it touches; one
/// that walks an index or a table reads them all.
pub fn rows_scanned(node: &Value) -> f64 {
    let own = if node["Node Type"].as_str().unwrap_or("").contains("Scan") {
        let field = |name: &str| node[name].as_f64().unwrap_or(0.0);
        (field("Actual Rows")
            + field("Rows Removed by Filter")
            + field("Rows Removed by Index Recheck"))
            * node["Actual Loops"].as_f64().unwrap_or(1.0)
    } else {
        0.0
    };
    own + node["Plans"]
        .as_array()
        .map(|plans| plans.iter().map(rows_scanned).sum())
        .unwrap_or(0.0)
}

async fn assert_broker_reachable() {
    if let Err(e) = lapin::Connection::connect(&amqp_url(), Default::default()).await {
        panic!(
            "cannot reach RabbitMQ at {}: {e}\nIs RabbitMQ running? Start it with scripts/ensure-services.sh",
            amqp_url()
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A noop job body.
pub fn noop(payload: Value) -> Value {
    json!({"kind": "noop", "payload": payload})
}

/// Asserts `r` is an RFC 9457 problem with `status` and `code`, and returns the document.
pub async fn problem(r: Response, status: StatusCode, code: &str) -> Value {
    let actual = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    assert_eq!(actual, status, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{body:#}"
    );
    assert_eq!(body["status"], status.as_u16(), "{body:#}");
    assert_eq!(body["code"], code, "{body:#}");
    assert_eq!(
        body["type"],
        format!("https://conveyor.dev/problems/{}", code.replace('_', "-")),
        "{body:#}"
    );
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body:#}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body:#}"
    );
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer", "{body:#}");
    }
    body
}

/// A sandbox (payment and analytics stand-ins) on a free port, stopped when dropped.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a sandbox with `faults`.
pub async fn sandbox(faults: conveyor_sandbox::FaultConfig) -> Sandbox {
    let app = conveyor_sandbox::Application::bind(&conveyor_sandbox::Config {
        faults,
        ..conveyor_sandbox::Config::for_tests()
    })
    .await
    .unwrap();
    let addr = app.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    Sandbox { addr, stop }
}

/// The value after `name` (`id:`, `token:`) in a command's output.
pub fn output_field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Runs the real `conveyor-api` binary with `args` against the database at `database_url`.
pub async fn cli_at(database_url: String, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_conveyor-api"))
            .args(&args)
            .env("DATABASE_URL", database_url)
            .env_remove("CONVEYOR_BOOTSTRAP_TOKEN")
            .output()
            .expect("conveyor-api runs")
    })
    .await
    .unwrap()
}

/// Runs the real `conveyor-api` binary with `args` against `app`'s database.
pub async fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    cli_at(format!("{}/{}", pg_server(), app.db_name), args).await
}

/// Ready messages in a RabbitMQ queue (by its RabbitMQ name), read with a passive declare.
pub async fn message_count(queue: &str) -> u32 {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
    declared.message_count()
}
