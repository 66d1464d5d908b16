//! Tests of replica placement, warm failover and what replicas hold.

use super::fixtures::*;
use super::*;
use crate::api::redis_instance::InstancePhase;
use crate::operator::cache_policy::build::fixtures::{example_view as view, shop, two};
use crate::operator::cache_policy::build::{
    held_ranges, newly_held, plan_routing_with, stale_before_publishing,
};
use crate::routing::table::Migration;

#[test]
fn a_replica_lives_on_the_fallback_tier_is_seeded_then_stays() {
    let spec = replicated(Replication::Sync);
    let first = publish(&spec, &two(), None, &[]);
    let r = first
        .category("auth")
        .unwrap()
        .replication
        .as_ref()
        .unwrap();
    assert_eq!(r.mode, ReplicationMode::Sync);
    assert_eq!(
        replica_runs(&first, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(
        seeding_runs(&first, "auth"),
        1,
        "a new replica is seeded first"
    );
    assert!(
        first.category("order").unwrap().replication.is_none(),
        "other categories are not replicated"
    );
    // Not seeded yet: the next table still says so; seeded: it no longer does, and the
    // replica stays where it is.
    let again = publish(&spec, &two(), Some(&first), &[]);
    assert_eq!(seeding_runs(&again, "auth"), 1);
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    assert_eq!(seeding_runs(&seeded, "auth"), 0);
    assert_eq!(replica_runs(&seeded, "auth"), replica_runs(&first, "auth"));
    let steady = publish(&spec, &two(), Some(&seeded), &[]);
    assert_eq!(steady.category("auth"), seeded.category("auth"));
    // A seeding finished from another writer does not count.
    let wrong = vec![Seeded {
        writer: "secondary".into(),
        ..all_seeded(&first)[0].clone()
    }];
    assert_eq!(
        seeding_runs(&publish(&spec, &two(), Some(&first), &wrong), "auth"),
        1
    );
    // Turned off: no replication in the table.
    let off = publish(&shop(), &two(), Some(&seeded), &[]);
    assert!(off.category("auth").unwrap().replication.is_none());
}

#[test]
fn a_replica_is_never_the_server_and_prefers_the_fallback_tier() {
    let spec = replicated(Replication::Async);
    let mut three = two();
    three.push(view("hot-2", "hot", InstancePhase::Ready, 30));
    let t = publish(&spec, &three, None, &[]);
    let served = super::servers(&t, "auth");
    let replicas = replicas_of(&t, "auth");
    for slot in 0..usize::from(SLOT_COUNT) {
        let r = replicas[slot].0.expect("every slot has a replica");
        assert_ne!(r, served[slot], "slot {slot}");
        assert_eq!(r, "secondary", "the fallback tier first (slot {slot})");
    }
    // Without a fallback tier instance, another hot instance replicates.
    let hot_only = vec![
        view("primary", "hot", InstancePhase::Ready, 30),
        view("hot-2", "hot", InstancePhase::Ready, 30),
    ];
    let mut spec2 = spec.clone();
    for c in &mut spec2.categories {
        c.tier = Some("hot".into());
    }
    spec2.default_category.tier = Some("hot".into());
    let t = publish(&spec2, &hot_only, None, &[]);
    let served = super::servers(&t, "auth");
    let replicas = replicas_of(&t, "auth");
    for slot in 0..usize::from(SLOT_COUNT) {
        let r = replicas[slot].0.expect("a replica");
        assert_ne!(r, served[slot]);
    }
    // One instance: nobody to replicate to.
    let alone = vec![view("primary", "hot", InstancePhase::Ready, 30)];
    let t = publish(&spec2, &alone, None, &[]);
    assert!(replica_runs(&t, "auth").is_empty());
}

#[test]
fn a_dead_owner_fails_over_to_its_replica_whose_copies_are_kept() {
    let spec = replicated(Replication::Sync);
    let mut three = two();
    three.push(view("tertiary", "warm", InstancePhase::Ready, 30));
    let first = publish(&spec, &three, None, &[]);
    for replica in ["secondary", "tertiary"] {
        // Either warm instance may be the replica: the failover follows it, not the choice a
        // fallback would get.
        let mut seeded = publish(&spec, &three, Some(&first), &all_seeded(&first));
        replicate_auth_on(&mut seeded, replica);
        fails_over_to_the_replica(&spec, &three, &seeded);
    }
}

fn fails_over_to_the_replica(
    spec: &CachePolicySpec,
    three: &[InstanceView],
    seeded: &RoutingTable,
) {
    let spec = spec.clone();
    let seeded = seeded.clone();
    let replicas = replicas_of(&seeded, "auth");
    let down = phase(three.to_vec(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    let auth: Vec<_> = during
        .failover
        .iter()
        .filter(|f| f.category == "auth")
        .collect();
    assert!(!auth.is_empty());
    for f in &auth {
        for slot in f.start..=f.end {
            assert_eq!(
                Some(f.to.as_str()),
                replicas[usize::from(slot)].0,
                "slot {slot} fails over to its replica"
            );
        }
    }
    // The replica's copies are the range's data: nothing of auth is purged where it fails
    // over to, and the other failed-over categories are (a fallback's leftovers, as before).
    let stale = stale_before_publishing(Some(&seeded), &during);
    for f in &auth {
        let purged = stale.get(&f.to).into_iter().flatten();
        assert!(
            purged
                .filter(|(cat, _)| cat == "auth")
                .all(|(_, r)| r.intersection(&f.range()).is_none()),
            "{}: {:?}",
            f.to,
            stale.get(&f.to)
        );
    }
    assert!(stale.values().flatten().any(|(cat, _)| cat == "order"));
    // During the outage the range's replica is the other warm instance (never the server),
    // and it is seeded afresh.
    let servers_now = servers(&during, "auth");
    for (slot, (r, seeding)) in replicas_of(&during, "auth").into_iter().enumerate() {
        let r = r.expect("a replica during the outage");
        assert_ne!(r, servers_now[slot]);
        assert_ne!(r, "primary", "a dead instance replicates nothing");
        assert!(seeding);
    }
}

#[test]
fn the_returning_owner_becomes_the_replica_and_keeps_no_stale_copy() {
    let spec = replicated(Replication::Sync);
    let first = publish(&spec, &two(), None, &[]);
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    let down = phase(two(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    assert!(
        replica_runs(&during, "auth").is_empty(),
        "two instances: no replica while one is down"
    );
    // The failover entries stay with rebalancing off too: the data is on the replica.
    let mut off = spec.clone();
    off.balancing.rebalance.enabled = false;
    let back = {
        let mut t = plan_routing_with("shop/shop", &off, &two(), Some(&during), false, &[])
            .table
            .unwrap();
        place(&mut t, &off, &two(), Some(&during), &[], &[]);
        t
    };
    assert!(back.failover.iter().any(|f| f.category == "auth"));
    assert!(
        !back.failover.iter().any(|f| f.category == "order"),
        "unreplicated categories fail back as before"
    );
    // The owner is the replica of its failed-over slots now, seeded from scratch: its old
    // copies are purged before the table names it.
    assert_eq!(replica_runs(&back, "auth"), [(0, 16383, "primary".into())]);
    assert_eq!(seeding_runs(&back, "auth"), 1);
    let stale = stale_before_publishing(Some(&during), &back);
    assert!(stale["primary"].iter().any(|(cat, _)| cat == "auth"));
}

#[test]
fn migrating_slots_have_no_replica_and_a_move_end_replicates_none_of_them() {
    let spec = replicated(Replication::Sync);
    let mut three = two();
    three.push(view("tertiary", "warm", InstancePhase::Ready, 30));
    let first = publish(&spec, &three, None, &[]);
    let mut flip = moving_auth_to_secondary(&first);
    place(&mut flip, &spec, &three, Some(&first), &[], &[]);
    flip.validate().unwrap();
    let replicas = replicas_of(&flip, "auth");
    assert!(replicas[..100].iter().all(|(r, _)| r.is_none()));
    assert!(replicas[100..].iter().all(|(r, _)| r.is_some()));
    // The table after the flip: slots 0-99 are the target's, and neither end of the move
    // replicates them while the plan runs (the source keeps its importing marker).
    let mut after = first.clone();
    after.version += 2;
    after
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .slots = vec![
        SlotOwner {
            range: SlotRange::new(0, 99),
            instance: "secondary".into(),
        },
        SlotOwner {
            range: SlotRange::new(100, 16383),
            instance: "primary".into(),
        },
    ];
    let moves = [MoveStatus {
        category: "auth".into(),
        start: 0,
        end: 99,
        from: "primary".into(),
        to: "secondary".into(),
        target_serves: None,
    }];
    place(&mut after, &spec, &three, Some(&flip), &moves, &[]);
    after.validate().unwrap();
    let replicas = replicas_of(&after, "auth");
    assert!(
        replicas[..100]
            .iter()
            .all(|(r, seeding)| *r == Some("tertiary") && *seeding),
        "{:?}",
        &replicas[..3]
    );
}

#[test]
fn a_replica_that_stops_being_one_has_its_copies_freed() {
    let spec = replicated(Replication::Async);
    let first = publish(&spec, &two(), None, &[]);
    let down = phase(two(), "secondary", InstancePhase::Unreachable);
    let without = publish(&spec, &down, Some(&first), &[]);
    assert!(replica_runs(&without, "auth").is_empty());
    // What it held and no longer holds is listed to free (`unfreed::Unfreed::after`).
    assert!(
        newly_held(Some(&without), &first)["secondary"].contains(&("auth".into(), SlotRange::ALL)),
        "{:?}",
        newly_held(Some(&without), &first)
    );
    // Named again once it answers: it holds the range again, so its copies leave the list
    // (they are purged before the table names it), and it is seeded.
    let again = publish(&spec, &two(), Some(&without), &[]);
    assert!(
        newly_held(Some(&without), &again)["secondary"].contains(&("auth".into(), SlotRange::ALL))
    );
    assert!(held_ranges(&again)["secondary"].contains(&("auth".into(), SlotRange::ALL)));
    assert_eq!(seeding_runs(&again, "auth"), 1);
}

#[test]
fn a_promoted_replica_that_dies_after_the_owner_returned_hands_over_to_the_next_replica() {
    // The secondary replicates auth; the primary dies: the secondary serves, the tertiary
    // becomes the replica and is seeded.
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    let down = phase(three.clone(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    let during = publish(&spec, &down, Some(&during), &all_seeded(&during));
    assert_eq!(
        replica_runs(&during, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    // The primary is back (its copies were freed); the failover entries stay until the
    // failback. Then the secondary dies in turn: auth goes to the tertiary, which holds it —
    // not to the primary, which holds nothing of it.
    let back = publish(&spec, &three, Some(&during), &[]);
    assert!(
        back.failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    );
    let second = phase(three.clone(), "secondary", InstancePhase::Unreachable);
    let after = publish(&spec, &second, Some(&back), &[]);
    let auth: Vec<_> = after
        .failover
        .iter()
        .filter(|f| f.category == "auth")
        .collect();
    assert!(!auth.is_empty(), "{:?}", after.failover);
    assert!(
        auth.iter()
            .all(|f| f.from == "primary" && f.to == "tertiary"),
        "{auth:?}"
    );
    let stale = stale_before_publishing(Some(&back), &after);
    assert!(
        spared(&stale, "tertiary", "auth"),
        "the tertiary's copies are auth's data: {stale:?}"
    );
}

#[test]
fn a_replica_made_owner_by_placement_is_purged_but_one_that_serves_after_a_failover_is_not() {
    let spec = replicated(Replication::Async);
    let first = publish(&spec, &two(), None, &[]);
    // Placement gives auth to the secondary, its replica (rebalancing off: no data moves).
    let mut moved = first.clone();
    moved.version += 1;
    moved
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .slots = vec![SlotOwner {
        range: SlotRange::ALL,
        instance: "secondary".into(),
    }];
    let stale = stale_before_publishing(Some(&first), &moved);
    assert!(
        stale["secondary"].contains(&("auth".into(), SlotRange::ALL)),
        "an async replica's copies may be older than what the owner acknowledged: {stale:?}"
    );
    // A failover to it, seeded, keeps them (a seeding one is emptied: below).
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    let down = phase(two(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    let stale = stale_before_publishing(Some(&seeded), &during);
    assert!(spared(&stale, "secondary", "auth"), "{stale:?}");
}

fn lost(mut views: Vec<InstanceView>, name: &str) -> Vec<InstanceView> {
    views.iter_mut().find(|v| v.name == name).unwrap().lost_data = true;
    views
}

#[test]
fn the_marker_is_needed_where_a_seeded_replica_and_its_server_hold_a_range() {
    let spec = replicated(Replication::Sync);
    let first = publish(&spec, &two(), None, &[]);
    // Seeding: neither end has been marked for sure yet.
    assert!(must_hold_marker(&first).is_empty());
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    assert_eq!(
        must_hold_marker(&seeded),
        BTreeSet::from(["primary".to_owned(), "secondary".to_owned()])
    );
    // Not replicated: nothing to mark.
    let off = publish(&shop(), &two(), Some(&seeded), &[]);
    assert!(must_hold_marker(&off).is_empty());
}

#[test]
fn an_owner_that_lost_its_data_fails_over_to_its_replica_while_it_answers() {
    let spec = replicated(Replication::Sync);
    let first = publish(&spec, &two(), None, &[]);
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    let during = publish(&spec, &lost(two(), "primary"), Some(&seeded), &[]);
    // Its replicated range goes to the replica; the rest stays on it (nothing better holds
    // it: the loss of an unreplicated category is a cache's).
    let auth: Vec<_> = during
        .failover
        .iter()
        .filter(|f| f.category == "auth")
        .collect();
    assert_eq!(auth.len(), 1, "{:?}", during.failover);
    assert_eq!(
        (auth[0].range(), auth[0].to.as_str()),
        (SlotRange::ALL, "secondary")
    );
    assert!(
        during.failover.iter().all(|f| f.category == "auth"),
        "{:?}",
        during.failover
    );
    // The replica's copies are kept: they are the range's data now.
    let stale = stale_before_publishing(Some(&seeded), &during);
    assert!(
        stale
            .get("secondary")
            .into_iter()
            .flatten()
            .all(|(cat, _)| cat != "auth"),
        "{stale:?}"
    );
    // The owner becomes the range's replica, seeded from the replica that serves it, and the
    // marker is no longer needed on it until that seeding wrote it again.
    assert_eq!(
        replica_runs(&during, "auth"),
        [(0, 16383, "primary".into())]
    );
    assert_eq!(seeding_runs(&during, "auth"), 1);
    assert!(!must_hold_marker(&during).contains("primary"));
    // Found again with its marker (the next reconcile): the entry stays, as for an owner back
    // from an outage, until the failback moves the range home.
    let after = publish(&spec, &two(), Some(&during), &[]);
    assert_eq!(after.failover, during.failover);
    // Without a replica that answers, nothing fails over, and the marker is still needed
    // there (it is written again: the loss is reported, not repaired).
    let down = phase(
        lost(two(), "primary"),
        "secondary",
        InstancePhase::Unreachable,
    );
    let stuck = publish(&spec, &down, Some(&seeded), &[]);
    assert!(
        stuck.failover.iter().all(|f| f.category != "auth"),
        "{:?}",
        stuck.failover
    );
}

#[test]
fn a_replica_that_lost_its_data_is_seeded_again() {
    let spec = replicated(Replication::Async);
    let first = publish(&spec, &two(), None, &[]);
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    // Even with a finished seeding on record (it finished before the loss was seen).
    let again = publish(
        &spec,
        &lost(two(), "secondary"),
        Some(&seeded),
        &all_seeded(&first),
    );
    assert_eq!(replica_runs(&again, "auth"), replica_runs(&seeded, "auth"));
    assert_eq!(seeding_runs(&again, "auth"), 1);
    assert!(
        again.failover.is_empty(),
        "a replica's loss fails nothing over"
    );
    assert!(must_hold_marker(&again).is_empty());
}

/// Two instances, `auth` seeded on the secondary; the primary dies (the secondary serves auth)
/// and comes back as auth's replica, not seeded yet: the table of its return.
fn owner_back_of_two(spec: &CachePolicySpec) -> RoutingTable {
    owner_back_of_two_with(spec, false)
}

/// [`owner_back_of_two`], with swaps held in the table of the primary's return when
/// `swaps_held`.
fn owner_back_of_two_with(spec: &CachePolicySpec, swaps_held: bool) -> RoutingTable {
    let first = publish(spec, &two(), None, &[]);
    let seeded = publish(spec, &two(), Some(&first), &all_seeded(&first));
    let down = phase(two(), "primary", InstancePhase::Unreachable);
    let during = publish(spec, &down, Some(&seeded), &[]);
    publish_with(spec, &two(), Some(&during), &[], swaps_held)
}

/// [`owner_back_of_two`], then the table that says the primary is seeded: the swap is ready.
/// With `auth`'s failover entry.
fn owner_seeded_of_two(spec: &CachePolicySpec) -> (RoutingTable, Failover) {
    let back = owner_back_of_two(spec);
    let seeded = publish(spec, &two(), Some(&back), &all_seeded(&back));
    let entry = auth_entry(&seeded);
    (seeded, entry)
}

/// `auth`'s failover entry in `t`.
fn auth_entry(t: &RoutingTable) -> Failover {
    t.failover
        .iter()
        .find(|f| f.category == "auth")
        .expect("auth is failed over")
        .clone()
}

#[test]
fn a_failover_target_that_lost_its_data_hands_the_range_to_the_seeded_owner() {
    let spec = replicated(Replication::Sync);
    // The primary dies and comes back: the secondary serves auth, the primary is its replica,
    // seeded.
    let back = owner_back_of_two(&spec);
    let back = publish(&spec, &two(), Some(&back), &all_seeded(&back));
    assert!(back.failover.iter().any(|f| f.to == "secondary"));
    assert_eq!(replica_runs(&back, "auth"), [(0, 16383, "primary".into())]);
    assert_eq!(seeding_runs(&back, "auth"), 0);
    assert!(must_hold_marker(&back).contains("secondary"));
    // The secondary loses its data while it answers: auth goes back to the primary, which
    // holds it as the seeded replica, and the primary's copies are kept.
    let after = publish(&spec, &lost(two(), "secondary"), Some(&back), &[]);
    assert!(
        after.failover.iter().all(|f| f.category != "auth"),
        "{:?}",
        after.failover
    );
    assert!(!must_hold_marker(&after).contains("secondary"));
    let stale = stale_before_publishing(Some(&back), &after);
    assert!(
        spared(&stale, "primary", "auth"),
        "the primary's copies are auth's data: {stale:?}"
    );
}

fn drained(mut views: Vec<InstanceView>, name: &str) -> Vec<InstanceView> {
    let v = views.iter_mut().find(|v| v.name == name).unwrap();
    v.drain = true;
    v.phase = InstancePhase::Draining;
    views
}

#[test]
fn a_draining_replica_stays_outgoing_until_its_successor_is_seeded() {
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    let draining = drained(three.clone(), "secondary");
    let handing = publish(&spec, &draining, Some(&seeded), &[]);
    assert_eq!(
        replica_runs(&handing, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    assert_eq!(seeding_runs(&handing, "auth"), 1);
    assert_eq!(
        outgoing_runs(&handing, "auth"),
        [(0, 16383, "secondary".into())],
        "the seeded replica stays on while its successor seeds"
    );
    // Its copies are neither purged nor listed to free, and it still has to hold the marker.
    let stale = stale_before_publishing(Some(&seeded), &handing);
    assert!(spared(&stale, "secondary", "auth"), "{stale:?}");
    assert!(spared(
        &newly_held(Some(&handing), &seeded),
        "secondary",
        "auth"
    ));
    assert!(must_hold_marker(&handing).contains("secondary"));
    assert!(
        must_hold_marker(&handing).contains("primary"),
        "the writer's loss must be seen while the successor seeds"
    );
    assert!(handing.replicates_on("secondary"));
    // Every slot counts as replicated (a full copy exists), and as handing over.
    let status = summary(&handing);
    let auth = status.iter().find(|s| s.category == "auth").unwrap();
    assert_eq!(
        (
            auth.replicated_slots,
            auth.handover_slots,
            auth.seeding_slots,
            auth.unreplicated_slots
        ),
        (16384, 16384, 0, 0)
    );
    // Still seeding: it stays. Seeded: it goes, and its copies are listed to free.
    let still = publish(&spec, &draining, Some(&handing), &[]);
    assert_eq!(
        outgoing_runs(&still, "auth"),
        outgoing_runs(&handing, "auth")
    );
    let done = publish(&spec, &draining, Some(&still), &all_seeded(&still));
    assert!(outgoing_runs(&done, "auth").is_empty());
    assert_eq!(replica_runs(&done, "auth"), [(0, 16383, "tertiary".into())]);
    assert_eq!(seeding_runs(&done, "auth"), 0);
    assert!(
        newly_held(Some(&done), &still)["secondary"].contains(&("auth".into(), SlotRange::ALL))
    );
    assert!(!done.replicates_on("secondary"));
}

#[test]
fn a_failover_while_a_replica_moves_promotes_the_outgoing_one() {
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    let draining = drained(three.clone(), "secondary");
    let handing = publish(&spec, &draining, Some(&seeded), &[]);
    let down = phase(draining.clone(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&handing), &[]);
    let auth: Vec<_> = during
        .failover
        .iter()
        .filter(|f| f.category == "auth")
        .collect();
    assert!(!auth.is_empty());
    assert!(
        auth.iter().all(|f| f.to == "secondary"),
        "the seeded copy serves, not the half-seeded one: {auth:?}"
    );
    let stale = stale_before_publishing(Some(&handing), &during);
    assert!(
        spared(&stale, "secondary", "auth"),
        "the promoted copies are the range's data: {stale:?}"
    );
    // Now the server, it is no one's outgoing replica; the new replica is seeded again, from
    // the new writer.
    assert!(outgoing_runs(&during, "auth").is_empty());
    assert_eq!(
        replica_runs(&during, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    assert_eq!(seeding_runs(&during, "auth"), 1);
}

#[test]
fn an_outgoing_replica_that_dies_or_lost_its_data_is_dropped() {
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    let draining = drained(three.clone(), "secondary");
    let handing = publish(&spec, &draining, Some(&seeded), &[]);
    let dead = phase(draining.clone(), "secondary", InstancePhase::Unreachable);
    let after = publish(&spec, &dead, Some(&handing), &[]);
    assert!(outgoing_runs(&after, "auth").is_empty());
    assert_eq!(
        replica_runs(&after, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    let emptied = lost(draining.clone(), "secondary");
    let after = publish(&spec, &emptied, Some(&handing), &[]);
    assert!(outgoing_runs(&after, "auth").is_empty());
    // A replica that was still seeding when it stopped being one leaves no outgoing copy.
    let first = publish(&spec, &three, None, &[]);
    let mut seeding = first.clone();
    replicate_auth_on(&mut seeding, "secondary");
    seeding
        .categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .replication
        .as_mut()
        .unwrap()
        .seeding = vec![SlotOwner {
        range: SlotRange::ALL,
        instance: "secondary".into(),
    }];
    let moved = publish(&spec, &draining, Some(&seeding), &[]);
    assert!(outgoing_runs(&moved, "auth").is_empty());
}

#[test]
fn a_draining_replica_that_nobody_can_replace_stays_the_replica() {
    // Two instances: nobody else can hold auth's copies.
    let spec = replicated(Replication::Sync);
    let first = publish(&spec, &two(), None, &[]);
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    let draining = drained(two(), "secondary");
    let kept = publish(&spec, &draining, Some(&seeded), &[]);
    assert_eq!(
        replica_runs(&kept, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&kept, "auth"), 0, "still the seeded copy");
    assert!(outgoing_runs(&kept, "auth").is_empty());
    // Three: the successor seeds, then dies; the drained replica stays the replica again.
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    let draining = drained(three.clone(), "secondary");
    let handing = publish(&spec, &draining, Some(&seeded), &[]);
    let dead = phase(draining.clone(), "tertiary", InstancePhase::Unreachable);
    let back = publish(&spec, &dead, Some(&handing), &[]);
    assert_eq!(
        replica_runs(&back, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&back, "auth"), 0);
    assert!(outgoing_runs(&back, "auth").is_empty());
    let stale = stale_before_publishing(Some(&handing), &back);
    assert!(spared(&stale, "secondary", "auth"), "{stale:?}");
    // A second reconcile keeps it; once the successor answers again, the handover starts
    // over.
    let still = publish(&spec, &dead, Some(&back), &[]);
    assert_eq!(still.category("auth"), back.category("auth"));
    let again = publish(&spec, &draining, Some(&back), &[]);
    assert_eq!(
        outgoing_runs(&again, "auth"),
        [(0, 16383, "secondary".into())]
    );
    // Kept that way, it is dropped like any replica when it dies or lost its data.
    let mut emptied = lost(dead.clone(), "secondary");
    let after = publish(&spec, &emptied, Some(&back), &[]);
    assert!(replica_runs(&after, "auth").is_empty(), "{after:?}");
    emptied = phase(dead, "secondary", InstancePhase::Unreachable);
    assert!(replica_runs(&publish(&spec, &emptied, Some(&back), &[]), "auth").is_empty());
}

#[test]
fn a_failover_target_that_loses_its_data_while_its_replica_moves_hands_over_to_the_outgoing_one() {
    // Four instances: the primary dies, auth is served by the secondary, whose replica (on a
    // third) is seeded, then drains: a fourth seeds beside it.
    let spec = replicated(Replication::Sync);
    let mut four = two();
    four.push(view("tertiary", "warm", InstancePhase::Ready, 30));
    four.push(view("fourth", "warm", InstancePhase::Ready, 30));
    let first = publish(&spec, &four, None, &[]);
    let mut seeded = publish(&spec, &four, Some(&first), &all_seeded(&first));
    replicate_auth_on(&mut seeded, "secondary");
    let down = phase(four.clone(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    let during = publish(&spec, &down, Some(&during), &all_seeded(&during));
    assert!(servers(&during, "auth").iter().all(|s| *s == "secondary"));
    let replica = replica_runs(&during, "auth")[0].2.clone();
    assert_eq!(seeding_runs(&during, "auth"), 0);
    let draining = drained(down.clone(), &replica);
    let handing = publish(&spec, &draining, Some(&during), &[]);
    assert_eq!(
        outgoing_runs(&handing, "auth"),
        [(0, 16383, replica.clone())]
    );
    assert!(must_hold_marker(&handing).contains("secondary"));
    // The secondary loses its data (the marker check says so): the outgoing copy serves, not
    // the emptied server, nor the half-seeded successor.
    let after = publish(&spec, &lost(draining, "secondary"), Some(&handing), &[]);
    assert!(
        servers(&after, "auth").iter().all(|s| *s == replica),
        "{:?}",
        after.failover
    );
}

#[test]
fn an_owner_that_was_the_outgoing_replica_serves_when_its_failover_target_dies() {
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    // The primary dies: auth is served by the secondary. It comes back, and is made the
    // replica (seeded).
    let down = phase(three.clone(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    assert!(
        during
            .failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    );
    let mut back = publish(&spec, &three, Some(&during), &[]);
    replicate_auth_on(&mut back, "primary");
    back.categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .replication
        .as_mut()
        .unwrap()
        .seeding
        .clear();
    assert!(
        back.failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    );
    // The primary drains before a failback: where the secondary still serves, it stays on as
    // the outgoing replica (this build, without the operator's hold-back of ownership, hands
    // the other slots to the tertiary at once; a slot whose writer changed is seeded afresh).
    let draining = drained(three.clone(), "primary");
    let handing = publish(&spec, &draining, Some(&back), &[]);
    let outgoing = outgoing_of(&handing, "auth");
    let kept: Vec<usize> = (0..usize::from(SLOT_COUNT))
        .filter(|s| outgoing[*s] == Some("primary"))
        .collect();
    assert!(kept.len() > 1000, "{:?}", outgoing_runs(&handing, "auth"));
    // The secondary dies: the primary, the full copy, serves those slots again; not the
    // half-seeded successor.
    let gone = phase(draining.clone(), "secondary", InstancePhase::Unreachable);
    let after = publish(&spec, &gone, Some(&handing), &[]);
    let servers = servers(&after, "auth");
    for s in kept {
        assert_eq!(servers[s], "primary", "slot {s}: {:?}", after.failover);
    }
}

/// Whether `stale` lists nothing of `category` to purge from `instance`.
fn spared(
    stale: &BTreeMap<String, Vec<(String, SlotRange)>>,
    instance: &str,
    category: &str,
) -> bool {
    stale
        .get(instance)
        .is_none_or(|r| r.iter().all(|(c, _)| c != category))
}

/// Whether `stale` lists `range` of `category` to purge from `instance`.
fn purged(
    stale: &BTreeMap<String, Vec<(String, SlotRange)>>,
    instance: &str,
    category: &str,
    range: SlotRange,
) -> bool {
    (range.start..=range.end).all(|slot| {
        stale.get(instance).is_some_and(|r| {
            r.iter()
                .any(|(c, r)| c == category && r.start <= slot && slot <= r.end)
        })
    })
}

#[test]
fn a_failover_never_promotes_a_seeding_replica_and_its_target_starts_empty() {
    // Chaos seed 2: a seeding replica may hold an older value than the one acknowledged
    // (sidecars still on the previous table wrote to the previous replica only); a failover
    // that served from it answered stale. Whoever serves the range now starts empty.
    let spec = replicated(Replication::Sync);
    let mut three = two();
    three.push(view("tertiary", "warm", InstancePhase::Ready, 30));
    let seeding = publish(&spec, &three, None, &[]);
    assert_eq!(seeding_runs(&seeding, "auth"), 1);
    let down = phase(three.clone(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeding), &[]);
    let auth: Vec<_> = during
        .failover
        .iter()
        .filter(|f| f.category == "auth")
        .collect();
    assert!(!auth.is_empty(), "auth is served: {:?}", during.failover);
    let stale = stale_before_publishing(Some(&seeding), &during);
    for f in &auth {
        assert!(
            purged(&stale, &f.to, "auth", f.range()),
            "{f:?} serves from a seeding replica's copies: {stale:?}"
        );
    }
    // Two instances: the only other one is the seeding replica; it serves, emptied first.
    let first = publish(&spec, &two(), None, &[]);
    let down = phase(two(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&first), &[]);
    assert!(
        during
            .failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    );
    let stale = stale_before_publishing(Some(&first), &during);
    assert!(
        purged(&stale, "secondary", "auth", SlotRange::ALL),
        "{stale:?}"
    );
    // Seeded, its copies are the range's data and stay.
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    let during = publish(&spec, &down, Some(&seeded), &[]);
    let stale = stale_before_publishing(Some(&seeded), &during);
    assert!(spared(&stale, "secondary", "auth"), "{stale:?}");
}

#[test]
fn a_returned_owner_still_seeding_serves_empty_when_its_failover_target_dies() {
    // Two instances: the primary dies, the secondary (seeded) serves auth; the primary comes
    // back and becomes auth's replica, seeding from the secondary. The secondary dies before
    // the seeding finished: the primary serves auth again — from nothing, not from the
    // partial copies the sidecars on the newer table gave it.
    let spec = replicated(Replication::Sync);
    let back = owner_back_of_two(&spec);
    assert!(
        back.failover
            .iter()
            .any(|f| f.category == "auth" && f.to == "secondary")
    );
    assert_eq!(replica_runs(&back, "auth"), [(0, 16383, "primary".into())]);
    assert_eq!(seeding_runs(&back, "auth"), 1);
    let second = phase(two(), "secondary", InstancePhase::Unreachable);
    let after = publish(&spec, &second, Some(&back), &[]);
    assert!(
        after.failover.iter().all(|f| f.category != "auth"),
        "the primary serves auth: {:?}",
        after.failover
    );
    let stale = stale_before_publishing(Some(&back), &after);
    assert!(
        purged(&stale, "primary", "auth", SlotRange::ALL),
        "{stale:?}"
    );
}

/// `t`, one version on, with auth 0–99 moving from the primary to the secondary.
fn moving_auth_to_secondary(t: &RoutingTable) -> RoutingTable {
    let mut flip = t.clone();
    flip.version += 1;
    flip.migrating.push(Migration {
        category: "auth".into(),
        start: 0,
        end: 99,
        from: "primary".into(),
        to: "secondary".into(),
        epoch: 1,
        target_serves: None,
    });
    flip
}

#[test]
fn a_seeding_replica_made_a_moves_target_starts_empty() {
    // Review: the target of a move serves what has moved and takes the range should the
    // source die; a seeding replica's copies must not be what it serves.
    let spec = replicated(Replication::Sync);
    let first = publish(&spec, &two(), None, &[]);
    assert_eq!(seeding_runs(&first, "auth"), 1);
    let flip = moving_auth_to_secondary(&first);
    let stale = stale_before_publishing(Some(&first), &flip);
    assert!(
        purged(&stale, "secondary", "auth", SlotRange::new(0, 99)),
        "{stale:?}"
    );
    // Seeded, its copies are kept at prepare (the Job empties the target after the fence).
    let seeded = publish(&spec, &two(), Some(&first), &all_seeded(&first));
    let flip = moving_auth_to_secondary(&seeded);
    let stale = stale_before_publishing(Some(&seeded), &flip);
    assert!(spared(&stale, "secondary", "auth"), "{stale:?}");
}

#[test]
fn a_replica_on_an_instance_turned_allkeys_hands_over_to_one_that_keeps_keys_without_a_ttl() {
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    let evicting = |mut views: Vec<InstanceView>, name: &str| {
        let v = views.iter_mut().find(|v| v.name == name).unwrap();
        v.evicting_policy = Some("allkeys-lru".into());
        views
    };
    // Seed, then drop: the seeded copy stays on while the successor seeds.
    let turned = evicting(three.clone(), "secondary");
    let handing = publish(&spec, &turned, Some(&seeded), &[]);
    assert_eq!(
        replica_runs(&handing, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    assert_eq!(
        outgoing_runs(&handing, "auth"),
        [(0, 16383, "secondary".into())]
    );
    let done = publish(&spec, &turned, Some(&handing), &all_seeded(&handing));
    assert!(outgoing_runs(&done, "auth").is_empty());
    assert!(!done.replicates_on("secondary"));
    // Every other instance evicts too: the seeded copy stays the replica, better than none.
    let all = evicting(evicting(turned, "tertiary"), "primary");
    let kept = publish(&spec, &all, Some(&seeded), &[]);
    assert_eq!(
        replica_runs(&kept, "auth"),
        [(0, 16383, "secondary".into())]
    );
    // A new replica is never placed on one.
    let fresh = publish(&spec, &evicting(three, "secondary"), None, &[]);
    assert!(
        !fresh.replicates_on("secondary"),
        "{:?}",
        replica_runs(&fresh, "auth")
    );
}

#[test]
fn a_sync_failover_ends_by_swapping_roles_once_the_returned_owner_is_seeded() {
    let spec = replicated(Replication::Sync);
    // The primary came back: the secondary serves auth, the primary is its replica, seeding.
    let back = owner_back_of_two(&spec);
    let entry = auth_entry(&back);
    assert_eq!(
        owner_return(&back, &entry, &two(), &[]),
        OwnerReturn::Seeding
    );
    // Seeded: the table that says so still has the secondary serve.
    let seeded = publish(&spec, &two(), Some(&back), &all_seeded(&back));
    assert!(seeded.failover.iter().any(|f| f.category == "auth"));
    assert_eq!(
        owner_return(&seeded, &entry, &two(), &[]),
        OwnerReturn::Swap
    );
    // The next one swaps the roles — with rebalancing on or off, since no data moves: the
    // primary serves auth again, and the secondary is its replica, seeded.
    let mut off = spec.clone();
    off.balancing.rebalance.enabled = false;
    for (spec, moving) in [(&spec, true), (&off, false)] {
        let swaps = ready_swaps(&seeded, spec, &two(), &[]);
        assert_eq!(swaps, std::slice::from_ref(&entry));
        let mut swapped =
            plan_routing_with("shop/shop", spec, &two(), Some(&seeded), moving, &swaps)
                .table
                .unwrap();
        place(&mut swapped, spec, &two(), Some(&seeded), &[], &[]);
        assert!(
            swapped.failover.iter().all(|f| f.category != "auth"),
            "{:?}",
            swapped.failover
        );
        assert_eq!(servers(&swapped, "auth")[0], "primary");
        assert_eq!(
            replica_runs(&swapped, "auth"),
            [(0, 16383, "secondary".into())]
        );
        assert_eq!(seeding_runs(&swapped, "auth"), 0, "no seeding: no window");
        // Nothing of auth is purged anywhere, and both ends keep the marker.
        let stale = stale_before_publishing(Some(&seeded), &swapped);
        assert!(spared(&stale, "primary", "auth"), "{stale:?}");
        assert!(spared(&stale, "secondary", "auth"), "{stale:?}");
        let held = must_hold_marker(&swapped);
        assert!(held.contains("primary") && held.contains("secondary"));
        // The table is recognised as ending the entry by swapping roles.
        assert_eq!(
            swapped_entries(&seeded, &swapped),
            std::slice::from_ref(&entry)
        );
        // Built without the swap (its server could not be fenced), the entry stays.
        let waits = plan_routing_with("shop/shop", spec, &two(), Some(&seeded), moving, &[])
            .table
            .unwrap();
        assert!(waits.failover.contains(&entry));
    }
    // No other table is taken for one: not the failover's, nor the seeding's.
    assert!(swapped_entries(&back, &seeded).is_empty());
}

#[test]
fn an_async_failover_swaps_roles_with_its_category_sync_until_it_ends() {
    let spec = replicated(Replication::Async);
    // The primary is back: the table writes auth `Sync` (an `Async` result on its way to the
    // owner at the swap would be missing there), and names the owner its replica, seeding.
    let back = owner_back_of_two(&spec);
    assert_eq!(auth_mode(&back), ReplicationMode::Sync);
    assert_eq!(replica_runs(&back, "auth"), [(0, 16383, "primary".into())]);
    assert_eq!(seeding_runs(&back, "auth"), 1);
    let entry = auth_entry(&back);
    assert_eq!(
        owner_return(&back, &entry, &two(), &[]),
        OwnerReturn::Seeding
    );
    // Seeded: the swap is ready, and ends the entry; auth is `Async` again, the secondary
    // its seeded replica.
    let (seeded, entry) = owner_seeded_of_two(&spec);
    assert_eq!(auth_mode(&seeded), ReplicationMode::Sync);
    assert_eq!(
        ready_swaps(&seeded, &spec, &two(), &[]),
        std::slice::from_ref(&entry)
    );
    let swapped = publish(&spec, &two(), Some(&seeded), &[]);
    assert!(!swapped.failover.iter().any(|f| f.category == "auth"));
    assert_eq!(auth_mode(&swapped), ReplicationMode::Async);
    assert_eq!(
        replica_runs(&swapped, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&swapped, "auth"), 0);
    assert_eq!(swapped_entries(&seeded, &swapped), [entry]);

    // Rebalancing off, and a hot instance joins: placement gives part of the range to it, so
    // the entry cannot end by a swap (the owner does not keep the whole range) — the category
    // stays `Async` rather than `Sync` for as long as that lasts.
    let mut off = spec.clone();
    off.balancing.rebalance.enabled = false;
    let mut three = two();
    three.push(view("hot-2", "hot", InstancePhase::Ready, 30));
    let split = publish(&off, &three, Some(&back), &[]);
    let owners = split.category("auth").unwrap().owners();
    let entry = auth_entry(&split);
    assert!(
        (entry.start..=entry.end).any(|s| owners[usize::from(s)] != entry.from),
        "placement kept the whole range on the owner: the case is not made"
    );
    assert_eq!(auth_mode(&split), ReplicationMode::Async);

    // Swaps held (`redisfleet.io/rebalance: pause|cancel`): the category stays `Async`, and the
    // range fails back by a move once they are not.
    let held = owner_back_of_two_with(&spec, true);
    assert_eq!(auth_mode(&held), ReplicationMode::Async);
    assert_eq!(
        owner_return(&held, &auth_entry(&held), &two(), &[]),
        OwnerReturn::Move
    );
}

#[test]
fn a_failover_whose_server_cannot_hold_the_replica_does_not_swap() {
    // `Sync`, but the server turned `allkeys-*` (it could not keep the replica's copies), or
    // the owner drains: no swap either.
    let spec = replicated(Replication::Sync);
    let (seeded, entry) = owner_seeded_of_two(&spec);
    let mut evicting = two();
    evicting[1].evicting_policy = Some("allkeys-lru".into());
    let after = publish(&spec, &evicting, Some(&seeded), &[]);
    assert!(after.failover.iter().any(|f| f.category == "auth"));
    let draining = drained(two(), "primary");
    assert_eq!(
        owner_return(&seeded, &entry, &draining, &[]),
        OwnerReturn::Move
    );
}

#[test]
fn with_three_instances_the_returned_owner_takes_the_replica_over_then_swaps() {
    let (spec, three, seeded) = replicated_on_secondary_of_three();
    // The primary dies: auth fails over to the secondary, and the tertiary becomes the
    // replica, seeded from it.
    let down = phase(three.clone(), "primary", InstancePhase::Unreachable);
    let during = publish(&spec, &down, Some(&seeded), &[]);
    assert_eq!(
        replica_runs(&during, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    let during = publish(&spec, &down, Some(&during), &all_seeded(&during));
    assert_eq!(seeding_runs(&during, "auth"), 0);
    // It comes back: it becomes the replica (seeding), the tertiary staying on as the
    // outgoing one until it is seeded.
    let back = publish(&spec, &three, Some(&during), &[]);
    assert!(back.failover.iter().any(|f| f.category == "auth"));
    assert_eq!(replica_runs(&back, "auth"), [(0, 16383, "primary".into())]);
    assert_eq!(seeding_runs(&back, "auth"), 1);
    assert_eq!(
        outgoing_runs(&back, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    // Seeded: the tertiary stays on as the outgoing replica until the swap (a failover now
    // would promote it: it holds every result).
    let seeded_back = publish(&spec, &three, Some(&back), &all_seeded(&back));
    assert_eq!(seeding_runs(&seeded_back, "auth"), 0);
    assert_eq!(
        outgoing_runs(&seeded_back, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    // Swapped: the primary serves, the tertiary, which took every result beside it, stays
    // the seeded replica, and the secondary that served the outage is dropped (its copies
    // freed).
    let swapped = publish(&spec, &three, Some(&seeded_back), &[]);
    assert!(swapped.failover.iter().all(|f| f.category != "auth"));
    assert_eq!(
        replica_runs(&swapped, "auth"),
        [(0, 16383, "tertiary".into())]
    );
    assert_eq!(seeding_runs(&swapped, "auth"), 0);
    assert!(outgoing_runs(&swapped, "auth").is_empty());
    assert_eq!(
        swapped_entries(&seeded_back, &swapped),
        [auth_entry(&seeded_back)]
    );
    let freed = newly_held(Some(&swapped), &seeded_back);
    assert!(
        freed
            .get("secondary")
            .is_some_and(|r| r.iter().any(|(c, _)| c == "auth")),
        "{freed:?}"
    );
    // The outgoing replica that can no longer hold replicas at the swap: the server stays on
    // as the replica, as on two instances.
    let tertiary_allkeys = with(&three, "tertiary", &|v| v.evicting("allkeys-lru"));
    let swapped = publish(&spec, &tertiary_allkeys, Some(&seeded_back), &[]);
    assert!(swapped.failover.iter().all(|f| f.category != "auth"));
    assert_eq!(
        replica_runs(&swapped, "auth"),
        [(0, 16383, "secondary".into())]
    );
    assert_eq!(seeding_runs(&swapped, "auth"), 0);
}

#[test]
fn a_planned_failback_move_an_evicting_owner_or_a_replica_seeded_under_async_do_not_swap() {
    let spec = replicated(Replication::Sync);
    let (seeded, entry) = owner_seeded_of_two(&spec);
    assert_eq!(
        ready_swaps(&seeded, &spec, &two(), &[]),
        std::slice::from_ref(&entry)
    );
    // A failback move of the range planned earlier (its server was briefly not swappable):
    // it goes on as a move — its Job empties the owner's copies, so a swap beside it would
    // lose the range.
    let planned = MoveStatus {
        category: "auth".into(),
        start: i32::from(entry.start),
        end: i32::from(entry.start),
        from: entry.to.clone(),
        to: entry.from.clone(),
        target_serves: Some(false),
    };
    assert!(ready_swaps(&seeded, &spec, &two(), &[planned]).is_empty());
    // An owner turned `allkeys-*`: its copies may be evicted.
    let mut evicting = two();
    evicting[0].evicting_policy = Some("allkeys-lru".into());
    assert!(ready_swaps(&seeded, &spec, &evicting, &[]).is_empty());
    // Seeded while the category was `Async`, then switched to `Sync`: seeded again first.
    // (Swaps held while it was `Async`, so its table said `Async`.)
    let async_spec = replicated(Replication::Async);
    let back = owner_back_of_two_with(&async_spec, true);
    let seeded_async = publish_with(&async_spec, &two(), Some(&back), &all_seeded(&back), true);
    assert_eq!(seeding_runs(&seeded_async, "auth"), 0);
    assert!(ready_swaps(&seeded_async, &spec, &two(), &[]).is_empty());
    let switched = publish(&spec, &two(), Some(&seeded_async), &[]);
    assert!(switched.failover.iter().any(|f| f.category == "auth"));
    assert_eq!(
        replica_runs(&switched, "auth"),
        [(0, 16383, "primary".into())]
    );
    assert_eq!(
        seeding_runs(&switched, "auth"),
        1,
        "seeded again under Sync"
    );
    // A seeding that ran while the category was `Async` does not count for it.
    let async_era = all_seeded(&back);
    assert!(!async_era.is_empty() && async_era.iter().all(|d| !d.sync));
    let still = publish(&spec, &two(), Some(&switched), &async_era);
    assert_eq!(seeding_runs(&still, "auth"), 1);
    assert!(ready_swaps(&still, &spec, &two(), &[]).is_empty());
    let reseeded = publish(&spec, &two(), Some(&switched), &all_seeded(&switched));
    assert_eq!(ready_swaps(&reseeded, &spec, &two(), &[]).len(), 1);
}

#[test]
fn a_swap_is_fenced_for_only_where_the_owner_keeps_the_whole_range() {
    use crate::operator::cache_policy::build::swaps_that_end;
    let spec = replicated(Replication::Sync);
    let (seeded, entry) = owner_seeded_of_two(&spec);
    let ready = ready_swaps(&seeded, &spec, &two(), &[]);
    assert_eq!(
        swaps_that_end(
            "shop/shop",
            &spec,
            &two(),
            Some(&seeded),
            true,
            ready.clone()
        ),
        std::slice::from_ref(&entry)
    );
    // Rebalancing off, and a second hot instance: placement gives it part of auth's slots
    // (nothing holds them back), so the entry does not end now and its server is not fenced.
    let mut off = spec.clone();
    off.balancing.rebalance.enabled = false;
    let mut three = two();
    three.push(view("hot-2", "hot", InstancePhase::Ready, 30));
    let planned = plan_routing_with("shop/shop", &off, &three, Some(&seeded), false, &ready)
        .table
        .unwrap();
    let owners = planned.category("auth").unwrap().owners();
    assert!(
        (entry.start..=entry.end).any(|s| owners[usize::from(s)] != entry.from),
        "placement kept the whole range on the owner: the case is not made"
    );
    assert!(planned.failover.contains(&entry));
    assert!(swaps_that_end("shop/shop", &off, &three, Some(&seeded), false, ready).is_empty());
}
