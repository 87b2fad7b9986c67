use std::fs;

/// One process's resident memory, in KiB.
#[derive(Debug, Clone)]
pub struct Usage {
    pub name: String,
    pub pid: u32,
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_kib: u64,
}

/// Every running process whose name is one of `names`.
pub fn sample(names: &[String]) -> Vec<Usage> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Usage> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            // comm is cut at 15 bytes: "conveyor-worker" fits, longer names match by prefix.
            let name = names
                .iter()
                .find(|n| n.as_str() == comm || (comm.len() == 15 && n.starts_with(comm)))?;
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some(Usage {
                name: name.clone(),
                pid,
                rss_kib: field_kib(&status, "VmRSS:")?,
                peak_kib: field_kib(&status, "VmHWM:")?,
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name).then(a.pid.cmp(&b.pid)));
    found
}

fn field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of the processes called `name`, summed (several workers count as one).
pub fn rss_of(name: &str) -> u64 {
    sample(&[name.to_owned()]).iter().map(|u| u.rss_kib).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = fs::read_to_string("/proc/self/comm").unwrap();
        let found = sample(&[me.trim().to_owned()]);
        let mine = found
            .iter()
            .find(|u| u.pid == std::process::id())
            .expect("this process is listed");
        assert!(mine.rss_kib > 0 && mine.peak_kib >= mine.rss_kib);
    }
}
