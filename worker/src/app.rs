//! Starts a worker: Postgres pool, probe server and consumer, until shutdown.

use std::sync::Arc;

use conveyor_shared::{db, health::Health, probe};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    consumer::Consumer,
    handlers::{Deps, Registry},
    lease,
};

/// Runs a worker until `shutdown` is cancelled and its in-flight jobs are done.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    conveyor_shared::telemetry::metrics();
    // Three pools, so that no kind of work can starve another: claims, completions and the
    // reaper; handlers; and lease renewals, which must never expire because everything else is
    // busy. Running jobs share the handler pool's `CONVEYOR_DB_MAX_CONNECTIONS` rather than each
    // having one (Postgres allows 100 connections by default, for every service together): a
    // handler holds a connection only for a short transaction, waiting on a row lock for at
    // most `lock_timeout`, never across a call to an external service. Each pool is named, so
    // that `pg_stat_activity` shows operators which one holds a connection.
    let pool = db::connect_pool(
        &config.database,
        4,
        &[("application_name", "conveyor-worker")],
    )
    .await?;
    let handler_pool = db::connect_pool(
        &config.database,
        config.database.max_connections,
        &[
            ("lock_timeout", "5s"),
            ("application_name", "conveyor-worker-handlers"),
        ],
    )
    .await?;
    let lease_pool = db::connect_pool(
        &config.database,
        2,
        &[("application_name", "conveyor-worker-leases")],
    )
    .await?;
    let health = Health::new(pool.clone());
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, worker_id = %config.worker_id, "worker probe server listening");
    let probe_shutdown = shutdown.child_token();
    let probe = tokio::spawn({
        let health = health.clone();
        let stop = probe_shutdown.clone();
        async move {
            axum::serve(listener, probe::router(health))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    // Leases are renewed until the consumer has drained its in-flight jobs, not just until
    // the shutdown signal: jobs finishing during the grace period still hold their claims.
    let renew_stop = CancellationToken::new();
    let renew = tokio::spawn(lease::renew_loop(
        lease_pool,
        config.worker_id.clone(),
        config.lease,
        renew_stop.clone(),
    ));
    let retention = tokio::spawn(crate::retention::retention_loop(
        pool.clone(),
        config.retention_days,
        shutdown.clone(),
    ));
    let reaper = tokio::spawn(lease::reaper_loop(
        pool.clone(),
        config.reaper_interval,
        shutdown.clone(),
    ));
    crate::tls::install();
    let deps = Deps {
        pool: handler_pool,
        // One client for every outgoing call: connection pools and TLS sessions are shared.
        http: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
    };
    let registry = Registry::for_worker(&config, &deps);
    let consumer = Consumer {
        pool,
        config: Arc::new(config),
        registry,
        health,
    };
    consumer.run(shutdown).await;
    renew_stop.cancel();
    let _ = tokio::join!(renew, reaper, retention);
    probe_shutdown.cancel();
    let _ = probe.await;
    Ok(())
}
