//! Rebalancing against a real apiserver, real redis-servers, the real operator, the real Job
//! command (run by `support::node`, since there is no kubelet) and the real sidecar: data
//! moves online and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis_fleet::api::cache_policy::{CachePolicy, rebalance_phase};
use redis_fleet::routing::Resolver;
use redis_fleet::routing::table::{RoutingTable, TABLE_KEY};
use support::RedisServer;
use support::node::Node;
use support::shop::{Shop, shop_with};

/// A key's content: value, and absolute expiry (ms since the epoch; 0 without one).
type Digest = BTreeMap<String, (Vec<u8>, u64)>;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn used_memory(server: &RedisServer) -> u64 {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Writes `count` keys named `<prefix><n>` directly on `server`, values of 200–800 bytes, every
/// other one with a TTL of 1–2 h.
async fn fill(server: &RedisServer, prefixes: &[&str], count: usize) -> Vec<String> {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let key = format!("{}{n}", prefixes[n % prefixes.len()]);
            let value: Vec<u8> = format!("{key}:{}", "v".repeat(200 + (n * 37) % 600)).into_bytes();
            if n % 2 == 0 {
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(3_600_000 + (n as u64 * 997) % 3_600_000)
                    .ignore();
            } else {
                pipe.cmd("SET").arg(&key).arg(value).ignore();
            }
            keys.push(key);
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    keys
}

/// Reads every key from wherever it is (the servers of the fleet), with its absolute expiry.
async fn digest(servers: &[&RedisServer], keys: &[String]) -> Digest {
    let mut out = Digest::new();
    for server in servers {
        let mut c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
            }
            let at = now_ms();
            let replies: Vec<redis::Value> = pipe.query_async(&mut c).await.unwrap();
            for (k, pair) in chunk.iter().zip(replies.chunks(2)) {
                if let (redis::Value::BulkString(v), redis::Value::Int(ttl)) = (&pair[0], &pair[1])
                {
                    let expiry = if *ttl > 0 { at + *ttl as u64 } else { 0 };
                    let previous = out.insert(k.clone(), (v.clone(), expiry));
                    assert!(previous.is_none(), "{k} exists on two instances");
                }
            }
        }
    }
    out
}

/// Same keys, same values, expiries within 100 ms.
fn assert_same(before: &Digest, after: &Digest) {
    let lost: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} keys lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for (k, (v, exp)) in before {
        let (v2, exp2) = &after[k];
        assert_eq!(v, v2, "{k} changed");
        assert_eq!(*exp == 0, *exp2 == 0, "{k}: TTL appeared or vanished");
        assert!(
            exp.abs_diff(*exp2) <= 100,
            "{k}: expiry drifted by {} ms",
            exp.abs_diff(*exp2)
        );
    }
}

async fn table(shop: &Shop) -> RoutingTable {
    let cm = shop.configmaps.get("shop-redis-routing").await.unwrap();
    RoutingTable::from_json(&cm.data.unwrap()[TABLE_KEY]).unwrap()
}

/// Waits for the rebalance to finish (Succeeded), returning the policy; fails on Failed.
async fn wait_rebalanced(
    shop: &Shop,
    node: &Node,
    after_plan: i64,
    timeout: Duration,
) -> CachePolicy {
    let deadline = Instant::now() + timeout;
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        if let Some(r) = p.status.as_ref().and_then(|s| s.rebalance.as_ref())
            && r.plan_id > after_plan
        {
            if r.phase == rebalance_phase::SUCCEEDED {
                return p;
            }
            assert_ne!(
                r.phase,
                rebalance_phase::FAILED,
                "{r:#?}\n{}",
                node.all_logs()
            );
        }
        if Instant::now() >= deadline {
            let _ = std::fs::write("/tmp/rebalance-operator.log", shop.operator.logs());
        }
        assert!(
            Instant::now() < deadline,
            "no finished rebalance after plan {after_plan}: {:#?}\n{}\n{}",
            p.status.and_then(|s| s.rebalance),
            node.all_logs(),
            shop.operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until both instances serve and no rebalance is running (joining instances may have
/// been rebalanced in, with no data); returns the table and the last plan id.
async fn settled(shop: &Shop) -> (RoutingTable, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let rb = p.status.as_ref().and_then(|s| s.rebalance.clone());
        let idle = rb
            .as_ref()
            .is_none_or(|r| r.phase == rebalance_phase::SUCCEEDED);
        if idle && let Ok(Some(cm)) = shop.configmaps.get_opt("shop-redis-routing").await {
            let t = RoutingTable::from_json(&cm.data.unwrap()[TABLE_KEY]).unwrap();
            let owners: std::collections::BTreeSet<&str> =
                t.categories.iter().flat_map(|c| c.owners()).collect();
            if owners.len() == 2 && t.migrating.is_empty() {
                return (t.clone(), rb.map_or(0, |r| r.plan_id));
            }
        }
        assert!(Instant::now() < deadline, "never settled: {:#?}", p.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fast_cooldown(policy: String) -> String {
    policy.replace("      cooldown: 5m\n", "      cooldown: 1s\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_past_its_threshold_is_rebalanced_and_nothing_is_lost() {
    let shop = shop_with("seed", fast_cooldown).await;
    let (t, plan) = settled(&shop).await;
    // The seed: hot data fills the primary past 80 % of its 30 MB; a little warm data.
    let hot = fill(
        &shop.primary,
        &["auth:", "session:", "order:", "notification:"],
        37_000,
    )
    .await;
    let warm = fill(&shop.secondary, &["user:", "menu:"], 4_000).await;
    let mut keys = hot;
    keys.extend(warm);
    let used = used_memory(&shop.primary).await;
    assert!(used * 100 > 31_457_280 * 80, "primary only at {used} bytes");
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    // Jobs run from now on (the plan may already wait for its Job).
    let node = Node::start(shop.cp, &shop.ns);

    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    let r = policy.status.as_ref().unwrap().rebalance.clone().unwrap();
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("above the 80% threshold"),
        "{r:?}"
    );
    assert!(
        r.moves
            .iter()
            .all(|m| m.from == "primary" && m.to == "secondary"),
        "{r:?}"
    );
    assert_eq!(r.keys_moved, r.keys_total);

    // No key lost, none changed, TTLs carried; and each key is where the new table says.
    let after = digest(&[&shop.primary, &shop.secondary], &keys).await;
    let _ = std::fs::write("/tmp/rebalance-operator.log", shop.operator.logs());
    let _ = std::fs::write("/tmp/rebalance-node.log", node.all_logs());
    assert_same(&before, &after);
    // Both between 40 % and 60 % of their combined use.
    let (a, b) = (
        used_memory(&shop.primary).await,
        used_memory(&shop.secondary).await,
    );
    let share = a as f64 / (a + b) as f64;
    let _ = std::fs::write("/tmp/rebalance-operator.log", shop.operator.logs());
    assert!(
        (0.4..=0.6).contains(&share),
        "primary holds {:.0}% ({a} vs {b}) after {r:#?}\n{}",
        share * 100.0,
        node.all_logs()
    );

    let final_table = table(&shop).await;
    assert!(final_table.migrating.is_empty());
    assert!(final_table.version > t.version);
    let resolver = Resolver::new(final_table).unwrap();
    let mut on_secondary = shop
        .secondary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for k in keys.iter().filter(|k| k.starts_with("auth:")).take(200) {
        let owner = resolver.instance_name(resolver.resolve(k.as_bytes()).owner);
        let there: bool = on_secondary.exists(k).await.unwrap();
        assert_eq!(there, owner == "secondary", "{k} should be on {owner}");
    }
}
