//! Driving rebalances from the CachePolicy reconciler: what the published table looks like in
//! each phase of a data move (pure), and the plan → Job → flip → finalize sequence.
//!
//! Phases (`status.rebalance.phase`, decided here) and steps (`status.rebalance.step`,
//! reported by the Job):
//!
//! | phase       | table published                  | moves on when the Job reports |
//! |-------------|----------------------------------|-------------------------------|
//! | Preparing   | old owners                       | `Prepared` → publish migrating |
//! | Migrating   | old owners + `migrating` ranges  | `Copied` → publish new owners  |
//! | Finalizing  | new owners                       | Job complete → Succeeded       |

use std::collections::{BTreeMap, BTreeSet};

use crate::api::cache_policy::{MoveStatus, RebalanceStatus, rebalance_phase};
use crate::rebalance::plan::{Move, apply_moves};
use crate::routing::slots::{SLOT_COUNT, SlotRange, runs};
use crate::routing::table::{Migration, RoutingTable, SlotOwner};

use super::routing::InstanceView;

/// Whether a rebalance is under way (its ranges must stay as the phase says).
pub fn is_active(r: &RebalanceStatus) -> bool {
    matches!(
        r.phase.as_str(),
        rebalance_phase::PREPARING | rebalance_phase::MIGRATING | rebalance_phase::FINALIZING
    )
}

/// `desired` with the owners of `previous` kept wherever a slot's data would have to move
/// from a serving instance: those changes happen through a rebalance, never by re-routing
/// alone. Categories with held-back slots keep their previous placement basis, so placement
/// keeps asking for the same change until the rebalance made it.
pub fn hold_back(
    desired: &RoutingTable,
    previous: Option<&RoutingTable>,
    views: &[InstanceView],
) -> RoutingTable {
    let Some(previous) = previous else {
        return desired.clone();
    };
    let serving: BTreeSet<&str> = views
        .iter()
        .filter(|v| {
            matches!(
                v.phase,
                crate::api::redis_instance::InstancePhase::Ready
                    | crate::api::redis_instance::InstancePhase::Degraded
                    | crate::api::redis_instance::InstancePhase::Draining
            )
        })
        .map(|v| v.name.as_str())
        .collect();
    let mut out = desired.clone();
    for i in 0..out.categories.len() {
        let name = out.categories[i].name.clone();
        let Some(prev) = previous.category(&name) else {
            continue;
        };
        let before = prev.owners();
        let mut owners: Vec<String> = out.categories[i]
            .owners()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut held = false;
        for (slot, old) in before.iter().enumerate() {
            if owners[slot] != *old && serving.contains(old) {
                owners[slot] = (*old).to_owned();
                held = true;
            }
        }
        if held {
            out.categories[i].slots = to_runs(&owners);
            out.set_basis(i, previous.basis(prev));
            // The endpoints of every owner must stay in the table.
            for o in &before {
                if let Some(e) = previous.instances.get(*o) {
                    out.instances
                        .entry((*o).to_owned())
                        .or_insert_with(|| e.clone());
                }
            }
        }
    }
    out
}

fn to_runs(owners: &[String]) -> Vec<SlotOwner> {
    runs(owners)
        .into_iter()
        .map(|(range, instance)| SlotOwner { range, instance })
        .collect()
}

/// The moves of a plan as written in status.
pub fn to_status(moves: &[Move]) -> Vec<MoveStatus> {
    moves
        .iter()
        .map(|m| MoveStatus {
            category: m.category.clone(),
            start: i32::from(m.range.start),
            end: i32::from(m.range.end),
            from: m.from.clone(),
            to: m.to.clone(),
        })
        .collect()
}

/// The moves written in status.
pub fn from_status(moves: &[MoveStatus]) -> Vec<Move> {
    moves
        .iter()
        .filter_map(|m| {
            Some(Move {
                category: m.category.clone(),
                range: SlotRange::new(u16::try_from(m.start).ok()?, u16::try_from(m.end).ok()?),
                from: m.from.clone(),
                to: m.to.clone(),
                bytes: 0,
            })
        })
        .collect()
}

/// Failover entries that cover any slot of a move (a failback's own entries).
fn covered(table: &RoutingTable, moves: &[Move]) -> Vec<usize> {
    table
        .failover
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            moves.iter().any(|m| {
                m.category == f.category
                    && m.to == f.from
                    && m.from == f.to
                    && m.range.overlaps(&f.range())
            })
        })
        .map(|(i, _)| i)
        .collect()
}

/// Publishes the moves as `migrating` (version `epoch`), replacing the failover entries of
/// failback moves: from now on commands go to the targets, keys moving on access.
pub fn overlay_migrating(table: &mut RoutingTable, moves: &[Move], epoch: u64) {
    let gone = covered(table, moves);
    let mut i = 0;
    table.failover.retain(|_| {
        let keep = !gone.contains(&i);
        i += 1;
        keep
    });
    table.migrating = moves
        .iter()
        .map(|m| Migration {
            category: m.category.clone(),
            start: m.range.start,
            end: m.range.end,
            from: m.from.clone(),
            to: m.to.clone(),
            epoch,
        })
        .collect();
}

/// The table once the moves are done: the targets own the ranges, nothing migrates, and the
/// failover entries the failback replaced are gone.
pub fn finalize(table: &RoutingTable, moves: &[Move]) -> RoutingTable {
    let mut without = table.clone();
    let gone = covered(&without, moves);
    let mut i = 0;
    without.failover.retain(|_| {
        let keep = !gone.contains(&i);
        i += 1;
        keep
    });
    // A failback's target already owns the range; a real move changes the owner.
    let owner_changes: Vec<Move> = moves.to_vec();
    apply_moves(&without, &owner_changes)
}

/// Moves that bring failed-over ranges back to their recovered owner, with the data written
/// meanwhile.
pub fn failback_moves(table: &RoutingTable, views: &[InstanceView]) -> Vec<Move> {
    let serving = |name: &str| {
        views.iter().any(|v| {
            v.name == name
                && matches!(
                    v.phase,
                    crate::api::redis_instance::InstancePhase::Ready
                        | crate::api::redis_instance::InstancePhase::Degraded
                )
        })
    };
    table
        .failover
        .iter()
        .filter(|f| serving(&f.from) && serving(&f.to))
        .map(|f| Move {
            category: f.category.clone(),
            range: f.range(),
            from: f.to.clone(),
            to: f.from.clone(),
            bytes: 0,
        })
        .collect()
}

/// Moves that empty a draining instance that owns no slot but still holds data of the
/// policy's categories (the old single Redis being migrated into the fleet): every range of
/// every such category, from it to the range's owner.
pub fn legacy_moves(
    table: &RoutingTable,
    views: &[InstanceView],
    category_bytes: &BTreeMap<(String, String), u64>,
) -> Vec<Move> {
    let mut out = Vec::new();
    for v in views.iter().filter(|v| v.drain) {
        let owns_any = table
            .categories
            .iter()
            .any(|c| c.slots.iter().any(|o| o.instance == v.name));
        if owns_any {
            continue;
        }
        for cat in &table.categories {
            let holds = category_bytes
                .get(&(cat.name.clone(), v.name.clone()))
                .is_some_and(|b| *b > 0);
            if !holds {
                continue;
            }
            for run in &cat.slots {
                out.push(Move {
                    category: cat.name.clone(),
                    range: run.range,
                    from: v.name.clone(),
                    to: run.instance.clone(),
                    bytes: 0,
                });
            }
        }
    }
    out
}

/// Every slot of `moves` in one category must come from one place: drops moves overlapping an
/// earlier one (failbacks first, then the rest in order).
pub fn without_overlaps(moves: Vec<Move>) -> Vec<Move> {
    let mut taken: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    let mut out = Vec::new();
    for m in moves {
        let bits = taken
            .entry(m.category.clone())
            .or_insert_with(|| vec![false; usize::from(SLOT_COUNT)]);
        if (m.range.start..=m.range.end).any(|s| bits[usize::from(s)]) {
            continue;
        }
        for s in m.range.start..=m.range.end {
            bits[usize::from(s)] = true;
        }
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::redis_instance::InstancePhase;
    use crate::routing::table::tests::{endpoint, two_instance_table};
    use crate::routing::table::{Failover, InstanceEndpoint};

    fn view(name: &str, phase: InstancePhase, drain: bool) -> InstanceView {
        InstanceView {
            name: name.into(),
            tier: None,
            phase,
            capacity_bytes: Some(30 << 20),
            used_bytes: 0,
            weight: 100,
            drain,
            endpoint: InstanceEndpoint {
                host: "h".into(),
                port: 1,
                tls: None,
                username_secret: None,
                password_secret: None,
            },
        }
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

    #[test]
    fn a_failback_replaces_the_failover_entries_with_a_migration_then_clears_them() {
        let mut t = two_instance_table();
        t.failover.push(Failover {
            category: "auth".into(),
            start: 0,
            end: 8191,
            from: "primary".into(),
            to: "secondary".into(),
        });
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
        overlay_migrating(&mut flipped, &moves, 9);
        assert!(flipped.failover.is_empty());
        assert_eq!(flipped.migrating[0].epoch, 9);
        flipped.validate().unwrap();
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
            legacy_moves(&t, &views, &BTreeMap::new()).is_empty(),
            "nothing left: done"
        );
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
}
