//! Building the api: database (created and migrated), bootstrap key, router, relay.
//! `Application::build` binds the port, so tests can ask for port 0 and read the real one.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use conveyor_shared::{
    broker::Inspector,
    config::DatabaseConfig,
    db, enqueue,
    health::Health,
    keys::ApiKey,
    probe,
    relay::{Relay, RelayWaker},
};
use futures_util::FutureExt;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::{
    auth_failures::{self, AuthFailureLimiter},
    config::Config,
    error::ApiError,
    group_commit::GroupCommit,
    key_cache::KeyCache,
    ratelimit::RateLimiter,
    routes,
    server::{self, ConnectionLimits},
};

/// What handlers share: the pool and the request limits. Nothing else.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub limits: Arc<Limits>,
    /// RabbitMQ's view of the queues, for `/v1/queues`.
    pub inspector: Arc<Inspector>,
    /// Per-key request budgets, charged by [`crate::auth::Caller`] (and per job by batches).
    pub rate_limit: Arc<RateLimiter>,
    /// Woken after each enqueue: this process's relay, or a forwarder to other processes'.
    pub relay: RelayWaker,
    /// What bearer tokens are, remembered for a few seconds.
    pub keys: Arc<KeyCache>,
    /// Single-job enqueues without an Idempotency-Key, written together when they coincide.
    pub single_enqueues: GroupCommit,
}

#[derive(Debug)]
pub struct Limits {
    pub enqueue: enqueue::Limits,
    pub max_body_bytes: usize,
    pub max_batch_body_bytes: usize,
}

pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    relay: Option<Relay>,
    /// What enqueues wake: the relay, or without one a forwarder to other processes' relays.
    waker: RelayWaker,
    /// Kept here as well as in the router, to follow revocations while serving.
    keys: Arc<KeyCache>,
    database: DatabaseConfig,
    /// Kept here as well as in the router, to sweep it while serving.
    auth_failures: Arc<AuthFailureLimiter>,
    connection_limits: ConnectionLimits,
    pub pool: PgPool,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        conveyor_shared::telemetry::metrics();
        let pool = db::connect_and_migrate(&config.database).await?;
        if let Some(token) = &config.bootstrap_token {
            ApiKey::ensure_bootstrap(&pool, token.expose_secret()).await?;
        }
        let health = Health::new(pool.clone());
        let waker = RelayWaker::default();
        let keys = Arc::new(KeyCache::new(config.auth_cache_ttl));
        let state = AppState {
            pool: pool.clone(),
            limits: Arc::new(Limits {
                enqueue: enqueue::Limits {
                    queues: config.queues.clone(),
                    max_batch: config.max_batch_jobs,
                    max_payload_bytes: config.max_payload_bytes,
                },
                max_body_bytes: config.max_body_bytes,
                max_batch_body_bytes: config.max_batch_body_bytes,
            }),
            inspector: Arc::new(Inspector::new(config.broker.clone())),
            rate_limit: Arc::new(RateLimiter::new(
                config.rate_limit_rps,
                config.rate_limit_burst,
            )),
            relay: waker.clone(),
            keys: keys.clone(),
            single_enqueues: GroupCommit::start(pool.clone(), waker.clone()),
        };
        let relay = config.run_relay.then(|| Relay {
            pool: pool.clone(),
            broker: config.broker.clone(),
            queues: config.queues.clone(),
            config: config.relay.clone(),
            health: health.clone(),
            waker: waker.clone(),
        });
        if relay.is_none() {
            // Without a relay this process never learns the broker's state; do not hold
            // readiness hostage to it.
            health.set_broker_connected(true);
        }
        let auth_failures = Arc::new(AuthFailureLimiter::new(
            config.auth_fail_rps,
            config.auth_fail_burst,
        ));
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        Ok(Self {
            listener,
            router: router(state, health, config.request_timeout, auth_failures.clone()),
            relay,
            waker,
            keys,
            database: config.database.clone(),
            auth_failures,
            connection_limits: ConnectionLimits {
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout,
            },
            pool,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then lets the relay finish its batch.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "api listening");
        let relay = tokio::spawn(match self.relay {
            Some(relay) => relay.run(shutdown.clone()).boxed(),
            None => self
                .waker
                .forward(self.pool.clone(), shutdown.clone())
                .boxed(),
        });
        let revocations = tokio::spawn({
            let (keys, database, shutdown) = (self.keys.clone(), self.database, shutdown.clone());
            async move { keys.follow_revocations(database, shutdown).await }
        });
        let sweeper = tokio::spawn(
            self.auth_failures
                .sweep(auth_failures::SWEEP_INTERVAL, shutdown.clone()),
        );
        server::serve(
            self.listener,
            self.router,
            self.connection_limits,
            shutdown.clone(),
        )
        .await;
        sweeper.await?;
        revocations.await?;
        relay.await?;
        Ok(())
    }
}

pub fn router(
    state: AppState,
    health: Health,
    request_timeout: Duration,
    auth_failures: Arc<AuthFailureLimiter>,
) -> Router {
    let api = Router::new()
        .route(
            "/v1/jobs",
            post(routes::jobs::create).get(routes::jobs::list),
        )
        .route("/v1/jobs/batch", post(routes::jobs::create_batch))
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(routes::jobs::retry))
        .route(
            "/v1/schedules",
            post(routes::schedules::create).get(routes::schedules::list),
        )
        .route(
            "/v1/schedules/{id}",
            get(routes::schedules::get)
                .patch(routes::schedules::update)
                .delete(routes::schedules::delete),
        )
        .route("/v1/queues", get(routes::queues::list))
        .route("/v1/queues/{name}", get(routes::queues::get))
        .route("/v1/accounts", post(routes::accounts::create))
        .route("/v1/accounts/{id}", get(routes::accounts::get))
        .route("/v1/audit", get(routes::audit::list))
        .route("/openapi.json", get(routes::meta::openapi))
        .route("/", get(routes::dashboard::index))
        .route("/dashboard.js", get(routes::dashboard::script))
        .route("/dashboard.css", get(routes::dashboard::style))
        .with_state(state)
        // Probes stay outside: an orchestrator sharing an address with an abuser must still
        // see the api alive.
        .layer(middleware::from_fn_with_state(
            auth_failures,
            auth_failures::guard,
        ));
    api.merge(probe::router(health))
        .layer(middleware::from_fn(move |request, next| {
            timeout(request_timeout, request, next)
        }))
        .layer(middleware::from_fn(http_metrics))
        // 5xx answers (a 503 from /readyz during an outage included) are logged at WARN: the
        // cause is logged where it happens, at the level it deserves.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
}

/// Answers 503 `timeout` (a problem, like every error) when the handler, or a client sending
/// its body slowly, takes longer than `limit`; the handler's future is dropped, which rolls back
/// an open transaction. tower-http's `TimeoutLayer` does the same race but answers an empty body.
async fn timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit.as_millis()).into_response(),
    }
}

/// Request count and latency by route template (never by raw path: ids would explode the labels).
async fn http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("conveyor_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("conveyor_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
