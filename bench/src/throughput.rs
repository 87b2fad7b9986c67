//! End-to-end throughput: noop jobs in through the HTTP API, out as `succeeded` in Postgres.
//! The clock runs from the first request to the `finished_at` of the last job.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Args;

/// The running stack: its API and its database.
#[derive(Clone)]
pub struct Target {
    pub http: reqwest::Client,
    pub api_url: String,
    token: Arc<str>,
    pub db: PgPool,
}

impl Target {
    pub async fn connect(args: &Args) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&args.database_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Postgres (DATABASE_URL): {e}"))?;
        let target = Self {
            http,
            api_url: args.api_url.trim_end_matches('/').to_owned(),
            token: args.token.as_str().into(),
            db,
        };
        let ready = target
            .http
            .get(format!("{}/readyz", target.api_url))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the api at {}: {e}", target.api_url))?;
        anyhow::ensure!(
            ready.status().is_success(),
            "the api at {} is not ready ({})",
            target.api_url,
            ready.status()
        );
        Ok(target)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&*self.token)
    }

    /// Enqueues one batch; returns the new job ids.
    pub async fn enqueue_batch(&self, n: usize) -> anyhow::Result<Vec<Uuid>> {
        let jobs: Vec<_> = (0..n).map(|_| json!({"kind": "noop"})).collect();
        let body: Jobs = self
            .create("/v1/jobs/batch", json!({ "jobs": jobs }))
            .await?;
        Ok(body.jobs.into_iter().map(|j| j.id).collect())
    }

    /// Enqueues one job; returns its id.
    pub async fn enqueue_one(&self) -> anyhow::Result<Uuid> {
        Ok(self
            .create::<JobId>("/v1/jobs", json!({"kind": "noop"}))
            .await?
            .id)
    }

    /// POSTs `body` to `path` and reads the answer, which must be 201 Created.
    async fn create<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        let response = self.post(path).json(&body).send().await?;
        let status = response.status();
        anyhow::ensure!(
            status == reqwest::StatusCode::CREATED,
            "{path} answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(response.json().await?)
    }

    /// Waits until every job in `ids` finished, and returns when the last one did.
    ///
    /// While waiting it counts the tenant's unfinished jobs from the oldest id on (an index
    /// range over the rows still moving), a few times a second; the exact tally over `ids`
    /// runs once at the end.
    pub async fn wait_finished(&self, ids: &[Uuid]) -> anyhow::Result<Finished> {
        let Some(oldest) = ids.iter().min() else {
            anyhow::bail!("no jobs to wait for");
        };
        let tenant: String = sqlx::query_scalar("SELECT tenant FROM jobs WHERE id = $1")
            .bind(oldest)
            .fetch_one(&self.db)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs
                 WHERE tenant = $1 AND state IN ('scheduled', 'queued', 'running', 'retrying')
                   AND id >= $2",
            )
            .bind(&tenant)
            .bind(oldest)
            .fetch_one(&self.db)
            .await?;
            if waiting == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{waiting} jobs still unfinished after 600 s: is a worker running?"
            );
            // The end time comes from `finished_at`, not from this loop, so polling slowly
            // while much is left costs no precision and keeps the count (which reads every
            // waiting job) off Postgres' back: a pause of a millisecond per ten jobs left, which
            // is well under the time they take at any rate this stack reaches.
            let pause = (waiting as u64 / 10).clamp(10, 2_000);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let (finished, succeeded, last): (i64, i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'dead', 'cancelled')),
                    count(*) FILTER (WHERE state = 'succeeded'),
                    max(finished_at)
             FROM jobs WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(&self.db)
        .await?;
        anyhow::ensure!(
            finished as usize == ids.len(),
            "{finished} of {} jobs finished",
            ids.len()
        );
        Ok(Finished {
            succeeded: succeeded as usize,
            last_finished_at: last.unwrap_or_else(Utc::now),
        })
    }
}

#[derive(Deserialize)]
struct Jobs {
    jobs: Vec<JobId>,
}

#[derive(Deserialize)]
struct JobId {
    id: Uuid,
}

pub struct Finished {
    pub succeeded: usize,
    pub last_finished_at: DateTime<Utc>,
}

/// One end-to-end run.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub label: String,
    pub jobs: usize,
    pub succeeded: usize,
    /// Until the last request was answered.
    pub enqueue: Duration,
    /// Until the last job finished.
    pub end_to_end: Duration,
    /// CPU seconds per part of the stack over the run.
    pub cpu: Vec<(String, f64)>,
}

/// `args.jobs` noop jobs in batches of `args.batch`, `args.batch_clients` requests at a time.
pub async fn batch(target: &Target, args: &Args) -> anyhow::Result<Throughput> {
    let batches = args.jobs.div_ceil(args.batch);
    let label = format!(
        "batch: {} jobs, {} per request, {} in flight",
        args.jobs, args.batch, args.batch_clients
    );
    let per = args.batch;
    let total = args.jobs;
    drive(
        target,
        label,
        total,
        args.batch_clients,
        move |t, i| {
            let n = per.min(total - i * per);
            async move { t.enqueue_batch(n).await }
        },
        batches,
    )
    .await
}

/// `args.single_jobs` noop jobs, one per request, from `args.single_clients` clients.
pub async fn single(target: &Target, args: &Args) -> anyhow::Result<Throughput> {
    let label = format!(
        "single: {} jobs, {} concurrent clients",
        args.single_jobs, args.single_clients
    );
    drive(
        target,
        label,
        args.single_jobs,
        args.single_clients,
        |t, _| async move { Ok(vec![t.enqueue_one().await?]) },
        args.single_jobs,
    )
    .await
}

/// Runs `requests` calls of `call` from `clients` concurrent loops, then waits for the jobs.
async fn drive<F, Fut>(
    target: &Target,
    label: String,
    jobs: usize,
    clients: usize,
    call: F,
    requests: usize,
) -> anyhow::Result<Throughput>
where
    F: Fn(Target, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Uuid>>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = crate::cpu::snapshot();
    let started_wall = Utc::now();
    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (call, next, target) = (call.clone(), next.clone(), target.clone());
        loops.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, anyhow::Error>(ids);
                }
                ids.extend(call(target.clone(), i).await?);
            }
        });
    }
    let mut ids = Vec::with_capacity(jobs);
    while let Some(joined) = loops.join_next().await {
        ids.extend(joined??);
    }
    let enqueue = started.elapsed();
    anyhow::ensure!(ids.len() == jobs, "enqueued {} jobs, not {jobs}", ids.len());
    let finished = target.wait_finished(&ids).await?;
    let cpu = crate::cpu::snapshot().since(&cpu_before);
    let end_to_end = (finished.last_finished_at - started_wall)
        .to_std()
        .unwrap_or_default()
        .max(enqueue);
    Ok(Throughput {
        label,
        jobs,
        succeeded: finished.succeeded,
        enqueue,
        end_to_end,
        cpu,
    })
}
