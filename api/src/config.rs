//! The api's configuration, from the environment (defaults in ARCHITECTURE.md).

use std::{fmt, net::SocketAddr};

use conveyor_shared::{
    config::{self, BrokerConfig, ConfigError, DatabaseConfig},
    relay::RelayConfig,
};
use secrecy::SecretString;

#[derive(Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub addr: SocketAddr,
    /// Queues jobs may name; the relay declares them.
    pub queues: Vec<String>,
    /// `CONVEYOR_BOOTSTRAP_TOKEN`: an admin token for tenant `default` (local dev, compose, tests).
    pub bootstrap_token: Option<SecretString>,
    pub relay: RelayConfig,
    /// Largest request body, except batches.
    pub max_body_bytes: usize,
    pub max_batch_body_bytes: usize,
    pub max_batch_jobs: usize,
    /// Run the outbox relay in this process (on by default; off lets tests hold jobs back).
    pub run_relay: bool,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env()?,
            broker: BrokerConfig::from_env()?,
            addr: config::parse_or(
                "CONVEYOR_API_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            queues: config::queues_from_env()?,
            bootstrap_token: std::env::var("CONVEYOR_BOOTSTRAP_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            relay: RelayConfig::from_env()?,
            max_body_bytes: config::parse_or("CONVEYOR_MAX_BODY_BYTES", 1024 * 1024)?,
            max_batch_body_bytes: config::parse_or(
                "CONVEYOR_MAX_BATCH_BODY_BYTES",
                16 * 1024 * 1024,
            )?,
            max_batch_jobs: config::parse_or("CONVEYOR_MAX_BATCH_JOBS", 1000)?,
            run_relay: config::parse_or("CONVEYOR_API_RELAY", true)?,
        })
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.database)
            .field("broker", &self.broker)
            .field("addr", &self.addr)
            .field("queues", &self.queues)
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "<set>"),
            )
            .field("relay", &self.relay)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch_body_bytes", &self.max_batch_body_bytes)
            .field("max_batch_jobs", &self.max_batch_jobs)
            .field("run_relay", &self.run_relay)
            .finish()
    }
}
