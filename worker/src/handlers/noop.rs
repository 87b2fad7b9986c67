//! `noop`: sleeps, fails or panics on request. For smoke tests, fault tests and benchmarks.

use std::time::Duration;

use conveyor_shared::kind::NoopPayload;
use futures_util::{FutureExt, future::BoxFuture};
use serde_json::json;

use super::{Handler, HandlerError, HandlerResult, JobContext};

pub struct Noop;

impl Handler for Noop {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult> {
        async move {
            let payload: NoopPayload = serde_json::from_value(job.payload)
                .map_err(|e| HandlerError::Permanent(format!("invalid noop payload: {e}")))?;
            if let Some(ms) = payload.sleep_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if payload.panic == Some(true) {
                panic!("noop panicked as asked (attempt {})", job.attempt);
            }
            if payload.fail_permanently == Some(true) {
                return Err(HandlerError::Permanent(
                    "noop failing permanently as asked".into(),
                ));
            }
            let fail_times = payload.fail_times.unwrap_or(0) as i32;
            if job.attempt <= fail_times {
                return Err(HandlerError::Retryable {
                    message: format!(
                        "noop failing as asked (attempt {} of {fail_times} failures)",
                        job.attempt
                    ),
                    retry_after: payload.retry_after_ms.map(Duration::from_millis),
                });
            }
            Ok(json!({"ok": true, "attempt": job.attempt}))
        }
        .boxed()
    }
}
