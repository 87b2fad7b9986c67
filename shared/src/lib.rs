//! Conveyor's shared core: the domain (jobs, kinds, keys), how it is stored in Postgres, how it
//! travels through RabbitMQ, and the plumbing every process needs. No HTTP framework lives here
//! except the small probe server behind the `probe` feature.
#![forbid(unsafe_code)]

/// The audit trail of administrative actions: who, what, when, from where.
pub mod audit;
/// RabbitMQ: connection with backoff, queue topology, the message that carries a job.
pub mod broker;
/// Reading configuration from the environment, with the documented defaults.
pub mod config;
/// Connecting to Postgres, creating the database if missing, running migrations.
pub mod db;
/// Which addresses calls to tenant-supplied URLs may reach (the egress classifier).
pub mod egress;
/// Accepting new jobs: request validation, idempotency keys and the transactional insert.
pub mod enqueue;
/// Liveness and readiness state shared by a process's tasks.
pub mod health;
/// Jobs: identifiers, states, the stored row and the queries that move a job through its life.
pub mod job;
/// API keys: tokens, scopes, tenants; only digests are stored.
pub mod keys;
/// Job kinds and their payloads, each validated on its own type.
pub mod kind;
/// The ledger: accounts and double-entry bookings, exactly once per job and leg.
pub mod ledger;
/// RabbitMQ's management API: unacked counts for the queue statistics.
pub mod management;
/// The outbox queries: which due jobs are published next.
pub mod outbox;
/// `/healthz`, `/readyz`, `/metrics` server and the `healthcheck` client every binary offers.
#[cfg(feature = "probe")]
pub mod probe;
/// The transactional outbox relay: publishes due jobs from Postgres to RabbitMQ.
pub mod relay;
/// Cron schedules: validation, time zones and DST, misfire plans, and their queries.
pub mod schedule;
/// Turning SIGTERM / SIGINT into one cancellation token.
pub mod shutdown;
/// Logging and Prometheus metrics setup.
pub mod telemetry;
/// TLS for outgoing HTTPS: the process-wide rustls provider.
pub mod tls;
/// W3C `traceparent` carried from enqueue to the worker's outgoing calls.
pub mod trace;

pub use job::{Job, JobId, JobState};
pub use kind::JobKind;
