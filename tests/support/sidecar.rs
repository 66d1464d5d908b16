//! The real `redis-fleet sidecar` binary, fed a routing table file (as the kubelet would mount
//! it) and a secrets directory (as mounted Secrets would look).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use redis_fleet::routing::table::{
    Category, InstanceEndpoint, RoutingTable, SCHEMA_VERSION, SecretKeyName, SlotOwner, TtlRules,
};

use super::process::{ChildGuard, free_port, temp_dir, wait_until};
use super::redis::RedisServer;

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// Where clients connect.
    pub port: u16,
    /// Where /metrics is served.
    pub metrics_port: u16,
    /// The routing table file it polls.
    pub routing_file: PathBuf,
    /// `<dir>/<secret>/<key>` credentials.
    pub secrets_dir: PathBuf,
    process: ChildGuard,
    /// How it was started, to start it again ([`Sidecar::restart`]).
    launch: Launch,
}

/// A sidecar's command line and environment, kept to start it again on the same ports.
#[derive(Debug, Clone)]
struct Launch {
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    dir: PathBuf,
    timeout: Duration,
}

impl Launch {
    fn spawn(&self, metrics_port: u16) -> ChildGuard {
        let mut cmd = Command::new(super::redis_fleet_binary());
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        spawn_ready(cmd, &self.dir, metrics_port, self.timeout)
    }
}

impl Sidecar {
    /// Starts a sidecar on `table` and waits until it is ready (table loaded).
    pub fn start(table: &RoutingTable, secrets: &[(&str, &str, &str)]) -> Sidecar {
        Self::start_with(table, secrets, &[])
    }

    /// Like [`Sidecar::start`], with extra arguments.
    pub fn start_with(
        table: &RoutingTable,
        secrets: &[(&str, &str, &str)],
        extra: &[&str],
    ) -> Sidecar {
        Self::start_as("test-sidecar", table, secrets, extra)
    }

    /// Like [`Sidecar::start_with`], with heartbeat id `id` (the binary adds a suffix).
    pub fn start_as(
        id: &str,
        table: &RoutingTable,
        secrets: &[(&str, &str, &str)],
        extra: &[&str],
    ) -> Sidecar {
        let files: Vec<(String, Vec<u8>)> = secrets
            .iter()
            .map(|(name, key, value)| (format!("{name}/{key}"), value.as_bytes().to_vec()))
            .collect();
        Self::start_with_files(id, table, &files, extra)
    }

    /// Like [`Sidecar::start_as`], with the secrets directory holding `files` (paths relative
    /// to it, e.g. `<secret>.<key>` as a mounted credentials Secret lays them out).
    pub fn start_with_files(
        id: &str,
        table: &RoutingTable,
        files: &[(String, Vec<u8>)],
        extra: &[&str],
    ) -> Sidecar {
        let dir = temp_dir("sidecar");
        let routing_file = dir.join("routing.json");
        std::fs::write(&routing_file, table.to_json()).expect("writing the routing table");
        let secrets_dir = dir.join("secrets");
        std::fs::create_dir_all(&secrets_dir).expect("secrets dir");
        for (path, value) in files {
            let path = secrets_dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("secrets dir");
            }
            std::fs::write(path, value).expect("writing a secret");
        }
        let port = free_port();
        let metrics_port = free_port();
        let mut args: Vec<OsString> = vec!["sidecar".into(), "--routing-file".into()];
        args.push(routing_file.clone().into());
        args.push("--secrets-dir".into());
        args.push(secrets_dir.clone().into());
        for a in [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--poll",
            "200ms",
            "--id",
            id,
        ]
        .iter()
        .chain(if extra.contains(&"--request-timeout") {
            &[][..]
        } else {
            &["--request-timeout", "1s"][..]
        })
        .chain(extra)
        {
            args.push(a.into());
        }
        let launch = Launch {
            args,
            env: vec![("RUST_LOG", "info,redis_fleet=debug".into())],
            dir,
            timeout: Duration::from_secs(20),
        };
        let process = launch.spawn(metrics_port);
        Sidecar {
            port,
            metrics_port,
            routing_file,
            secrets_dir,
            process,
            launch,
        }
    }

    /// Starts a sidecar that follows routing ConfigMap `namespace/name` through the API (and
    /// reads the Secrets there), as a pod without a mounted table would; waits until ready.
    pub fn follow(cp: &super::ControlPlane, namespace: &str, name: &str, id: &str) -> Sidecar {
        Self::follow_through(&cp.kubeconfig, namespace, name, id)
    }

    /// [`Sidecar::follow`] with the API server (and credentials) of `kubeconfig`.
    pub fn follow_through(kubeconfig: &Path, namespace: &str, name: &str, id: &str) -> Sidecar {
        let dir = temp_dir("sidecar");
        let port = free_port();
        let metrics_port = free_port();
        let args = [
            "sidecar",
            "--configmap",
            &format!("{namespace}/{name}"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--request-timeout",
            "2s",
            "--id",
            id,
        ];
        let launch = Launch {
            args: args.iter().map(OsString::from).collect(),
            env: vec![
                ("KUBECONFIG", kubeconfig.into()),
                ("RUST_LOG", "info,redis_fleet=debug".into()),
            ],
            dir: dir.clone(),
            timeout: Duration::from_secs(30),
        };
        let process = launch.spawn(metrics_port);
        Sidecar {
            port,
            metrics_port,
            routing_file: dir.join("unused"),
            secrets_dir: dir.join("unused"),
            process,
            launch,
        }
    }

    /// Replaces the table the way the kubelet updates a mounted ConfigMap (atomic rename).
    pub fn update_table(&self, table: &RoutingTable) {
        replace_table(&self.routing_file, table);
    }

    /// A `redis` crate client for the sidecar.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("client")
    }

    /// `redis-cli` pointed at the sidecar.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        cmd
    }

    /// The body of /metrics.
    pub fn metrics(&self) -> String {
        super::operator::http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// The value of one series of /metrics (`name` with its labels, if any); panics when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let m = self.metrics();
        super::series_value(&m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
    }

    /// Waits (up to 10 s) until the sidecar routes by table `version`.
    pub async fn wait_for_version(&self, version: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // The series' value, not a text match: "version 1" is a prefix of "version 12".
        while super::series_value(&self.metrics(), "redisfleet_sidecar_routing_version")
            != Some(version as f64)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the sidecar never loaded v{version}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL, as a container that crashes.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again (after [`Sidecar::kill`], or killing it first) with the same command
    /// line — same ports, table source and id — and waits until it is ready.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = self.launch.spawn(self.metrics_port);
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.launch.dir.join("sidecar.log")
    }

    /// The end of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Replaces the table file `routing_file` the way the kubelet updates a mounted ConfigMap
/// (atomic rename).
pub fn replace_table(routing_file: &Path, table: &RoutingTable) {
    let tmp = routing_file.with_extension("tmp");
    std::fs::write(&tmp, table.to_json()).expect("writing the new table");
    std::fs::rename(&tmp, routing_file).expect("replacing the table");
}

/// Starts the sidecar `cmd` (logging into `dir`) and waits until its `/readyz` says ready.
fn spawn_ready(cmd: Command, dir: &Path, metrics_port: u16, timeout: Duration) -> ChildGuard {
    let mut process = ChildGuard::spawn("redis-fleet sidecar", cmd, &dir.join("sidecar.log"));
    let ready = wait_until(timeout, || {
        process.is_running()
            && super::operator::http_get(metrics_port, "/readyz")
                .is_some_and(|b| b.trim() == "ready")
    });
    assert!(ready, "sidecar not ready\n{}", process.log_tail(30));
    process
}

/// An endpoint for a local server (password in Secret `<name>-redis`, key `password`, when the
/// server has one).
pub fn endpoint(server: &RedisServer, secret: Option<&str>) -> InstanceEndpoint {
    InstanceEndpoint {
        host: "127.0.0.1".into(),
        port: server.port,
        tls: None,
        username_secret: None,
        password_secret: secret.map(|s| SecretKeyName {
            name: s.to_owned(),
            key: "password".to_owned(),
        }),
    }
}

/// A category of a hand-made table.
pub fn category(
    name: &str,
    prefixes: &[&str],
    ttl: TtlRules,
    slots: &[(u16, u16, &str)],
) -> Category {
    Category {
        name: name.to_owned(),
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        ttl,
        slots: slots
            .iter()
            .map(|(s, e, i)| SlotOwner::from((*s, *e, (*i).to_owned())))
            .collect(),
        placement_basis: None,
        replication: None,
    }
}

/// A hand-made table.
pub fn table(
    version: u64,
    instances: Vec<(&str, InstanceEndpoint)>,
    categories: Vec<Category>,
) -> RoutingTable {
    let t = RoutingTable {
        schema_version: SCHEMA_VERSION,
        version,
        policy: "test/test".into(),
        instances: instances
            .into_iter()
            .map(|(n, e)| (n.to_owned(), e))
            .collect(),
        categories,
        migrating: Vec::new(),
        failover: Vec::new(),
        placement_bases: Vec::new(),
        strategy: None,
    };
    t.validate().expect("a valid test table");
    t
}

/// One heartbeat of sidecar `id` of `policy` at table `version`, as a release before sidecars
/// reported their protocol features wrote it (its script: the live sorted set and the version,
/// no features).
pub async fn beat_as_older_release(
    conn: &mut redis::aio::MultiplexedConnection,
    policy: &str,
    id: &str,
    version: u64,
) {
    use redis_fleet::redis::protocol::names;
    let () = redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
",
    )
    .key(names::sidecars(policy))
    .key(names::sidecar_versions(policy))
    .arg(id)
    .arg(version)
    .invoke_async(conn)
    .await
    .unwrap();
}
