//! The status step of a CachePolicy reconcile. What was published, where each category lives,
//! failovers, conditions and capacity-planning advice are pure functions of what the
//! reconciler saw ([`policy_status`]), the growth advice from a memory history kept between
//! reconciles ([`UsageHistory`]); then the metrics and the status write ([`write()`]), when
//! [`write_decision`] says so.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::debug;

use crate::api::FIELD_MANAGER;
use crate::api::cache_policy::{
    CachePolicy, CachePolicyStatus, CategoryReplicationStatus, CategoryUsage, FailoverStatus,
    JOB_OWNED_REBALANCE_FIELDS, PolicyInstanceStatus, RoutingStatus,
};
use crate::api::conditions::{Time, condition, set_condition};
use crate::api::quantity::format_bytes_human;
use crate::api::redis_instance::InstancePhase;
use crate::routing::table::RoutingTable;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::operator::context::Context;
use crate::operator::metrics::{Metrics, PolicyLabels};
use crate::operator::status_writes::{Write, moved_a_point};

use super::Error;
use super::build::{InstanceView, Problem};

/// Condition types of a CachePolicy.
pub mod condition_type {
    /// The routing ConfigMap holds the table for the current spec.
    pub const ROUTING_PUBLISHED: &str = "RoutingPublished";
    /// Data is being moved between instances.
    pub const REBALANCING: &str = "Rebalancing";
    /// Part of the keyspace is served away from its instances, or cannot be served.
    pub const DEGRADED: &str = "Degraded";
    /// Every category is served.
    pub const READY: &str = "Ready";
    /// Every slot of every replicated category has a seeded replica (absent when no category
    /// is replicated).
    pub const REPLICATED: &str = "Replicated";
}
use condition_type::{DEGRADED, READY, ROUTING_PUBLISHED};

/// What the reconciler observed and did.
#[derive(Debug, Clone)]
pub struct PolicyObservation<'a> {
    /// Now.
    pub now: Timestamp,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Routing ConfigMap name.
    pub config_map: &'a str,
    /// The table now in the ConfigMap, if any.
    pub published: Option<&'a RoutingTable>,
    /// Whether this reconcile published a new version.
    pub published_now: bool,
    /// Why no table could be published, if so.
    pub publish_error: Option<String>,
    /// Selected instances.
    pub instances: &'a [InstanceView],
    /// Problems found while planning.
    pub problems: &'a [Problem],
    /// `capacityThreshold` in percent.
    pub threshold: i32,
    /// Memory growth per instance in bytes per hour, where known.
    pub growth: &'a BTreeMap<String, f64>,
}

/// Computes the policy status from the previous one and an observation.
pub fn policy_status(
    prev: Option<&CachePolicyStatus>,
    obs: &PolicyObservation<'_>,
) -> CachePolicyStatus {
    let mut status = prev.cloned().unwrap_or_default();
    status.observed_generation = obs.generation;
    let generation = obs.generation;

    if let Some(table) = obs.published {
        let published_at = match (&status.routing, obs.published_now) {
            (Some(r), false) if r.version == table.version as i64 => r.published_at.clone(),
            _ => Some(Time(obs.now)),
        };
        status.routing = Some(RoutingStatus {
            config_map: obs.config_map.to_owned(),
            version: i64::try_from(table.version).unwrap_or(i64::MAX),
            hash: table.content_hash(),
            published_at,
        });
    }

    // Instances and what they hold.
    let mut slots: BTreeMap<&str, i32> = BTreeMap::new();
    let mut cats: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    if let Some(table) = obs.published {
        for c in &table.categories {
            for run in &c.slots {
                *slots.entry(run.instance.as_str()).or_default() += run.range.len() as i32;
                cats.entry(run.instance.as_str())
                    .or_default()
                    .insert(c.name.as_str());
            }
        }
    }
    status.instances = obs
        .instances
        .iter()
        .map(|i| PolicyInstanceStatus {
            name: i.name.clone(),
            phase: Some(i.phase),
            used_percent: i
                .capacity_bytes
                .filter(|c| *c > 0)
                .map(|c| (u128::from(i.used_bytes) * 100 / u128::from(c)) as i32),
            categories: cats
                .get(i.name.as_str())
                .map(|s| s.iter().map(|c| (*c).to_owned()).collect())
                .unwrap_or_default(),
            slots: slots.get(i.name.as_str()).copied().unwrap_or(0),
        })
        .collect();

    // Failovers, keeping `since` across reconciles.
    let mut failovers: BTreeMap<(String, String, String), i32> = BTreeMap::new();
    if let Some(table) = obs.published {
        // A handover is a move, not an outage.
        for f in table.failover.iter().filter(|f| !f.handover) {
            *failovers
                .entry((f.category.clone(), f.from.clone(), f.to.clone()))
                .or_default() += i32::from(f.end - f.start) + 1;
        }
    }
    let prev_failovers = prev.map(|p| p.failovers.clone()).unwrap_or_default();
    status.failovers = failovers
        .into_iter()
        .map(|((category, from, to), slots)| {
            let since = prev_failovers
                .iter()
                .find(|f| f.category == category && f.from == from && f.to == to)
                .and_then(|f| f.since.clone())
                .or(Some(Time(obs.now)));
            FailoverStatus {
                category,
                from,
                to,
                slots,
                since,
            }
        })
        .collect();

    // Conditions.
    match (&obs.publish_error, obs.published) {
        (Some(err), _) => set_condition(
            &mut status.conditions,
            condition(
                ROUTING_PUBLISHED,
                false,
                "NotPublished",
                err.clone(),
                generation,
                obs.now,
            ),
        ),
        (None, Some(t)) => set_condition(
            &mut status.conditions,
            condition(
                ROUTING_PUBLISHED,
                true,
                "Published",
                format!("version {} in ConfigMap {}", t.version, obs.config_map),
                generation,
                obs.now,
            ),
        ),
        (None, None) => {}
    }
    let unreachable: Vec<&str> = obs
        .instances
        .iter()
        .filter(|i| i.phase == InstancePhase::Unreachable)
        .map(|i| i.name.as_str())
        .collect();
    let degraded_instances: Vec<&str> = obs
        .instances
        .iter()
        .filter(|i| i.phase == InstancePhase::Degraded)
        .map(|i| i.name.as_str())
        .collect();
    let (degraded, reason, message) = if let Some(p) = obs.problems.first() {
        let reason = match p {
            Problem::NoCandidates { .. } => "NoInstances",
            Problem::Waiting { .. } => "WaitingForInstances",
            Problem::NoFallback { .. } => "Unavailable",
        };
        let all: Vec<String> = obs.problems.iter().map(ToString::to_string).collect();
        (true, reason, all.join("; "))
    } else if !status.failovers.is_empty() {
        let list: Vec<String> = status
            .failovers
            .iter()
            .map(|f| format!("{} from {} to {}", f.category, f.from, f.to))
            .collect();
        (
            true,
            "FailedOver",
            format!("served by a fallback: {}", list.join(", ")),
        )
    } else if !unreachable.is_empty() {
        (
            true,
            "InstanceUnreachable",
            format!("unreachable: {}", unreachable.join(", ")),
        )
    } else if !degraded_instances.is_empty() {
        (
            true,
            "InstanceDegraded",
            format!("degraded: {}", degraded_instances.join(", ")),
        )
    } else {
        (
            false,
            "AllServed",
            "every category is served by its own instances".to_owned(),
        )
    };
    set_condition(
        &mut status.conditions,
        condition(DEGRADED, degraded, reason, message, generation, obs.now),
    );
    let blocking: Vec<String> = obs.problems.iter().map(ToString::to_string).collect();
    let ready = obs.published.is_some() && obs.publish_error.is_none() && blocking.is_empty();
    let (reason, message) = if ready {
        ("Serving", "every category has a published route".to_owned())
    } else if let Some(e) = &obs.publish_error {
        ("NotPublished", e.clone())
    } else if !blocking.is_empty() {
        ("Unavailable", blocking.join("; "))
    } else {
        ("NotPublished", "no routing table yet".to_owned())
    };
    set_condition(
        &mut status.conditions,
        condition(READY, ready, reason, message, generation, obs.now),
    );

    status.recommendations =
        recommendations(obs.instances, obs.published, obs.threshold, obs.growth);
    status
}

/// The `Rebalancing` condition's reason while replicated ranges are handed over
/// (`build::handovers`): `True`, though no plan runs.
pub const HANDING_OVER: &str = "HandingOver";

/// Sets the `Rebalancing` condition from `status.rebalance`, and — no plan running, the last
/// one not failed — from `held`: the reason (`HeldBack`, `WaitingForTable`, [`HANDING_OVER`])
/// and why the moves the fleet wants wait, or what is handed over. The message quotes no
/// figure the Job reports as the copy goes (keys moved, the rate): they are in
/// `status.rebalance` and the `kubectl get` columns, and a message that changed with them was
/// a status write for each of the Job's reports.
pub fn set_rebalancing_condition(
    status: &mut CachePolicyStatus,
    held: Option<(&str, &str)>,
    generation: Option<i64>,
    now: Timestamp,
) {
    use crate::api::cache_policy::{rebalance_phase, rebalance_step};
    let (on, reason, message) = match &status.rebalance {
        // The Job holds the copy for a source switched to an evicting policy (it may be
        // paused too: the hold lasts until both are lifted).
        Some(r) if r.is_active() && r.step.as_deref() == Some(rebalance_step::SOURCE_EVICTING) => (
            true,
            "SourceEvicting".to_owned(),
            format!(
                "plan {} holds its copy in {}{}: {}",
                r.plan_id,
                r.phase,
                if r.paused == Some(true) {
                    ", and is paused (redisfleet.io/rebalance=pause)"
                } else {
                    ""
                },
                r.pacing
                    .as_deref()
                    .unwrap_or("a source may evict keys without a TTL")
            ),
        ),
        Some(r) if r.is_active() && r.paused == Some(true) => (
            true,
            "Paused".to_owned(),
            format!(
                "plan {} paused (redisfleet.io/rebalance=pause) in {}",
                r.plan_id, r.phase,
            ),
        ),
        Some(r) if r.is_active() => (
            true,
            r.phase.clone(),
            format!(
                "plan {}: {} moves{}",
                r.plan_id,
                r.moves.len(),
                r.step
                    .as_deref()
                    .map(|step| format!(", step {step}"))
                    .unwrap_or_default()
            ),
        ),
        Some(r) if r.phase == rebalance_phase::FAILED => (
            false,
            "Failed".to_owned(),
            r.message.clone().unwrap_or_default(),
        ),
        // A handover is a move under way, outside any plan.
        _ if let Some((reason, held)) = held => {
            (reason == HANDING_OVER, reason.to_owned(), held.to_owned())
        }
        Some(r) => (
            false,
            "Idle".to_owned(),
            format!("last plan {} {}", r.plan_id, r.phase),
        ),
        None => (false, "Idle".to_owned(), "no rebalance so far".to_owned()),
    };
    set_condition(
        &mut status.conditions,
        condition(
            condition_type::REBALANCING,
            on,
            &reason,
            message,
            generation,
            now,
        ),
    );
}

/// Sets the `Replicated` condition from `status.replication` (removes it when no category is
/// replicated): `True` when every slot of every replicated category has a seeded replica,
/// else `False` with reason `Unreplicated` (slots without a replica: moving, or no instance
/// can hold one) or `Seeding` (replicas being seeded). Returns the condition when it is set.
pub fn set_replicated_condition(
    status: &mut CachePolicyStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Condition> {
    use condition_type::REPLICATED;
    if status.replication.is_empty() {
        status.conditions.retain(|c| c.type_ != REPLICATED);
        return None;
    }
    let describe = |count: fn(&CategoryReplicationStatus) -> i32, what: &str| -> Vec<String> {
        status
            .replication
            .iter()
            .filter(|r| count(r) > 0)
            .map(|r| format!("{}: {} slots {what}", r.category, count(r)))
            .collect()
    };
    let missing = describe(|r| r.unreplicated_slots, "without a replica");
    let seeding = describe(|r| r.seeding_slots, "being seeded");
    let (on, reason, message) = if !missing.is_empty() {
        let mut all = missing;
        all.extend(seeding);
        (
            false,
            "Unreplicated",
            format!(
                "{} (moving, or no instance can hold a replica): the owner's death drops what only it holds",
                all.join("; ")
            ),
        )
    } else if !seeding.is_empty() {
        (false, "Seeding", seeding.join("; "))
    } else {
        let names: Vec<&str> = status
            .replication
            .iter()
            .map(|r| r.category.as_str())
            .collect();
        let moving = describe(|r| r.handover_slots, "moving to a new replica");
        let mut message = format!("every slot of {} has a seeded replica", names.join(", "));
        if !moving.is_empty() {
            message.push_str(&format!(" ({})", moving.join("; ")));
        }
        (true, "Replicated", message)
    };
    let c = condition(REPLICATED, on, reason, message, generation, now);
    set_condition(&mut status.conditions, c.clone());
    Some(c)
}

/// Records an Event when the `Replicated` condition changes (status or reason) from what
/// `policy`'s status said. Always `Normal`: every move leaves its slots without a replica for
/// a while; a lasting gap is the alert `RedisFleetRangesUnreplicated`'s to raise.
pub async fn replication_event(ctx: &Context, policy: &CachePolicy, now: &Condition) {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType};
    let before = policy.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition_type::REPLICATED)
    });
    if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
        return;
    }
    let event = Event {
        type_: EventType::Normal,
        reason: now.reason.clone(),
        note: Some(now.message.chars().take(1000).collect()),
        action: "Replicate".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(error = %e, "recording an event failed");
    }
}

/// Records a `Warning` Event `SidecarsBehind` with `note` when replicas started seeding
/// although sidecars were still on an older table after the converge timeout
/// (`seeding::may_start`, at most once a minute): those sidecars are fenced off the ranges'
/// writers and replicas, and their clients get `-TRYAGAIN` there until they load the table.
pub async fn seeding_overdue_event(ctx: &Context, policy: &CachePolicy, note: &str) {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType};
    let event = Event {
        type_: EventType::Warning,
        reason: "SidecarsBehind".to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Seed".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(error = %e, "recording an event failed");
    }
}

/// Capacity-planning advice: instances over the threshold, growth and time to full, and
/// instances to add when a whole tier is over the threshold.
pub fn recommendations(
    instances: &[InstanceView],
    table: Option<&RoutingTable>,
    threshold: i32,
    growth: &BTreeMap<String, f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let threshold_f = f64::from(threshold) / 100.0;
    for i in instances {
        if let Some(policy) = &i.evicting_policy {
            out.push(format!(
                "{}: maxmemory-policy {policy} may evict the fleet's own keys, which carry no TTL; set volatile-lru (with ttl.default on every category) or noeviction, or no rebalance moves data out of it",
                i.name
            ));
        }
        let Some(cap) = i.capacity_bytes.filter(|c| *c > 0) else {
            continue;
        };
        let used = i.used_bytes as f64;
        let pct = used / cap as f64;
        if pct >= threshold_f {
            out.push(format!(
                "{} is at {:.0}% of {} (threshold {threshold}%)",
                i.name,
                (pct * 100.0).floor(),
                format_bytes_human(cap)
            ));
        }
        if let Some(per_hour) = growth.get(&i.name).copied().filter(|g| *g > 1024.0) {
            let to_threshold = (cap as f64 * threshold_f - used) / per_hour;
            let to_full = (cap as f64 - used) / per_hour;
            let rate = format_bytes_human(per_hour as u64);
            if to_full > 0.0 {
                let when = if to_threshold > 0.0 {
                    format!(
                        "reaches {threshold}% in ~{} and is full in ~{}",
                        hours(to_threshold),
                        hours(to_full)
                    )
                } else {
                    format!("is full in ~{}", hours(to_full))
                };
                out.push(format!("{} grows ~{rate}/h: {when}", i.name));
            }
        }
    }
    // A draining instance that stays a category's replica: nobody else can hold the copies
    // (placement replaces it seed-first as soon as one can), so its drain cannot finish.
    if let Some(t) = table {
        for i in instances.iter().filter(|i| i.drain) {
            let kept: Vec<String> = t
                .categories
                .iter()
                .filter_map(|c| {
                    let slots: u32 = c
                        .replication
                        .iter()
                        .flat_map(|r| &r.replicas)
                        .filter(|run| run.instance == i.name)
                        .map(|run| run.range.len())
                        .sum();
                    (slots > 0).then(|| format!("{} ({slots} slots)", c.name))
                })
                .collect();
            if !kept.is_empty() {
                out.push(format!(
                    "{} drains but stays the replica of {}: no other instance can take the copies now (the others are down, draining, serving those slots or moving them); add one (the category's fallback tier, its tier, or any) or turn its replication off to let the drain finish",
                    i.name,
                    kept.join(", ")
                ));
            }
        }
    }
    // Tiers as a whole: the instances each category's slots live on.
    let mut tiers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in instances.iter().filter(|i| !i.drain) {
        let Some(cap) = i.capacity_bytes else {
            continue;
        };
        let key = i.tier.clone().unwrap_or_else(|| "(untiered)".to_owned());
        let e = tiers.entry(key).or_default();
        e.0 += i.used_bytes;
        e.1 += cap;
    }
    let used_tiers: BTreeSet<String> = table
        .map(|t| {
            let by_name: BTreeMap<&str, &InstanceView> =
                instances.iter().map(|i| (i.name.as_str(), i)).collect();
            t.categories
                .iter()
                .flat_map(|c| c.slots.iter())
                .filter_map(|o| by_name.get(o.instance.as_str()))
                .map(|i| i.tier.clone().unwrap_or_else(|| "(untiered)".to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let target = (f64::from(threshold) - 20.0).max(f64::from(threshold) / 2.0) / 100.0;
    for (tier, (used, cap)) in tiers {
        if cap == 0 || !used_tiers.contains(&tier) {
            continue;
        }
        let pct = used as f64 / cap as f64;
        if pct >= threshold_f {
            let needed = (used as f64 / target - cap as f64).max(0.0);
            let mib = (needed / f64::from(1 << 20)).ceil() as u64;
            out.push(format!(
                "tier {tier} is at {:.0}% of {}: add an instance of at least {}Mi (or raise capacity) to bring it to {:.0}%",
                (pct * 100.0).floor(),
                format_bytes_human(cap),
                mib.max(1),
                target * 100.0
            ));
        }
    }
    out
}

fn hours(h: f64) -> String {
    if h < 1.0 {
        format!("{:.0}m", (h * 60.0).max(1.0))
    } else if h < 48.0 {
        format!("{h:.0}h")
    } else {
        format!("{:.0}d", h / 24.0)
    }
}

/// Least-squares growth in bytes per hour from `(seconds, bytes)` samples, when at least
/// three samples span five minutes or more.
pub fn growth_per_hour(samples: &[(f64, u64)]) -> Option<f64> {
    if samples.len() < 3 {
        return None;
    }
    let first = samples.first()?.0;
    let last = samples.last()?.0;
    if last - first < 300.0 {
        return None;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|(t, _)| *t).sum::<f64>() / n;
    let mean_b = samples.iter().map(|(_, b)| *b as f64).sum::<f64>() / n;
    let cov: f64 = samples
        .iter()
        .map(|(t, b)| (t - mean_t) * (*b as f64 - mean_b))
        .sum();
    let var: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    (var > 0.0).then(|| cov / var * 3600.0)
}

/// Memory samples of instances for growth estimates, kept in memory per scope.
#[derive(Debug, Default)]
pub struct UsageHistory {
    samples: BTreeMap<(String, String), VecDeque<(f64, u64)>>,
}

impl UsageHistory {
    const WINDOW_SECONDS: f64 = 3600.0;
    const MAX_SAMPLES: usize = 120;

    /// Adds a sample per instance (at most one per 20 s).
    pub fn record(&mut self, namespace: &str, views: &[InstanceView], now: f64) {
        for v in views.iter().filter(|v| v.capacity_bytes.is_some()) {
            let q = self
                .samples
                .entry((namespace.to_owned(), v.name.clone()))
                .or_default();
            if q.back().is_some_and(|(t, _)| now - t < 20.0) {
                continue;
            }
            q.push_back((now, v.used_bytes));
            while q.len() > Self::MAX_SAMPLES
                || q.front()
                    .is_some_and(|(t, _)| now - t > Self::WINDOW_SECONDS)
            {
                q.pop_front();
            }
        }
    }

    /// Growth in bytes per hour of each instance that has enough history.
    pub fn growth(&self, namespace: &str, views: &[InstanceView]) -> BTreeMap<String, f64> {
        views
            .iter()
            .filter_map(|v| {
                let q = self.samples.get(&(namespace.to_owned(), v.name.clone()))?;
                let samples: Vec<(f64, u64)> = q.iter().copied().collect();
                growth_per_hour(&samples).map(|g| (v.name.clone(), g))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting: metrics and the status write (the only I/O of this step)
// ---------------------------------------------------------------------------------------------

/// Exports the policy's gauges: the published table's version and failovers, the rebalance's
/// progress and estimates, the sidecars on the table and the memory per category. A figure
/// the status no longer has is removed, not left at its last value: a sidecar version kept
/// after the last lagging sidecar went away would keep `RedisFleetSidecarsOnOldRoutingTable`
/// firing.
pub fn record_metrics(
    metrics: &Metrics,
    labels: &PolicyLabels,
    published: Option<&RoutingTable>,
    status: &CachePolicyStatus,
) {
    metrics.note_policy(labels);
    if let Some(t) = published {
        metrics
            .routing_version
            .get_or_create(labels)
            .set(i64::try_from(t.version).unwrap_or(i64::MAX));
        metrics
            .failovers
            .get_or_create(labels)
            .set(t.failover.iter().filter(|f| !f.handover).count() as i64);
    }
    // The copy's figures (keys moved, in all) come from the policy's watch
    // (`Metrics::policy_watched`): a reconcile's status may be older than the Job's last
    // report, and would set the count back.
    let balance = status.rebalance.as_ref().and_then(|r| r.balance.as_ref());
    for (family, value) in [
        (
            &metrics.rebalance_estimated_bytes,
            balance.map(|b| b.estimated_bytes),
        ),
        (
            &metrics.rebalance_least_bytes,
            balance.and_then(|b| b.least_bytes),
        ),
        (
            &metrics.rebalance_measured_bytes,
            balance.and_then(|b| b.measured_bytes),
        ),
    ] {
        match value {
            Some(v) => {
                family.get_or_create(labels).set(v);
            }
            None => {
                family.remove(labels);
            }
        }
    }
    metrics.set_category_usage(labels, &status.usage);
    metrics.set_replica_slots(
        labels,
        status.replication.iter().map(|r| {
            (
                r.category.clone(),
                [
                    i64::from(r.replicated_slots),
                    i64::from(r.seeding_slots),
                    i64::from(r.unreplicated_slots),
                    i64::from(r.handover_slots),
                ],
            )
        }),
    );
    let count = status.sidecars.as_ref().map_or(0, |s| s.count);
    metrics.sidecars.get_or_create(labels).set(i64::from(count));
    match status.sidecars.as_ref().and_then(|s| s.min_version) {
        Some(v) => {
            metrics.sidecar_min_version.get_or_create(labels).set(v);
        }
        None => {
            metrics.sidecar_min_version.remove(labels);
        }
    }
}

/// Decides whether `next` is written over `prev` (the policy's status as read), given how
/// long ago this process last wrote it (`age`, `None`: unknown).
///
/// Material, written at once: the observed generation, conditions, the routing table
/// published, failovers, the rebalance, each instance's phase, slots, categories and whole
/// percent of memory used, the lowest sidecar version and whether any sidecar is live, and
/// the kind of advice given. Not material: the number of live sidecars, memory per category
/// by less than a point of its instance's capacity (`capacities`: name → bytes), and the
/// figures quoted in advice — they go to the metrics and into status with the refresh.
pub fn write_decision(
    prev: Option<&CachePolicyStatus>,
    next: &CachePolicyStatus,
    capacities: &BTreeMap<String, u64>,
    age: Option<Duration>,
    refresh: Duration,
) -> Write {
    let Some(prev) = prev else {
        return Write::Changed;
    };
    Write::decide(
        changed_materially(prev, next, capacities),
        prev != next,
        age,
        refresh,
    )
}

fn changed_materially(
    prev: &CachePolicyStatus,
    next: &CachePolicyStatus,
    capacities: &BTreeMap<String, u64>,
) -> bool {
    fn conditions(s: &CachePolicyStatus) -> Vec<(&str, &str, &str, &str)> {
        let mut v: Vec<(&str, &str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_str(),
                    c.message.as_str(),
                )
            })
            .collect();
        v.sort_unstable();
        v
    }
    let sidecars =
        |s: &CachePolicyStatus| s.sidecars.as_ref().map(|c| (c.count > 0, c.min_version));
    // Advice quotes figures ("at 86%", "full in ~7h"): what it is about is material, the
    // figures are not.
    let advice = |s: &CachePolicyStatus| -> Vec<String> {
        s.recommendations
            .iter()
            .map(|r| {
                r.chars()
                    .filter(|c| !c.is_ascii_digit() && *c != '.')
                    .collect()
            })
            .collect()
    };
    prev.observed_generation != next.observed_generation
        || conditions(prev) != conditions(next)
        || prev.routing != next.routing
        || prev.failovers != next.failovers
        || prev.rebalance != next.rebalance
        || prev.instances != next.instances
        || sidecars(prev) != sidecars(next)
        || usage_moved(&prev.usage, &next.usage, capacities)
        || advice(prev) != advice(next)
}

/// Whether memory per category moved by a point of its instance's capacity anywhere, or a
/// category appeared on or left an instance.
fn usage_moved(
    prev: &[CategoryUsage],
    next: &[CategoryUsage],
    capacities: &BTreeMap<String, u64>,
) -> bool {
    // Served bytes and replica copies, each a pair of its own.
    let by_key = |u: &[CategoryUsage]| -> BTreeMap<(String, String, bool), i64> {
        u.iter()
            .flat_map(|u| {
                let pair = |replica: bool, bytes: i64| {
                    ((u.category.clone(), u.instance.clone(), replica), bytes)
                };
                std::iter::once(pair(false, u.bytes)).chain(u.replica_bytes.map(|b| pair(true, b)))
            })
            .collect()
    };
    let (prev, next) = (by_key(prev), by_key(next));
    prev.len() != next.len()
        || next.iter().any(|(key, bytes)| match prev.get(key) {
            None => true,
            Some(before) => moved_a_point(
                (*before).max(0) as u64,
                (*bytes).max(0) as u64,
                capacities.get(&key.1).copied(),
            ),
        })
}

/// Writes `next` as the policy's status (server-side apply) when it differs from the status
/// the policy has. The Job's progress fields are the Job's: they are never written back.
pub async fn write(
    ctx: &Context,
    policy: &CachePolicy,
    namespace: &str,
    next: &CachePolicyStatus,
) -> Result<(), Error> {
    if policy.status.as_ref() == Some(next) {
        return Ok(());
    }
    let api: Api<CachePolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let mut body =
        serde_json::to_value(next).map_err(|e| Error::WriteStatus(kube::Error::SerdeError(e)))?;
    if let Some(r) = body.get_mut("rebalance").and_then(|r| r.as_object_mut()) {
        for field in JOB_OWNED_REBALANCE_FIELDS {
            r.remove(field);
        }
    }
    let patch = json!({
        "apiVersion": "redisfleet.io/v1alpha1",
        "kind": "CachePolicy",
        "status": body,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::WriteStatus)?;
    debug!("status written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::cache_policy::build::fixtures;

    fn view(name: &str, tier: &str, used_mib: u64, cap_mib: u64) -> InstanceView {
        fixtures::view(name)
            .in_tier(tier)
            .with_used_mib(used_mib)
            .with_capacity_mib(cap_mib)
    }

    const REFRESH: Duration = Duration::from_secs(300);
    const RECENT: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn the_replicated_condition_says_which_slots_lack_a_replica() {
        let now = Timestamp::now();
        let auth = |replicated, seeding, unreplicated| CategoryReplicationStatus {
            category: "auth".into(),
            mode: "Sync".into(),
            replicated_slots: replicated,
            seeding_slots: seeding,
            handover_slots: 0,
            unreplicated_slots: unreplicated,
            replicas: vec!["secondary".into()],
        };
        let mut status = CachePolicyStatus::default();
        assert!(set_replicated_condition(&mut status, Some(1), now).is_none());
        assert!(status.conditions.is_empty());
        let cases = [
            ((16384, 0, 0), "True", "Replicated", "every slot of auth"),
            (
                (0, 16384, 0),
                "False",
                "Seeding",
                "auth: 16384 slots being seeded",
            ),
            (
                (16000, 0, 384),
                "False",
                "Unreplicated",
                "auth: 384 slots without a replica",
            ),
            (
                (15000, 1000, 384),
                "False",
                "Unreplicated",
                "auth: 1000 slots being seeded",
            ),
        ];
        for ((r, s, u), want_status, want_reason, want_text) in cases {
            status.replication = vec![auth(r, s, u)];
            let c = set_replicated_condition(&mut status, Some(1), now).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (want_status, want_reason)
            );
            assert!(c.message.contains(want_text), "{}", c.message);
            assert_eq!(status.conditions.len(), 1);
        }
        // Replication turned off: the condition goes.
        status.replication.clear();
        assert!(set_replicated_condition(&mut status, Some(1), now).is_none());
        assert!(status.conditions.is_empty());
    }

    fn written() -> CachePolicyStatus {
        CachePolicyStatus {
            observed_generation: Some(1),
            instances: vec![PolicyInstanceStatus {
                name: "primary".into(),
                phase: Some(InstancePhase::Ready),
                used_percent: Some(40),
                categories: vec!["auth".into()],
                slots: 16384,
            }],
            sidecars: Some(crate::api::cache_policy::SidecarsStatus {
                count: 12,
                min_version: Some(7),
            }),
            usage: vec![CategoryUsage {
                instance: "primary".into(),
                category: "auth".into(),
                bytes: 10 << 20,
                keys: None,
                replica_bytes: None,
            }],
            recommendations: vec!["primary grows ~1.2Mi/h: is full in ~20h".into()],
            ..CachePolicyStatus::default()
        }
    }

    fn decide(next: &CachePolicyStatus) -> Write {
        let capacities = BTreeMap::from([("primary".to_owned(), 30u64 << 20)]);
        write_decision(Some(&written()), next, &capacities, RECENT, REFRESH)
    }

    #[test]
    fn live_figures_of_a_policy_wait_for_the_refresh() {
        let mut next = written();
        next.sidecars.as_mut().unwrap().count = 13;
        next.usage[0].bytes += 200 << 10; // less than a point of 30 MiB
        next.recommendations = vec!["primary grows ~1.3Mi/h: is full in ~18h".into()];
        assert_eq!(decide(&next), Write::Skip);
        let capacities = BTreeMap::from([("primary".to_owned(), 30u64 << 20)]);
        assert_eq!(
            write_decision(Some(&written()), &next, &capacities, Some(REFRESH), REFRESH),
            Write::Refresh
        );
        assert_eq!(
            write_decision(Some(&written()), &written(), &capacities, None, REFRESH),
            Write::Skip,
            "an identical status is never rewritten"
        );
    }

    #[test]
    fn a_sidecar_version_no_longer_reported_leaves_the_metrics() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let labels = PolicyLabels {
            namespace: "shop".into(),
            policy: "cache".into(),
        };
        let text = |registry: &prometheus_client::registry::Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
            out
        };
        record_metrics(&metrics, &labels, None, &written());
        let series = "{namespace=\"shop\",policy=\"cache\"}";
        let before = text(&registry);
        assert!(
            before.contains(&format!("redisfleet_sidecar_min_version{series} 7")),
            "{before}"
        );

        // The lagging sidecar went away: no version is left to compare with the table.
        let mut next = written();
        next.sidecars = None;
        record_metrics(&metrics, &labels, None, &next);
        let after = text(&registry);
        assert!(
            !after.contains("redisfleet_sidecar_min_version{"),
            "a stale version keeps the lag alert firing: {after}"
        );
        assert!(
            after.contains(&format!("redisfleet_sidecars{series} 0")),
            "{after}"
        );
        assert_eq!(metrics.policies(), vec![labels]);
    }

    #[test]
    fn what_a_policy_status_is_read_for_is_written_at_once() {
        let mut next = written();
        next.usage[0].bytes += 400 << 10; // more than a point
        assert_eq!(decide(&next), Write::Changed, "usage by a point");

        let mut next = written();
        next.usage[0].replica_bytes = Some(5 << 20);
        assert_eq!(decide(&next), Write::Changed, "replica copies appeared");
        let mut before = written();
        before.usage[0].replica_bytes = Some(5 << 20);
        let mut next = before.clone();
        next.usage[0].replica_bytes = Some(1 << 20);
        let capacities = BTreeMap::from([("primary".to_owned(), 30u64 << 20)]);
        assert_eq!(
            write_decision(Some(&before), &next, &capacities, RECENT, REFRESH),
            Write::Changed,
            "replica copies by a point"
        );

        let mut next = written();
        next.instances[0].used_percent = Some(41);
        assert_eq!(decide(&next), Write::Changed, "an instance's percent");

        let mut next = written();
        next.instances[0].phase = Some(InstancePhase::Unreachable);
        assert_eq!(decide(&next), Write::Changed, "an instance's phase");

        let mut next = written();
        next.sidecars.as_mut().unwrap().min_version = Some(8);
        assert_eq!(decide(&next), Write::Changed, "the sidecars' version");

        let mut next = written();
        next.sidecars.as_mut().unwrap().count = 0;
        assert_eq!(decide(&next), Write::Changed, "no sidecar left");

        let mut next = written();
        next.recommendations
            .push("tier hot is at 86% of 30.0Mi: add an instance".into());
        assert_eq!(decide(&next), Write::Changed, "new advice");

        let mut next = written();
        next.routing = Some(RoutingStatus {
            config_map: "shop-routing".into(),
            version: 8,
            hash: "0".into(),
            published_at: None,
        });
        assert_eq!(decide(&next), Write::Changed, "a new table");

        let mut next = written();
        set_condition(
            &mut next.conditions,
            condition(
                DEGRADED,
                true,
                "InstanceUnreachable",
                "unreachable: primary",
                Some(1),
                Timestamp::UNIX_EPOCH,
            ),
        );
        assert_eq!(decide(&next), Write::Changed, "a condition");
        assert_eq!(
            write_decision(None, &written(), &BTreeMap::new(), RECENT, REFRESH),
            Write::Changed
        );
    }

    #[test]
    fn growth_is_a_least_squares_slope() {
        let samples: Vec<(f64, u64)> = (0..10)
            .map(|i| (f64::from(i) * 60.0, 1000 + i as u64 * 100))
            .collect();
        let g = growth_per_hour(&samples).unwrap();
        assert!((g - 6000.0).abs() < 1e-6, "{g}");
        assert_eq!(growth_per_hour(&samples[..2]), None);
        assert_eq!(
            growth_per_hour(&[(0.0, 1), (10.0, 2), (20.0, 3)]),
            None,
            "too short a span"
        );
    }

    #[test]
    fn advice_for_full_instances_growth_and_tiers() {
        let instances = vec![
            view("primary", "hot", 26, 30),
            view("secondary", "warm", 10, 30),
        ];
        let table = crate::routing::table::tests::two_instance_table();
        let growth = BTreeMap::from([("secondary".to_owned(), 2.0 * f64::from(1 << 20))]);
        let recs = recommendations(&instances, Some(&table), 80, &growth);
        assert!(
            recs.iter()
                .any(|r| r.starts_with("primary is at 86% of 30.0Mi")),
            "{recs:?}"
        );
        assert!(
            recs.iter().any(|r| r
                .starts_with("secondary grows ~2.0Mi/h: reaches 80% in ~7h and is full in ~10h")),
            "{recs:?}"
        );
        assert!(
            recs.iter()
                .any(|r| r
                    .starts_with("tier hot is at 86% of 30.0Mi: add an instance of at least 14Mi")),
            "{recs:?}"
        );
        assert!(!recs.iter().any(|r| r.starts_with("tier warm")));
        assert!(!recs.iter().any(|r| r.contains("drains")), "{recs:?}");
    }

    #[test]
    fn a_draining_instance_that_stays_a_replica_is_named_with_what_would_free_it() {
        use crate::routing::slots::SlotRange;
        use crate::routing::table::{CategoryReplication, ReplicationMode, SlotOwner};
        let mut instances = vec![
            view("primary", "hot", 10, 30),
            view("secondary", "warm", 10, 30),
        ];
        let mut table = crate::routing::table::tests::two_instance_table();
        table.categories[0].replication = Some(CategoryReplication {
            mode: ReplicationMode::Sync,
            replicas: vec![SlotOwner {
                range: SlotRange::new(0, 99),
                instance: "secondary".into(),
            }],
            seeding: Vec::new(),
            outgoing: Vec::new(),
        });
        let name = table.categories[0].name.clone();
        let recs = recommendations(&instances, Some(&table), 80, &BTreeMap::new());
        assert!(!recs.iter().any(|r| r.contains("drains")), "{recs:?}");
        instances[1].drain = true;
        let recs = recommendations(&instances, Some(&table), 80, &BTreeMap::new());
        assert!(
            recs.iter().any(|r| r.starts_with(&format!(
                "secondary drains but stays the replica of {name} (100 slots): no other instance can take"
            ))),
            "{recs:?}"
        );
    }

    #[test]
    fn an_instance_that_may_evict_keys_without_a_ttl_is_named_and_holds_back_no_running_plan() {
        use crate::api::cache_policy::{RebalanceStatus, rebalance_phase};
        use crate::api::conditions::find;
        let instances = vec![
            view("primary", "hot", 10, 30).evicting("allkeys-lru"),
            view("secondary", "warm", 10, 30),
        ];
        let recs = recommendations(&instances, None, 80, &BTreeMap::new());
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert!(recs[0].starts_with("primary: maxmemory-policy allkeys-lru"));
        let rebalancing = |status: &CachePolicyStatus| {
            find(&status.conditions, condition_type::REBALANCING)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
                .unwrap()
        };
        let mut status = CachePolicyStatus::default();
        set_rebalancing_condition(
            &mut status,
            Some(("HeldBack", "moves out of primary wait")),
            None,
            Timestamp::now(),
        );
        assert_eq!(
            rebalancing(&status),
            (
                "False".into(),
                "HeldBack".into(),
                "moves out of primary wait".into()
            )
        );
        // A plan under way is what the condition reports.
        status.rebalance = Some(RebalanceStatus {
            phase: rebalance_phase::MIGRATING.into(),
            plan_id: 7,
            ..RebalanceStatus::default()
        });
        set_rebalancing_condition(
            &mut status,
            Some(("HeldBack", "moves out of primary wait")),
            None,
            Timestamp::now(),
        );
        assert_eq!(rebalancing(&status).1, "Migrating");
        // A running copy the Job holds for a source switched to such a policy says so.
        {
            let r = status.rebalance.as_mut().unwrap();
            r.step = Some(crate::api::cache_policy::rebalance_step::SOURCE_EVICTING.into());
            r.pacing = Some("held: primary (maxmemory-policy allkeys-lru) may evict".into());
            r.keys_moved = Some(10);
            r.keys_total = Some(40);
        }
        set_rebalancing_condition(&mut status, None, None, Timestamp::now());
        assert_eq!(
            rebalancing(&status),
            (
                "True".into(),
                "SourceEvicting".into(),
                "plan 7 holds its copy in Migrating: held: primary (maxmemory-policy allkeys-lru) may evict".into()
            )
        );
        // Paused as well: the hold is what the condition names, and it says both.
        status.rebalance.as_mut().unwrap().paused = Some(true);
        set_rebalancing_condition(&mut status, None, None, Timestamp::now());
        let (_, reason, message) = rebalancing(&status);
        assert_eq!(reason, "SourceEvicting");
        assert!(message.contains("and is paused"), "{message}");
        status.rebalance.as_mut().unwrap().paused = None;
        // A failed plan's message is not hidden.
        status.rebalance.as_mut().unwrap().phase = rebalance_phase::FAILED.into();
        set_rebalancing_condition(
            &mut status,
            Some(("HeldBack", "moves out of primary wait")),
            None,
            Timestamp::now(),
        );
        assert_eq!(rebalancing(&status).1, "Failed");
        status.rebalance.as_mut().unwrap().phase = rebalance_phase::SUCCEEDED.into();
        set_rebalancing_condition(&mut status, None, None, Timestamp::now());
        assert_eq!(rebalancing(&status).1, "Idle");
    }
}
