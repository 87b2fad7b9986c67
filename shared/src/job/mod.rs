//! Jobs: the stored row, its state machine, and the queries that read it.
//!
//! Every state change is one SQL statement guarded by `WHERE state = ...`, so races between
//! relays, workers and the API are decided by Postgres, not by code that reads then writes.
//! Claims and completions live in [`lifecycle`]; cancel and retry by hand in [`control`];
//! per-queue figures for operators in [`stats`]; the list of a tenant's jobs in [`list`].
//!
//! A running attempt is a row of `job_leases`, not a state stored on the job (see
//! `migrations/20261125000011_job_leases.sql`): while it runs, the job row keeps its stored
//! state `queued`. Every query that shows jobs to a reader selects [`job_columns!`] from
//! [`from_jobs!`], which lays the lease over the row.

pub mod control;
pub mod lease;
pub mod lifecycle;
pub mod list;
pub mod retention;
pub mod stats;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// The columns of [`Job`] as readers see them: the stored row (`j`) with its running attempt,
/// if any (`l`, a `job_leases` row), laid over it: state `running`, the attempt's number, start,
/// worker and lease. A macro so that queries stay literals.
macro_rules! job_columns {
    () => {
        "j.id, j.tenant, j.kind, j.queue,
         CASE WHEN l.job_id IS NULL THEN j.state ELSE 'running'::job_state END AS state,
         j.payload, j.priority, coalesce(l.attempt, j.attempts) AS attempts, j.attempts_base,
         j.max_attempts, j.timeout_secs, j.run_at, j.created_at,
         greatest(j.updated_at, l.started_at) AS updated_at,
         coalesce(l.started_at, j.started_at) AS started_at, j.finished_at, j.result,
         j.last_error, j.schedule_id, j.tick, j.traceparent, l.worker, l.lease_expires_at"
    };
}

/// The `FROM` clause for [`job_columns!`]: every job, with its lease if it has one.
macro_rules! from_jobs {
    () => {
        "FROM jobs j LEFT JOIN job_leases l ON l.job_id = j.id"
    };
}

pub(crate) use {from_jobs, job_columns};

/// A job's identifier: a UUIDv7, so ids sort by creation time and double as list cursors.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
    ToSchema,
)]
#[sqlx(transparent)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where a job is in its life. `scheduled` → `queued` → `running` → `succeeded` | `retrying`
/// (back to `queued` when due) | `dead` | `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Retrying,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Scheduled,
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Retrying,
        Self::Dead,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A finished job never runs again unless an operator retries it.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as stored and as the API returns it (internal bookkeeping is not serialised).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Job {
    pub id: JobId,
    #[serde(skip)]
    pub tenant: String,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub priority: i16,
    pub attempts: i32,
    /// Attempts made before the latest manual retry (which grants a fresh budget).
    #[serde(skip)]
    pub attempts_base: i32,
    pub max_attempts: i32,
    pub timeout_secs: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick: Option<DateTime<Utc>>,
    /// The W3C `traceparent` the job was enqueued with; carried to the worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Who runs the job and until when its lease holds, while it runs (from `job_leases`;
    /// statements that return the bare job row, such as a cancel, have neither).
    #[serde(skip)]
    #[sqlx(default)]
    pub worker: Option<String>,
    #[serde(skip)]
    #[sqlx(default)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Present on `GET /v1/jobs/{id}` only.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_log: Option<Vec<Attempt>>,
}

/// One attempt at running a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `succeeded`, `failed`, `timed_out`, `lost` or `cancelled`; absent while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub schedule_id: Option<Uuid>,
    /// Return jobs older than this one (the previous page's last id).
    pub before: Option<JobId>,
    pub limit: i64,
}

/// Queue names: short, lowercase, safe inside a RabbitMQ queue name and a metric label.
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Job {
    /// Whether another attempt is allowed after the current one fails.
    pub fn has_attempts_left(&self) -> bool {
        self.attempts - self.attempts_base < self.max_attempts
    }

    /// One job of a tenant, with its attempts log.
    pub async fn get(pool: &PgPool, tenant: &str, id: JobId) -> sqlx::Result<Option<Job>> {
        let job: Option<Job> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " ",
            from_jobs!(),
            " WHERE j.tenant = $1 AND j.id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await?;
        let Some(mut job) = job else { return Ok(None) };
        job.attempts_log = Some(Attempt::for_job(pool, id).await?);
        Ok(Some(job))
    }

    /// Jobs of a tenant by id, in the order of `ids` (missing ones are left out).
    pub async fn get_many(
        db: impl PgExecutor<'_>,
        tenant: &str,
        ids: &[JobId],
    ) -> sqlx::Result<Vec<Job>> {
        let mut jobs: Vec<Job> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " ",
            from_jobs!(),
            " WHERE j.tenant = $1 AND j.id = ANY($2)"
        ))
        .bind(tenant)
        .bind(ids)
        .fetch_all(db)
        .await?;
        jobs.sort_by_key(|j| ids.iter().position(|id| *id == j.id));
        Ok(jobs)
    }

    /// The ids among `ids` that name no job at all.
    pub async fn missing(pool: &PgPool, ids: &[JobId]) -> sqlx::Result<Vec<JobId>> {
        sqlx::query_scalar(
            "SELECT id FROM unnest($1::uuid[]) AS t(id)
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = t.id)",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
    }

    /// A page of a tenant's jobs, newest first. Keyset pagination on the time-ordered id.
    pub async fn list(pool: &PgPool, tenant: &str, filter: &JobFilter) -> sqlx::Result<Vec<Job>> {
        // Built from the filters' shape only, never from their values (see `list`).
        sqlx::query_as(sqlx::AssertSqlSafe(list::list_sql(filter)))
            .bind(tenant)
            .bind(&filter.queue)
            .bind(filter.state)
            .bind(&filter.kind)
            .bind(filter.schedule_id)
            .bind(filter.before)
            .bind(filter.limit)
            .fetch_all(pool)
            .await
    }
}

impl Attempt {
    pub async fn for_job(pool: &PgPool, id: JobId) -> sqlx::Result<Vec<Attempt>> {
        // Finished attempts are rows of their own; the running one is its lease.
        sqlx::query_as(
            "SELECT attempt, worker, started_at, finished_at, outcome, error
             FROM job_attempts WHERE job_id = $1
             UNION ALL
             SELECT attempt, worker, started_at, NULL, NULL, NULL
             FROM job_leases WHERE job_id = $1
             ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(pool)
        .await
    }
}
