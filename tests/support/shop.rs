//! The user's setup from `examples/`: two 30 MB instances (`primary` hot, `secondary` warm) and
//! the `shop` CachePolicy, applied with `kubectl` with the placeholder endpoints replaced by
//! local redis-servers, and the real operator watching the test's namespace.

use std::io::Write;
use std::process::{Output, Stdio};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use redis_fleet::api::cache_policy::CachePolicy;
use redis_fleet::api::redis_instance::RedisInstance;

use super::control_plane::project_root;
use super::operator::Operator;
use super::{ControlPlane, RedisOptions, RedisServer};

/// One MiB.
pub const MB: u64 = 1024 * 1024;

/// `kubectl apply -n ns -f -` with `yaml` on stdin.
pub fn kubectl_apply(cp: &ControlPlane, ns: &str, yaml: &str) -> Output {
    let mut child = cp
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubectl");
    child
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(yaml.as_bytes())
        .expect("writing to kubectl");
    child.wait_with_output().expect("running kubectl")
}

/// An example file with the placeholder endpoints replaced by local servers, probing fast.
pub fn example(file: &str, endpoints: &[(&str, &RedisServer)]) -> String {
    let mut yaml = std::fs::read_to_string(project_root().join("examples").join(file))
        .unwrap_or_else(|e| panic!("reading examples/{file}: {e}"));
    for (host, server) in endpoints {
        yaml = yaml.replace(
            &format!("host: {host}\n    port: 6379"),
            &format!("host: 127.0.0.1\n    port: {}", server.port),
        );
    }
    // Probe fast so the tests do not wait on the 5 s default.
    yaml.replace(
        "  capacity: 30Mi\n",
        "  capacity: 30Mi\n  health: {interval: 1s, timeout: 500ms, failureThreshold: 2, recoveryThreshold: 2}\n",
    )
    .replace("  health:\n    interval: 5s\n    timeout: 1s\n    failureThreshold: 3\n    recoveryThreshold: 3\n    latencyThreshold: 50ms\n", "")
}

/// A 30 MB redis-server that requires `password`.
pub fn server_with_password(password: &str) -> RedisServer {
    RedisServer::start(RedisOptions {
        maxmemory: 30 * MB,
        password: Some(password.into()),
        ..RedisOptions::default()
    })
}

/// The shop scenario, running.
#[derive(Debug)]
pub struct Shop {
    /// The shared control plane.
    pub cp: &'static ControlPlane,
    /// The test's namespace.
    pub ns: String,
    /// The hot instance's server.
    pub primary: RedisServer,
    /// The warm instance's server.
    pub secondary: RedisServer,
    /// The operator watching `ns`.
    pub operator: Operator,
    /// ConfigMaps of `ns`.
    pub configmaps: Api<ConfigMap>,
    /// RedisInstances of `ns`.
    pub instances: Api<RedisInstance>,
    /// CachePolicies of `ns`.
    pub policies: Api<CachePolicy>,
}

/// Starts the user's setup in a new namespace `<prefix>-<random>`: two 30 MB servers, the
/// operator, and `examples/redis-instances.yaml` + `examples/cache-policy.yaml` applied,
/// with rebalancing off (routing-only tests: ownership changes move no data).
pub async fn shop(prefix: &str) -> Shop {
    shop_with(prefix, |policy| {
        policy.replace("      enabled: true\n", "      enabled: false\n")
    })
    .await
}

/// The policy of `examples/cache-policy.yaml`, as the user wrote it.
pub fn example_policy() -> String {
    std::fs::read_to_string(project_root().join("examples/cache-policy.yaml"))
        .expect("reading examples/cache-policy.yaml")
}

/// Like [`shop`], with the policy YAML passed through `edit` first.
pub async fn shop_with(prefix: &str, edit: impl Fn(String) -> String) -> Shop {
    shop_configured(prefix, edit, &[]).await
}

/// The instances' Secrets as a sidecar's `--secrets-dir` holds them.
pub const SHOP_SECRETS: [(&str, &str, &str); 2] = [
    ("primary-redis", "password", "change-me-primary"),
    ("secondary-redis", "password", "change-me-secondary"),
];

/// Like [`shop_with`], with extra arguments for the operator.
pub async fn shop_configured(
    prefix: &str,
    edit: impl Fn(String) -> String,
    operator_args: &[&str],
) -> Shop {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, prefix).await;
    let primary = server_with_password("change-me-primary");
    let secondary = server_with_password("change-me-secondary");
    let operator = Operator::start_with(cp, &ns, operator_args);
    let instances_yaml = example(
        "redis-instances.yaml",
        &[
            ("redis-primary.example.com", &primary),
            ("redis-secondary.example.com", &secondary),
        ],
    );
    let out = kubectl_apply(cp, &ns, &instances_yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy_yaml = edit(example_policy());
    let out = kubectl_apply(cp, &ns, &policy_yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Shop {
        cp,
        configmaps: Api::namespaced(client.clone(), &ns),
        instances: Api::namespaced(client.clone(), &ns),
        policies: Api::namespaced(client, &ns),
        ns,
        primary,
        secondary,
        operator,
    }
}

/// Applies `examples/third-instance.yaml` (a Secret and the RedisInstance `tertiary` of the
/// warm tier) into `shop`'s namespace, on a new server with its password: the user's third
/// instance joining by `kubectl apply`. Returns the server.
pub fn apply_third_instance(shop: &Shop) -> RedisServer {
    apply_third_instance_in(shop, "warm")
}

/// [`apply_third_instance`], the newcomer labelled into `tier`.
pub fn apply_third_instance_in(shop: &Shop, tier: &str) -> RedisServer {
    let tertiary = server_with_password("change-me-tertiary");
    let yaml = example(
        "third-instance.yaml",
        &[("redis-tertiary.example.com", &tertiary)],
    )
    .replace(
        "redisfleet.io/tier: warm\n",
        &format!("redisfleet.io/tier: {tier}\n"),
    );
    assert!(yaml.contains(&format!("redisfleet.io/tier: {tier}\n")));
    let out = kubectl_apply(shop.cp, &shop.ns, &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tertiary
}
