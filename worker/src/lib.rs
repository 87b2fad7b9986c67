//! Conveyor's worker: consumes job messages from RabbitMQ, claims the jobs in Postgres, runs
//! their handlers and records every outcome before acking.
//!
//! # Why lapin directly and not apalis
//! apalis 1.0 was evaluated for the consumer. Its retries are in-process (the message stays
//! unacked during backoff), while Conveyor keeps waiting retries in Postgres where they are
//! visible and cancellable; its AMQP backend (apalis-amqp 1.0) nacks failed jobs without requeue
//! and uses per-channel delivery tags as task ids; and its per-task pipeline has no place for
//! claiming and completing a whole prefetch window in one SQL statement each, which is where
//! throughput comes from. So the consumer is a small lapin loop; timeouts, panics and
//! concurrency limits are done with tokio primitives in [`runner`] and [`consumer`].
#![forbid(unsafe_code)]

/// Acks in bulk: one multiple ack up to the highest tag below which all are settled.
pub mod acks;
/// Wiring: probe server + consumer, until shutdown.
pub mod app;
/// Circuit breakers per destination host for outgoing calls.
pub mod breaker;
/// Batched completions: record outcomes in Postgres, then ack.
pub mod completer;
/// Worker configuration from the environment.
pub mod config;
/// The consumer loop: deliveries → batched claims → handler tasks.
pub mod consumer;
/// The egress policy (SSRF guard) for tenant-supplied URLs: resolve, judge, pin.
pub mod egress;
/// Handlers by job kind, and the `noop` handler.
pub mod handlers;
/// Lease renewal for running jobs and the reaper for jobs whose worker died.
pub mod lease;
/// The payment provider's HTTP API, with idempotency keys and error classes.
pub mod provider;
/// Reading external services' answers: status classes, `Retry-After`, capped bodies.
pub mod response;
/// Automatic deletion of old finished jobs.
pub mod retention;
/// Retry delays: exponential backoff with full jitter.
pub mod retry;
/// Runs one claimed job: timeout, panic capture, outcome classification.
pub mod runner;
/// Standard Webhooks signatures (HMAC-SHA256).
pub mod signing;
/// TLS for outgoing HTTPS: the process-wide rustls provider.
pub mod tls;

pub use app::run;
pub use config::Config;
