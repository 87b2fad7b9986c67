//! `/v1/accounts`: ledger accounts. Balances are in minor units and only ever change through
//! jobs (`payment.charge`, `payment.refund`, `ledger.transfer`).

use axum::{
    Json,
    extract::{Path, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use conveyor_shared::{
    enqueue::FieldError, keys::Scope, kind::payments::valid_currency, ledger::Account,
};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::{auth::Caller, body, error::ApiError, error::Problem, startup::AppState};

/// Entries shown with an account.
const RECENT_ENTRIES: i64 = 50;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1 to 100 characters, not all blank.
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// ISO 4217 code, e.g. EUR.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
}

/// Open an account with a zero balance.
#[utoipa::path(
    post, path = "/v1/accounts", tag = "accounts",
    request_body = CreateAccount,
    responses(
        (status = 201, description = "Created", body = Account),
        (status = 422, description = "Invalid name or currency", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let (req, _): (CreateAccount, _) = body::json(request, state.limits.max_body_bytes).await?;
    let mut errors = Vec::new();
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        errors.push(FieldError::new("name", "must be 1 to 100 characters"));
    }
    if !valid_currency(&req.currency) {
        errors.push(FieldError::new(
            "currency",
            format!(
                "{:?} is not an ISO 4217 currency code such as EUR or USD",
                req.currency
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let account = Account::create(
        &state.pool,
        &principal.tenant,
        req.name.trim(),
        &req.currency,
    )
    .await?;
    let location = format!("/v1/accounts/{}", account.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(account),
    )
        .into_response())
}

/// An account with its balance and most recent entries.
#[utoipa::path(
    get, path = "/v1/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account with recent `entries`", body = Account),
        (status = 404, description = "No such account for this tenant", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::NotFound("account"))?;
    Account::get(&state.pool, &principal.tenant, id, RECENT_ENTRIES)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("account"))
}
