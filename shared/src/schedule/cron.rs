//! Cron expressions read in a time zone, and the ticks they produce.
//!
//! A tick is an instant whose wall clock in the schedule's IANA time zone matches the
//! expression; ticks are whole seconds. Daylight-saving changes are decided by croner and are
//! the same everywhere a schedule is read (api and scheduler): a fixed time that falls in a
//! spring-forward gap runs at the first instant after the gap; a fixed time that happens twice
//! at fall-back runs once, on its first pass; wildcard and step expressions match every real
//! instant whose wall clock fits, so they skip the gap and run in both passes of an overlap.
//! Searches move along real time, never backwards across an overlap.

use std::{fmt, str::FromStr};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

/// A parsed cron expression with the time zone its fields are read in.
#[derive(Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl fmt::Debug for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSpec")
            .field("cron", &self.cron.pattern.to_string())
            .field("tz", &self.tz.name())
            .finish()
    }
}

/// Parses a cron expression: 5 fields (`minute hour day-of-month month day-of-week`), 6 with
/// leading seconds, or one of the nicknames `@hourly`, `@daily`, `@weekly`, `@monthly`,
/// `@yearly`. The message of an error is meant for the caller who wrote the expression.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    let nickname = fields == 1 && expr.trim_start().starts_with('@');
    if !nickname && !(5..=6).contains(&fields) {
        return Err(format!(
            "must have 5 fields (minute hour day-of-month month day-of-week) or 6 with leading \
             seconds; got {fields}"
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("not a valid cron expression: {e}"))?;
    Ok(cron)
}

/// Parses an IANA time zone name such as `Europe/Berlin` (case as in the tz database).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone {name:?}; use an IANA name such as UTC or Europe/Berlin")
    })
}

impl CronSpec {
    pub fn new(cron: Cron, tz: Tz) -> Self {
        Self { cron, tz }
    }

    /// Parses both parts, for stored schedules (which were validated when written).
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, String> {
        Ok(Self::new(parse_cron(cron)?, parse_timezone(timezone)?))
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.search(floor_second(t), false, true)
    }

    /// The first tick at or after `t`.
    pub fn next_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // A fractional `t` lies after its whole second: the search starts at the next one.
        let whole = floor_second(t);
        self.search(whole, whole == t, true)
    }

    /// The latest tick at or before `t`.
    pub fn prev_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.search(floor_second(t), true, false)
    }

    /// The latest tick strictly before `t`.
    pub fn prev_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let whole = floor_second(t);
        self.search(whole, whole != t, false)
    }

    fn search(&self, t: DateTime<Utc>, inclusive: bool, forward: bool) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        let found = if forward {
            self.cron.find_next_occurrence(&local, inclusive)
        } else {
            self.cron.find_previous_occurrence(&local, inclusive)
        };
        // Errors mean "no occurrence within croner's search limits" (e.g. 31 February).
        found.ok().map(|t| t.with_timezone(&Utc))
    }
}

/// `t` without its fraction of a second: cron matches whole seconds.
pub fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::seconds(1)).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    //! Expected instants are written out by hand from the DST rules (EU: last Sunday of March
    //! 01:00 UTC and of October 01:00 UTC; US: second Sunday of March and first Sunday of
    //! November at 02:00 local), not computed with the code under test.
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn spec(cron: &str, tz: &str) -> CronSpec {
        CronSpec::parse(cron, tz).unwrap()
    }

    /// `n` ticks after `from`.
    fn ticks(spec: &CronSpec, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = utc(from);
        for _ in 0..n {
            t = spec.next_after(t).unwrap();
            out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        out
    }

    #[test]
    fn five_or_six_fields_only() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("30 */5 * * * *").is_ok());
        assert!(parse_cron("@hourly").is_ok());
        for bad in [
            "* * * *",
            "0 0 0 1 1 * 2030",
            "",
            "61 * * * *",
            "* * * * MOO",
            "@often",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_cron("* * * *").unwrap_err().contains("5 fields"));
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("UTC").is_ok());
        assert!(parse_timezone("Mars/Olympus_Mons").is_err());
        assert!(parse_timezone("").is_err());
    }

    #[test]
    fn seconds_field_and_fractional_starts() {
        let s = spec("*/15 * * * * *", "UTC");
        assert_eq!(
            ticks(&s, "2026-01-01T00:00:00.5Z", 3),
            [
                "2026-01-01T00:00:15Z",
                "2026-01-01T00:00:30Z",
                "2026-01-01T00:00:45Z"
            ]
        );
        assert_eq!(
            s.next_from(utc("2026-01-01T00:00:15Z")),
            Some(utc("2026-01-01T00:00:15Z"))
        );
        assert_eq!(
            s.next_from(utc("2026-01-01T00:00:15.1Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            s.prev_until(utc("2026-01-01T00:00:29.9Z")),
            Some(utc("2026-01-01T00:00:15Z"))
        );
        assert_eq!(
            s.prev_before(utc("2026-01-01T00:00:15Z")),
            Some(utc("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn berlin_daily_fixed_time_across_spring_forward() {
        // 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day and the job
        // runs at 03:00 CEST = 01:00 UTC, right after the gap.
        let s = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET (UTC+1)
                "2026-03-29T01:00:00Z", // gap: 03:00 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST (UTC+2)
            ]
        );
    }

    #[test]
    fn berlin_daily_fixed_time_across_fall_back() {
        // 2026-10-25 03:00 CEST goes back to 02:00 CET: 02:30 happens twice; a fixed-time job
        // runs once, on the first pass (CEST).
        let s = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // first 02:30 (CEST) only
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
    }

    #[test]
    fn berlin_hourly_runs_in_both_passes_of_the_repeated_hour() {
        // Minute 0 of every wall-clock hour: 02:00 happens at 00:00 UTC and again at 01:00 UTC.
        let s = spec("0 * * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&s, "2026-10-24T22:30:00Z", 4),
            [
                "2026-10-24T23:00:00Z", // 01:00 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET, the repeat
                "2026-10-25T02:00:00Z", // 03:00 CET
            ]
        );
    }

    #[test]
    fn new_york_across_spring_forward() {
        // 2026-03-08 02:00 EST jumps to 03:00 EDT.
        let daily = spec("0 9 * * *", "America/New_York");
        assert_eq!(
            ticks(&daily, "2026-03-06T20:00:00Z", 3),
            [
                "2026-03-07T14:00:00Z", // 09:00 EST (UTC-5)
                "2026-03-08T13:00:00Z", // 09:00 EDT (UTC-4)
                "2026-03-09T13:00:00Z",
            ]
        );
        // Every 30 minutes: 02:00 and 02:30 do not exist and are skipped.
        let half_hourly = spec("*/30 * * * *", "America/New_York");
        assert_eq!(
            ticks(&half_hourly, "2026-03-08T06:15:00Z", 3),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T07:30:00Z", // 03:30 EDT
            ]
        );
    }

    #[test]
    fn new_york_across_fall_back() {
        // 2026-11-01 02:00 EDT goes back to 01:00 EST: 01:30 happens twice.
        let fixed = spec("30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&fixed, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z", // 01:30 EDT, first pass only
                "2026-11-02T06:30:00Z", // 01:30 EST
                "2026-11-03T06:30:00Z",
            ]
        );
        let half_hourly = spec("*/30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&half_hourly, "2026-11-01T04:00:00Z", 4),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:30:00Z", // 01:30 EST
            ]
        );
    }

    #[test]
    fn backward_search_agrees_with_forward_across_dst() {
        for (cron, tz, from) in [
            ("0 * * * *", "Europe/Berlin", "2026-10-24T20:00:00Z"),
            ("*/30 * * * *", "America/New_York", "2026-03-08T04:00:00Z"),
            ("*/30 * * * *", "America/New_York", "2026-11-01T03:00:00Z"),
            ("30 2 * * *", "Europe/Berlin", "2026-03-26T00:00:00Z"),
            ("30 1 * * *", "America/New_York", "2026-10-29T00:00:00Z"),
        ] {
            let s = spec(cron, tz);
            let mut forward = vec![s.next_from(utc(from)).unwrap()];
            for _ in 0..12 {
                forward.push(s.next_after(*forward.last().unwrap()).unwrap());
            }
            let mut backward = vec![*forward.last().unwrap()];
            while backward.len() < forward.len() {
                backward.push(s.prev_before(*backward.last().unwrap()).unwrap());
            }
            backward.reverse();
            assert_eq!(forward, backward, "{cron} in {tz}");
        }
    }

    #[test]
    fn an_impossible_date_has_no_tick() {
        let s = spec("0 0 31 2 *", "UTC");
        assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), None);
    }
}
