//! Build, the pure step of a CachePolicy reconcile: the routing table the policy should
//! publish, computed from the policy, the instances it selects ([`InstanceView`]) and the
//! table published before.
//!
//! - Candidates of a category: selected instances of its tier (else of its fallback tier,
//!   else all selected), not draining, with a known capacity. A new instance becomes a
//!   candidate once it has been healthy; an existing member stays one through outages (its
//!   slots are served elsewhere meanwhile by `failover` entries), so health never reshuffles
//!   placement.
//! - Placement: [`crate::routing::placement`], incremental from the previous table.
//! - Failover: the runs of an Unreachable owner go to a serving instance of the category's
//!   `fallbackTier`, else another serving candidate, else any serving selected instance — one
//!   below 90 % of its capacity before a fuller one — chosen by weighted rendezvous hashing
//!   per run, and kept stable while the failover lasts.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::cache_policy::{CachePolicySpec, DEFAULT_CATEGORY, Strategy, TtlSpec};
use crate::api::redis_instance::InstancePhase;
use crate::routing::placement::{self, Candidate, Mode, Previous};
use crate::routing::slots::{SLOT_COUNT, SlotRange, runs};
use crate::routing::table::{
    Category, Failover, InstanceEndpoint, RoutingTable, SCHEMA_VERSION, SlotOwner, TtlRules,
};

/// What the policy reconciler knows about one selected instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    /// RedisInstance name.
    pub name: String,
    /// `redisfleet.io/tier` label.
    pub tier: Option<String>,
    /// Phase from status (`Pending` when never probed).
    pub phase: InstancePhase,
    /// Effective capacity (status, else spec); `None` when unknown.
    pub capacity_bytes: Option<u64>,
    /// Used memory from status.
    pub used_bytes: u64,
    /// `spec.weight`.
    pub weight: u32,
    /// `spec.drain`.
    pub drain: bool,
    /// It still holds copies of ranges no table routes to it any more (`super::unfreed`):
    /// until they are deleted, what it holds is not legacy data to move into the owners.
    pub copies_to_free: bool,
    /// It answers without the marker of replicated data it should hold
    /// ([`replicas::must_hold_marker`]): it restarted empty or was flushed. Its replicated
    /// ranges fail over to their replicas as if it had died, and its replicas are seeded again.
    pub lost_data: bool,
    /// Its `maxmemory-policy` when that may evict keys without a TTL (`allkeys-*`): the
    /// protocol's own keys could go mid-move, so no rebalance moves data out of it
    /// (`docs/protocol.md`, "Eviction").
    pub evicting_policy: Option<String>,
    /// How to reach it.
    pub endpoint: InstanceEndpoint,
}

impl InstanceView {
    fn serving(&self) -> bool {
        matches!(self.phase, InstancePhase::Ready | InstancePhase::Degraded)
    }

    /// It answers and holds its data: a replica on it may serve a failed-over range — also
    /// while it drains (an outgoing replica, `docs/replication.md`, "Moving replicas").
    fn promotable(&self) -> bool {
        self.phase.serves_traffic() && !self.lost_data
    }

    /// It may be named a new replica: it serves, is not draining, has a known capacity and a
    /// `maxmemory-policy` that keeps keys without a TTL (`docs/replication.md`, "Placement").
    fn may_hold_replicas(&self) -> bool {
        self.serving()
            && !self.drain
            && self.capacity_bytes.is_some()
            && self.evicting_policy.is_none()
    }

    fn capacity_mib(&self) -> u64 {
        self.capacity_bytes.map_or(0, |b| (b >> 20).max(1))
    }
}

/// A problem that keeps (part of) the policy from being served as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No instance can hold the category; it stays where it was, if anywhere.
    NoCandidates {
        /// Category.
        category: String,
        /// Tier asked for.
        tier: Option<String>,
    },
    /// The category's instances have not been probed yet.
    Waiting {
        /// Category.
        category: String,
    },
    /// Slots of an unreachable instance have nowhere to go: their keys are unavailable.
    NoFallback {
        /// Category.
        category: String,
        /// The unreachable owner.
        instance: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCandidates { category, tier } => match tier {
                Some(t) => write!(f, "category {category}: no usable instance in tier {t}"),
                None => write!(f, "category {category}: no usable instance"),
            },
            Self::Waiting { category } => {
                write!(
                    f,
                    "category {category}: waiting for its instances' first probe"
                )
            }
            Self::NoFallback { category, instance } => write!(
                f,
                "category {category}: {instance} is unreachable and no other instance can serve its slots"
            ),
        }
    }
}

/// The outcome: the table to publish (with the previous version; the caller bumps it when
/// the content changed), or nothing when no category can be placed at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The table; `None` when nothing can be published.
    pub table: Option<RoutingTable>,
    /// Problems to report in conditions.
    pub problems: Vec<Problem>,
}

/// Milliseconds of a spec duration.
fn ttl_rules(ttl: Option<&TtlSpec>) -> TtlRules {
    let ms = |d: &crate::api::Duration| u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX);
    match ttl {
        None => TtlRules::default(),
        Some(t) => TtlRules {
            default_ms: t.default.as_ref().map(ms),
            max_ms: t.max.as_ref().map(ms),
            adaptive: t.adaptive,
        },
    }
}

/// A category as the planner needs it.
struct CategoryInput {
    name: String,
    prefixes: Vec<String>,
    tier: Option<String>,
    fallback_tier: Option<String>,
    ttl: TtlRules,
}

/// The categories of a policy, the default category last.
fn category_specs(spec: &CachePolicySpec) -> Vec<CategoryInput> {
    let mut out: Vec<_> = spec
        .categories
        .iter()
        .map(|c| CategoryInput {
            name: c.name.clone(),
            prefixes: c.key_prefixes.clone(),
            tier: c.tier.clone(),
            fallback_tier: c.fallback_tier.clone(),
            ttl: ttl_rules(c.ttl.as_ref()),
        })
        .collect();
    let d = &spec.default_category;
    out.push(CategoryInput {
        name: DEFAULT_CATEGORY.to_owned(),
        prefixes: Vec::new(),
        tier: d.tier.clone(),
        fallback_tier: d.fallback_tier.clone(),
        ttl: ttl_rules(d.ttl.as_ref()),
    });
    out
}

/// Computes the table to publish for `spec`, from the selected `instances` and the table
/// `previous`ly published (`policy` is `namespace/name`).
pub fn plan_routing(
    policy: &str,
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: Option<&RoutingTable>,
) -> Planned {
    plan_routing_with(
        policy,
        spec,
        instances,
        previous,
        spec.balancing.rebalance.enabled,
        &[],
    )
}

/// [`plan_routing`], saying whether data moves through rebalances (`moving`: rebalancing is
/// on, or a plan still runs after it was turned off): then a recovered owner keeps its
/// failover entries until the failback migration replaces them. The failover entries of
/// `previous` in `swaps` end by swapping roles ([`replicas::ready_swaps`]; their servers are
/// fenced already).
pub fn plan_routing_with(
    policy: &str,
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: Option<&RoutingTable>,
    moving: bool,
    swaps: &[Failover],
) -> Planned {
    let mut problems = Vec::new();
    let by_name: BTreeMap<&str, &InstanceView> =
        instances.iter().map(|i| (i.name.as_str(), i)).collect();
    let mode = match spec.balancing.strategy {
        Strategy::Pinned => Mode::Pinned,
        Strategy::Smart | Strategy::ConsistentHash => Mode::Spread,
    };
    let share = |i: &InstanceView| match spec.balancing.strategy {
        Strategy::ConsistentHash => 100,
        Strategy::Smart | Strategy::Pinned => i.capacity_mib() * u64::from(i.weight.max(1)),
    };

    let mut categories = Vec::new();
    for CategoryInput {
        name,
        prefixes,
        tier,
        fallback_tier,
        ttl,
    } in category_specs(spec)
    {
        let prev_cat = previous.and_then(|t| t.category(&name));
        let members: BTreeSet<String> = prev_cat
            .map(|c| {
                previous
                    .map(|t| t.basis(c))
                    .unwrap_or_default()
                    .into_keys()
                    .collect()
            })
            .unwrap_or_default();
        let usable = |i: &&InstanceView| {
            !i.drain && i.capacity_bytes.is_some() && (i.serving() || members.contains(&i.name))
        };
        let in_tier = |t: &Option<String>, i: &&InstanceView| t.is_none() || i.tier == *t;
        let mut pool: Vec<&InstanceView> = instances
            .iter()
            .filter(|i| in_tier(&tier, i))
            .filter(usable)
            .collect();
        if pool.is_empty()
            && instances
                .iter()
                .filter(|i| in_tier(&tier, i))
                .any(|i| !i.drain && i.phase == InstancePhase::Pending)
        {
            // The category's own instances have not been probed yet: placing it on the
            // fallback tier now would only move its data back moments later. Wait.
            problems.push(Problem::Waiting {
                category: name.clone(),
            });
            continue;
        }
        if pool.is_empty() && fallback_tier.is_some() {
            pool = instances
                .iter()
                .filter(|i| in_tier(&fallback_tier, i))
                .filter(usable)
                .collect();
        }
        if pool.is_empty() {
            pool = instances.iter().filter(usable).collect();
        }
        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|i| Candidate {
                name: i.name.clone(),
                share: share(i),
            })
            .collect();
        // A new strategy places afresh (still moving as little as it can): an empty basis
        // counts every candidate as changed. A table from before the strategy was recorded
        // is taken as placed by the current one.
        let strategy_changed = previous
            .and_then(|t| t.strategy.as_deref())
            .is_some_and(|s| s != spec.balancing.strategy.as_str());
        let prev_basis = match (previous, prev_cat) {
            (Some(t), Some(c)) if !strategy_changed => t.basis(c),
            _ => BTreeMap::new(),
        };
        // Nothing changed for this category (every reconcile of a steady fleet): its runs
        // stay as they are, without placing 16 384 slots again.
        if let Some(c) = prev_cat
            && placement::keeps_previous(
                &candidates,
                c.slots.iter().map(|o| o.instance.as_str()),
                &prev_basis,
            )
        {
            categories.push((
                Category {
                    name: name.clone(),
                    prefixes,
                    ttl,
                    slots: c.slots.clone(),
                    placement_basis: None,
                    replication: None,
                },
                placement::basis_of(&candidates),
                fallback_tier,
                tier,
            ));
            continue;
        }
        let prev_owners: Option<Vec<&str>> = prev_cat.map(|c| c.owners());
        let previous_placement = prev_owners.as_ref().map(|owners| Previous {
            owners,
            basis: &prev_basis,
        });
        let owners = match placement::place(&name, &candidates, previous_placement, mode) {
            Some(owners) => owners,
            None => {
                problems.push(Problem::NoCandidates {
                    category: name.clone(),
                    tier: tier.clone(),
                });
                // Keep serving from where it was, if it was anywhere and those still exist.
                match prev_cat {
                    Some(c)
                        if c.slots
                            .iter()
                            .all(|o| by_name.contains_key(o.instance.as_str())) =>
                    {
                        c.owners().into_iter().map(str::to_owned).collect()
                    }
                    _ => continue,
                }
            }
        };
        categories.push((
            Category {
                name: name.clone(),
                prefixes,
                ttl,
                slots: runs(&owners)
                    .into_iter()
                    .map(|(range, instance)| SlotOwner { range, instance })
                    .collect(),
                placement_basis: None,
                replication: None,
            },
            placement::basis_of(&candidates),
            fallback_tier,
            tier,
        ));
    }
    if categories.iter().all(|(c, ..)| !c.prefixes.is_empty()) {
        // Without the default category there is no valid table.
        return Planned {
            table: None,
            problems,
        };
    }
    if categories.len() != spec.categories.len() + 1 {
        // A category without any instance cannot be routed; publishing a table that routes it
        // to the default category instead would silently mix data. Publish nothing new.
        return Planned {
            table: previous.cloned(),
            problems,
        };
    }

    // Failover overlay. With rebalancing on, a recovered owner keeps its failover entries
    // until the failback migration (which moves the data written meanwhile) replaces them.
    let sticky = moving;
    let prev_failover = failovers_in(previous, &by_name);
    let mut failover = Vec::new();
    // Per category, the replicas the previous table named (computed once, and only for a
    // category whose owner is down or whose failover target is).
    let mut replicas_before: BTreeMap<&str, Option<replicas::PromotionOrder>> = BTreeMap::new();
    let replicated = |category: &str| !replicas::replication_of(spec, category).is_off();
    for (cat, _, fallback_tier, tier) in &categories {
        for run in &cat.slots {
            let Some(owner) = by_name.get(run.instance.as_str()) else {
                continue;
            };
            // An owner that answers without the data it held (restarted empty, flushed):
            // its replicated ranges go to their replicas, which hold that data, as if it had
            // died (`docs/replication.md`); what has no replica stays (there is nothing
            // better to serve it from), and the failback brings the data home.
            // A draining owner too: it may write a range whose replica moves (review).
            let lost = owner.lost_data && owner.phase.serves_traffic() && replicated(&cat.name);
            if owner.phase != InstancePhase::Unreachable && !lost {
                continue;
            }
            if lost {
                // Entries it already has stay by the rules for returned owners below.
                let covered: Vec<SlotRange> = prev_failover
                    .iter()
                    .filter(|f| f.category == cat.name && f.from == run.instance)
                    .map(Failover::range)
                    .collect();
                let replicas_before: Option<&[Option<&str>]> = replicas_before
                    .entry(cat.name.as_str())
                    .or_insert_with(|| previous.map(|t| replicas::promotion_order(t, &cat.name)))
                    .as_deref();
                for range in run.range.minus(&covered) {
                    let usable =
                        |r: &str| r != owner.name && by_name.get(r).is_some_and(|i| i.promotable());
                    for (range, to) in by_replica(range, replicas_before, usable) {
                        if let Some(to) = to {
                            failover.push(Failover {
                                category: cat.name.clone(),
                                start: range.start,
                                end: range.end,
                                from: run.instance.clone(),
                                to,
                                handover: false,
                            });
                        }
                    }
                }
                continue;
            }
            // A dead source's migrating ranges go to the migration's target, which holds
            // what moved and what was written since; the rest to a fallback.
            for (piece, handoff) in handoff_pieces(&cat.name, run, previous, &by_name) {
                // What already failed over stays with its fallback, which holds the writes of
                // the outage — also when the piece grew (placement gave the dead owner more
                // slots: another instance of its tier began draining). Kept only for the very
                // same range, a grown piece got a fallback of its own choosing and the first
                // one's copies were freed (chaos seed 2, 361 writes lost).
                let kept: Vec<(SlotRange, String, bool)> = prev_failover
                    .iter()
                    .filter(|f| {
                        f.category == cat.name
                            && f.from == run.instance
                            && by_name.get(f.to.as_str()).is_some_and(|i| {
                                // One that lost the replicated data it served hands it on
                                // like one that died (to the replica the table named).
                                i.phase.serves_traffic() && !(i.lost_data && replicated(&cat.name))
                            })
                    })
                    .filter_map(|f| {
                        Some((f.range().intersection(&piece)?, f.to.clone(), f.handover))
                    })
                    .collect();
                let covered: Vec<SlotRange> = kept.iter().map(|(r, ..)| *r).collect();
                // A replicated range fails over to its replica, which holds its data
                // (`docs/replication.md`); the rest to a fallback.
                let replicas_before: Option<&[Option<&str>]> = replicas_before
                    .entry(cat.name.as_str())
                    .or_insert_with(|| previous.map(|t| replicas::promotion_order(t, &cat.name)))
                    .as_deref();
                let fresh = piece.minus(&covered).into_iter().flat_map(|range| {
                    let pieces: Vec<(SlotRange, Option<String>)> = match &handoff {
                        Some(to) => vec![(range, Some(to.clone()))],
                        None => by_replica(range, replicas_before, |r| {
                            r != owner.name && by_name.get(r).is_some_and(|i| i.promotable())
                        }),
                    };
                    pieces
                        .into_iter()
                        .map(|(range, to)| {
                            let to = to.or_else(|| {
                                choose_fallback(
                                    &cat.name,
                                    range,
                                    owner,
                                    fallback_tier,
                                    tier,
                                    instances,
                                    &share,
                                )
                            });
                            (range, to, false)
                        })
                        .collect::<Vec<_>>()
                });
                // A handover whose target died stays one (its source serves the range, as
                // before): it is given back to the source (`handovers::give_back_stalled`).
                let pieces: Vec<(SlotRange, Option<String>, bool)> = kept
                    .into_iter()
                    .map(|(r, to, handover)| (r, Some(to), handover))
                    .chain(fresh)
                    .collect();
                for (range, target, handover) in pieces {
                    match target {
                        Some(to) => failover.push(Failover {
                            category: cat.name.clone(),
                            start: range.start,
                            end: range.end,
                            from: run.instance.clone(),
                            to,
                            handover,
                        }),
                        None => problems.push(Problem::NoFallback {
                            category: cat.name.clone(),
                            instance: run.instance.clone(),
                        }),
                    }
                }
            }
        }
    }
    // A replicated category's failover entries stay too when no data moves: its data is on
    // the replica that serves it, and the returning owner becomes that range's replica
    // (`replicas`), never its server again with what it held before.
    {
        // Whole, whatever placement wants for their ranges now: placement may give part of a
        // recovered owner's range to an instance that joined, but the owner keeps it until a
        // rebalance moves it (`rebalance::hold_back`), and the data written to the fallback
        // meanwhile stays reachable only through these entries, until the failback moves it.
        // (Kept only where the owner still owned the whole entry, they went when an instance
        // joined, and the fallback's copies were freed: chaos seed 8, 103 writes lost.) An
        // owner that came back draining keeps them too: hold_back keeps it as the owner, so
        // the writes of the outage fail back to it before the drain moves them on.
        // A replicated range's target that answers without its data is dead to it.
        let target_holds = |f: &Failover| {
            by_name.get(f.to.as_str()).is_some_and(|i| {
                i.phase.serves_traffic() && !(i.lost_data && replicated(&f.category))
            })
        };
        // A `Sync` range whose owner is back and is its seeded replica ends by swapping roles
        // (`replicas::owner_return`): the owner serves it again, and its server becomes the
        // replica (`replicas`), rebalancing on or off. No data moves.
        // Only where the owner keeps the whole range in this build (placement may hand part
        // of it to another instance, with rebalancing off): elsewhere the entry stays, and ends
        // by the usual rules later.
        // With rebalancing on, the owners of `previous` stay wherever placement would move
        // data off a serving instance (`rebalance::hold_back`): an owner that owns the whole
        // range there keeps it whatever placement asks (a handover's target off the category's
        // tier, say).
        let owned_whole = |slots: &[SlotOwner], f: &Failover| {
            slots.iter().any(|o| {
                o.instance == f.from && o.range.contains(f.start) && o.range.contains(f.end)
            })
        };
        let swapped = |f: &Failover| {
            swaps.contains(f)
                && (categories
                    .iter()
                    .any(|(c, ..)| c.name == f.category && owned_whole(&c.slots, f))
                    || (sticky
                        && previous
                            .and_then(|p| p.category(&f.category))
                            .is_some_and(|c| owned_whole(&c.slots, f))))
        };
        failover.extend(
            prev_failover
                .iter()
                .filter(|f| {
                    (sticky || replicated(&f.category))
                        && categories.iter().any(|(c, ..)| c.name == f.category)
                        && by_name
                            .get(f.from.as_str())
                            .is_some_and(|o| o.phase.serves_traffic())
                        && target_holds(f)
                        && !swapped(f)
                })
                .cloned(),
        );
        // A replicated range whose failover target died in turn (or lost its data), its owner
        // back: it goes to the replica the previous table named for it (it holds the outage's
        // writes), not to the owner — unless the owner is that replica (then the entry simply
        // ends).
        for f in prev_failover.iter().filter(|f| {
            replicated(&f.category)
                && categories.iter().any(|(c, ..)| c.name == f.category)
                && by_name
                    .get(f.from.as_str())
                    .is_some_and(|o| o.phase.serves_traffic())
                && !target_holds(f)
        }) {
            let before: Option<&[Option<&str>]> = replicas_before
                .entry(f.category.as_str())
                .or_insert_with(|| previous.map(|t| replicas::promotion_order(t, &f.category)))
                .as_deref();
            // The owner may come first (it was the outgoing replica of a replica that moved):
            // then it is the one to serve, and the entry ends for those slots.
            let usable = |r: &str| r != f.to && by_name.get(r).is_some_and(|i| i.promotable());
            for (range, to) in by_replica(f.range(), before, usable) {
                if let Some(to) = to.filter(|to| *to != f.from) {
                    // A handover whose source died stays one, from the copy that serves now:
                    // its target was never routed the range, and still takes it over by a swap
                    // (or is given back to that copy).
                    failover.push(Failover {
                        category: f.category.clone(),
                        start: range.start,
                        end: range.end,
                        from: f.from.clone(),
                        to,
                        handover: f.handover,
                    });
                }
            }
        }
    }
    let mut problems_dedup = Vec::new();
    for p in problems {
        if !problems_dedup.contains(&p) {
            problems_dedup.push(p);
        }
    }

    let bases: Vec<BTreeMap<String, u64>> = categories.iter().map(|(_, b, ..)| b.clone()).collect();
    let categories: Vec<Category> = categories.into_iter().map(|(c, ..)| c).collect();
    let mut referenced: BTreeSet<&str> = BTreeSet::new();
    for c in &categories {
        referenced.extend(c.slots.iter().map(|o| o.instance.as_str()));
    }
    referenced.extend(failover.iter().map(|f| f.to.as_str()));
    let table = RoutingTable {
        schema_version: SCHEMA_VERSION,
        version: previous.map_or(0, |t| t.version),
        policy: policy.to_owned(),
        instances: referenced
            .iter()
            .filter_map(|n| {
                by_name
                    .get(n)
                    .map(|i| ((*n).to_owned(), i.endpoint.clone()))
            })
            .collect(),
        categories,
        migrating: Vec::new(),
        failover,
        placement_bases: Vec::new(),
        strategy: Some(spec.balancing.strategy.as_str().to_owned()),
    };
    let mut table = table;
    for (i, basis) in bases.into_iter().enumerate() {
        table.set_basis(i, basis);
    }
    Planned {
        table: Some(table),
        problems: problems_dedup,
    }
}

/// Of the swaps `ready` ([`replicas::ready_swaps`]), those that the build would end: where
/// the owner keeps the whole range (placement may hand part of it to another instance). Only
/// these are worth fencing a server for.
pub fn swaps_that_end(
    policy: &str,
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: Option<&RoutingTable>,
    moving: bool,
    ready: Vec<Failover>,
) -> Vec<Failover> {
    let Some(table) = plan_routing_with(policy, spec, instances, previous, moving, &ready).table
    else {
        return Vec::new();
    };
    ready
        .into_iter()
        .filter(|f| !table.failover.contains(f))
        .collect()
}

/// Where the data of `previous`'s unreachable owners is: its failover entries, the failbacks
/// that stand in for them ([`failovers_in`]), and — for a migration whose source is dead and
/// whose target serves — the target, which holds what moved and what was written since.
pub fn data_elsewhere(previous: &RoutingTable, views: &[InstanceView]) -> Vec<Failover> {
    let by_name: BTreeMap<&str, &InstanceView> =
        views.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut out = failovers_in(Some(previous), &by_name);
    for m in &previous.migrating {
        let dead = by_name
            .get(m.from.as_str())
            .is_none_or(|v| v.phase == InstancePhase::Unreachable);
        if dead && by_name.get(m.to.as_str()).is_some_and(|v| v.serving()) {
            out.push(Failover {
                category: m.category.clone(),
                start: m.start,
                end: m.end,
                from: m.from.clone(),
                to: m.to.clone(),
                handover: false,
            });
        }
    }
    out
}

/// The failover entries of `previous`, and the ones its failbacks stand in for: while a
/// failback migrates, the table carries its ranges as `migrating` (from the failover target
/// back to the owner) instead of their failover entries. Should it end without finishing
/// (rolled back, or its owner lost again), its ranges stay where their data is, on the
/// failover target. A migration to the range's owner is a failback when it records that its
/// target did not serve the range; one of an older operator's tables, when its source is not
/// a draining instance that owns nothing (the old single Redis being emptied) — a guess that
/// takes a draining fallback's failback for such a move.
fn failovers_in(
    previous: Option<&RoutingTable>,
    by_name: &BTreeMap<&str, &InstanceView>,
) -> Vec<Failover> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut out = previous.failover.clone();
    for m in &previous.migrating {
        let Some(cat) = previous.category(&m.category) else {
            continue;
        };
        let owned_by_target = cat
            .slots
            .iter()
            .any(|o| o.instance == m.to && o.range.contains(m.start) && o.range.contains(m.end));
        let target_served = m.target_serves.unwrap_or_else(|| {
            by_name.get(m.from.as_str()).is_some_and(|i| i.drain) && !previous.owns_any(&m.from)
        });
        if owned_by_target && !target_served {
            out.push(Failover {
                category: m.category.clone(),
                start: m.start,
                end: m.end,
                from: m.to.clone(),
                to: m.from.clone(),
                handover: false,
            });
        }
    }
    out
}

/// `run` (owned by an unreachable instance) cut where the previous table migrated parts of it
/// away: each piece, with the migration's target when that target serves.
fn handoff_pieces(
    category: &str,
    run: &SlotOwner,
    previous: Option<&RoutingTable>,
    by_name: &BTreeMap<&str, &InstanceView>,
) -> Vec<(SlotRange, Option<String>)> {
    let mut handoffs: Vec<(SlotRange, String)> = previous
        .map(|t| t.migrating.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|m| {
            m.category == category
                && m.from == run.instance
                && by_name.get(m.to.as_str()).is_some_and(|i| i.serving())
        })
        .filter_map(|m| {
            let start = m.start.max(run.range.start);
            let end = m.end.min(run.range.end);
            (start <= end).then(|| (SlotRange::new(start, end), m.to.clone()))
        })
        .collect();
    handoffs.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::new();
    let mut next = run.range.start;
    for (r, to) in handoffs {
        if r.start < next {
            continue;
        }
        if r.start > next {
            out.push((SlotRange::new(next, r.start - 1), None));
        }
        out.push((r, Some(to)));
        if r.end >= run.range.end {
            return out;
        }
        next = r.end + 1;
    }
    out.push((SlotRange::new(next, run.range.end), None));
    out
}

/// `range` cut where the replica to promote changes: each piece with its slots'
/// [`replicas::promotion_order`] replica if `usable` accepts it.
fn by_replica(
    range: SlotRange,
    replicas: Option<&[Option<&str>]>,
    usable: impl Fn(&str) -> bool,
) -> Vec<(SlotRange, Option<String>)> {
    let Some(replicas) = replicas else {
        return vec![(range, None)];
    };
    let of = |slot: u16| {
        replicas[usize::from(slot)]
            .filter(|r| usable(r))
            .map(str::to_owned)
    };
    let mut out: Vec<(SlotRange, Option<String>)> = Vec::new();
    for slot in range.start..=range.end {
        let replica = of(slot);
        match out.last_mut() {
            Some((r, last)) if *last == replica => r.end = slot,
            _ => out.push((SlotRange::new(slot, slot), replica)),
        }
    }
    out
}

/// Past this share of its capacity an instance is a fallback of last resort: the failed
/// instance's writes would soon be refused there (`-OOM`).
const FALLBACK_FULL_PERCENT: u64 = 90;

/// A serving instance to take over `range` of `category` from the unreachable `owner`: of the
/// category's fallback tier, else of its own tier, else any — in each, one with room before
/// one that is nearly full, and one not draining before one that is.
fn choose_fallback(
    category: &str,
    range: SlotRange,
    owner: &InstanceView,
    fallback_tier: &Option<String>,
    tier: &Option<String>,
    instances: &[InstanceView],
    share: &dyn Fn(&InstanceView) -> u64,
) -> Option<String> {
    let alive =
        |i: &&InstanceView| i.serving() && i.name != owner.name && i.capacity_bytes.is_some();
    let roomy = |i: &&InstanceView| {
        let capacity = i.capacity_bytes.unwrap_or(0);
        i.used_bytes.saturating_mul(100) < capacity.saturating_mul(FALLBACK_FULL_PERCENT)
    };
    let pick = |pool: Vec<&InstanceView>| -> Option<String> {
        if pool.is_empty() {
            return None;
        }
        let cands: Vec<Candidate> = pool
            .iter()
            .map(|i| Candidate {
                name: i.name.clone(),
                share: share(i).max(1),
            })
            .collect();
        let key = format!("{category}/{}", range.start);
        Some(placement::rendezvous_winner(&key, &cands).to_owned())
    };
    fn prefer_not_draining(pool: Vec<&InstanceView>) -> Vec<&InstanceView> {
        let fresh: Vec<&InstanceView> = pool.iter().copied().filter(|i| !i.drain).collect();
        if fresh.is_empty() { pool } else { fresh }
    }
    let in_fallback_tier = |i: &&InstanceView| {
        fallback_tier.is_some() && i.tier.as_deref() == fallback_tier.as_deref()
    };
    let in_tier = |i: &&InstanceView| tier.is_none() || i.tier == *tier;
    let pools: [&dyn Fn(&&InstanceView) -> bool; 3] = [&in_fallback_tier, &in_tier, &|_| true];
    for with_room in [true, false] {
        for in_pool in pools {
            let pool: Vec<&InstanceView> = instances
                .iter()
                .filter(alive)
                .filter(|i| in_pool(i))
                .filter(|i| !with_room || roomy(i))
                .collect();
            if let Some(t) = pick(prefer_not_draining(pool)) {
                return Some(t);
            }
        }
    }
    None
}

/// Per instance, the (category, range) pairs it serves in `table` (owned and not failed
/// over, taken over by failover, or either end of a migrating range).
pub fn served_ranges(table: &RoutingTable) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    // instance → category → served ranges (unsorted, may touch or overlap). Borrowed names
    // and ranges, not a slot bitmap nor an owned name per slot: a policy reconcile calls this
    // on every table, and at 1 000 instances × 50 categories the bitmaps took 84 MB and the
    // names 800 000 allocations a call (most of the operator's CPU and heap fragmentation).
    let mut served: BTreeMap<&str, BTreeMap<&str, Vec<SlotRange>>> = BTreeMap::new();
    let mut mark = |instance, category, range| {
        served
            .entry(instance)
            .or_default()
            .entry(category)
            .or_default()
            .push(range);
    };
    for cat in &table.categories {
        let mut owners = cat.owners();
        for f in table.failover.iter().filter(|f| f.category == cat.name) {
            for slot in f.start..=f.end {
                if owners[usize::from(slot)] == f.from {
                    owners[usize::from(slot)] = f.to.as_str();
                }
            }
        }
        for (range, instance) in runs(&owners) {
            mark(instance, cat.name.as_str(), range);
        }
    }
    for m in &table.migrating {
        for instance in [&m.from, &m.to] {
            mark(instance, &m.category, SlotRange::new(m.start, m.end));
        }
    }
    served
        .into_iter()
        .map(|(instance, cats)| {
            let ranges = cats
                .into_iter()
                .flat_map(|(cat, ranges)| {
                    merged(ranges).into_iter().map(move |r| (cat.to_owned(), r))
                })
                .collect();
            (instance.to_owned(), ranges)
        })
        .collect()
}

/// Per instance, the (category, range) pairs whose keys it holds as live data in `table`: what
/// it serves ([`served_ranges`]) and what it holds as a replica.
pub fn held_ranges(table: &RoutingTable) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let mut held = served_ranges(table);
    for cat in &table.categories {
        for run in cat
            .replication
            .iter()
            .flat_map(|r| r.replicas.iter().chain(&r.outgoing))
        {
            held.entry(run.instance.clone())
                .or_default()
                .push((cat.name.clone(), run.range));
        }
    }
    for ranges in held.values_mut() {
        ranges.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    }
    held
}

/// `ranges` as the maximal runs of the slots they cover, in slot order.
fn merged(mut ranges: Vec<SlotRange>) -> Vec<SlotRange> {
    ranges.sort_unstable();
    let mut out: Vec<SlotRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// The ranges whose stale copies must be deleted from each instance before `next` is
/// published: what it holds in `next` ([`held_ranges`]: serves, or replicates) but did not
/// hold in `previous`, except the source of a range migrating in `next`, which holds the very
/// data being moved (a draining legacy Redis enters the table that way). A seeded replica that
/// serves its range after a failover held it before: its copies are the range's data (a
/// seeding one's are not: [`replica_copies_kept`]).
pub fn stale_before_publishing(
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let mut before = previous.map(served_ranges).unwrap_or_default();
    if let Some(previous) = previous {
        for (instance, ranges) in replica_copies_kept(previous, next) {
            before.entry(instance).or_default().extend(ranges);
        }
    }
    for m in &next.migrating {
        before
            .entry(m.from.clone())
            .or_default()
            .push((m.category.clone(), SlotRange::new(m.start, m.end)));
    }
    difference(&held_ranges(next), &before)
}

/// The replica copies of `previous` (of its replicas and outgoing replicas) that are the
/// range's data in `next` too: all of them, except
/// - on an instance that `next` makes the slot's *owner* by a change of placement (with
///   rebalancing off, ownership changes move no data; an `async` or seeding replica's copies
///   may be older than what the owner acknowledged, so they are purged, as any new owner's
///   are);
/// - on a *seeding* replica that serves the slot in `next` in any way (a fallback chosen for
///   it, the returned owner whose failover target died, or a move's target, which serves
///   what has moved and takes the range should the source die): a seeding replica may hold older
///   values than the ones acknowledged ([`replicas::promotion_order`]), and a range served
///   from partial, stale copies answers stale reads. It starts empty instead.
///
/// A seeded replica that serves the slot through a failover entry, or as the owner whose entry
/// ended (the server died, the owner was its replica; or the two swapped roles), keeps them:
/// they are the range's data.
fn replica_copies_kept(
    previous: &RoutingTable,
    next: &RoutingTable,
) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let mut out: BTreeMap<String, Vec<(String, SlotRange)>> = BTreeMap::new();
    for cat in &previous.categories {
        let Some(r) = &cat.replication else { continue };
        let owners_before = cat.owners();
        let owners_after = next.category(&cat.name).map(Category::owners);
        let servers_after = replicas::servers(next, &cat.name);
        let seeding_before = replicas::replicas_of(previous, &cat.name);
        for run in r.replicas.iter().chain(&r.outgoing) {
            let x = run.instance.as_str();
            let mut start: Option<u16> = None;
            let mut flush = |start: &mut Option<u16>, end: u16| {
                if let Some(st) = start.take() {
                    out.entry(x.to_owned())
                        .or_default()
                        .push((cat.name.clone(), SlotRange::new(st, end)));
                }
            };
            for slot in run.range.start..=run.range.end {
                let i = usize::from(slot);
                let made_owner = owners_after
                    .as_ref()
                    .is_some_and(|a| a[i] == x && owners_before[i] != x);
                let seeding_serves = seeding_before[i] == (Some(x), true)
                    && (servers_after.get(i).is_some_and(|s| *s == x)
                        || next.migrating.iter().any(|m| {
                            m.category == cat.name && m.to == x && m.start <= slot && slot <= m.end
                        }));
                match (made_owner || seeding_serves, start) {
                    (false, None) => start = Some(slot),
                    (true, Some(_)) => flush(&mut start, slot - 1),
                    _ => {}
                }
            }
            flush(&mut start, run.range.end);
        }
    }
    out
}

/// What each instance holds in `next` but did not hold in `previous` ([`held_ranges`]).
pub fn newly_held(
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let before = previous.map(held_ranges).unwrap_or_default();
    difference(&held_ranges(next), &before)
}

/// What each instance serves in `next` but did not serve in `previous`.
pub fn newly_served(
    previous: Option<&RoutingTable>,
    next: &RoutingTable,
) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let before = previous.map(served_ranges).unwrap_or_default();
    difference(&served_ranges(next), &before)
}

/// Per instance, the ranges of `after` not covered by `before`.
fn difference(
    after: &BTreeMap<String, Vec<(String, SlotRange)>>,
    before: &BTreeMap<String, Vec<(String, SlotRange)>>,
) -> BTreeMap<String, Vec<(String, SlotRange)>> {
    let mut out = BTreeMap::new();
    for (instance, ranges) in after {
        let had: BTreeMap<&str, Vec<bool>> = {
            let mut m: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
            for (cat, r) in before.get(instance).map(Vec::as_slice).unwrap_or_default() {
                let bits = m
                    .entry(cat.as_str())
                    .or_insert_with(|| vec![false; usize::from(SLOT_COUNT)]);
                for s in r.start..=r.end {
                    bits[usize::from(s)] = true;
                }
            }
            m
        };
        let mut fresh: Vec<(String, SlotRange)> = Vec::new();
        for (cat, r) in ranges {
            let bits = had.get(cat.as_str());
            let mut start: Option<u16> = None;
            for s in r.start..=r.end {
                let new = bits.is_none_or(|b| !b[usize::from(s)]);
                match (new, start) {
                    (true, None) => start = Some(s),
                    (false, Some(st)) => {
                        fresh.push((cat.clone(), SlotRange::new(st, s - 1)));
                        start = None;
                    }
                    _ => {}
                }
            }
            if let Some(st) = start {
                fresh.push((cat.clone(), SlotRange::new(st, r.end)));
            }
        }
        if !fresh.is_empty() {
            out.insert(instance.clone(), fresh);
        }
    }
    out
}

pub mod handovers;
pub mod replicas;

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
mod tests;
