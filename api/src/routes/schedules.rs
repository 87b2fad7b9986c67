//! `/v1/schedules`: cron schedules that emit a job per tick (the scheduler process emits them).
//!
//! Every query is scoped to the caller's tenant in SQL: another tenant's schedule is a 404.
//! A job template is validated exactly like `POST /v1/jobs` (fields named `job.…`), including
//! what its payload refers to (accounts, charges).

use axum::{
    Json,
    extract::rejection::QueryRejection,
    extract::{Path, Query, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use conveyor_shared::{
    audit::Action,
    enqueue::NewJob,
    keys::Scope,
    ledger,
    schedule::{CreateSchedule, Schedule, UpdateSchedule},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    auth::Caller, body, error::ApiError, error::Problem, pagination::Page, startup::AppState,
};

/// A page of schedules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Create a schedule. Unless created paused, its first job is emitted at `next_run_at`.
#[utoipa::path(
    post, path = "/v1/schedules", tag = "schedules",
    request_body = CreateSchedule,
    responses(
        (status = 201, description = "Created, with `next_run_at`", body = Schedule),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope jobs:write", body = Problem),
        (status = 409, description = "`schedule_name_taken`: this tenant has a schedule of that name", body = Problem),
        (status = 422, description = "Invalid cron, time zone or job template; `errors` names each field (`cron`, `timezone`, `job.payload.…`)", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let (req, _): (CreateSchedule, _) = body::json(request, state.limits.max_body_bytes).await?;
    let now = Utc::now();
    let new = req
        .validate(&state.limits.enqueue, now)
        .map_err(ApiError::Validation)?;
    check_references(&state, &principal.tenant, &new.probe).await?;
    let mut tx = state.pool.begin().await?;
    let schedule = Schedule::create(&mut *tx, &principal.tenant, &new, now).await?;
    caller
        .audit(
            &mut tx,
            Action::ScheduleCreate,
            schedule.id,
            json!({"name": schedule.name, "cron": schedule.cron, "timezone": schedule.timezone}),
        )
        .await?;
    tx.commit().await?;
    let location = format!("/v1/schedules/{}", schedule.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(schedule),
    )
        .into_response())
}

/// One schedule.
#[utoipa::path(
    get, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 404, description = "No such schedule for this tenant", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    Schedule::get(&state.pool, &principal.tenant, schedule_id(&id)?)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("schedule"))
}

/// Page of `GET /v1/schedules`.
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

/// The caller's schedules, newest first, keyset-paginated. Their emitted jobs are listed by
/// `GET /v1/jobs?schedule_id=`.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    params(ListParams),
    responses(
        (status = 200, description = "A page of schedules", body = ScheduleList),
        (status = 422, description = "Bad limit or cursor", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ScheduleList>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    let Query(params) = params?;
    let page = Page::only(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut schedules =
        Schedule::list(&state.pool, &principal.tenant, page.before, page.fetch()).await?;
    let next_cursor = page.finish(&mut schedules, |s| s.id);
    Ok(Json(ScheduleList {
        schedules,
        next_cursor,
    }))
}

/// Change a schedule. `paused: true` stops emission at once (no job is emitted for a tick
/// after the answer); `paused: false` resumes at the first tick after now, without a burst for
/// the paused span. A new `cron` or `timezone` also restarts from the first tick after now.
#[utoipa::path(
    patch, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = UpdateSchedule,
    responses(
        (status = 200, description = "The changed schedule", body = Schedule),
        (status = 403, description = "Missing scope jobs:write", body = Problem),
        (status = 404, description = "No such schedule for this tenant", body = Problem),
        (status = 409, description = "`schedule_name_taken`", body = Problem),
        (status = 422, description = "Invalid field; `errors` names each", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> Result<Json<Schedule>, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let id = schedule_id(&id)?;
    let (req, raw): (UpdateSchedule, _) = body::json(request, state.limits.max_body_bytes).await?;
    let now = Utc::now();
    let changes = req
        .validate(&state.limits.enqueue, now)
        .map_err(ApiError::Validation)?;
    if let Some(probe) = &changes.probe {
        check_references(&state, &principal.tenant, probe).await?;
    }
    let mut tx = state.pool.begin().await?;
    let schedule = Schedule::update(&mut tx, &principal.tenant, id, &changes, now).await?;
    // The names of the changed fields, not their values: a job template's payload may be large.
    let fields: Vec<&String> = raw.as_object().into_iter().flat_map(|o| o.keys()).collect();
    caller
        .audit(
            &mut tx,
            Action::ScheduleUpdate,
            schedule.id,
            json!({"fields": fields}),
        )
        .await?;
    tx.commit().await?;
    Ok(Json(schedule))
}

/// Delete a schedule. Jobs it already emitted stay (and keep their `schedule_id`).
#[utoipa::path(
    delete, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Missing scope jobs:write", body = Problem),
        (status = 404, description = "No such schedule for this tenant", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let id = schedule_id(&id)?;
    let mut tx = state.pool.begin().await?;
    if Schedule::delete(&mut *tx, &principal.tenant, id).await? {
        caller
            .audit(&mut tx, Action::ScheduleDelete, id, json!({}))
            .await?;
        tx.commit().await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("schedule"))
    }
}

/// A schedule id from the path; one that is not a UUID names no schedule: a 404.
fn schedule_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound("schedule"))
}

/// The template's payload must name accounts and charges this tenant has (422 otherwise).
async fn check_references(state: &AppState, tenant: &str, probe: &NewJob) -> Result<(), ApiError> {
    let errors = ledger::check_references(&state.pool, tenant, std::slice::from_ref(probe), |_| {
        "job.".to_owned()
    })
    .await?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}
