//! What `/readyz` reports: can this process reach Postgres and RabbitMQ right now.
//!
//! Tasks that hold a broker connection (relay, consumer) flip the broker flag as they lose and
//! regain it; the database is probed on demand.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Health {
    pool: PgPool,
    broker_connected: Arc<AtomicBool>,
}

/// The answer of a readiness probe.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub postgres: bool,
    pub rabbitmq: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.postgres && self.rabbitmq
    }
}

impl Health {
    pub fn new(pool: PgPool) -> Self {
        metrics::gauge!("conveyor_broker_connected").set(0.0);
        Self {
            pool,
            broker_connected: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
        metrics::gauge!("conveyor_broker_connected").set(if up { 1.0 } else { 0.0 });
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    pub async fn check(&self) -> Readiness {
        let postgres = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&self.pool),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        metrics::gauge!("conveyor_db_connected").set(if postgres { 1.0 } else { 0.0 });
        Readiness {
            postgres,
            rabbitmq: self.broker_connected(),
        }
    }
}
