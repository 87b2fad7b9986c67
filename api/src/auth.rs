//! `Authorization: Bearer <token>` → the calling key's tenant and scopes.
//!
//! Handlers take [`Caller`] as their first argument (so authentication runs before the body is
//! read) and call [`Caller::require`] for the scope they need.

use axum::{extract::FromRequestParts, http::request::Parts};
use conveyor_shared::keys::{ApiKey, Principal, Scope};

use crate::{error::ApiError, startup::AppState};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.0.has(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(scope))
        }
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
        ApiKey::authenticate(&state.pool, token)
            .await?
            .map(Caller)
            .ok_or(ApiError::Unauthorized("unknown or revoked token"))
    }
}
