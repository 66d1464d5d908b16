//! Where a machine's CPU goes during a stretch of a benchmark: the CPU time of each process
//! (every thread, from `/proc/PID/stat`), grouped by role, beside the machine's own busy,
//! stolen and idle time (`/proc/stat`). Linux only; read a few times a second by a background
//! thread, and at once when asked ([`CpuMeter::read_now`]).
//!
//! A process that exits inside the stretch takes its CPU time with it after its last reading:
//! the rest of the machine's busy time shows as "other".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One reading: when, the machine's busy and stolen ticks (summed over its cores), and the
/// ticks of each process seen, by pid (with its role).
struct Reading {
    at: Instant,
    busy: u64,
    steal: u64,
    by_pid: BTreeMap<u32, (String, u64)>,
}

/// What the background thread and [`CpuMeter::read_now`] share.
struct Readings {
    /// Pids the bench named, with their roles.
    named: BTreeMap<u32, String>,
    /// Names any other process by its command line (argv), or `None`: "other".
    classify: fn(&[String]) -> Option<String>,
    /// Roles found so far for pids the bench did not name.
    roles: Mutex<BTreeMap<u32, String>>,
    readings: Mutex<Vec<Reading>>,
}

/// Reads the machine and its processes every `every` until dropped.
pub struct CpuMeter {
    shared: Arc<Readings>,
    /// USER_HZ: the ticks of a CPU second in `/proc`.
    ticks_per_second: f64,
    /// The machine's cores (`cpuN` lines of `/proc/stat`).
    cores: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// CPU use between two readings, in cores (CPU seconds per wall second), by role.
pub struct CpuUse {
    pub wall: Duration,
    /// The machine's cores (`cpuN` lines of `/proc/stat`).
    pub cores: usize,
    /// Busy cores of the whole machine (stolen time not included).
    pub busy: f64,
    /// Cores the hypervisor gave to others while this machine wanted them.
    pub steal: f64,
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
        let shared = Arc::new(Readings {
            named: named.into_iter().collect(),
            classify,
            roles: Mutex::new(BTreeMap::new()),
            readings: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    shared.read();
                    std::thread::sleep(every);
                }
            })
        };
        CpuMeter {
            shared,
            ticks_per_second: ticks_per_second(),
            cores: machine_cores(),
            stop,
            thread: Some(thread),
        }
    }

    /// Takes a reading now and answers its instant: the exact edge of a stretch.
    pub fn read_now(&self) -> Instant {
        self.shared.read()
    }

    /// CPU use between the readings nearest `from` and `to`; `None` before two readings.
    pub fn between(&self, from: Instant, to: Instant) -> Option<CpuUse> {
        let readings = self.shared.readings.lock().unwrap();
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
        let per_tick = 1.0 / self.ticks_per_second / wall.as_secs_f64();
        let busy = b.busy.saturating_sub(a.busy) as f64 * per_tick;
        let steal = b.steal.saturating_sub(a.steal) as f64 * per_tick;
        let mut by_role: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (role, ticks)) in &b.by_pid {
            // A process born inside the stretch counts from zero.
            let before = a.by_pid.get(pid).map_or(0, |(_, t)| *t);
            *by_role.entry(role.clone()).or_default() +=
                ticks.saturating_sub(before) as f64 * per_tick;
        }
        let seen: f64 = by_role.values().sum();
        *by_role.entry("other".into()).or_default() += (busy - seen).max(0.0);
        let mut by_role: Vec<(String, f64)> = by_role.into_iter().collect();
        by_role.sort_by(|x, y| y.1.total_cmp(&x.1));
        Some(CpuUse {
            wall,
            cores: self.cores,
            busy,
            steal,
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

    /// The CPU seconds `role` used.
    pub fn seconds_of(&self, role: &str) -> f64 {
        self.cores_of(role) * self.wall.as_secs_f64()
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
        if self.steal >= 0.005 {
            write!(f, " stolen {:.2},", self.steal)?;
        }
        write!(
            f,
            " idle {:.2}",
            (self.cores as f64 - self.busy - self.steal).max(0.0)
        )
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

/// The cores `/proc/stat` sums over (its `cpuN` lines), whatever this process may use.
fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

impl Readings {
    /// Takes one reading of the machine and every process (none when `/proc/stat` is
    /// unreadable) and answers when.
    fn read(&self) -> Instant {
        let at = Instant::now();
        if let Some(r) = self.reading(at) {
            self.readings.lock().unwrap().push(r);
        }
        at
    }

    fn reading(&self, at: Instant) -> Option<Reading> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let column = |i: usize| cpu.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is within user).
        let busy = column(0) + column(1) + column(2) + column(5) + column(6);
        let steal = column(7);
        let mut roles = self.roles.lock().unwrap();
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
            let role = match self.named.get(&pid).or_else(|| roles.get(&pid)) {
                Some(r) => r.clone(),
                None => {
                    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .unwrap_or_default()
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    let role = (self.classify)(&argv).unwrap_or_else(|| "other".into());
                    roles.insert(pid, role.clone());
                    role
                }
            };
            by_pid.insert(pid, (role, ticks));
        }
        Some(Reading {
            at,
            busy,
            steal,
            by_pid,
        })
    }
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
