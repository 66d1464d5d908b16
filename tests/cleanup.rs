//! Cleanup against a real kube-apiserver and real redis-servers: a deleted CachePolicy's own
//! `redisfleet:` keys go from its instances (the finalizer), then the policy itself; an
//! instance that leaves a live policy loses that policy's keys but its fences (it is fenced on
//! itself first); a deleted policy's rebalance
//! Jobs in another namespace (which it cannot own) go with it. Application keys, other policies' keys and Jobs
//! stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use redis_fleet::routing::config_map::table_of;
use support::ControlPlane;
use support::RedisServer;
use support::operator::Operator;
use support::shop::{Shop, apply_third_instance, shop, shop_configured};
use support::sidecar::Sidecar;

const ROUTING: &str = "shop-redis-routing";

async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn keys(server: &RedisServer) -> Vec<String> {
    let mut c = conn(server).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Keys of policy `policy` (`<namespace>/<name>`) among `keys`.
fn of_policy(keys: &[String], policy: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| k.starts_with("redisfleet:"))
        .filter(|k| k.ends_with(&format!(":{policy}")) || k.contains(&format!(":{policy}:")))
        .cloned()
        .collect()
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < timeout, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Instances the published table names.
async fn table_instances(shop: &Shop) -> Vec<String> {
    let Some(cm) = shop.configmaps.get_opt(ROUTING).await.unwrap() else {
        return Vec::new();
    };
    table_of(&cm)
        .and_then(Result::ok)
        .map(|t| t.instances.keys().cloned().collect())
        .unwrap_or_default()
}

/// Writes application keys, another policy's keys and some of `policy`'s own keys that only a
/// SCAN finds (an importing marker, a Job's checkpoint).
async fn seed(server: &RedisServer, ns: &str) {
    let mut c = conn(server).await;
    let policy = format!("{ns}/shop");
    let pairs = [
        "user:1".to_owned(),
        "order:7".to_owned(),
        format!("app:{policy}:x"),
        format!("redisfleet:sidecars:{ns}/shop2"),
        format!("redisfleet:importing:{ns}/shop2:1:user:0-9"),
        format!("redisfleet:importing:{policy}:3:user:0-99"),
        format!("redisfleet:checkpoint:{policy}:2:user:0-99:primary:secondary"),
    ];
    for k in &pairs {
        let () = redis::cmd("SET")
            .arg(k)
            .arg("v")
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

fn untouched(keys: &[String], ns: &str) {
    for k in [
        "user:1".to_owned(),
        "order:7".to_owned(),
        format!("app:{ns}/shop:x"),
        format!("redisfleet:sidecars:{ns}/shop2"),
        format!("redisfleet:importing:{ns}/shop2:1:user:0-9"),
    ] {
        assert!(keys.contains(&k), "{k} must stay: {keys:?}");
    }
}

/// Starts a sidecar and waits until it has written heartbeats of `shop` into every server.
async fn heartbeats(shop: &Shop, servers: &[&RedisServer]) -> Sidecar {
    let sidecar = Sidecar::follow(shop.cp, &shop.ns, ROUTING, "app-1");
    let key = format!("redisfleet:sidecars:{}/shop", shop.ns);
    for server in servers {
        wait_until(Duration::from_secs(30), "sidecar heartbeats", || async {
            keys(server).await.contains(&key)
        })
        .await;
    }
    sidecar
}

/// Waits until the published table no longer names `instance`.
async fn out_of_the_table(shop: &Shop, instance: &str, timeout: Duration) {
    let what = format!("{instance} out of the table");
    wait_until(timeout, &what, || async {
        !table_instances(shop).await.contains(&instance.to_owned())
    })
    .await;
}

/// The fence of `instance` that `server` holds for `policy`.
async fn own_fence(server: &RedisServer, policy: &str, instance: &str) -> Option<u64> {
    redis::cmd("HGET")
        .arg(format!("redisfleet:fences:{policy}"))
        .arg(instance)
        .query_async(&mut conn(server).await)
        .await
        .unwrap()
}

/// Adds `examples/third-instance.yaml` on a new server; returns once the table names it.
async fn join_tertiary(shop: &Shop) -> RedisServer {
    let tertiary = apply_third_instance(shop);
    wait_until(Duration::from_secs(30), "tertiary in the table", || async {
        table_instances(shop).await.len() == 3
    })
    .await;
    tertiary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_policy_takes_its_keys_and_leaves_the_applications() {
    let shop = shop("cleanup").await;
    let ns = shop.ns.clone();
    let policy = format!("{ns}/shop");
    wait_until(Duration::from_secs(30), "a routing table", || async {
        table_instances(&shop).await.len() == 2
    })
    .await;
    let p = shop.policies.get("shop").await.unwrap();
    assert!(
        p.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"redisfleet.io/cleanup".to_owned()),
        "the policy carries the cleanup finalizer"
    );
    let mut sidecar = heartbeats(&shop, &[&shop.primary, &shop.secondary]).await;
    // The applications have gone (their sidecars with them) before the policy is deleted.
    sidecar.kill();
    for server in [&shop.primary, &shop.secondary] {
        seed(server, &ns).await;
        assert!(of_policy(&keys(server).await, &policy).len() >= 3);
    }

    shop.policies
        .delete("shop", &Default::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the policy is gone", || async {
        shop.policies.get_opt("shop").await.unwrap().is_none()
    })
    .await;
    for server in [&shop.primary, &shop.secondary] {
        let keys = keys(server).await;
        assert_eq!(of_policy(&keys, &policy), Vec::<String>::new(), "{keys:?}");
        untouched(&keys, &ns);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_leaves_the_policy_loses_its_keys() {
    let shop = shop("leave").await;
    let ns = shop.ns.clone();
    let policy = format!("{ns}/shop");
    let tertiary = join_tertiary(&shop).await;
    let mut sidecar = heartbeats(&shop, &[&shop.primary, &tertiary]).await;
    sidecar.kill();
    let cm = shop.configmaps.get(ROUTING).await.unwrap();
    let named = table_of(&cm).unwrap().unwrap().version;
    seed(&tertiary, &ns).await;
    seed(&shop.primary, &ns).await;
    assert!(of_policy(&keys(&tertiary).await, &policy).len() >= 3);

    // Deselected: the label the policy selects on goes.
    let patch = serde_json::json!({
        "metadata": {"labels": {"app.kubernetes.io/part-of": null}}
    });
    shop.instances
        .patch("tertiary", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    out_of_the_table(&shop, "tertiary", Duration::from_secs(30)).await;
    // All but its fences: it is fenced on itself at the table that no longer names it, so a
    // sidecar still on an older table is refused there (it could write there unfenced, and the
    // guard would answer from it once the importing markers are gone).
    let fences = format!("redisfleet:fences:{policy}");
    wait_until(
        Duration::from_secs(30),
        "the policy's keys but its fences gone from tertiary",
        || async { of_policy(&keys(&tertiary).await, &policy) == [fences.clone()] },
    )
    .await;
    untouched(&keys(&tertiary).await, &ns);
    let cm = shop.configmaps.get(ROUTING).await.unwrap();
    let version = table_of(&cm).unwrap().unwrap().version;
    let fence = own_fence(&tertiary, &policy, "tertiary").await;
    assert!(
        fence.is_some_and(|f| f > named && f <= version),
        "tertiary fenced on itself at the table without it (named until v{named}, v{version} now): {fence:?}"
    );
    // The instances still in the policy keep its keys.
    let marker = format!("redisfleet:importing:{policy}:3:user:0-99");
    let primary = keys(&shop.primary).await;
    assert!(
        primary.contains(&marker),
        "primary keeps the policy's keys: {primary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_deleted_while_stopped_is_fenced_when_it_returns_after_an_operator_restart() {
    let mut shop = shop("left-stopped").await;
    let ns = shop.ns.clone();
    let policy = format!("{ns}/shop");
    let mut tertiary = join_tertiary(&shop).await;
    let mut sidecar = heartbeats(&shop, &[&tertiary]).await;
    sidecar.kill();
    seed(&tertiary, &ns).await;
    let cm = shop.configmaps.get(ROUTING).await.unwrap();
    let named = table_of(&cm).unwrap().unwrap().version;

    // Tertiary stops (a stalled VM), and its RedisInstance is deleted meanwhile (GitOps
    // removed it): the table without it is published while it cannot be fenced.
    let pid = tertiary.pid().unwrap();
    assert!(support::process::signal(pid, "-STOP"));
    shop.instances
        .delete("tertiary", &Default::default())
        .await
        .unwrap();
    out_of_the_table(&shop, "tertiary", Duration::from_secs(60)).await;
    let cm = shop.configmaps.get(ROUTING).await.unwrap();
    let version = table_of(&cm).unwrap().unwrap().version;
    // The operator restarts (a new leader, a node lost) before tertiary answers again: what
    // is left to do there must not live only in the old process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shop.operator.kill();
    shop.operator = Operator::start(shop.cp, &ns);
    // The new operator knows what is left to do from the ConfigMap alone.
    let departing = |n: u32| {
        format!("redisfleet_departing_instances{{namespace=\"{ns}\",policy=\"shop\"}} {n}")
    };
    wait_until(
        Duration::from_secs(30),
        "one instance departing",
        || async { shop.operator.metrics().contains(&departing(1)) },
    )
    .await;
    assert!(support::process::signal(pid, "-CONT"));

    // A sidecar still on an older table would write there unfenced, and nothing reads it.
    let fences = format!("redisfleet:fences:{policy}");
    wait_until(
        Duration::from_secs(60),
        "tertiary fenced and the policy's other keys gone from it",
        || async { of_policy(&keys(&tertiary).await, &policy) == [fences.clone()] },
    )
    .await;
    untouched(&keys(&tertiary).await, &ns);
    let fence = own_fence(&tertiary, &policy, "tertiary").await;
    assert!(
        fence.is_some_and(|f| f > named && f <= version),
        "tertiary fenced on itself at the table without it (named until v{named}, v{version} now): {fence:?}"
    );
    // Done: the ConfigMap no longer lists it as leaving.
    wait_until(
        Duration::from_secs(60),
        "the departure forgotten",
        || async {
            let cm = shop.configmaps.get(ROUTING).await.unwrap();
            !cm.metadata
                .annotations
                .unwrap_or_default()
                .contains_key("redisfleet.io/departures")
                && shop.operator.metrics().contains(&departing(0))
        },
    )
    .await;
    tertiary.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_policy_takes_its_jobs_from_another_namespace() {
    use k8s_openapi::api::batch::v1::Job;
    use redis_fleet::operator::cache_policy::job::{self, JobSettings};

    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let jobs_ns = cp.namespace(&client, "jobs").await;
    let shop = shop_configured(
        "elsewhere",
        |p| p.replace("      enabled: true\n", "      enabled: false\n"),
        &["--rebalance-namespace", &jobs_ns],
    )
    .await;
    wait_until(Duration::from_secs(30), "a routing table", || async {
        table_instances(&shop).await.len() == 2
    })
    .await;
    let policy = shop.policies.get("shop").await.unwrap();
    let settings = JobSettings {
        namespace: Some(jobs_ns.clone()),
        ..JobSettings::default()
    };
    let jobs: kube::Api<Job> = kube::Api::namespaced(client, &jobs_ns);
    // The policy's Job (suspended: no pod), and one of a policy of the same name elsewhere.
    let mut own = job::build(&policy, 1, 1, &settings);
    let mut other = job::build(&policy, 1, 2, &settings);
    other.metadata.name = Some("other-rebalance-1-2".into());
    for (j, ns) in [
        (&mut own, shop.ns.as_str()),
        (&mut other, "another-namespace"),
    ] {
        j.spec.as_mut().unwrap().suspend = Some(true);
        j.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(job::POLICY_NAMESPACE_LABEL.into(), ns.into());
        j.spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(job::POLICY_NAMESPACE_LABEL.into(), ns.into());
        jobs.create(&Default::default(), j).await.unwrap();
    }
    assert!(
        own.metadata.owner_references.is_none(),
        "not owned: GC cannot remove it"
    );

    shop.policies
        .delete("shop", &Default::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the policy is gone", || async {
        shop.policies.get_opt("shop").await.unwrap().is_none()
    })
    .await;
    let own_name = own.metadata.name.clone().unwrap();
    wait_until(Duration::from_secs(30), "its Job is gone", || async {
        jobs.get_opt(&own_name)
            .await
            .unwrap()
            .is_none_or(|j| j.metadata.deletion_timestamp.is_some())
    })
    .await;
    let other = jobs.get("other-rebalance-1-2").await.unwrap();
    assert!(
        other.metadata.deletion_timestamp.is_none(),
        "another policy's Job stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_holds_the_deletion_two_minutes_at_most() {
    use k8s_openapi::api::events::v1::Event;

    let mut shop = shop("deadline").await;
    let ns = shop.ns.clone();
    let policy = format!("{ns}/shop");
    wait_until(Duration::from_secs(30), "a routing table", || async {
        table_instances(&shop).await.len() == 2
    })
    .await;
    seed(&shop.primary, &ns).await;
    shop.secondary.kill();

    let deleted = Instant::now();
    shop.policies
        .delete("shop", &Default::default())
        .await
        .unwrap();
    // The reachable instance is cleaned at once; the policy waits for the dead one.
    wait_until(
        Duration::from_secs(30),
        "the policy's keys gone from primary",
        || async { of_policy(&keys(&shop.primary).await, &policy).is_empty() },
    )
    .await;
    let held = shop.policies.get_opt("shop").await.unwrap();
    assert!(
        held.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the finalizer holds the policy while an instance does not answer"
    );
    wait_until(
        Duration::from_secs(180),
        "the policy is gone after the deadline",
        || async { shop.policies.get_opt("shop").await.unwrap().is_none() },
    )
    .await;
    let took = deleted.elapsed();
    assert!(took >= Duration::from_secs(100), "gone after {took:?}");
    let events: kube::Api<Event> = kube::Api::namespaced(shop.policies.clone().into_client(), &ns);
    let events = events.list(&Default::default()).await.unwrap();
    let warning = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("CleanupIncomplete"))
        .expect("a CleanupIncomplete Event");
    let note = warning.note.clone().unwrap_or_default();
    assert!(note.contains("secondary"), "{note}");
    assert!(
        !note.contains("change-me"),
        "no secret in the Event: {note}"
    );
    untouched(&keys(&shop.primary).await, &ns);
}
