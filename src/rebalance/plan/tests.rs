//! Tests of the rebalance planner.

use super::*;
use crate::routing::table::tests::endpoint;
use crate::routing::table::{Category, SCHEMA_VERSION, TtlRules};

const MIB: u64 = 1 << 20;

fn table(cats: &[(&str, &str)]) -> RoutingTable {
    RoutingTable {
        schema_version: SCHEMA_VERSION,
        version: 5,
        policy: "shop/shop".into(),
        instances: ["primary", "secondary", "tertiary"]
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), endpoint(7000 + i as u16)))
            .collect(),
        categories: cats
            .iter()
            .map(|(name, owner)| Category {
                name: (*name).to_owned(),
                prefixes: if *name == "default" {
                    vec![]
                } else {
                    vec![format!("{name}:")]
                },
                ttl: TtlRules::default(),
                slots: vec![(0, 16383, (*owner).to_owned()).into()],
                placement_basis: None,
            })
            .collect(),
        migrating: vec![],
        failover: vec![],
        placement_bases: vec![],
        strategy: None,
    }
}

fn inst(name: &str, tier: &str, used_mib: u64) -> InstanceLoad {
    InstanceLoad {
        name: name.into(),
        tier: Some(tier.into()),
        capacity: 30 * MIB,
        used: used_mib * MIB,
        serving: true,
        drain: false,
    }
}

fn tiers() -> Vec<CategoryTiers> {
    vec![
        CategoryTiers {
            name: "auth".into(),
            tier: Some("hot".into()),
            fallback_tier: Some("warm".into()),
        },
        CategoryTiers {
            name: "order".into(),
            tier: Some("hot".into()),
            fallback_tier: Some("warm".into()),
        },
        CategoryTiers {
            name: "user".into(),
            tier: Some("warm".into()),
            fallback_tier: Some("hot".into()),
        },
        CategoryTiers {
            name: "default".into(),
            tier: Some("warm".into()),
            fallback_tier: None,
        },
    ]
}

fn utilisation_after(input: &PlanInput<'_>, plan: &Plan) -> BTreeMap<String, f64> {
    let mut used: BTreeMap<String, f64> = input
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.used as f64))
        .collect();
    for m in &plan.moves {
        *used.get_mut(&m.from).unwrap() -= m.bytes as f64;
        *used.get_mut(&m.to).unwrap() += m.bytes as f64;
    }
    input
        .instances
        .iter()
        .map(|i| (i.name.clone(), used[&i.name] / i.capacity as f64))
        .collect()
}

#[test]
fn an_instance_past_the_threshold_is_brought_toward_equal_use() {
    // The seed: primary (hot) filled past 80 %, secondary (warm) lightly used.
    let current = table(&[
        ("auth", "primary"),
        ("order", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let instances = vec![inst("primary", "hot", 26), inst("secondary", "warm", 4)];
    let bytes: BTreeMap<(String, String), u64> = [
        (("auth".into(), "primary".into()), 16 * MIB),
        (("order".into(), "primary".into()), 9 * MIB),
        (("user".into(), "secondary".into()), 3 * MIB),
        (("default".into(), "secondary".into()), MIB),
    ]
    .into();
    let input = PlanInput {
        current: &current,
        desired: None,
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    let plan = plan(&input).expect("a plan");
    assert!(
        plan.reason
            .contains("above the 80% threshold: primary at 86%"),
        "{}",
        plan.reason
    );
    assert!(
        plan.moves
            .iter()
            .all(|m| m.from == "primary" && m.to == "secondary")
    );
    let after = utilisation_after(&input, &plan);
    for (name, u) in &after {
        assert!((0.4..=0.6).contains(u), "{name} at {u:.2}: {plan:#?}");
    }
    let moved: u64 = plan.moves.iter().map(|m| m.bytes).sum();
    assert!(moved <= 12 * MIB, "moves no more than needed: {moved}");
}

#[test]
fn samples_give_shares_and_used_memory_gives_amounts() {
    // Samples see 2/3 of the used memory (per-key overhead is not in MEMORY USAGE of a
    // sample): the plan still brings the primary to the mean, not short of it.
    let current = table(&[
        ("auth", "primary"),
        ("order", "primary"),
        ("user", "secondary"),
    ]);
    let instances = vec![inst("primary", "hot", 27), inst("secondary", "warm", 3)];
    let bytes: BTreeMap<(String, String), u64> = [
        (("auth".into(), "primary".into()), 9 * MIB),
        (("order".into(), "primary".into()), 9 * MIB),
        (("user".into(), "secondary".into()), 2 * MIB),
    ]
    .into();
    let input = PlanInput {
        current: &current,
        desired: None,
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    let plan = plan(&input).expect("a plan");
    let moved: u64 = plan.moves.iter().map(|m| m.bytes).sum();
    // (27 − 3) / 2 = 12 MiB to move, within one slot's worth.
    assert!(
        moved.abs_diff(12 * MIB) < MIB / 100,
        "{moved} bytes planned: {plan:#?}"
    );
}

#[test]
fn nothing_moves_below_the_threshold_unless_forced() {
    let current = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let instances = vec![inst("primary", "hot", 20), inst("secondary", "warm", 4)];
    let bytes = BTreeMap::new();
    let mut input = PlanInput {
        current: &current,
        desired: None,
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    assert_eq!(plan(&input), None);
    input.force = true;
    let p = plan(&input).expect("forced");
    assert!(p.reason.contains("rebalance-now"));
    let after = utilisation_after(&input, &p);
    assert!(
        (after["primary"] - after["secondary"]).abs() <= 0.12,
        "{after:?}"
    );
}

#[test]
fn targets_are_never_pushed_over_the_threshold() {
    let current = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    // Both nearly full: moving would only move the problem.
    let instances = vec![inst("primary", "hot", 29), inst("secondary", "warm", 23)];
    let bytes = BTreeMap::new();
    let input = PlanInput {
        current: &current,
        desired: None,
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    if let Some(p) = plan(&input) {
        let after = utilisation_after(&input, &p);
        assert!(after["secondary"] <= 0.80 + 1e-9, "{after:?}");
    }
}

#[test]
fn a_joining_instance_gets_its_placement_share_with_data() {
    let current = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let mut desired = current.clone();
    for c in &mut desired.categories {
        if c.name == "user" || c.name == "default" {
            c.slots = vec![
                (0, 8191, "secondary".to_owned()).into(),
                (8192, 16383, "tertiary".to_owned()).into(),
            ];
        }
    }
    let instances = vec![
        inst("primary", "hot", 10),
        inst("secondary", "warm", 12),
        inst("tertiary", "warm", 1),
    ];
    let bytes = BTreeMap::new();
    let input = PlanInput {
        current: &current,
        desired: Some(&desired),
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    let p = plan(&input).expect("placement moves");
    assert_eq!(p.moves.len(), 2);
    for m in &p.moves {
        assert_eq!(
            (m.from.as_str(), m.to.as_str(), m.range),
            ("secondary", "tertiary", SlotRange::new(8192, 16383))
        );
    }
    let next = apply_moves(&current, &p.moves);
    assert_eq!(
        next.category("user").unwrap().slots,
        desired.category("user").unwrap().slots
    );
}

#[test]
fn unreachable_sources_are_not_planned() {
    let current = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let mut instances = vec![inst("primary", "hot", 27), inst("secondary", "warm", 2)];
    instances[0].serving = false;
    let bytes = BTreeMap::new();
    let input = PlanInput {
        current: &current,
        desired: None,
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    assert_eq!(plan(&input), None);
}

#[test]
fn empty_categories_never_move_for_capacity() {
    // The shop as sampled: hot data in three of the four hot categories.
    let current = table(&[
        ("analytics-live", "primary"),
        ("auth", "primary"),
        ("notification", "primary"),
        ("order", "primary"),
        ("menu", "secondary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let mut instances = vec![inst("primary", "hot", 0), inst("secondary", "warm", 0)];
    instances[0].used = 26_128_792;
    instances[1].used = 3_794_768;
    let bytes: BTreeMap<(String, String), u64> = [
        (("auth".into(), "primary".into()), 13_130_375),
        (("notification".into(), "primary".into()), 4_685_125),
        (("order".into(), "primary".into()), 4_819_250),
        (("menu".into(), "secondary".into()), 1_177_000),
        (("user".into(), "secondary".into()), 1_355_000),
    ]
    .into();
    let mut cats = tiers();
    for (name, tier, fallback) in [
        ("analytics-live", "hot", "warm"),
        ("notification", "hot", "warm"),
        ("menu", "warm", "hot"),
    ] {
        cats.push(CategoryTiers {
            name: name.into(),
            tier: Some(tier.into()),
            fallback_tier: Some(fallback.into()),
        });
    }
    let input = PlanInput {
        current: &current,
        desired: None,
        instances: &instances,
        category_bytes: &bytes,
        categories: &cats,
        threshold_percent: 80,
        force: false,
    };
    let plan = plan(&input).expect("a plan");
    assert!(
        plan.moves.iter().all(|m| m.category != "analytics-live"),
        "{plan:#?}"
    );
    let after = utilisation_after(&input, &plan);
    for (name, u) in &after {
        assert!((0.4..=0.6).contains(u), "{name} at {u:.2}: {plan:#?}");
    }
}

#[test]
fn slots_moved_for_capacity_go_home_only_when_home_has_room() {
    // A capacity move put 12 MiB of auth on the warm instance; placement wants it home.
    let mut current = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    current.categories[0].slots = vec![
        (0, 4095, "primary".to_owned()).into(),
        (4096, 16383, "secondary".to_owned()).into(),
    ];
    let desired = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let bytes: BTreeMap<(String, String), u64> = [
        (("auth".into(), "primary".into()), 4 * MIB),
        (("auth".into(), "secondary".into()), 12 * MIB),
        (("user".into(), "secondary".into()), 3 * MIB),
    ]
    .into();
    let busy = vec![inst("primary", "hot", 14), inst("secondary", "warm", 15)];
    let input = PlanInput {
        current: &current,
        desired: Some(&desired),
        instances: &busy,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    assert_eq!(
        plan(&input),
        None,
        "home (14 + 12 of 30 MiB) has no room to spare"
    );
    // Once home has emptied (say, expired keys), the slots go back.
    let quiet = vec![inst("primary", "hot", 5), inst("secondary", "warm", 15)];
    let input = PlanInput {
        instances: &quiet,
        ..input
    };
    let plan = plan(&input).expect("a placement move");
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(
        (plan.moves[0].from.as_str(), plan.moves[0].to.as_str()),
        ("secondary", "primary")
    );
}

#[test]
fn live_targets_are_told_apart_from_stale_ones() {
    let mut t = table(&[
        ("auth", "primary"),
        ("user", "secondary"),
        ("default", "secondary"),
    ]);
    let all = SlotRange::new(0, 16383);
    assert!(target_serves(&t, "auth", all, "primary"));
    assert!(!target_serves(&t, "auth", all, "secondary"));
    // Failed over: the fallback serves the range, the owner holds only stale copies.
    t.failover.push(crate::routing::table::Failover {
        category: "auth".into(),
        start: 0,
        end: 16383,
        from: "primary".into(),
        to: "secondary".into(),
    });
    assert!(!target_serves(&t, "auth", all, "primary"));
    assert!(target_serves(&t, "auth", all, "secondary"));
    assert!(!target_serves(&t, "nope", all, "secondary"));
}

/// Every move of `plan` starts where its slots are: the current owner of each of them.
fn assert_moves_start_at_the_owner(current: &RoutingTable, plan: &Plan) {
    let mut seen: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
    for m in &plan.moves {
        let owners = current.category(&m.category).expect("category").owners();
        let taken = seen
            .entry(m.category.as_str())
            .or_insert_with(|| vec![false; usize::from(SLOT_COUNT)]);
        for slot in m.range.start..=m.range.end {
            assert_eq!(
                owners[usize::from(slot)],
                m.from,
                "{m:?}: slot {slot} is on {}, not on the move's source",
                owners[usize::from(slot)]
            );
            assert!(!taken[usize::from(slot)], "{m:?}: slot {slot} moves twice");
            taken[usize::from(slot)] = true;
        }
    }
}

#[test]
fn slots_a_drain_hands_on_and_capacity_moves_on_again_move_once_from_where_they_are() {
    // Chaos seed 4 (180 s): tertiary drains its half of `user` onto secondary, which that
    // overfills, so the same plan moves secondary's highest slots on to primary — the slots it
    // had just been given. Planned as "secondary → primary", those slots' keys were left on
    // tertiary and were lost when primary was published as their owner.
    let mut current = table(&[("auth", "primary"), ("user", "secondary")]);
    current.categories[1].slots = vec![
        (0, 8191, "secondary".to_owned()).into(),
        (8192, 16383, "tertiary".to_owned()).into(),
    ];
    let mut desired = current.clone();
    desired.categories[1].slots = vec![(0, 16383, "secondary".to_owned()).into()];
    let mut instances = vec![
        inst("primary", "hot", 3),
        inst("secondary", "warm", 20),
        inst("tertiary", "warm", 10),
    ];
    instances[2].drain = true;
    let bytes: BTreeMap<(String, String), u64> = [
        (("auth".into(), "primary".into()), 3 * MIB),
        (("user".into(), "secondary".into()), 20 * MIB),
        (("user".into(), "tertiary".into()), 10 * MIB),
    ]
    .into();
    let input = PlanInput {
        current: &current,
        desired: Some(&desired),
        instances: &instances,
        category_bytes: &bytes,
        categories: &tiers(),
        threshold_percent: 80,
        force: false,
    };
    let p = plan(&input).expect("a plan");
    assert!(
        p.moves.iter().any(|m| m.to == "primary"),
        "the drain overfills secondary, so some slots go on to primary: {p:?}"
    );
    assert!(
        p.moves
            .iter()
            .all(|m| m.from != "tertiary" || m.to != "tertiary"),
        "{p:?}"
    );
    assert_moves_start_at_the_owner(&current, &p);
    // Nothing is left on the draining instance.
    let next = apply_moves(&current, &p.moves);
    assert!(
        next.category("user")
            .unwrap()
            .slots
            .iter()
            .all(|o| o.instance != "tertiary"),
        "{next:?}"
    );
}

mod any_plan {
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 3] = ["primary", "secondary", "tertiary"];

    /// A category's owners as up to four runs of random instances.
    fn owners() -> impl Strategy<Value = Vec<(u16, usize)>> {
        prop::collection::vec((1u16..16383, 0usize..3), 1..4)
    }

    fn slots(runs: &[(u16, usize)]) -> Vec<crate::routing::table::SlotOwner> {
        let mut cuts: Vec<(u16, usize)> = runs.to_vec();
        cuts.sort();
        cuts.dedup_by_key(|c| c.0);
        let mut owners = vec![NAMES[cuts[0].1].to_owned(); usize::from(SLOT_COUNT)];
        for (cut, who) in &cuts {
            for o in owners.iter_mut().skip(usize::from(*cut)) {
                *o = NAMES[*who].to_owned();
            }
        }
        runs_of(&owners)
    }

    fn runs_of(owners: &[String]) -> Vec<crate::routing::table::SlotOwner> {
        crate::routing::slots::runs(owners)
            .into_iter()
            .map(|(range, instance)| crate::routing::table::SlotOwner { range, instance })
            .collect()
    }

    proptest! {
        #[test]
        fn every_move_starts_at_the_owner_of_its_slots(
            now in prop::collection::vec(owners(), 3),
            want in prop::collection::vec(owners(), 3),
            used in prop::collection::vec(0u64..30, 3),
            drain in 0usize..4,
            force in any::<bool>(),
        ) {
            let mut current = table(&[("auth", "primary"), ("user", "secondary"), ("default", "secondary")]);
            let mut desired = current.clone();
            for i in 0..3 {
                current.categories[i].slots = slots(&now[i]);
                desired.categories[i].slots = slots(&want[i]);
            }
            let mut instances: Vec<InstanceLoad> = NAMES
                .iter()
                .zip(["hot", "warm", "warm"])
                .zip(&used)
                .map(|((n, t), u)| inst(n, t, *u))
                .collect();
            if let Some(i) = instances.get_mut(drain) {
                i.drain = true;
            }
            let mut bytes = BTreeMap::new();
            for c in &current.categories {
                for n in NAMES {
                    let slots = c.owners().iter().filter(|o| **o == n).count() as u64;
                    bytes.insert((c.name.clone(), n.to_owned()), slots * 512);
                }
            }
            let input = PlanInput {
                current: &current,
                desired: Some(&desired),
                instances: &instances,
                category_bytes: &bytes,
                categories: &tiers(),
                threshold_percent: 80,
                force,
            };
            if let Some(p) = plan(&input) {
                prop_assert!(!p.moves.is_empty());
                assert_moves_start_at_the_owner(&current, &p);
                prop_assert!(p.moves.iter().all(|m| m.from != m.to));
            }
        }
    }
}

#[test]
fn a_drain_never_fills_an_instance_up() {
    // Chaos seed 7 (180 s): a draining instance's slots went to their placement target
    // whatever its room, which filled it to `maxmemory`: the application's writes there were
    // refused (OOM).
    let mut current = table(&[("auth", "primary"), ("user", "tertiary")]);
    let mut desired = current.clone();
    desired.categories[1].slots = vec![(0, 16383, "secondary".to_owned()).into()];
    let bytes: BTreeMap<(String, String), u64> =
        [(("user".into(), "tertiary".into()), 10 * MIB)].into();
    let run = |instances: &[InstanceLoad], current: &RoutingTable| {
        plan(&PlanInput {
            current,
            desired: Some(&desired),
            instances,
            category_bytes: &bytes,
            categories: &tiers(),
            threshold_percent: 80,
            force: false,
        })
    };
    let mut instances = vec![
        inst("primary", "hot", 3),
        inst("secondary", "warm", 20),
        inst("tertiary", "warm", 10),
    ];
    instances[2].drain = true;
    // Secondary would end at 100 %: the slots go to the emptiest instance of the category's
    // fallback tier instead (placement moves them home once home has room).
    let p = run(&instances, &current).expect("a plan");
    assert_eq!(
        p.moves
            .iter()
            .map(|m| (m.from.as_str(), m.to.as_str()))
            .collect::<Vec<_>>(),
        vec![("tertiary", "primary")]
    );
    assert!(utilisation_after(&current_input(&current, &instances), &p)["primary"] <= 0.8);
    // Every instance nearly full: the drain waits, its instance keeps serving the range.
    instances[0].used = 25 * MIB;
    instances[1].used = 25 * MIB;
    current.version += 1;
    let p = run(&instances, &current);
    assert!(
        p.as_ref()
            .is_none_or(|p| p.moves.iter().all(|m| m.from != "tertiary")),
        "{p:?}"
    );
}

fn current_input<'a>(current: &'a RoutingTable, instances: &'a [InstanceLoad]) -> PlanInput<'a> {
    static NO_BYTES: std::sync::LazyLock<BTreeMap<(String, String), u64>> =
        std::sync::LazyLock::new(BTreeMap::new);
    PlanInput {
        current,
        desired: None,
        instances,
        category_bytes: &NO_BYTES,
        categories: &[],
        threshold_percent: 80,
        force: false,
    }
}
