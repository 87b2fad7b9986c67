//! Conveyor's HTTP API: apps enqueue and inspect jobs here; the process also runs an outbox
//! relay. Handlers validate, authorise and call into `conveyor_shared`; every error becomes an
//! RFC 9457 problem in one place ([`error`]).
#![forbid(unsafe_code)]

/// Bearer-token authentication and scope checks.
pub mod auth;
/// Per-address budget for failed authentication (429 with `Retry-After`).
pub mod auth_failures;
/// JSON bodies with field-level errors and size limits.
pub mod body;
/// `conveyor-api keys ...` and `migrate`: operator commands.
pub mod cli;
/// The api's configuration, from the environment.
pub mod config;
/// `ApiError` and its problem+json rendering: the one place errors meet HTTP.
pub mod error;
/// Concurrent single-job enqueues written as one INSERT and one commit.
pub mod group_commit;
/// A short-lived cache of token lookups, emptied on every revocation.
pub mod key_cache;
/// The OpenAPI document served at `/openapi.json`.
pub mod openapi;
/// Keyset pagination of list routes: `limit` and `cursor`.
pub mod pagination;
/// Per-key request budgets (429 with `Retry-After`).
pub mod ratelimit;
/// The routes, one file per resource.
pub mod routes;
/// Serving HTTP/1.1 with a connection cap and a request-head deadline.
pub mod server;
/// Building and running the server and its relay.
pub mod startup;

pub use config::Config;
pub use startup::Application;
