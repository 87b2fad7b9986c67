//! Fault injection for the service POSTs, in the order a client meets them: rate limit (429 with
//! `Retry-After`), added latency, then a failure drawn at `failure_rate`.
//!
//! A failure is a 500 or 503 answered *before* the request is processed (nothing booked), or, when a
//! stall is configured, a request processed normally whose answer is then held back: the effect happens
//! but the client times out, which is exactly the case idempotency keys exist for.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;

use crate::config::FaultConfig;
use crate::error::ErrorResponse;

/// The faults to inject, shared by every request.
#[derive(Debug)]
pub struct Faults {
    failure_rate: f64,
    latency: Option<Duration>,
    stall: Option<Duration>,
    limiter: Option<Mutex<TokenBucket>>,
}

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    InternalError,
    Unavailable,
    /// Process the request, then hold the answer this long.
    Stall(Duration),
}

impl Faults {
    pub fn new(config: &FaultConfig) -> Self {
        let limiter = (config.rate_limit > 0)
            .then(|| Mutex::new(TokenBucket::new(config.rate_limit, Instant::now())));
        Self {
            failure_rate: config.failure_rate,
            latency: config.latency(),
            stall: config.stall(),
            limiter,
        }
    }

    /// `Err(wait)` when the rate limit is exhausted.
    fn admit(&self) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(bucket) => bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_take(Instant::now()),
        }
    }

    /// Draw whether this request fails, and how.
    fn roll(&self) -> Option<Fault> {
        let mut rng = rand::rng();
        if self.failure_rate <= 0.0 || rng.random::<f64>() >= self.failure_rate {
            return None;
        }
        let kinds = if self.stall.is_some() { 3 } else { 2 };
        Some(match (rng.random_range(0..kinds), self.stall) {
            (0, _) => Fault::InternalError,
            (1, _) | (_, None) => Fault::Unavailable,
            (_, Some(hold)) => Fault::Stall(hold),
        })
    }
}

/// Middleware for the service routes; health probes and GETs pass untouched.
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    if let Err(wait) = faults.admit() {
        tracing::debug!(path = %request.uri().path(), "rate limited");
        return rate_limited(wait);
    }
    if let Some(latency) = faults.latency {
        tokio::time::sleep(latency).await;
    }
    let Some(fault) = faults.roll() else {
        return next.run(request).await;
    };
    tracing::debug!(path = %request.uri().path(), ?fault, "injecting fault");
    match fault {
        Fault::InternalError => ErrorResponse::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "injected fault",
        )
        .into_response(),
        Fault::Unavailable => ErrorResponse::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "injected fault",
        )
        .into_response(),
        Fault::Stall(hold) => {
            let response = next.run(request).await;
            tokio::time::sleep(hold).await;
            response
        }
    }
}

fn rate_limited(wait: Duration) -> Response {
    // Retry-After takes whole seconds; never say 0, which would invite an immediate retry storm.
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ErrorResponse::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A token bucket holding one second's worth of requests, refilled continuously.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full. `per_second` must be at least 1.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Take one token, or say how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_second_of_burst_then_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, start);
        assert_eq!(bucket.try_take(start), Ok(()));
        assert_eq!(bucket.try_take(start), Ok(()));
        let wait = bucket
            .try_take(start)
            .expect_err("third request in the same instant is over the limit");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.try_take(start + Duration::from_millis(250)).is_err());
        assert_eq!(bucket.try_take(start + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let header = |wait| {
            rate_limited(wait).headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(header(Duration::from_millis(10)), "1");
        assert_eq!(header(Duration::from_millis(1500)), "2");
    }

    #[test]
    fn failure_rate_zero_and_one_are_exact() {
        let never = Faults::new(&FaultConfig::default());
        assert!((0..1000).all(|_| never.roll().is_none()));
        let always = Faults::new(&FaultConfig {
            failure_rate: 1.0,
            ..FaultConfig::default()
        });
        assert!((0..1000).all(|_| matches!(
            always.roll(),
            Some(Fault::InternalError | Fault::Unavailable)
        )));
    }
}
