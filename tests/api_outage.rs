//! The API server stops answering in the middle of a copy (its process stopped, as a hung or
//! overloaded one would be): the rebalance Job reads and writes the policy while it copies
//! (the `pause` annotation, its progress), and none of that may hold the copy up, nor, while
//! the copy is paused, the keys sidecars ask for. Alone in its test binary: it stops the
//! binary's control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use redis::AsyncCommands;
use redis_fleet::api::cache_policy::{REBALANCE_CONTROL_ANNOTATION, rebalance_phase};
use redis_fleet::routing::config_map::table_of;
use redis_fleet::routing::table::RoutingTable;
use support::RedisServer;
use support::node::Node;
use support::process::signal;
use support::shop::{Shop, shop_with};
use support::sidecar::Sidecar;

/// The hot categories: filled on the primary past its threshold, so the plan moves some of
/// their slots to the secondary.
const HOT: &[&str] = &["auth:", "session:", "order:", "notification:"];

/// The copy's rate: slow enough that it is still copying long after the outage.
const KEYS_PER_SECOND: u64 = 500;

/// How long the API server does not answer.
const OUTAGE: Duration = Duration::from_secs(10);

/// Writes `count` keys of `HOT` on `server` (values of 200–800 bytes); returns each with its
/// value.
async fn fill(server: &RedisServer, count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut c = server.connection().await;
    let mut written = BTreeMap::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let key = format!("{}{n}", HOT[n % HOT.len()]);
            let value = format!("{key}:{}", "v".repeat(200 + (n * 37) % 600)).into_bytes();
            pipe.cmd("SET").arg(&key).arg(&value).ignore();
            written.insert(key, value);
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    written
}

/// Keys of `HOT` on `server`.
async fn hot_keys(server: &RedisServer) -> usize {
    let mut c = server.connection().await;
    let mut n = 0;
    for p in HOT {
        let keys: Vec<String> = c.keys(format!("{p}*")).await.unwrap();
        n += keys.len();
    }
    n
}

/// Sets (or, with `None`, removes) the policy's `redisfleet.io/rebalance` annotation.
async fn control(shop: &Shop, value: Option<&str>) {
    let patch =
        serde_json::json!({"metadata": {"annotations": {REBALANCE_CONTROL_ANNOTATION: value}}});
    shop.policies
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The `n`th pair of keys of one slot that a migration of `table` moves (`order:{tN}a`,
/// `order:{tN}b`).
fn pair_in_migrating_range(table: &RoutingTable, n: usize) -> (String, String) {
    (0..100_000)
        .map(|i| format!("{{t{i}}}"))
        .filter(|tag| {
            let slot = redis_fleet::routing::slots::key_slot(tag.as_bytes());
            table
                .migrating
                .iter()
                .any(|m| m.category == "order" && (m.start..=m.end).contains(&slot))
        })
        .nth(n)
        .map(|tag| (format!("order:{tag}a"), format!("order:{tag}b")))
        .expect("a migration of the order category")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_and_a_paused_copys_urgent_keys_go_on_while_the_api_server_does_not_answer() {
    let shop = shop_with("outage", |p| {
        p.replace("      cooldown: 5m\n", "      cooldown: 1s\n")
            .replace(
                "      keysPerSecond: 50000\n",
                &format!("      keysPerSecond: {KEYS_PER_SECOND}\n"),
            )
    })
    .await;
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let written = fill(&shop.primary, 37_000).await;
    let node = Node::start(shop.cp, &shop.ns);

    // Copying, a few thousand keys in.
    let deadline = Instant::now() + Duration::from_secs(120);
    let plan = loop {
        let p = shop.policies.get("shop").await.unwrap();
        if let Some(r) = p.status.and_then(|s| s.rebalance)
            && r.step.as_deref() == Some("Copying")
            && r.keys_moved.unwrap_or(0) >= 2_000
        {
            break r.plan_id;
        }
        assert!(
            Instant::now() < deadline,
            "no copy under way\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The API server stops answering: connections open, requests accepted, no reply.
    let apiserver = shop.cp.apiserver_pid().expect("the API server runs");
    let landed_before = hot_keys(&shop.secondary).await;
    assert!(signal(apiserver, "-STOP"));
    tokio::time::sleep(OUTAGE).await;
    let landed_during = hot_keys(&shop.secondary).await - landed_before;
    assert!(signal(apiserver, "-CONT"));

    // The batches already in flight when it stopped hold at most 8 × a tenth of a second of
    // the rate; the copy went on past them.
    let in_flight = 8 * KEYS_PER_SECOND as usize / 10;
    let logs = node.all_logs();
    assert!(
        landed_during > 2 * in_flight,
        "the copy stood still while the API server did not answer: {landed_during} keys landed in {OUTAGE:?} at {KEYS_PER_SECOND} keys/s\n{logs}"
    );

    // Paused, the copy still moves the keys a sidecar asks for (an `MGET` of a key that moved
    // and one that did not): with the API server stopped too.
    control(&shop, Some("pause")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let r = p.status.and_then(|s| s.rebalance).unwrap();
        if r.step.as_deref() == Some("Paused") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never held: {r:#?}\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cm = shop.configmaps.get("shop-redis-routing").await.unwrap();
    let table = table_of(&cm).unwrap().unwrap();
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut app = redis::Client::open(format!("redis://127.0.0.1:{}", sidecar.port))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut target = shop.secondary.connection().await;
    let mut source = shop.primary.connection().await;
    assert!(signal(apiserver, "-STOP"));
    // Long enough for the held Job to read the policy again (once a second). Then twice: the
    // key moved for the first MGET makes a report of the hold due (its count changed) before
    // the second.
    for (n, wait) in [(0, Duration::from_secs(3)), (1, Duration::from_secs(6))] {
        tokio::time::sleep(wait).await;
        // One of them moved already (on the target only), the other not yet (on the source).
        let (moved, waiting) = pair_in_migrating_range(&table, n);
        let () = target.set(&moved, "landed").await.unwrap();
        let () = source.set(&waiting, "to move").await.unwrap();
        let answered: redis::RedisResult<Vec<Option<Vec<u8>>>> =
            app.mget(&[&moved, &waiting]).await;
        let moved_meanwhile: bool = target.exists(&waiting).await.unwrap();
        if answered.is_err() || !moved_meanwhile {
            assert!(signal(apiserver, "-CONT"));
        }
        assert_eq!(
            answered.unwrap_or_else(|e| panic!(
                "MGET {moved} {waiting} through the sidecar, the copy paused, the API server stopped: {e}\n{}",
                node.all_logs()
            )),
            vec![Some(b"landed".to_vec()), Some(b"to move".to_vec())]
        );
        assert!(moved_meanwhile, "{waiting} was not moved for the MGET");
    }
    assert!(signal(apiserver, "-CONT"));
    control(&shop, None).await;

    // And the plan finishes with every key where the table says, value intact.
    let deadline = Instant::now() + Duration::from_secs(180);
    let moved_in_all = loop {
        let p = shop.policies.get("shop").await.unwrap();
        let r = p.status.and_then(|s| s.rebalance).unwrap();
        if r.plan_id == plan && r.phase == rebalance_phase::SUCCEEDED {
            break r.keys_moved.unwrap_or(0);
        }
        assert_ne!(
            r.phase,
            rebalance_phase::FAILED,
            "{r:#?}\n{}",
            node.all_logs()
        );
        assert!(
            Instant::now() < deadline,
            "the plan did not finish: {r:#?}\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut found = 0;
    for server in [&shop.primary, &shop.secondary] {
        let mut c = server.connection().await;
        let keys: Vec<&String> = written.keys().collect();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> = c.mget(chunk).await.unwrap();
            for (k, v) in chunk.iter().zip(values) {
                if let Some(v) = v {
                    assert_eq!(&v, &written[*k], "{k} changed");
                    found += 1;
                }
            }
        }
    }
    assert_eq!(found, written.len(), "keys lost (or on both instances)");
    eprintln!(
        "api outage: {landed_during} keys landed in {OUTAGE:?} without an API server (the batches in flight hold {in_flight} at most); the plan moved {moved_in_all} keys"
    );
}
