//! `/v1/jobs`: enqueue (one or a batch), read one, list, cancel, retry.
//!
//! Every query is scoped to the caller's tenant in SQL: another tenant's job is a 404, not a 403.

use axum::{
    Json,
    extract::rejection::QueryRejection,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use conveyor_shared::{
    Job, JobId, JobState,
    audit::Action,
    enqueue::{self, BatchRequest, EnqueueRequest, Enqueued, FieldError, IdempotencyKey, NewJob},
    job::{JobFilter, control},
    keys::Scope,
    ledger,
    trace::{self, TraceParent},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::Caller, body, error::ApiError, error::Problem, pagination::Page, startup::AppState,
};

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// A batch answer, or a page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page and on batch answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Enqueue one job.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = EnqueueRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays of the same key and body return the original job"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context; stored with the job, sent to the worker in the message headers and on its outgoing calls"),
    ),
    responses(
        (status = 201, description = "Created", body = Job),
        (status = 200, description = "Idempotent replay: the original job", body = Job),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope jobs:write", body = Problem),
        (status = 409, description = "Idempotency-Key reused with a different body", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 422, description = "Invalid request; `errors` names each field", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let idem = idempotency_key(&headers)?;
    let (req, raw): (EnqueueRequest, _) = body::json(request, state.limits.max_body_bytes).await?;
    let mut job = req
        .validate(&state.limits.enqueue, "", Utc::now())
        .map_err(ApiError::Validation)?;
    job.traceparent = traceparent(&headers);
    check_references(
        &state,
        &principal.tenant,
        std::slice::from_ref(&job),
        |_| String::new(),
    )
    .await?;
    let Some(idem) = idem else {
        // Without a key, concurrent requests share one INSERT (see `group_commit`).
        let job = state
            .single_enqueues
            .enqueue(&principal.tenant, job)
            .await?;
        return Ok(created(job));
    };
    let idem = IdempotencyKey::new(idem, "job", &raw);
    match enqueue::enqueue(
        &state.pool,
        &state.relay,
        &principal.tenant,
        vec![job],
        Some(idem),
    )
    .await?
    {
        Enqueued::Created(mut jobs) => Ok(created(jobs.remove(0))),
        Enqueued::Replayed(mut jobs) if !jobs.is_empty() => {
            Ok((StatusCode::OK, Json(jobs.remove(0))).into_response())
        }
        Enqueued::Replayed(_) => Err(ApiError::NotFound("the job this Idempotency-Key created")),
    }
}

/// 201 with the job and its `Location`.
fn created(job: Job) -> Response {
    let location = format!("/v1/jobs/{}", job.id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response()
}

/// Enqueue up to 1000 jobs at once; any invalid job rejects the whole batch.
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs",
    request_body = BatchRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays of the same key and body return the original jobs"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context, applied to every job of the batch"),
    ),
    responses(
        (status = 201, description = "Created, in request order", body = JobList),
        (status = 200, description = "Idempotent replay", body = JobList),
        (status = 409, description = "Idempotency-Key reused with a different body", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 422, description = "Invalid batch; fields are named `jobs[i].field`", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let idem = idempotency_key(&headers)?;
    let (req, raw): (BatchRequest, _) =
        body::json(request, state.limits.max_batch_body_bytes).await?;
    let positional: Vec<_> = raw["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, job)| !job.is_object())
        .map(|(i, _)| FieldError::new(format!("jobs[{i}]"), "must be a JSON object"))
        .collect();
    if !positional.is_empty() {
        return Err(ApiError::Validation(positional));
    }
    // A batch of N costs N requests' worth of the key's budget (the request paid for one); an
    // oversized batch is refused by validation below, with its own message.
    if req.jobs.len() <= state.limits.enqueue.max_batch {
        state
            .rate_limit
            .charge_extra(principal.key_id, req.jobs.len())?;
    }
    let mut jobs = req
        .validate(&state.limits.enqueue, Utc::now())
        .map_err(ApiError::Validation)?;
    let trace = traceparent(&headers);
    for job in &mut jobs {
        job.traceparent = trace.clone();
    }
    check_references(&state, &principal.tenant, &jobs, |i| format!("jobs[{i}].")).await?;
    let idem = idem.map(|k| IdempotencyKey::new(k, "batch", &raw));
    let (status, jobs) =
        match enqueue::enqueue(&state.pool, &state.relay, &principal.tenant, jobs, idem).await? {
            Enqueued::Created(jobs) => (StatusCode::CREATED, jobs),
            Enqueued::Replayed(jobs) => (StatusCode::OK, jobs),
        };
    Ok((
        status,
        Json(JobList {
            jobs,
            next_cursor: None,
        }),
    )
        .into_response())
}

/// One job with its attempts log.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, with `attempts_log`", body = Job),
        (status = 404, description = "No such job for this tenant", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    Job::get(&state.pool, &principal.tenant, job_id(&id)?)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("job"))
}

/// Cancel a waiting job (scheduled, queued or retrying); it will never run. A message already
/// in RabbitMQ for it is skipped by the worker.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled: the job, in state `cancelled`", body = Job),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope jobs:write", body = Problem),
        (status = 404, description = "No such job for this tenant", body = Problem),
        (status = 409, description = "`job_not_cancellable`: the job is running (it cannot be interrupted) or finished", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let mut tx = state.pool.begin().await?;
    let job = control::cancel(&mut tx, &principal.tenant, job_id(&id)?).await?;
    caller
        .audit(
            &mut tx,
            Action::JobCancel,
            job.id,
            json!({"queue": job.queue}),
        )
        .await?;
    tx.commit().await?;
    control::report_cancelled(&job);
    Ok(Json(job))
}

/// Run a dead or cancelled job again, at once, with a fresh attempt budget (`max_attempts`
/// more attempts; attempt numbers keep counting).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Retried: the job, in state `queued`", body = Job),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope jobs:write", body = Problem),
        (status = 404, description = "No such job for this tenant", body = Problem),
        (status = 409, description = "`job_not_retryable`: the job is neither dead nor cancelled", body = Problem),
    ),
    security(("bearer" = ["jobs:write"]))
)]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let principal = caller.require(Scope::JobsWrite)?;
    let mut tx = state.pool.begin().await?;
    let job = control::retry(&mut tx, &principal.tenant, job_id(&id)?).await?;
    caller
        .audit(
            &mut tx,
            Action::JobRetry,
            job.id,
            json!({"queue": job.queue}),
        )
        .await?;
    tx.commit().await?;
    control::report_retried(&job);
    Ok(Json(job))
}

/// A job id from the path; one that is not a UUID names no job, so it is a 404 like any other.
fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound("job"))
}

/// Filters and page of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub queue: Option<String>,
    /// scheduled, queued, running, succeeded, retrying, dead or cancelled
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    pub kind: Option<String>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub schedule_id: Option<String>,
    /// 1..=500, default 50
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<String>,
}

impl ListParams {
    fn into_filter(self) -> Result<(JobFilter, Page), ApiError> {
        let mut errors = Vec::new();
        let page = Page::parse(self.limit.as_deref(), self.cursor.as_deref(), &mut errors);
        let mut field = |name: &str, message: String| errors.push(FieldError::new(name, message));
        let state = self.state.as_deref().and_then(|s| {
            let parsed = JobState::parse(s);
            if parsed.is_none() {
                let known: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                field(
                    "state",
                    format!("unknown state {s:?}; one of {}", known.join(", ")),
                );
            }
            parsed
        });
        let schedule_id = self.schedule_id.as_deref().and_then(|s| {
            let parsed = s.parse::<uuid::Uuid>().ok();
            if parsed.is_none() {
                field("schedule_id", "must be a UUID".into());
            }
            parsed
        });
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        let filter = JobFilter {
            queue: self.queue,
            state,
            kind: self.kind,
            schedule_id,
            before: page.before.map(JobId),
            limit: page.fetch(),
        };
        Ok((filter, page))
    }
}

/// The caller's jobs, newest first, keyset-paginated.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 422, description = "Bad filter or cursor", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    let Query(params) = params?;
    let (filter, page) = params.into_filter()?;
    let mut jobs = Job::list(&state.pool, &principal.tenant, &filter).await?;
    let next_cursor = page.finish(&mut jobs, |j| j.id.0);
    Ok(Json(JobList { jobs, next_cursor }))
}

/// Payloads that name accounts or other jobs must name ones this tenant has (422 otherwise).
async fn check_references(
    state: &AppState,
    tenant: &str,
    jobs: &[NewJob],
    prefix: impl Fn(usize) -> String,
) -> Result<(), ApiError> {
    let errors = ledger::check_references(&state.pool, tenant, jobs, prefix).await?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// The `traceparent` header (W3C Trace Context), if present and valid. An invalid one is
/// ignored, not refused: the specification asks receivers to restart the trace instead.
fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    headers
        .get(trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
}

/// The Idempotency-Key header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadHeader(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        ));
    }
    Ok(Some(key.to_owned()))
}
