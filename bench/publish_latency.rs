//! Benchmark: how long after an instance's status shows a new phase does the operator publish
//! the routing ConfigMap that reflects it? (`make bench-publish`)
//!
//! A real control plane, two real redis-servers and the real operator binary. The primary is
//! frozen (SIGSTOP) and thawed (SIGCONT) 50 times; each freeze fails its slots over, each thaw
//! fails them back. One process watches both the RedisInstance and the ConfigMap, so both
//! timestamps come from the same clock and include the same watch delivery delay:
//! latency = (ConfigMap version seen) − (status phase change seen).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use redis_fleet::api::CachePolicy;
use redis_fleet::api::redis_instance::{InstancePhase, RedisInstance};
use redis_fleet::routing::config_map::table_of;
use support::operator::Operator;
use support::{ControlPlane, RedisOptions, RedisServer};

/// What the watches saw.
enum Seen {
    /// The primary's phase.
    Phase(InstancePhase),
    /// A published table: its version, and whether the primary's slots are failed over.
    Table(u64, bool),
}

fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() {
    // `cargo test` runs this as a smoke test, on a machine busy with other tests: fewer flips,
    // and probes that a loaded machine does not fail by themselves.
    let full = std::env::args().any(|a| a == "--bench");
    let (flips, flip_limit, interval, timeout) = if full {
        (50, Duration::from_secs(20), "200ms", "100ms")
    } else {
        (4, Duration::from_secs(90), "1s", "500ms")
    };
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "bench-publish").await;
    let primary = RedisServer::start(RedisOptions::with_maxmemory(30 << 20));
    let secondary = RedisServer::start(RedisOptions::with_maxmemory(30 << 20));
    let _operator = Operator::start_with(cp, &ns, &[]);

    let instances: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    for (name, tier, server) in [
        ("primary", "hot", &primary),
        ("secondary", "warm", &secondary),
    ] {
        let ri: RedisInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "redisfleet.io/v1alpha1", "kind": "RedisInstance",
            "metadata": {"name": name, "labels": {"redisfleet.io/tier": tier}},
            "spec": {"external": {"host": "127.0.0.1", "port": server.port},
                     "health": {"interval": interval, "timeout": timeout, "failureThreshold": 1, "recoveryThreshold": 1}}
        }))
        .unwrap();
        instances.create(&PostParams::default(), &ri).await.unwrap();
    }
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), &ns);
    let policy: CachePolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "redisfleet.io/v1alpha1", "kind": "CachePolicy", "metadata": {"name": "bench"},
        "spec": {"categories": [{"name": "auth", "keyPrefixes": ["auth:"], "tier": "hot", "fallbackTier": "warm"}],
                 "defaultCategory": {"tier": "warm"},
                 // Failback without a data move: the path measured is probe → publish.
                 "balancing": {"rebalance": {"enabled": false}}}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    // Timestamps of phase changes of the primary and of published tables (whether the
    // primary's slots are failed over in them). The two watches deliver in any order: a
    // table may be seen before the phase it reflects.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Seen, Instant)>();
    let tx2 = tx.clone();
    let ri_watch = watcher(
        instances.clone(),
        watcher::Config::default().fields("metadata.name=primary"),
    )
    .applied_objects()
    .for_each(move |ri| {
        if let Ok(ri) = ri
            && let Some(phase) = ri.status.and_then(|s| s.phase)
        {
            let _ = tx.send((Seen::Phase(phase), Instant::now()));
        }
        futures::future::ready(())
    });
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm_watch = watcher(
        cms,
        watcher::Config::default().fields("metadata.name=bench-routing"),
    )
    .applied_objects()
    .for_each(move |cm| {
        if let Ok(cm) = cm
            && let Some(Ok(table)) = table_of(&cm)
        {
            let failed_over = table.failover.iter().any(|f| f.from == "primary");
            let _ = tx2.send((Seen::Table(table.version, failed_over), Instant::now()));
        }
        futures::future::ready(())
    });
    tokio::spawn(ri_watch);
    tokio::spawn(cm_watch);

    // Wait until Ready and published.
    let mut phase = None;
    let mut version = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while phase != Some(InstancePhase::Ready) || version.is_none() {
        match tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            (Seen::Phase(p), _) => phase = Some(p),
            (Seen::Table(v, _), _) => version = Some(v),
        }
    }
    let pid = primary.pid().unwrap();
    let mut latencies = Vec::new();
    let mut by_direction: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for i in 0..flips {
        let (sig, want, failed_over) = if i % 2 == 0 {
            ("-STOP", InstancePhase::Unreachable, true)
        } else {
            ("-CONT", InstancePhase::Ready, false)
        };
        signal(pid, sig);
        let mut seen_phase = None;
        let mut seen_table = None;
        let deadline = Instant::now() + flip_limit;
        while seen_phase.is_none() || seen_table.is_none() {
            match tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("flip {i} ({sig}): no {want} phase and table within {flip_limit:?}")
                })
                .unwrap()
            {
                // The first status with the phase: later writes repeat it.
                (Seen::Phase(p), at) if p == want && seen_phase.is_none() => seen_phase = Some(at),
                (Seen::Table(v, f), at) if Some(v) != version && f == failed_over => {
                    version = Some(v);
                    seen_table = Some(at);
                }
                _ => {}
            }
        }
        let (Some(p), Some(t)) = (seen_phase, seen_table) else {
            unreachable!()
        };
        // A table seen before the phase it reflects counts as published at once.
        let l = t.saturating_duration_since(p);
        latencies.push(l);
        by_direction
            .entry(if i % 2 == 0 { "failover" } else { "failback" })
            .or_default()
            .push(l);
    }
    signal(pid, "-CONT");
    latencies.sort();
    println!(
        "health change → routing ConfigMap republished ({flips} phase flips, watch-to-watch):"
    );
    println!(
        "  all      p50 {:>7.1?}  p99 {:>7.1?}  max {:>7.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    for (dir, mut v) in by_direction {
        v.sort();
        println!(
            "  {dir:<8} p50 {:>7.1?}  p99 {:>7.1?}",
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
}
