//! Rebalance planning (pure): which slot ranges of which categories move from which instance
//! to which, given the published table, the placement the policy asks for, and how full the
//! instances are.
//!
//! Two kinds of moves, in this order:
//! 1. **Placement**: slots whose owner differs from the placement (an instance joined,
//!    drains, or changed weight) move to their new owner — with their data, not by a bare
//!    re-route, since the source is alive.
//! 2. **Capacity**: while an instance is above the capacity threshold (or, when forced by the
//!    `rebalance-now` annotation, while utilisation is uneven), slots move from the fullest
//!    instance to the emptiest one that may hold its category: same tier first, then the
//!    category's fallback tier, then any instance of the policy. Moves aim at equal
//!    utilisation and never push a target above the threshold.
//!
//! Bytes per slot come from per-category samples of each instance (keys spread evenly over
//! slots, since CRC16 does); without samples, an instance's memory is spread evenly over the
//! slots it owns.

use std::collections::BTreeMap;

use crate::routing::slots::{SLOT_COUNT, SlotRange, runs};
use crate::routing::table::RoutingTable;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The moves, in execution order.
    pub moves: Vec<Move>,
    /// Why, for status and Events.
    pub reason: String,
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
    /// Balance even below the threshold (the `rebalance-now` annotation).
    pub force: bool,
}

/// Utilisation spread tolerated when forced, in percentage points.
const BALANCED_SPREAD: f64 = 0.05;

/// A placement move onto a serving instance's data must leave its target this far below the
/// threshold: slots a capacity move put on another tier go home only when home has room to
/// spare, so the two kinds of moves never chase each other.
const PLACEMENT_HEADROOM: f64 = 0.10;

/// At most this many capacity moves per plan (each is one slot range).
const MAX_CAPACITY_MOVES: usize = 64;

struct State {
    /// owners[category][slot]
    owners: BTreeMap<String, Vec<String>>,
    used: BTreeMap<String, f64>,
    bytes_per_slot: BTreeMap<(String, String), f64>,
}

impl State {
    /// Estimated bytes per slot of `category` on `instance` (0 when unknown).
    fn per_slot(&self, category: &str, instance: &str) -> f64 {
        self.bytes_per_slot
            .get(&(category.to_owned(), instance.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }

    fn slots_of(&self, category: &str, instance: &str) -> usize {
        self.owners
            .get(category)
            .map_or(0, |o| o.iter().filter(|x| *x == instance).count())
    }
}

/// Plans the moves; `None` when nothing needs to move.
pub fn plan(input: &PlanInput<'_>) -> Option<Plan> {
    if nothing_to_plan(input) {
        return None;
    }
    let by_name: BTreeMap<&str, &InstanceLoad> = input
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i))
        .collect();
    let mut state = State {
        owners: input
            .current
            .categories
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.owners().into_iter().map(str::to_owned).collect(),
                )
            })
            .collect(),
        used: input
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.used as f64))
            .collect(),
        bytes_per_slot: BTreeMap::new(),
    };
    // Bytes per slot of every (category, instance) that owns slots.
    for inst in input.instances {
        let owned: usize = state
            .owners
            .values()
            .map(|o| o.iter().filter(|x| **x == inst.name).count())
            .sum();
        let sampled: u64 = input
            .category_bytes
            .iter()
            .filter(|((_, i), _)| *i == inst.name)
            .map(|(_, b)| *b)
            .sum();
        for cat in state.owners.keys() {
            let slots = state.slots_of(cat, &inst.name);
            if slots == 0 {
                continue;
            }
            let per_slot = if sampled > 0 {
                // Samples give each category's share; the instance's used memory (which
                // also counts per-key overhead the samples miss) gives the amount.
                let scale = inst.used.max(sampled) as f64 / sampled as f64;
                input
                    .category_bytes
                    .get(&(cat.clone(), inst.name.clone()))
                    .map_or(0.0, |b| *b as f64 * scale / slots as f64)
            } else {
                inst.used as f64 / owned.max(1) as f64
            };
            state
                .bytes_per_slot
                .insert((cat.clone(), inst.name.clone()), per_slot);
        }
    }

    // Where every slot is now: the moves are planned step by step on `state`, then taken as
    // the difference between this and where the steps left each slot.
    let origin = state.owners.clone();
    let origin_bytes = state.bytes_per_slot.clone();
    let mut moves = Vec::new();
    let mut reasons = Vec::new();

    // 1. Placement moves.
    let mut waiting: Vec<String> = Vec::new();
    if let Some(desired) = input.desired {
        let mut placement_moves = 0;
        for cat in &desired.categories {
            let Some(current) = state.owners.get(&cat.name).cloned() else {
                continue;
            };
            let want = cat.owners();
            let mut pairs: Vec<(usize, String, String)> = Vec::new();
            for (slot, (now, to)) in current.iter().zip(want).enumerate() {
                let movable = now != to
                    && by_name.get(now.as_str()).is_some_and(|i| i.serving)
                    && by_name.get(to).is_some_and(|i| i.serving);
                if movable {
                    pairs.push((slot, now.clone(), to.to_owned()));
                }
            }
            for (range, (from, to)) in group_runs(&pairs) {
                let draining = by_name.get(from.as_str()).is_some_and(|i| i.drain);
                let to = if draining {
                    // A drain must happen, but never by filling an instance up: past
                    // `maxmemory` the application's writes there would be refused.
                    match drain_target(&state, input, &cat.name, range, &from, &to) {
                        Some(to) => to,
                        None => {
                            waiting.push(format!("{} {}-{}", cat.name, range.start, range.end));
                            continue;
                        }
                    }
                } else if fits(&state, input, &cat.name, range, &from, &to) {
                    to
                } else {
                    continue;
                };
                let bytes = transfer(&mut state, &cat.name, range, &from, &to);
                moves.push(Move {
                    category: cat.name.clone(),
                    range,
                    from,
                    to,
                    bytes,
                });
                placement_moves += 1;
            }
        }
        if placement_moves > 0 {
            reasons.push(
                "placement changed (an instance joined, drains or changed weight)".to_owned(),
            );
        }
        if !waiting.is_empty() {
            reasons.push(format!(
                "a drain waits for room (no instance would stay below {DRAIN_LIMIT_PERCENT}% of its capacity): {}",
                waiting.join(", ")
            ));
        }
    }

    // 2. Capacity moves.
    let threshold = f64::from(input.threshold_percent) / 100.0;
    let util = |state: &State, i: &InstanceLoad| {
        if i.capacity == 0 {
            0.0
        } else {
            state.used.get(&i.name).copied().unwrap_or(0.0) / i.capacity as f64
        }
    };
    let eligible: Vec<&InstanceLoad> = input
        .instances
        .iter()
        .filter(|i| i.serving && !i.drain && i.capacity > 0)
        .collect();
    let total_used: f64 = eligible.iter().map(|i| state.used[&i.name]).sum();
    let total_cap: f64 = eligible.iter().map(|i| i.capacity as f64).sum();
    if total_cap > 0.0 {
        let mean = total_used / total_cap;
        let over: Vec<String> = eligible
            .iter()
            .filter(|i| util(&state, i) > threshold)
            .map(|i| format!("{} at {:.0}%", i.name, (util(&state, i) * 100.0).floor()))
            .collect();
        if !over.is_empty() {
            reasons.push(format!(
                "above the {}% threshold: {}",
                input.threshold_percent,
                over.join(", ")
            ));
        } else if input.force {
            reasons.push("rebalance requested (redisfleet.io/rebalance-now)".to_owned());
        }
        let mut capacity_moves = 0;
        while capacity_moves < MAX_CAPACITY_MOVES {
            // The fullest instance that still needs relief.
            let Some(source) = eligible
                .iter()
                .filter(|i| {
                    let u = util(&state, i);
                    u > threshold || (input.force && u > mean + BALANCED_SPREAD)
                })
                .max_by(|a, b| util(&state, a).total_cmp(&util(&state, b)))
                .copied()
            else {
                break;
            };
            let excess = state.used[&source.name] - mean * source.capacity as f64;
            if excess <= 0.0 {
                break;
            }
            let Some(step) = best_step(&state, input, &eligible, source, excess, mean, threshold)
            else {
                break;
            };
            let (category, slots, target) = step;
            for (range, _) in take_highest(&state, &category, &source.name, slots) {
                let bytes = transfer(&mut state, &category, range, &source.name, &target);
                moves.push(Move {
                    category: category.clone(),
                    range,
                    from: source.name.clone(),
                    to: target.clone(),
                    bytes,
                });
            }
            capacity_moves += 1;
        }
    }

    if moves.is_empty() {
        return None;
    }
    let moves = net_moves(&origin, &state.owners, &origin_bytes);
    if moves.is_empty() {
        return None;
    }
    Some(Plan {
        moves: merge_adjacent(moves),
        reason: reasons.join("; "),
    })
}

/// Whether [`plan`] would find nothing to do, told cheaply (a steady fleet's every reconcile
/// asks): placement asks for no change, no instance is past the threshold, nothing is forced.
fn nothing_to_plan(input: &PlanInput<'_>) -> bool {
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
    placed && below && !input.force
}

/// The moves that take every slot from where it is (`origin`) straight to where the planned
/// steps left it (`planned`). A slot that one step handed to an instance and a later step moved
/// on (a drain that overfills its target) moves once, from its real owner — a move from the
/// intermediate instance would find none of its keys there and publish an owner without them.
/// A slot that went back where it was does not move.
fn net_moves(
    origin: &BTreeMap<String, Vec<String>>,
    planned: &BTreeMap<String, Vec<String>>,
    bytes_per_slot: &BTreeMap<(String, String), f64>,
) -> Vec<Move> {
    let mut out = Vec::new();
    for (category, before) in origin {
        let Some(after) = planned.get(category) else {
            continue;
        };
        let pairs: Vec<(usize, String, String)> = before
            .iter()
            .zip(after)
            .enumerate()
            .filter(|(_, (from, to))| from != to)
            .map(|(slot, (from, to))| (slot, from.clone(), to.clone()))
            .collect();
        for (range, (from, to)) in group_runs(&pairs) {
            let per_slot = bytes_per_slot
                .get(&(category.clone(), from.clone()))
                .copied()
                .unwrap_or(0.0);
            out.push(Move {
                category: category.clone(),
                range,
                bytes: (per_slot * f64::from(range.len())).max(0.0) as u64,
                from,
                to,
            });
        }
    }
    out
}

/// Whether `to` already serves every slot of `range` of `category` in `table` (owner and not
/// failed over, or the failover target): its keys there are live, not stale, and a move into
/// it (emptying a legacy instance) must not purge them first.
pub fn target_serves(table: &RoutingTable, category: &str, range: SlotRange, to: &str) -> bool {
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

/// How well `i` suits a category with `tiers`: 0 its tier (or any, for a category without
/// one), 1 its fallback tier, 2 neither (or an unknown category).
fn tier_preference(tiers: Option<&CategoryTiers>, i: &InstanceLoad) -> u8 {
    match tiers {
        Some(t) if t.tier.is_none() || i.tier == t.tier => 0,
        Some(t) if t.fallback_tier.is_some() && i.tier == t.fallback_tier => 1,
        _ => 2,
    }
}

/// How full a drain may leave an instance when no instance stays below the threshold: a
/// little room under `maxmemory` for the writes that arrive meanwhile.
const DRAIN_LIMIT_PERCENT: u32 = 95;

/// Where a draining instance's `range` of `category` goes: placement's choice `to` while it
/// stays below the threshold, else the emptiest instance of the category's tier (then its
/// fallback tier) that does, else `to` while it stays below [`DRAIN_LIMIT_PERCENT`]. `None`:
/// the range waits on the draining instance (which keeps serving it) until room appears.
fn drain_target(
    state: &State,
    input: &PlanInput<'_>,
    category: &str,
    range: SlotRange,
    from: &str,
    to: &str,
) -> Option<String> {
    let per_slot = state.per_slot(category, from);
    let amount = per_slot * f64::from(range.len());
    let below = |i: &InstanceLoad, percent: u32| {
        i.capacity > 0
            && state.used.get(&i.name).copied().unwrap_or(0.0) + amount
                <= f64::from(percent) / 100.0 * i.capacity as f64
    };
    let usable = |i: &&InstanceLoad| i.serving && !i.drain && i.name != from;
    if input
        .instances
        .iter()
        .filter(usable)
        .any(|i| i.name == to && below(i, input.threshold_percent))
    {
        return Some(to.to_owned());
    }
    let tiers = input.categories.iter().find(|t| t.name == category);
    let preference = |i: &InstanceLoad| tier_preference(tiers, i);
    let emptiest = input
        .instances
        .iter()
        .filter(usable)
        .filter(|i| preference(i) < 2 && below(i, input.threshold_percent))
        .min_by(|a, b| {
            preference(a).cmp(&preference(b)).then(
                (state.used[&a.name] / a.capacity as f64)
                    .total_cmp(&(state.used[&b.name] / b.capacity as f64)),
            )
        });
    if let Some(i) = emptiest {
        return Some(i.name.clone());
    }
    input
        .instances
        .iter()
        .filter(usable)
        .find(|i| i.name == to && below(i, DRAIN_LIMIT_PERCENT))
        .map(|i| i.name.clone())
}

/// Whether moving `range` of `category` leaves `to` below the threshold minus the placement
/// headroom (targets without a known capacity never fit).
fn fits(
    state: &State,
    input: &PlanInput<'_>,
    category: &str,
    range: SlotRange,
    from: &str,
    to: &str,
) -> bool {
    let Some(target) = input.instances.iter().find(|i| i.name == to) else {
        return false;
    };
    if target.capacity == 0 {
        return false;
    }
    let per_slot = state.per_slot(category, from);
    let after = state.used.get(to).copied().unwrap_or(0.0) + per_slot * f64::from(range.len());
    let limit = f64::from(input.threshold_percent) / 100.0 - PLACEMENT_HEADROOM;
    after <= limit * target.capacity as f64
}

/// The next capacity step out of `source`: (category, slots to move, target).
fn best_step(
    state: &State,
    input: &PlanInput<'_>,
    eligible: &[&InstanceLoad],
    source: &InstanceLoad,
    excess: f64,
    mean: f64,
    threshold: f64,
) -> Option<(String, usize, String)> {
    // Categories on the source, the largest first.
    let mut cats: Vec<(&String, f64)> = state
        .owners
        .keys()
        .filter_map(|c| {
            let per = *state
                .bytes_per_slot
                .get(&(c.clone(), source.name.clone()))?;
            let slots = state.slots_of(c, &source.name);
            (per > 0.0 && slots > 0).then_some((c, per * slots as f64))
        })
        .collect();
    cats.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (cat, _) in cats {
        let tiers = input.categories.iter().find(|t| &t.name == cat);
        let preference = |i: &InstanceLoad| tier_preference(tiers, i);
        let target = eligible
            .iter()
            .filter(|i| i.name != source.name)
            .filter(|i| {
                let used = state.used[&i.name];
                used / (i.capacity as f64) < mean.min(threshold)
            })
            .min_by(|a, b| {
                preference(a).cmp(&preference(b)).then(
                    (state.used[&a.name] / a.capacity as f64)
                        .total_cmp(&(state.used[&b.name] / b.capacity as f64)),
                )
            })?;
        // Never above the threshold, aiming at the mean.
        let room = mean.min(threshold) * target.capacity as f64 - state.used[&target.name];
        let per_slot = state.bytes_per_slot[&(cat.clone(), source.name.clone())];
        let amount = excess.min(room);
        if amount <= 0.0 {
            continue;
        }
        let slots = ((amount / per_slot).floor() as usize).min(state.slots_of(cat, &source.name));
        if slots == 0 {
            continue;
        }
        return Some((cat.clone(), slots, target.name.clone()));
    }
    None
}

/// The `count` highest-numbered slots of `category` on `instance`, as runs.
fn take_highest(
    state: &State,
    category: &str,
    instance: &str,
    count: usize,
) -> Vec<(SlotRange, ())> {
    let Some(owners) = state.owners.get(category) else {
        return Vec::new();
    };
    let mut mask = vec![false; usize::from(SLOT_COUNT)];
    let mut left = count;
    for slot in (0..owners.len()).rev() {
        if left == 0 {
            break;
        }
        if owners[slot] == instance {
            mask[slot] = true;
            left -= 1;
        }
    }
    runs(&mask)
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(r, _)| (r, ()))
        .collect()
}

/// Applies a move to the simulated state; returns its estimated bytes.
fn transfer(state: &mut State, category: &str, range: SlotRange, from: &str, to: &str) -> u64 {
    let per_slot = state.per_slot(category, from);
    let bytes = per_slot * f64::from(range.len());
    if let Some(owners) = state.owners.get_mut(category) {
        for slot in range.start..=range.end {
            owners[usize::from(slot)] = to.to_owned();
        }
    }
    *state.used.entry(from.to_owned()).or_default() -= bytes;
    *state.used.entry(to.to_owned()).or_default() += bytes;
    state
        .bytes_per_slot
        .entry((category.to_owned(), to.to_owned()))
        .or_insert(per_slot);
    bytes.max(0.0) as u64
}

/// Groups per-slot (from, to) pairs into contiguous ranges.
fn group_runs(pairs: &[(usize, String, String)]) -> Vec<(SlotRange, (String, String))> {
    let mut out: Vec<(SlotRange, (String, String))> = Vec::new();
    for (slot, from, to) in pairs {
        let slot = *slot as u16;
        match out.last_mut() {
            Some((r, (f, t))) if r.end + 1 == slot && f == from && t == to => r.end = slot,
            _ => out.push((SlotRange::new(slot, slot), (from.clone(), to.clone()))),
        }
    }
    out
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
