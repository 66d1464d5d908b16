//! The operator without `--namespace` (the Helm chart's default, cluster-wide mode): one
//! process serves the fleets of several namespaces, each on its own. A test binary of its own,
//! so that its control plane has no other test's objects for this operator to pick up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use redis_fleet::api::redis_instance::{InstancePhase, RedisInstance};
use redis_fleet::routing::config_map::table_of;
use support::operator::Operator;
use support::shop::{example, example_policy, kubectl_apply, server_with_password};
use support::{ControlPlane, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_serves_the_fleets_of_every_namespace() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let operator = Operator::cluster_wide(cp);

    let mut fleets = Vec::new();
    for team in ["team-a", "team-b"] {
        let ns = cp.namespace(&client, team).await;
        let primary = server_with_password("change-me-primary");
        let secondary = server_with_password("change-me-secondary");
        let yaml = example(
            "redis-instances.yaml",
            &[
                ("redis-primary.example.com", &primary),
                ("redis-secondary.example.com", &secondary),
            ],
        );
        let out = kubectl_apply(cp, &ns, &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let policy = example_policy().replace("      enabled: true\n", "      enabled: false\n");
        let out = kubectl_apply(cp, &ns, &policy);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fleets.push((ns, primary, secondary));
    }

    for (ns, primary, secondary) in &fleets {
        let instances: Api<RedisInstance> = Api::namespaced(client.clone(), ns);
        for name in ["primary", "secondary"] {
            wait_for(&instances, name, Duration::from_secs(30), "Ready", |ri| {
                ri.status.as_ref().and_then(|s| s.phase) == Some(InstancePhase::Ready)
            })
            .await;
        }
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm = wait_for(
            &configmaps,
            "shop-redis-routing",
            Duration::from_secs(30),
            "the routing ConfigMap",
            |_| true,
        )
        .await;
        // Each namespace's table routes to its own servers only.
        let table = table_of(&cm).unwrap().unwrap();
        let ports: Vec<u16> = table.instances.values().map(|e| e.port).collect();
        assert_eq!(table.policy, format!("{ns}/shop"));
        assert!(
            ports.contains(&primary.port) && ports.contains(&secondary.port) && ports.len() == 2,
            "{ns}: {ports:?}"
        );
    }
    assert!(
        operator.metrics().contains("redisfleet_leader 1"),
        "{}",
        operator.log_tail(20)
    );
}
