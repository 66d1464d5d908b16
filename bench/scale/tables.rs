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

/// Adds the size rows.
pub fn rows(report: &mut Report, bench: bool) {
    let sizes: &[usize] = if bench { &[1000, 1400, 5000] } else { &[100] };
    for &n in sizes {
        let t = table(n, 200);
        let json = t.to_json();
        let started = Instant::now();
        RoutingTable::from_json(&json).unwrap();
        let parse = started.elapsed();
        report.add(
            &format!("routing.json (schema 1), {n} × 200 categories"),
            format!("{} KiB", json.len() / 1024),
            "< 1024 KiB",
            Some(json.len() < 1 << 20),
        );
        report.add(
            &format!("  parse, {n} × 200"),
            format!("{:.1} ms", parse.as_secs_f64() * 1e3),
            "",
            None,
        );
    }
}
