//! The sidecar swarm: N heartbeat writers, each one sidecar id, against every instance of the
//! fleet, with the real heartbeat command (`redis::protocol::heartbeat::write_command`) and
//! nothing else — no proxying, no table, no sockets of their own. Writers share a few
//! pipelined connections per instance: the Redis side (one script call per heartbeat) is what
//! 10 000 real sidecars would cost; the sidecar side is not measured here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis_fleet::redis::protocol::heartbeat::{Latency, write_command};
use tokio::task::JoinHandle;

/// Heartbeats pipelined in one round trip.
const BATCH: usize = 200;

/// Running writers.
#[derive(Debug)]
pub struct Swarm {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// Heartbeats written so far.
    pub written: Arc<AtomicU64>,
    /// Error replies so far.
    pub errors: Arc<AtomicU64>,
    /// Full rounds (every id on every instance) finished so far, per task.
    rounds: Arc<AtomicU64>,
}

impl Swarm {
    /// Starts `sidecars` writers of `policy` at table `version` against `instances` (redis
    /// URLs): every id writes one heartbeat on every instance each `period`.
    pub async fn start(
        instances: &[String],
        policy: &str,
        sidecars: usize,
        version: u64,
        period: Duration,
    ) -> Swarm {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let rounds = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for url in instances {
            let conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let (stop, written, errors, rounds) = (
                stop.clone(),
                written.clone(),
                errors.clone(),
                rounds.clone(),
            );
            let policy = policy.to_owned();
            tasks.push(tokio::spawn(async move {
                write_rounds(
                    conn, &policy, sidecars, version, period, &stop, &written, &errors, &rounds,
                )
                .await;
            }));
        }
        Swarm {
            stop,
            tasks,
            written,
            errors,
            rounds,
        }
    }

    /// Waits until every instance has had one full round.
    pub async fn first_round(&self) {
        while self.rounds.load(Ordering::Relaxed) < self.tasks.len() as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the writers.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_rounds(
    mut conn: MultiplexedConnection,
    policy: &str,
    sidecars: usize,
    version: u64,
    period: Duration,
    stop: &AtomicBool,
    written: &AtomicU64,
    errors: &AtomicU64,
    rounds: &AtomicU64,
) {
    let ids: Vec<String> = (0..sidecars).map(|i| format!("swarm-{i:05}")).collect();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                let args = write_command(policy, id, version, Latency::Nothing);
                let cmd = pipe.cmd(std::str::from_utf8(&args[0]).unwrap_or("EVAL"));
                for a in &args[1..] {
                    cmd.arg(a.as_ref());
                }
            }
            match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
                Ok(replies) => {
                    written.fetch_add(replies.len() as u64, Ordering::Relaxed);
                    let bad = replies
                        .iter()
                        .filter(|r| matches!(r, redis::Value::ServerError(_)))
                        .count();
                    errors.fetch_add(bad as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    errors.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        rounds.fetch_add(1, Ordering::Relaxed);
        if let Some(rest) = period.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// `(calls, microseconds)` of a command in `INFO commandstats`.
pub async fn command_stats(conn: &mut MultiplexedConnection, command: &str) -> (u64, u64) {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = text.lines().find_map(|l| l.strip_prefix(&prefix)) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}
