//! Starts the scheduler: probe server and outbox relay, until shutdown.

use conveyor_shared::{db, health::Health, probe, relay::Relay};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    conveyor_shared::telemetry::metrics();
    let pool = db::connect(&config.database).await?;
    let health = Health::new(pool.clone());
    let probe = tokio::spawn(probe::serve(config.addr, health.clone(), shutdown.clone()));
    let relay = Relay {
        pool,
        broker: config.broker,
        queues: config.queues,
        config: config.relay,
        health,
    };
    relay.run(shutdown).await;
    probe.await??;
    Ok(())
}
