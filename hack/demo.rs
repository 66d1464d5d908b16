//! `make demo`: the user's story, end to end, on a local control plane.
//!
//! Two 30 MB Redis servers (`primary` hot, `secondary` warm) as in `examples/`, the real
//! operator, a sidecar, and a workload writing the shop's categories through the sidecar. It
//! shows the routing, fills the primary past its 80 % threshold and follows the rebalance,
//! previews a third instance with `redis-fleet plan`, applies `examples/third-instance.yaml`
//! and follows the data spreading to it until all three are within the balance band, then
//! kills one Redis and shows the failover — printing `redis-fleet status` after each step. Everything it
//! started stops when it ends (or fails, or is interrupted).
//!
//! There is no kubelet here: a small stand-in (the test harness's `Node`) runs the rebalance
//! Jobs' pods as local processes and reports their outcome through the API, like the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::Api;
use redis_fleet::api::cache_policy::{CachePolicy, rebalance_phase};
use redis_fleet::routing::config_map::table_of;
use redis_fleet::routing::table::RoutingTable;
use support::node::Node;
use support::operator::Operator;
use support::redis_fleet_binary;
use support::shop::{example, example_policy, kubectl_apply, server_with_password};
use support::sidecar::Sidecar;
use support::{ControlPlane, RedisServer};

/// The shop's keys: hot categories (auth, order, notification) and warm ones (user, menu).
const HOT: [&str; 4] = ["auth:", "session:", "order:", "notification:"];
const WARM: [&str; 2] = ["user:", "menu:"];
const CAPACITY: u64 = 30 << 20;

fn step(title: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        println!("\n\x1b[1m==> {title}\x1b[0m");
    } else {
        println!("\n==> {title}");
    }
}

fn status(cp: &ControlPlane, ns: &str) {
    redis_fleet(cp, &["status", "-n", ns]);
}

/// Runs `redis-fleet ARGS` against the demo's cluster and prints what it says.
fn redis_fleet(cp: &ControlPlane, args: &[&str]) {
    let out = Command::new(redis_fleet_binary())
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("COLUMNS", "110")
        .output()
        .expect("running redis-fleet status");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

fn apply(cp: &ControlPlane, ns: &str, what: &str, yaml: &str) {
    println!("$ kubectl apply -f {what}");
    let out = kubectl_apply(cp, ns, yaml);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn dbsize(server: &RedisServer) -> u64 {
    let Ok(mut c) = server.client().get_multiplexed_async_connection().await else {
        return 0;
    };
    redis::cmd("DBSIZE").query_async(&mut c).await.unwrap_or(0)
}

fn value(key: &str) -> String {
    format!("{key}:{}", "x".repeat(600))
}

/// Writes keys of `prefixes` through the sidecar, 1 000 per pipeline, until `stop` says so.
async fn write_until(
    conn: &mut redis::aio::MultiplexedConnection,
    prefixes: &[&str],
    first: usize,
    mut stop: impl AsyncFnMut(usize) -> bool,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut n = first;
    loop {
        let mut pipe = redis::pipe();
        for _ in 0..1_000 {
            let key = format!("{}{n}", prefixes[n % prefixes.len()]);
            pipe.cmd("SET").arg(&key).arg(value(&key)).ignore();
            keys.push(key);
            n += 1;
        }
        let () = pipe
            .query_async(conn)
            .await
            .expect("writing through the sidecar");
        if stop(keys.len()).await {
            return keys;
        }
    }
}

/// Reads every key back through the sidecar; returns how many came back with their value.
async fn read_back(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> usize {
    let mut good = 0;
    for chunk in keys.chunks(1_000) {
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(conn)
            .await
            .expect("reading through the sidecar");
        good += chunk
            .iter()
            .zip(values)
            .filter(|(k, v)| v.as_deref() == Some(value(k).as_str()))
            .count();
    }
    good
}

/// Follows the rebalance after plan `after` until it succeeds, printing its progress.
async fn follow_rebalance(policies: &Api<CachePolicy>, after: i64, node: &Node) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = String::new();
    loop {
        let p = policies.get("shop").await.unwrap();
        if let Some(r) = p.status.and_then(|s| s.rebalance)
            && r.plan_id > after
        {
            let line = format!(
                "   plan {} · {} · {} · {} / {} keys",
                r.plan_id,
                r.phase,
                r.step.as_deref().unwrap_or("-"),
                r.keys_moved.unwrap_or(0),
                r.keys_total.unwrap_or(0)
            );
            if line != last {
                println!("{line}");
                last = line;
            }
            assert_ne!(
                r.phase,
                rebalance_phase::FAILED,
                "the rebalance failed: {r:#?}\n{}",
                node.all_logs()
            );
            if r.phase == rebalance_phase::SUCCEEDED {
                return r.plan_id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no rebalance finished\n{}",
            node.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits (a little) until the operator measured the finished plan, so that the status view
/// shows the measurement next to the estimate.
async fn wait_measured(policies: &Api<CachePolicy>) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let measured = policies
            .get("shop")
            .await
            .ok()
            .and_then(|p| p.status?.rebalance?.balance?.measured_bytes);
        if measured.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn table(cp: &ControlPlane, ns: &str) -> Option<RoutingTable> {
    let client = cp.client().await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, ns);
    let cm = cms.get_opt("shop-redis-routing").await.ok()??;
    table_of(&cm)?.ok()
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    step("a local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager");
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    println!("$ kubectl apply -f crds/");
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "shop").await;
    println!("namespace {ns}, API server {}", cp.server);

    step("two 30 MB Redis servers stand in for the hosted primary (hot) and secondary (warm)");
    let primary = server_with_password("change-me-primary");
    let secondary = server_with_password("change-me-secondary");
    println!(
        "primary on {}, secondary on {}",
        primary.addr(),
        secondary.addr()
    );
    let _operator = Operator::start(cp, &ns);
    let node = Node::start(cp, &ns);
    apply(
        cp,
        &ns,
        "examples/redis-instances.yaml",
        &example(
            "redis-instances.yaml",
            &[
                ("redis-primary.example.com", &primary),
                ("redis-secondary.example.com", &secondary),
            ],
        ),
    );
    // The demo does not wait five minutes between two rebalances.
    let policy = example_policy().replace("      cooldown: 5m\n", "      cooldown: 10s\n");
    apply(
        cp,
        &ns,
        "examples/cache-policy.yaml (cooldown 10s)",
        &policy,
    );
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while table(cp, &ns).await.is_none() {
        assert!(Instant::now() < deadline, "no routing table published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sidecar = Sidecar::follow(cp, &ns, "shop-redis-routing", "shop-api-7d9f");
    println!(
        "the operator published the routing table; a sidecar serves it on 127.0.0.1:{}",
        sidecar.port
    );
    status(cp, &ns);

    step("the shop writes through the sidecar until the primary passes 80 %");
    let mut app = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys = write_until(&mut app, &WARM, 0, async |n| n >= 4_000).await;
    let hot = write_until(&mut app, &HOT, 1_000_000, async |_| {
        primary.used_memory().await * 100 > CAPACITY * 83
    })
    .await;
    keys.extend(hot);
    println!(
        "{} keys written; primary at {}% of 30 MB, secondary at {}%",
        keys.len(),
        primary.used_memory().await * 100 / CAPACITY,
        secondary.used_memory().await * 100 / CAPACITY
    );

    step("the operator plans a rebalance and a Job moves slots and their data online");
    let plan = follow_rebalance(&policies, 0, &node).await;
    wait_measured(&policies).await;
    println!(
        "primary at {}%, secondary at {}%; {} of {} keys read back intact through the sidecar",
        primary.used_memory().await * 100 / CAPACITY,
        secondary.used_memory().await * 100 / CAPACITY,
        read_back(&mut app, &keys).await,
        keys.len()
    );
    status(cp, &ns);

    step("before a third 30 MB instance joins the warm tier: what would move? (redis-fleet plan)");
    let tertiary = server_with_password("change-me-tertiary");
    let third = example(
        "third-instance.yaml",
        &[("redis-tertiary.example.com", &tertiary)],
    );
    let file = std::env::temp_dir().join(format!("redis-fleet-demo-{}.yaml", std::process::id()));
    std::fs::write(&file, &third).expect("writing the third instance's file");
    let policy_ref = format!("{ns}/shop");
    println!(
        "$ redis-fleet plan --policy {policy_ref} --add-instance examples/third-instance.yaml"
    );
    redis_fleet(
        cp,
        &[
            "plan",
            "--policy",
            &policy_ref,
            "--add-instance",
            &file.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_file(&file);

    step("the third instance joins (examples/third-instance.yaml)");
    apply(cp, &ns, "examples/third-instance.yaml", &third);
    follow_rebalance(&policies, plan, &node).await;
    wait_measured(&policies).await;
    println!(
        "keys per instance: primary {}, secondary {}, tertiary {}; {} of {} keys read back intact",
        dbsize(&primary).await,
        dbsize(&secondary).await,
        dbsize(&tertiary).await,
        read_back(&mut app, &keys).await,
        keys.len()
    );
    let shares = [
        ("primary", primary.used_memory().await),
        ("secondary", secondary.used_memory().await),
        ("tertiary", tertiary.used_memory().await),
    ];
    let mean = shares.iter().map(|(_, u)| *u).sum::<u64>() as f64 / (3 * CAPACITY) as f64;
    let outside: Vec<&str> = shares
        .iter()
        .filter(|(_, u)| (*u as f64 / CAPACITY as f64 - mean).abs() > 0.10)
        .map(|(n, _)| *n)
        .collect();
    println!(
        "{}: mean {:.0}%, {}",
        shares
            .iter()
            .map(|(n, u)| format!("{n} at {}%", u * 100 / CAPACITY))
            .collect::<Vec<_>>()
            .join(", "),
        mean * 100.0,
        if outside.is_empty() {
            "every instance within ±10 points of it".to_owned()
        } else {
            format!("outside ±10 points: {}", outside.join(", "))
        }
    );
    status(cp, &ns);

    step("the secondary's Redis dies (kill -9): its slots fail over");
    let before = table(cp, &ns).await.map_or(0, |t| t.version);
    let mut secondary = secondary;
    secondary.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = table(cp, &ns).await
            && t.version > before
            && t.failover.iter().any(|f| f.from == "secondary")
        {
            println!(
                "routing v{}: {} failover entries for the secondary",
                t.version,
                t.failover.iter().filter(|f| f.from == "secondary").count()
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failover published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _: () = redis::cmd("SET")
        .arg("user:after-failover")
        .arg("still served")
        .query_async(&mut app)
        .await
        .expect("a write after the failover");
    let back: String = redis::cmd("GET")
        .arg("user:after-failover")
        .query_async(&mut app)
        .await
        .unwrap();
    println!("SET/GET user:after-failover through the sidecar → {back:?}");
    status(cp, &ns);

    step(&format!(
        "done in {:.0?}; stopping everything the demo started",
        started.elapsed()
    ));
}
