//! The scheduler's configuration, from the environment (defaults in ARCHITECTURE.md).

use std::net::SocketAddr;

use conveyor_shared::{
    config::{self, BrokerConfig, ConfigError, DatabaseConfig},
    relay::RelayConfig,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub addr: SocketAddr,
    pub queues: Vec<String>,
    pub relay: RelayConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env()?,
            broker: BrokerConfig::from_env()?,
            addr: config::parse_or(
                "CONVEYOR_SCHEDULER_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9102)),
            )?,
            queues: config::queues_from_env()?,
            relay: RelayConfig::from_env()?,
        })
    }
}
