//! Conveyor's scheduler process: turns cron schedules stored in Postgres into jobs, exactly one
//! per tick however many replicas run, and runs an outbox relay (so the jobs it emits, delayed
//! jobs and retries are published even when no api runs) and its probe server.
#![forbid(unsafe_code)]

/// Wiring: probe server, relay and emitter, until shutdown.
pub mod app;
/// The scheduler's configuration, from the environment.
pub mod config;
/// The emission loop: claims due schedules, inserts their ticks' jobs, advances them.
pub mod emitter;

pub use app::run;
pub use config::Config;
