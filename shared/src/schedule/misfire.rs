//! Which ticks a due schedule emits now, and where it resumes.
//!
//! A schedule is *on time* when its first pending tick is at most `grace` old: then every due
//! tick is emitted, oldest first. Otherwise it *misfired* (no scheduler ran, or it stalled) and
//! its policy decides: `skip` emits only the ticks within `grace` of now, `run_once` one job for
//! the whole missed span (the latest due tick), `catch_up` every due tick, at most `cap` of them
//! (the most recent; older ones are dropped). Either way the schedule resumes at its first tick
//! after now, so the work per round is bounded by `cap` whatever the length of an outage.

use chrono::{DateTime, TimeDelta, Utc};

use super::{Misfire, cron::CronSpec, cron::floor_second};

/// The limits a plan is made within.
#[derive(Debug, Clone, Copy)]
pub struct MisfireRules {
    /// How late a tick may be and still count as on time.
    pub grace: TimeDelta,
    /// Most ticks one schedule emits in one round (and in all for a `catch_up`).
    pub cap: usize,
}

/// What to do with a due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Ticks to emit one job each for, oldest first.
    pub ticks: Vec<DateTime<Utc>>,
    /// The first tick not handled by this plan; `None` if the expression has no further tick.
    pub next_run_at: Option<DateTime<Utc>>,
    /// Whether due ticks were left out on purpose (misfire policy or cap).
    pub dropped: bool,
}

/// Plans a schedule whose first pending tick is `pending` (the first tick at or after that
/// instant, to be exact), at `now`.
pub fn plan(
    spec: &CronSpec,
    pending: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: Misfire,
    rules: MisfireRules,
) -> Plan {
    // Lateness is measured on the real clock; ticks are whole seconds up to `now`.
    let earliest_on_time = now - rules.grace;
    let now = floor_second(now);
    let cap = rules.cap.max(1);
    if pending >= earliest_on_time {
        let (ticks, next_run_at) = forward(spec, pending, now, cap);
        return Plan {
            ticks,
            next_run_at,
            dropped: false,
        };
    }
    let (ticks, dropped) = match policy {
        Misfire::Skip => {
            let (ticks, next) = forward(spec, pending.max(earliest_on_time), now, cap);
            // Dropped whenever anything due came before the first tick kept.
            let first_due = spec.next_from(pending).filter(|t| *t <= now);
            let dropped = first_due.is_some() && first_due != ticks.first().copied();
            // More than `cap` ticks within the grace: the rest are dropped too.
            (ticks, dropped || next.is_some_and(|n| n <= now))
        }
        Misfire::RunOnce => {
            let ticks = latest(spec, pending, now, 1);
            let dropped = ticks
                .first()
                .is_some_and(|t| spec.next_from(pending) != Some(*t));
            (ticks, dropped)
        }
        Misfire::CatchUp => {
            let ticks = latest(spec, pending, now, cap);
            let dropped = ticks
                .first()
                .is_some_and(|t| spec.next_from(pending) != Some(*t));
            (ticks, dropped)
        }
    };
    Plan {
        ticks,
        next_run_at: spec.next_after(now),
        dropped,
    }
}

/// Up to `cap` ticks in `[from, now]`, oldest first, and the first tick after them.
fn forward(
    spec: &CronSpec,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    cap: usize,
) -> (Vec<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut ticks = Vec::new();
    let mut next = spec.next_from(from);
    while let Some(t) = next {
        if t > now || ticks.len() == cap {
            break;
        }
        ticks.push(t);
        next = spec.next_after(t);
    }
    (ticks, next)
}

/// The latest `n` ticks in `[from, now]`, oldest first. Found by stepping back from `now`, so an
/// outage of any length costs `n` steps, then walked forward again: the ticks emitted are
/// always the ones a forward search yields.
fn latest(
    spec: &CronSpec,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    n: usize,
) -> Vec<DateTime<Utc>> {
    let mut start = None;
    let mut cursor = spec.prev_until(now);
    for _ in 0..n {
        match cursor {
            Some(t) if t >= from => {
                start = Some(t);
                cursor = spec.prev_before(t);
            }
            _ => break,
        }
    }
    match start {
        Some(start) => forward(spec, start, now, n).0,
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn rules(grace_secs: i64, cap: usize) -> MisfireRules {
        MisfireRules {
            grace: TimeDelta::seconds(grace_secs),
            cap,
        }
    }

    fn every_minute() -> CronSpec {
        CronSpec::parse("* * * * *", "UTC").unwrap()
    }

    fn minutes(ticks: &[DateTime<Utc>]) -> Vec<String> {
        ticks
            .iter()
            .map(|t| t.format("%H:%M:%S").to_string())
            .collect()
    }

    #[test]
    fn not_yet_due_emits_nothing() {
        let p = plan(
            &every_minute(),
            utc("2026-01-01T10:01:00Z"),
            utc("2026-01-01T10:00:59.9Z"),
            Misfire::CatchUp,
            rules(5, 100),
        );
        assert!(p.ticks.is_empty());
        assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:01:00Z")));
    }

    #[test]
    fn on_time_emits_every_due_tick_whatever_the_policy() {
        let per_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        for policy in [Misfire::Skip, Misfire::RunOnce, Misfire::CatchUp] {
            let p = plan(
                &per_second,
                utc("2026-01-01T10:00:00Z"),
                utc("2026-01-01T10:00:02.4Z"),
                policy,
                rules(5, 100),
            );
            assert_eq!(minutes(&p.ticks), ["10:00:00", "10:00:01", "10:00:02"]);
            assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:00:03Z")));
            assert!(!p.dropped);
        }
    }

    #[test]
    fn skip_keeps_only_ticks_within_the_grace() {
        let per_10s = CronSpec::parse("*/10 * * * * *", "UTC").unwrap();
        let p = plan(
            &per_10s,
            utc("2026-01-01T09:00:00Z"),
            utc("2026-01-01T10:00:05Z"),
            Misfire::Skip,
            rules(15, 100),
        );
        assert_eq!(minutes(&p.ticks), ["09:59:50", "10:00:00"]);
        assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:00:10Z")));
        assert!(p.dropped);

        let p = plan(
            &every_minute(),
            utc("2026-01-01T09:00:00Z"),
            utc("2026-01-01T10:00:30Z"),
            Misfire::Skip,
            rules(5, 100),
        );
        assert!(p.ticks.is_empty());
        assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:01:00Z")));
        assert!(p.dropped);
    }

    #[test]
    fn the_grace_is_measured_on_the_real_clock() {
        let per_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        let p = plan(
            &per_second,
            utc("2026-01-01T09:00:00Z"),
            utc("2026-01-01T10:00:05.5Z"),
            Misfire::Skip,
            rules(5, 100),
        );
        // 10:00:00 is 5.5 s old: dropped. Nothing kept is older than the grace.
        assert_eq!(
            minutes(&p.ticks),
            ["10:00:01", "10:00:02", "10:00:03", "10:00:04", "10:00:05"]
        );
        assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:00:06Z")));
    }

    #[test]
    fn run_once_emits_the_latest_missed_tick() {
        let p = plan(
            &every_minute(),
            utc("2026-01-01T09:00:00Z"),
            utc("2026-01-01T10:00:30Z"),
            Misfire::RunOnce,
            rules(5, 100),
        );
        assert_eq!(minutes(&p.ticks), ["10:00:00"]);
        assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:01:00Z")));
        assert!(p.dropped);
    }

    #[test]
    fn catch_up_emits_every_missed_tick_up_to_the_cap() {
        let p = plan(
            &every_minute(),
            utc("2026-01-01T09:55:00Z"),
            utc("2026-01-01T10:00:30Z"),
            Misfire::CatchUp,
            rules(5, 100),
        );
        assert_eq!(
            minutes(&p.ticks),
            [
                "09:55:00", "09:56:00", "09:57:00", "09:58:00", "09:59:00", "10:00:00"
            ]
        );
        assert_eq!(p.next_run_at, Some(utc("2026-01-01T10:01:00Z")));
        assert!(!p.dropped);

        let capped = plan(
            &every_minute(),
            utc("2026-01-01T09:55:00Z"),
            utc("2026-01-01T10:00:30Z"),
            Misfire::CatchUp,
            rules(5, 3),
        );
        assert_eq!(minutes(&capped.ticks), ["09:58:00", "09:59:00", "10:00:00"]);
        assert!(capped.dropped);
    }

    #[test]
    fn a_pending_instant_between_ticks_starts_at_the_next_tick() {
        let p = plan(
            &every_minute(),
            utc("2026-01-01T09:57:20Z"),
            utc("2026-01-01T10:00:30Z"),
            Misfire::CatchUp,
            rules(5, 100),
        );
        assert_eq!(minutes(&p.ticks), ["09:58:00", "09:59:00", "10:00:00"]);
        assert!(!p.dropped);
    }

    #[test]
    fn a_week_long_outage_of_a_per_second_schedule_is_cheap() {
        let per_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        let started = std::time::Instant::now();
        for policy in [Misfire::Skip, Misfire::RunOnce, Misfire::CatchUp] {
            let p = plan(
                &per_second,
                utc("2026-01-01T00:00:00Z"),
                utc("2026-01-08T00:00:00Z"),
                policy,
                rules(5, 100),
            );
            assert!(p.ticks.len() <= 100);
            assert_eq!(p.ticks.last(), Some(&utc("2026-01-08T00:00:00Z")));
            assert_eq!(p.next_run_at, Some(utc("2026-01-08T00:00:01Z")));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn catch_up_across_spring_forward_in_berlin() {
        // Daily 02:30 Berlin; down from before the 2026-03-29 gap until 2026-03-30 12:00 UTC.
        let s = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let p = plan(
            &s,
            utc("2026-03-28T01:30:00Z"),
            utc("2026-03-30T12:00:00Z"),
            Misfire::CatchUp,
            rules(5, 100),
        );
        assert_eq!(
            p.ticks,
            [
                utc("2026-03-28T01:30:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-30T00:30:00Z")
            ]
        );
        assert_eq!(p.next_run_at, Some(utc("2026-03-31T00:30:00Z")));
    }

    #[test]
    fn catch_up_through_the_repeated_hour_in_new_york() {
        // Every 30 minutes at 01:xx New York: four ticks on the fall-back night.
        let s = CronSpec::parse("*/30 1 * * *", "America/New_York").unwrap();
        let p = plan(
            &s,
            utc("2026-11-01T04:00:00Z"),
            utc("2026-11-01T12:00:00Z"),
            Misfire::CatchUp,
            rules(5, 100),
        );
        assert_eq!(
            p.ticks,
            [
                utc("2026-11-01T05:00:00Z"),
                utc("2026-11-01T05:30:00Z"),
                utc("2026-11-01T06:00:00Z"),
                utc("2026-11-01T06:30:00Z")
            ]
        );
        assert_eq!(p.next_run_at, Some(utc("2026-11-02T06:00:00Z")));
    }
}
