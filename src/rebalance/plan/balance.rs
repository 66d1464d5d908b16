//! The balance step of the planner: the fleet as groups of bytes — one per (category,
//! holder, replica of its slots) — the network whose cheapest flow is the plan, and that flow turned back into slot
//! ranges (see the parent module for the rules it encodes).

use std::collections::BTreeMap;

use super::flow::{Arc, Cost, Network};
use super::{
    Assessment, BAND_POINTS, Balance, CHEAP_PLACEMENT_PERCENT, DRAIN_LIMIT_PERCENT,
    FORCED_BAND_POINTS, InstanceBalance, InstanceLoad, MARGIN_BUDGET, Move, Plan, PlanInput,
    bytes_per_slot, landing_share, merge_adjacent,
};
use crate::routing::slots::SlotRange;
use crate::routing::table::RoutingTable;

// Costs per byte, in strict order of importance: each level outweighs any amount of the
// levels below it for the same bytes.
/// A byte of a draining instance left behind.
const MUST_LEAVE: Cost = 1_000_000_000_000;
/// A byte above an instance's capacity threshold.
const THRESHOLD: Cost = 10_000_000_000;
/// A byte above [`DRAIN_LIMIT_PERCENT`] of an instance's capacity (or its threshold, if
/// higher): dearer than a drain left behind, so a drain waits rather than fill an instance up —
/// past `maxmemory` the application's writes there would be refused (chaos seed 7).
const OVERFULL: Cost = 10 * MUST_LEAVE;
/// A byte moved onto an instance outside both tiers of its category (last resort), or left
/// on one (a tier change).
const OTHER_TIER: Cost = 100_000_000;
/// A byte outside the band.
const BAND: Cost = 1_000_000;
/// A byte moved.
const MOVE: Cost = 1_000;
/// Onto the fallback tier rather than home.
const FALLBACK_EXTRA: Cost = 1;
/// Onto the slot's placement owner.
const ALIGNED_BONUS: Cost = 1;
/// Overflow going back home.
const RETURN_BONUS: Cost = 2;

/// How far outside the band an instance must be for a placement change to trigger a plan:
/// whole slots leave a source a hair above the edge a plan aimed at, which is no reason for
/// another plan.
const TRIGGER_SLACK: f64 = 0.005;

/// Aims tried, as fractions of the band: the tightest within the margin budget wins.
const AIMS: [f64; 6] = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5];

/// How an instance suits a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Home,
    Fallback,
    Other,
}

/// Whether a group may stay where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stay {
    Free,
    /// Outside both tiers of its category.
    Misplaced,
    /// On a draining instance.
    Drain,
}

/// Where a category lives.
#[derive(Debug, Clone, Copy)]
enum Home<'i> {
    Anywhere,
    Tier {
        tier: &'i str,
        fallback: Option<&'i str>,
    },
}

impl Home<'_> {
    fn fit(&self, tier: Option<&str>) -> Fit {
        match *self {
            Home::Anywhere => Fit::Home,
            Home::Tier { tier: t, .. } if tier == Some(t) => Fit::Home,
            Home::Tier {
                fallback: Some(f), ..
            } if tier == Some(f) => Fit::Fallback,
            Home::Tier { .. } => Fit::Other,
        }
    }
}

/// Where `category` lives: its tier (and fallback tier) when `has_target` finds an instance
/// there that may hold data, else its fallback tier, else anywhere — as placement does.
fn home_of<'i>(
    input: &'i PlanInput<'i>,
    category: &str,
    has_target: impl Fn(&str) -> bool,
) -> Home<'i> {
    let tiers = input.categories.iter().find(|t| t.name == category);
    let tier = tiers.and_then(|t| t.tier.as_deref());
    let fallback = tiers.and_then(|t| t.fallback_tier.as_deref());
    match (tier, fallback) {
        (Some(t), fallback) if has_target(t) => Home::Tier { tier: t, fallback },
        (Some(_), Some(f)) if has_target(f) => Home::Tier {
            tier: f,
            fallback: None,
        },
        _ => Home::Anywhere,
    }
}

/// Whether slots must leave an instance whatever the balance: a serving draining instance
/// owns some, or a category has slots on an instance outside both its tiers. Told from the
/// table's slot runs, without the planner's view.
pub(super) fn must_leave(input: &PlanInput<'_>) -> bool {
    let by_name: BTreeMap<&str, &InstanceLoad> = input
        .instances
        .iter()
        .filter(|i| i.serving)
        .map(|i| (i.name.as_str(), i))
        .collect();
    let has_target = |tier: &str| {
        input
            .instances
            .iter()
            .any(|i| i.serving && !i.drain && i.capacity > 0 && i.tier.as_deref() == Some(tier))
    };
    input.current.categories.iter().any(|c| {
        let home = home_of(input, &c.name, has_target);
        c.slots.iter().any(|run| {
            by_name.get(run.instance.as_str()).is_some_and(|i| {
                i.drain || (i.capacity > 0 && home.fit(i.tier.as_deref()) == Fit::Other)
            })
        })
    })
}

/// A serving instance.
struct Member<'i> {
    load: &'i InstanceLoad,
    /// May receive data and counts toward the mean: not draining, capacity known.
    target: bool,
}

/// The bytes of one category on one member: its slots, moved as a whole or in part.
struct Group {
    category: String,
    holder: usize,
    /// The member the table names the replica of every one of `slots` (a replicated
    /// category): moving them there changes no memory, only who serves them.
    replica: Option<usize>,
    /// Slots it owns, ascending.
    slots: Vec<u16>,
    /// The placement owner of each of `slots`, when it is a target.
    want: Vec<Option<usize>>,
    /// Slots placement assigns to each target.
    aligned: BTreeMap<usize, usize>,
    per_slot: f64,
    bytes: i64,
    stay: Stay,
    /// How the holder suits the category.
    fit: Fit,
}

/// The flow found for one aim.
struct Solution {
    /// Bytes of each group going to each target: (group, member, onto its placement owner).
    flows: Vec<(usize, usize, bool, i64)>,
    /// Bytes each member holds afterwards.
    after: Vec<i64>,
    /// Bytes of each group that stay on its holder.
    stay: Vec<i64>,
    moved: i64,
    drain_left: i64,
    misplaced_left: i64,
}

/// Violations of a solution against the band asked for, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Score {
    drain_left: i64,
    misplaced_left: i64,
    over_threshold: i64,
    off_band: i64,
}

impl Score {
    fn no_worse_than(&self, other: &Score, slack: i64) -> bool {
        self.drain_left <= other.drain_left + slack
            && self.misplaced_left <= other.misplaced_left + slack
            && self.over_threshold <= other.over_threshold + slack
            && self.off_band <= other.off_band + slack
    }
}

struct Fleet<'i> {
    input: &'i PlanInput<'i>,
    members: Vec<Member<'i>>,
    groups: Vec<Group>,
    homes: BTreeMap<&'i str, Home<'i>>,
    /// Whether placement gives a slot held by a member to another target.
    placement_differs: bool,
    /// Bytes the flow keeps under each threshold: slots are whole (rounded down at the
    /// target, leaving a rest at the source), and neither may end over it.
    margin: i64,
    /// Bytes that count toward the mean: the targets' and what must leave drains.
    total: i64,
    /// Capacity of the targets.
    capacity: i64,
    threshold: f64,
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

impl<'i> Fleet<'i> {
    fn new(input: &'i PlanInput<'i>) -> Self {
        let members: Vec<Member<'i>> = input
            .instances
            .iter()
            .filter(|i| i.serving)
            .map(|load| Member {
                load,
                target: !load.drain && load.capacity > 0,
            })
            .collect();
        let has_target = |tier: &str| {
            members
                .iter()
                .any(|m| m.target && m.load.tier.as_deref() == Some(tier))
        };
        let homes: BTreeMap<&'i str, Home<'i>> = input
            .current
            .categories
            .iter()
            .map(|c| (c.name.as_str(), home_of(input, &c.name, has_target)))
            .collect();

        let per_slot = bytes_per_slot(input);
        let index: BTreeMap<&str, usize> = members
            .iter()
            .enumerate()
            .map(|(k, m)| (m.load.name.as_str(), k))
            .collect();
        let mut groups = Vec::new();
        let mut placement_differs = false;
        // Slot runs, owners resolved once per run (a table has few runs, 16384 slots).
        for cat in &input.current.categories {
            let mut runs: Vec<(SlotRange, Option<usize>)> = cat
                .slots
                .iter()
                .map(|r| (r.range, index.get(r.instance.as_str()).copied()))
                .collect();
            runs.sort_by_key(|(r, _)| r.start);
            let mut wanted: Vec<(SlotRange, Option<usize>)> = input
                .desired
                .and_then(|d| d.category(&cat.name))
                .map(|c| {
                    c.slots
                        .iter()
                        .map(|r| {
                            let k = index.get(r.instance.as_str()).copied();
                            (r.range, k.filter(|k| members[*k].target))
                        })
                        .collect()
                })
                .unwrap_or_default();
            wanted.sort_by_key(|(r, _)| r.start);
            // Seeded replicas only: one still being seeded may hold little of its range.
            let mut replicas: Vec<(SlotRange, Option<usize>)> = cat
                .replication
                .iter()
                .flat_map(|r| r.seeded())
                .map(|(range, name)| (range, index.get(name).copied()))
                .collect();
            replicas.sort_by_key(|(r, _)| r.start);
            // Slots of each (member, replica), ascending, with their placement owner.
            type Held = (Vec<u16>, Vec<Option<usize>>);
            let mut held: BTreeMap<(usize, Option<usize>), Held> = BTreeMap::new();
            let (mut w, mut c) = (0, 0);
            for (range, owner) in runs {
                let Some(k) = owner else { continue };
                for slot in range.start..=range.end {
                    while w < wanted.len() && wanted[w].0.end < slot {
                        w += 1;
                    }
                    while c < replicas.len() && replicas[c].0.end < slot {
                        c += 1;
                    }
                    let want = wanted
                        .get(w)
                        .filter(|(r, _)| r.contains(slot))
                        .and_then(|(_, o)| *o)
                        .filter(|o| *o != k);
                    let replica = replicas
                        .get(c)
                        .filter(|(r, _)| r.contains(slot))
                        .and_then(|(_, m)| *m)
                        .filter(|m| *m != k);
                    let entry = held.entry((k, replica)).or_default();
                    entry.0.push(slot);
                    entry.1.push(want);
                }
            }
            for ((k, replica), (slots, want)) in held {
                let m = &members[k];
                if !m.target && !m.load.drain {
                    // Capacity unknown: it keeps what it has.
                    continue;
                }
                placement_differs |= want.iter().any(Option::is_some);
                let mut aligned = BTreeMap::new();
                for w in want.iter().flatten() {
                    *aligned.entry(*w).or_default() += 1;
                }
                let per = per_slot
                    .get(&(cat.name.clone(), m.load.name.clone()))
                    .copied()
                    .unwrap_or(0.0);
                let fit = homes[cat.name.as_str()].fit(m.load.tier.as_deref());
                groups.push(Group {
                    category: cat.name.clone(),
                    holder: k,
                    replica,
                    bytes: (per * slots.len() as f64).round() as i64,
                    slots,
                    want,
                    aligned,
                    per_slot: per,
                    stay: if m.load.drain {
                        Stay::Drain
                    } else if fit == Fit::Other {
                        Stay::Misplaced
                    } else {
                        Stay::Free
                    },
                    fit,
                });
            }
        }
        let total = members
            .iter()
            .filter(|m| m.target)
            .map(|m| m.load.used as i64)
            .sum::<i64>()
            + groups
                .iter()
                .filter(|g| g.stay == Stay::Drain)
                .map(|g| g.bytes)
                .sum::<i64>();
        let capacity = members
            .iter()
            .filter(|m| m.target)
            .map(|m| m.load.capacity as i64)
            .sum();
        let widest = groups.iter().map(|g| g.per_slot).fold(0.0, f64::max);
        let margin = (widest * (groups.len() + 1) as f64).ceil() as i64;
        Self {
            input,
            members,
            groups,
            homes,
            placement_differs,
            margin,
            total,
            capacity,
            threshold: f64::from(input.threshold_percent) / 100.0,
        }
    }

    fn mean(&self) -> f64 {
        if self.capacity > 0 {
            self.total as f64 / self.capacity as f64
        } else {
            0.0
        }
    }

    fn share(&self, k: usize, bytes: i64) -> f64 {
        bytes as f64 / self.members[k].load.capacity.max(1) as f64
    }

    /// The balance with nothing moved.
    fn balance_now(&self, band: f64) -> Balance {
        Balance {
            mean: self.mean(),
            band,
            aim: band,
            threshold: self.threshold,
            least_bytes: 0,
            planned_bytes: 0,
            instances: self
                .input
                .instances
                .iter()
                .map(|i| InstanceBalance {
                    name: i.name.clone(),
                    capacity: i.capacity,
                    before: i.used,
                    after: i.used,
                    in_fleet: i.serving && !i.drain && i.capacity > 0,
                    serving: i.serving,
                    drain: i.drain,
                })
                .collect(),
        }
    }

    /// Why a plan is due (empty: none is).
    fn triggers(&self, band: f64) -> Vec<String> {
        let mean = self.mean();
        let mut out = Vec::new();
        let over: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(k, m)| m.target && self.share(*k, m.load.used as i64) > self.threshold)
            .map(|(k, m)| {
                format!(
                    "{} at {:.0}%",
                    m.load.name,
                    (self.share(k, m.load.used as i64) * 100.0).floor()
                )
            })
            .collect();
        if !over.is_empty() {
            out.push(format!(
                "above the {}% threshold: {}",
                self.input.threshold_percent,
                over.join(", ")
            ));
        }
        let mut draining: Vec<&str> = self
            .groups
            .iter()
            .filter(|g| g.stay == Stay::Drain)
            .map(|g| self.members[g.holder].load.name.as_str())
            .collect();
        draining.dedup();
        if !draining.is_empty() {
            out.push(format!("draining: {}", draining.join(", ")));
        }
        let misplaced: Vec<String> = self
            .groups
            .iter()
            .filter(|g| g.stay == Stay::Misplaced)
            .map(|g| format!("{} on {}", g.category, self.members[g.holder].load.name))
            .collect();
        if !misplaced.is_empty() {
            out.push(format!("outside their tiers: {}", misplaced.join(", ")));
        }
        if self.input.force {
            out.push("rebalance requested (redisfleet.io/rebalance-now)".to_owned());
        }
        if out.is_empty() && self.placement_differs {
            let outside = self.outside_now(mean, band + TRIGGER_SLACK);
            if !outside.is_empty() {
                out.push(format!(
                    "placement changed (an instance joined, drains or changed weight) and {} {} outside ±{:.0} points of the {} mean",
                    outside.join(", "),
                    if outside.len() == 1 { "is" } else { "are" },
                    band * 100.0,
                    percent(mean)
                ));
            }
        }
        out
    }

    /// Targets outside the band now, as "name at N%".
    fn outside_now(&self, mean: f64, band: f64) -> Vec<String> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.target)
            .filter_map(|(k, m)| {
                let s = self.share(k, m.load.used as i64);
                (s < mean - band || s > mean + band)
                    .then(|| format!("{} at {}", m.load.name, percent(s)))
            })
            .collect()
    }

    /// Whether member `k` is above its capacity threshold before the plan: nothing moves onto
    /// it (a drain waits rather than fill it further, or push its bytes there).
    fn over_threshold(&self, k: usize) -> bool {
        let load = self.members[k].load;
        load.used as f64 > self.threshold * load.capacity as f64
    }

    /// The most target `k` may hold at all, in bytes: [`DRAIN_LIMIT_PERCENT`] of its
    /// capacity, or its threshold if that is higher (less the rounding margin).
    fn limit(&self, k: usize) -> i64 {
        let cap = self.members[k].load.capacity as f64;
        let margin = self.margin.min((cap * 0.005) as i64);
        let percent = DRAIN_LIMIT_PERCENT.max(self.input.threshold_percent);
        (f64::from(percent) / 100.0 * cap) as i64 - margin
    }

    /// The band in bytes of target `k`: (lower, upper, threshold).
    fn bounds(&self, k: usize, mean: f64, aim: f64) -> (i64, i64, i64) {
        let cap = self.members[k].load.capacity as f64;
        let margin = self.margin.min((cap * 0.005) as i64);
        let threshold = (self.threshold * cap) as i64 - margin;
        let upper = (((mean + aim) * cap) as i64).min(threshold);
        let lower = ((((mean - aim).max(0.0)) * cap) as i64).min(upper);
        (lower, upper, threshold)
    }

    fn fit_of(&self, g: &Group, k: usize) -> Fit {
        self.homes[g.category.as_str()].fit(self.members[k].load.tier.as_deref())
    }

    /// The cheapest flow of bytes for a band of half-width `aim` around `mean`.
    fn solve(&self, mean: f64, aim: f64) -> Solution {
        const SOURCE: usize = 0;
        const SINK: usize = 1;
        let final_of = |k: usize| 2 + k;
        let mut net = Network::new(2 + self.members.len());
        let mut supply = 0i64;
        let used: Vec<i64> = self.members.iter().map(|m| m.load.used as i64).collect();
        // Bytes no slot move takes away stay where they are.
        for (k, g_bytes) in used.iter().enumerate() {
            let grouped: i64 = self
                .groups
                .iter()
                .filter(|g| g.holder == k)
                .map(|g| g.bytes)
                .sum();
            let fixed = (g_bytes - grouped).max(0);
            if fixed > 0 {
                net.arc(SOURCE, final_of(k), fixed, 0);
                supply += fixed;
            }
        }
        // (group, member, onto its placement owner, arc, whether the bytes land there).
        let mut moves: Vec<(usize, usize, bool, Arc, bool)> = Vec::new();
        let mut stays: Vec<(usize, Arc)> = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            if g.bytes <= 0 {
                continue;
            }
            let node = net.node();
            net.arc(SOURCE, node, g.bytes, 0);
            supply += g.bytes;
            let stay_cost = match g.stay {
                Stay::Free => 0,
                Stay::Misplaced => OTHER_TIER - 1,
                Stay::Drain => MUST_LEAVE,
            };
            stays.push((gi, net.arc(node, final_of(g.holder), g.bytes, stay_cost)));
            for (k, m) in self.members.iter().enumerate() {
                if !m.target || k == g.holder || self.over_threshold(k) {
                    continue;
                }
                let fit = self.fit_of(g, k);
                let mut cost = match fit {
                    Fit::Home => MOVE,
                    Fit::Fallback => MOVE + FALLBACK_EXTRA,
                    Fit::Other => OTHER_TIER,
                };
                if fit == Fit::Home && g.fit != Fit::Home {
                    cost -= RETURN_BONUS;
                }
                if g.replica == Some(k) {
                    // Onto the slots' seeded replica: the data is there already, so the move
                    // frees the holder without filling the target. Worth it only for slots
                    // that must leave (a drain, a tier change); for balance it moves nothing.
                    if g.stay != Stay::Free {
                        moves.push((gi, k, false, net.arc(node, SINK, g.bytes, cost), false));
                    }
                    continue;
                }
                let aligned = g.aligned.get(&k).copied().unwrap_or(0);
                if aligned > 0 {
                    let bytes = ((aligned as f64 * g.per_slot).round() as i64).min(g.bytes);
                    let arc = net.arc(node, final_of(k), bytes, cost - ALIGNED_BONUS);
                    moves.push((gi, k, true, arc, true));
                }
                let arc = net.arc(node, final_of(k), g.bytes, cost);
                moves.push((gi, k, false, arc, true));
            }
        }
        let unlimited = supply + 1;
        for (k, m) in self.members.iter().enumerate() {
            if !m.target {
                net.arc(final_of(k), SINK, unlimited, 0);
                continue;
            }
            let (lower, upper, threshold) = self.bounds(k, mean, aim);
            net.arc(final_of(k), SINK, lower, -BAND);
            net.arc(final_of(k), SINK, upper - lower, 0);
            if threshold > upper {
                net.arc(final_of(k), SINK, threshold - upper, BAND);
            }
            if self.over_threshold(k) {
                // Relieved, never filled: nothing moves here (see the group arcs above).
                net.arc(final_of(k), SINK, unlimited, BAND + THRESHOLD);
                continue;
            }
            let limit = self.limit(k);
            let above = threshold.max(upper);
            if limit > above {
                net.arc(final_of(k), SINK, limit - above, BAND + THRESHOLD);
            }
            net.arc(final_of(k), SINK, unlimited, BAND + THRESHOLD + OVERFULL);
        }
        net.solve(SOURCE, SINK, supply);

        let mut after = used;
        let mut flows = Vec::new();
        let mut moved = 0;
        for (gi, k, aligned, arc, lands) in moves {
            let x = net.flow(arc);
            if x > 0 {
                after[self.groups[gi].holder] -= x;
                if lands {
                    after[k] += x;
                }
                moved += x;
                flows.push((gi, k, aligned, x));
            }
        }
        let left = |kind: Stay| -> i64 {
            stays
                .iter()
                .filter(|(gi, _)| self.groups[*gi].stay == kind)
                .map(|(_, arc)| net.flow(*arc))
                .sum()
        };
        let mut stay = vec![0; self.groups.len()];
        for (gi, arc) in &stays {
            stay[*gi] = net.flow(*arc);
        }
        Solution {
            flows,
            after,
            stay,
            moved,
            drain_left: left(Stay::Drain),
            misplaced_left: left(Stay::Misplaced),
        }
    }

    /// How `s` fares against the band of half-width `band` around `mean`.
    fn score(&self, s: &Solution, mean: f64, band: f64) -> Score {
        let mut over_threshold = 0;
        let mut off_band = 0;
        for (k, m) in self.members.iter().enumerate() {
            if !m.target {
                continue;
            }
            let (lower, upper, threshold) = self.bounds(k, mean, band);
            let a = s.after[k];
            over_threshold += (a - threshold).max(0);
            off_band += (a - upper).max(0) + (lower - a).max(0);
        }
        Score {
            drain_left: s.drain_left,
            misplaced_left: s.misplaced_left,
            over_threshold,
            off_band,
        }
    }

    /// The flow turned into slot moves: per group, the slots its placement assigns to the
    /// target first, then slots placement wants elsewhere anyway, then the highest-numbered;
    /// everything of a group that must leave; and, when `follow_placement`, the slots of
    /// empty groups to their placement owner (moving nothing costs nothing).
    fn moves_of(&self, s: &Solution, follow_placement: bool) -> Vec<Move> {
        let mut out = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let mut flows: Vec<(usize, bool, i64)> = s
                .flows
                .iter()
                .filter(|(fg, ..)| *fg == gi)
                .map(|(_, k, aligned, x)| (*k, *aligned, *x))
                .collect();
            flows.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
            let mut to: Vec<Option<usize>> = vec![None; g.slots.len()];
            for (k, aligned, x) in &flows {
                // Whole slots, never more than the flow: a target never ends above what the
                // flow gave it (the thresholds keep a margin for the source's rest).
                let mut n = if g.per_slot <= 0.0 {
                    0
                } else if *x as f64 + g.per_slot >= g.bytes as f64 {
                    // The whole group (up to rounding): every slot, no stray one left behind.
                    g.slots.len()
                } else {
                    (*x as f64 / g.per_slot + 1e-9).floor() as usize
                };
                let order: Vec<usize> = if *aligned {
                    (0..g.slots.len())
                        .rev()
                        .filter(|i| g.want[*i] == Some(*k))
                        .collect()
                } else {
                    let elsewhere = (0..g.slots.len()).rev().filter(|i| g.want[*i].is_some());
                    let rest = (0..g.slots.len()).rev().filter(|i| g.want[*i].is_none());
                    elsewhere.chain(rest).collect()
                };
                for i in order {
                    if n == 0 {
                        break;
                    }
                    if to[i].is_none() {
                        to[i] = Some(*k);
                        n -= 1;
                    }
                }
            }
            if g.stay != Stay::Free && s.stay[gi] == 0 {
                // Everything goes (the flow took all its bytes; whole slots left a rest):
                // the rest where most of the bytes went, else to the slot's placement owner,
                // else the emptiest suitable target. When the flow left bytes on the holder
                // (no instance has room for them below its limit), those slots wait there.
                let main = flows.iter().max_by_key(|f| f.2).map(|f| f.0);
                for (i, t) in to.iter_mut().enumerate() {
                    if t.is_none() {
                        *t = main
                            .or_else(|| self.placement_target(g, i))
                            .or_else(|| self.emptiest_target(g, s));
                    }
                }
            } else if follow_placement && g.bytes == 0 {
                for (i, t) in to.iter_mut().enumerate() {
                    *t = self.placement_target(g, i);
                }
            }
            self.push_moves(&mut out, g, &to);
        }
        out
    }

    /// The plan that follows placement when it moves at most [`CHEAP_PLACEMENT_PERCENT`] of
    /// the fleet's capacity; `None` when it would move more, or nothing.
    fn cheap_placement(&self, now: &Balance) -> Option<Plan> {
        let moves = merge_adjacent(self.placement_moves());
        let bytes: u64 = moves.iter().map(|m| m.bytes).sum();
        let limit = self.capacity.max(0) as u64 * CHEAP_PLACEMENT_PERCENT / 100;
        if moves.is_empty() || bytes > limit {
            return None;
        }
        let mut balance = now.clone();
        apply_moves(&mut balance, self.input.current, &moves);
        // Never toward the band's edges: no instance ends farther from the mean than half the
        // band, or than it was — so following placement can never set off a balance plan
        // that moves the data back.
        let mean = balance.mean;
        let near = |share: Option<f64>| share.map_or(0.0, |s| (s - mean).abs());
        // Nor over the threshold: a receiver pushed past it would set off a threshold plan that
        // moves the same slots away again, every cooldown (review: a fleet near the threshold).
        let over = |i: &InstanceBalance| {
            i.after > i.before && i.share_after().is_some_and(|s| s > balance.threshold)
        };
        if balance.instances.iter().filter(|i| i.in_fleet).any(|i| {
            near(i.share_after()) > (balance.band / 2.0).max(near(i.share_before())) + 1e-9
                || over(i)
        }) {
            return None;
        }
        balance.planned_bytes = bytes;
        balance.least_bytes = 0;
        Some(Plan {
            reason: format!(
                "placement changed (an instance joined or changed weight) and following it moves little: {} of the fleet's capacity (at most {CHEAP_PLACEMENT_PERCENT}%), every instance within the band and below the threshold",
                percent(bytes as f64 / self.capacity.max(1) as f64)
            ),
            moves,
            balance,
        })
    }

    /// Every slot to its placement owner (a target on the category's tiers, not above the
    /// threshold): the plan of a fleet that is within the band but whose placement changed,
    /// made only when it moves little ([`CHEAP_PLACEMENT_PERCENT`]) — a newcomer to an empty
    /// fleet takes its share at once, instead of a larger move once the fleet fills.
    fn placement_moves(&self) -> Vec<Move> {
        let mut out = Vec::new();
        for g in &self.groups {
            if !self.members[g.holder].target {
                continue;
            }
            // Never onto the slots' replica: that fills nothing and frees nothing for long.
            let to: Vec<Option<usize>> = (0..g.slots.len())
                .map(|i| {
                    self.placement_target(g, i).filter(|k| {
                        g.replica != Some(*k)
                            && self.share(*k, self.members[*k].load.used as i64) <= self.threshold
                    })
                })
                .collect();
            self.push_moves(&mut out, g, &to);
        }
        out
    }

    /// The moves of group `g` whose `i`-th slot goes to target `to[i]`: runs of consecutive
    /// slots with one target, each with its share of the group's bytes.
    fn push_moves(&self, out: &mut Vec<Move>, g: &Group, to: &[Option<usize>]) {
        let holder = self.members[g.holder].load.name.as_str();
        let mut picked: Vec<(u16, usize)> = g
            .slots
            .iter()
            .zip(to)
            .filter_map(|(s, t)| t.map(|t| (*s, t)))
            .collect();
        picked.sort_by_key(|(s, t)| (*t, *s));
        let mut runs: Vec<(SlotRange, usize)> = Vec::new();
        for (slot, k) in picked {
            match runs.last_mut() {
                Some((r, t)) if *t == k && r.end + 1 == slot => r.end = slot,
                _ => runs.push((SlotRange::new(slot, slot), k)),
            }
        }
        for (range, k) in runs {
            out.push(Move {
                category: g.category.clone(),
                range,
                from: holder.to_owned(),
                to: self.members[k].load.name.clone(),
                bytes: (g.per_slot * f64::from(range.len())).round() as u64,
            });
        }
    }

    /// The placement owner of the group's `i`-th slot, when it is another target on the
    /// category's tiers.
    fn placement_target(&self, g: &Group, i: usize) -> Option<usize> {
        g.want[i].filter(|k| self.fit_of(g, *k) != Fit::Other)
    }

    /// The emptiest target after `s`, home before fallback before any other.
    fn emptiest_target(&self, g: &Group, s: &Solution) -> Option<usize> {
        let rank = |fit: Fit| match fit {
            Fit::Home => 0,
            Fit::Fallback => 1,
            Fit::Other => 2,
        };
        (0..self.members.len())
            .filter(|k| self.members[*k].target && *k != g.holder)
            .min_by(|a, b| {
                rank(self.fit_of(g, *a))
                    .cmp(&rank(self.fit_of(g, *b)))
                    .then(
                        self.share(*a, s.after[*a])
                            .total_cmp(&self.share(*b, s.after[*b])),
                    )
            })
    }

    /// The draining groups `s` leaves (partly) where they are, as "category on instance".
    fn waiting(&self, s: &Solution) -> Vec<String> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(gi, g)| g.stay == Stay::Drain && s.stay[*gi] > 0)
            .map(|(_, g)| format!("{} on {}", g.category, self.members[g.holder].load.name))
            .collect()
    }

    /// Why nothing is planned although the triggers asked for it, or why none did.
    fn idle(&self, band: f64, triggers: &[String]) -> String {
        let mean = self.mean();
        if !triggers.is_empty() {
            return format!(
                "nothing can move ({}): no instance of the categories' tiers has room",
                triggers.join("; ")
            );
        }
        let outside = self.outside_now(mean, band);
        let points = (band * 100.0).round();
        if outside.is_empty() {
            format!(
                "every instance is within ±{points} points of the {} mean and below the {}% threshold",
                percent(mean),
                self.input.threshold_percent
            )
        } else {
            format!(
                "{} outside ±{points} points of the {} mean, but nothing triggers a plan: no instance is above the {}% threshold and no instance joined, drains or changed weight (the redisfleet.io/rebalance-now annotation balances now)",
                outside.join(", "),
                percent(mean),
                self.input.threshold_percent
            )
        }
    }
}

/// Sets each instance's `after` in `balance` to its `before` changed by `moves`' bytes (a
/// target gains none for the slots `table` names it the replica of: [`landing_share`]).
fn apply_moves(balance: &mut Balance, table: &RoutingTable, moves: &[Move]) {
    let mut delta: BTreeMap<&str, i64> = BTreeMap::new();
    for m in moves {
        *delta.entry(m.from.as_str()).or_default() -= m.bytes as i64;
        *delta.entry(m.to.as_str()).or_default() +=
            (m.bytes as f64 * landing_share(table, m)).round() as i64;
    }
    for i in &mut balance.instances {
        let d = delta.get(i.name.as_str()).copied().unwrap_or(0);
        i.after = (i.before as i64 + d).max(0) as u64;
    }
}

/// See [`super::assess`].
pub(super) fn assess(input: &PlanInput<'_>) -> Assessment {
    let fleet = Fleet::new(input);
    let points = if input.force {
        FORCED_BAND_POINTS
    } else {
        BAND_POINTS
    };
    let band = f64::from(points) / 100.0;
    let mut balance = fleet.balance_now(band);
    let idle = |balance: Balance, why: String| Assessment {
        plan: None,
        balance,
        idle: why,
    };
    if fleet.capacity <= 0 {
        return idle(
            balance,
            "no serving instance with a known capacity can hold data".to_owned(),
        );
    }
    let triggers = fleet.triggers(band);
    if triggers.is_empty() {
        if fleet.placement_differs
            && let Some(plan) = fleet.cheap_placement(&balance)
        {
            return Assessment {
                plan: Some(plan.clone()),
                balance: plan.balance,
                idle: String::new(),
            };
        }
        let why = fleet.idle(band, &triggers);
        return idle(balance, why);
    }
    let mean = fleet.mean();
    let least = fleet.solve(mean, band);
    let target_score = fleet.score(&least, mean, band);
    let least_bytes = least.moved;
    let slack = 1024 + fleet.total / 100_000;
    let budget = (MARGIN_BUDGET * least.moved as f64) as i64 + slack;
    let mut best = (band, least);
    for fraction in &AIMS[1..] {
        let aim = band * fraction;
        let s = fleet.solve(mean, aim);
        if s.moved > budget
            || !fleet
                .score(&s, mean, band)
                .no_worse_than(&target_score, slack)
        {
            break;
        }
        best = (aim, s);
    }
    let (aim, solution) = best;
    let moves = merge_adjacent(fleet.moves_of(&solution, true));
    if moves.is_empty() {
        let why = fleet.idle(band, &triggers);
        return idle(balance, why);
    }
    // The balance the slot moves give (slots round the flow a little).
    apply_moves(&mut balance, input.current, &moves);
    balance.aim = aim;
    balance.least_bytes = least_bytes.max(0) as u64;
    balance.planned_bytes = moves.iter().map(|m| m.bytes).sum();
    let mut reason = triggers.join("; ");
    let waiting = fleet.waiting(&solution);
    if !waiting.is_empty() {
        reason.push_str(&format!(
            "; a drain waits for room (no instance would stay below {}% of its capacity): {}",
            DRAIN_LIMIT_PERCENT.max(input.threshold_percent),
            waiting.join(", ")
        ));
    }
    Assessment {
        plan: Some(Plan {
            moves,
            reason,
            balance: balance.clone(),
        }),
        balance,
        idle: String::new(),
    }
}
