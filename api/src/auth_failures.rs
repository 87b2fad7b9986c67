//! Per-address budget for failed authentication: a client that keeps sending missing, malformed
//! or unknown tokens is answered 429 before its requests reach the key lookup in Postgres.
//!
//! Only failures (401 answers) are charged, so a client with a valid key is never slowed by this
//! limiter however busy it is. But once an address is over budget, *every* request from it is
//! refused until `Retry-After`, valid tokens included: telling them apart would take the very
//! database lookup this limiter exists to spare. The address is the TCP peer (`X-Forwarded-For`
//! is not trusted), so behind a reverse proxy every client shares the proxy's budget: raise it or
//! turn it off (`CONVEYOR_AUTH_FAIL_RPS=0`) there.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    Quota,
    clock::{Clock, DefaultClock},
    state::keyed::HashMapStateStore,
};
use tokio_util::sync::CancellationToken;

use crate::{error::ApiError, ratelimit::retry_after_secs};

type Keyed = governor::RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>;

/// How often addresses back at a full budget are forgotten.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// `None` inside when the limit is off (`CONVEYOR_AUTH_FAIL_RPS=0`).
pub struct AuthFailureLimiter {
    inner: Option<Inner>,
}

struct Inner {
    failures: Keyed,
    /// Addresses over budget, and when they may try again. governor cannot say whether a key
    /// would be refused without spending a cell when it would not, and the check in front of
    /// the lookup must not spend one (the request may carry a valid token), so the verdict of
    /// the failure that went over budget is kept here until it expires.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthFailureLimiter {
    /// `rps` failures per second per address, up to `burst` at once; `rps == 0` disables it.
    pub fn new(rps: u32, burst: u32) -> Self {
        let inner = NonZeroU32::new(rps).map(|rps| {
            let burst = NonZeroU32::new(burst).unwrap_or(rps);
            Inner {
                failures: governor::RateLimiter::new(
                    Quota::per_second(rps).allow_burst(burst),
                    HashMapStateStore::default(),
                    DefaultClock::default(),
                ),
                blocked: Mutex::new(HashMap::new()),
            }
        });
        Self { inner }
    }

    /// Before a request is handled: 429 while `ip` is over its budget.
    pub fn admit(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let now = Instant::now();
        match inner.blocked().get(&budget_of(ip)) {
            Some(&until) if until > now => Err(limited(until - now)),
            _ => Ok(()),
        }
    }

    /// After `ip` failed to authenticate: charges its budget; 429 when this failure was one
    /// too many.
    pub fn failed(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let ip = budget_of(ip);
        match inner.failures.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                inner.blocked().insert(ip, Instant::now() + wait);
                Err(limited(wait))
            }
        }
    }

    /// Forgets addresses whose budget is full again and blocks that have expired, so memory
    /// follows the addresses failing right now rather than every address ever seen.
    pub fn retain_recent(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.failures.retain_recent();
        inner.failures.shrink_to_fit();
        let now = Instant::now();
        let mut blocked = inner.blocked();
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
        metrics::gauge!("conveyor_http_auth_failure_addresses").set(inner.failures.len() as f64);
    }

    /// Addresses with a partly spent budget (for tests and the gauge).
    pub fn tracked(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.failures.len())
    }

    /// Calls [`Self::retain_recent`] every `every` until `shutdown`.
    pub async fn sweep(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        if self.inner.is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.retain_recent(),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

impl Inner {
    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // Each update is a single insert or retain: a panic elsewhere cannot leave it half done.
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The address a budget belongs to: IPv4 as is, IPv6 by its /64, since a single host is
/// usually given a whole /64 and could otherwise rotate through 2^64 fresh budgets (and grow
/// the map as fast). IPv4-mapped IPv6 peers (a dual-stack listener) count as their IPv4.
fn budget_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

fn limited(wait: Duration) -> ApiError {
    metrics::counter!("conveyor_http_auth_rate_limited_total").increment(1);
    ApiError::AuthRateLimited(retry_after_secs(wait))
}

/// Middleware on the authenticated routes: refuses an address over budget before the handler
/// (and its key lookup) runs, and charges the address for each 401 it is answered.
pub async fn guard(
    State(limiter): State<Arc<AuthFailureLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(ip) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
    else {
        // Served without a peer address (a router driven in-process): nothing to key on.
        return next.run(request).await;
    };
    if let Err(refused) = limiter.admit(ip) {
        return refused.into_response();
    }
    let response = next.run(request).await;
    // Only `auth::Caller` answers 401, so a 401 is exactly a failed authentication; reading the
    // status here keeps this limiter out of the authentication code.
    if response.status() == StatusCode::UNAUTHORIZED
        && let Err(refused) = limiter.failed(ip)
    {
        return refused.into_response();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_over_budget_is_refused_until_its_wait_is_over() {
        let limiter = AuthFailureLimiter::new(1, 2);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        limiter.admit(a).unwrap();
        limiter.failed(a).unwrap();
        limiter.failed(a).unwrap();
        assert!(matches!(
            limiter.failed(a),
            Err(ApiError::AuthRateLimited(1))
        ));
        assert!(matches!(
            limiter.admit(a),
            Err(ApiError::AuthRateLimited(1))
        ));
        // Another address has its own budget.
        limiter.admit(b).unwrap();
        limiter.failed(b).unwrap();
    }

    #[test]
    fn ipv6_hosts_share_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            budget_of(ip("2001:db8:1:2:aaaa::1")),
            budget_of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            budget_of(ip("2001:db8:1:2::1")),
            budget_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(budget_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        let limiter = AuthFailureLimiter::new(1, 1);
        limiter.failed(ip("2001:db8::1")).unwrap();
        assert!(limiter.failed(ip("2001:db8::2")).is_err());
    }

    #[test]
    fn retain_recent_forgets_addresses_with_a_full_budget() {
        // 1000 per second: a spent cell is back within a millisecond.
        let limiter = AuthFailureLimiter::new(1000, 1);
        for i in 0..50u8 {
            limiter.failed(IpAddr::from([198, 51, 100, i])).unwrap();
        }
        assert_eq!(limiter.tracked(), 50);
        let deadline = Instant::now() + Duration::from_secs(5);
        while limiter.tracked() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            limiter.retain_recent();
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn zero_disables() {
        let limiter = AuthFailureLimiter::new(0, 0);
        for _ in 0..10_000 {
            limiter.failed(ip("192.0.2.1")).unwrap();
        }
        limiter.admit(ip("192.0.2.1")).unwrap();
    }
}
