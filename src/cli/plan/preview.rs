//! The pure step of `redis-fleet plan`: from the policy, its instances (with the what-ifs
//! applied), the published table and a sample, the moves the operator would plan — composed
//! as its rebalance step composes them (failbacks, the balance planner's moves, the emptying
//! of legacy instances) — with each move's estimated keys and bytes and each instance's share
//! before → after. Also the `-o json` document.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::cache_policy::{CachePolicy, REBALANCE_CONTROL_ANNOTATION, RebalanceControl};
use crate::operator::cache_policy::build::{self, InstanceView, plan_routing};
use crate::operator::cache_policy::{planning, rebalance};
use crate::rebalance::plan::{self, PlanInput};
use crate::routing::table::RoutingTable;

/// `schemaVersion` of the `-o json` document.
pub const SCHEMA_VERSION: u32 = 1;

/// What a preview is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The policy.
    pub policy: &'a CachePolicy,
    /// Its instances, what-ifs applied.
    pub views: &'a [InstanceView],
    /// The routing table in the ConfigMap.
    pub published: &'a RoutingTable,
    /// Sampled bytes per (category, instance).
    pub category_bytes: &'a BTreeMap<(String, String), u64>,
    /// Sampled keys per (category, instance).
    pub category_keys: &'a BTreeMap<(String, String), u64>,
    /// `capacityThreshold`, or the `--threshold` asked for.
    pub threshold_percent: u32,
    /// Now, for the cooldown.
    pub now: Timestamp,
}

/// What the operator would plan now (the `-o json` document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Format of this document.
    pub schema_version: u32,
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Version of the routing table planned from.
    pub routing_version: u64,
    /// Capacity threshold planned with, in percent.
    pub threshold_percent: u32,
    /// The what-ifs applied (instances added, drained, another threshold).
    #[serde(default)]
    pub what_if: Vec<String>,
    /// What the preview assumed or could not do (unsampled instances, …).
    #[serde(default)]
    pub notes: Vec<String>,
    /// When the operator would act on it (a rebalance running, the cooldown, rebalancing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Why the plan moves what it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why nothing would move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    /// The moves, by category.
    #[serde(default)]
    pub moves: Vec<PlannedMove>,
    /// Estimated bytes of all moves.
    pub total_bytes: u64,
    /// Estimated keys of all moves.
    pub total_keys: u64,
    /// The least bytes that bring every instance within the band (when the balance planner
    /// planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_bytes: Option<u64>,
    /// The fleet's mean used share, in percent.
    pub mean_percent: f64,
    /// Half-width of the band, in percentage points.
    pub band_points: u32,
    /// Every instance of the policy, before → after.
    pub instances: Vec<PlannedInstance>,
}

/// One slot range that would move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMove {
    /// Category.
    pub category: String,
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
    /// Source instance.
    pub from: String,
    /// Target instance.
    pub to: String,
    /// Estimated keys.
    pub keys: u64,
    /// Estimated bytes.
    pub bytes: u64,
    /// Handed over rather than moved by a Job: a replicated range whose new owner is seeded as a
    /// third copy, then takes over by swapping roles (`docs/replication.md`, "Moves that hand
    /// over"). The operator hands these over first, and plans the rest again afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handover: bool,
}

/// One instance before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedInstance {
    /// RedisInstance name.
    pub name: String,
    /// Tier label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Phase (Ready for an added instance).
    pub phase: String,
    /// Draining (as it is, or as asked with `--drain`).
    #[serde(default)]
    pub drain: bool,
    /// Capacity in bytes (0: unknown).
    pub capacity_bytes: u64,
    /// Used memory now.
    pub used_bytes: u64,
    /// Used memory after the plan (estimate).
    pub planned_bytes: u64,
    /// `usedBytes` of capacity, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_percent: Option<f64>,
    /// `plannedBytes` of capacity, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_percent: Option<f64>,
    /// Within the band after the plan (instances that may hold data only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_band: Option<bool>,
}

impl Preview {
    /// Instances that may hold data and end outside the band.
    pub fn outside(&self) -> Vec<&PlannedInstance> {
        self.instances
            .iter()
            .filter(|i| i.in_band == Some(false))
            .collect()
    }
}

fn percent(bytes: u64, capacity: u64) -> Option<f64> {
    (capacity > 0).then(|| (bytes as f64 * 10_000.0 / capacity as f64).round() / 100.0)
}

/// The moves the operator would plan from `inputs` (ignoring its cooldown, which `when`
/// reports).
pub fn preview(inputs: &Inputs<'_>, what_if: Vec<String>, mut notes: Vec<String>) -> Preview {
    let policy = inputs.policy;
    let spec = &policy.spec;
    let key = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    let planned = plan_routing(&key, spec, inputs.views, Some(inputs.published));
    notes.extend(planned.problems.iter().map(ToString::to_string));
    let desired = planned.table.unwrap_or_else(|| inputs.published.clone());
    // What the operator plans from: the published owners, which change only with their data.
    let current = rebalance::hold_back(&desired, Some(inputs.published), inputs.views);
    let loads = planning::loads(inputs.views);
    let tiers = planning::tiers(spec);
    let input = PlanInput {
        current: &current,
        desired: Some(&desired),
        instances: &loads,
        category_bytes: inputs.category_bytes,
        categories: &tiers,
        threshold_percent: inputs.threshold_percent,
        force: false,
    };
    let assessment = plan::assess(&input);

    // As the rebalance step composes them: failbacks, the planner's moves, legacy instances,
    // with the moves out of instances that may evict keys without a TTL held back.
    let rebalance::Wanted {
        moves,
        reasons,
        held,
        ..
    } = rebalance::hold_evicting_sources(
        rebalance::failback_moves(&current, inputs.views),
        assessment
            .plan
            .as_ref()
            .map(|p| (p.moves.clone(), p.reason.clone())),
        rebalance::legacy_moves(&current, inputs.views, inputs.category_bytes),
        inputs.views,
    );
    let held = rebalance::held_back_note(&held, inputs.views);
    notes.extend(held.clone());
    let estimates = plan::estimate(&input, inputs.category_keys, &moves);

    let delta = plan::used_change(&current, &moves, &estimates);
    let balance = &assessment.balance;
    let (lower, upper) = (balance.lower(), balance.upper());
    let instances = inputs
        .views
        .iter()
        .zip(&loads)
        .map(|(v, l)| {
            let capacity = l.capacity;
            let planned = (l.used as i64 + delta.get(&l.name).copied().unwrap_or(0)).max(0) as u64;
            let after = percent(planned, capacity);
            let in_fleet = l.serving && !l.drain && capacity > 0;
            PlannedInstance {
                name: v.name.clone(),
                tier: v.tier.clone(),
                phase: v.phase.to_string(),
                drain: v.drain,
                capacity_bytes: capacity,
                used_bytes: l.used,
                planned_bytes: planned,
                before_percent: percent(l.used, capacity),
                after_percent: after,
                in_band: in_fleet.then(|| {
                    after
                        .is_some_and(|a| a / 100.0 >= lower - 0.0005 && a / 100.0 <= upper + 0.0005)
                }),
            }
        })
        .collect();

    Preview {
        schema_version: SCHEMA_VERSION,
        policy: key,
        routing_version: inputs.published.version,
        threshold_percent: inputs.threshold_percent,
        what_if,
        notes,
        when: when(policy, inputs.now).or_else(|| {
            build::handovers::swap_pending(inputs.published, inputs.views).then(|| {
                "a range is handed over, or fails back, by swapping roles: the operator plans again once that ended".to_owned()
            })
        }),
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        idle: moves
            .is_empty()
            .then(|| held.unwrap_or_else(|| assessment.idle.clone())),
        total_bytes: estimates.iter().map(|e| e.bytes).sum(),
        total_keys: estimates.iter().map(|e| e.keys).sum(),
        moves: moves
            .iter()
            .zip(&estimates)
            .map(|(m, e)| PlannedMove {
                category: m.category.clone(),
                start: m.range.start,
                end: m.range.end,
                from: m.from.clone(),
                to: m.to.clone(),
                keys: e.keys,
                bytes: e.bytes,
                handover: build::handovers::may_hand_over(
                    inputs.published,
                    spec,
                    inputs.views,
                    m,
                ),
            })
            .collect(),
        least_bytes: assessment.plan.as_ref().map(|p| p.balance.least_bytes),
        mean_percent: (balance.mean * 1000.0).round() / 10.0,
        band_points: (balance.band * 100.0).round() as u32,
        instances,
    }
}

/// When the operator would act on a plan: not while one runs, not before the cooldown has
/// passed, not while the `redisfleet.io/rebalance` annotation holds it, never with
/// rebalancing off.
fn when(policy: &CachePolicy, now: Timestamp) -> Option<String> {
    let rebalance = &policy.spec.balancing.rebalance;
    if !rebalance.enabled {
        return Some(
            "rebalancing is off (spec.balancing.rebalance.enabled: false): the operator moves nothing"
                .to_owned(),
        );
    }
    let r = policy.status.as_ref().and_then(|s| s.rebalance.as_ref());
    if let Some(r) = r.filter(|r| r.is_active()) {
        return Some(format!(
            "plan {} is {}{}: the operator plans again once it finished",
            r.plan_id,
            r.phase.to_lowercase(),
            if r.paused == Some(true) {
                format!(" and paused ({REBALANCE_CONTROL_ANNOTATION}=pause)")
            } else {
                String::new()
            }
        ));
    }
    match RebalanceControl::of(policy) {
        RebalanceControl::Run => {}
        held => {
            let value = if held == RebalanceControl::Pause {
                "pause"
            } else {
                "cancel"
            };
            return Some(format!(
                "rebalancing is held ({REBALANCE_CONTROL_ANNOTATION}={value}): the operator starts no plan until the annotation says resume or goes"
            ));
        }
    }
    let r = r?;
    let finished = r.finished_at.as_ref()?.0;
    let cooldown = rebalance.cooldown.get();
    let since = now.duration_since(finished).unsigned_abs();
    (since < cooldown).then(|| {
        format!(
            "the cooldown ({}) has {}s left: the operator plans then (or at once on the redisfleet.io/rebalance-now annotation)",
            rebalance.cooldown.as_str(),
            (cooldown - since).as_secs()
        )
    })
}
