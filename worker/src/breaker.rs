//! Circuit breakers, one per destination host: after `threshold` consecutive failures a host's
//! circuit opens and attempts fail fast (retryably, with the remaining cool-down as their delay)
//! instead of hammering a dead endpoint; after the cool-down one probe goes through (half-open),
//! and its outcome closes or re-opens the circuit.
//!
//! State is per worker process and in memory: replicas learn on their own, which is fine for a
//! guard whose job is only to shed load quickly.
//!
//! Exported as the gauge `conveyor_breaker_state{host}` (0 closed, 1 open, 2 half-open).
//! **Cardinality:** hosts come from tenant-supplied URLs, so the label set is unbounded in
//! principle. Only hosts whose circuit has opened at least once get a series, and at most
//! [`MAX_LABELLED_HOSTS`] of them per process; past that, transitions are visible only in the
//! unlabelled `conveyor_breaker_opened_total`. The in-memory map is bounded the same way.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Distinct `host` label values this process exports at most.
pub const MAX_LABELLED_HOSTS: usize = 200;
/// Hosts with failures or an open circuit tracked at most; closed ones are dropped first.
const MAX_TRACKED_HOSTS: usize = 10_000;

/// What a host's circuit is doing, as exported in the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

#[derive(Debug, Clone, Copy)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out since `since`; if it never reports back (its task was aborted), another
    /// is let through after a further cool-down.
    HalfOpen {
        since: Instant,
    },
}

/// The breakers of every host this worker calls.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Only hosts that are not plainly healthy: a success removes the entry.
    hosts: HashMap<String, Circuit>,
    labelled: HashSet<String>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::default(),
        }
    }

    /// `Ok` when a request to `host` may go out now; `Err(wait)` while its circuit is open.
    pub fn admit(&self, host: &str) -> Result<(), Duration> {
        self.admit_at(host, Instant::now())
    }

    /// The request to `host` got an answer that shows the host works (including a 4xx).
    pub fn success(&self, host: &str) {
        let mut inner = self.lock();
        if let Some(previous) = inner.hosts.remove(host)
            && !matches!(previous, Circuit::Closed { .. })
        {
            inner.export(host, State::Closed);
        }
    }

    /// The request to `host` failed in a way that suggests the host is down or overloaded.
    pub fn failure(&self, host: &str) {
        self.failure_at(host, Instant::now());
    }

    pub fn state(&self, host: &str) -> State {
        match self.lock().hosts.get(host) {
            None | Some(Circuit::Closed { .. }) => State::Closed,
            Some(Circuit::Open { .. }) => State::Open,
            Some(Circuit::HalfOpen { .. }) => State::HalfOpen,
        }
    }

    fn admit_at(&self, host: &str, now: Instant) -> Result<(), Duration> {
        let mut inner = self.lock();
        let Some(circuit) = inner.hosts.get_mut(host) else {
            return Ok(());
        };
        match *circuit {
            Circuit::Closed { .. } => Ok(()),
            Circuit::Open { until } if now < until => Err(until - now),
            Circuit::HalfOpen { since } if now < since + self.cooldown => {
                Err(since + self.cooldown - now)
            }
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => {
                *circuit = Circuit::HalfOpen { since: now };
                inner.export(host, State::HalfOpen);
                Ok(())
            }
        }
    }

    fn failure_at(&self, host: &str, now: Instant) {
        let mut inner = self.lock();
        let next = match inner.hosts.get(host).copied() {
            None => {
                if inner.hosts.len() >= MAX_TRACKED_HOSTS {
                    inner
                        .hosts
                        .retain(|_, c| !matches!(c, Circuit::Closed { .. }));
                    if inner.hosts.len() >= MAX_TRACKED_HOSTS {
                        return; // fail open rather than grow without bound
                    }
                }
                self.count(0, now)
            }
            Some(Circuit::Closed { failures }) => self.count(failures, now),
            Some(Circuit::HalfOpen { .. }) => Circuit::Open {
                until: now + self.cooldown,
            },
            // A request admitted before the circuit opened: the cool-down already runs.
            Some(Circuit::Open { .. }) => return,
        };
        inner.hosts.insert(host.to_owned(), next);
        if let Circuit::Open { .. } = next {
            metrics::counter!("conveyor_breaker_opened_total").increment(1);
            tracing::warn!(
                host,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "circuit opened"
            );
            inner.export(host, State::Open);
        }
    }

    /// The circuit after one more consecutive failure on top of `failures`.
    fn count(&self, failures: u32, now: Instant) -> Circuit {
        let failures = failures.saturating_add(1);
        if failures >= self.threshold {
            Circuit::Open {
                until: now + self.cooldown,
            }
        } else {
            Circuit::Closed { failures }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code panics while holding the lock; a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn export(&mut self, host: &str, state: State) {
        if !self.labelled.contains(host) {
            if self.labelled.len() >= MAX_LABELLED_HOSTS {
                return;
            }
            self.labelled.insert(host.to_owned());
        }
        metrics::gauge!("conveyor_breaker_state", "host" => host.to_owned())
            .set(state as u8 as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breakers::new(3, COOL);
        let t = Instant::now();
        b.failure_at("a:80", t);
        b.failure_at("a:80", t);
        b.success("a:80"); // a success resets the count
        b.failure_at("a:80", t);
        b.failure_at("a:80", t);
        assert_eq!(b.state("a:80"), State::Closed);
        assert_eq!(b.admit_at("a:80", t), Ok(()));
        b.failure_at("a:80", t);
        assert_eq!(b.state("a:80"), State::Open);
        assert!(b.admit_at("a:80", t).is_err());
        // Other hosts are unaffected.
        assert_eq!(b.admit_at("b:80", t), Ok(()));
    }

    #[test]
    fn fails_fast_for_the_cool_down_then_lets_one_probe_through() {
        let b = Breakers::new(1, COOL);
        let t = Instant::now();
        b.failure_at("a:80", t);
        let wait = b.admit_at("a:80", t + Duration::from_secs(4)).unwrap_err();
        assert!(
            wait <= Duration::from_secs(6) && wait > Duration::from_secs(5),
            "{wait:?}"
        );
        let later = t + COOL + Duration::from_secs(1);
        assert_eq!(b.admit_at("a:80", later), Ok(()), "the probe");
        assert_eq!(b.state("a:80"), State::HalfOpen);
        assert!(
            b.admit_at("a:80", later).is_err(),
            "only one probe at a time"
        );
        b.success("a:80");
        assert_eq!(b.state("a:80"), State::Closed);
        assert_eq!(b.admit_at("a:80", later), Ok(()));
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_is_replaced() {
        let b = Breakers::new(1, COOL);
        let t = Instant::now();
        b.failure_at("a:80", t);
        let probe = t + COOL;
        assert_eq!(b.admit_at("a:80", probe), Ok(()));
        b.failure_at("a:80", probe);
        assert_eq!(b.state("a:80"), State::Open);
        assert!(b.admit_at("a:80", probe + COOL / 2).is_err());
        // A probe that never reports (its task was aborted) does not wedge the circuit.
        let second = probe + COOL;
        assert_eq!(b.admit_at("a:80", second), Ok(()));
        assert!(b.admit_at("a:80", second + COOL / 2).is_err());
        assert_eq!(b.admit_at("a:80", second + COOL), Ok(()));
    }
}
