//! The real operator binary (`redis-fleet-operator`, as the chart runs it), started against
//! the test control plane and scoped to the test's namespace, so tests can run side by side.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::ControlPlane;
use super::process::{ChildGuard, free_port, temp_dir, wait_until};

/// A running operator process.
#[derive(Debug)]
pub struct Operator {
    /// Port of /metrics, /healthz, /readyz.
    pub metrics_port: u16,
    /// Its log file (stderr and stdout).
    pub log: PathBuf,
    process: ChildGuard,
}

impl Operator {
    /// Starts the operator for `namespace` and waits until `/readyz` answers.
    pub fn start(cp: &ControlPlane, namespace: &str) -> Operator {
        Self::start_with(cp, namespace, &[])
    }

    /// Starts the operator watching every namespace (no `--namespace`), as the Helm chart's
    /// default cluster-wide mode runs it.
    pub fn cluster_wide(cp: &ControlPlane) -> Operator {
        Self::start_with(cp, "", &[])
    }

    /// Like [`Operator::start`], with extra command-line arguments (`namespace` empty: all).
    pub fn start_with(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Operator {
        Self::launch(
            &super::operator_binary(),
            &cp.kubeconfig,
            namespace,
            extra,
            &std::env::var("TEST_OPERATOR_LOG").unwrap_or_else(|_| "info,redis_fleet=debug".into()),
        )
    }

    /// Starts `binary` as the operator with `kubeconfig` and `RUST_LOG=log_filter` (benchmarks:
    /// another build, the API server reached through a proxy, quieter logs). `binary` is
    /// `redis-fleet-operator`, or a `redis-fleet` binary, run as `redis-fleet operator`.
    pub fn launch(
        binary: &std::path::Path,
        kubeconfig: &std::path::Path,
        namespace: &str,
        extra: &[&str],
        log_filter: &str,
    ) -> Operator {
        let dir = temp_dir("operator");
        let log = dir.join("operator.log");
        let metrics_port = free_port();
        let mut cmd = Command::new(binary);
        if binary.file_name() != Some(std::ffi::OsStr::new("redis-fleet-operator")) {
            cmd.arg("operator");
        }
        if !namespace.is_empty() {
            cmd.args(["--namespace", namespace]);
        }
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", log_filter);
        let mut process = ChildGuard::spawn("redis-fleet operator", cmd, &log);
        let ready = wait_until(Duration::from_secs(30), || {
            process.is_running()
                && http_get(metrics_port, "/readyz").is_some_and(|b| b.trim() == "ready")
        });
        assert!(
            ready,
            "operator did not become ready\n{}",
            process.log_tail(40)
        );
        Operator {
            metrics_port,
            log,
            process,
        }
    }

    /// The body of `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL, as a node failure would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit.
    pub fn terminate(&mut self, grace: Duration) {
        self.process.terminate(grace);
    }

    /// The last lines of the log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}
