//! Fetch, the first step of a CachePolicy reconcile: the policy as last written, the
//! instances it selects (from the cache, as [`InstanceView`]s) and the table published before
//! (from the routing ConfigMap). Besides the trigger mapping, the only reads of the reconcile.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::warn;

use crate::api::cache_policy::{CachePolicy, RebalanceStatus, selects};
use crate::api::redis_instance::{InstancePhase, RedisInstance, TIER_LABEL};
use crate::operator::context::Context;
use crate::redis::endpoint::endpoint_of;
use crate::routing::config_map::{annotated_version, table_of};
use crate::routing::table::RoutingTable;

use super::Error;
use super::build::InstanceView;
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
/// spec (generation), deletion, phase, capacity and whole percent of memory used — the
/// fields [`view_of`] reads, memory to the point of capacity that status is written at. A
/// change of anything else (a status refresh, live figures) need not wake a policy.
pub fn trigger_fingerprint(ri: &RedisInstance) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ri.metadata.labels.hash(&mut h);
    ri.metadata.generation.hash(&mut h);
    ri.metadata.deletion_timestamp.is_some().hash(&mut h);
    let status = ri.status.as_ref();
    status.and_then(|s| s.phase).hash(&mut h);
    let memory = status.and_then(|s| s.memory.as_ref());
    memory
        .map(|m| (m.capacity_bytes, m.used_percent))
        .hash(&mut h);
    h.finish()
}

/// Policies of the instance's namespace that select it (the trigger mapping).
pub fn policies_selecting(
    ctx_policies: &Store<CachePolicy>,
    ri: &RedisInstance,
) -> Vec<ObjectRef<CachePolicy>> {
    let ns = ri.namespace();
    ctx_policies
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && selects(p, ri))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
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
    Ok(Current {
        table,
        version,
        resource_version: cm.resource_version(),
        unfreed,
    })
}
