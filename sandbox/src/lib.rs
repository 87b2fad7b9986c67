//! `conveyor-sandbox`: local stand-ins for the payment provider and the analytics service that
//! Conveyor's workers call, with injectable faults, for docker compose, tests and benchmarks.
//!
//! State lives in memory and is lost on restart; that is the point of a sandbox.

#![forbid(unsafe_code)]

/// The analytics stand-in: batched events, deduplicated by id.
pub mod analytics;
/// The HTTP application: router assembly, binding and graceful shutdown.
pub mod app;
/// The command line: `serve` (default) and `healthcheck`.
pub mod cli;
/// Every setting, read from the environment in one place.
pub mod config;
/// The JSON error body every stand-in answers with.
pub mod error;
/// Fault injection: rate limit, latency, 5xx answers and stalls.
pub mod faults;
/// `conveyor-sandbox healthcheck`: ask our own `/readyz` and exit 0/1.
pub mod healthcheck;
/// The payment provider stand-in: idempotent charges and refunds.
pub mod payments;
/// Tracing subscriber setup.
pub mod telemetry;

pub use app::{Application, router};
pub use config::{Config, FaultConfig};
