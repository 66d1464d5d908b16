//! Benchmark: what one read through the sidecar costs while its range moves, by where its key
//! is (`make bench-guard`).
//!
//! Two real redis-servers and a real sidecar. The `user:` range moves from `b` to `a` (a
//! rebalance: `a` did not serve it), halfway: the table marks it migrating, the source imports,
//! the target has its imported marker, the plan keeps slot group states, and the Job's own
//! scripts (take, restore, finish) have moved some of the keys; no copy runs meanwhile. One
//! client reads one request at a time, round-robin over four kinds of key, so that every kind
//! sees the same minutes of this shared machine:
//! - `plain`: a key of a range that does not move (one round trip);
//! - `on the source`: a key the move has not reached (the guard runs the read there);
//! - `moved, read once`: a key the Job moved, each read a key not read before: the guard's
//!   `ASK`, then the target (two round trips). The range's score would send reads to the
//!   target first once most found their keys moved; here, reads alternating between keys on
//!   the source and keys moved, it never rises above zero;
//! - `known moved`: a key the client wrote through the sidecar during the move, read again and
//!   again (the guard's `ASK` to that write proved it off the source for good:
//!   `target_first::KnownMoved`, the target alone).
//!
//! Prints each kind's p50 and p99 and their ratio to `plain`. Every value read is checked, and
//! the sidecar's count of reads sent to the target alone; nothing is a pass/fail on time.
//! `cargo bench --bench guard_latency` reads 20 000 times per kind; under `cargo test` (no
//! `--bench` argument) 300 times, as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use bytes::Bytes;
use redis::AsyncCommands;
use redis_fleet::redis::protocol::mover::Mover;
use redis_fleet::redis::protocol::names;
use redis_fleet::routing::table::{Migration, TtlRules};
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{RedisOptions, RedisServer};

/// Keys of the kinds read again and again.
const KEYS: usize = 1_000;
const POLICY: &str = "test/test";

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    OnSource,
    MovedOnce,
    Known,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Plain, Kind::OnSource, Kind::MovedOnce, Kind::Known];

    fn label(self) -> &'static str {
        match self {
            Kind::Plain => "plain (a range that does not move)",
            Kind::OnSource => "on the source (the guard runs it)",
            Kind::MovedOnce => "moved, read once (the guard's ASK, then the target)",
            Kind::Known => "known moved (the target alone)",
        }
    }

    fn key(self, i: usize) -> String {
        match self {
            Kind::Plain => format!("auth:{i}"),
            Kind::OnSource => format!("user:unmoved:{i}"),
            Kind::MovedOnce => format!("user:moved:{i}"),
            Kind::Known => format!("user:new:{i}"),
        }
    }

    fn value(self, i: usize) -> String {
        format!("{}-{i}", self.key(i).len())
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let reads = if full { 20_000 } else { 300 };
    let target = RedisServer::start(RedisOptions::default());
    let source = RedisServer::start(RedisOptions::default());
    let instances = || {
        vec![
            ("a", endpoint(&target, None)),
            ("b", endpoint(&source, None)),
        ]
    };
    let categories = || {
        vec![
            category("auth", &["auth:"], TtlRules::default(), &[(0, 16383, "a")]),
            category("user", &["user:"], TtlRules::default(), &[(0, 16383, "b")]),
            category("default", &[], TtlRules::default(), &[(0, 16383, "a")]),
        ]
    };
    let sidecar = Sidecar::start(&table(1, instances(), categories()), &[]);
    let mut on_a = target
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut on_b = source
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.set(Kind::OnSource.key(i), Kind::OnSource.value(i))
            .ignore();
    }
    for i in 0..reads {
        pipe.set(Kind::MovedOnce.key(i), Kind::MovedOnce.value(i))
            .ignore();
    }
    let () = pipe.query_async(&mut on_b).await.unwrap();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.set(Kind::Plain.key(i), Kind::Plain.value(i)).ignore();
    }
    let () = pipe.query_async(&mut on_a).await.unwrap();

    // The move, as the Job runs it: the flip, the mover token, the plan's group states, the
    // markers, then some keys moved by its scripts.
    let migration = Migration {
        category: "user".into(),
        start: 0,
        end: 16383,
        from: "b".into(),
        to: "a".into(),
        epoch: 2,
        target_serves: Some(false),
    };
    let mut moving = table(2, instances(), categories());
    moving.migrating.push(migration.clone());
    sidecar.update_table(&moving);
    sidecar.wait_for_version(2).await;
    let mover = Mover {
        policy: POLICY.into(),
        token: names::mover_token(2, 1),
    };
    mover.claim(&mut on_b).await.unwrap();
    mover.claim(&mut on_a).await.unwrap();
    let _: () = on_b
        .set(names::slot_groups(POLICY, 2), names::GROUPS_OPEN)
        .await
        .unwrap();
    mover
        .set_marker(
            &mut on_b,
            &names::importing(POLICY, &migration),
            true,
            false,
        )
        .await
        .unwrap();
    mover
        .set_marker(&mut on_a, &names::imported(POLICY, &migration), true, false)
        .await
        .unwrap();
    let groups = names::slot_group_prefix(POLICY, 2);
    let moved: Vec<Bytes> = (0..reads)
        .map(|i| Bytes::from(Kind::MovedOnce.key(i)))
        .collect();
    for batch in moved.chunks(100) {
        let n = support::redis::move_batch(
            &mover,
            &mut on_b,
            &mut on_a,
            batch,
            &groups,
            std::time::Duration::ZERO,
        )
        .await;
        assert_eq!(n, batch.len(), "every key of the batch taken");
    }

    let client = sidecar.client();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The move's first write has the sidecar ask the source whether a write's `ASK` proves its
    // keys moved; the writes after it are known moved.
    let _: () = conn.set("user:first", "1").await.unwrap();
    for i in 0..KEYS {
        let k = Kind::Known;
        let _: () = conn.set(k.key(i), k.value(i)).await.unwrap();
    }
    let mut on_target = 0;
    for i in 0..KEYS {
        on_target += usize::from(on_a.exists::<_, bool>(Kind::Known.key(i)).await.unwrap());
    }
    assert_eq!(on_target, KEYS, "writes of new keys went to the target");

    let known_before = sidecar.metric("redisfleet_sidecar_reads_known_moved_total");
    let mut latencies: Vec<Vec<u64>> = vec![Vec::with_capacity(reads); Kind::ALL.len()];
    for n in 0..reads {
        let again = n.wrapping_mul(2_654_435_761) % KEYS;
        for (k, kind) in Kind::ALL.iter().enumerate() {
            let i = match kind {
                Kind::MovedOnce => n,
                _ => again,
            };
            let started = Instant::now();
            let v: Option<String> = conn.get(kind.key(i)).await.unwrap();
            latencies[k].push(started.elapsed().as_micros() as u64);
            assert_eq!(v, Some(kind.value(i)), "{}", kind.key(i));
        }
    }
    let known = sidecar.metric("redisfleet_sidecar_reads_known_moved_total") - known_before;
    assert_eq!(
        known, reads as f64,
        "every read of a key written during the move, and only those, went to the target alone"
    );
    let first = sidecar.metric("redisfleet_sidecar_reads_on_target_total");
    let missed = sidecar.metric("redisfleet_sidecar_reads_not_on_target_total");

    println!(
        "one client, one read at a time, {reads} GETs per kind of key, round-robin; a move half done, no copy running"
    );
    println!(
        "  {:<50} {:>8} {:>8} {:>12} {:>12}",
        "key", "p50 µs", "p99 µs", "p50 / plain", "p99 / plain"
    );
    let mut rows = Vec::new();
    for (k, kind) in Kind::ALL.iter().enumerate() {
        let mut sorted = latencies[k].clone();
        sorted.sort_unstable();
        rows.push((
            kind.label(),
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
        ));
    }
    let (p50_plain, p99_plain) = (rows[0].1.max(1) as f64, rows[0].2.max(1) as f64);
    for (label, p50, p99) in rows {
        println!(
            "  {label:<50} {p50:>8} {p99:>8} {:>11.2}× {:>11.2}×",
            p50 as f64 / p50_plain,
            p99 as f64 / p99_plain
        );
    }
    println!(
        "  reads served by the target asked first {first}, asked first in vain {missed}, sent to the target alone {known}"
    );
}
