//! CPU time and memory of a process, from /proc (measured, not estimated).

use std::process::Command;

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14, stime 15 (1-based over the whole line).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// A field of /proc/`pid`/status in bytes (`VmRSS:`, `RssFile:`, …).
fn status_bytes(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// `(VmRSS, VmHWM)` of `pid` in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    (status_bytes(pid, "VmRSS:"), status_bytes(pid, "VmHWM:"))
}

/// The file-backed part of `pid`'s RSS in bytes (`RssFile`: the binary's code and read-only
/// data pages it touched, shared with every process of the same binary).
pub fn file_backed(pid: u32) -> u64 {
    status_bytes(pid, "RssFile:")
}

/// CPU use of `pid` over a window, in cores.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    cpu: f64,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            cpu: cpu_seconds(pid),
            at: std::time::Instant::now(),
        }
    }

    /// Cores used since the start.
    pub fn cores(&self) -> f64 {
        (cpu_seconds(self.pid) - self.cpu) / self.at.elapsed().as_secs_f64()
    }

    /// CPU seconds used since the start.
    pub fn seconds(&self) -> f64 {
        cpu_seconds(self.pid) - self.cpu
    }
}
