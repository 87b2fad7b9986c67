//! `/v1/queues`: what operators watch. Per queue, the caller's jobs by state, backlog,
//! throughput and latency (from Postgres, tenant-scoped), plus RabbitMQ's view of the queue.
//!
//! `ready` and `consumers` describe the RabbitMQ queue itself, which all tenants share; they are
//! null when RabbitMQ cannot be asked, and the Postgres figures are answered regardless.

use axum::{
    Json,
    extract::{Path, State},
};
use conveyor_shared::{
    broker::QueueDepth,
    job::stats::{Percentiles, QueueStats, StateCounts, Throughput},
    keys::Scope,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{auth::Caller, error::ApiError, error::Problem, startup::AppState};

/// One queue as an operator sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// The caller's jobs in this queue, by state.
    pub counts: StateCounts,
    /// Jobs that gave up (same as `counts.dead`): the ones that need a human.
    pub dead: i64,
    /// Due waiting jobs (`queued`, and `scheduled` / `retrying` ones whose time has come).
    pub backlog: i64,
    /// Seconds since the oldest due waiting job became due; null when nothing waits.
    pub oldest_waiting_age_seconds: Option<f64>,
    pub throughput: Throughput,
    /// Due to started, over jobs finished in the last 5 minutes (at most the 10,000 latest).
    pub queue_wait_seconds: Percentiles,
    /// Started to finished (last attempt), over the same jobs.
    pub run_seconds: Percentiles,
    /// Messages ready in the RabbitMQ queue (all tenants); null when RabbitMQ is unreachable.
    pub ready: Option<u32>,
    /// Consumers (worker channels) on the RabbitMQ queue; null when RabbitMQ is unreachable.
    pub consumers: Option<u32>,
    /// Messages delivered to workers and not yet acked (all tenants); null when RabbitMQ's
    /// management API (`CONVEYOR_RABBITMQ_MANAGEMENT_URL`) cannot be asked.
    pub unacked: Option<u32>,
}

impl QueueView {
    fn new(name: String, stats: QueueStats, depth: Option<QueueDepth>) -> Self {
        Self {
            name,
            dead: stats.counts.dead,
            counts: stats.counts,
            backlog: stats.backlog,
            oldest_waiting_age_seconds: stats.oldest_waiting_age_seconds,
            throughput: stats.throughput,
            queue_wait_seconds: stats.queue_wait_seconds,
            run_seconds: stats.run_seconds,
            ready: depth.map(|d| d.ready),
            consumers: depth.map(|d| d.consumers),
            unacked: depth.and_then(|d| d.unacked),
        }
    }
}

/// `GET /v1/queues` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// Every configured queue, in configuration order.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    responses(
        (status = 200, description = "Every queue this deployment serves", body = QueueList),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope jobs:read", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueList>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    let queues = state.limits.enqueue.queues.clone();
    let queues = views(&state, &principal.tenant, queues).await?;
    Ok(Json(QueueList { queues }))
}

/// One queue.
#[utoipa::path(
    get, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path, description = "Queue name, e.g. `default`")),
    responses(
        (status = 200, description = "The queue", body = QueueView),
        (status = 401, description = "Missing or bad token", body = Problem),
        (status = 403, description = "Missing scope jobs:read", body = Problem),
        (status = 404, description = "This deployment serves no such queue", body = Problem),
    ),
    security(("bearer" = ["jobs:read"]))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    let principal = caller.require(Scope::JobsRead)?;
    if !state.limits.enqueue.queues.contains(&name) {
        return Err(ApiError::NotFound("queue"));
    }
    let mut views = views(&state, &principal.tenant, vec![name]).await?;
    Ok(Json(views.remove(0)))
}

async fn views(
    state: &AppState,
    tenant: &str,
    queues: Vec<String>,
) -> Result<Vec<QueueView>, ApiError> {
    let (stats, depths) = tokio::join!(
        QueueStats::load(&state.pool, tenant, &queues),
        state.inspector.depths(&queues),
    );
    let mut stats = stats?;
    Ok(queues
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let s = stats.remove(&name).unwrap_or_default();
            let depth = depths.as_ref().and_then(|d| d.get(i).copied());
            QueueView::new(name, s, depth)
        })
        .collect())
}
