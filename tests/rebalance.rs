//! Rebalancing against a real apiserver, real redis-servers, the real operator, the real Job
//! command (run by `support::node`, since there is no kubelet) and the real sidecar: data
//! moves online and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use redis::AsyncCommands;
use redis_fleet::api::cache_policy::{CachePolicy, rebalance_phase};
use redis_fleet::routing::Resolver;
use redis_fleet::routing::config_map::table_of;
use redis_fleet::routing::table::{ReplicationMode, RoutingTable};
use support::RedisServer;
use support::node::Node;
use support::operator::Operator;
use support::shop::{
    SHOP_SECRETS, Shop, apply_third_instance, apply_third_instance_in, kubectl_apply,
    server_with_password, shop_configured, shop_with,
};
use support::sidecar::Sidecar;

/// A key's content: value, and absolute expiry (ms since the epoch; 0 without one).
type Digest = BTreeMap<String, (Vec<u8>, u64)>;

/// Writes `count` keys named `<prefix><n>` directly on `server`, values of 200–800 bytes, every
/// other one with a TTL of 1–2 h.
async fn fill(server: &RedisServer, prefixes: &[&str], count: usize) -> Vec<String> {
    let mut c = server.bookkeeping_connection().await;
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

/// Each of `keys` present on `conn`, with its value and absolute expiry (0: none), read with
/// GET + PEXPIRETIME pipelines of `chunk` keys (exact, whatever the time the reads take).
async fn read_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    chunk: usize,
) -> Vec<(String, (Vec<u8>, u64))> {
    let mut out = Vec::new();
    for chunk in keys.chunks(chunk) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("GET").arg(k).cmd("PEXPIRETIME").arg(k);
        }
        let replies: Vec<redis::Value> = pipe.query_async(conn).await.unwrap();
        for (k, pair) in chunk.iter().zip(replies.chunks(2)) {
            if let (redis::Value::BulkString(v), redis::Value::Int(at)) = (&pair[0], &pair[1]) {
                let expiry = if *at > 0 { *at as u64 } else { 0 };
                out.push((k.clone(), (v.clone(), expiry)));
            }
        }
    }
    out
}

/// Reads every key from wherever it is (the servers of the fleet), with its absolute expiry.
async fn digest(servers: &[&RedisServer], keys: &[String]) -> Digest {
    let mut out = Digest::new();
    for server in servers {
        let mut c = server.bookkeeping_connection().await;
        for (k, entry) in read_keys(&mut c, keys, 500).await {
            let previous = out.insert(k.clone(), entry);
            assert!(previous.is_none(), "{k} exists on two instances");
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

/// [`digest`] of the fleet while no plan moves data: a plan that moves keys between the reads
/// of two instances would show a key on both (or on neither). Retried until the plan in
/// status was finished before and after the reads.
async fn settled_digest(shop: &Shop, servers: &[&RedisServer], keys: &[String]) -> Digest {
    let idle = |p: &CachePolicy| {
        p.status
            .as_ref()
            .and_then(|s| s.rebalance.as_ref())
            .map(|r| {
                (
                    r.plan_id,
                    matches!(r.phase.as_str(), "Succeeded" | "Failed" | ""),
                )
            })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = idle(&shop.policies.get("shop").await.unwrap());
        if before.is_some_and(|(_, done)| done) {
            let mut out = Digest::new();
            let mut twice = false;
            for server in servers {
                let mut c = server
                    .client()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                for (k, entry) in read_keys(&mut c, keys, 500).await {
                    twice |= out.insert(k, entry).is_some();
                }
            }
            let after = idle(&shop.policies.get("shop").await.unwrap());
            if after == before {
                assert!(!twice, "a key exists on two instances while no plan runs");
                return out;
            }
        }
        assert!(Instant::now() < deadline, "the fleet never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn table(shop: &Shop) -> RoutingTable {
    let cm = shop.configmaps.get("shop-redis-routing").await.unwrap();
    table_of(&cm).unwrap().unwrap()
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
            let t = table_of(&cm).unwrap().unwrap();
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
    let used = shop.primary.used_memory().await;
    assert!(used * 100 > 31_457_280 * 80, "primary only at {used} bytes");
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    // What older plans left (a rolled-back plan, an abandoned one; plans are named by the
    // table version they were made from): the plan's cleanup removes it from its source and
    // target; another policy's stays.
    let policy_key = format!("{}/shop", shop.ns);
    // The plan is made from the settled table or a later one.
    let (old, older) = (0, t.version.saturating_sub(1));
    let (older_on_source, older_on_target) = (
        [
            format!("redisfleet:group:{policy_key}:{old}:all"),
            format!("redisfleet:group:{policy_key}:{older}:7"),
            format!("redisfleet:importing:{policy_key}:{older}:auth:0-99"),
            format!("redisfleet:imported:{policy_key}:{old}:auth:0-99"),
        ],
        [format!(
            "redisfleet:imported:{policy_key}:{older}:auth:0-99"
        )],
    );
    let others = format!("redisfleet:group:{}-other/shop:1:7", shop.ns);
    let mut source = shop
        .primary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut target = shop
        .secondary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for k in older_on_source.iter().chain([&others]) {
        let () = source.set(k, "moved").await.unwrap();
    }
    for k in &older_on_target {
        let () = target.set(k, "1").await.unwrap();
    }
    // Jobs run from now on (the plan may already wait for its Job).
    let node = Node::start(shop.cp, &shop.ns);

    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    for k in &older_on_source {
        assert!(
            !source.exists::<_, bool>(k).await.unwrap(),
            "{k} left on the source (table {})",
            t.version
        );
    }
    for k in &older_on_target {
        assert!(
            !target.exists::<_, bool>(k).await.unwrap(),
            "{k} left on the target"
        );
    }
    assert!(
        source.exists::<_, bool>(&others).await.unwrap(),
        "another policy's key went"
    );
    let left: Vec<String> = source
        .keys(format!("redisfleet:group:{policy_key}:*"))
        .await
        .unwrap();
    assert!(left.is_empty(), "slot group states left: {left:?}");
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
        shop.primary.used_memory().await,
        shop.secondary.used_memory().await,
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

async fn set_eviction_policy(server: &RedisServer, policy: &str) {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg(policy)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// The `status`, `reason` and `message` of a condition of the policy, once `cond` holds.
async fn wait_policy_condition(
    shop: &Shop,
    kind: &str,
    what: &str,
    cond: impl Fn(&str, &str, &str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let c = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind).cloned());
        if let Some(c) = &c
            && cond(&c.status, &c.reason, &c.message)
        {
            return c.message.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {c:#?}\n{}",
            shop.operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A source whose `maxmemory-policy` may evict keys without a TTL (`allkeys-lru`) could lose
/// the protocol's own keys mid-move (a marker, a tombstone, a slot group state) and with them
/// acknowledged writes. The operator reports the policy on the RedisInstance, moves nothing
/// out of it while it stands — the primary past its threshold keeps every key, and the policy
/// says why — and rebalances once the policy is one that keeps keys without a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_moves_out_of_an_instance_that_may_evict_keys_without_a_ttl_until_its_policy_is_fixed()
 {
    let shop = shop_with("evicting", fast_cooldown).await;
    let (_, plan) = settled(&shop).await;
    set_eviction_policy(&shop.primary, "allkeys-lru").await;
    let hot = fill(
        &shop.primary,
        &["auth:", "session:", "order:", "notification:"],
        37_000,
    )
    .await;
    let before = digest(&[&shop.primary, &shop.secondary], &hot).await;
    let node = Node::start(shop.cp, &shop.ns);

    // The instance says what its policy is and why it matters.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ri = shop.instances.get("primary").await.unwrap();
        let status = ri.status.clone().unwrap_or_default();
        let safe = status.conditions.iter().find(|c| c.type_ == "EvictionSafe");
        if status.eviction_policy.as_deref() == Some("allkeys-lru")
            && safe.is_some_and(|c| c.status == "False" && c.reason == "EvictsKeysWithoutTTL")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The policy holds the threshold's moves back, says why, and records one Event.
    let note = wait_policy_condition(&shop, "Rebalancing", "moves held back", |s, r, _| {
        s == "False" && r == "HeldBack"
    })
    .await;
    assert!(note.contains("primary (allkeys-lru)"), "{note}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = shop.policies.get("shop").await.unwrap();
    let status = p.status.clone().unwrap();
    assert!(
        status.rebalance.as_ref().is_none_or(|r| r.plan_id == plan),
        "a plan started out of an evicting source: {:#?}",
        status.rebalance
    );
    assert!(
        status
            .recommendations
            .iter()
            .any(|r| r.starts_with("primary: maxmemory-policy allkeys-lru")),
        "{:?}",
        status.recommendations
    );
    assert_eq!(
        events_of(&shop, "RebalanceHeldBack").await.len(),
        1,
        "one Event, not one per reconcile"
    );
    assert!(
        events_of(&shop, "EvictionPolicyUnsafe")
            .await
            .iter()
            .any(|n| n.contains("allkeys-lru")),
    );
    let prefixes = ["auth:", "session:", "order:", "notification:"];
    assert_eq!(count_on(&shop.primary, &prefixes).await, hot.len());
    assert_eq!(count_on(&shop.secondary, &prefixes).await, 0);

    // Fixed: the instance is safe again, the plan runs, nothing is lost.
    set_eviction_policy(&shop.primary, "volatile-lru").await;
    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    let r = policy.status.unwrap().rebalance.unwrap();
    assert!(r.moves.iter().all(|m| m.from == "primary"), "{r:#?}");
    assert_eq!(r.keys_moved, r.keys_total);
    assert!(r.keys_moved.unwrap_or(0) > 0, "{r:#?}");
    let after = digest(&[&shop.primary, &shop.secondary], &hot).await;
    assert_same(&before, &after);
    let ri = shop.instances.get("primary").await.unwrap();
    assert!(
        ri.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "EvictionSafe" && c.status == "True")
    );
    assert!(!events_of(&shop, "EvictionPolicySafe").await.is_empty());
}

/// Values too big for one DUMP (over 8 MiB of `MEMORY USAGE`) move piece by piece, and arrive
/// whole: a hash and a list on the primary, which drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_too_big_for_one_dump_move_piece_by_piece_and_arrive_whole() {
    let shop = shop_with("big", fast_cooldown).await;
    let (_, plan) = settled(&shop).await;
    let mut p = shop
        .primary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A hash (pieces counted by HSET's replies) and a list (by the items pushed).
    let fields: Vec<(String, String)> = (0..60_000)
        .map(|i| (format!("f{i}"), format!("{i:0>150}")))
        .collect();
    for chunk in fields.chunks(5_000) {
        let () = redis::cmd("HSET")
            .arg("auth:big-hash")
            .arg(chunk)
            .query_async(&mut p)
            .await
            .unwrap();
    }
    let items: Vec<String> = (0..85_000).map(|i| format!("{i:0>100}")).collect();
    for chunk in items.chunks(10_000) {
        let () = redis::cmd("RPUSH")
            .arg("auth:big-list")
            .arg(chunk)
            .query_async(&mut p)
            .await
            .unwrap();
    }
    // The Job copies a value piece by piece above 8 MiB of MEMORY USAGE.
    for key in ["auth:big-hash", "auth:big-list"] {
        let size: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut p)
            .await
            .unwrap();
        assert!(size > 8 << 20, "{key}: {size} bytes are moved in one DUMP");
    }
    let node = Node::start(shop.cp, &shop.ns);
    let patch = serde_json::json!({"spec": {"drain": true}});
    shop.instances
        .patch("primary", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(180)).await;
    let r = policy.status.unwrap().rebalance.unwrap();
    assert!(r.keys_moved.unwrap_or(0) >= 2, "{r:#?}");
    let mut s = shop
        .secondary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Read back in slices: one reply of 9 MB can outlast the client's response timeout on a
    // busy machine.
    let mut hash = std::collections::HashMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg("auth:big-hash")
            .arg(cursor)
            .arg("COUNT")
            .arg(2_000)
            .query_async(&mut s)
            .await
            .unwrap();
        hash.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(
        hash.len() == fields.len() && fields.iter().all(|(f, v)| hash.get(f) == Some(v)),
        "the big hash did not arrive whole ({} fields)",
        hash.len()
    );
    let mut list: Vec<String> = Vec::new();
    for start in (0..items.len()).step_by(5_000) {
        let slice: Vec<String> = s
            .lrange("auth:big-list", start as isize, start as isize + 4_999)
            .await
            .unwrap();
        list.extend(slice);
    }
    assert!(
        list == items,
        "the big list did not arrive whole ({} items)",
        list.len()
    );
    let left: usize = p.exists(&["auth:big-hash", "auth:big-list"]).await.unwrap();
    assert_eq!(left, 0);
    // The assembly's hour-long TTL was lifted: the values had none.
    for key in ["auth:big-hash", "auth:big-list"] {
        let ttl: i64 = s.pttl(key).await.unwrap();
        assert_eq!(ttl, -1, "{key}");
    }
    let temps: Vec<String> = redis::cmd("KEYS")
        .arg("redisfleet:*")
        .query_async(&mut s)
        .await
        .unwrap();
    assert!(
        !temps.iter().any(|k| k.contains("restore")),
        "assemblies left on the target: {temps:?}"
    );
}

/// What the clients of [`traffic`] were told, per key; each worker owns its keys, so this is
/// exact. A command that failed leaves its key uncertain between the outcomes it could have had.
#[derive(Debug, Default)]
struct Ledger {
    /// Last acknowledged SET value, and values of failed SETs since.
    values: BTreeMap<String, (Option<String>, Vec<String>)>,
    /// Acknowledged INCRs, and failed ones.
    counters: BTreeMap<String, (i64, i64)>,
    /// Keys acknowledged as deleted and never written again.
    deleted: std::collections::BTreeSet<String>,
    /// Keys acknowledged with an EXPIRE of an hour.
    expiring: std::collections::BTreeSet<String>,
    /// Keys whose DEL failed since their last acknowledged SET: they may be gone.
    maybe_deleted: std::collections::BTreeSet<String>,
    /// Reads that returned what no write of the key could have left there.
    stale: Vec<String>,
    ops: u64,
    errors: Vec<String>,
    latencies_us: Vec<u64>,
}

impl Ledger {
    fn merge(&mut self, other: Ledger) {
        self.values.extend(other.values);
        self.counters.extend(other.counters);
        self.deleted.extend(other.deleted);
        self.expiring.extend(other.expiring);
        self.maybe_deleted.extend(other.maybe_deleted);
        self.stale.extend(other.stale);
        self.ops += other.ops;
        self.errors.extend(other.errors);
        self.latencies_us.extend(other.latencies_us);
    }

    /// Whether `got` is what a read of `key` may return: its last acknowledged value, a value
    /// of a failed SET since, or nothing when it was never written, deleted, or may have been.
    fn readable(&self, key: &str, got: &Option<String>) -> bool {
        match self.values.get(key) {
            None => got.is_none(),
            Some((acked, failed)) => {
                got == acked
                    || got.as_ref().is_some_and(|g| failed.contains(g))
                    || (got.is_none() && self.maybe_deleted.contains(key))
            }
        }
    }

    /// Takes note of a read of `key` that returned `got` (readable): a failed SET or DEL that
    /// a read saw has landed, so the last acknowledged value, written before it, may not be
    /// read again (the history is judged as a whole, not read by read). Every failed write
    /// stays possible: one the sidecar was still retrying when the client gave up may land
    /// after a later one.
    fn observe(&mut self, key: &str, got: &Option<String>) {
        if let Some((acked, _)) = self.values.get_mut(key) {
            acked.clone_from(got);
        }
    }

    fn p99_us(&self) -> u64 {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        l.get(l.len() * 99 / 100).copied().unwrap_or(0)
    }
}

/// Clients writing through the sidecar at a steady pace until stopped: SET, INCR, DEL, EXPIRE
/// and GET over keys of `prefixes` (each worker its own keys), every read checked against the
/// worker's ledger as it returns.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Ledger>>,
}

impl Traffic {
    fn start(port: u16, prefixes: &'static [&'static str], workers: usize) -> Traffic {
        Self::spawn(port, prefixes, workers, false)
    }

    /// Traffic that runs while an instance fails over without replicas: its keys are
    /// unavailable meanwhile (read as nil from the fallback), the protocol's one exception.
    fn start_across_failover(
        port: u16,
        prefixes: &'static [&'static str],
        workers: usize,
    ) -> Traffic {
        Self::spawn(port, prefixes, workers, true)
    }

    /// Traffic that goes on from `ledgers` (one per worker, from [`Traffic::stop_each`]).
    fn resume(port: u16, prefixes: &'static [&'static str], ledgers: Vec<Ledger>) -> Traffic {
        Self::spawn_with(port, prefixes, ledgers, false)
    }

    fn spawn(
        port: u16,
        prefixes: &'static [&'static str],
        workers: usize,
        failover: bool,
    ) -> Traffic {
        let ledgers = (0..workers).map(|_| Ledger::default()).collect();
        Self::spawn_with(port, prefixes, ledgers, failover)
    }

    fn spawn_with(
        port: u16,
        prefixes: &'static [&'static str],
        ledgers: Vec<Ledger>,
        failover: bool,
    ) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = ledgers
            .into_iter()
            .enumerate()
            .map(|(w, ledger)| {
                let stop = stop.clone();
                tokio::spawn(async move { work(port, prefixes, w, failover, stop, ledger).await })
            })
            .collect();
        Traffic { stop, workers }
    }

    /// Stops the workers; each one's ledger, in order.
    async fn stop_each(self) -> Vec<Ledger> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = Vec::new();
        for w in self.workers {
            all.push(w.await.unwrap());
        }
        all
    }

    async fn stop(self) -> Ledger {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = Ledger::default();
        for w in self.workers {
            all.merge(w.await.unwrap());
        }
        all
    }
}

async fn work(
    port: u16,
    prefixes: &[&str],
    worker: usize,
    failover: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut ledger: Ledger,
) -> Ledger {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut i: u64 = ledger.ops;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        i += 1;
        let prefix = prefixes[(i as usize / 5) % prefixes.len()];
        let n = (i * 7919) % 400;
        let started = Instant::now();
        let (key, outcome) = match i % 5 {
            0 | 1 => {
                let key = format!("{prefix}t{worker}:{n}");
                let value = format!("{worker}-{i}");
                let r: redis::RedisResult<()> = conn.set(&key, &value).await;
                let entry = ledger.values.entry(key.clone()).or_default();
                match &r {
                    Ok(()) => *entry = (Some(value), Vec::new()),
                    Err(_) => entry.1.push(value),
                }
                ledger.deleted.remove(&key);
                ledger.expiring.remove(&key);
                if r.is_ok() {
                    ledger.maybe_deleted.remove(&key);
                }
                (key, r.map(|_| ()))
            }
            2 => {
                let key = format!("{prefix}c{worker}:{}", n % 50);
                let r: redis::RedisResult<i64> = conn.incr(&key, 1).await;
                let entry = ledger.counters.entry(key.clone()).or_default();
                match &r {
                    Ok(_) => entry.0 += 1,
                    Err(_) => entry.1 += 1,
                }
                (key, r.map(|_| ()))
            }
            3 => {
                let key = format!("{prefix}t{worker}:{n}");
                let r: redis::RedisResult<Option<String>> = conn.get(&key).await;
                // Across a failover without replicas a key may read as missing meanwhile.
                if let Ok(got) = &r
                    && !(failover && got.is_none())
                {
                    if ledger.readable(&key, got) {
                        ledger.observe(&key, got);
                    } else {
                        ledger.stale.push(format!(
                            "{key}: read {got:?}, {:?}",
                            ledger.values.get(&key)
                        ));
                    }
                }
                (key, r.map(|_| ()))
            }
            _ => {
                let key = format!("{prefix}t{worker}:{n}");
                if n.is_multiple_of(2) {
                    let r: redis::RedisResult<i64> = conn.del(&key).await;
                    if r.is_ok() {
                        ledger.values.remove(&key);
                        ledger.expiring.remove(&key);
                        ledger.maybe_deleted.remove(&key);
                        ledger.deleted.insert(key.clone());
                    } else {
                        // Deleted or not: either is fine, as long as the value is a known one.
                        ledger.deleted.remove(&key);
                        ledger.maybe_deleted.insert(key.clone());
                    }
                    (key, r.map(|_| ()))
                } else {
                    let r: redis::RedisResult<bool> = conn.expire(&key, 3600).await;
                    if let Ok(true) = r {
                        ledger.expiring.insert(key.clone());
                    }
                    (key, r.map(|_| ()))
                }
            }
        };
        ledger
            .latencies_us
            .push(started.elapsed().as_micros() as u64);
        ledger.ops += 1;
        if let Err(e) = outcome {
            ledger.errors.push(format!("{key}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ledger
}

/// `cmd` through `c`, sent again (for up to 10 s) while the fleet answers with an error a
/// client is told to retry (a fence closed a connection, a range is handed on): what is checked
/// is the value, once the fleet answers.
async fn retrying<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.query_async(c).await {
            Ok(v) => return v,
            Err(e)
                if Instant::now() < deadline
                    && matches!(e.code(), Some("TRYAGAIN" | "UNAVAILABLE")) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{cmd:?}: {e}"),
        }
    }
}

/// Checks every acknowledged write through a connection to the fleet (the sidecar).
async fn assert_ledger(port: u16, ledger: &Ledger) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    assert!(
        ledger.stale.is_empty(),
        "{} stale reads while the data moved: {:?}",
        ledger.stale.len(),
        &ledger.stale[..ledger.stale.len().min(5)]
    );
    for (key, (acked, failed)) in &ledger.values {
        let got: Option<String> = retrying(&mut c, redis::cmd("GET").arg(key)).await;
        assert!(
            ledger.readable(key, &got),
            "{key}: {got:?}, acknowledged {acked:?} (failed attempts {failed:?})"
        );
        if ledger.expiring.contains(key) && got == *acked {
            let ttl: i64 = retrying(&mut c, redis::cmd("PTTL").arg(key)).await;
            assert!(ttl > 0, "{key} lost its TTL ({ttl})");
        }
    }
    for (key, (acked, failed)) in &ledger.counters {
        let got: Option<i64> = retrying(&mut c, redis::cmd("GET").arg(key)).await;
        let got = got.unwrap_or(0);
        assert!(
            (*acked..=acked + failed).contains(&got),
            "{key} = {got}, {acked} INCRs acknowledged ({failed} failed)"
        );
    }
    for key in &ledger.deleted {
        let there: bool = retrying(&mut c, redis::cmd("EXISTS").arg(key)).await;
        assert!(!there, "{key} came back after its DEL was acknowledged");
    }
}

/// Reads `keys` through the sidecar as a digest (value and absolute expiry). The client waits
/// up to 10 s for a pipeline (the redis crate's own limit is 500 ms): what this checks is that
/// every key reads back, and 400 guarded commands mid-migration on a machine shared with other
/// work took longer than that.
async fn digest_through(port: u16, keys: &[String]) -> Digest {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    read_keys(&mut c, keys, 200).await.into_iter().collect()
}

const TRAFFIC_PREFIXES: &[&str] = &["user:", "menu:", "auth:", "order:", "ml:"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_instance_takes_a_share_of_the_data_under_live_traffic() {
    let shop = shop_with("join", fast_cooldown).await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let hot = fill(&shop.primary, &["auth:s", "order:s"], 6_000).await;
    let warm = fill(&shop.secondary, &["user:s", "menu:s", "ml:s"], 12_000).await;
    let mut keys = hot;
    keys.extend(warm);
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // GitOps applies the third instance.
    let tertiary = apply_third_instance(&shop);

    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = traffic.stop().await;
    let r = policy.status.unwrap().rebalance.unwrap();
    assert!(
        r.moves
            .iter()
            .all(|m| m.to == "tertiary" && m.from == "secondary"),
        "{r:#?}"
    );
    assert!(r.keys_moved.unwrap_or(0) > 0, "{r:#?}");

    // The seed data: all there, unchanged, exactly once, and some of it on the newcomer.
    let after = digest(&[&shop.primary, &shop.secondary, &tertiary], &keys).await;
    assert_same(&before, &after);
    // Through the sidecar (whose reads may extend adaptive TTLs): every value.
    let through = digest_through(sidecar.port, &keys).await;
    assert_eq!(through.len(), before.len());
    assert!(before.iter().all(|(k, (v, _))| through[k].0 == *v));
    let on_tertiary = digest(&[&tertiary], &keys).await.len();
    assert!(
        on_tertiary > 1000,
        "only {on_tertiary} keys moved to tertiary"
    );
    // The traffic: every acknowledged write, counter and delete, and every read as it
    // returned.
    assert_ledger(sidecar.port, &ledger).await;
    assert!(ledger.ops > 1000, "only {} operations", ledger.ops);
    // The newcomer's imported markers went with the plan.
    let on_target = support::series_value(
        &sidecar.metrics(),
        "redisfleet_sidecar_reads_on_target_total",
    )
    .unwrap();
    let mut on_tertiary_conn = tertiary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let markers: Vec<String> = on_tertiary_conn
            .keys("redisfleet:imported:*")
            .await
            .unwrap();
        if markers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the target kept {markers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ledger.errors.len() * 100 <= ledger.ops as usize,
        "{} of {} commands failed: {:?}",
        ledger.errors.len(),
        ledger.ops,
        &ledger.errors[..ledger.errors.len().min(5)]
    );
    eprintln!(
        "join: {} keys moved in plan {}, traffic {} ops, {} errors, p99 {} µs, {on_target} reads served by the target first",
        r.keys_moved.unwrap_or(0),
        r.plan_id,
        ledger.ops,
        ledger.errors.len(),
        ledger.p99_us()
    );
}

fn slow_copy(policy: String) -> String {
    fast_cooldown(policy).replace(
        "      keysPerSecond: 50000\n",
        "      keysPerSecond: 2500\n",
    )
}

/// The most keys a rebalance pod's log says it copied (`step="Copying" moved=N`).
fn copied_in_log(log: &str) -> i64 {
    log.lines()
        .filter(|l| l.contains("step=\"Copying\""))
        .filter_map(|l| {
            l.split("moved=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the running plan reports at least `moved` keys copied.
async fn wait_copying(shop: &Shop, node: &Node, moved: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let r = p.status.and_then(|s| s.rebalance);
        if r.as_ref().is_some_and(|r| {
            r.step.as_deref() == Some("Copying") && r.keys_moved.unwrap_or(0) >= moved
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never got to {moved} keys: {r:#?}\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_job_and_a_restarted_operator_resume_where_they_stopped() {
    let mut shop = shop_with("resume", slow_copy).await;
    let (_, plan) = settled(&shop).await;
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let mut keys = fill(
        &shop.primary,
        &["auth:", "session:", "order:", "notification:"],
        37_000,
    )
    .await;
    keys.extend(fill(&shop.secondary, &["user:", "menu:"], 4_000).await);
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    let node = Node::start(shop.cp, &shop.ns);
    let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 2);

    // The node dies mid-copy: the operator starts another attempt (a new Job, a new mover
    // token), which resumes from the checkpoint.
    wait_copying(&shop, &node, 4_000).await;
    let plan_id_started = shop
        .policies
        .get("shop")
        .await
        .unwrap()
        .status
        .and_then(|s| s.rebalance)
        .map(|r| r.plan_id)
        .unwrap();
    let killed: Vec<String> = node.running().into_iter().map(|(name, _)| name).collect();
    assert_eq!(node.kill_running(), 1);
    // And the operator restarts while the second attempt copies: a pod other than the killed
    // one logged its own copy progress (the status keeps the first attempt's figures until the
    // second one reports, so it cannot tell).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = node
            .running()
            .into_iter()
            .filter(|(name, _)| !killed.contains(name))
            .map(|(name, _)| copied_in_log(&node.pod_log(&name)))
            .max()
            .unwrap_or(0);
        if copied >= 1_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second attempt never copied 1 000 keys: {}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shop.operator.kill();
    shop.operator = Operator::start(shop.cp, &shop.ns);

    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(180)).await;
    let ledger = traffic.stop().await;
    let r = policy.status.unwrap().rebalance.unwrap();
    let logs = node.all_logs();
    assert!(logs.contains("resuming from the checkpoint"), "{logs}");
    assert_eq!(
        node.finished.lock().unwrap().len(),
        2,
        "one killed pod, one that finished: {logs}\n==> the operator\n{}",
        shop.operator.logs()
    );
    assert_eq!(
        (r.plan_id, r.attempts),
        (plan_id_started, 2),
        "one retry of the same plan, not a new plan: {r:#?}"
    );

    let after = digest(&[&shop.primary, &shop.secondary], &keys).await;
    assert_same(&before, &after);
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "resume: {} keys in the last pod, traffic {} ops, {} errors, p99 {} µs",
        r.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len(),
        ledger.p99_us()
    );
}

/// A plan's Job deleted again and again mid-copy (by hand, by a tool that prunes what it did
/// not create), its pods left running: each deletion starts a new attempt with a new mover
/// token, until the plan's attempts are spent; then a missing Job waits for its retry as a
/// failed one does, and the status says so, rather than the operator creating Jobs in a loop.
/// A `rebalance-now` annotation retries at once, and the plan finishes with every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_again_and_again_is_retried_slower_once_its_attempts_are_spent() {
    let mut join = SlowJoin::start("deleted-jobs").await;
    let (shop, node, plan) = (&join.shop, &join.node, join.plan);

    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(shop.cp.client().await, &shop.ns);
    let mut attempts = rebalance_of(shop).await.attempts;
    let plan_id = rebalance_of(shop).await.plan_id;
    loop {
        let r = rebalance_of(shop).await;
        jobs.delete(
            r.job.as_deref().unwrap(),
            &kube::api::DeleteParams::background(),
        )
        .await
        .unwrap();
        if attempts >= 4 {
            break;
        }
        let next = wait_status(shop, Some(node), "no new attempt", |r| {
            r.attempts > attempts
        })
        .await;
        attempts = next.status.unwrap().rebalance.unwrap().attempts;
        // Let the new attempt start copying before its Job goes too.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(attempts, 4, "the plan's attempts");
    let waiting = wait_status(shop, Some(node), "the missing Job was not reported", |r| {
        r.message
            .as_deref()
            .is_some_and(|m| m.starts_with("the Job of attempt 4 is gone; retrying in"))
    })
    .await;
    let r = waiting.status.unwrap().rebalance.unwrap();
    assert_eq!((r.plan_id, r.attempts), (plan_id, 4), "{r:#?}");
    // No Job is created meanwhile: the fifth attempt waits for its delay (a minute).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = rebalance_of(shop).await;
    assert_eq!(still.attempts, 4, "{still:#?}");
    let listed = jobs.list(&Default::default()).await.unwrap();
    assert!(
        listed.items.is_empty(),
        "a Job was created while the retry waits: {:?}",
        listed
            .items
            .iter()
            .map(|j| j.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    // The wait is kept in status: an operator restarted meanwhile goes on with it rather than
    // starting it again (one that restarts more often than the wait would never retry).
    let since = still.job_missing_since.clone().expect("jobMissingSince");
    let left = |r: &redis_fleet::api::cache_policy::RebalanceStatus| -> u64 {
        let m = r.message.as_deref().unwrap_or_default();
        m.split("retrying in ")
            .nth(1)
            .and_then(|t| t.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no wait in {m:?}"))
    };
    let first_left = left(&r);
    join.shop.operator.kill();
    let message_before = rebalance_of(&join.shop).await.message;
    join.shop.operator = Operator::start(join.shop.cp, &join.shop.ns);
    let shop = &join.shop;
    // The countdown the restarted operator wrote (it changes the message every second; the
    // one the killed operator left stays as it was). Under a loaded machine the restarted
    // operator may only reconcile once the wait is over: then the retry is what it shows.
    let deadline = Instant::now() + Duration::from_secs(120);
    let restarted = loop {
        let r = rebalance_of(shop).await;
        let counting = r.message != message_before
            && r.message
                .as_deref()
                .is_some_and(|m| m.contains("retrying in"));
        if counting || r.attempts > 4 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted operator wrote no status: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if restarted.attempts == 4 {
        assert_eq!(restarted.job_missing_since, Some(since), "{restarted:#?}");
        // At least the 5 s above have passed since the first report of the wait.
        assert!(
            left(&restarted) + 5 <= first_left,
            "the wait started again after the restart: {} s left, {first_left} s when first reported",
            left(&restarted)
        );
    } else {
        eprintln!(
            "the restarted operator first reported attempt {}: the countdown was not seen",
            restarted.attempts
        );
    }

    // The user asks for it now: the next attempt starts at once and the plan finishes.
    shop.policies
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"redisfleet.io/rebalance-now": "after-deletes"}}
            })),
        )
        .await
        .unwrap();
    let policy = wait_rebalanced(shop, node, plan, Duration::from_secs(180)).await;
    let done = policy.status.unwrap().rebalance.unwrap();
    assert_eq!(done.plan_id, plan_id, "the same plan finished: {done:#?}");
    assert!(done.attempts >= 5, "{done:#?}");
    assert_eq!(done.keys_moved, done.keys_total, "{done:#?}");

    let ledger = join.check().await;
    eprintln!(
        "deleted Jobs: {} attempts, {} keys moved; traffic {} ops, {} errors",
        done.attempts,
        done.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_rebalancing_off_mid_plan_lets_the_plan_finish_and_loses_nothing() {
    // `spec.balancing.rebalance.enabled: false` while a join's Job copies: the operator
    // stopped driving the plan (no Job followed, no finalize), so it stayed in Finalizing for
    // good with both copies of the moved ranges, and no dead end would have been abandoned.
    // Off means no new plan; the plan under way runs to its end.
    let shop = shop_with("rebalance-off", slow_copy).await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let keys = fill(&shop.secondary, &["user:s", "menu:s", "ml:s"], 30_000).await;
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 2);
    let tertiary = apply_third_instance(&shop);

    wait_copying(&shop, &node, 2_000).await;
    shop.policies
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "spec": {"balancing": {"rebalance": {"enabled": false}}}
            })),
        )
        .await
        .unwrap();

    // The plan that runs finishes; no other starts.
    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(180)).await;
    let r = policy.status.unwrap().rebalance.unwrap();
    let done = table(&shop).await;
    assert!(done.migrating.is_empty(), "{done:#?}");
    let ledger = traffic.stop().await;
    let after = digest(&[&shop.primary, &shop.secondary, &tertiary], &keys).await;
    assert_same(&before, &after);
    assert_ledger(sidecar.port, &ledger).await;
    assert!(r.keys_moved.unwrap_or(0) > 2_000, "{r:#?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = shop.policies.get("shop").await.unwrap();
    assert_eq!(
        later.status.and_then(|s| s.rebalance).map(|r| r.plan_id),
        Some(r.plan_id),
        "rebalancing is off: no new plan"
    );
    eprintln!(
        "rebalancing off mid-plan: {} keys moved in plan {}, traffic {} ops, {} errors",
        r.keys_moved.unwrap_or(0),
        r.plan_id,
        ledger.ops,
        ledger.errors.len(),
    );
}

fn signal(pid: u32, sig: &str) {
    assert!(support::process::signal(pid, sig), "kill {sig} {pid}");
}

/// Waits until the routing table satisfies `cond`.
async fn wait_table(shop: &Shop, what: &str, cond: impl Fn(&RoutingTable) -> bool) -> RoutingTable {
    wait_until_table(shop, what, Duration::from_secs(30), cond).await
}

/// [`wait_table`], for up to `timeout`.
async fn wait_until_table(
    shop: &Shop,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&RoutingTable) -> bool,
) -> RoutingTable {
    let deadline = Instant::now() + timeout;
    loop {
        let t = table(shop).await;
        if cond(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: {t:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_instance_takes_its_ranges_back_with_the_data_written_meanwhile() {
    let shop = shop_with("failback", fast_cooldown).await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for n in 0..300 {
        let _: () = c.set(format!("auth:k{n}"), "old").await.unwrap();
    }
    let traffic = Traffic::start_across_failover(sidecar.port, TRAFFIC_PREFIXES, 2);

    // The primary hangs: its hot ranges fail over to the secondary.
    let pid = shop.primary.pid().unwrap();
    signal(pid, "-STOP");
    wait_table(&shop, "no failover", |t| !t.failover.is_empty()).await;
    // Give the sidecar the new table, then write during the failover.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 0..100 {
        let _: () = c.set(format!("auth:k{n}"), "new").await.unwrap();
        let _: () = c
            .set(format!("order:f{n}"), "written during failover")
            .await
            .unwrap();
    }
    for n in 100..150 {
        let _: i64 = c.del(format!("auth:k{n}")).await.unwrap();
    }

    // It recovers: a failback rebalance brings the ranges home with what was written.
    signal(pid, "-CONT");
    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    let ledger = traffic.stop().await;
    let r = policy.status.unwrap().rebalance.unwrap();
    assert!(
        r.reason.as_deref().unwrap_or_default().contains("failback"),
        "{r:#?}"
    );
    assert!(
        r.moves
            .iter()
            .all(|m| m.from == "secondary" && m.to == "primary"),
        "{r:#?}"
    );
    let t = table(&shop).await;
    assert!(t.failover.is_empty() && t.migrating.is_empty(), "{t:#?}");

    let mut p = shop
        .primary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for n in 0..100 {
        let v: Option<String> = c.get(format!("auth:k{n}")).await.unwrap();
        assert_eq!(v.as_deref(), Some("new"), "auth:k{n}");
        let v: Option<String> = p.get(format!("order:f{n}")).await.unwrap();
        assert_eq!(
            v.as_deref(),
            Some("written during failover"),
            "order:f{n} is home"
        );
    }
    for n in 100..150 {
        let there: bool = c.exists(format!("auth:k{n}")).await.unwrap();
        assert!(
            !there,
            "auth:k{n} was deleted during the failover and came back"
        );
    }
    for n in 150..300 {
        // Unreachable during the failover, stale after it: purged, never served.
        let v: Option<String> = c.get(format!("auth:k{n}")).await.unwrap();
        assert_eq!(v, None, "auth:k{n}: a stale copy was served");
    }
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "failback: {} keys moved home, traffic {} ops, {} errors (while the primary hung)",
        r.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_redis_is_emptied_into_the_fleet_while_every_key_stays_readable() {
    let shop = shop_with("legacy", slow_copy).await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    // The old single Redis, with keys of every kind of category (and none).
    let legacy = server_with_password("change-me-legacy");
    let keys = fill(
        &legacy,
        &["auth:", "order:", "user:", "menu:", "misc:"],
        10_000,
    )
    .await;
    let before = digest(&[&legacy], &keys).await;
    apply_legacy(&shop, &legacy, "1s");

    // While the data moves, the sidecar serves every key.
    wait_copying(&shop, &node, 500).await;
    let during = digest_through(sidecar.port, &keys).await;
    let missing: Vec<&String> = keys.iter().filter(|k| !during.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} keys unreadable mid-migration, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(before.iter().all(|(k, (v, _))| during[k].0 == *v));

    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    let r = policy.status.unwrap().rebalance.unwrap();
    assert!(
        r.reason.as_deref().unwrap_or_default().contains("draining"),
        "{r:#?}"
    );
    assert!(r.moves.iter().all(|m| m.from == "legacy"), "{r:#?}");
    // Everything left the legacy Redis, and each key is where the table says, once.
    let left = digest(&[&legacy], &keys).await;
    assert!(
        left.is_empty(),
        "{} keys still on the legacy Redis",
        left.len()
    );
    let after = settled_digest(&shop, &[&shop.primary, &shop.secondary], &keys).await;
    assert_eq!(after.len(), before.len());
    for (k, (v, exp)) in &before {
        let (v2, exp2) = &after[k];
        assert_eq!(v, v2, "{k}");
        // Reads through the sidecar may extend adaptive TTLs; a TTL never vanishes.
        assert_eq!(*exp == 0, *exp2 == 0, "{k}: TTL appeared or vanished");
    }
    eprintln!(
        "legacy: {} keys moved into the fleet",
        r.keys_moved.unwrap_or(0)
    );
}

/// The migration README's parenthesis, tried: pods already on the sidecar wrote to the fleet
/// before the legacy Redis was applied as a draining instance, so the legacy Redis holds older
/// copies of keys the fleet holds (and keys of its own). While it drains, under live traffic,
/// no read may return a legacy copy of such a key, and no write, INCR or DEL may land where
/// the move then drops it. Before the fix the guard answered from the legacy copies and ran
/// writes there, and the move kept the fleet's older copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_redis_with_stale_copies_of_the_fleets_keys_drains_without_serving_them() {
    let shop = shop_with("legacy-stale", slow_copy).await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ledgers = traffic.stop_each().await;
    // Enough keys for the drain to overwrite, however slow this machine is today.
    let written = |ledgers: &[Ledger]| -> usize {
        ledgers
            .iter()
            .map(|l| {
                l.values
                    .values()
                    .filter(|(acked, _)| acked.is_some())
                    .count()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&ledgers) < 300 && Instant::now() < deadline {
        let traffic = Traffic::resume(sidecar.port, TRAFFIC_PREFIXES, ledgers);
        tokio::time::sleep(Duration::from_secs(1)).await;
        ledgers = traffic.stop_each().await;
    }

    let legacy = server_with_password("change-me-legacy");
    let mut lc = legacy
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut stale = 0;
    for ledger in &ledgers {
        let mut pipe = redis::pipe();
        for (key, (acked, _)) in &ledger.values {
            if acked.is_some() && !ledger.maybe_deleted.contains(key) {
                pipe.set(key, "legacy, stale").ignore();
                stale += 1;
            }
        }
        for key in ledger.counters.keys() {
            pipe.set(key, 1_000_000).ignore();
            stale += 1;
        }
        let _: () = pipe.query_async(&mut lc).await.unwrap();
    }
    assert!(stale > 100, "only {stale} keys written before the drain");
    let own = fill(&legacy, &["user:", "order:", "menu:"], 3_000).await;
    let own_before = digest(&[&legacy], &own).await;
    apply_legacy(&shop, &legacy, "1s");

    let traffic = Traffic::resume(sidecar.port, TRAFFIC_PREFIXES, ledgers);
    // Writes of keys the legacy Redis never held, all through the drain (the traffic above
    // writes mostly keys it holds).
    let fresh_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fresh = tokio::spawn(write_fresh_keys(sidecar.port, fresh_stop.clone()));
    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = traffic.stop().await;
    fresh_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let fresh = fresh.await.unwrap();
    let r = policy.status.unwrap().rebalance.unwrap();
    assert!(r.moves.iter().all(|m| m.from == "legacy"), "{r:#?}");
    eprintln!(
        "legacy with stale copies: {stale} stale copies, {} keys of its own, {} ops ({} errors{}), p99 {} µs, {} keys moved",
        own.len(),
        ledger.ops,
        ledger.errors.len(),
        ledger
            .errors
            .first()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        ledger.p99_us(),
        r.keys_moved.unwrap_or(0)
    );
    // Writes of keys the legacy Redis never held went straight to the fleet once the Job
    // wrote its roster, and every one acknowledged reads back.
    let mut through = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (key, value) in &fresh {
        let got: Option<u64> = through.get(key).await.unwrap();
        assert_eq!(got, Some(*value), "{key}");
    }
    let blind = sidecar.metric("redisfleet_sidecar_blind_writes_to_target_total");
    eprintln!("legacy with stale copies: {blind} blind writes sent past the guard by the roster");
    assert!(
        blind > 0.0,
        "the sidecar never used the legacy Redis's roster"
    );
    assert_ledger(sidecar.port, &ledger).await;
    let own_after = digest_through(sidecar.port, &own).await;
    for (k, (v, _)) in &own_before {
        assert_eq!(own_after.get(k).map(|(v, _)| v), Some(v), "{k}");
    }
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut lc)
        .await
        .unwrap();
    assert!(
        left.iter()
            .all(|k| k.starts_with("redisfleet:") && !k.starts_with("redisfleet:roster:")),
        "left on the legacy Redis: {:?}",
        &left[..left.len().min(5)]
    );
}

/// `SET user:fresh:<n> <n>` through the sidecar on `port` every few milliseconds until `stop`;
/// the keys and values acknowledged.
async fn write_fresh_keys(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(String, u64)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let key = format!("user:fresh:{n}");
        if conn.set::<_, _, ()>(&key, n).await.is_ok() {
            acked.push((key, n));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_refilled_before_its_next_probe_is_drained_again() {
    // An instance's status shows its memory as its last probe found it (written when it moved
    // a point of capacity), and the policy keeps a sample of each instance until that figure
    // moves a point, the table's layout changes or a plan ends. Here probes are five minutes
    // apart, so the legacy instance's status never sees it emptied or refilled. Two ways this
    // went wrong (`make test`'s bench: a drain waited 600 s):
    // - a sample of it empty, kept with the status figure of before the drain, stood for ten
    //   minutes once it held as much again: the new data was not planned away;
    // - a sample of it full, taken when a drain was planned, stood after the drain (emptying
    //   a legacy instance leaves the table's layout as it was from the second drain on): plan
    //   after plan moved nothing, and keys that arrived meanwhile were left behind.
    // So: filled and drained three times, each drain followed by a quiet fleet.
    let shop = shop_with("refill", fast_cooldown).await;
    let (_, mut plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let legacy = server_with_password("change-me-legacy");
    // Little data (2–3 points of the legacy instance's capacity, as many of the secondary's):
    // the fleet stays within its balance band, so no plan but the drains.
    let mut keys = fill(&legacy, &["user:r0", "menu:r0"], 1_500).await;
    apply_legacy(&shop, &legacy, "5m");
    let jobs = || {
        node.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    };
    for round in 0..3 {
        let arrived = Instant::now();
        let jobs_before = jobs();
        let drained = drained_and_quiet(&shop, &node, &legacy, &keys, plan).await;
        // A plan, two at most (each runs a Job), the last moving the keys.
        let plans = jobs() - jobs_before;
        assert!(
            drained.plan_id > plan && plans <= 2,
            "round {round}: {plans} plans to drain {} keys: {drained:#?}",
            keys.len()
        );
        assert!(
            drained.moves.iter().all(|m| m.from == "legacy") && drained.keys_moved.unwrap_or(0) > 0,
            "round {round}: {drained:#?}"
        );
        let moved = settled_digest(&shop, &[&shop.primary, &shop.secondary], &keys).await;
        assert_eq!(moved.len(), keys.len(), "round {round}: keys lost");
        eprintln!(
            "refill round {round}: {} keys drained by plan {} ({plans} plans), {:.1} s after they arrived",
            keys.len(),
            drained.plan_id,
            arrived.elapsed().as_secs_f64()
        );
        plan = drained.plan_id;
        if round == 2 {
            break;
        }
        // As much again, other keys, well within the probe interval.
        let prefixes = [
            format!("user:r{}", round + 1),
            format!("menu:r{}", round + 1),
        ];
        keys = fill(&legacy, &[&prefixes[0], &prefixes[1]], 1_500).await;
    }
}

/// Applies the legacy Redis `legacy` (password `change-me-legacy`) as a draining instance of
/// the shop, probed every `interval`.
fn apply_legacy(shop: &Shop, legacy: &RedisServer, interval: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: legacy-redis}}\nstringData: {{password: change-me-legacy}}\n---\n\
         apiVersion: redisfleet.io/v1alpha1\nkind: RedisInstance\nmetadata:\n  name: legacy\n  labels: {{app.kubernetes.io/part-of: shop}}\n\
         spec:\n  drain: true\n  external: {{host: 127.0.0.1, port: {}, passwordSecretRef: {{name: legacy-redis, key: password}}}}\n  capacity: 30Mi\n  health: {{interval: {interval}, timeout: 500ms, failureThreshold: 2, recoveryThreshold: 2}}\n",
        legacy.port
    );
    let out = kubectl_apply(shop.cp, &shop.ns, &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until a plan after `after` drained `keys` off `legacy` and the fleet is quiet: the
/// legacy instance empty of them, and no plan running or starting for 5 s (one that moves
/// nothing, made from a stale sample, would start at once). Returns the last plan.
async fn drained_and_quiet(
    shop: &Shop,
    node: &Node,
    legacy: &RedisServer,
    keys: &[String],
    after: i64,
) -> redis_fleet::api::cache_policy::RebalanceStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet = (after, Instant::now());
    loop {
        let r = shop
            .policies
            .get("shop")
            .await
            .unwrap()
            .status
            .and_then(|s| s.rebalance);
        let empty = digest(&[legacy], keys).await.is_empty();
        let id = r.as_ref().map_or(0, |r| r.plan_id);
        if r.as_ref().is_none_or(|r| r.is_active()) || !empty || id != quiet.0 || id <= after {
            quiet = (id, Instant::now());
        } else if let Some(r) = &r
            && quiet.1.elapsed() >= Duration::from_secs(5)
        {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never drained and quiet (plans after {after}; legacy empty: {empty}): {r:#?}\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets the policy's `redisfleet.io/rebalance` annotation (`None`: removes it).
async fn control(shop: &Shop, value: Option<&str>) {
    shop.policies
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"redisfleet.io/rebalance": value}}
            })),
        )
        .await
        .unwrap();
}

/// Waits until the policy's rebalance status satisfies `cond`; returns it.
async fn wait_status(
    shop: &Shop,
    node: Option<&Node>,
    what: &str,
    cond: impl Fn(&redis_fleet::api::cache_policy::RebalanceStatus) -> bool,
) -> CachePolicy {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        if p.status
            .as_ref()
            .and_then(|s| s.rebalance.as_ref())
            .is_some_and(&cond)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:#?}\n{}\n{}",
            p.status.and_then(|s| s.rebalance),
            node.map(Node::all_logs).unwrap_or_default(),
            shop.operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keys of `prefixes` on `server` (read straight from it).
async fn count_on(server: &RedisServer, prefixes: &[&str]) -> usize {
    let mut c = server.bookkeeping_connection().await;
    let mut n = 0;
    for p in prefixes {
        let keys: Vec<String> = c.keys(format!("{p}*")).await.unwrap();
        n += keys.len();
    }
    n
}

/// Keys of `prefixes` (filled on the secondary) that a plan moved away from it: on the
/// primary or on `tertiary`.
async fn moved_off(shop: &Shop, tertiary: &RedisServer, prefixes: &[&str]) -> usize {
    count_on(&shop.primary, prefixes).await + count_on(tertiary, prefixes).await
}

/// The prefixes a [`SlowJoin`] fills the secondary with.
const JOIN_PREFIXES: [&str; 3] = ["user:s", "menu:s", "ml:s"];

/// A third instance joins while the secondary holds 30 000 keys of [`JOIN_PREFIXES`]: a plan
/// moves some of them out of it, slowly (`slow_copy`), under sidecar traffic. [`SlowJoin::start`]
/// returns once it copies.
struct SlowJoin {
    shop: Shop,
    /// The plan before the join's (`settled`).
    plan: i64,
    node: Node,
    sidecar: Sidecar,
    keys: Vec<String>,
    before: Digest,
    traffic: Traffic,
    tertiary: RedisServer,
}

impl SlowJoin {
    async fn start(name: &str) -> Self {
        let shop = shop_with(name, slow_copy).await;
        let (_, plan) = settled(&shop).await;
        let node = Node::start(shop.cp, &shop.ns);
        let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
        let keys = fill(&shop.secondary, &JOIN_PREFIXES, 30_000).await;
        let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
        let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 2);
        let tertiary = apply_third_instance(&shop);
        wait_copying(&shop, &node, 1_000).await;
        Self {
            shop,
            plan,
            node,
            sidecar,
            keys,
            before,
            traffic,
            tertiary,
        }
    }

    /// Keys of the join that left the secondary.
    async fn moved_off(&self) -> usize {
        moved_off(&self.shop, &self.tertiary, &JOIN_PREFIXES).await
    }

    /// Stops the traffic, then checks that every key has its value and every acknowledged
    /// operation its outcome; the traffic's ledger.
    async fn check(self) -> Ledger {
        let ledger = self.traffic.stop().await;
        let after = digest(
            &[&self.shop.primary, &self.shop.secondary, &self.tertiary],
            &self.keys,
        )
        .await;
        assert_same(&self.before, &after);
        assert_ledger(self.sidecar.port, &ledger).await;
        ledger
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_plan_moves_no_key_until_resumed_and_a_late_cancel_lets_it_finish() {
    // `redisfleet.io/rebalance: pause` mid-copy: the Job lands its batches in flight and moves
    // nothing more (no key of the copy reaches the target) while the application's traffic
    // goes on through the sidecar; `resume` goes on; a `cancel` after keys moved cannot roll
    // the plan back without moving them again, so it is refused and the plan finishes —
    // and no new plan starts until the annotation goes. Every acknowledged write survives.
    let join = SlowJoin::start("pause").await;
    let (shop, node, plan, keys) = (&join.shop, &join.node, join.plan, &join.keys);

    control(shop, Some("pause")).await;
    let paused = wait_status(shop, Some(node), "never paused", |r| {
        r.step.as_deref() == Some("Paused") && r.paused == Some(true)
    })
    .await;
    let condition = paused
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Rebalancing")
        .cloned()
        .unwrap();
    assert_eq!(condition.reason, "Paused", "{condition:?}");
    let held = join.moved_off().await;
    // The targets import: reads of keys that moved there are served by them, asked first,
    // in one round trip, once most reads find their keys moved. (Not `user:` keys: their
    // category's TTL is adaptive, so one GET through the sidecar in sixteen extends a key's
    // TTL to the category's max, which the final digest would take for a drifted expiry. The
    // copy walks every category of a pair at once, so they move from the start.)
    let mut moved_keys: Vec<String> = Vec::new();
    let mut markers = 0;
    for target in [&shop.primary, &join.tertiary] {
        let mut c = target
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let imported: Vec<String> = c.keys("redisfleet:imported:*").await.unwrap();
        markers += imported.len();
        for k in keys.iter().filter(|k| !k.starts_with("user:")) {
            if moved_keys.len() == 200 {
                break;
            }
            if c.exists::<_, bool>(k).await.unwrap() {
                moved_keys.push(k.clone());
            }
        }
    }
    assert!(markers > 0, "the Job set no imported marker");
    assert!(!moved_keys.is_empty());
    let served = || {
        support::series_value(
            &join.sidecar.metrics(),
            "redisfleet_sidecar_reads_on_target_total",
        )
        .unwrap()
    };
    let served_before = served();
    let through: Digest = digest_through(join.sidecar.port, &moved_keys).await;
    assert!(moved_keys.iter().all(|k| through[k].0 == join.before[k].0));
    assert!(
        served() > served_before,
        "no read asked the target first\n{}",
        join.sidecar.metrics()
    );
    let paused_report = paused.status.unwrap().rebalance.unwrap();
    let moved = paused_report.keys_moved.unwrap();
    assert!(held > 0 && (held as i64) < 30_000, "{held}");
    // Longer than the paused Job's report interval (5 s): with no key asked for, it writes
    // nothing (each write of `status.rebalance` would wake the operator's reconcile).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(join.moved_off().await, held, "keys moved while paused");
    let still = rebalance_of(shop).await;
    assert_eq!(still.keys_moved, Some(moved), "{still:#?}");
    assert_eq!(still.step.as_deref(), Some("Paused"));
    assert_eq!(
        still.keys_per_second, paused_report.keys_per_second,
        "a paused Job with nothing to move reported again: {still:#?}"
    );

    // Commands over moved and unmoved keys at once make the sidecar ask the Job for the
    // unmoved ones: the paused Job still moves those, and every such command answers.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", join.sidecar.port)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut mgets = 0;
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let some: Vec<&String> = (0..8)
            .map(|n| &keys[(round * 7_919 + n * 3_659) % keys.len()])
            .collect();
        let got: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&some)
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("MGET while paused: {e}"));
        for (k, v) in some.iter().zip(got) {
            assert_eq!(v.as_ref(), join.before.get(*k).map(|(v, _)| v), "{k}");
        }
        mgets += 1;
    }
    let asked = join.moved_off().await;
    let urgent_moved = asked - held;
    // Beyond what the commands asked for, the copy still moves nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(join.moved_off().await, asked, "keys moved while paused");
    assert_eq!(rebalance_of(shop).await.step.as_deref(), Some("Paused"));

    control(shop, Some("resume")).await;
    wait_status(shop, Some(node), "never resumed", |r| {
        r.step.as_deref() == Some("Copying") && r.keys_moved.unwrap_or(0) > moved
    })
    .await;
    assert!(join.moved_off().await > held);

    control(shop, Some("cancel")).await;
    let refused = wait_status(shop, Some(node), "the late cancel was not answered", |r| {
        r.cancel_refused == Some(true)
    })
    .await;
    let r = refused.status.unwrap().rebalance.unwrap();
    assert!(
        r.message
            .as_deref()
            .unwrap_or_default()
            .contains("after keys moved"),
        "{r:#?}"
    );
    let policy = wait_rebalanced(shop, node, plan, Duration::from_secs(180)).await;
    let done = policy.status.unwrap().rebalance.unwrap();
    assert_eq!(done.plan_id, r.plan_id, "the same plan finished: {done:#?}");
    assert_eq!(done.paused, None);
    let logs = node.all_logs();
    assert!(
        logs.contains("paused") && logs.contains("resumed"),
        "{logs}"
    );

    let table = table(shop).await;
    assert!(table.migrating.is_empty(), "{table:#?}");
    let ledger = join.check().await;
    eprintln!(
        "pause: {held} keys on the target when paused, {urgent_moved} more that {mgets} MGETs asked for while paused, {} moved in all; traffic {} ops, {} errors",
        done.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

/// A source switched by hand to a policy that may evict keys without a TTL *after* its plan
/// started (the planner only looks when it plans): the Job's copy holds, as if paused — no key
/// of the copy leaves the source, status says `SourceEvicting` and names the source and its policy —
/// until the policy is fixed, then finishes with every acknowledged write where it belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_switched_to_an_evicting_policy_mid_copy_holds_the_copy_until_it_is_fixed() {
    let join = SlowJoin::start("evict-mid-copy").await;
    let (shop, node, plan, keys) = (&join.shop, &join.node, join.plan, &join.keys);

    set_eviction_policy(&shop.secondary, "allkeys-lru").await;
    let held_back = wait_status(shop, Some(node), "the copy never held", |r| {
        r.step.as_deref() == Some("SourceEvicting")
    })
    .await;
    let r = held_back.status.unwrap().rebalance.unwrap();
    assert!(
        r.moves.iter().all(|m| m.from == "secondary"),
        "the plan moves out of the secondary: {r:#?}"
    );
    let note = r.pacing.clone().unwrap_or_default();
    assert!(
        note.contains("secondary (maxmemory-policy allkeys-lru) may evict keys without a TTL"),
        "{r:#?}"
    );
    let condition = wait_policy_condition(shop, "Rebalancing", "not held back", |s, r, _| {
        s == "True" && r == "SourceEvicting"
    })
    .await;
    assert!(
        condition.contains("secondary (maxmemory-policy allkeys-lru)"),
        "{condition}"
    );
    let held = join.moved_off().await;
    assert!(held > 0 && held < keys.len(), "{held}");
    // Held: nothing more leaves the source, for longer than the Job reads the policy (1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        join.moved_off().await,
        held,
        "keys moved while a source may evict keys without a TTL"
    );
    assert_eq!(
        rebalance_of(shop).await.step.as_deref(),
        Some("SourceEvicting")
    );

    set_eviction_policy(&shop.secondary, "volatile-lru").await;
    wait_status(shop, Some(node), "the copy never went on", |r| {
        r.step.as_deref() != Some("SourceEvicting")
            && r.pacing.as_deref().is_none_or(|p| !p.starts_with("held"))
    })
    .await;
    let policy = wait_rebalanced(shop, node, plan, Duration::from_secs(180)).await;
    let done = policy.status.unwrap().rebalance.unwrap();
    assert_eq!(done.plan_id, r.plan_id, "the same plan finished: {done:#?}");
    assert_eq!(done.keys_moved, done.keys_total, "{done:#?}");
    let logs = node.all_logs();
    assert!(
        logs.contains("may evict keys without a TTL") && logs.contains("resumed"),
        "{logs}"
    );

    let ledger = join.check().await;
    eprintln!(
        "evicting source mid-copy: {held} keys on the targets when held, {} moved in all; traffic {} ops, {} errors",
        done.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

/// Writes the heartbeat of a sidecar `id` that reports `p99_micros` (of 2 000 requests) on every
/// server, every half second, until `stop`; then one that reports nothing. Its version is far
/// ahead of any table, so a Job never waits for it to converge.
fn report_latency(
    policy: String,
    servers: Vec<redis::Client>,
    p99_micros: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use redis_fleet::redis::protocol::heartbeat::{Latency, LatencyReport, write_command};
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut conns = Vec::new();
        for s in &servers {
            conns.push(s.get_multiplexed_async_connection().await.unwrap());
        }
        loop {
            let done = stop.load(Ordering::Relaxed);
            let report = if done {
                Latency::Nothing
            } else {
                Latency::Report(LatencyReport {
                    p99_micros: p99_micros.load(Ordering::Relaxed),
                    requests: 2_000,
                })
            };
            for c in &mut conns {
                let mut cmd = redis::cmd("EVAL");
                for arg in write_command(&policy, "probe", 1 << 40, report)
                    .iter()
                    .skip(1)
                {
                    cmd.arg(arg.as_ref());
                }
                let _: redis::Value = cmd.query_async(c).await.unwrap();
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_slows_while_a_sidecar_sees_its_source_answer_slower_and_speeds_up_after() {
    // `pacing: Adaptive` (the default): the Job reads what the sidecars report of the latency
    // of its sources and targets. A sidecar (here a probe writing the heartbeats a sidecar
    // writes) whose p99 rises past its budget (here its lowest during the Job plus 1 ms) slows
    // the copy, and the status says why; once it reports within its aim again the copy speeds
    // up. The real sidecar's traffic goes on throughout, and nothing is lost.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // With a millisecond of headroom (the default has none), the real sidecar's own p99,
    // noisy on a shared machine, stays within its aim: what the copy heeds is the probe.
    let shop = shop_with("pacing", |p| {
        slow_copy(p).replace(
            "      keysPerSecond: 2500\n",
            "      keysPerSecond: 2500\n      latencyHeadroomMicroseconds: 1000\n",
        )
    })
    .await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let prefixes = ["user:p", "menu:p", "ml:p"];
    let keys = fill(&shop.secondary, &prefixes, 30_000).await;
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 2);
    let tertiary = apply_third_instance(&shop);
    let p99 = Arc::new(AtomicU64::new(300));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = report_latency(
        format!("{}/shop", shop.ns),
        vec![
            shop.primary.client(),
            shop.secondary.client(),
            tertiary.client(),
        ],
        p99.clone(),
        stop.clone(),
    );

    // The Job learns the probe's 300 µs while it starts copying; then the probe sees 40 ms.
    wait_copying(&shop, &node, 1_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p99.store(40_000, Ordering::Relaxed);
    let slowed = wait_status(&shop, Some(&node), "the copy never slowed", |r| {
        r.pacing
            .as_deref()
            .is_some_and(|p| p.contains("sidecar probe sees p99 40000 µs"))
    })
    .await;
    let slowed = slowed.status.unwrap().rebalance.unwrap();
    assert_eq!(slowed.step.as_deref(), Some("Copying"), "{slowed:#?}");
    let note = slowed.pacing.clone().unwrap();
    assert!(note.contains("(budget 1300 µs)"), "{note}");
    let logs = node.all_logs();
    assert!(logs.contains("sidecar probe sees p99 40000 µs"), "{logs}");

    // Within budget again: the probe is no longer what holds the copy back.
    p99.store(350, Ordering::Relaxed);
    let recovered = wait_status(&shop, Some(&node), "the copy never sped up", |r| {
        r.pacing.as_deref().is_none_or(|p| !p.contains("probe"))
    })
    .await;
    let recovered = recovered.status.unwrap().rebalance.unwrap();
    stop.store(true, Ordering::Relaxed);
    probe.await.unwrap();

    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(180)).await;
    let done = policy.status.unwrap().rebalance.unwrap();
    assert_eq!(done.pacing, None, "{done:#?}");
    let ledger = traffic.stop().await;
    let after = digest(&[&shop.primary, &shop.secondary, &tertiary], &keys).await;
    assert_same(&before, &after);
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "pacing: slowed at {} keys moved ({note}); recovered at {} ({:?}); {} moved in all; traffic {} ops, {} errors",
        slowed.keys_moved.unwrap_or(0),
        recovered.keys_moved.unwrap_or(0),
        recovered.pacing,
        done.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

async fn rebalance_of(shop: &Shop) -> redis_fleet::api::cache_policy::RebalanceStatus {
    shop.policies
        .get("shop")
        .await
        .unwrap()
        .status
        .and_then(|s| s.rebalance)
        .unwrap()
}

/// A join's plan paused before its flip, its Job prepared and waiting (`paused_join`).
struct PausedJoin {
    /// The last plan before the join's.
    plan: i64,
    sidecar: Sidecar,
    prefixes: [&'static str; 3],
    keys: Vec<String>,
    before: Digest,
    traffic: Traffic,
    tertiary: RedisServer,
    node: Node,
    /// The join's plan as the operator started it.
    planned: redis_fleet::api::cache_policy::RebalanceStatus,
}

/// Fills the shop's secondary with `count` keys, starts traffic through a sidecar, applies a
/// third instance and pauses the plan for its join before a node runs its Job; returns once
/// that Job prepared and waits for the flip.
async fn paused_join(shop: &Shop, count: usize) -> PausedJoin {
    let (_, plan) = settled(shop).await;
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let prefixes = ["user:s", "menu:s", "ml:s"];
    let keys = fill(&shop.secondary, &prefixes, count).await;
    let before = digest(&[&shop.primary, &shop.secondary], &keys).await;
    let traffic = Traffic::start(sidecar.port, TRAFFIC_PREFIXES, 2);
    let tertiary = apply_third_instance(shop);
    // No node yet: the plan waits for its Job to run.
    let started = wait_status(shop, None, "no plan for the join", |r| {
        r.plan_id > plan && r.phase == rebalance_phase::PREPARING
    })
    .await;
    let planned = started.status.unwrap().rebalance.unwrap();
    control(shop, Some("pause")).await;
    wait_status(shop, None, "never marked paused", |r| {
        r.paused == Some(true)
    })
    .await;
    let node = Node::start(shop.cp, &shop.ns);
    wait_status(shop, Some(&node), "the Job never prepared", |r| {
        r.step.as_deref() == Some("Prepared")
    })
    .await;
    PausedJoin {
        plan,
        sidecar,
        prefixes,
        keys,
        before,
        traffic,
        tertiary,
        node,
        planned,
    }
}

/// Writes `status.rebalance.step` as a status write from an older read would.
async fn overwrite_step(shop: &Shop, step: &str) {
    shop.policies
        .patch_status(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "status": {"rebalance": {"step": step}}
            })),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_plan_is_not_flipped_and_a_cancel_rolls_it_back_then_resume_plans_again() {
    // A join's plan is paused before its flip: its Job prepares the targets and waits, and the
    // operator publishes no migrating ranges however long it waits. `cancel` then rolls it
    // back — its running Job fenced off, no flip ever published, the old owners serving —
    // and no plan starts while the annotation says cancel; `resume` lets the operator plan
    // again, and that plan moves the data with every key intact.
    let shop = shop_with("cancel", slow_copy).await;
    let PausedJoin {
        sidecar,
        prefixes,
        keys,
        before,
        traffic,
        tertiary,
        node,
        planned,
        ..
    } = paused_join(&shop, 20_000).await;
    let version = table(&shop).await.version;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = rebalance_of(&shop).await;
    assert_eq!(held.flip_version, None, "flipped while paused: {held:#?}");
    assert_eq!(held.phase, rebalance_phase::PREPARING, "{held:#?}");
    let unflipped = table(&shop).await;
    assert!(unflipped.migrating.is_empty(), "{unflipped:#?}");
    assert_eq!(
        unflipped.version, version,
        "a table was published while paused"
    );

    control(&shop, Some("cancel")).await;
    let cancelled = wait_status(&shop, Some(&node), "never rolled back", |r| {
        r.phase == rebalance_phase::FAILED
    })
    .await;
    let r = cancelled.status.unwrap().rebalance.unwrap();
    assert_eq!(r.plan_id, planned.plan_id);
    assert_eq!(r.flip_version, None, "a flip was published: {r:#?}");
    assert!(
        r.message
            .as_deref()
            .unwrap_or_default()
            .contains("cancelled"),
        "{r:#?}"
    );
    let rolled_back = table(&shop).await;
    assert!(rolled_back.migrating.is_empty(), "{rolled_back:#?}");
    assert_eq!(moved_off(&shop, &tertiary, &prefixes).await, 0);
    // The cancelled plan's Job stops; no plan starts while the annotation says cancel.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r2 = rebalance_of(&shop).await;
    assert_eq!(
        (r2.plan_id, r2.phase.as_str()),
        (r.plan_id, rebalance_phase::FAILED),
        "a plan started while the annotation says cancel: {r2:#?}"
    );
    assert_eq!(moved_off(&shop, &tertiary, &prefixes).await, 0);

    control(&shop, Some("resume")).await;
    let policy = wait_rebalanced(&shop, &node, r.plan_id, Duration::from_secs(180)).await;
    let done = policy.status.unwrap().rebalance.unwrap();
    assert!(done.keys_moved.unwrap_or(0) > 0, "{done:#?}");
    let ledger = traffic.stop().await;
    let after = digest(&[&shop.primary, &shop.secondary, &tertiary], &keys).await;
    assert_same(&before, &after);
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "cancel: plan {} held unflipped at table v{version}, rolled back; plan {} moved {} keys; traffic {} ops, {} errors",
        r.plan_id,
        done.plan_id,
        done.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_step_lost_from_the_status_is_reported_again_and_the_plan_flips() {
    // The operator flips a plan only once its Job's `Prepared` is in the status, and the Job
    // reports it once. Another writer of the status can put an older step back (a plan start
    // from a stale read did); a report that gave up on a status that kept changing never
    // lands. Either way the operator never flipped, and the Job waited out its 10-minute
    // publish timeout. Here the plan is paused before its flip, its `Prepared` is
    // overwritten with `Preparing`, and the plan resumed: the Job must say `Prepared` again,
    // in the same attempt; likewise `Copied`, overwritten while the operator is stopped; and
    // the plan then move everything with traffic on.
    let shop = shop_with("lost-step", slow_copy).await;
    // About half of the keys move: at 2 500 keys/s at most (slower beside traffic) the copy
    // takes seconds, and the operator is stopped well before it ends.
    let PausedJoin {
        plan,
        sidecar,
        keys,
        before,
        traffic,
        tertiary,
        node,
        ..
    } = paused_join(&shop, 10_000).await;
    let attempt = rebalance_of(&shop).await.attempts;

    // A stale writer puts the step before `Prepared` back.
    overwrite_step(&shop, "Preparing").await;
    let again = wait_status(
        &shop,
        Some(&node),
        "the Job never reported Prepared again",
        |r| r.step.as_deref() == Some("Prepared"),
    )
    .await
    .status
    .unwrap()
    .rebalance
    .unwrap();
    assert_eq!(again.attempts, attempt, "{again:#?}");
    assert_eq!(again.flip_version, None, "flipped while paused: {again:#?}");
    let reported_again = |node: &Node| node.all_logs().matches("reporting it again").count();
    let after_prepared = reported_again(&node);
    assert!(after_prepared >= 1, "{}", node.all_logs());

    // The same for `Copied`, which the operator finalizes on: with the operator stopped
    // (SIGSTOP) before the copy ends, the Job's `Copied` is overwritten with `Copying`.
    control(&shop, Some("resume")).await;
    wait_status(&shop, Some(&node), "never flipped", |r| {
        r.phase == rebalance_phase::MIGRATING
    })
    .await;
    let operator = shop.operator.pid().expect("the operator runs");
    signal(operator, "-STOP");
    let copied = wait_status(&shop, Some(&node), "the Job never copied", |r| {
        r.step.as_deref() == Some("Copied")
    })
    .await
    .status
    .unwrap()
    .rebalance
    .unwrap();
    assert_eq!(copied.final_version, None, "{copied:#?}");
    overwrite_step(&shop, "Copying").await;
    let again = wait_status(
        &shop,
        Some(&node),
        "the Job never reported Copied again",
        |r| r.step.as_deref() == Some("Copied"),
    )
    .await;
    signal(operator, "-CONT");
    assert_eq!(again.status.unwrap().rebalance.unwrap().attempts, attempt);
    let policy = wait_rebalanced(&shop, &node, plan, Duration::from_secs(180)).await;
    let done = policy.status.unwrap().rebalance.unwrap();
    assert_eq!(
        done.attempts, attempt,
        "the plan needed another attempt: {done:#?}"
    );
    assert!(
        reported_again(&node) > after_prepared,
        "{}",
        node.all_logs()
    );
    assert!(done.keys_moved.unwrap_or(0) > 0, "{done:#?}");
    let ledger = traffic.stop().await;
    let after = digest(&[&shop.primary, &shop.secondary, &tertiary], &keys).await;
    assert_same(&before, &after);
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "lost step: plan {} attempt {} reported Prepared again and moved {} keys; traffic {} ops, {} errors",
        done.plan_id,
        done.attempts,
        done.keys_moved.unwrap_or(0),
        ledger.ops,
        ledger.errors.len()
    );
}

/// The shop with `auth` (and `session:`) replicated `Sync`, and a short cooldown.
fn replicated_auth(policy: String) -> String {
    let auth = "      fallbackTier: warm\n      ttl: {default: 1h, max: 24h, adaptive: true}\n";
    assert!(policy.contains(auth), "the example's auth category changed");
    fast_cooldown(policy).replace(auth, &format!("{auth}      replication: Sync\n"))
}

/// The shop's policy with `auth` replicated `Async`.
fn async_auth(policy: String) -> String {
    replicated_auth(policy).replace("replication: Sync", "replication: Async")
}

/// Keys of the replicated category, and of a warm one its owner's death does not touch.
const REPLICATED_TRAFFIC: &[&str] = &["auth:", "session:", "user:"];

/// How many keys `auth:k0` … are written "before" an outage: what a replica must hold.
const BEFORE_KEYS: usize = 300;

/// Writes the keys of [`BEFORE_KEYS`] through `c`.
async fn write_before(c: &mut redis::aio::MultiplexedConnection) {
    for n in 0..BEFORE_KEYS {
        let _: () = c.set(format!("auth:k{n}"), "before").await.unwrap();
    }
}

/// Which of the keys written before read otherwise than "before" through `c`.
async fn missing_before(c: &mut redis::aio::MultiplexedConnection) -> Vec<usize> {
    let mut missing = Vec::new();
    for n in 0..BEFORE_KEYS {
        let v: Option<String> = retrying(c, redis::cmd("GET").arg(format!("auth:k{n}"))).await;
        if v.as_deref() != Some("before") {
            missing.push(n);
        }
    }
    missing
}

/// Asserts that every key written before still reads "before" (`when` says at which point).
async fn assert_before(c: &mut redis::aio::MultiplexedConnection, when: &str) {
    let missing = missing_before(c).await;
    assert!(
        missing.is_empty(),
        "{} of the {BEFORE_KEYS} keys written before are gone {when}, e.g. auth:k{}",
        missing.len(),
        missing[0]
    );
}

/// The shop with `auth` replicated `Sync` and seeded on the secondary, the keys written before
/// in place, and traffic on replicated and warm keys through a sidecar for two seconds.
struct ReplicatedShop {
    shop: Shop,
    node: Node,
    /// The last plan when the shop settled.
    plan: i64,
    /// The table that replicates `auth`.
    table: RoutingTable,
    sidecar: Sidecar,
    /// A client of the sidecar.
    c: redis::aio::MultiplexedConnection,
    traffic: Traffic,
}

impl ReplicatedShop {
    async fn start(prefix: &str) -> Self {
        Self::start_configured(prefix, &[]).await
    }

    /// [`ReplicatedShop::start`] with extra arguments for the operator.
    async fn start_configured(prefix: &str, operator_args: &[&str]) -> Self {
        Self::start_with(prefix, replicated_auth, operator_args).await
    }

    /// [`ReplicatedShop::start_configured`] with the shop's policy changed by `policy` (which
    /// replicates `auth`).
    async fn start_with(
        prefix: &str,
        policy: fn(String) -> String,
        operator_args: &[&str],
    ) -> Self {
        let shop = shop_configured(prefix, policy, operator_args).await;
        let (_, plan) = settled(&shop).await;
        let node = Node::start(shop.cp, &shop.ns);
        let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
        let table = wait_replicated(&shop, "auth replicated on the secondary").await;
        let mut c = sidecar
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        write_before(&mut c).await;
        let traffic = Traffic::start(sidecar.port, REPLICATED_TRAFFIC, 3);
        tokio::time::sleep(Duration::from_secs(2)).await;
        Self {
            shop,
            node,
            plan,
            table,
            sidecar,
            c,
            traffic,
        }
    }
}

/// Waits until `auth` is replicated everywhere and its replica seeded.
async fn wait_replicated(shop: &Shop, what: &str) -> RoutingTable {
    wait_table(shop, what, |t| {
        t.failover.is_empty()
            && t.migrating.is_empty()
            && t.category("auth")
                .and_then(|c| c.replication.as_ref())
                .is_some_and(|r| {
                    r.seeding.is_empty()
                        && r.replicas.len() == 1
                        && r.replicas[0].range == redis_fleet::routing::slots::SlotRange::ALL
                })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_category_survives_its_owners_death_twice_and_fails_back_with_every_write() {
    let ReplicatedShop {
        mut shop,
        node,
        plan,
        table: t,
        sidecar,
        mut c,
        traffic,
    } = ReplicatedShop::start("warm-failover").await;
    assert_eq!(t.category("auth").unwrap().slots[0].instance, "primary");
    assert_eq!(
        t.category("auth")
            .unwrap()
            .replication
            .as_ref()
            .unwrap()
            .replicas[0]
            .instance,
        "secondary"
    );

    // 1. The owner dies: its replica serves the category at once, with its data.
    shop.primary.kill();
    let during = wait_table(&shop, "auth failed over", |t| {
        t.failover.iter().any(|f| f.category == "auth")
    })
    .await;
    assert!(
        during
            .failover
            .iter()
            .filter(|f| f.category == "auth")
            .all(|f| f.to == "secondary")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The replica served the category warm.
    assert_before(&mut c, "during the outage").await;

    // 2. It comes back (empty): it becomes auth's replica, seeded from the secondary, and then
    // the two swap roles — the primary serves auth again with everything the secondary held,
    // which stays on as its seeded replica (the unreplicated categories fail back by a plan).
    shop.primary.restart();
    let _ = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    let after = wait_replicated(&shop, "auth replicated again after the failback").await;
    assert_eq!(after.category("auth").unwrap().slots[0].instance, "primary");
    let plan = shop
        .policies
        .get("shop")
        .await
        .unwrap()
        .status
        .and_then(|s| s.rebalance)
        .map_or(0, |r| r.plan_id);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. It dies again: everything acknowledged — before, during and after the first outage,
    // and through the failback — is read back from the replica.
    shop.primary.kill();
    wait_table(&shop, "auth failed over again", |t| {
        t.failover.iter().any(|f| f.category == "auth")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = traffic.stop().await;
    assert_before(&mut c, "at the end").await;
    assert_ledger(sidecar.port, &ledger).await;
    let acked = ledger
        .values
        .iter()
        .filter(|(k, (v, _))| !k.starts_with("user:") && v.is_some())
        .count();
    eprintln!(
        "warm failover twice: {} ops, {acked} replicated keys acknowledged and read back, {} errors \
         (while the owner was down), plan {plan}",
        ledger.ops,
        ledger.errors.len()
    );
}

/// Whether `t` serves `auth` from the primary again: no failover entry and no migration of it.
fn auth_home(t: &RoutingTable) -> bool {
    t.failover.iter().all(|f| f.category != "auth")
        && t.migrating.iter().all(|m| m.category != "auth")
        && t.category("auth")
            .is_some_and(|c| c.slots.iter().all(|o| o.instance == "primary"))
}

/// `Sync`: the failback leaves no moment without a full copy. The owner is `kill -9`ed,
/// restarted empty, and `kill -9`ed again the moment the table serves `auth` from it once more
/// — before anything could seed a replica afresh. Every acknowledged write, and the 300 keys
/// written before, must be read back from the replica. A failback *move* fails this: the move
/// takes the keys off the secondary, whose copies come back only with a new seeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_owner_killed_the_moment_it_serves_again_loses_nothing() {
    owner_killed_the_moment_it_serves_again("swap-failback", replicated_auth).await;
}

/// The same for `Async`: its category is written `Sync` while the owner, back, is seeded and
/// swaps roles, and `Async` again after. Before, an `Async` range failed back by a move: 300 of
/// the 300 keys written before were gone after the second kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_owner_killed_the_moment_it_serves_again_loses_nothing() {
    owner_killed_the_moment_it_serves_again("swap-failback-async", async_auth).await;
}

/// The shop with `auth` replicated as `policy` says: its owner is `kill -9`ed, restarted
/// empty, and `kill -9`ed again the moment it serves `auth` once more.
async fn owner_killed_the_moment_it_serves_again(prefix: &str, policy: fn(String) -> String) {
    let ReplicatedShop {
        mut shop,
        node: _node,
        table: before,
        sidecar,
        mut c,
        traffic,
        ..
    } = ReplicatedShop::start_with(prefix, policy, &[]).await;
    let mode = auth_mode(&before);

    shop.primary.kill();
    wait_table(&shop, "auth failed over", |t| {
        t.failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    shop.primary.restart();
    // The owner, back, is named auth's replica to be seeded, and auth is written `Sync` until
    // the two swap roles.
    let seeding = wait_table(&shop, "the primary named auth's replica", |t| {
        t.failover.iter().any(|f| f.category == "auth")
            && t.category("auth")
                .and_then(|c| c.replication.as_ref())
                .is_some_and(|r| r.replicas.iter().any(|o| o.instance == "primary"))
    })
    .await;
    assert_eq!(auth_mode(&seeding), Some(ReplicationMode::Sync));
    // Polled every 100 ms: the owner dies within a moment of serving again.
    let home = wait_until_table(
        &shop,
        "auth served by the primary again",
        Duration::from_secs(120),
        auth_home,
    )
    .await;
    shop.primary.kill();
    let replicas = home
        .category("auth")
        .and_then(|c| c.replication.clone())
        .expect("auth is replicated");
    eprintln!(
        "auth home at v{}: replicas {:?}, seeding {:?}",
        home.version, replicas.replicas, replicas.seeding
    );
    // The table that serves auth from the primary again names the secondary its replica,
    // seeded: nothing of auth is without a full copy at any time.
    assert_eq!(
        replicas
            .replicas
            .iter()
            .map(|r| (r.range, r.instance.as_str()))
            .collect::<Vec<_>>(),
        [(redis_fleet::routing::slots::SlotRange::ALL, "secondary")]
    );
    assert!(replicas.seeding.is_empty(), "{replicas:?}");
    assert_eq!(auth_mode(&home), mode);
    wait_table(&shop, "auth failed over again", |t| {
        t.failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = traffic.stop().await;
    assert_before(&mut c, "after the owner died the moment it served again").await;
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "owner killed the moment it served again: {} ops, {} keys acknowledged and read back, {} errors",
        ledger.ops,
        ledger.values.len() + ledger.counters.len(),
        ledger.errors.len()
    );
}

/// Per slot of `category`, the instance that serves it in `t` (its owner, unless a failover or
/// handover entry names another).
fn serving(t: &RoutingTable, category: &str) -> Vec<String> {
    let mut out: Vec<String> = t
        .category(category)
        .map(|c| c.owners().into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    for f in t.failover.iter().filter(|f| f.category == category) {
        for slot in f.start..=f.end {
            if out[usize::from(slot)] == f.from {
                out[usize::from(slot)].clone_from(&f.to);
            }
        }
    }
    out
}

/// The end of a test that killed an instance of the replicated shop: once the table it awaited
/// is out and two more seconds passed, the traffic stops, and the 300 keys written before and
/// every acknowledged write must read back (`when` says after what). Prints what the traffic
/// did.
async fn read_back_after(
    c: &mut redis::aio::MultiplexedConnection,
    sidecar: &Sidecar,
    traffic: Traffic,
    when: &str,
) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = traffic.stop().await;
    assert_before(c, when).await;
    assert_ledger(sidecar.port, &ledger).await;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for e in &ledger.errors {
        *kinds
            .entry(e.split_whitespace().nth(1).unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    eprintln!(
        "{when}: {} ops, {} keys acknowledged and read back, {} errors {kinds:?}",
        ledger.ops,
        ledger.values.len() + ledger.counters.len(),
        ledger.errors.len()
    );
}

/// A straggler: a sidecar that heartbeats the shop's table of now, forever (it reads a file
/// nobody updates), with the credentials of the three instances; waits until the policy
/// counts it beside the shop's sidecar.
async fn start_straggler(shop: &Shop) -> Sidecar {
    let secrets = [
        SHOP_SECRETS[0],
        SHOP_SECRETS[1],
        ("tertiary-redis", "password", "change-me-tertiary"),
    ];
    let straggler = Sidecar::start_as("straggler", &table(shop).await, &secrets, &[]);
    wait_sidecars(shop, 2).await;
    straggler
}

/// Whether `t` has a handover entry of `auth` that `which` accepts.
fn auth_handover(
    t: &RoutingTable,
    which: impl Fn(&redis_fleet::routing::table::Failover) -> bool,
) -> bool {
    t.failover
        .iter()
        .any(|f| f.category == "auth" && f.handover && which(f))
}

/// Waits (two minutes at most) for a table that hands part of `auth` over to the tertiary.
async fn wait_handed_to_tertiary(shop: &Shop) -> RoutingTable {
    wait_until_table(
        shop,
        "part of auth handed over to the tertiary",
        Duration::from_secs(120),
        |t| auth_handover(t, |f| f.from == "tertiary"),
    )
    .await
}

/// The mode `t` has `auth` written in.
fn auth_mode(t: &RoutingTable) -> Option<ReplicationMode> {
    t.category("auth")
        .and_then(|c| c.replication.as_ref())
        .map(|r| r.mode)
}

/// Issue 15 item 4: a `Sync` range that a plan moves keeps a full copy beside its owner at
/// every moment. A hot third instance joins the shop, and placement hands it a share of
/// `auth`. The moment a table serves part of `auth` from it (polled every 100 ms), it is
/// `kill -9`ed. That table must name a seeded replica for every slot it serves, and every
/// acknowledged write and all 300 keys written before must be read back. A Job move fails
/// this: the moved slots have no replica while they move, and a new one, seeding, after —
/// never promoted, so they fail over to an empty fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_range_a_join_moves_keeps_a_seeded_replica_and_survives_its_new_owners_death() {
    join_hands_over_and_the_new_owner_dies("handover", replicated_auth).await;
}

/// The same for an `Async` range: it is handed over too, its category written `Sync` while the
/// handover lasts (an `Async` result on its way to the new owner at the swap would be missing
/// there), and `Async` again after. The new owner dies the moment it serves: every write
/// acknowledged (none was at risk: the replica never failed) and the 300 keys written before
/// are read back from the replica. Before, a Job moved the range: the moved slots had no
/// replica while they moved, and a new one, seeding, after — 150 of the 300 keys were gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_range_a_join_moves_is_handed_over_and_survives_its_new_owners_death() {
    join_hands_over_and_the_new_owner_dies("handover-async", async_auth).await;
}

/// A hot third instance joins the shop with `auth` replicated as `policy` says, part of
/// `auth` is handed over to it, and it is `kill -9`ed the moment it serves.
async fn join_hands_over_and_the_new_owner_dies(prefix: &str, policy: fn(String) -> String) {
    let ReplicatedShop {
        shop,
        node: _node,
        table: before,
        sidecar,
        mut c,
        traffic,
        ..
    } = ReplicatedShop::start_with(prefix, policy, &[]).await;
    let mode = auth_mode(&before);
    let mut tertiary = apply_third_instance_in(&shop, "hot");
    // Handed over: the tertiary owns part of auth while the primary still serves it.
    let handed = wait_handed_to_tertiary(&shop).await;
    assert!(
        serving(&handed, "auth").iter().all(|s| s == "primary"),
        "{handed:#?}"
    );
    // Its writes are `Sync` while it lasts, whatever the category's mode.
    assert_eq!(auth_mode(&handed), Some(ReplicationMode::Sync));
    // The policy says so while it lasts, and starts no Job for it (a Job would have made the
    // range a migration, never a handover entry).
    let note = wait_policy_condition(&shop, "Rebalancing", "the handover shown", |s, r, _| {
        s == "True" && r == "HandingOver"
    })
    .await;
    assert!(note.contains("auth") && note.contains("tertiary"), "{note}");
    let moved = wait_until_table(
        &shop,
        "part of auth served by the tertiary",
        Duration::from_secs(180),
        |t| serving(t, "auth").iter().any(|s| s == "tertiary"),
    )
    .await;
    tertiary.kill();
    let serves = serving(&moved, "auth");
    let replication = moved
        .category("auth")
        .and_then(|c| c.replication.clone())
        .expect("auth is replicated");
    eprintln!(
        "auth on the tertiary at v{}: owners {:?}, replicas {:?}, seeding {:?}, outgoing {:?}",
        moved.version,
        moved.category("auth").map(|c| &c.slots),
        replication.replicas,
        replication.seeding,
        replication.outgoing
    );
    let replica_of = |slot: u16| {
        replication
            .replicas
            .iter()
            .find(|r| r.range.contains(slot))
            .map(|r| r.instance.as_str())
    };
    let seeding = |slot: u16| replication.seeding.iter().any(|r| r.range.contains(slot));
    for slot in 0..16384u16 {
        if serves[usize::from(slot)] == "tertiary" {
            assert!(
                replica_of(slot).is_some_and(|r| r != "tertiary") && !seeding(slot),
                "slot {slot} of auth is served by the tertiary without a seeded replica"
            );
        }
    }
    // The table that swapped roles ends the handovers it swapped: the category has its own
    // mode again once none is left.
    if !moved.failover.iter().any(|f| f.handover) {
        assert_eq!(auth_mode(&moved), mode);
    }
    let failed = wait_table(&shop, "auth failed over from the tertiary", |t| {
        t.failover
            .iter()
            .any(|f| f.category == "auth" && f.from == "tertiary" && !f.handover)
    })
    .await;
    assert_eq!(auth_mode(&failed), mode);
    if mode == Some(ReplicationMode::Async) {
        let failures = support::series_value(
            &sidecar.metrics(),
            "redisfleet_sidecar_replica_failures_total{category=\"auth\"}",
        );
        assert_eq!(
            failures,
            Some(0.0),
            "no write was at risk\n{}",
            sidecar.metrics()
        );
    }
    read_back_after(
        &mut c,
        &sidecar,
        traffic,
        "after the new owner died the moment it served",
    )
    .await;
}

/// Keys of the straggler's traffic: `auth`, apart from the main traffic's keys.
const STRAGGLER_TRAFFIC: &[&str] = &["auth:late:"];

/// A sidecar stuck on an old table (a straggler, still heartbeating — a mounted table that
/// never updates) holds a `Sync` handover back only for the converge timeout. A hot third
/// instance joins the shop while the straggler writes `auth` keys; its old table sends them
/// to the source and the old replica only, never to the new owner, so the new owner's seeding
/// waits for it. After `--rebalance-converge-timeout` the seeding starts all the same: the
/// source is fenced for the straggler (its clients get errors there from then on, never a
/// write acknowledged and left behind), the operator says so in a Warning Event, and the
/// handover ends. Every write either sidecar acknowledged is read back at the end. On the old
/// code the seeding waited for the straggler for as long as it lived: the tertiary never
/// served `auth`, and no plan could start meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_stuck_on_an_old_table_holds_a_handover_back_only_until_the_converge_timeout() {
    let ReplicatedShop {
        shop,
        node: _node,
        sidecar,
        mut c,
        traffic,
        ..
    } = ReplicatedShop::start_configured(
        "handover-stuck",
        &["--rebalance-converge-timeout", "20s"],
    )
    .await;
    let straggler_at = Instant::now();
    let mut straggler = start_straggler(&shop).await;
    let late = Traffic::start(straggler.port, STRAGGLER_TRAFFIC, 2);
    let tertiary = apply_third_instance_in(&shop, "hot");
    let handed = wait_handed_to_tertiary(&shop).await;
    let moved = wait_until_table(
        &shop,
        "part of auth served by the tertiary although a sidecar never loads a newer table",
        Duration::from_secs(240),
        |t| serving(t, "auth").iter().any(|s| s == "tertiary"),
    )
    .await;
    // The seeding went ahead of the straggler only once it had been behind for the timeout
    // (20 s; it can only fall behind once it runs), and the swap took 6 s more.
    let took = straggler_at.elapsed();
    assert!(
        took >= Duration::from_secs(20),
        "the handover ended {took:?} after the straggler started, before the converge timeout"
    );
    // The seeding fenced its replica's end too, at its table's version — before the swap's
    // table (a plan's fences come after it).
    let mut on_tertiary = tertiary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fences: BTreeMap<String, u64> = on_tertiary
        .hgetall(redis_fleet::redis::protocol::names::fences(&handed.policy))
        .await
        .unwrap();
    assert!(
        fences
            .get("tertiary")
            .is_some_and(|v| (handed.version..moved.version).contains(v)),
        "the new owner was not fenced by its seeding: {fences:?} (handed over at v{}, swapped at v{})",
        handed.version,
        moved.version
    );
    let logs = shop.operator.logs();
    assert!(
        logs.contains("past the converge timeout"),
        "the seeding did not say it went ahead of a sidecar behind:\n{}",
        shop.operator.log_tail(40)
    );
    let events = events_of(&shop, "SidecarsBehind").await;
    assert!(
        events.iter().any(|e| e.contains("fences them off")),
        "no SidecarsBehind Event: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains(" (v") && e.contains("straggler-")),
        "the Event does not name the sidecar behind: {events:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = late.stop().await;
    straggler.kill();
    eprintln!(
        "the straggler: {} ops, {} keys written, {} errors; handed over at v{}, served by the tertiary at v{}",
        late.ops,
        late.values.len() + late.counters.len(),
        late.errors.len(),
        handed.version,
        moved.version
    );
    assert!(
        late.values.values().any(|(acked, _)| acked.is_some()),
        "the straggler had no write acknowledged: {:?}",
        &late.errors[..late.errors.len().min(5)]
    );
    assert!(
        !late.errors.is_empty(),
        "the straggler was never refused on the fenced source"
    );
    drop(tertiary);
    assert_ledger(sidecar.port, &late).await;
    read_back_after(
        &mut c,
        &sidecar,
        traffic,
        "after a handover a straggler held back until the converge timeout",
    )
    .await;
}

/// Whether `t` hands a range of `auth` over.
fn hands_auth_over(t: &RoutingTable) -> bool {
    auth_handover(t, |_| true)
}

/// Issue 14 item 4 for handovers: `redisfleet.io/rebalance: pause` starts none, and `cancel`
/// gives one under way back, losing nothing. A hot third instance joins the shop while the
/// policy is paused: for 15 s after the policy lists it Ready, no table hands anything over. Resumed, part of `auth`
/// is handed over, and a straggler (a sidecar that never loads a newer table) holds its
/// seeding back — for the default two-minute converge timeout, longer than the test needs —
/// so the cancel finds it under way: the next table gives it back, the primary owning and
/// serving all of `auth`, with a seeded copy of every slot on the secondary (its replica, or
/// its outgoing one beside the tertiary, which may stay the replica and seeds on). The
/// straggler stops and the annotation goes: the seedings it held back finish, and the policy
/// settles with nothing handed over. Every acknowledged write and the 300 keys written before
/// are read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_policy_hands_nothing_over_and_a_cancel_gives_a_handover_back() {
    let ReplicatedShop {
        shop,
        node: _node,
        sidecar,
        mut c,
        traffic,
        ..
    } = ReplicatedShop::start("handover-control").await;
    let mut straggler = start_straggler(&shop).await;
    control(&shop, Some("pause")).await;
    let _tertiary = apply_third_instance_in(&shop, "hot");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let ready = p.status.iter().flat_map(|s| &s.instances).any(|i| {
            i.name == "tertiary"
                && i.phase == Some(redis_fleet::api::redis_instance::InstancePhase::Ready)
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the tertiary never listed Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet = Instant::now() + Duration::from_secs(15);
    while Instant::now() < quiet {
        let t = table(&shop).await;
        assert!(
            !hands_auth_over(&t),
            "a paused policy handed auth over: {t:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    control(&shop, Some("resume")).await;
    let handed = wait_handed_to_tertiary(&shop).await;
    assert!(
        serving(&handed, "auth").iter().all(|s| s == "primary"),
        "{handed:#?}"
    );
    control(&shop, Some("cancel")).await;
    let back = wait_table(&shop, "the handover given back", |t| !hands_auth_over(t)).await;
    let auth = back.category("auth").expect("auth");
    assert!(
        auth.slots.iter().all(|o| o.instance == "primary"),
        "given back, the primary owns auth: {back:#?}"
    );
    assert!(serving(&back, "auth").iter().all(|s| s == "primary"));
    // Every slot keeps a seeded copy on the secondary: its replica, or — where the tertiary
    // may stay the replica and seeds on — its outgoing one.
    let replication = auth.replication.as_ref().expect("auth is replicated");
    let on = |runs: &[redis_fleet::routing::table::SlotOwner], slot: u16, name: &str| {
        runs.iter()
            .any(|r| r.range.contains(slot) && r.instance == name)
    };
    for slot in 0..16384u16 {
        let seeded = on(&replication.replicas, slot, "secondary")
            && !replication.seeding.iter().any(|r| r.range.contains(slot));
        assert!(
            seeded || on(&replication.outgoing, slot, "secondary"),
            "slot {slot} of auth lost its seeded copy on the secondary: {replication:?}"
        );
    }
    assert_before(&mut c, "after the handover was given back").await;

    // The straggler stops and the annotation goes: the seedings it held back finish, and
    // the policy settles with every slot of auth seeded and nothing handed over.
    straggler.kill();
    control(&shop, None).await;
    wait_until_table(
        &shop,
        "auth seeded and settled after the cancel",
        Duration::from_secs(120),
        |t| {
            !hands_auth_over(t)
                && t.category("auth")
                    .and_then(|c| c.replication.as_ref())
                    .is_some_and(|r| r.seeding.is_empty() && r.outgoing.is_empty())
        },
    )
    .await;
    read_back_after(&mut c, &sidecar, traffic, "after a cancelled handover").await;
}

/// Issue 15 item 4, the other end: the *source* of a `Sync` range a plan moves dies the moment
/// the move begins — a hot third instance joins, and the primary is `kill -9`ed as soon as a
/// table hands part of `auth` to the newcomer (or, moved by a Job, migrates it). The range must
/// go to a copy that holds every acknowledged write: the secondary, kept on as the outgoing
/// replica beside the seeding newcomer. A Job move fails this: while the range migrates it has
/// no replica, and the keys not copied yet die with the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_range_whose_source_dies_as_it_is_handed_over_loses_nothing() {
    let ReplicatedShop {
        mut shop,
        node: _node,
        sidecar,
        mut c,
        traffic,
        ..
    } = ReplicatedShop::start("handover-source").await;
    let _tertiary = apply_third_instance_in(&shop, "hot");
    let moving = wait_until_table(
        &shop,
        "part of auth handed over to the tertiary",
        Duration::from_secs(120),
        |t| {
            t.failover
                .iter()
                .any(|f| f.category == "auth" && f.from == "tertiary")
                || t.migrating
                    .iter()
                    .any(|m| m.category == "auth" && m.to == "tertiary")
        },
    )
    .await;
    shop.primary.kill();
    let replication = moving
        .category("auth")
        .and_then(|c| c.replication.clone())
        .expect("auth is replicated");
    eprintln!(
        "auth moving at v{}: failover {:?}, migrating {:?}, replicas {:?}, seeding {:?}, outgoing {:?}",
        moving.version,
        moving.failover,
        moving.migrating,
        replication.replicas,
        replication.seeding,
        replication.outgoing
    );
    wait_until_table(
        &shop,
        "auth served without the primary",
        Duration::from_secs(60),
        |t| !serving(t, "auth").iter().any(|s| s == "primary"),
    )
    .await;
    read_back_after(
        &mut c,
        &sidecar,
        traffic,
        "after the source died as the move began",
    )
    .await;
}

/// Issue 15 item 4, drains: the owner of a `Sync` range is drained. With a hot third instance
/// in the fleet (its join handed half of `auth` over), the primary is drained: the rest of
/// `auth` is handed over to the tertiary too, the secondary staying its replica, and the
/// primary goes at the swap. The tertiary is `kill -9`ed the moment it serves all of `auth`:
/// the secondary must hold every acknowledged write and the 300 keys written before. A Job
/// move fails this: the moved range's new replica is still seeding then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_owners_sync_range_is_handed_over_and_survives_its_new_owners_death() {
    let ReplicatedShop {
        shop,
        node: _node,
        sidecar,
        mut c,
        traffic,
        ..
    } = ReplicatedShop::start("handover-drain").await;
    let mut tertiary = apply_third_instance_in(&shop, "hot");
    // The join's handover ends: the tertiary serves part of auth, seeded beside the secondary.
    wait_until_table(
        &shop,
        "the join's handover swapped",
        Duration::from_secs(120),
        |t| {
            t.failover.iter().all(|f| f.category != "auth")
                && serving(t, "auth").iter().any(|s| s == "tertiary")
                && serving(t, "auth").iter().any(|s| s == "primary")
        },
    )
    .await;
    let patch = serde_json::json!({"spec": {"drain": true}});
    shop.instances
        .patch("primary", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_until_table(
        &shop,
        "the primary's auth handed over",
        Duration::from_secs(120),
        |t| auth_handover(t, |f| f.to == "primary"),
    )
    .await;
    let moved = wait_until_table(
        &shop,
        "all of auth served by the tertiary",
        Duration::from_secs(120),
        |t| serving(t, "auth").iter().all(|s| s == "tertiary"),
    )
    .await;
    tertiary.kill();
    let replication = moved
        .category("auth")
        .and_then(|c| c.replication.clone())
        .expect("auth is replicated");
    assert!(replication.seeding.is_empty(), "{replication:?}");
    assert!(
        replication
            .replicas
            .iter()
            .all(|r| r.instance == "secondary"),
        "{replication:?}"
    );
    wait_table(&shop, "auth failed over from the tertiary", |t| {
        t.failover
            .iter()
            .any(|f| f.category == "auth" && f.from == "tertiary" && !f.handover)
    })
    .await;
    read_back_after(
        &mut c,
        &sidecar,
        traffic,
        "after the drain's new owner died the moment it served",
    )
    .await;
}

/// `async`: the owner is `kill -9`ed under traffic. Its results still on their way reach the
/// replica, which serves the category at once: with no replica failure reported, every write
/// acknowledged before the owner died is read back — the lag (`backlog_age`) bounds only what
/// a replica failure or a sidecar's death could lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_category_loses_no_acknowledged_write_when_its_owner_dies() {
    let mut shop = shop_with("async-failover", async_auth).await;
    let _ = settled(&shop).await;
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let t = wait_replicated(&shop, "auth replicated on the secondary").await;
    assert_eq!(
        t.category("auth")
            .and_then(|c| c.replication.as_ref())
            .map(|r| r.mode),
        Some(ReplicationMode::Async)
    );
    let traffic = Traffic::start(sidecar.port, &["auth:", "session:"], 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metric = |series: &str| -> f64 {
        support::series_value(&sidecar.metrics(), series)
            .unwrap_or_else(|| panic!("no {series} in the sidecar's metrics"))
    };
    let replicated = metric("redisfleet_sidecar_replicated_writes_total{category=\"auth\"}");
    assert!(replicated > 0.0, "{}", sidecar.metrics());

    shop.primary.kill();
    wait_table(&shop, "auth failed over", |t| {
        t.failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = traffic.stop().await;
    let failures = metric("redisfleet_sidecar_replica_failures_total{category=\"auth\"}");
    assert_eq!(failures, 0.0, "no result failed\n{}", sidecar.metrics());
    assert_eq!(
        metric("redisfleet_sidecar_replication_backlog_age_seconds"),
        0.0,
        "nothing is on its way"
    );
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "async owner death: {} ops, {} keys acknowledged and read back from the replica, \
         {} results replicated before the kill, {} errors while the owner was down",
        ledger.ops,
        ledger.values.len() + ledger.counters.len(),
        replicated,
        ledger.errors.len()
    );
}

/// `FLUSHALL` on one instance, straight to it: what a restart without persistence within the
/// probe threshold leaves (or a managed failover to an empty node), while it keeps answering.
async fn flush(server: &RedisServer) {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_loses_its_data_while_it_answers_gets_it_back_from_its_replica() {
    let shop = shop_with("lost-data", replicated_auth).await;
    let (_, plan) = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    wait_replicated(&shop, "auth replicated on the secondary").await;
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    write_before(&mut c).await;
    let traffic = Traffic::start(sidecar.port, &["auth:a"], 3);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. The replica loses its data while it answers: it is seeded again from the owner.
    flush(&shop.secondary).await;
    wait_table(&shop, "the flushed replica seeded again", |t| {
        t.category("auth")
            .and_then(|c| c.replication.as_ref())
            .is_some_and(|r| !r.seeding.is_empty())
    })
    .await;
    wait_replicated(&shop, "the replica seeded again").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = traffic.stop().await;

    // 2. The owner loses its data while it answers: the replica, seeded again in step 1,
    // serves the range with everything acknowledged before. (No traffic between the flush and
    // the failover: a write there works on the empty owner — an INCR starts from nothing —
    // and its result is replicated; that window is one reconcile, `docs/replication.md`.)
    flush(&shop.primary).await;
    let during = wait_table(&shop, "auth failed over from its flushed owner", |t| {
        t.failover.iter().any(|f| f.category == "auth")
    })
    .await;
    assert!(
        during
            .failover
            .iter()
            .all(|f| f.category == "auth" && f.from == "primary" && f.to == "secondary"),
        "{:?}",
        during.failover
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_before(&mut c, "after the owner's loss").await;
    assert_ledger(sidecar.port, &before).await;
    let traffic = Traffic::start(sidecar.port, &["auth:b"], 3);

    // 3. The failback brings the range home with the writes of the meantime, and the
    // secondary is the replica again.
    let _ = wait_rebalanced(&shop, &node, plan, Duration::from_secs(120)).await;
    let after = wait_replicated(&shop, "auth home and replicated again").await;
    assert_eq!(after.category("auth").unwrap().slots[0].instance, "primary");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let meanwhile = traffic.stop().await;
    assert_before(&mut c, "after the failback").await;
    assert_ledger(sidecar.port, &before).await;
    assert_ledger(sidecar.port, &meanwhile).await;
    let events = events_of(&shop, "InstanceLostData").await;
    assert!(
        events.iter().any(|n| n.contains("primary"))
            && events.iter().any(|n| n.contains("secondary")),
        "{events:?}"
    );
    // The `Replicated` condition went through the failback's move (its slots without a
    // replica) and the seeding, and says so again at the end.
    let unreplicated = events_of(&shop, "Unreplicated").await;
    assert!(
        unreplicated.iter().any(|n| n.contains("auth:")),
        "{unreplicated:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let policy = shop.policies.get("shop").await.unwrap();
        let replicated = policy
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Replicated"));
        if replicated.as_ref().is_some_and(|c| c.status == "True") {
            break;
        }
        assert!(Instant::now() < deadline, "Replicated: {replicated:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "lost data: {} + {} ops, {} errors, plan {plan}",
        before.ops,
        meanwhile.ops,
        before.errors.len() + meanwhile.errors.len()
    );
}

/// The notes of the Events of `shop`'s namespace with `reason`.
async fn events_of(shop: &Shop, reason: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: kube::Api<Event> =
        kube::Api::namespaced(shop.policies.clone().into_client(), &shop.ns);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

/// A sidecar that dies (`kill -9`) with `async` results still on their way to the replica:
/// those acknowledged writes are missing there, and the operator — seeing the sidecar vanish
/// from the heartbeats — checks the replicas within a minute of the last check rather than
/// five, and repairs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_dies_with_async_results_in_flight_gets_them_repaired_soon() {
    let shop = shop_with("async-crash", |p| {
        replicated_auth(p).replace("replication: Sync", "replication: Async")
    })
    .await;
    settled(&shop).await;
    let mut sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    wait_replicated(&shop, "auth replicated on the secondary").await;
    // The first check runs as soon as the replica is seeded; the next is due five minutes
    // after it.
    assert!(
        support::process::wait_until(Duration::from_secs(30), || shop
            .operator
            .logs()
            .contains("replicas checked")),
        "no first check\n{}",
        shop.operator.log_tail(30)
    );
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = c.set("auth:warm-up", "1").await.unwrap();
    // The replica freezes for well under the probes' threshold; 24 × 512 KiB (12 MiB of the primary's 30) are acknowledged
    // meanwhile, more than the sockets to it hold, so results wait in the sidecar — which dies.
    const WRITES: usize = 24;
    let value = "v".repeat(512 << 10);
    let replica_pid = shop.secondary.pid().unwrap();
    assert!(support::process::signal(replica_pid, "-STOP"));
    let frozen = Instant::now();
    let mut pipe = redis::pipe();
    for n in 0..WRITES {
        pipe.set(format!("auth:crash{n}"), &value);
    }
    let acked: Result<Vec<String>, _> = pipe.query_async(&mut c).await;
    sidecar.kill();
    assert!(support::process::signal(replica_pid, "-CONT"));
    let acked = acked.expect("the writes are acknowledged while the replica is frozen");
    assert!(acked.iter().all(|r| r == "OK"), "{acked:?}");
    let killed = Instant::now();
    assert!(
        killed - frozen < Duration::from_millis(1_500),
        "the replica was frozen for {:?}: the probes may have declared it dead",
        killed - frozen
    );
    let mut on_replica = shop
        .secondary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let missing = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let mut n_missing = 0;
            for n in 0..WRITES {
                let there: bool = conn.exists(format!("auth:crash{n}")).await.unwrap();
                n_missing += usize::from(!there);
            }
            n_missing
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lost = missing(&mut on_replica).await;
    assert!(
        lost > 0,
        "the dead sidecar's results all reached the replica: nothing to repair"
    );
    // The five-minute check would come at most five minutes after the first one, which
    // started when the replica was seeded; the sidecar's absence brings it forward.
    let deadline = killed + Duration::from_secs(150);
    let repaired = loop {
        let left = missing(&mut on_replica).await;
        if left == 0 {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{left} of {lost} acknowledged writes still missing on the replica after {:?}\n{}",
            killed.elapsed(),
            shop.operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let diverged = events_of(&shop, "ReplicaDiverged").await;
    assert!(!diverged.is_empty(), "no ReplicaDiverged Event");
    eprintln!(
        "a dead sidecar's {lost} undelivered async results repaired {:.0} s after its death: {}",
        repaired.as_secs_f64(),
        diverged.join(" | ")
    );
}

/// A replica that moves keeps its range replicated until its successor is seeded (issue 15,
/// item 4). The shop's third instance joins; `auth` is replicated `Sync` on a warm instance,
/// which is then drained while clients write. A sidecar that never loads a newer table (a
/// straggler, still heartbeating) holds the new replica's seeding back, and the owner is
/// `kill -9`ed in that window: the failover must promote the drained replica, which still
/// takes every write, not the half-seeded new one. Every key written before and every
/// acknowledged write is read back; the failback and the drain then finish, and the new
/// replica ends seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_moves_keeps_its_range_replicated_until_its_successor_is_seeded() {
    let mut shop = shop_with("replica-moves", replicated_auth).await;
    let _ = settled(&shop).await;
    let node = Node::start(shop.cp, &shop.ns);
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, "shop-redis-routing", "app-1");
    let _tertiary = apply_third_instance(&shop);
    let joined = wait_replicated_with(&shop, "the third instance joined, auth replicated", |t| {
        t.instances.contains_key("tertiary")
    })
    .await;
    let auth = joined.category("auth").unwrap();
    let replica = auth.replication.as_ref().unwrap().replicas[0]
        .instance
        .clone();
    let successor = if replica == "secondary" {
        "tertiary"
    } else {
        "secondary"
    };
    let mut c = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    write_before(&mut c).await;
    let traffic = Traffic::start(sidecar.port, REPLICATED_TRAFFIC, 3);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut straggler = start_straggler(&shop).await;

    // The replica's instance drains: the table names the successor, seeding.
    let patch = serde_json::json!({"spec": {"drain": true}});
    shop.instances
        .patch(&replica, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let handing = wait_table(&shop, "the successor named, seeding", |t| {
        t.category("auth")
            .and_then(|c| c.replication.as_ref())
            .is_some_and(|r| r.seeding.iter().any(|s| s.instance == successor))
    })
    .await;
    // The owner dies before the successor is seeded.
    shop.primary.kill();
    let during = wait_table(&shop, "auth failed over", |t| {
        t.failover.iter().any(|f| f.category == "auth")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let missing = missing_before(&mut c).await;
    assert!(
        missing.is_empty(),
        "{} of {BEFORE_KEYS} keys written before are missing after the failover (auth:k{:?}): \
         the failover table {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        during.failover
    );
    let r = handing
        .category("auth")
        .unwrap()
        .replication
        .clone()
        .unwrap();
    assert_eq!(r.outgoing.len(), 1, "{r:?}");
    assert_eq!(r.outgoing[0].instance, replica);
    assert!(
        during
            .failover
            .iter()
            .filter(|f| f.category == "auth")
            .all(|f| f.to == replica)
    );

    // The straggler goes; the owner comes back (empty): the failback brings auth home, the
    // drain empties the old replica's instance, and the successor ends seeded.
    straggler.kill();
    shop.primary.restart();
    let end = wait_replicated_with(&shop, "auth home, the successor seeded", |t| {
        t.category("auth").unwrap().slots[0].instance == "primary"
            && t.category("auth")
                .unwrap()
                .replication
                .as_ref()
                .is_some_and(|r| r.outgoing.is_empty() && r.replicas[0].instance == successor)
            && !t.owns_any(&replica)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = traffic.stop().await;
    assert_before(&mut c, "at the end").await;
    assert_ledger(sidecar.port, &ledger).await;
    eprintln!(
        "a replica that moves: {} ops, {} errors (the owner down), table v{} at the end",
        ledger.ops,
        ledger.errors.len(),
        end.version
    );
    drop(node);
}

/// Waits until `auth` is replicated everywhere, seeded, with no failover and no move, and
/// `cond` holds (two minutes at most: a plan may run first).
async fn wait_replicated_with(
    shop: &Shop,
    what: &str,
    cond: impl Fn(&RoutingTable) -> bool,
) -> RoutingTable {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = table(shop).await;
        let replicated = t.failover.is_empty()
            && t.migrating.is_empty()
            && t.category("auth")
                .and_then(|c| c.replication.as_ref())
                .is_some_and(|r| {
                    r.seeding.is_empty()
                        && r.replicas.len() == 1
                        && r.replicas[0].range == redis_fleet::routing::slots::SlotRange::ALL
                });
        if replicated && cond(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {t:#?}\n{}",
            shop.operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the policy counts `n` live sidecars.
async fn wait_sidecars(shop: &Shop, n: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        if p.status
            .as_ref()
            .and_then(|s| s.sidecars.as_ref())
            .is_some_and(|s| s.count >= n)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{n} sidecars never counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
