//! API keys. A token is shown once, at creation; Postgres keeps only its SHA-256 digest
//! (tokens carry ~238 bits of randomness, so a slow password hash would add nothing) and looks
//! keys up by that digest. Every key belongs to one tenant; every query the API runs for a
//! request is scoped to that tenant.
//!
//! A key may expire (`expires_at`). Rotation issues a new key with the same tenant, name and
//! scopes and lets the old one expire after an overlap, so clients can switch without downtime:
//! for that span both keys are valid.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, distr::Alphanumeric};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// What a key may do. `admin` implies the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    #[serde(rename = "jobs:write")]
    JobsWrite,
    #[serde(rename = "jobs:read")]
    JobsRead,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Self::JobsWrite, Self::JobsRead, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobsWrite => "jobs:write",
            Self::JobsRead => "jobs:read",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    /// When the key stops authenticating (`None`: never), so that a cached principal can be
    /// refused on time.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|s| *s == scope || *s == Scope::Admin)
    }
}

/// A stored key, as `keys list` shows it (never the token).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub token_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key stops authenticating; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The last successful authentication, to within a minute (it is refreshed at most once
    /// a minute); `None`: never used.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The columns of [`ApiKey`], for `RETURNING` and `SELECT` (a macro so queries stay literals).
macro_rules! key_columns {
    () => {
        "id, tenant, name, token_prefix, scopes, created_at, revoked_at, expires_at, last_used_at"
    };
}

/// What a bearer token turned out to be.
#[derive(Debug, Clone)]
pub enum Authentication {
    Valid(Principal),
    /// The token belongs to a key whose `expires_at` has passed. Only a caller holding a real
    /// (formerly valid) token learns this; any other token is [`Authentication::Unknown`].
    Expired,
    /// No such token, or its key was revoked.
    Unknown,
}

/// A key issued by [`ApiKey::rotate`], and the old key as it now is.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub old: ApiKey,
    pub new: ApiKey,
    /// The new key's token, shown once.
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid tenant {0:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_'")]
    InvalidTenant(String),
    #[error("a key needs at least one scope")]
    NoScopes,
    #[error("no active key with id {0}")]
    NotActive(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub const TENANT_DEFAULT: &str = "default";
const TOKEN_PREFIX: &str = "cvy_";

pub fn valid_tenant(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The NOTIFY channel told of every revocation and rotation, so that caches of
/// [`ApiKey::authenticate`] (the api's) drop what they hold at once.
pub const KEYS_CHANNEL: &str = "conveyor_api_keys";

/// The SHA-256 of a token: what Postgres stores and looks keys up by.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The first characters of a token, enough to recognise a key in `keys list`.
fn display_prefix(token: &str) -> String {
    token.chars().take(TOKEN_PREFIX.len() + 4).collect()
}

impl ApiKey {
    /// Creates a key that never expires and returns it with its token, which is not stored
    /// anywhere.
    pub async fn create(
        db: impl PgExecutor<'_>,
        tenant: &str,
        name: &str,
        scopes: &[Scope],
    ) -> Result<(ApiKey, String), KeyError> {
        Self::create_expiring(db, tenant, name, scopes, None).await
    }

    /// Creates a key valid for `lifetime` from now (forever when `None`).
    pub async fn create_expiring(
        db: impl PgExecutor<'_>,
        tenant: &str,
        name: &str,
        scopes: &[Scope],
        lifetime: Option<Duration>,
    ) -> Result<(ApiKey, String), KeyError> {
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let token = new_token();
        let key = Self::insert(db, tenant, name, &scopes, &token, lifetime).await?;
        Ok((key, token))
    }

    async fn insert(
        db: impl PgExecutor<'_>,
        tenant: &str,
        name: &str,
        scopes: &[&str],
        token: &str,
        lifetime: Option<Duration>,
    ) -> Result<ApiKey, KeyError> {
        if !valid_tenant(tenant) {
            return Err(KeyError::InvalidTenant(tenant.to_owned()));
        }
        if scopes.is_empty() {
            return Err(KeyError::NoScopes);
        }
        Ok(sqlx::query_as(concat!(
            "INSERT INTO api_keys (id, tenant, name, token_sha256, token_prefix, scopes,
                                   expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + $7)
             RETURNING ",
            key_columns!()
        ))
        .bind(Uuid::new_v4())
        .bind(tenant)
        .bind(name)
        .bind(token_digest(token).as_slice())
        .bind(display_prefix(token))
        .bind(scopes)
        .bind(lifetime)
        .fetch_one(db)
        .await?)
    }

    /// Issues a successor of key `id` (same tenant, name and scopes; valid for `lifetime`, or
    /// forever) and makes the old key expire `overlap` from now, unless it already expires
    /// sooner: a rotation never extends a key's life. Both keys are valid during the overlap.
    ///
    /// Run it in a transaction (with its audit entry): the old key's row lock, taken first,
    /// makes concurrent rotations of one key take turns.
    pub async fn rotate(
        tx: &mut PgConnection,
        id: Uuid,
        overlap: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Rotation, KeyError> {
        let old: ApiKey = sqlx::query_as(concat!(
            "UPDATE api_keys
             SET expires_at = LEAST(expires_at, now() + $2)
             WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
             RETURNING ",
            key_columns!()
        ))
        .bind(id)
        .bind(overlap)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(KeyError::NotActive(id))?;
        // The old key's expiry moved: caches holding it must read it again.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(KEYS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        let scopes: Vec<&str> = old.scopes.iter().map(String::as_str).collect();
        let token = new_token();
        let new = Self::insert(&mut *tx, &old.tenant, &old.name, &scopes, &token, lifetime).await?;
        Ok(Rotation { old, new, token })
    }

    /// Makes `token` a valid admin key of tenant `default` (CONVEYOR_BOOTSTRAP_TOKEN), once.
    /// A key with this token that was since revoked or expired (rotated) is left so: a restart
    /// must not bring back a key an operator retired.
    pub async fn ensure_bootstrap(pool: &PgPool, token: &str) -> Result<(), KeyError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE token_sha256 = $1)")
                .bind(token_digest(token).as_slice())
                .fetch_one(pool)
                .await?;
        if !exists {
            let scopes = Scope::ALL.map(Scope::as_str);
            match Self::insert(pool, TENANT_DEFAULT, "bootstrap", &scopes, token, None).await {
                Ok(_) => tracing::info!(tenant = TENANT_DEFAULT, "bootstrap admin key created"),
                // Another api replica inserted it first.
                Err(KeyError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Keys, optionally of one tenant, newest first.
    pub async fn list(pool: &PgPool, tenant: Option<&str>) -> sqlx::Result<Vec<ApiKey>> {
        sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys
             WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at DESC"
        ))
        .bind(tenant)
        .fetch_all(pool)
        .await
    }

    /// Revokes a key; returns its tenant, or `None` when no active key has this id.
    /// The caches are told in the same statement (a NOTIFY is delivered at commit).
    pub async fn revoke(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(
            "WITH revoked AS (
                 UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
                 RETURNING tenant
             )
             SELECT tenant, pg_notify($2, '') FROM revoked",
        )
        .bind(id)
        .bind(KEYS_CHANNEL)
        .fetch_optional(db)
        .await
    }

    /// What the bearer token of SHA-256 `digest` ([`token_digest`]) is, refreshing its key's
    /// `last_used_at` when valid. It takes the digest, not the token, because its caller (the
    /// api's cache) has already hashed the token to look it up.
    ///
    /// One statement, so one round trip: the lookup and the refresh are folded together. The
    /// refresh writes only when the stored value is over a minute old, so a key used thousands
    /// of times a second costs one row write a minute, and a request whose key was used in the
    /// last minute writes nothing (no row lock, no WAL). The age test names the table's column,
    /// not the CTE's snapshot: concurrent requests that queue behind the one refreshing see its
    /// new value when Postgres rechecks the row, and skip their own write.
    pub async fn authenticate(pool: &PgPool, digest: &[u8; 32]) -> sqlx::Result<Authentication> {
        type Row = (Uuid, String, Vec<String>, Option<DateTime<Utc>>, bool);
        let row: Option<Row> = sqlx::query_as(
            "WITH key AS (
                 SELECT id, tenant, scopes, expires_at,
                        expires_at IS NOT NULL AND expires_at <= now() AS expired
                 FROM api_keys
                 WHERE token_sha256 = $1 AND revoked_at IS NULL
             ), touch AS (
                 UPDATE api_keys SET last_used_at = now()
                 FROM key
                 WHERE api_keys.id = key.id AND NOT key.expired
                   AND (api_keys.last_used_at IS NULL
                        OR api_keys.last_used_at < now() - interval '60 seconds')
             )
             SELECT id, tenant, scopes, expires_at, expired FROM key",
        )
        .bind(digest.as_slice())
        .fetch_optional(pool)
        .await?;
        Ok(match row {
            None => Authentication::Unknown,
            Some((_, _, _, _, true)) => Authentication::Expired,
            Some((key_id, tenant, scopes, expires_at, false)) => Authentication::Valid(Principal {
                key_id,
                tenant,
                scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                expires_at,
            }),
        })
    }
}

fn new_token() -> String {
    format!(
        "{TOKEN_PREFIX}{}",
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(40)
            .map(char::from)
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope() {
        let p = Principal {
            key_id: Uuid::nil(),
            tenant: "t".into(),
            scopes: vec![Scope::Admin],
            expires_at: None,
        };
        assert!(Scope::ALL.iter().all(|s| p.has(*s)));
        let r = Principal {
            scopes: vec![Scope::JobsRead],
            ..p
        };
        assert!(r.has(Scope::JobsRead) && !r.has(Scope::JobsWrite) && !r.has(Scope::Admin));
    }

    #[test]
    fn tenants_are_plain_names() {
        assert!(valid_tenant("acme-prod_1"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a b"));
        assert!(!valid_tenant(&"x".repeat(65)));
    }
}
