//! The job list (`GET /v1/jobs`): one statement per shape of filter, each read in id order from
//! the index that shape has.
//!
//! It was one statement for every filter (`$3::job_state IS NULL OR j.state = $3`, and so on),
//! which leaves Postgres one plan for all of them. The generic plan it keeps for a prepared
//! statement served every filter through the tenant's whole id range: a page of the 20 `dead`
//! jobs among 100,000 read all 100,000 (131 ms, `psql`). Here the filters a request has decide
//! the text, so each shape is a prepared statement of its own, read in id order from an index
//! whose leading columns are its filters, whatever the statistics were when it was planned
//! (`api/tests/list_plan.rs`; the indexes: `migrations/20261125000012_list_indexes.sql`):
//!
//! - a state: `jobs_tenant_state_id`, or `jobs_tenant_queue_state_id` with a queue; `running`,
//!   which is not a stored state, from the leases;
//! - else a schedule: `jobs_tenant_schedule_id`;
//! - else (a queue, a kind or nothing): the newest page of each stored state, merged, from
//!   `jobs_tenant_queue_state_id` or `jobs_tenant_state_id`. That is at most seven pages read for
//!   one, and it is why `jobs` needs no index on `(tenant, id)` or `(tenant, queue, id)` of its
//!   own, which every job row version paid for.

use super::{JobFilter, JobState, from_jobs, job_columns};

/// The list statement for the filters `filter` has. Every shape takes the same parameters, and
/// [`super::Job::list`] binds them all (Postgres accepts a parameter a statement does not use
/// when its type comes with it): `$1` tenant, `$2` queue, `$3` state, `$4` kind, `$5` schedule,
/// `$6` cursor (ids below it), `$7` page size.
pub fn list_sql(filter: &JobFilter) -> String {
    let columns = job_columns!();
    match filter.state {
        // Running jobs are their leases, newest first, each looked up by key in `jobs`. The
        // lateral subquery (kept apart by `OFFSET 0`) leaves the planner no other way in: joined
        // plainly, the plan kept from empty tables walked the tenant's jobs in id order and
        // probed the leases of each.
        Some(JobState::Running) => {
            let cursor = if filter.before.is_some() {
                "WHERE l.job_id < $6"
            } else {
                ""
            };
            format!(
                "SELECT {columns}
                 FROM (SELECT * FROM job_leases l {cursor} ORDER BY l.job_id DESC OFFSET 0) l
                 CROSS JOIN LATERAL (SELECT * FROM jobs j WHERE {} OFFSET 0) j
                 ORDER BY l.job_id DESC LIMIT $7",
                conditions(filter, &["j.id = l.job_id", "j.tenant = $1"], None)
            )
        }
        // A stored state; a `queued` job with a lease is running, not queued.
        Some(_) => one_range(
            filter,
            &["j.tenant = $1", "j.state = $3", "l.job_id IS NULL"],
        ),
        None if filter.schedule_id.is_some() => one_range(filter, &["j.tenant = $1"]),
        None => {
            let conditions = conditions(filter, &["j.tenant = $1"], Some("j.id < $6"));
            let pages: Vec<String> = JobState::ALL
                .iter()
                .map(|state| {
                    format!(
                        "(SELECT * FROM jobs j WHERE {conditions} AND j.state = '{}'
                          ORDER BY j.id DESC LIMIT $7)",
                        state.as_str()
                    )
                })
                .collect();
            format!(
                "SELECT {columns} FROM ({}) j LEFT JOIN job_leases l ON l.job_id = j.id
                 ORDER BY j.id DESC LIMIT $7",
                pages.join(" UNION ALL ")
            )
        }
    }
}

/// A page read from one index range: the jobs matching `base` and the filters, newest first.
fn one_range(filter: &JobFilter, base: &[&'static str]) -> String {
    format!(
        "SELECT {} {} WHERE {} ORDER BY j.id DESC LIMIT $7",
        job_columns!(),
        from_jobs!(),
        conditions(filter, base, Some("j.id < $6"))
    )
}

/// `base` and a condition for each filter `filter` has besides the state, joined by `AND`; the
/// cursor's is `cursor` (`None`: the shape applies it elsewhere).
fn conditions(filter: &JobFilter, base: &[&'static str], cursor: Option<&'static str>) -> String {
    let mut all = base.to_vec();
    if filter.queue.is_some() {
        all.push("j.queue = $2");
    }
    if filter.kind.is_some() {
        all.push("j.kind = $4");
    }
    if filter.schedule_id.is_some() {
        all.push("j.schedule_id = $5");
    }
    if let (Some(_), Some(cursor)) = (filter.before, cursor) {
        all.push(cursor);
    }
    all.join(" AND ")
}
