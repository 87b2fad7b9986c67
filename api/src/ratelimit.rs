//! Per-key request budgets: a GCRA limiter (governor) keyed by the API key id, so a tenant's
//! keys are limited one by one and no client can spend another's budget by sharing an address.
//!
//! A request costs one cell when it is authenticated ([`crate::auth::Caller`]); a batch then
//! pays one more per job beyond the first ([`RateLimiter::charge_extra`]), so `POST
//! /v1/jobs/batch` with N jobs costs N, the same as N single requests: the batch route is no
//! way around the limit.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    Quota,
    clock::{Clock, DefaultClock},
    state::keyed::HashMapStateStore,
};
use uuid::Uuid;

use crate::error::ApiError;

type Keyed = governor::RateLimiter<Uuid, HashMapStateStore<Uuid>, DefaultClock>;

/// `None` inside when limits are off (`CONVEYOR_RATE_LIMIT_RPS=0`).
pub struct RateLimiter {
    limiter: Option<Keyed>,
    burst: u32,
}

impl RateLimiter {
    /// `rps` cells per second per key, up to `burst` at once; `rps == 0` disables limiting.
    pub fn new(rps: u32, burst: u32) -> Self {
        let Some(rps) = NonZeroU32::new(rps) else {
            return Self {
                limiter: None,
                burst: 0,
            };
        };
        let burst = NonZeroU32::new(burst).unwrap_or(rps);
        let quota = Quota::per_second(rps).allow_burst(burst);
        Self {
            limiter: Some(governor::RateLimiter::new(
                quota,
                HashMapStateStore::default(),
                DefaultClock::default(),
            )),
            burst: burst.get(),
        }
    }

    /// Takes one cell from `key`'s budget, or answers 429 with when to come back.
    pub fn check(&self, key: Uuid) -> Result<(), ApiError> {
        self.charge(key, 1)
    }

    /// Takes `n - 1` more cells: what a batch of `n` jobs owes after the request's own cell.
    /// A batch larger than the burst could never pass, so it is refused as invalid rather
    /// than told to wait.
    pub fn charge_extra(&self, key: Uuid, n: usize) -> Result<(), ApiError> {
        if self.limiter.is_some() && n > self.burst as usize {
            return Err(self.over_burst());
        }
        self.charge(key, n.saturating_sub(1))
    }

    fn over_burst(&self) -> ApiError {
        ApiError::field(
            "jobs",
            format!(
                "this key may send at most {} jobs at once (its rate-limit burst); split the batch",
                self.burst
            ),
        )
    }

    fn charge(&self, key: Uuid, n: usize) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(cells) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiter.check_key_n(&key, cells) {
            Ok(Ok(())) => Ok(()),
            // Not reached: `n` never exceeds the burst (checked above).
            Err(_) => Err(self.over_burst()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!("conveyor_http_rate_limited_total").increment(1);
                Err(ApiError::RateLimited(retry_after_secs(wait)))
            }
        }
    }
}

/// Whole seconds to wait, rounded up and at least 1 (`Retry-After` has no finer unit).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn keys_have_separate_budgets_and_batches_pay_per_job() {
        let limiter = RateLimiter::new(1, 3);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        limiter.check(a).unwrap();
        limiter.charge_extra(a, 3).unwrap(); // a batch of 3: its budget is spent
        assert!(matches!(limiter.check(a), Err(ApiError::RateLimited(1))));
        limiter.check(b).unwrap();
        assert!(matches!(
            limiter.charge_extra(b, 10),
            Err(ApiError::Validation(_))
        ));
    }

    #[test]
    fn zero_disables() {
        let limiter = RateLimiter::new(0, 0);
        let key = Uuid::new_v4();
        for _ in 0..10_000 {
            limiter.check(key).unwrap();
        }
    }
}
