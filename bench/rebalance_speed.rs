//! Benchmark: how fast does a rebalance Job move data, and what does the move cost the
//! application meanwhile? (`make bench`)
//!
//! The user's migration, at scale: an old single Redis holding `KEYS` keys (64-byte values,
//! half of them with a TTL) is applied as a draining RedisInstance, and the real operator,
//! the real `redis-fleet rebalance` Job (run by the test node, release build) and a real
//! sidecar empty it into a two-instance fleet on loopback. The copy's own rate limit is lifted
//! (`keysPerSecond: 10000000`) so that the engine, not the throttle, is measured.
//!
//! The first drain runs with the sidecar idle: the engine's speed. Then foreground traffic —
//! GETs of the keys being moved and SETs of new keys through the sidecar, at a steady rate —
//! runs before the moves (baseline), just before each of two more drains (the same fleet,
//! nothing moving) and during them, with no rate limit: one with `pacing: Adaptive` (the copy
//! yields to the latency the sidecar reports, steering its p99 to 1.25× its baseline and
//! holding it within 1.5×: the default), one with `pacing: Adaptive` and
//! `latencyHeadroomMicroseconds: 1000` (a millisecond more allowed; "Adaptive 1000µs"), and
//! one with `pacing: Fixed`. Each drain is
//! paused and resumed every few seconds while it copies, so that the traffic with and without
//! the copy (the guard alone) is measured in the same minutes: on this shared machine the
//! p99 of a quiet fleet varies several-fold from one minute to the next, so only interleaved
//! windows compare fairly. A second after each switch is left out of both: the switch itself
//! (the annotation, the operator's reconciles, the Job's report of its new step) is the
//! bench's instrument, not the copy. `REBALANCE_BENCH_DRAINS` runs other drains (see
//! [`gentle_drains`]). The latency percentiles and the copies' rates are printed side by
//! side. Nothing here is a pass/fail assertion on time. The bench does check that every key
//! arrived.
//!
//! `cargo bench --bench rebalance_speed` moves 1 000 000 keys; under `cargo test` (no
//! `--bench` argument) the same path runs with 20 000 keys as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cpu_meter;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cpu_meter::CpuMeter;
use kube::api::{Api, Patch, PatchParams};
use redis::AsyncCommands;
use redis_fleet::api::CachePolicy;
use redis_fleet::api::cache_policy::{
    REBALANCE_CONTROL_ANNOTATION, RebalanceStatus, rebalance_phase,
};
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
/// How long a sidecar that stopped sending traffic takes to report none: its heartbeats (one a
/// second) report the traffic since the last one.
const IDLE_REPORTS: Duration = Duration::from_secs(3);

fn key(n: usize) -> String {
    format!("{}{n:08}", PREFIXES[n % PREFIXES.len()])
}

/// Writes keys `first..first + count` straight into `server`; returns the bytes of keys and
/// values written.
async fn fill(server: &RedisServer, first: usize, count: usize) -> u64 {
    let mut c = server.bookkeeping_connection().await;
    let value = [b'v'; VALUE_BYTES];
    let mut bytes = 0u64;
    for start in (first..first + count).step_by(2_000) {
        let mut pipe = redis::pipe();
        for n in start..(start + 2_000).min(first + count) {
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
    let mut c = server.bookkeeping_connection().await;
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

/// The anchor: a plain pipelined DUMP/RESTORE copy of every key of `from` into database 1 of
/// `to` — what `redis-cli --pipe` does with a dump of the keys, written here in Rust: SCAN
/// pages of 1 000 keys, one pipeline of `DUMP` + `PTTL` per page on the source, one pipeline of
/// `RESTORE … REPLACE` per page on the target, the next page read while the last one is written.
/// No atomicity, no tombstones, no token: the speed of the servers and the loopback alone.
/// Returns the keys copied and the time it took; database 1 is flushed afterwards.
async fn anchor_copy(from: &RedisServer, to: &RedisServer) -> (u64, Duration) {
    let mut src = from.bookkeeping_connection().await;
    let mut dst = redis::Client::open(format!("redis://127.0.0.1:{}/1", to.port))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&support::redis::bookkeeping_config())
        .await
        .unwrap();
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<redis::Pipeline>(4);
    let writer = {
        let mut dst = dst.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let () = p.query_async(&mut dst).await.unwrap();
            }
        })
    };
    let mut copied = 0u64;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut src)
            .await
            .unwrap();
        if !keys.is_empty() {
            let mut read = redis::pipe();
            for k in &keys {
                read.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
            }
            let values: Vec<redis::Value> = read.query_async(&mut src).await.unwrap();
            let mut write = redis::pipe();
            for (k, pair) in keys.iter().zip(values.chunks(2)) {
                if let [redis::Value::BulkString(dump), redis::Value::Int(ttl)] = pair
                    && *ttl != -2
                {
                    write
                        .cmd("RESTORE")
                        .arg(k)
                        .arg((*ttl).max(0))
                        .arg(dump)
                        .arg("REPLACE")
                        .ignore();
                    copied += 1;
                }
            }
            tx.send(write).await.unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    drop(tx);
    writer.await.unwrap();
    let took = started.elapsed();
    let () = redis::cmd("FLUSHDB")
        .arg("ASYNC")
        .query_async(&mut dst)
        .await
        .unwrap();
    (copied, took)
}

/// What foreground traffic saw: when each request started and its latency in microseconds,
/// and the number of errors.
type Seen = (Vec<(Instant, u64)>, u64);

/// Foreground traffic under way ([`Foreground::start`]). Dropping it stops the traffic: a
/// bench that panics (a drain that does not finish) must exit, and the runtime's own drop
/// waits for every blocking task, this one included.
struct Foreground {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<Seen>>,
}

impl Foreground {
    /// [`foreground`] on a thread and runtime of its own, so that the bench's own work
    /// (following the plan through the API server, parsing the policy) never delays a request
    /// it times.
    fn start(port: u16, keys: usize) -> Foreground {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(foreground(port, keys, flag))
        });
        Foreground {
            stop,
            task: Some(task),
        }
    }

    /// Stops the traffic; what it saw.
    async fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task.take().expect("finished once");
        task.await.unwrap()
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Steady foreground traffic through the sidecar until `stop`; returns when each request
/// started and its latency in microseconds, and the number of errors.
/// The sidecar's count of blind writes sent past the guard by a roster
/// (`docs/protocol.md`, "The roster of a legacy Redis").
const BLIND_WRITES: &str = "redisfleet_sidecar_blind_writes_to_target_total";

async fn foreground(port: u16, keys: usize, stop: Arc<AtomicBool>) -> (Vec<(Instant, u64)>, u64) {
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
        latencies.push((started, started.elapsed().as_micros() as u64));
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
    let operator = Operator::start(cp, &ns);
    // The smoke run's capacity is small enough that its second, paced drain (10 000 keys)
    // moves the legacy instance's memory by a point: the operator samples an instance again,
    // and so sees what to move, when its use changed by a point of its capacity.
    let capacity = if full { "1Gi" } else { "64Mi" };
    let instance = |name: &str, tier: &str, server: &RedisServer, drain: bool| {
        format!(
            "apiVersion: redisfleet.io/v1alpha1\nkind: RedisInstance\nmetadata:\n  name: {name}\n  labels: {{app.kubernetes.io/part-of: shop, redisfleet.io/tier: {tier}}}\n\
             spec:\n  drain: {drain}\n  external: {{host: 127.0.0.1, port: {}}}\n  capacity: {capacity}\n  health: {{interval: 1s, timeout: 1s, failureThreshold: 3, recoveryThreshold: 2}}\n---\n",
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
    let bytes = fill(&legacy, 0, keys).await;
    println!(
        "filled the legacy Redis: {keys} keys, {:.1} MB of keys + values, in {:.1?}",
        bytes as f64 / 1e6,
        filling.elapsed()
    );
    let node = Node::start(cp, &ns);
    let sidecar = Sidecar::follow(cp, &ns, "shop-redis-routing", "bench-app");

    // Where the machine's cores go while the anchor and the Job copy.
    let mut named = vec![(std::process::id(), "the bench".to_string())];
    for (server, role) in [
        (&legacy, "source redis"),
        (&primary, "target redis (primary)"),
        (&secondary, "target redis (secondary)"),
    ] {
        named.extend(server.pid().map(|p| (p, role.to_string())));
    }
    named.extend(operator.pid().map(|p| (p, "operator".to_string())));
    named.extend(sidecar.pid().map(|p| (p, "sidecar".to_string())));
    let cpu = CpuMeter::start(named, role_of, Duration::from_millis(250));

    // The anchor, between the same two servers, with the fleet running beside it.
    let anchor_started = cpu.read_now();
    let (anchor_keys, anchor_time) = anchor_copy(&legacy, &primary).await;
    let anchor_cpu = cpu.between(anchor_started, cpu.read_now());
    assert_eq!(anchor_keys, keys as u64, "the anchor copied every key");

    // Baseline: the same traffic with nothing moving.
    let base = Foreground::start(sidecar.port, keys);
    tokio::time::sleep(BASELINE).await;
    let (baseline, baseline_errors) = base.finish().await;
    dump("baseline", &baseline, None, &[], &[]);

    // The engine's speed: the sidecar runs, idle (with traffic, `pacing: Adaptive` would
    // slow the copy for it: measured below). Its reports of the baseline traffic age out
    // first: a Job that read one would start at 1 000 keys/s and grow a tenth a second.
    tokio::time::sleep(IDLE_REPORTS).await;
    reset_commandstats(&[&legacy, &primary, &secondary]).await;
    let applied = Instant::now();
    let out = kubectl_apply(cp, &ns, &instance("legacy", "legacy", &legacy, true));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fast = follow(&policies, &node, &legacy, 0, if full { 900 } else { 120 }).await;
    let total = applied.elapsed();
    let copy_cpu = cpu.between(fast.copying.0, fast.copied.0);
    drop(cpu);
    let moved_by_job = fast
        .done
        .keys_moved
        .unwrap_or(fast.copied.1)
        .max(fast.copied.1) as u64;
    let (source_per_key, source_sampled, source_calls) =
        per_key(&commandstats(&[&legacy]).await, moved_by_job);
    let (target_per_key, target_sampled, target_calls) =
        per_key(&commandstats(&[&primary, &secondary]).await, moved_by_job);
    assert!(
        source_per_key <= SOURCE_COMMANDS_PER_KEY && target_per_key <= TARGET_COMMANDS_PER_KEY,
        "moving a key costs more Redis commands than it did: source {source_per_key:.2} per key \
         ({source_calls}; at most {SOURCE_COMMANDS_PER_KEY}), targets {target_per_key:.2} \
         ({target_calls}; at most {TARGET_COMMANDS_PER_KEY}), {moved_by_job} keys moved by the Job"
    );

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

    // keysPerSecond honoured: the same drain again, of fresh keys, at a set rate.
    let (paced_keys, paced_rate) = if full {
        (300_000, 20_000)
    } else {
        (10_000, 5_000)
    };
    set_keys_per_second(&policies, paced_rate).await;
    fill(&legacy, keys, paced_keys).await;
    let paced = follow(&policies, &node, &legacy, fast.done.plan_id, 300).await;
    assert_eq!(app_keys(&legacy).await, 0, "keys left on the legacy Redis");

    // What a copy costs the application: the foreground traffic during a drain with no rate
    // limit, paced by the sidecars' latency (`pacing: Adaptive`, the default), then the same
    // drain with `pacing: Fixed`; each paused and resumed every few seconds while it copies
    // (paused, every key is still routed through the guard on the legacy Redis, most answered
    // from the target: the guard and its redirects alone, in the same minutes as the copy).
    // (Enough keys to move the legacy instance's memory by a point of its capacity, as the
    // paced drain: the operator samples an instance again when its use changed by a point —
    // a draining one every 30 s besides — so the drain starts within a probe of the fill.
    // The full run's 60 000 keys take a few minutes at the default pacing's few hundred keys
    // per second beside this traffic, over a dozen pause cycles.)
    // `REBALANCE_BENCH_GENTLE_KEYS` sets another size (a paced copy at smoke sizes is over
    // before its pacing has settled).
    let gentle_keys = match std::env::var("REBALANCE_BENCH_GENTLE_KEYS") {
        Ok(n) => n
            .parse()
            .expect("REBALANCE_BENCH_GENTLE_KEYS is a number of keys"),
        Err(_) if full => 60_000,
        Err(_) => 10_000,
    };
    let mut filled = keys + paced_keys;
    let mut after = paced.done.plan_id;
    let mut drains = Vec::new();
    let mut blind_writes = Vec::new();
    for (pacing, headroom, keys_per_second) in gentle_drains() {
        set_pacing(&policies, &pacing, headroom).await;
        set_keys_per_second(&policies, keys_per_second).await;
        let mut label = if pacing == "Adaptive" && headroom != 0 {
            format!("{pacing} {headroom}µs")
        } else {
            pacing.clone()
        };
        if keys_per_second != UNLIMITED {
            label += &format!(" {keys_per_second}/s");
        }
        // The traffic runs a while before the keys to move arrive: the fleet as it stands
        // just before this drain, the same instances holding the same keys, nothing moving.
        let traffic = Foreground::start(sidecar.port, keys);
        let quiet = Instant::now();
        tokio::time::sleep(BASELINE).await;
        let before = (quiet, Instant::now());
        fill(&legacy, filled, gentle_keys).await;
        filled += gentle_keys;
        let servers = [
            ("legacy", &legacy),
            ("primary", &primary),
            ("secondary", &secondary),
        ];
        slowlog_start(&servers).await;
        let blind_before = sidecar.metric(BLIND_WRITES);
        let pausing = tokio::spawn(pause_cycles(policies.clone(), after));
        let drain = follow(&policies, &node, &legacy, after, GENTLE_DRAIN_SECS).await;
        let (latencies, errors) = traffic.finish().await;
        let cycles = pausing.await.unwrap();
        let slow = slowlog_report(&servers).await;
        blind_writes.push((label.clone(), sidecar.metric(BLIND_WRITES) - blind_before));
        assert_eq!(app_keys(&legacy).await, 0, "keys left on the legacy Redis");
        let copy = (drain.copying.0, drain.copied.0);
        dump(
            &label.replace([' ', '/'], "-").replace('µ', "u"),
            &latencies,
            Some(copy),
            &cycles.steady(copy),
            &cycles.paused,
        );
        after = drain.done.plan_id;
        drains.push(Drain::new(
            label, drain, &latencies, errors, before, &cycles, slow,
        ));
    }

    let copy_secs = (fast.copied.0 - fast.copying.0).as_secs_f64();
    let job_moved = fast
        .done
        .keys_moved
        .unwrap_or(fast.copied.1)
        .max(fast.copied.1);
    let rate = (fast.copied.1 - fast.copying.1) as f64 / copy_secs;
    let mb_per_key = bytes as f64 / keys as f64 / 1e6;
    let anchor_rate = anchor_keys as f64 / anchor_time.as_secs_f64();
    println!();
    println!("rebalance copy ({keys} keys, {VALUE_BYTES} B values, half with TTL, loopback)");
    println!("  keys moved by the Job        {job_moved} (the rest moved by sidecar reads)");
    println!("  copy step                    {copy_secs:.2} s");
    println!(
        "  apply → Succeeded            {:.2} s",
        total.as_secs_f64()
    );
    println!(
        "  Job's own report             {} keys/s",
        fast.done.keys_per_second.unwrap_or(0)
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
    println!(
        "  Redis commands per key moved  source {source_per_key:.2} ({source_calls}); targets {target_per_key:.2} ({target_calls}); the operator's samples besides: source {source_sampled:.2}, targets {target_sampled:.2}"
    );
    println!("                                  keys/s     MB/s  (keys + values)");
    println!(
        "  the Job (keysPerSecond off)  {rate:>10.0} {:>8.1}",
        rate * mb_per_key
    );
    println!(
        "  anchor: pipelined DUMP/RESTORE {anchor_rate:>8.0} {:>8.1}   (same servers, same keys, {:.2} s)",
        anchor_rate * mb_per_key,
        anchor_time.as_secs_f64()
    );
    println!(
        "  Job / anchor                 {:>10.2}×",
        rate / anchor_rate
    );
    for (what, cpu) in [("the copy step", &copy_cpu), ("the anchor", &anchor_cpu)] {
        match cpu {
            Some(c) => println!("  CPU during {what:<17} {c}"),
            None => println!("  CPU during {what:<17} (too short to read)"),
        }
    }
    // The source's CPU time per key moved in each window (the copy step's edges are the
    // status polls', within a reading of the meter's; the anchor's are read at once). It
    // depends on the machine's speed and on how the calls batch the keys, not only on the
    // commands per key.
    if let (Some(job), Some(anchor)) = (&copy_cpu, &anchor_cpu) {
        let job_keys = (fast.copied.1 - fast.copying.1).max(1) as f64;
        println!(
            "  source redis CPU per key     the Job {:.1} µs, the anchor {:.1} µs",
            job.seconds_of("source redis") / job_keys * 1e6,
            anchor.seconds_of("source redis") / anchor_keys.max(1) as f64 * 1e6
        );
    }
    match paced.steady_rate() {
        Some(measured) => println!(
            "  keysPerSecond {paced_rate:>6}         {measured:>10.0}          ({paced_keys} more keys; {:+.1} % of the setting, between the Job's reports)",
            (measured / paced_rate as f64 - 1.0) * 100.0
        ),
        None => println!("  keysPerSecond {paced_rate:>6}         (too few reports to measure)"),
    }
    println!();
    let mut baseline: Vec<u64> = baseline.into_iter().map(|(_, l)| l).collect();
    baseline.sort_unstable();
    println!(
        "foreground through the sidecar ({FOREGROUND_RATE} ops/s, 3 GET : 1 SET) during a drain of {gentle_keys} keys, no keysPerSecond limit"
    );
    println!(
        "                                       requests  errors   p50 µs   p99 µs  p99.9 µs   copy keys/s"
    );
    let row = |label: &str, l: &[u64], errors: String, rate: String| {
        println!(
            "  {label:<36} {:>9} {errors:>7} {:>8} {:>8} {:>9} {rate:>13}",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 0.999)
        );
    };
    row(
        "before the moves",
        &baseline,
        baseline_errors.to_string(),
        String::new(),
    );
    for d in &drains {
        row(
            &format!("pacing: {}, just before", d.pacing),
            &d.before,
            String::new(),
            String::new(),
        );
        row(
            &format!("pacing: {}, copying", d.pacing),
            &d.copying,
            d.errors.to_string(),
            format!("{:.0}", d.rate),
        );
        if !d.paused.is_empty() {
            row(
                &format!("    paused {}× between (guard)", d.pauses),
                &d.paused,
                String::new(),
                String::new(),
            );
        }
    }
    let p99 = |l: &[u64]| percentile(l, 0.99) as f64;
    for d in &drains {
        print!(
            "  pacing: {:<12} p99 while copying / just before: {:.2}×, / before the moves: {:.2}×",
            d.pacing,
            p99(&d.copying) / p99(&d.before).max(1.0),
            p99(&d.copying) / p99(&baseline).max(1.0)
        );
        if !d.paused.is_empty() {
            print!(
                ", / paused in between (the guard alone, same minutes): {:.2}×",
                p99(&d.copying) / p99(&d.paused).max(1.0)
            );
        }
        println!();
    }
    println!(
        "SETs of new keys the sidecar sent straight to the fleet by the legacy Redis's roster during each drain (a quarter of the requests are such SETs)"
    );
    for (pacing, n) in &blind_writes {
        println!("  pacing: {pacing:<12} {n:.0}");
    }
    println!("commands that held an instance {SLOW_MICROS} µs or more during each drain (SLOWLOG)");
    for d in &drains {
        println!("  pacing: {}", d.pacing);
        for line in &d.slow {
            println!("    {line}");
        }
    }
}

/// One drain under foreground traffic: its pacing, the traffic's latencies just before it,
/// while it copied (outside its pauses) and while it was paused, and the copy's rate.
struct Drain {
    /// Its pacing (and headroom, when not the default).
    pacing: String,
    /// Just before the drain: the same fleet, nothing moving.
    before: Vec<u64>,
    /// While it copied steadily (outside its pauses and the switches to and from them).
    copying: Vec<u64>,
    /// While it was paused, between stretches of copying: the same minutes, the same fleet,
    /// every moving key still behind the guard, no copy.
    paused: Vec<u64>,
    /// How many pauses.
    pauses: usize,
    errors: u64,
    rate: f64,
    /// What held each instance [`SLOW_MICROS`] or more during the drain (copying and paused).
    slow: Vec<String>,
}

impl Drain {
    fn new(
        pacing: String,
        drain: Followed,
        latencies: &[(Instant, u64)],
        errors: u64,
        before: (Instant, Instant),
        cycles: &Cycles,
        slow: Vec<String>,
    ) -> Self {
        let copy = (drain.copying.0, drain.copied.0);
        let quiet = sorted_within(latencies, &[before], &[]);
        let copying = sorted_within(latencies, &cycles.steady(copy), &[]);
        let held = sorted_within(latencies, &cycles.paused, &[]);
        let secs = (copy.1 - copy.0).as_secs_f64()
            - clip(&cycles.held, copy)
                .iter()
                .map(|(from, to)| (*to - *from).as_secs_f64())
                .sum::<f64>();
        Self {
            pacing,
            before: quiet,
            copying,
            paused: held,
            pauses: cycles.paused.len(),
            errors,
            rate: (drain.copied.1 - drain.copying.1) as f64 / secs.max(0.001),
            slow,
        }
    }
}

/// With `REBALANCE_BENCH_DUMP=<dir>`, writes one drain's foreground requests to
/// `<dir>/<name>.tsv` (`baseline`, or the drain's pacing) (when each started, in Unix
/// milliseconds, to compare with the logs of the operator and the Job; its latency in µs;
/// `copy` or `paused` within the windows measured (`steady`, `paused`), `switch` between them
/// within the `copy`, `-` outside it), to see when the slow ones came.
fn dump(
    name: &str,
    latencies: &[(Instant, u64)],
    copy: Option<(Instant, Instant)>,
    steady: &[(Instant, Instant)],
    paused: &[(Instant, Instant)],
) {
    let Some(dir) = std::env::var_os("REBALANCE_BENCH_DUMP") else {
        return;
    };
    let now = Instant::now();
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut out = String::new();
    for (at, l) in latencies {
        let unix = unix_now - (now - *at).as_millis();
        let what = if paused.iter().any(|w| within(*at, *w)) {
            "paused"
        } else if steady.iter().any(|w| within(*at, *w)) {
            "copy"
        } else if copy.is_some_and(|w| within(*at, w)) {
            "switch"
        } else {
            "-"
        };
        out.push_str(&format!("{unix}\t{l}\t{what}\n"));
    }
    let path = std::path::Path::new(&dir).join(format!("{name}.tsv"));
    std::fs::write(&path, out).unwrap();
}

/// Whether `at` falls in `window` (both ends included).
fn within(at: Instant, (from, to): (Instant, Instant)) -> bool {
    at >= from && at <= to
}

/// `windows`, each cut to `bounds` (those outside it dropped).
fn clip(windows: &[(Instant, Instant)], bounds: (Instant, Instant)) -> Vec<(Instant, Instant)> {
    windows
        .iter()
        .map(|(from, to)| ((*from).max(bounds.0), (*to).min(bounds.1)))
        .filter(|(from, to)| from < to)
        .collect()
}

/// The latencies of the requests that started in one of `windows` and in none of `except`,
/// sorted.
fn sorted_within(
    latencies: &[(Instant, u64)],
    windows: &[(Instant, Instant)],
    except: &[(Instant, Instant)],
) -> Vec<u64> {
    let mut out: Vec<u64> = latencies
        .iter()
        .filter(|(at, _)| {
            windows.iter().any(|w| within(*at, *w)) && !except.iter().any(|w| within(*at, *w))
        })
        .map(|(_, l)| *l)
        .collect();
    out.sort_unstable();
    out
}

/// Commands that hold an instance at least this long are recorded during the paced drains
/// (`SLOWLOG`): what the foreground waited behind.
const SLOW_MICROS: u64 = 100;

/// The most Redis commands the copy may run on its source per key it moves, its move scripts'
/// own calls included (`INFO commandstats` counts those). A take is four per key (`MEMORY
/// USAGE`, which also tells whether the key is there, `PTTL`, `RENAMENX`, `DUMP`); each call,
/// each finish and each scan page add a share. Timings cannot be asserted on a shared machine;
/// this count hardly moves on a slow day (a few commands come by the clock: the urgent list's
/// `LPOP` every 20 ms, the latency and `INFO` reads once a second, about a hundredth of a
/// command per key of the smoke run's 4 s copy), and a change that makes every move dearer
/// shows in it (marking each key's slot group in every take call, not once per attempt, added
/// about one per key; the take's two `EXISTS` and a `RENAME` before `RENAMENX`, two). Today's
/// count: 4.36.
const SOURCE_COMMANDS_PER_KEY: f64 = 4.6;

/// The same for the targets together: a restore is one per key (`RESTORE`, which refuses a key
/// that is there; an `EXISTS` before it made two). Today's count: 1.12.
const TARGET_COMMANDS_PER_KEY: f64 = 1.5;

/// Zeroes `servers`' `INFO commandstats`.
async fn reset_commandstats(servers: &[&RedisServer]) {
    for server in servers {
        let mut c = server.connection().await;
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// Calls per command on `servers` since [`reset_commandstats`] (`INFO commandstats`), summed.
async fn commandstats(servers: &[&RedisServer]) -> std::collections::BTreeMap<String, u64> {
    let mut calls = std::collections::BTreeMap::new();
    for server in servers {
        let mut c = server.connection().await;
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        for line in text.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n: u64 = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            *calls.entry(name.to_owned()).or_default() += n;
        }
    }
    calls
}

/// Commands per key moved, the copy's (in all, and those that make up a hundredth of a key or
/// more: `exists 2.00, dump 1.00, …`), and the operator's samples of the instances apart (a
/// `RANDOMKEY` and a `MEMORY USAGE` per key looked at: `redis/sample.rs`). A sample looks at
/// 2 048 keys whatever the plan: a tenth of a command per key of the smoke run's 20 000. (A
/// sample of an instance of at most 2 048 keys SCANs them all instead: its `SCAN`, `DBSIZE`
/// and `MEMORY USAGE` calls count as the copy's, a few hundredths of a command per key.)
fn per_key(calls: &std::collections::BTreeMap<String, u64>, keys: u64) -> (f64, f64, String) {
    let mut copy = calls.clone();
    let sampled = copy.remove("randomkey").unwrap_or(0);
    if let Some(usage) = copy.get_mut("memory|usage") {
        *usage = usage.saturating_sub(sampled);
    }
    let keys = keys.max(1) as f64;
    let total = copy.values().sum::<u64>() as f64 / keys;
    let mut big: Vec<(&String, f64)> = copy
        .iter()
        .map(|(name, n)| (name, *n as f64 / keys))
        .filter(|(_, per)| *per >= 0.01)
        .collect();
    big.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = big
        .iter()
        .map(|(name, per)| format!("{name} {per:.2}"))
        .collect();
    (total, 2.0 * sampled as f64 / keys, parts.join(", "))
}

/// Clears `servers`' slow logs and records every command from [`SLOW_MICROS`] on.
async fn slowlog_start(servers: &[(&str, &RedisServer)]) {
    for (_, server) in servers {
        let mut c = server.bookkeeping_connection().await;
        redis::pipe()
            .cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(SLOW_MICROS)
            .arg("slowlog-max-len")
            .arg(100_000)
            .ignore()
            .cmd("SLOWLOG")
            .arg("RESET")
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
}

/// What `servers` recorded since [`slowlog_start`], one line each: per kind of command (a
/// script by its first key's `redisfleet:<kind>` prefix, or `app key`), how many took
/// [`SLOW_MICROS`] or more, their median and the longest, µs; most frequent first.
async fn slowlog_report(servers: &[(&str, &RedisServer)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, server) in servers {
        let mut c = server.bookkeeping_connection().await;
        let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        let mut kinds: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for entry in entries {
            let redis::Value::Array(fields) = entry else {
                continue;
            };
            let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(args))) =
                (fields.get(2), fields.get(3))
            else {
                continue;
            };
            let text = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            let command = args.first().map(text).unwrap_or_default().to_uppercase();
            let kind = if command.starts_with("EVAL") || command == "FCALL" {
                let key = args.get(3).map(text).unwrap_or_default();
                let what = match key.strip_prefix("redisfleet:") {
                    Some(rest) => format!("redisfleet:{}", rest.split(':').next().unwrap_or("")),
                    None => "app key".to_owned(),
                };
                format!("{command} {what}")
            } else {
                command
            };
            kinds.entry(kind).or_default().push(*micros as u64);
        }
        let mut kinds: Vec<(String, Vec<u64>)> = kinds.into_iter().collect();
        kinds.sort_by_key(|(_, l)| std::cmp::Reverse(l.len()));
        let summary: Vec<String> = kinds
            .iter_mut()
            .take(4)
            .map(|(kind, l)| {
                l.sort_unstable();
                format!(
                    "{kind} {}× (median {}, max {})",
                    l.len(),
                    percentile(l, 0.5),
                    l[l.len() - 1]
                )
            })
            .collect();
        lines.push(format!(
            "{name}: {}",
            if summary.is_empty() {
                "none".to_owned()
            } else {
                summary.join("; ")
            }
        ));
    }
    lines
}

/// Sets the policy's `pacing` (`Adaptive` or `Fixed`) and `latencyHeadroomMicroseconds`.
async fn set_pacing(policies: &Api<CachePolicy>, pacing: &str, headroom_micros: u32) {
    let patch = serde_json::json!({"spec": {"balancing": {"rebalance": {
        "pacing": pacing,
        "latencyHeadroomMicroseconds": headroom_micros,
    }}}});
    policies
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// `keysPerSecond` when the copy's own limit is lifted.
const UNLIMITED: u64 = 10_000_000;

/// The drains beside foreground traffic: (pacing, latencyHeadroomMicroseconds, keysPerSecond).
/// By default `Adaptive` with the default headroom (none), `Adaptive` with a millisecond and
/// `Fixed`, all unlimited; `REBALANCE_BENCH_DRAINS=Fixed:0:200,Adaptive:0:10000000` runs
/// others.
fn gentle_drains() -> Vec<(String, u32, u64)> {
    let Ok(spec) = std::env::var("REBALANCE_BENCH_DRAINS") else {
        return [("Adaptive", 0), ("Adaptive", 1_000), ("Fixed", 0)]
            .into_iter()
            .map(|(p, h)| (p.to_owned(), h, UNLIMITED))
            .collect();
    };
    spec.split(',')
        .map(|drain| {
            let parts: Vec<&str> = drain.split(':').collect();
            let [pacing, headroom, rate] = parts[..] else {
                panic!("REBALANCE_BENCH_DRAINS: {drain:?} is not pacing:headroom:keysPerSecond");
            };
            let number = |s: &str| {
                s.parse::<u64>()
                    .unwrap_or_else(|_| panic!("REBALANCE_BENCH_DRAINS: {s:?} is not a number"))
            };
            (pacing.to_owned(), number(headroom) as u32, number(rate))
        })
        .collect()
}

/// Sets the policy's `keysPerSecond`.
async fn set_keys_per_second(policies: &Api<CachePolicy>, rate: u64) {
    let patch = serde_json::json!({"spec": {"balancing": {"rebalance": {"keysPerSecond": rate}}}});
    policies
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// How long a drain beside traffic may take: the default pacing holds the copy to a few
/// hundred keys per second where its load shows in the sidecar's p99 (200 at the least).
const GENTLE_DRAIN_SECS: u64 = 1_800;

/// How long the copy stays paused in each cycle of [`pause_cycles`] (after [`SETTLE`]).
const PAUSE_CYCLE: Duration = Duration::from_secs(3);
/// How long the copy runs in each cycle of [`pause_cycles`] (after [`SETTLE`]): long enough
/// to hold the Job's reports of its count (API writes, at most 5 s apart) as a copy that is
/// never paused does.
const COPY_CYCLE: Duration = Duration::from_secs(6);
/// What each window of [`pause_cycles`] leaves out after the copy resumed or paused: the
/// bench's annotation, the operator's reconcile of it and of the Job's report of its new step
/// (API writes, a few each way) are the bench's instrument, not the copy.
const SETTLE: Duration = Duration::from_secs(1);

/// When a drain copied and when it was held, as [`pause_cycles`] saw them.
#[derive(Default)]
struct Cycles {
    /// Stretches of steady copying: from [`SETTLE`] after the copy (re)started until the bench
    /// asked for the next pause (or the copy ended).
    copying: Vec<(Instant, Instant)>,
    /// Stretches of steady pause: from [`SETTLE`] after the Job said it paused until the bench
    /// resumed it.
    paused: Vec<(Instant, Instant)>,
    /// From the Job saying it paused until the bench resumed it: time the copy did not run.
    held: Vec<(Instant, Instant)>,
}

impl Cycles {
    /// The windows of steady copying within `copy` (the drain's copy step); the whole step if
    /// none falls in it (no pause cycle ran, or the copy was over within a settle).
    fn steady(&self, copy: (Instant, Instant)) -> Vec<(Instant, Instant)> {
        match clip(&self.copying, copy) {
            windows if windows.is_empty() => vec![copy],
            windows => windows,
        }
    }
}

/// Alternates the plan after `after` between copying ([`COPY_CYCLE`]) and paused
/// ([`PAUSE_CYCLE`]), by the `redisfleet.io/rebalance` annotation, for as long as it copies,
/// so that the foreground traffic with and without the copy is measured in the same minutes,
/// on the same fleet, through the same noise; the windows of each (the switches between them
/// left out).
async fn pause_cycles(policies: Api<CachePolicy>, after: i64) -> Cycles {
    let annotate = |value: Option<&str>| serde_json::json!({"metadata": {"annotations": {REBALANCE_CONTROL_ANNOTATION: value}}});
    let control = |value: Option<&'static str>| {
        let policies = policies.clone();
        async move {
            policies
                .patch(
                    "shop",
                    &PatchParams::default(),
                    &Patch::Merge(&annotate(value)),
                )
                .await
                .is_ok()
        }
    };
    // The plan's step, `None` once it is over (or not there yet: `Some("")`).
    let step = || async {
        let p = policies.get("shop").await.ok()?;
        match p
            .status
            .and_then(|s| s.rebalance)
            .filter(|r| r.plan_id > after)
        {
            Some(r)
                if r.phase == rebalance_phase::SUCCEEDED || r.phase == rebalance_phase::FAILED =>
            {
                None
            }
            Some(r) => Some(r.step.unwrap_or_default()),
            None => Some(String::new()),
        }
    };
    let mut cycles = Cycles::default();
    let deadline = Instant::now() + Duration::from_secs(GENTLE_DRAIN_SECS);
    // Until it copies.
    loop {
        match step().await.as_deref() {
            Some("Copying") => break,
            None => return cycles,
            _ if Instant::now() > deadline => return cycles,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    while Instant::now() < deadline {
        tokio::time::sleep(SETTLE).await;
        let from = Instant::now();
        tokio::time::sleep(COPY_CYCLE).await;
        // (A copy that ended meanwhile: the drain's own end clips the window.)
        cycles.copying.push((from, Instant::now()));
        if step().await.as_deref() != Some("Copying") || !control(Some("pause")).await {
            break;
        }
        // Paused once the Job says so (it lands the batches in flight first).
        let mut paused_at = None;
        while Instant::now() < deadline {
            match step().await.as_deref() {
                Some("Paused") => {
                    paused_at = Some(Instant::now());
                    break;
                }
                Some("Copying") => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => break,
            }
        }
        if let Some(held) = paused_at {
            tokio::time::sleep(SETTLE).await;
            let from = Instant::now();
            tokio::time::sleep(PAUSE_CYCLE).await;
            let to = Instant::now();
            cycles.paused.push((from, to));
            cycles.held.push((held, to));
        }
        if !control(None).await || paused_at.is_none() {
            break;
        }
        // Copying again.
        while Instant::now() < deadline {
            match step().await.as_deref() {
                Some("Paused") => tokio::time::sleep(Duration::from_millis(100)).await,
                Some("Copying") => break,
                _ => {
                    let _ = control(None).await;
                    return cycles;
                }
            }
        }
    }
    let _ = control(None).await;
    cycles
}

/// The role of a process the bench did not start itself, by its command line.
fn role_of(argv: &[String]) -> Option<String> {
    let program = argv.first()?.rsplit('/').next()?;
    let role = match (program, argv.get(1).map(String::as_str)) {
        ("redis-fleet", Some("rebalance")) => "the Job",
        ("etcd", _) => "etcd",
        ("kube-apiserver", _) => "kube-apiserver",
        ("redis-server", _) => "redis (other)",
        _ => return None,
    };
    Some(role.into())
}

/// What following one plan through `status.rebalance` saw.
struct Followed {
    done: RebalanceStatus,
    /// When the Copying step was first seen, and the keys moved then.
    copying: (Instant, i64),
    /// When the Copied (or Done) step was first seen, and the keys moved then.
    copied: (Instant, i64),
    /// Each change of `keysMoved` seen while Copying: when, and the count.
    reports: Vec<(Instant, i64)>,
}

impl Followed {
    /// The copy's rate between its first and last progress report while copying (the
    /// Job reports every 1–5 s).
    fn steady_rate(&self) -> Option<f64> {
        let (first, last) = (self.reports.first()?, self.reports.last()?);
        let secs = (last.0 - first.0).as_secs_f64();
        (secs >= 1.0).then(|| (last.1 - first.1) as f64 / secs)
    }
}

/// Follows the first plan after `after` that drains the legacy Redis until it succeeds. A
/// plan that began while the bench still filled the legacy Redis (the operator samples an
/// instance again when a probe finds its memory moved a point, which can fall within the fill)
/// moves the keys there so far: the plan that moves the rest is followed instead, and what was
/// seen of a plan is dropped when a newer one shows.
async fn follow(
    policies: &Api<CachePolicy>,
    node: &Node,
    legacy: &RedisServer,
    mut after: i64,
    secs: u64,
) -> Followed {
    let mut copying: Option<(Instant, i64)> = None;
    let mut copied: Option<(Instant, i64)> = None;
    let mut reports: Vec<(Instant, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    // The newest status seen, for the message of a drain that does not finish.
    let mut last = None;
    let mut seen_plan = after;
    loop {
        let p = policies.get("shop").await.unwrap();
        last = p.status.clone().or(last);
        if let Some(r) = p.status.and_then(|s| s.rebalance)
            && r.plan_id > after
        {
            if r.plan_id != seen_plan {
                seen_plan = r.plan_id;
                (copying, copied, reports) = (None, None, Vec::new());
            }
            let moved = r.keys_moved.unwrap_or(0);
            let now = Instant::now();
            match r.step.as_deref() {
                Some("Copying") => {
                    if copying.is_none() {
                        copying = Some((now, moved));
                    }
                    if reports.last().is_none_or(|(_, m)| *m != moved) {
                        reports.push((now, moved));
                    }
                }
                Some("Copied" | "Done") if copied.is_none() && copying.is_some() => {
                    copied = Some((now, moved))
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
                if app_keys(legacy).await > 0 {
                    eprintln!(
                        "plan {} moved {} keys of a fill still under way; following the next",
                        r.plan_id,
                        r.keys_moved.unwrap_or(0)
                    );
                    after = r.plan_id;
                    continue;
                }
                return Followed {
                    done: r,
                    copying: copying.expect("the Copying step was seen"),
                    copied: copied.expect("the Copied step was seen"),
                    reports,
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "the drain did not finish in {secs} s\nthe policy's status: {last:#?}\npods run (name, exit code): {:?}\npods running: {:?}\n{}",
            node.finished.lock().unwrap(),
            node.running(),
            node.all_logs()
        );
        // Not faster: the bench's own reads of the policy load the API server (and so the
        // machine) the foreground traffic shares.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
