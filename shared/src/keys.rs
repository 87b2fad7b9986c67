//! API keys. A token is shown once, at creation; Postgres keeps only its SHA-256 digest
//! (tokens carry ~238 bits of randomness, so a slow password hash would add nothing) and looks
//! keys up by that digest. Every key belongs to one tenant; every query the API runs for a
//! request is scoped to that tenant.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::{Rng, distr::Alphanumeric};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
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
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid tenant {0:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_'")]
    InvalidTenant(String),
    #[error("a key needs at least one scope")]
    NoScopes,
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

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The first characters of a token, enough to recognise a key in `keys list`.
fn display_prefix(token: &str) -> String {
    token.chars().take(TOKEN_PREFIX.len() + 4).collect()
}

impl ApiKey {
    /// Creates a key and returns it with its token, which is not stored anywhere.
    pub async fn create(
        pool: &PgPool,
        tenant: &str,
        name: &str,
        scopes: &[Scope],
    ) -> Result<(ApiKey, String), KeyError> {
        let token: String = format!(
            "{TOKEN_PREFIX}{}",
            rand::rng()
                .sample_iter(&Alphanumeric)
                .take(40)
                .map(char::from)
                .collect::<String>()
        );
        let key = Self::insert(pool, tenant, name, scopes, &token).await?;
        Ok((key, token))
    }

    async fn insert(
        pool: &PgPool,
        tenant: &str,
        name: &str,
        scopes: &[Scope],
        token: &str,
    ) -> Result<ApiKey, KeyError> {
        if !valid_tenant(tenant) {
            return Err(KeyError::InvalidTenant(tenant.to_owned()));
        }
        if scopes.is_empty() {
            return Err(KeyError::NoScopes);
        }
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        Ok(sqlx::query_as(
            "INSERT INTO api_keys (id, tenant, name, token_sha256, token_prefix, scopes)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, tenant, name, token_prefix, scopes, created_at, revoked_at",
        )
        .bind(Uuid::new_v4())
        .bind(tenant)
        .bind(name)
        .bind(digest(token))
        .bind(display_prefix(token))
        .bind(&scopes)
        .fetch_one(pool)
        .await?)
    }

    /// Makes `token` a valid admin key of tenant `default` (CONVEYOR_BOOTSTRAP_TOKEN), once.
    pub async fn ensure_bootstrap(pool: &PgPool, token: &str) -> Result<(), KeyError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE token_sha256 = $1)")
                .bind(digest(token))
                .fetch_one(pool)
                .await?;
        if !exists {
            match Self::insert(pool, TENANT_DEFAULT, "bootstrap", &Scope::ALL, token).await {
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
        sqlx::query_as(
            "SELECT id, tenant, name, token_prefix, scopes, created_at, revoked_at FROM api_keys
             WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at DESC",
        )
        .bind(tenant)
        .fetch_all(pool)
        .await
    }

    /// Revokes a key; returns its tenant, or `None` when no active key has this id.
    pub async fn revoke(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
             RETURNING tenant",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
    }

    /// The principal behind a bearer token, if the token belongs to an active key.
    pub async fn authenticate(pool: &PgPool, token: &str) -> sqlx::Result<Option<Principal>> {
        let row: Option<(Uuid, String, Vec<String>)> = sqlx::query_as(
            "SELECT id, tenant, scopes FROM api_keys
             WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(digest(token))
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(key_id, tenant, scopes)| Principal {
            key_id,
            tenant,
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        }))
    }
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
