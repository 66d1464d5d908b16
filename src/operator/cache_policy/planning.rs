//! The planner's view of a policy (pure): its instances as loads, its categories' tiers, and
//! the balance of a plan — what the planner estimated when it planned, and what was measured
//! once the plan finished (`status.rebalance.balance`). Used by the rebalance step, the
//! status step and `redis-fleet plan`.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::cache_policy::{
    CachePolicySpec, DEFAULT_CATEGORY, InstanceBalanceStatus, RebalanceBalance, RebalanceStatus,
    rebalance_phase,
};
use crate::api::redis_instance::InstancePhase;
use crate::rebalance::plan::{self, CategoryTiers, InstanceLoad, Move, PlanInput};

use super::build::InstanceView;

/// The instances as the planner sees them: Ready, Degraded and Draining ones serve (their
/// data can move), capacity unknown counts as 0.
pub fn loads(views: &[InstanceView]) -> Vec<InstanceLoad> {
    views
        .iter()
        .map(|v| InstanceLoad {
            name: v.name.clone(),
            tier: v.tier.clone(),
            capacity: v.capacity_bytes.unwrap_or(0),
            used: v.used_bytes,
            serving: matches!(
                v.phase,
                InstancePhase::Ready | InstancePhase::Degraded | InstancePhase::Draining
            ),
            drain: v.drain,
        })
        .collect()
}

/// The tiers of every category of the policy, the default category last.
pub fn tiers(spec: &CachePolicySpec) -> Vec<CategoryTiers> {
    let mut out: Vec<CategoryTiers> = spec
        .categories
        .iter()
        .map(|c| CategoryTiers {
            name: c.name.clone(),
            tier: c.tier.clone(),
            fallback_tier: c.fallback_tier.clone(),
        })
        .collect();
    out.push(CategoryTiers {
        name: DEFAULT_CATEGORY.to_owned(),
        tier: spec.default_category.tier.clone(),
        fallback_tier: spec.default_category.fallback_tier.clone(),
    });
    out
}

/// The fleet's mean used share, the centre of the balance band: the used memory of the
/// serving instances (draining ones included: their data goes to the others) over the
/// capacity of those that may hold data. `None` when none may.
pub fn mean_usage(views: &[InstanceView]) -> Option<f64> {
    let loads = loads(views);
    let serving = loads.iter().filter(|l| l.serving);
    let used: u64 = serving
        .clone()
        .filter(|l| l.drain || l.capacity > 0)
        .map(|l| l.used)
        .sum();
    let capacity: u64 = serving
        .filter(|l| !l.drain && l.capacity > 0)
        .map(|l| l.capacity)
        .sum();
    (capacity > 0).then(|| used as f64 / capacity as f64)
}

/// `capacityThreshold` as the planner takes it.
pub fn threshold_percent(spec: &CachePolicySpec) -> u32 {
    u32::try_from(spec.balancing.capacity_threshold).unwrap_or(80)
}

/// The planner's estimate of the plan of `moves` (just planned from `input`): the fleet's
/// mean and band, the bytes and keys it moves, the least that reaches the band, and each
/// instance before and after.
pub fn estimated_balance(
    input: &PlanInput<'_>,
    category_keys: &BTreeMap<(String, String), u64>,
    moves: &[Move],
) -> RebalanceBalance {
    let assessment = plan::assess(input);
    let estimates = plan::estimate(input, category_keys, moves);
    let delta = plan::used_change(input.current, moves, &estimates);
    let i64_of = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
    RebalanceBalance {
        mean_percent: (assessment.balance.mean * 1000.0).round() / 10.0,
        band_points: (assessment.balance.band * 100.0).round() as i32,
        estimated_bytes: i64_of(estimates.iter().map(|e| e.bytes).sum()),
        estimated_keys: i64_of(estimates.iter().map(|e| e.keys).sum()),
        least_bytes: assessment
            .plan
            .as_ref()
            .map(|p| i64_of(p.balance.least_bytes)),
        measured_bytes: None,
        instances: input
            .instances
            .iter()
            .map(|i| {
                let before = i64_of(i.used);
                InstanceBalanceStatus {
                    name: i.name.clone(),
                    capacity_bytes: i64_of(i.capacity),
                    used_bytes_before: before,
                    planned_bytes: (before + delta.get(i.name.as_str()).copied().unwrap_or(0))
                        .max(0),
                    used_bytes_after: None,
                }
            })
            .collect(),
    }
}

/// Whether the instances' status reflects a plan that finished at `finished`: each was
/// probed since, or long enough has passed that a probe would have written any change
/// (status is written only on a change in substance, so a quiet instance's probe time does
/// not move). `probes` are each instance's last probe time and probe interval.
pub fn settled_since(
    finished: Timestamp,
    now: Timestamp,
    probes: &[(Option<Timestamp>, std::time::Duration)],
) -> bool {
    let all_probed = probes
        .iter()
        .all(|(last, _)| last.is_some_and(|t| t > finished));
    let longest = probes
        .iter()
        .map(|(_, interval)| *interval)
        .max()
        .unwrap_or_default();
    let wait = SignedDuration::try_from(longest * 2 + std::time::Duration::from_secs(1))
        .unwrap_or(SignedDuration::MAX);
    all_probed || now.duration_since(finished) >= wait
}

/// Fills in what a finished plan measured, from the instances' used memory now: each
/// instance's memory after, and the bytes moved (half the summed change).
pub fn record_measurement(balance: &mut RebalanceBalance, views: &[InstanceView]) {
    let mut change = 0i64;
    for i in &mut balance.instances {
        let Some(v) = views.iter().find(|v| v.name == i.name) else {
            continue;
        };
        let after = i64::try_from(v.used_bytes).unwrap_or(i64::MAX);
        change += (after - i.used_bytes_before).abs();
        i.used_bytes_after = Some(after);
    }
    balance.measured_bytes = Some(change / 2);
}

/// Whether `r` is a plan that just started and has no estimate yet.
pub fn wants_estimate(r: &RebalanceStatus) -> bool {
    r.phase == rebalance_phase::PREPARING && r.balance.is_none()
}

/// Whether `r` finished and its measurement is still to be taken.
pub fn wants_measurement(r: &RebalanceStatus) -> bool {
    r.phase == rebalance_phase::SUCCEEDED
        && r.balance
            .as_ref()
            .is_some_and(|b| b.measured_bytes.is_none())
}

/// When to look at a policy again without a change to wake it: at `resync`, or just after a
/// finished plan's `cooldown` ends when that is sooner, so that a plan held back by the
/// cooldown starts then (the controller is not woken by its own status, nor by memory moving
/// below the threshold).
pub fn next_look(
    r: Option<&RebalanceStatus>,
    cooldown: std::time::Duration,
    now: Timestamp,
    resync: std::time::Duration,
) -> std::time::Duration {
    let Some(finished) = r
        .filter(|r| !r.is_active())
        .and_then(|r| r.finished_at.as_ref())
    else {
        return resync;
    };
    let since = now.duration_since(finished.0);
    let left = SignedDuration::try_from(cooldown)
        .unwrap_or(SignedDuration::MAX)
        .saturating_sub(since);
    match std::time::Duration::try_from(left) {
        Ok(left) if !left.is_zero() => resync.min(left + std::time::Duration::from_millis(200)),
        _ => resync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::cache_policy::build::fixtures;
    use crate::routing::table::tests::two_instance_table;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_estimate_and_the_measurement_of_a_plan() {
        let views = vec![
            fixtures::view("primary")
                .in_tier("hot")
                .with_used_mib(26)
                .with_capacity_mib(30),
            fixtures::view("secondary")
                .in_tier("warm")
                .with_used_mib(3)
                .with_capacity_mib(30),
        ];
        let table = two_instance_table();
        let loads = loads(&views);
        let bytes: BTreeMap<(String, String), u64> = table
            .categories
            .iter()
            .map(|c| {
                let owner = c.slots[0].instance.clone();
                let b = if owner == "primary" {
                    13 * MIB
                } else {
                    3 * MIB
                };
                ((c.name.clone(), owner), b)
            })
            .collect();
        let keys: BTreeMap<(String, String), u64> =
            bytes.keys().map(|k| (k.clone(), 10_000)).collect();
        let tiers: Vec<CategoryTiers> = table
            .categories
            .iter()
            .map(|c| CategoryTiers {
                name: c.name.clone(),
                tier: None,
                fallback_tier: None,
            })
            .collect();
        let input = PlanInput {
            current: &table,
            desired: None,
            instances: &loads,
            category_bytes: &bytes,
            categories: &tiers,
            threshold_percent: 80,
            force: false,
        };
        let plan = plan::plan(&input).expect("a plan");
        let mut b = estimated_balance(&input, &keys, &plan.moves);
        assert_eq!(b.band_points, 10);
        assert!((b.mean_percent - 48.3).abs() < 0.1, "{b:?}");
        let planned: u64 = plan.moves.iter().map(|m| m.bytes).sum();
        assert!(
            (b.estimated_bytes - planned as i64).abs() < 1024,
            "the status shows the planner's bytes: {b:?} vs {planned}"
        );
        assert!(b.least_bytes.is_some_and(|l| l <= b.estimated_bytes));
        assert!(b.estimated_keys > 0);
        let primary = &b.instances[0];
        assert_eq!(primary.used_bytes_before, 26 * MIB as i64);
        assert_eq!(
            primary.planned_bytes,
            26 * MIB as i64 - b.estimated_bytes,
            "{b:?}"
        );

        // Done: the primary lost 9 MiB, the secondary gained 8.5 (writes, rounding).
        let after = vec![
            views[0].clone().with_used_mib(17),
            views[1].clone().with_used_mib(11),
        ];
        record_measurement(&mut b, &after);
        assert_eq!(b.measured_bytes, Some((9 * MIB + 8 * MIB) as i64 / 2));
        assert_eq!(b.instances[1].used_bytes_after, Some(11 * MIB as i64));
    }

    #[test]
    fn a_measurement_waits_for_the_probes() {
        let finished: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let interval = std::time::Duration::from_secs(5);
        let later = |s: i64| finished + SignedDuration::from_secs(s);
        let probes = [(Some(later(-3)), interval), (Some(later(2)), interval)];
        assert!(!settled_since(finished, later(4), &probes));
        assert!(settled_since(finished, later(11), &probes));
        let probes = [(Some(later(1)), interval), (Some(later(2)), interval)];
        assert!(settled_since(finished, later(3), &probes));
    }

    #[test]
    fn a_cooling_plan_is_looked_at_again_when_its_cooldown_ends() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use std::time::Duration;
        let resync = Duration::from_secs(30);
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let finished = |ago: i64| RebalanceStatus {
            phase: rebalance_phase::SUCCEEDED.to_owned(),
            finished_at: Some(Time(now - SignedDuration::from_secs(ago))),
            ..RebalanceStatus::default()
        };
        let secs = Duration::from_secs;
        // 1 s cooldown, finished just now: look again in a second and a bit.
        assert_eq!(
            next_look(Some(&finished(0)), secs(1), now, resync),
            Duration::from_millis(1200)
        );
        // 10 s cooldown, 4 s ago: in 6 s and a bit.
        assert_eq!(
            next_look(Some(&finished(4)), secs(10), now, resync),
            Duration::from_millis(6200)
        );
        // A cooldown longer than the resync, or one that has passed: the resync.
        assert_eq!(
            next_look(Some(&finished(0)), secs(300), now, resync),
            resync
        );
        assert_eq!(
            next_look(Some(&finished(20)), secs(10), now, resync),
            resync
        );
        // No plan, or one still running: the resync.
        assert_eq!(next_look(None, secs(1), now, resync), resync);
        let running = RebalanceStatus {
            phase: rebalance_phase::PREPARING.to_owned(),
            ..finished(0)
        };
        assert_eq!(next_look(Some(&running), secs(1), now, resync), resync);
    }
}
