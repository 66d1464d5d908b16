//! Benchmark: how fast does a rebalance Job move data, and what does the move cost the
//! application meanwhile? (`make bench`)
//!
//! The user's migration, at scale: an old single Redis holding `KEYS` keys (64-byte values,
//! half of them with a TTL) is applied as a draining RedisInstance, and the real operator,
//! the real `redis-fleet rebalance` Job (run by the test node, release build) and a real
//! sidecar empty it into a two-instance fleet on loopback. The copy's own rate limit is lifted
//! (`keysPerSecond: 10000000`) so that the engine, not the throttle, is measured.
//!
//! Foreground traffic — GETs of the keys being moved and SETs of new keys through the
//! sidecar, at a steady rate — runs before the move (baseline) and during it; its latency
//! percentiles are printed side by side. Nothing here is a pass/fail assertion on time: the
//! machine is shared and noisy. The bench does check that every key arrived.
//!
//! `cargo bench --bench rebalance_speed` moves 1 000 000 keys; under `cargo test` (no
//! `--bench` argument) the same path runs with 20 000 keys as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::Api;
use redis::AsyncCommands;
use redis_fleet::api::CachePolicy;
use redis_fleet::api::cache_policy::rebalance_phase;
use support::node::Node;
use support::operator::Operator;
use support::shop::{example_policy, kubectl_apply};
use support::sidecar::Sidecar;
use support::{ControlPlane, RedisOptions, RedisServer};

const VALUE_BYTES: usize = 64;
const PREFIXES: [&str; 5] = ["auth:", "order:", "user:", "menu:", "misc:"];
/// Foreground operations per second through the sidecar (a steady, modest load).
const FOREGROUND_RATE: u64 = 2_000;
const BASELINE: Duration = Duration::from_secs(5);

fn key(n: usize) -> String {
    format!("{}{n:08}", PREFIXES[n % PREFIXES.len()])
}

/// Writes `count` keys straight into `server`; returns the bytes of keys and values written.
async fn fill(server: &RedisServer, count: usize) -> u64 {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value = [b'v'; VALUE_BYTES];
    let mut bytes = 0u64;
    for start in (0..count).step_by(2_000) {
        let mut pipe = redis::pipe();
        for n in start..(start + 2_000).min(count) {
            let k = key(n);
            bytes += (k.len() + VALUE_BYTES) as u64;
            let cmd = pipe.cmd("SET").arg(&k).arg(&value[..]);
            if n.is_multiple_of(2) {
                cmd.arg("PX")
                    .arg(3_600_000 + (n as u64 * 7_919) % 3_600_000);
            }
            cmd.ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    bytes
}

/// Application keys (not the operator's `redisfleet:` bookkeeping) on `server`.
async fn app_keys(server: &RedisServer) -> u64 {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let total: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    let mut internal = 0u64;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("redisfleet:*")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        internal += keys.len() as u64;
        cursor = next;
        if cursor == 0 {
            return total - internal;
        }
    }
}

/// Steady foreground traffic through the sidecar until `stop`; returns per-request latencies
/// in microseconds and the number of errors.
async fn foreground(port: u16, keys: usize, stop: Arc<AtomicBool>) -> (Vec<u64>, u64) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let period = Duration::from_micros(1_000_000 / FOREGROUND_RATE);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        // A spread of the keys being moved (multiplicative hashing over the key space).
        let target = n.wrapping_mul(2_654_435_761) % keys;
        let started = Instant::now();
        let ok = if n.is_multiple_of(4) {
            c.set::<_, _, ()>(format!("fg:{n}"), "x").await.is_ok()
        } else {
            c.get::<_, Option<Vec<u8>>>(key(target)).await.is_ok()
        };
        latencies.push(started.elapsed().as_micros() as u64);
        if !ok {
            errors += 1;
        }
    }
    (latencies, errors)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let keys: usize = if full { 1_000_000 } else { 20_000 };
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "bench-rebalance").await;
    let primary = RedisServer::start(RedisOptions::with_maxmemory(1 << 30));
    let secondary = RedisServer::start(RedisOptions::with_maxmemory(1 << 30));
    let legacy = RedisServer::start(RedisOptions::with_maxmemory(2 << 30));
    let _operator = Operator::start(cp, &ns);
    let instance = |name: &str, tier: &str, server: &RedisServer, drain: bool| {
        format!(
            "apiVersion: redisfleet.io/v1alpha1\nkind: RedisInstance\nmetadata:\n  name: {name}\n  labels: {{app.kubernetes.io/part-of: shop, redisfleet.io/tier: {tier}}}\n\
             spec:\n  drain: {drain}\n  external: {{host: 127.0.0.1, port: {}}}\n  capacity: 1Gi\n  health: {{interval: 1s, timeout: 1s, failureThreshold: 3, recoveryThreshold: 2}}\n---\n",
            server.port
        )
    };
    let fleet = instance("primary", "hot", &primary, false)
        + &instance("secondary", "warm", &secondary, false);
    let out = kubectl_apply(cp, &ns, &fleet);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = example_policy()
        .replace("      cooldown: 5m\n", "      cooldown: 1s\n")
        .replace(
            "      keysPerSecond: 50000\n",
            "      keysPerSecond: 10000000\n",
        );
    let out = kubectl_apply(cp, &ns, &policy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while policies
        .get("shop")
        .await
        .ok()
        .and_then(|p| p.status)
        .and_then(|s| s.routing)
        .is_none()
    {
        assert!(Instant::now() < deadline, "no routing table published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let filling = Instant::now();
    let bytes = fill(&legacy, keys).await;
    println!(
        "filled the legacy Redis: {keys} keys, {:.1} MB of keys + values, in {:.1?}",
        bytes as f64 / 1e6,
        filling.elapsed()
    );
    let node = Node::start(cp, &ns);
    let sidecar = Sidecar::follow(cp, &ns, "shop-redis-routing", "bench-app");

    // Baseline: the same traffic with nothing moving.
    let stop = Arc::new(AtomicBool::new(false));
    let base = tokio::spawn(foreground(sidecar.port, keys, stop.clone()));
    tokio::time::sleep(BASELINE).await;
    stop.store(true, Ordering::Relaxed);
    let (mut baseline, baseline_errors) = base.await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(foreground(sidecar.port, keys, stop.clone()));
    let applied = Instant::now();
    let out = kubectl_apply(cp, &ns, &instance("legacy", "legacy", &legacy, true));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Follow the Job through status.rebalance.
    let mut copying: Option<(Instant, i64)> = None;
    let mut copied: Option<(Instant, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(if full { 900 } else { 120 });
    let done = loop {
        let p = policies.get("shop").await.unwrap();
        if let Some(r) = p.status.and_then(|s| s.rebalance) {
            let moved = r.keys_moved.unwrap_or(0);
            match r.step.as_deref() {
                Some("Copying") if copying.is_none() => copying = Some((Instant::now(), moved)),
                Some("Copied" | "Done") if copied.is_none() && copying.is_some() => {
                    copied = Some((Instant::now(), moved))
                }
                _ => {}
            }
            assert_ne!(
                r.phase,
                rebalance_phase::FAILED,
                "{r:#?}\n{}",
                node.all_logs()
            );
            if r.phase == rebalance_phase::SUCCEEDED && r.moves.iter().any(|m| m.from == "legacy") {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the drain did not finish\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = applied.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut moving, moving_errors) = during.await.unwrap();

    // Every key arrived: nothing left behind, nothing lost.
    let left = app_keys(&legacy).await;
    let in_fleet = app_keys(&primary).await + app_keys(&secondary).await;
    assert_eq!(left, 0, "keys left on the legacy Redis");
    assert!(
        in_fleet >= keys as u64,
        "{in_fleet} keys in the fleet, {keys} written"
    );

    // The planner's estimate of the plan, next to what the operator measured once it finished
    // (status.rebalance.balance; measured after the instances' next probes).
    let deadline = Instant::now() + Duration::from_secs(60);
    let balance = loop {
        let b = policies
            .get("shop")
            .await
            .ok()
            .and_then(|p| p.status?.rebalance?.balance);
        if b.as_ref().is_some_and(|b| b.measured_bytes.is_some()) || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let (start, moved_at_start) = copying.expect("the Copying step was seen");
    let (end, moved) = copied.expect("the Copied step was seen");
    let copy_secs = (end - start).as_secs_f64();
    let job_moved = done.keys_moved.unwrap_or(moved).max(moved);
    let rate = (moved - moved_at_start) as f64 / copy_secs;
    let mb_per_key = bytes as f64 / keys as f64 / 1e6;
    baseline.sort_unstable();
    moving.sort_unstable();
    println!();
    println!("rebalance copy ({keys} keys, {VALUE_BYTES} B values, half with TTL, loopback)");
    println!("  keys moved by the Job        {job_moved} (the rest moved by sidecar reads)");
    println!("  copy step                    {copy_secs:.2} s");
    println!("  copy rate                    {rate:.0} keys/s");
    println!(
        "  copy rate                    {:.1} MB/s of keys + values",
        rate * mb_per_key
    );
    println!(
        "  apply → Succeeded            {:.2} s",
        total.as_secs_f64()
    );
    println!(
        "  Job's own report             {} keys/s",
        done.keys_per_second.unwrap_or(0)
    );
    if let Some(b) = &balance {
        let mb = |b: i64| b as f64 / 1e6;
        println!(
            "  planner's estimate           {:.1} MB, {} keys (sampled memory)",
            mb(b.estimated_bytes),
            b.estimated_keys
        );
        match b.measured_bytes {
            Some(m) => println!(
                "  measured                     {:.1} MB ({:.2}× the estimate; used memory, foreground writes included)",
                mb(m),
                m as f64 / b.estimated_bytes.max(1) as f64
            ),
            None => println!("  measured                     not yet (the instances' probes lag)"),
        }
    }
    println!();
    println!("foreground through the sidecar ({FOREGROUND_RATE} ops/s, 3 GET : 1 SET)");
    println!("                  requests  errors   p50 µs   p99 µs  p99.9 µs");
    for (label, l, e) in [
        ("before the move", &baseline, baseline_errors),
        ("during the move", &moving, moving_errors),
    ] {
        println!(
            "  {label:<15} {:>9} {e:>7} {:>8} {:>8} {:>9}",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 0.999)
        );
    }
    println!(
        "  p99 during / before: {:.2}×",
        percentile(&moving, 0.99) as f64 / percentile(&baseline, 0.99).max(1) as f64
    );
}
