//! The worker's configuration, from the environment (defaults in ARCHITECTURE.md).

use std::{net::SocketAddr, time::Duration};

use conveyor_shared::config::{self, BrokerConfig, ConfigError, DatabaseConfig};
use ipnet::IpNet;

use secrecy::SecretString;

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
    /// How long the completer waits for more outcomes after a small batch before writing it
    /// (`CONVEYOR_COMPLETION_COALESCE_MS`; 0: write at once).
    pub completion_coalesce: Duration,
    /// How long a claim holds without renewal; a dead worker's jobs come back after this.
    pub lease: Duration,
    /// How often expired leases are swept.
    pub reaper_interval: Duration,
    /// Succeeded and cancelled jobs are deleted this many days after finishing (0: never).
    pub retention_days: u32,
    /// The payment provider's base URL (`CONVEYOR_PAYMENT_URL`; the sandbox by default).
    pub payment_url: String,
    /// `CONVEYOR_PAYMENT_API_KEY`, sent as a bearer token; never logged.
    pub payment_api_key: Option<SecretString>,
    /// The analytics service's base URL (`CONVEYOR_ANALYTICS_URL`; the sandbox by default).
    pub analytics_url: String,
    /// Batch requests per second sent to the analytics service (`CONVEYOR_ANALYTICS_RPS`).
    pub analytics_rps: u32,
    /// Most events in one batch (`CONVEYOR_ANALYTICS_BATCH_SIZE`). A batch also never holds more
    /// events than jobs run at once, since each job waits for its own event's verdict.
    pub analytics_batch_size: usize,
    /// How long a batch waits for more events after its first (`CONVEYOR_ANALYTICS_LINGER_MS`).
    pub analytics_linger: Duration,
    /// `CONVEYOR_WEBHOOK_SECRET` (`whsec_` + base64): the webhook signing key; never logged.
    /// Without it, `webhook.deliver` jobs fail permanently.
    pub webhook_secret: Option<SecretString>,
    /// `CONVEYOR_EGRESS_ALLOW`: CIDRs webhook targets may reach besides public addresses.
    pub egress_allow: Vec<IpNet>,
    /// Consecutive failures that open a destination host's circuit (`CONVEYOR_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// How long an open circuit fails fast before a probe goes through
    /// (`CONVEYOR_BREAKER_COOLDOWN_MS`).
    pub breaker_cooldown: Duration,
}

/// Jobs a worker runs at once unless `CONVEYOR_WORKER_CONCURRENCY` says otherwise.
const DEFAULT_CONCURRENCY: usize = 128;

/// Deliveries held ahead for a worker running `concurrency` jobs at once: four times as many,
/// Celery's default multiplier too. A delivery is acked only once its outcome is committed, and
/// RabbitMQ sends the next ones only after the acks (a round trip through the quorum queue's
/// log), so the window must cover the claim, the run, the completion and that round trip. At
/// twice the concurrency, a worker draining a backlog of noop jobs waited for deliveries with a
/// quarter of both cores idle; at four times it drained 9% faster (5,862-5,921 against
/// 6,366-6,524 jobs/s, `scripts/bench.sh --only batch --jobs 40000`, docs/benchmarks.md). The
/// cost: messages held by one busy worker wait there while another may be idle, so a fleet of
/// long jobs is better served by a smaller `CONVEYOR_WORKER_PREFETCH`.
fn default_prefetch(concurrency: usize) -> u16 {
    (concurrency * 4).min(u16::MAX as usize) as u16
}

impl Config {
    /// The documented defaults, with no environment read: the base for `from_env` and tests.
    pub fn defaults(database: DatabaseConfig, broker: BrokerConfig) -> Self {
        Self {
            database,
            broker,
            addr: SocketAddr::from(([127, 0, 0, 1], 9101)),
            queues: ["default", "transactions", "integrations"]
                .map(String::from)
                .to_vec(),
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: default_prefetch(DEFAULT_CONCURRENCY),
            worker_id: default_worker_id(),
            retry: RetryPolicy {
                base: Duration::from_secs(1),
                max: Duration::from_secs(600),
            },
            shutdown_grace: Duration::from_secs(30),
            completion_coalesce: Duration::from_millis(2),
            lease: Duration::from_secs(30),
            reaper_interval: Duration::from_secs(5),
            retention_days: 30,
            payment_url: "http://127.0.0.1:8090".into(),
            payment_api_key: None,
            analytics_url: "http://127.0.0.1:8090".into(),
            analytics_rps: 10,
            analytics_batch_size: 100,
            analytics_linger: Duration::from_millis(50),
            webhook_secret: None,
            egress_allow: Vec::new(),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::defaults(DatabaseConfig::from_env()?, BrokerConfig::from_env()?);
        let concurrency: usize =
            config::parse_or("CONVEYOR_WORKER_CONCURRENCY", d.concurrency)?.max(1);
        Ok(Self {
            addr: config::parse_or("CONVEYOR_WORKER_ADDR", d.addr)?,
            queues: config::queues_from_env()?,
            concurrency,
            prefetch: config::parse_or("CONVEYOR_WORKER_PREFETCH", default_prefetch(concurrency))?,
            worker_id: config::var_or("CONVEYOR_WORKER_ID", &d.worker_id),
            retry: RetryPolicy {
                base: config::millis_or("CONVEYOR_RETRY_BASE_MS", d.retry.base.as_millis() as u64)?,
                max: config::millis_or("CONVEYOR_RETRY_MAX_MS", d.retry.max.as_millis() as u64)?,
            },
            shutdown_grace: Duration::from_secs(config::parse_or(
                "CONVEYOR_SHUTDOWN_GRACE_SECS",
                d.shutdown_grace.as_secs(),
            )?),
            completion_coalesce: config::millis_or(
                "CONVEYOR_COMPLETION_COALESCE_MS",
                d.completion_coalesce.as_millis() as u64,
            )?,
            lease: Duration::from_secs(
                config::parse_or("CONVEYOR_LEASE_SECS", d.lease.as_secs())?.max(1),
            ),
            reaper_interval: config::millis_or(
                "CONVEYOR_REAPER_INTERVAL_MS",
                d.reaper_interval.as_millis() as u64,
            )?,
            retention_days: config::parse_or("CONVEYOR_RETENTION_DAYS", d.retention_days)?,
            payment_url: config::var_or("CONVEYOR_PAYMENT_URL", &d.payment_url),
            payment_api_key: std::env::var("CONVEYOR_PAYMENT_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .map(SecretString::from),
            analytics_url: service_url("CONVEYOR_ANALYTICS_URL", &d.analytics_url)?,
            analytics_rps: config::parse_or("CONVEYOR_ANALYTICS_RPS", d.analytics_rps)?.max(1),
            analytics_batch_size: config::parse_or(
                "CONVEYOR_ANALYTICS_BATCH_SIZE",
                d.analytics_batch_size,
            )?
            .max(1),
            analytics_linger: config::millis_or(
                "CONVEYOR_ANALYTICS_LINGER_MS",
                d.analytics_linger.as_millis() as u64,
            )?,
            webhook_secret: webhook_secret()?,
            egress_allow: crate::egress::parse_allow_list(&config::var_or(
                "CONVEYOR_EGRESS_ALLOW",
                "",
            ))
            .map_err(|reason| ConfigError {
                name: "CONVEYOR_EGRESS_ALLOW",
                reason,
            })?,
            breaker_failures: config::parse_or("CONVEYOR_BREAKER_FAILURES", d.breaker_failures)?
                .max(1),
            breaker_cooldown: config::millis_or(
                "CONVEYOR_BREAKER_COOLDOWN_MS",
                d.breaker_cooldown.as_millis() as u64,
            )?,
            ..d
        })
    }
}

/// Reads a service base URL, refusing anything that is not an absolute http(s) URL.
fn service_url(name: &'static str, default: &str) -> Result<String, ConfigError> {
    let raw = config::var_or(name, default);
    match reqwest::Url::parse(&raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(raw),
        _ => Err(ConfigError {
            name,
            reason: format!("expected an absolute http(s) URL, got {raw:?}"),
        }),
    }
}

/// Reads `CONVEYOR_WEBHOOK_SECRET`, refusing a malformed one at startup rather than at the
/// first delivery. The value never appears in the error.
fn webhook_secret() -> Result<Option<SecretString>, ConfigError> {
    let Some(secret) = std::env::var("CONVEYOR_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(SecretString::from)
    else {
        return Ok(None);
    };
    crate::signing::Signer::new(&secret).map_err(|e| ConfigError {
        name: "CONVEYOR_WEBHOOK_SECRET",
        reason: e.to_string(),
    })?;
    Ok(Some(secret))
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
