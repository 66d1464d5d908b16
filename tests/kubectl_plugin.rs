//! The kubectl plugin: the real binary run as `kubectl-fleet` — directly, and by the real
//! `kubectl` finding it on `PATH` — against a real kube-apiserver, real redis-servers and the
//! real operator. `where` answers what the published routing table says (category, slot and
//! instance; the failover once the primary dies), with the cluster picked by `--kubeconfig`
//! and `--context` as kubectl picks it; `status` takes the same flags, and `-A`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use redis_fleet::routing::config_map::table_of;
use redis_fleet::routing::key_slot;
use redis_fleet::routing::table::RoutingTable;
use support::control_plane::ADMIN_TOKEN;
use support::process::temp_dir;
use support::shop::{Shop, shop};

/// A directory holding `bin/kubectl-fleet` (a link to the binary under test, as `make
/// install` and krew lay it out), a kubeconfig of several contexts, and the `HOME` the
/// commands run with.
struct Plugin {
    dir: PathBuf,
}

impl Plugin {
    fn new() -> Plugin {
        let dir = temp_dir("kubectl-plugin");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_redis-fleet"),
            dir.join("bin/kubectl-fleet"),
        )
        .unwrap();
        Plugin { dir }
    }

    /// No cluster hints but the flags: `KUBECONFIG` names a missing file, `HOME` has no
    /// `.kube`, and not in a pod.
    fn isolated(&self, mut cmd: Command) -> Output {
        cmd.env("KUBECONFIG", self.dir.join("missing"))
            .env("HOME", &self.dir)
            .env("RUST_BACKTRACE", "0")
            .env_remove("COLUMNS")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .output()
            .expect("running the plugin")
    }

    /// `kubectl-fleet <args>`.
    fn direct(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.dir.join("bin/kubectl-fleet"));
        cmd.args(args);
        self.isolated(cmd)
    }

    /// `kubectl fleet <args>`, kubectl finding the plugin on `PATH`.
    fn kubectl(&self, args: &[&str]) -> Output {
        let path = std::env::var("PATH").unwrap_or_default();
        let mut cmd = Command::new("kubectl");
        cmd.arg("fleet")
            .args(args)
            .env("PATH", format!("{}:{path}", self.dir.join("bin").display()));
        self.isolated(cmd)
    }

    /// A kubeconfig whose current context points at a server that is gone, and whose context
    /// `fleet` is the test cluster with `namespace` as its namespace.
    fn kubeconfig(&self, server: &str, ca: &Path, namespace: &str) -> PathBuf {
        let path = self.dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                r#"apiVersion: v1
kind: Config
clusters:
- name: gone
  cluster: {{server: "https://127.0.0.1:1"}}
- name: test
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: admin
  user: {{token: {ADMIN_TOKEN}}}
contexts:
- name: broken
  context: {{cluster: gone, user: admin, namespace: elsewhere}}
- name: fleet
  context: {{cluster: test, user: admin, namespace: {namespace}}}
current-context: broken
"#,
                ca = ca.display()
            ),
        )
        .unwrap();
        path
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// The routing table in the ConfigMap, as published.
async fn published(shop: &Shop) -> Option<RoutingTable> {
    let cm = shop
        .configmaps
        .get_opt("shop-redis-routing")
        .await
        .unwrap()?;
    table_of(&cm)?.ok()
}

/// Waits for a published table that satisfies `ready`.
async fn table_where(
    shop: &Shop,
    what: &str,
    ready: impl Fn(&RoutingTable) -> bool,
) -> RoutingTable {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(table) = published(shop).await
            && ready(&table)
        {
            return table;
        }
        assert!(
            Instant::now() < deadline,
            "no routing table with {what}\n{}",
            shop.operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `command` until the table published before and after it is the same version; returns
/// that table and the command's output.
async fn answered(shop: &Shop, command: impl Fn() -> Output) -> (RoutingTable, Output) {
    loop {
        let before = published(shop).await.map(|t| t.version);
        let out = command();
        let after = published(shop).await.unwrap();
        if before == Some(after.version) {
            return (after, out);
        }
    }
}

fn owner<'a>(table: &'a RoutingTable, category: &str, slot: u16) -> &'a str {
    table
        .categories
        .iter()
        .find(|c| c.name == category)
        .and_then(|c| c.owner_of(slot))
        .unwrap_or_else(|| panic!("no owner of {category} slot {slot}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_fleet_where_and_status_with_kubectls_flags() {
    let mut shop = shop("plugin").await;
    let plugin = Plugin::new();
    let admin = shop.cp.kubeconfig.clone();
    let contexts = plugin.kubeconfig(&shop.cp.server, &shop.cp.ca_file(), &shop.ns);
    let contexts = contexts.to_str().unwrap();
    // Settled: both instances probed and serving their tier.
    table_where(&shop, "the hot tier on primary", |t| {
        t.instances.len() == 2 && t.failover.is_empty() && owner(t, "auth", 0) == "primary"
    })
    .await;

    // `kubectl-fleet where user:42 -n NS --kubeconfig FILE`: the short table.
    let slot = key_slot(b"user:42");
    let (table, out) = answered(&shop, || {
        plugin.direct(&[
            "where",
            "user:42",
            "-n",
            &shop.ns,
            "--kubeconfig",
            admin.to_str().unwrap(),
        ])
    })
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    println!("{text}");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "policy {}/shop · routing v{} · ConfigMap shop-redis-routing",
                shop.ns, table.version
            )
            .as_str()
        )
    );
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["KEY", "CATEGORY", "SLOT", "INSTANCE", "STATE"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    // `user:` is the user category's prefix (examples/cache-policy.yaml), on the warm tier.
    assert_eq!(owner(&table, "user", slot), "secondary");
    assert_eq!(
        row,
        [
            "user:42",
            "user",
            slot.to_string().as_str(),
            "secondary",
            "owner"
        ]
    );

    // Through kubectl, the context's namespace, JSON; a hash tag puts an auth key (by its
    // prefix) in the same slot, on the hot tier.
    let (table, out) = answered(&shop, || {
        plugin.kubectl(&[
            "where",
            "user:42",
            "session:{user:42}",
            "-o",
            "json",
            "--kubeconfig",
            contexts,
            "--context",
            "fleet",
        ])
    })
    .await;
    let answer = json(&out);
    assert_eq!(answer["schemaVersion"], 1);
    assert_eq!(answer["namespace"], shop.ns.as_str());
    assert_eq!(answer["policy"], "shop");
    assert_eq!(answer["routingVersion"], table.version);
    let user = &answer["keys"][0];
    assert_eq!(user["key"], "user:42");
    assert_eq!(user["category"], "user");
    assert_eq!(user["slot"], slot);
    assert_eq!(user["instance"], owner(&table, "user", slot));
    assert_eq!(user["owner"], "secondary");
    assert_eq!(
        user["address"],
        format!("127.0.0.1:{}", shop.secondary.port).as_str()
    );
    assert_eq!(user["state"], "owner");
    assert!(user.get("migrating").is_none() && user.get("failover").is_none());
    let session = &answer["keys"][1];
    assert_eq!(session["category"], "auth");
    assert_eq!(session["slot"], slot);
    assert_eq!(session["hashTag"], "user:42");
    assert_eq!(session["instance"], owner(&table, "auth", slot));
    assert_eq!(session["instance"], "primary");

    // The kubeconfig's current context is used when no --context is given: its server is gone.
    let out = plugin.kubectl(&["where", "user:42", "--kubeconfig", contexts]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the Kubernetes API server at https://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
    let out = plugin.kubectl(&[
        "where",
        "user:42",
        "--kubeconfig",
        contexts,
        "--context",
        "nosuch",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("kubeconfig context \"nosuch\""),
        "{}",
        stderr(&out)
    );
    // Without --kubeconfig, KUBECONFIG (a missing file here) is all there is.
    let out = plugin.kubectl(&["where", "user:42", "--context", "fleet"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("kubeconfig context \"fleet\""),
        "{}",
        stderr(&out)
    );

    // `kubectl fleet status`: the context's namespace; -A: every namespace with a fleet.
    let out = plugin.kubectl(&["status", "--kubeconfig", contexts, "--context", "fleet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("namespace {} · 1 policy · 2 instances\n", shop.ns)),
        "{text}"
    );
    assert!(text.contains("shop  Ready · routing v"), "{text}");
    let all = json(&plugin.kubectl(&[
        "status",
        "-A",
        "-o",
        "json",
        "--kubeconfig",
        contexts,
        "--context",
        "fleet",
    ]));
    assert_eq!(all["schemaVersion"], 1);
    let ours = all["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["namespace"] == shop.ns.as_str())
        .unwrap_or_else(|| panic!("{} not among {all}", shop.ns));
    assert_eq!(ours["policies"][0]["name"], "shop");

    // The primary dies: its auth slots fail over to the secondary, and `where` says so.
    shop.primary.kill();
    table_where(&shop, "the auth category failed over", |t| {
        t.failover
            .iter()
            .any(|f| f.category == "auth" && f.range().contains(slot))
    })
    .await;
    let (table, out) = answered(&shop, || {
        plugin.kubectl(&[
            "where",
            "session:{user:42}",
            "-o",
            "json",
            "--kubeconfig",
            contexts,
            "--context",
            "fleet",
        ])
    })
    .await;
    let answer = json(&out);
    let session = &answer["keys"][0];
    let failover = table
        .failover
        .iter()
        .find(|f| f.category == "auth" && f.range().contains(slot))
        .unwrap();
    assert_eq!(answer["routingVersion"], table.version);
    assert_eq!(session["owner"], "primary");
    assert_eq!(session["instance"], failover.to.as_str());
    assert_eq!(session["instance"], "secondary");
    assert_eq!(session["state"], "failedOver");
    assert_eq!(
        session["failover"],
        serde_json::json!({"from": "primary", "to": "secondary"})
    );
    let out = plugin.kubectl(&[
        "where",
        "session:{user:42}",
        "--kubeconfig",
        contexts,
        "--context",
        "fleet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("secondary  failed over: primary unavailable"),
        "{}",
        stdout(&out)
    );
}
