//! Every sandbox setting, read from the environment (or the matching flag) in this one place.
//!
//! The variable names are part of Conveyor's public interface (ARCHITECTURE.md): extend, never rename.

use std::net::SocketAddr;
use std::time::Duration;

/// The whole sandbox configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where to listen; `healthcheck` asks the same address (0.0.0.0 becomes 127.0.0.1).
    #[arg(long, env = "CONVEYOR_SANDBOX_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,

    /// Log format; `pretty` on a terminal and `json` otherwise when unset.
    #[arg(long, env = "CONVEYOR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(flatten)]
    pub faults: FaultConfig,
}

impl Config {
    /// Quiet defaults on an ephemeral loopback port, for tests.
    pub fn for_tests() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: None,
            faults: FaultConfig::default(),
        }
    }
}

/// How the stand-ins misbehave. Faults touch only the service POSTs (the calls a worker makes); health
/// probes and the inspection GETs always answer, so tests can read state while faults are on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultConfig {
    /// Share (0..=1) of service POSTs that fail: answered 500 or 503, or, when a stall is set,
    /// processed and then held past the client's timeout.
    #[arg(long, env = "CONVEYOR_SANDBOX_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub failure_rate: f64,

    /// Added latency for every service POST, in milliseconds.
    #[arg(long, env = "CONVEYOR_SANDBOX_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Service POSTs allowed per second (burst of one second's worth); above it, 429 with
    /// `Retry-After`. 0 means no limit.
    #[arg(long, env = "CONVEYOR_SANDBOX_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// How long a stalled request is held after it was processed, in milliseconds. 0 (the default)
    /// means failures are only 500/503; set it above the client's timeout to simulate a provider that
    /// did the work but whose answer never arrived.
    #[arg(long, env = "CONVEYOR_SANDBOX_STALL_MS", default_value_t = 0)]
    pub stall_ms: u64,
}

impl FaultConfig {
    pub fn latency(&self) -> Option<Duration> {
        (self.latency_ms > 0).then(|| Duration::from_millis(self.latency_ms))
    }

    pub fn stall(&self) -> Option<Duration> {
        (self.stall_ms > 0).then(|| Duration::from_millis(self.stall_ms))
    }
}

/// Log output format (`CONVEYOR_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("`{text}` is outside 0..=1"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_share;

    #[test]
    fn failure_rate_must_be_a_share() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert_eq!(parse_share("1"), Ok(1.0));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("NaN").is_err());
        assert!(parse_share("often").is_err());
    }
}
