//! Tests of the tables published while data moves.

use super::*;
use crate::api::redis_instance::InstancePhase;
use crate::operator::cache_policy::build::fixtures::{self, shop, two};
use crate::operator::cache_policy::build::{newly_served, plan_routing, stale_before_publishing};
use crate::routing::table::Failover;
use crate::routing::table::tests::{endpoint, two_instance_table};

fn view(name: &str, phase: InstancePhase, drain: bool) -> InstanceView {
    fixtures::view(name).in_phase(phase).draining(drain)
}

#[test]
fn hold_back_keeps_owners_whose_data_must_move() {
    let previous = two_instance_table();
    let mut desired = previous.clone();
    desired.instances.insert("tertiary".into(), endpoint(7003));
    desired.categories[0].slots = vec![(0, 16383, "tertiary".to_owned()).into()];
    let views = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false),
        view("tertiary", InstancePhase::Ready, false),
    ];
    let held = hold_back(&desired, Some(&previous), &views);
    assert_eq!(held.categories[0].slots, previous.categories[0].slots);
    // A removed instance's slots move at once: there is nothing to copy from.
    let gone = vec![
        view("secondary", InstancePhase::Ready, false),
        view("tertiary", InstancePhase::Ready, false),
    ];
    let held = hold_back(&desired, Some(&previous), &gone);
    assert_eq!(held.categories[0].owners()[0], "tertiary");
    assert_eq!(held.categories[0].owners()[16383], "secondary");
}

/// The first half of auth's slots, the primary's, failed over to the secondary.
fn auth_failed_over_to_secondary() -> Failover {
    Failover {
        category: "auth".into(),
        start: 0,
        end: 8191,
        from: "primary".into(),
        to: "secondary".into(),
        handover: false,
    }
}

#[test]
fn a_failback_replaces_the_failover_entries_with_a_migration_then_clears_them() {
    let mut t = two_instance_table();
    t.failover.push(auth_failed_over_to_secondary());
    let views = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false),
    ];
    let moves = failback_moves(&t, &views);
    assert_eq!(moves.len(), 1);
    assert_eq!(
        (moves[0].from.as_str(), moves[0].to.as_str()),
        ("secondary", "primary")
    );
    let mut flipped = t.clone();
    overlay_migrating(&mut flipped, &moves, &[], 9);
    assert!(flipped.failover.is_empty());
    assert_eq!(flipped.migrating[0].epoch, 9);
    flipped.validate().unwrap();
    // The plan records that the owner does not serve the range (its copies are stale), and
    // so does the flip table's migration: once the flip replaced the failover entries, the
    // table's owners alone say it does (an older operator's flip table, which records
    // nothing), and a Job attempt started after the flip skipped the post-fence purge and
    // marked the source as one that never takes the range back (its keys in transit then
    // lost when the owner dies again).
    assert_eq!(to_status(&moves, &t)[0].target_serves, Some(false));
    assert_eq!(flipped.migrating[0].target_serves, Some(false));
    let serves = |t: &RoutingTable| {
        crate::rebalance::plan::target_serves(t, "auth", moves[0].range, "primary")
    };
    assert!(!serves(&flipped));
    let mut older = flipped.clone();
    older.migrating[0].target_serves = None;
    assert!(serves(&older));
    // While it migrates, commands go to the recovered owner, moving keys back on access.
    let r = crate::routing::Resolver::new(flipped.clone()).unwrap();
    let route = r.route(0, 100);
    assert_eq!(r.instance_name(route.target), "primary");
    assert_eq!(
        route.migrating_from.map(|i| r.instance_name(i)),
        Some("secondary")
    );
    let done = finalize(&flipped, &moves);
    assert!(done.failover.is_empty() && done.migrating.is_empty());
    assert_eq!(
        done.categories, t.categories,
        "the owner was the owner all along"
    );
}

#[test]
fn an_owner_lost_again_while_its_failback_finalizes_keeps_its_new_failover() {
    // The failback's new owners are out (`Finalizing`, its Job cleaning up) when the owner
    // stops again: the build fails its range over afresh, and the plan's table must not take
    // that entry for the failback's own, which the transition dropped already.
    let mut t = two_instance_table();
    let lost = auth_failed_over_to_secondary();
    t.failover.push(lost.clone());
    let back = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false),
    ];
    let moves = failback_moves(&t, &back);
    let mut flipped = t.clone();
    overlay_migrating(&mut flipped, &moves, &[], 9);
    let mut r = RebalanceStatus {
        phase: rebalance_phase::MIGRATING.to_owned(),
        plan_id: 9,
        step: Some(rebalance_step::COPIED.to_owned()),
        moves: to_status(&moves, &t),
        ..RebalanceStatus::default()
    };
    let (done, transition) = table_to_publish(&flipped, Some(&flipped), &back, Some(&r), true);
    assert!(matches!(transition, Some(Transition::Finalize)));
    assert!(
        done.failover.is_empty() && done.migrating.is_empty(),
        "{done:?}"
    );
    r.phase = rebalance_phase::FINALIZING.to_owned();
    let again = vec![
        view("primary", InstancePhase::Unreachable, false),
        view("secondary", InstancePhase::Ready, false),
    ];
    let mut failed_over = done.clone();
    failed_over.failover.push(lost.clone());
    let (published, transition) =
        table_to_publish(&failed_over, Some(&done), &again, Some(&r), true);
    assert!(transition.is_none());
    assert_eq!(published.failover, vec![lost.clone()]);
    // It stays once the owner answers again, until a failback brings the outage's writes home.
    let (published, _) = table_to_publish(&failed_over, Some(&failed_over), &back, Some(&r), true);
    assert_eq!(published.failover, vec![lost.clone()]);
    // A second operator, behind, published the migrating table again over the final one: the
    // entry derived from its migration is the failback's own, and goes, as at the transition.
    let mut rederived = done.clone();
    rederived.failover.push(lost);
    let (published, _) = table_to_publish(&rederived, Some(&flipped), &back, Some(&r), true);
    assert!(published.failover.is_empty(), "{published:?}");
}

#[test]
fn a_draining_legacy_instance_with_data_is_emptied_into_the_owners() {
    let mut t = two_instance_table();
    t.instances.insert("legacy".into(), endpoint(7009));
    let views = vec![view("legacy", InstancePhase::Draining, true)];
    let bytes = BTreeMap::from([(("auth".to_owned(), "legacy".to_owned()), 1000u64)]);
    let moves = legacy_moves(&t, &views, &bytes);
    assert_eq!(moves.len(), 2, "one per run of auth");
    assert!(
        moves
            .iter()
            .all(|m| m.from == "legacy" && m.category == "auth")
    );
    assert!(
        to_status(&moves, &t)
            .iter()
            .all(|m| m.target_serves == Some(true)),
        "the owners' copies are live: no purge, no failback of the range to the legacy instance"
    );
    assert!(
        legacy_moves(&t, &views, &BTreeMap::new()).is_empty(),
        "nothing left: done"
    );
    // Not while it holds copies the table gives it: as a replica, an outgoing replica (kept
    // until its successor is seeded), or a failover target (it serves a dead owner's range).
    let replica = crate::routing::table::SlotOwner::from((0, 99, "legacy".to_owned()));
    let mut as_replica = t.clone();
    as_replica.categories[0].replication = Some(crate::routing::table::CategoryReplication {
        mode: crate::routing::table::ReplicationMode::Sync,
        replicas: vec![crate::routing::table::SlotOwner::from((
            0,
            99,
            "primary".to_owned(),
        ))],
        seeding: Vec::new(),
        outgoing: vec![replica.clone()],
    });
    assert!(legacy_moves(&as_replica, &views, &bytes).is_empty());
    let r = as_replica.categories[0].replication.as_mut().unwrap();
    r.replicas = vec![replica];
    r.outgoing = Vec::new();
    assert!(legacy_moves(&as_replica, &views, &bytes).is_empty());
    let mut serving = t.clone();
    serving.failover.push(crate::routing::table::Failover {
        category: "auth".into(),
        start: 0,
        end: 99,
        from: "primary".into(),
        to: "legacy".into(),
        handover: false,
    });
    assert!(legacy_moves(&serving, &views, &bytes).is_empty());
}

#[test]
fn overlapping_moves_are_dropped() {
    let m = |s, e, from: &str| Move {
        category: "auth".into(),
        range: SlotRange::new(s, e),
        from: from.into(),
        to: "x".into(),
        bytes: 0,
    };
    let kept = without_overlaps(vec![m(0, 100, "a"), m(50, 200, "b"), m(201, 300, "c")]);
    assert_eq!(kept.len(), 2);
}

#[test]
fn data_moved_by_a_rebalance_is_never_purged_as_stale() {
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let moves = vec![Move {
        category: "auth".into(),
        range: SlotRange::new(8192, 16383),
        from: "primary".into(),
        to: "secondary".into(),
        bytes: 0,
    }];
    let mut migrating = before.clone();
    overlay_migrating(&mut migrating, &moves, &[], 2);
    let finalized = finalize(&migrating, &moves);
    // The flip: the target's stale copies of the range go before it serves it.
    let flip = stale_before_publishing(Some(&before), &migrating);
    assert_eq!(
        flip["secondary"],
        vec![("auth".to_owned(), SlotRange::new(8192, 16383))]
    );
    // The finalize: what the Job copied to the target stays; only the source lets go.
    assert!(stale_before_publishing(Some(&migrating), &finalized).is_empty());
    let released = newly_served(Some(&finalized), &migrating);
    assert_eq!(
        released["primary"],
        vec![("auth".to_owned(), SlotRange::new(8192, 16383))]
    );
}

#[test]
fn a_draining_legacy_source_is_never_purged_when_it_first_appears() {
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let moves = vec![Move {
        category: "auth".into(),
        range: SlotRange::new(0, 16383),
        from: "legacy".into(),
        to: "primary".into(),
        bytes: 0,
    }];
    let mut migrating = before.clone();
    overlay_migrating(&mut migrating, &moves, &[], 2);
    let flip = stale_before_publishing(Some(&before), &migrating);
    assert!(
        !flip.contains_key("legacy"),
        "the legacy Redis holds the data being moved: {flip:?}"
    );
    assert_eq!(
        newly_served(Some(&before), &migrating)["legacy"],
        vec![("auth".to_owned(), SlotRange::new(0, 16383))],
        "though it does serve the range from the flip on"
    );
    // Once emptied, what is left there is released like any source's.
    let finalized = finalize(&migrating, &moves);
    assert!(stale_before_publishing(Some(&migrating), &finalized).is_empty());
    assert_eq!(
        newly_served(Some(&finalized), &migrating)["legacy"],
        vec![("auth".to_owned(), SlotRange::new(0, 16383))]
    );
}

#[test]
fn a_dead_end_takes_only_its_own_moves_out_of_the_plan() {
    // default 0–16383 secondary → tertiary and auth 0–8191 primary → tertiary: with the
    // primary unreachable only its move goes; secondary → tertiary (both alive) stays
    // migrating in the tables published until it finishes.
    let mut t = two_instance_table();
    t.instances.insert("tertiary".into(), endpoint(7003));
    let r = RebalanceStatus {
        phase: rebalance_phase::MIGRATING.to_owned(),
        plan_id: 7,
        step: Some(rebalance_step::COPYING.to_owned()),
        attempts: 1,
        moves: vec![
            MoveStatus {
                category: "default".into(),
                start: 0,
                end: 16383,
                from: "secondary".into(),
                to: "tertiary".into(),
                target_serves: None,
            },
            MoveStatus {
                category: "auth".into(),
                start: 0,
                end: 8191,
                from: "primary".into(),
                to: "tertiary".into(),
                target_serves: None,
            },
        ],
        ..RebalanceStatus::default()
    };
    let views = vec![
        view("primary", InstancePhase::Unreachable, false),
        view("secondary", InstancePhase::Ready, false),
        view("tertiary", InstancePhase::Ready, false),
    ];
    let dead = dead_ends(&r, &views);
    assert_eq!(dead, vec!["primary".to_owned()]);
    let live = live_moves(&r, &dead);
    assert_eq!(live, vec![r.moves[0].clone()]);
    let partly = RebalanceStatus {
        moves: live,
        attempts: 2,
        ..r.clone()
    };
    assert!(dead_ends(&partly, &views).is_empty());
    let mut shaped = t.clone();
    assert_eq!(shape_for_rebalance(&mut shaped, Some(&partly), None), None);
    assert_eq!(shaped.migrating.len(), 1);
    let m = &shaped.migrating[0];
    assert_eq!(
        (m.category.as_str(), m.from.as_str(), m.to.as_str(), m.epoch),
        ("default", "secondary", "tertiary", 7)
    );
    // Every move with a dead end: nothing goes on.
    let views = vec![
        view("primary", InstancePhase::Unreachable, false),
        view("secondary", InstancePhase::Ready, false),
        view("tertiary", InstancePhase::Unreachable, false),
    ];
    let dead = dead_ends(&r, &views);
    assert!(live_moves(&r, &dead).is_empty());
}

#[test]
fn a_held_back_owner_keeps_its_ranges_out_of_another_instances_failover() {
    // Chaos seed 6 (180 s): placement wanted a draining instance's slots on `secondary`, which
    // then died; its failover entry covered the whole range placement gave it, while holding
    // back kept the draining instance as the owner of part of it. That part was served by the
    // fallback — the draining owner's data unread, and writes of sidecars still on the older
    // table landing there, dropped later.
    let mut previous = two_instance_table();
    previous.instances.insert("extra".into(), endpoint(7003));
    previous.categories[1].slots = vec![
        (0, 8191, "secondary".to_owned()).into(),
        (8192, 16383, "extra".to_owned()).into(),
    ];
    let mut desired = previous.clone();
    desired.categories[1].slots = vec![(0, 16383, "secondary".to_owned()).into()];
    desired.failover = vec![Failover {
        category: desired.categories[1].name.clone(),
        start: 0,
        end: 16383,
        from: "secondary".into(),
        to: "primary".into(),
        handover: false,
    }];
    let views = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Unreachable, false),
        view("extra", InstancePhase::Draining, true),
    ];
    let held = hold_back(&desired, Some(&previous), &views);
    assert_eq!(held.categories[1].slots, previous.categories[1].slots);
    assert_eq!(
        held.failover
            .iter()
            .map(|f| (f.start, f.end, f.from.as_str(), f.to.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, 8191, "secondary", "primary")]
    );
    let resolver = crate::routing::Resolver::new(held.clone()).unwrap();
    // A key of the default category in the draining instance's half.
    let key = (0..)
        .map(|i| format!("misc:k{i}"))
        .find(|k| crate::routing::slots::key_slot(k.as_bytes()) >= 8192)
        .unwrap();
    assert_eq!(
        resolver.instance_name(resolver.resolve(key.as_bytes()).target),
        "extra"
    );
}

#[test]
fn a_draining_fallback_keeps_its_failover_ranges_until_they_fail_back() {
    // Chaos seed 8 (180 s): `primary` served `secondary`'s ranges after a failover when the
    // harness began draining it; the next table dropped the failover entries (a draining
    // instance does not count as serving), so the owner served the ranges without the writes
    // of the outage, and no failback moved them.
    let before = plan_routing("shop/shop", &shop(), &two(), None)
        .table
        .unwrap();
    let mut down = two();
    down[1].phase = InstancePhase::Unreachable;
    let during = plan_routing("shop/shop", &shop(), &down, Some(&before))
        .table
        .unwrap();
    assert!(!during.failover.is_empty());
    assert!(during.failover.iter().all(|f| f.to == "primary"));
    let mut back = two();
    back[0].phase = InstancePhase::Draining;
    back[0].drain = true;
    let after = plan_routing("shop/shop", &shop(), &back, Some(&during))
        .table
        .unwrap();
    assert_eq!(after.failover, during.failover);
    let moves = failback_moves(&after, &back);
    assert_eq!(moves.len(), during.failover.len());
    assert!(
        moves
            .iter()
            .all(|m| m.from == "primary" && m.to == "secondary")
    );
}

#[test]
fn only_a_move_whose_range_went_back_to_its_source_is_given_back() {
    // Chaos seed 7: the source's importing marker goes once the table that gives the range
    // back is published, and only for such a move.
    let mut migrating = two_instance_table();
    let m = Migration {
        category: "auth".into(),
        start: 0,
        end: 4095,
        from: "primary".into(),
        to: "secondary".into(),
        epoch: 4,
        target_serves: None,
    };
    migrating.migrating.push(m.clone());
    // Still migrating: nothing given back.
    assert!(given_back(&migrating.migrating, &migrating).is_empty());
    // The move abandoned for its dead target: the range is the source's again.
    let back = two_instance_table();
    assert_eq!(given_back(&migrating.migrating, &back), vec![m.clone()]);
    // The move finished: the target owns the range.
    let mut finished = two_instance_table();
    finished.categories[0].slots = vec![
        (0, 4095, "secondary".to_owned()).into(),
        (4096, 8191, "primary".to_owned()).into(),
        (8192, 16383, "secondary".to_owned()).into(),
    ];
    assert!(given_back(&migrating.migrating, &finished).is_empty());
    // A failback (fallback → owner) whose owner died again: the failover entries give the
    // range back to the fallback, which keeps serving it.
    let mut failback = two_instance_table();
    let fb = Migration {
        from: "secondary".into(),
        to: "primary".into(),
        ..m.clone()
    };
    failback.migrating.push(fb.clone());
    let mut failed_over = two_instance_table();
    failed_over.failover.push(auth_failed_over_to_secondary());
    assert_eq!(given_back(&failback.migrating, &failed_over), vec![fb]);
    // A dead source's range handed to its target is not given back.
    let mut handed = two_instance_table();
    handed.failover.push(auth_failed_over_to_secondary());
    assert!(given_back(&migrating.migrating, &handed).is_empty());
}

#[test]
fn the_moves_given_up_are_those_the_plan_no_longer_runs() {
    let live = MoveStatus {
        category: "auth".into(),
        start: 0,
        end: 4095,
        from: "primary".into(),
        to: "secondary".into(),
        target_serves: None,
    };
    let dead = MoveStatus {
        to: "tertiary".into(),
        target_serves: None,
        ..live.clone()
    };
    let before = RebalanceStatus {
        phase: rebalance_phase::MIGRATING.to_owned(),
        plan_id: 7,
        moves: vec![live.clone(), dead.clone()],
        ..RebalanceStatus::default()
    };
    let as_migration = |m: &MoveStatus| Migration {
        category: m.category.clone(),
        start: 0,
        end: 4095,
        from: m.from.clone(),
        to: m.to.clone(),
        epoch: 7,
        target_serves: None,
    };
    // Nothing given up.
    assert!(dropped_moves(Some(&before), Some(&before)).is_empty());
    // Partly abandoned: the move with the dead end.
    let partly = RebalanceStatus {
        moves: vec![live.clone()],
        attempts: 2,
        ..before.clone()
    };
    assert_eq!(
        dropped_moves(Some(&before), Some(&partly)),
        vec![as_migration(&dead)]
    );
    // Failed: the plan keeps its moves in its status, and runs none of them.
    let failed = RebalanceStatus {
        phase: rebalance_phase::FAILED.to_owned(),
        ..before.clone()
    };
    assert_eq!(
        dropped_moves(Some(&before), Some(&failed)),
        vec![as_migration(&live), as_migration(&dead)]
    );
    // A plan that had ended gives up nothing again.
    assert!(dropped_moves(Some(&failed), Some(&failed)).is_empty());
    assert!(dropped_moves(None, Some(&before)).is_empty());
}

#[test]
fn a_new_plan_clears_every_field_of_the_previous_one() {
    // Chaos seed 10 (180 s): the operator started plan 14 with a merge patch that set its id
    // and phase, was killed before writing the rest, and the next operator drove plan 14 with
    // plan 10's Job name, message and end time, waiting for that deleted Job for good.
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let full = RebalanceStatus {
        phase: "Failed".into(),
        plan_id: 10,
        job: Some("shop-rebalance-10-1".into()),
        reason: Some("r".into()),
        moves: vec![MoveStatus {
            category: "user".into(),
            start: 0,
            end: 1,
            from: "a".into(),
            to: "b".into(),
            target_serves: None,
        }],
        flip_version: Some(1),
        final_version: Some(2),
        attempts: 3,
        started_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        finished_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        message: Some("abandoned".into()),
        job_missing_since: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        forced_by: Some("me".into()),
        paused: Some(true),
        cancel_refused: Some(true),
        step: Some("Done".into()),
        keys_moved: Some(1),
        keys_total: Some(1),
        keys_per_second: Some(1),
        stragglers: vec!["s".into()],
        pacing: Some("slowed".into()),
        balance: Some(crate::api::cache_policy::RebalanceBalance {
            measured_bytes: Some(1),
            ..Default::default()
        }),
    };
    let every = serde_json::to_value(&full).unwrap();
    let fresh = RebalanceStatus {
        phase: "Preparing".into(),
        plan_id: 14,
        job: Some("shop-rebalance-14-1".into()),
        attempts: 1,
        ..RebalanceStatus::default()
    };
    let patch = new_plan_patch(&fresh);
    for field in every.as_object().unwrap().keys() {
        assert!(
            patch.get(field).is_some(),
            "the new plan's patch leaves {field} as the previous plan had it"
        );
    }
    let mut merged = every.clone();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            merged.as_object_mut().unwrap().remove(k);
        } else {
            merged[k] = v.clone();
        }
    }
    let merged: RebalanceStatus = serde_json::from_value(merged).unwrap();
    assert_eq!(merged, fresh);
}

#[test]
fn a_recovered_owner_keeps_its_failover_entries_when_an_instance_joins_its_tier() {
    // Chaos seed 8 (180 s): the hot owner came back; before its failback ran, a new hot
    // instance joined and placement gave it part of the owner's ranges. The failover entries
    // were kept only where the owner still owned the whole entry, so they all went; the table
    // routed the ranges to the owner without the data written to the fallback meanwhile, and
    // the fallback's copies were freed: 103 acknowledged writes lost.
    let mut views = two();
    let during = primary_failed_over(&mut views);
    views[0].phase = InstancePhase::Ready;
    views.push(fixtures::example_view(
        "extra",
        "hot",
        InstancePhase::Ready,
        30,
    ));
    let desired = plan_routing("shop/shop", &shop(), &views, Some(&during))
        .table
        .unwrap();
    let (published, _) = table_to_publish(&desired, Some(&during), &views, None, true);
    fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &published);
}

#[test]
fn an_owner_that_comes_back_draining_keeps_its_failover_entries_and_fails_back() {
    // Review of the seed 8 fix: an owner that died and came back with `spec.drain` set is
    // Draining, not serving. hold_back kept it as the owner of its ranges, but the failover
    // entries were dropped, so the table routed the ranges to it without the writes of the
    // outage (those stayed on the fallback, to be freed), and no failback was planned.
    let mut views = two();
    let during = primary_failed_over(&mut views);
    assert!(during.failover.iter().all(|f| f.from == "primary"));
    views[0].phase = InstancePhase::Draining;
    views[0].drain = true;
    let desired = plan_routing("shop/shop", &shop(), &views, Some(&during))
        .table
        .unwrap();
    let (published, _) = table_to_publish(&desired, Some(&during), &views, None, true);
    fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &published);
    // The writes of the outage go home first; the drain empties the owner after that.
    let moves = failback_moves(&published, &views);
    assert_eq!(moves.len(), during.failover.len());
    assert!(
        moves
            .iter()
            .all(|m| m.from == "secondary" && m.to == "primary")
    );
}

/// The shop's table while `primary` (the first of `views`) is unreachable: its ranges fail
/// over to `secondary`.
fn primary_failed_over(views: &mut [InstanceView]) -> RoutingTable {
    let before = plan_routing("shop/shop", &shop(), views, None)
        .table
        .unwrap();
    views[0].phase = InstancePhase::Unreachable;
    let during = plan_routing("shop/shop", &shop(), views, Some(&before))
        .table
        .unwrap();
    assert!(!during.failover.is_empty());
    during
}

#[test]
fn with_rebalancing_off_the_last_plan_s_result_stands() {
    // tests/rebalance.rs (rebalancing turned off mid-plan): the balance planner overflowed
    // `menu` onto the hot primary and left part of `user` where it was; once the plan ended,
    // the table published placement and re-routed those ranges away from their keys.
    let views = two();
    let desired = plan_routing("shop/shop", &shop(), &views, None)
        .table
        .unwrap();
    let warm = desired
        .category("menu")
        .unwrap()
        .owners()
        .first()
        .map(|o| (*o).to_owned())
        .unwrap();
    let hot = views.iter().find(|v| v.name != warm).unwrap().name.clone();
    let mut after_plan = desired.clone();
    let i = after_plan
        .categories
        .iter()
        .position(|c| c.name == "menu")
        .unwrap();
    after_plan.categories[i].slots = vec![SlotOwner {
        range: SlotRange::new(0, 99),
        instance: hot.clone(),
    }]
    .into_iter()
    .chain(std::iter::once(SlotOwner {
        range: SlotRange::new(100, SLOT_COUNT - 1),
        instance: warm.clone(),
    }))
    .collect();
    let done = RebalanceStatus {
        phase: rebalance_phase::SUCCEEDED.into(),
        plan_id: 3,
        moves: vec![MoveStatus {
            category: "menu".into(),
            start: 0,
            end: 99,
            from: warm.clone(),
            to: hot.clone(),
            target_serves: None,
        }],
        ..RebalanceStatus::default()
    };
    let (published, _) = table_to_publish(&desired, Some(&after_plan), &views, Some(&done), false);
    assert_eq!(
        published.category("menu").unwrap().slots,
        after_plan.categories[i].slots,
        "the plan's result stands"
    );
    // A plan rolled back (cancelled, or out of attempts before anything moved) leaves the old
    // owners serving its ranges: they stay with rebalancing off too, not re-routed to
    // placement without their keys (review: cancel with rebalancing off).
    let rolled_back = RebalanceStatus {
        phase: rebalance_phase::FAILED.into(),
        moves: vec![MoveStatus {
            category: "menu".into(),
            start: 0,
            end: 99,
            from: hot.clone(),
            to: warm.clone(),
            target_serves: None,
        }],
        ..done.clone()
    };
    let (published, _) = table_to_publish(
        &desired,
        Some(&after_plan),
        &views,
        Some(&rolled_back),
        false,
    );
    assert_eq!(
        published.category("menu").unwrap().slots,
        after_plan.categories[i].slots,
        "a rolled-back plan's ranges stay with their old owners"
    );
    // Without a finished plan, rebalancing off publishes placement (re-routing, as documented).
    let (published, _) = table_to_publish(&desired, Some(&after_plan), &views, None, false);
    assert_eq!(
        published.category("menu").unwrap().slots,
        desired.category("menu").unwrap().slots
    );
}

#[test]
fn a_paused_plan_is_not_flipped_until_it_resumes() {
    // `redisfleet.io/rebalance: pause` before the flip: the Job has prepared the targets, but
    // the operator publishes no migrating ranges while the plan is paused.
    let t = two_instance_table();
    let views = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false),
    ];
    let mut r = RebalanceStatus {
        phase: rebalance_phase::PREPARING.to_owned(),
        plan_id: 7,
        step: Some(rebalance_step::PREPARED.to_owned()),
        moves: to_status(
            &[Move {
                category: "auth".into(),
                range: SlotRange::new(0, 99),
                from: "primary".into(),
                to: "secondary".into(),
                bytes: 0,
            }],
            &t,
        ),
        paused: Some(true),
        ..RebalanceStatus::default()
    };
    let (held, transition) = table_to_publish(&t, Some(&t), &views, Some(&r), true);
    assert!(
        transition.is_none() && held.migrating.is_empty(),
        "{held:?}"
    );
    r.paused = None;
    let (flipped, transition) = table_to_publish(&t, Some(&t), &views, Some(&r), true);
    assert!(matches!(transition, Some(Transition::Flip)));
    assert_eq!(flipped.migrating.len(), 1, "{flipped:?}");
}

#[test]
fn a_dead_owner_keeps_its_failed_over_range_when_an_instance_joins_its_tier() {
    // Chaos seed 4 (180 s, first run of the balance planner): extra-1 (hot) was failed over
    // to the secondary when extra-2 joined the hot tier. Placement gave part of extra-1's
    // range to extra-2, and the table routed it there at once — its owner was not serving, so
    // nothing held it back — although its data, the writes of the outage, was on the
    // secondary, which then freed it: 131 acknowledged writes lost, 4 deletes back.
    let mut views = two();
    let during = primary_failed_over(&mut views);
    views.push(fixtures::example_view(
        "extra",
        "hot",
        InstancePhase::Ready,
        30,
    ));
    let desired = plan_routing("shop/shop", &shop(), &views, Some(&during))
        .table
        .unwrap();
    let (published, _) = table_to_publish(&desired, Some(&during), &views, None, true);
    fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &published);
}

#[test]
fn a_failed_over_owner_that_is_deleted_leaves_its_range_to_the_fallback_that_holds_the_data() {
    // The same while the dead owner's RedisInstance is deleted: its range cannot wait for a
    // failback that never comes, and re-routing it to placement's new owner loses the writes
    // of the outage; the fallback that holds them owns it.
    let mut views = two();
    let during = primary_failed_over(&mut views);
    views.remove(0);
    views.push(fixtures::example_view(
        "extra",
        "hot",
        InstancePhase::Ready,
        30,
    ));
    let desired = plan_routing("shop/shop", &shop(), &views, Some(&during))
        .table
        .unwrap();
    let (published, _) = table_to_publish(&desired, Some(&during), &views, None, true);
    fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &published);
    assert!(
        published.failover.iter().all(|f| f.from != "primary"),
        "{:?}",
        published.failover
    );
    assert!(
        published
            .categories
            .iter()
            .all(|c| !c.owners().contains(&"primary")),
        "the deleted owner still owns slots"
    );
}

#[test]
fn a_failback_given_up_for_its_dead_owner_keeps_the_range_on_the_fallback_when_an_instance_joins() {
    // Chaos seed 4 again (the replay): a failback (secondary → extra-1) was under way when
    // extra-1 died again and extra-2 joined its tier. The table that gave the failback up
    // routed the range to extra-2 — placement's new owner, with none of the data — instead of
    // back to the fallback that held it, and the fallback's copies were freed: 76 lost, 4
    // deletes back.
    let mut views = two();
    let during = primary_failed_over(&mut views);
    views[0].phase = InstancePhase::Ready;
    let moves = failback_moves(&during, &views);
    assert!(!moves.is_empty());
    let mut failing_back = during.clone();
    overlay_migrating(&mut failing_back, &moves, &[], 9);
    views[0].phase = InstancePhase::Unreachable;
    views.push(fixtures::example_view(
        "extra",
        "hot",
        InstancePhase::Ready,
        30,
    ));
    let desired = plan_routing("shop/shop", &shop(), &views, Some(&failing_back))
        .table
        .unwrap();
    let (published, _) = table_to_publish(&desired, Some(&failing_back), &views, None, true);
    // Every slot of the failback is served by its source, the fallback.
    fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &published);
    assert!(published.migrating.is_empty());
}

#[test]
fn a_dead_source_s_range_stays_with_the_move_s_target_when_placement_wants_it_elsewhere() {
    // The same for a move whose source died: its target holds what moved and what was written
    // since, so the range goes there (the hand-off), not to a third instance placement
    // prefers now.
    let views3 = vec![
        fixtures::example_view("primary", "hot", InstancePhase::Ready, 30),
        fixtures::example_view("secondary", "warm", InstancePhase::Ready, 30),
    ];
    let before = plan_routing("shop/shop", &shop(), &views3, None)
        .table
        .unwrap();
    let auth = before.category("auth").unwrap().owners()[0].to_owned();
    let other = views3.iter().find(|v| v.name != auth).unwrap().name.clone();
    let moving = vec![Move {
        category: "auth".into(),
        range: SlotRange::new(0, 999),
        from: auth.clone(),
        to: other.clone(),
        bytes: 0,
    }];
    let mut flipped = before.clone();
    overlay_migrating(&mut flipped, &moving, &[], 5);
    let mut views = views3.clone();
    for v in &mut views {
        if v.name == auth {
            v.phase = InstancePhase::Unreachable;
        }
    }
    views.push(fixtures::example_view(
        "extra",
        "hot",
        InstancePhase::Ready,
        30,
    ));
    let desired = plan_routing("shop/shop", &shop(), &views, Some(&flipped))
        .table
        .unwrap();
    let (published, _) = table_to_publish(&desired, Some(&flipped), &views, None, true);
    let r = crate::routing::Resolver::new(published.clone()).unwrap();
    let auth_id = u16::try_from(
        published
            .categories
            .iter()
            .position(|c| c.name == "auth")
            .unwrap(),
    )
    .unwrap();
    for slot in [0u16, 500, 999] {
        assert_eq!(
            r.instance_name(r.route(auth_id, slot).target),
            other,
            "slot {slot}: {published:?}"
        );
    }
}

#[test]
fn a_held_table_names_every_instance_it_routes_to() {
    // Review of the hold_back fix: with a fallback that owns no slot of its own (a spare
    // tier), the slots a deleted, failed-over owner left to it were routed to an instance the
    // table did not list — an invalid table, refused by sidecars and unreadable next time.
    let mut previous = two_instance_table();
    previous.instances.insert("spare".into(), endpoint(7009));
    previous.failover.push(Failover {
        category: "auth".into(),
        start: 0,
        end: 8191,
        from: "primary".into(),
        to: "spare".into(),
        handover: false,
    });
    previous.validate().unwrap();
    // primary was deleted: placement gives its slots to the secondary.
    let mut desired = previous.clone();
    desired.instances.remove("primary");
    desired.instances.remove("spare");
    desired.failover.clear();
    desired.categories[0].slots = vec![(0, 16383, "secondary".to_owned()).into()];
    let views = vec![
        view("secondary", InstancePhase::Ready, false),
        view("spare", InstancePhase::Ready, false),
    ];
    let held = hold_back(&desired, Some(&previous), &views);
    held.validate().unwrap();
    assert_eq!(held.categories[0].owners()[0], "spare", "{held:?}");
    assert_eq!(held.categories[0].owners()[9000], "secondary");
    // A dead owner still selected keeps its range, failed over to the spare that serves.
    let views = vec![
        view("primary", InstancePhase::Unreachable, false),
        view("secondary", InstancePhase::Ready, false),
        view("spare", InstancePhase::Ready, false),
    ];
    let held = hold_back(&desired, Some(&previous), &views);
    held.validate().unwrap();
    assert_eq!(held.categories[0].owners()[0], "primary");
    assert!(
        held.failover
            .iter()
            .any(|f| f.from == "primary" && f.to == "spare" && f.start == 0 && f.end == 8191),
        "{:?}",
        held.failover
    );
}

#[test]
fn a_plan_s_target_that_placement_no_longer_names_stays_in_the_table() {
    // Chaos seed 6: a balance plan moved ranges onto the secondary, which placement gave
    // nothing of its own (and whose replica entries the plan's moves strip). The table that
    // flipped the plan named the secondary in its migrations but not among its instances: an
    // invalid table, so the operator published nothing, and the plan waited forever.
    let placement = two_instance_table();
    let mut desired = placement.clone();
    desired.instances.remove("secondary");
    desired.categories[0].slots = vec![(0, 16383, "primary".to_owned()).into()];
    let views = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false),
    ];
    let moves = to_status(
        &[Move {
            category: "auth".into(),
            range: SlotRange::new(0, 99),
            from: "primary".into(),
            to: "secondary".into(),
            bytes: 0,
        }],
        &placement,
    );
    for step in [None, Some(rebalance_step::PREPARED)] {
        let r = RebalanceStatus {
            phase: rebalance_phase::PREPARING.to_owned(),
            plan_id: 7,
            step: step.map(str::to_owned),
            moves: moves.clone(),
            ..RebalanceStatus::default()
        };
        let (table, _) = table_to_publish(&desired, Some(&desired), &views, Some(&r), true);
        table.validate().unwrap();
        assert!(
            table.instances.contains_key("secondary"),
            "{step:?}: {table:?}"
        );
    }
}

#[test]
fn a_draining_fallback_s_failback_given_up_keeps_its_ranges_on_the_fallback() {
    // Review of the failback fix: the fallback of a dead owner began draining, and its drain
    // emptied it of its own ranges before the owner came back. Its failback then looked like
    // a legacy instance emptied into the range's owner (a draining source that owns nothing),
    // so a table after the failback gave up (rolled back, cancelled, or the owner lost again)
    // routed the ranges to the owner — whose stale copies the Job had purged — and not to the
    // fallback holding the outage's writes.
    let mut views = two();
    views.push(fixtures::example_view(
        "tertiary",
        "warm",
        InstancePhase::Ready,
        30,
    ));
    let mut during = primary_failed_over(&mut views);
    let fallback = during.failover[0].to.clone();
    let other = if fallback == "secondary" {
        "tertiary"
    } else {
        "secondary"
    };
    // The fallback's drain has finished: the other warm instance owns what it owned.
    for cat in &mut during.categories {
        for run in &mut cat.slots {
            if run.instance == fallback {
                run.instance = other.to_owned();
            }
        }
    }
    assert!(!during.owns_any(&fallback));
    for v in &mut views {
        if v.name == fallback {
            v.drain = true;
        }
    }
    views[0].phase = InstancePhase::Ready;
    let moves = failback_moves(&during, &views);
    assert!(!moves.is_empty());
    let mut failing_back = during.clone();
    overlay_migrating(&mut failing_back, &moves, &[], 9);
    assert!(
        failing_back
            .migrating
            .iter()
            .all(|m| m.target_serves == Some(false)),
        "{:?}",
        failing_back.migrating
    );
    // Given up with the owner back, and with the owner lost again: the fallback serves.
    for owner in [InstancePhase::Ready, InstancePhase::Unreachable] {
        views[0].phase = owner;
        let desired = plan_routing("shop/shop", &shop(), &views, Some(&failing_back))
            .table
            .unwrap();
        let (published, _) = table_to_publish(&desired, Some(&failing_back), &views, None, true);
        fixtures::assert_failed_over_slots_stay_with_their_fallback(&during, &published);
    }
    // What the plan recorded wins over what the table says before the overlay.
    let mut recorded = during.clone();
    overlay_migrating(&mut recorded, &moves, &vec![Some(true); moves.len()], 9);
    assert!(
        recorded
            .migrating
            .iter()
            .all(|m| m.target_serves == Some(true))
    );
}

#[test]
fn moves_out_of_an_instance_that_may_evict_keys_without_a_ttl_are_held_back() {
    // A failback out of a fallback whose policy is allkeys-lru.
    let mut t = two_instance_table();
    t.failover.push(auth_failed_over_to_secondary());
    let views = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false).evicting("allkeys-lru"),
        view("tertiary", InstancePhase::Ready, false),
    ];
    let failbacks = failback_moves(&t, &views);
    assert_eq!(failbacks.len(), 1);
    let mv = |category: &str, start: u16, end: u16, from: &str, to: &str| Move {
        category: category.into(),
        range: SlotRange::new(start, end),
        from: from.into(),
        to: to.into(),
        bytes: 1,
    };
    // The balance planner's plan: one move into the evicting instance, one out of it.
    let into = mv("cache", 0, 99, "primary", "secondary");
    let out = mv("cache", 200, 299, "secondary", "tertiary");
    // A legacy move of another instance.
    let legacy = mv("cache", 300, 399, "tertiary", "primary");
    let wanted = hold_evicting_sources(
        failbacks.clone(),
        Some((vec![into.clone(), out.clone()], "threshold".into())),
        vec![legacy.clone()],
        &views,
    );
    assert_eq!(
        wanted.moves,
        vec![legacy.clone()],
        "the plan is held whole: its moves make room for each other"
    );
    assert_eq!(
        wanted.reasons,
        vec!["draining instances hold data of the policy's categories".to_owned()],
        "no reason for moves that do not start"
    );
    assert_eq!(wanted.held.len(), 3);
    let note = held_back_note(&wanted.held, &views).unwrap();
    assert!(
        note.contains("out of secondary (allkeys-lru) wait") && note.contains("volatile-*"),
        "{note}"
    );
    // The same instances, fewer moves: the same note (one Event, not one per plan size).
    assert_eq!(held_back_note(&wanted.held[2..], &views).unwrap(), note);
    assert_eq!(held_back_note(&[], &views), None);
    // A plan that only moves into it goes on: its keys are its own data there.
    let into_only = hold_evicting_sources(
        Vec::new(),
        Some((vec![into.clone()], "threshold".into())),
        Vec::new(),
        &views,
    );
    assert_eq!(into_only.moves, vec![into]);
    assert_eq!(into_only.reasons, vec!["threshold".to_owned()]);
    // A held failback still keeps a move of its range out of the stale owner from starting.
    let stale = mv("auth", 0, 8191, "primary", "tertiary");
    let w = hold_evicting_sources(
        failbacks.clone(),
        Some((vec![stale], "threshold".into())),
        Vec::new(),
        &views,
    );
    assert!(w.moves.is_empty(), "{w:?}");
    // With the policy fixed, nothing is held.
    let fixed = vec![
        view("primary", InstancePhase::Ready, false),
        view("secondary", InstancePhase::Ready, false),
    ];
    let w = hold_evicting_sources(failback_moves(&t, &fixed), None, Vec::new(), &fixed);
    assert_eq!((w.moves.len(), w.held.len(), w.reasons.len()), (1, 0, 1));
}

#[test]
fn a_hold_is_reported_once_per_change_of_its_instances_and_outlives_the_cooldown_not_the_fix() {
    let mv = |from: &str| Move {
        category: "cache".into(),
        range: SlotRange::new(0, 99),
        from: from.into(),
        to: "tertiary".into(),
        bytes: 1,
    };
    let views = vec![
        view("primary", InstancePhase::Ready, false).evicting("allkeys-lru"),
        view("secondary", InstancePhase::Ready, false).evicting("allkeys-lfu"),
        view("tertiary", InstancePhase::Ready, false),
    ];
    // First held: an Event.
    let (first, changed) = next_held(None, &[mv("primary"), mv("primary")], true, &views);
    assert!(changed);
    let first = first.unwrap();
    // The same instance, another number of moves: no Event.
    let (again, changed) = next_held(Some(&first), &[mv("primary")], true, &views);
    assert!(!changed);
    assert_eq!(again.as_ref(), Some(&first));
    // Another instance: an Event.
    let (other, changed) = next_held(Some(&first), &[mv("secondary")], true, &views);
    assert!(changed && other.unwrap().1.contains("secondary (allkeys-lfu)"));
    // The planner not asked (its cooldown), nothing held meanwhile: still held.
    let (cooling, changed) = next_held(Some(&first), &[], false, &views);
    assert!(!changed);
    assert_eq!(cooling.as_ref(), Some(&first));
    // Asked, and nothing held: the hold is over.
    assert_eq!(next_held(Some(&first), &[], true, &views), (None, false));
    // Fixed while cooling: over too, though the other instance still evicts.
    let mut fixed = views.clone();
    fixed[0].evicting_policy = None;
    assert_eq!(next_held(Some(&first), &[], false, &fixed), (None, false));
}

#[test]
fn a_replicated_range_whose_owner_is_its_replica_gets_no_failback_move() {
    use crate::api::cache_policy::Replication;
    use crate::operator::cache_policy::build::replicas::{ReplicaInputs, place_replicas};
    let publish = |spec: &crate::api::cache_policy::CachePolicySpec,
                   views: &[InstanceView],
                   previous: Option<&RoutingTable>,
                   swaps_held: bool| {
        let mut t = plan_routing("shop/shop", spec, views, previous)
            .table
            .unwrap();
        place_replicas(
            &mut t,
            &ReplicaInputs {
                spec,
                instances: views,
                previous,
                moves: &[],
                seeded: &[],
                swaps_held,
            },
        );
        t
    };
    // `Async` too, unless swaps are held (`redisfleet.io/rebalance: pause|cancel`): its table
    // says `Sync` while the swap waits.
    for (mode, held, failback) in [
        (Replication::Sync, false, false),
        (Replication::Sync, true, false),
        (Replication::Async, false, false),
        (Replication::Async, true, true),
    ] {
        let mut spec = shop();
        for c in spec.categories.iter_mut().filter(|c| c.name == "auth") {
            c.replication = mode;
        }
        let before = publish(&spec, &two(), None, false);
        let mut down = two();
        down[0].phase = InstancePhase::Unreachable;
        let during = publish(&spec, &down, Some(&before), false);
        // The primary is back: named auth's replica (seeding) in the table of its return.
        let back = publish(&spec, &two(), Some(&during), held);
        let moves = failback_moves(&back, &two());
        assert!(
            moves.iter().all(|m| m.to == "primary"),
            "{mode:?}: {moves:?}"
        );
        // Unreplicated categories fail back by moves as before; auth only when `Async`.
        assert!(moves.iter().any(|m| m.category == "order"), "{mode:?}");
        assert_eq!(
            moves.iter().any(|m| m.category == "auth"),
            failback,
            "{mode:?}: {moves:?}"
        );
    }
}

#[test]
fn a_hold_ends_with_the_job_that_reported_it() {
    // A Job that died while it held the copy for an evicting source: while the next attempt
    // waits, the plan no longer reads as held (its condition said SourceEvicting until then).
    let held = RebalanceStatus {
        phase: rebalance_phase::MIGRATING.to_owned(),
        plan_id: 7,
        step: Some(rebalance_step::SOURCE_EVICTING.to_owned()),
        pacing: Some("held: secondary (maxmemory-policy allkeys-lru) may evict".into()),
        attempts: 2,
        ..RebalanceStatus::default()
    };
    let mut r = held.clone();
    assert!(no_job_holds(&mut r));
    assert_eq!(r.step.as_deref(), Some(rebalance_step::COPYING));
    assert_eq!(r.pacing, None);
    assert!(
        !before_import(&r),
        "keys may have moved: it is retried, never rolled back"
    );
    assert_eq!(before_import(&r), before_import(&held));
    // Any other step is the plan's progress, and stays.
    for step in [
        rebalance_step::FENCING,
        rebalance_step::COPYING,
        rebalance_step::PAUSED,
    ] {
        let mut r = RebalanceStatus {
            step: Some(step.to_owned()),
            pacing: Some("slower".into()),
            ..held.clone()
        };
        assert!(!no_job_holds(&mut r));
        assert_eq!(r.step.as_deref(), Some(step));
        assert!(r.pacing.is_some());
    }
}
