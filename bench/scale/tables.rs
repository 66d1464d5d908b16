//! Routing table sizes for large fleets: 200 categories in ten tiers over 1 000, 1 400 and
//! 5 000 instances, planned by the operator's own placement, with endpoints as managed
//! instances have them (a Service name, a generated password Secret).

use std::time::Instant;

use redis_fleet::api::cache_policy::CachePolicySpec;
use redis_fleet::api::redis_instance::InstancePhase;
use redis_fleet::operator::cache_policy::build::{InstanceView, plan_routing};
use redis_fleet::routing::table::{InstanceEndpoint, RoutingTable, SecretKeyName};

use crate::Report;

/// The table of `instances` instances × `categories` categories in ten tiers.
pub fn table(instances: usize, categories: usize) -> RoutingTable {
    let views: Vec<InstanceView> = (0..instances)
        .map(|i| {
            let name = format!("redis-{i:04}");
            InstanceView {
                tier: Some(format!("tier-{}", i % 10)),
                phase: InstancePhase::Ready,
                capacity_bytes: Some((30 + (i % 7) as u64) << 20),
                used_bytes: 0,
                weight: 100,
                drain: false,
                copies_to_free: false,
                lost_data: false,
                evicting_policy: None,
                endpoint: InstanceEndpoint {
                    host: format!("{name}.shop.svc.cluster.local"),
                    port: 6379,
                    tls: None,
                    username_secret: None,
                    password_secret: Some(SecretKeyName {
                        name: format!("{name}-auth"),
                        key: "password".into(),
                    }),
                },
                name,
            }
        })
        .collect();
    let categories: Vec<serde_json::Value> = (0..categories)
        .map(|c| {
            serde_json::json!({
                "name": format!("category-{c:03}"),
                "keyPrefixes": [format!("c{c}:"), format!("cat{c}:")],
                "tier": format!("tier-{}", c % 10),
                "fallbackTier": format!("tier-{}", (c + 1) % 10),
                "ttl": {"default": "1h", "max": "24h"}
            })
        })
        .collect();
    let spec: CachePolicySpec =
        serde_json::from_value(serde_json::json!({"categories": categories})).unwrap();
    plan_routing("shop/shop", &spec, &views, None)
        .table
        .unwrap()
}

/// The same table with no two categories placed alike (as after rebalances): each category's
/// owners rotated by its index, so schema 2 cannot share runs between categories.
fn all_different(mut t: RoutingTable) -> RoutingTable {
    for (i, c) in t.categories.iter_mut().enumerate() {
        let owners: Vec<String> = c.slots.iter().map(|o| o.instance.clone()).collect();
        for (k, run) in c.slots.iter_mut().enumerate() {
            run.instance = owners[(k + i) % owners.len()].clone();
        }
    }
    t
}

fn stored(t: &RoutingTable, schema: u32) -> usize {
    let (data, binary) = redis_fleet::routing::config_map::contents(t, schema);
    data.iter().flatten().map(|(_, v)| v.len()).sum::<usize>()
        + binary
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>()
}

/// Parse time of the ConfigMap contents as a sidecar reads them.
fn parse_ms(t: &RoutingTable, schema: u32) -> f64 {
    let (data, binary) = redis_fleet::routing::config_map::contents(t, schema);
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        data,
        binary_data: binary,
        ..Default::default()
    };
    let started = Instant::now();
    redis_fleet::routing::config_map::table_of(&cm)
        .unwrap()
        .unwrap();
    started.elapsed().as_secs_f64() * 1e3
}

/// Adds the size rows.
pub fn rows(report: &mut Report, bench: bool) {
    let sizes: &[usize] = if bench { &[1000, 1400, 5000] } else { &[100] };
    for &n in sizes {
        let t = table(n, 200);
        for schema in [1, 2] {
            let bytes = stored(&t, schema);
            report.add(
                &format!("routing ConfigMap, schema {schema}, {n} × 200"),
                format!("{} KiB", bytes / 1024),
                "< 1024 KiB",
                Some(bytes < 1 << 20),
            );
        }
        report.add(
            &format!("  read by a sidecar, schema 1 / 2, {n} × 200"),
            format!("{:.0} / {:.0} ms", parse_ms(&t, 1), parse_ms(&t, 2)),
            "",
            None,
        );
        let worst = all_different(t);
        let bytes = stored(&worst, 2);
        report.add(
            &format!("  schema 2, no two categories alike, {n} × 200"),
            format!("{} KiB", bytes / 1024),
            "< 1024 KiB",
            Some(bytes < 1 << 20),
        );
    }
}
