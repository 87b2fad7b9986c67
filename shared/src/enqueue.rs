//! Accepting jobs: validate a request completely, then store every job in one transaction.
//!
//! The API only inserts and wakes the relay; publishing is the relay's work. A rejected request
//! stores nothing: validation happens before the transaction, and a batch is all-or-nothing.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    job::{Job, JobId, JobState},
    kind::JobKind,
    outbox::into_outbox,
    relay::RelayWaker,
};

/// What a client sends to enqueue one job.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// The job kind, e.g. `noop`.
    pub kind: String,
    /// The kind's payload; validated against the kind's schema.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Queue name; defaults to the kind's queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Higher runs first among due jobs; -100..=100, default 0.
    #[serde(default)]
    pub priority: Option<i16>,
    /// RFC 3339 instant before which the job must not run; default now.
    #[serde(default)]
    pub run_at: Option<String>,
    /// 1..=100, default 25.
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Seconds an attempt may run, 1..=86400; default per kind.
    #[serde(default)]
    pub timeout_secs: Option<i32>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// `POST /v1/jobs/batch` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub jobs: Vec<EnqueueRequest>,
}

/// One invalid field: its path in the request and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A job that passed validation, ready to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub queue: String,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub max_attempts: i32,
    pub timeout_secs: i32,
    /// Set on jobs the scheduler emits: the schedule and the cron instant. Postgres holds at
    /// most one job per (schedule_id, tick); a second insert of the same tick is dropped.
    pub schedule_id: Option<Uuid>,
    pub tick: Option<DateTime<Utc>>,
    /// The W3C `traceparent` the job was enqueued with (the api sets it from the header).
    pub traceparent: Option<crate::trace::TraceParent>,
}

/// What the deployment accepts.
#[derive(Debug, Clone)]
pub struct Limits {
    pub queues: Vec<String>,
    pub max_batch: usize,
    /// Largest `payload` of one job, as compact JSON (`CONVEYOR_MAX_PAYLOAD_BYTES`); applies to
    /// every job of a batch and to schedule templates, so no route carries a bigger one.
    pub max_payload_bytes: usize,
}

/// 64 KiB: jobs carry references and parameters, not documents.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;
const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;

impl EnqueueRequest {
    /// Validates every field, collecting all problems. `prefix` is `""` for a single job and
    /// `jobs[i].` inside a batch.
    pub fn validate(
        &self,
        limits: &Limits,
        prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<NewJob, Vec<FieldError>> {
        let mut errors = Vec::new();
        let payload_bytes = serde_json::to_vec(&self.payload).map_or(usize::MAX, |v| v.len());
        if payload_bytes > limits.max_payload_bytes {
            // Checked first and alone: there is no point parsing a payload this large.
            return Err(vec![FieldError::new(
                format!("{prefix}payload"),
                format!(
                    "is {payload_bytes} bytes as JSON; at most {} are accepted",
                    limits.max_payload_bytes
                ),
            )]);
        }
        let kind = JobKind::parse(&self.kind, &self.payload, &format!("{prefix}payload"))
            .map_err(|e| errors.extend(e))
            .ok();
        let queue = match (&self.queue, &kind) {
            (Some(q), _) if !limits.queues.iter().any(|known| known == q) => {
                errors.push(FieldError::new(
                    format!("{prefix}queue"),
                    format!(
                        "unknown queue {q:?}; known queues: {}",
                        limits.queues.join(", ")
                    ),
                ));
                None
            }
            (Some(q), _) => Some(q.clone()),
            (None, Some(k)) => Some(k.default_queue().to_owned()),
            (None, None) => None,
        };
        let priority = self.priority.unwrap_or(0);
        if !(-100..=100).contains(&priority) {
            errors.push(FieldError::new(
                format!("{prefix}priority"),
                "must be between -100 and 100",
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=100).contains(&max_attempts) {
            errors.push(FieldError::new(
                format!("{prefix}max_attempts"),
                "must be between 1 and 100",
            ));
        }
        if let Some(t) = self.timeout_secs
            && !(1..=86_400).contains(&t)
        {
            errors.push(FieldError::new(
                format!("{prefix}timeout_secs"),
                "must be between 1 and 86400",
            ));
        }
        let run_at = match self.run_at.as_deref().map(DateTime::parse_from_rfc3339) {
            None => Some(now),
            Some(Ok(t))
                if t.with_timezone(&Utc) > now + Duration::days(MAX_SCHEDULE_AHEAD_DAYS) =>
            {
                errors.push(FieldError::new(
                    format!("{prefix}run_at"),
                    format!("must be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"),
                ));
                None
            }
            // A past instant means "now": the job is due.
            Some(Ok(t)) => Some(t.with_timezone(&Utc).max(now)),
            Some(Err(e)) => {
                errors.push(FieldError::new(
                    format!("{prefix}run_at"),
                    format!("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z ({e})"),
                ));
                None
            }
        };
        match (kind, queue, run_at) {
            (Some(kind), Some(queue), Some(run_at)) if errors.is_empty() => Ok(NewJob {
                id: JobId::new(),
                timeout_secs: self
                    .timeout_secs
                    .unwrap_or_else(|| kind.default_timeout_secs()),
                kind,
                payload: self.payload.clone(),
                queue,
                priority,
                run_at,
                max_attempts,
                schedule_id: None,
                tick: None,
                traceparent: None,
            }),
            _ => Err(errors),
        }
    }
}

impl BatchRequest {
    /// Validates every job; any error rejects the whole batch.
    pub fn validate(
        &self,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Vec<NewJob>, Vec<FieldError>> {
        if self.jobs.is_empty() {
            return Err(vec![FieldError::new(
                "jobs",
                "must contain at least one job",
            )]);
        }
        if self.jobs.len() > limits.max_batch {
            return Err(vec![FieldError::new(
                "jobs",
                format!(
                    "at most {} jobs per batch, got {}",
                    limits.max_batch,
                    self.jobs.len()
                ),
            )]);
        }
        let mut jobs = Vec::with_capacity(self.jobs.len());
        let mut errors = Vec::new();
        for (i, req) in self.jobs.iter().enumerate() {
            match req.validate(limits, &format!("jobs[{i}]."), now) {
                Ok(job) => jobs.push(job),
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(jobs)
        } else {
            Err(errors)
        }
    }
}

/// Why an enqueue did not store new jobs.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The result of an enqueue.
#[derive(Debug)]
pub enum Enqueued {
    /// New jobs were stored.
    Created(Vec<Job>),
    /// The same Idempotency-Key came with the same request: the original jobs.
    Replayed(Vec<Job>),
}

/// An Idempotency-Key with the digest of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_sha256: Vec<u8>,
}

impl IdempotencyKey {
    /// `scope` separates endpoints, so one key cannot mean a single job here and a batch there.
    pub fn new(key: String, scope: &str, request: &serde_json::Value) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(scope.as_bytes());
        hasher.update([0]);
        hash_canonical(&mut hasher, request);
        Self {
            key,
            request_sha256: hasher.finalize().to_vec(),
        }
    }
}

/// Hashes JSON with object keys sorted, so key order and whitespace do not make two
/// requests differ. Written out rather than relying on `serde_json`'s map order, which
/// changes if any crate in the build enables its `preserve_order` feature.
fn hash_canonical(h: &mut Sha256, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            h.update(b"{");
            for k in keys {
                h.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                h.update(b":");
                hash_canonical(h, &map[k]);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for item in items {
                hash_canonical(h, item);
                h.update(b",");
            }
            h.update(b"]");
        }
        scalar => h.update(scalar.to_string().as_bytes()),
    }
}

/// Stores `jobs` for `tenant` in one transaction, then wakes the relay if any is due.
pub async fn enqueue(
    pool: &PgPool,
    relay: &RelayWaker,
    tenant: &str,
    jobs: Vec<NewJob>,
    idempotency: Option<IdempotencyKey>,
) -> Result<Enqueued, EnqueueError> {
    let Some(idem) = &idempotency else {
        let created = enqueue_plain(pool, tenant, &jobs).await?;
        created_committed(relay, &created);
        return Ok(Enqueued::Created(created));
    };
    let mut tx = pool.begin().await?;
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    // A concurrent request with the same key waits here on the primary key until we commit,
    // then finds our row: exactly one of them creates the jobs.
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant, key, request_sha256, job_ids)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(&idem.key)
    .bind(&idem.request_sha256)
    .bind(&ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let (digest, original): (Vec<u8>, Vec<JobId>) = sqlx::query_as(
            "SELECT request_sha256, job_ids FROM idempotency_keys WHERE tenant = $1 AND key = $2",
        )
        .bind(tenant)
        .bind(&idem.key)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        if digest != idem.request_sha256 {
            return Err(EnqueueError::IdempotencyConflict);
        }
        return Ok(Enqueued::Replayed(
            Job::get_many(pool, tenant, &original).await?,
        ));
    }
    let created = insert(&mut tx, tenant, &jobs).await?;
    tx.commit().await?;
    created_committed(relay, &created);
    Ok(Enqueued::Created(created))
}

/// Stores `jobs` for `tenant` without an idempotency key: one statement, committed on its own
/// (a single statement is atomic), so a request costs one round trip to Postgres instead of
/// three (BEGIN, INSERT, COMMIT). Single-job enqueues are bound by exactly that.
async fn enqueue_plain(pool: &PgPool, tenant: &str, jobs: &[NewJob]) -> sqlx::Result<Vec<Job>> {
    let mut conn = pool.acquire().await?;
    insert(&mut conn, tenant, jobs).await
}

/// What follows the commit of new jobs: they are counted in `conveyor_jobs_enqueued_total`,
/// and the relay is woken if any of them is due now (scheduled ones wait for its poll).
pub fn created_committed(relay: &RelayWaker, jobs: &[Job]) {
    if jobs.iter().any(|j| j.state == JobState::Queued) {
        relay.wake();
    }
    for job in jobs {
        metrics::counter!("conveyor_jobs_enqueued_total", "kind" => job.kind.clone(), "queue" => job.queue.clone())
            .increment(1);
    }
}

/// The one way jobs enter Postgres (the api's enqueue and the scheduler's ticks): inserts
/// `jobs` (inside the caller's transaction, if any). Returns the stored rows in request order;
/// a scheduled tick that already has its job is left out. Call [`created_committed`] with the
/// rows once they are committed.
///
/// One multi-row INSERT for the whole batch (arrays through `unnest`), returning rows in
/// request order. `ON CONFLICT` only ever fires for scheduled ticks (`jobs_schedule_tick` is a
/// partial unique index over rows with a schedule_id), so api jobs are never dropped. The jobs
/// due now go into the outbox in the same statement (a data-modifying CTE): one statement keeps
/// a single-job enqueue to one round trip, and a job is never stored without its outbox row.
/// Scheduled jobs get theirs when the relay promotes them.
pub async fn insert(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    jobs: &[NewJob],
) -> sqlx::Result<Vec<Job>> {
    let now = Utc::now();
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id.0).collect();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.name()).collect();
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    let states: Vec<&str> = jobs
        .iter()
        .map(|j| {
            if j.run_at > now {
                JobState::Scheduled
            } else {
                JobState::Queued
            }
            .as_str()
        })
        .collect();
    let payloads: Vec<&serde_json::Value> = jobs.iter().map(|j| &j.payload).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority).collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let timeouts: Vec<i32> = jobs.iter().map(|j| j.timeout_secs).collect();
    let run_ats: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.run_at).collect();
    let schedule_ids: Vec<Option<Uuid>> = jobs.iter().map(|j| j.schedule_id).collect();
    let ticks: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.tick).collect();
    let traceparents: Vec<Option<&str>> = jobs
        .iter()
        .map(|j| j.traceparent.as_ref().map(|t| t.as_str()))
        .collect();
    // No NOTIFY here: see `RelayWaker` for why the relay is woken in process instead.
    let mut rows: Vec<Job> = sqlx::query_as(concat!(
        "WITH job AS (
             INSERT INTO jobs (id, tenant, kind, queue, state, payload, priority, max_attempts,
                               timeout_secs, run_at, schedule_id, tick, traceparent)
             SELECT id, $2, kind, queue, state::job_state, payload, priority, max_attempts,
                    timeout_secs, run_at, schedule_id, tick, traceparent
             FROM unnest($1::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                         $7::int2[], $8::int4[], $9::int4[], $10::timestamptz[], $11::uuid[],
                         $12::timestamptz[], $13::text[])
                  AS t(id, kind, queue, state, payload, priority, max_attempts, timeout_secs,
                       run_at, schedule_id, tick, traceparent)
             ON CONFLICT (schedule_id, tick) WHERE schedule_id IS NOT NULL DO NOTHING
             RETURNING *
         ), due AS (",
        into_outbox!("job WHERE state = 'queued'"),
        ")
         SELECT * FROM job"
    ))
    .bind(&ids)
    .bind(tenant)
    .bind(&kinds)
    .bind(&queues)
    .bind(&states)
    .bind(&payloads)
    .bind(&priorities)
    .bind(&max_attempts)
    .bind(&timeouts)
    .bind(&run_ats)
    .bind(&schedule_ids)
    .bind(&ticks)
    .bind(&traceparents)
    .fetch_all(&mut *conn)
    .await?;
    let position: std::collections::HashMap<Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    rows.sort_by_key(|j| position.get(&j.id.0).copied());
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits() -> Limits {
        Limits {
            queues: vec!["default".into(), "transactions".into()],
            max_batch: 3,
            max_payload_bytes: 1024,
        }
    }

    fn req(v: serde_json::Value) -> EnqueueRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn payloads_over_the_limit_are_refused_by_name() {
        let big = json!({"kind": "noop", "payload": {"pad": "x".repeat(1024)}});
        let errs = req(big)
            .validate(&limits(), "jobs[2].", Utc::now())
            .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "jobs[2].payload");
        assert!(
            errs[0].message.contains("at most 1024"),
            "{}",
            errs[0].message
        );
        let fits = json!({"kind": "noop", "payload": {"sleep_ms": 1}});
        assert!(req(fits).validate(&limits(), "", Utc::now()).is_ok());
    }

    #[test]
    fn defaults_fill_in() {
        let now = Utc::now();
        let job = req(json!({"kind": "noop"}))
            .validate(&limits(), "", now)
            .unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(job.timeout_secs, 60);
        assert_eq!(job.run_at, now);
    }

    #[test]
    fn collects_every_bad_field() {
        let errs = req(json!({"kind": "noop", "queue": "nope", "priority": 500,
                              "max_attempts": 0, "timeout_secs": 0, "run_at": "tomorrow"}))
        .validate(&limits(), "jobs[1].", Utc::now())
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "jobs[1].queue",
                "jobs[1].priority",
                "jobs[1].max_attempts",
                "jobs[1].timeout_secs",
                "jobs[1].run_at"
            ]
        );
    }

    #[test]
    fn batch_limits() {
        let one = json!({"kind": "noop"});
        let batch: BatchRequest =
            serde_json::from_value(json!({"jobs": [one, one, one, one]})).unwrap();
        let errs = batch.validate(&limits(), Utc::now()).unwrap_err();
        assert_eq!(errs[0].field, "jobs");
        let empty: BatchRequest = serde_json::from_value(json!({"jobs": []})).unwrap();
        assert!(empty.validate(&limits(), Utc::now()).is_err());
    }

    #[test]
    fn idempotency_digest_ignores_key_order_but_not_values() {
        let a = IdempotencyKey::new(
            "k".into(),
            "job",
            &json!({"kind": "noop", "payload": {"a": 1, "b": 2}}),
        );
        let b = IdempotencyKey::new(
            "k".into(),
            "job",
            &json!({"payload": {"b": 2, "a": 1}, "kind": "noop"}),
        );
        let c = IdempotencyKey::new(
            "k".into(),
            "job",
            &json!({"payload": {"b": 3, "a": 1}, "kind": "noop"}),
        );
        let d = IdempotencyKey::new(
            "k".into(),
            "batch",
            &json!({"payload": {"b": 2, "a": 1}, "kind": "noop"}),
        );
        assert_eq!(a.request_sha256, b.request_sha256);
        assert_ne!(a.request_sha256, c.request_sha256);
        assert_ne!(a.request_sha256, d.request_sha256);
    }
}
