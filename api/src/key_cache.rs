//! A short-lived cache of what bearer tokens are, so that a busy key costs Postgres one lookup
//! per `ttl` instead of one per request (on the single-job path that lookup was a third of
//! Postgres's work per request).
//!
//! What stays exact: a revocation or rotation (`keys revoke`, `keys rotate`) NOTIFYs
//! [`KEYS_CHANNEL`] in its transaction and every api empties its cache when told; a key's
//! expiry is checked against the cached `expires_at` at each request (by this machine's
//! clock). What may lag by up to `ttl`: a change made to `api_keys` by hand in SQL, or one
//! made while this api's LISTEN connection was down (the cache is emptied when it comes back,
//! too), and `last_used_at`, which is refreshed by the lookups, so to within a minute plus `ttl`.
//! Only valid keys are cached: an unknown or expired token always reaches Postgres (and the
//! per-address failure limit).
//!
//! Hand-written rather than a caching crate: it needs an expiry per entry, a wholesale clear
//! and nothing else, about forty lines; the crates that offer it bring far more than that.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use conveyor_shared::{
    config::DatabaseConfig,
    db,
    keys::{ApiKey, Authentication, KEYS_CHANNEL, Principal, token_digest},
};
use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

/// More distinct valid keys than any tenant set should have in a `ttl`; beyond it the cache
/// starts over rather than grow.
const MAX_ENTRIES: usize = 10_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Cached>>,
    /// Bumped by every clear, so a lookup that raced a revocation is not stored stale.
    generation: AtomicU64,
}

struct Cached {
    principal: Principal,
    fetched: Instant,
}

impl KeyCache {
    /// A `ttl` of zero turns the cache off: every request asks Postgres.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub async fn authenticate(&self, pool: &PgPool, token: &str) -> sqlx::Result<Authentication> {
        let digest = token_digest(token);
        if self.ttl.is_zero() {
            return ApiKey::authenticate(pool, &digest).await;
        }
        if let Some(principal) = self.get(&digest) {
            return Ok(match principal.expires_at {
                Some(at) if at <= Utc::now() => Authentication::Expired,
                _ => Authentication::Valid(principal),
            });
        }
        let generation = self.generation.load(Ordering::Acquire);
        let found = ApiKey::authenticate(pool, &digest).await?;
        if let Authentication::Valid(principal) = &found {
            let mut entries = self.entries.lock().expect("key cache lock");
            if self.generation.load(Ordering::Acquire) == generation {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(
                    digest,
                    Cached {
                        principal: principal.clone(),
                        fetched: Instant::now(),
                    },
                );
            }
        }
        Ok(found)
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Principal> {
        let mut entries = self.entries.lock().expect("key cache lock");
        match entries.get(digest) {
            Some(c) if c.fetched.elapsed() < self.ttl => Some(c.principal.clone()),
            Some(_) => {
                entries.remove(digest);
                None
            }
            None => None,
        }
    }

    fn clear(&self) {
        let mut entries = self.entries.lock().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Empties the cache whenever a key is revoked or rotated anywhere, and whenever the
    /// LISTEN connection is lost (it may have missed a notification), until `shutdown`. The
    /// LISTEN has a connection of its own (it holds it for good; the handlers' pool keeps all
    /// of its), opened only when the cache is on.
    pub async fn follow_revocations(&self, database: DatabaseConfig, shutdown: CancellationToken) {
        if self.ttl.is_zero() {
            return;
        }
        loop {
            let mut listener = match listen(&database).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "key cache cannot LISTEN; retrying");
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            // Anything cached before the LISTEN began may have missed a notification.
            self.clear();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    message = listener.try_recv() => match message {
                        Ok(Some(_)) => self.clear(),
                        // The connection was lost: notifications may have been missed.
                        Ok(None) | Err(_) => {
                            self.clear();
                            break;
                        }
                    }
                }
            }
        }
    }
}

async fn listen(database: &DatabaseConfig) -> anyhow::Result<PgListener> {
    let pool = db::connect_pool(database, 1, &[]).await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(KEYS_CHANNEL).await?;
    Ok(listener)
}

/// Waits a second before trying again; true when `shutdown` came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
    }
}
