//! Balance as the goal of every plan, against a real apiserver, real redis-servers, the real
//! operator, the real Job command (run by `support::node`) and the real `redis-fleet plan`:
//! on the seed's shop policy, two instances at 85 % / 10 % end within 40–60 % each; three
//! instances of 30 MB holding 32 MB end within 25–45 % each, nothing moving back onto the
//! fullest; each plan moves at most 1.25 × the least that reaches the band, its estimate next
//! to the measured bytes in status; `redis-fleet plan` shows the plan first — run with an
//! identity that may only read — and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use redis_fleet::api::cache_policy::{CachePolicy, RebalanceBalance, rebalance_phase};
use redis_fleet::cli::plan::Preview;
use support::RedisServer;
use support::node::Node;
use support::process::temp_dir;
use support::shop::{MB, Shop, example, kubectl_apply, server_with_password, shop_with};
use support::wait_for;

const CAPACITY: u64 = 30 * MB;

fn fast_cooldown(policy: String) -> String {
    policy.replace("      cooldown: 5m\n", "      cooldown: 1s\n")
}

fn value(key: &str) -> String {
    format!("{key}:{}", "v".repeat(480 + key.len() % 200))
}

/// Writes keys of `prefixes` straight into `server` (100 per pipeline) until its used memory
/// reaches `until` bytes; returns the keys.
async fn fill(server: &RedisServer, prefixes: &[&str], first: usize, until: u64) -> Vec<String> {
    let mut c = server.bookkeeping_connection().await;
    let mut keys = Vec::new();
    let mut n = first;
    while server.used_memory().await < until {
        let mut pipe = redis::pipe();
        for _ in 0..100 {
            let key = format!("{}{n}", prefixes[n % prefixes.len()]);
            pipe.cmd("SET").arg(&key).arg(value(&key)).ignore();
            keys.push(key);
            n += 1;
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    keys
}

/// How many of `keys` are on exactly one of `servers` with their value.
async fn intact(servers: &[&RedisServer], keys: &[String]) -> usize {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for server in servers {
        let mut c = server.bookkeeping_connection().await;
        for chunk in keys.chunks(1_000) {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut c)
                .await
                .unwrap();
            for (k, v) in chunk.iter().zip(values) {
                if v.as_deref() == Some(value(k).as_str()) {
                    *seen.entry(k.as_str()).or_default() += 1;
                }
            }
        }
    }
    seen.values().filter(|n| **n == 1).count()
}

async fn share(server: &RedisServer) -> f64 {
    server.used_memory().await as f64 / CAPACITY as f64
}

/// Waits for the plan after `after_plan` to succeed; fails on Failed.
async fn wait_rebalanced(shop: &Shop, node: &Node, after_plan: i64) -> CachePolicy {
    let deadline = Instant::now() + Duration::from_secs(180);
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

/// Waits until the operator measured the finished plan; returns its balance.
async fn measured(shop: &Shop) -> RebalanceBalance {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let b = p
            .status
            .and_then(|s| s.rebalance)
            .and_then(|r| r.balance)
            .expect("the plan's estimate in status");
        if b.measured_bytes.is_some() {
            return b;
        }
        assert!(Instant::now() < deadline, "never measured: {b:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until both instances are probed and the table is published; returns the last plan.
async fn settled(shop: &Shop) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = shop.policies.get("shop").await.unwrap();
        let rb = p.status.as_ref().and_then(|s| s.rebalance.clone());
        let ready = p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready
            && rb
                .as_ref()
                .is_none_or(|r| r.phase == rebalance_phase::SUCCEEDED)
        {
            return rb.map_or(0, |r| r.plan_id);
        }
        assert!(Instant::now() < deadline, "never settled: {:#?}", p.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the operator's probes show `name` using more than `share` of its capacity
/// (the plan, the operator's and `redis-fleet plan`'s, works from the instances' status).
async fn probed_above(shop: &Shop, name: &str, share: f64) {
    wait_for(
        &shop.instances,
        name,
        Duration::from_secs(30),
        "memory in status",
        |ri| {
            ri.status
                .as_ref()
                .and_then(|s| s.memory.as_ref())
                .is_some_and(|m| m.used_bytes as f64 > share * CAPACITY as f64)
        },
    )
    .await;
}

/// A kubeconfig for a ServiceAccount that may only get and list what `redis-fleet plan`
/// reads: if the command tried to change anything, the API server would refuse it.
fn read_only_kubeconfig(shop: &Shop) -> PathBuf {
    let ns = shop.ns.as_str();
    let kubectl = |args: &[&str]| {
        let out = shop.cp.kubectl().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    kubectl(&["create", "serviceaccount", "plan-viewer", "-n", ns]);
    kubectl(&[
        "create",
        "role",
        "plan-viewer",
        "-n",
        ns,
        "--verb=get,list",
        "--resource=cachepolicies.redisfleet.io,redisinstances.redisfleet.io,configmaps,secrets",
    ]);
    kubectl(&[
        "create",
        "rolebinding",
        "plan-viewer",
        "-n",
        ns,
        "--role=plan-viewer",
        &format!("--serviceaccount={ns}:plan-viewer"),
    ]);
    let token = kubectl(&["create", "token", "plan-viewer", "-n", ns]);
    let admin = std::fs::read_to_string(&shop.cp.kubeconfig).unwrap();
    assert!(admin.contains("redis-fleet-test-admin-token"));
    let path = temp_dir("plan-viewer").join("kubeconfig");
    std::fs::write(&path, admin.replace("redis-fleet-test-admin-token", &token)).unwrap();
    path
}

fn redis_fleet(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redis-fleet"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("COLUMNS", "100")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running redis-fleet")
}

/// `redis-fleet plan` as text (printed, for the log) and as JSON.
fn plan(kubeconfig: &Path, policy: &str, extra: &[&str]) -> Preview {
    let mut args = vec!["plan", "--policy", policy];
    args.extend(extra);
    let text = redis_fleet(kubeconfig, &args);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    println!(
        "$ redis-fleet {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&text.stdout)
    );
    args.extend(["-o", "json"]);
    let json = redis_fleet(kubeconfig, &args);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    serde_json::from_slice(&json.stdout).unwrap()
}

/// The status's estimate against the least, and against what was measured.
fn assert_estimate(b: &RebalanceBalance) {
    let least = b.least_bytes.expect("the least that reaches the band") as f64;
    let planned = b.estimated_bytes as f64;
    let measured = b.measured_bytes.unwrap() as f64;
    println!(
        "planned {:.2} MiB · least to the band {:.2} MiB · measured {:.2} MiB",
        planned / MB as f64,
        least / MB as f64,
        measured / MB as f64
    );
    assert!(planned <= 1.25 * least, "{b:#?}");
    assert!(
        (0.8..=1.2).contains(&(measured / planned)),
        "measured {measured} vs estimated {planned}: {b:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_at_85_and_10_percent_end_within_40_to_60() {
    let shop = shop_with("balance-two", fast_cooldown).await;
    let plan_before = settled(&shop).await;
    let viewer = read_only_kubeconfig(&shop);
    let policy = format!("{}/shop", shop.ns);
    // The seed: hot data fills the primary to 85 %, the secondary holds 10 % of warm data.
    let mut keys = fill(
        &shop.primary,
        &["auth:", "session:", "order:", "notification:"],
        0,
        CAPACITY * 85 / 100,
    )
    .await;
    keys.extend(
        fill(
            &shop.secondary,
            &["user:", "menu:"],
            1_000_000,
            CAPACITY / 10,
        )
        .await,
    );
    let before = (share(&shop.primary).await, share(&shop.secondary).await);
    println!(
        "before: primary {:.1}%, secondary {:.1}%",
        before.0 * 100.0,
        before.1 * 100.0
    );
    // (The status shows memory to within a point: it is rewritten once it moved one.)
    probed_above(&shop, "primary", before.0 - 0.01).await;
    probed_above(&shop, "secondary", before.1 - 0.01).await;

    // See it first: with an identity that may only read.
    let preview = plan(&viewer, &policy, &[]);
    assert!(
        preview
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("above the 80% threshold")),
        "{preview:#?}"
    );
    assert!(
        preview
            .moves
            .iter()
            .all(|m| m.from == "primary" && m.to == "secondary" && m.keys > 0),
        "{preview:#?}"
    );
    assert!(preview.outside().is_empty(), "{preview:#?}");
    assert!(
        preview.total_bytes as f64 <= 1.25 * preview.least_bytes.unwrap() as f64,
        "{preview:#?}"
    );

    // Jobs run from now on.
    let node = Node::start(shop.cp, &shop.ns);
    let p = wait_rebalanced(&shop, &node, plan_before).await;
    let r = p.status.unwrap().rebalance.unwrap();
    assert!(
        r.moves
            .iter()
            .all(|m| m.from == "primary" && m.to == "secondary")
    );
    let after = (share(&shop.primary).await, share(&shop.secondary).await);
    println!(
        "after: primary {:.1}%, secondary {:.1}%",
        after.0 * 100.0,
        after.1 * 100.0
    );
    for (name, s) in [("primary", after.0), ("secondary", after.1)] {
        assert!(
            (0.40..=0.60).contains(&s),
            "{name} at {:.1}%: {r:#?}\n{}\nkeys intact: {} of {}",
            s * 100.0,
            node.all_logs(),
            intact(&[&shop.primary, &shop.secondary], &keys).await,
            keys.len()
        );
    }
    // The preview said where they would end.
    for i in &preview.instances {
        let measured = if i.name == "primary" {
            after.0
        } else {
            after.1
        };
        let predicted = i.after_percent.unwrap() / 100.0;
        let server = if i.name == "primary" {
            &shop.primary
        } else {
            &shop.secondary
        };
        assert!(
            (measured - predicted).abs() < 0.05,
            "{}: predicted {predicted:.3}, ended at {measured:.3}\n{}",
            i.name,
            server.memory_stats().await
        );
    }
    assert_estimate(&measured(&shop).await);
    assert_eq!(
        intact(&[&shop.primary, &shop.secondary], &keys).await,
        keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_of_30_mb_holding_32_mb_end_within_25_to_45() {
    let shop = shop_with("balance-three", fast_cooldown).await;
    let plan_before = settled(&shop).await;
    // The primary passes the threshold; the first plan spills hot data onto the secondary.
    // (The data is written straight into Redis, not through a sidecar, so it is all written
    // before any Job runs: a direct write into a range being moved would be lost.)
    let mut keys = fill(
        &shop.primary,
        &["auth:", "session:", "order:", "notification:"],
        0,
        CAPACITY * 85 / 100,
    )
    .await;
    let tertiary = server_with_password("change-me-tertiary");
    let baseline = tertiary.used_memory().await;
    keys.extend(
        fill(
            &shop.secondary,
            &["user:", "menu:", "ml:"],
            1_000_000,
            32 * MB - shop.primary.used_memory().await - baseline,
        )
        .await,
    );
    let node = Node::start(shop.cp, &shop.ns);
    let first = wait_rebalanced(&shop, &node, plan_before).await;
    let first_plan = first.status.unwrap().rebalance.unwrap().plan_id;
    let total = shop.primary.used_memory().await
        + shop.secondary.used_memory().await
        + tertiary.used_memory().await;
    println!(
        "after the threshold plan: primary {:.1}%, secondary {:.1}%; {:.1} MiB in all",
        share(&shop.primary).await * 100.0,
        share(&shop.secondary).await * 100.0,
        total as f64 / MB as f64
    );

    // See the join first (once the probes show the first plan's outcome).
    probed_above(&shop, "secondary", 0.30).await;
    let yaml = example(
        "third-instance.yaml",
        &[("redis-tertiary.example.com", &tertiary)],
    );
    let file = temp_dir("third-instance").join("third-instance.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let preview = plan(
        &shop.cp.kubeconfig,
        &format!("{}/shop", shop.ns),
        &["--add-instance", file.to_str().unwrap()],
    );
    assert_eq!(
        preview.what_if,
        ["tertiary joins (tier warm, 30.0Mi, counted as empty)"]
    );
    assert!(
        preview.moves.iter().any(|m| m.to == "tertiary"),
        "{preview:#?}"
    );
    assert!(
        preview.moves.iter().all(|m| m.to != "primary"),
        "{preview:#?}"
    );
    assert!(preview.outside().is_empty(), "{preview:#?}");

    // GitOps applies it.
    let out = kubectl_apply(shop.cp, &shop.ns, &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let joined = wait_rebalanced(&shop, &node, first_plan).await;
    let r = joined.status.unwrap().rebalance.unwrap();
    assert!(
        r.moves.iter().all(|m| m.to != "primary"),
        "nothing moves back onto the fullest instance: {r:#?}"
    );
    let shares = [
        ("primary", share(&shop.primary).await),
        ("secondary", share(&shop.secondary).await),
        ("tertiary", share(&tertiary).await),
    ];
    println!(
        "after the join: {}",
        shares
            .iter()
            .map(|(n, s)| format!("{n} {:.1}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, s) in shares {
        assert!(
            (0.25..=0.45).contains(&s),
            "{name} at {:.1}%: {r:#?}\n{}\nkeys intact: {} of {}",
            s * 100.0,
            node.all_logs(),
            intact(&[&shop.primary, &shop.secondary, &tertiary], &keys).await,
            keys.len()
        );
    }
    assert_estimate(&measured(&shop).await);
    assert_eq!(
        intact(&[&shop.primary, &shop.secondary, &tertiary], &keys).await,
        keys.len()
    );
}
