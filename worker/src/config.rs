//! The worker's configuration, from the environment (defaults in ARCHITECTURE.md).

use std::{net::SocketAddr, time::Duration};

use conveyor_shared::config::{self, BrokerConfig, ConfigError, DatabaseConfig};

use crate::retry::RetryPolicy;

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub addr: SocketAddr,
    /// Queues this worker consumes.
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Unacked deliveries RabbitMQ may hand us ahead of time.
    pub prefetch: u16,
    /// This worker's name in the attempts log.
    pub worker_id: String,
    pub retry: RetryPolicy,
    /// How long in-flight jobs may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a claim holds without renewal; a dead worker's jobs come back after this.
    pub lease: Duration,
    /// How often expired leases are swept.
    pub reaper_interval: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let concurrency: usize = config::parse_or("CONVEYOR_WORKER_CONCURRENCY", 32)?;
        Ok(Self {
            database: DatabaseConfig::from_env()?,
            broker: BrokerConfig::from_env()?,
            addr: config::parse_or(
                "CONVEYOR_WORKER_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9101)),
            )?,
            queues: config::queues_from_env()?,
            concurrency: concurrency.max(1),
            prefetch: config::parse_or(
                "CONVEYOR_WORKER_PREFETCH",
                (concurrency * 2).min(u16::MAX as usize) as u16,
            )?,
            worker_id: config::var_or("CONVEYOR_WORKER_ID", &default_worker_id()),
            retry: RetryPolicy {
                base: config::millis_or("CONVEYOR_RETRY_BASE_MS", 1_000)?,
                max: config::millis_or("CONVEYOR_RETRY_MAX_MS", 600_000)?,
            },
            shutdown_grace: Duration::from_secs(config::parse_or(
                "CONVEYOR_SHUTDOWN_GRACE_SECS",
                30,
            )?),
            lease: Duration::from_secs(config::parse_or("CONVEYOR_LEASE_SECS", 30)?.max(1)),
            reaper_interval: config::millis_or("CONVEYOR_REAPER_INTERVAL_MS", 5_000)?,
        })
    }
}

/// `<hostname>-<pid>`: unique enough to tell workers apart in the attempts log.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}
