use std::{fmt, time::Duration};

use crate::{
    latency::{EnqueueLatency, StartLatency},
    memory::Usage,
    raw_broker::RawBroker,
    raw_postgres::RawPostgres,
    soak::Soak,
    stats::median,
    throughput::Throughput,
};

/// Rows of `| what | figure |`, in the order they were measured, plus the comparison of the
/// batch run with the raw broker rate.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String)>,
    /// The latest raw round-trip rate: the reference for the next end-to-end run.
    raw_round_trip_rate: Option<f64>,
    /// Each batch run with the raw rates measured right before and right after it.
    rounds: Vec<Round>,
    soak: Option<Soak>,
}

/// One batch run between two raw broker runs, as rates per second.
#[derive(Debug, Clone, Copy)]
struct Round {
    raw_before: f64,
    batch: f64,
    raw_after: f64,
}

impl Round {
    /// The batch rate as a share of the mean of the raw rates on either side of it.
    fn share(&self) -> f64 {
        self.batch / ((self.raw_before + self.raw_after) / 2.0)
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report {
    /// The rows so far, as `(measurement, result)`.
    pub fn rows(&self) -> &[(String, String)] {
        &self.rows
    }

    fn row(&mut self, what: impl Into<String>, figure: impl Into<String>) {
        self.rows.push((what.into(), figure.into()));
    }

    pub fn memory_idle(&mut self, usage: &[Usage]) {
        if usage.is_empty() {
            self.row("memory", "no api or worker process found on this machine");
        }
        for u in usage {
            self.row(
                format!("{} (pid {}) RSS before the run", u.name, u.pid),
                mib(u.rss_kib),
            );
        }
    }

    pub fn memory_peak(&mut self, usage: &[Usage]) {
        for u in usage {
            self.row(
                format!("{} (pid {}) RSS after / peak", u.name, u.pid),
                format!("{} / {}", mib(u.rss_kib), mib(u.peak_kib)),
            );
        }
    }

    pub fn raw_broker(&mut self, r: &RawBroker) {
        let round_trip = rate(r.messages, r.round_trip);
        self.raw_round_trip_rate = Some(round_trip);
        self.row(
            format!(
                "raw RabbitMQ ({} queue, {} msgs): publish + confirm",
                r.queue_type, r.messages
            ),
            format!("{:.0} msg/s", rate(r.messages, r.publish)),
        );
        self.row(
            format!(
                "raw RabbitMQ: publish + consume + ack (concurrent, ack every {})",
                r.ack_every
            ),
            format!("{round_trip:.0} msg/s"),
        );
    }

    /// The raw broker measured again right after the `batch` run, and that run's share of the
    /// raw rate before it and after it.
    pub fn raw_broker_after(&mut self, r: &RawBroker, batch: &Throughput) {
        let after = rate(r.messages, r.round_trip);
        self.row(
            "raw RabbitMQ again, right after the batch run: publish + consume + ack",
            format!("{after:.0} msg/s"),
        );
        let batch = rate(batch.jobs, batch.end_to_end);
        if let Some(before) = self.raw_round_trip_rate {
            self.row(
                "batch end to end against the raw rate before / after it",
                format!(
                    "{:.0}% / {:.0}%",
                    100.0 * batch / before,
                    100.0 * batch / after
                ),
            );
            self.rounds.push(Round {
                raw_before: before,
                batch,
                raw_after: after,
            });
        }
        self.raw_round_trip_rate = Some(after);
    }

    /// With more than one round, each round's share of the raw rate around it and the median
    /// share, batch rate and raw rate over them.
    pub fn rounds(&mut self) {
        if self.rounds.len() < 2 {
            return;
        }
        let shares: Vec<f64> = self.rounds.iter().map(Round::share).collect();
        let batches: Vec<f64> = self.rounds.iter().map(|r| r.batch).collect();
        // Every raw run once: the one before the first round, then the one after each.
        let raws: Vec<f64> = std::iter::once(self.rounds[0].raw_before)
            .chain(self.rounds.iter().map(|r| r.raw_after))
            .collect();
        let each: Vec<String> = shares
            .iter()
            .map(|s| format!("{:.0}%", 100.0 * s))
            .collect();
        let n = self.rounds.len();
        self.row(
            format!(
                "batch end to end against the mean of the raw rates before and after it, {n} rounds"
            ),
            each.join(", "),
        );
        let (share, batch, raw) = (
            median(&shares).unwrap_or_default(),
            median(&batches).unwrap_or_default(),
            median(&raws).unwrap_or_default(),
        );
        self.row(
            format!("median of {n} rounds: share of raw / batch end to end / raw RabbitMQ"),
            format!("{:.0}% / {batch:.0} jobs/s / {raw:.0} msg/s", 100.0 * share),
        );
    }

    pub fn raw_postgres(&mut self, r: &RawPostgres) {
        self.row(
            format!(
                "raw Postgres: INSERT into a copy of jobs, {} rows per statement",
                r.batch
            ),
            format!("{:.0} rows/s", rate(r.rows, r.elapsed)),
        );
    }

    pub fn throughput(&mut self, t: &Throughput) {
        self.row(
            format!("{}: enqueue", t.label),
            format!("{:.0} jobs/s", rate(t.jobs, t.enqueue)),
        );
        let e2e = rate(t.jobs, t.end_to_end);
        let versus = self
            .raw_round_trip_rate
            .map(|raw| format!(" ({:.0}% of raw RabbitMQ)", 100.0 * e2e / raw))
            .unwrap_or_default();
        self.row(
            format!("{}: end to end", t.label),
            format!("{e2e:.0} jobs/s{versus}"),
        );
        let per_10k: Vec<String> = t
            .cpu
            .iter()
            .map(|(part, secs)| format!("{part} {:.2}", secs * 10_000.0 / t.jobs as f64))
            .collect();
        self.row(
            format!("{}: CPU seconds per 10k jobs", t.label),
            per_10k.join(", "),
        );
        if t.succeeded != t.jobs {
            self.row(
                format!("{}: NOT succeeded", t.label),
                format!("{}", t.jobs - t.succeeded),
            );
        }
    }

    pub fn enqueue_latency(&mut self, l: &EnqueueLatency) {
        self.row(
            format!(
                "single enqueue at {} req/s, {} requests: p50 / p95 / p99 / max",
                l.rate, l.requests
            ),
            format!(
                "{} / {} / {} / {}",
                ms(l.latency.percentile(50.0)),
                ms(l.latency.percentile(95.0)),
                ms(l.latency.percentile(99.0)),
                ms(l.latency.max())
            ),
        );
        self.row(
            "single enqueue: achieved rate, errors",
            format!("{:.0} req/s, {} errors", l.achieved_rate, l.errors),
        );
    }

    pub fn start_latency(&mut self, l: &StartLatency) {
        self.row(
            format!(
                "start latency (request sent → running), idle, {} jobs: p50 / p99 / max",
                l.samples
            ),
            format!(
                "{} / {} / {}",
                ms(l.latency.percentile(50.0)),
                ms(l.latency.percentile(99.0)),
                ms(l.latency.max())
            ),
        );
    }

    pub fn soak(&mut self, s: &Soak) {
        self.row(
            format!("soak: {} s at {} jobs/s", s.secs, s.rate),
            format!("{} jobs enqueued, {} failed requests", s.jobs, s.errors),
        );
        for (name, slope) in s.trend() {
            self.row(
                format!("soak: {name} RSS trend over the second half"),
                format!("{slope:+.1} KiB/min"),
            );
        }
        self.soak = Some(s.clone());
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        writeln!(
            f,
            "Conveyor benchmark, {} UTC, {cores} cores\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M")
        )?;
        writeln!(f, "| measurement | result |")?;
        writeln!(f, "|---|---|")?;
        for (what, figure) in &self.rows {
            writeln!(f, "| {what} | {figure} |")?;
        }
        if let Some(soak) = &self.soak {
            writeln!(f, "\nSoak samples (RSS):\n")?;
            let names: Vec<&str> = soak
                .samples
                .first()
                .map(|(_, k)| k.iter().map(|(n, _)| n.as_str()).collect())
                .unwrap_or_default();
            writeln!(f, "| t (s) | {} |", names.join(" | "))?;
            writeln!(f, "|---|{}", "---|".repeat(names.len()))?;
            for (t, kib) in &soak.samples {
                let cells: Vec<String> = kib.iter().map(|(_, k)| mib(*k)).collect();
                writeln!(f, "| {t:.0} | {} |", cells.join(" | "))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(per_sec: f64) -> RawBroker {
        RawBroker {
            messages: 20_000,
            queue_type: "quorum".into(),
            ack_every: 100,
            publish: Duration::from_secs_f64(20_000.0 / per_sec),
            round_trip: Duration::from_secs_f64(20_000.0 / per_sec),
        }
    }

    fn batch(per_sec: f64) -> Throughput {
        Throughput {
            label: "batch".into(),
            jobs: 20_000,
            succeeded: 20_000,
            enqueue: Duration::from_secs(1),
            end_to_end: Duration::from_secs_f64(20_000.0 / per_sec),
            cpu: Vec::new(),
        }
    }

    fn figure<'a>(report: &'a Report, starts: &str) -> Option<&'a str> {
        report
            .rows()
            .iter()
            .find(|(what, _)| what.starts_with(starts))
            .map(|(_, figure)| figure.as_str())
    }

    #[test]
    fn each_round_is_read_against_the_raw_runs_on_either_side() {
        let mut report = Report::default();
        report.raw_broker(&raw(20_000.0));
        // 10,000 between 20,000 and 30,000: 40%; then 12,000 between 30,000 and 18,000: 50%;
        // then 11,000 between 18,000 and 26,000: 50%.
        for (b, after) in [
            (10_000.0, 30_000.0),
            (12_000.0, 18_000.0),
            (11_000.0, 26_000.0),
        ] {
            report.raw_broker_after(&raw(after), &batch(b));
        }
        report.rounds();
        assert_eq!(
            figure(&report, "batch end to end against the mean"),
            Some("40%, 50%, 50%")
        );
        // Raw runs 20k, 30k, 18k, 26k: median 23k.
        assert_eq!(
            figure(&report, "median of 3 rounds"),
            Some("50% / 11000 jobs/s / 23000 msg/s")
        );
        // The second round's before is the first round's after.
        let befores: Vec<&str> = report
            .rows()
            .iter()
            .filter(|(what, _)| what.starts_with("batch end to end against the raw rate"))
            .map(|(_, figure)| figure.as_str())
            .collect();
        assert_eq!(befores, ["50% / 33%", "40% / 67%", "61% / 42%"]);
    }

    #[test]
    fn one_round_adds_no_summary() {
        let mut report = Report::default();
        report.raw_broker(&raw(20_000.0));
        report.raw_broker_after(&raw(20_000.0), &batch(10_000.0));
        report.rounds();
        assert_eq!(figure(&report, "median of"), None);
    }
}
