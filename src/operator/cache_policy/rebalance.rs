//! The rebalance step of a CachePolicy reconcile: what the published table looks like in each
//! phase of a data move (pure: [`table_to_publish`]), and the plan → Job → flip → finalize
//! sequence that [`drive`] moves along — planning from the sampled memory, creating the Job,
//! following it, retrying it, giving up.
//!
//! Phases (`status.rebalance.phase`, decided here) and steps (`status.rebalance.step`,
//! reported by the Job):
//!
//! | phase       | table published                  | moves on when the Job reports |
//! |-------------|----------------------------------|-------------------------------|
//! | Preparing   | old owners                       | `Prepared` → publish migrating |
//! | Migrating   | old owners + `migrating` ranges  | `Copied` → publish new owners  |
//! | Finalizing  | new owners                       | Job complete → Succeeded       |
//!
//! A failed attempt is retried with a new Job (a new mover token). When attempts run out
//! before any source imported, the plan is rolled back (its Jobs fenced off, the old owners
//! published again); once a source imports, it is retried with a growing delay until it
//! finishes, since its keys are split between source and target (served correctly through the
//! guard meanwhile). The moves of a plan whose source or target becomes unreachable are
//! abandoned at once ([`abandon_dead_ends`]): their ranges go to the side that is alive; the
//! moves between live instances go on with a new attempt (the plan fails only when none is
//! left).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::cache_policy::{
    CachePolicy, MoveStatus, REBALANCE_CONTROL_ANNOTATION, REBALANCE_NOW_ANNOTATION,
    RebalanceControl, RebalanceStatus, rebalance_phase, rebalance_step,
};
use crate::api::conditions::Time;
use crate::api::redis_instance::InstancePhase;
use crate::operator::context::Context;
use crate::operator::metrics::PolicyLabels;
use crate::operator::sampling::PolicySample;
use crate::rebalance::plan::{self, Move, PlanInput, apply_moves};
use crate::routing::slots::{SLOT_COUNT, SlotRange, runs};
use crate::routing::table::{Failover, Migration, RoutingTable, SlotOwner};

use super::build::replicas::OwnerReturn;
use super::build::{self, InstanceView, data_elsewhere};
use super::job::{self, JobSettings};
use super::{Error, PolicyContext};
use super::{fences, planning};
use crate::api::redis_instance::RedisInstance;
use crate::redis::protocol::names;
use std::sync::Arc;

mod abandon;
pub use abandon::{
    GiveBack, abandon_dead_ends, dead_ends, dropped_moves, given_back, live_moves,
    unmark_given_back,
};

/// Every field of a [`RebalanceStatus`] as it is written (camelCase).
const REBALANCE_FIELDS: [&str; 22] = [
    "phase",
    "planId",
    "job",
    "reason",
    "moves",
    "flipVersion",
    "finalVersion",
    "attempts",
    "jobMissingSince",
    "startedAt",
    "finishedAt",
    "message",
    "forcedBy",
    "paused",
    "cancelRefused",
    "step",
    "keysMoved",
    "keysTotal",
    "keysPerSecond",
    "stragglers",
    "pacing",
    "balance",
];

/// The merge patch that makes `r` (a plan just started) the whole of `status.rebalance`:
/// every field the new plan does not set is cleared (`null`). A field left out would keep
/// the previous plan's value — an operator killed between this patch and its full status
/// write left a new plan with the previous one's Job name, and its successor waited for that
/// deleted Job for good (chaos seed 10, 180 s: never settled).
fn new_plan_patch(r: &RebalanceStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(r).unwrap_or_else(|_| json!({}));
    if let Some(fields) = body.as_object_mut() {
        for name in REBALANCE_FIELDS {
            fields.entry(name).or_insert(serde_json::Value::Null);
        }
    }
    body
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
                InstancePhase::Ready | InstancePhase::Degraded | InstancePhase::Draining
            )
        })
        .map(|v| v.name.as_str())
        .collect();
    let selected: BTreeSet<&str> = views.iter().map(|v| v.name.as_str()).collect();
    let elsewhere = data_elsewhere(previous, views);
    let mut out = desired.clone();
    for i in 0..out.categories.len() {
        let name = out.categories[i].name.clone();
        let Some(prev) = previous.category(&name) else {
            continue;
        };
        if prev.slots == out.categories[i].slots {
            continue;
        }
        let before = prev.owners();
        // Where each slot's data is: on its owner, or — failed over, or a failback or a move
        // from a dead source under way — on the instance that took the writes meanwhile.
        let mut holders: Vec<&str> = before.clone();
        let failed_over: Vec<&Failover> = elsewhere.iter().filter(|f| f.category == name).collect();
        for f in &failed_over {
            for slot in f.start..=f.end {
                if holders[usize::from(slot)] == f.from {
                    holders[usize::from(slot)] = f.to.as_str();
                }
            }
        }
        let mut owners: Vec<String> = out.categories[i]
            .owners()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut held = false;
        for (slot, old) in before.iter().enumerate() {
            let holder = holders[slot];
            // Held when the data would have to move from a serving instance: the owner's
            // own, or — the owner down — the instance that holds its data (the range keeps
            // its owner and its failover until the failback, as the range of a dead owner
            // does).
            let moves_data = if serving.contains(old) {
                true
            } else {
                holder != *old && owners[slot] != holder && serving.contains(holder)
            };
            if owners[slot] != *old && moves_data {
                owners[slot] = if holder != *old && !selected.contains(old) {
                    // The failed owner left the fleet for good (deleted): the fallback that
                    // holds the data owns the slot now; a rebalance moves it on later.
                    holder.to_owned()
                } else {
                    (*old).to_owned()
                };
                held = true;
            }
        }
        if held {
            clip_failovers(&mut out.failover, &name, &owners);
            // Only entries of owners that are down, onto instances that serve (the build's
            // own rule for what stays failed over).
            let down: Vec<&Failover> = failed_over
                .iter()
                .filter(|f| !serving.contains(f.from.as_str()) && serving.contains(f.to.as_str()))
                .copied()
                .collect();
            restore_failovers(&mut out.failover, &down, &owners);
            out.categories[i].slots = to_runs(&owners);
            out.set_basis(i, previous.basis(prev));
        }
    }
    // Every instance the held table names — an owner kept or made so, a restored entry's
    // fallback — keeps its endpoint, from the table that named it before.
    let named: BTreeSet<String> = out
        .categories
        .iter()
        .flat_map(|c| c.slots.iter().map(|s| s.instance.clone()))
        .chain(
            out.failover
                .iter()
                .flat_map(|f| [f.from.clone(), f.to.clone()]),
        )
        .collect();
    for name in named {
        if let Some(e) = previous.instances.get(&name) {
            out.instances.entry(name).or_insert_with(|| e.clone());
        }
    }
    out
}

/// With rebalancing off, keeps the categories the last plan moved (`moves`; it finished, was
/// rolled back or abandoned) as that plan left them, as [`hold_back`] would while rebalancing is on: a balance plan need not
/// follow placement (overflow onto a fallback tier, ranges left in place once the fleet is
/// in the band), and publishing placement the moment the plan ended re-routed those ranges
/// away from their keys — a plan under way when rebalancing was turned off runs to its end,
/// and its result stands. The other categories follow placement (their ownership changes
/// re-route without their keys, as documented).
fn keep_plan_result(
    desired: &RoutingTable,
    previous: &RoutingTable,
    views: &[InstanceView],
    moves: &[Move],
) -> RoutingTable {
    let touched = |category: &str| moves.iter().any(|m| m.category == category);
    let mut table = hold_back(desired, Some(previous), views);
    for (i, c) in desired.categories.iter().enumerate() {
        if !touched(&c.name) {
            table.categories[i] = c.clone();
        }
    }
    table.failover.retain(|f| touched(&f.category));
    table.failover.extend(
        desired
            .failover
            .iter()
            .filter(|f| !touched(&f.category))
            .cloned(),
    );
    table
}

/// Keeps of `category`'s failover entries only the slots their failed instance still owns in
/// `owners`: a slot held back for its old owner is that owner's, and a failover of the instance
/// placement had meant it for must not take it over.
fn clip_failovers(failover: &mut Vec<Failover>, category: &str, owners: &[String]) {
    let mut out = Vec::with_capacity(failover.len());
    for f in failover.drain(..) {
        if f.category != category {
            out.push(f);
            continue;
        }
        let mut start: Option<u16> = None;
        for slot in f.start..=f.end {
            let owned = owners[usize::from(slot)] == f.from;
            match (owned, start) {
                (true, None) => start = Some(slot),
                (false, Some(s)) => {
                    out.push(Failover {
                        start: s,
                        end: slot - 1,
                        ..f.clone()
                    });
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push(Failover { start: s, ..f });
        }
    }
    *failover = out;
}

/// Adds back, of the `previous` failover entries of one category, the slots whose failed
/// owner still owns them in `owners` and that no entry covers: a failed-over slot held back
/// for its dead owner stays with the fallback that holds its data.
fn restore_failovers(failover: &mut Vec<Failover>, previous: &[&Failover], owners: &[String]) {
    for f in previous {
        let covered = |slot: u16| {
            failover
                .iter()
                .any(|g| g.category == f.category && g.start <= slot && slot <= g.end)
        };
        let mut add = Vec::new();
        let mut start: Option<u16> = None;
        for slot in f.start..=f.end {
            let wanted = owners[usize::from(slot)] == f.from && !covered(slot);
            match (wanted, start) {
                (true, None) => start = Some(slot),
                (false, Some(s)) => {
                    add.push(Failover {
                        start: s,
                        end: slot - 1,
                        ..(*f).clone()
                    });
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            add.push(Failover {
                start: s,
                ..(*f).clone()
            });
        }
        failover.extend(add);
    }
}

fn to_runs(owners: &[String]) -> Vec<SlotOwner> {
    runs(owners)
        .into_iter()
        .map(|(range, instance)| SlotOwner { range, instance })
        .collect()
}

/// The moves of a plan as written in status, with whether each target serves its range in
/// `published`, the table the plan starts from (its Job attempts read that from the plan:
/// after the flip the table no longer tells a failback from a move into a served range).
pub fn to_status(moves: &[Move], published: &RoutingTable) -> Vec<MoveStatus> {
    moves
        .iter()
        .map(|m| MoveStatus {
            category: m.category.clone(),
            start: i32::from(m.range.start),
            end: i32::from(m.range.end),
            from: m.from.clone(),
            to: m.to.clone(),
            target_serves: Some(plan::target_serves(published, &m.category, m.range, &m.to)),
        })
        .collect()
}

/// The moves written in status.
pub fn from_status(moves: &[MoveStatus]) -> Vec<Move> {
    from_status_recorded(moves)
        .into_iter()
        .map(|(m, _)| m)
        .collect()
}

/// The moves written in status, each with what it records of its target serving its range
/// already (`targetServes`).
fn from_status_recorded(moves: &[MoveStatus]) -> Vec<(Move, Option<bool>)> {
    moves
        .iter()
        .filter_map(|m| {
            let moved = Move {
                category: m.category.clone(),
                range: SlotRange::new(u16::try_from(m.start).ok()?, u16::try_from(m.end).ok()?),
                from: m.from.clone(),
                to: m.to.clone(),
                bytes: 0,
            };
            Some((moved, m.target_serves))
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
            moves
                .iter()
                .any(|m| f.given_back_by(&m.category, m.range, &m.from, &m.to))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Publishes the moves as `migrating` (version `epoch`), replacing the failover entries of
/// failback moves: from now on commands go to the targets, keys moving on access. Each
/// migration records whether its target served the range already: as `recorded` (the plan's
/// `targetServes`, by move) says, else as `table` says before the overlay — after it, a
/// failback looks like a move into a served range ([`plan::target_serves`]).
pub fn overlay_migrating(
    table: &mut RoutingTable,
    moves: &[Move],
    recorded: &[Option<bool>],
    epoch: u64,
) {
    let serves: Vec<bool> = moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            recorded
                .get(i)
                .copied()
                .flatten()
                .unwrap_or_else(|| plan::target_serves(table, &m.category, m.range, &m.to))
        })
        .collect();
    let gone = covered(table, moves);
    let mut i = 0;
    table.failover.retain(|_| {
        let keep = !gone.contains(&i);
        i += 1;
        keep
    });
    table.migrating = moves
        .iter()
        .zip(serves)
        .map(|(m, serves)| Migration {
            category: m.category.clone(),
            start: m.range.start,
            end: m.range.end,
            from: m.from.clone(),
            to: m.to.clone(),
            epoch,
            target_serves: Some(serves),
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
    let phase = |name: &str| views.iter().find(|v| v.name == name).map(|v| v.phase);
    table
        .failover
        .iter()
        // The owner must be back, and the fallback up (a draining fallback is emptied by this
        // very move). A draining owner takes its ranges back too: it is still their owner
        // (`hold_back`), and its drain moves them on with the writes of the outage.
        .filter(|f| {
            phase(&f.from).is_some_and(InstancePhase::serves_traffic)
                && phase(&f.to).is_some_and(InstancePhase::serves_traffic)
        })
        // A handover ends by swapping roles or is given back to its source
        // (`build::handovers`), never by a move into its target.
        .filter(|f| !f.handover)
        // A replicated range whose owner is named its replica ends by swapping roles once the
        // owner is seeded (`build`): no data moves, and the range never goes without a copy.
        .filter(|f| build::replicas::owner_return(table, f, views, &[]) == OwnerReturn::Move)
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
/// every such category, from it to the range's owner. Not while it still holds copies to free
/// (ranges handed off while it was down, say): those are stale, not data, and go first. Nor
/// while the table names it a replica (an outgoing one, kept until its successor is seeded:
/// its copies are no fresher than the owners' data, and are freed once it is dropped) or a
/// failover target (it serves a dead owner's ranges, which a failback brings home).
pub fn legacy_moves(
    table: &RoutingTable,
    views: &[InstanceView],
    category_bytes: &BTreeMap<(String, String), u64>,
) -> Vec<Move> {
    let mut out = Vec::new();
    for v in views.iter().filter(|v| v.drain && !v.copies_to_free) {
        if !table.serves_nothing(&v.name) {
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

// ---------------------------------------------------------------------------------------------
// The table a reconcile publishes
// ---------------------------------------------------------------------------------------------

/// What a publish does to a rebalance in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The migrating ranges go out.
    Flip,
    /// The new owners go out.
    Finalize,
}

/// The table to publish from the one placement asks for (`desired`): with rebalancing on,
/// owners change only through a rebalance, with their data ([`hold_back`]), and draining
/// instances stay reachable; then the phase of a rebalance in progress shapes it. Also says
/// which transition publishing it would carry out.
pub fn table_to_publish(
    desired: &RoutingTable,
    previous: Option<&RoutingTable>,
    views: &[InstanceView],
    rb: Option<&RebalanceStatus>,
    rebalance_on: bool,
) -> (RoutingTable, Option<Transition>) {
    let mut table = if rebalance_on {
        hold_back(desired, previous, views)
    } else {
        match (previous, rb.filter(|r| !r.is_active())) {
            (Some(previous), Some(r)) => {
                keep_plan_result(desired, previous, views, &from_status(&r.moves))
            }
            _ => desired.clone(),
        }
    };
    if rebalance_on {
        // Draining instances stay reachable for the Jobs (and, while their ranges
        // migrate, for the sidecars) until they are empty.
        for v in views.iter().filter(|v| v.drain && v.phase.serves_traffic()) {
            table
                .instances
                .entry(v.name.clone())
                .or_insert_with(|| v.endpoint.clone());
        }
    }
    // Both ends of every move of a plan under way stay reachable: its Job finds them in the
    // published table, and the flip's migrations name them. Placement alone may no longer
    // name a move's target (a balance plan's targets are its own), and a table migrating to an
    // instance it does not list is invalid: the plan never flipped.
    if let Some(r) = rb.filter(|r| r.is_active()) {
        for m in &r.moves {
            for name in [&m.from, &m.to] {
                if let Some(v) = views.iter().find(|v| &v.name == name) {
                    table
                        .instances
                        .entry(name.clone())
                        .or_insert_with(|| v.endpoint.clone());
                }
            }
        }
    }
    let transition = shape_for_rebalance(&mut table, rb, previous);
    (table, transition)
}

/// Records in `r` that `version` carried `transition` out.
pub fn record_transition(r: &mut RebalanceStatus, transition: Transition, version: u64) {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    match transition {
        Transition::Flip => {
            r.phase = rebalance_phase::MIGRATING.to_owned();
            r.flip_version = Some(version);
        }
        Transition::Finalize => {
            r.phase = rebalance_phase::FINALIZING.to_owned();
            r.final_version = Some(version);
        }
    }
}

/// Shapes the table to publish for the rebalance phase (see the module docs).
fn shape_for_rebalance(
    table: &mut RoutingTable,
    rb: Option<&RebalanceStatus>,
    previous: Option<&RoutingTable>,
) -> Option<Transition> {
    let r = rb.filter(|r| r.is_active())?;
    let (moves, recorded): (Vec<Move>, Vec<Option<bool>>) =
        from_status_recorded(&r.moves).into_iter().unzip();
    let step = r.step.as_deref();
    // The migrations carry the plan as their epoch: the sources' importing markers are named
    // after it, so the Job can set them before the flip (moves into ranges the target already
    // serves, from a legacy instance, import from the start).
    let epoch = u64::try_from(r.plan_id).unwrap_or_default();
    match r.phase.as_str() {
        // A paused plan is not flipped: its Job waits, and the old owners serve.
        rebalance_phase::PREPARING
            if step == Some(rebalance_step::PREPARED) && r.paused != Some(true) =>
        {
            overlay_migrating(table, &moves, &recorded, epoch);
            Some(Transition::Flip)
        }
        rebalance_phase::MIGRATING if step == Some(rebalance_step::COPIED) => {
            *table = finalize(table, &moves);
            Some(Transition::Finalize)
        }
        rebalance_phase::MIGRATING => {
            overlay_migrating(table, &moves, &recorded, epoch);
            None
        }
        // The new owners are out, and with them the failback's failover entries went
        // ([`finalize`] at the transition): an entry now is a new failover, of a target that
        // died after it took its ranges (the plan's cleanup still runs), and stays, as any
        // owner's does — dropping it routed the range to the dead target until the plan ended.
        // Unless the published table migrates still (a second operator, behind, published the
        // migrating table again over the final one): the build then derives the failback's
        // own entries from its migrations, and those go, as at the transition.
        rebalance_phase::FINALIZING => {
            *table = if previous.is_some_and(|p| !p.migrating.is_empty()) {
                finalize(table, &moves)
            } else {
                apply_moves(table, &moves)
            };
            None
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The Jobs
// ---------------------------------------------------------------------------------------------

/// Attempts of one plan before it is rolled back (when nothing moved yet) or retried more
/// slowly (once keys moved).
const MAX_ATTEMPTS: i32 = 4;

/// The delay before attempt `attempt` once [`MAX_ATTEMPTS`] are spent: 30 s, doubling, at
/// most 10 minutes.
fn retry_delay(attempt: i32) -> std::time::Duration {
    let extra = u32::try_from(attempt - MAX_ATTEMPTS).unwrap_or(0).min(5);
    std::time::Duration::from_secs(30 * 2u64.pow(extra)).min(std::time::Duration::from_secs(600))
}

/// Whether a plan's Job had not imported yet by what it reported: before that, nothing moved.
fn before_import(r: &RebalanceStatus) -> bool {
    r.phase == rebalance_phase::PREPARING
        || (r.phase == rebalance_phase::MIGRATING
            && matches!(
                r.step.as_deref(),
                None | Some(rebalance_step::PREPARING)
                    | Some(rebalance_step::PREPARED)
                    | Some(rebalance_step::CONVERGING)
                    | Some(rebalance_step::FENCING)
            ))
}

/// How long ago `then` was by this process's clock (none when another clock, a restarted
/// operator's on another node, put it ahead).
fn elapsed_since(then: Timestamp) -> std::time::Duration {
    let span = Timestamp::now().duration_since(then);
    if span.is_negative() {
        std::time::Duration::ZERO
    } else {
        span.unsigned_abs()
    }
}

/// No Job of plan `r` runs (its attempt ended; the next one waits): a hold the last one
/// reported for an evicting source ended with it, and the plan reads as copying again until
/// the next attempt reports its own step.
/// Whether it changed `r`.
fn no_job_holds(r: &mut RebalanceStatus) -> bool {
    if r.step.as_deref() != Some(rebalance_step::SOURCE_EVICTING) {
        return false;
    }
    r.step = Some(rebalance_step::COPYING.to_owned());
    r.pacing = None;
    true
}

/// Follows the Job of the rebalance in progress, or plans and starts a new one. Returns the
/// rebalance status to write.
pub async fn drive(
    ctx: &PolicyContext,
    policy: &CachePolicy,
    rb: Option<RebalanceStatus>,
    published: &RoutingTable,
    desired: &RoutingTable,
    views: &[InstanceView],
    sample: &PolicySample,
) -> Result<Driven, Error> {
    let mut driver = Driver::new(&ctx.shared, &ctx.jobs, policy, rb.as_ref());
    let control = driver.control().await;
    if let Some(r) = rb.clone().filter(RebalanceStatus::is_active) {
        let r = if control == RebalanceControl::Cancel {
            driver.cancel(r).await?
        } else {
            r
        };
        if !r.is_active() {
            return Ok(Driven::plan(Some(r)));
        }
        return driver.follow(r).await.map(|mut r| {
            if !r.is_active() {
                r.paused = None;
            }
            Driven::plan(Some(r))
        });
    }
    if !policy.spec.balancing.rebalance.enabled {
        // Turned off while a plan ran: that plan is over, no other starts.
        return Ok(Driven::plan(rb));
    }
    if control != RebalanceControl::Run {
        // Paused or cancelled: no plan starts (failbacks included: the fallback keeps
        // serving the failed-over ranges) until the annotation says resume or goes.
        return Ok(Driven::plan(rb));
    }
    if !published.migrating.is_empty() {
        // An ended plan's migrations are still out (the table that ends them was held back):
        // a plan starts from a table that moves nothing. In a flip table of an older operator
        // (whose migrations record nothing) a failback reads as a move into a range its target
        // serves, and the new plan would record it so.
        return Ok(Driven {
            waiting: Some(
                "no plan starts until the table that ends the last plan's migrations is published"
                    .to_owned(),
            ),
            ..Driven::plan(rb)
        });
    }
    // Nothing running: plan.
    let forced = driver.forced.is_some();
    let Wanted {
        moves,
        reasons,
        held,
        planner_asked,
    } = moves_to_make(
        policy,
        rb.as_ref(),
        published,
        desired,
        views,
        sample,
        forced,
    );
    let fresh = planner_asked || !held.is_empty() || !moves.is_empty();
    let note = driver.report_held(ctx, &held, fresh, views).await;
    // Replicated ranges the plan would move are handed over instead (`build::handovers`): the
    // next reconcile publishes them, and the rest is planned again once they are done.
    let handovers: Vec<Move> = moves
        .iter()
        .filter(|m| build::handovers::may_hand_over(published, &policy.spec, views, m))
        .cloned()
        .collect();
    if !handovers.is_empty() {
        let list = describe_moves(&handovers);
        info!(moves = %list, "handing replicated ranges over instead of moving them with a Job");
        ctx.handovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(driver.policy_key(), handovers);
        return Ok(Driven {
            held: note,
            handing_over: Some(format!("to be handed over: {list}")),
            ..Driven::plan(rb)
        });
    }
    if note.is_some() {
        // A `rebalance-now` whose moves wait stays to be acted on once they may start, also
        // when other moves (a failback) start now.
        driver.forced = None;
    }
    if moves.is_empty() {
        if forced && note.is_none() {
            // Remember the request even when nothing needed to move (a request whose moves
            // are held back stays to be acted on once they may start).
            let mut r = rb.unwrap_or_default();
            r.forced_by = driver.forced;
            if r.phase.is_empty() {
                r.phase = rebalance_phase::SUCCEEDED.to_owned();
            }
            return Ok(Driven {
                held: note,
                ..Driven::plan(Some(r))
            });
        }
        return Ok(Driven {
            held: note,
            handing_over: build::handovers::under_way(published),
            ..Driven::plan(rb)
        });
    }
    driver
        .start(rb, &moves, reasons, published)
        .await
        .map(|r| Driven {
            held: note,
            ..Driven::plan(Some(r))
        })
}

/// `moves` in one line: `category start-end from → to`, comma-separated.
fn describe_moves(moves: &[Move]) -> String {
    moves
        .iter()
        .map(|m| {
            format!(
                "{} {}-{} {} → {}",
                m.category, m.range.start, m.range.end, m.from, m.to
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`drive`] did: the rebalance status to write, and why moves the fleet wants wait.
#[derive(Debug)]
pub struct Driven {
    /// The rebalance status to write.
    pub rebalance: Option<RebalanceStatus>,
    /// Moves held back because their source may evict keys without a TTL, for the
    /// `Rebalancing` condition (`HeldBack`).
    pub held: Option<String>,
    /// Why no plan may start now (`WaitingForTable`).
    pub waiting: Option<String>,
    /// The replicated ranges handed over, or to be handed over by the next table
    /// (`status::HANDING_OVER`).
    pub handing_over: Option<String>,
}

impl Driven {
    fn plan(rebalance: Option<RebalanceStatus>) -> Self {
        Self {
            rebalance,
            held: None,
            waiting: None,
            handing_over: None,
        }
    }
}

/// The moves a new plan would make, why, and the moves held back.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// The moves to make.
    pub moves: Vec<Move>,
    /// Why, one reason per kind of move made.
    pub reasons: Vec<String>,
    /// Moves out of instances whose `maxmemory-policy` may evict keys without a TTL: the
    /// protocol's own keys could go mid-move (`docs/protocol.md`, "Eviction").
    pub held: Vec<Move>,
    /// The balance planner was asked (it is not during the cooldown).
    pub planner_asked: bool,
}

/// The moves of a new plan, composed from its parts (after [`without_overlaps`] over all of
/// them, so a failback held back still keeps another move of its range from starting), with
/// the moves out of instances that may evict keys without a TTL held back: a failback or a
/// legacy instance's move each on its own (each brings one range's data to its owner), the
/// balance planner's plan whole (its moves make room for each other).
pub fn hold_evicting_sources(
    failbacks: Vec<Move>,
    planned: Option<(Vec<Move>, String)>,
    legacy: Vec<Move>,
    views: &[InstanceView],
) -> Wanted {
    let evicting: BTreeSet<&str> = views
        .iter()
        .filter(|v| v.evicting_policy.is_some())
        .map(|v| v.name.as_str())
        .collect();
    let (planned, plan_reason) = planned.unzip();
    let planned = planned.unwrap_or_default();
    let all = without_overlaps(
        failbacks
            .iter()
            .chain(&planned)
            .chain(&legacy)
            .cloned()
            .collect(),
    );
    let kept =
        |part: &[Move]| -> Vec<Move> { part.iter().filter(|m| all.contains(m)).cloned().collect() };
    let held_out = |m: &Move| evicting.contains(m.from.as_str());
    let mut wanted = Wanted {
        moves: Vec::new(),
        reasons: Vec::new(),
        held: Vec::new(),
        planner_asked: false,
    };
    let mut add = |moves: Vec<Move>, reason: &str| {
        if !moves.is_empty() {
            wanted.reasons.push(reason.to_owned());
            wanted.moves.extend(moves);
        }
    };
    let (failbacks, held): (Vec<Move>, Vec<Move>) =
        kept(&failbacks).into_iter().partition(|m| !held_out(m));
    add(
        failbacks,
        "failback: recovered instances take their ranges back, with the data written meanwhile",
    );
    let planned = kept(&planned);
    let plan_held = planned.iter().any(held_out);
    let (legacy, legacy_held): (Vec<Move>, Vec<Move>) =
        kept(&legacy).into_iter().partition(|m| !held_out(m));
    if plan_held {
        wanted.held.extend(planned);
    } else if let Some(reason) = &plan_reason {
        add(planned, reason);
    }
    add(
        legacy,
        "draining instances hold data of the policy's categories",
    );
    wanted.held.extend(held);
    wanted.held.extend(legacy_held);
    wanted
}

/// What the `Rebalancing` condition and the `RebalanceHeldBack` Event say of `held`: the
/// instances named with their policies (the same text while the same instances hold moves
/// back, however many moves the planner would make).
pub fn held_back_note(held: &[Move], views: &[InstanceView]) -> Option<String> {
    held_note(&held.iter().map(|m| m.from.clone()).collect(), views)
}

/// What is held back after a reconcile, from what was (`before`: the instances named and the
/// note), the moves held now (`held`, all that is held when `fresh`, else the balance planner
/// was not asked and the instances of `before` still count while they evict), and whether the
/// note changed (an Event is due).
pub fn next_held(
    before: Option<&(BTreeSet<String>, String)>,
    held: &[Move],
    fresh: bool,
    views: &[InstanceView],
) -> (Option<(BTreeSet<String>, String)>, bool) {
    let sources: BTreeSet<String> = if fresh {
        held.iter().map(|m| m.from.clone()).collect()
    } else {
        before.map(|(s, _)| s.clone()).unwrap_or_default()
    };
    match held_note(&sources, views) {
        Some(note) => {
            let changed = before.is_none_or(|(_, n)| *n != note);
            (Some((sources, note)), changed)
        }
        None => (None, false),
    }
}

/// [`held_back_note`] of moves out of `sources`: the ones that still evict.
fn held_note(sources: &BTreeSet<String>, views: &[InstanceView]) -> Option<String> {
    // A plan held whole holds moves of other sources too: name the instances that hold it.
    let named: Vec<String> = views
        .iter()
        .filter(|v| sources.contains(&v.name))
        .filter_map(|v| Some(format!("{} ({})", v.name, v.evicting_policy.as_deref()?)))
        .collect();
    if named.is_empty() {
        return None;
    }
    Some(format!(
        "moves out of {} wait: a maxmemory-policy that may evict keys without a TTL could evict the fleet's own bookkeeping mid-move and lose writes; set a volatile-* policy or noeviction there",
        named.join(", ")
    ))
}

/// The moves of a new plan and why: failbacks first, then — once the cooldown has passed, or
/// when forced — the planner's moves, then the emptying of draining (legacy) instances. Moves
/// out of an instance that may evict keys without a TTL are held back.
fn moves_to_make(
    policy: &CachePolicy,
    rb: Option<&RebalanceStatus>,
    published: &RoutingTable,
    desired: &RoutingTable,
    views: &[InstanceView],
    sample: &PolicySample,
    forced: bool,
) -> Wanted {
    let cooldown = policy.spec.balancing.rebalance.cooldown.get();
    let cooled = rb
        .and_then(|r| r.finished_at.as_ref())
        .is_none_or(|t| Timestamp::now().duration_since(t.0).unsigned_abs() >= cooldown);
    let failbacks = failback_moves(published, views);
    let mut planned = None;
    // Not while a range waits to swap roles (a handover, a failback): its bytes are on its
    // server, not on its owner, and the planner could move the range itself meanwhile.
    let swapping = build::handovers::swap_pending(published, views);
    if (cooled || forced) && !swapping {
        let loads = planning::loads(views);
        let tiers = planning::tiers(&policy.spec);
        let input = PlanInput {
            current: published,
            desired: Some(desired),
            instances: &loads,
            category_bytes: &sample.category_bytes,
            categories: &tiers,
            threshold_percent: planning::threshold_percent(&policy.spec),
            force: forced,
        };
        let plan = plan::plan(&input);
        debug!(instances = ?loads, bytes = ?sample.category_bytes, ?plan, "planned");
        planned = plan.map(|p| (p.moves, p.reason));
    }
    // Emptying a legacy instance does not wait for the cooldown either — but for handovers:
    // it moves keys into a range's owner, which a handover's target is before it serves.
    let legacy = if build::handovers::under_way(published).is_some() {
        Vec::new()
    } else {
        legacy_moves(published, views, &sample.category_bytes)
    };
    Wanted {
        planner_asked: (cooled || forced) && !swapping,
        ..hold_evicting_sources(failbacks, planned, legacy, views)
    }
}

/// The rebalance Jobs of one policy, and what following them needs.
struct Driver<'a> {
    ctx: &'a Context,
    settings: &'a JobSettings,
    policy: &'a CachePolicy,
    policy_ns: String,
    jobs: Api<Job>,
    reference: ObjectReference,
    /// A `rebalance-now` annotation value not acted on yet.
    forced: Option<String>,
}

impl<'a> Driver<'a> {
    fn new(
        ctx: &'a Context,
        settings: &'a JobSettings,
        policy: &'a CachePolicy,
        rb: Option<&RebalanceStatus>,
    ) -> Self {
        let policy_ns = policy.namespace().unwrap_or_default();
        let job_ns = settings
            .namespace
            .clone()
            .unwrap_or_else(|| policy_ns.clone());
        let forced = policy
            .annotations()
            .get(REBALANCE_NOW_ANNOTATION)
            .filter(|v| rb.is_none_or(|r| r.forced_by.as_ref() != Some(*v)))
            .cloned();
        Self {
            ctx,
            settings,
            policy,
            jobs: Api::namespaced(ctx.client.clone(), &job_ns),
            policy_ns,
            reference: policy.object_ref(&()),
            forced,
        }
    }

    /// What the `redisfleet.io/rebalance` annotation asks for; an unknown value is reported
    /// (a Warning Event naming the annotation) and read as `resume`.
    async fn control(&self) -> RebalanceControl {
        let value = self.policy.annotations().get(REBALANCE_CONTROL_ANNOTATION);
        match RebalanceControl::parse(value.map(String::as_str)) {
            Ok(control) => control,
            Err(message) => {
                warn!(%message, "rebalance annotation");
                self.event("RebalanceAnnotationInvalid", true, message)
                    .await;
                RebalanceControl::Run
            }
        }
    }

    /// `redisfleet.io/rebalance: cancel` on plan `r` in progress. Before any key moved, every
    /// Job of the plan is fenced off its instances and the plan is rolled back: the old
    /// owners serve every range, as after a plan that never started. Once keys moved, a
    /// range's keys are split between source and target and only the plan's end puts them in
    /// one place: the plan runs on (pause holds it), and the cancel is not tried again.
    async fn cancel(&self, mut r: RebalanceStatus) -> Result<RebalanceStatus, Error> {
        if r.cancel_refused == Some(true) {
            return Ok(r);
        }
        // Markers are read first, changing nothing: a plan that imports already is refused
        // without fencing its running attempt off.
        let early = before_import(&r) && self.no_marker(&r).await;
        if early && self.nothing_imported(&r).await {
            r.phase = rebalance_phase::FAILED.to_owned();
            r.finished_at = Some(Time(Timestamp::now()));
            r.paused = None;
            r.message = Some(format!(
                "cancelled ({REBALANCE_CONTROL_ANNOTATION}=cancel) before any key moved: rolled back, the old owners serve every range; no plan starts until the annotation says resume or goes"
            ));
            info!(plan = r.plan_id, "rebalance cancelled and rolled back");
            self.event(
                "RebalanceCancelled",
                false,
                format!(
                    "plan {}: {}",
                    r.plan_id,
                    r.message.clone().unwrap_or_default()
                ),
            )
            .await;
            return Ok(r);
        }
        // Refused for good: trying again would fence each new attempt off in turn.
        r.cancel_refused = Some(true);
        r.paused = None;
        let why = if early {
            "could not roll the plan back: a source of it imports already (keys may have moved), or one of its instances did not answer"
        } else {
            "came after keys moved: their ranges are split between sources and targets"
        };
        r.message = Some(format!(
            "cancel ({REBALANCE_CONTROL_ANNOTATION}=cancel) {why}, so the plan runs to its end ({REBALANCE_CONTROL_ANNOTATION}=pause holds it); no other plan starts until the annotation says resume or goes"
        ));
        warn!(plan = r.plan_id, "rebalance cancel refused: keys moved");
        self.event(
            "RebalanceCancelRefused",
            true,
            format!(
                "plan {}: {}",
                r.plan_id,
                r.message.clone().unwrap_or_default()
            ),
        )
        .await;
        Ok(r)
    }

    /// Follows the Job of the rebalance in progress `r`: starts a new attempt when it is gone,
    /// records its success, retries a failure with a fresh Job up to a limit.
    async fn follow(&self, mut r: RebalanceStatus) -> Result<RebalanceStatus, Error> {
        let Some(name) = r.job.clone() else {
            // An attempt recorded without a Job (a partial abandon names the next attempt,
            // whose token fenced the running one off): its Job, which no pod has run yet.
            r.job = Some(job::job_name(
                &self.policy.name_any(),
                r.plan_id,
                r.attempts,
            ));
            self.create_job(&r).await?;
            return Ok(r);
        };
        let existing = self.jobs.get_opt(&name).await.map_err(Error::Rebalance)?;
        let outcome = existing.as_ref().and_then(job::outcome);
        match (existing, outcome) {
            // Gone (deleted by hand, by `ttlSecondsAfterFinished`, or never created): a new
            // attempt with a new mover token, never the same one again — a pod of the deleted
            // Job may still run (until its grace period ends, or its node is back), and only
            // a newer token fences it off the instances the new attempt moves between.
            (None, _) => {
                if self.forced.is_some() || r.attempts < MAX_ATTEMPTS {
                    info!(
                        plan = r.plan_id,
                        job = %name,
                        "the plan's Job is gone: starting a new attempt"
                    );
                    return self.retry(r).await;
                }
                // Spent: a Job deleted again and again (by hand, by a tool that prunes what it
                // did not create) must not have the operator create Jobs in a loop. The next
                // attempt waits as after a failed one; but the plan is neither rolled back nor
                // called done meanwhile, as after a failed one: the deleted Job's pod may still
                // run, and only the next attempt's token fences it off.
                let first_seen = r
                    .job_missing_since
                    .get_or_insert_with(|| Time(Timestamp::now()))
                    .0;
                let since = elapsed_since(first_seen);
                let what = format!("the Job of attempt {} is gone", r.attempts);
                // Its pod may still run and report its step: what it reported stays.
                return self.retry_after(r, since, &what, false).await;
            }
            (Some(_), Some(true)) if r.phase == rebalance_phase::FINALIZING => {
                r.phase = rebalance_phase::SUCCEEDED.to_owned();
                r.finished_at = Some(Time(Timestamp::now()));
                r.message = None;
                self.event(
                    "RebalanceSucceeded",
                    false,
                    format!(
                        "{} moves done: {}",
                        r.moves.len(),
                        r.reason.clone().unwrap_or_default()
                    ),
                )
                .await;
            }
            (Some(_), Some(true))
                if matches!(
                    r.step.as_deref(),
                    Some(rebalance_step::COPIED | rebalance_step::DONE)
                ) =>
            {
                // Finished, but the operator has not published the new owners yet: wait.
            }
            // Failed, or ended before finishing.
            (Some(done), Some(_)) => {
                self.ctx.metrics.rebalance_failed(&PolicyLabels {
                    namespace: self.policy_ns.clone(),
                    policy: self.policy.name_any(),
                });
                if self.forced.is_some() || r.attempts < MAX_ATTEMPTS {
                    return self.retry(r).await;
                }
                let ended = job::ended_at(&done).unwrap_or_else(Timestamp::now);
                let since = elapsed_since(ended);
                let what = format!("attempt {} failed", r.attempts);
                return self.spent(r, since, &what).await;
            }
            (Some(_), None) => {}
        }
        Ok(r)
    }

    /// Plan `r` after its [`MAX_ATTEMPTS`] are spent, its last attempt over `since` ago
    /// (`what` ended it): a plan whose new owners are out succeeds (only its cleanup failed);
    /// one that never imported is rolled back; otherwise it is retried, more slowly each time
    /// ([`retry_delay`]), since only finishing leaves every key in one place.
    async fn spent(
        &self,
        mut r: RebalanceStatus,
        since: std::time::Duration,
        what: &str,
    ) -> Result<RebalanceStatus, Error> {
        if r.phase == rebalance_phase::FINALIZING {
            // The new owners are published: only the cleanup failed.
            r.phase = rebalance_phase::SUCCEEDED.to_owned();
            r.finished_at = Some(Time(Timestamp::now()));
            r.message = Some(format!(
                "the data moved; the cleanup failed {} times (importing markers and checkpoints stay on the sources, harmless)",
                r.attempts
            ));
            return Ok(r);
        }
        if before_import(&r) && self.nothing_imported(&r).await {
            r.phase = rebalance_phase::FAILED.to_owned();
            r.finished_at = Some(Time(Timestamp::now()));
            r.message = Some(format!(
                "rolled back after {} attempts, before any key moved: the old owners serve every range again",
                r.attempts
            ));
            self.event(
                "RebalanceRolledBack",
                true,
                r.message.clone().unwrap_or_default(),
            )
            .await;
            return Ok(r);
        }
        // Keys moved: only finishing leaves every key in one place. Retry, slower.
        self.retry_after(r, since, what, true).await
    }

    /// Starts the next attempt of plan `r` once [`retry_delay`] has passed since its last one
    /// ended (`since` ago, as `what` says); until then, says when in `message` — and, when the
    /// last attempt's Job has `ended` (no pod of it reports any more), that no hold it reported
    /// lasts.
    async fn retry_after(
        &self,
        mut r: RebalanceStatus,
        since: std::time::Duration,
        what: &str,
        ended: bool,
    ) -> Result<RebalanceStatus, Error> {
        let wait = retry_delay(r.attempts + 1);
        if since < wait {
            if ended && no_job_holds(&mut r) {
                // Job-owned fields, which the operator's status writes leave alone.
                self.merge_rebalance_status(json!({"step": r.step, "pacing": null}))
                    .await?;
            }
            r.message = Some(format!(
                "{what}; retrying in {}s (the moving ranges are served through their sources meanwhile)",
                (wait - since).as_secs()
            ));
            return Ok(r);
        }
        self.retry(r).await
    }

    /// Merge-patches `status.rebalance` with `fields` (`null` clears one): also the fields the
    /// Job owns, which the operator's status writes leave alone.
    async fn merge_rebalance_status(&self, fields: serde_json::Value) -> Result<(), Error> {
        self.patch_rebalance_status(json!({"status": {"rebalance": fields}}))
            .await
    }

    /// [`Self::merge_rebalance_status`], only if the policy is still as this reconcile read it
    /// (its `resourceVersion`, a precondition): a plan is started from what the status said
    /// then. Two operators without leader election (or a leader that does not know yet that
    /// it lost the lease) may both find no plan and start the same one. The one behind used
    /// to clear the plan the other had started — the Job's `Prepared` step among it — and the
    /// Job then waited for a flip nobody would publish, 10 minutes, until its publish timeout.
    /// Now its patch is refused with a conflict, and its next reconcile follows that plan.
    async fn merge_rebalance_status_unchanged(
        &self,
        fields: serde_json::Value,
    ) -> Result<(), Error> {
        let mut body = json!({"status": {"rebalance": fields}});
        if let Some(version) = self.policy.resource_version() {
            body["metadata"] = json!({ "resourceVersion": version });
        }
        self.patch_rebalance_status(body).await
    }

    async fn patch_rebalance_status(&self, body: serde_json::Value) -> Result<(), Error> {
        let api: Api<CachePolicy> = Api::namespaced(self.ctx.client.clone(), &self.policy_ns);
        api.patch_status(
            &self.policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
        .map_err(Error::WriteStatus)?;
        Ok(())
    }

    /// Starts attempt `attempts + 1` of plan `r` with a new Job.
    async fn retry(&self, mut r: RebalanceStatus) -> Result<RebalanceStatus, Error> {
        r.job_missing_since = None;
        r.attempts = if self.forced.is_some() {
            r.attempts.max(1) + 1
        } else {
            r.attempts + 1
        };
        if self.forced.is_some() {
            r.forced_by = self.forced.clone();
        }
        r.job = Some(job::job_name(
            &self.policy.name_any(),
            r.plan_id,
            r.attempts,
        ));
        self.create_job(&r).await?;
        self.event(
            "RebalanceRetried",
            true,
            format!("attempt {} of plan {}", r.attempts, r.plan_id),
        )
        .await;
        Ok(r)
    }

    /// Whether no source of plan `r` holds its importing marker, read without changing
    /// anything (`false` also when a source does not answer).
    async fn no_marker(&self, r: &RebalanceStatus) -> bool {
        let namespace = &self.policy_ns;
        let key = format!("{namespace}/{}", self.policy.name_any());
        let instances: Vec<Arc<RedisInstance>> = self.ctx.instances.state();
        for m in &r.moves {
            let Some(ri) = instances
                .iter()
                .find(|ri| ri.name_any() == m.from && ri.namespace().as_deref() == Some(namespace))
            else {
                return false;
            };
            let marker = names::importing(&key, &abandon::migration_of(m, r.plan_id));
            if !matches!(
                fences::importing(self.ctx, namespace, ri, &marker).await,
                Ok(false)
            ) {
                return false;
            }
        }
        true
    }

    /// Fences every Job of plan `r` off its sources and targets, then checks that no source
    /// imports: `true` when the plan can be rolled back without moving a key.
    async fn nothing_imported(&self, r: &RebalanceStatus) -> bool {
        let namespace = &self.policy_ns;
        let key = format!("{namespace}/{}", self.policy.name_any());
        let instances: Vec<Arc<RedisInstance>> = self.ctx.instances.state();
        let find = |name: &str| {
            instances
                .iter()
                .find(|ri| ri.name_any() == name && ri.namespace().as_deref() == Some(namespace))
                .cloned()
        };
        // Fence the attempts so far off with the *next* attempt's token, not the plan's
        // highest: when a source imports already, that next attempt must still be able to
        // claim the instances and finish the plan (with the highest token, every later
        // attempt stopped at once, "a newer attempt is in charge", and the plan never ended).
        let next = fences::attempt_mover(&key, r.plan_id, r.attempts.saturating_add(1));
        for m in &r.moves {
            for end in [&m.from, &m.to] {
                let Some(ri) = find(end) else { return false };
                if fences::claim(self.ctx, namespace, &next, &ri)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
        for m in &r.moves {
            let Some(ri) = find(&m.from) else {
                return false;
            };
            match fences::importing(
                self.ctx,
                namespace,
                &ri,
                &names::importing(&key, &abandon::migration_of(m, r.plan_id)),
            )
            .await
            {
                Ok(false) => {}
                _ => return false,
            }
        }
        true
    }

    /// Starts a plan of `moves`, numbered after the published table's version.
    async fn start(
        self,
        rb: Option<RebalanceStatus>,
        moves: &[Move],
        reasons: Vec<String>,
        published: &RoutingTable,
    ) -> Result<RebalanceStatus, Error> {
        // Plan ids never repeat (they name the importing markers): a plan that failed before
        // anything was published has the same table version as the next one.
        let plan_id = i64::try_from(published.version)
            .unwrap_or(i64::MAX)
            .max(rb.as_ref().map_or(0, |r| r.plan_id + 1));
        let r = RebalanceStatus {
            phase: rebalance_phase::PREPARING.to_owned(),
            plan_id,
            job: Some(job::job_name(&self.policy.name_any(), plan_id, 1)),
            reason: Some(reasons.join("; ")),
            moves: to_status(moves, published),
            attempts: 1,
            started_at: Some(Time(Timestamp::now())),
            forced_by: self
                .forced
                .clone()
                .or_else(|| rb.as_ref().and_then(|r| r.forced_by.clone())),
            ..RebalanceStatus::default()
        };
        // The progress of an earlier plan must not be read as this one's — nor its moves, flip
        // and final versions: the Job may start before the reconcile writes the full status,
        // and would then carry out the earlier plan's moves under this plan's id (moving
        // nothing, while this plan's finalize frees its sources) or skip its prepare.
        self.merge_rebalance_status_unchanged(new_plan_patch(&r))
            .await?;
        self.create_job(&r).await?;
        info!(
            plan = plan_id,
            moves = moves.len(),
            reason = r.reason.as_deref().unwrap_or_default(),
            "rebalance started"
        );
        self.event(
            "RebalanceStarted",
            false,
            format!(
                "plan {plan_id}: {} moves ({})",
                moves.len(),
                r.reason.clone().unwrap_or_default()
            ),
        )
        .await;
        Ok(r)
    }

    async fn create_job(&self, r: &RebalanceStatus) -> Result<(), Error> {
        let job = job::build(self.policy, r.plan_id, r.attempts, self.settings);
        match self.jobs.create(&PostParams::default(), &job).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(Error::Rebalance(e)),
        }
    }

    /// What the `Rebalancing` condition says of the moves held back, with a log line and an
    /// Event when that changed (once per change of the instances named, not per reconcile).
    /// `fresh`: `held` is all that is held now; otherwise (the balance planner not asked, in
    /// its cooldown, and nothing else wanted) the instances that held moves back last time
    /// still count, as long as they still evict.
    async fn report_held(
        &self,
        ctx: &PolicyContext,
        held: &[Move],
        fresh: bool,
        views: &[InstanceView],
    ) -> Option<String> {
        let key = self.policy_key();
        let (changed, note) = {
            let mut reported = ctx.held_reported.lock().unwrap_or_else(|e| e.into_inner());
            let (next, changed) = next_held(reported.get(&key), held, fresh, views);
            let note = next.as_ref().map(|(_, note)| note.clone());
            match next {
                Some(next) => reported.insert(key, next),
                None => reported.remove(&key),
            };
            (changed, note)
        };
        if let (true, Some(note)) = (changed, &note) {
            warn!(%note, "rebalance held back");
            self.event("RebalanceHeldBack", true, note.clone()).await;
        }
        note
    }

    /// `namespace/name` of the policy, the key of its state in the operator's context.
    fn policy_key(&self) -> String {
        format!("{}/{}", self.policy_ns, self.policy.name_any())
    }

    async fn event(&self, reason: &str, warning: bool, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Rebalance".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &self.reference).await {
            warn!(error = %e, "recording an event failed");
        }
    }
}

#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod tests;
