//! The emitter: turns due schedule ticks into jobs, exactly once per tick across replicas.
//!
//! Each round, in one transaction: lock due schedules (`FOR UPDATE SKIP LOCKED`, so replicas
//! split the work and never hold the same schedule at once), plan each one's ticks by its
//! misfire policy, insert one job per tick through the api's own insert path (so the jobs go
//! out through the outbox, tagged with `schedule_id` and `tick`), move `next_run_at` past them,
//! commit. A replica that dies mid-round rolls back and releases its locks: the next replica's
//! round finds the same ticks still due. Should `next_run_at` ever be moved back, the unique
//! index on (schedule_id, tick) turns a repeated tick into a no-op (`ON CONFLICT DO NOTHING`).
//!
//! Why not apalis-cron: its cron stream keeps the schedule and the next tick in the memory of
//! one process. Here schedules are rows that any replica may claim, the claim and the emitted
//! jobs must commit together, and a tick must survive the death of whoever was about to emit
//! it; all of that lives in Postgres, so the loop is a plain query on a timer. The cron
//! arithmetic (croner with chrono-tz) is in `conveyor_shared::schedule::cron`.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use conveyor_shared::{
    Job, JobId,
    enqueue::{self, Limits},
    relay::RelayWaker,
    schedule::{
        self, Advance, Schedule,
        cron::CronSpec,
        misfire::{self, MisfireRules},
    },
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Emitter tuning; defaults in [`crate::Config::defaults`].
#[derive(Debug, Clone)]
pub struct EmitterConfig {
    /// Longest wait between two looks for due schedules (`CONVEYOR_SCHEDULER_TICK_MS`). The
    /// emitter also wakes at the earliest known `next_run_at`, so ticks are usually emitted
    /// within milliseconds; this bounds how long a new or changed schedule goes unnoticed.
    pub tick_interval: Duration,
    /// Most ticks one schedule emits per round, and in all after a misfire under `catch_up`
    /// (`CONVEYOR_SCHEDULER_CATCHUP_MAX`).
    pub catchup_max: usize,
    /// How late a tick may be emitted and still count as on time
    /// (`CONVEYOR_SCHEDULER_MISFIRE_GRACE_MS`); later ticks are misfires.
    pub misfire_grace: Duration,
    /// Schedules claimed per transaction (`CONVEYOR_SCHEDULER_BATCH`).
    pub batch_size: i64,
}

/// How often the `conveyor_scheduler_schedules_active` gauge is refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest pause between rounds, so a due schedule another replica holds is not spun on.
const MIN_PAUSE: Duration = Duration::from_millis(20);

pub struct Emitter {
    pub pool: PgPool,
    pub config: EmitterConfig,
    /// The queues jobs may name: templates are validated again at every tick.
    pub limits: Limits,
    /// The relay of this process, woken when ticks are emitted.
    pub relay: RelayWaker,
}

impl Emitter {
    /// Runs rounds until `shutdown`; database errors are logged and retried next round.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut gauge_at: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let round = Utc::now();
            let claimed = match self.emit_due(round).await {
                Ok(claimed) => Some(claimed),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot emit ticks; will retry");
                    None
                }
            };
            if gauge_at.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                gauge_at = Some(Instant::now());
                if let Ok(n) = schedule::count_active(&self.pool).await {
                    metrics::gauge!("conveyor_scheduler_schedules_active").set(n as f64);
                }
            }
            let pause = match claimed {
                // A full batch: more is probably due, go again at once.
                Some(n) if n as i64 >= self.config.batch_size => Duration::ZERO,
                Some(_) => self.pause(round).await,
                None => self.config.tick_interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("emitter stopped");
    }

    /// Until the earliest known tick, at most `tick_interval`, at least [`MIN_PAUSE`]. A tick
    /// that was already due when the round began, yet is still pending, is held by another
    /// replica (or a PATCH): it is left to them for a `tick_interval`.
    async fn pause(&self, round: DateTime<Utc>) -> Duration {
        let until_due = match schedule::next_due(&self.pool).await {
            Ok(Some(at)) if at <= round => self.config.tick_interval,
            // A millisecond late, so the round sees the tick as due by its own clock.
            Ok(Some(at)) => (at - Utc::now() + TimeDelta::milliseconds(1))
                .to_std()
                .unwrap_or(Duration::ZERO),
            Ok(None) | Err(_) => self.config.tick_interval,
        };
        until_due.clamp(MIN_PAUSE, self.config.tick_interval.max(MIN_PAUSE))
    }

    /// One round: claims due schedules and emits their ticks in one transaction. Returns how
    /// many schedules it claimed.
    #[tracing::instrument(name = "scheduler.emit_due", skip_all, fields(schedules, jobs))]
    async fn emit_due(&self, now: DateTime<Utc>) -> sqlx::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let due = schedule::claim_due(&mut tx, now, self.config.batch_size).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let rules = MisfireRules {
            grace: TimeDelta::from_std(self.config.misfire_grace).unwrap_or(TimeDelta::MAX),
            cap: self.config.catchup_max,
        };
        let mut emitted: Vec<Job> = Vec::new();
        let mut moves = Vec::with_capacity(due.len());
        for s in &due {
            let (jobs, advance) = self.tick_jobs(s, now, rules);
            emitted.extend(enqueue::insert(&mut tx, &s.tenant, &jobs).await?);
            moves.push(advance);
        }
        schedule::advance(&mut tx, &moves).await?;
        tx.commit().await?;

        let at = Utc::now();
        for job in &emitted {
            if let Some(tick) = job.tick {
                let lag = (at - tick).to_std().unwrap_or(Duration::ZERO);
                metrics::histogram!("conveyor_scheduler_tick_lag_seconds")
                    .record(lag.as_secs_f64());
            }
        }
        metrics::counter!("conveyor_scheduler_ticks_emitted_total").increment(emitted.len() as u64);
        enqueue::created_committed(&self.relay, &emitted);
        let span = tracing::Span::current();
        span.record("schedules", due.len());
        span.record("jobs", emitted.len());
        Ok(due.len())
    }

    /// The jobs for a claimed schedule's due ticks, and where the schedule goes on.
    fn tick_jobs(
        &self,
        s: &Schedule,
        now: DateTime<Utc>,
        rules: MisfireRules,
    ) -> (Vec<enqueue::NewJob>, Advance) {
        let stop = |reason: String| {
            // Stored schedules were validated when written; this only happens if the
            // deployment changed under them (a queue removed, a kind withdrawn). The tick is
            // dropped rather than retried forever; the error says which schedule to fix.
            tracing::error!(schedule_id = %s.id, tenant = %s.tenant, error = %reason,
                "schedule cannot emit its tick; skipping it");
            metrics::counter!("conveyor_scheduler_tick_errors_total").increment(1);
        };
        let pending = s.next_run_at.unwrap_or(now);
        let spec = match CronSpec::parse(&s.cron, &s.timezone) {
            Ok(spec) => spec,
            Err(e) => {
                stop(e);
                let advance = Advance {
                    id: s.id,
                    next_run_at: None,
                    last_tick: None,
                };
                return (Vec::new(), advance);
            }
        };
        let plan = misfire::plan(&spec, pending, now, s.misfire, rules);
        if plan.dropped {
            tracing::warn!(schedule_id = %s.id, misfire = s.misfire.as_str(), late_since = %pending,
                emitted = plan.ticks.len(), "schedule misfired; ticks dropped by its policy");
        }
        let advance = Advance {
            id: s.id,
            next_run_at: plan.next_run_at,
            last_tick: plan.ticks.last().copied(),
        };
        let template = match s.job.to_job(&self.limits, now) {
            Ok(job) => job,
            Err(errors) => {
                let reasons: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect();
                stop(reasons.join("; "));
                return (Vec::new(), advance);
            }
        };
        let jobs = plan
            .ticks
            .iter()
            .map(|tick| enqueue::NewJob {
                id: JobId::new(),
                schedule_id: Some(s.id),
                tick: Some(*tick),
                ..template.clone()
            })
            .collect();
        (jobs, advance)
    }
}
