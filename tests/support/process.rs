//! Child processes and temp dirs that never outlive the test binary.
//!
//! Every process a test starts is registered with one *reaper* per test binary: a tiny shell
//! loop in its own process group that waits for the test binary to exit (normally, by panic,
//! or killed) and then kills what is left and removes the temp dirs. Guards also clean up on
//! `Drop`, so a passing test leaves nothing behind even before the binary exits.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts.
///
/// Taken outside the kernel's ephemeral range: a port `bind(0)` hands out is also what the
/// next outgoing connection (a client, a probe, the API server's) may take as its local port
/// before the test's server binds it, and a restarted server needs its port back. Each call
/// in one process gets a different port (a counter from a per-process offset), checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = server_port_range();
    let span = u32::from(high - low);
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((offset + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// 12 000 ports ending 10 000 below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`) or below 20 000, so that no outgoing connection is given
/// one of them, nor the cluster bus port (`port + 10000`) of a server in cluster mode.
fn server_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.min(30000).saturating_sub(10000).max(2048);
    (high.saturating_sub(12000).max(1024), high)
}

/// A fresh directory under the system temp dir, removed by the reaper at exit.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(&format!("redis-fleet-{prefix}-"))
        .tempdir()
        .expect("creating a temp dir")
        .keep();
    reaper().track_dir(&dir);
    dir
}

struct Reaper {
    manifest: Mutex<File>,
}

const REAPER_SCRIPT: &str = r#"
parent=$1; manifest=$2
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
while read -r kind value; do [ "$kind" = pid ] && kill -9 "$value" 2>/dev/null; done < "$manifest"
sleep 0.2
while read -r kind value; do [ "$kind" = dir ] && rm -rf "$value"; done < "$manifest"
rm -f "$manifest"
"#;

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let manifest_path = std::env::temp_dir().join(format!(
            "redis-fleet-reaper-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        let manifest = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&manifest_path)
            .expect("creating the reaper manifest");
        // Never waited for: the reaper must outlive this process to clean up after it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("reaper")
            .arg(std::process::id().to_string())
            .arg(&manifest_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C on the test run must not kill the reaper first.
            .process_group(0)
            .spawn()
            .expect("starting the reaper");
        Reaper {
            manifest: Mutex::new(manifest),
        }
    })
}

impl Reaper {
    fn record(&self, line: String) {
        let mut f = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }

    fn track_pid(&self, pid: u32) {
        self.record(format!("pid {pid}"));
    }

    fn track_dir(&self, dir: &Path) {
        self.record(format!("dir {}", dir.display()));
    }
}

/// A child process killed (SIGKILL) and reaped on drop, and by the reaper if the test binary
/// dies first. Its stdout and stderr go to `<log>`.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> ChildGuard {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        reaper().track_pid(child.id());
        ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if still running after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The last `lines` lines of the process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- last lines of {} ---\n{}",
            self.name,
            all[start..].join("\n")
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`-STOP`, `-CONT`, `-9`, …) to process `pid` with `kill`; false when it failed
/// (no such process).
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
