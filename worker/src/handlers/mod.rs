//! Handlers, one per job kind, looked up by kind name.
//!
//! A handler says *what happened* (success with a result, or an error that is retryable or
//! permanent); the [`runner`](crate::runner) decides what that means for the job.

pub mod analytics;
mod noop;
pub mod payments;
pub mod webhook;

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

pub use noop::Noop;

/// What a handler gets to work with.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: conveyor_shared::JobId,
    /// Whose job it is: every row a handler reads or writes is scoped to it.
    pub tenant: String,
    pub kind: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub payload: serde_json::Value,
    /// The job's trace with a parent id of this attempt's own: send it as `traceparent` on
    /// outgoing calls.
    pub traceparent: Option<conveyor_shared::trace::TraceParent>,
}

/// How a handler failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later, optionally not before `retry_after`.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way every time: the job goes to `dead`.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

pub type HandlerResult = Result<serde_json::Value, HandlerError>;

/// Runs jobs of one kind. Handlers must be idempotent: a job can be delivered again.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult>;
}

/// Handlers by kind name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
}

/// What handlers share: one Postgres pool and one HTTP client for the whole worker.
#[derive(Clone)]
pub struct Deps {
    pub pool: sqlx::PgPool,
    pub http: reqwest::Client,
}

impl Registry {
    /// Every handler this build knows, wired to the worker's configuration.
    pub fn for_worker(config: &crate::Config, deps: &Deps) -> Self {
        let mut registry = Self::default();
        registry.register("noop", Noop);
        let provider = crate::provider::PaymentProvider {
            http: deps.http.clone(),
            base_url: config.payment_url.clone(),
            api_key: config.payment_api_key.clone(),
        };
        registry.register(
            "payment.charge",
            payments::Charge {
                pool: deps.pool.clone(),
                provider: provider.clone(),
            },
        );
        registry.register(
            "payment.refund",
            payments::Refund {
                pool: deps.pool.clone(),
                provider,
            },
        );
        registry.register(
            "ledger.transfer",
            payments::Transfer {
                pool: deps.pool.clone(),
            },
        );
        registry.register(
            "analytics.track",
            analytics::Analytics::new(
                analytics::Settings {
                    base_url: config.analytics_url.clone(),
                    rps: config.analytics_rps,
                    batch_size: config.analytics_batch_size,
                    linger: config.analytics_linger,
                },
                deps.http.clone(),
            ),
        );
        registry.register(
            "webhook.deliver",
            webhook::Webhook::new(
                config.webhook_secret.as_ref(),
                crate::egress::EgressPolicy::new(config.egress_allow.clone()),
                Arc::new(crate::breaker::Breakers::new(
                    config.breaker_failures,
                    config.breaker_cooldown,
                )),
            ),
        );
        registry
    }

    pub fn register(&mut self, kind: &'static str, handler: impl Handler) {
        self.handlers.insert(kind, Arc::new(handler));
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}
