//! Starts the scheduler: probe server, outbox relay and tick emitter, until shutdown.
//!
//! The three run as futures of this one task (not spawned), so dropping `run` stops all of
//! them at once, mid-transaction included: Postgres then rolls back and frees the schedules.
//! The emitter has a pool of its own whose sessions may not sit idle inside a transaction: a
//! replica that freezes mid-round (not dead, so its connection stays up) loses its locks after
//! [`ROUND_IDLE_LIMIT`] and another replica emits the ticks it held.

use conveyor_shared::{
    db, enqueue,
    health::Health,
    probe,
    relay::{Relay, RelayWaker},
};
use tokio_util::sync::CancellationToken;

use crate::{config::Config, emitter::Emitter};

/// How long an emitter transaction may wait between two statements before Postgres ends it.
/// A round's statements follow each other within milliseconds.
pub const ROUND_IDLE_LIMIT: &str = "2s";

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    conveyor_shared::telemetry::metrics();
    let pool = db::connect(&config.database).await?;
    let health = Health::new(pool.clone());
    let emitter_pool = db::connect_pool(
        &config.database,
        2,
        &[("idle_in_transaction_session_timeout", ROUND_IDLE_LIMIT)],
    )
    .await?;
    let waker = RelayWaker::default();
    let emitter = Emitter {
        pool: emitter_pool,
        limits: enqueue::Limits {
            queues: config.queues.clone(),
            max_batch: config.emitter.catchup_max,
            // Templates were checked against the api's limit when the schedule was saved.
            max_payload_bytes: usize::MAX,
        },
        config: config.emitter,
        relay: waker.clone(),
    };
    let relay = Relay {
        pool,
        broker: config.broker,
        queues: config.queues,
        config: config.relay,
        health: health.clone(),
        waker,
    };
    let (probe, (), ()) = tokio::join!(
        probe::serve(config.addr, health, shutdown.clone()),
        relay.run(shutdown.clone()),
        emitter.run(shutdown),
    );
    probe?;
    Ok(())
}
