//! Tests of the whole command short of the API server: objects as fetched, built into a
//! snapshot, drawn as text or written as JSON; and the test clock and units the build and
//! render tests share.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::json;

use super::*;
use crate::api::cache_policy::CachePolicy;
use crate::api::redis_instance::{InstancePhase, RedisInstance};
use crate::routing::table::{
    Category, Failover, InstanceEndpoint, RoutingTable, TABLE_KEY, TtlRules, VERSION_ANNOTATION,
};

pub(super) const MIB: u64 = 1 << 20;
/// "Now" in every test: 2025-06-01T12:00:00Z.
pub(super) const NOW: i64 = 1_748_779_200;

pub(super) fn at(secs_before_now: i64) -> Timestamp {
    Timestamp::from_second(NOW - secs_before_now).unwrap()
}

fn ri(name: &str, labels: serde_json::Value, status: serde_json::Value) -> RedisInstance {
    serde_json::from_value(json!({
        "apiVersion": "redisfleet.io/v1alpha1", "kind": "RedisInstance",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"external": {"host": "127.0.0.1", "port": 7001}, "capacity": "30Mi"},
        "status": status,
    }))
    .unwrap()
}

fn objects() -> Objects {
    let ready = |used: i64| {
        json!({
            "phase": "Ready", "endpoint": "127.0.0.1:7001",
            "memory": {"usedBytes": used, "capacityBytes": 30 * MIB, "used": "x", "capacity": "30.0Mi"},
            "stats": {"hits": 93, "misses": 7, "hitRatio": 0.93, "hitPercent": 93, "opsPerSecond": 850, "connectedClients": 3, "evictedKeys": 0},
            "keys": 10234, "latency": "420µs", "latencyMicros": 420,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                            "lastTransitionTime": "2025-06-01T11:00:00Z"}],
        })
    };
    let shop =
        |tier: &str| json!({"app.kubernetes.io/part-of": "shop", "redisfleet.io/tier": tier});
    let instances = vec![
        ri("tertiary", shop("warm"), ready(0)),
        ri("primary", shop("hot"), ready(16_357_785)),
        ri("secondary", shop("warm"), ready(3 * MIB as i64)),
        // Not part of the shop, and never probed: capacity from spec.
        ri("legacy", json!({}), json!(null)),
    ];
    let policy: CachePolicy = serde_json::from_value(json!({
        "apiVersion": "redisfleet.io/v1alpha1", "kind": "CachePolicy",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "instanceSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shop"}},
            "routingConfigMap": "shop-redis-routing",
            "categories": [
                {"name": "auth", "keyPrefixes": ["auth:", "session:"], "tier": "hot", "fallbackTier": "warm",
                 "ttl": {"default": "1h", "max": "24h", "adaptive": true}},
                {"name": "user", "keyPrefixes": ["user:"], "tier": "warm"},
            ],
            "defaultCategory": {"tier": "warm", "ttl": {"default": "1h"}},
            "balancing": {"capacityThreshold": 75},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                            "lastTransitionTime": "2025-06-01T11:00:00Z"}],
            "routing": {"configMap": "shop-redis-routing", "version": 17, "hash": "abc",
                        "publishedAt": "2025-06-01T11:58:00Z"},
            "failovers": [{"category": "auth", "from": "primary", "to": "secondary", "slots": 16384,
                           "since": "2025-06-01T11:57:55Z"}],
            "sidecars": {"count": 3, "minVersion": 16},
            "recommendations": ["add an instance"],
        },
    }))
    .unwrap();
    let endpoint = |port| InstanceEndpoint {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        username_secret: None,
        password_secret: None,
    };
    let table = RoutingTable {
        schema_version: crate::routing::table::SCHEMA_VERSION,
        version: 17,
        policy: "shop/shop".into(),
        instances: [
            ("primary".to_owned(), endpoint(7001)),
            ("secondary".to_owned(), endpoint(7002)),
            ("tertiary".to_owned(), endpoint(7003)),
        ]
        .into(),
        categories: vec![
            Category {
                name: "auth".into(),
                prefixes: vec!["auth:".into(), "session:".into()],
                ttl: TtlRules::default(),
                slots: vec![(0, 16383, "primary".to_owned()).into()],
                placement_basis: None,
                replication: None,
            },
            Category {
                name: "user".into(),
                prefixes: vec!["user:".into()],
                ttl: TtlRules::default(),
                slots: vec![
                    (0, 4095, "secondary".to_owned()).into(),
                    (4096, 8191, "tertiary".to_owned()).into(),
                    (8192, 12287, "secondary".to_owned()).into(),
                    (12288, 16383, "tertiary".to_owned()).into(),
                ],
                placement_basis: None,
                replication: None,
            },
            Category {
                name: "default".into(),
                prefixes: vec![],
                ttl: TtlRules {
                    default_ms: Some(3_600_000),
                    max_ms: None,
                    adaptive: false,
                },
                slots: vec![
                    (0, 10000, "secondary".to_owned()).into(),
                    (10001, 16383, "tertiary".to_owned()).into(),
                ],
                placement_basis: None,
                replication: None,
            },
        ],
        migrating: vec![],
        failover: vec![
            Failover {
                category: "auth".into(),
                start: 0,
                end: 8191,
                from: "primary".into(),
                to: "secondary".into(),
                handover: false,
            },
            Failover {
                category: "auth".into(),
                start: 8192,
                end: 16383,
                from: "primary".into(),
                to: "secondary".into(),
                handover: false,
            },
        ],
        placement_bases: vec![],
        strategy: None,
    };
    table.validate().unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "shop-redis-routing", "annotations": {VERSION_ANNOTATION: "17"}},
        "data": {TABLE_KEY: table.to_json()},
    }))
    .unwrap();
    Objects {
        instances,
        policies: vec![policy],
        config_maps: [("shop-redis-routing".to_owned(), Ok(cm))].into(),
    }
}

#[test]
fn builds_a_snapshot_from_objects() {
    let s = build("shop", None, &objects(), at(0));
    assert_eq!(s.schema_version, SCHEMA_VERSION);
    assert_eq!(s.policies.len(), 1);
    let p = &s.policies[0];
    assert_eq!(p.ready, Some(true));
    assert_eq!(p.capacity_threshold, 75);
    assert_eq!(p.routing.version, Some(17));
    assert_eq!(p.routing.config_map, "shop-redis-routing");
    assert_eq!(p.routing.published_at, Some(at(120)));
    assert_eq!(p.routing.error, None);
    assert_eq!(
        p.sidecars,
        Some(SidecarsSnapshot {
            count: 3,
            min_version: Some(16),
            behind: true
        })
    );
    let names: Vec<&str> = p.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["primary", "secondary", "tertiary"],
        "selected, by name"
    );
    let primary = &p.instances[0];
    assert_eq!(primary.tier.as_deref(), Some("hot"));
    assert_eq!(primary.used_percent, Some(52.0));
    assert_eq!(primary.hit_percent, Some(93));
    assert_eq!(primary.latency.as_deref(), Some("420µs"));

    let cats: Vec<&str> = p.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cats, ["auth", "user", "default"]);
    let auth = &p.categories[0];
    assert_eq!(auth.tier.as_deref(), Some("hot"));
    assert_eq!(auth.fallback_tier.as_deref(), Some("warm"));
    assert_eq!(
        auth.ttl,
        TtlSnapshot {
            default: Some("1h".into()),
            max: Some("24h".into()),
            adaptive: true
        },
        "the spec's words, not milliseconds"
    );
    assert_eq!(auth.placement.len(), 1);
    assert_eq!(auth.placement[0].percent, 100.0);
    let user: Vec<(&str, f64)> = p.categories[1]
        .placement
        .iter()
        .map(|s| (s.instance.as_str(), s.percent))
        .collect();
    assert_eq!(user, [("secondary", 50.0), ("tertiary", 50.0)]);
    let default: Vec<(&str, f64)> = p.categories[2]
        .placement
        .iter()
        .map(|s| (s.instance.as_str(), s.percent))
        .collect();
    assert_eq!(default, [("secondary", 61.04), ("tertiary", 38.96)]);
    assert_eq!(p.categories[2].ttl.default.as_deref(), Some("1h"));

    assert_eq!(
        p.failovers,
        [FailoverSnapshot {
            category: "auth".into(),
            from: "primary".into(),
            to: "secondary".into(),
            slots: 16384,
            since: Some(at(125)),
        }],
        "ranges grouped, since from status"
    );
    assert_eq!(p.recommendations, ["add an instance"]);

    // Never probed, not selected: capacity from spec, no usage.
    assert_eq!(s.unselected_instances.len(), 1);
    let legacy = &s.unselected_instances[0];
    assert_eq!(legacy.name, "legacy");
    assert_eq!(legacy.phase, InstancePhase::Pending);
    assert_eq!(legacy.capacity_bytes, Some(30 * MIB));
    assert_eq!(legacy.used_percent, None);

    let text = render(&s, 100, false);
    println!("{text}");
    assert!(text.contains("secondary 50% · tertiary 50%"), "{text}");
    assert!(text.contains("secondary 61% · tertiary 39%"), "{text}");
    assert!(
        text.contains("auth → secondary (primary ready since 2m)"),
        "{text}"
    );
}

#[test]
fn a_policy_view_leaves_other_instances_out() {
    let s = build("shop", Some("shop"), &objects(), at(0));
    assert_eq!(s.policy.as_deref(), Some("shop"));
    assert!(s.unselected_instances.is_empty());
    assert_eq!(s.policies.len(), 1);
}

#[test]
fn without_a_routing_configmap_categories_come_from_the_spec() {
    let mut o = objects();
    o.config_maps.clear();
    let s = build("shop", None, &o, at(0));
    let p = &s.policies[0];
    assert_eq!(p.routing.version, Some(17), "from status");
    assert!(
        p.routing
            .error
            .as_deref()
            .unwrap()
            .contains("shop-redis-routing not found"),
        "{:?}",
        p.routing.error
    );
    let cats: Vec<&str> = p.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cats, ["auth", "user", "default"]);
    assert!(p.categories.iter().all(|c| c.placement.is_empty()));
    assert_eq!(p.failovers.len(), 1, "from status");

    o.config_maps
        .insert("shop-redis-routing".into(), Err("forbidden".into()));
    let s = build("shop", None, &o, at(0));
    assert_eq!(
        s.policies[0].routing.error.as_deref(),
        Some("routing ConfigMap shop-redis-routing: forbidden")
    );
    let text = render(&s, 100, false);
    assert!(
        text.contains("routing: routing ConfigMap shop-redis-routing: forbidden"),
        "{text}"
    );
    assert!(text.contains("not published"), "{text}");
}

#[test]
fn json_has_a_schema_version_and_round_trips() {
    let s = build("shop", None, &objects(), at(0));
    let text = to_json(&s).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["schemaVersion"], 1);
    assert_eq!(value["generatedAt"], "2025-06-01T12:00:00Z");
    assert_eq!(value["policies"][0]["routing"]["version"], 17);
    assert_eq!(value["policies"][0]["instances"][0]["usedPercent"], 52.0);
    assert_eq!(
        value["policies"][0]["categories"][2]["placement"][0]["percent"],
        61.04
    );
    assert_eq!(value["policies"][0]["conditions"][0]["type"], "Ready");
    assert_eq!(value["unselectedInstances"][0]["phase"], "Pending");
    let back: Snapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
}

#[test]
fn all_namespaces_one_after_the_other() {
    let shop = build("shop", None, &objects(), at(0));
    let mut objects_of_cafe = objects();
    objects_of_cafe.instances.truncate(1);
    let cafe = build("cafe", None, &objects_of_cafe, at(0));
    let text = render_all(&[cafe.clone(), shop.clone()], 100, false);
    assert_eq!(
        text,
        format!(
            "{}\n{}",
            render(&cafe, 100, false),
            render(&shop, 100, false)
        )
    );
    assert!(
        text.starts_with("namespace cafe · 1 policy · 1 instance\n"),
        "{text}"
    );
    assert!(
        text.contains("\nnamespace shop · 1 policy · 4 instances\n"),
        "{text}"
    );
    assert_eq!(
        render_all(&[], 100, false),
        "No CachePolicy and no RedisInstance in any namespace.\n"
    );

    let value: serde_json::Value =
        serde_json::from_str(&to_json_all(vec![cafe, shop.clone()]).unwrap()).unwrap();
    assert_eq!(value["schemaVersion"], 1);
    assert_eq!(value["namespaces"][0]["namespace"], "cafe");
    assert_eq!(value["namespaces"][1]["namespace"], "shop");
    let back: Snapshot = serde_json::from_value(value["namespaces"][1].clone()).unwrap();
    assert_eq!(back, shop);
}

#[test]
fn output_that_is_not_a_terminal_is_not_wrapped() {
    let s = build("shop", None, &objects(), at(0));
    let narrow = render(&s, 60, false);
    let unwrapped = render(&s, usize::MAX, false);
    // The policy header takes one line, not several.
    let header = |text: &str| {
        text.lines()
            .skip_while(|l| !l.starts_with("shop "))
            .take_while(|l| !l.trim_start().starts_with("INSTANCE"))
            .count()
    };
    assert!(header(&narrow) > 1, "{narrow}");
    assert_eq!(header(&unwrapped), 1, "{unwrapped}");
    assert!(unwrapped.lines().count() < narrow.lines().count());
}
