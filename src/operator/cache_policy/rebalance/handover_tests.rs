//! Tests of moves that hand a replicated range over (`build::handovers`), through what the
//! operator publishes from one table to the next: the swaps ready, the build, the owners held
//! back until a rebalance moves their data (`table_to_publish`), the handovers, replica
//! placement.

use crate::api::cache_policy::{CachePolicySpec, Replication};
use crate::api::redis_instance::InstancePhase;
use crate::operator::cache_policy::build::InstanceView;
use crate::operator::cache_policy::build::handovers::*;
use crate::operator::cache_policy::build::replicas::fixtures::*;
use crate::operator::cache_policy::build::replicas::{
    Seeded, promotion_order, ready_swaps, servers, summary, swapped_entries,
};
use crate::operator::cache_policy::build::{
    newly_held, plan_routing_with, stale_before_publishing,
};
use crate::rebalance::plan::Move;
use crate::routing::table::{Failover, ReplicationMode, RoutingTable, SlotOwner};

use super::table_to_publish;
use crate::routing::slots::SlotRange;

/// `auth` 0-8191 from the primary to the tertiary.
fn half_of_auth_to_tertiary() -> Move {
    Move {
        category: "auth".into(),
        range: SlotRange::new(0, 8191),
        from: "primary".into(),
        to: "tertiary".into(),
        bytes: 0,
    }
}

/// What the operator publishes from `previous` with rebalancing on: the swaps ready (their
/// servers fenced), the build, owners held back until a rebalance moves their data
/// (`rebalance::table_to_publish`), the `handovers` decided at the last reconcile, then
/// replica placement with what is `seeded`.
fn publish_held(
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: &RoutingTable,
    handovers: &[Move],
    seeded: &[Seeded],
) -> RoutingTable {
    let swaps = ready_swaps(previous, spec, instances, &[]);
    let desired = plan_routing_with("shop/shop", spec, instances, Some(previous), true, &swaps)
        .table
        .unwrap();
    let (mut t, _) = table_to_publish(&desired, Some(previous), instances, None, true);
    give_back_stalled(&mut t, Some(previous), spec, instances, true, false);
    for m in handovers {
        assert!(may_hand_over(previous, spec, instances, m), "{m:?}");
        assert!(hand_over(&mut t, m), "{m:?}");
    }
    place(&mut t, spec, instances, Some(previous), &[], seeded);
    t.version = previous.version + 1;
    t.validate().unwrap();
    t
}

fn publish_handing_over(
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: &RoutingTable,
    handovers: &[Move],
) -> RoutingTable {
    publish_held(spec, instances, previous, handovers, &[])
}

fn entry() -> Failover {
    Failover {
        category: "auth".into(),
        start: 0,
        end: 8191,
        from: "tertiary".into(),
        to: "primary".into(),
        handover: true,
    }
}

fn ranges_of<'a>(
    map: &'a std::collections::BTreeMap<String, Vec<(String, SlotRange)>>,
    instance: &str,
) -> Vec<&'a SlotRange> {
    map.get(instance)
        .map(|r| {
            r.iter()
                .filter(|(c, _)| c == "auth")
                .map(|(_, r)| r)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_sync_move_is_handed_over_with_two_full_copies_throughout() {
    let (spec, three, before) = replicated_on_secondary_of_three();
    let m = half_of_auth_to_tertiary();

    // 1. The table that starts it: routing is as before (the primary serves every slot), the
    //    tertiary owns the range through a handover entry and seeds as its replica, and the
    //    secondary stays on as the outgoing replica.
    let handed = publish_handing_over(&spec, &three, &before, std::slice::from_ref(&m));
    assert_eq!(handed.failover, [entry()]);
    assert!(servers(&handed, "auth").iter().all(|s| *s == "primary"));
    assert_eq!(
        replica_runs(&handed, "auth"),
        [
            (0, 8191, "tertiary".into()),
            (8192, 16383, "secondary".into())
        ]
    );
    assert_eq!(seeding_runs(&handed, "auth"), 1);
    assert_eq!(
        outgoing_runs(&handed, "auth"),
        [(0, 8191, "secondary".into())]
    );
    // Only the tertiary, the new copy, is purged of the range first; the primary's data and
    // the secondary's copies stay.
    let stale = stale_before_publishing(Some(&before), &handed);
    assert_eq!(ranges_of(&stale, "tertiary"), [&SlotRange::new(0, 8191)]);
    assert!(ranges_of(&stale, "primary").is_empty(), "{stale:?}");
    assert!(ranges_of(&stale, "secondary").is_empty(), "{stale:?}");
    // A failover now promotes the outgoing secondary, never the seeding tertiary; no swap is
    // ready, and the planner waits.
    assert_eq!(promotion_order(&handed, "auth")[0], Some("secondary"));
    assert!(ready_swaps(&handed, &spec, &three, &[]).is_empty());
    assert!(swap_pending(&handed, &three));
    assert!(!swap_pending(&before, &three));
    assert!(under_way(&handed).is_some_and(|n| n.contains("auth 0-8191 primary → tertiary")));
    // Not handed over twice.
    assert!(!may_hand_over(&handed, &spec, &three, &m));

    // 2. Seeded: the secondary stays on beside it until the swap.
    let seeded = publish_held(&spec, &three, &handed, &[], &all_seeded(&handed));
    assert_eq!(seeding_runs(&seeded, "auth"), 0);
    assert_eq!(
        outgoing_runs(&seeded, "auth"),
        [(0, 8191, "secondary".into())]
    );
    assert_eq!(seeded.failover, [entry()]);
    assert_eq!(ready_swaps(&seeded, &spec, &three, &[]), [entry()]);

    // 3. Swapped: the tertiary serves the range, the secondary is the seeded replica of the
    //    whole category, and the primary's copies of the range are freed.
    let swapped = publish_held(&spec, &three, &seeded, &[], &[]);
    assert!(swapped.failover.is_empty());
    let serving = servers(&swapped, "auth");
    assert!(serving[..8192].iter().all(|s| *s == "tertiary"));
    assert!(serving[8192..].iter().all(|s| *s == "primary"));
    assert_eq!(
        replica_runs(&swapped, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&swapped, "auth"), 0);
    assert!(outgoing_runs(&swapped, "auth").is_empty());
    assert_eq!(swapped_entries(&seeded, &swapped), [entry()]);
    let freed = newly_held(Some(&swapped), &seeded);
    assert_eq!(ranges_of(&freed, "primary"), [&SlotRange::new(0, 8191)]);
    let stale = stale_before_publishing(Some(&seeded), &swapped);
    assert!(ranges_of(&stale, "tertiary").is_empty(), "{stale:?}");
    assert!(ranges_of(&stale, "secondary").is_empty(), "{stale:?}");
    assert!(!swap_pending(&swapped, &three));
    assert!(under_way(&swapped).is_none());
}

#[test]
fn an_async_move_is_handed_over_with_its_writes_sync_while_it_lasts() {
    let (spec, three, before) = replicated_on_secondary_of_three_as(Replication::Async);
    assert_eq!(auth_mode(&before), ReplicationMode::Async);
    let m = half_of_auth_to_tertiary();
    assert!(may_hand_over(&before, &spec, &three, &m));

    // 1. Handed over as a `Sync` range is, and the category is written `Sync` from this table
    //    on: an `Async` result on its way to the tertiary at the swap would be missing there.
    let handed = publish_handing_over(&spec, &three, &before, std::slice::from_ref(&m));
    assert_eq!(handed.failover, [entry()]);
    assert_eq!(auth_mode(&handed), ReplicationMode::Sync);
    assert!(servers(&handed, "auth").iter().all(|s| *s == "primary"));
    assert_eq!(
        replica_runs(&handed, "auth"),
        [
            (0, 8191, "tertiary".into()),
            (8192, 16383, "secondary".into())
        ]
    );
    assert_eq!(
        outgoing_runs(&handed, "auth"),
        [(0, 8191, "secondary".into())]
    );
    assert_eq!(promotion_order(&handed, "auth")[0], Some("secondary"));
    assert!(ready_swaps(&handed, &spec, &three, &[]).is_empty());

    // 2. A seeding that ran under an `Async` table does not count: the tertiary stays
    //    seeding, and no swap is ready.
    let async_era: Vec<Seeded> = all_seeded(&handed)
        .into_iter()
        .map(|s| Seeded { sync: false, ..s })
        .collect();
    let still = publish_held(&spec, &three, &handed, &[], &async_era);
    assert_eq!(seeding_runs(&still, "auth"), 1);
    assert!(ready_swaps(&still, &spec, &three, &[]).is_empty());
    // Seeded under the handover's table: the swap is ready.
    let seeded = publish_held(&spec, &three, &handed, &[], &all_seeded(&handed));
    assert_eq!(seeding_runs(&seeded, "auth"), 0);
    assert_eq!(auth_mode(&seeded), ReplicationMode::Sync);
    assert_eq!(ready_swaps(&seeded, &spec, &three, &[]), [entry()]);

    // 3. Swapped: the tertiary serves the range, the secondary stays the replica, the
    //    primary's copies are freed, and the category is `Async` again.
    let swapped = publish_held(&spec, &three, &seeded, &[], &[]);
    assert!(swapped.failover.is_empty());
    assert_eq!(auth_mode(&swapped), ReplicationMode::Async);
    assert!(
        servers(&swapped, "auth")[..8192]
            .iter()
            .all(|s| *s == "tertiary")
    );
    assert_eq!(
        replica_runs(&swapped, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&swapped, "auth"), 0);
    assert_eq!(swapped_entries(&seeded, &swapped), [entry()]);
    let freed = newly_held(Some(&swapped), &seeded);
    assert_eq!(ranges_of(&freed, "primary"), [&SlotRange::new(0, 8191)]);

    // Given back (the target drains): `Async` again at once, nothing seeded anew.
    let drains = with(&three, "tertiary", &|v| v.draining(true));
    let back = publish_held(&spec, &drains, &seeded, &[], &[]);
    assert!(back.failover.is_empty());
    assert_eq!(auth_mode(&back), ReplicationMode::Async);
    assert!(servers(&back, "auth").iter().all(|s| *s == "primary"));
    assert_eq!(
        replica_runs(&back, "auth"),
        [(0, 16383, "secondary".into())]
    );
}

#[test]
fn a_handover_whose_server_dies_goes_to_the_outgoing_replica() {
    let (spec, three, before) = replicated_on_secondary_of_three();
    let handed = publish_handing_over(&spec, &three, &before, &[half_of_auth_to_tertiary()]);
    let down = phase(three.clone(), "primary", InstancePhase::Unreachable);
    let after = publish_held(&spec, &down, &handed, &[], &[]);
    // The range goes to the secondary, which held every result. The primary's own range
    // fails over to it; the handed-over range stays a handover, now from the secondary: the
    // tertiary was never routed it (no failover notice, no fence, no failover in status).
    let serving = servers(&after, "auth");
    assert!(
        serving.iter().all(|s| *s == "secondary"),
        "{:?}",
        after.failover
    );
    assert!(
        after.failover.contains(&Failover {
            to: "secondary".into(),
            ..entry()
        }),
        "{:?}",
        after.failover
    );
    let stale = stale_before_publishing(Some(&handed), &after);
    assert!(ranges_of(&stale, "secondary").is_empty(), "{stale:?}");
    // It goes on from there: the tertiary is seeded again (from its new writer), then swaps.
    let seeded = publish_held(&spec, &down, &after, &[], &all_seeded(&after));
    assert!(ready_swaps(&seeded, &spec, &down, &[]).contains(&Failover {
        to: "secondary".into(),
        ..entry()
    }));
}

#[test]
fn only_a_seeded_sync_range_between_instances_that_may_swap_is_handed_over() {
    let (spec, three, before) = replicated_on_secondary_of_three();
    let m = half_of_auth_to_tertiary();
    assert!(may_hand_over(&before, &spec, &three, &m));
    // Not replicated: a Job moves it. `Sync` in the spec while the table is still `Async`:
    // the replica was seeded while writes were `Async`, and may lack results.
    assert!(!may_hand_over(
        &before,
        &replicated(Replication::Off),
        &three,
        &m
    ));
    let (_, _, async_table) = replicated_on_secondary_of_three_as(Replication::Async);
    assert!(!may_hand_over(&async_table, &spec, &three, &m));
    // `Async` in the spec: handed over, whatever the table says (below).
    assert!(may_hand_over(
        &async_table,
        &replicated(Replication::Async),
        &three,
        &m
    ));
    assert!(may_hand_over(
        &before,
        &replicated(Replication::Async),
        &three,
        &m
    ));
    // Onto the range's replica, or from an instance that does not own it.
    let onto_replica = Move {
        to: "secondary".into(),
        ..m.clone()
    };
    assert!(!may_hand_over(&before, &spec, &three, &onto_replica));
    let not_owner = Move {
        from: "secondary".into(),
        ..m.clone()
    };
    assert!(!may_hand_over(&before, &spec, &three, &not_owner));
    // A replica still seeding: the range has one full copy only.
    let (_, _, mut seeding) = replicated_on_secondary_of_three();
    if let Some(r) = seeding
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .and_then(|c| c.replication.as_mut())
    {
        r.seeding = r.replicas.clone();
    }
    assert!(!may_hand_over(&seeding, &spec, &three, &m));
    // A target that drains or may evict keys without a TTL, a source that could not hold a
    // replica afterwards (a drain: the Job moves it), an unknown instance.
    assert!(!may_hand_over(
        &before,
        &spec,
        &with(&three, "tertiary", &|v| v.draining(true)),
        &m
    ));
    assert!(!may_hand_over(
        &before,
        &spec,
        &with(&three, "tertiary", &|v| v.evicting("allkeys-lru")),
        &m
    ));
    // A draining source is handed over when its range's replica may stay the replica (it
    // goes at the swap), not when that replica could not.
    let source_drains = with(&three, "primary", &|v| v.draining(true));
    assert!(may_hand_over(&before, &spec, &source_drains, &m));
    let no_keeper = with(&source_drains, "secondary", &|v| v.evicting("allkeys-lru"));
    assert!(!may_hand_over(&before, &spec, &no_keeper, &m));
    assert!(!may_hand_over(
        &before,
        &spec,
        &phase(three.clone(), "tertiary", InstancePhase::Unreachable),
        &m
    ));
    // A range whose slots have different replicas.
    let mut split = before.clone();
    if let Some(r) = split
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .and_then(|c| c.replication.as_mut())
    {
        r.replicas = vec![
            SlotOwner {
                range: SlotRange::new(0, 4095),
                instance: "secondary".into(),
            },
            SlotOwner {
                range: SlotRange::new(4096, 16383),
                instance: "quaternary".into(),
            },
        ];
    }
    let mut four = three.clone();
    four.push(
        crate::operator::cache_policy::build::fixtures::example_view(
            "quaternary",
            "warm",
            InstancePhase::Ready,
            30,
        ),
    );
    assert!(!may_hand_over(&split, &spec, &four, &m));
    // A range that is failed over or migrating.
    let mut failed_over = before.clone();
    failed_over.failover.push(Failover {
        handover: false,
        ..entry()
    });
    assert!(!may_hand_over(&failed_over, &spec, &three, &m));
}

#[test]
fn a_handover_is_not_applied_to_a_table_whose_owners_changed() {
    let (_, _, before) = replicated_on_secondary_of_three();
    let m = half_of_auth_to_tertiary();
    // The table to publish gives part of the range elsewhere: nothing changes.
    let mut moved = before.clone();
    let auth = moved
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap();
    auth.slots = vec![
        (0, 99, "secondary".to_owned()).into(),
        (100, 16383, "primary".to_owned()).into(),
    ];
    let unchanged = moved.clone();
    assert!(!hand_over(&mut moved, &m));
    assert_eq!(moved, unchanged);
    // Applied, it is not applied twice.
    let mut t = before.clone();
    assert!(hand_over(&mut t, &m));
    let once = t.clone();
    assert!(!hand_over(&mut t, &m));
    assert_eq!(t, once);
}

/// Asserts that `t` serves every slot of auth from the primary, the handover given back, with
/// the secondary the copy a failover promotes on every slot. `kept`: the secondary is the
/// seeded replica, nothing else named (a target that still answers, having lost its data, may
/// stay named and seed again, the secondary outgoing meanwhile).
fn given_back(t: &RoutingTable, kept: bool) {
    assert!(
        t.failover.iter().all(|f| f.category != "auth"),
        "{:?}",
        t.failover
    );
    assert!(servers(t, "auth").iter().all(|s| *s == "primary"));
    assert!(
        promotion_order(t, "auth")
            .iter()
            .all(|p| *p == Some("secondary"))
    );
    if kept {
        assert_eq!(replica_runs(t, "auth"), [(0, 16383, "secondary".into())]);
        assert_eq!(seeding_runs(t, "auth"), 0);
        assert!(outgoing_runs(t, "auth").is_empty());
    }
}

#[test]
fn a_handover_whose_target_can_no_longer_take_the_range_is_given_back_with_its_replica_kept() {
    let (spec, three, before) = replicated_on_secondary_of_three();
    let handed = publish_handing_over(&spec, &three, &before, &[half_of_auth_to_tertiary()]);
    let seeded = publish_held(&spec, &three, &handed, &[], &all_seeded(&handed));
    assert_eq!(seeded.failover, [entry()]);
    // While it seeds, and once it is seeded: the target drains, turns `allkeys-*`, dies, or
    // loses its data.
    let drains = with(&three, "tertiary", &|v| v.draining(true));
    let evicts = with(&three, "tertiary", &|v| v.evicting("allkeys-lru"));
    let dies = phase(three.clone(), "tertiary", InstancePhase::Unreachable);
    let empty = with(&three, "tertiary", &|v| InstanceView {
        lost_data: true,
        ..v
    });
    for (at, table) in [("seeding", &handed), ("seeded", &seeded)] {
        for (what, views) in [
            ("drains", &drains),
            ("evicts", &evicts),
            ("dies", &dies),
            ("lost its data", &empty),
        ] {
            let after = publish_held(&spec, views, table, &[], &[]);
            eprintln!("the target {what} while {at}");
            given_back(&after, what != "lost its data");
            // Nothing of the range is purged on the primary or the secondary.
            let stale = stale_before_publishing(Some(table), &after);
            assert!(ranges_of(&stale, "primary").is_empty(), "{stale:?}");
            assert!(ranges_of(&stale, "secondary").is_empty(), "{stale:?}");
        }
    }
    // Rebalancing turned off or cancelled, or the category no longer `Sync`: given back too.
    let mut t = seeded.clone();
    assert_eq!(
        give_back_stalled(&mut t, Some(&seeded), &spec, &three, false, false),
        [entry()]
    );
    assert!(t.failover.is_empty());
    assert!(
        t.category("auth")
            .unwrap()
            .slots
            .iter()
            .all(|o| o.instance == "primary")
    );
    // Replication turned off: given back. Turned `Async`: it goes on, its writes `Sync`
    // until it ends.
    let mut t = seeded.clone();
    let off = replicated(Replication::Off);
    assert_eq!(
        give_back_stalled(&mut t, Some(&seeded), &off, &three, true, false),
        [entry()]
    );
    let mut t = seeded.clone();
    let async_spec = replicated(Replication::Async);
    assert!(give_back_stalled(&mut t, Some(&seeded), &async_spec, &three, true, false).is_empty());
    // Paused: an `Async` one is given back (it keeps its category `Sync` while it lasts), a
    // `Sync` one waits.
    let mut t = seeded.clone();
    assert_eq!(
        give_back_stalled(&mut t, Some(&seeded), &async_spec, &three, true, true),
        [entry()]
    );
    let mut t = seeded.clone();
    assert!(give_back_stalled(&mut t, Some(&seeded), &spec, &three, true, true).is_empty());
    // A handover that can go on stays.
    let mut t = seeded.clone();
    assert!(give_back_stalled(&mut t, Some(&seeded), &spec, &three, true, false).is_empty());
    assert_eq!(t, seeded);
}

#[test]
fn status_counts_a_pending_swap_as_replicated_and_handing_over() {
    let (spec, three, before) = replicated_on_secondary_of_three();
    let handed = publish_handing_over(&spec, &three, &before, &[half_of_auth_to_tertiary()]);
    let seeded = publish_held(&spec, &three, &handed, &[], &all_seeded(&handed));
    for t in [&handed, &seeded] {
        let auth = summary(t)
            .into_iter()
            .find(|c| c.category == "auth")
            .unwrap();
        assert_eq!(
            (
                auth.replicated_slots,
                auth.seeding_slots,
                auth.handover_slots,
                auth.unreplicated_slots
            ),
            (16384, 0, 8192, 0),
            "{auth:?}"
        );
    }
}

#[test]
fn a_draining_sources_sync_range_is_handed_over_and_the_source_goes_at_the_swap() {
    let (spec, three, before) = replicated_on_secondary_of_three();
    let drains = with(&three, "primary", &|v| InstanceView {
        phase: InstancePhase::Draining,
        ..v.draining(true)
    });
    let m = half_of_auth_to_tertiary();
    let handed = publish_handing_over(&spec, &drains, &before, std::slice::from_ref(&m));
    assert_eq!(handed.failover, [entry()]);
    assert_eq!(
        outgoing_runs(&handed, "auth"),
        [(0, 8191, "secondary".into())]
    );
    assert!(swap_pending(&handed, &drains));
    let seeded = publish_held(&spec, &drains, &handed, &[], &all_seeded(&handed));
    assert_eq!(seeded.failover, [entry()]);
    assert_eq!(
        outgoing_runs(&seeded, "auth"),
        [(0, 8191, "secondary".into())]
    );
    assert_eq!(ready_swaps(&seeded, &spec, &drains, &[]), [entry()]);
    let swapped = publish_held(&spec, &drains, &seeded, &[], &[]);
    assert!(swapped.failover.iter().all(|f| f.category != "auth"));
    assert!(
        servers(&swapped, "auth")[..8192]
            .iter()
            .all(|s| *s == "tertiary")
    );
    assert_eq!(swapped_entries(&seeded, &swapped), [entry()]);
    // The secondary is the replica of the range, seeded; the draining primary holds nothing
    // of it any more (freed).
    assert_eq!(
        replica_runs(&swapped, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&swapped, "auth"), 0);
    let freed = newly_held(Some(&swapped), &seeded);
    assert_eq!(ranges_of(&freed, "primary"), [&SlotRange::new(0, 8191)]);
    // Should the secondary turn `allkeys-*` before the swap, the handover is given back to
    // the draining primary (a Job then moves it).
    let keeper_evicts = with(&drains, "secondary", &|v| v.evicting("allkeys-lru"));
    assert!(ready_swaps(&seeded, &spec, &keeper_evicts, &[]).is_empty());
    let mut t = seeded.clone();
    assert_eq!(
        give_back_stalled(&mut t, Some(&seeded), &spec, &keeper_evicts, true, false),
        [entry()]
    );
}
