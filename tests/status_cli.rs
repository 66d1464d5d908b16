//! `redis-fleet status`, the real binary, against a real kube-apiserver, real redis-servers and
//! the real operator: the table view shows both instances with usage bars, the categories on
//! their tiers and the routing version; `-o json` says the same; a missing policy, a missing
//! cluster and an unreachable one fail with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use redis_fleet::api::redis_instance::InstancePhase;
use redis_fleet::routing::table::VERSION_ANNOTATION;
use support::process::temp_dir;
use support::shop::{Shop, kubectl_apply, shop};
use support::wait_for;

/// `redis-fleet <args>` with `kubeconfig`, a fixed width and no inherited cluster hints.
fn redis_fleet(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redis-fleet"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("COLUMNS", "100")
        .env_remove("NO_COLOR")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running redis-fleet")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

async fn published_version(shop: &Shop) -> Option<u64> {
    let cm = shop
        .configmaps
        .get_opt("shop-redis-routing")
        .await
        .unwrap()?;
    cm.metadata
        .annotations?
        .get(VERSION_ANNOTATION)?
        .parse()
        .ok()
}

/// Waits until both instances are probed Ready, the policy is Ready and its status names the
/// version in the ConfigMap (so the CLI sees a settled fleet); returns that version.
async fn settled(shop: &Shop) -> u64 {
    for name in ["primary", "secondary"] {
        wait_for(
            &shop.instances,
            name,
            Duration::from_secs(30),
            "Ready with memory",
            |ri| {
                ri.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(InstancePhase::Ready) && s.memory.is_some())
            },
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let policy = shop.policies.get("shop").await.unwrap();
        let status = policy.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let in_status = status.routing.map(|r| r.version as u64);
        if let Some(v) = published_version(shop).await
            && ready
            && in_status == Some(v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the shop policy did not settle\n{}",
            shop.operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_shop_fleet_as_table_and_json() {
    let shop = shop("status").await;
    // An instance no policy selects (no part-of label); it probes the secondary's server.
    let legacy = format!(
        "apiVersion: redisfleet.io/v1alpha1\nkind: RedisInstance\nmetadata: {{name: legacy}}\nspec:\n  external: {{host: 127.0.0.1, port: {}, passwordSecretRef: {{name: secondary-redis, key: password}}}}\n  capacity: 30Mi\n",
        shop.secondary.port
    );
    let out = kubectl_apply(shop.cp, &shop.ns, &legacy);
    assert!(out.status.success(), "{}", stderr(&out));
    let kubeconfig = &shop.cp.kubeconfig;

    // The table view, retried if the operator publishes a new version meanwhile.
    let (version, text) = loop {
        let version = settled(&shop).await;
        let out = redis_fleet(kubeconfig, &["status", "-n", &shop.ns]);
        assert!(out.status.success(), "{}", stderr(&out));
        if published_version(&shop).await == Some(version) {
            break (version, stdout(&out));
        }
    };
    println!("{text}");
    assert!(!text.contains('\x1b'), "no colors when stdout is a pipe");
    assert!(
        text.starts_with(&format!("namespace {} · 1 policy · 3 instances\n", shop.ns)),
        "{text}"
    );
    let header = line_with(&text, "routing v");
    assert!(
        header.starts_with(&format!("shop  Ready · routing v{version} (")),
        "{header}"
    );
    assert!(text.contains("ConfigMap shop-redis-routing"), "{text}");
    assert!(text.contains("Smart · threshold 80%"), "{text}");

    for (name, tier) in [("primary", "hot"), ("secondary", "warm")] {
        let line = line_with(&text, &format!("  {name} "));
        let w = words(line);
        assert_eq!(&w[..3], [name, tier, "Ready"], "{line}");
        let bar = w[3];
        assert!(
            bar.starts_with('[') && bar.ends_with(']') && bar.contains('│'),
            "a usage bar with the threshold marker: {line}"
        );
        assert!(
            w[4].ends_with('%') && w[5] == "of" && w[6] == "30.0Mi",
            "{line}"
        );
    }
    for cat in ["auth", "order", "notification", "analytics-live"] {
        let w = words(line_with(&text, &format!("  {cat} ")));
        assert!(w.contains(&"hot"), "{cat}: {w:?}");
        assert_eq!(&w[w.len() - 2..], ["primary", "100%"], "{cat}: {w:?}");
    }
    for cat in ["user", "menu", "ml", "analytics-history", "default"] {
        let w = words(line_with(&text, &format!("  {cat} ")));
        assert!(w.contains(&"warm"), "{cat}: {w:?}");
        assert_eq!(&w[w.len() - 2..], ["secondary", "100%"], "{cat}: {w:?}");
    }
    assert!(
        line_with(&text, "  auth ").contains("auth: session:"),
        "prefixes are shown"
    );
    assert!(
        line_with(&text, "  auth ").contains("1h, max 24h, adaptive"),
        "TTL rules are shown"
    );
    let unselected = text
        .split("Instances no policy selects\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no block of unselected instances\n{text}"));
    assert!(unselected.contains("  legacy "), "{unselected}");
    assert!(!text.contains("failover"), "{text}");

    // JSON: the same snapshot, machine-readable.
    let out = redis_fleet(kubeconfig, &["status", "-n", &shop.ns, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    assert_eq!(json["schemaVersion"], 1);
    assert_eq!(json["namespace"], shop.ns.as_str());
    let policy = &json["policies"][0];
    assert_eq!(policy["name"], "shop");
    assert_eq!(policy["ready"], true);
    let json_version = policy["routing"]["version"].as_u64().unwrap();
    assert_eq!(
        Some(json_version),
        published_version(&shop).await,
        "the routing version in the ConfigMap"
    );
    assert!(json_version >= version);
    assert_eq!(policy["routing"]["configMap"], "shop-redis-routing");
    let names: Vec<&str> = policy["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["primary", "secondary"]);
    assert_eq!(policy["instances"][0]["capacityBytes"], 30 * 1024 * 1024);
    let auth = &policy["categories"][0];
    assert_eq!(auth["name"], "auth");
    assert_eq!(auth["placement"][0]["instance"], "primary");
    assert_eq!(auth["placement"][0]["percent"], 100.0);
    assert_eq!(json["unselectedInstances"][0]["name"], "legacy");

    // One policy by name, the namespace from the kubeconfig context.
    let dir = temp_dir("status-kubeconfig");
    let with_ns = dir.join("kubeconfig");
    std::fs::copy(kubeconfig, &with_ns).unwrap();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&with_ns)
        .args([
            "config",
            "set-context",
            "--current",
            "--namespace",
            &shop.ns,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = redis_fleet(&with_ns, &["status", "shop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("shop  Ready · routing v"), "{text}");
    assert!(
        !text.contains("Instances no policy selects"),
        "a policy view shows its own fleet only\n{text}"
    );

    // A policy that does not exist.
    let out = redis_fleet(kubeconfig, &["status", "-n", &shop.ns, "nosuchpolicy"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "CachePolicy \"nosuchpolicy\" not found in namespace \"{}\" (policies there: shop)",
            shop.ns
        )),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_reachable_cluster_says_so() {
    let dir = temp_dir("status-nocluster");

    // No kubeconfig at all, and not in a pod.
    let out = Command::new(env!("CARGO_BIN_EXE_redis-fleet"))
        .arg("status")
        .env("KUBECONFIG", dir.join("missing"))
        .env("HOME", &dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no Kubernetes cluster found"),
        "{}",
        stderr(&out)
    );

    // A kubeconfig whose server does not answer.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: gone, user: u, namespace: shop}\ncurrent-context: c\n",
    )
    .unwrap();
    let out = redis_fleet(&kubeconfig, &["status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the Kubernetes API server at https://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}
