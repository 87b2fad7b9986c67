//! Runs one claimed job and turns whatever happened into a [`Completion`].
//!
//! The handler's panic is caught as a failed attempt (the worker stays up), and it runs under
//! the job's `timeout_secs` so that a stuck handler becomes `timed_out`.
//! Whether a failure retries or goes to `dead` is decided here, not in handlers.

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use chrono::Utc;
use conveyor_shared::{
    Job, JobState,
    job::lifecycle::{Completion, Outcome},
    trace::TraceParent,
};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::{
    handlers::{HandlerError, JobContext, Registry},
    retry::RetryPolicy,
};

/// Runs `job` (already claimed: `attempts` is this attempt's number) and says how it ended.
pub async fn run_job(registry: &Registry, job: &Job, retry: &RetryPolicy) -> Completion {
    let traceparent = job.traceparent.as_deref().and_then(TraceParent::parse);
    let span = tracing::info_span!("job.run", job_id = %job.id, kind = %job.kind, queue = %job.queue, attempt = job.attempts, trace_id = tracing::field::Empty);
    if let Some(tp) = &traceparent {
        span.record("trace_id", tracing::field::display(tp.trace_id()));
    }
    async {
        let started = Instant::now();
        if let Some(started_at) = job.started_at {
            let wait = (started_at - job.run_at).to_std().unwrap_or_default();
            metrics::histogram!("conveyor_job_queue_wait_seconds", "queue" => job.queue.clone())
                .record(wait.as_secs_f64());
        }
        metrics::counter!("conveyor_jobs_started_total", "kind" => job.kind.clone(), "queue" => job.queue.clone())
            .increment(1);
        tracing::info!("job started");
        let ended = execute(registry, job, traceparent.map(|tp| tp.child())).await;
        let completion = classify(job, ended, retry);
        let elapsed = started.elapsed();
        let outcome = completion.outcome.as_str();
        metrics::counter!("conveyor_jobs_finished_total", "kind" => job.kind.clone(), "queue" => job.queue.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("conveyor_job_duration_seconds", "kind" => job.kind.clone(), "queue" => job.queue.clone())
            .record(elapsed.as_secs_f64());
        match &completion.error {
            None => tracing::info!(elapsed_ms = elapsed.as_millis() as u64, "job succeeded"),
            Some(error) => tracing::warn!(
                elapsed_ms = elapsed.as_millis() as u64,
                outcome,
                next_state = %completion.next_state,
                retry_at = ?completion.retry_at,
                error = %error,
                "job attempt failed"
            ),
        }
        completion
    }
    .instrument(span)
    .await
}

/// How the handler run ended, before retry policy is applied.
enum Ended {
    Ok(serde_json::Value),
    Failed(HandlerError),
    Panicked(String),
    TimedOut(Duration),
}

async fn execute(registry: &Registry, job: &Job, traceparent: Option<TraceParent>) -> Ended {
    let Some(handler) = registry.get(&job.kind) else {
        return Ended::Failed(HandlerError::Permanent(format!(
            "this worker has no handler for kind {:?}",
            job.kind
        )));
    };
    let ctx = JobContext {
        id: job.id,
        tenant: job.tenant.clone(),
        kind: job.kind.clone(),
        attempt: job.attempts,
        payload: job.payload.clone(),
        traceparent,
    };
    let limit = Duration::from_secs(job.timeout_secs.max(1) as u64);
    // Polled in this job's own task (no task of its own: a spawn per job costs a scheduler hop
    // before a short job can finish); a panic unwinds only as far as `catch_unwind`, and a
    // timeout drops the handler's future, which cancels it.
    let run = AssertUnwindSafe(handler.run(ctx)).catch_unwind();
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(Ok(value))) => Ended::Ok(value),
        Ok(Ok(Err(e))) => Ended::Failed(e),
        Ok(Err(panic)) => Ended::Panicked(panic_message(panic)),
        Err(_) => Ended::TimedOut(limit),
    }
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

fn classify(job: &Job, ended: Ended, retry: &RetryPolicy) -> Completion {
    let base = Completion {
        id: job.id,
        attempt: job.attempts,
        next_state: JobState::Succeeded,
        outcome: Outcome::Succeeded,
        result: None,
        error: None,
        retry_at: None,
    };
    let (outcome, error, retryable, requested) = match ended {
        Ended::Ok(value) => {
            return Completion {
                result: Some(value),
                ..base
            };
        }
        Ended::Failed(HandlerError::Permanent(msg)) => (Outcome::Failed, msg, false, None),
        Ended::Failed(HandlerError::Retryable {
            message,
            retry_after,
        }) => (Outcome::Failed, message, true, retry_after),
        Ended::Panicked(msg) => (
            Outcome::Failed,
            format!("handler panicked: {msg}"),
            true,
            None,
        ),
        Ended::TimedOut(limit) => (
            Outcome::TimedOut,
            format!("attempt exceeded timeout of {}s", limit.as_secs()),
            true,
            None,
        ),
    };
    if retryable && job.has_attempts_left() {
        let delay = retry.delay(job.attempts, requested);
        Completion {
            next_state: JobState::Retrying,
            outcome,
            error: Some(error),
            retry_at: Some(Utc::now() + delay),
            ..base
        }
    } else {
        let error = if retryable {
            format!(
                "{error} (gave up after {} attempts)",
                job.attempts - job.attempts_base
            )
        } else {
            error
        };
        Completion {
            next_state: JobState::Dead,
            outcome,
            error: Some(error),
            ..base
        }
    }
}
