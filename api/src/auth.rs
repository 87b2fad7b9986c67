//! `Authorization: Bearer <token>` → the calling key's tenant and scopes.
//!
//! Handlers take [`Caller`] as their first argument (so authentication, and the key's rate
//! limit, run before the body is read) and call [`Caller::require`] for the scope they need.
//!
//! An expired key gets its own 401 (`key_expired`) so its owner knows to rotate rather than
//! debug; any token that matches no key (or a revoked one) gets the same generic 401, so a
//! guessed token learns nothing.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use conveyor_shared::{
    audit::{self, Action, Actor},
    keys::{Authentication, Principal, Scope},
};
use sqlx::PgConnection;

use crate::{error::ApiError, startup::AppState};

/// The authenticated caller, and where the request came from.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The TCP peer. `X-Forwarded-For` is not read: any client can set it, and no trusted
    /// proxy setting exists yet. Behind a proxy this is the proxy's address.
    pub remote: Option<SocketAddr>,
}

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.principal.has(scope) {
            Ok(&self.principal)
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }

    /// Records an administrative action by this caller in the audit trail, in `tx`: the
    /// transaction of the action, so both commit or neither does.
    pub async fn audit(
        &self,
        tx: &mut PgConnection,
        action: Action,
        target: impl ToString,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        let actor = Actor {
            tenant: Some(self.principal.tenant.clone()),
            key_id: Some(self.principal.key_id),
            remote_addr: self
                .remote
                .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string()),
        };
        audit::record(tx, &actor, action, Some(target.to_string()), detail).await?;
        Ok(())
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header =
            parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or(ApiError::Unauthorized(
                    "missing Authorization: Bearer <token> header",
                ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "Authorization header must be 'Bearer <token>'",
            ))?;
        // The token is looked up by its SHA-256 digest, an indexed equality in Postgres: no
        // secret is compared byte by byte here, so there is no timing to leak (a prefix match
        // on the digest tells nothing about the token).
        let principal = match state.keys.authenticate(&state.pool, token).await? {
            Authentication::Valid(principal) => principal,
            Authentication::Expired => return Err(ApiError::KeyExpired),
            Authentication::Unknown => {
                return Err(ApiError::Unauthorized("unknown or revoked token"));
            }
        };
        state.rate_limit.check(principal.key_id)?;
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        Ok(Caller { principal, remote })
    }
}
