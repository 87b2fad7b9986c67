//! Cron schedules: what they are, how they are validated and stored, and the queries the
//! scheduler claims them with.
//!
//! Postgres is the source of truth. A schedule's `next_run_at` is its first tick not yet
//! emitted; a scheduler replica locks due schedules (`FOR UPDATE SKIP LOCKED`), inserts their
//! ticks' jobs and advances `next_run_at` in one transaction, so replicas never share a
//! schedule at once and a replica that dies mid-way leaves the schedule due for the next one.
//! `jobs_schedule_tick` (unique on schedule and tick) makes a second job for a tick impossible
//! even if `next_run_at` is moved back by hand.

pub mod cron;
pub mod misfire;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use self::cron::CronSpec;
use crate::enqueue::{EnqueueRequest, FieldError, Limits, NewJob};

/// What a schedule does with ticks that passed while it could not be served (all schedulers
/// down or stalled beyond the grace period).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, ToSchema,
)]
#[sqlx(type_name = "misfire_policy", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Drop the missed ticks; resume at the next future tick.
    #[default]
    Skip,
    /// One job for the whole missed span (tagged with its latest tick).
    RunOnce,
    /// One job per missed tick, at most `CONVEYOR_SCHEDULER_CATCHUP_MAX` (the most recent).
    CatchUp,
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::RunOnce => "run_once",
            Self::CatchUp => "catch_up",
        }
    }
}

/// The job a schedule emits on every tick: an enqueue request without `run_at` (a tick's job
/// is due when emitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobTemplate {
    /// The job kind, e.g. `noop`.
    pub kind: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Queue name; defaults to the kind's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// -100..=100, default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i16>,
    /// 1..=100, default 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    /// Seconds an attempt may run, 1..=86400; default per kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i32>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl JobTemplate {
    /// Validates the template exactly as `POST /v1/jobs` validates a job (fields are named
    /// `job.…`) and returns the job one tick would insert, due at `now`.
    pub fn to_job(&self, limits: &Limits, now: DateTime<Utc>) -> Result<NewJob, Vec<FieldError>> {
        EnqueueRequest {
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            run_at: None,
            max_attempts: self.max_attempts,
            timeout_secs: self.timeout_secs,
        }
        .validate(limits, "job.", now)
    }
}

/// A schedule as stored and as the API returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Schedule {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    #[serde(skip)]
    pub tenant: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    #[sqlx(json)]
    pub job: JobTemplate,
    pub misfire: Misfire,
    pub paused: bool,
    /// The next tick a job will be emitted for; null while paused.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The latest tick a job was emitted for.
    pub last_tick: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/schedules` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Unique per tenant, 1 to 100 characters.
    pub name: String,
    /// 5 fields (`minute hour day-of-month month day-of-week`) or 6 with leading seconds.
    pub cron: String,
    /// IANA time zone the cron fields are read in; default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    pub job: JobTemplate,
    /// Default `skip`.
    #[serde(default)]
    pub misfire: Misfire,
    /// Create it paused (no ticks until resumed); default false.
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".into()
}

/// `PATCH /v1/schedules/{id}` body: the fields to change. Changing `cron` or `timezone`, or
/// resuming (`paused: false` on a paused schedule), sets `next_run_at` to the first tick
/// after now: a resumed schedule continues with its next tick, without a burst.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    /// Replaces the whole template.
    pub job: Option<JobTemplate>,
    pub misfire: Option<Misfire>,
    pub paused: Option<bool>,
}

/// A schedule that passed validation, ready to store.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub spec: CronSpec,
    pub job: JobTemplate,
    pub misfire: Misfire,
    pub paused: bool,
    /// The job one tick would insert, for checks of what its payload refers to.
    pub probe: NewJob,
}

const MAX_NAME_CHARS: usize = 100;

fn check_name(name: &str, errors: &mut Vec<FieldError>) -> String {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_CHARS {
        errors.push(FieldError::new(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    trimmed.to_owned()
}

/// Checks a cron expression on its own and that it ever produces a tick.
fn check_cron(expr: &str, errors: &mut Vec<FieldError>) -> Option<::croner::Cron> {
    match cron::parse_cron(expr) {
        Ok(c) => {
            let spec = CronSpec::new(c.clone(), chrono_tz::Tz::UTC);
            if spec.next_after(Utc::now()).is_none() {
                errors.push(FieldError::new(
                    "cron",
                    "never matches (e.g. 31 February); it would never emit a job",
                ));
                return None;
            }
            Some(c)
        }
        Err(message) => {
            errors.push(FieldError::new("cron", message));
            None
        }
    }
}

fn check_timezone(name: &str, errors: &mut Vec<FieldError>) -> Option<chrono_tz::Tz> {
    cron::parse_timezone(name)
        .map_err(|message| errors.push(FieldError::new("timezone", message)))
        .ok()
}

impl CreateSchedule {
    /// Validates every field, collecting all problems.
    pub fn validate(
        &self,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<NewSchedule, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = check_name(&self.name, &mut errors);
        let cron = check_cron(&self.cron, &mut errors);
        let tz = check_timezone(&self.timezone, &mut errors);
        let probe = self
            .job
            .to_job(limits, now)
            .map_err(|e| errors.extend(e))
            .ok();
        match (cron, tz, probe) {
            (Some(cron), Some(tz), Some(probe)) if errors.is_empty() => Ok(NewSchedule {
                name,
                cron: self.cron.trim().to_owned(),
                timezone: tz.name().to_owned(),
                spec: CronSpec::new(cron, tz),
                job: self.job.clone(),
                misfire: self.misfire,
                paused: self.paused,
                probe,
            }),
            _ => Err(errors),
        }
    }
}

/// The checked fields of a PATCH.
#[derive(Debug, Clone, Default)]
pub struct ScheduleChanges {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub job: Option<JobTemplate>,
    /// The job one tick of the new template would insert, for reference checks.
    pub probe: Option<NewJob>,
    pub misfire: Option<Misfire>,
    pub paused: Option<bool>,
}

impl UpdateSchedule {
    /// Validates the fields present, collecting all problems.
    pub fn validate(
        &self,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<ScheduleChanges, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = self.name.as_deref().map(|n| check_name(n, &mut errors));
        if let Some(c) = &self.cron {
            check_cron(c, &mut errors);
        }
        let timezone = self
            .timezone
            .as_deref()
            .and_then(|tz| check_timezone(tz, &mut errors))
            .map(|tz| tz.name().to_owned());
        let probe = self
            .job
            .as_ref()
            .and_then(|j| j.to_job(limits, now).map_err(|e| errors.extend(e)).ok());
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ScheduleChanges {
            name,
            cron: self.cron.as_deref().map(|c| c.trim().to_owned()),
            timezone,
            job: self.job.clone(),
            probe,
            misfire: self.misfire,
            paused: self.paused,
        })
    }
}

/// Why a schedule could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule not found")]
    NotFound,
    #[error("a schedule named {0:?} already exists")]
    NameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Maps the unique violation on (tenant, name) to [`ScheduleError::NameTaken`].
fn name_taken(e: sqlx::Error, name: &str) -> ScheduleError {
    match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("schedules_tenant_name") => {
            ScheduleError::NameTaken(name.to_owned())
        }
        _ => e.into(),
    }
}

impl Schedule {
    /// Stores a new schedule; a running one is due at its first tick after `now`.
    pub async fn create(
        db: impl PgExecutor<'_>,
        tenant: &str,
        new: &NewSchedule,
        now: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        let next_run_at = if new.paused {
            None
        } else {
            new.spec.next_after(now)
        };
        sqlx::query_as(
            "INSERT INTO schedules (id, tenant, name, cron, timezone, job, misfire, paused,
                                    next_run_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(&new.name)
        .bind(&new.cron)
        .bind(&new.timezone)
        .bind(sqlx::types::Json(&new.job))
        .bind(new.misfire)
        .bind(new.paused)
        .bind(next_run_at)
        .fetch_one(db)
        .await
        .map_err(|e| name_taken(e, &new.name))
    }

    pub async fn get(pool: &PgPool, tenant: &str, id: Uuid) -> sqlx::Result<Option<Schedule>> {
        sqlx::query_as("SELECT * FROM schedules WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
    }

    /// A page of a tenant's schedules, newest first, older than `before` when given.
    pub async fn list(
        pool: &PgPool,
        tenant: &str,
        before: Option<Uuid>,
        limit: i64,
    ) -> sqlx::Result<Vec<Schedule>> {
        sqlx::query_as(Self::list_sql(before.is_some()))
            .bind(tenant)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await
    }

    /// [`Self::list`]'s statement: the first page, or a later one (`after_cursor`), each its
    /// own prepared statement, for the reason given at [`crate::audit::list_sql`] (public so
    /// that a test can check their plans). `$1` tenant, `$2` the cursor, `$3` page size.
    pub fn list_sql(after_cursor: bool) -> &'static str {
        if after_cursor {
            "SELECT * FROM schedules WHERE tenant = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        } else {
            "SELECT * FROM schedules WHERE tenant = $1 ORDER BY id DESC LIMIT $3"
        }
    }

    /// Applies `changes` under the row lock, in the caller's transaction `tx` (which holds the
    /// lock until it commits). The lock waits for a scheduler that is emitting this schedule's
    /// ticks right now, so once a pause is answered no tick follows it.
    pub async fn update(
        tx: &mut PgConnection,
        tenant: &str,
        id: Uuid,
        changes: &ScheduleChanges,
        now: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        let current: Schedule =
            sqlx::query_as("SELECT * FROM schedules WHERE tenant = $1 AND id = $2 FOR UPDATE")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(ScheduleError::NotFound)?;
        let name = changes.name.clone().unwrap_or(current.name.clone());
        let cron = changes.cron.clone().unwrap_or(current.cron.clone());
        let timezone = changes.timezone.clone().unwrap_or(current.timezone.clone());
        let paused = changes.paused.unwrap_or(current.paused);
        let retimed = cron != current.cron || timezone != current.timezone;
        let resumed = current.paused && !paused;
        let next_run_at = if paused {
            None
        } else if retimed || resumed {
            // Both parts were validated (now or when stored).
            CronSpec::parse(&cron, &timezone)
                .ok()
                .and_then(|spec| spec.next_after(now))
        } else {
            current.next_run_at
        };
        let updated = sqlx::query_as(
            "UPDATE schedules
             SET name = $3, cron = $4, timezone = $5, job = $6, misfire = $7, paused = $8,
                 next_run_at = $9, updated_at = now()
             WHERE tenant = $1 AND id = $2
             RETURNING *",
        )
        .bind(tenant)
        .bind(id)
        .bind(&name)
        .bind(&cron)
        .bind(&timezone)
        .bind(sqlx::types::Json(
            changes.job.as_ref().unwrap_or(&current.job),
        ))
        .bind(changes.misfire.unwrap_or(current.misfire))
        .bind(paused)
        .bind(next_run_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| name_taken(e, &name))?;
        Ok(updated)
    }

    /// Deletes a schedule; the jobs it emitted stay. Returns whether it existed.
    pub async fn delete(db: impl PgExecutor<'_>, tenant: &str, id: Uuid) -> sqlx::Result<bool> {
        let deleted = sqlx::query("DELETE FROM schedules WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(db)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }
}

/// Locks up to `limit` running schedules due at `now`, most overdue first. Schedules another
/// replica holds are skipped, not waited for.
pub async fn claim_due(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Schedule>> {
    sqlx::query_as(
        "SELECT * FROM schedules
         WHERE NOT paused AND next_run_at <= $1
         ORDER BY next_run_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Where a claimed schedule goes on.
#[derive(Debug, Clone, Copy)]
pub struct Advance {
    pub id: Uuid,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The latest tick emitted now, if any.
    pub last_tick: Option<DateTime<Utc>>,
}

/// Moves claimed schedules on to their next tick, in the claiming transaction.
pub async fn advance(tx: &mut PgConnection, moves: &[Advance]) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = moves.iter().map(|m| m.id).collect();
    let next: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.next_run_at).collect();
    let last: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.last_tick).collect();
    sqlx::query(
        "UPDATE schedules s
         SET next_run_at = m.next_run_at,
             last_tick = COALESCE(m.last_tick, s.last_tick),
             updated_at = now()
         FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
              AS m(id, next_run_at, last_tick)
         WHERE s.id = m.id",
    )
    .bind(&ids)
    .bind(&next)
    .bind(&last)
    .execute(tx)
    .await?;
    Ok(())
}

/// The earliest tick any running schedule waits for.
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(next_run_at) FROM schedules WHERE NOT paused")
        .fetch_one(pool)
        .await
}

/// How many schedules are running (not paused), over all tenants.
pub async fn count_active(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM schedules WHERE NOT paused")
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits() -> Limits {
        Limits {
            queues: vec!["default".into()],
            max_batch: 10,
            max_payload_bytes: crate::enqueue::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_valid_schedule_gets_its_defaults_and_canonical_parts() {
        let req: CreateSchedule = serde_json::from_value(json!({
            "name": "  nightly ", "cron": " 0 3 * * * ", "timezone": "Europe/Berlin",
            "job": {"kind": "noop"}
        }))
        .unwrap();
        let new = req.validate(&limits(), Utc::now()).unwrap();
        assert_eq!(new.name, "nightly");
        assert_eq!(new.cron, "0 3 * * *");
        assert_eq!(new.misfire, Misfire::Skip);
        assert!(!new.paused);
        assert_eq!(new.probe.queue, "default");
        assert_eq!(new.probe.schedule_id, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let req: CreateSchedule = serde_json::from_value(json!({
            "name": "", "cron": "* * *", "timezone": "Nowhere/Special",
            "job": {"kind": "noop", "queue": "elsewhere", "max_attempts": 0}
        }))
        .unwrap();
        let errors = req.validate(&limits(), Utc::now()).unwrap_err();
        assert_eq!(
            fields(&errors),
            ["name", "cron", "timezone", "job.queue", "job.max_attempts"]
        );
    }

    #[test]
    fn a_patch_checks_only_what_it_changes() {
        let ok: UpdateSchedule = serde_json::from_value(json!({"paused": true})).unwrap();
        let changes = ok.validate(&limits(), Utc::now()).unwrap();
        assert_eq!(changes.paused, Some(true));
        assert!(changes.probe.is_none());
        let bad: UpdateSchedule = serde_json::from_value(
            json!({"cron": "0 0 30 2 *", "job": {"kind": "noop", "priority": 101}}),
        )
        .unwrap();
        let errors = bad.validate(&limits(), Utc::now()).unwrap_err();
        assert_eq!(fields(&errors), ["cron", "job.priority"]);
    }

    #[test]
    fn templates_refuse_run_at() {
        let err = serde_json::from_value::<JobTemplate>(json!({"kind": "noop", "run_at": "x"}));
        assert!(err.is_err());
    }
}
