//! CPU time spent by each part of the stack during a run, from `/proc/<pid>/stat`: where the
//! cores went (api, worker, Postgres, RabbitMQ), which is what to optimise next.

use std::{collections::BTreeMap, fs};

/// The processes whose CPU time is reported: Conveyor's own and the servers under them.
pub const PARTS: [&str; 4] = ["conveyor-api", "conveyor-worker", "postgres", "beam.smp"];

/// Clock ticks of user + system time per process name, summed over processes of that name.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, u64>);

pub fn snapshot() -> Snapshot {
    let mut ticks = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Snapshot(ticks);
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let Some(part) = PARTS
            .iter()
            .find(|p| comm == **p || (comm.len() == 15 && p.starts_with(comm)))
        else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After comm: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
        let used = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        *ticks.entry((*part).to_owned()).or_insert(0) += used;
    }
    Snapshot(ticks)
}

impl Snapshot {
    /// Seconds of CPU per part between `earlier` and `self`. Processes that exited in between
    /// (short-lived Postgres backends) are missed, so figures are a lower bound.
    pub fn since(&self, earlier: &Snapshot) -> Vec<(String, f64)> {
        // Linux reports these in USER_HZ, 100 on every common configuration.
        const TICKS_PER_SECOND: f64 = 100.0;
        PARTS
            .iter()
            .map(|p| {
                let now = self.0.get(*p).copied().unwrap_or(0);
                let then = earlier.0.get(*p).copied().unwrap_or(0);
                (
                    (*p).to_owned(),
                    now.saturating_sub(then) as f64 / TICKS_PER_SECOND,
                )
            })
            .collect()
    }
}
