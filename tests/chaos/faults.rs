//! The faults, at moments the seed draws: kill -9 of the running rebalance Job pod, of the
//! operator and of a sidecar (each restarted, as Kubernetes would); SIGSTOP … SIGCONT of a
//! redis-server, shorter and longer than the failover threshold (probes every 1 s, 2 failures;
//! the longer ones end within the failover notice's wait or after it, so some are held back
//! and some fail over);
//! an instance added, drained and removed once empty; a category filled past the capacity
//! threshold; `redisfleet.io/rebalance-now`; and `redisfleet.io/rebalance` set to `pause` or
//! `cancel` for 1–8 s, then removed. Fills and drains keep the fleet within its
//! capacity ([`fleet_budget`]): a fleet filled whole refuses writes with `-OOM`, as a full
//! Redis does, and the checker counts every refusal as a failure.
//!
//! Redis servers are never killed: a dead instance's data is lost by design (failover is the
//! protocol's one exception), and stopping one long enough already makes the operator fail it
//! over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, fill_limit, fleet_budget, lock};
use crate::rng::Rng;
use crate::workload::Client;

/// Faults injected, by kind.
pub type Counts = BTreeMap<&'static str, u64>;

/// Injects faults until `until`, then waits for the pauses it started to end.
pub async fn inject(fleet: Arc<Fleet>, mut rng: Rng, until: Instant) -> Counts {
    let mut counts = Counts::new();
    let mut pauses = Vec::new();
    let mut added = 0;
    let mut fills = 0;
    let mut forced = 0;
    loop {
        let gap = Duration::from_millis(rng.range(1_000, 5_000));
        if Instant::now() + gap >= until {
            break;
        }
        tokio::time::sleep(gap).await;
        let kinds = [4, 2, 2, 2, 2, 3, 1, 2, 2];
        match rng.weighted(&kinds) {
            0 => {
                let pods: Vec<String> = fleet.node.running().into_iter().map(|(n, _)| n).collect();
                if fleet.node.kill_running() > 0 {
                    fleet.event(format!("Job pod kill -9: {}", pods.join(", ")));
                    *counts.entry("Job pod kill -9").or_default() += 1;
                }
            }
            1 => {
                let down = Duration::from_millis(rng.range(500, 4_000));
                fleet.event(format!("operator kill -9, down {} ms", down.as_millis()));
                fleet.restart_operator(down).await;
                fleet.event("operator started again");
                *counts.entry("operator kill -9").or_default() += 1;
            }
            2 => {
                let i = rng.range(0, fleet.sidecars.len() as u64) as usize;
                let down = Duration::from_millis(rng.range(200, 3_000));
                fleet.event(format!("sidecar {i} kill -9, down {} ms", down.as_millis()));
                fleet.restart_sidecar(i, down).await;
                fleet.event(format!("sidecar {i} started again"));
                *counts.entry("sidecar kill -9").or_default() += 1;
            }
            k @ (3 | 4) => {
                let live = fleet.live_members();
                let instance = rng.pick(&live).clone();
                let (what, ms) = if k == 3 {
                    ("Redis SIGSTOP < threshold", rng.range(200, 1_200))
                } else {
                    // Found unreachable after 1.5–2.5 s, then the failover notice's 6 s
                    // wait: a pause that ends before it is held back (a blip, data kept),
                    // a longer one fails the instance over.
                    ("Redis SIGSTOP > threshold", rng.range(4_000, 16_000))
                };
                let f = fleet.clone();
                pauses.push(tokio::spawn(async move {
                    f.pause(&instance, Duration::from_millis(ms))
                        .await
                        .then_some(what)
                }));
            }
            5 => {
                fills += 1;
                if fill(&fleet, &mut rng, fills).await {
                    fleet.event("fill ended");
                    *counts.entry("category filled").or_default() += 1;
                }
            }
            6 => {
                forced += 1;
                fleet.event(format!("rebalance-now chaos-{forced}"));
                fleet.rebalance_now(&format!("chaos-{forced}")).await;
                *counts.entry("rebalance-now").or_default() += 1;
            }
            8 => {
                // Pause or cancel whatever plan runs (or none), and resume after a while.
                let (value, what) = if rng.range(0, 2) == 0 {
                    ("pause", "rebalance paused, then resumed")
                } else {
                    ("cancel", "rebalance cancelled, then resumed")
                };
                fleet.event(format!("rebalance {value}"));
                fleet.rebalance_control(Some(value)).await;
                let hold = Duration::from_millis(rng.range(1_000, 8_000));
                let f = fleet.clone();
                pauses.push(tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    f.event(format!("rebalance {value} removed"));
                    f.rebalance_control(None).await;
                    Some(what)
                }));
            }
            _ => {
                if let Some(what) = lifecycle(&fleet, &mut rng, &mut added).await {
                    fleet.event(what);
                    *counts.entry(what).or_default() += 1;
                }
            }
        }
    }
    for p in pauses {
        if let Ok(Some(what)) = p.await {
            *counts.entry(what).or_default() += 1;
        }
    }
    counts
}

/// The next step of an instance's life: one added while the fleet has three; then one drained
/// (of a tier that keeps another instance); then, once empty, removed.
async fn lifecycle(fleet: &Fleet, rng: &mut Rng, added: &mut usize) -> Option<&'static str> {
    let live: Vec<(String, String, bool)> = lock(&fleet.members)
        .iter()
        .filter(|m| !m.removed)
        .map(|m| (m.name.clone(), m.tier.clone(), m.draining))
        .collect();
    if let Some((name, _, _)) = live.iter().find(|(_, _, draining)| *draining) {
        return fleet
            .remove_if_empty(name)
            .await
            .then_some("instance removed");
    }
    if live.len() < 4 {
        *added += 1;
        let tier = *rng.pick(&["hot", "warm"]);
        fleet.add_instance(&format!("extra-{added}"), tier).await;
        return Some("instance added");
    }
    let drainable: Vec<&String> = live
        .iter()
        .filter(|(_, tier, _)| live.iter().filter(|(_, t, _)| t == tier).count() >= 2)
        .map(|(name, _, _)| name)
        .collect();
    if drainable.is_empty() {
        return None;
    }
    // The others must have room for what it holds.
    let used: u64 = fleet.used_memory().await.iter().map(|(_, u)| u).sum();
    if used > fleet_budget(fleet.serving_members()) {
        return None;
    }
    // An instance that holds replicas first: its replicas move seed-first, a path that must
    // lose nothing while owners die and sidecars lag (`docs/replication.md`).
    let table = fleet.table().await;
    let holding: Vec<&String> = drainable
        .iter()
        .copied()
        .filter(|n| table.as_ref().is_some_and(|t| t.replicates_on(n)))
        .collect();
    let pool = if holding.is_empty() {
        &drainable
    } else {
        &holding
    };
    let name = (*rng.pick(pool)).clone();
    fleet.drain(&name).await;
    Some("instance drained")
}

/// Writes keys of one category through the API sidecar (2 KB values that expire after one to
/// two and a half minutes) until an instance passes the capacity threshold, or the fleet holds
/// its budget ([`fleet_budget`]); false when one of them was reached already.
async fn fill(fleet: &Fleet, rng: &mut Rng, round: u64) -> bool {
    let prefix = *rng.pick(&["order:", "menu:", "ml:", "auth:", "user:", "restaurant:"]);
    let ttl = rng.range(60_000, 150_000);
    let value = "f".repeat(2_000);
    fleet.event(format!("fill of {prefix} keys began"));
    let mut client = Client::new(fleet.sidecars[0].port);
    let mut written = 0;
    for batch in 0..60u64 {
        let used = fleet.used_memory().await;
        let total: u64 = used.iter().map(|(_, u)| u).sum();
        if used.iter().any(|(_, u)| *u >= fill_limit())
            || total >= fleet_budget(fleet.serving_members())
        {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for i in 0..400u64 {
            pipe.cmd("SET")
                .arg(format!("{prefix}fill:{round}:{batch}:{i}"))
                .arg(&value)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        if client.pipeline(&pipe).await.is_ok() {
            written += 400;
        }
    }
    written > 0
}
