use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Args, stats::Distribution, throughput::Target};

/// Single-job enqueue latency under an open-loop load.
#[derive(Debug, Clone)]
pub struct EnqueueLatency {
    pub rate: u32,
    pub requests: usize,
    pub errors: usize,
    /// Measured from when each request was due to be sent, so a stall that delays later
    /// requests counts against them too (no coordinated omission).
    pub latency: Distribution,
    /// Requests answered per second, over the run.
    pub achieved_rate: f64,
}

/// Sends `args.rate` single-job requests per second for `args.rate_secs` seconds, each on
/// its own schedule whether or not earlier ones were answered (an open loop, as real clients
/// behave), then waits for the jobs so the next section starts on a quiet system.
pub async fn enqueue(target: &Target, args: &Args) -> anyhow::Result<EnqueueLatency> {
    let requests = (args.rate as usize) * (args.rate_secs as usize);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..requests {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let target = target.clone();
        calls.spawn(async move {
            let outcome = target.enqueue_one().await;
            (due.elapsed(), outcome)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut ids = Vec::with_capacity(requests);
    let mut errors = 0;
    while let Some(joined) = calls.join_next().await {
        let (latency, outcome) = joined?;
        match outcome {
            Ok(id) => {
                latencies.push(latency);
                ids.push(id);
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed();
    if !ids.is_empty() {
        target.wait_finished(&ids).await?;
    }
    Ok(EnqueueLatency {
        rate: args.rate,
        requests,
        errors,
        latency: Distribution::new(latencies),
        achieved_rate: ids.len() as f64 / elapsed.as_secs_f64(),
    })
}

/// How long a job waits from the client's request to its handler starting, on a quiet system.
#[derive(Debug, Clone)]
pub struct StartLatency {
    pub samples: usize,
    pub latency: Distribution,
}

/// Sends `args.start_samples` jobs one at a time, each after the previous one finished, and
/// reads when each started (`jobs.started_at`, Postgres' clock) against when its request was sent
/// (this machine's clock: the same clock when the stack is local).
pub async fn start(target: &Target, args: &Args) -> anyhow::Result<StartLatency> {
    let mut sent: Vec<(Uuid, DateTime<Utc>)> = Vec::with_capacity(args.start_samples);
    for _ in 0..args.start_samples {
        let at = Utc::now();
        let id = target.enqueue_one().await?;
        target.wait_finished(&[id]).await?;
        sent.push((id, at));
        // Let the system settle, so each sample is a job arriving at an idle stack.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids: Vec<Uuid> = sent.iter().map(|(id, _)| *id).collect();
    let started: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, started_at FROM jobs WHERE id = ANY($1) AND attempts = 1")
            .bind(&ids)
            .fetch_all(&target.db)
            .await?;
    let started: std::collections::HashMap<_, _> = started.into_iter().collect();
    let latencies = sent
        .iter()
        .filter_map(|(id, at)| (*started.get(id)? - *at).to_std().ok())
        .collect::<Vec<_>>();
    anyhow::ensure!(
        latencies.len() == sent.len(),
        "{} of {} jobs have no start time",
        sent.len() - latencies.len(),
        sent.len()
    );
    Ok(StartLatency {
        samples: sent.len(),
        latency: Distribution::new(latencies),
    })
}
