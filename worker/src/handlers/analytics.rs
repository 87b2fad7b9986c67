//! `analytics.track`: forwards each job's event to the analytics service in batches, within a
//! request rate, and succeeds only once the service accepted that event.
//!
//! Jobs do not call the service themselves. Each hands its event (with the job id as event id, so
//! the service de-duplicates redeliveries and retries) to one batcher task per worker through a
//! bounded channel, then waits on a oneshot for its own verdict. The batcher closes a batch when it
//! is full or its linger expired, then waits for a send slot and for the rate limiter (governor);
//! events that arrive during that wait top the batch up, so the tighter the limit, the fuller the
//! batches. A 429 pauses every send for its `Retry-After` and the same batch is sent again; 5xx and
//! transport errors fail the batch's jobs retryably; a 4xx refusal of a batch is retried event by
//! event so one bad event cannot sink the others.
//!
//! A batch never holds more events than jobs the worker runs at once, since every job in it is
//! waiting: `CONVEYOR_WORKER_CONCURRENCY` bounds the useful `CONVEYOR_ANALYTICS_BATCH_SIZE`.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use conveyor_shared::kind::AnalyticsTrackPayload;
use futures_util::{FutureExt, future::BoxFuture};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::json;
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::Instant,
};

use super::{Handler, HandlerError, HandlerResult, JobContext};
use crate::response::{self, Verdict};

/// Batch requests in flight at once.
const MAX_IN_FLIGHT: usize = 4;
/// How many 429s one batch sits out in place before its jobs go back to the retry path.
const MAX_RATE_LIMITED_RETRIES: u32 = 5;
/// Pause after a 429 without a usable `Retry-After`.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// How the handler reaches the analytics service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service's base URL; events go to `{base}/analytics/v1/batch`.
    pub base_url: String,
    pub rps: u32,
    pub batch_size: usize,
    pub linger: Duration,
}

/// The `analytics.track` handler. The batcher task starts with the first job, inside the runtime.
pub struct Analytics {
    settings: Settings,
    http: reqwest::Client,
    batcher: OnceLock<mpsc::Sender<Pending>>,
}

/// One event as the service's batch endpoint takes it.
#[derive(Debug, Clone, Serialize)]
struct Event {
    id: String,
    event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    properties: serde_json::Value,
    timestamp: DateTime<Utc>,
}

/// An event waiting for its batch, and where its job waits for the verdict.
struct Pending {
    event: Event,
    reply: oneshot::Sender<Result<(), HandlerError>>,
}

impl Analytics {
    pub fn new(settings: Settings, http: reqwest::Client) -> Self {
        Self {
            settings,
            http,
            batcher: OnceLock::new(),
        }
    }

    fn batcher(&self) -> mpsc::Sender<Pending> {
        self.batcher
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel(self.settings.batch_size.max(1) * 2);
                let batcher = Batcher {
                    rx,
                    batch_size: self.settings.batch_size.max(1),
                    linger: self.settings.linger,
                    slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                    client: Arc::new(Client::new(&self.settings, self.http.clone())),
                };
                tokio::spawn(batcher.run());
                tx
            })
            .clone()
    }
}

impl Handler for Analytics {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult> {
        let batcher = self.batcher();
        async move {
            let payload: AnalyticsTrackPayload = serde_json::from_value(job.payload)
                .map_err(|e| HandlerError::Permanent(format!("invalid analytics payload: {e}")))?;
            let (reply, verdict) = oneshot::channel();
            let pending = Pending {
                event: Event {
                    id: job.id.to_string(),
                    event: payload.event,
                    user_id: payload.user_id,
                    properties: payload.properties,
                    timestamp: Utc::now(),
                },
                reply,
            };
            batcher
                .send(pending)
                .await
                .map_err(|_| HandlerError::retryable("the analytics batcher has stopped"))?;
            match verdict.await {
                Ok(Ok(())) => Ok(json!({"forwarded": true})),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(HandlerError::retryable(
                    "the analytics batcher dropped the event without a verdict",
                )),
            }
        }
        .boxed()
    }
}

/// Collects events into batches and hands each to a sending task.
struct Batcher {
    rx: mpsc::Receiver<Pending>,
    batch_size: usize,
    linger: Duration,
    slots: Arc<Semaphore>,
    client: Arc<Client>,
}

impl Batcher {
    async fn run(mut self) {
        // Ends once every sender is gone (the handler registry was dropped) and the queue is empty.
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                }
            }
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return; // the semaphore is never closed
            };
            self.client.ready().await;
            while batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            // A job whose attempt timed out no longer waits; its retry will send the event again.
            batch.retain(|p| !p.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let client = self.client.clone();
            tokio::spawn(async move {
                client.deliver(batch).await;
                drop(slot);
            });
        }
    }
}

/// The analytics service's batch endpoint behind the rate limiter.
struct Client {
    http: reqwest::Client,
    url: String,
    limiter: DefaultDirectRateLimiter,
    /// Set by a 429: no request goes out before this instant.
    paused_until: Mutex<Option<Instant>>,
}

/// How one batch request failed.
enum Failure {
    RateLimited(Duration),
    Other(HandlerError),
}

impl Client {
    fn new(settings: &Settings, http: reqwest::Client) -> Self {
        let rps = NonZeroU32::new(settings.rps).unwrap_or(NonZeroU32::MIN);
        Self {
            http,
            url: format!(
                "{}/analytics/v1/batch",
                settings.base_url.trim_end_matches('/')
            ),
            limiter: RateLimiter::direct(Quota::per_second(rps)),
            paused_until: Mutex::new(None),
        }
    }

    /// Waits out a 429 pause, then for a rate-limiter cell. Every request is preceded by this.
    async fn ready(&self) {
        loop {
            let until = *self
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
    }

    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *paused = Some(paused.map_or(until, |p| p.max(until)));
    }

    /// Sends `batch` (a rate-limiter cell was already taken for it) and tells every job.
    async fn deliver(&self, batch: Vec<Pending>) {
        let events: Vec<&Event> = batch.iter().map(|p| &p.event).collect();
        let outcome = self.send_with_retries(&events).await;
        tracing::debug!(
            events = batch.len(),
            ok = outcome.is_ok(),
            "analytics batch sent"
        );
        metrics::counter!("conveyor_analytics_batches_total", "outcome" => if outcome.is_ok() { "accepted" } else { "failed" })
            .increment(1);
        match outcome {
            Err(HandlerError::Permanent(reason)) if batch.len() > 1 => {
                tracing::warn!(%reason, events = batch.len(), "analytics batch refused; sending its events one by one");
                for pending in batch {
                    self.ready().await;
                    let outcome = self.send_with_retries(&[&pending.event]).await;
                    let _ = pending.reply.send(outcome);
                }
            }
            outcome => {
                for pending in batch {
                    let _ = pending.reply.send(outcome.clone());
                }
            }
        }
    }

    async fn send_with_retries(&self, events: &[&Event]) -> Result<(), HandlerError> {
        let mut limited = 0;
        loop {
            match self.send(events).await {
                Ok(()) => return Ok(()),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::RateLimited(wait)) => {
                    metrics::counter!("conveyor_analytics_rate_limited_total").increment(1);
                    self.pause(wait);
                    limited += 1;
                    if limited > MAX_RATE_LIMITED_RETRIES {
                        return Err(HandlerError::Retryable {
                            message: format!(
                                "the analytics service kept answering 429 ({limited} times)"
                            ),
                            retry_after: Some(wait),
                        });
                    }
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "analytics service rate limited us; pausing sends"
                    );
                    self.ready().await;
                }
            }
        }
    }

    async fn send(&self, events: &[&Event]) -> Result<(), Failure> {
        let response = self
            .http
            .post(&self.url)
            .json(&json!({ "events": events }))
            .send()
            .await
            .map_err(|e| {
                Failure::Other(HandlerError::retryable(format!(
                    "analytics service unreachable: {}",
                    response::describe(e)
                )))
            })?;
        let status = response.status();
        let wait = response::retry_after(response.headers());
        // Read (capped) even on success, so the connection goes back to the pool.
        let body = response::read_capped(response, response::MAX_BODY_BYTES)
            .await
            .unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::RateLimited(
                wait.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE),
            ));
        }
        let verdict = response::verdict(status);
        if verdict == Verdict::Success {
            // The answer only counts events; a 2xx means every one of them is stored.
            return Ok(());
        }
        let message = format!(
            "analytics service answered {status}: {}",
            response::snippet(&body)
        );
        Err(Failure::Other(match verdict {
            Verdict::Retry => HandlerError::Retryable {
                message,
                retry_after: wait,
            },
            _ => HandlerError::Permanent(message),
        }))
    }
}
