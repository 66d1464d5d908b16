//! Tests of the routing table a policy should publish.

use super::*;
use crate::operator::cache_policy::build::fixtures::{self, example_view as view, shop, two};

#[test]
fn the_shop_example_puts_each_category_on_its_tier() {
    let planned = plan_routing("shop/shop", &shop(), &two(), None);
    assert!(planned.problems.is_empty(), "{:?}", planned.problems);
    let table = planned.table.unwrap();
    table.validate().unwrap();
    for (cat, owner) in [
        ("auth", "primary"),
        ("order", "primary"),
        ("notification", "primary"),
        ("analytics-live", "primary"),
        ("user", "secondary"),
        ("menu", "secondary"),
        ("ml", "secondary"),
        ("analytics-history", "secondary"),
        ("default", "secondary"),
    ] {
        let c = table.category(cat).unwrap();
        assert_eq!(c.slots.len(), 1, "{cat}");
        assert_eq!(c.slots[0].instance, owner, "{cat}");
    }
    assert_eq!(
        table.category("auth").unwrap().prefixes,
        ["auth:", "session:"]
    );
    assert_eq!(
        table.category("auth").unwrap().ttl.default_ms,
        Some(3_600_000)
    );
    assert!(table.to_json().contains("primary-redis"));
    assert!(!table.to_json().contains("change-me"));
}

#[test]
fn a_third_warm_instance_takes_a_share_of_warm_slots_only() {
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let mut three = two();
    three.push(view("tertiary", "warm", InstancePhase::Ready, 30));
    let after = plan_routing("shop/shop", &shop(), &three, Some(&before))
        .table
        .unwrap();
    after.validate().unwrap();
    for cat in ["auth", "order", "notification", "analytics-live"] {
        assert_eq!(
            after.category(cat),
            before.category(cat),
            "hot category {cat} moved"
        );
    }
    for cat in ["user", "menu", "ml", "analytics-history", "default"] {
        let owners = after.category(cat).unwrap().owners();
        let moved = owners.iter().filter(|o| **o == "tertiary").count();
        assert_eq!(moved, 8192, "{cat}: half of the warm slots move");
        assert!(owners.iter().all(|o| *o == "tertiary" || *o == "secondary"));
    }
    // Re-planning with nothing changed changes nothing.
    let again = plan_routing("shop/shop", &shop(), &three, Some(&after))
        .table
        .unwrap();
    assert_eq!(again, after);
}

#[test]
fn an_unhealthy_newcomer_gets_nothing_until_healthy() {
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let mut three = two();
    three.push(view("tertiary", "warm", InstancePhase::Pending, 30));
    let after = plan_routing("shop/shop", &shop(), &three, Some(&before))
        .table
        .unwrap();
    assert_eq!(after, before);
}

#[test]
fn unreachable_owner_fails_over_to_the_fallback_tier_and_back() {
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let mut down = two();
    down[0].phase = InstancePhase::Unreachable;
    let during = plan_routing("shop/shop", &shop(), &down, Some(&before))
        .table
        .unwrap();
    during.validate().unwrap();
    // Ownership unchanged; hot categories served by secondary through failover entries.
    for cat in &before.categories {
        assert_eq!(during.category(&cat.name).unwrap().slots, cat.slots);
    }
    let failed: BTreeSet<&str> = during
        .failover
        .iter()
        .map(|f| f.category.as_str())
        .collect();
    assert_eq!(
        failed,
        BTreeSet::from(["auth", "order", "notification", "analytics-live"])
    );
    assert!(
        during
            .failover
            .iter()
            .all(|f| f.from == "primary" && f.to == "secondary")
    );
    let resolver = crate::routing::Resolver::new(during.clone()).unwrap();
    let route = resolver.resolve(b"auth:token");
    assert_eq!(resolver.instance_name(route.target), "secondary");

    let fresh = newly_served(Some(&before), &during);
    assert_eq!(fresh.keys().collect::<Vec<_>>(), ["secondary"]);
    assert_eq!(fresh["secondary"].len(), 4);

    // With rebalancing on, the recovered owner keeps the failover entries until a
    // failback migration moves the data written meanwhile.
    let sticky = plan_routing("shop/shop", &shop(), &two(), Some(&during))
        .table
        .unwrap();
    assert_eq!(sticky.failover, during.failover);
    // With it off, the entries go and the owner's stale copies are purged first.
    let mut off = shop();
    off.balancing.rebalance.enabled = false;
    let after = plan_routing("shop/shop", &off, &two(), Some(&during))
        .table
        .unwrap();
    assert!(after.failover.is_empty());
    let back = newly_served(Some(&during), &after);
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        ["primary"],
        "primary's stale copies are purged first"
    );
    assert_eq!(after.categories, before.categories);
    // Turned off while a failback still prepares: that plan moves the outage's writes home,
    // so the entries stay until it replaces them (dropped, the owner served the ranges
    // without those writes and the fallback's copies were freed).
    let preparing = plan_routing_with("shop/shop", &off, &two(), Some(&during), true, &[])
        .table
        .unwrap();
    assert_eq!(preparing.failover, during.failover);
}

#[test]
fn a_failover_avoids_a_fallback_that_is_nearly_full() {
    // Chaos seeds 4, 7, 9 (180 s): a failed instance's writes went to a fallback that was
    // already near `maxmemory`, and were refused there (`-OOM`) while another instance of the
    // fallback tier had room.
    let mut three = two();
    three[1] = three[1].clone().with_used_mib(29);
    three.push(view("tertiary", "warm", InstancePhase::Ready, 30).with_used_mib(3));
    let before = plan_routing("shop/shop", &shop(), &three, None)
        .table
        .unwrap();
    three[0].phase = InstancePhase::Unreachable;
    let during = plan_routing("shop/shop", &shop(), &three, Some(&before))
        .table
        .unwrap();
    assert!(!during.failover.is_empty());
    for f in &during.failover {
        assert_eq!(f.to, "tertiary", "{f:?}");
    }
    // When every instance is that full, the failover still happens.
    for v in &mut three[1..] {
        *v = v.clone().with_used_mib(29);
    }
    let full = plan_routing("shop/shop", &shop(), &three, Some(&before))
        .table
        .unwrap();
    assert_eq!(full.failover.len(), during.failover.len());
}

#[test]
fn a_tier_that_is_not_probed_yet_is_waited_for_not_replaced_by_its_fallback() {
    let mut fresh = two();
    fresh[1].phase = InstancePhase::Pending;
    let planned = plan_routing("shop/shop", &shop(), &fresh, None);
    assert!(
        planned.table.is_none(),
        "nothing published before every tier was probed"
    );
    assert!(planned.problems.contains(&Problem::Waiting {
        category: "user".into()
    }));
    let published = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let planned = plan_routing("shop/shop", &shop(), &fresh, Some(&published));
    assert_eq!(planned.table, Some(published), "the previous table stays");
}

#[test]
fn no_fallback_is_a_problem_not_a_panic() {
    let spec: CachePolicySpec = serde_json::from_value(serde_json::json!({
        "categories": [{"name": "auth", "keyPrefixes": ["auth:"], "tier": "hot"}],
        "defaultCategory": {"tier": "hot"}
    }))
    .unwrap();
    let one = vec![view("primary", "hot", InstancePhase::Ready, 30)];
    let before = plan_routing("ns/p", &spec, &one, None).table.unwrap();
    let mut down = one.clone();
    down[0].phase = InstancePhase::Unreachable;
    let planned = plan_routing("ns/p", &spec, &down, Some(&before));
    assert!(planned.table.unwrap().failover.is_empty());
    assert!(planned.problems.contains(&Problem::NoFallback {
        category: "auth".into(),
        instance: "primary".into()
    }));
}

#[test]
fn missing_tier_falls_back_or_reports() {
    let spec: CachePolicySpec = serde_json::from_value(serde_json::json!({
        "categories": [{"name": "auth", "keyPrefixes": ["auth:"], "tier": "ice", "fallbackTier": "warm"}]
    }))
    .unwrap();
    let table = plan_routing("ns/p", &spec, &two(), None).table.unwrap();
    assert_eq!(
        table.category("auth").unwrap().slots[0].instance,
        "secondary"
    );

    let planned = plan_routing("ns/p", &spec, &[], None);
    assert!(planned.table.is_none());
    assert!(matches!(planned.problems[0], Problem::NoCandidates { .. }));
}

#[test]
fn strategies() {
    let mut spec = shop();
    let mut unequal = two();
    unequal[0].tier = Some("warm".into());
    unequal[0].capacity_bytes = Some(90 << 20);
    spec.balancing.strategy = Strategy::Smart;
    let smart = plan_routing("s/s", &spec, &unequal, None).table.unwrap();
    let count = |t: &RoutingTable, who: &str| {
        t.category("user")
            .unwrap()
            .owners()
            .iter()
            .filter(|o| **o == who)
            .count()
    };
    assert_eq!(count(&smart, "primary"), 12288, "3:1 by capacity");
    spec.balancing.strategy = Strategy::ConsistentHash;
    let equal = plan_routing("s/s", &spec, &unequal, None).table.unwrap();
    assert_eq!(count(&equal, "primary"), 8192);
    spec.balancing.strategy = Strategy::Pinned;
    let pinned = plan_routing("s/s", &spec, &unequal, None).table.unwrap();
    assert!(pinned.categories.iter().all(|c| c.slots.len() == 1));

    // Switching strategy on a published table re-places, even when the candidates and
    // their shares (capacity × weight for both Smart and Pinned) stay the same.
    let repinned = plan_routing("s/s", &spec, &unequal, Some(&smart))
        .table
        .unwrap();
    assert!(repinned.categories.iter().all(|c| c.slots.len() == 1));
    spec.balancing.strategy = Strategy::Smart;
    let respread = plan_routing("s/s", &spec, &unequal, Some(&pinned))
        .table
        .unwrap();
    assert_eq!(count(&respread, "primary"), 12288);
    // Same strategy: what a rebalance left is kept.
    assert_eq!(
        plan_routing("s/s", &spec, &unequal, Some(&respread)).table,
        Some(respread.clone())
    );
    // A table published before the strategy was recorded is not re-placed.
    let mut legacy = pinned.clone();
    legacy.strategy = None;
    let kept = plan_routing("s/s", &spec, &unequal, Some(&legacy))
        .table
        .unwrap();
    assert!(kept.categories.iter().all(|c| c.slots.len() == 1));
}

/// A fleet of `n` instances in 10 tiers, with 200 categories spread over the tiers.
fn large_fleet(n: usize) -> RoutingTable {
    let instances: Vec<InstanceView> = (0..n)
        .map(|i| {
            view(
                &format!("redis-{i:04}"),
                &format!("tier-{}", i % 10),
                InstancePhase::Ready,
                30 + (i % 7) as u64,
            )
        })
        .collect();
    let categories: Vec<serde_json::Value> = (0..200)
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
    let table = plan_routing("big/big", &spec, &instances, None)
        .table
        .unwrap();
    table.validate().unwrap();
    assert_eq!(table.instances.len(), n);
    table
}

/// What a ConfigMap holds for `table` in `schema`, in bytes.
fn stored_bytes(table: &RoutingTable, schema: u32) -> usize {
    let (data, binary) = crate::routing::config_map::contents(table, schema);
    data.iter().flatten().map(|(_, v)| v.len()).sum::<usize>()
        + binary
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>()
}

#[test]
fn a_table_for_a_large_fleet_stays_under_one_mebibyte() {
    // Schema 1 holds 1 000 instances × 200 categories in 70 % of a ConfigMap; schema 2 holds
    // 5 000 in a small part of it, and reads back the same table.
    let thousand = large_fleet(1000);
    let v1 = stored_bytes(&thousand, 1);
    assert!(v1 < 1 << 20, "schema 1: {v1} bytes");
    let five_thousand = large_fleet(5000);
    let v2 = stored_bytes(&five_thousand, 2);
    eprintln!(
        "1000 × 200: schema 1 {v1} bytes, schema 2 {}; 5000 × 200: schema 1 {}, schema 2 {v2}",
        stored_bytes(&thousand, 2),
        stored_bytes(&five_thousand, 1)
    );
    assert!(v2 < 256 << 10, "schema 2: {v2} bytes");
    let (_, binary) = crate::routing::config_map::contents(&five_thousand, 2);
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        binary_data: binary,
        ..Default::default()
    };
    let back = crate::routing::config_map::table_of(&cm).unwrap().unwrap();
    assert_eq!(back, five_thousand);
}

#[test]
fn a_failback_that_ends_before_finishing_leaves_its_ranges_on_the_failover_target() {
    // Chaos seed 4 (180 s): a failback's Job kept failing (its source was past maxmemory) and
    // the plan was rolled back. The table published during the failback carries the ranges as
    // `migrating` in place of their failover entries; the table after the roll-back was built
    // from it and gave the ranges to the recovered owner, whose stale copies the Job had
    // purged, and the fallback's copies — every write of the outage — were freed.
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let mut down = two();
    down[0].phase = InstancePhase::Unreachable;
    let during = plan_routing("shop/shop", &shop(), &down, Some(&before))
        .table
        .unwrap();
    assert!(!during.failover.is_empty());
    // The failback's flip: the failover entries replaced by migrations back to the owner.
    let mut flipped = during.clone();
    flipped.migrating = flipped
        .failover
        .drain(..)
        .map(|f| crate::routing::table::Migration {
            category: f.category,
            start: f.start,
            end: f.end,
            from: f.to,
            to: f.from,
            epoch: 9,
            target_serves: None,
        })
        .collect();

    // The plan is over without finishing: the next table serves the ranges where their data is.
    let after = plan_routing("shop/shop", &shop(), &two(), Some(&flipped))
        .table
        .unwrap();
    assert_eq!(after.failover, during.failover);
    let resolver = crate::routing::Resolver::new(after.clone()).unwrap();
    let route = resolver.resolve(b"auth:token");
    assert_eq!(resolver.instance_name(route.target), "secondary");
    // And when the owner dies again meanwhile, the ranges stay on the same fallback.
    let again = plan_routing("shop/shop", &shop(), &down, Some(&flipped))
        .table
        .unwrap();
    assert_eq!(again.failover, during.failover);
}

/// What each instance serves, read slot by slot (the former implementation): the reference
/// for [`served_ranges`], which works on ranges.
fn served_slot_by_slot(table: &RoutingTable) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let mut bits: BTreeMap<String, BTreeMap<String, Vec<bool>>> = BTreeMap::new();
    let mut mark = |instance: &str, category: &str, range: SlotRange| {
        let b = bits
            .entry(instance.to_owned())
            .or_default()
            .entry(category.to_owned())
            .or_insert_with(|| vec![false; usize::from(SLOT_COUNT)]);
        for s in range.start..=range.end {
            b[usize::from(s)] = true;
        }
    };
    for cat in &table.categories {
        let mut served = cat.owners();
        for f in table.failover.iter().filter(|f| f.category == cat.name) {
            for slot in f.start..=f.end {
                if served[usize::from(slot)] == f.from {
                    served[usize::from(slot)] = &f.to;
                }
            }
        }
        for (range, instance) in runs(&served) {
            mark(instance, &cat.name, range);
        }
    }
    for m in &table.migrating {
        for instance in [&m.from, &m.to] {
            mark(instance, &m.category, SlotRange::new(m.start, m.end));
        }
    }
    bits.into_iter()
        .map(|(instance, cats)| {
            let ranges = cats
                .into_iter()
                .flat_map(|(cat, b)| {
                    runs(&b)
                        .into_iter()
                        .filter(|(_, on)| *on)
                        .map(move |(r, _)| (cat.clone(), r))
                })
                .collect();
            (instance, ranges)
        })
        .collect()
}

#[test]
fn served_ranges_are_the_maximal_runs_of_served_slots() {
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let mut down = two();
    down[0].phase = InstancePhase::Unreachable;
    let mut table = plan_routing("shop/shop", &shop(), &down, Some(&before))
        .table
        .unwrap();
    assert!(!table.failover.is_empty());
    // Migrations that overlap, touch and extend what their ends already serve.
    let user = table.category("user").unwrap().slots[0].clone();
    for (start, end) in [(0, 99), (50, 199), (200, 299), (1000, 1000)] {
        table.migrating.push(crate::routing::table::Migration {
            category: "user".into(),
            start,
            end,
            from: user.instance.clone(),
            to: "primary".into(),
            epoch: 1,
            target_serves: None,
        });
    }
    let served = served_ranges(&table);
    assert_eq!(served, served_slot_by_slot(&table));
    assert!(served["primary"].contains(&("user".to_owned(), SlotRange::new(0, 299))));
    assert_eq!(served_ranges(&before), served_slot_by_slot(&before));
}

#[test]
fn a_dead_owner_whose_range_grows_keeps_its_fallback_for_what_failed_over() {
    // Chaos seed 2 (180 s): `extra-1` (hot) was down, its half of the hot ranges failed over
    // to a warm fallback. The other hot instance began draining, so placement gave the dead
    // instance the whole hot range; its failover entries were kept only where the piece was
    // the same range, so the grown piece got a fallback of its own choosing — another
    // instance — and the first fallback's copies (the writes of the outage) were freed.
    let mut views = vec![
        view("primary", "hot", InstancePhase::Ready, 30),
        view("extra", "hot", InstancePhase::Ready, 30),
        view("secondary", "warm", InstancePhase::Ready, 30),
        view("tertiary", "warm", InstancePhase::Ready, 30),
    ];
    let before = plan_routing("shop/shop", &shop(), &views, None)
        .table
        .unwrap();
    // The instance that owns the upper half dies (a grown piece starts elsewhere).
    let upper = before.categories[0].owners()[16383].to_owned();
    let (dead, other) = if upper == "extra" { (1, 0) } else { (0, 1) };
    views[dead].phase = InstancePhase::Unreachable;
    let during = plan_routing("shop/shop", &shop(), &views, Some(&before))
        .table
        .unwrap();
    assert!(during.failover.iter().any(|f| f.from == upper));
    views[other].phase = InstancePhase::Draining;
    views[other].drain = true;
    let next = plan_routing("shop/shop", &shop(), &views, Some(&during))
        .table
        .unwrap();
    fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &next);
}
