//! Every error the API returns, rendered as RFC 9457 `application/problem+json` with a stable
//! machine-readable `code`. Handlers return `Result<_, ApiError>` and use `?`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use conveyor_shared::{
    JobState,
    enqueue::{EnqueueError, FieldError},
    job::control::TransitionError,
    keys::Scope,
    schedule::ScheduleError,
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadHeader(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A real key past its `expires_at` (after a rotation's overlap, say).
    #[error("key expired")]
    KeyExpired,
    #[error("this key lacks the {0} scope")]
    Forbidden(Scope),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    #[error("{}", not_cancellable(*.0))]
    NotCancellable(JobState),
    #[error("the job is {0}; only dead or cancelled jobs can be retried")]
    NotRetryable(JobState),
    #[error("this tenant already has a schedule named {0:?}")]
    ScheduleNameTaken(String),
    #[error("this key's request rate limit is exhausted; retry in {0} s")]
    RateLimited(u64),
    #[error("too many failed authentication attempts from this address; retry in {0} s")]
    AuthRateLimited(u64),
    #[error("the request took longer than {0} ms")]
    Timeout(u128),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The problem document (RFC 9457) plus Conveyor's extensions.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable error code.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// For 5xx: quote it when reporting; the details are in the server log under this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            BadHeader(_) => (StatusCode::BAD_REQUEST, "invalid_header", "Invalid header"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            KeyExpired => (StatusCode::UNAUTHORIZED, "key_expired", "Key expired"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            IdempotencyConflict => (
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "Idempotency key reused",
            ),
            NotCancellable(_) => (
                StatusCode::CONFLICT,
                "job_not_cancellable",
                "Job not cancellable",
            ),
            NotRetryable(_) => (
                StatusCode::CONFLICT,
                "job_not_retryable",
                "Job not retryable",
            ),
            ScheduleNameTaken(_) => (
                StatusCode::CONFLICT,
                "schedule_name_taken",
                "Schedule name taken",
            ),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            AuthRateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "auth_rate_limited",
                "Too many failed authentications",
            ),
            Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
            ),
        }
    }

    /// One field is wrong.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

/// A query string that does not fit the parameters (a repeated parameter, say): 422 like any
/// other bad parameter, as a problem, instead of axum's plain-text 400.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::field("query", e.body_text())
    }
}

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::IdempotencyConflict => Self::IdempotencyConflict,
            EnqueueError::Database(e) => e.into(),
        }
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::NotFound => Self::NotFound("schedule"),
            ScheduleError::NameTaken(name) => Self::ScheduleNameTaken(name),
            ScheduleError::Database(e) => e.into(),
        }
    }
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::NotFound => Self::NotFound("job"),
            TransitionError::NotCancellable(state) => Self::NotCancellable(state),
            TransitionError::NotRetryable(state) => Self::NotRetryable(state),
            TransitionError::Database(e) => e.into(),
        }
    }
}

/// The detail of a refused cancel: a running job is named as such, since that is the case a
/// caller may expect to work.
fn not_cancellable(state: JobState) -> String {
    let waiting = "only waiting jobs (scheduled, queued or retrying) can be cancelled";
    match state {
        JobState::Running => {
            format!("the job is running and cannot be interrupted; {waiting}")
        }
        other => format!("the job is already {other}; {waiting}"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let mut problem = Problem {
            type_: format!("https://conveyor.dev/problems/{}", code.replace('_', "-")),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            code,
            errors: None,
            request_id: None,
        };
        let retry_after = match &self {
            ApiError::RateLimited(secs) | ApiError::AuthRateLimited(secs) => Some(*secs),
            _ => None,
        };
        match self {
            ApiError::Validation(errors) => {
                problem.detail = match errors.as_slice() {
                    [one] => format!("{}: {}", one.field, one.message),
                    many => format!("{} fields are invalid", many.len()),
                };
                problem.errors = Some(errors);
            }
            ApiError::Internal(e) => {
                let id = uuid::Uuid::new_v4().to_string();
                tracing::error!(request_id = %id, error = ?e, "request failed");
                problem.request_id = Some(id);
            }
            _ => {}
        }
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
