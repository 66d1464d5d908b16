//! Fetch, the first step of a CachePolicy reconcile: the policy as last written, the
//! instances it selects (from the cache, as [`InstanceView`]s) and the table published before
//! (from the routing ConfigMap). Besides the trigger mapping, the only reads of the reconcile.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::warn;

use crate::api::cache_policy::{CachePolicy, RebalanceStatus, rebalance_step, selects};
use crate::api::redis_instance::{
    InstancePhase, RedisInstance, TIER_LABEL, evicts_keys_without_ttl,
};
use crate::operator::context::Context;
use crate::redis::endpoint::endpoint_of;
use crate::routing::config_map::{annotated_version, table_of};
use crate::routing::table::RoutingTable;

use super::Error;
use super::build::InstanceView;
use super::departures::{DEPARTURES_ANNOTATION, Departures};
use super::planning::threshold_percent;
use super::unfreed::{UNFREED_ANNOTATION, Unfreed};

/// The policy as last written: with rebalancing on, or a plan under way, read from the API,
/// because the cache may not hold our own last status write yet and the rebalance state
/// machine must never act on an older one (it would plan twice or forget a running Job).
/// `None`: it is gone.
pub async fn latest(
    ctx: &Context,
    policy: Arc<CachePolicy>,
    namespace: &str,
) -> Result<Option<Arc<CachePolicy>>, Error> {
    let running = policy
        .status
        .as_ref()
        .and_then(|s| s.rebalance.as_ref())
        .is_some_and(RebalanceStatus::is_active);
    if !policy.spec.balancing.rebalance.enabled && !running {
        return Ok(Some(policy));
    }
    let api: Api<CachePolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let fresh = api
        .get_opt(&policy.name_any())
        .await
        .map_err(Error::WriteStatus)?;
    Ok(fresh.map(Arc::new))
}

/// The policy's view of an instance.
pub fn view_of(ri: &RedisInstance, namespace: &str) -> InstanceView {
    let status = ri.status.as_ref();
    let capacity = status
        .and_then(|s| s.memory.as_ref())
        .map(|m| m.capacity_bytes)
        .filter(|c| *c > 0)
        .map(|c| c as u64)
        .or_else(|| ri.spec.capacity.as_ref().map(|c| c.bytes()))
        .or_else(|| ri.spec.managed.as_ref().map(|m| m.max_memory.bytes()));
    InstanceView {
        name: ri.name_any(),
        tier: ri.labels().get(TIER_LABEL).cloned(),
        phase: status
            .and_then(|s| s.phase)
            .unwrap_or(InstancePhase::Pending),
        capacity_bytes: capacity,
        used_bytes: status
            .and_then(|s| s.memory.as_ref())
            .map_or(0, |m| m.used_bytes.max(0) as u64),
        weight: u32::try_from(ri.spec.weight).unwrap_or(100),
        drain: ri.spec.drain,
        copies_to_free: false,
        lost_data: false,
        // What the server reports, or — for a managed instance — what the operator is about
        // to apply to it (`CONFIG SET` waits for no plan this one has not seen).
        evicting_policy: status
            .and_then(|s| s.eviction_policy.clone())
            .into_iter()
            .chain(
                ri.spec
                    .managed
                    .as_ref()
                    .map(|m| m.eviction_policy.as_redis().to_owned()),
            )
            .find(|p| evicts_keys_without_ttl(p)),
        endpoint: endpoint_of(ri, namespace),
    }
}

/// Instances of `namespace` selected by `policy`, by name.
pub fn selected_instances(
    ctx: &Context,
    policy: &CachePolicy,
    namespace: &str,
) -> Vec<Arc<RedisInstance>> {
    let mut v: Vec<Arc<RedisInstance>> = ctx
        .instances
        .state()
        .into_iter()
        .filter(|ri| ri.namespace().as_deref() == Some(namespace))
        .filter(|ri| ri.metadata.deletion_timestamp.is_none())
        .filter(|ri| selects(policy, ri))
        .collect();
    v.sort_by_key(|ri| ri.name_any());
    v
}

/// What of an instance its policies act on, as a number: its labels (selectors, tiers), its
/// spec (generation), deletion, phase, capacity and, for each capacity threshold in
/// `thresholds` (those of the policies that select it), which side of it the memory used is
/// on — what planning reacts to (its `WithinCapacity` condition is the lowest one's side). A
/// change of anything else (a status refresh, live figures, memory moving between
/// thresholds) need not wake a policy: its periodic reconcile picks the figures up. Whole percents used were in here once: at 1 000 instances one of them
/// moved every second or so, and each move reconciled the policy and rewrote its status.
pub fn trigger_fingerprint(ri: &RedisInstance, thresholds: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ri.metadata.labels.hash(&mut h);
    ri.metadata.generation.hash(&mut h);
    ri.metadata.deletion_timestamp.is_some().hash(&mut h);
    let status = ri.status.as_ref();
    status.and_then(|s| s.phase).hash(&mut h);
    let memory = status.and_then(|s| s.memory.as_ref());
    memory.map(|m| m.capacity_bytes).hash(&mut h);
    // The planner's test (`plan.rs`): whole percent used at or above the threshold.
    let used = memory.and_then(|m| m.used_percent);
    for t in thresholds {
        (t, used.map(|u| i64::from(u) >= i64::from(*t))).hash(&mut h);
    }
    h.finish()
}

/// The capacity thresholds of the policies in `policies` that select `ri`, sorted.
pub fn thresholds_for(policies: &Store<CachePolicy>, ri: &RedisInstance) -> Vec<u32> {
    let mut v: Vec<u32> = selecting(policies, ri)
        .map(|p| threshold_percent(&p.spec))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// What of a policy its own controller acts on, as a number (a `predicate_filter` for its
/// watch): its spec (generation), annotations (`redisfleet.io/rebalance` pause, resume and
/// cancel, a rebalance asked for now), finalizers and deletion, and the rebalance in its
/// status, where the Job reports its steps. The rest of the status is the controller's own
/// output: its writes must not wake it again. They did: at 1 000 instances each status write
/// started the next reconcile, about one a second instead of one per resync.
///
/// Nor do the copy's figures wake it ([`without_figures`]): the Job reports them every 1–5 s,
/// and each reconcile they started wrote the conditions again — on the 2-core bench that API
/// work was most of what a copy cost the foreground's p99. The metrics take the figures from
/// the watch itself ([`crate::operator::metrics::Metrics::policy_watched`]).
pub fn own_trigger(policy: &CachePolicy) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    policy.metadata.generation.hash(&mut h);
    policy.metadata.annotations.hash(&mut h);
    policy.metadata.finalizers.hash(&mut h);
    policy.metadata.deletion_timestamp.is_some().hash(&mut h);
    let rebalance = policy.status.as_ref().and_then(|s| s.rebalance.as_ref());
    rebalance
        .map(without_figures)
        .and_then(|r| serde_json::to_string(&r).ok())
        .hash(&mut h);
    Some(h.finish())
}

/// `r` without what the Job reports as the copy goes — keys moved, keys in all, the rate, and
/// the pacing's note — which the controller does not act on. A held copy's note stays: it
/// names the sources that may evict keys, and the `Rebalancing` condition quotes it.
fn without_figures(r: &RebalanceStatus) -> RebalanceStatus {
    let held = r.step.as_deref() == Some(rebalance_step::SOURCE_EVICTING);
    RebalanceStatus {
        keys_moved: None,
        keys_total: None,
        keys_per_second: None,
        pacing: if held { r.pacing.clone() } else { None },
        ..r.clone()
    }
}

/// Policies of the instance's namespace that select it (the trigger mapping).
pub fn policies_selecting(
    ctx_policies: &Store<CachePolicy>,
    ri: &RedisInstance,
) -> Vec<ObjectRef<CachePolicy>> {
    selecting(ctx_policies, ri)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The policies in `policies` of the instance's namespace that select it.
fn selecting<'a>(
    policies: &Store<CachePolicy>,
    ri: &'a RedisInstance,
) -> impl Iterator<Item = Arc<CachePolicy>> + 'a {
    let ns = ri.namespace();
    policies
        .state()
        .into_iter()
        .filter(move |p| p.namespace() == ns && selects(p, ri))
}

/// What the routing ConfigMap holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// The table, if there is one this build can read.
    pub table: Option<RoutingTable>,
    /// Its version (which survives a table this build cannot read, so versions keep
    /// increasing).
    pub version: u64,
    /// The ConfigMap's resourceVersion: the next publish is conditional on it, so two
    /// operators that both think they lead cannot publish two tables under one version.
    pub resource_version: Option<String>,
    /// Copies of ranges no table routes to their instance any more, still to be deleted.
    pub unfreed: Unfreed,
    /// Instances that left the policy, still to be fenced and cleaned.
    pub departures: Departures,
}

/// Reads the table in the routing ConfigMap.
pub async fn read_published(api: &Api<ConfigMap>, name: &str) -> Result<Current, Error> {
    let cm = api.get_opt(name).await.map_err(|source| Error::ConfigMap {
        name: name.to_owned(),
        source,
    })?;
    let Some(cm) = cm else {
        return Ok(Current::default());
    };
    let annotated = annotated_version(&cm).unwrap_or(0);
    let table = table_of(&cm).and_then(|parsed| match parsed {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(configmap = name, error = %e, "ignoring an unreadable routing table");
            None
        }
    });
    let version = table
        .as_ref()
        .map_or(annotated, |t| t.version.max(annotated));
    let unfreed = match cm.annotations().get(UNFREED_ANNOTATION) {
        None => Unfreed::default(),
        Some(value) => Unfreed::parse(value).unwrap_or_else(|e| {
            warn!(configmap = name, annotation = UNFREED_ANNOTATION, error = %e, "ignoring an unreadable list of copies to free");
            Unfreed::default()
        }),
    };
    let departures = match cm.annotations().get(DEPARTURES_ANNOTATION) {
        None => Departures::default(),
        Some(value) => Departures::parse(value).unwrap_or_else(|e| {
            warn!(configmap = name, annotation = DEPARTURES_ANNOTATION, error = %e, "ignoring an unreadable list of instances leaving the policy");
            Departures::default()
        }),
    };
    Ok(Current {
        table,
        version,
        resource_version: cm.resource_version(),
        unfreed,
        departures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(used_percent: i32, within: &str) -> RedisInstance {
        let mut ri = RedisInstance::new(
            "hot",
            serde_json::from_value(json!({"endpoint": {"host": "redis", "port": 6379}})).unwrap(),
        );
        ri.status = Some(
            serde_json::from_value(json!({
                "phase": "Ready",
                "memory": {
                    "usedBytes": used_percent * 300_000,
                    "capacityBytes": 30_000_000,
                    "usedPercent": used_percent,
                    "used": "", "capacity": "",
                },
                "conditions": [{
                    "type": "WithinCapacity", "status": within, "reason": "R", "message": "",
                    "lastTransitionTime": "2026-12-01T00:00:00Z",
                }],
                "lastProbeTime": format!("2026-12-01T00:00:{:02}Z", used_percent % 60),
            }))
            .unwrap(),
        );
        ri
    }

    #[test]
    fn memory_wakes_policies_only_across_the_threshold() {
        let one = [80];
        let quiet = trigger_fingerprint(&instance(40, "True"), &one);
        assert_eq!(quiet, trigger_fingerprint(&instance(41, "True"), &one));
        assert_eq!(quiet, trigger_fingerprint(&instance(79, "True"), &one));
        assert_ne!(quiet, trigger_fingerprint(&instance(80, "False"), &one));
        let mut failed = instance(40, "True");
        failed.status.as_mut().unwrap().phase = Some(InstancePhase::Unreachable);
        assert_ne!(quiet, trigger_fingerprint(&failed, &one));
        let mut relabelled = instance(40, "True");
        relabelled
            .labels_mut()
            .insert(TIER_LABEL.into(), "warm".into());
        assert_ne!(quiet, trigger_fingerprint(&relabelled, &one));
        let mut bigger = instance(40, "True");
        bigger
            .status
            .as_mut()
            .unwrap()
            .memory
            .as_mut()
            .unwrap()
            .capacity_bytes = 60_000_000;
        assert_ne!(quiet, trigger_fingerprint(&bigger, &one));

        // Two policies at 70 % and 80 % select it: its condition follows the lower one, and
        // crossing the higher one still wakes (the policy at 80 % plans then).
        let two = [70, 80];
        let at = |percent| trigger_fingerprint(&instance(percent, "False"), &two);
        assert_eq!(at(70), at(79));
        assert_ne!(at(79), at(80));
        assert_eq!(at(80), at(95));
    }

    fn policy(status: serde_json::Value) -> CachePolicy {
        let mut p = CachePolicy::new("shop", serde_json::from_value(json!({})).unwrap());
        p.metadata.generation = Some(3);
        p.status = Some(serde_json::from_value(status).unwrap());
        p
    }

    #[test]
    fn a_policy_is_not_woken_by_its_own_status_but_by_what_it_acts_on() {
        let written = policy(json!({
            "observedGeneration": 3,
            "instances": [{"name": "hot", "phase": "Ready", "usedPercent": 40}],
            "recommendations": ["hot at 40%"],
        }));
        let before = own_trigger(&written);
        // Its own output changing: conditions, instances, usage, advice.
        let rewritten = policy(json!({
            "observedGeneration": 3,
            "instances": [{"name": "hot", "phase": "Ready", "usedPercent": 47}],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "R", "message": "",
                "lastTransitionTime": "2026-12-01T00:00:00Z",
            }],
            "recommendations": ["hot at 47%"],
        }));
        assert_eq!(before, own_trigger(&rewritten));

        let mut edited = written.clone();
        edited.metadata.generation = Some(4);
        assert_ne!(before, own_trigger(&edited));
        let mut paused = written.clone();
        paused
            .annotations_mut()
            .insert("redisfleet.io/rebalance".into(), "pause".into());
        assert_ne!(before, own_trigger(&paused));
        let mut finalized = written.clone();
        finalized.metadata.finalizers = Some(vec!["redisfleet.io/cleanup".into()]);
        assert_ne!(before, own_trigger(&finalized));
        let mut deleted = written.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-01T00:00:00Z".parse().unwrap(),
            ));
        assert_ne!(before, own_trigger(&deleted));

        // The Job reports its steps into the rebalance: each report wakes the controller.
        let copying =
            policy(json!({"rebalance": {"phase": "Migrating", "planId": 7, "step": "copying"}}));
        let copied =
            policy(json!({"rebalance": {"phase": "Migrating", "planId": 7, "step": "copied"}}));
        assert_ne!(own_trigger(&copying), own_trigger(&copied));

        // ...but not the figures it reports as the copy goes.
        let counted = |moved: i64, pacing: &str| {
            policy(json!({"rebalance": {
                "phase": "Migrating", "planId": 7, "step": "Copying",
                "keysMoved": moved, "keysTotal": 900, "keysPerSecond": moved / 2,
                "pacing": pacing,
            }}))
        };
        assert_eq!(
            own_trigger(&counted(100, "slowed: p99 3.1 ms")),
            own_trigger(&counted(700, "growing"))
        );
        // A held copy's note names the evicting sources, which the condition quotes.
        let held = |pacing: &str| {
            policy(json!({"rebalance": {
                "phase": "Migrating", "planId": 7, "step": "SourceEvicting", "pacing": pacing,
            }}))
        };
        assert_ne!(
            own_trigger(&held("held: primary (maxmemory-policy allkeys-lru)")),
            own_trigger(&held(
                "held: primary, secondary (maxmemory-policy allkeys-lru)"
            ))
        );
    }

    #[test]
    fn an_instance_evicts_by_what_it_reports_or_by_what_its_managed_spec_is_about_to_apply() {
        let managed = |policy: &str, reported: Option<&str>| {
            let mut ri = RedisInstance::new(
                "hot",
                serde_json::from_value(json!({
                    "managed": {"maxMemory": "30Mi", "evictionPolicy": policy}
                }))
                .unwrap(),
            );
            ri.status = Some(
                serde_json::from_value(json!({"phase": "Ready", "evictionPolicy": reported}))
                    .unwrap(),
            );
            view_of(&ri, "shop").evicting_policy
        };
        assert_eq!(managed("volatile-lru", Some("volatile-lru")), None);
        assert_eq!(managed("volatile-lru", None), None);
        // Applied, not yet reported: it counts already.
        assert_eq!(
            managed("allkeys-lru", Some("volatile-lru")).as_deref(),
            Some("allkeys-lru")
        );
        // Asked back to volatile-lru, still reported allkeys: it counts until it is applied.
        assert_eq!(
            managed("volatile-lru", Some("allkeys-lfu")).as_deref(),
            Some("allkeys-lfu")
        );
    }
}
