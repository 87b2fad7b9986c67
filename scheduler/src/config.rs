//! The scheduler's configuration, from the environment (defaults in ARCHITECTURE.md and
//! README.md). [`Config::defaults`] is the one place the defaults live.

use std::{net::SocketAddr, time::Duration};

use conveyor_shared::{
    config::{self, BrokerConfig, ConfigError, DatabaseConfig},
    relay::RelayConfig,
};

use crate::emitter::EmitterConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub addr: SocketAddr,
    /// Queues jobs may name (a schedule's template is checked against them at every tick).
    pub queues: Vec<String>,
    pub relay: RelayConfig,
    pub emitter: EmitterConfig,
}

impl Config {
    /// The documented defaults, with no environment read: the base for `from_env` and tests.
    pub fn defaults(database: DatabaseConfig, broker: BrokerConfig) -> Self {
        Self {
            database,
            broker,
            addr: SocketAddr::from(([127, 0, 0, 1], 9102)),
            queues: ["default", "transactions", "integrations"]
                .map(String::from)
                .to_vec(),
            relay: RelayConfig::default(),
            emitter: EmitterConfig {
                tick_interval: Duration::from_millis(500),
                catchup_max: 100,
                misfire_grace: Duration::from_secs(5),
                batch_size: 100,
            },
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::defaults(DatabaseConfig::from_env()?, BrokerConfig::from_env()?);
        let millis = |d: Duration| d.as_millis() as u64;
        Ok(Self {
            addr: config::parse_or("CONVEYOR_SCHEDULER_ADDR", d.addr)?,
            queues: config::queues_from_env()?,
            relay: RelayConfig::from_env()?,
            emitter: EmitterConfig {
                tick_interval: config::millis_or(
                    "CONVEYOR_SCHEDULER_TICK_MS",
                    millis(d.emitter.tick_interval),
                )?
                .max(Duration::from_millis(10)),
                catchup_max: config::parse_or(
                    "CONVEYOR_SCHEDULER_CATCHUP_MAX",
                    d.emitter.catchup_max,
                )?
                .max(1),
                misfire_grace: config::millis_or(
                    "CONVEYOR_SCHEDULER_MISFIRE_GRACE_MS",
                    millis(d.emitter.misfire_grace),
                )?,
                batch_size: config::parse_or("CONVEYOR_SCHEDULER_BATCH", d.emitter.batch_size)?
                    .max(1),
            },
            ..d
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::defaults(
            DatabaseConfig::with_url("postgres://localhost/x"),
            BrokerConfig::with_url("amqp://localhost", "conveyor"),
        );
        assert_eq!(c.addr.port(), 9102);
        assert_eq!(c.emitter.tick_interval, Duration::from_millis(500));
        assert_eq!(c.emitter.catchup_max, 100);
        assert_eq!(c.emitter.misfire_grace, Duration::from_secs(5));
        assert_eq!(c.emitter.batch_size, 100);
    }
}
