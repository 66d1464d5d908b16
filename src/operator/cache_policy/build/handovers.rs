//! Moves that hand a replicated range over by swapping roles instead of copying it with a Job
//! (`docs/replication.md`, "Moves that hand over"). Pure.
//!
//! A Job move leaves a replicated range without a replica while it copies, and until the new
//! owner's replica is seeded: one copy of the range, on an instance that just took it. A
//! handover keeps two full copies throughout:
//! 1. The table names the target the range's owner while the source serves it through a
//!    *handover* entry (a failover entry marked as such; sidecars route the range as before).
//!    Placement then names the target the range's replica, seeded from the source, while the
//!    range's replica stays on beside it as the outgoing one (`replicas::place_category`).
//! 2. Once the target is seeded, the entry ends like a failover whose owner is back: by
//!    swapping roles (`replicas::ready_swaps`, fence and wait, `build::swaps_that_end`). The
//!    target serves the range, the replica stays its replica, seeded, and the source's copies
//!    are freed.
//!
//! An `Async` category is handed over the same way, and written `Sync` while a range of it is
//! (`replicas::place_replicas`): at the swap the target serves the range, and must already
//! hold every acknowledged result — an `Async` one could still be on its way. What was
//! acknowledged before the table that starts the handover reached the source first, and the
//! seeding copies it from there.

use crate::api::cache_policy::{CachePolicySpec, Replication};
use crate::rebalance::plan::Move;
use crate::routing::slots::runs;
use crate::routing::table::{Failover, ReplicationMode, RoutingTable, SlotOwner};

use super::InstanceView;
use super::replicas::{self, OwnerReturn};

/// Whether `m`, a move the planner wants in `table`, may be made by handing its range over:
/// a replicated category (`Sync` in the table too where the spec says `Sync`: a replica seeded
/// while writes were `Async` may lack results), no failover entry or migration on the range,
/// its owner `m.from` with a seeded replica (neither end of the move) on every slot, and two
/// instances that may swap roles — the target may hold the range's replica while it seeds, and
/// answers with its data, not draining, keeping keys without a TTL; the source may hold a
/// replica afterwards, or the range's replica may stay the replica, the source then going
/// (`replicas::swappable`). Any other move is made by a Job.
pub fn may_hand_over(
    table: &RoutingTable,
    spec: &CachePolicySpec,
    views: &[InstanceView],
    m: &Move,
) -> bool {
    let wanted = replicas::replication_of(spec, &m.category);
    if m.from == m.to || wanted == Replication::Off {
        return false;
    }
    let Some(cat) = table.category(&m.category) else {
        return false;
    };
    // A `Sync` range whose table is not `Sync` yet (the spec just changed) has replicas seeded
    // while writes were `Async`: they may lack results, and a swap would lose them.
    if cat
        .replication
        .as_ref()
        .is_none_or(|r| wanted == Replication::Sync && r.mode != ReplicationMode::Sync)
    {
        return false;
    }
    let overlaps = |category: &str, start: u16, end: u16| {
        category == m.category && start <= m.range.end && m.range.start <= end
    };
    if table
        .failover
        .iter()
        .any(|f| overlaps(&f.category, f.start, f.end))
        || table
            .migrating
            .iter()
            .any(|x| overlaps(&x.category, x.start, x.end))
    {
        return false;
    }
    let view = |name: &str| views.iter().find(|v| v.name == name);
    let (Some(source), Some(target)) = (view(&m.from), view(&m.to)) else {
        return false;
    };
    if !target.may_hold_replicas() {
        return false;
    }
    let owners = cat.owners();
    let replicas_now = replicas::replicas_of(table, &m.category);
    let outgoing = replicas::outgoing_of(table, &m.category);
    // The range's replica stays on beside the target as its outgoing one, and stays the
    // replica at the swap when it may: the source may drain then. One instance over the
    // whole range, as the swap looks for one (`replicas::owner_return`): a range whose slots
    // have different replicas is moved by a Job.
    let Some((Some(replica), false)) = replicas_now.get(usize::from(m.range.start)).copied() else {
        return false;
    };
    replica != m.to
        && replica != m.from
        && replicas::swappable(target, source, view(replica))
        && (m.range.start..=m.range.end).all(|slot| {
            let s = usize::from(slot);
            owners.get(s) == Some(&m.from.as_str())
                && replicas_now[s] == (Some(replica), false)
                && outgoing[s].is_none_or(|o| o != m.to)
        })
}

/// Hands `m`'s range over in `table` (the table about to be published): `m.to` becomes the
/// range's owner, and a handover entry keeps `m.from` serving it. Nothing changes when the
/// table no longer has `m.from` own the whole range with nothing else on it; whether it did.
pub fn hand_over(table: &mut RoutingTable, m: &Move) -> bool {
    let clear = !table
        .failover
        .iter()
        .any(|f| f.category == m.category && f.start <= m.range.end && m.range.start <= f.end)
        && !table
            .migrating
            .iter()
            .any(|x| x.category == m.category && x.start <= m.range.end && m.range.start <= x.end);
    let Some(cat) = table.categories.iter_mut().find(|c| c.name == m.category) else {
        return false;
    };
    let mut owners: Vec<String> = cat.owners().into_iter().map(str::to_owned).collect();
    let range = usize::from(m.range.start)..=usize::from(m.range.end);
    if !clear
        || owners
            .get(range.clone())
            .is_none_or(|o| o.iter().any(|o| *o != m.from))
    {
        return false;
    }
    for owner in &mut owners[range] {
        owner.clone_from(&m.to);
    }
    cat.slots = runs(&owners)
        .into_iter()
        .map(|(range, instance)| SlotOwner { range, instance })
        .collect();
    table.failover.push(Failover {
        category: m.category.clone(),
        start: m.range.start,
        end: m.range.end,
        from: m.to.clone(),
        to: m.from.clone(),
        handover: true,
    });
    true
}

/// Gives back, in `table` (about to be published), the handovers that can no longer end by
/// swapping roles: their category is no longer replicated, their target may no longer hold the
/// range's replica or swap with the source (it drains, turned `allkeys-*`, died, lost its
/// data), or — `go_on` false — rebalancing was turned off or cancelled
/// (`redisfleet.io/rebalance: cancel`). While `paused` (`redisfleet.io/rebalance: pause`, which
/// holds every swap), the handovers of `Async` categories are given back too: a handover keeps
/// its category written `Sync`, and a pause may last. The source owns the range again and the
/// entry goes: no data moves, since the source served the range throughout, and the range's
/// replica stays (`replicas::place_category` keeps the outgoing one). Returns the entries
/// given back.
pub fn give_back_stalled(
    table: &mut RoutingTable,
    previous: Option<&RoutingTable>,
    spec: &CachePolicySpec,
    views: &[InstanceView],
    go_on: bool,
    paused: bool,
) -> Vec<Failover> {
    let view = |name: &str| views.iter().find(|v| v.name == name);
    // The outgoing replica `previous` named beside the target on the whole range, if any.
    let keeper = |f: &Failover| {
        let outgoing = replicas::outgoing_of(previous?, &f.category);
        let k = outgoing.get(usize::from(f.start)).copied().flatten()?;
        (f.start..=f.end)
            .all(|s| outgoing.get(usize::from(s)) == Some(&Some(k)))
            .then(|| view(k))
            .flatten()
    };
    let stalled: Vec<Failover> = table
        .failover
        .iter()
        .filter(|f| f.handover)
        .filter(|f| {
            let continues = go_on
                && match replicas::replication_of(spec, &f.category) {
                    Replication::Off => false,
                    Replication::Async => !paused,
                    Replication::Sync => true,
                }
                && view(&f.from)
                    .zip(view(&f.to))
                    .is_some_and(|(target, source)| {
                        target.may_hold_replicas() && replicas::swappable(target, source, keeper(f))
                    });
            !continues
        })
        .cloned()
        .collect();
    for f in &stalled {
        table.failover.retain(|g| g != f);
        if let Some(cat) = table.categories.iter_mut().find(|c| c.name == f.category) {
            let mut owners: Vec<String> = cat.owners().into_iter().map(str::to_owned).collect();
            for owner in owners
                .iter_mut()
                .take(usize::from(f.end) + 1)
                .skip(usize::from(f.start))
            {
                if *owner == f.from {
                    owner.clone_from(&f.to);
                }
            }
            cat.slots = runs(&owners)
                .into_iter()
                .map(|(range, instance)| SlotOwner { range, instance })
                .collect();
        }
    }
    stalled
}

/// Whether a range of `table` waits to end by swapping roles — a handover, or a failover whose
/// owner is back and named the range's replica (`replicas::owner_return`). No balance plan is
/// made meanwhile: the planner would read the range's bytes on its server as another range's,
/// and could move the range itself while its new owner seeds.
pub fn swap_pending(table: &RoutingTable, views: &[InstanceView]) -> bool {
    table
        .failover
        .iter()
        .any(|f| replicas::owner_return(table, f, views, &[]) != OwnerReturn::Move)
}

/// The handovers of `table` in one line (`category start-end source → target`), if any.
pub fn under_way(table: &RoutingTable) -> Option<String> {
    let list: Vec<String> = table
        .failover
        .iter()
        .filter(|f| f.handover)
        .map(|f| format!("{} {}-{} {} → {}", f.category, f.start, f.end, f.to, f.from))
        .collect();
    (!list.is_empty()).then(|| {
        format!(
            "handing over (the new owner is seeded as a third copy, then the two swap roles): {}",
            list.join(", ")
        )
    })
}
