//! Replica placement, the last pure step of a build: which instance holds the replica of each
//! slot of a replicated category (`docs/replication.md`, "Placement").
//!
//! - A slot's replica is never the instance that serves it (its owner, or the instance its
//!   failover entry names). The owner of a failed-over slot may be its replica: it holds the
//!   outage's writes then, warm for the day the server dies in turn.
//! - Candidates serve traffic, are not draining, have a known capacity and a `maxmemory-policy`
//!   that keeps keys without a TTL; the category's fallback tier is preferred, then its own
//!   tier, then any selected instance.
//! - Stable: a slot keeps its replica while that replica remains a candidate. A new replica is
//!   chosen by weighted rendezvous hashing per run of slots with one server, so a run keeps
//!   one replica and a change of candidates moves few runs.
//! - A slot in a migrating range has no replica (its writes are plain guarded commands while
//!   it moves), and neither end of a move — in the previous table or in the plan under way —
//!   is made a replica of the moved slots: the source keeps its importing marker until the
//!   plan's cleanup, and the guard there would run a straggler's command on a replica copy.
//! - A replica new to a slot is *seeding* until the operator reports that it copied what the
//!   slot's writer held ([`Seeded`]); a seeding replica still receives every write.
//! - A replica that lost its data ([`InstanceView::lost_data`]) is seeded again.
//! - Seed, then drop: a seeded replica that stops being a candidate (it drains, say) while it
//!   still answers stays on as the slot's *outgoing* replica until the new one is seeded — it
//!   takes every write meanwhile, and a failover promotes it — so a replica that moves leaves
//!   no window without a full copy.
//! - Failback by swapping roles ([`owner_return`]): a failed-over `Sync` slot whose owner is
//!   back gets the owner as its replica (seeded from the server); once it is seeded the build
//!   ends the failover entry, and the server becomes the replica, seeded at once. An `Async`
//!   category is written `Sync` while it has such a slot ([`place_replicas`]), or a range
//!   handed over (`super::handovers`), so the same holds for it.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::cache_policy::{CachePolicySpec, DEFAULT_CATEGORY, MoveStatus, Replication};
use crate::routing::placement::{self, Candidate};
use crate::routing::slots::{SLOT_COUNT, SlotRange, runs};
use crate::routing::table::{
    CategoryReplication, Failover, ReplicationMode, RoutingTable, SlotOwner,
};

use super::InstanceView;

/// A seeding that finished: `instance` holds, for `range` of `category`, what `writer` held
/// when the seeding began and every write since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Category.
    pub category: String,
    /// The replica seeded.
    pub instance: String,
    /// The instance it was seeded from (the slots' server).
    pub writer: String,
    /// The slots seeded.
    pub range: SlotRange,
    /// Seeded while the category was replicated `Sync` (an `Async` seeding may lack results
    /// that never reached the replica: it does not count once the category is `Sync`).
    pub sync: bool,
}

/// What replica placement needs besides the table.
#[derive(Debug)]
pub struct ReplicaInputs<'a> {
    /// The policy.
    pub spec: &'a CachePolicySpec,
    /// The selected instances.
    pub instances: &'a [InstanceView],
    /// The table published before.
    pub previous: Option<&'a RoutingTable>,
    /// The moves of the plan under way (none when no plan is active).
    pub moves: &'a [MoveStatus],
    /// Seedings that finished since the previous table.
    pub seeded: &'a [Seeded],
    /// Swaps of roles wait (`redisfleet.io/rebalance: pause|cancel`): no `Async` category is
    /// written `Sync` for a failback swap meanwhile ([`place_replicas`]).
    pub swaps_held: bool,
}

/// The replication a category's spec asks for.
pub fn replication_of(spec: &CachePolicySpec, category: &str) -> Replication {
    if category == DEFAULT_CATEGORY {
        return spec.default_category.replication;
    }
    spec.categories
        .iter()
        .find(|c| c.name == category)
        .map_or(Replication::Off, |c| c.replication)
}

/// Sets `replication` of every category of `table` (built by the steps before: owners,
/// failover entries, migrations) and names the replicas' instances in it.
pub fn place_replicas(table: &mut RoutingTable, inputs: &ReplicaInputs<'_>) {
    let by_name: BTreeMap<&str, &InstanceView> = inputs
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i))
        .collect();
    let mut named = Vec::new();
    for index in 0..table.categories.len() {
        let name = table.categories[index].name.clone();
        let mode = match replication_of(inputs.spec, &name) {
            Replication::Off => {
                table.categories[index].replication = None;
                continue;
            }
            // While a range of an `Async` category is handed over, its writes are acknowledged
            // `Sync`: at the swap the new owner serves the range, and an `Async` result still
            // on its way to it would be missing there (`super::handovers`).
            // So it is while a failed-over range of it whose owner is back fails back by
            // swapping roles: the owner, seeded from the server, must hold every acknowledged
            // write when it serves again.
            Replication::Async if hands_over(table, &name) || owner_back(table, &name, inputs) => {
                ReplicationMode::Sync
            }
            Replication::Async => ReplicationMode::Async,
            Replication::Sync => ReplicationMode::Sync,
        };
        let placed = place_category(table, &name, mode, &by_name, inputs);
        named.extend(placed.replicas.iter().map(|r| r.instance.clone()));
        named.extend(placed.outgoing.iter().map(|r| r.instance.clone()));
        table.categories[index].replication = Some(CategoryReplication {
            mode,
            replicas: placed.replicas,
            seeding: placed.seeding,
            outgoing: placed.outgoing,
        });
    }
    for name in named {
        if let Some(view) = by_name.get(name.as_str()) {
            table
                .instances
                .entry(name)
                .or_insert_with(|| view.endpoint.clone());
        }
    }
}

/// Whether a failed-over range of `category` in `table` has its owner back, about to be named
/// its replica to swap roles (`place_category`'s rule for `Sync`): the owner owns the whole
/// range (the build ends the entry only then) and may hold a replica while it seeds, and the
/// two may swap ([`may_swap`], with the keeper placement would keep: the outgoing replica,
/// else the seeded one, as `inputs.previous` names them) — while swaps may go ahead.
fn owner_back(table: &RoutingTable, category: &str, inputs: &ReplicaInputs<'_>) -> bool {
    if inputs.swaps_held {
        return false;
    }
    let owners = table
        .category(category)
        .map(|c| c.owners())
        .unwrap_or_default();
    let placed = inputs.previous.unwrap_or(table);
    let outgoing = outgoing_of(placed, category);
    let replicas = replicas_of(placed, category);
    let seeded_copy = |s: usize| {
        outgoing[s].or(match replicas[s] {
            (Some(r), false) => Some(r),
            _ => None,
        })
    };
    table
        .failover
        .iter()
        .filter(|f| !f.handover && f.category == category)
        .any(|f| {
            let range = usize::from(f.start)..=usize::from(f.end);
            owners
                .get(range)
                .is_some_and(|o| o.iter().all(|o| *o == f.from))
                && inputs
                    .instances
                    .iter()
                    .any(|v| v.name == f.from && v.may_hold_replicas())
                && may_swap(seeded_copy, table, f, inputs.instances, inputs.moves)
        })
}

/// Whether `table` hands a range of `category` over (a failover entry marked `handover`).
fn hands_over(table: &RoutingTable, category: &str) -> bool {
    table
        .failover
        .iter()
        .any(|f| f.handover && f.category == category)
}

struct Placed {
    replicas: Vec<SlotOwner>,
    seeding: Vec<SlotOwner>,
    outgoing: Vec<SlotOwner>,
}

/// Per slot, the instance that serves it in `table` (its owner unless a failover entry
/// names another).
pub fn servers<'t>(table: &'t RoutingTable, category: &str) -> Vec<&'t str> {
    let Some(cat) = table.category(category) else {
        return Vec::new();
    };
    let mut servers = cat.owners();
    for f in table.failover.iter().filter(|f| f.category == category) {
        for slot in f.start..=f.end {
            if servers[usize::from(slot)] == f.from {
                servers[usize::from(slot)] = f.to.as_str();
            }
        }
    }
    servers
}

/// Per slot (16 384 entries), the replica a table names, and whether it is seeding.
pub type SlotReplicas<'t> = Vec<(Option<&'t str>, bool)>;

/// Per slot, the replica `table` names for `category`, and whether it is seeding.
pub fn replicas_of<'t>(table: &'t RoutingTable, category: &str) -> SlotReplicas<'t> {
    let mut out = vec![(None, false); usize::from(SLOT_COUNT)];
    let Some(r) = table
        .category(category)
        .and_then(|c| c.replication.as_ref())
    else {
        return out;
    };
    for run in &r.replicas {
        for slot in run.range.start..=run.range.end {
            out[usize::from(slot)].0 = Some(run.instance.as_str());
        }
    }
    for run in &r.seeding {
        for slot in run.range.start..=run.range.end {
            if out[usize::from(slot)].0 == Some(run.instance.as_str()) {
                out[usize::from(slot)].1 = true;
            }
        }
    }
    out
}

/// Per slot, the outgoing replica `table` names for `category` (the seeded one a seeding
/// replica replaces), if any.
pub fn outgoing_of<'t>(table: &'t RoutingTable, category: &str) -> Vec<Option<&'t str>> {
    let mut out = vec![None; usize::from(SLOT_COUNT)];
    let runs = table
        .category(category)
        .and_then(|c| c.replication.as_ref())
        .map_or(&[][..], |r| r.outgoing.as_slice());
    for run in runs {
        for slot in run.range.start..=run.range.end {
            out[usize::from(slot)] = Some(run.instance.as_str());
        }
    }
    out
}

/// How a failover entry of a replicated category ends once its owner answers again
/// (`docs/replication.md`, "Failback by swapping roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerReturn {
    /// The owner is the seeded replica of the whole entry: the entry ends, the owner serves
    /// the range again and the instance that served it becomes its replica, seeded. No data
    /// moves, and the range keeps a full copy throughout.
    Swap,
    /// The owner is named the replica of the whole entry and is still being seeded: the swap
    /// follows once it is seeded.
    Seeding,
    /// By a failback move (rebalancing on), which leaves the range without a replica while it
    /// moves and until its replica is seeded again, or not at all (rebalancing off) — for a
    /// range whose owner and server cannot swap.
    Move,
}

/// How `entry` of `table` ends ([`OwnerReturn`]); `views` are the instances' views, `moves`
/// those of the plan under way. A swap needs a category `Sync` in `table` (an `Async` replica
/// may lack acknowledged results still on their way, which a move never loses; an `Async`
/// category's table says `Sync` while one of its ranges may swap), an owner that answers
/// with its data, is not draining and keeps keys without a TTL, a server that may hold the
/// replica afterwards ([`InstanceView::may_hold_replicas`]) — or an outgoing replica beside
/// the owner on the whole range that may (it stays the replica, and the server goes:
/// [`swappable`]) — and no migration of the range, published or planned (a failback move
/// planned earlier goes on as a move: its Job empties the owner's copies).
pub fn owner_return(
    table: &RoutingTable,
    entry: &Failover,
    views: &[InstanceView],
    moves: &[MoveStatus],
) -> OwnerReturn {
    let sync = table
        .category(&entry.category)
        .and_then(|c| c.replication.as_ref())
        .is_some_and(|r| r.mode == ReplicationMode::Sync);
    // The outgoing replica beside the owner is the keeper.
    let outgoing = outgoing_of(table, &entry.category);
    if !sync || !may_swap(|s| outgoing[s], table, entry, views, moves) {
        return OwnerReturn::Move;
    }
    let replicas = replicas_of(table, &entry.category);
    let mut seeding = false;
    for slot in entry.start..=entry.end {
        match replicas[usize::from(slot)] {
            (Some(r), s) if r == entry.from => seeding |= s,
            _ => return OwnerReturn::Move,
        }
    }
    if seeding {
        OwnerReturn::Seeding
    } else {
        OwnerReturn::Swap
    }
}

/// [`owner_return`]'s conditions on the instances and the moves, whatever the mode: `entry`'s
/// owner and server may swap roles ([`swappable`]; the keeper is the instance `copy` names
/// for every slot of the range, neither end), and no migration of the range is published in
/// `table` or planned in `moves`.
fn may_swap<'t>(
    copy: impl Fn(usize) -> Option<&'t str>,
    table: &RoutingTable,
    entry: &Failover,
    views: &[InstanceView],
    moves: &[MoveStatus],
) -> bool {
    let view = |name: &str| views.iter().find(|v| v.name == name);
    let (Some(owner), Some(server)) = (view(&entry.from), view(&entry.to)) else {
        return false;
    };
    let keeper = copy(usize::from(entry.start))
        .filter(|k| {
            (entry.start..=entry.end).all(|s| copy(usize::from(s)) == Some(*k))
                && *k != entry.from
                && *k != entry.to
        })
        .and_then(view);
    let overlaps = |category: &str, start: i64, end: i64| {
        category == entry.category && start <= i64::from(entry.end) && i64::from(entry.start) <= end
    };
    let migrating = table
        .migrating
        .iter()
        .any(|m| overlaps(&m.category, i64::from(m.start), i64::from(m.end)))
        || moves
            .iter()
            .any(|m| overlaps(&m.category, i64::from(m.start), i64::from(m.end)));
    !migrating && swappable(owner, server, keeper)
}

/// Whether a range `server` serves for `owner` may end by swapping their roles, as far as the
/// instances go: the owner answers with its data and is not draining, and the server may hold
/// the range's replica afterwards — or `keeper`, a seeded copy beside the owner (the outgoing
/// replica, which stays the replica at the swap), may, and the server then goes (it may drain:
/// a draining instance's `Sync` ranges are handed over too).
pub(super) fn swappable(
    owner: &InstanceView,
    server: &InstanceView,
    keeper: Option<&InstanceView>,
) -> bool {
    owner.promotable()
        && !owner.drain
        && owner.evicting_policy.is_none()
        && server.promotable()
        && (server.may_hold_replicas()
            || keeper.is_some_and(|k| k.may_hold_replicas() && k.promotable()))
}

/// The failover entries of `previous` ready to end by swapping roles now
/// ([`OwnerReturn::Swap`]), for a policy whose `spec` still replicates their category (an
/// `Async` one is `Sync` in the table while a swap of it waits: [`place_replicas`]);
/// `moves` are those of the plan under way. The operator fences each one's server on itself
/// before it builds the table that ends it, and builds it only with the swaps so fenced.
pub fn ready_swaps(
    previous: &RoutingTable,
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    moves: &[MoveStatus],
) -> Vec<Failover> {
    previous
        .failover
        .iter()
        // An `Async` category's too: its table is `Sync` while one waits (`place_replicas`),
        // which `owner_return` requires.
        .filter(|f| replication_of(spec, &f.category) != Replication::Off)
        .filter(|f| owner_return(previous, f, instances, moves) == OwnerReturn::Swap)
        .cloned()
        .collect()
}

/// The failover entries of `previous` that `next` ends by swapping roles: the entry's owner
/// serves its range in `next`, and its server — or the outgoing replica `previous` named beside
/// the owner — is the range's seeded replica there.
pub fn swapped_entries(previous: &RoutingTable, next: &RoutingTable) -> Vec<Failover> {
    previous
        .failover
        .iter()
        .filter(|f| !next.failover.contains(f))
        .filter(|f| {
            let servers = servers(next, &f.category);
            let replicas = replicas_of(next, &f.category);
            let outgoing = outgoing_of(previous, &f.category);
            !servers.is_empty()
                && (f.start..=f.end).all(|slot| {
                    let s = usize::from(slot);
                    servers[s] == f.from
                        && matches!(replicas[s], (Some(r), false)
                            if r == f.to || outgoing[s] == Some(r))
                })
        })
        .cloned()
        .collect()
}

/// Per slot (16 384 entries), the replica a failover may promote, if any.
pub type PromotionOrder<'t> = Vec<Option<&'t str>>;

/// Per slot, the replica of `table` that holds a full copy of it, which a failover promotes:
/// the outgoing replica (seeded) while its successor is seeding, else the replica if it is
/// seeded. A seeding replica is never promoted: besides missing what is not copied yet, it may
/// hold an *older* value of a key whose newer writes came from sidecars still on the previous
/// table and went to the previous replica only (chaos seed 2: `w0-2608` served after
/// `w0-2683` was acknowledged). An empty fallback misses; it never answers stale.
pub fn promotion_order<'t>(table: &'t RoutingTable, category: &str) -> PromotionOrder<'t> {
    outgoing_of(table, category)
        .into_iter()
        .zip(replicas_of(table, category))
        .map(|(outgoing, (replica, seeding))| outgoing.or(replica.filter(|_| !seeding)))
        .collect()
}

fn place_category(
    table: &RoutingTable,
    category: &str,
    mode: ReplicationMode,
    by_name: &BTreeMap<&str, &InstanceView>,
    inputs: &ReplicaInputs<'_>,
) -> Placed {
    let slots = usize::from(SLOT_COUNT);
    let servers = servers(table, category);
    let owners = table
        .category(category)
        .map(|c| c.owners())
        .unwrap_or_default();
    let owners_before = inputs
        .previous
        .and_then(|t| t.category(category))
        .map(|c| c.owners());
    let was_async = inputs
        .previous
        .and_then(|t| t.category(category))
        .and_then(|c| c.replication.as_ref())
        .is_some_and(|r| r.mode == ReplicationMode::Async);
    let previous = inputs
        .previous
        .map(|t| replicas_of(t, category))
        .unwrap_or_else(|| vec![(None, false); slots]);
    // A kept replica whose slot changed server is seeded again from the new one.
    let servers_before = inputs.previous.map(|t| self::servers(t, category));
    let outgoing_before = inputs
        .previous
        .map(|t| outgoing_of(t, category))
        .unwrap_or_else(|| vec![None; slots]);
    // Slots without a replica (migrating), and per slot the instances that may not replicate
    // it (the ends of a move, now, in the previous table or in the plan under way).
    let mut blocked = vec![false; slots];
    let mut ends: Vec<Vec<String>> = vec![Vec::new(); slots];
    let mut mark = |start: u16, end: u16, from: &str, to: &str| {
        for slot in start..=end.min(SLOT_COUNT - 1) {
            for e in [from, to] {
                let list = &mut ends[usize::from(slot)];
                if !list.iter().any(|x| x == e) {
                    list.push(e.to_owned());
                }
            }
        }
    };
    for m in table.migrating.iter().filter(|m| m.category == category) {
        for slot in m.start..=m.end {
            blocked[usize::from(slot)] = true;
        }
        mark(m.start, m.end, &m.from, &m.to);
    }
    for m in inputs
        .previous
        .into_iter()
        .flat_map(|t| &t.migrating)
        .filter(|m| m.category == category)
    {
        mark(m.start, m.end, &m.from, &m.to);
    }
    for m in inputs.moves.iter().filter(|m| m.category == category) {
        let (Ok(start), Ok(end)) = (u16::try_from(m.start), u16::try_from(m.end)) else {
            continue;
        };
        mark(start, end, &m.from, &m.to);
    }

    let spec_tiers = tiers_of(inputs.spec, category);
    // An instance that may evict keys without a TTL is no candidate: the replica's copies,
    // never read, and the slots' applied versions would be the first keys it evicts.
    let candidate = |i: &&InstanceView| i.may_hold_replicas();
    let in_tier =
        |t: Option<&str>, i: &&InstanceView| t.is_none_or(|t| i.tier.as_deref() == Some(t));
    // Preference order: the fallback tier, the category's tier, any.
    let pools: Vec<Vec<Candidate>> = [
        spec_tiers.fallback.as_deref(),
        spec_tiers.tier.as_deref(),
        None,
    ]
    .into_iter()
    .enumerate()
    .filter(|(n, t)| *n == 2 || t.is_some())
    .map(|(_, t)| {
        by_name
            .values()
            .filter(|i| candidate(i))
            .filter(|i| in_tier(t, i))
            .map(|i| Candidate {
                name: i.name.clone(),
                share: i.capacity_mib() * u64::from(i.weight.max(1)),
            })
            .collect()
    })
    .collect();
    let eligible = |name: &str, slot: usize| {
        by_name.get(name).is_some_and(candidate)
            && servers[slot] != name
            && !ends[slot].iter().any(|e| e == name)
    };
    let seeded = |name: &str, slot: usize| {
        inputs.seeded.iter().any(|s| {
            s.category == category
                // An `Async` seeding does not count for `Sync`; a `Sync` one counts for both.
                && (s.sync || mode != ReplicationMode::Sync)
                && s.instance == name
                && s.writer == servers[slot]
                && s.range.contains(slot as u16)
        })
    };

    // A seeded copy that may stay on as the outgoing replica of `slot` while a new one seeds:
    // it answers (draining or not), holds its data, is not (or no longer) the slot's server nor an end of a move
    // of it, and the slot kept its writer (what it holds is that writer's).
    let keepable = |name: &str, slot: usize| {
        by_name.get(name).is_some_and(|i| i.promotable())
            && servers[slot] != name
            && !ends[slot].iter().any(|e| e == name)
            && servers_before
                .as_ref()
                .is_some_and(|b| b.get(slot).is_some_and(|w| *w == servers[slot]))
    };

    // The seeded copy `leaving` (below) of a slot, when it may stay the slot's replica through
    // a swap of roles ([`swappable`]'s keeper).
    let keeper_of = |leaving: Option<&str>, s: usize| {
        leaving
            .filter(|l| eligible(l, s) && by_name.get(l).is_some_and(|i| i.promotable()))
            .and_then(|l| by_name.get(l).copied())
    };
    let mut chosen: Vec<(Option<String>, bool)> = vec![(None, false); slots];
    // Per slot, the seeded copy a seeding replica replaces: the previous outgoing replica, or
    // the previous replica if it was seeded.
    let mut leaving: Vec<Option<&str>> = vec![None; slots];
    // One choice per run of slots with the same server and the same excluded ends.
    let keyed: Vec<(&str, &[String])> = (0..slots)
        .map(|s| (servers[s], ends[s].as_slice()))
        .collect();
    for (range, _) in runs(&keyed) {
        let mut fresh: Option<Option<String>> = None;
        for slot in range.start..=range.end {
            let s = usize::from(slot);
            if blocked[s] {
                continue;
            }
            let seeded_before = outgoing_before[s].or(match previous[s] {
                (Some(prev), false) => Some(prev),
                _ => None,
            });
            leaving[s] = seeded_before.filter(|o| keepable(o, s));
            // A failover or handover that ended by swapping roles (`owner_return`): the owner,
            // the seeded replica, serves the slot now. The outgoing replica that stayed on
            // beside it holds every result, and stays the replica, seeded; the instance that
            // served the slot goes (a handover's source frees what it held). Without one, the
            // instance that served the slot holds everything the owner holds: it becomes the
            // replica, seeded.
            if let Some(before) = servers_before.as_ref().and_then(|b| b.get(s).copied())
                && before != servers[s]
                && previous[s] == (Some(servers[s]), false)
                && owners.get(s) == Some(&servers[s])
                && owners_before.as_ref().and_then(|o| o.get(s)) == Some(&servers[s])
            {
                let stays = |name: &str| {
                    by_name.get(name).is_some_and(|i| i.promotable()) && eligible(name, s)
                };
                if let Some(kept) = outgoing_before[s]
                    .filter(|o| stays(o))
                    .or(Some(before).filter(|b| stays(b)))
                {
                    chosen[s] = (Some(kept.to_owned()), false);
                    continue;
                }
            }
            // A failed-over slot of a `Sync` category whose owner is back (an `Async` one is
            // `Sync` in this table while that is so: `owner_back`): the owner becomes
            // its replica (seeded from the server, the stable replica staying on as the
            // outgoing one meanwhile), so that the failover can end by swapping roles rather
            // than by a failback move, which would leave the range without a replica.
            // A replica seeded while the category was `Async` may lack results that never
            // reached it: the owner is seeded again before it may swap.
            if mode == ReplicationMode::Sync
                && let Some(owner) = owners.get(s).copied()
                && owner != servers[s]
                && (previous[s].0 != Some(owner) || was_async)
                && eligible(owner, s)
                && by_name
                    .get(owner)
                    .zip(by_name.get(servers[s]))
                    .is_some_and(|(o, server)| swappable(o, server, keeper_of(leaving[s], s)))
            {
                chosen[s] = (Some(owner.to_owned()), true);
                continue;
            }
            if let (Some(prev), was_seeding) = previous[s]
                && eligible(prev, s)
            {
                let moved = servers_before
                    .as_ref()
                    .is_some_and(|b| b.get(s).is_some_and(|w| *w != servers[s]));
                // A replica that lost its data is seeded again, even where a seeding of it
                // finished before the loss was seen.
                let lost = by_name.get(prev).is_some_and(|i| i.lost_data);
                chosen[s] = (
                    Some(prev.to_owned()),
                    lost || ((was_seeding || moved) && !seeded(prev, s)),
                );
                continue;
            }
            // A seeded copy that may still hold the replica stays it, seeded, rather than a
            // fresh pick seeding anew: the outgoing replica whose successor went (it drains,
            // turned `allkeys-*`, died — a handover's target, say). Picked fresh, it would be
            // named seeding and never promoted, and the range would have no promotable copy.
            if let Some(kept) = leaving[s].filter(|l| eligible(l, s)) {
                chosen[s] = (Some(kept.to_owned()), false);
                continue;
            }
            let pick = fresh.get_or_insert_with(|| {
                let key = format!("{category}/replica/{}", range.start);
                pools.iter().find_map(|pool| {
                    let pool: Vec<Candidate> = pool
                        .iter()
                        .filter(|c| eligible(&c.name, s))
                        .cloned()
                        .collect();
                    (!pool.is_empty()).then(|| placement::rendezvous_winner(&key, &pool).to_owned())
                })
            });
            chosen[s] = match (pick, leaving[s]) {
                (Some(pick), _) => (Some(pick.clone()), true),
                // Nobody else can take it: the seeded copy stays the replica (draining or not)
                // until somebody can, rather than leave the range without one.
                (None, Some(kept)) => (Some(kept.to_owned()), false),
                (None, None) => (None, false),
            };
        }
    }
    // The outgoing replica stays only beside a replica that is still seeding, and is not it —
    // or beside a seeded one that owns the slot while another instance serves it (a swap of
    // roles is pending: the outgoing replica stays the replica then, and the server goes).
    let outgoing: Vec<Option<&str>> = (0..slots)
        .map(|s| match &chosen[s] {
            (Some(replica), true) => leaving[s].filter(|o| o != replica),
            (Some(replica), false)
                if mode == ReplicationMode::Sync
                    && owners.get(s).copied() == Some(replica.as_str())
                    && servers[s] != replica.as_str()
                    && by_name
                        .get(replica.as_str())
                        .zip(by_name.get(servers[s]))
                        .is_some_and(|(o, server)| {
                            swappable(o, server, keeper_of(leaving[s], s))
                        }) =>
            {
                leaving[s].filter(|o| o != replica)
            }
            _ => None,
        })
        .collect();
    let mut placed = Placed {
        replicas: Vec::new(),
        seeding: Vec::new(),
        outgoing: Vec::new(),
    };
    for (range, (replica, seeding)) in runs(&chosen) {
        let Some(instance) = replica else { continue };
        if seeding {
            placed.seeding.push(SlotOwner {
                range,
                instance: instance.clone(),
            });
        }
        placed.replicas.push(SlotOwner { range, instance });
    }
    for (range, instance) in runs(&outgoing) {
        if let Some(instance) = instance {
            placed.outgoing.push(SlotOwner {
                range,
                instance: (*instance).to_owned(),
            });
        }
    }
    placed
}

/// The seeded replica runs of `table`, cut where their writer changes: each replica holds,
/// for its range, what its writer held (the runs the replica check compares).
pub fn seeded_runs(table: &RoutingTable) -> Vec<Seeded> {
    let mut out = Vec::new();
    for cat in &table.categories {
        if cat.replication.is_none() {
            continue;
        }
        let servers = servers(table, &cat.name);
        let replicas = replicas_of(table, &cat.name);
        let per_slot: Vec<Option<(&str, &str)>> = (0..usize::from(SLOT_COUNT))
            .map(|s| match replicas[s] {
                (Some(replica), false) => Some((replica, servers[s])),
                _ => None,
            })
            .collect();
        for (range, pair) in runs(&per_slot) {
            if let Some((replica, writer)) = pair {
                out.push(Seeded {
                    category: cat.name.clone(),
                    instance: (*replica).to_owned(),
                    writer: (*writer).to_owned(),
                    range,
                    sync: cat
                        .replication
                        .as_ref()
                        .is_some_and(|r| r.mode == ReplicationMode::Sync),
                });
            }
        }
    }
    out
}

/// The instances that must hold the marker of replicated data ([`names::holds`]) while `table`
/// is published: both ends of every [`seeded_runs`] run. A seeding wrote the marker on both
/// (before it copied anything), and no slot gets a new server or replica without a seeding,
/// so one of them that answers without it lost its data.
///
/// [`names::holds`]: crate::redis::protocol::names::holds
pub fn must_hold_marker(table: &RoutingTable) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = seeded_runs(table)
        .into_iter()
        .flat_map(|run| [run.instance, run.writer])
        .collect();
    // An outgoing replica and its slots' writer are a seeded pair too: the writer's loss must
    // be seen while the successor seeds (the seeding would copy its emptiness).
    for cat in &table.categories {
        let Some(r) = &cat.replication else { continue };
        if r.outgoing.is_empty() {
            continue;
        }
        let servers = servers(table, &cat.name);
        for run in &r.outgoing {
            out.insert(run.instance.clone());
            for slot in run.range.start..=run.range.end {
                out.insert(servers[usize::from(slot)].to_owned());
            }
        }
    }
    out
}

/// Where each replicated category of `table` stands, for status and metrics.
pub fn summary(table: &RoutingTable) -> Vec<crate::api::cache_policy::CategoryReplicationStatus> {
    let count = |runs: &[SlotOwner]| -> i32 {
        i32::try_from(runs.iter().map(|r| r.range.len()).sum::<u32>()).unwrap_or(i32::MAX)
    };
    table
        .categories
        .iter()
        .filter_map(|c| {
            let r = c.replication.as_ref()?;
            let named = count(&r.replicas);
            // A slot with an outgoing replica has a full copy: it is replicated, and handing
            // over (to a new replica seeding beside it, or to an owner about to swap roles).
            let handover = count(&r.outgoing);
            let mut outgoing = vec![false; usize::from(SLOT_COUNT)];
            for run in &r.outgoing {
                for slot in run.range.start..=run.range.end {
                    outgoing[usize::from(slot)] = true;
                }
            }
            let seeding = i32::try_from(
                r.seeding
                    .iter()
                    .flat_map(|run| run.range.start..=run.range.end)
                    .filter(|slot| !outgoing[usize::from(*slot)])
                    .count(),
            )
            .unwrap_or(i32::MAX);
            let mut replicas: Vec<String> = r
                .replicas
                .iter()
                .chain(&r.outgoing)
                .map(|o| o.instance.clone())
                .collect();
            replicas.sort();
            replicas.dedup();
            Some(crate::api::cache_policy::CategoryReplicationStatus {
                category: c.name.clone(),
                mode: match r.mode {
                    ReplicationMode::Async => "Async",
                    ReplicationMode::Sync => "Sync",
                }
                .to_owned(),
                replicated_slots: named - seeding,
                seeding_slots: seeding,
                handover_slots: handover,
                unreplicated_slots: i32::from(SLOT_COUNT) - named,
                replicas,
            })
        })
        .collect()
}

struct Tiers {
    tier: Option<String>,
    fallback: Option<String>,
}

fn tiers_of(spec: &CachePolicySpec, category: &str) -> Tiers {
    if category == DEFAULT_CATEGORY {
        let d = &spec.default_category;
        return Tiers {
            tier: d.tier.clone(),
            fallback: d.fallback_tier.clone(),
        };
    }
    spec.categories.iter().find(|c| c.name == category).map_or(
        Tiers {
            tier: None,
            fallback: None,
        },
        |c| Tiers {
            tier: c.tier.clone(),
            fallback: c.fallback_tier.clone(),
        },
    )
}

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
mod tests;
