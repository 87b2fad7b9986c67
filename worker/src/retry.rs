//! When a failed attempt runs again: `base × 2^(attempt−1)`, capped at `max`, with full jitter
//! (a uniform delay between zero and that cap) so that jobs failing together do not retry
//! together. A delay the handler asks for (e.g. from `Retry-After`) wins, capped at `max`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.
    pub fn delay(&self, attempt: i32, requested: Option<Duration>) -> Duration {
        if let Some(requested) = requested {
            return requested.min(self.max);
        }
        let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_attempts_and_stays_under_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(p.delay(1, None) <= Duration::from_millis(100));
            assert!(p.delay(3, None) <= Duration::from_millis(400));
            assert!(p.delay(30, None) <= Duration::from_secs(1));
        }
        // Full jitter spreads delays: 200 draws are not all equal.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| p.delay(5, None)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn a_requested_delay_wins_but_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(90))),
            Duration::from_secs(1)
        );
    }
}
