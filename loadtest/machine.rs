//! The facts of the machine a run measured on, recorded with the results.

use crate::results::{Busy, Machine};

pub(crate) fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        memory_gib: (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
    }
}

/// The machine's CPU counters and this process's CPU at one moment: what a phase's busy
/// fraction is measured from.
pub(crate) struct CpuMark {
    /// Jiffies of all cores: busy (everything but idle and iowait), and in total.
    busy: u64,
    total: u64,
    /// This process's CPU seconds.
    own: f64,
}

impl CpuMark {
    pub(crate) fn now() -> CpuMark {
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let fields: Vec<u64> = s
                    .lines()
                    .next()?
                    .strip_prefix("cpu ")?
                    .split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect();
                let total: u64 = fields.iter().sum();
                // user nice system idle iowait irq softirq steal ...
                let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
                Some((total - idle, total))
            })
            .unwrap_or((0, 0));
        let own = crate::cluster::proc_stats(std::process::id()).map_or(0.0, |s| s.1);
        CpuMark { busy, total, own }
    }

    /// The fraction of the machine busy since `self`, and the part of it this process used.
    pub(crate) fn busy(&self) -> Busy {
        let now = CpuMark::now();
        let total = now.total.saturating_sub(self.total) as f64;
        // Jiffies are 1/100 s on every core: the machine's capacity in CPU seconds.
        let capacity = total / 100.0;
        let fraction = |x: f64| {
            if capacity > 0.0 {
                x / capacity
            } else {
                f64::NAN
            }
        };
        Busy {
            machine: fraction(now.busy.saturating_sub(self.busy) as f64 / 100.0),
            loadtest: fraction(now.own - self.own),
        }
    }
}
