//! The audit trail: administrative actions (key create/revoke, job cancel/retry, schedule
//! changes, bulk operator commands) with who, what, when and from where.
//!
//! Rows are append-only and read back per tenant in SQL, like every other row: a tenant never
//! sees another's entries, and entries of operator commands spanning all tenants (tenant NULL)
//! are seen by no API key.
//!
//! An entry commits in the same transaction as the change it records: there is never an
//! action without its entry, nor an entry for an action that was rolled back. So an action's
//! query functions take the caller's transaction (`&mut PgConnection`) and [`record`] is called
//! on it before the commit; if the insert fails, the action is undone and the request answers
//! 500. A purge, which deletes in many short transactions, records one entry per transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

/// The `remote_addr` of actions taken with the `conveyor-api` command line.
pub const CLI: &str = "cli";

/// What an action was; the stable strings stored in `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KeyCreate,
    KeyRevoke,
    KeyRotate,
    JobCancel,
    JobRetry,
    ScheduleCreate,
    ScheduleUpdate,
    ScheduleDelete,
    JobsRetryDead,
    JobsPurge,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreate => "key.create",
            Self::KeyRevoke => "key.revoke",
            Self::KeyRotate => "key.rotate",
            Self::JobCancel => "job.cancel",
            Self::JobRetry => "job.retry",
            Self::ScheduleCreate => "schedule.create",
            Self::ScheduleUpdate => "schedule.update",
            Self::ScheduleDelete => "schedule.delete",
            Self::JobsRetryDead => "jobs.retry_dead",
            Self::JobsPurge => "jobs.purge",
        }
    }
}

/// Who acted and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `None` for an operator command spanning every tenant.
    pub tenant: Option<String>,
    /// `None` for the command line.
    pub key_id: Option<Uuid>,
    /// The request's TCP peer, or [`CLI`].
    pub remote_addr: String,
}

impl Actor {
    /// An operator at the command line, acting on one tenant or (`None`) on all.
    pub fn cli(tenant: Option<&str>) -> Self {
        Self {
            tenant: tenant.map(str::to_owned),
            key_id: None,
            remote_addr: CLI.to_owned(),
        }
    }
}

/// One row of the trail.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// Absent for operator commands spanning every tenant (never returned by the API).
    pub tenant: Option<String>,
    /// The API key that acted; absent when the actor is the command line.
    pub key_id: Option<Uuid>,
    /// `key.create`, `key.revoke`, `key.rotate`, `job.cancel`, `job.retry`, `schedule.create`,
    /// `schedule.update`, `schedule.delete`, `jobs.retry_dead`, `jobs.purge`
    pub action: String,
    /// The id of what was acted on, when there is one.
    pub target: Option<String>,
    /// Parameters of the action (filters, counts, changed fields).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The client's address (the TCP peer), or `cli`.
    pub remote_addr: String,
}

/// Appends one entry. Pass the transaction of the action it records.
pub async fn record(
    db: impl PgExecutor<'_>,
    actor: &Actor,
    action: Action,
    target: Option<String>,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, tenant, key_id, action, target, detail, remote_addr)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(actor.tenant.as_deref())
    .bind(actor.key_id)
    .bind(action.as_str())
    .bind(target)
    .bind(detail)
    .bind(&actor.remote_addr)
    .execute(db)
    .await?;
    Ok(())
}

/// A tenant's entries, newest first, older than `before` when given.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant: &str,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as(list_sql(before.is_some()))
        .bind(tenant)
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// [`list`]'s statement: the first page, or a later one (`after_cursor`), each its own
/// prepared statement (public so that a test can check their plans). `$1` tenant, `$2` the
/// cursor, `$3` page size.
///
/// One text for both, `($2::uuid IS NULL OR id < $2)`, leaves Postgres one generic plan, which
/// it switches to after five runs: it cannot use the cursor as a bound of the index range, so
/// a later page read every newer entry of the tenant and dropped them (49,900 rows for the
/// page 50,000 entries down, 20 ms, `psql`), a cost that grew with the trail. The plan kept
/// from empty tables was worse: even the first page read the whole table, every tenant's
/// entries (`api/tests/page_plans.rs`).
pub fn list_sql(after_cursor: bool) -> &'static str {
    if after_cursor {
        "SELECT id, at, tenant, key_id, action, target, detail, remote_addr FROM audit_log
         WHERE tenant = $1 AND id < $2
         ORDER BY id DESC LIMIT $3"
    } else {
        // `$2` goes unused (Postgres accepts it, its type coming with it), so that both shapes
        // take the same parameters.
        "SELECT id, at, tenant, key_id, action, target, detail, remote_addr FROM audit_log
         WHERE tenant = $1
         ORDER BY id DESC LIMIT $3"
    }
}
