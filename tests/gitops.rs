//! Adding an instance by GitOps with the recommended sidecar setup (issue 12): the operator
//! keeps one credentials Secret per policy (`<routing ConfigMap>-credentials`) holding a copy
//! of every key its routing table references, written before a table that needs a new key is
//! published; a sidecar whose `--secrets-dir` is that Secret mounted whole loads the table
//! with a third instance, which has a Secret of its own, without any change to its pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use redis::AsyncCommands;
use redis_fleet::routing::Resolver;
use redis_fleet::routing::config_map::{table_of, table_text};
use redis_fleet::routing::table::RoutingTable;
use support::shop::{Shop, example, kubectl_apply, server_with_password, shop};
use support::sidecar::Sidecar;

const ROUTING: &str = "shop-redis-routing";
const CREDENTIALS: &str = "shop-redis-routing-credentials";

/// Polls until `check` holds, or fails with `what` after `timeout`.
async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The published ConfigMap once its table has `instances`.
async fn table_with(shop: &Shop, instances: &[&str]) -> (ConfigMap, RoutingTable) {
    eventually(
        Duration::from_secs(30),
        &format!("a table with {instances:?}"),
        async || {
            let cm = shop.configmaps.get_opt(ROUTING).await.unwrap()?;
            let table = table_of(&cm)?.unwrap();
            instances
                .iter()
                .all(|i| table.instances.contains_key(*i))
                .then_some((cm, table))
        },
    )
    .await
}

/// The credentials Secret's data keys.
fn keys(secret: &Secret) -> BTreeSet<String> {
    secret
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

/// The credentials Secret as files of a mounted Secret volume: `<data key>` under the dir.
fn files(secret: &Secret) -> Vec<(String, Vec<u8>)> {
    secret
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version.as_deref().unwrap().parse().unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Applies `examples/third-instance.yaml` (instance `tertiary`, Secret `tertiary-redis`)
/// against `tertiary`.
fn apply_third(shop: &Shop, tertiary: &support::RedisServer) {
    let yaml = example(
        "third-instance.yaml",
        &[("redis-tertiary.example.com", tertiary)],
    );
    let out = kubectl_apply(shop.cp, &shop.ns, &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_secret_follows_the_table_and_is_written_before_it() {
    let shop = shop("gitops-secret").await;
    let secrets: Api<Secret> = Api::namespaced(shop.cp.client().await, &shop.ns);
    let (cm, _) = table_with(&shop, &["primary", "secondary"]).await;

    // Exactly the keys of the table's instances, with their values, owned by the policy.
    let secret = secrets.get(CREDENTIALS).await.unwrap();
    assert_eq!(
        keys(&secret),
        set(&["primary-redis.password", "secondary-redis.password"])
    );
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data["primary-redis.password"].0, b"change-me-primary");
    assert_eq!(data["secondary-redis.password"].0, b"change-me-secondary");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("CachePolicy", "shop")
    );
    let labels = secret.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "redis-fleet");
    assert_eq!(labels["redisfleet.io/policy"], "shop");
    let table_json = table_text(&cm).unwrap().unwrap();
    assert!(!table_json.contains("change-me"), "{table_json}");
    assert!(!format!("{cm:?}").contains("change-me"), "{cm:?}");

    // Nothing is rewritten while nothing changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = secrets.get(CREDENTIALS).await.unwrap();
    assert_eq!(
        again.metadata.resource_version,
        secret.metadata.resource_version
    );

    // A third instance with a Secret of its own: its key is copied before the table that
    // routes to it is published.
    let tertiary = server_with_password("change-me-tertiary");
    apply_third(&shop, &tertiary);
    let (cm, table) = table_with(&shop, &["primary", "secondary", "tertiary"]).await;
    let secret = secrets.get(CREDENTIALS).await.unwrap();
    assert_eq!(
        keys(&secret),
        set(&[
            "primary-redis.password",
            "secondary-redis.password",
            "tertiary-redis.password"
        ])
    );
    assert_eq!(
        secret.data.as_ref().unwrap()["tertiary-redis.password"].0,
        b"change-me-tertiary"
    );
    // One etcd: resourceVersions are its revisions, so the smaller one was written first.
    assert!(
        rv(&secret.metadata) < rv(&cm.metadata),
        "the credentials Secret (rv {}) was written after the table v{} (rv {})",
        rv(&secret.metadata),
        table.version,
        rv(&cm.metadata)
    );
    let table_json = table_text(&cm).unwrap().unwrap();
    assert!(!table_json.contains("change-me"), "{table_json}");
    assert!(!format!("{cm:?}").contains("change-me"), "{cm:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_mounting_the_credentials_secret_takes_a_third_instance_without_changes() {
    let shop = shop("gitops-sidecar").await;
    let secrets: Api<Secret> = Api::namespaced(shop.cp.client().await, &shop.ns);
    let (_, before) = table_with(&shop, &["primary", "secondary"]).await;
    let secret = secrets.get(CREDENTIALS).await.unwrap();

    // The pod as the recommended setup makes it: the credentials Secret mounted whole.
    let sidecar = Sidecar::start_with_files("gitops", &before, &files(&secret), &[]);

    // The third instance arrives by GitOps; the pod spec does not change. The kubelet updates
    // the table file first here, the Secret's files a little later.
    let tertiary = server_with_password("change-me-tertiary");
    apply_third(&shop, &tertiary);
    let (_, after) = table_with(&shop, &["primary", "secondary", "tertiary"]).await;
    sidecar.update_table(&after);
    let secret = secrets.get(CREDENTIALS).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let loaded = |v: u64| format!("redisfleet_sidecar_routing_version {v}\n");
    assert!(
        sidecar.metrics().contains(&loaded(before.version)),
        "the table waits for its credentials\n{}",
        sidecar.log_tail(20)
    );
    for (name, value) in files(&secret) {
        let path = sidecar.secrets_dir.join(&name);
        let tmp = sidecar.secrets_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    eventually(
        Duration::from_secs(10),
        &format!("the sidecar loading v{}", after.version),
        async || {
            sidecar
                .metrics()
                .contains(&loaded(after.version))
                .then_some(())
        },
    )
    .await;

    // Keys the table gives the third instance are served there.
    let resolver = Resolver::new(after.clone()).unwrap();
    let on_tertiary: Vec<String> = (0..10_000)
        .map(|i| format!("user:{i}"))
        .filter(|k| resolver.instance_name(resolver.resolve(k.as_bytes()).target) == "tertiary")
        .take(20)
        .collect();
    assert_eq!(on_tertiary.len(), 20, "the table gives tertiary user: keys");
    let mut through = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for k in &on_tertiary {
        let () = through.set(k, "v").await.unwrap();
    }
    let mut direct = tertiary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for k in &on_tertiary {
        let got: Option<String> = direct.get(k).await.unwrap();
        assert_eq!(got.as_deref(), Some("v"), "{k} on tertiary");
        let got: Option<String> = through.get(k).await.unwrap();
        assert_eq!(got.as_deref(), Some("v"), "{k} through the sidecar");
    }
}
