//! Conveyor's scheduler process. Today it runs an outbox relay (so delayed jobs and retries are
//! published even when no api runs) and its probe server; cron schedules arrive in a later step.
#![forbid(unsafe_code)]

/// Wiring: probe server and relay, until shutdown.
pub mod app;
/// The scheduler's configuration, from the environment.
pub mod config;

pub use app::run;
pub use config::Config;
