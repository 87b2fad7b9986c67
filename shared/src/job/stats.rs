//! Per-queue statistics for operators: counts by state, backlog, throughput and latency.
//!
//! Everything is scoped to one tenant and read through indexes made for it (migration
//! `20261125000005_ops`): counts are an index-only scan per (tenant, queue), windows read only
//! the rows finished in the window, and backlog reads only waiting rows. Latency percentiles are
//! taken over the last [`WINDOW_SECS`] seconds, at most the [`MAX_SAMPLES`] most recent jobs per
//! queue, so a very busy queue costs the same as a moderately busy one.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::JobState;

/// The window throughput and latency are measured over.
pub const WINDOW_SECS: i64 = 300;
/// The most recent finished jobs per queue that percentiles are computed from.
pub const MAX_SAMPLES: i64 = 10_000;

/// How many of a tenant's jobs are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct StateCounts {
    pub scheduled: i64,
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub retrying: i64,
    pub dead: i64,
    pub cancelled: i64,
}

impl StateCounts {
    fn add(&mut self, state: JobState, n: i64) {
        let slot = match state {
            JobState::Scheduled => &mut self.scheduled,
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Retrying => &mut self.retrying,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }
}

/// Jobs that finished (succeeded or dead) over the last minute and the last five.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Throughput {
    pub finished_1m: i64,
    pub finished_5m: i64,
    /// `finished_1m / 60`
    pub per_second_1m: f64,
    /// `finished_5m / 300`
    pub per_second_5m: f64,
}

/// Percentiles in seconds; null when no job finished in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// How many jobs the percentiles were computed from.
    pub samples: i64,
}

impl Percentiles {
    fn from_array(values: Option<Vec<f64>>, samples: i64) -> Self {
        match values.as_deref() {
            Some([p50, p95, p99]) => Self {
                p50: Some(round_ms(*p50)),
                p95: Some(round_ms(*p95)),
                p99: Some(round_ms(*p99)),
                samples,
            },
            _ => Self {
                samples,
                ..Default::default()
            },
        }
    }
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// What Postgres knows about one queue, for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct QueueStats {
    pub counts: StateCounts,
    /// Waiting jobs that are due: `queued`, plus `scheduled` / `retrying` ones whose time has
    /// come (the relay promotes those within a poll interval).
    pub backlog: i64,
    /// Age in seconds of the oldest due waiting job (time since its `run_at`); null when none.
    pub oldest_waiting_age_seconds: Option<f64>,
    pub throughput: Throughput,
    /// From due (`run_at`) to started, over jobs finished in the window.
    pub queue_wait_seconds: Percentiles,
    /// From started to finished (the last attempt), over jobs finished in the window.
    pub run_seconds: Percentiles,
}

// The queries, public so that the benchmark (`api/tests/queues_bench.rs`) can EXPLAIN them and
// `api/tests/stats_plan.rs` can check their plans.

/// Jobs by queue and state (a leased job counts as `running`, see `job_leases`). `$1` tenant,
/// `$2` queues.
///
/// The stored states are counted alone, from `jobs_tenant_queue_state_id`, and the leases are
/// laid over them afterwards: each leased job moves one count from its stored state to
/// `running`. Joined to the leases row by row (as this was), the count probed or hashed
/// `job_leases` once per job the tenant ever had, the finished ones included, to find the few
/// hundred that run. The leases are looked up in `jobs` by key, in a lateral subquery kept
/// apart by `OFFSET 0` so that no plan (one kept from empty tables included) can turn it into a
/// scan of `jobs`.
pub const COUNTS_SQL: &str = "SELECT queue, state, sum(n)::int8 AS n FROM (
                 SELECT queue, state, count(*) AS n FROM jobs
                 WHERE tenant = $1 AND queue = ANY($2)
                 GROUP BY 1, 2
                 UNION ALL
                 SELECT j.queue, moved.state, moved.n
                 FROM job_leases l
                 CROSS JOIN LATERAL (
                     SELECT queue, state FROM jobs
                     WHERE id = l.job_id AND tenant = $1 AND queue = ANY($2)
                     OFFSET 0
                 ) j
                 CROSS JOIN LATERAL (VALUES (j.state, -1::int8), ('running', 1)) moved (state, n)
             ) c
             GROUP BY 1, 2";

/// Throughput and latency percentiles per queue over the window; one lateral subquery per
/// queue, so each walks its own slice of `jobs_tenant_queue_finished`. `$1` tenant, `$2` queues,
/// `$3` window in seconds, `$4` most samples per queue.
pub const WINDOWS_SQL: &str = "SELECT q.name AS queue, t.finished_1m, t.finished_5m, p.samples, p.wait, p.run
             FROM unnest($2::text[]) AS q(name)
             CROSS JOIN LATERAL (
                 SELECT count(*) FILTER (WHERE finished_at >= now() - interval '1 minute') AS finished_1m,
                        count(*) AS finished_5m
                 FROM jobs
                 WHERE tenant = $1 AND queue = q.name
                   AND finished_at >= now() - make_interval(secs => $3)
                   AND state IN ('succeeded', 'dead')
             ) t
             CROSS JOIN LATERAL (
                 SELECT count(*) AS samples,
                        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY wait) AS wait,
                        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY run) AS run
                 FROM (
                     SELECT greatest(extract(epoch FROM started_at - run_at), 0)::float8 AS wait,
                            greatest(extract(epoch FROM finished_at - started_at), 0)::float8 AS run
                     FROM jobs
                     WHERE tenant = $1 AND queue = q.name
                       AND finished_at >= now() - make_interval(secs => $3)
                       AND state IN ('succeeded', 'dead')
                       AND started_at IS NOT NULL
                     ORDER BY finished_at DESC
                     LIMIT $4
                 ) recent
             ) p";

/// Backlog and oldest due waiting job per queue, from `jobs_tenant_queue_waiting` (which also
/// holds the running jobs, stored `queued` with a lease: they are left out). `$1` tenant, `$2`
/// queues.
pub const WAITING_SQL: &str = "SELECT q.name AS queue, w.backlog, w.oldest
             FROM unnest($2::text[]) AS q(name)
             CROSS JOIN LATERAL (
                 SELECT count(*) AS backlog, min(run_at) AS oldest
                 FROM jobs
                 WHERE tenant = $1 AND queue = q.name
                   AND state IN ('scheduled', 'queued', 'retrying')
                   AND run_at <= now()
                   AND NOT EXISTS (SELECT FROM job_leases l WHERE l.job_id = jobs.id)
             ) w";

#[derive(sqlx::FromRow)]
struct CountRow {
    queue: String,
    state: JobState,
    n: i64,
}

#[derive(sqlx::FromRow)]
struct WindowRow {
    queue: String,
    finished_1m: i64,
    finished_5m: i64,
    samples: i64,
    wait: Option<Vec<f64>>,
    run: Option<Vec<f64>>,
}

#[derive(sqlx::FromRow)]
struct WaitingRow {
    queue: String,
    backlog: i64,
    oldest: Option<DateTime<Utc>>,
}

impl QueueStats {
    /// The statistics of `queues` for `tenant`, in a map by queue name (every queue present).
    pub async fn load(
        pool: &PgPool,
        tenant: &str,
        queues: &[String],
    ) -> sqlx::Result<HashMap<String, QueueStats>> {
        let mut stats: HashMap<String, QueueStats> = queues
            .iter()
            .map(|q| (q.clone(), QueueStats::default()))
            .collect();

        let counts: Vec<CountRow> = sqlx::query_as(COUNTS_SQL)
            .bind(tenant)
            .bind(queues)
            .fetch_all(pool)
            .await?;
        for row in counts {
            if let Some(s) = stats.get_mut(&row.queue) {
                s.counts.add(row.state, row.n);
            }
        }

        let windows: Vec<WindowRow> = sqlx::query_as(WINDOWS_SQL)
            .bind(tenant)
            .bind(queues)
            .bind(WINDOW_SECS as f64)
            .bind(MAX_SAMPLES)
            .fetch_all(pool)
            .await?;
        for row in windows {
            if let Some(s) = stats.get_mut(&row.queue) {
                s.throughput = Throughput {
                    finished_1m: row.finished_1m,
                    finished_5m: row.finished_5m,
                    per_second_1m: round_ms(row.finished_1m as f64 / 60.0),
                    per_second_5m: round_ms(row.finished_5m as f64 / WINDOW_SECS as f64),
                };
                s.queue_wait_seconds = Percentiles::from_array(row.wait, row.samples);
                s.run_seconds = Percentiles::from_array(row.run, row.samples);
            }
        }

        let waiting: Vec<WaitingRow> = sqlx::query_as(WAITING_SQL)
            .bind(tenant)
            .bind(queues)
            .fetch_all(pool)
            .await?;
        let now = Utc::now();
        for row in waiting {
            if let Some(s) = stats.get_mut(&row.queue) {
                s.backlog = row.backlog;
                s.oldest_waiting_age_seconds = row
                    .oldest
                    .map(|t| round_ms((now - t).num_milliseconds().max(0) as f64 / 1000.0));
            }
        }
        Ok(stats)
    }
}
