//! The api's configuration, from the environment (defaults in ARCHITECTURE.md).

use std::{fmt, net::SocketAddr, time::Duration};

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
    /// Largest `payload` of one job (in a batch too), as JSON.
    pub max_payload_bytes: usize,
    /// Requests per second per API key (`CONVEYOR_RATE_LIMIT_RPS`; 0 disables limits).
    pub rate_limit_rps: u32,
    /// Requests a key may send at once above its rate (`CONVEYOR_RATE_LIMIT_BURST`); a batch of N
    /// jobs counts N, so this is also the largest batch a key can send.
    pub rate_limit_burst: u32,
    /// A request still unanswered after this is answered 503 (`CONVEYOR_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// Failed authentications per second per client address (`CONVEYOR_AUTH_FAIL_RPS`; 0
    /// disables); an address over it is refused every request until `Retry-After`.
    pub auth_fail_rps: u32,
    /// Failed authentications an address may make at once (`CONVEYOR_AUTH_FAIL_BURST`).
    pub auth_fail_burst: u32,
    /// Open connections at most (`CONVEYOR_API_MAX_CONNECTIONS`; 0 means no cap); more wait in
    /// the accept backlog.
    pub max_connections: usize,
    /// A connection that sends no complete request head for this long, idle keep-alive ones
    /// included, is closed (`CONVEYOR_API_HEADER_TIMEOUT_MS`; 0 means never).
    pub header_read_timeout: Duration,
    /// How long a valid token's lookup is reused (`CONVEYOR_AUTH_CACHE_MS`; 0 turns the cache
    /// off). Revocations and rotations take effect at once regardless (see `key_cache`).
    pub auth_cache_ttl: Duration,
    /// Run the outbox relay in this process (on by default; off lets tests hold jobs back).
    pub run_relay: bool,
}

pub const DEFAULT_RATE_LIMIT_RPS: u32 = 100;
/// As large as the largest batch, so that one full batch passes when a key is idle.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 1000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that gets its token wrong keeps a few tries a minute; a guesser gets nowhere.
pub const DEFAULT_AUTH_FAIL_RPS: u32 = 1;
pub const DEFAULT_AUTH_FAIL_BURST: u32 = 20;
/// Well under the usual 1024 open files per process, with room for the pool and the broker.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// hyper's own default: long enough for a slow mobile client, short enough that idle
/// connections give their slot back.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Long enough that a busy key's lookups cost nothing; short enough that a key changed by hand
/// in SQL is seen soon.
pub const DEFAULT_AUTH_CACHE_TTL: Duration = Duration::from_secs(10);

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
            max_payload_bytes: config::parse_or(
                "CONVEYOR_MAX_PAYLOAD_BYTES",
                conveyor_shared::enqueue::DEFAULT_MAX_PAYLOAD_BYTES,
            )?,
            rate_limit_rps: config::parse_or("CONVEYOR_RATE_LIMIT_RPS", DEFAULT_RATE_LIMIT_RPS)?,
            rate_limit_burst: config::parse_or(
                "CONVEYOR_RATE_LIMIT_BURST",
                DEFAULT_RATE_LIMIT_BURST,
            )?,
            request_timeout: Duration::from_millis(config::parse_or(
                "CONVEYOR_REQUEST_TIMEOUT_MS",
                DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
            )?),
            auth_fail_rps: config::parse_or("CONVEYOR_AUTH_FAIL_RPS", DEFAULT_AUTH_FAIL_RPS)?,
            auth_fail_burst: config::parse_or("CONVEYOR_AUTH_FAIL_BURST", DEFAULT_AUTH_FAIL_BURST)?,
            max_connections: config::parse_or(
                "CONVEYOR_API_MAX_CONNECTIONS",
                DEFAULT_MAX_CONNECTIONS,
            )?,
            header_read_timeout: Duration::from_millis(config::parse_or(
                "CONVEYOR_API_HEADER_TIMEOUT_MS",
                DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64,
            )?),
            auth_cache_ttl: config::millis_or(
                "CONVEYOR_AUTH_CACHE_MS",
                DEFAULT_AUTH_CACHE_TTL.as_millis() as u64,
            )?,
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
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("rate_limit_rps", &self.rate_limit_rps)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("request_timeout", &self.request_timeout)
            .field("auth_fail_rps", &self.auth_fail_rps)
            .field("auth_fail_burst", &self.auth_fail_burst)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("auth_cache_ttl", &self.auth_cache_ttl)
            .field("run_relay", &self.run_relay)
            .finish()
    }
}
