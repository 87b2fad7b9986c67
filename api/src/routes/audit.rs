//! `GET /v1/audit`: the caller's tenant's audit trail (admin scope), newest first.
//!
//! Scoped to the tenant in SQL like every query; entries of operator commands that span every
//! tenant are not visible through the API.

use axum::{
    Json,
    extract::rejection::QueryRejection,
    extract::{Query, State},
};
use conveyor_shared::{
    audit::{self, AuditEntry},
    keys::Scope,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{auth::Caller, error::ApiError, error::Problem, pagination::Page, startup::AppState};

/// A page of audit entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Page of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1..=500, default 50
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<String>,
}

/// Administrative actions of this tenant (key create/revoke, job cancel/retry, schedule
/// changes, bulk operator commands): who, what, when and from where.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(ListParams),
    responses(
        (status = 200, description = "A page of audit entries, newest first", body = AuditList),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope admin", body = Problem),
        (status = 422, description = "Bad limit or cursor", body = Problem),
        (status = 429, description = "Rate limit exhausted; see Retry-After", body = Problem),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let principal = caller.require(Scope::Admin)?;
    let Query(params) = params?;
    let page = Page::only(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut entries =
        audit::list(&state.pool, &principal.tenant, page.before, page.fetch()).await?;
    let next_cursor = page.finish(&mut entries, |e| e.id);
    Ok(Json(AuditList {
        entries,
        next_cursor,
    }))
}
