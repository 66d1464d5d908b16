//! Tests of `redis-fleet plan`'s pure steps: what-ifs, the preview and its text, on the shop.

use std::collections::BTreeMap;

use super::preview::Inputs;
use super::*;
use crate::operator::cache_policy::build::{fixtures, plan_routing};

const MIB: u64 = 1 << 20;

fn shop_policy() -> CachePolicy {
    let mut p = CachePolicy::new("shop", fixtures::shop());
    p.metadata.namespace = Some("shop".into());
    p
}

/// The shop after its primary passed the threshold: auth, order and notification on the
/// primary (85 %), user and menu on the secondary (10 %), sampled.
struct Shop {
    policy: CachePolicy,
    views: Vec<InstanceView>,
    table: RoutingTable,
    bytes: BTreeMap<(String, String), u64>,
    keys: BTreeMap<(String, String), u64>,
}

fn shop() -> Shop {
    let policy = shop_policy();
    let mut views = fixtures::two();
    views[0].used_bytes = 25 * MIB + MIB / 2;
    views[1].used_bytes = 3 * MIB;
    let mut table = plan_routing("shop/shop", &policy.spec, &views, None)
        .table
        .unwrap();
    table.version = 7;
    let mut bytes = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for (cat, inst, mib, n) in [
        ("auth", "primary", 13, 20_000),
        ("order", "primary", 7, 11_000),
        ("notification", "primary", 5, 8_000),
        ("user", "secondary", 2, 3_000),
        ("menu", "secondary", 1, 1_500),
    ] {
        bytes.insert((cat.to_owned(), inst.to_owned()), mib * MIB);
        keys.insert((cat.to_owned(), inst.to_owned()), n);
    }
    Shop {
        policy,
        views,
        table,
        bytes,
        keys,
    }
}

fn preview_of(s: &Shop, views: &[InstanceView], threshold: u32) -> Preview {
    preview(
        &Inputs {
            policy: &s.policy,
            views,
            published: &s.table,
            category_bytes: &s.bytes,
            category_keys: &s.keys,
            threshold_percent: threshold,
            now: "2026-01-01T00:00:00Z".parse().unwrap(),
        },
        Vec::new(),
        Vec::new(),
    )
}

#[test]
fn moves_out_of_a_primary_that_may_evict_keys_without_a_ttl_are_shown_held_back() {
    let s = shop();
    let views: Vec<InstanceView> = s
        .views
        .iter()
        .map(|v| {
            if v.name == "primary" {
                v.clone().evicting("allkeys-lru")
            } else {
                v.clone()
            }
        })
        .collect();
    let p = preview_of(&s, &views, 80);
    assert!(p.moves.is_empty(), "{p:#?}");
    assert_eq!(p.total_bytes, 0);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("out of primary (allkeys-lru) wait")),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_full_primary_shows_its_moves_and_both_instances_in_the_band() {
    let s = shop();
    let p = preview_of(&s, &s.views, 80);
    assert!(
        p.reason
            .as_deref()
            .unwrap()
            .contains("above the 80% threshold: primary at 85%"),
        "{p:#?}"
    );
    assert!(!p.moves.is_empty());
    assert!(
        p.moves
            .iter()
            .all(|m| m.from == "primary" && m.to == "secondary")
    );
    assert!(p.total_keys > 0 && p.total_bytes > 0);
    assert_eq!(p.total_bytes, p.moves.iter().map(|m| m.bytes).sum::<u64>());
    let least = p.least_bytes.unwrap();
    assert!(p.total_bytes as f64 <= least as f64 * 1.25, "{p:#?}");
    assert!(p.outside().is_empty(), "{p:#?}");
    for i in &p.instances {
        let after = i.after_percent.unwrap();
        assert!((40.0..=60.0).contains(&after), "{i:?}");
    }
    // Keys follow the slots: half of a category's slots, half its keys.
    let auth: u64 = p
        .moves
        .iter()
        .filter(|m| m.category == "auth")
        .map(|m| m.keys)
        .sum();
    let auth_slots: u64 = p
        .moves
        .iter()
        .filter(|m| m.category == "auth")
        .map(|m| u64::from(m.end - m.start) + 1)
        .sum();
    assert!(auth.abs_diff(20_000 * auth_slots / 16_384) <= 2, "{auth}");
    let text = render(&p, 100, false);
    println!("{text}");
    assert!(text.starts_with(
        "plan for shop/shop · routing v7 · threshold 80% · band ±10 points around the 48% mean"
    ));
    assert!(text.contains("CATEGORY"), "{text}");
    assert!(text.contains("the least that brings every instance within the band"));
    assert!(
        text.lines()
            .any(|l| l.contains("primary") && l.contains("85%") && l.contains("within the band")),
        "{text}"
    );
    assert!(text.contains("Nothing was changed"));
    assert!(text.lines().all(|l| crate::cli::term::cols(l) <= 100));
}

#[test]
fn a_third_instance_from_its_file_is_planned_empty_and_ready() {
    let s = shop();
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/third-instance.yaml"
    ))
    .unwrap();
    let added = parse_instances(&yaml).unwrap();
    assert_eq!(added.len(), 1, "the Secret in the file is ignored");
    let objects = Objects {
        policy: s.policy.clone(),
        selected: Vec::new(),
        table: s.table.clone(),
    };
    let mut w = what_ifs(&objects, "shop", &[added], &[], None).unwrap();
    // The fetched instances come from the API; here from the fixture.
    w.views.extend(s.views.iter().cloned());
    w.views.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        w.what_if,
        ["tertiary joins (tier warm, 30.0Mi, counted as empty)"]
    );
    let t = w.views.iter().find(|v| v.name == "tertiary").unwrap();
    assert_eq!((t.phase, t.used_bytes), (InstancePhase::Ready, 0));
    // Over the threshold with three instances: everything ends in the band, the newcomer
    // receives, nothing goes back onto the primary.
    let p = preview_of(&s, &w.views, 80);
    assert!(p.moves.iter().all(|m| m.to != "primary"), "{p:#?}");
    assert!(p.moves.iter().any(|m| m.to == "tertiary"), "{p:#?}");
    assert!(p.outside().is_empty(), "{p:#?}");
}

#[test]
fn what_ifs_drain_and_threshold_and_refuse_unknown_names() {
    let s = shop();
    let objects = Objects {
        policy: s.policy.clone(),
        selected: Vec::new(),
        table: s.table.clone(),
    };
    let err = what_ifs(&objects, "shop", &[], &["nope".into()], None).unwrap_err();
    assert!(err.to_string().starts_with("--drain nope"), "{err}");
    let w = what_ifs(&objects, "shop", &[], &[], Some(90)).unwrap();
    assert_eq!(w.what_if, ["the capacity threshold is 90%"]);
    // At 90 % the full primary is no reason to move.
    let p = preview_of(&s, &s.views, 90);
    assert!(p.moves.is_empty(), "{p:#?}");
    let idle = p.idle.as_deref().unwrap();
    assert!(idle.contains("nothing triggers a plan"), "{idle}");
    assert!(render(&p, 100, false).contains("nothing would move:"));
}

#[test]
fn a_file_without_a_redis_instance_is_refused() {
    assert_eq!(
        parse_instances("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n").unwrap_err(),
        "holds no RedisInstance"
    );
    assert!(parse_instances(": : :").is_err());
}

#[test]
fn the_json_document_round_trips() {
    let s = shop();
    let p = preview_of(&s, &s.views, 80);
    let json = serde_json::to_string_pretty(&p).unwrap();
    assert!(json.contains("\"schemaVersion\": 1"));
    assert!(json.contains("\"leastBytes\""));
    let back: Preview = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn a_held_rebalance_says_so_and_still_shows_what_would_move() {
    let mut s = shop();
    assert_eq!(preview_of(&s, &s.views, 80).when, None);
    for (value, shown) in [("pause", "=pause"), ("cancel", "=cancel")] {
        s.policy.metadata.annotations = Some(BTreeMap::from([(
            "redisfleet.io/rebalance".to_owned(),
            value.to_owned(),
        )]));
        let p = preview_of(&s, &s.views, 80);
        let when = p.when.unwrap_or_default();
        assert!(
            when.contains(shown) && when.contains("starts no plan"),
            "{when}"
        );
        assert!(!p.moves.is_empty());
    }
    s.policy.metadata.annotations = Some(BTreeMap::from([(
        "redisfleet.io/rebalance".to_owned(),
        "resume".to_owned(),
    )]));
    assert_eq!(preview_of(&s, &s.views, 80).when, None);
}

#[test]
fn a_sync_range_the_plan_moves_is_shown_handed_over() {
    let mut s = shop();
    // auth replicated `Sync`, seeded on the secondary.
    s.policy
        .spec
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .replication = crate::api::cache_policy::Replication::Sync;
    s.table
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .replication = Some(crate::routing::table::CategoryReplication {
        mode: crate::routing::table::ReplicationMode::Sync,
        replicas: vec![crate::routing::table::SlotOwner {
            range: crate::routing::slots::SlotRange::ALL,
            instance: "secondary".into(),
        }],
        seeding: Vec::new(),
        outgoing: Vec::new(),
    });
    let mut views = s.views.clone();
    views.push(fixtures::example_view(
        "tertiary",
        "hot",
        InstancePhase::Ready,
        30,
    ));
    let p = preview_of(&s, &views, 80);
    let auth: Vec<&preview::PlannedMove> =
        p.moves.iter().filter(|m| m.category == "auth").collect();
    assert!(
        auth.iter().any(|m| m.to == "tertiary"),
        "the plan moves auth to the newcomer: {p:#?}"
    );
    for m in &p.moves {
        assert_eq!(
            m.handover,
            m.category == "auth" && m.from == "primary" && m.to == "tertiary",
            "{m:#?}"
        );
    }
    let text = render::render(&p, 120, false);
    assert!(text.contains("tertiary (handover)"), "{text}");
    assert!(text.contains("no Job copies it"), "{text}");
    // While it is handed over, the operator plans nothing else.
    let m = auth.iter().find(|m| m.to == "tertiary").unwrap();
    let mut handed = s.table.clone();
    assert!(crate::operator::cache_policy::build::handovers::hand_over(
        &mut handed,
        &crate::rebalance::plan::Move {
            category: m.category.clone(),
            range: crate::routing::slots::SlotRange::new(m.start, m.end),
            from: m.from.clone(),
            to: m.to.clone(),
            bytes: 0,
        }
    ));
    if let Some(r) = handed
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .and_then(|c| c.replication.as_mut())
    {
        r.replicas.insert(
            0,
            crate::routing::table::SlotOwner {
                range: crate::routing::slots::SlotRange::new(m.start, m.end),
                instance: "tertiary".into(),
            },
        );
        r.replicas[1].range = crate::routing::slots::SlotRange::new(m.end + 1, 16383);
        r.seeding = vec![r.replicas[0].clone()];
    }
    s.table = handed;
    let p = preview_of(&s, &views, 80);
    assert!(
        p.when.as_deref().is_some_and(|w| w.contains("handed over")),
        "{p:#?}"
    );
}
