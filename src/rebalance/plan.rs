//! Rebalance planning (pure): which slot ranges of which categories move from which instance
//! to which, given the published table, the placement the policy asks for, how full the
//! instances are and how their memory splits over the categories.
//!
//! # The goal: every instance within a band around the fleet's mean
//!
//! The fleet's mean is the policy's bytes over the capacity of the instances that may hold
//! them (serving, not draining, capacity known). Whatever made the plan — an instance past
//! the capacity threshold, a join, a drain, a change of weight or tier — it ends with every
//! such instance's used share within ±[`BAND_POINTS`] points of that mean (±
//! [`FORCED_BAND_POINTS`] when forced by the `rebalance-now` annotation), never above the
//! threshold, as far as the tier rules allow; and it moves close to the least that gets
//! there: the planner first finds the least movement that reaches the band, then aims a
//! little inside it (down to half its width) only while that costs at most
//! [`MARGIN_BUDGET`] × the least, so that sampling errors do not leave an instance just
//! outside. [`Balance`] reports both numbers.
//!
//! # The tier rules
//!
//! 1. **Home.** A category's home is the instances of its `tier` (no tier: every instance;
//!    a tier with no usable instance: its `fallbackTier`'s, else every instance — as
//!    placement does). Moves go home first.
//! 2. **Overflow.** Bytes may overflow onto the category's `fallbackTier` when home cannot
//!    hold them within the band — to relieve a full home, or to fill an instance of the
//!    fallback tier that is below the band.
//! 3. **Return.** Overflow is moved back home when room appears there (a join on its tier, a
//!    drain elsewhere, a home that emptied): whenever the plan must fill a home instance,
//!    the category's overflow is the first thing it takes — but it never moves data onto an
//!    instance that ends above the band, and it moves back only what the band needs.
//! 4. **Must leave.** Slots of a draining instance all move (even past a target's threshold
//!    if nothing else can take them — but never past [`DRAIN_LIMIT_PERCENT`] of a target's
//!    capacity: a drain that finds no room waits, its instance serving the range, and the
//!    plan's reason says so); a category found on an instance outside both its tiers (its tier changed)
//!    moves to them unless that would push them past the threshold.
//! 5. **Last resort.** Onto any other instance only to bring an instance under the capacity
//!    threshold when neither tier can.
//! 6. **Replicas.** The copies an instance holds as the replica of slots served elsewhere
//!    (`docs/replication.md`) are sampled apart and stay where they are: they are part of its
//!    used memory, not of any group that moves. A replicated range moving onto its replica
//!    fills nothing (the target holds the data already) and frees the holder only until the
//!    range gets a replica again — so balance never moves a range there; slots that must
//!    leave (a drain, a tier change) may go there, at no cost to the target's room.
//! 7. **Never onto a full instance.** Nothing moves onto an instance that is above its
//!    threshold before the plan, and nothing leaves an instance above
//!    [`DRAIN_LIMIT_PERCENT`] of its capacity (or its threshold, if higher).
//!
//! Among equally small plans the planner prefers slots that placement assigns to the target
//! ([`PlanInput::desired`]), so that later placements do not move them again.
//!
//! # When a plan is made
//!
//! When an instance is above the threshold, when forced, when slots must leave (a drain, a
//! tier change), or when placement differs from the owners (a join, a drain, a weight change,
//! overflow waiting to return) *and* some instance is outside the band. A fleet inside the
//! band whose placement differs follows placement only when that is cheap — at most
//! [`CHEAP_PLACEMENT_PERCENT`] of its capacity, no instance pushed farther from the mean
//! than half the band (or than it was), so that no balance plan can follow to move it back:
//! a newcomer to an empty fleet takes its slots at once — and otherwise moves nothing; so
//! does a fleet outside the band with nothing that triggers (it is rebalanced when an
//! instance passes the threshold).
//!
//! # How
//!
//! Bytes per slot come from per-category samples of each instance (keys spread evenly over
//! slots, since CRC16 does): the samples' bytes are what a move takes along; the rest of the
//! instance's used memory (the server's own, the key tables, buffers) stays where it is.
//! Without samples, an instance's memory is spread evenly over the slots it owns. The plan itself is the cheapest flow of bytes
//! from (category, holder) groups to the instances that end up holding them (`balance`,
//! `flow`): penalties per byte for a drain left behind, bytes over a threshold, bytes outside
//! the band, in that order, and a cost per byte moved, slightly lower for a return home or a
//! slot going to its placement owner, slightly higher onto a fallback tier. The flow is then
//! turned back into slot ranges.

use std::collections::BTreeMap;

use crate::routing::slots::{SlotRange, runs};
use crate::routing::table::{CategoryReplication, RoutingTable};

mod balance;
mod flow;

/// Half-width of the balance band, in percentage points of capacity around the fleet's mean.
pub const BAND_POINTS: u32 = 10;

/// A fleet within the band whose placement changed (a join, a weight) follows placement
/// anyway when that moves at most this share of its capacity, in percent: a newcomer to an
/// empty or nearly empty fleet takes its slots at once, at no cost, instead of a larger move
/// once the fleet has filled.
pub const CHEAP_PLACEMENT_PERCENT: u64 = 1;

/// Half-width of the band a forced plan (`redisfleet.io/rebalance-now`) aims at.
pub const FORCED_BAND_POINTS: u32 = 5;

/// A plan may aim inside the band (for a margin against sampling errors) while it moves at
/// most this many times the least that reaches the band.
pub const MARGIN_BUDGET: f64 = 1.15;

/// How full a plan may leave an instance at all, in percent of its capacity (or the
/// threshold, if higher): a little room under `maxmemory` for the writes that arrive
/// meanwhile. A drain that finds no room below it waits, its instance serving the range.
pub const DRAIN_LIMIT_PERCENT: u32 = 95;

/// What the planner knows about an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceLoad {
    /// RedisInstance name.
    pub name: String,
    /// Tier label.
    pub tier: Option<String>,
    /// Effective capacity in bytes.
    pub capacity: u64,
    /// Used memory in bytes.
    pub used: u64,
    /// Reachable and serving.
    pub serving: bool,
    /// `spec.drain`.
    pub drain: bool,
}

/// Tier preferences of a category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryTiers {
    /// Category name.
    pub name: String,
    /// Its tier.
    pub tier: Option<String>,
    /// Its fallback tier.
    pub fallback_tier: Option<String>,
}

/// One slot range moving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Category name.
    pub category: String,
    /// The slots.
    pub range: SlotRange,
    /// Source instance.
    pub from: String,
    /// Target instance.
    pub to: String,
    /// Estimated bytes.
    pub bytes: u64,
}

/// A rebalance plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The moves, in execution order.
    pub moves: Vec<Move>,
    /// Why, for status and Events.
    pub reason: String,
    /// The instances before and after, against the band.
    pub balance: Balance,
}

/// How full the instances are before and after a plan, against the band.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Balance {
    /// The fleet's mean used share (0–1).
    pub mean: f64,
    /// Half-width of the band (0.10 for ±10 points).
    pub band: f64,
    /// Half-width the plan aimed at (≤ `band`).
    pub aim: f64,
    /// The capacity threshold (0–1).
    pub threshold: f64,
    /// The least bytes that reach the band, as far as the tier rules allow (estimate).
    pub least_bytes: u64,
    /// Bytes the plan moves (estimate).
    pub planned_bytes: u64,
    /// Every instance of the input, in input order.
    pub instances: Vec<InstanceBalance>,
}

/// One instance before and after a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceBalance {
    /// RedisInstance name.
    pub name: String,
    /// Capacity in bytes (0: unknown).
    pub capacity: u64,
    /// Used bytes now.
    pub before: u64,
    /// Used bytes once the plan is done (estimate; `before` without a plan).
    pub after: u64,
    /// Counts toward the mean and may receive data: serving, not draining, capacity known.
    pub in_fleet: bool,
    /// Serving (reachable).
    pub serving: bool,
    /// Draining.
    pub drain: bool,
}

impl InstanceBalance {
    /// `before` as a share of capacity.
    pub fn share_before(&self) -> Option<f64> {
        (self.capacity > 0).then(|| self.before as f64 / self.capacity as f64)
    }

    /// `after` as a share of capacity.
    pub fn share_after(&self) -> Option<f64> {
        (self.capacity > 0).then(|| self.after as f64 / self.capacity as f64)
    }
}

impl Balance {
    /// Lower edge of the band (share).
    pub fn lower(&self) -> f64 {
        (self.mean - self.band).max(0.0)
    }

    /// Upper edge of the band (share).
    pub fn upper(&self) -> f64 {
        self.mean + self.band
    }

    /// Fleet instances outside the band, before (`after == false`) or after the plan.
    pub fn outside(&self, after: bool) -> Vec<&InstanceBalance> {
        // A rounding hair is not "outside".
        let slack = 0.000_5;
        self.instances
            .iter()
            .filter(|i| i.in_fleet)
            .filter(|i| {
                let share = if after {
                    i.share_after()
                } else {
                    i.share_before()
                };
                share.is_some_and(|s| s < self.lower() - slack || s > self.upper() + slack)
            })
            .collect()
    }
}

/// What the planner makes of the input: the plan if one is due, and the balance either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The plan; `None` when nothing is due or nothing can move.
    pub plan: Option<Plan>,
    /// The plan's balance, or the current one (after = before) without a plan.
    pub balance: Balance,
    /// Why there is no plan (empty with a plan).
    pub idle: String,
}

/// Inputs of the planner.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The published table (current owners).
    pub current: &'a RoutingTable,
    /// The table the placement asks for (same categories); `None` when it equals `current`.
    pub desired: Option<&'a RoutingTable>,
    /// The instances of the policy.
    pub instances: &'a [InstanceLoad],
    /// Sampled bytes of each (category, instance).
    pub category_bytes: &'a BTreeMap<(String, String), u64>,
    /// Tier preferences of every category.
    pub categories: &'a [CategoryTiers],
    /// `capacityThreshold` in percent.
    pub threshold_percent: u32,
    /// Balance even when nothing else triggers, within the tighter forced band (the
    /// `rebalance-now` annotation).
    pub force: bool,
}

/// Plans the moves; `None` when nothing needs to move. A steady fleet (every reconcile asks)
/// is told cheaply, without building the planner's view ([`nothing_to_plan`]).
pub fn plan(input: &PlanInput<'_>) -> Option<Plan> {
    if nothing_to_plan(input) {
        return None;
    }
    assess(input).plan
}

/// Whether [`plan`] would find nothing to do, told cheaply (from the instances and the
/// table's slot runs): placement asks for no change, no instance is past the threshold, no
/// slot must leave its instance (a drain, a tier change), nothing is forced.
pub fn nothing_to_plan(input: &PlanInput<'_>) -> bool {
    let placed = input.desired.is_none_or(|desired| {
        desired.categories.iter().all(|c| {
            input
                .current
                .category(&c.name)
                .is_none_or(|now| now.slots == c.slots)
        })
    });
    let below = input.instances.iter().all(|i| {
        !(i.serving && !i.drain && i.capacity > 0)
            || i.used as f64 <= f64::from(input.threshold_percent) / 100.0 * i.capacity as f64
    });
    placed && below && !input.force && !balance::must_leave(input)
}

/// Plans the moves and reports the balance before and after (see the module docs).
pub fn assess(input: &PlanInput<'_>) -> Assessment {
    balance::assess(input)
}

/// Estimated bytes per slot of each (category, instance) that owns slots in `input.current`:
/// its sampled bytes (scaled down to the instance's used memory when the samples overshoot
/// it), else the instance's used memory spread evenly over the slots it owns. What the
/// samples do not see — the server's own memory, the key tables, buffers — does not move
/// with slots: measured, a source sheds about its sampled bytes, not a share of its used
/// memory.
pub fn bytes_per_slot(input: &PlanInput<'_>) -> BTreeMap<(String, String), f64> {
    // Slots of each (category, instance), and of each instance over all categories.
    let mut slots: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &input.current.categories {
        for run in &c.slots {
            let n = run.range.len() as usize;
            *slots.entry((&c.name, &run.instance)).or_default() += n;
            *owned.entry(&run.instance).or_default() += n;
        }
    }
    let mut out = BTreeMap::new();
    for inst in input.instances {
        let sampled: u64 = input
            .category_bytes
            .iter()
            .filter(|((_, i), _)| *i == inst.name)
            .map(|(_, b)| *b)
            .sum();
        for ((cat, _), n) in slots.iter().filter(|((_, i), _)| *i == inst.name) {
            let per_slot = if sampled > 0 {
                let scale = (inst.used as f64 / sampled as f64).min(1.0);
                input
                    .category_bytes
                    .get(&((*cat).to_owned(), inst.name.clone()))
                    .map_or(0.0, |b| *b as f64 * scale / *n as f64)
            } else {
                let owned = owned.get(inst.name.as_str()).copied().unwrap_or(1);
                inst.used as f64 / owned.max(1) as f64
            };
            out.insert(((*cat).to_owned(), inst.name.clone()), per_slot);
        }
    }
    out
}

/// Estimated keys and bytes of one move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MoveEstimate {
    /// Keys (from the sampled keys of its category on its source).
    pub keys: u64,
    /// Bytes (as [`bytes_per_slot`] estimates them).
    pub bytes: u64,
}

/// Estimates the keys and bytes of `moves` from the planner's input and the sampled keys per
/// (category, instance). A move out of an instance that owns no slot of its category (a
/// legacy instance being emptied) takes the range's share of all its keys of the category.
pub fn estimate(
    input: &PlanInput<'_>,
    category_keys: &BTreeMap<(String, String), u64>,
    moves: &[Move],
) -> Vec<MoveEstimate> {
    let per_slot = bytes_per_slot(input);
    moves
        .iter()
        .map(|m| {
            let key = (m.category.clone(), m.from.clone());
            let len = u64::from(m.range.len());
            let owned = input
                .current
                .category(&m.category)
                .map_or(0, |c| c.owners().iter().filter(|o| **o == m.from).count())
                as u64;
            let share = |total: u64| {
                let of = if owned > 0 {
                    owned
                } else {
                    u64::from(crate::routing::slots::SLOT_COUNT)
                };
                (total as f64 * len.min(of) as f64 / of as f64).round() as u64
            };
            let bytes = match per_slot.get(&key) {
                Some(b) if owned > 0 => (b * len as f64).round() as u64,
                _ => share(input.category_bytes.get(&key).copied().unwrap_or(0)),
            };
            MoveEstimate {
                keys: share(category_keys.get(&key).copied().unwrap_or(0)),
                bytes,
            }
        })
        .collect()
}

/// What a key costs the instance it moves to beyond its sampled `MEMORY USAGE`, in bytes: the
/// target's main hash table grows (a bucket of 8 bytes per key, up to twice that right after
/// it doubles) and the allocator rounds the 24-byte entry up to 32; the source keeps its
/// buckets. Measured on Redis 7.0: restoring 16 000 keys of ~600 bytes grew the target's used
/// memory by 34 bytes per key more than their `MEMORY USAGE`; deleting them on the source
/// freed 4 more.
pub const KEY_TABLE_BYTES: u64 = 32;

/// How each instance's used memory changes once `moves` are done, as `estimates` (from
/// [`estimate`], in the same order) predict: a source gives up the sampled bytes, a target
/// gains them and [`KEY_TABLE_BYTES`] per key — except for the slots whose replica `table`
/// names the target ([`landing_share`]).
pub fn used_change(
    table: &RoutingTable,
    moves: &[Move],
    estimates: &[MoveEstimate],
) -> BTreeMap<String, i64> {
    let mut change: BTreeMap<String, i64> = BTreeMap::new();
    for (m, e) in moves.iter().zip(estimates) {
        let bytes = i64::try_from(e.bytes).unwrap_or(i64::MAX);
        let table_bytes = i64::try_from(e.keys.saturating_mul(KEY_TABLE_BYTES)).unwrap_or(i64::MAX);
        let lands = landing_share(table, m);
        *change.entry(m.from.clone()).or_default() -= bytes;
        *change.entry(m.to.clone()).or_default() +=
            (bytes.saturating_add(table_bytes) as f64 * lands).round() as i64;
    }
    change
}

/// The share of `m`'s slots (0–1) whose data the target does not hold yet: those `table`
/// does not name it the seeded replica of. A replicated range moving onto its replica
/// replaces the copy the target holds with the same data (`docs/replication.md`), so its
/// memory stays as it was — the move only swaps which instance serves the range. A replica
/// still being seeded may hold little of it: the move fills it as any other target.
pub fn landing_share(table: &RoutingTable, m: &Move) -> f64 {
    let Some(cat) = table.category(&m.category) else {
        return 1.0;
    };
    let onto_copy: u32 = cat
        .replication
        .iter()
        .flat_map(CategoryReplication::seeded)
        .filter(|(_, instance)| *instance == m.to)
        .filter_map(|(range, _)| range.intersection(&m.range))
        .map(|r| r.len())
        .sum();
    1.0 - f64::from(onto_copy) / f64::from(m.range.len().max(1))
}

/// Whether `to` already serves every slot of `range` of `category` in `table` (owner and not
/// failed over, or the failover target): its keys there are live, not stale, and a move into
/// it (emptying a legacy instance) must not purge them first. Once the move is flipped, what
/// its migration recorded ([`recorded_target_serves`]): a failback's flip table names its
/// target the owner of a range it did not serve.
pub fn target_serves(table: &RoutingTable, category: &str, range: SlotRange, to: &str) -> bool {
    if let Some(serves) = recorded_target_serves(table, category, range, to) {
        return serves;
    }
    let Some(cat) = table.category(category) else {
        return false;
    };
    let owners = cat.owners();
    (range.start..=range.end).all(|slot| {
        let owner = owners.get(usize::from(slot)).copied().unwrap_or_default();
        let redirected = table.failover.iter().find(|f| {
            f.category == category && f.from == owner && (f.start..=f.end).contains(&slot)
        });
        match redirected {
            Some(f) => f.to == to,
            None => owner == to,
        }
    })
}

/// What `table`'s migration of `range` of `category` into `to` records of its target serving
/// the range already, when one covers the range and records it.
fn recorded_target_serves(
    table: &RoutingTable,
    category: &str,
    range: SlotRange,
    to: &str,
) -> Option<bool> {
    table
        .migrating
        .iter()
        .find(|m| {
            m.category == category && m.to == to && m.start <= range.start && range.end <= m.end
        })
        .and_then(|m| m.target_serves)
}

/// Merges moves of the same category and direction whose ranges touch.
fn merge_adjacent(moves: Vec<Move>) -> Vec<Move> {
    let mut out: Vec<Move> = Vec::new();
    let mut sorted = moves;
    sorted.sort_by(|a, b| {
        (
            a.category.as_str(),
            a.from.as_str(),
            a.to.as_str(),
            a.range.start,
        )
            .cmp(&(
                b.category.as_str(),
                b.from.as_str(),
                b.to.as_str(),
                b.range.start,
            ))
    });
    for m in sorted {
        match out.last_mut() {
            Some(last)
                if last.category == m.category
                    && last.from == m.from
                    && last.to == m.to
                    && last.range.end + 1 == m.range.start =>
            {
                last.range.end = m.range.end;
                last.bytes += m.bytes;
            }
            _ => out.push(m),
        }
    }
    out
}

/// The table after `moves` completed: owners changed, nothing migrating.
pub fn apply_moves(table: &RoutingTable, moves: &[Move]) -> RoutingTable {
    let mut next = table.clone();
    for cat in &mut next.categories {
        let mut owners: Vec<String> = cat.owners().into_iter().map(str::to_owned).collect();
        for m in moves.iter().filter(|m| m.category == cat.name) {
            for slot in m.range.start..=m.range.end {
                owners[usize::from(slot)] = m.to.clone();
            }
        }
        cat.slots = runs(&owners)
            .into_iter()
            .map(|(range, instance)| crate::routing::table::SlotOwner { range, instance })
            .collect();
    }
    next.migrating.clear();
    next
}

#[cfg(test)]
mod tests;
