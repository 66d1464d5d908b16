//! Where a machine's CPU goes during a stretch of a benchmark: the CPU time of each process
//! (every thread, from `/proc/PID/stat`), grouped by role, beside the machine's own busy and
//! idle time (`/proc/stat`). Linux only; read a few times a second by a background thread.
//!
//! A process that exits inside the stretch takes its CPU time with it after its last sample:
//! the rest of the machine's busy time shows as "other".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One reading: when, the machine's busy ticks (all cores), and the ticks of each process
/// seen, by pid (with its role).
struct Reading {
    at: Instant,
    busy: u64,
    by_pid: BTreeMap<u32, (String, u64)>,
}

/// Reads the machine and its processes every `every` until dropped.
pub struct CpuMeter {
    readings: Arc<Mutex<Vec<Reading>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// CPU use between two instants, in cores (CPU seconds per wall second), by role.
pub struct CpuUse {
    pub wall: Duration,
    pub cores: usize,
    /// Busy cores of the whole machine.
    pub busy: f64,
    /// By role, largest first; what no process seen accounts for is "other".
    pub by_role: Vec<(String, f64)>,
}

impl CpuMeter {
    /// `named`: pids with their roles. Any other process is named by `classify` from its
    /// command line (argv), or grouped as "other" when it answers `None`.
    pub fn start(
        named: Vec<(u32, String)>,
        classify: fn(&[String]) -> Option<String>,
        every: Duration,
    ) -> CpuMeter {
        let readings = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (readings, stop) = (readings.clone(), stop.clone());
            std::thread::spawn(move || {
                let named: BTreeMap<u32, String> = named.into_iter().collect();
                let mut roles: BTreeMap<u32, String> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = read(&named, &mut roles, classify) {
                        readings.lock().unwrap().push(r);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        CpuMeter {
            readings,
            stop,
            thread: Some(thread),
        }
    }

    /// CPU use between the readings nearest `from` and `to`; `None` before two readings.
    pub fn between(&self, from: Instant, to: Instant) -> Option<CpuUse> {
        let readings = self.readings.lock().unwrap();
        let nearest = |t: Instant| {
            readings
                .iter()
                .min_by_key(|r| if r.at > t { r.at - t } else { t - r.at })
        };
        let (a, b) = (nearest(from)?, nearest(to)?);
        if b.at <= a.at {
            return None;
        }
        let wall = b.at - a.at;
        let tick = 1.0 / ticks_per_second();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The machine's ticks are summed over its cores.
        let busy = (b.busy - a.busy) as f64 * tick / wall.as_secs_f64();
        let mut by_role: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (role, ticks)) in &b.by_pid {
            // A process born inside the stretch counts from zero.
            let before = a.by_pid.get(pid).map_or(0, |(_, t)| *t);
            *by_role.entry(role.clone()).or_default() +=
                ticks.saturating_sub(before) as f64 * tick / wall.as_secs_f64();
        }
        let seen: f64 = by_role.values().sum();
        let other = by_role.entry("other".into()).or_default();
        *other += (busy - seen).max(0.0);
        let mut by_role: Vec<(String, f64)> = by_role.into_iter().collect();
        by_role.sort_by(|x, y| y.1.total_cmp(&x.1));
        Some(CpuUse {
            wall,
            cores,
            busy,
            by_role,
        })
    }
}

impl CpuUse {
    /// The cores `role` used (0 when none of its processes ran).
    pub fn cores_of(&self, role: &str) -> f64 {
        self.by_role
            .iter()
            .find(|(r, _)| r == role)
            .map_or(0.0, |(_, c)| *c)
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} of {} cores busy over {:.1} s:",
            self.busy,
            self.cores,
            self.wall.as_secs_f64()
        )?;
        for (role, cores) in &self.by_role {
            if *cores >= 0.005 {
                write!(f, " {role} {cores:.2},")?;
            }
        }
        write!(f, " idle {:.2}", (self.cores as f64 - self.busy).max(0.0))
    }
}

fn ticks_per_second() -> f64 {
    // USER_HZ: 100 on every Linux build this runs on; `getconf` says so when it can.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One reading of the machine and every process, or `None` when `/proc/stat` is unreadable.
fn read(
    named: &BTreeMap<u32, String>,
    roles: &mut BTreeMap<u32, String>,
    classify: fn(&[String]) -> Option<String>,
) -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    let mut by_pid = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(ticks) = process_ticks(pid) else {
            continue;
        };
        let role = match named.get(&pid).or_else(|| roles.get(&pid)) {
            Some(r) => r.clone(),
            None => {
                let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let role = classify(&argv).unwrap_or_else(|| "other".into());
                roles.insert(pid, role.clone());
                role
            }
        };
        by_pid.insert(pid, (role, ticks));
    }
    Some(Reading {
        at: Instant::now(),
        busy: total - idle,
        by_pid,
    })
}

/// utime + stime of a process (all its threads), in ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line: the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
