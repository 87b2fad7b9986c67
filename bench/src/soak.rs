//! Memory under continuous load. A leak shows as a trend, not as a high number, so the report
//! gives the slope of resident memory over the second half of the run (after warm-up, caches
//! and pools have filled) next to the samples themselves.

use std::time::{Duration, Instant};

use crate::{Args, memory, stats::slope, throughput::Target};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Requests per second the load is split into.
const TICKS_PER_SECOND: u32 = 10;

#[derive(Debug, Clone)]
pub struct Soak {
    pub secs: u64,
    pub rate: u32,
    pub jobs: usize,
    pub errors: usize,
    /// (seconds since start, KiB per process name).
    pub samples: Vec<(f64, Vec<(String, u64)>)>,
}

impl Soak {
    /// KiB per minute over the second half of the run, per process name.
    pub fn trend(&self) -> Vec<(String, f64)> {
        let Some((_, first)) = self.samples.first() else {
            return Vec::new();
        };
        let half = self.secs as f64 / 2.0;
        first
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let points: Vec<(f64, f64)> = self
                    .samples
                    .iter()
                    .filter(|(t, _)| *t >= half)
                    .map(|(t, kib)| (*t / 60.0, kib[i].1 as f64))
                    .collect();
                (name.clone(), slope(&points))
            })
            .collect()
    }
}

/// Enqueues `args.soak_rate` noop jobs per second in small batches for `args.soak_secs`,
/// sampling the memory of api and worker every 10 s.
pub async fn run(target: &Target, args: &Args) -> anyhow::Result<Soak> {
    let per_tick = (args.soak_rate / TICKS_PER_SECOND).max(1) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.soak_secs);
    let mut next_sample = start;
    let mut samples = Vec::new();
    let mut jobs = 0;
    let mut errors = 0;
    let mut in_flight = tokio::task::JoinSet::new();
    while Instant::now() < end {
        ticker.tick().await;
        if Instant::now() >= next_sample {
            let kib = args
                .processes()
                .into_iter()
                .map(|name| {
                    let kib = memory::rss_of(&name);
                    (name, kib)
                })
                .collect();
            samples.push((start.elapsed().as_secs_f64(), kib));
            next_sample += SAMPLE_EVERY;
        }
        let target = target.clone();
        in_flight.spawn(async move { target.enqueue_batch(per_tick).await });
        while let Some(done) = in_flight.try_join_next() {
            match done? {
                Ok(ids) => jobs += ids.len(),
                Err(_) => errors += 1,
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        match done? {
            Ok(ids) => jobs += ids.len(),
            Err(_) => errors += 1,
        }
    }
    Ok(Soak {
        secs: args.soak_secs,
        rate: args.soak_rate,
        jobs,
        errors,
        samples,
    })
}
